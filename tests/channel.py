"""
An in-memory byte channel that loses, corrupts and duplicates data, for
testing prokshy's protocol layers against a L{twisted.internet.task.Clock}.

It plays the part of a bhyve virtio-console: a byte pipe in each direction
that never reorders bytes but may drop whole chunks, flip bits and deliver a
chunk twice.  Like C{treq.testing.StubTreq}, it is a public test double: the
code under test is wired to it exactly as it is wired to a real transport
(it gets a C{write} callable, and the channel calls its C{dataReceived}),
and the test decides when bytes move and when time passes::

    channel = LossyChannel(seed=1, dropChunkRate=0.01, corruptByteRate=0.001)
    host = Link(channel.clock, channel.host.write, "host", hostListener)
    guest = Link(channel.clock, channel.guest.write, "guest", guestListener)
    channel.host.receiver = host
    channel.guest.receiver = guest
    guest.start(); host.start()
    channel.run(until=lambda: host.state == guest.state == "UP")

Everything is driven by one seeded C{random.Random}, so a run repeats
exactly (as long as the code under test is deterministic too: see
L{deterministicNonces} for prokshy's session nonces).

Fault model, applied to every C{write} at the end that writes it:

  - C{tamper}, if set, may rewrite or drop (return C{b""}) the whole write;
  - the write is cut into chunks of at most C{chunkSize} bytes (C{None}: the
    write is one chunk); a chunk is lost with probability C{dropChunkRate};
  - each byte of a surviving chunk has one bit flipped with probability
    C{corruptByteRate};
  - a surviving chunk is delivered twice with probability C{dupChunkRate};
  - a chunk is delivered C{latency} seconds after it was written, or later
    when C{bandwidth} (bytes per second) makes it wait for the chunks in
    front of it.  Delivery order is always write order.

Each end has its own fault settings (initialised from the channel's), so a
test can make one direction lossy, or cut it off with C{blackhole}.
"""

import math
import random
from collections import deque

from twisted.internet.task import Clock

__all__ = [
    "ChannelEnd",
    "ChannelStalled",
    "ChannelTimeout",
    "LinkPair",
    "LossyChannel",
    "deterministicNonces",
]


class ChannelTimeout(AssertionError):
    """
    L{LossyChannel.run} gave up before its condition became true.
    """


class ChannelStalled(ChannelTimeout):
    """
    L{LossyChannel.run}'s condition is false and nothing is left to happen:
    no bytes in the pipes and no timer on the clock.
    """


class ChannelEnd:
    """
    One end of a L{LossyChannel}.

    Bytes given to L{write} travel, subject to this end's faults, to the
    other end's C{receiver}.

    @ivar name: C{"host"} or C{"guest"}.
    @ivar peer: the other L{ChannelEnd}.
    @ivar receiver: an object with C{dataReceived(bytes)} that gets what the
        peer writes, or None (bytes arriving are then discarded, as bhyve
        discards them when nobody has the device open).
    @ivar observers: callables called with every write (before any fault),
        e.g. to check the writer's state at the moment it writes.
    @ivar tamper: None, or C{tamper(data) -> bytes} applied to every write
        before the random faults (return C{b""} to lose it all).
    @ivar blackhole: when true, everything written here is lost.
    @ivar echo: when true, everything written here also comes back to this
        end's own receiver, unharmed (a cooked tty echoing its input).
    @ivar dropChunkRate, chunkSize, corruptByteRate, dupChunkRate,
        latency, bandwidth: this end's fault settings (see the module
        docstring); they may be changed at any time.

    Counters: C{writes}, C{bytesWritten}, C{chunks}, C{droppedChunks},
    C{lostBytes} (dropped or blackholed), C{duplicatedChunks},
    C{corruptedBytes}, C{bytesDelivered}, C{undeliveredBytes} (arrived with
    no receiver), C{pending} (bytes in the pipe now) and C{maxPending}.
    """

    def __init__(
        self,
        channel,
        name,
        dropChunkRate=0.0,
        chunkSize=2048,
        corruptByteRate=0.0,
        dupChunkRate=0.0,
        latency=0.0,
        bandwidth=None,
    ):
        self.channel = channel
        self.name = name
        self.peer = None
        self.receiver = None
        self.observers = []
        self.tamper = None
        self.blackhole = False
        self.echo = False
        self.dropChunkRate = dropChunkRate
        self.chunkSize = chunkSize
        self.corruptByteRate = corruptByteRate
        self.dupChunkRate = dupChunkRate
        self.latency = latency
        self.bandwidth = bandwidth
        self._queue = deque()
        self._busyUntil = 0.0
        self._corruptRate = None
        self._untilCorrupt = 0
        self.writes = 0
        self.bytesWritten = 0
        self.chunks = 0
        self.droppedChunks = 0
        self.lostBytes = 0
        self.duplicatedChunks = 0
        self.corruptedBytes = 0
        self.bytesDelivered = 0
        self.undeliveredBytes = 0
        self.pending = 0
        self.maxPending = 0

    def __repr__(self):
        return "<ChannelEnd %s pending=%d>" % (self.name, self.pending)

    # -- the writer's side ------------------------------------------------

    def write(self, data):
        """
        Send C{data} toward the peer's receiver, subject to this end's faults.
        """
        data = bytes(data)
        self.writes += 1
        self.bytesWritten += len(data)
        for observer in list(self.observers):
            observer(data)
        if self.echo and data:
            self.peer._enqueue(data)
        if self.tamper is not None:
            data = self.tamper(data) or b""
        if not data:
            return
        if self.blackhole:
            self.lostBytes += len(data)
            return
        rng = self.channel.random
        size = self.chunkSize or len(data)
        for start in range(0, len(data), size):
            chunk = data[start : start + size]
            self.chunks += 1
            if rng.random() < self.dropChunkRate:
                self.droppedChunks += 1
                self.lostBytes += len(chunk)
                continue
            chunk = self._corrupt(chunk)
            self._enqueue(chunk)
            if rng.random() < self.dupChunkRate:
                self.duplicatedChunks += 1
                self._enqueue(chunk)

    def inject(self, data):
        """
        Make C{data} arrive at this end's receiver, after what is already in
        the pipe toward it, without faults (as if the peer had written it
        over a perfect channel).
        """
        self.peer._enqueue(bytes(data))

    # -- faults -----------------------------------------------------------

    def _gap(self, rate):
        """
        The number of clean bytes before the next corrupted one (geometric),
        so that corrupting megabytes costs one random draw per corruption.
        """
        if rate >= 1.0:
            return 0
        u = self.channel.random.random()
        return int(math.log(1.0 - u) / math.log(1.0 - rate))

    def _corrupt(self, chunk):
        rate = self.corruptByteRate
        if rate <= 0.0:
            return chunk
        if rate != self._corruptRate:
            self._corruptRate = rate
            self._untilCorrupt = self._gap(rate)
        pos = self._untilCorrupt
        if pos >= len(chunk):
            self._untilCorrupt = pos - len(chunk)
            return chunk
        rng = self.channel.random
        buf = bytearray(chunk)
        while pos < len(buf):
            buf[pos] ^= 1 << rng.randrange(8)
            self.corruptedBytes += 1
            pos += 1 + self._gap(rate)
        self._untilCorrupt = pos - len(buf)
        return bytes(buf)

    # -- the pipe ---------------------------------------------------------

    def _enqueue(self, chunk):
        now = self.channel.clock.seconds()
        sent = now
        if self.bandwidth:
            sent = max(now, self._busyUntil) + len(chunk) / float(self.bandwidth)
            self._busyUntil = sent
        due = max(sent + self.latency, self._queue[-1][0] if self._queue else 0.0)
        self._queue.append((due, chunk))
        self.pending += len(chunk)
        self.maxPending = max(self.maxPending, self.pending)

    def _deliver(self, now):
        """
        Deliver the chunks that are due, not counting any queued meanwhile.

        @return: how many were delivered.
        """
        queue = self._queue
        n = 0
        for _ in range(len(queue)):
            if not queue or queue[0][0] > now:
                break
            _, chunk = queue.popleft()
            self.pending -= len(chunk)
            n += 1
            receiver = self.peer.receiver
            if receiver is None:
                self.undeliveredBytes += len(chunk)
            else:
                self.bytesDelivered += len(chunk)
                receiver.dataReceived(chunk)
        return n

    def _nextDue(self):
        return self._queue[0][0] if self._queue else None

    def discard(self):
        """
        Lose everything in the pipe from this end (a channel reset).
        """
        self.lostBytes += self.pending
        self._queue.clear()
        self.pending = 0


class LossyChannel:
    """
    A two-ended in-memory channel with seeded faults; see the module
    docstring.

    @ivar clock: the L{Clock} the channel advances (and the code under test
        should schedule on).
    @ivar random: the C{random.Random} every fault is drawn from.
    @ivar host: the L{ChannelEnd} the host writes to.
    @ivar guest: the L{ChannelEnd} the guest writes to.
    """

    def __init__(
        self,
        clock=None,
        seed=0,
        dropChunkRate=0.0,
        chunkSize=2048,
        corruptByteRate=0.0,
        dupChunkRate=0.0,
        latency=0.0,
        bandwidth=None,
    ):
        self.clock = clock if clock is not None else Clock()
        self.random = random.Random(seed)
        options = dict(
            dropChunkRate=dropChunkRate,
            chunkSize=chunkSize,
            corruptByteRate=corruptByteRate,
            dupChunkRate=dupChunkRate,
            latency=latency,
            bandwidth=bandwidth,
        )
        self.host = ChannelEnd(self, "host", **options)
        self.guest = ChannelEnd(self, "guest", **options)
        self.host.peer = self.guest
        self.guest.peer = self.host

    @property
    def ends(self):
        return (self.host, self.guest)

    def setFaults(self, **options):
        """
        Change fault settings (C{dropChunkRate=...} and so on) on both ends.
        """
        for end in self.ends:
            for name, value in options.items():
                if not hasattr(end, name):
                    raise TypeError("unknown fault option %r" % (name,))
                setattr(end, name, value)

    @property
    def pending(self):
        """
        Bytes in the pipes, both directions.
        """
        return self.host.pending + self.guest.pending

    def pump(self):
        """
        Deliver every chunk that is due now, host to guest first.  Chunks
        written while delivering wait for the next pump.  The clock does not
        move.

        @return: the number of chunks delivered.
        """
        now = self.clock.seconds()
        return self.host._deliver(now) + self.guest._deliver(now)

    def flush(self, maxSteps=100000):
        """
        Pump until nothing is due, without moving the clock.

        @return: the number of chunks delivered.
        """
        total = 0
        for _ in range(maxSteps):
            n = self.pump()
            if not n:
                return total
            total += n
        raise ChannelTimeout("still delivering after %d pumps" % (maxSteps,))

    def _nextEvent(self):
        times = [t for t in (self.host._nextDue(), self.guest._nextDue()) if t is not None]
        calls = self.clock.getDelayedCalls()
        if calls:
            times.append(min(call.getTime() for call in calls))
        return min(times) if times else None

    def run(self, until=None, duration=None, maxSteps=500000):
        """
        Pump, and whenever nothing is due move the clock straight to the next
        delivery or timer, until C{until()} is true or C{duration} seconds of
        clock time have passed.

        @param until: a predicate, checked before every step.
        @param duration: seconds of clock time to run for at most.
        @param maxSteps: a bound on pumps plus clock moves.
        @return: True if C{until} became true (or, without C{until}, once
            C{duration} has passed); False if C{duration} ran out first.
        @raise ChannelTimeout: if C{maxSteps} ran out first.
        @raise ChannelStalled: if, with no C{duration}, nothing is left to
            happen and C{until} is still false.
        """
        if until is None and duration is None:
            raise TypeError("run() needs until or duration")
        clock = self.clock
        start = clock.seconds()
        deadline = None if duration is None else start + duration
        for _ in range(maxSteps):
            if until is not None and until():
                return True
            if self.pump():
                continue
            now = clock.seconds()
            if deadline is not None and now >= deadline:
                return until is None
            nxt = self._nextEvent()
            if deadline is not None:
                nxt = deadline if nxt is None else min(nxt, deadline)
            if nxt is None:
                raise ChannelStalled(
                    "nothing left to happen after %.3f s of clock time" % (now - start,)
                )
            clock.advance(max(nxt - now, 0.0))
        raise ChannelTimeout(
            "condition not reached after %d steps (%.3f s of clock time)"
            % (maxSteps, clock.seconds() - start)
        )


def deterministicNonces(testcase, seed=0):
    """
    Make prokshy's session nonces come from C{random.Random(seed)} for the
    duration of C{testcase}, so that frames (whose session tag derives from
    the nonces) and hence every seeded fault repeat from run to run.
    """
    from prokshy.link import session

    rng = random.Random(seed)
    testcase.patch(session, "_newNonce", lambda: "%016x" % (rng.getrandbits(64),))


class LinkPair:
    """
    A host and a guest L{prokshy.link.session.Link} joined by a
    L{LossyChannel}.

    @ivar channel: the L{LossyChannel}.
    @ivar clock: its clock.
    @ivar host: the host L{Link} (replace it with L{newHost}).
    @ivar guest: the guest L{Link} (replace it with L{newGuest}).
    """

    def __init__(self, hostListener, guestListener, hostConfig=None, guestConfig=None, **options):
        self.channel = LossyChannel(**options)
        self.clock = self.channel.clock
        self.host = self.newHost(hostListener, hostConfig)
        self.guest = self.newGuest(guestListener, guestConfig)

    def _link(self, end, role, listener, config):
        from prokshy.link.session import Link

        link = Link(self.clock, end.write, role, listener, config)
        end.receiver = link
        return link

    def newHost(self, listener, config=None):
        """
        Attach a new host Link to the host end (the old one, if any, just
        stops hearing anything: stop it to silence it too).
        """
        self.host = self._link(self.channel.host, "host", listener, config)
        return self.host

    def newGuest(self, listener, config=None):
        """
        Attach a new guest Link to the guest end.
        """
        self.guest = self._link(self.channel.guest, "guest", listener, config)
        return self.guest

    @property
    def up(self):
        return self.host.state == "UP" and self.guest.state == "UP"

    def connect(self, timeout=60.0):
        """
        Start both Links and run until the session is up on both sides.

        @raise ChannelTimeout: if it is not up within C{timeout} seconds.
        """
        self.guest.start()
        self.host.start()
        if not self.run(until=lambda: self.up, duration=timeout):
            raise ChannelTimeout("no session after %.1f s" % (timeout,))

    def run(self, until=None, duration=None, maxSteps=500000):
        """
        L{LossyChannel.run}.
        """
        return self.channel.run(until, duration, maxSteps)

    def stop(self):
        """
        Stop both Links (cancel their timers).
        """
        self.host.stop()
        self.guest.stop()
