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
