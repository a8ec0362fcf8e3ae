# -*- test-case-name: tests.system.test_transport -*-
"""
Tests for L{prokshy.transport.endpoints} and the tty transport
(L{prokshy.transport.tty}), on real ptys and FIFOs.

The helpers at the top are shared with the other C{tests.test_transport_*}
modules.
"""

from __future__ import annotations

import errno
import fcntl
import os
import termios
import time

import serial

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.error import ConnectionDone, NoProtocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from prokshy.transport.device import DeviceAddress, DeviceTransport, SerialTransport
from prokshy.transport.endpoints import (
    DeviceBusy,
    DeviceError,
    DeviceMissing,
    VtconClientEndpoint,
)
from prokshy.transport.interfaces import IDeviceEndpoint, IDeviceTransport, IHostPresence

ALL_BYTES = bytes(range(256)) * 4


# -- shared helpers -----------------------------------------------------------


@implementer(IHostPresence)
class RecordingProtocol(Protocol):
    """
    Records what happens to it; C{lost} fires (with L{None}) on
    C{connectionLost}, whose reason is kept in C{reasons}.  It hears the
    host go and come back (L{IHostPresence}).
    """

    def __init__(self):
        self.data = bytearray()
        self.events = []
        self.reasons = []
        self.lost = Deferred()

    def connectionMade(self):
        self.events.append("made")

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.events.append("lost")
        self.reasons.append(reason)
        if not self.lost.called:
            self.lost.callback(None)

    def hostAway(self):
        self.events.append("away")

    def hostReturned(self):
        self.events.append("returned")


def waitFor(predicate, timeout=2.0, interval=0.002):
    """
    A Deferred that fires once C{predicate()} is true, polling on the real
    reactor, or fails after C{timeout} seconds.
    """
    d = Deferred()
    deadline = time.monotonic() + timeout

    def check():
        try:
            done = predicate()
        except BaseException:
            d.errback()
            return
        if done:
            d.callback(None)
        elif time.monotonic() > deadline:
            d.errback(AssertionError("timed out waiting for %r" % (predicate,)))
        else:
            reactor.callLater(interval, check)

    check()
    return d


def closeProtocol(protocol):
    """
    Lose C{protocol}'s connection (if it has one) and wait until it is lost.
    """
    if "lost" not in protocol.events and protocol.transport is not None:
        protocol.transport.loseConnection()
    return protocol.lost


def readAvailable(fd):
    """
    Everything readable from the non-blocking C{fd} now.
    """
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def openFDs():
    """
    This process's open fds on files and devices, by number.  (Pipes and
    epoll fds are left out: the reactor makes and drops some as it runs.)
    """
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + name)
        except OSError:
            continue
        if target.startswith("/"):
            fds[name] = target
    return fds


# What FreeBSD's first open of a vtcon tty gives (TTYDEF_*), plus the input
# bits that would mangle binary data.
_COOKED = (
    termios.BRKINT | termios.ICRNL | termios.IMAXBEL | termios.IXON | termios.IXANY
    | termios.ISTRIP | termios.INLCR | termios.PARMRK | termios.INPCK,
    termios.OPOST | termios.ONLCR,
    termios.ECHO | termios.ECHOE | termios.ECHOK | termios.ECHOCTL | termios.ECHOKE
    | termios.ICANON | termios.ISIG | termios.IEXTEN | termios.TOSTOP,
)  # fmt: skip


def makeCooked(fd):
    attrs = termios.tcgetattr(fd)
    attrs[0] |= _COOKED[0]
    attrs[1] |= _COOKED[1]
    attrs[3] |= _COOKED[2]
    attrs[4] = attrs[5] = termios.B9600
    attrs[6][termios.VMIN] = 1
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


class PtyMixin:
    def openPty(self, cooked=True):
        """
        A pty: (master fd, test's slave fd, slave path).  The master is
        non-blocking; both are closed at cleanup.
        """
        master, slave = os.openpty()
        self.addCleanup(os.close, master)
        self.addCleanup(os.close, slave)
        os.set_blocking(master, False)
        if cooked:
            makeCooked(slave)
        return master, slave, os.ttyname(slave)

    @inlineCallbacks
    def connect(self, path, **kwargs):
        """
        Connect a L{RecordingProtocol} to C{path}; close it at cleanup.
        """
        endpoint = VtconClientEndpoint(reactor, path, **kwargs)
        protocol = yield endpoint.connect(Factory.forProtocol(RecordingProtocol))
        self.addCleanup(closeProtocol, protocol)
        return protocol


# -- ttys -----------------------------------------------------------------------


class TTYTests(PtyMixin, TestCase):
    """
    On a tty the endpoint uses pyserial, forces full raw mode at the chosen
    speed, and flushes stale input, on every open.
    """

    def assertRaw(self, fd, speed=termios.B115200):
        iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
        for name in ("IGNBRK", "BRKINT", "PARMRK", "ISTRIP", "INLCR", "IGNCR",
                     "ICRNL", "IXON", "IXOFF", "IXANY", "INPCK", "IMAXBEL"):
            self.assertFalse(iflag & getattr(termios, name), name)
        self.assertFalse(oflag & termios.OPOST, "OPOST")
        for name in ("ECHO", "ECHONL", "ICANON", "ISIG", "IEXTEN", "TOSTOP"):
            self.assertFalse(lflag & getattr(termios, name), name)
        self.assertEqual(cflag & termios.CSIZE, termios.CS8)
        self.assertEqual(cflag & (termios.CLOCAL | termios.CREAD), termios.CLOCAL | termios.CREAD)
        self.assertFalse(cflag & termios.PARENB, "PARENB")
        self.assertEqual((ispeed, ospeed), (speed, speed))
        self.assertEqual((cc[termios.VMIN], cc[termios.VTIME]), (1, 0))

    @inlineCallbacks
    def test_rawModeAfterConnect(self):
        """
        After connecting to a cooked tty, it is raw, 8N1, CLOCAL|CREAD,
        115200, VMIN=1 VTIME=0 -- including the bits pyserial leaves alone
        (BRKINT, IMAXBEL, TOSTOP, VMIN).
        """
        master, slave, path = self.openPty()
        protocol = yield self.connect(path)
        self.assertIsInstance(protocol.transport, SerialTransport)
        self.assertEqual(protocol.events, ["made"])
        self.assertRaw(slave)

    @inlineCallbacks
    def test_baudrate(self):
        """
        The endpoint's baudrate is applied.
        """
        master, slave, path = self.openPty()
        yield self.connect(path, baudrate=9600)
        self.assertRaw(slave, termios.B9600)

    @inlineCallbacks
    def test_staleInputFlushed(self):
        """
        Input queued on the tty before the open is discarded; input sent
        afterwards arrives intact.
        """
        master, slave, path = self.openPty()
        # CR, because the cooked tty maps NL to CR (INLCR) and CR to NL (ICRNL).
        os.write(master, b"stale junk\r")
        # Wait until the line discipline holds the stale line.
        self.assertTrue(_pollIn(slave, 2.0), "stale input never reached the tty")
        protocol = yield self.connect(path)
        os.write(master, b"fresh")
        yield waitFor(lambda: len(protocol.data) >= 5)
        self.assertEqual(bytes(protocol.data), b"fresh")

    @inlineCallbacks
    def test_noEchoAfterConnect(self):
        """
        A cooked tty echoes; after connecting, input is not echoed back and
        output is not rewritten (no NL to CR NL).
        """
        master, slave, path = self.openPty()
        protocol = yield self.connect(path)
        os.write(master, b"hello\n")
        yield waitFor(lambda: protocol.data == b"hello\n")
        # Output is ordered: any echo would come before this marker.
        protocol.transport.write(b"mark\n")
        received = bytearray()

        def gotMarker():
            received.extend(readAvailable(master))
            return received.endswith(b"mark\n")

        yield waitFor(gotMarker)
        self.assertEqual(bytes(received), b"mark\n")

    @inlineCallbacks
    def test_allBytesBothWays(self):
        """
        All 256 byte values, 0xFF included, pass unchanged in both
        directions.
        """
        master, slave, path = self.openPty()
        protocol = yield self.connect(path)
        os.write(master, ALL_BYTES)
        yield waitFor(lambda: len(protocol.data) >= len(ALL_BYTES))
        self.assertEqual(bytes(protocol.data), ALL_BYTES)

        protocol.transport.write(ALL_BYTES)
        received = bytearray()

        def gotAll():
            received.extend(readAvailable(master))
            return len(received) >= len(ALL_BYTES)

        yield waitFor(gotAll)
        self.assertEqual(bytes(received), ALL_BYTES)

    @inlineCallbacks
    def test_readsBatched(self):
        """
        What the tty holds is handed to the protocol in one C{dataReceived},
        though a tty gives at most 4 KiB per read: the per-chunk work of the
        protocol is paid once per batch.
        """
        master, slave, path = self.openPty()
        protocol = yield self.connect(path)
        transport = protocol.transport
        transport.stopReading()
        chunks = []
        protocol.dataReceived = chunks.append
        payload = bytes(range(256)) * 80  # 20 KiB
        written = 0
        for _ in range(200):
            if sum(map(len, chunks)) >= len(payload):
                break
            if written < len(payload):
                written += os.write(master, payload[written:])
            # Let the pty move its buffer into the line discipline.
            yield deferLater(reactor, 0.02, lambda: None)
            self.assertIsNone(transport.doRead())
        self.assertEqual(b"".join(chunks), payload)
        self.assertGreater(max(map(len, chunks)), 4096)

    @inlineCallbacks
    def test_discardBuffered(self):
        """
        C{discardBuffered} drops writes not sent yet (a framed session that
        ended must not reach a later client), and says how many bytes; what
        is written afterwards is sent.
        """
        master, slave, path = self.openPty()
        protocol = yield self.connect(path)
        stale = b"stale frames" * 200  # more than EAGER_LIMIT: buffered
        protocol.transport.write(stale)
        self.assertEqual(protocol.transport.discardBuffered(), len(stale))
        protocol.transport.write(b"fresh\n")
        received = bytearray()

        def gotFresh():
            received.extend(readAvailable(master))
            return b"\n" in received

        yield waitFor(gotFresh)
        self.assertEqual(bytes(received), b"fresh\n")

    @inlineCallbacks
    def test_reconnectReappliesRawMode(self):
        """
        If something resets the tty to cooked between opens (FreeBSD does on
        each first open), the next connect makes it raw again.
        """
        master, slave, path = self.openPty()
        first = yield self.connect(path)
        yield closeProtocol(first)
        makeCooked(slave)
        self.assertTrue(termios.tcgetattr(slave)[3] & termios.ECHO)
        second = yield self.connect(path)
        self.assertRaw(slave)
        os.write(master, ALL_BYTES)
        yield waitFor(lambda: len(second.data) >= len(ALL_BYTES))
        self.assertEqual(bytes(second.data), ALL_BYTES)

    @inlineCallbacks
    def test_addresses(self):
        """
        The serial transport's host and peer are the device path.
        """
        master, slave, path = self.openPty()
        protocol = yield self.connect(path)
        self.assertEqual(protocol.transport.getPeer(), DeviceAddress(path))
        self.assertEqual(protocol.transport.getHost(), DeviceAddress(path))

    @inlineCallbacks
    def test_deviceTransport(self):
        """
        The serial transport is an L{IDeviceTransport}: its C{whenLost}
        callbacks run once it is closed, after the protocol heard of it.
        """
        master, slave, path = self.openPty()
        protocol = yield self.connect(path)
        transport = protocol.transport
        self.assertTrue(verifyObject(IDeviceTransport, transport))
        reasons = []
        transport.whenLost(lambda reason: reasons.append((list(protocol.events), reason)))
        transport.loseConnection()
        yield waitFor(lambda: reasons)
        [(events, reason)] = reasons
        self.assertEqual(events, ["made", "lost"])
        self.assertIs(reason, protocol.reasons[0])

    @inlineCallbacks
    def test_secondAgentIsBusy(self):
        """
        A second agent opening the same tty gets L{DeviceBusy}: the tty is
        locked, since ttys accept several openers that would split the input.
        """
        master, slave, path = self.openPty()
        yield self.connect(path)
        failure = yield self.assertFailure(
            VtconClientEndpoint(reactor, path).connect(Factory.forProtocol(RecordingProtocol)),
            DeviceBusy,
        )
        self.assertIn(path, str(failure))

    @inlineCallbacks
    def test_closedAndLost(self):
        """
        When the other side of the tty goes away the protocol is told, and
        the fds are released.
        """
        before = openFDs()
        master, slave = os.openpty()
        path = os.ttyname(slave)
        os.close(slave)
        endpoint = VtconClientEndpoint(reactor, path)
        protocol = yield endpoint.connect(Factory.forProtocol(RecordingProtocol))
        os.close(master)
        yield protocol.lost
        self.assertEqual(protocol.events, ["made", "lost"])
        self.assertEqual(openFDs(), before)

    def test_configureFailure(self):
        """
        A pyserial failure without an errno becomes a plain L{DeviceError}
        naming the path, and nothing is built.
        """
        master, slave, path = self.openPty()
        endpoint = VtconClientEndpoint(reactor, path)

        def brokenSerial(path, baudrate):
            raise serial.SerialException("Could not configure port: (5, 'Input/output error')")

        endpoint._openSerial = brokenSerial
        built = []
        factory = Factory.forProtocol(lambda: built.append(1) or RecordingProtocol())
        failure = self.failureResultOf(endpoint.connect(factory), DeviceError)
        self.assertNotIsInstance(failure.value, (DeviceBusy, DeviceMissing))
        self.assertIn(path, str(failure.value))
        self.assertIn("Could not configure port", str(failure.value))
        self.assertEqual(built, [])


def _pollIn(fd, timeout):
    import select

    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


# -- errors ---------------------------------------------------------------------


class ErrorTests(TestCase):
    """
    Opening errors become L{DeviceError}s with a one-line message naming the
    path.
    """

    def connectWithErrno(self, code, path="/dev/vtcon/prokshy"):
        endpoint = VtconClientEndpoint(reactor, path)

        def failingOpen(path, flags):
            raise OSError(code, os.strerror(code), path)

        endpoint._open = failingOpen
        return self.failureResultOf(endpoint.connect(Factory.forProtocol(RecordingProtocol)))

    def test_busy(self):
        failure = self.connectWithErrno(errno.EBUSY)
        self.assertIsInstance(failure.value, DeviceBusy)
        self.assertIsInstance(failure.value, DeviceError)
        self.assertEqual(failure.value.errno, errno.EBUSY)
        self.assertEqual(
            str(failure.value),
            "device /dev/vtcon/prokshy is busy: another agent holds it (EBUSY)",
        )

    def test_emfileIsBusy(self):
        """
        Older Linux kernels answer a second opener with EMFILE.
        """
        failure = self.connectWithErrno(errno.EMFILE)
        self.assertIsInstance(failure.value, DeviceBusy)

    def test_missing(self):
        path = os.path.join(self.mktemp(), "nothing")
        endpoint = VtconClientEndpoint(reactor, path)
        failure = self.failureResultOf(
            endpoint.connect(Factory.forProtocol(RecordingProtocol)), DeviceMissing
        )
        self.assertEqual(str(failure.value), "device %s does not exist (ENOENT)" % (path,))
        self.assertNotIn("\n", str(failure.value))

    def test_other(self):
        failure = self.connectWithErrno(errno.EACCES)
        self.assertIs(type(failure.value), DeviceError)
        self.assertEqual(
            str(failure.value),
            "cannot open device /dev/vtcon/prokshy: Permission denied (EACCES)",
        )

    def test_interface(self):
        self.assertTrue(verifyObject(IStreamClientEndpoint, VtconClientEndpoint(reactor, "/x")))
        self.assertTrue(verifyObject(IDeviceEndpoint, VtconClientEndpoint(reactor, "/x")))


# -- non-tty devices ------------------------------------------------------------


class NonTTYTests(PtyMixin, TestCase):
    """
    A non-tty device (a FIFO here) gets a L{DeviceTransport} on the probe fd.
    """

    def makeFifo(self):
        path = self.mktemp()
        os.mkfifo(path)
        return path

    @inlineCallbacks
    def test_fifoLoopsBack(self):
        """
        A FIFO opened read-write reads back what the transport writes; the fd
        is non-blocking and close-on-exec, and the addresses name the path.
        """
        path = self.makeFifo()
        protocol = yield self.connect(path)
        transport = protocol.transport
        self.assertIsInstance(transport, DeviceTransport)
        self.assertEqual(transport.getPeer(), DeviceAddress(path))
        self.assertEqual(transport.getHost(), DeviceAddress(path))
        self.assertTrue(fcntl.fcntl(transport.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK)
        self.assertTrue(fcntl.fcntl(transport.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
        transport.write(ALL_BYTES)
        yield waitFor(lambda: len(protocol.data) >= len(ALL_BYTES))
        self.assertEqual(bytes(protocol.data), ALL_BYTES)

    @inlineCallbacks
    def test_loseConnectionClosesFD(self):
        before = openFDs()
        path = self.makeFifo()
        endpoint = VtconClientEndpoint(reactor, path)
        protocol = yield endpoint.connect(Factory.forProtocol(RecordingProtocol))
        self.assertNotEqual(openFDs(), before)
        protocol.transport.loseConnection()
        yield protocol.lost
        self.assertTrue(protocol.reasons[0].check(ConnectionDone))
        self.assertEqual(openFDs(), before)

    def test_noProtocol(self):
        """
        A factory that builds no protocol fails the connect with
        L{NoProtocol} and leaves no fd open.
        """
        before = openFDs()
        path = self.makeFifo()
        endpoint = VtconClientEndpoint(reactor, path)
        factory = Factory.forProtocol(RecordingProtocol)
        factory.buildProtocol = lambda addr: None
        self.failureResultOf(endpoint.connect(factory), NoProtocol)
        self.assertEqual(openFDs(), before)

    def test_connectionMadeRaises(self):
        """
        If C{connectionMade} raises, connect fails with that error, the
        protocol is told the connection is lost and the fd is closed.
        """
        before = openFDs()
        path = self.makeFifo()
        protocols = []

        class Broken(RecordingProtocol):
            def connectionMade(self):
                protocols.append(self)
                raise ZeroDivisionError()

        endpoint = VtconClientEndpoint(reactor, path)
        self.failureResultOf(endpoint.connect(Factory.forProtocol(Broken)), ZeroDivisionError)
        self.assertEqual(protocols[0].events, ["lost"])
        self.assertEqual(openFDs(), before)
