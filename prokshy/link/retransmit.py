# -*- test-case-name: tests.unit.test_link,tests.unit.test_link_window -*-
"""
Retransmission: when to look for lost frames, and how large to make them.

A frame is resent only on proof that it was lost
(L{prokshy.link.reliable.Sender.detectLoss}): the peer has read past its
last copy, as its SACK ranges or a PONG show, without acknowledging or
holding it.  Time alone never resends anything, so a channel that loses
nothing sees no retransmission, however long the peer takes to read.

What time adds is the question.  When frames are unacknowledged and the
acknowledgements stop (the last frames of a burst were lost, or their
acknowledgements, or the peer is just slow), the retransmission timer
writes a I{checkpoint}: a PING behind everything we wrote.  Its PONG says
how far the peer has read, which either proves the missing frames lost
(they are resent at once) or shows that they are merely still queued.

    expiry         after                                        then
    -------------  -------------------------------------------  ----------------
    first          2.5 RTT + 5 ms (30 ms before any RTT) with    a checkpoint
                   no acknowledgement progress
    each further   RTO: 3 RTT + 50 ms within [rtoMin, rtoMax]    a checkpoint
                   (0.5 s before any RTT), doubling up to
                   rtoMax while nothing progresses

Progress (frames acknowledged, or newly held by the peer) starts over from
the first expiry; a resend waits a full delay before the next checkpoint.
The RTT is measured from PONGs.

The payload size adapts to the channel (L{PayloadSizer}).

L{Delivery} puts it together for one session: the sender and receiver of
L{prokshy.link.reliable}, acknowledgements, the proof of loss, resends,
checkpoints and sizes.
"""

from zope.interface import Interface

from prokshy.link.reliable import Receiver, Sender, decodeSack, encodeOutgoing, encodeSack, reserveFor
from prokshy.wire import frames

#: The payload size a session starts with (or the peer's limit, if lower).
#: Small, because frames already cut cannot be cut again: on a channel that
#: corrupts 0.2% of bytes a 4 KiB frame almost never arrives intact, and a
#: session that started with them stalled on them
#: (tests.unit.test_lossy.LossyChannelTests.test_channelRepeats).
INITIAL_PAYLOAD = 1024
#: Before any RTT sample.
INITIAL_RTO = 0.5


class RetransmitTimer:
    """
    The retransmission timer of one session (see the module docstring).

    @param rtt: C{rtt() -> float or None}, the round trip now.
    @param checkpoint: called when the timer expires.
    @ivar backoff: expiries since the last progress.
    """

    def __init__(self, clock, config, rtt, checkpoint):
        self.clock = clock
        self.config = config
        self._rtt = rtt
        self._checkpoint = checkpoint
        self._call = None
        self.backoff = 0

    @property
    def running(self):
        return self._call is not None

    def tailDelay(self):
        rtt = self._rtt()
        return max(2.5 * (rtt or 0.01), 0.01) + 0.005

    def rto(self):
        """
        The retransmission timeout, with the backoff applied.
        """
        rtt = self._rtt()
        config = self.config
        if rtt is None:
            base = INITIAL_RTO
        else:
            base = min(max(config.rtoMin, 3 * rtt + 0.05), config.rtoMax)
        return min(base * 2 ** max(self.backoff - 1, 0), max(config.rtoMax, base))

    def delay(self):
        return self.tailDelay() if self.backoff == 0 else self.rto()

    def _start(self, delay):
        self.stop()
        self._call = self.clock.callLater(delay, self._expired)

    def stop(self):
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def sent(self):
        """
        New frames went out: make sure the timer runs.
        """
        if self._call is None:
            self._start(self.delay())

    def progressed(self, outstanding):
        """
        The peer acknowledged or newly holds some of our frames.

        @param outstanding: whether frames are still unacknowledged.
        """
        self.backoff = 0
        if outstanding:
            self._start(self.delay())
        else:
            self.stop()

    def resent(self):
        """
        Frames proven lost were resent: wait a whole delay for them.
        """
        self._start(self.delay())

    def restart(self):
        """
        Start over from the first expiry (the peer was heard again after a
        silence).
        """
        self.backoff = 0
        self._start(self.delay())

    def _expired(self):
        self._call = None
        self.backoff += 1
        self._start(self.delay())
        self._checkpoint()


class PayloadSizer:
    """
    The payload size to use: halved (down to C{minimum}) while more than
    10% of frames need resending, doubled back (up to the peer's limit)
    while fewer than 2% do, judged over at least 64 frames.  Frames already
    in flight cannot be split again, so a session starts small.
    """

    def __init__(self, limit, minimum):
        self.limit = limit
        self.minimum = minimum
        self.size = min(limit, INITIAL_PAYLOAD)
        self._sent = 0
        self._lost = 0

    def sent(self, n):
        self._sent += n
        self._adapt()

    def lost(self, n):
        self._lost += n
        self._adapt()

    def _adapt(self):
        sent, lost = self._sent, self._lost
        if lost >= 4 and lost > 0.10 * max(sent, 1):
            self.size = max(self.minimum, self.size // 2)
        elif sent >= 64:
            if lost < 0.02 * sent:
                self.size = min(self.limit, self.size * 2)
        else:
            return
        self._sent = self._lost = 0


class IDeliveryOwner(Interface):
    """
    What a L{Delivery} needs of its link.
    """

    def writeFrames(data):
        """
        Write frames of the session to the channel (they are counted).
        """

    def mayWrite():
        """
        @return: whether frames of our own may be written now (the channel
            is not paused, and a guest is not quiet).
        """

    def sendPing():
        """
        Write a PING (through L{Delivery.writeControl}).
        """

    def pingWaiting(offset):
        """
        @return: whether a PING of ours ending after C{offset} is unanswered.
        """

    def currentRTT():
        """
        @return: the round trip in seconds, or None.
        """

    def deliveryWritable():
        """
        Nothing is queued behind the window any more.
        """


class Delivery:
    """
    One session's sequenced frames, both ways (see the module docstring).

    @ivar sender: the L{Sender}: the window, frames in flight, the ledger.
    @ivar receiver: the L{Receiver}.
    @ivar sizer: the L{PayloadSizer}.
    @ivar timer: the L{RetransmitTimer}.
    @ivar retransmits: copies written of frames proven lost.
    @ivar checkpoints: checkpoints written.
    @ivar stats: a C{dict} whose C{"retransmits"} and C{"checkpoints"} count
        up with ours (the link's, over all its sessions).
    """

    def __init__(self, owner, clock, config, window, precharge, sendPayload, minPayload, tag, stats):
        self._owner = owner
        self.stats = stats
        self._clock = clock
        self.tag = tag
        self.sender = Sender(window, reserveFor(window))
        self.sender.wrote(precharge)
        # A peer that keeps to our window never has more than that in
        # flight, so no more than that is held out of order.
        self.receiver = Receiver(config.window)
        self.sizer = PayloadSizer(sendPayload, minPayload)
        self.timer = RetransmitTimer(clock, config, owner.currentRTT, self._checkpoint)
        self.retransmits = 0
        self.checkpoints = 0
        self._ackOwed = False
        self._lastAckSent = None
        self._inWritable = False

    # -- input ------------------------------------------------------------

    def acknowledged(self, frame):
        """
        Any frame of the session: its acknowledgement (and an ACK's SACK
        ranges) retire our frames and may prove some lost.
        """
        sender = self.sender
        progress = sender.acknowledge(frame.ack)
        if frame.type == frames.ACK and frame.payload:
            progress += sender.sack(decodeSack(frame.payload))
        if progress:
            self.timer.progressed(bool(sender.unacked))
        self._findLoss()

    def received(self, frame):
        """
        A sequenced frame of the session.

        @return: the frames now deliverable, in order.
        """
        self._ackOwed = True
        # Acknowledge even a duplicate: it means our last ACK was lost.
        self._lastAckSent = None
        return self.receiver.accept(frame)

    def readThrough(self, offset):
        """
        A PONG showed that the peer has read our output up to C{offset}.
        """
        self.sender.readThrough(offset)
        self._findLoss()

    def _findLoss(self):
        lost = self.sender.detectLoss()
        if lost:
            self.sizer.lost(lost)
        self.pump()

    def _checkpoint(self):
        """
        The retransmission timer expired: write a PING behind everything,
        whose PONG shows how far the peer has read.
        """
        if not self.sender.unacked or not self._owner.mayWrite():
            self.timer.stop()
            return
        self.checkpoints += 1
        self.stats["checkpoints"] += 1
        self._owner.sendPing()

    def flushAck(self):
        """
        Acknowledge what we received, if that says anything new.  An ACK
        that would overflow the peer's window waits (still owed) until the
        peer has read more of what we wrote.
        """
        if not self._ackOwed:
            return
        receiver = self.receiver
        ranges = receiver.sackRanges()
        if ranges:
            wire = self.encode(frames.ACK, encodeSack(ranges), frames.FLAG_NACK)
        elif self._lastAckSent != receiver.expected:
            wire = self.encode(frames.ACK, b"")
        else:
            self._ackOwed = False
            return
        sender = self.sender
        if sender.inflight + len(wire) > sender.window:
            self._askReadMark()
            return
        self._ackOwed = False
        sender.wrote(len(wire))
        self._write(wire)
        if not sender.unacked and sender.inflight > sender.reserve:
            self._askReadMark()

    def _askReadMark(self):
        """
        With no frame of ours in flight, only a PONG tells how far the peer
        has read (our ACKs are never acknowledged): ask with a PING, unless
        one is still on its way.
        """
        if self.sender.unacked or not self._owner.mayWrite():
            return
        if not self._owner.pingWaiting(self.sender.consumed):
            self._owner.sendPing()

    # -- output -----------------------------------------------------------

    def encode(self, ftype, payload, flags=0):
        """
        An unsequenced frame of the session, with our acknowledgement.
        """
        return frames.encode(ftype, 0, payload, 0, self.receiver.expected, self.tag, flags)

    def _encodeOutgoing(self, item):
        return encodeOutgoing(item, self.receiver.expected, self.tag)

    def _write(self, data):
        self._lastAckSent = self.receiver.expected
        self._owner.writeFrames(data)

    def writeControl(self, ftype, payload, lf=False):
        """
        Write a PING or PONG: counted against the window, never held back
        (they are what finds out how far the peer has read).

        @param lf: put an LF before it, which makes the peer drop any
            truncated frame it holds.
        @return: the offset of our output just after it.
        """
        wire = self.encode(ftype, payload)
        if lf:
            wire = b"\n" + wire
        end = self.sender.wrote(len(wire))
        self._write(wire)
        return end

    def enqueue(self, ftype, stream, payload):
        self.sender.enqueue(ftype, stream, payload)
        self.pump()

    def pump(self):
        """
        Write whatever the window has room for: the copies of frames proven
        lost, then new frames.
        """
        if not self._owner.mayWrite():
            return
        sender = self.sender
        before = sender.retransmits
        wires = sender.takeSendable(self._encodeOutgoing, self._clock.seconds())
        if wires:
            resent = sender.retransmits - before
            if len(wires) > resent:
                self.sizer.sent(len(wires) - resent)
            self._write(b"".join(wires))
            if resent:
                self.retransmits += resent
                self.stats["retransmits"] += resent
                self.timer.resent()
            else:
                self.timer.sent()
        if not sender.queue and not self._inWritable:
            self._inWritable = True
            try:
                self._owner.deliveryWritable()
            finally:
                self._inWritable = False

    # -- the session's end, and going quiet -------------------------------

    def stop(self):
        self.timer.stop()

    def resume(self):
        """
        Going on after a quiet spell.
        """
        if self.sender.unacked:
            self.timer.restart()
