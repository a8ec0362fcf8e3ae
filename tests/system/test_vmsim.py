"""
Tests for L{prokshy.sim.vmsim}: real ptys, real unix sockets, the real reactor.
"""

import io
import os
import select
import shutil
import socket
import sys
import tempfile
import termios
import tty

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionLost
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

import prokshy
from tests.harness import RawClient
from prokshy.sim.faults import TO_GUEST, TO_HOST, FaultInjector, Faults
from prokshy.sim.pty import PtyMaster
from prokshy.sim.vmsim import (
    BHYVE,
    DEFAULT_GUEST_BUFFER,
    QEMU,
    SimError,
    VMSim,
    faultsFromArgs,
    main,
    makeParser,
)

POLL = 0.005


def _shortTempDir(testCase):
    """
    A fresh directory with a path short enough for AF_UNIX, removed after
    the test.
    """
    path = tempfile.mkdtemp(prefix="pv", dir="/tmp")
    testCase.addCleanup(shutil.rmtree, path, True)
    return path


@inlineCallbacks
def waitFor(predicate, what, timeout=3.0):
    """
    Poll C{predicate} until it is true; fail after C{timeout} seconds.
    """
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield task.deferLater(reactor, POLL, lambda: None)


def pause(seconds=0.05):
    """
    Let the reactor run for a while (to show that something does not happen).
    """
    return task.deferLater(reactor, seconds, lambda: None)


#: A host client: records what it receives.
Host = RawClient


class Guest:
    """
    The guest's end: the device link opened as an agent would open it.
    """

    def __init__(self, testCase, path, raw=True):
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        testCase.addCleanup(os.close, self.fd)
        if raw:
            tty.setraw(self.fd)
        self.received = bytearray()

    def drain(self):
        """
        Read everything that is available now.
        """
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            if not data:
                return
            self.received += data

    def write(self, data):
        """
        Write all of C{data} (small amounts only: the pty must take it).
        """
        self.assertWritten(os.write(self.fd, data), data)

    @staticmethod
    def assertWritten(count, data):
        if count != len(data):
            raise AssertionError(f"short guest write: {count} of {len(data)}")

    @inlineCallbacks
    def readExactly(self, count, timeout=3.0):
        """
        Read until C{count} bytes have arrived; return them.
        """

        def enough():
            self.drain()
            return len(self.received) >= count

        yield waitFor(enough, f"{count} bytes in the guest", timeout)
        data = bytes(self.received[:count])
        del self.received[:count]
        return data


class SimTestMixin:
    """
    Starts simulators and connects hosts and guests, with cleanups.
    """

    mode = BHYVE

    def setUp(self):
        self.dir = _shortTempDir(self)
        self.socketPath = os.path.join(self.dir, "s")
        self.linkPath = os.path.join(self.dir, "dev")

    def startSim(self, **kwargs):
        kwargs.setdefault("mode", self.mode)
        sim = VMSim(reactor, self.socketPath, self.linkPath, **kwargs)
        sim.start()
        self.addCleanup(sim.stop)
        return sim

    @inlineCallbacks
    def connectHost(self, sim):
        """
        Connect a host client and wait until the simulator has decided about it.
        """
        before = self._decided(sim)
        host = Host()
        yield connectProtocol(UNIXClientEndpoint(reactor, self.socketPath), host)
        self.addCleanup(self.disconnect, host)
        yield waitFor(lambda: self._decided(sim) > before, "the simulator to take the client")
        return host

    @staticmethod
    def _decided(sim):
        c = sim.counters
        return c.clientsServed + c.clientsRefused + c.clientsQueued

    def disconnect(self, host):
        if host.isLost:
            return None
        host.transport.loseConnection()
        return host.lost

    def guest(self, raw=True):
        return Guest(self, self.linkPath, raw)


class CommonTestsMixin(SimTestMixin):
    """
    Behaviour both modes share.
    """

    def test_startCreatesSocketAndLink(self):
        """
        After start() the socket listens and the link points at a pty;
        stop() removes both.
        """
        sim = self.startSim()
        self.assertTrue(os.path.islink(self.linkPath))
        self.assertEqual(os.readlink(self.linkPath), sim.ptyPath)
        fd = os.open(self.linkPath, os.O_RDWR | os.O_NOCTTY)
        self.addCleanup(os.close, fd)
        self.assertTrue(os.isatty(fd))
        client = socket.socket(socket.AF_UNIX)
        self.addCleanup(client.close)
        client.connect(self.socketPath)

        def stopped(_):
            self.assertFalse(os.path.lexists(self.socketPath))
            self.assertFalse(os.path.lexists(self.linkPath))

        return sim.stop().addCallback(stopped)

    @inlineCallbacks
    def test_roundTripRaw(self):
        """
        Every byte value goes through unchanged both ways once the guest has
        set raw mode.
        """
        sim = self.startSim()
        guest = self.guest(raw=True)
        host = yield self.connectHost(sim)
        payload = bytes(range(256)) * 16
        host.transport.write(payload)
        got = yield guest.readExactly(len(payload))
        self.assertEqual(got, payload)
        guest.write(payload)
        yield waitFor(lambda: len(host.received) >= len(payload), "the host to get the reply")
        self.assertEqual(bytes(host.received), payload)
        self.assertEqual(sim.counters.bytesFromHost, len(payload))
        self.assertEqual(sim.counters.bytesToGuest, len(payload))
        self.assertEqual(sim.counters.bytesToHost, len(payload))

    @inlineCallbacks
    def test_cookedByDefault(self):
        """
        The simulator does not set raw mode: a guest that does not either
        gets a cooked tty that echoes host input and turns LF into CRLF.
        """
        sim = self.startSim()
        guest = self.guest(raw=False)
        attrs = termios.tcgetattr(guest.fd)
        self.assertTrue(attrs[3] & termios.ICANON)
        self.assertTrue(attrs[3] & termios.ECHO)
        host = yield self.connectHost(sim)
        host.transport.write(b"ping\n")
        yield waitFor(lambda: host.received == b"ping\r\n", "the echo")
        line = yield guest.readExactly(5)
        self.assertEqual(line, b"ping\n")
        guest.write(b"pong\n")
        yield waitFor(lambda: host.received == b"ping\r\npong\r\n", "the reply")

    @inlineCallbacks
    def test_guestReopenKeepsPty(self):
        """
        The guest can close and reopen the device; the pty does not hang up.
        """
        sim = self.startSim()
        first = os.open(self.linkPath, os.O_RDWR | os.O_NOCTTY)
        os.close(first)
        guest = self.guest()
        host = yield self.connectHost(sim)
        host.transport.write(b"again")
        got = yield guest.readExactly(5)
        self.assertEqual(got, b"again")

    def test_stopIsIdempotent(self):
        """
        stop() can be called twice, and before start().
        """
        unstarted = VMSim(reactor, self.socketPath + "x", self.linkPath + "x", mode=self.mode)
        self.assertIsNone(self.successResultOf(unstarted.stop()))
        sim = self.startSim()
        first = sim.stop()
        second = sim.stop()
        return first.addCallback(lambda _: second)

    def test_linkExistsAsFile(self):
        """
        A regular file at the link path is left alone and start() fails.
        """
        with open(self.linkPath, "w") as f:
            f.write("precious")
        sim = VMSim(reactor, self.socketPath, self.linkPath, mode=self.mode)
        error = self.assertRaises(SimError, sim.start)
        self.assertIn("not a symlink", str(error))
        with open(self.linkPath) as f:
            self.assertEqual(f.read(), "precious")
        self.assertFalse(os.path.lexists(self.socketPath))

    @inlineCallbacks
    def test_cutEvery(self):
        """
        --cut-every closes the connection after N bytes through it, both
        ways; every connection counts afresh.
        """
        sim = self.startSim(faults=Faults(cutEvery=10))
        guest = self.guest()
        short = yield self.connectHost(sim)
        short.transport.write(b"abcd")
        got = yield guest.readExactly(4)
        self.assertEqual(got, b"abcd")
        yield self.disconnect(short)
        yield waitFor(lambda: not sim.hostConnected, "the disconnect")
        host = yield self.connectHost(sim)
        host.transport.write(b"0123456789abcdefghijklmno")
        yield host.lost
        got = yield guest.readExactly(10)
        self.assertEqual(got, b"0123456789")
        yield pause()
        guest.drain()
        self.assertEqual(bytes(guest.received), b"")
        self.assertEqual(sim.counters.cuts, 1)
        second = yield self.connectHost(sim)
        second.transport.write(b"12345")
        got = yield guest.readExactly(5)
        self.assertEqual(got, b"12345")
        guest.write(b"ABCDEFGH")
        yield second.lost
        self.assertEqual(bytes(second.received), b"ABCDE")
        self.assertEqual(sim.counters.cuts, 2)

    @inlineCallbacks
    def test_dropToGuestOnly(self):
        """
        --drop-rate 1 --fault-direction to-guest drops all host input and
        leaves guest output alone.
        """
        sim = self.startSim(faults=Faults(dropRate=1.0, direction=TO_GUEST))
        guest = self.guest()
        host = yield self.connectHost(sim)
        host.transport.write(b"x" * 1000)
        yield waitFor(lambda: sim.counters.bytesFromHost == 1000, "the host bytes")
        self.assertEqual(sim.counters.bytesToGuest, 0)
        self.assertEqual(sim.injector.stats[TO_GUEST].bytesDropped, 1000)
        guest.write(b"up")
        yield waitFor(lambda: host.received == b"up", "guest output")
        guest.drain()
        self.assertEqual(bytes(guest.received), b"")

    @inlineCallbacks
    def test_corruptToHost(self):
        """
        --corrupt-rate 1 flips one bit of every byte, as the seeded
        L{FaultInjector} does.
        """
        faults = Faults(seed=7, corruptRate=1.0, direction=TO_HOST)
        sim = self.startSim(faults=faults)
        guest = self.guest()
        host = yield self.connectHost(sim)
        payload = bytes(300)
        guest.write(payload)
        yield waitFor(lambda: len(host.received) == len(payload), "corrupted output")
        expected = FaultInjector(faults).mangle(TO_HOST, payload)
        self.assertEqual(bytes(host.received), expected)
        for byte in host.received:
            self.assertEqual(bin(byte).count("1"), 1)

    @inlineCallbacks
    def test_duplicateToGuest(self):
        """
        --dup-rate 1 with one-byte chunks sends every byte twice.
        """
        sim = self.startSim(faults=Faults(dupRate=1.0, chunk=1, direction=TO_GUEST))
        guest = self.guest()
        host = yield self.connectHost(sim)
        host.transport.write(b"abc")
        got = yield guest.readExactly(6)
        self.assertEqual(got, b"aabbcc")


class BhyveTests(CommonTestsMixin, TestCase):
    """
    bhyve mode.
    """

    mode = BHYVE

    @inlineCallbacks
    def test_secondClientClosed(self):
        """
        A second client is accepted and closed at once; the first one is
        still served.
        """
        sim = self.startSim()
        guest = self.guest()
        first = yield self.connectHost(sim)
        second = yield self.connectHost(sim)
        yield second.lost
        self.assertEqual(bytes(second.received), b"")
        self.assertEqual(sim.counters.clientsRefused, 1)
        self.assertEqual(sim.counters.clientsServed, 1)
        first.transport.write(b"still here")
        got = yield guest.readExactly(10)
        self.assertEqual(got, b"still here")
        self.assertFalse(first.isLost)

    @inlineCallbacks
    def test_outputDroppedWithoutClient(self):
        """
        Guest output made while no client is connected is dropped and
        counted; a later client gets only later output.
        """
        sim = self.startSim()
        guest = self.guest()
        guest.write(b"lost")
        yield waitFor(lambda: sim.counters.noClientDropped == 4, "the drop")
        host = yield self.connectHost(sim)
        guest.write(b"kept")
        yield waitFor(lambda: len(host.received) >= 4, "output")
        yield pause()
        self.assertEqual(bytes(host.received), b"kept")

    @inlineCallbacks
    def test_ringOverflowDrops(self):
        """
        Host data beyond the guest buffer is discarded, in chunks of up to
        2048 bytes, while the guest does not read; once it has read, there
        is room again.
        """
        sim = self.startSim(guestBuffer=8192)
        guest = self.guest()
        host = yield self.connectHost(sim)
        total = 40000
        host.transport.write(b"r" * total)
        yield waitFor(lambda: sim.counters.bytesFromHost == total, "the host bytes")
        dropped = sim.counters.ringDropped
        self.assertGreaterEqual(dropped, total - 8192)
        got = yield guest.readExactly(total - dropped)
        self.assertLessEqual(len(got), 8192)
        self.assertEqual(got, b"r" * len(got))
        yield pause()
        guest.drain()
        self.assertEqual(bytes(guest.received), b"")
        host.transport.write(b"s" * 4096)
        more = yield guest.readExactly(4096)
        self.assertEqual(more, b"s" * 4096)
        self.assertEqual(sim.counters.ringDropped, dropped)
        self.assertEqual(bytes(host.received), b"")

    @inlineCallbacks
    def test_ringCountsWhatThePtyHolds(self):
        """
        Host bytes already handed to the pty count against the guest buffer
        until the guest reads them, although the kernel buffers more than
        FIONREAD shows.
        """
        sim = self.startSim(guestBuffer=8192)
        guest = self.guest()
        host = yield self.connectHost(sim)
        for round in range(1, 7):
            host.transport.write(b"k" * 4096)
            yield waitFor(lambda: sim.counters.bytesFromHost == round * 4096, "the host bytes")
            yield pause(0.02)
        self.assertEqual(sim.counters.bytesToGuest, 8192)
        self.assertEqual(sim.counters.ringDropped, 4 * 4096)
        got = yield guest.readExactly(8192)
        self.assertEqual(got, b"k" * 8192)
        yield pause()
        guest.drain()
        self.assertEqual(bytes(guest.received), b"")

    @inlineCallbacks
    def test_defaultGuestBuffer(self):
        """
        By default the guest buffer is FreeBSD's tty queue at 115200 baud.
        """
        sim = self.startSim()
        self.assertEqual(sim.guestBuffer, DEFAULT_GUEST_BUFFER)
        self.assertEqual(DEFAULT_GUEST_BUFFER, 23040)
        self.guest()
        host = yield self.connectHost(sim)
        host.transport.write(b"d" * 60000)
        yield waitFor(lambda: sim.counters.bytesFromHost == 60000, "the host bytes")
        self.assertGreater(sim.counters.ringDropped, 0)
        self.assertLessEqual(sim.counters.bytesToGuest, DEFAULT_GUEST_BUFFER)

    def test_staleSocketRefused(self):
        """
        A leftover socket file makes start() fail with a clear error, as
        bhyve's bind does; nothing is created or removed.
        """
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(self.socketPath)
        stale.close()
        sim = VMSim(reactor, self.socketPath, self.linkPath, mode=BHYVE)
        error = self.assertRaises(SimError, sim.start)
        self.assertIn("already exists", str(error))
        self.assertNotIn("\n", str(error))
        self.assertTrue(os.path.exists(self.socketPath))
        self.assertFalse(os.path.lexists(self.linkPath))

    @inlineCallbacks
    def test_guestNotNotifiedOfHostDisconnect(self):
        """
        When the host leaves, nothing happens on the guest's tty: no hangup,
        no EOF, and writes still succeed (and are dropped).
        """
        sim = self.startSim()
        guest = self.guest()
        host = yield self.connectHost(sim)
        host.transport.write(b"x")
        yield guest.readExactly(1)
        before = termios.tcgetattr(guest.fd)
        host.transport.loseConnection()
        yield host.lost
        yield waitFor(lambda: not sim.hostConnected, "the simulator to see the disconnect")
        yield pause()
        poller = select.poll()
        poller.register(guest.fd, select.POLLIN | select.POLLPRI | select.POLLOUT)
        events = dict(poller.poll(0)).get(guest.fd, 0)
        self.assertEqual(events, select.POLLOUT)
        self.assertRaises(BlockingIOError, os.read, guest.fd, 1)
        self.assertEqual(termios.tcgetattr(guest.fd), before)
        guest.write(b"nobody")
        yield waitFor(lambda: sim.counters.noClientDropped == 6, "the drop")

    @inlineCallbacks
    def test_stalledHostStallsGuest(self):
        """
        A host client that stops reading stalls guest output (the guest's
        writes stop being accepted); nothing is lost, and output flows again
        once the host reads.
        """
        sim = self.startSim()
        guest = self.guest()
        host = yield self.connectHost(sim)
        host.transport.pauseProducing()
        chunk = b"g" * 65536
        written = 0
        idleRounds = 0
        for _ in range(400):
            progress = False
            while True:
                try:
                    written += os.write(guest.fd, chunk)
                    progress = True
                except BlockingIOError:
                    break
            idleRounds = 0 if progress else idleRounds + 1
            if idleRounds == 5:
                break
            yield pause(0.01)
        self.assertEqual(idleRounds, 5, "guest output never stalled")
        self.assertEqual(sim.counters.noClientDropped, 0)
        host.transport.resumeProducing()
        yield waitFor(lambda: len(host.received) == written, "the stalled output")
        self.assertEqual(sim.counters.bytesToHost, written)


class QemuTests(CommonTestsMixin, TestCase):
    """
    qemu mode.
    """

    mode = QEMU

    @inlineCallbacks
    def test_secondClientQueued(self):
        """
        A second client waits, unread and not closed, until the first leaves;
        then it is served.
        """
        sim = self.startSim()
        guest = self.guest()
        first = yield self.connectHost(sim)
        second = yield self.connectHost(sim)
        self.assertEqual(sim.counters.clientsQueued, 1)
        self.assertEqual(sim.clientsWaiting, 1)
        second.transport.write(b"two")
        first.transport.write(b"one")
        got = yield guest.readExactly(3)
        self.assertEqual(got, b"one")
        yield pause()
        guest.drain()
        self.assertEqual(bytes(guest.received), b"")
        self.assertFalse(second.isLost)
        first.transport.loseConnection()
        got = yield guest.readExactly(3)
        self.assertEqual(got, b"two")
        guest.write(b"reply")
        yield waitFor(lambda: second.received == b"reply", "the reply")
        self.assertEqual(bytes(first.received), b"")
        self.assertEqual(sim.counters.clientsServed, 2)
        self.assertEqual(sim.counters.clientsRefused, 0)

    @inlineCallbacks
    def test_outputHeldForNextClient(self):
        """
        Guest output made while no client is connected reaches the next
        client, before later output.
        """
        sim = self.startSim()
        guest = self.guest()
        guest.write(b"early")
        yield waitFor(lambda: sim.counters.bytesFromGuest == 5, "the guest output")
        host = yield self.connectHost(sim)
        guest.write(b"late")
        yield waitFor(lambda: len(host.received) >= 9, "the output")
        self.assertEqual(bytes(host.received), b"earlylate")
        self.assertEqual(sim.counters.noClientDropped, 0)

    @inlineCallbacks
    def test_heldOutputBounded(self):
        """
        Beyond the hold limit the simulator stops reading the guest, so the
        guest's writes block; the next client gets everything.
        """
        sim = self.startSim()
        sim.holdLimit = 4096
        guest = self.guest()
        written = 0
        blocked = False
        for _ in range(100):
            before = written
            while True:
                try:
                    written += os.write(guest.fd, b"h" * 4096)
                except BlockingIOError:
                    break
            if written == before:
                blocked = True
                break
            yield pause(0.02)
        self.assertTrue(blocked, "guest writes never blocked")
        self.assertLess(sim.counters.bytesFromGuest, written)
        host = yield self.connectHost(sim)
        yield waitFor(lambda: len(host.received) == written, "the held output")
        self.assertEqual(sim.counters.noClientDropped, 0)

    @inlineCallbacks
    def test_backpressureToGuest(self):
        """
        Host input is never dropped: while the guest does not read, the
        simulator stops reading the host; later everything arrives in order.
        """
        sim = self.startSim(guestBuffer=4096)
        guest = self.guest()
        host = yield self.connectHost(sim)
        payload = bytes(range(256)) * 800
        host.transport.write(payload)
        yield pause(0.1)
        self.assertLess(sim.counters.bytesFromHost, len(payload))
        got = yield guest.readExactly(len(payload))
        self.assertEqual(got, payload)
        self.assertEqual(sim.counters.ringDropped, 0)

    @inlineCallbacks
    def test_staleSocketReplaced(self):
        """
        A leftover socket file is unlinked and recreated, as QEMU does.
        """
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(self.socketPath)
        stale.close()
        sim = self.startSim()
        guest = self.guest()
        host = yield self.connectHost(sim)
        host.transport.write(b"fresh")
        got = yield guest.readExactly(5)
        self.assertEqual(got, b"fresh")

    def test_staleNonSocketRefused(self):
        """
        A regular file at the socket path is not removed, even in qemu mode.
        """
        with open(self.socketPath, "w") as f:
            f.write("precious")
        sim = VMSim(reactor, self.socketPath, self.linkPath, mode=QEMU)
        error = self.assertRaises(SimError, sim.start)
        self.assertIn("not a socket", str(error))
        self.assertTrue(os.path.isfile(self.socketPath))


class PtyMasterTests(TestCase):
    """
    The pty master reader on its own.
    """

    def openpty(self):
        """
        @return: a nonblocking pty master and a function that closes the
            slave (at the latest during cleanup).
        """
        master, slave = os.openpty()
        os.set_blocking(master, False)
        isOpen = [True]

        def closeSlave():
            if isOpen:
                isOpen.clear()
                os.close(slave)

        self.addCleanup(closeSlave)
        return master, slave, closeSlave

    @inlineCallbacks
    def test_hangupCloses(self):
        """
        With no slave open (EIO, or a hangup), the reader closes its fd and
        leaves the reactor instead of spinning.
        """
        master, slave, closeSlave = self.openpty()
        received = []
        pty = PtyMaster(reactor, master, received.append)
        self.addCleanup(pty.close)
        os.write(slave, b"before")
        pty.startReading()
        yield waitFor(lambda: received == [b"before"], "the data")
        closeSlave()
        yield waitFor(lambda: pty.fileno() == -1, "the reader to close")
        self.assertNotIn(pty, reactor.getReaders())
        self.assertEqual(received, [b"before"])

    def test_readErrors(self):
        """
        EAGAIN is no data yet; EIO is a lost connection.
        """
        master, slave, closeSlave = self.openpty()
        pty = PtyMaster(reactor, master, self.fail)
        self.addCleanup(pty.close)
        self.assertIsNone(pty.doRead())
        closeSlave()
        self.assertIsInstance(pty.doRead(), ConnectionLost)


class ArgumentTests(SynchronousTestCase):
    """
    The command line, in-process.
    """

    def setUp(self):
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def assertUsageError(self, argv):
        error = self.assertRaises(SystemExit, main, argv)
        self.assertEqual(error.code, 2)
        self.assertIn("usage: prokshy-vmsim", self.stderr.getvalue())

    def test_missingRequired(self):
        """
        --socket and --device-link are required.
        """
        self.assertUsageError(["--socket", "/tmp/x"])

    def test_badValues(self):
        """
        Out-of-range values are usage errors.
        """
        base = ["--socket", "s", "--device-link", "d"]
        for extra in (
            ["--mode", "xen"],
            ["--guest-buffer", "0"],
            ["--drop-rate", "1.5"],
            ["--corrupt-rate", "x"],
            ["--cut-every", "-1"],
            ["--fault-chunk", "0"],
            ["--fault-direction", "sideways"],
        ):
            self.assertUsageError(base + extra)

    def test_faultsFromArgs(self):
        """
        The fault options map onto L{Faults}.
        """
        args = makeParser().parse_args(
            "--socket s --device-link d --seed 5 --drop-rate 0.1 --corrupt-rate 0.2"
            " --dup-rate 0.3 --cut-every 99 --fault-chunk 64 --fault-direction to-host".split()
        )
        self.assertEqual(
            faultsFromArgs(args),
            Faults(
                seed=5,
                dropRate=0.1,
                corruptRate=0.2,
                dupRate=0.3,
                cutEvery=99,
                chunk=64,
                direction=TO_HOST,
            ),
        )
        defaults = makeParser().parse_args(["--socket", "s", "--device-link", "d"])
        self.assertEqual(faultsFromArgs(defaults), Faults())
        self.assertEqual((defaults.mode, defaults.guest_buffer), (BHYVE, 23040))

    def test_helpDocumentsFaults(self):
        """
        --help explains the fault semantics.
        """
        self.patch(sys, "stdout", io.StringIO())
        error = self.assertRaises(SystemExit, main, ["--help"])
        self.assertEqual(error.code, 0)
        text = sys.stdout.getvalue()
        for word in ("--cut-every", "--fault-chunk", "random.Random", "sent twice"):
            self.assertIn(word, text)

    def test_invalidConstructorArguments(self):
        """
        VMSim rejects unknown modes and empty guest buffers.
        """
        self.assertRaises(ValueError, VMSim, reactor, "s", "d", mode="xen")
        self.assertRaises(ValueError, VMSim, reactor, "s", "d", guestBuffer=0)


class SplitTests(SynchronousTestCase):
    """
    The simulator's parts: the pty side, the two channel policies and the
    command line, each in its own module; L{prokshy.sim.vmsim} keeps the
    public API.
    """

    def test_policiesDeclared(self):
        """
        Each mode is an L{IChannelPolicy}, chosen by name.
        """
        from zope.interface.verify import verifyObject

        from prokshy.sim.policy import BhyvePolicy, IChannelPolicy, QemuPolicy, policyFor

        for mode, cls in [(BHYVE, BhyvePolicy), (QEMU, QemuPolicy)]:
            sim = VMSim(reactor, "s", "d", mode=mode)
            self.assertIsInstance(sim.policy, cls)
            self.assertTrue(verifyObject(IChannelPolicy, sim.policy))
            self.assertEqual(sim.policy.mode, mode)
        self.assertRaises(ValueError, policyFor, "xen", None)

    def test_publicAPI(self):
        """
        What the demo, the tests, the bench and the console script
        (C{prokshy.sim.vmsim:main}) import from L{prokshy.sim.vmsim} is there.
        """
        import prokshy.sim.cli
        import prokshy.sim.vmsim as vmsim

        self.assertIs(vmsim.main, prokshy.sim.cli.main)
        self.assertIs(vmsim.makeParser, prokshy.sim.cli.makeParser)
        for name in vmsim.__all__:
            self.assertTrue(hasattr(vmsim, name), name)

    def test_cliImportsNoSimulator(self):
        """
        The command line module imports neither the simulator nor a reactor
        until it runs.
        """
        code = (
            "import sys, prokshy.sim.cli\n"
            "print([m for m in ('prokshy.sim.vmsim', 'prokshy.sim.pty',"
            " 'twisted.internet.reactor') if m in sys.modules])\n"
        )
        root = os.path.dirname(os.path.dirname(os.path.abspath(prokshy.__file__)))
        env = dict(os.environ, PYTHONPATH=root)
        import subprocess

        output = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, check=True
        ).stdout
        self.assertEqual(output.strip(), b"[]")


class _Child(ProcessProtocol):
    def __init__(self):
        self.ended = Deferred()
        self.stderr = b""

    def errReceived(self, data):
        self.stderr += data

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


class MainProcessTests(TestCase):
    """
    C{python -m prokshy.sim.vmsim} as a real process.
    """

    def setUp(self):
        self.dir = _shortTempDir(self)
        self.socketPath = os.path.join(self.dir, "s")
        self.linkPath = os.path.join(self.dir, "dev")

    def spawn(self, *extra):
        child = _Child()
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(prokshy.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "prokshy.sim.vmsim"]
        argv += ["--socket", self.socketPath, "--device-link", self.linkPath, *extra]
        process = reactor.spawnProcess(child, sys.executable, argv, env=env)

        def kill():
            if process.pid is not None:
                process.signalProcess("KILL")
                return child.ended
            return None

        self.addCleanup(kill)
        return process, child

    @inlineCallbacks
    def test_servesUntilSIGTERM(self):
        """
        The process creates the socket and link, serves, and on SIGTERM
        exits 0 having removed both.
        """
        process, child = self.spawn("--mode", "qemu")
        yield waitFor(
            lambda: os.path.islink(self.linkPath) and os.path.exists(self.socketPath),
            "the socket and link",
            timeout=10,
        )
        client = socket.socket(socket.AF_UNIX)
        self.addCleanup(client.close)
        client.connect(self.socketPath)
        guest = Guest(self, self.linkPath, raw=True)
        client.sendall(b"hi")
        got = yield guest.readExactly(2, timeout=5)
        self.assertEqual(got, b"hi")
        process.signalProcess("TERM")
        code = yield child.ended
        self.assertEqual(code, 0, child.stderr)
        self.assertFalse(os.path.lexists(self.socketPath))
        self.assertFalse(os.path.lexists(self.linkPath))
        self.assertIn(b"client 1 connected", child.stderr)

    @inlineCallbacks
    def test_staleSocketExits1(self):
        """
        A stale socket in bhyve mode is a one-line error and exit status 1.
        """
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(self.socketPath)
        stale.close()
        process, child = self.spawn()
        code = yield child.ended
        self.assertEqual(code, 1)
        lines = child.stderr.decode().strip().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("already exists", lines[0])
        self.assertFalse(os.path.lexists(self.linkPath))

    @inlineCallbacks
    def test_usageErrorExits2(self):
        """
        A usage error exits 2 without creating anything.
        """
        process, child = self.spawn("--mode", "xen")
        code = yield child.ended
        self.assertEqual(code, 2)
        self.assertIn(b"usage:", child.stderr)
        self.assertFalse(os.path.lexists(self.socketPath))

