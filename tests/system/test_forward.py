"""
Port forwarding end to end, every piece a real process on real sockets:

    client --tcp--> prokshy-host --unix--> prokshy-vmsim --pty--> prokshy-guest --tcp--> server
    (curl, or a      (twistd -n,             (bhyve mode)           (twistd -n)
     test socket)     --forward/--reverse)

The guest agent runs on this machine, so a server on 127.0.0.1 is "inside
the guest" for a C{--forward} and on the host for a C{--reverse}; a client
connecting to the guest's listening port of a C{--reverse} connects
"inside the guest".  The servers are C{python -m http.server} subprocesses
(for curl) or small Twisted servers in this process (echo, half-close,
reset), which count what they see.  The daemon's forwards are read with
its C{forward-list} stream (L{prokshy.host.client.Session.forwardList}).

Every assertion is about counts and causes (bytes and their sha256, which
connection ended and why, the order of events), never a wall-clock upper
bound; timeouts only turn a hang into a failure.
"""

import hashlib
import os
import re
import socket
import struct
import sys

from twisted.internet import error, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from prokshy.host.client import HOST_PAYLOAD, HOST_WINDOW, HostProtocol
from prokshy.link.session import LinkConfig
from prokshy.streams.stream import StreamRefused
from tests.harness import PACKAGE_ROOT, freeTcpPort, shortTempDir, sleep as _sleep, waitFor, withTimeout

CURL = "/usr/bin/curl"

#: Generous bounds that only turn a hang into a failure.
START_TIMEOUT = 30.0
STEP_TIMEOUT = 30.0
TRANSFER_TIMEOUT = 90.0

_ENV = {
    k: v
    for k, v in os.environ.items()
    if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy") and k != "PROKSHY_SOCKET"
}
_ENV["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT] + [p for p in [_ENV.get("PYTHONPATH")] if p])

_TWISTD = ["-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]

#: The guest agent as it was before forwarding: the real agent, run by
#: twistd, with its stream handler built without forwards (so its hello
#: lists neither C{connect} nor C{listen}, and it refuses both kinds
#: C{unknown-kind}).  The product has no option for this; the patch lives
#: in this wrapper process only.
_OLD_GUEST = (
    "import prokshy.guest.execs as execs\n"
    "_Base = execs.GuestStreams\n"
    "class GuestStreams(_Base):\n"
    "    def __init__(self, *args, **kwargs):\n"
    "        kwargs['forwards'] = None\n"
    "        _Base.__init__(self, *args, **kwargs)\n"
    "execs.GuestStreams = GuestStreams\n"
    "from twisted.scripts.twistd import run\n"
    "run()\n"
)

#: The guest's commands.
_COMMANDS = {"hello": "#!/bin/sh\necho hello\n"}


# -- processes -----------------------------------------------------------------


class Child(ProcessProtocol):
    """
    A child process: its output (stdout and stderr together, the last
    L{KEEP} bytes; stderr alone in C{err}), its end.
    """

    KEEP = 1 << 20

    def __init__(self, name):
        self.name = name
        self.output = bytearray()
        self.err = bytearray()
        self.ended = Deferred()
        self.exitCode = None

    @property
    def running(self):
        return self.exitCode is None

    def outReceived(self, data):
        self.output += data
        del self.output[: -self.KEEP]

    def errReceived(self, data):
        self.err += data
        del self.err[: -self.KEEP]
        self.outReceived(data)

    def processEnded(self, reason):
        value = reason.value
        self.exitCode = value.exitCode if value.exitCode is not None else -(value.signal or 0)
        self.ended.callback(self.exitCode)

    def signal(self, sig):
        if self.running:
            try:
                self.transport.signalProcess(sig)
            except error.ProcessExitedAlready:
                pass

    @inlineCallbacks
    def stop(self):
        """
        SIGTERM, then SIGKILL if it is still running 10 s later.
        """
        if not self.running:
            return self.exitCode
        self.signal("TERM")
        killer = reactor.callLater(10.0, self.signal, "KILL")
        code = yield self.ended
        if killer.active():
            killer.cancel()
        return code

    def tail(self, n=3000):
        return "--- %s (exit %s) ---\n%s" % (self.name, self.exitCode, self.output[-n:].decode("utf-8", "replace"))


def spawn(testCase, name, args, cwd, child=None):
    """
    Start C{sys.executable ARGS}, stopped (TERM, then KILL) at cleanup.
    """
    child = child if child is not None else Child(name)
    reactor.spawnProcess(child, sys.executable, [sys.executable] + list(args), env=_ENV, path=cwd)
    testCase.addCleanup(child.stop)
    return child


class Curl(Child):
    """
    curl writing the body to its stdout, which is hashed and counted here.
    """

    def __init__(self):
        Child.__init__(self, "curl")
        self.sha = hashlib.sha256()
        self.received = 0

    def outReceived(self, data):
        self.sha.update(data)
        self.received += len(data)

    def errReceived(self, data):
        self.output += data
        del self.output[: -self.KEEP]


def requireCurl():
    if not os.access(CURL, os.X_OK):
        raise SkipTest("%s is not installed" % (CURL,))


def startCurl(testCase, url):
    requireCurl()
    curl = Curl()
    argv = [CURL, "-sS", "--fail", "--noproxy", "*", "--max-time", str(TRANSFER_TIMEOUT), url]
    reactor.spawnProcess(curl, CURL, argv, env=_ENV)
    testCase.addCleanup(lambda: (curl.signal("KILL"), curl.ended)[1])
    return curl


def deadPort(testCase):
    """
    A TCP port held bound but not listening for the test: connections to
    it are refused, and nothing else can take it meanwhile.
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    testCase.addCleanup(s.close)
    return s.getsockname()[1]


# -- servers and clients in this process ---------------------------------------


class Tracked:
    """
    The connections (servers' and clients') a test opened in this process,
    aborted at its end so that the reactor is clean.
    """

    def __init__(self, testCase):
        self.open = set()
        testCase.addCleanup(self.closeAll)

    @inlineCallbacks
    def closeAll(self):
        for proto in list(self.open):
            if proto.transport is not None:
                proto.transport.abortConnection()
        yield waitFor(lambda: not self.open, "this process's connections to close", STEP_TIMEOUT)


class _TrackedProtocol(Protocol):
    tracked = None

    def connectionMade(self):
        self.tracked.open.add(self)

    def connectionLost(self, reason):
        self.tracked.open.discard(self)


class _Echo(_TrackedProtocol):
    def connectionMade(self):
        _TrackedProtocol.connectionMade(self)
        self.factory.connections += 1

    def dataReceived(self, data):
        self.transport.write(data)

    def connectionLost(self, reason):
        _TrackedProtocol.connectionLost(self, reason)
        self.factory.lost.append(reason)


@implementer(IHalfCloseableProtocol)
class _HalfCloseServer(_TrackedProtocol):
    """
    Reads the request to its EOF, then answers sha256(request) and the
    factory's response, and closes.
    """

    def connectionMade(self):
        _TrackedProtocol.connectionMade(self)
        self.factory.connections += 1
        self.request = hashlib.sha256()
        self.requestBytes = 0

    def dataReceived(self, data):
        self.request.update(data)
        self.requestBytes += len(data)

    def readConnectionLost(self):
        self.factory.eofs.append(self.requestBytes)
        self.transport.write(self.request.digest() + self.factory.response)
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


@implementer(IHalfCloseableProtocol)
class _GreetThenListen(_TrackedProtocol):
    """
    Sends the factory's greeting and shuts down its write side at once;
    then reads the client's request to its EOF, and records its size and
    sha256.
    """

    def connectionMade(self):
        _TrackedProtocol.connectionMade(self)
        self.factory.connections += 1
        self.request = hashlib.sha256()
        self.requestBytes = 0
        self.transport.write(self.factory.greeting)
        self.transport.loseWriteConnection()

    def dataReceived(self, data):
        self.request.update(data)
        self.requestBytes += len(data)

    def readConnectionLost(self):
        self.factory.eofs.append((self.requestBytes, self.request.digest()))
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


class _ResetServer(_TrackedProtocol):
    """
    On C{go}, sends the factory's chunk; on C{reset}, closes with SO_LINGER
    0 (a TCP RST) in the middle of the stream.
    """

    def connectionMade(self):
        _TrackedProtocol.connectionMade(self)
        self.factory.connections += 1
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        if self.buffer.startswith(b"go"):
            self.buffer = self.buffer[2:]
            self.transport.write(self.factory.chunk)
        if self.buffer.startswith(b"reset"):
            self.buffer = b""
            self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.factory.resets += 1
            self.transport.abortConnection()


class ServerFactory(Factory):
    noisy = False

    def __init__(self, protocol, tracked, **attrs):
        self.protocol = type(protocol.__name__, (protocol,), {"tracked": tracked})
        self.connections = 0
        self.lost = []
        self.eofs = []
        self.resets = 0
        for name, value in attrs.items():
            setattr(self, name, value)


def listen(testCase, factory):
    """
    Listen on 127.0.0.1 (any port) in this process.

    @return: the port number.
    """
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)
    return port.getHost().port


class Client(_TrackedProtocol):
    """
    A TCP client: records what it receives, in the chunks it arrived in,
    and how the connection ended.
    """

    def __init__(self):
        self.chunks = []
        self.received = 0
        self.lost = Deferred()
        self.reason = None
        self._waiting = []

    def dataReceived(self, data):
        self.chunks.append(data)
        self.received += len(data)
        self._check()

    def connectionLost(self, reason):
        _TrackedProtocol.connectionLost(self, reason)
        self.reason = reason
        self._check()
        self.lost.callback(None)

    @property
    def data(self):
        return b"".join(self.chunks)

    def until(self, n):
        """
        @return: a Deferred firing once C{n} bytes have arrived in all (or
            the connection ended).
        """
        d = Deferred()
        self._waiting.append((n, d))
        self._check()
        return d

    def _check(self):
        for item in list(self._waiting):
            n, d = item
            if self.received >= n or self.reason is not None:
                self._waiting.remove(item)
                d.callback(self.received)


@implementer(IHalfCloseableProtocol)
class HalfCloseClient(Client):
    """
    A L{Client} whose connection stays open for writing after the peer's
    EOF: C{eof} fires then.
    """

    def __init__(self):
        Client.__init__(self)
        self.eof = Deferred()

    def readConnectionLost(self):
        self.eof.callback(self.received)

    def writeConnectionLost(self):
        pass


@inlineCallbacks
def connectClient(tracked, port, protocol=None):
    client = protocol if protocol is not None else Client()
    client.tracked = tracked
    yield withTimeout(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10).connect(Factory.forProtocol(lambda: client)),
        STEP_TIMEOUT,
        "a connection to 127.0.0.1:%d" % (port,),
    )
    return client


# -- the rig ---------------------------------------------------------------------


class Rig:
    """
    One simulated VM (prokshy-vmsim), its guest agent and a prokshy-host
    daemon on its socket, each a real process, in a fresh directory.
    """

    def __init__(self, testCase):
        self.testCase = testCase
        self.dir = shortTempDir(testCase, "pkfw")
        self.tracked = Tracked(testCase)
        self.vmSocket = os.path.join(self.dir, "vm.sock")
        self.device = os.path.join(self.dir, "vm.dev")
        self.daemonSocket = os.path.join(self.dir, "d.sock")
        self.commandDir = os.path.join(self.dir, "command.d")
        os.mkdir(self.commandDir, 0o755)
        for name, body in _COMMANDS.items():
            path = os.path.join(self.commandDir, name)
            with open(path, "w") as f:
                f.write(body)
            os.chmod(path, 0o755)
        self.children = []
        self.session = None

    def path(self, name):
        return os.path.join(self.dir, name)

    def diagnostics(self):
        return "\n".join(child.tail() for child in self.children)

    def _spawn(self, name, args, child=None):
        child = spawn(self.testCase, name, args, self.dir, child)
        self.children.append(child)
        return child

    # -- processes ------------------------------------------------------------

    @inlineCallbacks
    def startSim(self):
        sim = self._spawn(
            "vmsim", ["-m", "prokshy.sim.vmsim", "--socket", self.vmSocket, "--device-link", self.device]
        )
        yield waitFor(
            lambda: (os.path.exists(self.vmSocket) and os.path.lexists(self.device)) or not sim.running,
            "the simulator's socket and device",
            START_TIMEOUT,
        )
        if not sim.running:
            self.testCase.fail("the simulator exited:\n" + self.diagnostics())
        return sim

    def startGuest(self, *args, old=False):
        prefix = ["-c", _OLD_GUEST, "-n", "--pidfile="] if old else list(_TWISTD)
        return self._spawn(
            "guest" + (" (old)" if old else ""),
            prefix
            + ["prokshy-guest", "--device", self.device, "--command-dir", self.commandDir,
               "--run-dir", self.path("run")]
            + list(args),
        )

    def daemonArgs(self, *args):
        return list(_TWISTD) + [
            "prokshy-host", "--socket-path", self.vmSocket, "--listen", "unix:" + self.daemonSocket,
        ] + list(args)

    def startDaemon(self, *args):
        return self._spawn("daemon", self.daemonArgs(*args))

    @inlineCallbacks
    def start(self, guestArgs=(), daemonArgs=(), old=False, waitUp=True):
        """
        Start the simulator, then the guest agent and the daemon, connect a
        framed client to the daemon and (unless C{waitUp} is false) wait
        until the VM is up in its status.

        @return: a Deferred firing with the client's L{Session}.
        """
        yield self.startSim()
        self.guest = self.startGuest(*guestArgs, old=old)
        self.daemon = self.startDaemon(*daemonArgs)
        session = yield self.connect()
        if waitUp:
            yield self.waitUp()
        return session

    # -- the daemon's client ------------------------------------------------------

    @inlineCallbacks
    def connect(self):
        """
        A framed client of the daemon (once its socket is there), closed at
        cleanup.
        """
        deadline = reactor.seconds() + START_TIMEOUT
        while True:
            if not self.daemon.running:
                self.testCase.fail("the daemon exited:\n" + self.diagnostics())
            proto = HostProtocol(reactor, LinkConfig(window=HOST_WINDOW, maxPayload=HOST_PAYLOAD))
            endpoint = UNIXClientEndpoint(reactor, self.daemonSocket, timeout=10)
            try:
                yield endpoint.connect(Factory.forProtocol(lambda: proto))
            except (error.ConnectError, error.ConnectionRefusedError):
                # not listening yet (the socket file may come first)
                if reactor.seconds() > deadline:
                    raise
                yield _sleep(0.05)
            else:
                break
        lost = Deferred()
        proto.whenLost(lambda reason: lost.callback(None))

        def close():
            if proto.link is not None:
                proto.link.stop("test over")
            if proto.transport is not None and proto.transport.connected:
                proto.transport.abortConnection()
                return lost
            return None

        self.testCase.addCleanup(close)
        session = yield withTimeout(proto.whenSession(), START_TIMEOUT, "a session with the daemon")
        self.session = session
        return session

    @inlineCallbacks
    def vmState(self):
        status = yield self.session.status()
        return status["vms"][0]["state"]

    @inlineCallbacks
    def waitUp(self):
        deadline = reactor.seconds() + START_TIMEOUT
        while True:
            state = yield self.vmState()
            if state == "up":
                return
            if reactor.seconds() > deadline or not (self.guest.running and self.daemon.running):
                self.testCase.fail("the VM is %s, not up:\n%s" % (state, self.diagnostics()))
            yield _sleep(0.05)

    @inlineCallbacks
    def row(self, fid):
        rows = yield self.session.forwardList()
        for row in rows:
            if row["id"] == fid:
                return row
        self.testCase.fail("no forward %s in %r" % (fid, rows))

    @inlineCallbacks
    def waitRow(self, fid, predicate, what):
        """
        Poll forward C{fid}'s row until C{predicate(row)}.

        @return: the row.
        """
        deadline = reactor.seconds() + STEP_TIMEOUT
        while True:
            row = yield self.row(fid)
            if predicate(row):
                return row
            if reactor.seconds() > deadline:
                self.testCase.fail("forward %s: %s never came: %r\n%s" % (fid, what, row, self.diagnostics()))
            yield _sleep(0.05)

    @inlineCallbacks
    def listenPort(self, fid):
        """
        The port a daemon's forward listens on (it was given port 0).
        """
        row = yield self.waitRow(fid, lambda r: r["state"] == "active", "active")
        return int(row["listen"].rsplit(":", 1)[1])

    # -- servers ----------------------------------------------------------------

    def server(self, protocol, **attrs):
        factory = ServerFactory(protocol, self.tracked, **attrs)
        return factory, listen(self.testCase, factory)

    def client(self, port, protocol=None):
        return connectClient(self.tracked, port, protocol)

    @inlineCallbacks
    def httpServer(self, directory):
        """
        C{python -m http.server} on 127.0.0.1, serving C{directory}.

        @return: its port.
        """
        http = self._spawn(
            "http.server",
            ["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", directory],
        )
        found = yield waitFor(
            lambda: re.search(rb"port (\d+)", bytes(http.output)) or not http.running,
            "http.server to listen",
            START_TIMEOUT,
        )
        if not http.running:
            self.testCase.fail("http.server exited:\n" + http.tail())
        return int(found.group(1))


def writeRandom(path, size):
    """
    Write C{size} random bytes to C{path}.

    @return: their sha256 hex digest.
    """
    sha = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 20))
            sha.update(block)
            f.write(block)
            left -= len(block)
    return sha.hexdigest()


MB = 1 << 20


# -- 1, 2: curl through a forward and a reverse forward -----------------------------


class CurlTests(TestCase):
    """
    curl fetches a 64 MB random file from C{python -m http.server} through
    a forward and through a reverse forward; the body's sha256 is the
    file's.
    """

    timeout = 180
    SIZE = 64 * MB

    @inlineCallbacks
    def setUp(self):
        requireCurl()
        self.rig = Rig(self)
        self.www = self.rig.path("www")
        os.mkdir(self.www)
        self.sha = writeRandom(os.path.join(self.www, "body"), self.SIZE)
        self.httpPort = yield self.rig.httpServer(self.www)

    @inlineCallbacks
    def fetch(self, port):
        curl = startCurl(self, "http://127.0.0.1:%d/body" % (port,))
        code = yield withTimeout(curl.ended, TRANSFER_TIMEOUT + 30, "curl")
        self.assertEqual(code, 0, curl.tail() + self.rig.diagnostics())
        self.assertEqual(curl.received, self.SIZE)
        self.assertEqual(curl.sha.hexdigest(), self.sha)

    @inlineCallbacks
    def test_curlThroughForward(self):
        """
        C{--forward 0:127.0.0.1:HTTP}: the daemon listens, curl's request
        reaches the server "inside the guest", the 64 MB body comes back
        intact; the forward counts one connection and the body's bytes.
        """
        yield self.rig.start(daemonArgs=["--forward", "0:127.0.0.1:%d" % (self.httpPort,)])
        port = yield self.rig.listenPort("1")
        yield self.fetch(port)
        row = yield self.rig.waitRow("1", lambda r: r["connections"] == 0, "the connection's end")
        self.assertEqual(row["total_connections"], 1)
        self.assertGreater(row["bytes_from_target"], self.SIZE)  # the body and its headers
        self.assertGreater(row["bytes_to_target"], 0)
        self.assertIsNone(row["last_error"])

    @inlineCallbacks
    def test_curlThroughReverse(self):
        """
        C{--reverse GPORT:127.0.0.1:HTTP}: the guest listens on GPORT; curl
        run "inside the guest" against it reaches the host's server and
        gets the 64 MB body intact.
        """
        guestPort = freeTcpPort()
        yield self.rig.start(daemonArgs=["--reverse", "%d:127.0.0.1:%d" % (guestPort, self.httpPort)])
        yield self.rig.waitRow("1", lambda r: r["state"] == "active", "active")
        yield self.fetch(guestPort)
        row = yield self.rig.waitRow("1", lambda r: r["connections"] == 0, "the connection's end")
        self.assertEqual(row["total_connections"], 1)
        self.assertGreater(row["bytes_from_target"], self.SIZE)
        self.assertIsNone(row["last_error"])


# -- 3: half-close ------------------------------------------------------------------


class HalfCloseTests(TestCase):
    """
    A client sends its request and shuts down its write side; the server
    reads to that EOF and only then answers; the client gets the whole
    answer, then a clean end.
    """

    timeout = 120
    REQUEST = 1 * MB
    RESPONSE = 4 * MB

    def setUp(self):
        self.rig = Rig(self)
        self.response = os.urandom(self.RESPONSE)
        self.factory, self.serverPort = self.rig.server(_HalfCloseServer, response=self.response)
        self.greeting = os.urandom(self.RESPONSE)
        self.greeter, self.greeterPort = self.rig.server(_GreetThenListen, greeting=self.greeting)

    @inlineCallbacks
    def exchange(self, port):
        request = os.urandom(self.REQUEST)
        client = yield self.rig.client(port)
        client.transport.write(request)
        client.transport.loseWriteConnection()
        yield withTimeout(client.lost, TRANSFER_TIMEOUT, "the answer to a half-closed request")
        # The server saw the whole request, then its EOF, and answered.
        self.assertEqual(self.factory.eofs, [self.REQUEST], self.rig.diagnostics())
        self.assertEqual(client.received, 32 + self.RESPONSE)
        data = client.data
        self.assertEqual(data[:32], hashlib.sha256(request).digest())
        self.assertEqual(hashlib.sha256(data[32:]).digest(), hashlib.sha256(self.response).digest())
        client.reason.trap(error.ConnectionDone)

    @inlineCallbacks
    def test_halfCloseThroughForward(self):
        """
        Through C{--forward}: the client's EOF reaches the server as EOF
        (FIN), the answer comes back whole, then the connection closes
        cleanly and the forward's counters hold both directions' bytes.
        """
        yield self.rig.start(daemonArgs=["--forward", "0:127.0.0.1:%d" % (self.serverPort,)])
        port = yield self.rig.listenPort("1")
        yield self.exchange(port)
        row = yield self.rig.waitRow("1", lambda r: r["connections"] == 0, "the connection's end")
        self.assertEqual(
            (row["total_connections"], row["bytes_to_target"], row["bytes_from_target"]),
            (1, self.REQUEST, 32 + self.RESPONSE),
        )

    @inlineCallbacks
    def test_halfCloseThroughReverse(self):
        """
        Through C{--reverse}: the same, with the client inside the guest and
        the server on the host.
        """
        guestPort = freeTcpPort()
        yield self.rig.start(daemonArgs=["--reverse", "%d:127.0.0.1:%d" % (guestPort, self.serverPort)])
        yield self.rig.waitRow("1", lambda r: r["state"] == "active", "active")
        yield self.exchange(guestPort)
        row = yield self.rig.waitRow("1", lambda r: r["connections"] == 0, "the connection's end")
        self.assertEqual(
            (row["total_connections"], row["bytes_to_target"], row["bytes_from_target"]),
            (1, self.REQUEST, 32 + self.RESPONSE),
        )

    @inlineCallbacks
    def serverEofFirst(self, port):
        """
        The server's EOF comes first: the client gets the whole greeting
        and then EOF, while its own direction stays open; the request it
        then sends, and its EOF, reach the server whole.
        """
        request = os.urandom(self.REQUEST)
        client = yield self.rig.client(port, HalfCloseClient())
        got = yield withTimeout(client.eof, TRANSFER_TIMEOUT, "the server's EOF")
        self.assertEqual(got, len(self.greeting))
        self.assertEqual(hashlib.sha256(client.data).digest(), hashlib.sha256(self.greeting).digest())
        self.assertIsNone(client.reason)
        client.transport.write(request)
        client.transport.loseConnection()
        yield withTimeout(client.lost, TRANSFER_TIMEOUT, "the end")
        yield waitFor(lambda: self.greeter.eofs, "the request's EOF at the server", STEP_TIMEOUT)
        self.assertEqual(self.greeter.eofs, [(self.REQUEST, hashlib.sha256(request).digest())])

    @inlineCallbacks
    def test_serverHalfCloseFirstForward(self):
        """
        Through C{--forward}: EOF the other way first (the server's), the
        client's direction carries on.
        """
        yield self.rig.start(daemonArgs=["--forward", "0:127.0.0.1:%d" % (self.greeterPort,)])
        port = yield self.rig.listenPort("1")
        yield self.serverEofFirst(port)

    @inlineCallbacks
    def test_serverHalfCloseFirstReverse(self):
        """
        Through C{--reverse}: the same.
        """
        guestPort = freeTcpPort()
        yield self.rig.start(daemonArgs=["--reverse", "%d:127.0.0.1:%d" % (guestPort, self.greeterPort)])
        yield self.rig.waitRow("1", lambda r: r["state"] == "active", "active")
        yield self.serverEofFirst(guestPort)


# -- 4: no byte lag -------------------------------------------------------------------


class InteractiveTests(TestCase):
    """
    An interactive echo through a forward: one byte out, the same byte
    back, before anything else is written.
    """

    timeout = 120
    ROUNDS = 50

    @inlineCallbacks
    def echoRounds(self, port):
        client = yield self.rig.client(port)
        for i in range(self.ROUNDS):
            byte = bytes([0x20 + i])
            client.transport.write(byte)
            got = yield withTimeout(client.until(i + 1), STEP_TIMEOUT, "the echo of byte %d" % (i,))
            self.assertIsNone(client.reason, "the connection ended at byte %d" % (i,))
            self.assertEqual(got, i + 1)
            self.assertEqual(client.chunks[-1], byte)
        # Each byte came back alone: nothing was held back for more.
        self.assertEqual(len(client.chunks), self.ROUNDS)
        self.assertEqual(client.data, bytes(range(0x20, 0x20 + self.ROUNDS)))
        client.transport.loseConnection()
        yield withTimeout(client.lost, STEP_TIMEOUT, "the end")

    def setUp(self):
        self.rig = Rig(self)
        self.echo, self.echoPort = self.rig.server(_Echo)

    @inlineCallbacks
    def test_echoByteByByteForward(self):
        """
        Through C{--forward}: 50 rounds of one byte written, the one byte
        back, with nothing else written meanwhile.
        """
        yield self.rig.start(daemonArgs=["--forward", "0:127.0.0.1:%d" % (self.echoPort,)])
        port = yield self.rig.listenPort("1")
        yield self.echoRounds(port)
        self.assertEqual(self.echo.connections, 1)

    @inlineCallbacks
    def test_echoByteByByteReverse(self):
        """
        Through C{--reverse}: the same, the client inside the guest.
        """
        guestPort = freeTcpPort()
        yield self.rig.start(daemonArgs=["--reverse", "%d:127.0.0.1:%d" % (guestPort, self.echoPort)])
        yield self.rig.waitRow("1", lambda r: r["state"] == "active", "active")
        yield self.echoRounds(guestPort)
        self.assertEqual(self.echo.connections, 1)


# -- 5: refused and reset upstreams -----------------------------------------------------


class UpstreamFailureTests(TestCase):
    """
    The far side's connection refused, or reset in the middle of a stream:
    the near side's client sees its connection end, and the refusal is in
    the forward's row.
    """

    timeout = 120
    CHUNK = 64 * 1024
    QUICK = 20

    def setUp(self):
        self.rig = Rig(self)

    @inlineCallbacks
    def assertClosedUnanswered(self, port, what):
        """
        A client of C{port} that writes a request gets its connection ended
        with nothing received (a clean close or a reset), with nothing
        more from it.
        """
        client = yield self.rig.client(port)
        client.transport.write(b"GET / HTTP/1.0\r\n\r\n")
        yield withTimeout(client.lost, STEP_TIMEOUT, "%s: the client's connection to close" % (what,))
        self.assertEqual(client.received, 0, what)
        self.assertTrue(client.reason.check(error.ConnectionDone, error.ConnectionLost), client.reason)

    @inlineCallbacks
    def _echoBothWays(self):
        """
        Start with an echo server on the host, a forward to it (id 1) and a
        reverse forward to it (id 2), both active.

        @return: (the echo factory, the forward's port, the guest's port).
        """
        echo, echoPort = self.rig.server(_Echo)
        guestPort = freeTcpPort()
        yield self.rig.start(daemonArgs=[
            "--forward", "0:127.0.0.1:%d" % (echoPort,),
            "--reverse", "%d:127.0.0.1:%d" % (guestPort, echoPort),
        ])
        port = yield self.rig.listenPort("1")
        yield self.rig.waitRow("2", lambda r: r["state"] == "active", "active")
        return echo, port, guestPort

    @inlineCallbacks
    def test_refusedUpstream(self):
        """
        A forward and a reverse forward to a port where nothing listens:
        each connection is closed with nothing received, and the row's
        C{last_error} says the connection was refused (by the guest's
        connect, or by the host's).
        """
        dead = deadPort(self)
        guestPort = freeTcpPort()
        yield self.rig.start(daemonArgs=[
            "--forward", "0:127.0.0.1:%d" % (dead,),
            "--reverse", "%d:127.0.0.1:%d" % (guestPort, dead),
        ])
        port = yield self.rig.listenPort("1")
        yield self.rig.waitRow("2", lambda r: r["state"] == "active", "active")

        yield self.assertClosedUnanswered(port, "forward")
        row = yield self.rig.waitRow("1", lambda r: r["last_error"] is not None, "last_error")
        self.assertIn("refused by the guest: connection-refused", row["last_error"])
        self.assertIn("127.0.0.1:%d" % (dead,), row["last_error"])
        self.assertEqual((row["state"], row["connections"], row["total_connections"]), ("active", 0, 1))

        yield self.assertClosedUnanswered(guestPort, "reverse")
        row = yield self.rig.waitRow("2", lambda r: r["last_error"] is not None, "last_error")
        self.assertIn("connection-refused", row["last_error"])
        self.assertIn("127.0.0.1:%d" % (dead,), row["last_error"])
        self.assertEqual((row["state"], row["connections"], row["total_connections"]), ("active", 0, 1))

        # Both forwards go on serving: a second refusal is the same.
        yield self.assertClosedUnanswered(port, "forward, again")
        row = yield self.rig.waitRow("1", lambda r: r["total_connections"] == 2, "a second connection")

    @inlineCallbacks
    def resetMidStream(self, port, factory):
        client = yield self.rig.client(port)
        client.transport.write(b"go")
        yield withTimeout(client.until(self.CHUNK), STEP_TIMEOUT, "the first chunk")
        self.assertEqual((client.received, client.reason), (self.CHUNK, None))
        client.transport.write(b"reset")
        yield withTimeout(client.lost, STEP_TIMEOUT, "the client's connection to end after the reset")
        self.assertEqual(factory.resets, 1)
        self.assertEqual(client.received, self.CHUNK)
        # A reset, not a clean end (which would pass a cut answer off as
        # whole): the RESET stream aborts the client's socket (SO_LINGER 0).
        self.assertTrue(client.reason.check(error.ConnectionLost), client.reason)

    @inlineCallbacks
    def test_resetUpstream(self):
        """
        A server that resets its connection (SO_LINGER 0) in the middle of
        a stream, behind a forward and behind a reverse forward: the client
        has had its first chunk, and its connection is then reset without
        its writing anything more; the forward counts no live connection.
        """
        factory, serverPort = self.rig.server(_ResetServer, chunk=os.urandom(self.CHUNK))
        guestPort = freeTcpPort()
        yield self.rig.start(daemonArgs=[
            "--forward", "0:127.0.0.1:%d" % (serverPort,),
            "--reverse", "%d:127.0.0.1:%d" % (guestPort, serverPort),
        ])
        port = yield self.rig.listenPort("1")
        yield self.rig.waitRow("2", lambda r: r["state"] == "active", "active")

        yield self.resetMidStream(port, factory)
        row = yield self.rig.waitRow("1", lambda r: r["connections"] == 0, "the connection's end")
        self.assertEqual(row["total_connections"], 1)

        factory.resets = 0
        yield self.resetMidStream(guestPort, factory)
        row = yield self.rig.waitRow("2", lambda r: r["connections"] == 0, "the connection's end")
        self.assertEqual(row["total_connections"], 1)
        self.assertEqual(factory.connections, 2)

    @inlineCallbacks
    def test_clientGoneAtOnce(self):
        """
        Clients that connect and close at once (before the far side could
        have accepted their stream), cleanly or with a reset, through a
        forward and a reverse forward: every far-side connection that was
        made ends too, no connection is left counted, and the forwards go
        on carrying data.
        """
        echo, port, guestPort = yield self._echoBothWays()
        for fid, p in (("1", port), ("2", guestPort)):
            for i in range(self.QUICK):
                client = yield self.rig.client(p)
                client.transport.write(b"bye")
                if i % 2:
                    client.transport.abortConnection()  # SO_LINGER 0: a reset
                else:
                    client.transport.loseConnection()
                yield client.lost
            yield self.rig.waitRow(
                fid, lambda r: r["connections"] == 0 and r["total_connections"] == self.QUICK, "the ends"
            )
            yield waitFor(
                lambda: not [c for c in self.rig.tracked.open if isinstance(c, _Echo)],
                "forward %s: the far side's connections to end" % (fid,),
                STEP_TIMEOUT,
            )
            client = yield self.rig.client(p)
            client.transport.write(b"still there")
            yield withTimeout(client.until(11), STEP_TIMEOUT, "forward %s: an echo after the quick ones" % (fid,))
            self.assertEqual(client.data, b"still there")
            client.transport.loseConnection()
            yield client.lost
        self.assertLessEqual(echo.connections, 2 * self.QUICK + 2)

    @inlineCallbacks
    def test_clientReset(self):
        """
        A client that resets its connection (SO_LINGER 0) in the middle of
        an echo, through a forward and through a reverse forward: the
        server's connection is reset too, and no connection is left
        counted.
        """
        echo, port, guestPort = yield self._echoBothWays()
        for fid, p in (("1", port), ("2", guestPort)):
            client = yield self.rig.client(p)
            client.transport.write(b"x" * self.CHUNK)
            yield withTimeout(client.until(self.CHUNK), STEP_TIMEOUT, "the echo")
            servers = [proto for proto in self.rig.tracked.open if isinstance(proto, _Echo)]
            self.assertEqual(len(servers), 1)
            client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.transport.abortConnection()
            yield client.lost
            yield waitFor(lambda: echo.lost, "forward %s: the server's end" % (fid,), STEP_TIMEOUT)
            # reset in turn, not closed cleanly
            self.assertTrue(echo.lost.pop().check(error.ConnectionLost))
            row = yield self.rig.waitRow(fid, lambda r: r["connections"] == 0, "the connection's end")
            self.assertEqual(row["total_connections"], 1)
        self.assertEqual(echo.connections, 2)


# -- 6: the guest's allowlists ------------------------------------------------------------


class AllowlistTests(TestCase):
    """
    A guest started with C{--allow-connect 127.0.0.1:1-1000 --allow-connect
    DIR/ok-*.sock --allow-listen none}.
    """

    timeout = 120

    @inlineCallbacks
    def test_refusals(self):
        """
        A forward to a TCP port above 1000, and one to a unix path no
        pattern names, are refused: the client's connection is closed with
        nothing received, the server never sees a connection, and
        C{last_error} gives C{not-allowed} and the option.  A unix path a
        pattern names is reached.  A reverse forward is failed
        C{not-allowed} (C{--allow-listen none}); adding one at run time is
        refused and not kept.
        """
        rig = Rig(self)
        echo, echoPort = rig.server(_Echo)
        unixServers = {}
        for name in ("ok-1.sock", "no.sock"):
            factory = ServerFactory(_Echo, rig.tracked)
            port = reactor.listenUNIX(rig.path(name), factory)
            self.addCleanup(port.stopListening)
            unixServers[name] = factory
        guestPort = freeTcpPort()
        allowed = rig.path("ok-*.sock")
        yield rig.start(
            guestArgs=["--allow-connect", "127.0.0.1:1-1000", "--allow-connect", allowed, "--allow-listen", "none"],
            daemonArgs=[
                "--forward", "0:127.0.0.1:%d" % (echoPort,),
                "--forward", "0:%s" % (rig.path("no.sock"),),
                "--forward", "0:%s" % (rig.path("ok-1.sock"),),
                "--reverse", "%d:127.0.0.1:%d" % (guestPort, echoPort),
            ],
        )
        ports = {}
        for fid in ("1", "2", "3"):
            ports[fid] = yield rig.listenPort(fid)

        # allowed: the unix path a pattern names
        client = yield rig.client(ports["3"])
        client.transport.write(b"allowed")
        yield withTimeout(client.until(7), STEP_TIMEOUT, "the echo through an allowed forward")
        self.assertEqual(client.data, b"allowed")
        self.assertEqual(unixServers["ok-1.sock"].connections, 1)
        client.transport.loseConnection()
        yield client.lost

        for fid, target in (("1", "127.0.0.1:%d" % (echoPort,)), ("2", rig.path("no.sock"))):
            client = yield rig.client(ports[fid])
            client.transport.write(b"let me in")
            yield withTimeout(client.lost, STEP_TIMEOUT, "forward %s: the refused client's close" % (fid,))
            self.assertEqual(client.received, 0)
            row = yield rig.waitRow(fid, lambda r: r["last_error"] is not None, "last_error")
            self.assertIn("refused by the guest: not-allowed", row["last_error"])
            self.assertIn(target, row["last_error"])
            self.assertIn("--allow-connect 127.0.0.1:1-1000 %s" % (allowed,), row["last_error"])
            self.assertEqual((row["connections"], row["total_connections"]), (0, 1))
        # The guest connected to neither refused target.
        self.assertEqual((echo.connections, unixServers["no.sock"].connections), (0, 0))

        row = yield rig.waitRow("4", lambda r: r["state"] == "failed", "failed")
        self.assertIn("not-allowed", row["reason"])
        self.assertIn("--allow-listen none", row["reason"])
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", guestPort), timeout=10).close()

        other = freeTcpPort()
        try:
            yield rig.session.forwardAdd("reverse", "%d:127.0.0.1:%d" % (other, echoPort))
        except StreamRefused as e:
            self.assertEqual(e.code, "not-allowed")
            self.assertIn("--allow-listen none", e.message)
        else:
            self.fail("a reverse forward was added despite --allow-listen none")
        rows = yield rig.session.forwardList()
        self.assertEqual([r["id"] for r in rows], ["1", "2", "3", "4"])

    @inlineCallbacks
    def test_defaults(self):
        """
        A guest with no allowlist options (secure by default): a forward to
        a loopback port is reached; a reverse forward on a port below 1024
        or on a unix path, and a forward to a unix path, are refused
        C{not-allowed}, naming the default patterns.
        """
        rig = Rig(self)
        echo, echoPort = rig.server(_Echo)
        app = ServerFactory(_Echo, rig.tracked)
        port = reactor.listenUNIX(rig.path("app.sock"), app)
        self.addCleanup(port.stopListening)
        yield rig.start(daemonArgs=[
            "--forward", "0:127.0.0.1:%d" % (echoPort,),
            "--forward", "0:%s" % (rig.path("app.sock"),),
            "--reverse", "1000:127.0.0.1:%d" % (echoPort,),
            "--reverse", "%s:127.0.0.1:%d" % (rig.path("g.sock"), echoPort),
        ])
        client = yield rig.client((yield rig.listenPort("1")))
        client.transport.write(b"loopback")
        yield withTimeout(client.until(8), STEP_TIMEOUT, "the echo through the default allowlist")
        self.assertEqual(client.data, b"loopback")
        client.transport.loseConnection()
        yield client.lost

        client = yield rig.client((yield rig.listenPort("2")))
        client.transport.write(b"unix?")
        yield withTimeout(client.lost, STEP_TIMEOUT, "the refused client's close")
        self.assertEqual((client.received, app.connections), (0, 0))
        row = yield rig.waitRow("2", lambda r: r["last_error"] is not None, "last_error")
        self.assertIn("not-allowed", row["last_error"])
        self.assertIn("--allow-connect 127.0.0.1:* [::1]:*", row["last_error"])

        for fid, listen in (("3", "127.0.0.1:1000"), ("4", rig.path("g.sock"))):
            row = yield rig.waitRow(fid, lambda r: r["state"] == "failed", "failed")
            self.assertIn("not-allowed", row["reason"])
            self.assertIn(listen, row["reason"])
            self.assertIn("--allow-listen 127.0.0.1:1024-65535 [::1]:1024-65535", row["reason"])
        self.assertFalse(os.path.exists(rig.path("g.sock")))
        self.assertEqual(echo.connections, 1)


# -- 7: bad input at start-up ----------------------------------------------------------------


class StartupTests(TestCase):
    """
    The daemon's --forward and --reverse at start-up.
    """

    timeout = 120

    @inlineCallbacks
    def runDaemon(self, rig, *args):
        daemon = rig.startDaemon(*args)
        code = yield withTimeout(daemon.ended, START_TIMEOUT, "the daemon to exit")
        return code, bytes(daemon.err).decode("utf-8", "replace")

    def assertOneLine(self, text, *fragments):
        self.assertNotIn("Traceback", text)
        self.assertEqual(text.count("\n"), 1, text)
        self.assertTrue(text.startswith("prokshy-host: "), text)
        for fragment in fragments:
            self.assertIn(fragment, text)

    @inlineCallbacks
    def test_badSpecs(self):
        """
        A malformed SPEC (either option), a reverse forward without a
        listening port, a SPEC naming an unknown VM, and one naming no VM
        of several: one line on stderr, exit status 2, nothing listening.
        """
        rig = Rig(self)
        cases = [
            (["--forward", "8080:nohost"], "--forward 8080:nohost"),
            (["--reverse", "127.0.0.1:x:127.0.0.1:80"], "--reverse 127.0.0.1:x:127.0.0.1:80"),
            (["--reverse", "0:127.0.0.1:80"], "not 0"),
            (["--forward", "nosuch=0:127.0.0.1:80"], "nosuch"),
        ]
        for args, fragment in cases:
            code, err = yield self.runDaemon(rig, *args)
            self.assertEqual(code, 2, (args, err))
            self.assertOneLine(err, fragment)
            self.assertFalse(os.path.exists(rig.daemonSocket), args)
        # Two VMs, and a SPEC that names neither.
        daemon = rig._spawn("daemon", list(_TWISTD) + [
            "prokshy-host", "--vm", "a=" + rig.path("a.sock"), "--vm", "b=" + rig.path("b.sock"),
            "--listen", "unix:" + rig.daemonSocket, "--forward", "0:127.0.0.1:80",
        ])
        code = yield withTimeout(daemon.ended, START_TIMEOUT, "the daemon to exit")
        self.assertEqual(code, 2)
        self.assertOneLine(bytes(daemon.err).decode(), "several VMs (a, b)", "VM=0:127.0.0.1:80")

    @inlineCallbacks
    def test_addressInUse(self):
        """
        A forward whose listening address is taken is listed failed with
        "address already in use"; the daemon keeps serving: exec works
        through it, and its other forward carries connections.
        """
        rig = Rig(self)
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        busyPort = busy.getsockname()[1]
        echo, echoPort = rig.server(_Echo)
        session = yield rig.start(daemonArgs=[
            "--forward", "%d:127.0.0.1:%d" % (busyPort, echoPort),
            "--forward", "0:127.0.0.1:%d" % (echoPort,),
        ])
        row = yield rig.waitRow("1", lambda r: r["state"] == "failed", "failed")
        self.assertIn("address already in use", row["reason"])
        self.assertIn("127.0.0.1:%d" % (busyPort,), row["reason"])

        result = yield withTimeout(session.exec("hello"), STEP_TIMEOUT, "exec through the daemon")
        self.assertEqual((result.stdout, result.exitStatus), (b"hello\n", 0))
        port = yield rig.listenPort("2")
        client = yield rig.client(port)
        client.transport.write(b"still serving")
        yield withTimeout(client.until(13), STEP_TIMEOUT, "the echo")
        self.assertEqual(client.data, b"still serving")
        client.transport.loseConnection()
        yield client.lost
        self.assertTrue(rig.daemon.running)
        self.assertIn(b"address already in use", bytes(rig.daemon.output))

        # At run time, the same address: refused, and not kept.
        try:
            yield session.forwardAdd("forward", "%d:127.0.0.1:%d" % (busyPort, echoPort))
        except StreamRefused as e:
            self.assertEqual(e.code, "listen-failed")
            self.assertIn("address already in use", e.message)
        else:
            self.fail("a forward on a busy address was added")
        rows = yield session.forwardList()
        self.assertEqual([r["id"] for r in rows], ["1", "2"])


# -- 8: exec and forwards share the channel ------------------------------------------------------


class SharedChannelTests(TestCase):
    """
    exec round trips through the daemon while a forward carries a large
    transfer.
    """

    timeout = 180
    SIZE = 256 * MB
    EXECS = 5

    @inlineCallbacks
    def test_execDuringTransfer(self):
        """
        While curl fetches 256 MB through a forward (started, and not
        finished: counted by the bytes curl has written), five exec round
        trips through the daemon complete, each before the transfer ends.
        """
        requireCurl()
        rig = Rig(self)
        www = rig.path("www")
        os.mkdir(www)
        with open(os.path.join(www, "big"), "wb") as f:
            f.truncate(self.SIZE)  # sparse: zeros, read fast
        httpPort = yield rig.httpServer(www)
        session = yield rig.start(daemonArgs=["--forward", "0:127.0.0.1:%d" % (httpPort,)])
        port = yield rig.listenPort("1")
        curl = startCurl(self, "http://127.0.0.1:%d/big" % (port,))
        yield waitFor(lambda: curl.received >= 4 * MB or not curl.running, "the transfer to start", STEP_TIMEOUT)
        self.assertTrue(curl.running, curl.tail())
        during = []
        for i in range(self.EXECS):
            before = curl.received
            result = yield withTimeout(session.exec("hello"), STEP_TIMEOUT, "exec %d" % (i,))
            self.assertEqual((result.stdout, result.exitStatus), (b"hello\n", 0))
            during.append((before, curl.received, curl.running))
        for before, after, running in during:
            self.assertTrue(running)
            self.assertLess(after, self.SIZE)
        row = yield rig.row("1")
        self.assertEqual(row["connections"], 1)
        self.assertLess(row["bytes_from_target"], self.SIZE)
        # curl killed in the middle of the saturating transfer: its
        # connection is reset, and the forward's ends (not left paused).
        curl.signal("KILL")
        yield curl.ended
        row = yield rig.waitRow("1", lambda r: r["connections"] == 0, "the killed transfer's end")
        self.assertLess(row["bytes_from_target"], self.SIZE)
        result = yield withTimeout(session.exec("hello"), STEP_TIMEOUT, "exec after the transfer")
        self.assertEqual(result.stdout, b"hello\n")


# -- 9, 10: a guest that predates forwarding; the daemon's clients cannot listen ------------------


class OldGuestTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_reverseNotSupported(self):
        """
        A guest agent whose hello lists no forwarding features: its exec
        works, but a reverse forward is failed "not supported by the
        guest", adding one is refused C{unsupported}, and a forward's
        connection is closed with the same reason in C{last_error}.
        """
        rig = Rig(self)
        echo, echoPort = rig.server(_Echo)
        guestPort = freeTcpPort()
        session = yield rig.start(
            old=True,
            daemonArgs=[
                "--reverse", "%d:127.0.0.1:%d" % (guestPort, echoPort),
                "--forward", "0:127.0.0.1:%d" % (echoPort,),
            ],
        )
        info = yield session.info()
        self.assertNotIn("listen", info["features"])
        self.assertNotIn("connect", info["features"])
        result = yield withTimeout(session.exec("hello"), STEP_TIMEOUT, "exec on the old guest")
        self.assertEqual((result.stdout, result.exitStatus), (b"hello\n", 0))

        row = yield rig.waitRow("1", lambda r: r["state"] == "failed", "failed")
        self.assertIn("not supported by the guest", row["reason"])
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", guestPort), timeout=10).close()

        try:
            yield session.forwardAdd("reverse", "%d:127.0.0.1:%d" % (freeTcpPort(), echoPort))
        except StreamRefused as e:
            self.assertEqual(e.code, "unsupported")
            self.assertIn("not supported by the guest", e.message)
        else:
            self.fail("a reverse forward was added on a guest that cannot listen")

        row = yield rig.row("2")
        self.assertEqual(row["state"], "failed")
        self.assertIn("not supported by the guest", row["reason"])
        port = int(row["listen"].rsplit(":", 1)[1])
        client = yield rig.client(port)
        client.transport.write(b"hello?")
        yield withTimeout(client.lost, STEP_TIMEOUT, "the client's close")
        self.assertEqual(client.received, 0)
        row = yield rig.waitRow("2", lambda r: r["last_error"] is not None, "last_error")
        self.assertIn("not supported by the guest", row["last_error"])
        self.assertEqual(echo.connections, 0)


class ReAddTests(TestCase):
    """
    A forward removed and added again for the same address in one go (the
    two requests in one write): the new one listens (the old listener's
    close is waited for, on the host and in the guest), and carries data.
    """

    timeout = 120

    @inlineCallbacks
    def test_removeAndAddAtOnce(self):
        rig = Rig(self)
        echo, echoPort = rig.server(_Echo)
        yield rig.start()
        for direction in ("forward", "reverse"):
            spec = "%d:127.0.0.1:%d" % (freeTcpPort(), echoPort)
            row = yield rig.session.forwardAdd(direction, spec)
            yield rig.waitRow(row["id"], lambda r: r["state"] == "active", "active")
            removing = rig.session.forwardRemove(row["id"])
            adding = rig.session.forwardAdd(direction, spec)  # the same turn
            yield removing
            again = yield withTimeout(adding, STEP_TIMEOUT, "the forward added again")
            yield rig.waitRow(again["id"], lambda r: r["state"] == "active", "active again")
            client = yield rig.client(int(spec.split(":")[0]))
            client.transport.write(b"again")
            yield withTimeout(client.until(5), STEP_TIMEOUT, "the echo through the new " + direction)
            self.assertEqual(client.data, b"again")
            client.transport.loseConnection()
            yield client.lost


class DaemonClientTests(TestCase):
    """
    What the daemon refuses its framed clients, with no VM behind it.
    """

    timeout = 60

    @inlineCallbacks
    def test_listenRefused(self):
        """
        A framed client of the daemon opening a C{listen} stream itself is
        refused C{unknown-kind} (reverse forwards are added with
        forward-add); the daemon goes on serving it.
        """
        rig = Rig(self)
        rig.daemon = rig.startDaemon()  # its VM is not even there
        session = yield rig.connect()
        for args in ({"host": "127.0.0.1", "port": freeTcpPort()}, {"path": rig.path("g.sock")}):
            try:
                yield session.mux.openStream("listen", args, Protocol())
            except StreamRefused as e:
                self.assertEqual(e.code, "unknown-kind")
                self.assertIn("forward-add", e.message)
            else:
                self.fail("the daemon accepted a client's listen stream")
        rows = yield session.forwardList()
        self.assertEqual(rows, [])
        self.assertTrue(rig.daemon.running)

    @inlineCallbacks
    def test_forwardAddRefusals(self):
        """
        forward-add with a malformed SPEC is refused C{bad-spec}, with an
        unknown VM C{no-such-vm}, a reverse forward without a listening
        port C{bad-spec}; none is kept, and the next forward added gets id
        1.
        """
        rig = Rig(self)
        rig.daemon = rig.startDaemon()
        session = yield rig.connect()
        for direction, spec, code, fragment in [
            ("forward", "8080:nohost", "bad-spec", "8080:nohost"),
            ("reverse", "0:127.0.0.1:80", "bad-spec", "not 0"),
            ("forward", "nosuch=0:127.0.0.1:80", "no-such-vm", "nosuch"),
        ]:
            try:
                yield session.forwardAdd(direction, spec)
            except StreamRefused as e:
                self.assertEqual((e.code, fragment in e.message), (code, True), e.message)
            else:
                self.fail("forward-add %s %s was accepted" % (direction, spec))
        self.assertEqual((yield session.forwardList()), [])
        row = yield session.forwardAdd("forward", "0:127.0.0.1:80")
        self.assertEqual((row["id"], row["state"]), ("1", "waiting"))
