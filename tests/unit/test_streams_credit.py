"""
L{prokshy.streams.credit}: inbound and outbound credit, each with its own
invariants, checked exhaustively on small windows and with hypothesis on
large ones (derandomized: the same examples every run).
"""

import itertools

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from twisted.trial.unittest import SynchronousTestCase

from prokshy.streams.credit import (
    MAX_CREDIT,
    FlowControlError,
    InboundCredit,
    OutboundCredit,
)

DETERMINISTIC = settings(derandomize=True, deadline=None, max_examples=100, database=None)


class _OldGrantRule:
    """
    The receive side as Stream kept it before the split (C{_recvCredit},
    C{_consumed}, C{_grant}): the reference the new object must match.
    """

    def __init__(self, window):
        self.window = window
        self.recvCredit = window
        self.consumed = 0

    def receive(self, n):
        if n > self.recvCredit:
            return False
        self.recvCredit -= n
        return True

    def consume(self, n):
        self.consumed += n

    def grant(self):
        if self.consumed and (
            self.consumed >= self.window // 4 or self.recvCredit < self.window // 2
        ):
            n, self.consumed = self.consumed, 0
            self.recvCredit += n
            return n
        return 0


class OutboundCreditTests(SynchronousTestCase):
    def test_starts_empty(self):
        credit = OutboundCredit()
        self.assertEqual((credit.available, credit.granted, credit.sent), (0, 0, 0))
        self.assertEqual(credit.allowance(1024), 0)

    def test_allowance(self):
        """
        The next frame carries at most the credit held and at most the
        frame size.
        """
        credit = OutboundCredit()
        credit.grant(3000)
        self.assertEqual(credit.allowance(1024), 1024)
        credit.spend(1024)
        credit.spend(1024)
        self.assertEqual(credit.allowance(1024), 952)
        credit.spend(952)
        self.assertEqual(credit.allowance(1024), 0)
        self.assertEqual((credit.granted, credit.sent), (3000, 3000))

    def test_neverSendBeyondCredit(self):
        """
        Spending more than the credit held is our own bug: it raises, and
        nothing is counted.
        """
        credit = OutboundCredit()
        credit.grant(10)
        self.assertRaises(AssertionError, credit.spend, 11)
        self.assertRaises(AssertionError, credit.spend, 0)
        self.assertEqual((credit.available, credit.sent), (10, 0))

    def test_overflow(self):
        """
        A grant that would take the credit held above L{MAX_CREDIT} is the
        peer's error (the stream resets C{flow-control}); the credit is
        unchanged.  Up to the limit is fine.
        """
        credit = OutboundCredit()
        credit.grant(MAX_CREDIT - 1)
        credit.grant(1)
        e = self.assertRaises(FlowControlError, credit.grant, 1)
        self.assertIn("credit overflow", str(e))
        self.assertEqual(credit.available, MAX_CREDIT)
        credit.spend(5)
        credit.grant(5)
        self.assertEqual(credit.available, MAX_CREDIT)

    def test_overflowExhaustive(self):
        """
        Every sequence of up to 4 grants and sends with a limit of 4: a grant
        raises exactly when it would exceed the limit, and the invariants
        hold after every step.
        """
        ops = [("grant", n) for n in range(0, 6)] + [("send", n) for n in range(1, 5)]
        for length in range(1, 5):
            for seq in itertools.product(ops, repeat=length):
                credit = OutboundCredit(limit=4)
                for op, n in seq:
                    before = (credit.available, credit.granted, credit.sent)
                    if op == "grant":
                        if before[0] + n > 4:
                            self.assertRaises(FlowControlError, credit.grant, n)
                            self.assertEqual((credit.available, credit.granted, credit.sent), before)
                        else:
                            credit.grant(n)
                    elif n <= credit.allowance(4):
                        credit.spend(n)
                    else:
                        self.assertRaises(AssertionError, credit.spend, n)
                        self.assertEqual((credit.available, credit.granted, credit.sent), before)
                    credit.check()
                    self.assertLessEqual(credit.sent, credit.granted)


class InboundCreditTests(SynchronousTestCase):
    def test_window(self):
        credit = InboundCredit(1000)
        self.assertEqual((credit.window, credit.available, credit.held, credit.consumed), (1000, 1000, 0, 0))
        for bad in (0, -1, MAX_CREDIT + 1, 1.5, None):
            self.assertRaises(ValueError, InboundCredit, bad)
        InboundCredit(MAX_CREDIT)

    def test_beyondCredit(self):
        """
        Data beyond the credit the peer holds is its error; nothing is
        counted.
        """
        credit = InboundCredit(100)
        credit.receive(60)
        e = self.assertRaises(FlowControlError, credit.receive, 41)
        self.assertEqual(str(e), "peer sent 41 bytes with 40 credit")
        self.assertEqual((credit.available, credit.held, credit.received), (40, 60, 60))
        credit.receive(40)

    def test_consumeOnlyHeld(self):
        credit = InboundCredit(100)
        credit.receive(10)
        self.assertRaises(AssertionError, credit.consume, 11)
        credit.consume(10)
        self.assertEqual((credit.held, credit.consumed), (0, 10))

    def test_grantRule(self):
        """
        Credit is granted back once a quarter of the window has been
        consumed, or once the peer holds less than half of it; exactly what
        was consumed.
        """
        credit = InboundCredit(1000)
        credit.receive(300)
        credit.consume(249)
        self.assertFalse(credit.due())
        self.assertEqual(credit.grant(), 0)
        credit.consume(1)
        self.assertTrue(credit.due())
        self.assertEqual(credit.grant(), 250)
        self.assertEqual((credit.available, credit.held, credit.consumed), (950, 50, 0))
        # Less than half left to the peer: even a little is granted.
        credit.receive(460)
        credit.consume(10)
        self.assertEqual(credit.available, 490)
        self.assertEqual(credit.grant(), 10)
        self.assertEqual(credit.grant(), 0)

    def test_matchesTheOldRuleExhaustively(self):
        """
        For windows of 1 to 8 bytes and every sequence of up to 5 steps
        (receive 1-3 bytes, consume 1-3 held bytes, grant), the split object
        grants exactly what the stream granted before, refuses exactly the
        same receipts, and never grants beyond the window.
        """
        ops = [("receive", n) for n in (1, 2, 3)] + [("consume", n) for n in (1, 2, 3)] + [("grant", 0)]
        cases = 0
        for window in range(1, 9):
            for length in range(1, 6):
                for seq in itertools.product(ops, repeat=length):
                    new, old = InboundCredit(window), _OldGrantRule(window)
                    held = 0
                    for op, n in seq:
                        if op == "receive":
                            accepted = old.receive(n)
                            if accepted:
                                new.receive(n)
                                held += n
                            else:
                                self.assertRaises(FlowControlError, new.receive, n)
                        elif op == "consume":
                            n = min(n, held)
                            held -= n
                            old.consume(n)
                            new.consume(n)
                        else:
                            self.assertEqual(new.grant(), old.grant())
                        new.check()
                        self.assertEqual(new.available, old.recvCredit)
                        self.assertLessEqual(new.available, window)
                    cases += 1
        self.assertEqual(cases, 8 * sum(7**k for k in range(1, 6)))


class _CreditLoop(RuleBasedStateMachine):
    """
    A sender's L{OutboundCredit} and a receiver's L{InboundCredit} joined
    by a channel that holds frames in flight: whatever the order of sends,
    deliveries, consumption and grants, the sender never exceeds its credit,
    the receiver never sees a violation, and every byte of the window is
    accounted for exactly once.
    """

    def __init__(self):
        super().__init__()
        self.window = None

    @precondition(lambda self: self.window is None)
    @rule(window=st.integers(1, 1 << 20), maxPayload=st.integers(1, 1 << 16))
    def open(self, window, maxPayload):
        self.window = window
        self.maxPayload = maxPayload
        self.sender = OutboundCredit()
        self.receiver = InboundCredit(window)
        self.sender.grant(window)  # the window given in OPEN/ACCEPT
        self.toReceiver = []  # data frame sizes in flight
        self.toSender = []  # WINDOW grants in flight

    @precondition(lambda self: self.window is not None)
    @rule(fraction=st.floats(0.01, 1.0))
    def send(self, fraction):
        n = self.sender.allowance(self.maxPayload)
        n = max(1, int(n * fraction)) if n else 0
        if n:
            self.sender.spend(n)
            self.toReceiver.append(n)

    @precondition(lambda self: self.window is not None and self.toReceiver)
    @rule()
    def deliverData(self):
        self.receiver.receive(self.toReceiver.pop(0))

    @precondition(lambda self: self.window is not None and self.receiver.held)
    @rule(fraction=st.floats(0.01, 1.0))
    def consume(self, fraction):
        self.receiver.consume(max(1, int(self.receiver.held * fraction)))

    @precondition(lambda self: self.window is not None)
    @rule()
    def grant(self):
        n = self.receiver.grant()
        if n:
            self.toSender.append(n)

    @precondition(lambda self: self.window is not None and self.toSender)
    @rule()
    def deliverWindow(self):
        self.sender.grant(self.toSender.pop(0))

    @invariant()
    def conserved(self):
        if self.window is None:
            return
        self.sender.check()
        self.receiver.check()
        self.assertConserved()

    def assertConserved(self):
        r = self.receiver
        total = self.sender.available + sum(self.toReceiver) + r.held + r.consumed + sum(self.toSender)
        if total != self.window:
            raise AssertionError("%d bytes of a %d window accounted for" % (total, self.window))
        if r.available != self.sender.available + sum(self.toReceiver) + sum(self.toSender):
            raise AssertionError("the two sides disagree on the credit held")


_CreditLoop.TestCase.settings = DETERMINISTIC
CreditLoopTests = _CreditLoop.TestCase
