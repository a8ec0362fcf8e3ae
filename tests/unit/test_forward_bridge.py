"""
L{prokshy.forward.bridge}: the splice between a socket connection and a
stream (docs/protocol.md §10.3.3), run against real L{Mux}/L{Stream}/L{Link}
objects over the in-memory L{prokshy.testing.LinkPair}, with
L{twisted.internet.testing} transports for the sockets.

The fakes defined here (L{FakeSocket}, L{FakeTCPSocket}, L{Reactor},
L{Peer}, L{Tap}, L{connectClient}, L{acceptConnection}) are shared by the
other C{test_forward_*} modules.
"""

import errno

from twisted.internet import error
from twisted.internet.defer import succeed
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IListeningPort, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from prokshy.forward.bridge import CONNECT_TIMEOUT, Splice, connectRefusal, connectSplice, describeAddress
from prokshy.forward.spec import Tcp, Unix
from prokshy.link.session import SessionEnded
from prokshy.streams.interfaces import IStreamProtocol
from prokshy.streams.mux import Mux
from prokshy.streams.stream import Stream, StreamRefused, StreamReset
from prokshy.streams.throttle import Throttle
from prokshy.testing import FrameTap, LinkPair, deterministicNonces
from prokshy.wire import frames

# -- shared fakes ------------------------------------------------------------


class FakeSocket(StringTransport):
    """
    A connected socket's transport (a unix one: no TCP options), driven by
    hand: the test plays the kernel with L{feed}, L{readEof},
    L{writeEnded}, L{lose}.

    @ivar writeClosed: whether L{loseWriteConnection} (shutdown SHUT_WR)
        was called.
    @ivar aborted: whether L{abortConnection} was called.
    @ivar closes: how many times L{loseConnection} was called.
    """

    def __init__(self, peer=None):
        StringTransport.__init__(
            self, peerAddress=peer or IPv4Address("TCP", "127.0.0.1", 5000), lenient=True
        )
        self.protocol = None
        self.writeClosed = False
        self.aborted = False
        self.closes = 0
        self.lost = None

    def loseWriteConnection(self):
        self.writeClosed = True

    def loseConnection(self):
        self.closes += 1
        StringTransport.loseConnection(self)

    def abortConnection(self):
        self.aborted = True
        self.disconnected = self.disconnecting = True

    # -- the test's side -------------------------------------------------

    def connect(self, protocol):
        self.protocol = protocol
        protocol.makeConnection(self)
        return protocol

    def feed(self, data):
        self.protocol.dataReceived(data)

    def readEof(self):
        """
        The peer shut down its write side.
        """
        self.protocol.readConnectionLost()

    def writeEnded(self):
        """
        The shutdown(SHUT_WR) asked for by loseWriteConnection is done.
        """
        self.protocol.writeConnectionLost()

    def lose(self, reason=None):
        """
        The connection is gone (cleanly by default).
        """
        self.lost = Failure(reason if reason is not None else ConnectionDone("closed"))
        self.connected = False
        self.protocol.connectionLost(self.lost)

    @property
    def paused(self):
        return self.producerState == "paused"


@implementer(ITCPTransport)
class FakeTCPSocket(FakeSocket):
    """
    A TCP socket: it has TCP_NODELAY.
    """

    noDelay = False
    keepAlive = False

    def setTcpNoDelay(self, enabled):
        self.noDelay = enabled

    def getTcpNoDelay(self):
        return self.noDelay

    def setTcpKeepAlive(self, enabled):
        self.keepAlive = enabled

    def getTcpKeepAlive(self):
        return self.keepAlive


@implementer(IListeningPort)
class RecordingPort:
    """
    A listening port that remembers whether it was stopped.
    """

    def __init__(self, address, factory):
        self.address = address
        self.factory = factory
        self.stopped = 0

    def startListening(self):
        pass

    def stopListening(self):
        self.stopped += 1
        return succeed(None)

    def getHost(self):
        return self.address


class Reactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} whose listeners are L{RecordingPort}s (in
    C{self.ports}, in order), or fail with the exception in
    C{self.listenErrors} (popped, one per listen) when there is one.

    @ivar boundPort: the port number a listen on port 0 reports.
    """

    boundPort = 43210

    def __init__(self):
        MemoryReactorClock.__init__(self)
        self.ports = []
        self.listenErrors = []

    def _listened(self, address, factory):
        if self.listenErrors:
            raise self.listenErrors.pop(0)
        port = RecordingPort(address, factory)
        self.ports.append(port)
        return port

    def listenTCP(self, port, factory, backlog=50, interface=""):
        self.tcpServers.append((port, factory, backlog, interface))
        cls = IPv6Address if ":" in interface else IPv4Address
        return self._listened(cls("TCP", interface or "0.0.0.0", port or self.boundPort), factory)

    def listenUNIX(self, address, factory, backlog=50, mode=0o666, wantPID=0):
        self.unixServers.append((address, factory, backlog, mode, wantPID))
        return self._listened(UNIXAddress(address), factory)


def connectClient(reactor, socket, index=-1, unix=False):
    """
    Complete the client connection attempt number C{index} made on
    C{reactor} (a MemoryReactor) over C{socket}.

    @return: the protocol connected.
    """
    attempts = reactor.unixClients if unix else reactor.tcpClients
    factory = attempts[index][1 if unix else 2]
    addr = UNIXAddress(attempts[index][0]) if unix else IPv4Address("TCP", attempts[index][0], attempts[index][1])
    protocol = factory.buildProtocol(addr)
    socket.connect(protocol)
    return protocol


def failClient(reactor, exc, index=-1, unix=False):
    """
    Fail the client connection attempt number C{index} with C{exc}.
    """
    attempts = reactor.unixClients if unix else reactor.tcpClients
    factory = attempts[index][1 if unix else 2]
    factory.clientConnectionFailed(reactor.connectors[index], Failure(exc))


def acceptConnection(port, socket, peer=None):
    """
    A connection arrives on C{port} (a L{RecordingPort}) from C{peer}.

    @return: the protocol built for it (None: refused, closed at once).
    """
    peer = peer or IPv4Address("TCP", "127.0.0.1", 40000)
    socket.peerAddr = peer
    protocol = port.factory.buildProtocol(peer)
    if protocol is not None:
        socket.connect(protocol)
    return protocol


@implementer(IStreamProtocol)
class Peer(Protocol):
    """
    The far end of a stream, run by the test: records what arrives.
    """

    def __init__(self):
        self.received = []
        self.eof = False
        self.reason = None
        self.made = False

    def connectionMade(self):
        self.made = True

    def dataReceived(self, data):
        self.received.append(data)

    def eofReceived(self):
        self.eof = True

    def connectionLost(self, reason):
        self.reason = reason

    @property
    def data(self):
        return b"".join(self.received)


Tap = FrameTap


class PairMixin:
    """
    A host and a guest L{Mux} over a L{LinkPair}.
    """

    def connectMuxes(self, guestHandler=None, hostHandler=None, window=256 * 1024, hostConfig=None, guestConfig=None):
        deterministicNonces(self, seed=9)
        self.hostMux = Mux("host", hostHandler, window=window)
        self.guestMux = Mux("guest", guestHandler, window=window)
        self.hostTap, self.guestTap = Tap(self.hostMux), Tap(self.guestMux)
        self.pair = LinkPair(self.hostTap, self.guestTap, hostConfig=hostConfig, guestConfig=guestConfig)
        self.addCleanup(self.pair.stop)
        self.pair.connect()
        return self.pair

    def runUntil(self, until, duration=60):
        self.assertTrue(self.pair.run(until=until, duration=duration), "condition not reached")

    def settle(self):
        self.pair.run(duration=1.0)

    def answer(self, d):
        """
        Run until C{d} fires; return its result (a Failure on error).
        """
        box = []
        d.addBoth(box.append)
        self.runUntil(lambda: box)
        return box[0]


# -- the splice ----------------------------------------------------------------


class SpliceTestCase(PairMixin, SynchronousTestCase):
    """
    A splice on the host: its socket is a client's connection (accepted
    first, as a forward's listener does), its stream is opened to the guest,
    where a L{Peer} plays the far side.
    """

    def splice(self, socket=None, window=256 * 1024):
        self.peers = []

        def handler(stream):
            peer = Peer()
            self.peers.append(peer)
            return peer

        self.connectMuxes(handler, window=window)
        self.done = []
        self.s = Splice(self.done.append)
        self.sock = socket if socket is not None else FakeTCPSocket()
        self.sock.connect(self.s.socketProtocol())
        self.pausedBeforeAccept = self.sock.paused
        stream = self.answer(self.hostMux.openStream("connect", {"host": "127.0.0.1", "port": 80}, self.s.streamProtocol()))
        self.assertIsInstance(stream, Stream)
        self.stream = stream
        [self.peer] = self.peers
        self.runUntil(lambda: self.peer.made)
        self.remote = self.guestMux.streams[stream.id]
        return self.s


class JoinTests(SpliceTestCase):
    def test_pausedUntilBound(self):
        """
        The socket is not read from its connection until its stream is
        bound; then it is resumed and the producers are registered both
        ways.
        """
        self.splice()
        self.assertTrue(self.pausedBeforeAccept)
        self.assertFalse(self.sock.paused)
        self.assertEqual(self.sock.producerState, "producing")
        self.assertIsInstance(self.sock.producer, Throttle)
        self.assertIs(self.sock.producer.stream, self.stream)
        self.assertTrue(self.sock.streaming)
        self.assertIs(self.s.socket, self.sock)
        self.assertIs(self.s.stream, self.stream)

    def test_pausedWhileOpening(self):
        """
        While the OPEN is unanswered the socket stays paused.
        """
        self.connectMuxes(lambda stream: Peer())
        s = Splice()
        sock = FakeTCPSocket()
        sock.connect(s.socketProtocol())
        results = []
        self.hostMux.openStream("connect", {}, s.streamProtocol()).addBoth(results.append)
        self.assertTrue(sock.paused)
        self.assertIsNone(sock.producer)
        self.runUntil(lambda: results)
        self.assertFalse(sock.paused)

    def test_tcpNoDelay(self):
        """
        A TCP socket gets TCP_NODELAY as it connects.
        """
        self.splice()
        self.assertTrue(self.sock.noDelay)

    def test_unixSocket(self):
        """
        A unix socket (no TCP options) is spliced all the same; its peer is
        described as C{unix}.
        """
        self.splice(FakeSocket(peer=UNIXAddress(None)))
        self.assertFalse(ITCPTransport.providedBy(self.sock))
        self.assertEqual(self.s.peer, "unix")
        self.sock.feed(b"abc")
        self.runUntil(lambda: self.peer.data == b"abc")

    def test_peerDescribed(self):
        self.splice(FakeTCPSocket(peer=IPv6Address("TCP", "::1", 4242)))
        self.assertEqual(self.s.peer, "[::1]:4242")


class DataTests(SpliceTestCase):
    def test_bothWays(self):
        self.splice()
        self.sock.feed(b"GET / HTTP/1.0\r\n\r\n")
        self.remote.write(b"HTTP/1.0 200 OK\r\n")
        self.runUntil(lambda: self.peer.data and self.sock.value())
        self.assertEqual(self.peer.data, b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(self.sock.value(), b"HTTP/1.0 200 OK\r\n")

    def test_oneByteAtOnce(self):
        """
        A single byte read from the socket is sent on the stream at once:
        nothing is held back to fill a frame.
        """
        self.splice()
        self.sock.feed(b"x")
        self.assertEqual(self.stream.bytesOut, 1)
        self.runUntil(lambda: self.peer.data == b"x")
        self.remote.write(b"y")
        self.runUntil(lambda: self.sock.value() == b"y")
        self.sock.feed(b"z")
        self.assertEqual(self.stream.bytesOut, 2)

    def test_counters(self):
        """
        bytesToStream and bytesFromStream count payload bytes each way, and
        keep their values once the splice is done.
        """
        self.splice()
        self.assertEqual((self.s.bytesToStream, self.s.bytesFromStream), (0, 0))
        self.sock.feed(b"12345")
        self.remote.write(b"abc")
        self.runUntil(lambda: self.sock.value() == b"abc" and self.peer.data == b"12345")
        self.assertEqual((self.s.bytesToStream, self.s.bytesFromStream), (5, 3))
        self.remote.abort("x", "y")
        self.runUntil(lambda: self.sock.aborted)
        self.sock.lose(ConnectionLost("aborted"))
        self.assertEqual(self.done, [self.s])
        self.assertEqual((self.s.bytesToStream, self.s.bytesFromStream), (5, 3))

    def test_countersBeforeStream(self):
        s = Splice()
        self.assertEqual((s.bytesToStream, s.bytesFromStream), (0, 0))
        self.assertFalse(s.done)


class HalfCloseTests(SpliceTestCase):
    def test_socketEofFirst(self):
        """
        The client shuts down its write side: EOF on the stream, and the
        socket stays open for the whole response; the peer's EOF then shuts
        the socket's write side down, and with both directions ended the
        socket is closed and the stream CLOSEd.
        """
        self.splice()
        self.sock.feed(b"request")
        self.sock.readEof()
        self.runUntil(lambda: self.peer.eof)
        self.assertEqual(self.peer.data, b"request")
        self.assertFalse(self.sock.disconnecting)
        self.assertFalse(self.sock.writeClosed)
        self.remote.write(b"the whole response")
        self.runUntil(lambda: self.sock.value() == b"the whole response")
        self.assertFalse(self.sock.disconnecting)
        self.remote.writeEof()
        self.runUntil(lambda: self.sock.writeClosed)
        self.assertFalse(self.sock.disconnecting)
        self.sock.writeEnded()
        self.assertTrue(self.sock.disconnecting)
        self.assertFalse(self.sock.aborted)
        self.assertEqual(self.done, [])
        self.sock.lose()
        self.runUntil(lambda: self.peer.reason is not None)
        self.peer.reason.trap(ConnectionDone)
        self.runUntil(lambda: self.done)
        self.assertEqual(self.done, [self.s])
        self.assertTrue(self.stream.ended)
        self.assertEqual(self.sock.closes, 1)

    def test_streamEofFirst(self):
        """
        The peer's EOF first: the socket's write side is shut down and it is
        still read; its EOF then ends it all.
        """
        self.splice()
        self.remote.write(b"banner")
        self.remote.writeEof()
        self.runUntil(lambda: self.sock.writeClosed)
        self.assertEqual(self.sock.value(), b"banner")
        self.assertFalse(self.sock.disconnecting)
        self.sock.writeEnded()
        self.assertFalse(self.sock.disconnecting)
        self.sock.feed(b"still read")
        self.runUntil(lambda: self.peer.data == b"still read")
        self.assertFalse(self.peer.eof)
        self.sock.readEof()
        self.runUntil(lambda: self.peer.eof)
        self.assertTrue(self.sock.disconnecting)
        self.sock.lose()
        self.runUntil(lambda: self.peer.reason is not None)
        self.peer.reason.trap(ConnectionDone)
        self.runUntil(lambda: self.done)
        self.assertEqual(self.done, [self.s])

    def test_socketClosedCleanly(self):
        """
        A socket that closes without an error before either EOF: EOF, then
        CLOSE on the stream.
        """
        self.splice()
        self.sock.feed(b"bye")
        self.sock.lose()
        self.runUntil(lambda: self.peer.eof)
        self.assertEqual(self.peer.data, b"bye")
        self.remote.loseConnection()
        self.runUntil(lambda: self.peer.reason is not None)
        self.peer.reason.trap(ConnectionDone)
        self.runUntil(lambda: self.done)
        self.assertEqual(self.done, [self.s])

    def test_streamClose(self):
        """
        CLOSE from the peer: what came before it is written, then the
        socket is closed (not aborted).
        """
        self.splice()
        self.remote.write(b"last words")
        self.remote.loseConnection()
        self.runUntil(lambda: self.sock.disconnecting)
        self.assertEqual(self.sock.value(), b"last words")
        self.assertFalse(self.sock.aborted)
        self.assertTrue(self.sock.writeClosed)  # the EOF before the CLOSE
        self.assertEqual(self.done, [])
        self.sock.lose()
        self.assertEqual(self.done, [self.s])
        self.runUntil(lambda: self.peer.reason is not None)
        self.peer.reason.trap(ConnectionDone)


class ResetTests(SpliceTestCase):
    def test_socketError(self):
        """
        A socket error resets the stream C{connection-reset}, message the
        error's text.
        """
        self.splice()
        self.sock.lose(ConnectionLost("Connection reset by peer"))
        self.runUntil(lambda: self.peer.reason is not None)
        self.peer.reason.trap(StreamReset)
        self.assertEqual(self.peer.reason.value.code, "connection-reset")
        self.assertEqual(self.peer.reason.value.message, self.sock.lost.getErrorMessage())
        self.assertIn("Connection reset by peer", self.peer.reason.value.message)
        self.assertEqual(self.done, [self.s])
        self.assertFalse(self.sock.aborted)

    def test_streamReset(self):
        """
        RESET from the peer aborts the socket at once (no close, no
        shutdown).
        """
        self.splice()
        self.remote.write(b"unsent?")
        self.remote.abort("connection-reset", "Connection reset by peer")
        self.runUntil(lambda: self.sock.aborted)
        self.assertFalse(self.sock.writeClosed)
        self.assertEqual(self.sock.closes, 0)
        self.assertEqual(self.done, [])
        self.sock.lose(ConnectionLost("aborted"))
        self.assertEqual(self.done, [self.s])

    def test_sessionEnd(self):
        """
        The end of the session aborts the socket.
        """
        self.splice()
        self.pair.host.stop("gone")
        self.assertTrue(self.sock.aborted)
        self.sock.lose(ConnectionLost("aborted"))
        self.assertEqual(self.done, [self.s])

    def test_socketGoneBeforeStream(self):
        """
        A socket that closes while its stream is still being opened: the
        stream is reset as soon as it opens, and the splice is done once.
        """
        self.connectMuxes(lambda stream: Peer())
        done = []
        s = Splice(done.append)
        sock = FakeTCPSocket()
        sock.connect(s.socketProtocol())
        d = self.hostMux.openStream("connect", {}, s.streamProtocol())
        sock.lose()
        self.assertEqual(done, [])
        stream = self.answer(d)
        self.assertTrue(stream.ended)
        self.assertEqual(done, [s])
        self.settle()
        resets = self.guestTap.of(frames.RESET, stream.id)
        self.assertEqual(len(resets), 1)
        self.assertIn(b"connection-reset", resets[0].payload)

    def test_streamGoneBeforeSocket(self):
        """
        A socket that connects after its stream ended is aborted at once.
        """
        done = []
        s = Splice(done.append)
        s.streamLost(Failure(StreamReset("reset", "gone")))
        self.assertEqual(done, [s])
        sock = FakeTCPSocket()
        sock.connect(s.socketProtocol())
        self.assertTrue(sock.aborted)
        sock.lose(ConnectionLost("aborted"))
        self.assertEqual(done, [s])

    def test_abandon(self):
        """
        A stream that will never open (refused): the socket is closed, and
        the splice is done once it is gone.
        """
        done = []
        s = Splice(done.append)
        sock = FakeTCPSocket()
        sock.connect(s.socketProtocol())
        s.abandon()
        self.assertTrue(sock.disconnecting)
        self.assertFalse(sock.aborted)
        self.assertEqual(done, [])
        sock.lose()
        self.assertEqual(done, [s])
        s.abandon()
        self.assertEqual(done, [s])

    def test_abandonWithoutSocket(self):
        done = []
        s = Splice(done.append)
        s.abandon()
        self.assertEqual(done, [s])
        self.assertTrue(s.done)


class FlowTests(SpliceTestCase):
    def test_fullSocketPausesStream(self):
        """
        While the socket's write buffer is full (the transport pauses its
        producer, the stream), no credit is granted: the peer sends one
        window and then waits; memory stays within it.  Resumed, all of it
        arrives.
        """
        window = 16384
        self.splice(window=window)
        self.sock.producer.pauseProducing()
        before = len(self.guestTap.of(frames.WINDOW, self.stream.id))
        body = bytes(range(256)) * (4 * window // 256)
        self.remote.write(body)
        self.settle()
        self.assertEqual(self.sock.value(), b"")
        self.assertEqual(self.remote.bytesOut, window)
        self.assertEqual(len(self.guestTap.of(frames.WINDOW, self.stream.id)), before)
        self.sock.producer.resumeProducing()
        self.runUntil(lambda: self.sock.value() == body)
        self.assertGreater(len(self.guestTap.of(frames.WINDOW, self.stream.id)), before)

    def test_fullOutboxPausesSocket(self):
        """
        While the stream's unsent data is over its high water (the peer is
        not reading), the socket is paused; it resumes when that drains.
        """
        window = 16384
        self.splice(window=window)
        self.remote.pauseProducing()  # the peer stops reading
        chunk = b"q" * 4096
        fed = 0
        for _ in range(200):
            if self.sock.paused:
                break
            self.sock.feed(chunk)
            fed += len(chunk)
            self.settle()
        self.assertTrue(self.sock.paused)
        # Paused within the window plus the outbox's high water.
        self.assertLessEqual(fed, window + Stream.highWater + len(chunk))
        self.assertGreater(fed, Stream.highWater)
        self.remote.resumeProducing()
        self.runUntil(lambda: not self.sock.paused)
        self.runUntil(lambda: len(self.peer.data) == fed)
        self.assertEqual(self.peer.data, chunk * (fed // len(chunk)))


# -- refusals and connecting -----------------------------------------------------


class ConnectRefusalTests(SynchronousTestCase):
    target = Tcp("127.0.0.1", 80)

    def refusal(self, exc, target=None):
        r = connectRefusal(target or self.target, Failure(exc))
        self.assertIsInstance(r, StreamRefused)
        return r.code, r.message

    def test_refused(self):
        self.assertEqual(
            self.refusal(error.ConnectionRefusedError()), ("connection-refused", "127.0.0.1:80: connection refused")
        )
        self.assertEqual(
            self.refusal(error.getConnectError((errno.ECONNREFUSED, "Connection refused"))),
            ("connection-refused", "127.0.0.1:80: connection refused"),
        )

    def test_unixMissing(self):
        """
        A unix path that does not exist is refused C{connection-refused}.
        """
        self.assertEqual(
            self.refusal(error.ConnectError(errno.ENOENT, "No such file or directory"), Unix("/run/app.sock")),
            ("connection-refused", "/run/app.sock: no such file or directory"),
        )

    def test_timeout(self):
        self.assertEqual(self.refusal(error.TimeoutError()), ("connect-failed", "127.0.0.1:80: timed out"))

    def test_others(self):
        self.assertEqual(
            self.refusal(error.getConnectError((errno.EHOSTUNREACH, "No route to host"))),
            ("connect-failed", "127.0.0.1:80: %s" % (__import__("os").strerror(errno.EHOSTUNREACH).lower(),)),
        )
        code, message = self.refusal(error.DNSLookupError("no such host"), Tcp("db.example", 5432))
        self.assertEqual(code, "connect-failed")
        self.assertTrue(message.startswith("db.example:5432: "), message)
        self.assertIn("no such host", message)
        code, message = self.refusal(error.ConnectError(errno.EACCES, "Permission denied"), Unix("/p"))
        self.assertEqual(code, "connect-failed")
        self.assertEqual(message, "/p: permission denied")
        code, message = self.refusal(RuntimeError("odd"))
        self.assertEqual((code, message), ("connect-failed", "127.0.0.1:80: odd"))

    def test_ipv6Target(self):
        code, message = self.refusal(error.ConnectionRefusedError(), Tcp("::1", 22))
        self.assertEqual(message, "[::1]:22: connection refused")


class ConnectSpliceTests(SynchronousTestCase):
    def test_connectTCP(self):
        """
        It connects to the target with the 10 s timeout, and fires only once
        connected, with the stream protocol of a splice whose socket waits
        paused.
        """
        reactor = MemoryReactorClock()
        d = connectSplice(reactor, Tcp("127.0.0.1", 8080))
        self.assertEqual(CONNECT_TIMEOUT, 10.0)
        [(host, port, factory, timeout, bind)] = reactor.tcpClients
        self.assertEqual((host, port, timeout), ("127.0.0.1", 8080, 10.0))
        results = []
        d.addBoth(results.append)
        self.assertEqual(results, [])
        sock = FakeTCPSocket()
        connectClient(reactor, sock)
        [proto] = results
        self.assertTrue(IStreamProtocol.providedBy(proto))
        self.assertTrue(sock.paused)
        self.assertTrue(sock.noDelay)

    def test_connectUnix(self):
        reactor = MemoryReactorClock()
        d = connectSplice(reactor, Unix("/run/app.sock"), timeout=3)
        [(path, factory, timeout, checkPID)] = reactor.unixClients
        self.assertEqual((path, timeout), ("/run/app.sock", 3))
        results = []
        d.addBoth(results.append)
        connectClient(reactor, FakeSocket(), unix=True)
        self.assertEqual(len(results), 1)
        self.assertTrue(IStreamProtocol.providedBy(results[0]))

    def test_refused(self):
        reactor = MemoryReactorClock()
        d = connectSplice(reactor, Tcp("127.0.0.1", 8080))
        failClient(reactor, error.ConnectionRefusedError())
        f = self.failureResultOf(d, StreamRefused)
        self.assertEqual((f.value.code, f.value.message), ("connection-refused", "127.0.0.1:8080: connection refused"))

    def test_timedOut(self):
        reactor = MemoryReactorClock()
        d = connectSplice(reactor, Tcp("127.0.0.1", 8080))
        failClient(reactor, error.TimeoutError())
        f = self.failureResultOf(d, StreamRefused)
        self.assertEqual((f.value.code, f.value.message), ("connect-failed", "127.0.0.1:8080: timed out"))

    def test_cancel(self):
        """
        Cancelling gives the attempt up.
        """
        reactor = MemoryReactorClock()
        d = connectSplice(reactor, Tcp("127.0.0.1", 8080))
        d.cancel()
        self.assertTrue(reactor.connectors[0].stoppedConnecting)
        self.failureResultOf(d)

    def test_givenSplice(self):
        """
        With C{splice}, that splice is connected (a reverse forward counts
        it before it connects).
        """
        reactor = MemoryReactorClock()
        s = Splice()
        d = connectSplice(reactor, Tcp("127.0.0.1", 8080), splice=s)
        sock = FakeTCPSocket()
        connectClient(reactor, sock)
        self.successResultOf(d)
        self.assertIs(s.socket, sock)


class DescribeAddressTests(SynchronousTestCase):
    def test_forms(self):
        self.assertEqual(describeAddress(IPv4Address("TCP", "10.1.2.3", 5)), "10.1.2.3:5")
        self.assertEqual(describeAddress(IPv6Address("TCP", "::1", 22)), "[::1]:22")
        self.assertEqual(describeAddress(UNIXAddress("/run/x")), "unix")
        self.assertEqual(describeAddress(None), "unix")


class SessionEndedTypeTests(SynchronousTestCase):
    def test_sessionEndAborts(self):
        """
        A stream ending with L{SessionEnded} (not a clean close) aborts the
        socket.
        """
        s = Splice()
        sock = FakeTCPSocket()
        sock.connect(s.socketProtocol())
        s.socket = sock
        s.streamLost(Failure(SessionEnded("gone")))
        self.assertTrue(sock.aborted)
