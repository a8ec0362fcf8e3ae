"""
L{prokshy._machines.fast}: the same Automat machine, with its transitions
looked up in a dict and its inputs bound once per instance (the stream's
machine runs for every frame).
"""

from automat import MethodicalMachine, NoTransition
from automat._core import Automaton
from twisted.trial.unittest import SynchronousTestCase

from prokshy import _machines


def _door(decorate):
    class Door:
        m = MethodicalMachine()

        def __init__(self):
            self.log = []

        @m.state(initial=True)
        def shut(self):
            "shut"

        @m.state()
        def ajar(self):
            "ajar"

        @m.input()
        def push(self, how):
            "push"

        @m.input()
        def pull(self):
            "pull"

        @m.output()
        def _creak(self, how):
            self.log.append(how)
            return "creak " + how

        @m.output()
        def _thud(self):
            return "thud"

        shut.upon(push, enter=ajar, outputs=[_creak])
        ajar.upon(pull, enter=shut, outputs=[_thud, _thud])
        ajar.upon(push, enter=ajar, outputs=[])

    return decorate(Door)


class FastTests(SynchronousTestCase):
    def test_sameBehaviour(self):
        """
        A decorated machine gives the same outputs, in the same states, as
        the plain one, and still raises NoTransition for an undeclared pair.
        """
        results = []
        for decorate in (lambda cls: cls, _machines.fast):
            door = _door(decorate)()
            steps = [door.push("softly"), door.push("again"), door.pull()]
            self.assertRaises(NoTransition, door.pull)
            results.append((steps, door.log))
        self.assertEqual(results[0], results[1])
        self.assertEqual(results[0], ([["creak softly"], [], ["thud", "thud"]], ["softly"]))

    def test_sameTable(self):
        plain, fast = _door(lambda cls: cls), _door(_machines.fast)
        self.assertEqual(_machines.table(plain.m), _machines.table(fast.m))
        self.assertEqual(_machines.undeclared(fast.m), {("shut", "pull")})

    def test_indexMatchesTheScan(self):
        automaton = _door(_machines.fast).m._automaton
        for state in automaton.states():
            for inp in automaton.inputAlphabet():
                try:
                    expected = Automaton.outputForInput(automaton, state, inp)
                except NoTransition:
                    self.assertRaises(NoTransition, automaton.outputForInput, state, inp)
                else:
                    self.assertEqual(automaton.outputForInput(state, inp), expected)

    def test_boundOncePerInstance(self):
        Door = _door(_machines.fast)
        a, b = Door(), Door()
        self.assertIs(a.push, a.push)
        self.assertIsNot(a.push, b.push)
        a.push("a")
        self.assertEqual(b.push("b"), ["creak b"])
        self.assertEqual((a.log, b.log), (["a"], ["b"]))
        # On the class, the input is still Automat's own.
        self.assertEqual(type(Door.push).__name__, "MethodicalInput")
