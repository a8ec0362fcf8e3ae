# -*- test-case-name: tests.unit.test_link -*-
"""
Selective-repeat reliability for sequenced frames: sequence numbers,
cumulative and selective acknowledgements, a bound on what may sit unread
in the peer's input queue, and the rule that says a frame was lost.

The channel may lose, corrupt or duplicate bytes but never reorders them.
The receiver delivers only the next expected sequence number, keeps frames
that arrive after a gap (at most the window it advertises, in bytes, and
at most L{MAX_OUT_OF_ORDER} of them), and reports them in SACK ranges so the
sender resends only what is missing; a frame that does not fit is dropped
as if it had been lost.  Duplicates are dropped.

The sender counts every byte it writes toward the peer (L{Sender.written}:
frames as escaped on the wire, resent copies, ACK, PING and PONG frames,
hello lines) and learns from the peer's answers how far the peer has read
(L{Sender.consumed}).  Because bytes are never reordered, an answer to
something we wrote at offset C{n} means the peer has read (or lost)
everything we wrote before C{n}.  The difference is what may still wait
in the peer's queue, and it is what the window bounds.  The same offsets
prove loss: a frame is resent only once the peer has read past its last
copy without acknowledging or holding it.  A channel that loses nothing
therefore never sees a retransmission, however slowly the peer reads.

Nothing here knows about time or I/O beyond the timestamps it is given.
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
    """
    A sequenced frame, queued or in flight.

    @ivar size: wire bytes of its last copy.
    @ivar firstEnd: L{Sender.written} just after its first copy.
    @ivar lastEnd: L{Sender.written} just after its last copy.
    @ivar sentAt: when its first copy was written.
    @ivar copies: how many copies were written.
    @ivar sacked: the peer holds it out of order.
    @ivar lost: proven lost (the peer read past its last copy without it),
        waiting to be resent.
    """

    seq = attr.ib()
    type = attr.ib()
    stream = attr.ib()
    payload = attr.ib()
    size = attr.ib(default=0)
    firstEnd = attr.ib(default=0)
    lastEnd = attr.ib(default=0)
    sentAt = attr.ib(default=0.0)
    copies = attr.ib(default=0)
    sacked = attr.ib(default=False)
    lost = attr.ib(default=False)


def reserveFor(window):
    """
    The part of a window kept for unsequenced frames (ACK, PING, PONG,
    hellos): sequenced frames use the rest.
    """
    return window // 8


class Sender:
    """
    The sending half: a queue of frames waiting for room in the window, the
    frames in flight (consecutive sequence numbers), and the byte ledger of
    everything written toward the peer.

    Invariants: C{consumed <= written}; every frame in C{unacked} has
    C{firstEnd <= lastEnd <= written}; C{lost} frames are neither sacked
    nor acknowledged, and their last copy ends at or before C{consumed}.

    @ivar window: the peer's window: the most bytes that may wait unread
        in its queue.
    @ivar reserve: the part of the window sequenced frames leave to the
        others (see L{reserveFor}).
    @ivar written: bytes written toward the peer this session.
    @ivar consumed: the peer has read (or lost) everything written before
        this offset.
    @ivar retransmits: copies written of frames proven lost.
    @ivar sent: frames written once.
    """

    def __init__(self, window, reserve=0):
        self.window = window
        self.reserve = reserve
        self.nextSeq = 0
        self.queue = deque()
        self.unacked = deque()
        self.written = 0
        self.consumed = 0
        self.retransmits = 0
        self.sent = 0
        self.lostCount = 0

    @property
    def inflight(self):
        """
        Bytes that may wait unread in the peer's queue: everything written
        that the peer is not known to have read.
        """
        return self.written - self.consumed

    @property
    def pending(self):
        """
        Frames queued or in flight.
        """
        return len(self.queue) + len(self.unacked)

    @property
    def room(self):
        """
        Bytes of sequenced frames that may be written now.
        """
        return self.window - self.reserve - self.inflight

    def wrote(self, n):
        """
        Count C{n} bytes of something other than a sequenced frame written
        toward the peer (a hello line, an ACK, PING or PONG).

        @return: the offset just after them.
        """
        self.written += n
        return self.written

    def enqueue(self, ftype, stream, payload):
        self.queue.append(_Outgoing(None, ftype, stream, payload))

    def _write(self, item, wire, now):
        self.written += len(wire)
        item.size = len(wire)
        item.lastEnd = self.written
        item.copies += 1
        if item.copies == 1:
            item.firstEnd = self.written
            item.sentAt = now

    def takeSendable(self, encode, now):
        """
        Take the frames that may be written now, in order: first the copies
        of frames proven lost, then new frames, while they fit the room left
        in the window.  A frame that fits no window (bigger than all of it)
        goes when it would be the only one in flight.

        @param encode: C{encode(outgoing) -> bytes}, the wire form.
        @return: the list of wire byte strings to write, at once and in
            this order (their offsets are counted as written).
        """
        out = []
        if self.lostCount:
            for item in self.unacked:
                if not item.lost:
                    continue
                wire = encode(item)
                if len(wire) > self.room and len(self.unacked) > 1:
                    return out
                item.lost = False
                self.lostCount -= 1
                self._write(item, wire, now)
                self.retransmits += 1
                out.append(wire)
        while self.queue:
            item = self.queue[0]
            if item.seq is None:
                item.seq = self.nextSeq
            wire = encode(item)
            if self.unacked and len(wire) > self.room:
                break
            self.queue.popleft()
            self.nextSeq = (self.nextSeq + 1) % SEQ_MOD
            self._write(item, wire, now)
            self.unacked.append(item)
            self.sent += 1
            out.append(wire)
        return out

    def _readPast(self, offset):
        if offset > self.consumed:
            self.consumed = offset

    def acknowledge(self, ack):
        """
        Retire the frames the peer has acknowledged (all before C{ack}): the
        peer has read at least through the first copy of each.

        @return: how many were retired.
        """
        n = 0
        unacked = self.unacked
        while unacked and seqDiff(ack, unacked[0].seq) > 0:
            item = unacked.popleft()
            if item.lost:
                self.lostCount -= 1
            self._readPast(item.firstEnd)
            n += 1
        return n

    def sack(self, ranges):
        """
        Mark the frames the peer holds out of order: it has read at least
        through the first copy of each.

        @return: how many were newly marked.
        """
        if not self.unacked:
            return 0
        first = self.unacked[0].seq
        count = len(self.unacked)
        marked = 0
        for start, end in ranges:
            lo = max(seqDiff(start, first), 0)
            hi = min(seqDiff(end, first), count)
            for i in range(lo, hi):
                item = self.unacked[i]
                if not item.sacked:
                    item.sacked = True
                    marked += 1
                    if item.lost:
                        item.lost = False
                        self.lostCount -= 1
                    self._readPast(item.firstEnd)
        return marked

    def readThrough(self, offset):
        """
        The peer answered something we wrote just before C{offset} (a PONG
        answering our PING): it has read, or lost, everything before it.
        """
        self._readPast(min(offset, self.written))

    def detectLoss(self):
        """
        Mark as lost every frame in flight whose last copy the peer has read
        past (it ends at or before L{consumed}) without acknowledging or
        holding it.  Only frames whose first copy ends there can qualify,
        and those come first, so the scan stops at the first that does not.

        @return: how many frames were newly found lost.
        """
        found = 0
        consumed = self.consumed
        for item in self.unacked:
            if item.firstEnd > consumed:
                break
            if not item.sacked and not item.lost and item.lastEnd <= consumed:
                item.lost = True
                self.lostCount += 1
                found += 1
        return found


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
