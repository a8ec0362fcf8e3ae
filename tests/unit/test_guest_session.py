"""
The guest agent's session handling when a framed host goes away without
GOODBYE (issue 7, section 3), deterministically: the real
L{prokshy.guest.agent.GuestProtocol} and a real host L{Link}, joined by the
in-memory L{prokshy.testing.LossyChannel} on a L{MemoryProcessReactor} (fake
commands, fake time).

The guest's device is L{DeviceDouble}: its writes wait in a buffer until the
next reactor turn, or longer while it is C{stalled} (bhyve stops taking
guest output while its client does not read), and C{discardBuffered} drops
them, as the real device transports do.

A "client" on the host side of the channel is whatever is the host end's
receiver: the host L{Link}, or a L{LineClient} that records bytes as C{nc}
would.  When the framed host vanishes, the end's receiver becomes None:
what the guest writes then is lost, as bhyve drops guest output while no
client is connected.
"""

from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from prokshy.guest._process import spawnWithReactor
from prokshy.guest.agent import QUIET_PINGS, GuestProtocol
from prokshy.guest.execs import GuestStreams
from prokshy.guest.runner import CommandRunner
from prokshy.link.session import Link, LinkConfig
from prokshy.streams.mux import Mux
from prokshy.wire import frames
from prokshy.wire.channel import ChannelDecoder
from prokshy.wire.frames import Frame
from prokshy.testing import LossyChannel, deterministicNonces
from tests.fakes import SH, LogCapture, MemoryProcessReactor, makeCommandDir


class DeviceDouble(StringTransport):
    """
    The guest's device: writes are sent to the channel on the next reactor
    turn (not while C{stalled}); C{discardBuffered} drops those not sent.

    @ivar sent: everything that went to the channel.
    """

    def __init__(self, end, clock):
        StringTransport.__init__(self)
        self.end = end
        self.clock = clock
        self.connected = True
        self.stalled = False
        self.pending = []
        self.sent = bytearray()
        self._flushCall = None
        self.discarded = 0

    def write(self, data):
        if data:
            self.pending.append(bytes(data))
            self._scheduleFlush()

    def writeSequence(self, seq):
        for data in seq:
            self.write(data)

    def _scheduleFlush(self):
        if self._flushCall is None and not self.stalled:
            self._flushCall = self.clock.callLater(0, self.flush)

    def flush(self):
        self._flushCall = None
        if self.stalled:
            return
        data, self.pending = b"".join(self.pending), []
        if data:
            self.sent += data
            self.end.write(data)

    def unstall(self):
        self.stalled = False
        self._scheduleFlush()

    def discardBuffered(self):
        n = sum(len(d) for d in self.pending)
        self.pending = []
        self.discarded += n
        return n


class LineClient:
    """
    A line-protocol client (C{nc}) on the host side of the channel.
    """

    def __init__(self):
        self.received = bytearray()

    def dataReceived(self, data):
        self.received += data


class Opened:
    """
    A host-side stream protocol that records what it gets.
    """

    def __init__(self):
        self.data = bytearray()
        self.reason = None

    def makeConnection(self, stream):
        self.stream = stream

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.reason = reason


def framesIn(data):
    return [item for item in ChannelDecoder().feed(bytes(data)) if isinstance(item, Frame)]


class GuestSessionTestCase(unittest.TestCase, LogCapture):
    """
    A guest agent on a L{DeviceDouble}, and a host L{Link} with a session
    up.
    """

    hostPing = 1.0

    def setUp(self):
        deterministicNonces(self, seed=11)
        self.captureLogs()
        self.path = makeCommandDir({"echo": SH, "sleeper": SH})
        self.reactor = MemoryProcessReactor()
        self.runner = CommandRunner(
            self.reactor, self.path, timeout=0, killGrace=2, spawn=spawnWithReactor
        )
        self.channel = LossyChannel(clock=self.reactor, chunkSize=None)
        self.device = DeviceDouble(self.channel.guest, self.reactor)
        self.guest = GuestProtocol(
            self.runner, self.reactor, GuestStreams(self.runner), deadAfter=60.0
        )
        self.guest.makeConnection(self.device)
        self.channel.guest.receiver = self.guest
        self.addCleanup(self.guest.connectionLost, None)
        self.host, self.hostMux = self.newHost()
        self.drive(until=lambda: self.host.state == "UP" and self.guestLink.state == "UP")
        self.session = self.host.info.tag

    def newHost(self):
        mux = Mux("host")
        host = Link(
            self.reactor,
            self.channel.host.write,
            "host",
            mux,
            LinkConfig(window=262144, maxPayload=16384, pingInterval=self.hostPing),
        )
        self.channel.host.receiver = host
        self.addCleanup(host.stop)
        host.start()
        return host, mux

    @property
    def guestLink(self):
        return self.guest.link

    def drive(self, until=None, duration=None):
        return self.channel.run(until=until, duration=duration)

    def startCommand(self, name="sleeper"):
        """
        Open an exec stream from the host; return the fake child process.
        """
        count = len(self.reactor.processes)
        protocol = Opened()
        d = self.hostMux.openStream("exec", {"name": name}, protocol)
        d.addErrback(lambda failure: None)
        self.drive(until=lambda: len(self.reactor.processes) > count)
        return self.reactor.processes[-1], protocol

    def vanish(self):
        """
        The framed host goes away without GOODBYE (killed): it says nothing
        more, and what the guest writes is lost until the next client.
        """
        self.host.stop("killed")
        self.channel.host.receiver = None

    def notify(self, name):
        """
        What the device transport does when it sees the host away or back:
        call the protocol's optional C{hostAway} or C{hostReturned}.
        """
        method = getattr(self.guest, name, None)
        if method is not None:
            method()

    def attachLineClient(self):
        client = LineClient()
        self.channel.host.receiver = client
        return client

    def sendLine(self, data):
        """
        The current client sends C{data}; deliver it without moving the
        clock.
        """
        self.channel.guest.inject(data)
        self.channel.flush()


class LineClientAfterDeadSessionTests(GuestSessionTestCase):
    def test_lineClientEndsDeadSession(self):
        """
        A line-protocol client that takes the device while the guest still
        holds the dead host's session gets exactly its answer: its request
        ends the session at once (its command is killed), and the guest goes
        back to line mode and runs the request.
        """
        child, _ = self.startCommand()
        self.vanish()
        self.drive(duration=0.5)
        client = self.attachLineClient()
        self.sendLine(b"echo hi\n")
        self.assertTrue(self.guest.line_mode)
        self.assertEqual(self.guestLink.state, "IDLE")
        self.assertIn(("group", 15), child.signals)
        echo = self.reactor.processes[-1]
        self.assertEqual(echo.args[0].rsplit("/", 1)[-1], "echo")
        self.assertEqual(echo.stdin, b"hi")
        echo.feedStdout(b"hi\n")
        echo.end(0)
        self.drive(duration=30)
        self.assertEqual(bytes(client.received), b"hi\n")
        self.assertLogged("a line-protocol client took the device")

    def test_requestInPieces(self):
        """
        A request whose bytes arrive in several chunks is recognised too.
        """
        self.vanish()
        client = self.attachLineClient()
        self.sendLine(b"ec")
        self.assertFalse(self.guest.line_mode)
        self.sendLine(b"ho  hi\r\n")
        self.assertTrue(self.guest.line_mode)
        self.assertEqual(self.reactor.processes[-1].stdin, b" hi")
        self.reactor.processes[-1].end(0)
        self.drive(duration=5)
        self.assertEqual(bytes(client.received), b"")

    def test_unknownNameIsNotARequest(self):
        """
        A line that names no command leaves the session alone: it is
        garbage, as in line mode.
        """
        self.vanish()
        self.attachLineClient()
        self.sendLine(b"nosuch hi\n")
        self.assertFalse(self.guest.line_mode)
        self.assertEqual(self.guestLink.state, "UP")

    def test_liveHostNotMistaken(self):
        """
        Input from a live host that starts like a request (the tail of a
        frame at a read boundary) comes with frames of the session, so the
        session stays up.
        """
        ping = frames.encode(frames.PING, 0, b"\0" * 16, 0, 0, self.session)
        self.sendLine(b"echo hi\n" + ping)
        self.assertFalse(self.guest.line_mode)
        self.assertEqual(self.guestLink.state, "UP")
        self.assertEqual(len(self.reactor.processes), 0)

    def test_stalledOutputOfDeadSessionDiscarded(self):
        """
        Frames of the dead session that the device has not sent yet (bhyve
        stalls guest output while its client does not read) are discarded
        when the session ends: the next client never gets them.
        """
        self.device.stalled = True
        self.vanish()
        self.drive(duration=2.5)
        self.assertGreater(sum(len(d) for d in self.device.pending), 0)
        client = self.attachLineClient()
        self.sendLine(b"echo hi\n")
        self.reactor.processes[-1].feedStdout(b"answer")
        self.device.unstall()
        self.reactor.processes[-1].end(0)
        self.drive(duration=5)
        self.assertEqual(bytes(client.received), b"answer")
        self.assertGreater(self.device.discarded, 0)


class QuietTests(GuestSessionTestCase):
    hostPing = 0.5

    def test_quietAfterMissedPings(self):
        """
        Once the host has been silent for QUIET_PINGS of the ping intervals
        its hello announced, the guest sends nothing (no pings, no
        retransmissions), long before --dead-after (60 s here) ends the
        session: a client that takes the device later is not sprayed.
        """
        self.assertEqual(self.guestLink.info.peerHello["ping_interval"], 0.5)
        child, _ = self.startCommand()
        # Unacknowledged output, so that there are retransmissions too.
        child.feedStdout(b"x" * 5000)
        self.vanish()
        start = len(self.device.sent)
        quietAt = self.reactor.seconds() + QUIET_PINGS * self.hostPing
        self.drive(until=lambda: self.guestLink.quiet, duration=10)
        self.assertAlmostEqual(self.reactor.seconds(), quietAt, delta=0.5)
        self.assertGreater(len(self.device.sent), start)
        sent = len(self.device.sent)
        child.feedStdout(b"more output")
        self.drive(duration=50)
        self.assertEqual(len(self.device.sent), sent)
        self.assertEqual(self.guestLink.state, "UP")
        self.assertEqual(self.guestLink.stats["quiet"], 1)


class NewHostTests(GuestSessionTestCase):
    def test_newHostGetsNothingOfTheOldSession(self):
        """
        A new framed host's hello ends the old session at once: the old
        session's unsent frames are discarded, so the new host receives
        only frames of its own session.
        """
        child, _ = self.startCommand()
        self.device.stalled = True
        child.feedStdout(b"old output")
        self.vanish()
        self.drive(duration=2)
        self.assertTrue(self.device.pending)
        sentBefore = len(self.device.sent)
        host, _ = self.newHost()
        self.device.unstall()
        self.drive(until=lambda: host.state == "UP", duration=5)
        self.drive(duration=3)
        tags = {f.tag for f in framesIn(self.device.sent[sentBefore:])}
        self.assertEqual(tags, {host.info.tag})
        self.assertIn(("group", 15), child.signals)

    def test_goodbyeNotDiscarded(self):
        """
        The agent's own GOODBYE (when it stops) is written after the
        session's unsent output is discarded, so it still reaches the host.
        """
        downs = []
        self.hostMux.whenDown(downs.append)
        self.device.stalled = True
        self.drive(duration=2)
        self.assertTrue(self.device.pending)
        self.guestLink.goodbye("agent stopping")
        self.device.unstall()
        self.drive(duration=1)
        self.assertEqual(len(downs), 1)
        self.assertIn("agent stopping", str(downs[0]))


class HostAwayTests(GuestSessionTestCase):
    """
    The device reports the host away and back (Linux virtio-ports).
    """

    def test_hostAwayEndsSession(self):
        """
        A host connection never survives a disconnect: when the device
        reports the host away, its session ends at once and its commands
        are killed, without waiting for --dead-after.
        """
        child, _ = self.startCommand()
        self.vanish()
        self.notify("hostAway")
        self.assertTrue(self.guest.line_mode)
        self.assertEqual(self.guestLink.state, "IDLE")
        self.assertIn(("group", 15), child.signals)
        self.assertLogged("the host went away")
        self.notify("hostReturned")
        client = self.attachLineClient()
        self.sendLine(b"echo hi\n")
        self.reactor.processes[-1].feedStdout(b"answer")
        self.reactor.processes[-1].end(0)
        self.drive(duration=5)
        self.assertEqual(bytes(client.received), b"answer")

    def test_lineOutputNotKeptForNextHost(self):
        """
        Output of a line-protocol command whose client left is dropped, not
        handed to the next client.
        """
        self.host.goodbye("done")
        self.drive(duration=0.1)
        self.assertTrue(self.guest.line_mode)
        first = self.attachLineClient()
        self.sendLine(b"echo one\n")
        command = self.reactor.processes[-1]
        command.feedStdout(b"for the first client")
        self.drive(duration=0.1)
        self.notify("hostAway")
        self.channel.host.receiver = None
        command.feedStdout(b"late")
        self.notify("hostReturned")
        second = self.attachLineClient()
        command.feedStdout(b"later")
        command.end(0)
        self.drive(duration=1)
        self.assertEqual(bytes(first.received), b"for the first client")
        self.assertEqual(bytes(second.received), b"")
        self.sendLine(b"echo two\n")
        self.reactor.processes[-1].feedStdout(b"for the second client")
        self.reactor.processes[-1].end(0)
        self.drive(duration=1)
        self.assertEqual(bytes(second.received), b"for the second client")
