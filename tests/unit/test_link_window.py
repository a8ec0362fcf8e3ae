"""
Issue 8, section 5: what a link writes toward its peer is counted exactly
against the peer's window, and a channel that loses nothing never sees a
retransmission or a resync, however slowly the peer reads.

The guest's side is modelled as bhyve and a FreeBSD tty do it
(L{TtyQueue}): a 23040-byte input queue that the guest reads at its own
pace, with stalls, and host bytes that do not fit are dropped.
"""

from twisted.trial import unittest

from prokshy.link.reliable import reserveFor
from prokshy.link.session import LinkConfig
from prokshy.wire import frames
from prokshy.wire.channel import ChannelDecoder, encodeHello
from prokshy.testing import LinkPair, deterministicNonces
from tests.unit.test_link import Recorder, framesOf, isHello

#: bhyve discards host data in pieces of this size when the queue is full.
RING_PIECE = 2048
#: FreeBSD's tty input queue at 115200 baud.
TTY_QUEUE = 23040
#: What the guest agent advertises on a tty.
TTY_WINDOW = 16384
#: What the host advertises.
HOST_WINDOW = 256 * 1024
#: PINGs and PONGs are never held back: the window may be exceeded by a
#: few of them (each 45 bytes, 46 with the LF, a little more if escaped).
PINGS = 4 * 60


class TtyQueue:
    """
    The guest's input queue: host bytes wait here until the guest reads
    them, C{readSize} bytes every C{readEvery} seconds except during the
    C{stalls} (C{(start, end)} clock times); bytes that arrive when they do
    not fit are dropped, in pieces of L{RING_PIECE}, as bhyve drops them.

    @ivar peak: the most bytes ever waiting.
    @ivar dropped: bytes dropped.
    """

    def __init__(self, clock, guest, capacity=TTY_QUEUE, readSize=4096, readEvery=0.001, stalls=()):
        self.clock = clock
        self.guest = guest
        self.capacity = capacity
        self.readSize = readSize
        self.readEvery = readEvery
        self.stalls = list(stalls)
        self.queue = bytearray()
        self.peak = 0
        self.dropped = 0
        self.reads = 0
        self._call = None

    def dataReceived(self, data):
        for start in range(0, len(data), RING_PIECE):
            piece = data[start : start + RING_PIECE]
            if len(self.queue) + len(piece) > self.capacity:
                self.dropped += len(piece)
            else:
                self.queue += piece
        self.peak = max(self.peak, len(self.queue))
        self._schedule(self.readEvery)

    def _schedule(self, delay):
        if self._call is None and self.queue:
            self._call = self.clock.callLater(delay, self._read)

    def _read(self):
        self._call = None
        now = self.clock.seconds()
        for start, end in self.stalls:
            if start <= now < end:
                self._schedule(end - now)
                return
        chunk = bytes(self.queue[: self.readSize])
        del self.queue[: self.readSize]
        self.reads += 1
        self.guest.dataReceived(chunk)
        self._schedule(self.readEvery)

    def stop(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


def pattern(n, seed):
    return bytes((i * 131 + seed) % 251 for i in range(n))


class WindowTestCase(unittest.SynchronousTestCase):
    def setUp(self):
        deterministicNonces(self, seed=21)

    def ttyPair(self, latency=0.0005, **tty):
        """
        A host and a tty guest joined by a lossless channel whose guest end
        is a L{TtyQueue}.
        """
        self.h, self.g = Recorder(), Recorder()
        pair = LinkPair(
            self.h,
            self.g,
            LinkConfig(window=HOST_WINDOW, maxPayload=16384),
            LinkConfig(window=TTY_WINDOW, maxPayload=4096),
            latency=latency,
        )
        self.addCleanup(pair.stop)
        self.tty = TtyQueue(pair.clock, pair.guest, **tty)
        self.addCleanup(self.tty.stop)
        pair.channel.guest.receiver = self.tty
        pair.connect()
        return pair


class AccountingTests(WindowTestCase):
    def test_slowGuestLosesNothing(self):
        """
        2 MB to a guest that reads 1 MB/s with stalls (the longest 1.2 s:
        the retransmission timer expires several times), while it sends
        1 MB back: at every moment what waits in its queue (and the pipe
        toward it) is at most what the host counts, and that is within the
        guest's window; the 23040-byte queue never overflows; nothing is
        resent and nothing resynchronises.  (PINGs and PONGs, which are never
        held back, may exceed the window by a few.)  The timer's expiries only wrote
        checkpoints.
        """
        stalls = [(0.3 + 0.4 * k, 0.35 + 0.4 * k) for k in range(10)] + [(1.05, 2.25)]
        pair = self.ttyPair(readSize=1024, stalls=stalls)
        host, guest = pair.host, pair.guest
        tty, toGuest = self.tty, pair.channel.host
        worst = []

        def check(data):
            # Called as the host writes, after it counted the write.
            waiting = len(tty.queue) + toGuest.pending + len(data)
            self.assertLessEqual(waiting, host.sender.inflight)
            self.assertLessEqual(host.sender.inflight, TTY_WINDOW + PINGS)
            worst.append(host.sender.inflight)

        toGuest.observers.append(check)
        down, up = pattern(2000000, 1), pattern(1000000, 2)
        self.h.push(down)
        self.g.push(up)
        pair.run(until=lambda: len(self.g.received) == len(down) and len(self.h.received) == len(up))
        self.assertEqual(self.g.received, down)
        self.assertEqual(self.h.received, up)
        self.assertEqual(tty.dropped, 0)
        self.assertLessEqual(tty.peak, TTY_WINDOW + PINGS)
        self.assertGreater(max(worst), TTY_WINDOW - reserveFor(TTY_WINDOW) - 4200)
        for link in (host, guest):
            self.assertEqual(link.stats["retransmits"], 0)
            self.assertEqual(link.receiver.duplicates, 0)
            self.assertEqual(link.decoder.resyncs, 0)
            self.assertEqual(link.stats["sessions"], 1)
        self.assertGreater(pair.clock.seconds(), 3.0)
        self.assertGreaterEqual(host.stats["checkpoints"], 3)
        self.assertGreater(tty.reads, 1900)

    def test_everyByteCounts(self):
        """
        Everything the host writes in the session counts: frames as escaped
        on the wire, ACKs, PINGs, PONGs and hello lines (a re-hello while
        the guest's answers are delayed).  The host's count starts at the
        hellos the guest may not have read (here: none, it answered the
        only one); the guest's at its answer.
        """
        pair = self.ttyPair()
        host, guest = pair.host, pair.guest
        self.assertEqual(host.sender.written, 0)
        self.assertEqual(guest.sender.written, guest.stats["bytes_out"])
        written = {"host": [], "guest": []}
        pair.channel.host.observers.append(written["host"].append)
        pair.channel.guest.observers.append(written["guest"].append)
        # Payloads of LF and the escape byte double on the wire.
        nasty = b"\n\xdb" * 1500
        host.send(frames.DATA, 1, nasty)
        [item] = host.sender.unacked
        self.assertEqual(item.size, len(frames.encode(frames.DATA, 1, nasty, item.seq,
                                                      host.receiver.expected, host.info.tag)))
        self.assertGreater(item.size, 2 * len(nasty))
        self.g.push(pattern(50000, 3))
        pair.run(until=lambda: len(self.h.received) == 50000)
        # The guest's answers take 2.5 s: the host says hello again.
        pair.channel.guest.latency = 2.5
        pair.run(duration=3.0)
        pair.channel.guest.latency = 0.0005
        pair.run(duration=3.0)
        kinds = set()
        for data in written["host"]:
            if isHello(data):
                kinds.add("hello")
            kinds.update(frames.NAMES[f.type] for f in framesOf(data))
        self.assertEqual(kinds, {"hello", "DATA", "ACK", "PING", "PONG"})
        self.assertEqual(host.sender.written, sum(map(len, written["host"])))
        answer = guest.stats["bytes_out"] - sum(map(len, written["guest"]))
        self.assertEqual(guest.sender.written, sum(map(len, written["guest"])) + answer)
        self.assertGreater(answer, 100)
        # All of it read, and known to be: nothing counts any more.
        self.assertEqual(pair.channel.pending, 0)
        self.assertEqual(host.stats["sessions"], 1)

    def test_hostHellosBeforeTheSession(self):
        """
        Hellos the host repeated before the guest's answer arrived may
        still wait in the guest's queue: all but one count.
        """
        h, g = Recorder(), Recorder()
        pair = LinkPair(h, g, latency=1.2)
        self.addCleanup(pair.stop)
        hellos = []
        pair.channel.host.observers.append(lambda d: isHello(d) and hellos.append(len(d)))
        pair.connect()
        self.assertGreaterEqual(len(hellos), 4)
        self.assertEqual(pair.host.sender.written, sum(hellos[1:]))

    def test_resentCopiesCount(self):
        """
        A frame proven lost is resent: its lost copy no longer counts (the
        guest read past it), the new copy does.
        """
        pair = self.ttyPair()
        host = pair.host
        pair.run(duration=1.5)
        dropped = []

        def tamper(data):
            kept = [f for f in framesOf(data) if not (f.type == frames.DATA and not dropped and f.seq == 0)]
            if len(kept) < len(framesOf(data)):
                dropped.append(data)
                return b"".join(frames.encodeFrame(f) for f in kept)
            return data

        pair.channel.host.tamper = tamper
        before = host.sender.written
        host.send(frames.DATA, 1, b"a" * 1000)
        copy = host.sender.unacked[0].size
        host.send(frames.DATA, 1, b"b" * 1000)
        self.assertEqual(len(dropped), 1)
        pair.run(until=lambda: len(self.g.frames) == 2)
        self.assertEqual(host.stats["retransmits"], 1)
        self.assertEqual(host.sender.unacked[0].copies if host.sender.unacked else 2, 2)
        pair.run(until=lambda: not host.sender.unacked)
        self.assertGreaterEqual(host.sender.written - before, 3 * copy)
        self.assertEqual([f.payload[:1] for f in self.g.frames], [b"a", b"b"])


class ProofTests(WindowTestCase):
    def test_delayedIsNotLost(self):
        """
        Acknowledgements that stop for 3 s (the guest stops reading) make
        the timer expire again and again, but a frame is only resent once
        the guest has read past it without it: never, here.
        """
        pair = self.ttyPair(stalls=[(2.0, 5.0)])
        pair.run(until=lambda: pair.clock.seconds() >= 1.99)
        self.h.push(pattern(100000, 4))
        pair.run(until=lambda: len(self.g.received) == 100000)
        self.assertGreaterEqual(pair.clock.seconds(), 5.0)
        self.assertGreaterEqual(pair.host.stats["checkpoints"], 3)
        self.assertEqual(pair.host.stats["retransmits"], 0)
        self.assertEqual(self.tty.dropped, 0)

    def test_noResyncsFromOurOwnLines(self):
        """
        A hello line followed by a PING (whose LF starts an empty line) is
        no damage: the decoder does not count it as a resync.
        """
        decoder = ChannelDecoder()
        hello = encodeHello({"role": "host", "nonce": "n"})
        ping = b"\n" + frames.encode(frames.PING, 0, b"p" * 16)
        items = decoder.feed(hello + ping + hello + hello + ping)
        self.assertEqual([type(i).__name__ for i in items], ["dict", "Frame", "dict", "dict", "Frame"])
        self.assertEqual((decoder.resyncs, decoder.skipped), (0, 0))
