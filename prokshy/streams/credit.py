# -*- test-case-name: tests.unit.test_streams_credit -*-
"""
The credit of one stream, one object per direction (docs/protocol.md §9).

Credit counts DATA and STDERR payload bytes, before escaping; control frames
(EOF, EXIT, SIGNAL, CLOSE, WINDOW, RESET) cost none.

L{OutboundCredit} is what the peer has granted us: its window, given in
OPEN or ACCEPT, plus every WINDOW it sent since, less what we have sent.
Invariants: C{0 <= available <= MAX_CREDIT} and
C{sent + available == granted}; we never send beyond it (L{spend} refuses).
A WINDOW that would take the credit we hold above L{MAX_CREDIT} is a peer
error (L{FlowControlError}: the stream is reset C{flow-control}); no honest
receiver gets there, as what it grants back is what it has received.

L{InboundCredit} is what we have granted the peer: C{window} bytes at
first.  A byte the peer sends moves from C{available} (credit it still
holds) to C{held} (received, not yet handed to our protocol), then to
C{consumed} (handed over, not yet granted back), and a WINDOW returns it
to C{available}.  Invariant: C{available + held + consumed == window},
each of them at least 0, so we never grant beyond the window.  Data beyond
the credit the peer holds is a peer error (L{FlowControlError}).  L{grant}
grants back when a quarter of the window has been consumed, or when less
than half of it is left to the peer.

A broken invariant is a bug of ours, and raises L{AssertionError} (checked
explicitly, not with C{assert}, so it holds under C{python -O} too).
"""

#: The largest window a stream may advertise, and the most credit a side
#: may hold (bytes).
MAX_CREDIT = 1 << 30


class FlowControlError(Exception):
    """
    The peer broke flow control: it sent beyond its credit, or granted
    credit beyond L{MAX_CREDIT}.
    """


def _broken(what, obj):
    return AssertionError("credit invariant broken: %s (%r)" % (what, obj))


class OutboundCredit:
    """
    What the peer has granted us.

    @ivar available: bytes we may still send.
    @ivar granted: bytes granted in total (the window and every WINDOW).
    @ivar sent: bytes sent in total.
    """

    def __init__(self, limit=MAX_CREDIT):
        self.limit = limit
        self.available = 0
        self.granted = 0
        self.sent = 0

    def __repr__(self):
        return "<OutboundCredit available=%d granted=%d sent=%d>" % (
            self.available,
            self.granted,
            self.sent,
        )

    def grant(self, n):
        """
        The peer grants C{n} more bytes (its window, then each WINDOW).

        @raise FlowControlError: if we would hold more than C{limit}.
        """
        if n < 0:
            raise _broken("a negative grant", n)
        if self.available + n > self.limit:
            raise FlowControlError(
                "credit overflow: %d more bytes on top of %d exceeds %d"
                % (n, self.available, self.limit)
            )
        self.available += n
        self.granted += n
        self.check()

    def allowance(self, maxPayload):
        """
        How many bytes the next DATA or STDERR frame may carry.
        """
        return min(self.available, maxPayload)

    def spend(self, n):
        """
        We send C{n} bytes.

        @raise AssertionError: beyond the credit we hold.
        """
        if not 0 < n <= self.available:
            raise _broken("sending %d bytes beyond the credit" % (n,), self)
        self.available -= n
        self.sent += n
        self.check()

    def check(self):
        if not 0 <= self.available <= self.limit:
            raise _broken("available out of range", self)
        if self.sent + self.available != self.granted:
            raise _broken("sent + available != granted", self)


class InboundCredit:
    """
    What we have granted the peer.

    @ivar window: our receive window.
    @ivar available: bytes the peer may still send.
    @ivar held: bytes received and not yet handed to our protocol.
    @ivar consumed: bytes handed over and not yet granted back.
    @ivar received: bytes received in total.
    """

    def __init__(self, window):
        if not (isinstance(window, int) and 0 < window <= MAX_CREDIT):
            raise ValueError("a window is 1 to %d bytes, not %r" % (MAX_CREDIT, window))
        self.window = window
        self.available = window
        self.held = 0
        self.consumed = 0
        self.received = 0

    def __repr__(self):
        return "<InboundCredit window=%d available=%d held=%d consumed=%d>" % (
            self.window,
            self.available,
            self.held,
            self.consumed,
        )

    def receive(self, n):
        """
        The peer sent C{n} bytes.

        @raise FlowControlError: beyond the credit it holds (nothing is
            counted then).
        """
        if n < 0:
            raise _broken("a negative receipt", n)
        if n > self.available:
            raise FlowControlError("peer sent %d bytes with %d credit" % (n, self.available))
        self.available -= n
        self.held += n
        self.received += n
        self.check()

    def consume(self, n):
        """
        C{n} received bytes were handed to our protocol.
        """
        if not 0 <= n <= self.held:
            raise _broken("consuming %d bytes not held" % (n,), self)
        self.held -= n
        self.consumed += n
        self.check()

    def due(self):
        """
        Whether L{grant} would grant something now: something has been
        consumed, and a quarter of the window has, or the peer holds less
        than half of it.
        """
        n = self.consumed
        return bool(n) and (n >= self.window // 4 or self.available < self.window // 2)

    def grant(self):
        """
        What to grant back now (a WINDOW), or 0 (L{due}): what has been
        consumed.
        """
        if not self.due():
            return 0
        n, self.consumed = self.consumed, 0
        self.available += n
        self.check()
        return n

    def check(self):
        if self.available < 0 or self.held < 0 or self.consumed < 0:
            raise _broken("a negative count", self)
        if self.available + self.held + self.consumed != self.window:
            raise _broken("available + held + consumed != window", self)


__all__ = ["MAX_CREDIT", "FlowControlError", "OutboundCredit", "InboundCredit"]
