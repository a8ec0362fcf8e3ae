"""
Early data (docs/protocol.md section 9.2, issue 10): an opener sends OPEN,
its first data and EOF in one go, without waiting for the ACCEPT, to a peer
whose hello has C{early_data}; the acceptor holds them until it accepts,
counts them against the stream's credit, and drops them if it refuses.
Old peers (no C{early_data}) keep the old exchange.

Two real Links and Muxes over the in-memory channel; causality is read from
the order in which each side received its frames.
"""

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from prokshy.link.session import LinkConfig
from prokshy.streams.mux import Mux
from prokshy.streams.stream import EARLY_DATA, EARLY_WINDOW, StreamRefused
from prokshy.testing import FrameTap, LinkPair, MemoryVM, deterministicNonces
from prokshy.wire import frames

from tests.unit.test_streams import Collector


class _SharedTap(FrameTap):
    """
    A L{FrameTap} that also logs (side, type, stream) into a log shared by
    both sides: the order in which the two sides received their frames.
    """

    def __init__(self, listener, side, log):
        FrameTap.__init__(self, listener)
        self.side = side
        self.log = log

    def frameReceived(self, frame):
        self.log.append((self.side, frames.NAMES.get(frame.type, frame.type), frame.stream))
        FrameTap.frameReceived(self, frame)


class EarlyDataTests(unittest.SynchronousTestCase):
    def setUp(self):
        deterministicNonces(self, seed=7)
        self.log = []

    def connect(self, handler, early=EARLY_WINDOW, advertise=None, window=256 * 1024, maxPayload=4096):
        """
        A host Mux and a guest Mux taking C{early} bytes of early data, its
        hello saying C{advertise} (default: C{early}; None: no field).
        """
        self.hostMux = Mux("host", None)
        self.guestMux = Mux("guest", handler, window=window, earlyData=early)
        self.hostTap = _SharedTap(self.hostMux, "host", self.log)
        self.guestTap = _SharedTap(self.guestMux, "guest", self.log)
        advertise = early if advertise is None else advertise
        extra = {EARLY_DATA: advertise} if advertise else {}
        self.pair = LinkPair(
            self.hostTap, self.guestTap,
            hostConfig=LinkConfig(maxPayload=maxPayload),
            guestConfig=LinkConfig(maxPayload=maxPayload, extra=extra),
        )
        self.addCleanup(self.pair.stop)
        self.pair.connect()

    def runUntil(self, until, duration=60):
        self.assertTrue(self.pair.run(until=until, duration=duration), "timed out")

    def open(self, protocol, data, eof=True):
        results = []
        self.hostMux.openStream("exec", {"name": "x"}, protocol, data=data, eof=eof).addBoth(
            results.append
        )
        self.runUntil(lambda: results)
        return results[0]

    def index(self, side, ftype, sid=1):
        return self.log.index((side, ftype, sid))

    def test_beforeAccept(self):
        """
        OPEN, DATA and EOF leave together: the guest has them all before
        the host has the ACCEPT, and its protocol gets them once accepted,
        in order.
        """
        collector = Collector()
        self.connect(lambda stream: collector)
        stream = self.open(Collector(), b"hello stdin")
        self.runUntil(lambda: ("eof",) in collector.events)
        self.assertEqual(collector.data, b"hello stdin")
        accept = self.index("host", "ACCEPT")
        self.assertLess(self.index("guest", "DATA"), accept)
        self.assertLess(self.index("guest", "EOF"), accept)
        self.assertEqual(stream.bytesOut, len(b"hello stdin"))
        # Our side is half-closed: a write now is refused quietly (after EOF).
        self.assertFalse(stream.ended)

    def test_oldPeerWaits(self):
        """
        A peer whose hello has no C{early_data} (and which ignores early
        frames) gets the data only after its ACCEPT, as before.
        """
        collector = Collector()
        self.connect(lambda stream: collector, early=0)
        self.assertEqual(self.hostMux.peerEarlyData, 0)
        self.open(Collector(), b"late stdin")
        self.runUntil(lambda: ("eof",) in collector.events)
        self.assertEqual(collector.data, b"late stdin")
        accept = self.index("host", "ACCEPT")
        self.assertGreater(self.index("guest", "DATA"), accept)
        self.assertGreater(self.index("guest", "EOF"), accept)

    def test_beyondTheEarlyWindowWaits(self):
        """
        Data beyond the early window waits for the ACCEPT, then goes within
        the ACCEPT's credit; all of it arrives, in order.
        """
        collector = Collector()
        self.connect(lambda stream: collector)
        data = bytes(range(256)) * 200  # 51200 bytes
        stream = self.open(Collector(), data)
        self.runUntil(lambda: ("eof",) in collector.events)
        self.assertEqual(collector.data, data)
        self.assertEqual(stream.earlySent, EARLY_WINDOW)
        self.assertEqual(stream.bytesOut, len(data))
        accept = self.index("host", "ACCEPT")
        self.assertLess(self.index("guest", "DATA"), accept)
        self.assertGreater(self.index("guest", "EOF"), accept)

    def test_earlyBytesSpendCredit(self):
        """
        The early bytes count against the ACCEPT's window: to a paused
        acceptor with a 16 KiB window, 16 KiB early and 16 KiB written
        after the ACCEPT leave only the first 16 KiB sent (more would be a
        flow-control reset).
        """
        collector = Collector(pause=True)
        self.connect(lambda stream: collector, window=EARLY_WINDOW)
        stream = self.open(Collector(), b"a" * EARLY_WINDOW, eof=False)
        stream.write(b"b" * EARLY_WINDOW)
        self.pair.run(duration=5)
        self.assertFalse(stream.ended)
        self.assertEqual(stream.bytesOut, EARLY_WINDOW)
        [guestStream] = self.guestMux.streams.values()
        self.assertEqual(guestStream.bytesIn, EARLY_WINDOW)
        self.assertEqual(self.hostTap.of(frames.RESET), [])
        collector.transport.resumeProducing()
        stream.writeEof()
        self.runUntil(lambda: ("eof",) in collector.events)
        self.assertEqual(collector.data, b"a" * EARLY_WINDOW + b"b" * EARLY_WINDOW)

    def test_tooMuchEarlyIsRefused(self):
        """
        More early data than the acceptor takes (a hello that promised
        more than its Mux holds) refuses the open C{flow-control}; the
        handler's protocol never connects.
        """
        made = []
        deferred = Deferred()

        def handler(stream):
            made.append(stream)
            return deferred  # answered later, as a relay does

        self.connect(handler, early=1024, advertise=EARLY_WINDOW)
        failure = self.open(Collector(), b"x" * 4000)
        failure.trap(StreamRefused)
        self.assertEqual(failure.value.code, "flow-control")
        collector = Collector()
        deferred.callback(collector)
        self.assertFalse(collector.made)
        self.assertEqual(self.guestMux.streams, {})

    def test_refusedDropsEarly(self):
        """
        REFUSE discards the early data: the acceptor neither delivers it
        nor answers its DATA frames with RESET unknown-stream.
        """

        def handler(stream):
            raise StreamRefused("no-such-command", "no x here")

        self.connect(handler, maxPayload=1024)
        failure = self.open(Collector(), b"y" * 5000)
        failure.trap(StreamRefused)
        self.assertEqual(failure.value.code, "no-such-command")
        self.pair.run(duration=2)
        self.assertGreater(len(self.guestTap.of(frames.DATA, 1)), 1)
        self.assertEqual(self.hostTap.of(frames.RESET), [])

    def test_deferredAcceptGetsEarly(self):
        """
        An open answered later (the daemon's relay) still gets the early
        data and EOF, in order, once it accepts.
        """
        deferred = Deferred()
        self.connect(lambda stream: deferred)
        results = []
        self.hostMux.openStream("exec", {}, Collector(), data=b"for later", eof=True).addBoth(
            results.append
        )
        self.pair.run(duration=1)
        self.assertEqual(results, [])
        collector = Collector()
        deferred.callback(collector)
        self.runUntil(lambda: results and ("eof",) in collector.events)
        self.assertEqual(collector.data, b"for later")


class ExecPipelinedTests(unittest.SynchronousTestCase):
    """
    The client API's exec through the real guest and host protocols: stdin
    and EOF go with the OPEN, and a queued exec gets them when it starts.
    """

    def setUp(self):
        deterministicNonces(self, seed=11)

    def vm(self, **kw):
        vm = MemoryVM({"cat": lambda stdin: (0, stdin, b""), "upper": lambda stdin: (0, stdin.upper(), b"")}, **kw)
        self.addCleanup(vm.stop)
        self.session = vm.connect()
        log = []
        self.log = log
        self.guestTap = _SharedTap(vm.guest.mux, "guest", log)
        self.hostTap = _SharedTap(vm.host.mux, "host", log)
        vm.guest.link.listener = self.guestTap
        vm.host.link.listener = self.hostTap
        return vm

    def test_execOneWrite(self):
        """
        The guest has the exec's stdin and EOF before the host has its
        ACCEPT.
        """
        vm = self.vm()
        self.assertEqual(vm.host.mux.peerEarlyData, EARLY_WINDOW)
        result = vm.wait(self.session.exec("cat", stdin=b"piped"))
        self.assertEqual((result.exitStatus, result.stdout), (0, b"piped"))
        accept = self.log.index(("host", "ACCEPT", 1))
        self.assertLess(self.log.index(("guest", "DATA", 1)), accept)
        self.assertLess(self.log.index(("guest", "EOF", 1)), accept)

    def test_execStreamWholeStdin(self):
        """
        C{execStream(stdin=...)} (the CLI's whole input, not --stdin) sends
        it and the EOF with the OPEN too; the command gets it all.
        """
        vm = self.vm()
        out = []
        running = vm.wait(self.session.execStream("upper", out.append, lambda d: None, stdin=b"whole"))
        result = vm.wait(running.result)
        self.assertEqual((result.exitStatus, b"".join(out)), (0, b"WHOLE"))
        accept = self.log.index(("host", "ACCEPT", 1))
        self.assertLess(self.log.index(("guest", "DATA", 1)), accept)
        self.assertLess(self.log.index(("guest", "EOF", 1)), accept)

    def test_queuedExecKeepsEarlyStdin(self):
        """
        With every slot taken, an exec waits (accepted); its early stdin is
        held and reaches the command when it starts.
        """
        vm = self.vm(maxConcurrency=1, maxQueue=4)
        results = [self.session.exec(name, stdin=b"n%d" % i) for i, name in enumerate(["cat", "upper", "cat"])]
        got = [vm.wait(d) for d in results]
        self.assertEqual([r.stdout for r in got], [b"n0", b"N1", b"n2"])

    def test_refusedKeepsMessage(self):
        """
        A refused exec fails as before (the code and message of the
        refusal), early data or not.
        """
        vm = self.vm()
        failure = self.assertRaises(StreamRefused, vm.wait, self.session.exec("nope", stdin=b"z"))
        self.assertEqual(failure.code, "no-such-command")
        self.assertEqual(self.hostTap.of(frames.RESET), [])

