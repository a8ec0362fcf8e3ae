"""
Forwarding under load and across restarts (issue 9), with every piece a
real process, as in use:

    this process               twistd prokshy-host        prokshy-vmsim     twistd prokshy-guest
    (Twisted clients) --tcp--> (--forward / --reverse) --unix--> (bhyve) --pty--> (its allowlists)
                                                                                     |
    upstream (a child process, asyncio, 127.0.0.1) <---------------- tcp -----------+
                       ^------------------------------- tcp: a --reverse's target (the host side)

The guest agent runs on this machine too, so the one upstream server on
127.0.0.1 is both the service "inside the guest" that a C{--forward}
reaches and the host service a C{--reverse} reaches.  Every transfer is
checked end to end: the data is a seeded pseudo-random pattern, read from
an offset of its own per connection, so that bytes delivered to the wrong
connection, lost, duplicated or reordered change its sha256.

The upstream's protocol (L{UpstreamProtocol}; one request line, then
bytes): C{GEN TAG GROUP COUNT OFFSET N} sends N bytes of the pattern from
OFFSET and closes; C{SHA TAG GROUP COUNT} reads until EOF and answers
C{SHA256HEX COUNT}; C{ECHO TAG} echoes until EOF; C{STAT TAG} answers the
C{sent recv} counts of connection TAG so far.  Every connection is answered
C{HI} at once, then C{GO} once COUNT connections of its GROUP have arrived
(a barrier: with it the test proves how many connections were open at
once, rather than timing them).  The upstream prints C{open TAG} and
C{end TAG sent S recv R} on stdout for each connection, so the test sees
the upstream side of a connection end.

Assertions are counts and causes (bytes carried, connections open at once,
a connection ended, counters that stopped), with generous timeouts only so
that a hang fails.  The one timed bound is the issue's own: a reverse
forward's listener is back in the guest within 2 s of the session being up
(L{REVERSE_BUDGET}), checked by polling every 0.1 s from the daemon's log
line C{vm default: connected -> up}.

The tests:

  - L{ManyConnectionsTests}: 500 connections at once through one channel,
    1 MiB each, intact;
  - L{StuckConnectionTests}: a client that never reads stops only its own
    connection, and neither the daemon's nor the guest's memory grows;
  - L{FaultyChannelTests}: 8 MiB each way through a channel that drops,
    duplicates and corrupts, intact;
  - L{RestartTests}: the guest agent killed mid-transfer and started again,
    a VM reboot, a daemon restart (listeners stay up and close new
    connections at once, reverse listeners come back within 2 s of the
    session), and the connections open when a session dies closed on both
    sides.

Run this module alone: C{python -m twisted.trial tests.system.test_forward_load}.
"""

import asyncio
import hashlib
import os
import random
import re
import resource
import signal
import socket
import sys
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.harness import PACKAGE_ROOT, freeTcpPort, rssBytes, shortTempDir, sleep, waitFor, withTimeout

MiB = 1024 * 1024

#: The pattern every transfer carries: L{PATTERN_LENGTH} seeded bytes,
#: repeated.  A prime length, so that no chunk size lines up with it.
SEED = 9
PATTERN_LENGTH = 1048573
CHUNK = 65536

#: Seconds a reverse forward may take to listen again in the guest once
#: the session is up (the issue: "within 2 s of the session being up"),
#: and how often the test tries it.
REVERSE_BUDGET = 2.0
REVERSE_POLL = 0.1

#: Liveness for the restart tests: a peer that went silent is noticed
#: after this (the defaults, 1 s and 8 s, would only make them slower).
FAST_LIVENESS = ("--ping-interval", "0.2", "--dead-after", "3")

_HANDSHAKE = b"HI\nGO\n"


# -- the data ---------------------------------------------------------------

_patternCache = []


def pattern():
    """
    The pattern, twice over (so that any chunk up to its length, from any
    offset, is one slice).
    """
    if not _patternCache:
        block = random.Random(SEED).randbytes(PATTERN_LENGTH)
        _patternCache.append(block + block)
    return _patternCache[0]


def pieces(offset, n, size=CHUNK):
    """
    The C{n} bytes of the pattern from C{offset}, in pieces of at most
    C{size} bytes.
    """
    data = pattern()
    at = offset % PATTERN_LENGTH
    left = n
    size = min(size, PATTERN_LENGTH)
    while left:
        k = min(left, size)
        yield data[at : at + k]
        at = (at + k) % PATTERN_LENGTH
        left -= k


def digest(offset, n):
    """
    The sha256 (hex) of the C{n} bytes of the pattern from C{offset}.
    """
    h = hashlib.sha256()
    for piece in pieces(offset, n, PATTERN_LENGTH):
        h.update(piece)
    return h.hexdigest()


# -- the upstream server (a child process) -----------------------------------


class UpstreamProtocol(asyncio.Protocol):
    """
    One connection to the upstream server (see the module docstring).
    """

    #: GROUP name -> the connections waiting at its barrier.
    groups = {}
    #: TAG -> the latest connection with that tag.
    byTag = {}

    def connection_made(self, transport):
        self.transport = transport
        self.head = b""
        self.mode = None
        self.tag = "?"
        self.sent = 0
        self.recv = 0
        self.left = 0
        self.offset = 0
        self.started = False
        self.paused = False
        self.closed = False
        self.hash = hashlib.sha256()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        if self.mode is None:
            self.head += data
            if b"\n" not in self.head:
                if len(self.head) > 1000:
                    self.transport.abort()
                return
            line, data = self.head.split(b"\n", 1)
            self.head = b""
            if not self._request(line.decode("ascii", "replace").split()):
                return
        if not data:
            return
        self.recv += len(data)
        if self.mode == "SHA":
            self.hash.update(data)
        elif self.mode == "ECHO":
            self._write(data)

    def _request(self, words):
        self.mode = words[0] if words else "?"
        self.tag = words[1] if len(words) > 1 else "?"
        if self.mode == "STAT":
            other = self.byTag.get(self.tag)
            answer = "%d %d\n" % (other.sent, other.recv) if other is not None else "none\n"
            self.transport.write(answer.encode())
            self.transport.close()
            return False
        if self.mode not in ("GEN", "SHA", "ECHO"):
            self.transport.write(b"bad request\n")
            self.transport.close()
            return False
        group, count = "-", 0
        if self.mode in ("GEN", "SHA"):
            group, count = words[2], int(words[3])
        if self.mode == "GEN":
            self.offset, self.left = int(words[4]), int(words[5])
        self.byTag[self.tag] = self
        _emit("open %s" % (self.tag,))
        self.transport.write(b"HI\n")
        members = self.groups.setdefault(group, [])
        members.append(self)
        if len(members) >= count:
            del self.groups[group]
            for member in members:
                member.go()
        return True

    def go(self):
        if self.closed:
            return
        self.started = True
        self.transport.write(b"GO\n")
        if self.mode == "GEN":
            self._pieces = pieces(self.offset, self.left)
            self._pump()

    def _write(self, data):
        self.sent += len(data)
        self.transport.write(data)

    def _pump(self):
        while not self.paused and not self.closed and self.left:
            piece = next(self._pieces)
            self.left -= len(piece)
            self._write(piece)
        if self.left == 0 and not self.closed:
            self.transport.close()

    def pause_writing(self):
        self.paused = True
        if self.mode == "ECHO":
            self.transport.pause_reading()

    def resume_writing(self):
        self.paused = False
        if self.mode == "ECHO":
            self.transport.resume_reading()
        elif self.mode == "GEN" and self.started:
            self._pump()

    def eof_received(self):
        if self.mode == "SHA":
            self.transport.write(("%s %d\n" % (self.hash.hexdigest(), self.recv)).encode())
            self.transport.close()
        elif self.mode == "ECHO":
            self.transport.close()  # after what is buffered
        return True

    def connection_lost(self, exc):
        self.closed = True
        if self.mode in ("GEN", "SHA", "ECHO"):
            _emit("end %s sent %d recv %d %s" % (self.tag, self.sent, self.recv, "ok" if exc is None else "error"))


def _emit(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def upstreamMain():
    """
    Serve L{UpstreamProtocol} on 127.0.0.1 (a port of the system's
    choosing, printed as C{port N}) until SIGTERM.
    """
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(UpstreamProtocol, "127.0.0.1", 0, backlog=1024))
    _emit("port %d" % (server.sockets[0].getsockname()[1],))
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.run_forever()


# -- the test's clients ------------------------------------------------------


@implementer(IPushProducer)
class _Sender:
    """
    Writes a transfer's pattern bytes to its transport as fast as the
    transport takes them (a streaming producer), then shuts down the write
    side.
    """

    def __init__(self, transfer, offset, n):
        self.transfer = transfer
        self.pieces = pieces(offset, n)
        self.left = n
        self.paused = False
        self.stopped = False

    def start(self):
        self.transfer.transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        transport = self.transfer.transport
        while not self.paused and not self.stopped and self.left:
            piece = next(self.pieces)
            self.left -= len(piece)
            transport.write(piece)
        if not self.left and not self.stopped:
            self.stopped = True
            transport.unregisterProducer()
            transport.loseWriteConnection()

    def stopProducing(self):
        self.stopped = True


class _Ends:
    """
    A client protocol's events, each waited for with a Deferred of one's
    own (so that a waiter that timed out leaves the others alone):
    L{whenHi} (the upstream's C{HI}, or the end) and L{whenDone} (the
    connection's end; C{reason} then holds its L{Failure}).
    """

    def __init__(self):
        self.isLost = False
        self.reason = None
        self.answered = False
        self._hiWaiters = []
        self._doneWaiters = []

    def whenHi(self):
        return self._wait(self.answered or self.isLost, self._hiWaiters)

    def whenDone(self):
        return self._wait(self.isLost, self._doneWaiters)

    def _wait(self, already, waiters):
        d = Deferred()
        if already:
            d.callback(self)
        else:
            waiters.append(d)
        return d

    def _fireHi(self):
        if not self.answered:
            self.answered = True
            self._fire(self._hiWaiters)

    def _fire(self, waiters):
        pending = list(waiters)
        del waiters[:]
        for d in pending:
            d.callback(self)

    def connectionLost(self, reason):
        self.isLost = True
        self.reason = reason
        self._fire(self._hiWaiters)
        self._fire(self._doneWaiters)

    def abort(self):
        if not self.isLost and self.transport is not None:
            self.transport.abortConnection()


class Transfer(_Ends, Protocol):
    """
    One client connection through a forward: sends a request line to the
    upstream, waits for its C{HI} and C{GO}, then sends C{send} = (offset,
    n) bytes of the pattern, if given, and takes in everything until the
    connection ends (hashing it, keeping the first bytes).

    @ivar received: payload bytes received after C{HI GO}.
    """

    KEEP = 4096

    def __init__(self, request, send=None):
        self.request = request
        self.send = send
        _Ends.__init__(self)
        self.prefix = b""
        self.received = 0
        self.hash = hashlib.sha256()
        self.head = b""

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        self.transport.write(self.request.encode("ascii") + b"\n")

    def dataReceived(self, data):
        if len(self.prefix) < len(_HANDSHAKE):
            need = len(_HANDSHAKE) - len(self.prefix)
            self.prefix += data[:need]
            data = data[need:]
            if not _HANDSHAKE.startswith(self.prefix):
                self.transport.abortConnection()
                return
            if len(self.prefix) >= 3:
                self._fireHi()
            if len(self.prefix) == len(_HANDSHAKE) and self.send is not None:
                _Sender(self, *self.send).start()
        if data:
            self.received += len(data)
            self.hash.update(data)
            if len(self.head) < self.KEEP:
                self.head += data[: self.KEEP - len(self.head)]

    @property
    def clean(self):
        """
        Whether the connection ended cleanly (FIN, not a reset or an abort).
        """
        return self.reason is not None and self.reason.check(ConnectionDone) is not None


class Probe(_Ends, Protocol):
    """
    A client that sends nothing, or C{data}, and records what comes back
    until the connection ends.
    """

    def __init__(self, data=b""):
        _Ends.__init__(self)
        self.data = data
        self.received = b""

    def connectionMade(self):
        if self.data:
            self.transport.write(self.data)

    def dataReceived(self, data):
        self.received += data


def raiseFileLimit():
    """
    Raise this process's soft RLIMIT_NOFILE to its hard limit (its children,
    the daemon, the agent and the upstream, inherit it).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 65536
    if soft == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the processes -----------------------------------------------------------


class Child(ProcessProtocol):
    """
    A child process whose output (stdout and stderr, interleaved) the test
    watches for patterns.

    @ivar output: everything it wrote so far.
    @ivar ended: fires once it has exited.
    """

    def __init__(self, name):
        self.name = name
        self.output = bytearray()
        self.ended = Deferred()
        self.isEnded = False
        self._watches = []

    @property
    def pid(self):
        return self.transport.pid

    def outReceived(self, data):
        self.output += data
        self._check()

    errReceived = outReceived

    def _check(self):
        for watch in list(self._watches):
            regex, start, d = watch
            match = regex.search(self.output, start)
            if match is not None:
                self._watches.remove(watch)
                d.callback((match, time.monotonic()))

    def watch(self, pattern, start=0):
        """
        @return: a Deferred firing with (the match, the monotonic time it was
            seen) once the output from C{start} on matches C{pattern} (a
            bytes regular expression), or failing if the process ends first.
        """
        watch = (re.compile(pattern), start, None)

        def cancel(d):
            if watch in self._watches:
                self._watches.remove(watch)

        d = Deferred(cancel)
        watch = (watch[0], start, d)
        if self.isEnded:
            match = watch[0].search(self.output, start)
            if match is None:
                d.errback(AssertionError("%s exited without printing %r:\n%s" % (self.name, pattern, self.tail())))
            else:
                d.callback((match, time.monotonic()))
            return d
        self._watches.append(watch)
        self._check()
        return d

    def tail(self, n=3000):
        return bytes(self.output[-n:]).decode("utf-8", "replace")

    def processEnded(self, reason):
        self.isEnded = True
        self._check()
        watches, self._watches = self._watches, []
        for regex, start, d in watches:
            d.errback(AssertionError("%s exited without printing %r:\n%s" % (self.name, regex.pattern, self.tail())))
        self.ended.callback(None)

    def kill(self, sig="KILL"):
        """
        Send C{sig}; the Deferred fires once the process has exited.
        """
        if not self.isEnded:
            try:
                self.transport.signalProcess(sig)
            except Exception:
                pass
        return self.ended


def _twistd(*args):
    return ["-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="] + list(args)


class ForwardRig:
    """
    The processes of one test: the upstream, the simulator, the guest agent
    and the daemon (each restartable), the daemon's control session, and
    the test's clients; all stopped at cleanup.

    @ivar forwards: the daemon's C{--forward}/C{--reverse} options, in order
        (so forward ids are "1", "2", ... in that order).
    """

    def __init__(self, testCase, simArgs=(), guestArgs=(), daemonArgs=()):
        self.testCase = testCase
        self.dir = shortTempDir(testCase, "pkfl")
        self.sockPath = os.path.join(self.dir, "vm.sock")
        self.devPath = os.path.join(self.dir, "vm.dev")
        self.ctlPath = os.path.join(self.dir, "ctl.sock")
        self.cmdDir = os.path.join(self.dir, "command.d")
        os.mkdir(self.cmdDir)
        self.runDir = os.path.join(self.dir, "run")
        self.simArgs = list(simArgs)
        self.guestArgs = list(guestArgs)
        self.daemonArgs = list(daemonArgs)
        self.forwards = []
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, self.env.get("PYTHONPATH")]))
        self.children = []
        self.upstream = self.sim = self.guest = self.daemon = None
        self.upstreamPort = None
        self._controls = []
        self._control = None
        self.clients = []
        testCase.addCleanup(self.stop)

    # -- configuration ----------------------------------------------------

    def forward(self, spec):
        self.forwards += ["--forward", spec]
        return str(len(self.forwards) // 2)

    def reverse(self, spec):
        self.forwards += ["--reverse", spec]
        return str(len(self.forwards) // 2)

    # -- processes --------------------------------------------------------

    def _spawn(self, name, args, cwd=None):
        child = Child(name)
        reactor.spawnProcess(child, sys.executable, [sys.executable] + args, env=self.env, path=cwd or self.dir)
        self.children.append(child)
        return child

    @inlineCallbacks
    def startUpstream(self):
        self.upstream = self._spawn("upstream", ["-m", "tests.system.test_forward_load", "upstream"], PACKAGE_ROOT)
        match, _ = yield withTimeout(self.upstream.watch(rb"port (\d+)\n"), 30, "the upstream's port")
        self.upstreamPort = int(match.group(1))
        return self.upstreamPort

    def startSim(self):
        self.sim = self._spawn(
            "vmsim",
            ["-m", "prokshy.sim.vmsim", "--socket", self.sockPath, "--device-link", self.devPath] + self.simArgs,
        )
        return withTimeout(self.sim.watch(rb"console: host socket"), 30, "the simulator to start")

    def startGuest(self):
        self.guest = self._spawn(
            "guest",
            _twistd(
                "prokshy-guest", "--device", self.devPath, "--command-dir", self.cmdDir, "--run-dir", self.runDir
            )
            + self.guestArgs,
        )
        return withTimeout(self.guest.watch(rb"device \S+ opened"), 30, "the agent to open its device")

    def startDaemon(self):
        """
        Start the daemon.

        @return: a Deferred firing with the monotonic time its log said the
            VM is up.
        """
        self._control = None
        self.daemon = self._spawn(
            "daemon",
            _twistd("prokshy-host", "--socket-path", self.sockPath, "--listen", "unix:" + self.ctlPath)
            + self.daemonArgs
            + self.forwards,
        )
        return self.whenUp(0)

    def whenUp(self, start=None):
        """
        @param start: where in the daemon's log to look from (default: its
            end now, i.e. the next time the VM comes up).
        @return: a Deferred firing with the monotonic time the daemon's log
            line C{vm default: ... -> up} was read.
        """
        daemon = self.daemon
        start = len(daemon.output) if start is None else start
        d = withTimeout(daemon.watch(rb"vm default: \w+ -> up", start), 60, "the daemon's VM up")
        d.addCallback(lambda result: result[1])
        return d

    @inlineCallbacks
    def startAll(self):
        """
        Start the upstream, the simulator, the agent and the daemon; wait
        until every forward is active.
        """
        if self.upstream is None:
            yield self.startUpstream()
        yield self.startSim()
        yield self.startGuest()
        yield self.startDaemon()
        yield self.waitRows(lambda rows: rows and all(r["state"] == "active" for r in rows), "every forward active")

    def stopChild(self, child, sig="KILL"):
        return withTimeout(child.kill(sig), 30, "%s to exit" % (child.name,))

    # -- the daemon's control session ---------------------------------------

    @inlineCallbacks
    def control(self):
        """
        @return: a Deferred firing with a L{prokshy.host.client.Session} of
            the daemon's control socket (reconnected after a daemon restart).
        """
        from prokshy.host.client import HostProtocol

        proto = self._control
        if proto is not None and proto.transport is not None and proto.transport.connected and proto.mux.connected:
            return proto.session
        proto = HostProtocol(reactor)
        proto.lost = Deferred()
        proto.whenLost(lambda reason: proto.lost.callback(None))
        yield UNIXClientEndpoint(reactor, self.ctlPath, timeout=5).connect(Factory.forProtocol(lambda: proto))
        self._controls.append(proto)
        session = yield withTimeout(proto.whenSession(), 20, "a session with the daemon")
        self._control = proto
        return session

    @inlineCallbacks
    def rows(self):
        session = yield self.control()
        rows = yield withTimeout(session.forwardList(), 30, "forward-list")
        return rows

    @inlineCallbacks
    def row(self, fid):
        rows = yield self.rows()
        for row in rows:
            if row["id"] == fid:
                return row
        raise AssertionError("no forward %s in %r" % (fid, rows))

    @inlineCallbacks
    def vmStatus(self):
        session = yield self.control()
        status = yield withTimeout(session.status(), 30, "status")
        return status["vms"][0]

    @inlineCallbacks
    def waitRows(self, predicate, what, timeout=60.0, interval=0.1):
        """
        Poll the daemon's forward-list until C{predicate(rows)} is true.
        """
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                last = yield self.rows()
            except Exception as e:  # the daemon may be starting
                last = e
            else:
                if predicate(last):
                    return last
            if time.monotonic() > deadline:
                raise AssertionError("timed out after %.0f s waiting for %s; last: %r" % (timeout, what, last))
            yield sleep(interval)

    # -- clients --------------------------------------------------------------

    def connect(self, port, protocol, semaphore=None):
        """
        Connect C{protocol} to 127.0.0.1:C{port}.  With C{semaphore}, hold
        one of its slots until the upstream's C{HI} arrived (or the
        connection ended): the daemon's listener has Twisted's default
        backlog (50), and a SYN it drops waits a second before it is sent
        again.

        @return: a Deferred firing with C{protocol} once connected (and, with
            C{semaphore}, answered).
        """
        self.clients.append(protocol)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=30)
        if semaphore is None:
            d = endpoint.connect(Factory.forProtocol(lambda: protocol))
            return d.addCallback(lambda _: protocol)

        @inlineCallbacks
        def attempt():
            yield endpoint.connect(Factory.forProtocol(lambda: protocol))
            yield protocol.whenHi()
            return protocol

        return semaphore.run(attempt)

    @inlineCallbacks
    def upstreamRequest(self, line):
        """
        One request straight to the upstream (no forward); the answer up to
        its close.
        """
        probe = Probe(line.encode("ascii") + b"\n")
        yield self.connect(self.upstreamPort, probe)
        yield withTimeout(probe.whenDone(), 30, "the upstream's answer to %r" % (line,))
        return probe.received

    @inlineCallbacks
    def upstreamSent(self, tag):
        """
        The bytes the upstream has sent so far on connection C{tag}.
        """
        answer = yield self.upstreamRequest("STAT %s" % (tag,))
        return int(answer.split()[0])

    def upstreamEnded(self, tag, timeout=30):
        """
        @return: a Deferred firing with the upstream's C{end TAG ...} line's
            match (C{sent}, C{recv}, C{how}) once it printed it.
        """
        d = self.upstream.watch(rb"end %s sent (\d+) recv (\d+) (\w+)\n" % (re.escape(tag.encode()),))
        d = withTimeout(d, timeout, "the upstream's end of connection %s" % (tag,))
        return d.addCallback(lambda result: result[0])

    @inlineCallbacks
    def echoThrough(self, port, tag, data=b"ping"):
        """
        One small echo through a forward's port.

        @return: a Deferred firing with the bytes echoed (after C{HI GO}).
        """
        transfer = Transfer("ECHO %s" % (tag,))
        yield self.connect(port, transfer)
        yield withTimeout(transfer.whenHi(), 30, "the upstream's HI through port %d" % (port,))
        transfer.transport.write(data)
        yield waitFor(
            lambda: transfer.received >= len(data) or transfer.isLost, "the echo through %d" % (port,), 30
        )
        transfer.transport.loseConnection()
        yield withTimeout(transfer.whenDone(), 30, "the echo's end")
        return transfer.head

    @inlineCallbacks
    def download(self, port, tag, offset, n):
        """
        C{n} bytes of the pattern from the upstream through a forward's
        port, checked.
        """
        transfer = Transfer("GEN %s - 0 %d %d" % (tag, offset, n))
        yield self.connect(port, transfer)
        yield withTimeout(transfer.whenDone(), 120, "download %s" % (tag,))
        self.testCase.assertEqual(
            (transfer.received, transfer.hash.hexdigest(), transfer.clean),
            (n, digest(offset, n), True),
            "download %s through port %d" % (tag, port),
        )
        return transfer

    @inlineCallbacks
    def stop(self):
        for client in self.clients:
            client.abort()
        for client in self.clients:
            if not client.isLost:
                yield withTimeout(client.whenDone(), 10, "a client's connection to close")
        for proto in self._controls:
            if proto.transport is not None and proto.transport.connected:
                if proto.link is not None:
                    proto.link.stop("test over")
                proto.transport.abortConnection()
                yield withTimeout(proto.lost, 10, "the control connection to close")
        for child in reversed(self.children):
            yield self.stopChild(child)


# -- the tests ----------------------------------------------------------------


class ManyConnectionsTests(TestCase):
    """
    At least 500 concurrent forwarded connections through one VM channel,
    all carrying their data intact.
    """

    timeout = 300
    connections = 500
    size = 1 * MiB

    def setUp(self):
        raiseFileLimit()

    @inlineCallbacks
    def test_500ConcurrentConnections(self):
        """
        500 connections through one C{--forward} are open at once (the
        upstream's barrier lets none of them start before all 500 reached
        it, and the daemon's row counts 500 open); then each moves 1 MiB,
        half of them host to guest (the upstream answers the sha256 of what
        it got) and half guest to host (the client checks the sha256 of
        the pattern it was sent), every one intact and ended cleanly, and
        the row's counters add up to exactly the bytes carried.
        """
        rig = ForwardRig(self)
        yield rig.startUpstream()
        port = freeTcpPort()
        fid = rig.forward("127.0.0.1:%d:127.0.0.1:%d" % (port, rig.upstreamPort))
        yield rig.startAll()

        n, size = self.connections, self.size
        group = "many"
        transfers = []
        for i in range(n):
            offset = i * 7919
            if i % 2:
                transfers.append(Transfer("GEN c%d %s %d %d %d" % (i, group, n + 1, offset, size)))
            else:
                transfers.append(Transfer("SHA c%d %s %d" % (i, group, n + 1), send=(offset, size)))
        started = time.monotonic()
        semaphore = DeferredSemaphore(32)
        yield withTimeout(
            gatherResults([rig.connect(port, t, semaphore) for t in transfers], consumeErrors=True),
            120,
            "%d connections answered by the upstream" % (n,),
        )
        opened = time.monotonic()
        lost = [t.request for t in transfers if t.isLost]
        self.assertEqual(lost, [], "connections that ended before the upstream's GO")
        row = yield rig.row(fid)
        self.assertEqual((row["connections"], row["total_connections"]), (n, n))

        # The barrier's last member, straight to the upstream: all go.
        answer = yield rig.upstreamRequest("GEN release %s %d 0 0" % (group, n + 1))
        self.assertEqual(answer, _HANDSHAKE)
        yield withTimeout(
            gatherResults([t.whenDone() for t in transfers], consumeErrors=True),
            240,
            "%d transfers of %d bytes" % (n, size),
        )
        finished = time.monotonic()

        bad = []
        toTarget = fromTarget = 0
        for i, t in enumerate(transfers):
            offset = i * 7919
            toTarget += len(t.request) + 1
            fromTarget += len(_HANDSHAKE) + t.received
            if i % 2:
                got = (t.received, t.hash.hexdigest(), t.clean)
                want = (size, digest(offset, size), True)
            else:
                toTarget += size
                got = (t.head, t.clean)
                want = (("%s %d\n" % (digest(offset, size), size)).encode(), True)
            if got != want:
                bad.append((t.request, got, want))
        self.assertEqual(bad, [], "%d of %d transfers damaged" % (len(bad), n))

        rows = yield rig.waitRows(lambda rows: rows[0]["connections"] == 0, "every connection closed in the row")
        row = rows[0]
        self.assertEqual(
            (row["total_connections"], row["bytes_to_target"], row["bytes_from_target"]),
            (n, toTarget, fromTarget),
        )
        _report(
            "%d connections x %d bytes: opened in %.1f s, transfers %.1f s (%.1f MB/s aggregate), total %.1f s"
            % (n, size, opened - started, finished - opened, n * size / (finished - opened) / 1e6,
               finished - started)
        )


class StuckConnectionTests(TestCase):
    """
    One stuck connection neither slows the others nor grows memory.
    """

    timeout = 240
    others = 20
    size = 4 * MiB
    #: What the stuck connection's upstream tries to send.
    stuckSize = 4 * 1024 * MiB
    #: What may be carried for the stuck connection, at most: its stream's
    #: window (256 KiB) and the daemon's write buffer (64 KiB) beyond what
    #: the kernel's socket buffers hold (the client's receive buffer is set
    #: to 64 KiB; the daemon's send buffer grows to net.ipv4.tcp_wmem's
    #: maximum, 4 MiB by default).
    stuckBound = 16 * MiB
    #: What the upstream may have sent on it, at most: that, plus the
    #: guest's socket buffers toward the upstream (net.ipv4.tcp_rmem's
    #: maximum can be 32 MiB) -- still far below L{stuckSize}.
    upstreamBound = 128 * MiB
    #: Memory either process may grow by, over its baseline: the windows
    #: (256 KiB per stream and direction) and socket buffers of 21
    #: connections are a few MiB; a connection buffering what its upstream
    #: sends would grow by gigabytes.
    rssSlack = 64 * MiB

    @inlineCallbacks
    def test_stuckConnectionIsolated(self):
        """
        A client that never reads (a socket with a small receive buffer)
        asks the upstream for 4 GiB through one forward; once its bytes
        stop moving, 20 connections through another forward of the same VM
        each move 4 MiB intact (10 each way) while it stays stuck: its
        row's C{bytes_from_target} does not move at all meanwhile and stays
        within a few windows and socket buffers, the upstream stops being
        able to send, and neither the daemon's nor the guest's resident
        memory grows by more than L{rssSlack} over its baseline.
        """
        rig = ForwardRig(self)
        yield rig.startUpstream()
        stuckPort, port = freeTcpPort(), freeTcpPort()
        stuckId = rig.forward("127.0.0.1:%d:127.0.0.1:%d" % (stuckPort, rig.upstreamPort))
        fid = rig.forward("127.0.0.1:%d:127.0.0.1:%d" % (port, rig.upstreamPort))
        yield rig.startAll()

        # Warm up both directions and both forwards, then the baseline.
        yield rig.download(port, "warm1", 0, 1 * MiB)
        yield self.upload(rig, port, "warm2", 0, 1 * MiB)
        yield rig.echoThrough(stuckPort, "warm3")
        pids = {"daemon": rig.daemon.pid, "guest": rig.guest.pid}
        baseline = {name: rssBytes(pid) for name, pid in pids.items()}
        peak = dict(baseline)

        def sample():
            for name, pid in pids.items():
                peak[name] = max(peak[name], rssBytes(pid))

        sampler = LoopingCall(sample)
        sampler.start(0.1)
        self.addCleanup(lambda: sampler.running and sampler.stop())

        stuck = socket.socket()
        self.addCleanup(stuck.close)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        stuck.settimeout(10)
        stuck.connect(("127.0.0.1", stuckPort))
        stuck.sendall(b"GEN stuck - 0 0 %d\n" % (self.stuckSize,))

        # Wait until the stuck connection's bytes stop moving (three equal
        # readings in a row).
        readings = []

        def settled(rows):
            readings.append(rows[int(stuckId) - 1]["bytes_from_target"])
            if readings[-1] >= self.stuckBound:
                raise AssertionError(
                    "the stuck connection's bytes are still moving: %d bytes carried for a client that "
                    "reads nothing" % (readings[-1],)
                )
            return len(readings) >= 3 and readings[-1] > 0 and len(set(readings[-3:])) == 1

        yield rig.waitRows(settled, "the stuck connection's bytes to stop moving", 60, 0.3)
        stalled = readings[-1]
        upstreamStalled = yield rig.upstreamSent("stuck")

        transfers = []
        for i in range(self.others):
            offset = 1000 + i * 104729
            if i % 2:
                transfers.append((offset, Transfer("GEN o%d - 0 %d %d" % (i, offset, self.size))))
            else:
                transfers.append((offset, Transfer("SHA o%d - 0" % (i,), send=(offset, self.size))))
        started = time.monotonic()
        for _, t in transfers:
            yield rig.connect(port, t)
        yield withTimeout(
            gatherResults([t.whenDone() for _, t in transfers], consumeErrors=True), 200, "the other transfers"
        )
        elapsed = time.monotonic() - started
        bad = []
        for i, (offset, t) in enumerate(transfers):
            if i % 2:
                got, want = (t.received, t.hash.hexdigest(), t.clean), (self.size, digest(offset, self.size), True)
            else:
                got, want = (t.head, t.clean), (("%s %d\n" % (digest(offset, self.size), self.size)).encode(), True)
            if got != want:
                bad.append((t.request, got, want))
        self.assertEqual(bad, [])

        # Still stuck, still open, and not one more byte carried for it.
        rows = yield rig.rows()
        stuckRow, row = rows[int(stuckId) - 1], rows[int(fid) - 1]
        self.assertEqual((stuckRow["connections"], stuckRow["bytes_from_target"]), (1, stalled))
        self.assertEqual(row["total_connections"], self.others + 2)
        self.assertGreater(stalled, 0)
        self.assertLess(stalled, self.stuckBound)
        upstreamAfter = yield rig.upstreamSent("stuck")
        self.assertEqual(upstreamAfter, upstreamStalled)
        self.assertLess(upstreamAfter, self.upstreamBound)
        stuck.setblocking(False)
        self.assertTrue(stuck.recv(1, socket.MSG_PEEK), "the stuck connection has data waiting, and is open")

        sampler.stop()
        sample()
        growth = {name: peak[name] - baseline[name] for name in pids}
        for name in pids:
            self.assertLess(
                growth[name], self.rssSlack, "%s grew from %d to %d bytes" % (name, baseline[name], peak[name])
            )

        stuck.close()
        ended = yield rig.upstreamEnded("stuck")
        self.assertLess(int(ended.group(1)), self.upstreamBound)
        _report(
            "stuck connection: %d bytes carried for it (upstream sent %d of %d); %d x %d bytes alongside in %.1f s; "
            "RSS growth daemon %.1f MiB, guest %.1f MiB (baselines %.1f, %.1f MiB)"
            % (stalled, upstreamAfter, self.stuckSize, self.others, self.size, elapsed,
               growth["daemon"] / MiB, growth["guest"] / MiB, baseline["daemon"] / MiB, baseline["guest"] / MiB)
        )

    @inlineCallbacks
    def upload(self, rig, port, tag, offset, n):
        transfer = Transfer("SHA %s - 0" % (tag,), send=(offset, n))
        yield rig.connect(port, transfer)
        yield withTimeout(transfer.whenDone(), 120, "upload %s" % (tag,))
        self.assertEqual((transfer.head, transfer.clean), (("%s %d\n" % (digest(offset, n), n)).encode(), True))


class FaultyChannelTests(TestCase):
    """
    A forwarded transfer through a channel that drops, duplicates and
    corrupts.
    """

    timeout = 300
    size = 8 * MiB
    faults = ("--drop-rate", "0.01", "--dup-rate", "0.01", "--corrupt-rate", "0.0005", "--seed", "7")

    @inlineCallbacks
    def test_faultyChannelIntact(self):
        """
        With the simulator's drop, duplicate and corrupt faults on (both
        directions), 8 MiB sent through a C{--forward} to an echo service
        in the guest comes back intact (sha256): 8 MiB each way over the
        faulty channel.  The daemon's session counters show the faults were
        met (retransmits, and resyncs or skipped bytes).
        """
        rig = ForwardRig(self, simArgs=self.faults)
        yield rig.startUpstream()
        port = freeTcpPort()
        fid = rig.forward("127.0.0.1:%d:127.0.0.1:%d" % (port, rig.upstreamPort))
        yield rig.startAll()

        transfer = Transfer("ECHO faulty", send=(12345, self.size))
        started = time.monotonic()
        yield rig.connect(port, transfer)
        yield withTimeout(transfer.whenDone(), 280, "8 MiB echoed through a faulty channel")
        elapsed = time.monotonic() - started
        self.assertEqual(
            (transfer.received, transfer.hash.hexdigest(), transfer.clean),
            (self.size, digest(12345, self.size), True),
        )
        ended = yield rig.upstreamEnded("faulty")
        self.assertEqual((int(ended.group(1)), int(ended.group(2))), (self.size, self.size))
        row = yield rig.row(fid)
        self.assertEqual(
            (row["bytes_to_target"], row["bytes_from_target"]),
            (len("ECHO faulty\n") + self.size, len(_HANDSHAKE) + self.size),
        )
        vm = yield rig.vmStatus()
        self.assertGreater(vm["retransmits"], 0, vm)
        self.assertGreater(vm["resyncs"] + vm["skipped_bytes"], 0, vm)
        _report(
            "faulty channel: %d bytes each way in %.1f s; daemon saw %d retransmits, %d resyncs, %d skipped bytes"
            % (self.size, elapsed, vm["retransmits"], vm["resyncs"], vm["skipped_bytes"])
        )


class RestartTests(TestCase):
    """
    Forwards are configuration, not sessions: the VM going away mid-transfer
    and coming back (a guest restart, a VM reboot), a daemon restart; and
    the connections open when a session dies are closed on both sides.

    Every test has a C{--forward} (id 1, host port -> the upstream "in the
    guest") and a C{--reverse} (id 2, guest port -> the upstream on the
    host), and fast liveness on both sides (L{FAST_LIVENESS}).
    """

    timeout = 180

    @inlineCallbacks
    def setUpRig(self):
        rig = ForwardRig(self, guestArgs=FAST_LIVENESS, daemonArgs=FAST_LIVENESS)
        yield rig.startUpstream()
        self.fport, self.rport = freeTcpPort(), freeTcpPort()
        rig.forward("127.0.0.1:%d:127.0.0.1:%d" % (self.fport, rig.upstreamPort))
        rig.reverse("127.0.0.1:%d:127.0.0.1:%d" % (self.rport, rig.upstreamPort))
        yield rig.startAll()
        return rig

    @inlineCallbacks
    def longDownload(self, rig, tag):
        """
        Start a 4 GiB download through the forward; fire once 1 MiB of it
        arrived.
        """
        transfer = Transfer("GEN %s - 0 0 %d" % (tag, 4 * 1024 * MiB))
        yield rig.connect(self.fport, transfer)
        yield waitFor(lambda: transfer.received >= MiB or transfer.isLost, "1 MiB of %s" % (tag,), 60)
        self.assertFalse(transfer.isLost)
        return transfer

    @inlineCallbacks
    def liveEcho(self, rig, port, tag):
        """
        An echo connection through C{port}, checked live, left open.
        """
        transfer = Transfer("ECHO %s" % (tag,))
        yield rig.connect(port, transfer)
        yield withTimeout(transfer.whenHi(), 30, "HI on %s" % (tag,))
        transfer.transport.write(b"live")
        yield waitFor(lambda: transfer.received >= 4 or transfer.isLost, "the echo on %s" % (tag,), 30)
        self.assertEqual(transfer.head, b"live")
        return transfer

    @inlineCallbacks
    def assertClosedAtOnce(self, rig):
        """
        While the VM is away: the forward's listener is up, and a new
        connection is closed at once, unread (nothing comes back, the
        client sends nothing), counted in the row with the reason.
        """
        rows = yield rig.waitRows(lambda rows: rows[0]["state"] == "waiting", "the forward waiting for the VM")
        before = rows[0]["total_connections"]
        probe = Probe()
        yield rig.connect(self.fport, probe)
        yield withTimeout(probe.whenDone(), 10, "the daemon to close a connection while the VM is away")
        self.assertEqual(probe.received, b"")
        row = yield rig.row("1")
        self.assertEqual((row["state"], row["total_connections"], row["connections"]), ("waiting", before + 1, 0))
        self.assertIn("closed", row["last_error"])

    @inlineCallbacks
    def assertReverseBack(self, rig, upAt, tag):
        """
        The reverse forward listens in the guest again, within
        L{REVERSE_BUDGET} of the session's up (C{upAt}, the monotonic time
        the daemon's log line was read), polled every L{REVERSE_POLL}: a
        connection to its port reaches the upstream on the host.
        """
        polls = 0
        while True:
            polls += 1
            s = socket.socket()
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", self.rport))
                s.sendall(b"ECHO %s-%d\nback" % (tag.encode(), polls))
                got = b""
                while len(got) < len(_HANDSHAKE) + 4:
                    piece = s.recv(100)
                    if not piece:
                        break
                    got += piece
            except OSError:
                got = None
            finally:
                s.close()
            if got == _HANDSHAKE + b"back":
                break
            waited = time.monotonic() - upAt
            self.assertLess(waited, REVERSE_BUDGET, "the reverse forward not back %.2f s after up (%d polls)"
                            % (waited, polls))
            yield sleep(REVERSE_POLL)
        waited = time.monotonic() - upAt
        self.assertLess(waited, REVERSE_BUDGET + REVERSE_POLL)
        row = yield rig.row("2")
        self.assertEqual(row["state"], "active")
        return polls, waited

    @inlineCallbacks
    def assertBack(self, rig, upAt, tag):
        polls, waited = yield self.assertReverseBack(rig, upAt, tag)
        yield rig.download(self.fport, tag + "-fwd", 777, MiB)
        yield rig.waitRows(lambda rows: all(r["state"] == "active" for r in rows), "both forwards active")
        return polls, waited

    @inlineCallbacks
    def test_guestRestart(self):
        """
        The guest agent is killed (SIGKILL) while a transfer runs through
        the C{--forward}: the client's connection ends (it does not hang);
        while the guest is down the daemon's listener stays up and a new
        connection is closed at once; the guest agent starts again and,
        with no daemon restart, a new connection through the same port
        carries 1 MiB intact, and the C{--reverse} listens in the guest
        again within 2 s of the session being up.
        """
        rig = yield self.setUpRig()
        transfer = yield self.longDownload(rig, "long")
        yield rig.stopChild(rig.guest)
        yield withTimeout(transfer.whenDone(), 30, "the client's connection to end after the guest died")
        self.assertLess(transfer.received, 4 * 1024 * MiB)
        yield self.assertClosedAtOnce(rig)

        upAt = rig.whenUp()
        yield rig.startGuest()
        upAt = yield upAt
        polls, waited = yield self.assertBack(rig, upAt, "g")
        _report("guest restart: reverse back after %d polls, %.2f s after up" % (polls, waited))

    @inlineCallbacks
    def test_vmReboot(self):
        """
        A VM "reboot": the simulator and the agent stop mid-transfer and
        start again.  The client's connection ends; meanwhile the listener
        is up and closes new connections at once; afterwards, without a
        daemon restart, the forward carries 1 MiB intact and the reverse
        listens again within 2 s of the session being up.
        """
        rig = yield self.setUpRig()
        transfer = yield self.longDownload(rig, "long")
        yield rig.stopChild(rig.guest)
        yield rig.stopChild(rig.sim, "TERM")
        yield withTimeout(transfer.whenDone(), 30, "the client's connection to end after the VM stopped")
        yield self.assertClosedAtOnce(rig)

        upAt = rig.whenUp()
        yield rig.startSim()
        yield rig.startGuest()
        upAt = yield upAt
        polls, waited = yield self.assertBack(rig, upAt, "r")
        _report("VM reboot: reverse back after %d polls, %.2f s after up" % (polls, waited))

    @inlineCallbacks
    def test_daemonRestart(self):
        """
        The daemon is killed (SIGKILL) and started again with the same
        options: its configured C{--forward} listens on the same port and
        carries 1 MiB intact, and its C{--reverse} listens in the guest
        again within 2 s of the session being up.
        """
        rig = yield self.setUpRig()
        yield rig.echoThrough(self.fport, "before")
        yield rig.stopChild(rig.daemon)
        upAt = yield rig.startDaemon()
        polls, waited = yield self.assertBack(rig, upAt, "d")
        rows = yield rig.rows()
        self.assertEqual(
            [(r["id"], r["direction"], r["origin"], r["state"]) for r in rows],
            [("1", "forward", "config", "active"), ("2", "reverse", "config", "active")],
        )
        _report("daemon restart: reverse back after %d polls, %.2f s after up" % (polls, waited))

    @inlineCallbacks
    def test_guestDeathClosesConnections(self):
        """
        Connections open when the guest dies are closed on both sides: a
        live C{--forward} connection ends for its client (the daemon aborts
        it) and for the upstream; a live C{--reverse} connection's host
        side, the daemon's connection to the upstream, ends too (nothing
        but the daemon holds it).
        """
        rig = yield self.setUpRig()
        forward = yield self.liveEcho(rig, self.fport, "fwd")
        rev = yield self.liveEcho(rig, self.rport, "rev")
        yield rig.stopChild(rig.guest)
        yield withTimeout(forward.whenDone(), 30, "the forward's client connection to end")
        ended = yield rig.upstreamEnded("fwd")
        self.assertEqual(ended.group(2), b"4")
        ended = yield rig.upstreamEnded("rev")
        self.assertEqual(ended.group(2), b"4")
        yield withTimeout(rev.whenDone(), 30, "the reverse's guest-side client to end")
        rows = yield rig.waitRows(
            lambda rows: [r["connections"] for r in rows] == [0, 0], "no connections left in the rows"
        )
        self.assertEqual([r["state"] for r in rows], ["waiting", "waiting"])

    @inlineCallbacks
    def test_daemonDeathClosesConnections(self):
        """
        Connections open when the daemon dies are closed on both sides by
        the guest, once it takes the host as gone: a live C{--reverse}
        connection's guest-side client sees its connection end, and a live
        C{--forward} connection's upstream (the guest's connection to its
        target) sees its connection end.
        """
        rig = yield self.setUpRig()
        forward = yield self.liveEcho(rig, self.fport, "fwd")
        rev = yield self.liveEcho(rig, self.rport, "rev")
        yield rig.stopChild(rig.daemon)
        yield withTimeout(rev.whenDone(), 30, "the reverse's guest-side client to end")
        ended = yield rig.upstreamEnded("fwd")
        self.assertEqual(ended.group(2), b"4")
        ended = yield rig.upstreamEnded("rev")
        self.assertEqual(ended.group(2), b"4")
        yield withTimeout(forward.whenDone(), 30, "the forward's client to end")


def _report(line):
    """
    A measurement, for the person running the tests (trial shows stderr).
    """
    sys.stderr.write("\n  [test_forward_load] %s\n" % (line,))
    sys.stderr.flush()


if __name__ == "__main__":
    if sys.argv[1:] == ["upstream"]:
        upstreamMain()
    else:
        sys.exit("usage: python -m tests.system.test_forward_load upstream")
