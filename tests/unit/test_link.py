"""
Tests for L{prokshy.link}: the selective-repeat machinery in
L{prokshy.link.reliable} and the session in L{prokshy.link.session}, run
over the in-memory L{prokshy.testing.LossyChannel} with a L{task.Clock}.
"""

import json

from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from prokshy.link import reliable
from prokshy.link.interfaces import ILinkAuthorizer, ILinkListener
from prokshy.link.reliable import (
    SEQ_MOD,
    Receiver,
    Sender,
    decodeSack,
    encodeSack,
    seqDiff,
)
from prokshy.link.session import (
    Link,
    LinkConfig,
    NotConnected,
    SessionEnded,
    sessionTag,
)
from prokshy.streams.mux import Mux
from prokshy.wire import frames
from prokshy.wire.channel import ChannelDecoder, encodeHello
from prokshy.wire.frames import Frame, FrameDecoder, encodeFrame, unescape
from prokshy.testing import LinkPair, deterministicNonces

# FreeBSD's tty input queue holds about this much; the guest's window must
# keep the bytes in flight toward it below this.
TTY_QUEUE = 23 * 1024


@implementer(ILinkListener, ILinkAuthorizer)
class Recorder:
    """
    A link listener that records what happens, and sends whatever is put in
    C{outgoing} as DATA frames of the link's current payload size whenever
    the link is writable.  As an authorizer, it refuses every hello with
    C{refuse} (if set).
    """

    def __init__(self, refuse=None):
        self.link = None
        self.ups = []
        self.downs = []
        self.frames = []
        self.outgoing = bytearray()
        self.sizes = []
        self.refuse = refuse
        self.hellos = []
        self.refused = []

    def linkUp(self, link, info):
        self.link = link
        self.ups.append(info)

    def linkDown(self, link, reason):
        self.downs.append(reason)

    def frameReceived(self, frame):
        self.frames.append(frame)

    def linkRefused(self, link, reason):
        self.refused.append(reason)

    def authorize(self, hello):
        self.hellos.append(hello)
        return self.refuse

    def linkWritable(self):
        link = self.link
        while self.outgoing and link.state == "UP" and link.writable:
            n = link.maxPayload
            chunk = bytes(self.outgoing[:n])
            del self.outgoing[:n]
            self.sizes.append(len(chunk))
            link.send(frames.DATA, 1, chunk)

    def push(self, data):
        self.outgoing += data
        self.linkWritable()

    @property
    def received(self):
        return b"".join(f.payload for f in self.frames if f.type == frames.DATA)


def framesOf(write):
    """
    The frames in one write of a Link (hello lines have none).
    """
    return [item for item in ChannelDecoder().feed(write) if isinstance(item, Frame)]


def isHello(write):
    return write.startswith(b"\n\xff")


def dropping(predicate, times=1, log=None):
    """
    A channel tamper that removes from the writes the first C{times} frames
    matching C{predicate(frame)} (and records the frames it removed).
    """
    state = {"left": times}

    def tamper(data):
        if state["left"] <= 0 or isHello(data):
            return data
        items = framesOf(data)
        kept = []
        for frame in items:
            if state["left"] > 0 and predicate(frame):
                state["left"] -= 1
                if log is not None:
                    log.append(frame)
            else:
                kept.append(frame)
        if len(kept) == len(items):
            return data
        return b"".join(encodeFrame(f) for f in kept)

    return tamper


def payloads(n, seed=b""):
    return [
        b"%s%05d:" % (seed, i) + bytes((i * 7 + j) % 256 for j in range(i % 300))
        for i in range(n)
    ]


class DeliveryFlag:
    """
    Wraps a channel receiver; C{active} is true while it handles bytes.
    """

    def __init__(self, receiver):
        self.receiver = receiver
        self.active = False

    def dataReceived(self, data):
        self.active = True
        try:
            self.receiver.dataReceived(data)
        finally:
            self.active = False


class Collector(Protocol):
    def __init__(self):
        self.data = []
        self.reason = None

    def dataReceived(self, data):
        self.data.append(data)

    def connectionLost(self, reason):
        self.reason = reason


class Echo(Collector):
    def dataReceived(self, data):
        Collector.dataReceived(self, data)
        self.transport.write(data)


class LinkTestCase(unittest.SynchronousTestCase):
    def setUp(self):
        deterministicNonces(self, seed=7)

    def connected(self, hostConfig=None, guestConfig=None, **options):
        h, g = Recorder(), Recorder()
        pair = LinkPair(h, g, hostConfig, guestConfig, **options)
        pair.connect()
        self.addCleanup(pair.stop)
        return pair, h, g


class HandshakeTests(LinkTestCase):
    def test_handshake(self):
        """
        The host says hello, the guest answers; both sides agree on the
        session and on what each may send.
        """
        h, g = Recorder(), Recorder()
        pair = LinkPair(
            h,
            g,
            LinkConfig(features=("a", "b"), window=30000, maxPayload=2048),
            LinkConfig(features=("c", "b")),
        )
        self.addCleanup(pair.stop)
        pair.connect()
        self.assertEqual(pair.clock.seconds(), 0)
        self.assertEqual((len(h.ups), len(g.ups)), (1, 1))
        hi, gi = pair.host.info, pair.guest.info
        self.assertIs(h.ups[0], hi)
        self.assertEqual(hi.tag, gi.tag)
        self.assertEqual(hi.tag, sessionTag(hi.localNonce, gi.localNonce))
        self.assertEqual((hi.peerNonce, gi.peerNonce), (gi.localNonce, hi.localNonce))
        self.assertNotEqual(hi.localNonce, gi.localNonce)
        self.assertEqual((hi.version, gi.version), (1, 1))
        self.assertEqual((hi.features, gi.features), (["b"], ["b"]))
        # Each side sends what the other advertised.
        self.assertEqual((hi.sendWindow, hi.sendPayload), (16384, 4096))
        self.assertEqual((gi.sendWindow, gi.sendPayload), (30000, 2048))
        self.assertEqual(gi.peerHello["role"], "host")
        self.assertEqual(hi.peerHello["peer"], hi.localNonce)
        self.assertEqual((pair.host.stats["sessions"], pair.guest.stats["sessions"]), (1, 1))
        self.assertEqual(pair.host.decoder.skipped + pair.guest.decoder.skipped, 0)

    def test_guestWaits(self):
        """
        A guest says nothing until a host says hello.
        """
        pair = LinkPair(Recorder(), Recorder())
        self.addCleanup(pair.stop)
        pair.guest.start()
        pair.run(duration=20)
        self.assertEqual(pair.channel.guest.bytesWritten, 0)
        self.assertEqual(pair.guest.state, "IDLE")

    def test_lostHellos(self):
        """
        The host repeats its hello until it is answered; a lost answer is
        answered again.
        """
        h, g = Recorder(), Recorder()
        pair = LinkPair(h, g)
        self.addCleanup(pair.stop)
        lost = {"host": 3, "guest": 1}

        def loseHellos(end):
            def tamper(data):
                if isHello(data) and lost[end] > 0:
                    lost[end] -= 1
                    return b""
                return data

            return tamper

        pair.channel.host.tamper = loseHellos("host")
        pair.channel.guest.tamper = loseHellos("guest")
        hellos = []
        pair.channel.host.observers.append(lambda d: isHello(d) and hellos.append(d))
        pair.connect()
        self.assertEqual(lost, {"host": 0, "guest": 0})
        self.assertEqual(len(hellos), 5)
        self.assertAlmostEqual(pair.clock.seconds(), 2.0)
        self.assertEqual((len(h.ups), len(g.ups)), (1, 1))
        # Nothing more once up.
        pair.run(duration=1)
        self.assertEqual(len(hellos), 5)

    def _echoingHost(self, transform=None):
        h, g = Recorder(), Recorder()
        pair = LinkPair(h, g)
        self.addCleanup(pair.stop)
        end = pair.channel.host
        if transform is None:
            end.echo = True
        else:
            end.observers.append(lambda data: end.inject(transform(data)))
        return pair, h, g

    def _checkEcho(self, pair, h, g):
        pair.channel.guest.receiver = None
        pair.host.start()
        pair.run(duration=10)
        self.assertEqual(h.ups, [])
        self.assertEqual(pair.host.state, "HELLO")
        self.assertGreater(pair.host.stats["bytes_in"], 1000)  # it did hear itself
        self.assertIsNone(pair.host.info)
        # With a guest behind the echo, the session is with the guest.
        pair.channel.guest.receiver = pair.guest
        pair.guest.start()
        pair.run(until=lambda: pair.up, duration=2)
        self.assertEqual(len(h.ups), 1)
        self.assertEqual(pair.host.info.peerNonce, pair.guest.info.localNonce)
        self.assertEqual(pair.host.info.tag, pair.guest.info.tag)

    def test_echoedHelloIgnored(self):
        """
        The host's own hello echoed back (a cooked tty) is never taken for
        the guest's answer.
        """
        self._checkEcho(*self._echoingHost())

    def test_echoedHelloWithCRLFIgnored(self):
        """
        The same when the echo turns LF into CR LF (ONLCR).
        """
        self._checkEcho(*self._echoingHost(lambda d: d.replace(b"\n", b"\r\n")))

    def test_staleAnswerIgnored(self):
        """
        A guest's answer to another hello than the host's current one (an
        earlier session's, still in the channel) starts nothing, and
        neither does a hello from another host, even one naming our nonce.
        """
        h, g = Recorder(), Recorder()
        pair = LinkPair(h, g)
        self.addCleanup(pair.stop)
        pair.channel.guest.receiver = None
        written = []
        pair.channel.host.observers.append(written.append)
        pair.host.start()
        [hello] = ChannelDecoder().feed(written[0])
        nonce = hello["nonce"]
        fields = {"v": [1], "window": 16384, "max_payload": 4096}
        pair.channel.host.inject(
            encodeHello(dict(fields, role="guest", nonce="g1", peer="an-older-nonce"))
            + encodeHello(dict(fields, role="guest", nonce="g2"))
            + encodeHello(dict(fields, role="host", nonce="h2", peer=nonce))
        )
        pair.run(duration=3)
        self.assertEqual(h.ups, [])
        self.assertEqual(pair.host.state, "HELLO")
        # The right answer is taken.
        pair.channel.host.inject(encodeHello(dict(fields, role="guest", nonce="g3", peer=nonce)))
        pair.run(duration=0.1)
        self.assertEqual(pair.host.state, "UP")
        self.assertEqual(pair.host.info.peerNonce, "g3")

    def test_versionRefused(self):
        """
        A guest refuses a host that speaks no version it knows; the host
        gives up with the guest's reason, and no session starts.
        """
        h, g = Recorder(), Recorder()
        pair = LinkPair(h, g, LinkConfig(extra={"v": [99]}))
        self.addCleanup(pair.stop)
        pair.guest.start()
        pair.host.start()
        pair.run(duration=10)
        self.assertEqual((h.ups, g.ups), ([], []))
        self.assertEqual(pair.host.state, "STOPPED")
        self.assertIn("version", pair.host.lastError)
        self.assertEqual(h.refused, [pair.host.lastError])
        self.assertEqual(pair.guest.state, "IDLE")
        self.assertEqual((pair.host.stats["sessions"], pair.guest.stats["sessions"]), (0, 0))

    def test_guestVersionIgnored(self):
        """
        An answer in a version the host does not speak starts nothing on
        the host.
        """
        h, g = Recorder(), Recorder()
        pair = LinkPair(h, g, None, LinkConfig(extra={"v": [99]}))
        self.addCleanup(pair.stop)
        pair.guest.start()
        pair.host.start()
        pair.run(duration=10)
        self.assertEqual(h.ups, [])
        self.assertEqual(pair.host.state, "HELLO")

    def test_authorizeRefuses(self):
        """
        A guest link's authorizer can refuse a hello; the host learns why
        and stops.
        """
        h, g = Recorder(), Recorder(refuse="bad token")
        pair = LinkPair(h, g, LinkConfig(auth="t0k"))
        self.addCleanup(pair.stop)
        verifyObject(ILinkAuthorizer, g)
        pair.guest.authorizer = g
        pair.guest.start()
        pair.host.start()
        pair.run(duration=5)
        self.assertEqual(g.hellos[0]["auth"], "t0k")
        self.assertEqual((h.ups, g.ups), ([], []))
        self.assertEqual(pair.host.state, "STOPPED")
        self.assertEqual(pair.host.lastError, "bad token")
        self.assertEqual(h.refused, ["bad token"])

    def test_helloWithoutNonceIgnored(self):
        pair = LinkPair(Recorder(), Recorder())
        self.addCleanup(pair.stop)
        pair.guest.start()
        for bad in [{"role": "host"}, {"role": "host", "nonce": ""}, {"role": "host", "nonce": 5}]:
            pair.guest.dataReceived(encodeHello(dict(bad, v=[1])))
        pair.run(duration=1)
        self.assertEqual(pair.guest.state, "IDLE")
        self.assertEqual(pair.channel.guest.bytesWritten, 0)


class SessionLifeTests(LinkTestCase):
    def test_staleFramesDropped(self):
        """
        Frames of an earlier session still in the channel are dropped and
        counted, even though their sequence numbers are those the new
        session expects.
        """
        pair, h, g = self.connected()
        captured = []
        pair.channel.host.observers.append(captured.append)
        for i in range(5):
            pair.host.send(frames.DATA, 1, b"old %d" % (i,))
        pair.run(until=lambda: len(g.frames) == 5)
        old = b"".join(w for w in captured if not isHello(w))
        nOld = len(FrameDecoder().feed(unescape(old)))
        self.assertGreaterEqual(nOld, 5)

        pair.host.stop()
        h2 = Recorder()
        pair.newHost(h2).start()
        pair.run(until=lambda: pair.up and pair.guest.stats["sessions"] == 2)
        stale = pair.guest.stats["stale"]
        pair.channel.guest.inject(old)
        pair.channel.flush()
        self.assertEqual(pair.guest.stats["stale"] - stale, nOld)
        self.assertEqual(len(g.frames), 5)
        pair.host.send(frames.DATA, 1, b"new 0")
        pair.run(until=lambda: len(g.frames) == 6)
        self.assertEqual((g.frames[5].payload, g.frames[5].seq), (b"new 0", 0))

    def _muxPair(self):
        hostMux = Mux("host")
        guestMux = Mux("guest", lambda stream: Echo())
        pair = LinkPair(hostMux, guestMux)
        self.addCleanup(pair.stop)
        pair.connect()
        return pair, hostMux, guestMux

    def _openStreams(self, pair, mux, n=3):
        protocols = [Collector() for _ in range(n)]
        opened = []
        for p in protocols:
            mux.openStream("echo", {}, p).addCallback(opened.append)
        pair.run(until=lambda: len(opened) == n)
        for s in opened:
            s.write(b"ping")
        pair.run(until=lambda: all(p.data for p in protocols))
        return protocols

    def test_guestRestart(self):
        """
        A new guest Link (the agent restarted) is found by the host's
        re-hellos: the old session's streams end with L{SessionEnded} and a new
        session starts, well before the peer would be declared dead.
        """
        pair, hostMux, guestMux = self._muxPair()
        protocols = self._openStreams(pair, hostMux)
        oldInfo = pair.host.info
        pair.guest.stop()
        guestMux2 = Mux("guest", lambda stream: Echo())
        pair.newGuest(guestMux2).start()
        start = pair.clock.seconds()
        pair.run(until=lambda: pair.up and pair.host.info is not oldInfo, duration=20)
        elapsed = pair.clock.seconds() - start
        self.assertLess(elapsed, pair.host.config.deadAfter)
        config = pair.host.config
        self.assertGreaterEqual(elapsed, config.rehelloAfter - config.pingInterval)
        for p in protocols:
            p.reason.trap(SessionEnded)
            self.assertIn("guest restarted", str(p.reason.value))
        self.assertEqual(hostMux.streams, {})
        self.assertEqual(pair.host.info.peerNonce, pair.guest.info.localNonce)
        self.assertEqual(pair.host.stats["sessions"], 2)
        # The new session carries streams.
        [p] = self._openStreams(pair, hostMux, 1)
        self.assertEqual(b"".join(p.data), b"ping")

    def test_hostRestart(self):
        """
        A host that starts over with a new nonce ends the guest's session
        (its streams end with L{SessionEnded}) and gets a new one at once.
        """
        pair, hostMux, guestMux = self._muxPair()
        guestSide = []
        guestMux.openHandler = lambda stream: guestSide.append(Echo()) or guestSide[-1]
        self._openStreams(pair, hostMux, 2)
        pair.host.stop()
        hostMux2 = Mux("host")
        pair.newHost(hostMux2).start()
        start = pair.clock.seconds()
        pair.run(until=lambda: pair.up, duration=20)
        self.assertLess(pair.clock.seconds() - start, 1.0)
        self.assertEqual(len(guestSide), 2)
        for p in guestSide:
            p.reason.trap(SessionEnded)
            self.assertIn("new session", str(p.reason.value))
        self.assertEqual(guestMux.streams, {})
        self.assertEqual(pair.guest.stats["sessions"], 2)
        self.assertEqual(pair.guest.info.peerNonce, pair.host.info.localNonce)

    def test_deadGuest(self):
        """
        A guest that goes silent is declared dead within 10 s (C{deadAfter}
        is 8 s), not before; the host then says hello again and a new guest
        gets a session.
        """
        pair, h, g = self.connected()
        pair.run(duration=3.3)
        pair.guest.stop()
        start = pair.clock.seconds()
        pair.run(until=lambda: h.downs, duration=30)
        elapsed = pair.clock.seconds() - start
        self.assertLessEqual(elapsed, 10.0)
        self.assertGreaterEqual(elapsed, 8.0 - 1.0)
        [reason] = h.downs
        self.assertIsInstance(reason, SessionEnded)
        self.assertIn("silent", str(reason))
        self.assertEqual(pair.host.state, "HELLO")
        g2 = Recorder()
        pair.newGuest(g2).start()
        pair.run(until=lambda: pair.up, duration=2)
        self.assertEqual(len(h.ups), 2)

    def test_deadHost(self):
        """
        A guest declares a silent host dead within 10 s and waits for a
        hello.
        """
        pair, h, g = self.connected()
        pair.run(duration=2.6)
        pair.host.stop()
        start = pair.clock.seconds()
        pair.run(until=lambda: g.downs, duration=30)
        elapsed = pair.clock.seconds() - start
        self.assertLessEqual(elapsed, 10.0)
        self.assertGreaterEqual(elapsed, 7.0)
        self.assertIn("silent", str(g.downs[0]))
        self.assertEqual(pair.guest.state, "IDLE")
        written = pair.channel.guest.bytesWritten
        pair.run(duration=10)
        self.assertEqual(pair.channel.guest.bytesWritten, written)

    def test_keepalive(self):
        """
        An idle session stays up: pings and pongs flow and measure the
        round trip.
        """
        pair, h, g = self.connected(latency=0.05)
        pair.run(duration=120)
        self.assertEqual((h.downs, g.downs), ([], []))
        self.assertEqual(pair.host.stats["sessions"], 1)
        self.assertAlmostEqual(pair.host.rtt, 0.1, places=6)
        self.assertAlmostEqual(pair.guest.rtt, 0.1, places=6)
        # About one ping and one pong a second each way, nothing else.
        self.assertGreater(pair.host.stats["frames_out"], 200)
        self.assertLess(pair.host.stats["frames_out"], 260)

    def test_rehellos(self):
        """
        When the guest has been silent for C{rehelloAfter}, the host sends
        its hello again (re-hellos) with the same nonce; an answer keeps
        the session.
        """
        pair, h, g = self.connected()
        hellos = []
        pair.channel.host.observers.append(
            lambda d: isHello(d) and hellos.append((pair.clock.seconds(), d))
        )
        pair.run(duration=5)
        self.assertEqual(hellos, [])
        pair.channel.guest.blackhole = True
        start = pair.clock.seconds()
        pair.run(duration=5)
        self.assertGreaterEqual(len(hellos), 2)
        self.assertGreaterEqual(hellos[0][0] - start, pair.host.config.rehelloAfter - 1.0)
        for _, line in hellos:
            [hello] = ChannelDecoder().feed(line)
            self.assertEqual(hello["nonce"], pair.host.info.localNonce)
            self.assertNotIn("peer", hello)
        pair.channel.guest.blackhole = False
        pair.run(duration=20)
        self.assertEqual((h.downs, g.downs), ([], []))
        self.assertEqual(pair.host.stats["sessions"], 1)

    def test_goodbyeFromHost(self):
        """
        GOODBYE ends the session on the other side at once.
        """
        pair, h, g = self.connected()
        now = pair.clock.seconds()
        pair.host.goodbye("shutting down")
        pair.channel.flush()
        self.assertEqual(pair.clock.seconds(), now)
        self.assertEqual(len(g.downs), 1)
        self.assertIn("goodbye", str(g.downs[0]))
        self.assertIn("shutting down", str(g.downs[0]))
        self.assertEqual(pair.guest.state, "IDLE")
        self.assertEqual(pair.host.state, "STOPPED")
        self.assertEqual(len(h.downs), 1)

    def test_goodbyeFromGuest(self):
        """
        A guest's GOODBYE ends the host's session at once and the host
        starts saying hello again.
        """
        pair, h, g = self.connected()
        now = pair.clock.seconds()
        pair.guest.goodbye()
        pair.channel.flush()
        self.assertEqual(pair.clock.seconds(), now)
        self.assertEqual(len(h.downs), 1)
        self.assertIn("goodbye", str(h.downs[0]))
        self.assertEqual(pair.host.state, "HELLO")

    def test_stopEndsSession(self):
        pair, h, g = self.connected()
        pair.host.stop("bye")
        self.assertEqual(len(h.downs), 1)
        self.assertEqual(str(h.downs[0]), "session ended: bye")
        self.assertRaises(NotConnected, pair.host.send, frames.DATA, 1, b"x")
        pair.host.dataReceived(b"anything")
        pair.host.stop()
        self.assertEqual(len(h.downs), 1)
        pair.guest.stop()
        self.assertEqual(pair.clock.getDelayedCalls(), [])

    def test_roles(self):
        self.assertRaises(ValueError, Link, None, None, "peer", None)


class DeliveryTests(LinkTestCase):
    def test_sendErrors(self):
        pair, h, g = self.connected()
        self.assertRaises(ValueError, pair.host.send, frames.PING, 0, b"")
        self.assertRaises(ValueError, pair.host.send, frames.DATA, 1, b"x" * 4097)
        pair.host.send(frames.DATA, 1, b"x" * 4096)
        lonely = Link(pair.clock, lambda d: None, "host", Recorder())
        self.assertRaises(NotConnected, lonely.send, frames.DATA, 1, b"x")

    def test_inOrderBothWays(self):
        pair, h, g = self.connected()
        sent = payloads(50)
        for p in sent:
            pair.host.send(frames.DATA, 3, p)
            pair.guest.send(frames.STDERR, 4, p[::-1])
        pair.run(until=lambda: len(h.frames) == len(g.frames) == 50)
        self.assertEqual([f.payload for f in g.frames], sent)
        self.assertEqual([f.payload for f in h.frames], [p[::-1] for p in sent])
        self.assertEqual([f.seq for f in g.frames], list(range(50)))
        self.assertEqual({(f.type, f.stream) for f in h.frames}, {(frames.STDERR, 4)})

    def _inflight(self, guestWindow):
        """
        Push 400 kB toward a guest with window C{guestWindow} over a channel
        with some latency and a bandwidth limit (so the pipe fills), checking
        the host's bytes in flight at every write.

        @return: the most bytes that were in the pipe toward the guest.
        """
        guestConfig = LinkConfig() if guestWindow is None else LinkConfig(window=guestWindow)
        window = guestConfig.window
        pair, h, g = self.connected(None, guestConfig, latency=0.002, bandwidth=1000000)
        sender = pair.host.sender
        self.assertEqual(pair.host.info.sendWindow, window)
        seen = []
        single = [0]

        def check(data):
            seen.append(sender.inflight)
            if sender.inflight > window:
                # Only a lone frame may be over the window.
                self.assertEqual(len(sender.unacked), 1, "over the window with several frames")
                single[0] = max(single[0], sender.inflight)

        pair.channel.host.observers.append(check)
        data = bytes(i * 31 % 251 for i in range(400000))
        h.push(data)
        pair.run(until=lambda: len(g.received) == len(data), duration=60)
        self.assertEqual(g.received, data)
        self.assertEqual(pair.host.stats["retransmits"], 0)
        bound = max(window, single[0])
        self.assertLessEqual(max(seen), bound)
        self.assertGreater(max(seen), window * 0.6)  # the bound was reached
        pipe = pair.channel.host.maxPending
        # The pipe holds the frames in flight and a few small control frames.
        self.assertLessEqual(pipe, bound + 300)
        return pipe

    def test_inflightBoundDefault(self):
        """
        Bytes in flight toward the guest never exceed the guest's window
        (16384 by default), so they fit the ~23 KB FreeBSD tty queue.
        """
        pipe = self._inflight(None)
        self.assertLess(pipe, TTY_QUEUE)
        self.assertGreater(pipe, 12000)

    def test_inflightBoundSmall(self):
        """
        A window smaller than one frame lets one frame at a time go.
        """
        self._inflight(2048)

    def test_noDuplicates(self):
        """
        Over a channel that duplicates (and loses) chunks, every frame is
        delivered exactly once, in order.
        """
        pair, h, g = self.connected(seed=3, dupChunkRate=0.2, dropChunkRate=0.02)
        sent = payloads(300)
        for p in sent:
            pair.host.send(frames.DATA, 1, p)
            pair.guest.send(frames.DATA, 2, p)
        pair.run(until=lambda: len(g.frames) >= 300 and len(h.frames) >= 300, duration=120)
        pair.run(duration=5)
        self.assertEqual([f.payload for f in g.frames], sent)
        self.assertEqual([f.payload for f in h.frames], sent)
        self.assertGreater(pair.channel.host.duplicatedChunks, 10)
        self.assertGreater(pair.guest.receiver.duplicates, 10)
        self.assertEqual(pair.host.stats["sessions"], 1)

    def _watch(self, pair, seq):
        """
        Record every time the host writes DATA frame C{seq}: (clock time,
        whether the host was handling bytes from the guest at that moment,
        i.e. reacting to the guest's answer rather than to a timer).
        """
        flag = DeliveryFlag(pair.host)
        pair.channel.host.receiver = flag
        sends = []

        def observe(data):
            if any(f.type == frames.DATA and f.seq == seq for f in framesOf(data)):
                sends.append((pair.clock.seconds(), flag.active))

        pair.channel.host.observers.append(observe)
        return sends

    def _watchCheckpoints(self, pair):
        """
        Record every checkpoint the host writes (a PING written by its
        retransmission timer rather than its ping timer): (clock time,
        whether it was written while handling the guest's bytes).
        """
        flag = pair.channel.host.receiver
        checkpoints = []
        seen = [pair.host.stats["checkpoints"]]

        def observe(data):
            if pair.host.stats["checkpoints"] != seen[0]:
                seen[0] = pair.host.stats["checkpoints"]
                self.assertIn(frames.PING, [f.type for f in framesOf(data)])
                checkpoints.append((pair.clock.seconds(), flag.active))

        pair.channel.host.observers.append(observe)
        return checkpoints

    def test_tailLossByTimer(self):
        """
        The last frame of a burst, lost, is found when the retransmission
        timer fires (nothing after it reveals the gap to the receiver): the
        timer writes a checkpoint, a PING behind the frame, and the guest's
        PONG shows that it read past the frame without it.  The frame is
        resent on that proof, once.
        """
        pair, h, g = self.connected(latency=0.01)
        pair.run(duration=2)
        last = pair.host.sender.nextSeq + 4
        sends = self._watch(pair, last)
        checkpoints = self._watchCheckpoints(pair)
        pair.channel.host.tamper = dropping(lambda f: f.type == frames.DATA and f.seq == last)
        for p in payloads(5):
            pair.host.send(frames.DATA, 1, p)
        pair.run(until=lambda: len(g.frames) == 5, duration=10)
        self.assertEqual([f.payload for f in g.frames], payloads(5))
        self.assertEqual(len(sends), 2)
        (first, _), (again, byAnswer) = sends
        [(checked, byTimer)] = [(t, not active) for t, active in checkpoints]
        self.assertTrue(byTimer)
        self.assertTrue(first < checked < again)
        self.assertTrue(byAnswer)
        self.assertAlmostEqual(again - checked, 0.02)  # the checkpoint's round trip
        self.assertGreaterEqual(again - first, 0.02)  # at least a round trip
        self.assertLessEqual(again - first, 1.0)
        self.assertEqual(pair.guest.receiver.gaps, 0)
        self.assertEqual(pair.host.stats["retransmits"], 1)

    def test_tailLossByRTO(self):
        """
        When the first resend of a lost last frame is lost too, the
        retransmission timer (at least C{rtoMin} after the first send)
        writes another checkpoint, whose answer has it resent again.
        """
        pair, h, g = self.connected(latency=0.01)
        pair.run(duration=2)
        last = pair.host.sender.nextSeq + 4
        sends = self._watch(pair, last)
        checkpoints = self._watchCheckpoints(pair)
        pair.channel.host.tamper = dropping(
            lambda f: f.type == frames.DATA and f.seq == last, times=2
        )
        for p in payloads(5):
            pair.host.send(frames.DATA, 1, p)
        pair.run(until=lambda: len(g.frames) == 5, duration=10)
        self.assertEqual([f.payload for f in g.frames], payloads(5))
        self.assertEqual(len(sends), 3)
        self.assertEqual([active for _, active in checkpoints], [False, False])
        self.assertTrue(sends[1][0] < checkpoints[1][0] < sends[2][0])
        self.assertTrue(sends[2][1])
        self.assertGreaterEqual(sends[2][0] - sends[0][0], pair.host.config.rtoMin)
        self.assertGreaterEqual(checkpoints[1][0] - sends[1][0], pair.host.config.rtoMin)
        self.assertLessEqual(sends[2][0] - sends[0][0], pair.host.config.rtoMax)
        self.assertEqual(pair.guest.receiver.gaps, 0)
        self.assertEqual(pair.host.stats["retransmits"], 2)

    def test_middleLossBySack(self):
        """
        A frame lost in the middle of a transfer is resent as soon as the
        receiver's selective acknowledgements show the hole, in reaction to
        them, long before the retransmission timer (made slow here).
        """
        pair, h, g = self.connected(LinkConfig(rtoMin=5.0, rtoMax=5.0), latency=0.01)
        pair.run(duration=2)
        target = pair.host.sender.nextSeq + 40
        sends = self._watch(pair, target)
        pair.channel.host.tamper = dropping(lambda f: f.type == frames.DATA and f.seq == target)
        data = bytes(i % 253 for i in range(200 * 1000))
        start = pair.clock.seconds()
        h.push(data)
        pair.run(until=lambda: len(g.received) == len(data), duration=30)
        self.assertEqual(g.received, data)
        self.assertEqual(len(sends), 2)
        (first, _), (again, byAck) = sends
        self.assertTrue(byAck, "resent by a timer, not because of a SACK")
        self.assertLess(again - first, 0.3)
        self.assertLess(pair.clock.seconds() - start, 1.5)
        self.assertGreater(pair.guest.receiver.gaps, 0)
        self.assertEqual(pair.host.stats["retransmits"], 1)

    def test_lostAckAtTail(self):
        """
        When the acknowledgement of the last frames is lost, the checkpoint
        the retransmission timer writes is answered with the current
        acknowledgement at once: nothing is resent (the frame was not
        lost), and the sender does not wait until the receiver happens to
        send a ping.
        """
        config = LinkConfig(pingInterval=5.0, deadAfter=30.0, rehelloAfter=10.0)
        pair, h, g = self.connected(config, LinkConfig(pingInterval=5.0, deadAfter=30.0))
        pair.run(duration=6)
        lost = []
        pair.channel.guest.tamper = dropping(lambda f: f.type == frames.ACK, log=lost)
        start = pair.clock.seconds()
        pair.host.send(frames.DATA, 1, b"x" * 100)
        pair.run(until=lambda: not pair.host.sender.unacked, duration=20)
        self.assertEqual(len(lost), 1)
        self.assertEqual(len(g.frames), 1)
        self.assertLess(pair.clock.seconds() - start, 1.5)
        self.assertEqual(pair.host.stats["checkpoints"], 1)
        self.assertEqual(pair.host.stats["retransmits"], 0)

    def test_adaptivePayload(self):
        """
        The payload size shrinks while frames are being corrupted, and grows
        back to the peer's maximum once the channel is clean.
        """
        pair, h, g = self.connected(seed=5)
        self.assertEqual(pair.host.maxPayload, 1024)
        pair.channel.host.corruptByteRate = 0.001
        first = bytes(i % 241 for i in range(150000))
        h.push(first)
        pair.run(until=lambda: len(g.received) == len(first), duration=300)
        self.assertLess(min(h.sizes), 512)
        self.assertLess(pair.host.maxPayload, 1024)
        shrunk = len(h.sizes)
        pair.channel.host.corruptByteRate = 0.0
        second = bytes(i % 239 for i in range(600000))
        h.push(second)
        pair.run(until=lambda: len(g.received) == len(first) + len(second), duration=300)
        self.assertEqual(g.received, first + second)
        self.assertEqual(pair.host.maxPayload, 4096)
        self.assertEqual(max(h.sizes[shrunk:]), 4096)
        self.assertEqual(pair.host.stats["sessions"], 1)

    def test_pauseProducing(self):
        """
        While the channel's writer is paused the link queues new frames
        and is not writable; resuming sends them.
        """
        pair, h, g = self.connected()
        pair.host.pauseProducing()
        self.assertFalse(pair.host.writable)
        written = []
        pair.channel.host.observers.append(written.append)
        for p in payloads(3):
            pair.host.send(frames.DATA, 1, p)
        pair.run(duration=0.5)
        self.assertFalse([f for w in written for f in framesOf(w) if f.type == frames.DATA])
        self.assertEqual(g.frames, [])
        pair.host.resumeProducing()
        self.assertTrue(pair.host.writable)
        pair.run(until=lambda: len(g.frames) == 3)
        self.assertEqual([f.payload for f in g.frames], payloads(3))

    def test_stopProducingStops(self):
        pair, h, g = self.connected()
        pair.host.stopProducing()
        self.assertEqual(pair.host.state, "STOPPED")
        self.assertEqual(len(h.downs), 1)

    def test_lossyDelivery(self):
        """
        Over a channel that loses, corrupts and duplicates, frames arrive
        exactly once and in order both ways, in one session.
        """
        pair, h, g = self.connected(
            seed=11, dropChunkRate=0.05, corruptByteRate=0.001, dupChunkRate=0.05
        )
        sent = payloads(400)
        for p in sent:
            pair.host.send(frames.DATA, 1, p)
            pair.guest.send(frames.DATA, 2, p[::-1])
        pair.run(until=lambda: len(g.frames) >= 400 and len(h.frames) >= 400, duration=600)
        self.assertEqual([f.payload for f in g.frames], sent)
        self.assertEqual([f.payload for f in h.frames], [p[::-1] for p in sent])
        self.assertEqual((pair.host.stats["sessions"], pair.guest.stats["sessions"]), (1, 1))
        self.assertGreater(pair.host.stats["retransmits"], 0)
        self.assertGreater(pair.guest.decoder.skipped, 0)

    def test_snapshot(self):
        pair, h, g = self.connected(latency=0.01)
        for p in payloads(10):
            pair.host.send(frames.DATA, 1, p)
        pair.run(duration=3)
        snap = pair.host.snapshot()
        self.assertEqual(json.loads(json.dumps(snap)), snap)
        self.assertEqual(snap["state"], "UP")
        self.assertEqual(snap["sessions"], 1)
        self.assertAlmostEqual(snap["rtt_ms"], 20.0)
        self.assertAlmostEqual(snap["session_age"], 3.0)
        self.assertGreaterEqual(snap["frames_out"], 10)
        self.assertEqual(snap["bytes_out"], pair.channel.host.bytesWritten)
        self.assertEqual(pair.guest.snapshot()["bytes_in"], pair.channel.host.bytesDelivered)
        for key in ("stale", "retransmits", "resyncs", "skipped_bytes", "duplicates", "gaps"):
            self.assertEqual(snap[key], 0, key)
        pair.host.stop()
        self.assertIsNone(pair.host.snapshot()["session_age"])


class ReliableTests(unittest.SynchronousTestCase):
    """
    L{prokshy.link.reliable} on its own.
    """

    def test_seqDiff(self):
        self.assertEqual(seqDiff(5, 3), 2)
        self.assertEqual(seqDiff(3, 5), -2)
        self.assertEqual(seqDiff(1, SEQ_MOD - 1), 2)
        self.assertEqual(seqDiff(SEQ_MOD - 1, 1), -2)

    def test_sackCodec(self):
        ranges = [(1, 3), (SEQ_MOD - 2, 2)]
        self.assertEqual(decodeSack(encodeSack(ranges)), ranges)
        self.assertEqual(decodeSack(encodeSack(ranges) + b"xyz"), ranges)
        many = [(i, i + 1) for i in range(0, 100, 2)]
        self.assertEqual(len(decodeSack(encodeSack(many))), reliable.MAX_SACK_RANGES)

    def _frame(self, seq):
        return Frame(frames.DATA, 1, b"%d" % (seq,), seq=seq % SEQ_MOD)

    def test_receiverAcrossWrap(self):
        """
        Out of order and duplicate frames, across the sequence wrap: each
        is delivered once, in order, and held frames show in SACK ranges.
        """
        r = Receiver()
        base = SEQ_MOD - 3
        r.expected = base
        order = [base + 1, base + 3, base + 4, base + 3, base + 0, base - 1, base + 2, base + 2]
        out = []
        for s in order:
            out.extend(r.accept(self._frame(s)))
            if s == base + 4:
                held = [(base + 1, base + 2), (base + 3, base + 5)]
                self.assertEqual(r.sackRanges(), [(a % SEQ_MOD, b % SEQ_MOD) for a, b in held])
        self.assertEqual([f.seq for f in out], [(base + i) % SEQ_MOD for i in range(5)])
        self.assertEqual(r.duplicates, 3)
        self.assertEqual(r.sackRanges(), [])
        self.assertEqual(r.expected, (base + 5) % SEQ_MOD)

    def test_senderWindow(self):
        """
        The sender keeps the bytes in flight within its window, except that
        one frame always goes when nothing is in flight.
        """
        s = Sender(window=100)
        encode = lambda item: b"x" * len(item.payload)
        for _ in range(3):
            s.enqueue(frames.DATA, 1, b"y" * 150)
        self.assertEqual(len(s.takeSendable(encode, 0.0)), 1)
        self.assertEqual(s.inflight, 150)
        self.assertEqual(s.takeSendable(encode, 0.0), [])
        self.assertEqual(s.acknowledge(1), 1)
        self.assertEqual(s.inflight, 0)
        self.assertEqual(len(s.takeSendable(encode, 0.0)), 1)
        s = Sender(window=1000)
        for _ in range(10):
            s.enqueue(frames.DATA, 1, b"y" * 300)
        self.assertEqual(len(s.takeSendable(encode, 0.0)), 3)
        self.assertEqual(s.pending, 10)

    def test_senderAcrossWrap(self):
        """
        Across the sequence wrap: SACK ranges mark the frames the peer
        holds, the frames before them that the peer has read past are found
        lost and their copies go first, and a cumulative ack retires frames.
        """
        s = Sender(window=10000)
        s.nextSeq = SEQ_MOD - 2
        encode = lambda item: b"x"
        for _ in range(5):
            s.enqueue(frames.DATA, 1, b"y")
        s.takeSendable(encode, 0.0)
        self.assertEqual([i.seq for i in s.unacked], [SEQ_MOD - 2, SEQ_MOD - 1, 0, 1, 2])
        self.assertEqual([i.firstEnd for i in s.unacked], [1, 2, 3, 4, 5])
        # Frames 0 and 1 (after the wrap) are held by the peer, so it read
        # past the two before them: they were lost.
        self.assertEqual(s.sack([(0, 2)]), 2)
        self.assertEqual(s.consumed, 4)
        self.assertEqual(s.detectLoss(), 2)
        self.assertEqual(s.detectLoss(), 0)
        s.enqueue(frames.DATA, 1, b"y")
        self.assertEqual(s.takeSendable(encode, 1.0), [b"x", b"x", b"x"])
        self.assertEqual([(i.seq, i.copies, i.lastEnd) for i in s.unacked][:2],
                         [(SEQ_MOD - 2, 2, 6), (SEQ_MOD - 1, 2, 7)])
        self.assertEqual(s.unacked[-1].seq, 3)
        self.assertEqual(s.retransmits, 2)
        # Reading through offset 5 passes frame 2 (its only copy ends there)
        # but not the copies, which end at 6 and 7.
        s.readThrough(5)
        self.assertEqual(s.detectLoss(), 1)
        self.assertEqual([i.lost for i in s.unacked], [False, False, False, False, True, False])
        s.readThrough(7)
        self.assertEqual(s.detectLoss(), 2)
        self.assertEqual(s.acknowledge(1), 3)
        self.assertEqual([i.seq for i in s.unacked], [1, 2, 3])
        self.assertEqual(s.lostCount, 1)
        self.assertEqual(s.takeSendable(encode, 2.0), [b"x"])
        self.assertEqual(s.retransmits, 3)
        self.assertEqual(s.lostCount, 0)
        self.assertEqual((s.written, s.consumed, s.inflight), (9, 7, 2))


class OutOfOrderBoundTests(unittest.SynchronousTestCase):
    """
    The receiver holds out-of-order frames up to the window it advertises,
    in bytes, whatever their number (issue 7, section 7).
    """

    def _big(self, seq, size=16384):
        return Frame(frames.DATA, 1, bytes([seq % 256]) * size, seq=seq)

    def test_heldBytesBounded(self):
        """
        After a gap, 4096 frames of 16 KiB would be 64 MiB; the receiver
        keeps no more than its 256 KiB window of them and drops the rest as
        if lost.  Filling the gap delivers what it kept, in order; the
        dropped frames are accepted when they are resent.
        """
        window = 256 * 1024
        r = Receiver(window)
        for seq in range(1, 4096):
            self.assertEqual(r.accept(self._big(seq)), [])
            self.assertLessEqual(r.held, window)
        size = reliable.frameSize(self._big(1))
        kept = window // size
        self.assertEqual(len(r.ooo), kept)
        self.assertEqual(r.held, kept * size)
        self.assertEqual(r.overflows, 4095 - kept)
        self.assertEqual(r.sackRanges(), [(1, kept + 1)])
        out = r.accept(self._big(0))
        self.assertEqual([f.seq for f in out], list(range(kept + 1)))
        self.assertEqual((r.held, r.ooo), (0, {}))
        out = []
        for seq in range(kept + 1, 4096):
            out.extend(r.accept(self._big(seq)))
        self.assertEqual([f.seq for f in out], list(range(kept + 1, 4096)))

    def test_frameSize(self):
        """
        The size counted is the frame as encoded, before escaping: at most
        what the sender counts against the window.
        """
        for payload in (b"", b"x", b"\n\xdb" * 100):
            frame = Frame(frames.DATA, 1, payload, seq=3)
            self.assertEqual(reliable.frameSize(frame), len(frames.encodeRaw(
                frames.DATA, 1, payload, 3)))
            self.assertLessEqual(
                reliable.frameSize(frame), len(frames.encode(frames.DATA, 1, payload, 3))
            )

    def test_linkUsesItsWindow(self):
        """
        A link's receiver is bounded by the window the link advertises.
        """
        link = Link(Clock(), lambda data: None, "guest", Recorder(), LinkConfig(window=30000))
        self.assertEqual(link.receiver.maxHeld, 30000)


class OutOfOrderLinkTests(LinkTestCase):
    def test_senderIgnoringTheWindow(self):
        """
        A peer that ignores the window we advertise cannot make us hold
        more than it out of order: what does not fit is dropped, resent,
        and everything still arrives once, in order.
        """
        guestWindow = 16384
        pair, h, g = self.connected(None, LinkConfig(window=guestWindow), latency=0.01)
        pair.host.sender.window = 1 << 30
        first = pair.host.sender.nextSeq
        pair.channel.host.tamper = dropping(lambda f: f.type == frames.DATA and f.seq == first)
        most = [0]
        accept = pair.guest.receiver.accept

        def watched(frame):
            result = accept(frame)
            most[0] = max(most[0], pair.guest.receiver.held)
            return result

        pair.guest.receiver.accept = watched
        data = bytes(i % 251 for i in range(400 * 1024))
        h.push(data)
        pair.run(until=lambda: len(g.received) == len(data), duration=120)
        self.assertEqual(g.received, data)
        self.assertGreater(most[0], guestWindow // 2)
        self.assertLessEqual(most[0], guestWindow)
        self.assertGreater(pair.guest.receiver.overflows, 0)
        self.assertEqual(pair.host.stats["sessions"], 1)


class LimitsTests(LinkTestCase):
    """
    C{window} and C{max_payload} below the documented minimums (1024 and
    256 bytes) are refused, never silently raised (issue 7, section 9).
    """

    def test_hostWindowBelowMinimumRefused(self):
        h, g = Recorder(), Recorder()
        pair = LinkPair(h, g, LinkConfig(window=512))
        self.addCleanup(pair.stop)
        pair.guest.start()
        pair.host.start()
        pair.run(duration=5)
        self.assertEqual((h.ups, g.ups), ([], []))
        self.assertEqual(pair.host.state, "STOPPED")
        self.assertEqual(h.refused, ["window 512 is below the minimum of 1024 bytes"])
        self.assertEqual(pair.guest.state, "IDLE")

    def test_hostPayloadBelowMinimumRefused(self):
        h, g = Recorder(), Recorder()
        pair = LinkPair(h, g, LinkConfig(maxPayload=100))
        self.addCleanup(pair.stop)
        pair.guest.start()
        pair.host.start()
        pair.run(duration=5)
        self.assertEqual(pair.host.state, "STOPPED")
        self.assertEqual(h.refused, ["max_payload 100 is below the minimum of 256 bytes"])
        self.assertEqual(g.ups, [])

    def test_guestBelowMinimumIgnored(self):
        """
        A guest answering with a window below the minimum gets no session;
        the host says why, once, and keeps saying hello.
        """
        h, g = Recorder(), Recorder()
        pair = LinkPair(h, g, None, LinkConfig(window=1000))
        self.addCleanup(pair.stop)
        hellos = []
        pair.channel.host.observers.append(lambda d: isHello(d) and hellos.append(d))
        pair.guest.start()
        pair.host.start()
        pair.run(duration=5)
        self.assertEqual(h.ups, [])
        self.assertEqual(pair.host.state, "HELLO")
        self.assertEqual(pair.host.lastError, "window 1000 is below the minimum of 1024 bytes")
        self.assertGreaterEqual(len(hellos), 9)

    def test_minimumsRespected(self):
        """
        At the minimums, each side keeps to exactly what the other
        advertised: frames of at most 256 payload bytes, at most 1024 bytes
        in flight (or one frame).
        """
        pair, h, g = self.connected(None, LinkConfig(window=1024, maxPayload=256))
        self.assertEqual((pair.host.info.sendWindow, pair.host.info.sendPayload), (1024, 256))
        inflight = []
        pair.channel.host.observers.append(
            lambda d: inflight.append((pair.host.sender.inflight, len(pair.host.sender.unacked)))
        )
        data = bytes(i % 253 for i in range(20000))
        h.push(data)
        pair.run(until=lambda: len(g.received) == len(data), duration=60)
        self.assertEqual(g.received, data)
        self.assertLessEqual(max(h.sizes), 256)
        for nbytes, nframes in inflight:
            self.assertTrue(nbytes <= 1024 or nframes == 1, (nbytes, nframes))


class IncompatibleGuestTests(LinkTestCase):
    def test_restartWithoutCommonVersionKeepsSayingHello(self):
        """
        A guest that restarts speaking no version the host knows ends the
        session, and the host goes on saying hello (issue 7, section 9), so
        that when a compatible guest comes back, the session comes up.
        """
        pair, h, g = self.connected()
        pair.guest.stop()
        g2 = Recorder()
        pair.newGuest(g2, LinkConfig(extra={"v": [99]})).start()
        pair.run(until=lambda: h.downs, duration=20)
        self.assertIn("guest restarted", str(h.downs[0]))
        pair.run(duration=5)
        self.assertEqual(len(h.ups), 1)
        self.assertEqual(pair.host.state, "HELLO")
        self.assertIn("no protocol version", pair.host.lastError)
        self.assertIn("99", pair.host.lastError)
        pair.guest.stop()
        g3 = Recorder()
        pair.newGuest(g3).start()
        pair.run(until=lambda: pair.up, duration=5)
        self.assertEqual(len(h.ups), 2)
        self.assertEqual(pair.host.info.peerNonce, pair.guest.info.localNonce)


class QuietTests(LinkTestCase):
    """
    A guest link with C{quietPings} stops sending once the host has been
    silent for that many of its ping intervals.
    """

    def quietPair(self, hostPing=1.0, latency=0.0):
        return self.connected(
            LinkConfig(pingInterval=hostPing),
            LinkConfig(quietPings=3, deadAfter=30.0),
            latency=latency,
        )

    def test_silentHostMakesGuestQuiet(self):
        """
        Three seconds (three of the host's 1 s pings) after the host fell
        silent, the guest sends nothing more: no pings, no retransmissions
        of the data in flight, until --dead-after (30 s) ends the session.
        """
        pair, h, g = self.quietPair()
        self.assertEqual(pair.guest.info.peerHello["ping_interval"], 1.0)
        g.push(b"x" * 50000)  # in flight, never acknowledged
        pair.host.stop()
        pair.channel.guest.receiver = None
        start = pair.clock.seconds()
        writes = []
        pair.channel.guest.observers.append(lambda d: writes.append(pair.clock.seconds() - start))
        pair.run(until=lambda: g.downs, duration=60)
        self.assertIn("silent for 30", str(g.downs[0]))
        self.assertTrue(writes)
        self.assertLess(max(writes), 3.0 + 1e-6)
        self.assertEqual(pair.guest.stats["quiet"], 1)

    def test_followsAdvertisedPingInterval(self):
        """
        The host's hello says how often it pings; three of its intervals
        of silence (0.6 s here) make the guest quiet.
        """
        pair, h, g = self.quietPair(hostPing=0.2)
        pair.run(duration=0.1)
        pair.host.stop()
        lastHeard = pair.guest.lastHeard
        pair.run(duration=lastHeard + 0.59 - pair.clock.seconds())
        self.assertFalse(pair.guest.quiet)
        pair.run(duration=0.02)
        self.assertTrue(pair.guest.quiet)

    def test_heardAgainResumes(self):
        """
        A live host whose frames were lost for a while is heard again: the
        guest resumes where it was, in the same session, and what it held
        back is delivered.
        """
        pair, h, g = self.quietPair(latency=0.01)
        pair.channel.host.blackhole = True
        pair.run(until=lambda: pair.guest.quiet, duration=10)
        self.assertFalse(pair.guest.writable)
        sent = pair.channel.guest.bytesWritten
        data = bytes(i % 247 for i in range(30000))
        g.push(data)
        pair.run(duration=2)
        self.assertEqual(pair.channel.guest.bytesWritten, sent)
        self.assertEqual(h.received, b"")
        pair.channel.host.blackhole = False
        pair.run(until=lambda: h.received == data, duration=10)
        self.assertEqual((h.downs, g.downs), ([], []))
        self.assertFalse(pair.guest.quiet)
        self.assertEqual(pair.guest.stats["sessions"], 1)

    def test_hostNeverQuiet(self):
        """
        Without C{quietPings} (the host, by default) a link never goes
        quiet: it keeps saying hello for a restarted guest.
        """
        pair, h, g = self.connected()
        pair.guest.stop()
        pair.run(duration=6)
        self.assertFalse(pair.host.quiet)
        self.assertEqual(pair.host.stats["quiet"], 0)


class EndSessionTests(LinkTestCase):
    def test_endSession(self):
        """
        C{endSession} ends the session without a word to the peer; a guest
        waits for the next hello, a host starts a new handshake.
        """
        pair, h, g = self.connected()
        written = pair.channel.guest.bytesWritten
        pair.guest.endSession("a new client")
        self.assertEqual(str(g.downs[0]), "session ended: a new client")
        self.assertEqual(pair.guest.state, "IDLE")
        self.assertEqual(pair.channel.guest.bytesWritten, written)
        pair.guest.endSession("again")
        self.assertEqual(len(g.downs), 1)
        nonce = pair.host.info.localNonce
        pair.host.endSession("test")
        self.assertEqual(pair.host.state, "HELLO")
        pair.run(until=lambda: pair.up, duration=5)
        self.assertNotEqual(pair.host.info.localNonce, nonce)
