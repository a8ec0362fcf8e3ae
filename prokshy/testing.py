# -*- test-case-name: tests.unit.test_testing -*-
"""
Public test doubles for code written against prokshy, as C{treq.testing}
is for treq: no VM, no device, no process, no socket, no reactor.

  - L{LossyChannel}: an in-memory bhyve-like channel (a byte pipe each way
    that never reorders, but may drop, duplicate and corrupt), driven by a
    L{twisted.internet.task.Clock}.  Its faults are the simulator's own
    (L{prokshy.sim.faults.FaultInjector}), so there is one fault model.
  - L{LinkPair}: a host and a guest L{prokshy.link.session.Link} joined by a
    L{LossyChannel}.
  - L{MemoryVM}: the real guest agent protocol, with commands that are
    Python callables (L{MemoryRunner}), joined by a L{LossyChannel} to the
    real host protocol, whose L{prokshy.host.client.Session} is what your
    code talks to::

        vm = MemoryVM({"greet": lambda stdin: (0, b"hello " + stdin, b"")})
        session = vm.connect()
        result = vm.wait(session.exec("greet", stdin=b"world"))
        assert result.stdout == b"hello world" and result.code == 0

Everything is driven by one seeded C{random.Random}, so a run repeats
exactly (with L{deterministicNonces} for prokshy's session nonces).

Fault model, applied to every C{write} at the end that writes it:

  - C{tamper}, if set, may rewrite or drop (return C{b""}) the whole write;
  - the write is cut into chunks of at most C{chunkSize} bytes (C{None}: the
    write is one chunk); a chunk is lost with probability C{dropChunkRate},
    or else delivered twice with probability C{dupChunkRate}; each byte
    delivered has one bit flipped with probability C{corruptByteRate}
    (L{prokshy.sim.faults.FAULT_HELP});
  - a chunk is delivered C{latency} seconds after it was written, or later
    when C{bandwidth} (bytes per second) makes it wait for the chunks in
    front of it.  Delivery order is always write order.

Each end has its own fault settings (initialised from the channel's), so a
test can make one direction lossy, or cut it off with C{blackhole}.
"""

import random
from collections import deque

import attr
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer, ITransport
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from prokshy.execs.interfaces import ICommandNames, ICommandRunner, IExecution
from prokshy.execs.names import checkName
from prokshy.execs.refusals import CommandRefused
from prokshy.execs.status import ExitStatus
from prokshy.link.interfaces import ILinkListener
from prokshy.sim.faults import TO_GUEST, TO_HOST, FaultInjector, Faults

__all__ = [
    "EndTransport",
    "FrameTap",
    "ChannelEnd",
    "ChannelStalled",
    "ChannelTimeout",
    "LinkPair",
    "LossyChannel",
    "MemoryRunner",
    "MemoryVM",
    "deterministicNonces",
]

#: A chunk size large enough that the injector sees each of our chunks whole.
_WHOLE = 1 << 62


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
        self._direction = TO_GUEST if name == "host" else TO_HOST
        self._injector = FaultInjector(Faults(seed=channel.random.getrandbits(64), chunk=_WHOLE))
        self.dropChunkRate = dropChunkRate
        self.chunkSize = chunkSize
        self.corruptByteRate = corruptByteRate
        self.dupChunkRate = dupChunkRate
        self.latency = latency
        self.bandwidth = bandwidth
        self._queue = deque()
        self._busyUntil = 0.0
        self.writes = 0
        self.bytesWritten = 0
        self.chunks = 0
        self.lostBytes = 0
        self.bytesDelivered = 0
        self.undeliveredBytes = 0
        self.pending = 0
        self.maxPending = 0

    def __repr__(self):
        return "<ChannelEnd %s pending=%d>" % (self.name, self.pending)

    # -- fault settings: views of the injector's Faults --------------------

    def _fault(name):
        def get(self):
            return getattr(self._injector.faults, name)

        def set(self, value):
            self._injector.faults = attr.evolve(self._injector.faults, **{name: value})

        return property(get, set)

    dropChunkRate = _fault("dropRate")
    corruptByteRate = _fault("corruptRate")
    dupChunkRate = _fault("dupRate")
    del _fault

    @property
    def _stats(self):
        return self._injector.stats[self._direction]

    @property
    def droppedChunks(self):
        return self._stats.chunksDropped

    @property
    def duplicatedChunks(self):
        return self._stats.chunksDuplicated

    @property
    def corruptedBytes(self):
        return self._stats.bitsFlipped

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
        size = self.chunkSize or len(data)
        for start in range(0, len(data), size):
            chunk = data[start : start + size]
            self.chunks += 1
            mangled = self._injector.mangle(self._direction, chunk)
            if mangled:
                self._enqueue(mangled)
            else:
                self.lostBytes += len(chunk)

    def inject(self, data):
        """
        Make C{data} arrive at this end's receiver, after what is already in
        the pipe toward it, without faults (as if the peer had written it
        over a perfect channel).
        """
        self.peer._enqueue(bytes(data))

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
                if name not in _FAULT_OPTIONS:
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


_FAULT_OPTIONS = frozenset(
    ["dropChunkRate", "chunkSize", "corruptByteRate", "dupChunkRate", "latency", "bandwidth"]
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


@implementer(ILinkListener)
class FrameTap:
    """
    A link listener in front of another (a L{prokshy.streams.mux.Mux}) that
    records every frame it passes on: C{frames}, and C{of(type, stream)}.
    """

    def __init__(self, listener):
        self.listener = listener
        self.frames = []

    def linkUp(self, link, info):
        self.listener.linkUp(link, info)

    def linkDown(self, link, reason):
        self.listener.linkDown(link, reason)

    def linkRefused(self, link, reason):
        self.listener.linkRefused(link, reason)

    def frameReceived(self, frame):
        self.frames.append(frame)
        self.listener.frameReceived(frame)

    def linkWritable(self):
        self.listener.linkWritable()

    def of(self, ftype, sid=None):
        """
        The frames of type C{ftype} (of stream C{sid}, if given), in order.
        """
        return [f for f in self.frames if f.type == ftype and (sid is None or f.stream == sid)]


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


# -- an in-memory guest agent ------------------------------------------------


@implementer(ICommandNames)
class _Names:
    def __init__(self, commands):
        self._commands = commands

    def resolve(self, name):
        checkName(name)
        if name not in self._commands:
            raise CommandRefused("no-such-command", "no such command %r" % (name,))
        return "memory:" + name


@implementer(IExecution, IPushProducer)
class _MemoryExecution:
    """
    One run of a command table entry: stdin is gathered until it is closed,
    then the callable runs and its output is delivered, paced by the sink's
    C{pauseProducing}/C{resumeProducing}.
    """

    def __init__(self, clock, name, command, sink):
        self.clock = clock
        self.name = name
        self.command = command
        self.sink = sink
        self.finished = False
        self.done = Deferred()
        self._stdin = []
        self._output = deque()
        self._paused = False
        self._status = None

    def writeStdin(self, data):
        self._stdin.append(bytes(data))

    def registerStdinProducer(self, producer, streaming=True):
        pass

    def unregisterStdinProducer(self):
        pass

    def closeStdin(self):
        if self._status is not None:
            return
        try:
            code, stdout, stderr = self.command(b"".join(self._stdin))
        except Exception:
            self.clock.callLater(0, self._fail, Failure())
            return
        self._status = ExitStatus(code=code, signal=None)
        self._output.extend([(1, stdout), (2, stderr)])
        self.clock.callLater(0, self._flush)

    def _fail(self, failure):
        self._status = ExitStatus(code=1, signal=None)
        self._output.append((2, ("%s: %s\n" % (failure.type.__name__, failure.getErrorMessage())).encode()))
        self._flush()

    def _flush(self):
        while self._output and not self._paused:
            which, data = self._output.popleft()
            if data:
                (self.sink.stdoutReceived if which == 1 else self.sink.stderrReceived)(data)
        if not self._output and not self.finished and self._status is not None:
            self.finished = True
            self.done.callback(self._status)

    def cancel(self):
        if not self.finished:
            self._output.clear()
            self._status = ExitStatus(code=None, signal=15)
            self.finished = True
            self.done.callback(self._status)

    def signal(self, sig):
        self._output.clear()
        if not self.finished:
            self._status = ExitStatus(code=None, signal=sig)
            self.finished = True
            self.done.callback(self._status)

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self._flush()

    def stopProducing(self):
        self.cancel()


@implementer(ICommandRunner)
class MemoryRunner:
    """
    A command runner whose commands are Python callables, for
    L{prokshy.guest.agent.GuestProtocol} in L{MemoryVM}.

    @param commands: C{{name: command}}, where C{command(stdin: bytes)}
        returns C{(code, stdout: bytes, stderr: bytes)}.  An exception
        becomes exit code 1 with its message on stderr.
    """

    def __init__(self, clock, commands):
        self.reactor = clock
        self.commands = dict(commands)
        self.directory = _Names(self.commands)
        self.started = []

    def start(self, name, sink, timeout=None, line=False):
        self.directory.resolve(name)
        execution = _MemoryExecution(self.reactor, name, self.commands[name], sink)
        self.started.append(execution)
        return execution


@implementer(ITransport)
class EndTransport:
    """
    A protocol's transport onto one L{ChannelEnd} (a consumer too: it
    records the producer registered with it, and never pauses it).
    """

    disconnecting = False

    def __init__(self, end):
        self.end = end
        self.producer = None

    def write(self, data):
        self.end.write(data)

    def writeSequence(self, data):
        self.end.write(b"".join(data))

    def loseConnection(self):
        self.disconnecting = True

    abortConnection = loseConnection

    def getPeer(self):
        return ("memory", self.end.peer.name)

    def getHost(self):
        return ("memory", self.end.name)

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None


class MemoryVM:
    """
    A VM in memory: the real guest agent protocol running L{MemoryRunner}
    commands, joined by a L{LossyChannel} to the real host protocol.

    @ivar channel: the L{LossyChannel} (set faults on it).
    @ivar clock: the clock everything runs on.
    @ivar guest: the guest's L{prokshy.guest.agent.GuestProtocol}.
    @ivar host: the host's L{prokshy.host.client.HostProtocol}.
    @ivar runner: the L{MemoryRunner}.
    """

    def __init__(self, commands, maxConcurrency=8, maxQueue=64, **channelOptions):
        from prokshy.guest.agent import GuestProtocol
        from prokshy.guest.execs import GuestStreams
        from prokshy.host.client import HostProtocol

        self.channel = LossyChannel(**channelOptions)
        self.clock = self.channel.clock
        self.runner = MemoryRunner(self.clock, commands)
        streams = GuestStreams(self.runner, maxConcurrency, maxQueue, startedAt=0.0)
        self.guest = GuestProtocol(self.runner, self.clock, streams)
        self.host = HostProtocol(self.clock)
        for end, proto in ((self.channel.guest, self.guest), (self.channel.host, self.host)):
            proto.makeConnection(EndTransport(end))
            end.receiver = proto

    def connect(self, timeout=60.0):
        """
        Run until the session is up.

        @return: the host's L{prokshy.host.client.Session}.
        @raise ChannelTimeout: if it is not up within C{timeout} clock seconds.
        """
        return self.wait(self.host.whenSession(), timeout)

    def wait(self, d, timeout=60.0):
        """
        Run the channel and the clock until C{d} fires.

        @return: its result.
        @raise: its failure's exception, or L{ChannelTimeout}.
        """
        if not isinstance(d, Deferred):
            d = succeed(d)
        box = []
        d.addBoth(box.append)
        if not self.channel.run(until=lambda: bool(box), duration=timeout):
            raise ChannelTimeout("nothing after %.1f s of clock time" % (timeout,))
        result = box[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def stop(self):
        """
        End the session and cancel every timer.
        """
        if self.host.link is not None:
            self.host.link.stop("test over")
        if self.guest.link is not None:
            self.guest.link.stop("test over")
        self.channel.flush()
