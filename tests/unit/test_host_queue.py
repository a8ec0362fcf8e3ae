"""
Unit tests of the daemon's per-VM open queue (L{prokshy.host.queue}) over a
real host/guest L{Mux} pair joined by an in-memory channel and driven by a
L{task.Clock}: a fake guest that accepts at most C{capacity} exec streams
and refuses the rest as C{busy}, as the real agent does beyond
C{--max-concurrency} + C{--max-queue}.
"""

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase

from prokshy.host.queue import IDLE_RETRIES, OpenQueue
from prokshy.host.vm import VMUnavailable
from prokshy.link.session import LinkConfig
from prokshy.streams.mux import Mux
from prokshy.streams.stream import StreamRefused
from prokshy.testing import LinkPair, deterministicNonces


class _GuestExec(Protocol):
    def __init__(self, guest, name):
        self.guest = guest
        self.name = name

    def finish(self):
        self.transport.write(self.name.encode())
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.guest.running.remove(self)


class _Guest:
    """
    A guest's open handler: at most C{capacity} exec streams at once.
    """

    def __init__(self, capacity):
        self.capacity = capacity
        self.running = []
        self.refused = 0
        self.order = []

    def __call__(self, stream):
        if stream.kind != "exec":
            return _Info()
        if len(self.running) >= self.capacity:
            self.refused += 1
            raise StreamRefused("busy", "%d running (the limit)" % (len(self.running),))
        p = _GuestExec(self, stream.args["name"])
        self.running.append(p)
        self.order.append(stream.args["name"])
        return p


class _Info(Protocol):
    def connectionMade(self):
        self.transport.write(b"{}")
        self.transport.loseConnection()


class _Client(Protocol):
    def __init__(self):
        self.data = b""
        self.reason = None

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.reason = reason


class _Proto:
    def __init__(self, mux):
        self.mux = mux


class _VM:
    """
    What the queue needs of a L{prokshy.host.vm.VMConnection}.
    """

    name = "vm1"

    def __init__(self, mux, clock, **kwargs):
        self.protocol = _Proto(mux)
        self.queue = OpenQueue(self, clock, **kwargs)
        mux.whenUp(self.queue.sessionUp)
        mux.whenDown(self.queue.sessionDown)

    @property
    def mux(self):
        if not self.protocol.mux.connected:
            raise VMUnavailable(self.name, "no session")
        return self.protocol.mux


class QueueTests(SynchronousTestCase):
    def setUp(self):
        deterministicNonces(self)

    def connect(self, capacity, advertise=None, guestPayload=16384, **kwargs):
        self.guest = _Guest(capacity)
        self.hostMux = Mux("host")
        self.guestMux = Mux("guest", openHandler=self.guest)
        extra = {}
        if advertise is not None:
            extra = {"max_concurrency": advertise[0], "max_queue": advertise[1]}
        self.pair = LinkPair(
            self.hostMux,
            self.guestMux,
            hostConfig=LinkConfig(window=1 << 18, maxPayload=16384),
            guestConfig=LinkConfig(window=1 << 18, maxPayload=guestPayload, extra=extra),
        )
        self.vm = _VM(self.hostMux, self.pair.clock, **kwargs)
        self.pair.connect()
        self.addCleanup(self.pair.stop)
        return self.vm.queue

    def advance(self, seconds=0.5):
        self.pair.run(duration=seconds)

    def open(self, queue, client, name, results):
        proto = _Client()
        d = queue.open(client, "exec", {"name": name}, proto)
        d.addCallbacks(lambda stream: results.append(("ok", name)),
                       lambda f: results.append((getattr(f.value, "code", f.type.__name__), name)))
        return proto, d

    def finishAll(self, rounds=100):
        """
        Finish the guest's commands, oldest first, until none is left.
        """
        for _ in range(rounds):
            if not self.guest.running:
                return
            self.guest.running[0].finish()
            self.advance(0.05)

    def test_busyRetriedAndLimitLearned(self):
        """
        Opens beyond what the guest takes are refused busy by the guest;
        the queue re-queues them, learns the limit, and sends each again
        when a command ends: every open is served, none fails.
        """
        queue = self.connect(capacity=3)
        results, protos = [], []
        for i in range(10):
            protos.append(self.open(queue, "client%d" % (i,), "c%d" % (i,), results)[0])
        self.advance()
        self.assertEqual(queue.limit, 3)
        self.assertEqual(queue.inFlight, 3)
        self.assertEqual(queue.waiting, 7)
        self.assertEqual(queue.stats["retried"], 7)
        self.finishAll()
        self.assertEqual(sorted(results), sorted(("ok", "c%d" % (i,)) for i in range(10)))
        # the ones refused once went first, oldest first
        self.assertEqual(self.guest.order, ["c%d" % (i,) for i in range(10)])
        self.assertEqual([p.data for p in protos], [b"c%d" % (i,) for i in range(10)])
        # after learning, nothing more was refused
        self.assertEqual(self.guest.refused, 7)
        self.assertEqual((queue.inFlight, queue.waiting), (0, 0))

    def test_advertisedLimit(self):
        """
        A guest hello with C{max_concurrency} and C{max_queue} sets the
        limit from the start: no open is ever refused.
        """
        queue = self.connect(capacity=3, advertise=(2, 1))
        self.assertEqual(queue.limit, 3)
        results = []
        for i in range(10):
            self.open(queue, "c", "c%d" % (i,), results)
        self.advance()
        self.assertEqual(queue.inFlight, 3)
        self.finishAll()
        self.assertEqual(len(results), 10)
        self.assertEqual(self.guest.refused, 0)

    def test_roundRobin(self):
        """
        Waiting opens are served round-robin across clients: a client with
        many requests does not push the others behind all of its own.
        """
        queue = self.connect(capacity=1, advertise=(1, 0))
        results = []
        for i in range(6):
            self.open(queue, "A", "a%d" % (i,), results)
        self.open(queue, "B", "b0", results)
        self.open(queue, "C", "c0", results)
        self.open(queue, "B", "b1", results)
        self.advance()
        self.finishAll()
        self.assertEqual(self.guest.order, ["a0", "a1", "b0", "c0", "a2", "b1", "a3", "a4", "a5"])

    def test_roundRobinAfterBusy(self):
        """
        Before the limit is known, a greedy client's burst is sent and
        mostly refused busy; the refused opens are retried round-robin
        across clients too, so the others are not left behind all of it.
        """
        queue = self.connect(capacity=2)
        results = []
        for i in range(8):
            self.open(queue, "A", "a%d" % (i,), results)
        self.open(queue, "B", "b0", results)
        self.open(queue, "C", "c0", results)
        self.advance()
        self.assertEqual(queue.limit, 2)
        self.finishAll()
        self.assertEqual(self.guest.order, ["a0", "a1", "a2", "b0", "c0", "a3", "a4", "a5", "a6", "a7"])

    def test_boundedWaiting(self):
        """
        Beyond C{maxWaiting} waiting opens, more are refused busy at once,
        naming the VM.
        """
        queue = self.connect(capacity=1, advertise=(1, 0), maxWaiting=3)
        results = []
        for i in range(6):
            self.open(queue, "c%d" % (i,), "x%d" % (i,), results)
        self.assertEqual(results, [("busy", "x4"), ("busy", "x5")])
        self.assertEqual(queue.waiting, 3)
        failure = []
        queue.open("z", "exec", {"name": "y"}, _Client()).addErrback(failure.append)
        self.assertIn("vm vm1 busy", failure[0].value.message)

    def test_boundedWaitingBytes(self):
        """
        The waiting opens' arguments are bounded in bytes too.
        """
        queue = self.connect(capacity=1, advertise=(1, 0), maxWaitingBytes=2000)
        results = []
        for i in range(6):
            proto = _Client()
            d = queue.open("c%d" % (i,), "exec", {"name": "x%d" % (i,), "pad": "p" * 500}, proto)
            d.addErrback(lambda f: results.append(f.value.code))
        self.assertEqual(results, ["busy", "busy"])  # 3 waiting: 3 x ~550 bytes

    def test_cancelWaiting(self):
        """
        Cancelling a waiting open withdraws it: it is never sent.
        """
        queue = self.connect(capacity=1, advertise=(1, 0))
        results = []
        self.open(queue, "a", "a0", results)
        _, d = self.open(queue, "b", "b0", results)
        self.open(queue, "c", "c0", results)
        d.cancel()
        self.assertEqual(queue.waiting, 1)
        self.advance()
        self.finishAll()
        self.assertEqual(self.guest.order, ["a0", "c0"])
        self.assertEqual((queue.inFlight, queue.waiting), (0, 0))

    def test_cancelSent(self):
        """
        Cancelling an open already sent resets the stream once the guest
        accepts it; its slot is free again.
        """
        queue = self.connect(capacity=2)
        results = []
        _, d = self.open(queue, "a", "a0", results)
        d.cancel()
        self.advance()
        self.assertEqual(self.guest.running, [])
        self.assertEqual(queue.inFlight, 0)

    def test_busyWithNothingOfOursRunning(self):
        """
        A guest that is busy while none of our commands runs is asked again
        a few times, then the open is refused busy.
        """
        queue = self.connect(capacity=0)
        results = []
        self.open(queue, "a", "a0", results)
        self.advance(10)
        self.assertEqual(results, [("busy", "a0")])
        self.assertEqual(self.guest.refused, IDLE_RETRIES + 1)
        self.assertEqual(self.pair.clock.getDelayedCalls() and queue._retryCall, None)

    def test_busyThenFree(self):
        """
        A guest busy with something else frees up: the retried open runs.
        """
        queue = self.connect(capacity=0)
        results = []
        self.open(queue, "a", "a0", results)
        self.advance(0.3)
        self.guest.capacity = 1
        self.advance(1)
        self.assertEqual(results, [("ok", "a0")])

    def test_sessionDown(self):
        """
        When the session ends, waiting opens fail with the reason, and the
        counts are back to zero.
        """
        queue = self.connect(capacity=1, advertise=(1, 0))
        results = []
        first, _ = self.open(queue, "a", "a0", results)
        self.open(queue, "b", "b0", results)
        self.advance()
        self.pair.host.goodbye("testing")
        self.assertEqual(results, [("ok", "a0"), ("vm-unavailable", "b0")])
        self.assertEqual((queue.inFlight, queue.waiting), (0, 0))

    def test_tooBig(self):
        """
        An open whose arguments the guest would not take is refused
        C{too-big} at once, the mux keeps no pending entry, and the log has
        one line however many come.
        """
        from twisted.logger import capturedLogs

        queue = self.connect(capacity=5, guestPayload=1024)
        results = []
        with capturedLogs() as events:
            for i in range(100):
                proto = _Client()
                d = queue.open("a", "exec", {"name": "x", "pad": "p" * 2000}, proto)
                d.addErrback(lambda f: results.append(f.value))
        self.assertEqual([e.code for e in results], ["too-big"] * 100)
        self.assertIn("vm vm1 takes at most 1024", results[0].message)
        self.assertEqual(self.hostMux._pending, {})
        self.assertEqual(len([e for e in events if "too big" in e.get("log_format", "")]), 1)
        self.assertEqual(queue.stats["too_big"], 100)

    def test_infoNotLimited(self):
        """
        Only exec opens are limited.
        """
        queue = self.connect(capacity=1, advertise=(1, 0))
        results = []
        self.open(queue, "a", "a0", results)
        proto = _Client()
        queue.open("a", "info", {"name": "i"}, proto).addCallback(lambda s: results.append("info"))
        self.advance()
        self.assertIn("info", results)
        self.assertEqual(queue.inFlight, 1)

    def test_streamEndFreesSlot(self):
        """
        A stream that ends in any way (reset by the client here) frees its
        slot for the next waiting open.
        """
        queue = self.connect(capacity=1, advertise=(1, 0))
        results = []
        streams = []
        proto = _Client()
        queue.open("a", "exec", {"name": "a0"}, proto).addCallback(streams.append)
        self.open(queue, "b", "b0", results)
        self.advance()
        streams[0].abort("cancelled", "test")
        self.advance()
        self.assertEqual(results, [("ok", "b0")])
        self.assertFalse(proto.reason.check(ConnectionDone))

    def test_muxForgetsAnOpenItCouldNotSend(self):
        """
        L{Mux.openStream} with arguments larger than the peer takes raises,
        and keeps no pending entry for it (each one used to leak, with the
        stream, its protocol and the arguments).
        """
        self.connect(capacity=1, guestPayload=1024)
        for _ in range(10):
            self.assertRaises(ValueError, self.hostMux.openStream, "exec", {"name": "x" * 2000}, _Client())
        self.assertEqual(self.hostMux._pending, {})
