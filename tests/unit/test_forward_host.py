"""
L{prokshy.forward.hostside}: the host's forwards and their table
(docs/protocol.md §12.9-§12.10), over a fake L{IForwardVM} whose sessions
are real Mux/Link pairs to the real guest handlers
(L{prokshy.guest.execs.GuestStreams} with L{GuestForwards}); and
L{prokshy.host.vm.VMConnection} as the L{IForwardVM} of the daemon.

Host and guest sockets are two L{twisted.internet.testing} memory
reactors, driven by hand.
"""

import errno

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from prokshy import __version__
from prokshy.forward.allow import DEFAULT_CONNECT, parsePatterns
from prokshy.forward.guestside import GuestForwards
from prokshy.forward.hostside import NOT_SUPPORTED, ForwardError, ForwardTable
from prokshy.forward.interfaces import IForwardVM
from prokshy.forward.spec import parseSpec
from prokshy.guest.agent import GuestProtocol
from prokshy.guest.execs import FEATURES as EXEC_FEATURES
from prokshy.guest.execs import GuestStreams
from prokshy.host.vm import VMConnection
from prokshy.link.session import LinkConfig
from prokshy.streams.mux import Mux
from prokshy.streams.stream import StreamRefused
from prokshy.testing import EndTransport, LossyChannel, LinkPair, MemoryRunner, deterministicNonces
from prokshy.wire import frames
from prokshy.streams.stream import decodeJSON

from tests.unit.test_forward_bridge import (
    FakeTCPSocket,
    Peer,
    Reactor,
    Tap,
    acceptConnection,
    connectClient,
    failClient,
)

AGENT = "prokshy/" + __version__
WHY = "not connected since 2024-01-01 00:00:00 (no such file)"


@implementer(IForwardVM)
class FakeVM:
    """
    An L{IForwardVM} whose session is a host L{Mux} (once L{attach}ed).
    """

    def __init__(self, name="default"):
        self.name = name
        self.mux = None
        self.why = WHY
        self.ups = []
        self.downs = []
        self.handlers = {}

    def session(self):
        return self.mux if self.mux is not None and self.mux.connected else None

    def unavailable(self):
        return "up" if self.session() is not None else self.why

    def whenUp(self, callback):
        self.ups.append(callback)

    def whenDown(self, callback):
        self.downs.append(callback)

    def serveGuestOpens(self, kind, handler):
        self.handlers[kind] = handler

    def attach(self, mux):
        self.mux = mux
        mux.openHandler = self._guestOpened
        mux.whenUp(lambda info: [cb(mux) for cb in list(self.ups)])
        mux.whenDown(lambda reason: [cb(reason) for cb in list(self.downs)])

    def _guestOpened(self, stream):
        handler = self.handlers.get(stream.kind)
        if handler is None:
            raise StreamRefused("unknown-kind", "the host opens no %r streams" % (stream.kind,))
        return handler(stream)


class HostWorld:
    """
    A L{ForwardTable} on a L{FakeVM} whose sessions run to a guest served
    by L{GuestStreams} and L{GuestForwards}.
    """

    def world(self, up=True, allowConnect=None, allowListen=None, forwards=True, guestFeatures=None, names=("default",)):
        deterministicNonces(self, seed=11)
        self.hostReactor = Reactor()
        self.guestReactor = Reactor()
        self.vms = {name: FakeVM(name) for name in names}
        self.vm = self.vms[names[0]]
        self.table = ForwardTable(self.hostReactor, self.vms)
        self.events = []
        self.table.observe(lambda row, message: self.events.append((row["id"], row["state"], message)))
        self.hostMux = Mux("host")
        self.vm.attach(self.hostMux)
        self.forwards = GuestForwards(self.guestReactor, allowConnect, allowListen) if forwards else None
        self.streams = GuestStreams(MemoryRunner(self.guestReactor, {}), startedAt=0.0, forwards=self.forwards)
        self.guestMux = Mux("guest", lambda stream: self.streams.forSession(self.guestMux)(stream))
        features = self.streams.features if guestFeatures is None else guestFeatures
        self.hostTap, self.guestTap = Tap(self.hostMux), Tap(self.guestMux)
        self.pair = LinkPair(self.hostTap, self.guestTap, guestConfig=LinkConfig(features=features))
        self.addCleanup(self.pair.stop)
        if up:
            self.up()

    def up(self):
        self.pair.connect()

    def down(self, why="vm went away"):
        self.pair.host.stop(why)
        self.assertIsNone(self.vm.session())

    def restart(self):
        """
        The host's end comes back (a daemon restart, or a reconnection):
        a new session with the same guest.
        """
        self.pair.newHost(self.hostTap).start()
        self.runUntil(lambda: self.pair.up and self.hostMux.connected)

    def runUntil(self, until, duration=60):
        self.assertTrue(self.pair.run(until=until, duration=duration), "condition not reached")

    def settle(self):
        self.pair.run(duration=1.0)

    def row(self, fid="1"):
        return {r["id"]: r for r in self.table.rows()}[fid]

    def added(self, direction, text, settle=True):
        """
        forward-add: run until it is answered and return the row (or the
        Failure); with C{settle=False}, return its Deferred at once.
        """
        d = self.table.add(direction, parseSpec(text))
        if not settle:
            return d
        box = []
        d.addBoth(box.append)
        self.runUntil(lambda: box)
        return box[0]

    def client(self, port=None, peerPort=5000):
        """
        A client connects to the host's listener.
        """
        port = port if port is not None else self.hostReactor.ports[-1]
        sock = FakeTCPSocket()
        proto = acceptConnection(port, sock, IPv4Address("TCP", "127.0.0.1", peerPort))
        return sock, proto

    def guestOpens(self, kind):
        return [decodeJSON(f.payload) for f in self.guestTap.of(frames.OPEN) if decodeJSON(f.payload)["kind"] == kind]


def row(**fields):
    base = {
        "id": "1",
        "vm": "default",
        "direction": "forward",
        "listen": "127.0.0.1:8080",
        "target": "127.0.0.1:80",
        "state": "active",
        "reason": "listening",
        "last_error": None,
        "connections": 0,
        "total_connections": 0,
        "bytes_to_target": 0,
        "bytes_from_target": 0,
        "origin": "client",
    }
    base.update(fields)
    return base


class InterfaceTests(SynchronousTestCase):
    def test_fakeVM(self):
        self.assertTrue(verifyObject(IForwardVM, FakeVM()))

    def test_vmConnection(self):
        """
        The daemon's VM connection is what the forwards need.
        """
        vm = VMConnection(Clock(), "default", "/nonexistent/console.sock", endpoint=object())
        self.assertTrue(verifyObject(IForwardVM, vm))
        self.assertEqual(vm.name, "default")
        self.assertIsNone(vm.session())
        self.assertIn("not connected", vm.unavailable())
        self.assertNotIn("default", vm.unavailable())


class LocalForwardTests(HostWorld, SynchronousTestCase):
    def test_addRow(self):
        """
        A forward added while the VM is up listens at once and is active;
        its row is the design's.
        """
        self.world()
        result = self.added("forward", "8080:127.0.0.1:80")
        self.assertEqual(result, row())
        self.assertEqual(self.table.rows(), [row()])
        [(port, factory, backlog, interface)] = self.hostReactor.tcpServers
        self.assertEqual((port, interface), (8080, "127.0.0.1"))
        self.assertEqual(self.events, [("1", "active", "active: listening")])

    def test_waitingWhileAway(self):
        """
        Added while the VM is away, a forward listens and waits; it follows
        the VM's sessions: active when one comes up, waiting when it ends.
        """
        self.world(up=False)
        result = self.added("forward", "8080:127.0.0.1:80")
        self.assertEqual(result["state"], "waiting")
        self.assertIn("waiting for the VM (%s)" % (WHY,), result["reason"])
        self.assertEqual(len(self.hostReactor.ports), 1)
        self.up()
        self.assertEqual((self.row()["state"], self.row()["reason"]), ("active", "listening"))
        self.down()
        self.vm.why = "no agent session since then (socket closed)"
        self.assertEqual(self.row()["state"], "waiting")
        self.up_again()
        self.assertEqual(self.row()["state"], "active")
        states = [e[1] for e in self.events]
        self.assertEqual(states, ["waiting", "active", "waiting", "active"])

    def up_again(self):
        self.restart()

    def test_configured(self):
        self.world()
        forward = self.table.addConfigured("forward", parseSpec("8080:127.0.0.1:80"))
        self.assertEqual(forward.row(), row(origin="config"))

    def test_listenFailed(self):
        """
        A host address in use: forward-add fails C{listen-failed}, naming
        the address and the error, and the forward is not kept.
        """
        self.world()
        self.hostReactor.listenErrors.append(
            CannotListenError("127.0.0.1", 8080, OSError(errno.EADDRINUSE, "Address already in use"))
        )
        f = self.added("forward", "8080:127.0.0.1:80")
        f.trap(ForwardError)
        self.assertEqual(
            (f.value.code, f.value.message), ("listen-failed", "cannot listen on 127.0.0.1:8080: address already in use")
        )
        self.assertEqual(str(f.value), "listen-failed: cannot listen on 127.0.0.1:8080: address already in use")
        self.assertEqual(self.table.rows(), [])
        self.assertEqual(self.table.forwards, {})

    def test_configuredListenFailed(self):
        """
        A configured forward that cannot listen is kept, failed, with the
        reason; the table goes on.
        """
        self.world()
        self.hostReactor.listenErrors.append(
            CannotListenError("127.0.0.1", 8080, OSError(errno.EADDRINUSE, "Address already in use"))
        )
        self.table.addConfigured("forward", parseSpec("8080:127.0.0.1:80"))
        self.table.addConfigured("forward", parseSpec("8081:127.0.0.1:81"))
        first, second = self.table.rows()
        self.assertEqual(
            (first["state"], first["reason"]), ("failed", "cannot listen on 127.0.0.1:8080: address already in use")
        )
        self.assertEqual((first["origin"], second["state"], second["id"]), ("config", "active", "2"))
        # Not retried with a new session.
        self.down()
        self.restart()
        self.assertEqual(self.row("1")["state"], "failed")

    def test_connectionCarried(self):
        """
        A client's connection opens a C{connect} stream (with its peer);
        the guest connects; bytes go both ways and are counted: to the
        target from the client, from the target to the client.
        """
        self.world()
        self.added("forward", "8080:127.0.0.1:80")
        sock, proto = self.client()
        self.assertIsNotNone(proto)
        self.assertTrue(sock.paused)
        self.runUntil(lambda: self.guestReactor.tcpClients)
        self.assertEqual(
            self.guestOpens("connect"),
            [{"kind": "connect", "window": self.hostMux.window, "host": "127.0.0.1", "port": 80, "peer": "127.0.0.1:5000"}],
        )
        self.assertEqual(self.guestReactor.tcpClients[0][:2], ("127.0.0.1", 80))
        self.assertEqual((self.row()["connections"], self.row()["total_connections"]), (1, 1))
        target = FakeTCPSocket()
        connectClient(self.guestReactor, target)
        self.runUntil(lambda: not sock.paused)
        sock.feed(b"GET /")
        self.runUntil(lambda: target.value() == b"GET /")
        target.feed(b"200")
        self.runUntil(lambda: sock.value() == b"200")
        r = self.row()
        self.assertEqual((r["bytes_to_target"], r["bytes_from_target"], r["connections"]), (5, 3, 1))
        # The target closes; the client gets EOF, then everything ends.
        target.lose()
        self.runUntil(lambda: sock.writeClosed)
        sock.writeEnded()
        sock.readEof()
        self.assertTrue(sock.disconnecting)
        sock.lose()
        self.runUntil(lambda: self.row()["connections"] == 0)
        r = self.row()
        self.assertEqual((r["bytes_to_target"], r["bytes_from_target"], r["total_connections"]), (5, 3, 1))
        self.assertIsNone(r["last_error"])

    def test_connectionWhileAway(self):
        """
        A connection while the VM is away is closed at once (never held)
        and recorded in last_error; the listener stays up.
        """
        self.world(up=False)
        self.added("forward", "8080:127.0.0.1:80")
        sock, proto = self.client()
        self.assertIsNone(proto)  # closed at once, unread
        r = self.row()
        self.assertEqual((r["connections"], r["total_connections"]), (0, 1))
        self.assertEqual(r["last_error"], "connection from 127.0.0.1:5000 closed: vm default: %s" % (WHY,))
        self.assertEqual(self.events[-1][2], r["last_error"])
        self.assertEqual(self.hostReactor.ports[0].stopped, 0)

    def test_connectionErrorsLogLimited(self):
        """
        A flood of refused connections (anyone who can connect can cause
        one) writes at most a line or two to the daemon's log, not one per
        connection; each still reaches last_error and the observers.
        """
        self.world(up=False)
        self.added("forward", "8080:127.0.0.1:80")
        with capturedLogs() as events:
            for i in range(300):
                self.client(peerPort=6000 + i)
        lines = [e for e in events if "closed: vm default" in str(e.get("event", ""))]
        self.assertLessEqual(len(lines), 2, lines)
        self.assertEqual(self.row()["total_connections"], 300)
        self.assertIn("127.0.0.1:6299", self.row()["last_error"])
        self.assertEqual(len([e for e in self.events if "closed: vm" in e[2]]), 300)

    def test_refusedByGuest(self):
        """
        A connection the guest refuses is closed at once; last_error says
        why, in the design's words.
        """
        self.world(allowConnect=parsePatterns(["127.0.0.1:22"], DEFAULT_CONNECT))
        self.added("forward", "8080:127.0.0.1:5432")
        sock, _ = self.client()
        self.runUntil(lambda: sock.disconnecting)
        self.assertFalse(sock.aborted)
        self.assertEqual(sock.value(), b"")
        sock.lose()
        r = self.row()
        self.assertEqual(
            r["last_error"],
            "connection from 127.0.0.1:5000 refused by the guest: not-allowed: "
            "127.0.0.1:5432 is not allowed by the guest (--allow-connect 127.0.0.1:22)",
        )
        self.assertEqual((r["connections"], r["total_connections"]), (0, 1))
        self.assertEqual(r["state"], "active")
        self.assertEqual(self.guestReactor.tcpClients, [])

    def test_targetRefused(self):
        self.world()
        self.added("forward", "8080:127.0.0.1:80")
        sock, _ = self.client()
        self.runUntil(lambda: self.guestReactor.tcpClients)
        failClient(self.guestReactor, error.ConnectionRefusedError())
        self.runUntil(lambda: sock.disconnecting)
        sock.lose()
        self.assertEqual(
            self.row()["last_error"],
            "connection from 127.0.0.1:5000 refused by the guest: connection-refused: 127.0.0.1:80: connection refused",
        )
        self.assertEqual(self.row()["connections"], 0)

    def test_guestPredatesForwarding(self):
        """
        A guest whose hello lists no C{connect}: the forward is failed
        (still listening), its connections refused; it is active again with
        a guest that serves it.
        """
        self.world(forwards=False, guestFeatures=EXEC_FEATURES)
        result = self.added("forward", "8080:127.0.0.1:80")
        self.assertEqual(result["state"], "failed")
        self.assertEqual(result["reason"], "listening; %s (agent %s predates forwarding)" % (NOT_SUPPORTED, AGENT))
        sock, proto = self.client()
        self.assertIsNone(proto)  # closed at once: no connect OPEN is tried
        self.assertEqual(self.guestOpens("connect"), [])
        self.assertEqual(
            self.row()["last_error"],
            "connection from 127.0.0.1:5000 closed: %s (agent %s predates forwarding)" % (NOT_SUPPORTED, AGENT),
        )

    def test_sessionEndPendingOpen(self):
        """
        A C{connect} OPEN pending when the session ends fails with it: its
        client is closed at once.
        """
        self.world()
        self.added("forward", "8080:127.0.0.1:80")
        sock, _ = self.client()
        self.runUntil(lambda: self.guestReactor.tcpClients)
        self.down()
        self.assertTrue(sock.disconnecting)
        sock.lose()
        r = self.row()
        self.assertEqual((r["connections"], r["state"]), (0, "waiting"))
        self.assertTrue(r["last_error"].startswith("connection from 127.0.0.1:5000 closed: "), r["last_error"])

    def test_sessionEndAbortsLive(self):
        """
        A connection live when the session ends is aborted on both sides.
        """
        self.world()
        self.added("forward", "8080:127.0.0.1:80")
        sock, _ = self.client()
        self.runUntil(lambda: self.guestReactor.tcpClients)
        target = FakeTCPSocket()
        connectClient(self.guestReactor, target)
        self.runUntil(lambda: not sock.paused)
        self.pair.guest.stop("agent gone")
        self.assertTrue(target.aborted)
        self.down()
        self.assertTrue(sock.aborted)
        sock.lose(ConnectionLost("aborted"))
        self.assertEqual(self.row()["connections"], 0)
        # The listener is still up, and a new session serves new clients.
        self.assertEqual(self.hostReactor.ports[0].stopped, 0)

    def test_remove(self):
        """
        Removing a forward closes its listener at once; its live connection
        goes on; it leaves the table.
        """
        self.world()
        self.added("forward", "8080:127.0.0.1:80")
        sock, _ = self.client()
        self.runUntil(lambda: self.guestReactor.tcpClients)
        target = FakeTCPSocket()
        connectClient(self.guestReactor, target)
        self.runUntil(lambda: not sock.paused)
        sock.feed(b"abc")
        self.runUntil(lambda: target.value() == b"abc")
        final = self.table.remove("1")
        self.assertEqual(final, row(connections=1, total_connections=1, bytes_to_target=3))
        self.assertEqual(self.hostReactor.ports[0].stopped, 1)
        self.assertEqual(self.table.rows(), [])
        self.assertEqual(self.events[-1], ("1", "active", "removed"))
        target.feed(b"still")
        self.runUntil(lambda: sock.value() == b"still")
        sock.feed(b"more")
        self.runUntil(lambda: target.value() == b"abcmore")
        self.assertFalse(sock.disconnecting or target.disconnecting)
        e = self.assertRaises(ForwardError, self.table.remove, "1")
        self.assertEqual(e.code, "no-such-forward")
        self.assertIn("'1'", e.message)

    def test_removeUnknown(self):
        self.world()
        self.added("forward", "8080:127.0.0.1:80")
        for fid in ("2", 1, None, True, ["1"]):
            e = self.assertRaises(ForwardError, self.table.remove, fid)
            self.assertEqual(e.code, "no-such-forward")
            self.assertIn(repr(fid), e.message)
        self.assertEqual(len(self.table.rows()), 1)

    def test_portZero(self):
        """
        A forward on port 0 shows the port actually bound.
        """
        self.world()
        result = self.added("forward", "0:127.0.0.1:80")
        self.assertEqual(self.hostReactor.tcpServers[0][0], 0)
        self.assertEqual(result["listen"], "127.0.0.1:%d" % (Reactor.boundPort,))

    def test_portZeroRemoved(self):
        """
        The row forward-remove answers is the row just before the removal,
        so it names the port that was bound.
        """
        self.world()
        self.added("forward", "0:127.0.0.1:80")
        self.assertEqual(self.table.remove("1")["listen"], "127.0.0.1:%d" % (Reactor.boundPort,))

    def test_unixListen(self):
        """
        A unix listener on the host is mode 0600, with Twisted's lock file.
        """
        self.world()
        self.table.clientListen = parsePatterns(["/run/*.sock"], ())
        result = self.added("forward", "/run/h.sock:127.0.0.1:80")
        self.assertEqual(result["listen"], "/run/h.sock")
        [(address, factory, backlog, mode, wantPID)] = self.hostReactor.unixServers
        self.assertEqual((address, mode, bool(wantPID)), ("/run/h.sock", 0o600, True))

    def test_clientPolicy(self):
        """
        A client's forward may make the host listen, and its reverse
        forward make the host connect, only where the daemon allows
        (loopback by default, listening on ports 1024 and up, no unix
        path): anything else is refused C{not-allowed} and not kept.  Port
        0 (the kernel's pick) is allowed; forwards from the configuration
        are not checked.
        """
        self.world()
        refused = {
            ("forward", "/run/h.sock:127.0.0.1:80"):
                "/run/h.sock is not allowed by the daemon (--client-allow-listen 127.0.0.1:1024-65535 [::1]:1024-65535)",
            ("forward", "*:8080:127.0.0.1:80"): "*:8080 is not allowed by the daemon",
            ("forward", "80:127.0.0.1:80"): "127.0.0.1:80 is not allowed by the daemon",
            ("forward", "10.0.0.1:8080:127.0.0.1:80"): "10.0.0.1:8080 is not allowed",
            ("reverse", "8080:/var/run/docker.sock"):
                "/var/run/docker.sock is not allowed by the daemon (--client-allow-connect 127.0.0.1:* [::1]:*)",
            ("reverse", "8080:10.0.0.5:22"): "10.0.0.5:22 is not allowed by the daemon",
        }
        for (direction, text), message in refused.items():
            failure = self.added(direction, text)
            failure.trap(ForwardError)
            self.assertEqual(failure.value.code, "not-allowed", text)
            self.assertIn(message, failure.value.message, text)
        self.assertEqual(self.table.rows(), [])
        self.assertEqual(self.hostReactor.unixServers, [])
        self.assertEqual(self.added("forward", "0:127.0.0.1:80")["state"], "active")
        self.table.clientListen = parsePatterns(["127.0.0.1:9000-9100"], ())
        failure = self.added("forward", "0:127.0.0.1:80")
        failure.trap(ForwardError)
        self.assertIn("127.0.0.1:0 is not allowed by the daemon", failure.value.message)
        configured = self.table.addConfigured("forward", parseSpec("/run/h.sock:127.0.0.1:80"))
        self.assertEqual(configured.row()["origin"], "config")
        self.assertEqual(len(self.hostReactor.unixServers), 1)

    def test_stop(self):
        self.world()
        self.added("forward", "8080:127.0.0.1:80")
        self.added("forward", "8081:127.0.0.1:80")
        self.successResultOf(self.table.stop())
        self.assertEqual([p.stopped for p in self.hostReactor.ports], [1, 1])

    def test_stopPortWithoutDeferred(self):
        """
        C{IListeningPort.stopListening} returns a Deferred only when it
        does not complete at once (the interface's words; MemoryReactor's
        ports return None).
        """
        self.world()
        self.added("forward", "8080:127.0.0.1:80")
        port = self.hostReactor.ports[0]
        stops = []
        port.stopListening = lambda: stops.append(1)
        self.successResultOf(self.table.stop())
        self.assertEqual(stops, [1])


class TableTests(HostWorld, SynchronousTestCase):
    def test_ids(self):
        """
        Ids are "1", "2", ... in order of creation, never reused.
        """
        self.world()
        self.assertEqual(self.added("forward", "8080:127.0.0.1:80")["id"], "1")
        self.assertEqual(self.added("forward", "8081:127.0.0.1:80")["id"], "2")
        self.table.remove("2")
        self.table.remove("1")
        third = self.added("forward", "8082:127.0.0.1:80")["id"]
        self.assertEqual(third, "3")
        self.hostReactor.listenErrors.append(CannotListenError("127.0.0.1", 8083, OSError(errno.EADDRINUSE, "x")))
        self.added("forward", "8083:127.0.0.1:80").trap(ForwardError)
        fourth = self.added("forward", "8084:127.0.0.1:80")["id"]
        self.assertGreater(int(fourth), int(third))
        self.assertEqual([r["id"] for r in self.table.rows()], [third, fourth])

    def test_noSuchVM(self):
        """
        With several VMs a spec must name one; a name that is no VM is
        refused, listing the VMs; nothing is kept.
        """
        self.world(names=("web", "db"))
        f = self.added("forward", "8080:127.0.0.1:80")
        f.trap(ForwardError)
        self.assertEqual(f.value.code, "no-such-vm")
        self.assertIn("several VMs", f.value.message)
        self.assertIn("VM=", f.value.message)
        f = self.added("reverse", "nope=8080:127.0.0.1:80")
        f.trap(ForwardError)
        self.assertEqual(f.value.code, "no-such-vm")
        self.assertIn("'nope'", f.value.message)
        self.assertIn("web, db", f.value.message)
        self.assertEqual((self.table.rows(), self.hostReactor.tcpServers), ([], []))
        self.assertEqual(self.added("forward", "db=8080:127.0.0.1:80")["vm"], "db")
        self.assertEqual(self.added("forward", "web=8081:127.0.0.1:80")["id"], "2")

    def test_onlyVM(self):
        self.world()
        self.assertEqual(self.added("forward", "default=8080:127.0.0.1:80")["vm"], "default")
        self.assertEqual(self.added("forward", "8081:127.0.0.1:80")["vm"], "default")

    def test_badDirection(self):
        self.world()
        f = self.added("sideways", "8080:127.0.0.1:80")
        f.trap(ForwardError)
        self.assertEqual(f.value.code, "bad-spec")
        self.assertEqual(self.table.rows(), [])

    def test_reversePortZero(self):
        self.world()
        f = self.added("reverse", "0:127.0.0.1:80")
        f.trap(ForwardError)
        self.assertEqual(f.value.code, "bad-spec")
        self.assertEqual(self.guestOpens("listen"), [])
        self.assertEqual(self.table.rows(), [])
        self.assertRaises(ForwardError, self.table.addConfigured, "reverse", parseSpec("0:127.0.0.1:80"))


class ReverseWorld(HostWorld):
    def reverse(self, text="8080:127.0.0.1:80", **kw):
        self.world(**kw)
        result = self.added("reverse", text)
        self.assertEqual(result["state"], "active", result)
        [self.guestPort] = self.guestReactor.ports
        return result

    def guestClient(self, port=None, peerPort=40000):
        """
        A program in the guest connects to the guest's listener.
        """
        sock = FakeTCPSocket()
        proto = acceptConnection(port or self.guestReactor.ports[-1], sock, IPv4Address("TCP", "127.0.0.1", peerPort))
        self.assertIsNotNone(proto)
        return sock


class ReverseForwardTests(ReverseWorld, SynchronousTestCase):
    def test_addWaitsForTheGuest(self):
        """
        A reverse forward added while the VM is up is answered once the
        guest listens.
        """
        self.world()
        d = self.added("reverse", "8080:127.0.0.1:80", settle=False)
        self.assertNoResult(d)
        self.assertEqual(self.row()["state"], "waiting")
        result = []
        d.addCallback(result.append)
        self.runUntil(lambda: result)
        self.assertEqual(
            result[0],
            row(direction="reverse", state="active", reason="the guest listens"),
        )
        self.assertEqual(self.guestReactor.tcpServers[0][0::3], (8080, "127.0.0.1"))
        self.assertEqual(
            self.guestOpens("listen"), [{"kind": "listen", "window": self.hostMux.window, "host": "127.0.0.1", "port": 8080}]
        )
        self.assertEqual(self.hostReactor.tcpServers, [])

    def test_refused(self):
        """
        The guest's refusal fails forward-add with the guest's code and
        message; the forward is not kept.
        """
        self.world()
        f = self.added("reverse", "80:127.0.0.1:8000")
        f.trap(ForwardError)
        self.assertEqual(f.value.code, "not-allowed")
        self.assertIn(
            "127.0.0.1:80 is not allowed by the guest (--allow-listen 127.0.0.1:1024-65535 [::1]:1024-65535)",
            f.value.message,
        )
        self.assertEqual(self.table.rows(), [])
        # Not retried in a later session.
        self.down()
        self.restart()
        self.assertEqual(len(self.guestOpens("listen")), 1)

    def test_refusedMessageIsTheGuests(self):
        """
        docs/protocol.md §12.9: "Refused: the guest's code and message".
        """
        self.world()
        f = self.added("reverse", "80:127.0.0.1:8000")
        f.trap(ForwardError)
        self.assertEqual(
            f.value.message,
            "127.0.0.1:80 is not allowed by the guest (--allow-listen 127.0.0.1:1024-65535 [::1]:1024-65535)",
        )

    def test_listenFailed(self):
        self.world()
        self.guestReactor.listenErrors.append(
            CannotListenError("127.0.0.1", 8080, OSError(errno.EADDRINUSE, "Address already in use"))
        )
        f = self.added("reverse", "8080:127.0.0.1:80")
        f.trap(ForwardError)
        self.assertEqual(f.value.code, "listen-failed")
        self.assertIn("127.0.0.1:8080: address already in use", f.value.message)
        self.assertEqual(self.table.rows(), [])

    def test_helloWithoutListen(self):
        """
        A guest whose hello lists no C{listen} gets no listen stream:
        forward-add fails C{unsupported}, "not supported by the guest",
        naming its agent.
        """
        self.world(forwards=False, guestFeatures=EXEC_FEATURES)
        f = self.added("reverse", "8080:127.0.0.1:80")
        f.trap(ForwardError)
        self.assertEqual(
            (f.value.code, f.value.message),
            ("unsupported", "%s (agent %s predates forwarding)" % (NOT_SUPPORTED, AGENT)),
        )
        self.assertEqual(self.guestOpens("listen"), [])
        self.assertEqual(self.table.rows(), [])

    def test_configuredHelloWithoutListen(self):
        self.world(forwards=False, guestFeatures=EXEC_FEATURES)
        self.table.addConfigured("reverse", parseSpec("8080:127.0.0.1:80"))
        r = self.row()
        self.assertEqual((r["state"], r["origin"]), ("failed", "config"))
        self.assertTrue(r["reason"].startswith(NOT_SUPPORTED), r["reason"])
        self.assertEqual(self.guestOpens("listen"), [])

    def test_unknownKind(self):
        """
        A guest that lists C{listen} but refuses it C{unknown-kind}: the
        same "not supported by the guest" (code C{unsupported}).
        """
        self.world(forwards=False, guestFeatures=EXEC_FEATURES + ("connect", "listen"))
        f = self.added("reverse", "8080:127.0.0.1:80")
        f.trap(ForwardError)
        self.assertEqual(f.value.code, "unsupported")
        self.assertIn(NOT_SUPPORTED, f.value.message)
        self.assertEqual(len(self.guestOpens("listen")), 1)
        self.assertEqual(self.table.rows(), [])

    def test_unknownKindMessage(self):
        """
        docs/protocol.md §12.9: the message "starts `not supported by the
        guest` and names the guest's agent" (the design: "the same
        message" as for a hello without C{listen}).
        """
        self.world(forwards=False, guestFeatures=EXEC_FEATURES + ("connect", "listen"))
        f = self.added("reverse", "8080:127.0.0.1:80")
        f.trap(ForwardError)
        self.assertTrue(f.value.message.startswith(NOT_SUPPORTED), f.value.message)
        self.assertIn(AGENT, f.value.message)

    def test_waitingWhileAway(self):
        """
        A reverse forward on a VM that is not up is kept, waiting; its
        listen stream is opened when a session comes up.
        """
        self.world(up=False)
        result = self.added("reverse", "8080:127.0.0.1:80")
        self.assertEqual(
            (result["state"], result["reason"]), ("waiting", "waiting for the VM (%s)" % (WHY,))
        )
        self.up()
        self.runUntil(lambda: self.row()["state"] == "active")
        self.assertEqual(len(self.guestReactor.tcpServers), 1)

    def test_reopenedEverySession(self):
        """
        The listen stream is opened again in every new session: the guest's
        old listener was closed with its session, the new one binds the
        same address.
        """
        self.reverse()
        self.down()
        r = self.row()
        self.assertEqual(r["state"], "waiting")
        self.assertTrue(r["reason"].startswith("waiting for the VM (session ended: "), r["reason"])
        self.restart()
        self.runUntil(lambda: self.row()["state"] == "active")
        first, second = self.guestReactor.ports
        self.assertEqual((first.stopped, second.stopped), (1, 0))
        self.assertEqual([s[0::3] for s in self.guestReactor.tcpServers], [(8080, "127.0.0.1")] * 2)
        self.assertEqual(len(self.guestOpens("listen")), 2)
        # The new listener's connections reach the target.
        self.guestClient(second)
        self.runUntil(lambda: self.hostReactor.tcpClients)
        self.assertEqual(self.hostReactor.tcpClients[0][:2], ("127.0.0.1", 80))

    def test_failedRetriedNextSession(self):
        """
        A reverse forward the guest refused in one session (kept, as
        configured) is failed until the next session, then tried again.
        """
        self.world()
        self.guestReactor.listenErrors.append(
            CannotListenError("127.0.0.1", 8080, OSError(errno.EADDRINUSE, "Address already in use"))
        )
        self.table.addConfigured("reverse", parseSpec("8080:127.0.0.1:80"))
        self.runUntil(lambda: self.row()["state"] == "failed")
        self.assertIn("listen-failed: 127.0.0.1:8080: address already in use", self.row()["reason"])
        self.down()
        self.restart()
        self.runUntil(lambda: self.row()["state"] == "active")

    def test_connectionCarried(self):
        """
        A connection to the guest's listener comes as a C{forwarded} stream;
        the host connects to the target; bytes are counted: to the target
        from the guest's client, from the target back.
        """
        self.reverse()
        sock = self.guestClient()
        self.runUntil(lambda: self.hostReactor.tcpClients)
        [(host, port, factory, timeout, bind)] = self.hostReactor.tcpClients
        self.assertEqual((host, port, timeout), ("127.0.0.1", 80, 10.0))
        self.assertEqual((self.row()["connections"], self.row()["total_connections"]), (1, 1))
        target = FakeTCPSocket()
        connectClient(self.hostReactor, target)
        self.assertTrue(target.noDelay)
        self.runUntil(lambda: not sock.paused)
        sock.feed(b"abcde")
        self.runUntil(lambda: target.value() == b"abcde")
        target.feed(b"xyz")
        self.runUntil(lambda: sock.value() == b"xyz")
        r = self.row()
        self.assertEqual((r["bytes_to_target"], r["bytes_from_target"]), (5, 3))
        target.lose(ConnectionLost("Connection reset by peer"))
        self.runUntil(lambda: sock.aborted)
        sock.lose(ConnectionLost("aborted"))
        self.runUntil(lambda: self.row()["connections"] == 0)
        r = self.row()
        self.assertEqual((r["bytes_to_target"], r["bytes_from_target"], r["total_connections"]), (5, 3, 1))

    def test_targetRefused(self):
        self.reverse()
        sock = self.guestClient()
        self.runUntil(lambda: self.hostReactor.tcpClients)
        failClient(self.hostReactor, error.ConnectionRefusedError())
        self.runUntil(lambda: sock.disconnecting)
        self.assertFalse(sock.aborted)
        r = self.row()
        self.assertEqual(
            r["last_error"],
            "connection from guest 127.0.0.1:40000 refused: connection-refused: 127.0.0.1:80: connection refused",
        )
        self.assertEqual((r["connections"], r["total_connections"]), (0, 1))
        self.assertEqual(self.events[-1][2], r["last_error"])

    def test_remove(self):
        """
        Removing a reverse forward closes its listen stream (the guest stops
        listening); its live connection goes on.
        """
        self.reverse()
        sock = self.guestClient()
        self.runUntil(lambda: self.hostReactor.tcpClients)
        target = FakeTCPSocket()
        connectClient(self.hostReactor, target)
        self.runUntil(lambda: not sock.paused)
        final = self.table.remove("1")
        self.assertEqual(final["connections"], 1)
        self.assertEqual(self.table.rows(), [])
        self.runUntil(lambda: self.guestPort.stopped)
        listenId = 1
        self.assertEqual(len(self.guestTap.of(frames.CLOSE, listenId)), 1)
        sock.feed(b"after removal")
        self.runUntil(lambda: target.value() == b"after removal")
        target.feed(b"ok")
        self.runUntil(lambda: sock.value() == b"ok")
        self.assertFalse(sock.disconnecting or target.disconnecting)
        # Not opened again in a new session.
        self.down()
        self.restart()
        self.settle()
        self.assertEqual(len(self.guestOpens("listen")), 1)

    def test_removeWhileOpening(self):
        """
        Removed before the guest answered: the listen stream is closed when
        it is accepted.
        """
        self.world()
        self.added("reverse", "8080:127.0.0.1:80", settle=False).addErrback(lambda f: None)
        self.table.remove("1")
        self.settle()
        self.assertEqual(self.guestReactor.ports[0].stopped, 1)
        self.assertEqual(self.table.rows(), [])

    def test_removeWhileOpeningAnswersAdd(self):
        """
        The forward-add of a reverse forward removed before the guest
        answered is still answered (a client's forward-add never hangs).
        """
        self.world()
        d = self.added("reverse", "8080:127.0.0.1:80", settle=False)
        box = []
        d.addBoth(box.append)
        self.table.remove("1")
        self.settle()
        self.assertEqual(self.guestReactor.ports[0].stopped, 1)
        self.assertEqual(len(box), 1)

    def test_sessionEndAbortsLive(self):
        self.reverse()
        sock = self.guestClient()
        self.runUntil(lambda: self.hostReactor.tcpClients)
        target = FakeTCPSocket()
        connectClient(self.hostReactor, target)
        self.runUntil(lambda: not sock.paused)
        self.down()
        self.assertTrue(target.aborted)

    def test_stop(self):
        self.reverse()
        self.table.stop()
        self.runUntil(lambda: self.guestPort.stopped)


class ForwardedHandlerTests(ReverseWorld, SynchronousTestCase):
    """
    The host's handler for the guest's C{forwarded} opens.
    """

    def forwarded(self, args):
        box = []
        self.guestMux.openStream("forwarded", args, Peer()).addBoth(box.append)
        self.runUntil(lambda: box)
        return box[0]

    def test_noSuchListener(self):
        """
        A C{listener} that names no live listen stream of this session, or
        is no integer (a boolean is none), is refused C{no-such-listener}.
        """
        self.reverse()
        [listen] = self.guestOpens("listen")
        self.assertEqual((listen["host"], listen["port"]), ("127.0.0.1", 8080))
        bad = [99, True, "1", 1.0, None, 3]
        for args in [{"listener": sid} for sid in bad] + [{}]:
            result = self.forwarded(args)
            result.trap(StreamRefused)
            self.assertEqual(result.value.code, "no-such-listener", args)
        self.assertEqual(self.hostReactor.tcpClients, [])
        # The real one is served.
        served = []
        self.guestMux.openStream("forwarded", {"listener": 1, "peer": 7}, Peer()).addBoth(served.append)
        self.runUntil(lambda: self.hostReactor.tcpClients)
        self.assertEqual(self.row()["total_connections"], 1)
        connectClient(self.hostReactor, FakeTCPSocket())
        self.runUntil(lambda: served)
        self.assertEqual(served[0].id % 2, 0)

    def test_endedListener(self):
        """
        Once the listen stream has ended, its id names no listener.
        """
        self.reverse()
        self.table.remove("1")
        self.runUntil(lambda: self.guestPort.stopped and not self.hostMux.streams)
        result = self.forwarded({"listener": 1})
        result.trap(StreamRefused)
        self.assertEqual(result.value.code, "no-such-listener")

    def test_oldSessionsListener(self):
        """
        A listen stream id of an earlier session names nothing in the next
        one (before the new listen stream is open).
        """
        self.reverse("8080:127.0.0.1:80")
        self.added("reverse", "8081:127.0.0.1:81")
        self.down()
        self.restart()
        self.runUntil(lambda: all(r["state"] == "active" for r in self.table.rows()))
        opens = self.guestOpens("listen")
        self.assertEqual([o["port"] for o in opens], [8080, 8081, 8080, 8081])
        self.assertIsNone(self.table._listeners.get(("default", 5)))


class ObserveTests(HostWorld, SynchronousTestCase):
    def test_messages(self):
        """
        Observers get one message per notable event, with the row as it is
        then.
        """
        self.world(up=False)
        seen = []
        self.table.observe(lambda r, m: seen.append((dict(r), m)))
        self.added("forward", "8080:127.0.0.1:80")
        self.client()
        self.up()
        self.table.remove("1")
        messages = [m for _, m in seen]
        self.assertEqual(
            messages,
            [
                "waiting: listening; waiting for the VM (%s)" % (WHY,),
                "connection from 127.0.0.1:5000 closed: vm default: %s" % (WHY,),
                "active: listening",
                "removed",
            ],
        )
        self.assertEqual(seen[1][0]["last_error"], messages[1])
        self.assertEqual(seen[2][0]["state"], "active")


# -- VMConnection as the IForwardVM of the daemon --------------------------------


class VMConnectionTests(SynchronousTestCase):
    """
    The table on the daemon's real L{VMConnection}, its session the real
    host protocol joined to the real guest agent protocol.
    """

    def setUp(self):
        deterministicNonces(self, seed=5)
        self.channel = LossyChannel()
        self.clock = self.channel.clock
        self.hostReactor = Reactor()
        self.guestReactor = Reactor()
        self.vm = VMConnection(self.clock, "default", "/nonexistent/console.sock", endpoint=object())
        self.table = ForwardTable(self.hostReactor, {"default": self.vm})
        self.ups, self.downs = [], []
        self.vm.whenUp(self.ups.append)
        self.vm.whenDown(self.downs.append)
        forwards = GuestForwards(self.guestReactor)
        streams = GuestStreams(MemoryRunner(self.guestReactor, {}), startedAt=0.0, forwards=forwards)
        self.guest = GuestProtocol(MemoryRunner(self.clock, {}), self.clock, streams)
        # What the VM's ClientService does on each connection.
        self.host = self.vm._buildProtocol()
        for end, proto in ((self.channel.guest, self.guest), (self.channel.host, self.host)):
            proto.makeConnection(EndTransport(end))
            end.receiver = proto
        self.addCleanup(self.stop)

    def stop(self):
        for link in (self.host.link, self.guest.link):
            if link is not None:
                link.stop("test over")
        self.channel.flush()

    def runUntil(self, until):
        self.assertTrue(self.channel.run(until=until, duration=60), "condition not reached")

    def test_sessions(self):
        """
        whenUp gets the session's stream table, session() returns it; at
        the session's end whenDown is called and session() is None.
        """
        self.assertIsNone(self.vm.session())
        self.assertIn("no agent session", self.vm.unavailable())
        self.runUntil(lambda: self.ups)
        [mux] = self.ups
        self.assertIs(mux, self.host.mux)
        self.assertIs(self.vm.session(), mux)
        self.assertEqual(self.vm.unavailable(), "up")
        self.host.link.stop("vm went away")
        self.assertEqual(len(self.downs), 1)
        self.assertIsNone(self.vm.session())

    def test_reverseThroughVMConnection(self):
        """
        A reverse forward through the daemon's VM connection: the guest
        listens, and its connections' C{forwarded} opens reach the table.
        """
        self.runUntil(lambda: self.ups)
        box = []
        self.table.add("reverse", parseSpec("8080:127.0.0.1:80")).addBoth(box.append)
        self.runUntil(lambda: box)
        self.assertEqual(box[0]["state"], "active")
        [port] = self.guestReactor.ports
        sock = FakeTCPSocket()
        acceptConnection(port, sock)
        self.runUntil(lambda: self.hostReactor.tcpClients)
        target = FakeTCPSocket()
        connectClient(self.hostReactor, target)
        self.runUntil(lambda: not sock.paused)
        sock.feed(b"through")
        self.runUntil(lambda: target.value() == b"through")

    def test_otherGuestOpensRefused(self):
        """
        A kind nobody serves on the host is refused C{unknown-kind}.
        """
        self.runUntil(lambda: self.ups)
        box = []
        self.guest.mux.openStream("event", {}, Peer()).addBoth(box.append)
        self.runUntil(lambda: box)
        box[0].trap(StreamRefused)
        self.assertEqual((box[0].value.code, box[0].value.message), ("unknown-kind", "the host opens no 'event' streams"))

    def test_forwardFollowsSessions(self):
        self.table.add("forward", parseSpec("8080:127.0.0.1:80"))
        self.assertEqual(self.table.rows()[0]["state"], "waiting")
        self.assertIn("no agent session", self.table.rows()[0]["reason"])
        self.runUntil(lambda: self.ups)
        self.assertEqual(self.table.rows()[0]["state"], "active")
        self.host.link.stop("vm went away")
        self.assertEqual(self.table.rows()[0]["state"], "waiting")
