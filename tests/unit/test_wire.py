"""
Tests for L{prokshy.wire}: the frame codec, the resynchronising
L{FrameDecoder}, and the L{ChannelDecoder} that splits a raw channel into
hello lines and frames.
"""

import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from prokshy.wire import frames
from prokshy.wire.channel import (
    MAX_HELLO,
    ChannelDecoder,
    HelloError,
    encodeHello,
    parseHello,
)
from prokshy.wire.frames import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    Frame,
    FrameDecoder,
    encode,
    encodeFrame,
    encodeRaw,
    escape,
    unescape,
)

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# The largest payload the damage properties generate, and the decoders'
# limit for them: small, so a decoder waiting for a bogus length is flushed
# by a little padding.
SMALL_PAYLOAD = 600

u32 = st.integers(0, 2**32 - 1)
# Payloads rich in the bytes that matter: LF, the escape byte and its pair
# bytes, the magic, and 0xFF (which starts a hello after an LF).
SPECIAL = [b"\n", b"\xdb", b"\xdc", b"\xdd", b"P", b"\xf7", b"\xff", b"\x00"]
# Map the low byte values onto the special ones, so that they are common
# without drawing lists (drawing stays cheap).
_ENRICH = bytes(
    ord(SPECIAL[i % len(SPECIAL)]) if i < 6 * len(SPECIAL) else i for i in range(256)
)
payloads = st.binary(max_size=SMALL_PAYLOAD).map(lambda b: b.translate(_ENRICH))
frameStrategy = st.builds(
    Frame,
    type=st.integers(0, 255),
    stream=u32,
    payload=payloads,
    seq=u32,
    ack=u32,
    tag=u32,
    flags=st.integers(0, 255),
)
frameLists = st.lists(frameStrategy, min_size=1, max_size=6)
# Garbage that cannot start a line (the frame decoder's view of noise).
lineFreeGarbage = st.binary(max_size=80).map(lambda b: b.replace(b"\n", b"\x0b"))
helloFields = st.dictionaries(
    st.text("abcdefgh", min_size=1, max_size=6),
    st.one_of(st.integers(-5, 2**40), st.text(max_size=12), st.booleans(), st.none()),
    max_size=4,
).map(lambda d: dict(d, role="host", nonce="n0"))


def raw(frame):
    """
    The unescaped encoding of C{frame}.
    """
    return encodeRaw(
        frame.type, frame.stream, frame.payload, frame.seq, frame.ack, frame.tag, frame.flags
    )


def maxFrame(decoder):
    return HEADER_SIZE + decoder.maxPayload + 4


def feedChunks(decoder, data, cuts):
    """
    Feed C{data} to C{decoder} cut at the offsets C{cuts}; check the memory
    bound after every feed; return everything decoded.
    """
    out = []
    last = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(data))) + [len(data)]:
        out.extend(decoder.feed(data[last:cut]))
        last = cut
        frameDecoder = decoder.frameDecoder if isinstance(decoder, ChannelDecoder) else decoder
        assert frameDecoder.buffered <= maxFrame(frameDecoder), (
            frameDecoder.buffered,
            maxFrame(frameDecoder),
        )
    return out


def isSubsequence(wanted, seq):
    it = iter(seq)
    return all(any(x == y for y in it) for x in wanted)


class EscapeTests(unittest.SynchronousTestCase):
    """
    L{escape} and L{unescape}.
    """

    @PROPERTY
    @given(st.binary(max_size=2000).map(lambda b: b.translate(_ENRICH)))
    def test_roundTripWithoutLF(self, data):
        """
        Escaped data contains no LF, grows by one byte per LF or escape
        byte, and unescapes to the original.
        """
        escaped = escape(data)
        self.assertNotIn(b"\n", escaped)
        self.assertEqual(len(escaped), len(data) + data.count(b"\n") + data.count(b"\xdb"))
        self.assertEqual(unescape(escaped), data)

    def test_pairs(self):
        """
        LF and the escape byte have their two-byte forms.
        """
        self.assertEqual(escape(b"a\nb\xdbc"), b"a\xdb\xdcb\xdb\xddc")
        self.assertEqual(unescape(b"\xdb\xdc\xdb\xdd"), b"\n\xdb")

    def test_invalidPairsKept(self):
        """
        An escape byte not followed by a pair byte is left alone.
        """
        self.assertEqual(unescape(b"\xdbP\xdb"), b"\xdbP\xdb")


class FrameCodecTests(unittest.SynchronousTestCase):
    """
    L{encode}, L{encodeRaw} and L{FrameDecoder} on clean input.
    """

    @PROPERTY
    @given(frameStrategy)
    def test_roundTrip(self, frame):
        """
        A frame decodes to an equal L{Frame}, escaped through the channel
        decoder or unescaped through the frame decoder.
        """
        wire = encodeFrame(frame)
        self.assertNotIn(b"\n", wire)
        self.assertEqual(unescape(wire), raw(frame))
        self.assertEqual(FrameDecoder().feed(raw(frame)), [frame])
        self.assertEqual(ChannelDecoder().feed(wire), [frame])

    def test_layout(self):
        """
        The header is as documented: magic, version, type, flags, reserved,
        length, tag, stream, seq, ack, header CRC, then payload and its CRC.
        """
        data = encodeRaw(frames.DATA, 7, b"hi", seq=3, ack=4, tag=5, flags=1)
        self.assertEqual(data[:2], MAGIC)
        self.assertEqual(data[2:6], b"\x01\x13\x01\x00")
        self.assertEqual(data[6:8], b"\x00\x02")
        self.assertEqual(data[8:24], bytes.fromhex("00000005" "00000007" "00000003" "00000004"))
        self.assertEqual(data[24:28], zlib.crc32(data[:24]).to_bytes(4, "big"))
        self.assertEqual(data[28:30], b"hi")
        self.assertEqual(data[30:], zlib.crc32(b"hi").to_bytes(4, "big"))
        self.assertEqual(len(encodeRaw(frames.PING)), HEADER_SIZE)

    def test_frameProperties(self):
        self.assertTrue(Frame(frames.DATA).sequenced)
        self.assertFalse(Frame(frames.ACK).sequenced)
        self.assertIn("DATA", repr(Frame(frames.DATA, payload=b"xx")))

    def test_payloadLimit(self):
        """
        L{encode} refuses payloads over 65535 bytes.
        """
        encode(frames.DATA, 1, b"x" * 0xFFFF)
        self.assertRaises(ValueError, encode, frames.DATA, 1, b"x" * 0x10000)

    def test_decoderLimits(self):
        self.assertRaises(ValueError, FrameDecoder, 0)
        self.assertRaises(ValueError, FrameDecoder, 0x10000)

    @PROPERTY
    @given(frameLists, st.lists(lineFreeGarbage, min_size=7, max_size=7))
    def test_garbageAround(self, sent, garbage):
        """
        Garbage before, between and after frames is skipped and counted,
        and every frame is recovered, unescaped or escaped.
        """
        data = garbage[0] + b"".join(raw(f) + g for f, g in zip(sent, garbage[1:]))
        decoder = FrameDecoder(SMALL_PAYLOAD)
        padding = b"\x00" * maxFrame(decoder)
        out = decoder.feed(data) + decoder.feed(padding)
        self.assertEqual(out, sent)
        self.assertEqual(decoder.decoded, len(sent))
        # Every byte that was not part of a frame was skipped and counted.
        framed = sum(len(raw(f)) for f in sent)
        self.assertEqual(decoder.skipped, len(data) - framed + len(padding))
        self.assertEqual(decoder.buffered, 0)
        # One hunt per stretch of garbage; the last one runs into the padding.
        hunts = sum(1 for g in garbage[: len(sent)] if g) + 1
        self.assertEqual(decoder.resyncs, hunts)

        wire = garbage[0] + b"".join(encodeFrame(f) + g for f, g in zip(sent, garbage[1:]))
        channel = ChannelDecoder(SMALL_PAYLOAD)
        out = channel.feed(wire) + channel.feed(b"\x00" * maxFrame(channel.frameDecoder))
        self.assertEqual(out, sent)

    @PROPERTY
    @given(frameLists, st.lists(st.binary(max_size=80), min_size=7, max_size=7))
    def test_anyGarbageNeverForgesFrames(self, sent, garbage):
        """
        Whatever the garbage (LFs, 0xFF, escape bytes, magic), the channel
        decoder does not crash and every frame it yields is one that was
        sent, field for field.
        """
        wire = garbage[0] + b"".join(encodeFrame(f) + g for f, g in zip(sent, garbage[1:]))
        decoder = ChannelDecoder(SMALL_PAYLOAD)
        out = decoder.feed(wire) + decoder.feed(b"\x00" * maxFrame(decoder.frameDecoder))
        for item in out:
            self.assertIsInstance(item, Frame)
            self.assertIn(item, sent)

    @PROPERTY
    @given(frameLists, lineFreeGarbage, st.lists(st.integers(0, 6000), max_size=30))
    def test_chunkingIrrelevant(self, sent, garbage, cuts):
        """
        Cutting the input into arbitrary chunks yields the same frames, and
        the same counters, as one feed; the decoder never holds more than
        one maximal frame between feeds.
        """
        data = b"".join(garbage + raw(f) for f in sent) + garbage
        one = FrameDecoder(SMALL_PAYLOAD)
        whole = one.feed(data)
        many = FrameDecoder(SMALL_PAYLOAD)
        self.assertEqual(feedChunks(many, data, cuts), whole)
        self.assertEqual((many.skipped, many.buffered), (one.skipped, one.buffered))

    @PROPERTY
    @given(st.lists(st.binary(min_size=1, max_size=700), max_size=20), st.integers(1, 4096))
    def test_memoryBounded(self, chunks, maxPayload):
        """
        Whatever is fed, the decoder buffers at most one maximal frame
        between feeds, even when headers claim large payloads.
        """
        decoder = FrameDecoder(maxPayload)
        big = HEADER.pack(MAGIC, 1, frames.DATA, 0, maxPayload, 0, 1, 0, 0)
        big += zlib.crc32(big).to_bytes(4, "big")
        for chunk in [big] + chunks:
            decoder.feed(chunk)
            self.assertLessEqual(decoder.buffered, maxFrame(decoder))

    def test_oversizedLengthRejected(self):
        """
        A header (with a valid CRC) claiming more than C{maxPayload} bytes
        is rejected at once: the decoder does not wait for the payload, and
        the frame right after it is decoded.
        """
        header = HEADER.pack(MAGIC, 1, frames.DATA, 0, 5000, 9, 1, 0, 0)
        header += zlib.crc32(header).to_bytes(4, "big")
        good = Frame(frames.ACK, ack=3, tag=9)
        decoder = FrameDecoder(4096)
        self.assertEqual(decoder.feed(header + raw(good)), [good])
        self.assertEqual(decoder.skipped, HEADER_SIZE)
        self.assertEqual(decoder.buffered, 0)
        # One byte over the limit is over it; the limit itself is fine.
        limit = Frame(frames.DATA, 1, b"y" * 100)
        over = Frame(frames.DATA, 1, b"y" * 101)
        decoder = FrameDecoder(100)
        self.assertEqual(decoder.feed(raw(over) + raw(limit)), [limit])

    def test_badVersionAndReservedRejected(self):
        """
        Headers with a valid CRC but another version or a non-zero reserved
        byte are not frames.
        """
        good = Frame(frames.PING, tag=1)
        for version, reserved in [(2, 0), (1, 1)]:
            header = bytearray(HEADER.pack(MAGIC, version, frames.PING, 0, 0, 1, 0, 0, 0))
            header[5] = reserved
            header += zlib.crc32(header).to_bytes(4, "big")
            decoder = FrameDecoder()
            self.assertEqual(decoder.feed(bytes(header) + raw(good)), [good])
            self.assertEqual(decoder.skipped, HEADER_SIZE)

    def test_truncatedThenIntact(self):
        """
        A frame cut short is skipped once enough bytes have arrived to prove
        it bad, and the frames after it are recovered.
        """
        cut = Frame(frames.DATA, 1, b"c" * 300, seq=1)
        after = [Frame(frames.DATA, 1, b"a%d" % i, seq=2 + i) for i in range(3)]
        decoder = FrameDecoder(SMALL_PAYLOAD)
        out = decoder.feed(raw(cut)[:100] + b"".join(raw(f) for f in after))
        out += decoder.feed(b"\x00" * 300)
        self.assertEqual(out, after)
        self.assertGreaterEqual(decoder.skipped, 100)
        self.assertGreaterEqual(decoder.resyncs, 1)

    def test_trailingMagicByteKept(self):
        """
        A chunk ending in the first magic byte keeps it: it may start a
        frame.
        """
        frame = Frame(frames.PING, tag=4)
        data = b"junk" + raw(frame)
        decoder = FrameDecoder()
        self.assertEqual(decoder.feed(data[:5]), [])
        self.assertEqual(decoder.buffered, 1)
        self.assertEqual(decoder.feed(data[5:]), [frame])
        self.assertEqual(decoder.skipped, 4)


def damage(data, spans, kind, a, b, flips):
    """
    Damage C{data} (concatenated frames at C{spans}).

    @return: (damaged bytes, indexes of frames left intact, whether some
        frame was only partly damaged).
    """
    n = len(data)
    a, b = sorted((a % (n + 1), b % (n + 1)))
    starts = set(s for s, _ in spans)
    ends = set(e for _, e in spans)
    if kind == "drop":
        out = data[:a] + data[b:]
        damaged = [i for i, (s, e) in enumerate(spans) if a < b and s < b and e > a]
        partial = any(not (a <= spans[i][0] and spans[i][1] <= b) for i in damaged)
    elif kind == "dup":
        # Insert a copy of [a, b) at b: only a frame with bytes on both
        # sides of the copied range loses every intact copy of itself.
        out = data[:b] + data[a:b] + data[b:]
        damaged = [i for i, (s, e) in enumerate(spans) if s < a and e > b]
        partial = a < b and not (a in starts and b in ends)
    elif kind == "truncate":
        # Cut the frame that holds offset a just after a, losing its end.
        a = min(a, n - 1)
        i = next(i for i, (s, e) in enumerate(spans) if s <= a < e)
        s, e = spans[i]
        out = data[: max(a, s + 1)] + data[e:]
        damaged = [i]
        partial = True
    else:  # flip
        buf = bytearray(data)
        for pos, bit in flips:
            buf[pos % n] ^= 1 << bit
        out = bytes(buf)
        hit = [p for p in range(n) if buf[p] != data[p]]
        damaged = [i for i, (s, e) in enumerate(spans) if any(s <= p < e for p in hit)]
        partial = bool(damaged)
    intact = [i for i in range(len(spans)) if i not in damaged]
    return out, intact, partial


damageStrategy = st.tuples(
    st.sampled_from(["drop", "dup", "truncate", "flip"]),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1, max_size=4),
)


class DamageTests(unittest.SynchronousTestCase):
    """
    Truncation, bit flips, dropped and duplicated byte ranges: the decoders
    never deliver a damaged frame, and resynchronise to recover every frame
    the damage did not touch.
    """

    def _check(self, decoder, sent, out, intact, partial):
        for item in out:
            self.assertIsInstance(item, Frame)
            self.assertIn(item, sent)
        wanted = [sent[i] for i in intact]
        self.assertTrue(
            isSubsequence(wanted, out), "intact frames %r not all in %r" % (wanted, out)
        )
        if partial:
            self.assertGreater(decoder.skipped, 0)
            self.assertGreater(decoder.resyncs, 0)

    @PROPERTY
    @given(frameLists, damageStrategy)
    def test_frameDecoder(self, sent, dmg):
        pieces = [raw(f) for f in sent]
        spans, pos = [], 0
        for p in pieces:
            spans.append((pos, pos + len(p)))
            pos += len(p)
        data, intact, partial = damage(b"".join(pieces), spans, *dmg)
        decoder = FrameDecoder(SMALL_PAYLOAD)
        out = decoder.feed(data) + decoder.feed(b"\x00" * maxFrame(decoder))
        self._check(decoder, sent, out, intact, partial)

    @PROPERTY
    @given(frameLists, damageStrategy)
    def test_channelDecoder(self, sent, dmg):
        """
        The same on the escaped channel, where damage can also break escape
        pairs or (by a bit flip) create an LF.
        """
        pieces = [encodeFrame(f) for f in sent]
        spans, pos = [], 0
        for p in pieces:
            spans.append((pos, pos + len(p)))
            pos += len(p)
        data, intact, partial = damage(b"".join(pieces), spans, *dmg)
        decoder = ChannelDecoder(SMALL_PAYLOAD)
        out = decoder.feed(data) + decoder.feed(b"\x00" * maxFrame(decoder.frameDecoder))
        self._check(decoder, sent, out, intact, partial)

    def test_flipToLineFeedBeforeFF(self):
        """
        A byte corrupted into an LF just before a 0xFF byte (common in
        payloads) must not cost the intact frames that follow: escaped
        frames are not hello lines.
        """
        first = Frame(frames.DATA, 1, b"\x0b\xff" + b"z" * 40, seq=1, tag=7)
        after = [Frame(frames.DATA, 1, b"after %d" % (i,), seq=2 + i, tag=7) for i in range(5)]
        wire = bytearray(encodeFrame(first) + b"".join(encodeFrame(f) for f in after))
        pos = wire.index(b"\x0b\xff")
        wire[pos] ^= 0x01  # 0x0B -> 0x0A
        decoder = ChannelDecoder()
        out = decoder.feed(bytes(wire)) + decoder.feed(b"\x00" * 5000)
        self.assertEqual(out, after)


class ChannelDecoderTests(unittest.SynchronousTestCase):
    """
    L{ChannelDecoder}: hello lines and frames on one channel.
    """

    hello = {"role": "host", "nonce": "abc", "v": [1], "window": 16384}

    def test_helloRoundTrip(self):
        line = encodeHello(self.hello)
        self.assertTrue(line.startswith(b"\n\xffPROKSHY {"))
        self.assertTrue(line.endswith(b"}\n"))
        self.assertEqual(ChannelDecoder().feed(line), [self.hello])
        self.assertEqual(parseHello(line.strip(b"\n")), self.hello)

    def test_helloTooLong(self):
        self.assertRaises(ValueError, encodeHello, {"x": "y" * MAX_HELLO})

    def test_parseHelloErrors(self):
        for bad in [
            b"PROKSHY {}",
            b"\xffPROKSHY not json",
            b"\xffPROKSHY [1, 2]",
            b"\xffPROKSHY {\"a\": \"\xe9\"}",
        ]:
            self.assertRaises(HelloError, parseHello, bad)
        self.assertEqual(parseHello(b'\xffPROKSHY {"a": 1}\r'), {"a": 1})

    @PROPERTY
    @given(
        st.lists(
            st.one_of(frameStrategy, helloFields, lineFreeGarbage.map(lambda g: ("garbage", g))),
            max_size=10,
        ),
        st.lists(st.integers(0, 6000), max_size=40),
    )
    def test_hellosAnywhere(self, items, cuts):
        """
        Hello lines anywhere among frames and (LF-free) garbage, the input
        cut anywhere (also inside hello lines and escape pairs), come out
        exactly, in order.
        """
        wire = b""
        expected = []
        for item in items:
            if isinstance(item, Frame):
                wire += encodeFrame(item)
                expected.append(item)
            elif isinstance(item, dict):
                wire += encodeHello(item)
                expected.append(item)
            else:
                wire += item[1]
        decoder = ChannelDecoder(SMALL_PAYLOAD)
        out = feedChunks(decoder, wire, cuts)
        out += decoder.feed(b"\x00" * maxFrame(decoder.frameDecoder))
        self.assertEqual(out, expected)

    @PROPERTY
    @given(frameLists, st.binary(max_size=100), st.lists(st.integers(0, 6000), max_size=30))
    def test_chunkingIrrelevant(self, sent, garbage, cuts):
        """
        Whatever the garbage, the channel decoder gives the same items for
        any chunking of its input.
        """
        wire = b"".join(garbage + encodeFrame(f) for f in sent) + garbage
        one = ChannelDecoder(SMALL_PAYLOAD)
        whole = one.feed(wire)
        many = ChannelDecoder(SMALL_PAYLOAD)
        self.assertEqual(feedChunks(many, wire, cuts), whole)
        self.assertEqual(many.skipped, one.skipped)

    def test_helloSplitEverywhere(self):
        """
        A hello line between two frames decodes for every split point.
        """
        f1 = Frame(frames.DATA, 1, b"one\n\xdb", seq=0, tag=1)
        f2 = Frame(frames.ACK, 0, b"", ack=1, tag=1)
        wire = encodeFrame(f1) + encodeHello(self.hello) + encodeFrame(f2)
        for i in range(len(wire) + 1):
            decoder = ChannelDecoder()
            out = decoder.feed(wire[:i]) + decoder.feed(wire[i:])
            self.assertEqual(out, [f1, self.hello, f2], "split at %d" % (i,))
            self.assertEqual(decoder.skipped, 0)

    def test_escapePairSplit(self):
        """
        An escape pair cut between two chunks is still one byte.
        """
        frame = Frame(frames.DATA, 3, b"\n\xdb" * 20, seq=5, tag=2)
        wire = encodeFrame(frame)
        splits = [i for i in range(1, len(wire)) if wire[i - 1] == 0xDB]
        self.assertEqual(len(splits), 40)
        for i in splits:
            decoder = ChannelDecoder()
            self.assertEqual(decoder.feed(wire[:i]) + decoder.feed(wire[i:]), [frame])
        # Byte by byte.
        decoder = ChannelDecoder()
        out = []
        for i in range(len(wire)):
            out += decoder.feed(wire[i : i + 1])
        self.assertEqual(out, [frame])

    def test_truncatedFrameDroppedAtLineFeed(self):
        """
        A frame truncated mid-payload (a connection cut) does not swallow the
        short frames after it: the next LF proves it cannot complete, so a
        PING sent as LF + frame (as the link sends them) decodes at once.
        """
        big = encodeFrame(Frame(frames.DATA, 1, b"x" * 3000, seq=4, tag=9))
        ping = Frame(frames.PING, payload=b"p" * 16, tag=9)
        decoder = ChannelDecoder()
        self.assertEqual(decoder.feed(big[:1000]), [])
        self.assertEqual(decoder.feed(b"\n" + encodeFrame(ping)), [ping])
        self.assertEqual(decoder.frameDecoder.buffered, 0)
        self.assertGreaterEqual(decoder.skipped, 1000)

    def test_truncatedFrameWithoutLineFeedWaits(self):
        """
        Without an LF the decoder cannot know the frame was cut short, and
        takes the following bytes as its remainder (the CRC then rejects it
        and the decoder resynchronises).
        """
        big = encodeFrame(Frame(frames.DATA, 1, b"x" * 3000, seq=4, tag=9))
        ping = Frame(frames.PING, payload=b"p" * 16, tag=9)
        decoder = ChannelDecoder()
        decoder.feed(big[:1000])
        self.assertEqual(decoder.feed(encodeFrame(ping)), [])

    def test_garbageLineFeeds(self):
        """
        Stray LFs (blank lines, a cooked tty's CRLF) around hellos and frames
        are skipped.
        """
        frame = Frame(frames.PING, tag=3)
        wire = (
            b"\n\n\n"
            + encodeHello(self.hello)
            + b"\n\r\n"
            + encodeFrame(frame)
            + b"\n\n"
            + encodeHello(self.hello).replace(b"\n", b"\r\n")
            + encodeFrame(frame)
        )
        decoder = ChannelDecoder()
        self.assertEqual(decoder.feed(wire), [self.hello, frame, self.hello, frame])
        self.assertGreater(decoder.skipped, 0)

    def test_badHelloLine(self):
        """
        A line that starts like a hello but does not parse is skipped; the
        hello and frame after it are not.
        """
        frame = Frame(frames.PING, tag=3)
        wire = b"\n\xffPROKSHY {broken" + encodeHello(self.hello) + encodeFrame(frame)
        decoder = ChannelDecoder()
        self.assertEqual(decoder.feed(wire), [self.hello, frame])
        self.assertEqual(decoder.skipped, len(b"\xffPROKSHY {broken") + 1)

    def test_overlongHelloLine(self):
        """
        A hello line longer than C{MAX_HELLO} is dropped without growing the
        buffer past the limit; the hello and frames after its LF come out.
        """
        frame = Frame(frames.DATA, 1, b"x", seq=0, tag=3)
        wire = b"\n\xffPROKSHY " + b"A" * (3 * MAX_HELLO) + encodeHello(self.hello)
        wire += encodeFrame(frame)
        for chunk in (len(wire), 100, 1):
            decoder = ChannelDecoder()
            out = feedChunks(decoder, wire, range(chunk, len(wire), chunk))
            self.assertEqual(out, [self.hello, frame], "chunks of %d" % (chunk,))
            self.assertGreaterEqual(decoder.skipped, 3 * MAX_HELLO)
            self.assertLessEqual(len(decoder._line), MAX_HELLO)

    def test_helloLineMemoryBounded(self):
        """
        However long a line that starts like a hello runs on, the decoder
        holds at most C{MAX_HELLO} bytes of it between feeds.
        """
        decoder = ChannelDecoder()
        decoder.feed(b"\n\xffPROKSHY {")
        for _ in range(200):
            decoder.feed(b"A" * 1000)
            self.assertLessEqual(len(decoder._line), MAX_HELLO)
        self.assertGreaterEqual(decoder.skipped, 200000 - MAX_HELLO)

    def test_overlongHelloLineThenFrames(self):
        """
        Frames that follow an over-long hello line without an LF are decoded
        once the line has been given up, whether the input comes in one
        chunk or many.
        """
        after = [Frame(frames.DATA, 1, b"p%d" % (i,) * 50, seq=i, tag=3) for i in range(20)]
        junk = b"\n\xffPROKSHY " + b"A" * (MAX_HELLO + 10)
        wire = junk + b"".join(encodeFrame(f) for f in after)
        results = {}
        for chunk in (len(wire), 512, 1):
            decoder = ChannelDecoder()
            results[chunk] = feedChunks(decoder, wire, range(chunk, len(wire), chunk))
        self.assertEqual(results[1], after)
        self.assertEqual(results[512], after)
        self.assertEqual(results[len(wire)], after)
