"""
L{prokshy._machines}: the checks every state machine of prokshy passes.
"""

from automat import MethodicalMachine
from twisted.trial.unittest import TestCase

from prokshy import _machines


class _Door:
    m = MethodicalMachine()

    @m.state(initial=True)
    def closed(self):
        "closed"

    @m.state()
    def open(self):
        "open"

    @m.input()
    def push(self):
        "push"

    @m.input()
    def pull(self):
        "pull"

    @m.output()
    def _creak(self):
        pass

    closed.upon(push, enter=open, outputs=[_creak])
    open.upon(pull, enter=closed, outputs=[])
    open.upon(push, enter=open, outputs=[])


class MachineToolsTests(TestCase):
    def test_transitions(self):
        self.assertEqual(
            _machines.transitions(_Door.m),
            [("closed", "push", "open", ("_creak",)), ("open", "pull", "closed", ()), ("open", "push", "open", ())],
        )

    def test_undeclared(self):
        """
        A pair with no transition is reported.
        """
        self.assertEqual(_machines.undeclared(_Door.m), {("closed", "pull")})

    def test_table(self):
        self.assertEqual(
            _machines.table(_Door.m),
            "    closed  push  -> open    _creak\n"
            "    open    pull  -> closed\n"
            "    open    push  -> open",
        )


class EveryMachineTests(TestCase):
    """
    Every Automat machine in prokshy declares every (state, input) pair,
    and its module's docstring carries its transition table.
    """

    def machines(self):
        import importlib
        import inspect
        import pkgutil

        import prokshy

        found = {}
        for info in pkgutil.walk_packages(prokshy.__path__, "prokshy."):
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if inspect.isclass(obj) and obj.__module__ == module.__name__:
                    for attr, value in vars(obj).items():
                        if isinstance(value, MethodicalMachine):
                            found["%s.%s.%s" % (module.__name__, name, attr)] = (module, value)
        return found

    def test_allDeclaredAndTabled(self):
        found = self.machines()
        self.assertGreaterEqual(len(found), 9, sorted(found))
        for where, (module, machine) in sorted(found.items()):
            self.assertEqual(_machines.undeclared(machine), set(), where)
            self.assertIn(_machines.table(machine), module.__doc__, where)


def _lever(cls):
    """
    A machine whose inputs take arguments, for checking that L{_machines.fast}
    passes each output exactly the arguments Automat would.
    """
    m = MethodicalMachine()

    class Lever:
        def __init__(self):
            self.calls = []

        @m.state(initial=True)
        def down(self):
            "down"

        @m.state()
        def up(self):
            "up"

        @m.input()
        def lift(self, height, why):
            "lift"

        @m.input()
        def drop(self, hard=False):
            "drop"

        @m.output()
        def _both(self, height, why):
            self.calls.append(("both", height, why))
            return height

        @m.output()
        def _why(self, why):
            self.calls.append(("why", why))

        @m.output()
        def _none(self):
            self.calls.append(("none",))

        @m.output()
        def _hard(self, hard):
            self.calls.append(("hard", hard))

        down.upon(lift, enter=up, outputs=[_both, _why, _none])
        up.upon(drop, enter=down, outputs=[_hard, _none])
        up.upon(lift, enter=up, outputs=[_why])
        setTrace = m._setTrace

    Lever._machine = m
    return cls(Lever) if cls else Lever


class FastTests(TestCase):
    """
    L{_machines.fast} changes how fast a machine runs, never what it does.
    """

    def _both(self, script):
        results = []
        for Lever in (_lever(None), _lever(_machines.fast)):
            lever = Lever()
            outcome = []
            for step in script:
                try:
                    outcome.append(step(lever))
                except Exception as e:
                    outcome.append(type(e).__name__)
            results.append((outcome, lever.calls))
        self.assertEqual(results[0], results[1])
        return results[1]

    def test_sameCallsAndValues(self):
        outcome, calls = self._both([
            lambda l: l.lift(3, "a"),
            lambda l: l.lift(4, why="b"),
            lambda l: l.drop(),
            lambda l: l.lift(height=5, why="c"),
            lambda l: l.drop(True),
            lambda l: l.lift(6, "d"),
            lambda l: l.drop(hard=True),
        ])
        self.assertEqual(outcome[0], [3, None, None])
        self.assertIn(("both", 3, "a"), calls)
        self.assertIn(("hard", True), calls)
        self.assertIn(("why", "b"), calls)

    def test_errorsTheSame(self):
        outcome, _ = self._both([
            lambda l: l.drop(),       # undeclared in "down": NoTransition
            lambda l: l.lift(1),      # a bad call: TypeError, no transition
            lambda l: l.lift(1, "x"),
        ])
        self.assertEqual(outcome[:2], ["NoTransition", "TypeError"])

    def test_tracerSeesOutputs(self):
        seen = []
        lever = _lever(_machines.fast)()

        def tracer(old, inp, new):
            seen.append((old, inp, new))
            return lambda output: seen.append(output)

        lever.setTrace(tracer)
        lever.lift(1, "y")
        self.assertIn(("down", "lift", "up"), seen)
        self.assertIn("_none", seen)

    def test_boundOnce(self):
        lever = _lever(_machines.fast)()
        self.assertIs(lever.lift, lever.lift)
        self.assertEqual(lever.lift.__name__, "lift")
