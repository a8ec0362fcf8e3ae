# -*- test-case-name: tests.system.test_transport_device -*-
"""
Tests for L{prokshy.transport.device.DeviceTransport}, the non-tty device
transport, and above all its "host away" handling.

A Linux virtio port with no host answers C{read() == 0} and polls
C{POLLIN|POLLHUP} for ever.  A socketpair whose peer is closed behaves the
same way (plus C{POLLOUT}, and writes fail with C{EPIPE}), so it stands in
for one.  A pipe whose write end is closed does not: it polls C{POLLHUP}
without C{POLLIN}, which is what an unplugged port does.
"""

from __future__ import annotations

import errno
import os
import socket

from twisted.internet import reactor
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyClass, verifyObject

import prokshy.transport.device
from prokshy import _machines
from prokshy.transport._base import EAGER_LIMIT
from prokshy.transport.device import DeviceAddress, DeviceTransport
from prokshy.transport.interfaces import IDeviceTransport, IHostPresence
from tests.system.test_transport import ALL_BYTES, RecordingProtocol, closeProtocol, waitFor


def closed(fd):
    try:
        os.fstat(fd)
    except OSError as e:
        return e.errno == errno.EBADF
    return False


class FakeReads:
    """
    A C{_read} for L{DeviceTransport}: scripted results (bytes or an errno),
    then the real C{os.read}.  Counts calls.
    """

    def __init__(self, *script):
        self.script = list(script)
        self.calls = 0

    def __call__(self, fd, size):
        self.calls += 1
        if self.script:
            result = self.script.pop(0)
            if isinstance(result, int):
                raise OSError(result, os.strerror(result))
            return result
        return os.read(fd, size)


#: A write larger than EAGER_LIMIT: it waits in the buffer for the write pass.
BIG = b"b" * (EAGER_LIMIT + 1)


class HostAwayTests(TestCase):
    """
    Host away, deterministically: a L{MemoryReactorClock}, a live socketpair
    and scripted reads.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        ours, self.peer = socket.socketpair()
        self.addCleanup(self.peer.close)
        self.fd = ours.detach()
        self.protocol = RecordingProtocol()
        self.transport = DeviceTransport(self.protocol, self.fd, "/dev/vport0p1", self.reactor)
        self.addCleanup(self.transport.abortConnection)

    def goAway(self, *more):
        self.transport._read = reads = FakeReads(b"", *more)
        self.assertIsNone(self.transport.doRead())
        return reads

    def probeDelays(self, count):
        delays = []
        for i in range(count):
            [call] = self.reactor.getDelayedCalls()
            delay = call.getTime() - self.reactor.seconds()
            delays.append(round(delay, 6))
            self.reactor.advance(delay)
        return delays

    def test_connects(self):
        self.assertEqual(self.protocol.events, ["made"])
        self.assertIs(self.protocol.transport, self.transport)
        self.assertIn(self.transport, self.reactor.getReaders())
        self.assertEqual(self.transport.getPeer(), DeviceAddress("/dev/vport0p1"))
        self.assertEqual(self.transport.fileno(), self.fd)

    def test_zeroReadIsNotEOF(self):
        """
        A 0-byte read does not lose the connection: the fd leaves the reactor
        (no spinning on POLLHUP), the protocol's C{hostAway} is called once,
        and the fd stays open.
        """
        self.transport.write(BIG)
        self.assertIn(self.transport, self.reactor.getWriters())
        self.goAway()
        self.assertNotIn(self.transport, self.reactor.getReaders())
        self.assertNotIn(self.transport, self.reactor.getWriters())
        self.assertEqual(self.protocol.events, ["made", "away"])
        self.assertFalse(self.transport.hostConnected)
        self.assertTrue(self.transport.connected)
        self.assertFalse(closed(self.fd))

    def test_backoff(self):
        """
        While away, the fd is read once per probe, 50 ms apart doubling to
        1 s; nothing else touches it.
        """
        reads = self.goAway(*[b""] * 8)
        self.assertEqual(self.probeDelays(8), [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
        self.assertEqual(reads.calls, 9)
        self.assertEqual(self.protocol.events, ["made", "away"])
        self.assertEqual(self.reactor.getReaders(), [])

    def test_returnsWithData(self):
        """
        A probe that reads data means the host is back: C{hostReturned},
        the data, and reading resumes.
        """
        self.goAway(b"", b"hello")
        self.probeDelays(2)
        self.assertEqual(self.protocol.events, ["made", "away", "returned"])
        self.assertEqual(bytes(self.protocol.data), b"hello")
        self.assertTrue(self.transport.hostConnected)
        self.assertIn(self.transport, self.reactor.getReaders())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_writesWhileAwayDiscardedOnReturn(self):
        """
        Writes while away are kept, without registering for writability
        (Twisted would turn the hang-up into a lost connection).  The host
        that returns (EAGAIN: host there, nothing to read) is a new client:
        what was buffered for the one that left, including what was queued
        before it left, is discarded, never sent to the new one.  What the
        protocol writes from C{hostReturned} on is sent.
        """
        self.transport.write(BIG)
        self.goAway(errno.EAGAIN)
        self.transport.write(b"hello ")
        self.transport.writeSequence([b"host"])
        self.assertEqual(self.reactor.getWriters(), [])
        self.protocol.hostReturned = lambda: self.transport.write(b"for the new host")
        self.probeDelays(1)
        self.assertTrue(self.transport.hostConnected)
        # A small write with nothing (left) buffered goes at once.
        self.assertEqual(self.peer.recv(100), b"for the new host")
        self.assertEqual(self.reactor.getWriters(), [])

    def test_returnWithDataDiscardsFirst(self):
        """
        The same when the probe that finds the host back reads its first
        bytes: the old writes are gone before the protocol sees the data,
        so an answer to it is all the new host gets.
        """
        self.goAway(b"", b"request")
        self.transport.write(b"stale ping")
        self.protocol.dataReceived = lambda data: self.transport.write(b"answer to " + data)
        self.probeDelays(2)
        self.assertIsNone(self.transport.doWrite())
        self.assertEqual(self.peer.recv(100), b"answer to request")

    def test_discardBuffered(self):
        """
        C{discardBuffered} drops the unsent writes, says how many bytes,
        and resumes a streaming producer that the full buffer had paused.
        """
        events = []

        class Producer:
            def pauseProducing(self):
                events.append("pause")

            def resumeProducing(self):
                events.append("resume")

            def stopProducing(self):
                events.append("stop")

        self.transport.bufferSize = 10
        self.transport.registerProducer(Producer(), True)
        self.transport.write(BIG)
        self.assertEqual(events, ["pause"])
        self.assertEqual(self.transport.discardBuffered(), len(BIG))
        self.assertEqual(events, ["pause", "resume"])
        self.assertEqual(self.transport.discardBuffered(), 0)
        self.transport.write(b"fresh")
        self.transport.doWrite()
        self.assertEqual(self.peer.recv(100), b"fresh")

    def test_backoffRestartsEachTime(self):
        self.goAway(b"", errno.EAGAIN)
        self.probeDelays(2)
        self.goAway(b"", b"")
        self.assertEqual(self.probeDelays(2), [0.05, 0.1])
        self.assertEqual(self.protocol.events, ["made", "away", "returned", "away"])

    def test_pausedProbesWithoutReading(self):
        """
        If the protocol paused reading, probes poll instead of reading (so
        no data is taken from a paused protocol); when the host is back,
        reading stays paused until resumed.
        """
        reads = self.goAway()
        self.transport.pauseProducing()
        self.peer.send(b"data")
        self.probeDelays(1)
        self.assertEqual(reads.calls, 1)
        self.assertEqual(self.protocol.events, ["made", "away", "returned"])
        self.assertEqual(self.reactor.getReaders(), [])
        self.transport.resumeProducing()
        self.assertIn(self.transport, self.reactor.getReaders())

    def test_resumeWhileAwayDoesNotPoll(self):
        self.goAway()
        self.transport.pauseProducing()
        self.transport.resumeProducing()
        self.assertEqual(self.reactor.getReaders(), [])

    def test_loseConnectionWhileAway(self):
        """
        Closing while away closes soon (the buffer cannot drain), cancels the
        probe and closes the fd.
        """
        self.goAway()
        self.transport.write(b"never sent")
        self.transport.loseConnection()
        self.reactor.advance(0)
        self.assertEqual(self.protocol.events, ["made", "away", "lost"])
        self.assertTrue(self.protocol.reasons[0].check(ConnectionDone))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertTrue(closed(self.fd))

    def test_smallWriteAtOnce(self):
        """
        A small write with nothing buffered goes to the device at once, not
        at the reactor's next write pass (an ACCEPT queued before a spawn
        leaves before the spawn).
        """
        self.transport.write(b"ACCEPT")
        self.assertEqual(self.peer.recv(100), b"ACCEPT")
        self.assertEqual(self.reactor.getWriters(), [])

    def test_smallWriteKeepsOrder(self):
        """
        Behind buffered bytes a small write waits its turn: the bytes leave
        in the order written.
        """
        self.transport.write(BIG)
        self.transport.write(b"after")
        self.assertIn(self.transport, self.reactor.getWriters())
        self.assertIsNone(self.transport.doWrite())
        received = b""
        while len(received) < len(BIG) + 5:
            received += self.peer.recv(65536)
        self.assertEqual(received, BIG + b"after")

    def test_smallWriteWhileAwayWaits(self):
        """
        With no host, a small write is not tried: it waits (and is dropped
        for the next host), as every write does.
        """
        self.goAway(errno.EAGAIN)
        self.transport.write(b"ping")
        self.assertEqual(self.reactor.getWriters(), [])
        self.assertEqual(self.transport.discardBuffered(), 4)

    def test_readErrorIsFatal(self):
        """
        A read error other than EAGAIN/EINTR (ENODEV: port unplugged) loses
        the connection, with the path and the errno in the reason.
        """
        self.transport._read = FakeReads(errno.EINTR, errno.EAGAIN, errno.ENODEV)
        # EINTR is retried at once; EAGAIN ends the batch.
        self.assertIsNone(self.transport.doRead())
        why = self.transport.doRead()
        self.assertIsInstance(why, ConnectionLost)
        self.assertIn("/dev/vport0p1", str(why))
        self.assertIn("ENODEV", str(why))
        # What the reactor does with it:
        self.transport.connectionLost(Failure(why))
        self.assertEqual(self.protocol.events, ["made", "lost"])
        self.assertTrue(closed(self.fd))

    def test_probeReadErrorIsFatal(self):
        self.goAway(errno.EIO)
        self.probeDelays(1)
        self.assertEqual(self.protocol.events, ["made", "away", "lost"])
        self.assertIn("EIO", self.protocol.reasons[0].getErrorMessage())
        self.assertTrue(closed(self.fd))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_reactorHangUpOnLiveFDIsLost(self):
        """
        A hang-up reported by the reactor while the fd does not poll as
        "host away" is a real end.
        """
        self.transport.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.protocol.events, ["made", "lost"])

    def test_zeroReadWithHangUpIsEnd(self):
        """
        A 0-byte read on a fd that polls POLLHUP without POLLIN (an unplugged
        port; here a pipe with no writer) ends the connection.  (Under poll
        and epoll the reactor reports that itself; select calls doRead.)
        """
        r, w = os.pipe()
        os.close(w)
        protocol = RecordingProtocol()
        transport = DeviceTransport(protocol, r, "/dev/vport0p2", self.reactor)
        why = transport.doRead()
        self.assertIsInstance(why, ConnectionDone)
        self.assertIn("/dev/vport0p2 hung up", str(why))
        transport.connectionLost(Failure(why))
        self.assertEqual(protocol.events, ["made", "lost"])
        self.assertTrue(closed(r))

    def test_hostAwayErrorsAreLogged(self):
        """
        An exception from the protocol's C{hostAway} is logged, not fatal.
        """

        def broken():
            raise ValueError("oops")

        self.protocol.hostAway = broken
        self.goAway()
        self.assertTrue(self.transport.connected)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


class PresenceMachineTests(SynchronousTestCase):
    """
    The host's presence on a L{DeviceTransport} is an Automat machine with
    every (state, input) pair declared, and its table in the module
    docstring.
    """

    def test_everyPairDeclared(self):
        self.assertEqual(_machines.undeclared(DeviceTransport._machine), set())

    def test_states(self):
        self.assertEqual(
            _machines.states(DeviceTransport._machine),
            ["away", "closing", "closingAway", "gone", "present"],
        )

    def test_docstringCarriesTable(self):
        self.assertIn(_machines.table(DeviceTransport._machine), prokshy.transport.device.__doc__)

    def test_timersBelongToStates(self):
        """
        Every transition out of C{away} cancels the probe timer, and every
        one out of C{closingAway} the close timer; entering them arms them.
        """
        rows = _machines.transitions(DeviceTransport._machine)
        for old, timerOut, timerIn in [("away", "_cancelProbe", "_armProbe"),
                                       ("closingAway", "_cancelClose", "_armClose")]:
            for state, inp, new, outputs in rows:
                if state == old and new != old:
                    self.assertIn(timerOut, outputs, (state, inp, new))
                if new == old and state != old:
                    self.assertIn(timerIn, outputs, (state, inp, new))


class PresenceTests(TestCase):
    """
    Transitions the machine made explicit, on a L{MemoryReactorClock}.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        ours, self.peer = socket.socketpair()
        self.addCleanup(self.peer.close)
        self.fd = ours.detach()

    def connect(self, protocol):
        transport = DeviceTransport(protocol, self.fd, "/dev/vport0p1", self.reactor)
        self.addCleanup(transport.abortConnection)
        return transport

    def test_interfaces(self):
        protocol = RecordingProtocol()
        transport = self.connect(protocol)
        self.assertTrue(verifyObject(IDeviceTransport, transport))
        self.assertTrue(verifyObject(IHostPresence, protocol))

    def test_guestProtocolHearsPresence(self):
        """
        The agent's protocol declares L{IHostPresence}, so the transport
        tells it.
        """
        from prokshy.guest.agent import GuestProtocol

        self.assertTrue(verifyClass(IHostPresence, GuestProtocol))

    def test_undeclaredProtocolNotProbed(self):
        """
        A protocol that does not provide L{IHostPresence} is not told, even
        if it has methods of those names: nothing is looked up by name.
        """
        calls = []

        class Undeclared(Protocol):
            def hostAway(self):
                calls.append("away")

            def hostReturned(self):
                calls.append("returned")

        transport = self.connect(Undeclared())
        transport._read = FakeReads(b"", b"back")
        transport.doRead()
        self.assertFalse(transport.hostConnected)
        self.reactor.advance(transport.awayInitialDelay)
        self.assertTrue(transport.hostConnected)
        self.assertEqual(calls, [])

    def test_probeTimerArmedOnEnteringAway(self):
        protocol = RecordingProtocol()
        transport = self.connect(protocol)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        transport._read = FakeReads(b"")
        transport.doRead()
        [probe] = self.reactor.getDelayedCalls()
        self.assertEqual(probe.getTime(), transport.awayInitialDelay)

    def test_abortWhileAwayCancelsProbe(self):
        protocol = RecordingProtocol()
        transport = self.connect(protocol)
        transport._read = FakeReads(b"")
        transport.doRead()
        transport.abortConnection()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(protocol.events, ["made", "away", "lost"])
        self.assertTrue(protocol.reasons[0].check(ConnectionAborted))
        self.assertTrue(closed(self.fd))
        self.assertFalse(transport.hostConnected)

    def test_abortWhileClosingAwayCancelsClose(self):
        """
        C{loseConnection} with no host arms the close timer; an abort before
        it fires cancels it, and the protocol hears of the end once.
        """
        protocol = RecordingProtocol()
        transport = self.connect(protocol)
        transport._read = FakeReads(b"")
        transport.doRead()
        transport.loseConnection()
        [close] = self.reactor.getDelayedCalls()
        transport.abortConnection()
        self.assertFalse(close.active())
        self.reactor.advance(1)
        self.assertEqual(protocol.events, ["made", "away", "lost"])
        self.assertTrue(protocol.reasons[0].check(ConnectionAborted))

    def test_hostLeavesWhileFlushing(self):
        """
        The host goes while C{loseConnection} waits for the buffer to drain:
        it can never drain, so the transport closes on the next tick and
        discards it (it used to wait, probing, for a host to come back).
        """
        protocol = RecordingProtocol()
        transport = self.connect(protocol)
        transport.write(b"unsent")
        transport.loseConnection()
        transport._read = FakeReads(b"")
        self.assertIsNone(transport.doRead())
        self.assertNotIn(transport, self.reactor.getWriters())
        self.reactor.advance(0)
        self.assertEqual(protocol.events, ["made", "lost"])
        self.assertTrue(protocol.reasons[0].check(ConnectionDone))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertTrue(closed(self.fd))

    def test_fatalReadIsFinal(self):
        """
        Once C{doRead} has handed an error to the reactor, the
        C{connectionLost} that follows ends the connection even if the fd
        polls as "host away".
        """
        protocol = RecordingProtocol()
        transport = self.connect(protocol)
        self.peer.close()  # now the socketpair polls POLLIN|POLLHUP: "away"
        transport._read = FakeReads(errno.EIO)
        why = transport.doRead()
        self.assertIsInstance(why, ConnectionLost)
        transport.connectionLost(Failure(why))
        self.assertEqual(protocol.events, ["made", "lost"])
        self.assertTrue(closed(self.fd))

    def test_whenLost(self):
        """
        C{whenLost} callbacks run after the protocol's C{connectionLost},
        with its reason; one added afterwards runs at once.
        """
        order = []

        class Protocol2(RecordingProtocol):
            def connectionLost(self, reason):
                order.append("protocol")
                RecordingProtocol.connectionLost(self, reason)

        transport = self.connect(Protocol2())
        transport.whenLost(lambda reason: order.append(("callback", reason.type)))
        transport.abortConnection()
        transport.whenLost(lambda reason: order.append(("late", reason.type)))
        self.assertEqual(
            order, ["protocol", ("callback", ConnectionAborted), ("late", ConnectionAborted)]
        )


class RealReactorTests(TestCase):
    """
    The same, on the real reactor and real fds.
    """

    def connect(self, fd, path="/dev/vport0p1"):
        protocol = RecordingProtocol()
        DeviceTransport(protocol, fd, path, reactor)
        self.addCleanup(closeProtocol, protocol)
        return protocol

    def test_dataBothWays(self):
        ours, peer = socket.socketpair()
        self.addCleanup(peer.close)
        protocol = self.connect(ours.detach())
        protocol.transport.write(ALL_BYTES)
        peer.sendall(ALL_BYTES)
        received = bytearray()

        def done():
            try:
                received.extend(peer.recv(65536, socket.MSG_DONTWAIT))
            except BlockingIOError:
                pass
            return len(received) >= len(ALL_BYTES) and len(protocol.data) >= len(ALL_BYTES)

        d = waitFor(done)

        @d.addCallback
        def check(_):
            self.assertEqual(bytes(received), ALL_BYTES)
            self.assertEqual(bytes(protocol.data), ALL_BYTES)

        return d

    def test_idleHostAwayCostsNothing(self):
        """
        With no host, the transport reads the fd only a handful of times a
        second (here: about 5 in 1 s), instead of spinning, and never loses
        the connection.
        """
        ours, peer = socket.socketpair()
        peer.close()
        protocol = RecordingProtocol()
        transport = DeviceTransport(protocol, ours.detach(), "/dev/vport0p1", reactor)
        # Nothing is read before the reactor runs.
        transport._read = reads = FakeReads()
        self.addCleanup(closeProtocol, protocol)
        d = deferLater(reactor, 1.0, lambda: None)

        @d.addCallback
        def check(_):
            self.assertEqual(protocol.events, ["made", "away"])
            self.assertTrue(transport.connected)
            self.assertGreaterEqual(reads.calls, 3)
            self.assertLess(reads.calls, 20)

        return d

    def test_hangUpOnWriteOnlyIsHostAway(self):
        """
        If the host goes while the protocol has paused reading, its next
        write registers the fd for writing only, and the reactor reports the
        hang-up as a lost connection without calling doRead.  The transport
        sees through that: host away, data kept.
        """
        ours, peer = socket.socketpair()
        protocol = self.connect(ours.detach())
        protocol.transport.pauseProducing()
        peer.close()
        protocol.transport.write(b"kept")
        d = waitFor(lambda: "away" in protocol.events)

        @d.addCallback
        def check(_):
            self.assertEqual(protocol.events, ["made", "away"])
            self.assertTrue(protocol.transport.connected)
            t = protocol.transport
            self.assertEqual(bytes(t.dataBuffer[t.offset:]) + b"".join(t._tempDataBuffer), b"kept")

        return d

    def test_hangUpWithoutPollInIsLost(self):
        """
        A hang-up without POLLIN (an unplugged port; a pipe with no writer)
        is a real end of the connection.
        """
        r, w = os.pipe()
        os.close(w)
        protocol = self.connect(r)
        d = protocol.lost

        @d.addCallback
        def check(_):
            self.assertEqual(protocol.events, ["made", "lost"])
            self.assertTrue(protocol.reasons[0].check(ConnectionDone))
            self.assertTrue(closed(r))

        return d

    def test_fromPath(self):
        path = self.mktemp()
        os.mkfifo(path)
        protocol = RecordingProtocol()
        transport = DeviceTransport.fromPath(protocol, path, reactor)
        self.addCleanup(closeProtocol, protocol)
        self.assertEqual(transport.getHost(), DeviceAddress(path))
        transport.write(b"loop")
        return waitFor(lambda: protocol.data == b"loop")
