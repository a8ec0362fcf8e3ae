"""
Tests for L{prokshy.streams}: the stream table (L{Mux}) and the stream
transport (L{Stream}), over two Links joined by the in-memory
L{prokshy.testing.LossyChannel}.
"""

import io

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from prokshy.link.session import NotConnected, SessionEnded
from prokshy.streams.interfaces import IExecStreamProtocol, ISignalStreamProtocol, IStreamProtocol
from prokshy.streams.mux import DEFAULT_WINDOW, Mux
from prokshy.streams.stream import (
    Stream,
    StreamAddress,
    StreamError,
    StreamRefused,
    StreamReset,
    decodeJSON,
    encodeJSON,
)
from prokshy.wire import frames
from prokshy.testing import FrameTap, LinkPair, deterministicNonces


@implementer(IStreamProtocol, IExecStreamProtocol, ISignalStreamProtocol)
class Collector(Protocol):
    """
    Records everything a stream delivers.

    @param pause: pause the stream (stop consuming) as soon as it connects.
    @param echo: write every DATA back.
    @param onEof: called with the protocol when EOF arrives.
    """

    def __init__(self, pause=False, echo=False, onEof=None, onConnect=None):
        self.events = []
        self.reason = None
        self.pause = pause
        self.echo = echo
        self.onEof = onEof
        self.onConnect = onConnect
        self.made = False

    def connectionMade(self):
        self.made = True
        if self.pause:
            self.transport.pauseProducing()
        if self.onConnect is not None:
            self.onConnect(self)

    def dataReceived(self, data):
        self.events.append(("data", data))
        if self.echo:
            self.transport.write(data)

    def stderrReceived(self, data):
        self.events.append(("stderr", data))

    def eofReceived(self):
        self.events.append(("eof",))
        if self.onEof is not None:
            self.onEof(self)

    def exitReceived(self, status):
        self.events.append(("exit", status))

    def signalReceived(self, status):
        self.events.append(("signal", status))

    def connectionLost(self, reason):
        self.reason = reason

    def _joined(self, kind):
        return b"".join(e[1] for e in self.events if e[0] == kind)

    @property
    def data(self):
        return self._joined("data")

    @property
    def stderr(self):
        return self._joined("stderr")

    @property
    def done(self):
        return self.reason is not None


@implementer(IPushProducer)
class FakeProducer:
    """
    A push producer that records what its consumer asks of it.
    """

    def __init__(self):
        self.events = []

    def pauseProducing(self):
        self.events.append("pause")

    def resumeProducing(self):
        self.events.append("resume")

    def stopProducing(self):
        self.events.append("stop")


Tap = FrameTap


def pattern(n, seed=0):
    return bytes((i * 131 + seed) % 256 for i in range(n))


class StreamTestCase(unittest.SynchronousTestCase):
    def setUp(self):
        deterministicNonces(self, seed=3)

    def connect(self, guestHandler, hostHandler=None, window=DEFAULT_WINDOW, **options):
        self.hostMux = Mux("host", hostHandler, window=window)
        self.guestMux = Mux("guest", guestHandler, window=window)
        self.hostTap, self.guestTap = Tap(self.hostMux), Tap(self.guestMux)
        self.pair = LinkPair(self.hostTap, self.guestTap, **options)
        self.addCleanup(self.pair.stop)
        self.pair.connect()
        return self.pair

    def runUntil(self, until, duration=120):
        self.assertTrue(self.pair.run(until=until, duration=duration), "timed out")

    def open(self, mux, kind, args, protocol):
        """
        Open a stream and run until it is answered; return the L{Stream}
        or the L{Failure}.
        """
        results = []
        mux.openStream(kind, args, protocol).addBoth(results.append)
        self.runUntil(lambda: results)
        return results[0]


class OpenTests(StreamTestCase):
    def test_openAccept(self):
        """
        The host opens odd ids; the guest's open handler sees the kind and
        the arguments, and both sides get connected transports.
        """
        accepted = []

        def handler(stream):
            accepted.append(stream)
            return Collector()

        self.connect(handler)
        first = Collector()
        stream = self.open(self.hostMux, "exec", {"name": "uptime", "n": 2}, first)
        self.assertIsInstance(stream, Stream)
        self.assertTrue(first.made)
        self.assertIs(first.transport, stream)
        [remote] = accepted
        self.assertEqual(
            (remote.id, remote.kind, remote.args), (1, "exec", {"name": "uptime", "n": 2})
        )
        self.assertTrue(remote.protocol.made)
        self.assertEqual(stream.getPeer(), StreamAddress("exec", 1))
        self.assertEqual(stream.getHost(), StreamAddress("exec", 1))
        second = self.open(self.hostMux, "info", {}, Collector())
        self.assertEqual(second.id, 3)
        self.assertEqual(sorted(self.guestMux.streams), [1, 3])
        self.assertEqual(sorted(self.hostMux.streams), [1, 3])

    def test_guestOpens(self):
        """
        The guest opens even ids.
        """
        self.connect(None, hostHandler=lambda stream: Collector())
        stream = self.open(self.guestMux, "event", {}, Collector())
        self.assertEqual(stream.id, 2)
        self.assertEqual(self.open(self.guestMux, "event", {}, Collector()).id, 4)

    def test_refused(self):
        """
        An open handler raising L{StreamRefused} refuses the stream; the
        opener's Deferred fails with the code and message.
        """

        def handler(stream):
            raise StreamRefused("no-such-command", "no %s here" % (stream.args["name"],))

        self.connect(handler)
        result = self.open(self.hostMux, "exec", {"name": "nope"}, Collector())
        result.trap(StreamRefused)
        refusal = result.value
        self.assertEqual((refusal.code, refusal.message), ("no-such-command", "no nope here"))
        self.assertEqual(str(result.value), "no-such-command: no nope here")
        self.assertEqual((self.hostMux.streams, self.guestMux.streams), ({}, {}))

    def test_resetAnsweringOpen(self):
        """
        A peer that answers an OPEN with RESET (the spec says REFUSE) fails
        the open with its code instead of leaving it pending forever.
        """
        self.connect(lambda stream: Collector())
        results = []
        self.hostMux.openStream("exec", {"name": "x"}, Collector()).addBoth(results.append)
        # The guest's mux answers the OPEN with a RESET instead of a REFUSE.
        self.guestMux._remoteOpen = lambda frame: self.guestMux.send(
            frames.RESET, frame.stream, encodeJSON({"code": "nope", "message": "reset"})
        )
        self.runUntil(lambda: results)
        results[0].trap(StreamRefused)
        self.assertEqual(results[0].value.code, "nope")
        self.assertEqual(self.hostMux.streams, {})

    def test_idsExhausted(self):
        """
        Stream ids are 32 bits and never reused in a session: once they are
        used up, opening fails at once with a clear error, and the session
        goes on.
        """
        self.connect(lambda stream: Collector())
        self.hostMux._nextId = 0xFFFFFFFF
        last = self.open(self.hostMux, "info", {}, Collector())
        self.assertEqual(last.id, 0xFFFFFFFF)
        error = self.assertRaises(StreamError, self.hostMux.openStream, "info", {}, Collector())
        self.assertIn("stream ids exhausted", str(error))
        self.assertTrue(self.pair.up)

    def test_deferredAccept(self):
        """
        An open handler may return a Deferred: the stream is accepted when
        it fires with a protocol, refused when it fails with
        L{StreamRefused}, and cancelled if the session ends first.
        """
        answers = []

        def handler(stream):
            d = Deferred(lambda d: answers.append(("cancelled", stream.id)))
            answers.append(d)
            return d

        self.connect(handler)
        results = []
        first = Collector()
        self.hostMux.openStream("relay", {}, first).addBoth(results.append)
        self.pair.run(duration=5)
        self.assertEqual(results, [])
        guestSide = Collector()
        answers[0].callback(guestSide)
        self.runUntil(lambda: results)
        self.assertIsInstance(results[0], Stream)
        self.assertTrue(first.made and guestSide.made)

        self.hostMux.openStream("relay", {}, Collector()).addBoth(results.append)
        self.runUntil(lambda: len(answers) == 2)
        answers[1].errback(StreamRefused("busy", "try later"))
        self.runUntil(lambda: len(results) == 2)
        results[1].trap(StreamRefused)
        self.assertEqual(results[1].value.code, "busy")

        self.hostMux.openStream("relay", {}, Collector()).addBoth(results.append)
        self.runUntil(lambda: len(answers) == 3)
        self.pair.host.goodbye()
        self.pair.channel.flush()
        results[2].trap(SessionEnded)
        self.assertEqual(answers[3:], [("cancelled", 5)])
        self.assertEqual(self.guestMux.streams, {})

    def test_noHandler(self):
        self.connect(None)
        result = self.open(self.hostMux, "exec", {}, Collector())
        result.trap(StreamRefused)
        self.assertEqual(result.value.code, "unsupported")

    def test_handlerFails(self):
        """
        An open handler that fails refuses the stream and logs the error.
        """

        def handler(stream):
            1 / 0

        self.connect(handler)
        result = self.open(self.hostMux, "exec", {}, Collector())
        result.trap(StreamRefused)
        self.assertEqual(result.value.code, "internal-error")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_tooManyStreams(self):
        self.connect(lambda s: Collector())
        self.guestMux.maxStreams = 2
        self.open(self.hostMux, "a", {}, Collector())
        self.open(self.hostMux, "a", {}, Collector())
        result = self.open(self.hostMux, "a", {}, Collector())
        result.trap(StreamRefused)
        self.assertEqual(result.value.code, "too-many-streams")

    def _refusal(self, tap, sid):
        [frame] = tap.of(frames.REFUSE, sid)
        return decodeJSON(frame.payload)["code"]

    def test_wrongParity(self):
        """
        An OPEN with an id of the receiver's own parity is refused, and so
        is an OPEN that is not a JSON object with a kind; a second OPEN for
        an id in use is ignored; stream 0 is the session's own and opens
        nothing.
        """
        opened = []
        self.connect(lambda s: opened.append(s) or Collector(), hostHandler=lambda s: Collector())
        host, guest = self.pair.host, self.pair.guest
        body = encodeJSON({"kind": "exec"})
        host.send(frames.OPEN, 2, body)  # the guest's parity
        host.send(frames.OPEN, 0, body)
        guest.send(frames.OPEN, 1, body)  # the host's parity
        host.send(frames.OPEN, 5, b"not json")
        host.send(frames.OPEN, 7, encodeJSON({"no": "kind"}))
        host.send(frames.OPEN, 9, body)
        host.send(frames.OPEN, 9, body)
        self.pair.run(duration=2)
        self.assertEqual(self._refusal(self.hostTap, 2), "bad-id")
        self.assertEqual(self._refusal(self.guestTap, 1), "bad-id")
        self.assertEqual(self._refusal(self.hostTap, 5), "bad-open")
        self.assertEqual(self._refusal(self.hostTap, 7), "bad-open")
        # A second OPEN for a live id is ignored: a REFUSE for that id would
        # reach the opener's live stream.
        self.assertEqual(self.hostTap.of(frames.REFUSE, 9), [])
        self.assertEqual([f.stream for f in self.hostTap.frames if f.stream == 0], [])
        self.assertEqual([s.id for s in opened], [9])
        self.assertEqual(self.hostMux.streams, {})

    def test_unknownStream(self):
        """
        Frames for a stream that does not exist are answered with RESET
        (except those that would make two sides reset each other forever).
        """
        self.connect(lambda s: Collector())
        host = self.pair.host
        host.send(frames.DATA, 99, b"x")
        host.send(frames.EXIT, 101, encodeJSON({"code": 0}))
        for ftype in (frames.RESET, frames.CLOSE, frames.WINDOW, frames.EOF):
            host.send(ftype, 103, b"")
        self.pair.run(duration=2)
        resets = self.hostTap.of(frames.RESET)
        self.assertEqual([f.stream for f in resets], [99, 101])
        self.assertEqual(decodeJSON(resets[0].payload)["code"], "unknown-stream")
        # The host sent one RESET (to 103); the guest's RESETs are not answered.
        self.assertEqual([f.stream for f in self.guestTap.of(frames.RESET)], [103])

    def test_openWhenDown(self):
        mux = Mux("host")
        self.assertRaises(NotConnected, mux.openStream, "exec", {}, Collector())


class DataTests(StreamTestCase):
    def test_dataBothWays(self):
        """
        Data larger than the windows goes both ways, byte for byte.
        """
        guestSide = []
        self.connect(lambda s: guestSide.append(Collector(echo=True)) or guestSide[-1])
        p = Collector()
        stream = self.open(self.hostMux, "echo", {}, p)
        data = pattern(700000)
        stream.write(data[:1000])
        stream.writeSequence([data[1000:5000], data[5000:]])
        self.runUntil(lambda: len(p.data) == len(data))
        self.assertEqual(p.data, data)
        self.assertEqual(guestSide[0].data, data)
        self.assertEqual((stream.bytesOut, stream.bytesIn), (len(data), len(data)))

    def test_stderrSeparate(self):
        """
        STDERR and DATA are kept apart, each in order.
        """

        def onConnect(proto):
            t = proto.transport
            for i in range(200):
                t.write(b"out%d," % (i,))
                t.writeStderr(b"err%d," % (i,) * 50)
            t.loseConnection()

        self.connect(lambda s: Collector(onConnect=onConnect))
        p = Collector()
        self.open(self.hostMux, "exec", {}, p)
        self.runUntil(lambda: p.done)
        self.assertEqual(p.data, b"".join(b"out%d," % (i,) for i in range(200)))
        self.assertEqual(p.stderr, b"".join(b"err%d," % (i,) * 50 for i in range(200)))
        p.reason.trap(ConnectionDone)

    def test_halfClose(self):
        """
        After the host's EOF the guest still sends, and the host still
        receives, until the guest closes.
        """

        def onEof(proto):
            proto.transport.write(b"after eof " + proto.data)
            proto.transport.loseConnection()

        guestSide = []
        self.connect(lambda s: guestSide.append(Collector(onEof=onEof)) or guestSide[-1])
        p = Collector()
        stream = self.open(self.hostMux, "cat", {}, p)
        stream.write(b"abc")
        stream.writeEof()
        stream.write(b"ignored: after our EOF")
        self.runUntil(lambda: p.done and guestSide[0].done)
        self.assertEqual(guestSide[0].events, [("data", b"abc"), ("eof",)])
        self.assertEqual(p.data, b"after eof abc")
        self.assertEqual(p.events[-1], ("eof",))
        p.reason.trap(ConnectionDone)
        guestSide[0].reason.trap(ConnectionDone)

    def test_exitAfterData(self):
        """
        EXIT (and SIGNAL) arrive after all the data sent before them, even
        when the data had to wait for credit.
        """
        out, err = pattern(400000, 1), pattern(150000, 2)

        def onConnect(proto):
            t = proto.transport
            t.write(out)
            t.writeStderr(err)
            t.sendControl(frames.SIGNAL, {"signal": 15})
            t.sendControl(frames.EXIT, {"code": 3})
            t.loseConnection()
            t.sendControl(frames.EXIT, {"code": 4})  # too late: ignored

        self.connect(lambda s: Collector(onConnect=onConnect), window=65536)
        p = Collector()
        self.open(self.hostMux, "exec", {}, p)
        self.runUntil(lambda: p.done)
        kinds = [e[0] for e in p.events]
        self.assertEqual(kinds[-3:], ["signal", "exit", "eof"])
        self.assertEqual(p.events[-2], ("exit", {"code": 3}))
        self.assertEqual(p.events[-3], ("signal", {"signal": 15}))
        self.assertEqual((p.data, p.stderr), (out, err))
        p.reason.trap(ConnectionDone)

    def test_badControlPayload(self):
        self.connect(lambda s: Collector())
        p = Collector()
        stream = self.open(self.hostMux, "exec", {}, p)
        self.pair.host.send(frames.EXIT, stream.id, b"[not an object]")
        self.runUntil(lambda: p.done)
        p.reason.trap(StreamReset)
        self.assertEqual(p.reason.value.code, "protocol-error")


class CloseTests(StreamTestCase):
    def test_closeHandshake(self):
        """
        loseConnection on one side: both sides end with ConnectionDone and
        forget the stream.
        """
        guestSide = []
        self.connect(lambda s: guestSide.append(Collector()) or guestSide[-1])
        p = Collector()
        stream = self.open(self.hostMux, "x", {}, p)
        stream.write(b"last words")
        stream.loseConnection()
        self.assertTrue(stream.disconnecting)
        self.runUntil(lambda: p.done and guestSide[0].done)
        p.reason.trap(ConnectionDone)
        guestSide[0].reason.trap(ConnectionDone)
        self.assertEqual(guestSide[0].events, [("data", b"last words"), ("eof",)])
        self.assertTrue(stream.ended)
        self.assertEqual((self.hostMux.streams, self.guestMux.streams), ({}, {}))

    def test_closeBothSides(self):
        """
        Both sides closing at once with data still in flight both ways.
        """
        data = pattern(200000)

        def onConnect(proto):
            proto.transport.write(data)
            proto.transport.loseConnection()

        guestSide = []
        self.connect(
            lambda s: guestSide.append(Collector(onConnect=onConnect)) or guestSide[-1],
            window=65536,
        )
        p = Collector()
        stream = self.open(self.hostMux, "x", {}, p)
        stream.write(data)
        stream.loseConnection()
        self.runUntil(lambda: p.done and guestSide[0].done, duration=60)
        self.assertEqual((p.data, guestSide[0].data), (data, data))
        p.reason.trap(ConnectionDone)
        guestSide[0].reason.trap(ConnectionDone)

    def test_closeWhileSendingBlockedOnCredit(self):
        """
        The guest closes at once while the host, also closing, still has
        data waiting for credit: once that data has gone, the host's side
        ends too (it does not wait forever for another frame).
        """
        data = pattern(300000)
        guestSide = []

        def guestConnected(proto):
            proto.transport.write(b"bye")
            proto.transport.loseConnection()

        def hostConnected(proto):
            proto.transport.write(data)
            proto.transport.loseConnection()

        self.connect(
            lambda s: guestSide.append(Collector(onConnect=guestConnected)) or guestSide[-1],
            window=65536,
        )
        p = Collector(onConnect=hostConnected)
        self.open(self.hostMux, "x", {}, p)
        self.pair.run(until=lambda: p.done and guestSide[0].done, duration=60)
        self.assertEqual(guestSide[0].data, data)
        guestSide[0].reason.trap(ConnectionDone)
        self.assertEqual(p.data, b"bye")
        self.assertTrue(p.done, "the host's stream never ended")
        p.reason.trap(ConnectionDone)
        self.assertEqual(self.hostMux.streams, {})

    def test_abort(self):
        """
        abort() ends the stream at once on both sides with L{StreamReset},
        and stops a registered producer.
        """
        guestSide = []
        self.connect(lambda s: guestSide.append(Collector()) or guestSide[-1])
        p = Collector()
        stream = self.open(self.hostMux, "x", {}, p)
        producer = FakeProducer()
        stream.registerProducer(producer, True)
        stream.write(pattern(500000))
        stream.abort("cancelled", "the user pressed ^C")
        p.reason.trap(StreamReset)
        self.assertEqual(producer.events, ["pause", "stop"])
        self.runUntil(lambda: guestSide[0].done)
        reset = guestSide[0].reason.trap(StreamReset) and guestSide[0].reason.value
        self.assertEqual((reset.code, reset.message), ("cancelled", "the user pressed ^C"))
        self.assertEqual((self.hostMux.streams, self.guestMux.streams), ({}, {}))
        # Later writes go nowhere.
        stream.write(b"more")
        self.pair.run(duration=1)
        self.assertEqual(self.hostTap.of(frames.RESET), [])

    def test_remoteAbortStopsProducer(self):
        guestSide = []
        self.connect(lambda s: guestSide.append(Collector()) or guestSide[-1])
        p = Collector()
        stream = self.open(self.hostMux, "x", {}, p)
        producer = FakeProducer()
        stream.registerProducer(producer, True)
        guestSide[0].transport.abortConnection()
        self.runUntil(lambda: p.done)
        p.reason.trap(StreamReset)
        self.assertEqual(producer.events, ["stop"])

    def test_sessionEnd(self):
        """
        When the session ends, every stream ends with L{SessionEnded} on
        both sides and every pending open fails.
        """
        guestSide = []
        self.connect(lambda s: guestSide.append(Collector()) or guestSide[-1])
        hostSide = [Collector() for _ in range(3)]
        for p in hostSide:
            self.open(self.hostMux, "x", {}, p)
        pending = []
        self.hostMux.openStream("x", {}, Collector()).addBoth(pending.append)
        downs = []
        self.hostMux.whenDown(downs.append)
        self.pair.host.goodbye("maintenance")
        [failure] = pending
        failure.trap(SessionEnded)
        for p in hostSide:
            p.reason.trap(SessionEnded)
        self.assertEqual(len(downs), 1)
        self.pair.channel.flush()
        # The pending OPEN reached the guest just before the GOODBYE.
        self.assertEqual(len(guestSide), 4)
        for p in guestSide:
            p.reason.trap(SessionEnded)
            self.assertIn("maintenance", str(p.reason.value))
        self.assertEqual((self.hostMux.streams, self.guestMux.streams), ({}, {}))
        self.assertFalse(self.hostMux.connected)


class FlowControlTests(StreamTestCase):
    def test_pausedReceiverStopsSender(self):
        """
        A receiver that pauses its stream grants no more credit, so the
        sender stops after one window and pauses its producer; resuming
        drains what was buffered, grants credit, and resumes the producer.
        """
        window = 32768
        guestSide = []
        self.connect(
            lambda s: guestSide.append(Collector(pause=True)) or guestSide[-1], window=window
        )
        p = Collector()
        stream = self.open(self.hostMux, "x", {}, p)
        producer = FakeProducer()
        stream.registerProducer(producer, True)
        data = pattern(300000)
        stream.write(data)
        self.assertEqual(producer.events, ["pause"])
        self.pair.run(duration=10)
        receiver = guestSide[0]
        self.assertEqual(receiver.events, [])
        self.assertEqual(stream.bytesOut, window)
        self.assertEqual(receiver.transport.bytesIn, window)
        self.assertEqual(self.hostTap.of(frames.WINDOW, stream.id), [])
        self.assertEqual(producer.events, ["pause"])
        receiver.transport.resumeProducing()
        self.runUntil(lambda: len(receiver.data) == len(data))
        self.assertEqual(receiver.data, data)
        self.assertEqual(producer.events, ["pause", "resume"])
        self.assertGreater(len(self.hostTap.of(frames.WINDOW, stream.id)), 4)

    def test_pauseAfterSomeData(self):
        """
        Pausing in the middle of a transfer stops the grants from then on.
        """
        window = 16384
        guestSide = []

        class PauseLater(Collector):
            def dataReceived(self, data):
                Collector.dataReceived(self, data)
                if len(self.data) >= 20000 and not self.pause:
                    self.pause = True
                    self.transport.pauseProducing()

        self.connect(lambda s: guestSide.append(PauseLater()) or guestSide[-1], window=window)
        stream = self.open(self.hostMux, "x", {}, Collector())
        stream.write(pattern(200000))
        self.pair.run(duration=10)
        receiver = guestSide[0]
        got = len(receiver.data)
        self.assertGreaterEqual(got, 20000)
        self.assertLess(got, 20000 + 4096)
        grants = len(self.hostTap.of(frames.WINDOW, stream.id))
        # What was granted is exactly what was consumed before the pause.
        self.assertLessEqual(stream.bytesOut, got + window)
        self.pair.run(duration=10)
        self.assertEqual(len(receiver.data), got)
        self.assertEqual(len(self.hostTap.of(frames.WINDOW, stream.id)), grants)
        receiver.transport.resumeProducing()
        self.runUntil(lambda: len(receiver.data) == 200000)

    def test_creditOverrun(self):
        """
        A peer sending beyond its credit has the stream aborted
        ("flow-control") on both sides.
        """
        guestSide = []
        self.connect(
            lambda s: guestSide.append(Collector(pause=True)) or guestSide[-1], window=1024
        )
        p = Collector()
        stream = self.open(self.hostMux, "x", {}, p)
        self.pair.host.send(frames.DATA, stream.id, b"x" * 1000)
        self.pair.host.send(frames.DATA, stream.id, b"x" * 25)
        self.runUntil(lambda: p.done and guestSide[0].done)
        for proto in (p, guestSide[0]):
            proto.reason.trap(StreamReset)
            self.assertEqual(proto.reason.value.code, "flow-control")

    def test_pausedStreamDoesNotStallOthers(self):
        """
        While one stream's consumer is paused, another stream on the same
        session completes a large transfer.
        """
        guestSide = {}

        def handler(stream):
            guestSide[stream.kind] = Collector(pause=stream.kind == "slow")
            return guestSide[stream.kind]

        self.connect(handler, window=65536)
        slow = self.open(self.hostMux, "slow", {}, Collector())
        fast = self.open(self.hostMux, "fast", {}, Collector())
        slowData, fastData = pattern(300000, 5), pattern(1500000, 6)
        slow.write(slowData)
        fast.write(fastData)
        fast.writeEof()
        self.runUntil(lambda: ("eof",) in guestSide["fast"].events)
        self.assertEqual(guestSide["fast"].data, fastData)
        self.assertEqual(guestSide["slow"].events, [])
        guestSide["slow"].transport.resumeProducing()
        self.runUntil(lambda: len(guestSide["slow"].data) == len(slowData))
        self.assertEqual(guestSide["slow"].data, slowData)

    def test_fairShare(self):
        """
        Two busy streams share the link: neither finishes before the other
        has sent a good part of its data.
        """
        guestSide = {}

        def handler(stream):
            guestSide[stream.kind] = Collector()
            return guestSide[stream.kind]

        self.connect(handler, latency=0.005)
        a = self.open(self.hostMux, "a", {}, Collector())
        b = self.open(self.hostMux, "b", {}, Collector())
        size = 600000
        a.write(pattern(size, 1))
        b.write(pattern(size, 2))
        self.runUntil(lambda: len(guestSide["a"].data) == size or len(guestSide["b"].data) == size)
        self.assertGreater(min(len(guestSide["a"].data), len(guestSide["b"].data)), size * 0.7)

    def test_pullProducer(self):
        """
        A non-streaming (pull) producer such as L{FileSender} is pulled
        until its data is all sent.
        """
        guestSide = []
        self.connect(lambda s: guestSide.append(Collector()) or guestSide[-1])
        stream = self.open(self.hostMux, "upload", {}, Collector())
        data = pattern(300000)
        done = []
        FileSender().beginFileTransfer(io.BytesIO(data), stream).addBoth(done.append)
        self.pair.run(until=lambda: done and len(guestSide[0].data) == len(data), duration=30)
        self.assertEqual(len(guestSide[0].data), len(data))
        self.assertEqual(len(done), 1)
        self.assertNotIsInstance(done[0], Failure)


class ManyStreamsTests(StreamTestCase):
    def test_manyConcurrent(self):
        """
        200 streams at once, each echoing its own data, all complete.
        """

        def onEof(proto):
            proto.transport.loseConnection()

        self.connect(lambda s: Collector(echo=True, onEof=onEof))
        protocols = []
        ids = []
        for i in range(200):
            p = Collector()
            protocols.append(p)

            def opened(stream, i=i):
                ids.append(stream.id)
                stream.write(pattern(3000 + i, i))
                stream.writeEof()

            self.hostMux.openStream("echo", {"i": i}, p).addCallback(opened)
        self.assertEqual(ids, [])  # all 200 OPENs are out before any answer
        self.runUntil(lambda: all(p.done for p in protocols) and not self.guestMux.streams)
        for i, p in enumerate(protocols):
            p.reason.trap(ConnectionDone)
            self.assertEqual(p.data, pattern(3000 + i, i))
        self.assertEqual(sorted(ids), list(range(1, 400, 2)))
        self.assertEqual((self.hostMux.streams, self.guestMux.streams), ({}, {}))
