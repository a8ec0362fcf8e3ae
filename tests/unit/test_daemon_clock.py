"""
The daemon's connection limits and its logging of a VM that is down, on a
L{task.Clock} with in-memory transports: the handshake timeout and
C{--max-connections} (L{prokshy.host.server}), and one log line per state
change with reminders backing off (L{prokshy.host.vm}).
"""

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from prokshy.host.client import HostProtocol
from prokshy.host.policy import ListenerPolicy
from prokshy.host.server import ClientFactory, Daemon
from prokshy.host.vm import REMIND_FIRST, VMConnection

POLICY = ListenerPolicy("unix:/nowhere.sock", local=True, legacy=True, requireToken=False)


class _Address:
    pass


class HandshakeTimeoutTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        vms = {"a": VMConnection(self.clock, "a", "/nonexistent/a.sock")}
        self.daemon = Daemon(self.clock, vms, handshakeTimeout=10.0, linger=0.5)
        self.factory = ClientFactory(self.daemon, POLICY)

    def connection(self):
        proto = self.factory.buildProtocol(_Address())
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def test_silentClosed(self):
        """
        A connection that sends nothing is closed once the handshake
        timeout has passed, not before.
        """
        proto, transport = self.connection()
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        proto.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_partialLineClosedWithReason(self):
        """
        A line-protocol client that has not finished its request line in
        time gets one line saying so, and is closed.
        """
        proto, transport = self.connection()
        proto.dataReceived(b"cat")
        self.clock.advance(10)
        self.assertEqual(transport.value(), b"prokshy-host: no request line within 10 s\n")
        self.assertTrue(transport.disconnecting)

    def test_requestLineInTime(self):
        """
        A complete request line ends the handshake: the client is served
        (here: told that the VM is down), not timed out.
        """
        proto, transport = self.connection()
        proto.dataReceived(b"cat hello\n")
        self.clock.advance(30)
        self.assertTrue(transport.value().startswith(b"prokshy-host: vm a: not connected"), transport.value())
        self.assertNotIn(b"no request line", transport.value())

    def test_halfHelloClosed(self):
        """
        A framed client whose hello never completes is closed at the
        timeout.
        """
        proto, transport = self.connection()
        proto.dataReceived(b"\n\xffPROKSHY {\"v\": [1")
        self.clock.advance(10)
        self.assertTrue(transport.disconnecting)

    def test_framedSessionInTime(self):
        """
        A framed client whose session is up in time stays connected past
        the timeout.
        """
        server = self.factory.buildProtocol(_Address())
        client = HostProtocol(self.clock)
        serverTransport = iosim.FakeTransport(server, isServer=True)
        clientTransport = iosim.FakeTransport(client, isServer=False)
        pump = iosim.connect(server, serverTransport, client, clientTransport, greet=False)
        for _ in range(5):
            pump.flush(advanceClock=False)
        self.assertTrue(client.mux.connected)
        for _ in range(30):
            self.clock.advance(1)
            pump.flush(advanceClock=False)
        self.assertTrue(client.mux.connected)
        self.assertFalse(serverTransport.disconnecting)
        client.link.stop()
        server.inner.link.stop()

    def test_noTimeout(self):
        """
        A timeout of 0 turns it off.
        """
        self.daemon.handshakeTimeout = 0
        proto, transport = self.connection()
        self.clock.advance(3600)
        self.assertFalse(transport.disconnecting)


class MaxConnectionsTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        vms = {"a": VMConnection(self.clock, "a", "/nonexistent/a.sock")}
        self.daemon = Daemon(self.clock, vms, maxConnections=3)
        self.factory = ClientFactory(self.daemon, POLICY)

    def connect(self):
        proto = self.factory.buildProtocol(_Address())
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def test_beyondLimit(self):
        """
        Beyond C{maxConnections} open connections, a new one gets one line
        and is closed at once; once one closes, a new one is served again.
        """
        held = [self.connect() for _ in range(3)]
        for _, transport in held:
            self.assertFalse(transport.disconnecting)
        with capturedLogs() as events:
            for _ in range(50):
                proto, transport = self.connect()
                self.assertEqual(
                    transport.value(),
                    b"prokshy-host: too many connections (3, --max-connections); try again later\n",
                )
                self.assertTrue(transport.disconnecting)
        # one log line for the burst (rate-limited)
        self.assertEqual(len([e for e in events if "--max-connections" in formatEvent(e)]), 1)
        held[0][0].connectionLost(None)
        self.assertEqual(self.factory.connections, 2)
        proto, transport = self.connect()
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)


class _Endpoint:
    """
    A VM console endpoint that refuses until told to connect.
    """

    def __init__(self):
        self.up = False
        self.attempts = 0

    def connect(self, factory):
        self.attempts += 1
        if not self.up:
            return defer.fail(ConnectionRefusedError("no VM"))
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        return defer.succeed(proto)


class VMLogTests(SynchronousTestCase):
    def test_downVMLogsLittle(self):
        """
        A VM that stays down for two hours while the daemon retries every
        second logs one line for the failure, then reminders after 1, 2, 4
        ... minutes up to one an hour, and none of Twisted's "Scheduling
        retry" lines; when it comes back, one line says so.
        """
        clock = Clock()
        endpoint = _Endpoint()
        vm = VMConnection(clock, "a", "/vm/a.sock", endpoint=endpoint)
        with capturedLogs() as events:
            vm.service.startService()
            for _ in range(2 * 3600 * 2):
                clock.advance(0.5)
            down = [formatEvent(e) for e in events]
            endpoint.up = True
            for _ in range(4):
                clock.advance(0.5)
            after = [formatEvent(e) for e in events][len(down):]
        self.assertGreater(endpoint.attempts, 7000)
        self.assertEqual([m for m in down if "Scheduling retry" in m], [])
        self.assertIn("vm a: connecting (", down[0])
        self.assertIn("Connection was refused", down[0])
        reminders = [m for m in down if "still connecting" in m]
        # 60, 180, 420, 900, 1860, 3780 (then hourly: 7380 > 7200)
        self.assertEqual(len(reminders), 6, down)
        self.assertEqual(len(down), 1 + len(reminders), down)
        self.assertEqual(len(after), 1, after)
        self.assertIn("vm a: connecting -> connected", after[0])
        self.assertEqual(REMIND_FIRST, 60.0)
