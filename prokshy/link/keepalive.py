# -*- test-case-name: tests.unit.test_link -*-
"""
Keepalive: the timers that watch the peer, and PING / PONG.

    timer          runs in        fires                         does
    -------------  -------------  ----------------------------  ------------------------------
    hello          host HELLO     every helloInterval           say hello again
    ping           UP             every pingInterval            send a PING (keepalive)
    dead watch     UP, quiet      deadAfter after last heard    end the session: peer silent
    re-hello       host UP        rehelloAfter after last       say hello again (same nonce),
                                  heard, then every             so that a restarted guest
                                  helloInterval while silent    answers with a new nonce
    quiet watch    guest UP       quietPings peer ping          go quiet (send nothing of our
                                  intervals after last heard    own until heard again)

(The retransmission timer is in L{prokshy.link.retransmit}.)  The lifecycle
(L{prokshy.link.lifecycle}) starts a state's timers as it enters the state
and stops them as it leaves; these classes only keep time.
"""

import struct

#: A PING payload: a sequence number and the sender's clock.
PING_PAYLOAD = struct.Struct(">Qd")
#: Unanswered PINGs remembered (for the round trip and the read offset).
MAX_OUTSTANDING_PINGS = 16
_EPSILON = 1e-9


class Repeater:
    """
    Call C{fire()} every C{interval} seconds while started.
    """

    def __init__(self, clock, interval, fire):
        self.clock = clock
        self.interval = interval
        self.fire = fire
        self._call = None

    @property
    def running(self):
        return self._call is not None

    def start(self):
        self.stop()
        self._call = self.clock.callLater(self.interval, self._tick)

    def stop(self):
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _tick(self):
        self._call = self.clock.callLater(self.interval, self._tick)
        self.fire()


class SilenceTimer:
    """
    Call C{fire(silent)} once the peer has been silent for C{after} seconds
    (C{lastHeard()} is when it was last heard); with C{every}, again every
    C{every} seconds while the silence lasts.  Hearing the peer needs no
    call here: the timer looks at C{lastHeard()} when it fires, and waits
    on if the peer was heard meanwhile.
    """

    def __init__(self, clock, after, lastHeard, fire, every=None):
        self.clock = clock
        self.after = after
        self.lastHeard = lastHeard
        self.fire = fire
        self.every = every
        self._call = None

    @property
    def running(self):
        return self._call is not None

    def start(self):
        self.stop()
        self._at(self.lastHeard() + self.after)

    def stop(self):
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _at(self, when):
        self._call = self.clock.callLater(max(when - self.clock.seconds(), 0.0), self._check)

    def _check(self):
        now = self.clock.seconds()
        due = self.lastHeard() + self.after
        if now + _EPSILON < due:
            self._at(due)
            return
        if self.every is None:
            self._call = None
        else:
            self._at(now + self.every)
        self.fire(now - self.lastHeard())


class Pinger:
    """
    PINGs we sent and their PONGs: the round-trip time, and for each PING
    answered, the offset of our output the peer has read up to.

    @ivar rtt: the smoothed round trip in seconds, or None before any.
    """

    def __init__(self, clock):
        self.clock = clock
        self.rtt = None
        self._seq = 0
        self._outstanding = {}

    def reset(self):
        """
        A new session: earlier PINGs will not be answered.
        """
        self._outstanding = {}

    def payload(self):
        """
        The payload of the next PING.
        """
        self._seq += 1
        return PING_PAYLOAD.pack(self._seq, self.clock.seconds())

    def sent(self, payload, endOffset):
        """
        The PING with C{payload} went out; it ended at C{endOffset} of our
        output.
        """
        seq, sentAt = PING_PAYLOAD.unpack(payload)
        outstanding = self._outstanding
        outstanding[seq] = (sentAt, endOffset)
        if len(outstanding) > MAX_OUTSTANDING_PINGS:
            del outstanding[min(outstanding)]

    def waiting(self, offset):
        """
        Whether a PING of ours that ends after C{offset} is unanswered.
        """
        return any(end > offset for _, end in self._outstanding.values())

    def answered(self, payload):
        """
        A PONG arrived.

        @return: the offset the peer has read up to, or None if the PONG
            answers no PING of ours in this session.
        """
        if len(payload) != PING_PAYLOAD.size:
            return None
        seq, _ = PING_PAYLOAD.unpack(payload)
        entry = self._outstanding.pop(seq, None)
        if entry is None:
            return None
        # Older PINGs were read before this one: their PONGs add nothing.
        for older in [s for s in self._outstanding if s < seq]:
            del self._outstanding[older]
        sentAt, endOffset = entry
        sample = self.clock.seconds() - sentAt
        self.rtt = sample if self.rtt is None else 0.8 * self.rtt + 0.2 * sample
        return endOffset
