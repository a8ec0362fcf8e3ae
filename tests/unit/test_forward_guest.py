"""
L{prokshy.forward.guestside}: the guest's C{connect} and C{listen} streams
(docs/protocol.md §10.3-§10.5), and their wiring into the guest's open
handler (L{prokshy.guest.execs.GuestStreams}).

Real Mux/Stream/Link objects over L{prokshy.testing.LinkPair}; the guest's
sockets are a L{twisted.internet.testing.MemoryReactorClock} driven by hand.
"""

import errno

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ConnectionDone, ConnectionLost
from twisted.trial.unittest import SynchronousTestCase

from prokshy.forward.allow import DEFAULT_CONNECT, DEFAULT_LISTEN, parsePatterns
from prokshy.forward.guestside import FEATURES as FORWARD_FEATURES
from prokshy.forward.guestside import KINDS, GuestForwards
from prokshy.guest.execs import EXEC_FEATURES as EXEC_ARGUMENTS
from prokshy.guest.execs import FEATURES, FILES_FEATURE

#: What a guest without forwards lists: its kinds, exec's arguments, files.
EXEC_FEATURES = FEATURES + EXEC_ARGUMENTS + (FILES_FEATURE,)
from prokshy.guest.execs import GuestStreams
from prokshy.link.session import LinkConfig
from prokshy.streams.stream import Stream, StreamRefused
from prokshy.testing import MemoryRunner
from prokshy.wire import frames

from tests.unit.test_forward_bridge import (
    FakeTCPSocket,
    PairMixin,
    Peer,
    Reactor,
    acceptConnection,
    connectClient,
    failClient,
)


class FakeStream:
    """
    What an open handler sees of a stream being opened.
    """

    def __init__(self, kind, args):
        self.kind = kind
        self.args = args


def refusal(testcase, forwards, kind, args, opener=None):
    """
    The (code, message) of the refusal C{forwards} raises at once.
    """
    e = testcase.assertRaises(StreamRefused, forwards.open, FakeStream(kind, args), opener)
    return e.code, e.message


BAD_TARGETS = [
    {},
    {"host": "127.0.0.1"},
    {"port": 80},
    {"host": "127.0.0.1", "port": "80"},
    {"host": "127.0.0.1", "port": True},
    {"host": "127.0.0.1", "port": 80.0},
    {"host": "127.0.0.1", "port": 0},
    {"host": "127.0.0.1", "port": 65536},
    {"host": "127.0.0.1", "port": -1},
    {"host": 5, "port": 80},
    {"host": None, "port": 80},
    {"host": "bad_host!", "port": 80},
    {"host": "[::1]", "port": 80},
    {"host": "::1::2", "port": 80},
    {"path": "relative/app.sock"},
    {"path": 5},
    {"path": ""},
    {"path": "/run/app.sock", "host": "127.0.0.1"},
    {"path": "/run/app.sock", "port": 80},
    {"path": "/run/app.sock", "host": "127.0.0.1", "port": 80},
    {"path": "/run/a\0b"},
    {"path": "/" + "x" * 103},
]


class BadOpenTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = Reactor()
        everything = parsePatterns(["*:*", "/**", "/*", "/*/*"], ())
        self.forwards = GuestForwards(self.reactor, everything, everything)

    def test_connect(self):
        """
        Each malformed target form is refused C{bad-open}, with a one-line
        message naming the kind, before any connection is tried.
        """
        for args in BAD_TARGETS + [{"host": "", "port": 80}]:
            code, message = refusal(self, self.forwards, "connect", dict(args))
            self.assertEqual(code, "bad-open", args)
            self.assertTrue(message.startswith("connect: "), (args, message))
            self.assertNotIn("\n", message)
        self.assertEqual((self.reactor.tcpClients, self.reactor.unixClients), ([], []))
        self.assertEqual(self.forwards.connections, 0)

    def test_listen(self):
        for args in BAD_TARGETS:
            code, message = refusal(self, self.forwards, "listen", dict(args), opener=object())
            self.assertEqual(code, "bad-open", args)
            self.assertTrue(message.startswith("listen: "), (args, message))
        self.assertEqual((self.reactor.tcpServers, self.reactor.unixServers), ([], []))
        self.assertEqual(self.forwards.listeners, 0)

    def test_messages(self):
        self.assertEqual(
            refusal(self, self.forwards, "connect", {"path": "/x", "port": 1}),
            ("bad-open", "connect: give either host and port or path, not both"),
        )
        self.assertEqual(
            refusal(self, self.forwards, "connect", {"host": "127.0.0.1", "port": 0}),
            ("bad-open", "connect: port 0 is out of range (1-65535)"),
        )
        self.assertEqual(
            refusal(self, self.forwards, "connect", {"host": "127.0.0.1"}),
            ("bad-open", "connect: host (a string) and port (an integer) are required"),
        )

    def test_everyInterfaceListenOnly(self):
        """
        An empty host means every interface in a C{listen}, and is
        C{bad-open} in a C{connect}.
        """
        self.forwards.open(FakeStream("listen", {"host": "", "port": 8080}), object())
        self.assertEqual(self.reactor.tcpServers[0][0::3], (8080, ""))
        self.assertEqual(refusal(self, self.forwards, "connect", {"host": "", "port": 80})[0], "bad-open")

    def test_normalised(self):
        """
        Hosts are normalised before they are used: C{localhost} is
        127.0.0.1, IPv6 in canonical form.
        """
        self.forwards.open(FakeStream("connect", {"host": "LocalHost", "port": 80}), None)
        self.forwards.open(FakeStream("connect", {"host": "DB.Example", "port": 5432}), None)
        self.assertEqual([c[:2] for c in self.reactor.tcpClients], [("127.0.0.1", 80), ("db.example", 5432)])

    def test_normalisedIPv6(self):
        """
        An IPv6 target is connected to, in canonical form.
        """
        self.forwards.open(FakeStream("connect", {"host": "0:0:0:0:0:0:0:1", "port": 22}), None)
        self.assertEqual([c[:2] for c in self.reactor.tcpClients], [("::1", 22)])


class NotAllowedTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = Reactor()
        self.forwards = GuestForwards(self.reactor)

    def test_connectDefault(self):
        """
        By default only loopback may be reached: anything else is refused
        C{not-allowed} with the allowlist's text, and nothing is tried.
        """
        self.assertEqual(
            refusal(self, self.forwards, "connect", {"host": "10.0.0.5", "port": 22}),
            ("not-allowed", "10.0.0.5:22 is not allowed by the guest (--allow-connect 127.0.0.1:* [::1]:*)"),
        )
        self.assertEqual(
            refusal(self, self.forwards, "connect", {"path": "/run/app.sock"}),
            ("not-allowed", "/run/app.sock is not allowed by the guest (--allow-connect 127.0.0.1:* [::1]:*)"),
        )
        self.assertEqual((self.reactor.tcpClients, self.reactor.unixClients), ([], []))
        self.assertEqual(self.forwards.connections, 0)

    def test_listenDefault(self):
        """
        By default listeners go on loopback, ports 1024 and up.
        """
        for args, text in [
            ({"host": "127.0.0.1", "port": 80}, "127.0.0.1:80"),
            ({"host": "", "port": 8080}, "*:8080"),
            ({"host": "0.0.0.0", "port": 8080}, "0.0.0.0:8080"),
            ({"path": "/tmp/h.sock"}, "/tmp/h.sock"),
        ]:
            self.assertEqual(
                refusal(self, self.forwards, "listen", args, opener=object()),
                ("not-allowed", "%s is not allowed by the guest (--allow-listen %s)" % (text, " ".join(DEFAULT_LISTEN))),
            )
        self.assertEqual((self.reactor.tcpServers, self.reactor.unixServers), ([], []))

    def test_none(self):
        """
        C{none} turns a direction off.
        """
        off = parsePatterns(["none"], DEFAULT_CONNECT)
        forwards = GuestForwards(self.reactor, off, off)
        self.assertEqual(
            refusal(self, forwards, "connect", {"host": "127.0.0.1", "port": 80}),
            ("not-allowed", "127.0.0.1:80 is not allowed: the guest turned this direction off (--allow-connect none)"),
        )
        self.assertEqual(
            refusal(self, forwards, "listen", {"host": "127.0.0.1", "port": 8080}, opener=object()),
            ("not-allowed", "127.0.0.1:8080 is not allowed: the guest turned this direction off (--allow-listen none)"),
        )
        self.assertEqual((self.reactor.tcpClients, self.reactor.tcpServers), ([], []))

    def test_patterns(self):
        """
        Given patterns replace the defaults; a unix path is allowed only
        when a pattern names it.
        """
        forwards = GuestForwards(
            self.reactor, parsePatterns(["/run/*.sock"], DEFAULT_CONNECT), parsePatterns(["127.0.0.1:80"], DEFAULT_LISTEN)
        )
        forwards.open(FakeStream("connect", {"path": "/run/app.sock"}), None)
        self.assertEqual(self.reactor.unixClients[0][0], "/run/app.sock")
        self.assertEqual(
            refusal(self, forwards, "connect", {"host": "127.0.0.1", "port": 80})[1],
            "127.0.0.1:80 is not allowed by the guest (--allow-connect /run/*.sock)",
        )
        forwards.open(FakeStream("listen", {"host": "127.0.0.1", "port": 80}), object())
        self.assertEqual(self.reactor.tcpServers[0][0], 80)


class GuestWorld(PairMixin):
    """
    The guest's open handler (L{GuestStreams} with L{GuestForwards}) on the
    guest's Mux; the host's Mux serves C{forwarded} opens with
    L{forwardedHandler}.
    """

    def world(self, allowConnect=None, allowListen=None, window=256 * 1024):
        self.reactor = Reactor()
        self.forwards = GuestForwards(self.reactor, allowConnect, allowListen)
        self.streams = GuestStreams(MemoryRunner(self.reactor, {}), startedAt=0.0, forwards=self.forwards)
        self.forwardedOpens = []
        self.forwardedPeers = []
        self.refuseForwarded = None

        def guestHandler(stream):
            return self.streams.forSession(self.guestMux)(stream)

        self.connectMuxes(
            guestHandler,
            self.forwardedHandler,
            window=window,
            guestConfig=LinkConfig(features=self.streams.features),
        )

    def forwardedHandler(self, stream):
        self.forwardedOpens.append(stream)
        if self.refuseForwarded is not None:
            raise self.refuseForwarded
        peer = Peer()
        self.forwardedPeers.append(peer)
        return peer

    def open(self, kind, args, protocol=None):
        protocol = protocol if protocol is not None else Peer()
        return self.answer(self.hostMux.openStream(kind, args, protocol)), protocol

    def accepted(self, sid):
        return self.hostTap.of(frames.ACCEPT, sid)


class ConnectTests(GuestWorld, SynchronousTestCase):
    def test_helloListsForwards(self):
        """
        Over a real session, the host sees connect and listen in the
        guest's hello.
        """
        self.world()
        features = self.hostMux.info.peerHello["features"]
        self.assertIn("connect", features)
        self.assertIn("listen", features)

    def test_acceptedOnceConnected(self):
        """
        The guest connects to the target with a 10 s timeout and answers
        ACCEPT only once connected; the connection is then carried, its
        socket paused until then and with TCP_NODELAY.
        """
        self.world()
        peer = Peer()
        results = []
        self.hostMux.openStream(
            "connect", {"host": "127.0.0.1", "port": 8080, "peer": "127.0.0.1:53422"}, peer
        ).addBoth(results.append)
        self.settle()
        self.assertEqual(results, [])
        self.assertEqual(self.accepted(1), [])
        [(host, port, factory, timeout, bind)] = self.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("127.0.0.1", 8080, 10.0))
        self.assertEqual(self.forwards.connections, 1)
        sock = FakeTCPSocket()
        connectClient(self.reactor, sock)
        self.runUntil(lambda: results)
        self.assertIsInstance(results[0], Stream)
        self.assertTrue(peer.made)
        self.assertFalse(sock.paused)
        self.assertTrue(sock.noDelay)
        results[0].write(b"ping")
        self.runUntil(lambda: sock.value() == b"ping")
        sock.feed(b"pong")
        self.runUntil(lambda: peer.data == b"pong")
        # The end of the connection ends the stream; the count goes down.
        sock.readEof()
        results[0].writeEof()
        self.runUntil(lambda: sock.writeClosed)
        sock.writeEnded()
        sock.lose()
        self.runUntil(lambda: peer.reason is not None and self.forwards.connections == 0)
        peer.reason.trap(ConnectionDone)
        self.assertEqual(self.guestMux.streams, {})

    def test_refused(self):
        self.world()
        d = self.hostMux.openStream("connect", {"host": "127.0.0.1", "port": 8080}, Peer())
        self.settle()
        failClient(self.reactor, error.ConnectionRefusedError())
        f = self.answer(d)
        f.trap(StreamRefused)
        self.assertEqual((f.value.code, f.value.message), ("connection-refused", "127.0.0.1:8080: connection refused"))
        self.assertEqual(self.forwards.connections, 0)
        self.assertEqual(self.guestMux.streams, {})

    def test_unixMissing(self):
        self.world(allowConnect=parsePatterns(["/run/*"], ()))
        d = self.hostMux.openStream("connect", {"path": "/run/app.sock"}, Peer())
        self.settle()
        failClient(self.reactor, error.ConnectError(errno.ENOENT, "No such file or directory"), unix=True)
        f = self.answer(d)
        f.trap(StreamRefused)
        self.assertEqual((f.value.code, f.value.message), ("connection-refused", "/run/app.sock: no such file or directory"))

    def test_timedOut(self):
        self.world()
        d = self.hostMux.openStream("connect", {"host": "127.0.0.1", "port": 8080}, Peer())
        self.settle()
        failClient(self.reactor, error.TimeoutError())
        f = self.answer(d)
        f.trap(StreamRefused)
        self.assertEqual((f.value.code, f.value.message), ("connect-failed", "127.0.0.1:8080: timed out"))

    def test_notAllowedOverTheWire(self):
        self.world()
        result, _ = self.open("connect", {"host": "10.0.0.5", "port": 22})
        result.trap(StreamRefused)
        self.assertEqual(
            (result.value.code, result.value.message),
            ("not-allowed", "10.0.0.5:22 is not allowed by the guest (--allow-connect 127.0.0.1:* [::1]:*)"),
        )

    def test_badOpenOverTheWire(self):
        self.world()
        result, _ = self.open("connect", {"host": "127.0.0.1", "port": 0})
        result.trap(StreamRefused)
        self.assertEqual(result.value.code, "bad-open")

    def test_sessionEndAborts(self):
        """
        The end of the session aborts the guest's connection to the target.
        """
        self.world()
        d = self.hostMux.openStream("connect", {"host": "127.0.0.1", "port": 8080}, Peer())
        self.settle()
        sock = FakeTCPSocket()
        connectClient(self.reactor, sock)
        self.answer(d)
        self.pair.guest.stop("gone")
        self.assertTrue(sock.aborted)
        sock.lose(ConnectionLost("aborted"))
        self.assertEqual(self.forwards.connections, 0)


class ListenTests(GuestWorld, SynchronousTestCase):
    def listening(self, args=None, **kw):
        self.world(**kw)
        stream, self.listenPeer = self.open("listen", args or {"host": "127.0.0.1", "port": 8080})
        self.assertIsInstance(stream, Stream)
        self.listenStream = stream
        [self.port] = self.reactor.ports
        return stream

    def connection(self, peerPort=40000):
        sock = FakeTCPSocket()
        proto = acceptConnection(self.port, sock, IPv4Address("TCP", "127.0.0.1", peerPort))
        self.assertIsNotNone(proto)
        return sock

    def test_acceptedOnceListening(self):
        """
        ACCEPT comes once the guest listens on the address asked for.
        """
        stream = self.listening()
        self.assertEqual(len(self.accepted(stream.id)), 1)
        [(port, factory, backlog, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (8080, "127.0.0.1"))
        self.assertEqual(self.forwards.listeners, 1)
        self.assertEqual(self.port.stopped, 0)

    def test_ipv6(self):
        self.listening({"host": "::1", "port": 8080})
        self.assertEqual(self.reactor.tcpServers[0][0::3], (8080, "::1"))

    def test_unix(self):
        """
        A unix listener is created mode 0600, with Twisted's lock file.
        """
        self.listening({"path": "/run/h.sock"}, allowListen=parsePatterns(["/run/*.sock"], ()))
        [(address, factory, backlog, mode, wantPID)] = self.reactor.unixServers
        self.assertEqual((address, mode, bool(wantPID)), ("/run/h.sock", 0o600, True))

    def test_listenFailed(self):
        """
        An address in use is refused C{listen-failed}, "TARGET: address
        already in use".
        """
        self.world()
        self.reactor.listenErrors.append(
            CannotListenError("127.0.0.1", 8080, OSError(errno.EADDRINUSE, "Address already in use"))
        )
        result, _ = self.open("listen", {"host": "127.0.0.1", "port": 8080})
        result.trap(StreamRefused)
        self.assertEqual(
            (result.value.code, result.value.message), ("listen-failed", "127.0.0.1:8080: address already in use")
        )
        self.assertEqual(self.forwards.listeners, 0)
        self.assertEqual(self.guestMux.streams, {})

    def test_listenFailedOther(self):
        self.world()
        self.reactor.listenErrors.append(RuntimeError("no sockets today"))
        result, _ = self.open("listen", {"host": "127.0.0.1", "port": 8080})
        result.trap(StreamRefused)
        self.assertEqual(result.value.code, "listen-failed")
        self.assertEqual(result.value.message, "127.0.0.1:8080: no sockets today")

    def test_connectionsOpenForwarded(self):
        """
        Each connection the listener accepts opens a C{forwarded} stream
        naming the listen stream's id and the peer; its socket waits paused
        until the host accepts, and the connection is then carried.
        """
        stream = self.listening()
        sock = self.connection(40000)
        self.assertTrue(sock.paused)
        self.runUntil(lambda: not sock.paused)
        [opened] = self.forwardedOpens
        self.assertTrue(self.forwardedPeers[0].made)
        self.assertEqual((opened.kind, opened.args), ("forwarded", {"listener": stream.id, "peer": "127.0.0.1:40000"}))
        self.assertEqual(opened.id % 2, 0)
        self.assertTrue(sock.noDelay)
        sock.feed(b"hello host")
        self.runUntil(lambda: self.forwardedPeers[0].data == b"hello host")
        opened.write(b"hello guest")
        self.runUntil(lambda: sock.value() == b"hello guest")
        sock2 = self.connection(40002)
        self.runUntil(lambda: len(self.forwardedPeers) == 2)
        self.assertEqual(self.forwardedOpens[1].args, {"listener": stream.id, "peer": "127.0.0.1:40002"})
        self.assertNotEqual(self.forwardedOpens[1].id, opened.id)
        self.assertFalse(sock2.disconnecting)

    def test_forwardedRefused(self):
        """
        A refused C{forwarded} open closes the accepted connection at once,
        unread.
        """
        self.listening()
        self.refuseForwarded = StreamRefused("connection-refused", "127.0.0.1:80: connection refused")
        sock = self.connection()
        self.runUntil(lambda: sock.disconnecting)
        self.assertFalse(sock.aborted)
        self.assertTrue(sock.paused)
        self.assertEqual(len(self.forwardedOpens), 1)
        # The listener goes on.
        self.assertEqual(self.port.stopped, 0)

    def test_closeStopsListening(self):
        """
        The host's CLOSE of the listen stream stops the listener at once;
        the guest answers CLOSE; connections accepted before go on.
        """
        self.listening()
        sock = self.connection()
        self.runUntil(lambda: not sock.paused)
        self.listenStream.loseConnection()
        self.runUntil(lambda: self.port.stopped)
        self.runUntil(lambda: self.listenPeer.reason is not None)
        self.listenPeer.reason.trap(ConnectionDone)
        self.assertEqual(self.port.stopped, 1)
        self.assertEqual(self.forwards.listeners, 0)
        # The live connection still carries data both ways.
        sock.feed(b"after")
        self.runUntil(lambda: self.forwardedPeers[0].data == b"after")
        self.forwardedOpens[0].write(b"reply")
        self.runUntil(lambda: sock.value() == b"reply")
        self.assertFalse(sock.disconnecting)
        # A connection the old port hands over now opens no stream.
        late = FakeTCPSocket()
        self.assertIsNone(acceptConnection(self.port, late))
        self.settle()
        self.assertEqual(len(self.forwardedOpens), 1)

    def test_resetStopsListening(self):
        self.listening()
        sock = self.connection()
        self.runUntil(lambda: not sock.paused)
        self.listenStream.abort("cancelled", "removed")
        self.runUntil(lambda: self.port.stopped)
        self.assertEqual(self.forwards.listeners, 0)
        sock.feed(b"still here")
        self.runUntil(lambda: self.forwardedPeers[0].data == b"still here")

    def test_sessionEndStopsListening(self):
        """
        The session's end stops the listener, and aborts the connections it
        accepted.
        """
        self.listening()
        sock = self.connection()
        self.runUntil(lambda: not sock.paused)
        self.pair.guest.stop("gone")
        self.assertEqual(self.port.stopped, 1)
        self.assertEqual(self.forwards.listeners, 0)
        self.assertTrue(sock.aborted)

    def test_dataAndEofIgnored(self):
        """
        DATA and EOF on a listen stream are ignored: only CLOSE and RESET
        end it.
        """
        self.listening()
        self.listenStream.write(b"noise")
        self.listenStream.writeEof()
        self.settle()
        self.assertEqual(self.port.stopped, 0)
        self.assertEqual(self.forwards.listeners, 1)
        self.connection()
        self.runUntil(lambda: self.forwardedOpens)

    def test_listenerWithoutOpener(self):
        """
        Without the session's stream table (no way to open C{forwarded}
        streams) a listen is refused C{unknown-kind}.
        """
        self.world()
        e = self.assertRaises(StreamRefused, self.streams, FakeStream("listen", {"host": "127.0.0.1", "port": 8080}))
        self.assertEqual(e.code, "unknown-kind")
        self.assertEqual(self.reactor.tcpServers, [])


class FakeForwards:
    def __init__(self):
        self.calls = []

    def open(self, stream, opener):
        self.calls.append((stream.kind, opener))
        return "protocol for %s" % (stream.kind,)


class GuestStreamsTests(SynchronousTestCase):
    """
    The guest's open handler serves C{connect} and C{listen} only when it
    has forwards, and lists them in its hello then.
    """

    def streams(self, forwards):
        return GuestStreams(MemoryRunner(Reactor(), {}), startedAt=0.0, forwards=forwards)

    def test_features(self):
        self.assertEqual(KINDS, ("connect", "listen"))
        self.assertEqual(FORWARD_FEATURES, KINDS)
        self.assertEqual(self.streams(None).features, EXEC_FEATURES)
        self.assertNotIn("connect", self.streams(None).features)
        with_ = self.streams(FakeForwards()).features
        self.assertEqual(with_, EXEC_FEATURES + ("connect", "listen"))
        self.assertEqual(self.streams(FakeForwards()).describe()["features"], list(with_))

    def test_forSession(self):
        """
        forSession's handler passes the session's stream table on to the
        forwards, for connect and for listen.
        """
        forwards = FakeForwards()
        opener = object()
        handler = self.streams(forwards).forSession(opener)
        self.assertEqual(handler(FakeStream("connect", {})), "protocol for connect")
        self.assertEqual(handler(FakeStream("listen", {})), "protocol for listen")
        self.assertEqual(forwards.calls, [("connect", opener), ("listen", opener)])

    def test_withoutForwards(self):
        streams = self.streams(None)
        for kind in ("connect", "listen", "forwarded"):
            e = self.assertRaises(StreamRefused, streams.forSession(object()), FakeStream(kind, {}))
            self.assertEqual((e.code, e.message), ("unknown-kind", "this agent opens no %r streams" % (kind,)))

    def test_forwardedNotServed(self):
        """
        A guest never serves C{forwarded} (the host does).
        """
        forwards = FakeForwards()
        e = self.assertRaises(StreamRefused, self.streams(forwards).forSession(object()), FakeStream("forwarded", {}))
        self.assertEqual(e.code, "unknown-kind")
        self.assertEqual(forwards.calls, [])
