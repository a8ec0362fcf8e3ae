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
