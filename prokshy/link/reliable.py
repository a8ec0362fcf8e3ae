# -*- test-case-name: tests.test_link -*-
"""
Selective-repeat reliability for sequenced frames: sequence numbers,
cumulative and selective acknowledgements, a bound on the bytes in flight,
and retransmission.

The channel may lose, corrupt or duplicate bytes but never reorders them.
The receiver delivers only the next expected sequence number, keeps frames
that arrive after a gap (at most the window it advertises, in bytes, and
at most L{MAX_OUT_OF_ORDER} of them), and reports them in SACK ranges so the
sender resends only what is missing; a frame that does not fit is dropped
as if it had been lost.  Duplicates
are dropped.  Nothing here knows about time or I/O beyond the timestamps it
is given.
"""

import struct
from collections import deque

import attr

from prokshy.wire import frames

SEQ_MOD = 1 << 32
MAX_SACK_RANGES = 16
MAX_OUT_OF_ORDER = 4096
_RANGE = struct.Struct(">II")


def seqDiff(a, b):
    """
    Signed distance from C{b} to C{a} in sequence-number space.
    """
    d = (a - b) % SEQ_MOD
    return d - SEQ_MOD if d >= SEQ_MOD // 2 else d


def encodeSack(ranges):
    """
    Encode SACK ranges (start, end-exclusive) as an ACK payload.
    """
    return b"".join(_RANGE.pack(s % SEQ_MOD, e % SEQ_MOD) for s, e in ranges[:MAX_SACK_RANGES])


def decodeSack(payload):
    """
    Decode an ACK payload; malformed trailing bytes are ignored.
    """
    n = min(len(payload) // _RANGE.size, MAX_SACK_RANGES)
    return [_RANGE.unpack_from(payload, i * _RANGE.size) for i in range(n)]


@attr.s(slots=True)
class _Outgoing:
    seq = attr.ib()
    type = attr.ib()
    stream = attr.ib()
    payload = attr.ib()
    size = attr.ib(default=0)
    sentAt = attr.ib(default=0.0)
    sacked = attr.ib(default=False)


class Sender:
    """
    The sending half: a queue of frames waiting for room in the window, and
    the frames in flight (consecutive sequence numbers).

    @ivar window: the most bytes (as encoded on the wire) in flight at once.
    """

    def __init__(self, window):
        self.window = window
        self.nextSeq = 0
        self.queue = deque()
        self.unacked = deque()
        self.inflight = 0
        self.retransmits = 0
        self.sent = 0

    def enqueue(self, ftype, stream, payload):
        self.queue.append(_Outgoing(None, ftype, stream, payload))

    @property
    def pending(self):
        """
        Frames queued or in flight.
        """
        return len(self.queue) + len(self.unacked)

    def takeSendable(self, encode, now):
        """
        Move frames from the queue into flight while the window allows (one
        frame always fits into an empty window).

        @param encode: C{encode(outgoing) -> bytes}, the wire form.
        @return: the list of wire byte strings to write.
        """
        out = []
        while self.queue:
            item = self.queue[0]
            if item.seq is None:
                item.seq = self.nextSeq
            wire = encode(item)
            if self.unacked and self.inflight + len(wire) > self.window:
                break
            self.queue.popleft()
            self.nextSeq = (self.nextSeq + 1) % SEQ_MOD
            item.size = len(wire)
            item.sentAt = now
            self.inflight += item.size
            self.unacked.append(item)
            self.sent += 1
            out.append(wire)
        return out

    def acknowledge(self, ack):
        """
        Retire the frames the peer has acknowledged (all before C{ack}).

        @return: how many were retired.
        """
        n = 0
        while self.unacked and seqDiff(ack, self.unacked[0].seq) > 0:
            item = self.unacked.popleft()
            self.inflight -= item.size
            n += 1
        return n

    def sack(self, ranges):
        """
        Mark the frames the peer holds out of order.

        @return: the highest sequence number marked, or None.
        """
        if not self.unacked:
            return None
        first = self.unacked[0].seq
        count = len(self.unacked)
        highest = None
        for start, end in ranges:
            lo = max(seqDiff(start, first), 0)
            hi = min(seqDiff(end, first), count)
            for i in range(lo, hi):
                self.unacked[i].sacked = True
                highest = i
        return None if highest is None else self.unacked[highest].seq

    def holes(self, below, now, minAge, encode):
        """
        Re-encode the frames in flight, not held by the peer, sent before
        C{below} and not (re)sent within C{minAge}.
        """
        out = []
        if not self.unacked or below is None:
            return out
        first = self.unacked[0].seq
        limit = seqDiff(below, first)
        for i, item in enumerate(self.unacked):
            if i >= limit:
                break
            if not item.sacked and now - item.sentAt >= minAge:
                item.sentAt = now
                out.append(encode(item))
        self.retransmits += len(out)
        return out

    def retransmitAll(self, now, encode):
        """
        Re-encode every frame in flight that the peer does not hold.
        """
        out = []
        for item in self.unacked:
            if not item.sacked:
                item.sentAt = now
                out.append(encode(item))
        self.retransmits += len(out)
        return out

    def probe(self, now, encode):
        """
        Re-encode the newest frame in flight that the peer does not hold,
        or return None.
        """
        for item in reversed(self.unacked):
            if not item.sacked:
                item.sentAt = now
                self.retransmits += 1
                return encode(item)
        return None


def frameSize(frame):
    """
    The size of C{frame} as encoded, before escaping: what the peer's
    window counts, at most (escaping only adds bytes).
    """
    n = len(frame.payload)
    return frames.HEADER_SIZE + (n + frames.CRC.size if n else 0)


class Receiver:
    """
    The receiving half: accepts sequenced frames exactly once and in order.

    @ivar maxHeld: the most bytes (L{frameSize}) of out-of-order frames held
        at once: the window we advertise, since a sender that keeps to it
        never has more in flight.  Frames beyond it are dropped (counted in
        C{overflows}) and the sender resends them as lost.
    @ivar held: the bytes of out-of-order frames held now.
    """

    def __init__(self, maxHeld=1 << 20):
        self.expected = 0
        self.duplicates = 0
        self.gaps = 0
        self.overflows = 0
        self.maxHeld = maxHeld
        self.held = 0
        self.ooo = {}

    def accept(self, frame):
        """
        @return: the frames now deliverable, in order (possibly none).
        """
        d = seqDiff(frame.seq, self.expected)
        if d < 0 or frame.seq in self.ooo:
            self.duplicates += 1
            return []
        if d > 0:
            size = frameSize(frame)
            if (
                d < MAX_OUT_OF_ORDER
                and len(self.ooo) < MAX_OUT_OF_ORDER
                and self.held + size <= self.maxHeld
            ):
                self.ooo[frame.seq] = frame
                self.held += size
                self.gaps += 1
            else:
                self.overflows += 1
            return []
        out = [frame]
        self.expected = (self.expected + 1) % SEQ_MOD
        while self.ooo:
            nxt = self.ooo.pop(self.expected, None)
            if nxt is None:
                break
            self.held -= frameSize(nxt)
            out.append(nxt)
            self.expected = (self.expected + 1) % SEQ_MOD
        return out

    def sackRanges(self):
        """
        The out-of-order frames held, as (start, end-exclusive) ranges.
        """
        if not self.ooo:
            return []
        offsets = sorted(seqDiff(s, self.expected) for s in self.ooo)
        ranges = []
        start = prev = offsets[0]
        for off in offsets[1:]:
            if off != prev + 1:
                ranges.append((start, prev + 1))
                start = off
            prev = off
        ranges.append((start, prev + 1))
        base = self.expected
        return [((base + s) % SEQ_MOD, (base + e) % SEQ_MOD) for s, e in ranges[:MAX_SACK_RANGES]]


def encodeOutgoing(item, ack, tag):
    """
    The wire form of a queued frame with the current acknowledgement.
    """
    return frames.encode(item.type, item.stream, item.payload, item.seq, ack, tag)
