"""
Tools for prokshy's Automat state machines (C{automat.MethodicalMachine}).

Every machine in prokshy declares each (state, input) pair: either a real
transition or a declared error (a transition whose output logs or raises a
clear error, or ignores the input on purpose). L{undeclared} lists the pairs
a machine leaves out, and the tests require it to be empty for every
machine, so a missing transition cannot hide.  L{table} renders the
transition table; each machine's module docstring carries it, and a test
checks that the docstring matches the machine.
"""

from typing import List, Set, Tuple


def _name(thing) -> str:
    return thing.method.__name__


def transitions(machine) -> List[Tuple[str, str, str, Tuple[str, ...]]]:
    """
    The machine's transitions as (state, input, new state, outputs), by name,
    sorted.
    """
    automaton = machine._automaton
    return sorted(
        (_name(old), _name(inp), _name(new), tuple(_name(o) for o in outputs))
        for old, inp, new, outputs in automaton.allTransitions()
    )


def states(machine) -> List[str]:
    return sorted(_name(s) for s in machine._automaton.states())


def inputs(machine) -> List[str]:
    return sorted(_name(i) for i in machine._automaton.inputAlphabet())


def undeclared(machine) -> Set[Tuple[str, str]]:
    """
    The (state, input) pairs for which the machine declares nothing.
    """
    declared = {(old, inp) for old, inp, _new, _outputs in transitions(machine)}
    return {(s, i) for s in states(machine) for i in inputs(machine)} - declared


def table(machine) -> str:
    """
    The transition table as indented text, one transition a line::

        state         input          -> new state     outputs
    """
    rows = transitions(machine)
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    lines = []
    for old, inp, new, outputs in rows:
        line = "    %-*s  %-*s  -> %-*s  %s" % (w0, old, w1, inp, w2, new, ", ".join(outputs))
        lines.append(line.rstrip())
    return "\n".join(lines)


def fast(cls):
    """
    Class decorator: the class's Automat machines behave the same, faster.

    Automat finds a transition by scanning every transition of the machine
    (dataclass comparisons, so the cost grows with the table), builds a new
    function each time an input is looked up on an instance, and inspects
    both signatures each time it calls an output.  A machine on a per-frame
    path (a stream, the device) pays all three on every frame.  So, once
    the class body (and so the table) is complete, this builds for each
    input a table from the identity of each state to the new state, the
    outputs with the arguments each takes, and the collector; and it binds
    each input once per instance (kept in the instance's C{__dict__}, as
    C{functools.cached_property} does).  The transitions are the same, a
    tracer sees the same, and an undeclared pair still raises
    C{automat.NoTransition}.
    """
    from automat import MethodicalMachine, NoTransition
    from automat._methodical import MethodicalInput

    tables = {}
    for value in list(vars(cls).values()):
        if isinstance(value, MethodicalMachine):
            automaton = value._automaton
            index = {}
            for old, inp, new, outputs in automaton.allTransitions():
                index[old, inp] = (new, tuple(outputs))
                steps = tuple((output, output.method, _plan(inp, output)) for output in outputs)
                tables.setdefault(id(inp), {})[id(old)] = (new, steps, inp.collectors[old])

            def outputForInput(inState, inputSymbol, index=index):
                try:
                    new, outputs = index[inState, inputSymbol]
                except KeyError:
                    raise NoTransition(state=inState, symbol=inputSymbol) from None
                return new, list(outputs)

            automaton.outputForInput = outputForInput
    for name, value in list(vars(cls).items()):
        if isinstance(value, MethodicalInput):
            setattr(cls, name, _InputBoundOnce(value, name, tables.get(id(value), {})))
    return cls


def _plan(input, output):
    """
    The indexes of C{input}'s positional arguments C{output} takes, or None
    when Automat's own filter must decide (defaults, keywords, variable
    arguments).
    """
    spec, out = input.argSpec, output.argSpec
    if spec.varargs or spec.varkw or spec.defaults or spec.kwonlyargs or out.varargs:
        return None
    return tuple(i for i, name in enumerate(spec.args[1:]) if name in out.args)


class _InputBoundOnce:
    """
    An Automat input, bound to an instance on first use and kept there.

    The bound function does what Automat's does (call the input's empty
    body, so a bad call raises C{TypeError}; transition, telling a tracer;
    call each output with the arguments it names; collect the values), from
    the input's table (see L{fast}).
    """

    def __init__(self, input, name, table):
        self.input = input
        self.name = name
        self.table = table

    def __get__(self, oself, type=None):
        if oself is None:
            return self.input
        from automat import NoTransition
        from automat._methodical import _filterArgs, _transitionerFromInstance

        inp = self.input
        method, spec, table = inp.method, inp.argSpec, self.table
        transitioner = _transitionerFromInstance(oself, inp.symbol, inp.automaton)

        def doInput(*args, **kwargs):
            method(oself, *args, **kwargs)
            previous = transitioner._state
            try:
                new, steps, collector = table[id(previous)]
            except KeyError:
                raise NoTransition(state=previous, symbol=inp) from None
            tracer = transitioner._tracer
            outTracer = tracer(previous, inp, new) if tracer else None
            transitioner._state = new
            values = []
            for output, call, plan in steps:
                if outTracer is not None:
                    outTracer(output)
                if plan is None or kwargs:
                    a, k = _filterArgs(args, kwargs, spec, output.argSpec)
                    values.append(call(oself, *a, **k))
                elif not plan:
                    values.append(call(oself))
                else:
                    values.append(call(oself, *[args[i] for i in plan if i < len(args)]))
            return collector(values)

        doInput.__name__ = self.name
        doInput.__doc__ = method.__doc__
        oself.__dict__[self.name] = doInput
        return doInput
