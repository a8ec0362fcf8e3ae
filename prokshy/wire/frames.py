# -*- test-case-name: tests.unit.test_wire -*-
"""
The frame codec: pure functions and a resynchronising decoder, no I/O.

A frame, before escaping (all integers big-endian)::

    off  len  field
    0    2    magic 0x50 0xF7
    2    1    version (1)
    3    1    type
    4    1    flags
    5    1    reserved, 0
    6    2    payload length
    8    4    session tag
    12   4    stream id
    16   4    sequence number (0 for unsequenced types)
    20   4    acknowledgement: next sequence number expected from the peer
    24   4    CRC-32 of bytes 0..23
    28   n    payload
    28+n 4    CRC-32 of the payload (only when n > 0)

On the wire every frame is escaped so that it never contains LF (0x0A):
0xDB becomes 0xDB 0xDD and 0x0A becomes 0xDB 0xDC.  A peer that has fallen
back to the line protocol therefore never sees a command line inside framed
traffic.  See docs/protocol.md for the whole specification.
"""

import struct
import zlib

import attr

MAGIC = b"\x50\xf7"
VERSION = 1
HEADER = struct.Struct(">2sBBBxHIIII")
HEADER_SIZE = HEADER.size + 4  # 28, with the header CRC
CRC = struct.Struct(">I")
MAX_PAYLOAD_LIMIT = 0xFFFF

ESC = 0xDB
_ESC = b"\xdb"
_ESC_ESC = b"\xdb\xdd"
_ESC_LF = b"\xdb\xdc"

# Frame types.  Unsequenced (session) types are never acknowledged.
PING = 0x02
PONG = 0x03
ACK = 0x04
GOODBYE = 0x05
# Sequenced types: delivered reliably, once, in order.
OPEN = 0x10
ACCEPT = 0x11
REFUSE = 0x12
DATA = 0x13
STDERR = 0x14
WINDOW = 0x15
EOF = 0x16
EXIT = 0x17
SIGNAL = 0x18
CLOSE = 0x19
RESET = 0x1A

SEQUENCED = frozenset(range(0x10, 0x20))

NAMES = {
    PING: "PING",
    PONG: "PONG",
    ACK: "ACK",
    GOODBYE: "GOODBYE",
    OPEN: "OPEN",
    ACCEPT: "ACCEPT",
    REFUSE: "REFUSE",
    DATA: "DATA",
    STDERR: "STDERR",
    WINDOW: "WINDOW",
    EOF: "EOF",
    EXIT: "EXIT",
    SIGNAL: "SIGNAL",
    CLOSE: "CLOSE",
    RESET: "RESET",
}

# Flags.
FLAG_NACK = 0x01  # on ACK: a gap was seen, resend from the ack number


@attr.s(frozen=True, slots=True, repr=False)
class Frame:
    """
    One decoded frame.

    @ivar type: the frame type.
    @ivar stream: the stream id (0 for the session).
    @ivar payload: the payload bytes.
    @ivar seq: the sequence number (sequenced types only).
    @ivar ack: the sender's cumulative acknowledgement.
    @ivar tag: the session tag.
    @ivar flags: the flags byte.
    """

    type = attr.ib()
    stream = attr.ib(default=0)
    payload = attr.ib(default=b"")
    seq = attr.ib(default=0)
    ack = attr.ib(default=0)
    tag = attr.ib(default=0)
    flags = attr.ib(default=0)

    @property
    def sequenced(self):
        return self.type in SEQUENCED

    def __repr__(self):
        return "<Frame %s stream=%d seq=%d ack=%d len=%d>" % (
            NAMES.get(self.type, hex(self.type)),
            self.stream,
            self.seq,
            self.ack,
            len(self.payload),
        )


def escape(data):
    """
    Escape C{data} so that it contains no LF byte.
    """
    return data.replace(_ESC, _ESC_ESC).replace(b"\n", _ESC_LF)


def unescape(data):
    """
    Undo L{escape}.  Invalid escape pairs are left as they are; the CRCs
    reject whatever they belong to.
    """
    if _ESC not in data:
        # The common case, found at memchr speed: a search for the two-byte
        # pairs costs ten times as much.
        return data
    return data.replace(_ESC_LF, b"\n").replace(_ESC_ESC, _ESC)


def encodeRaw(ftype, stream=0, payload=b"", seq=0, ack=0, tag=0, flags=0):
    """
    Encode a frame, unescaped.
    """
    header = HEADER.pack(
        MAGIC, VERSION, ftype, flags, len(payload), tag, stream, seq, ack
    )
    parts = [header, CRC.pack(zlib.crc32(header))]
    if payload:
        parts.append(payload)
        parts.append(CRC.pack(zlib.crc32(payload)))
    return b"".join(parts)


def encode(ftype, stream=0, payload=b"", seq=0, ack=0, tag=0, flags=0):
    """
    Encode a frame as it goes on the wire (escaped).

    @raise ValueError: if the payload is larger than the codec's limit.
    """
    if len(payload) > MAX_PAYLOAD_LIMIT:
        raise ValueError("payload of %d bytes is over the limit" % (len(payload),))
    return escape(encodeRaw(ftype, stream, payload, seq, ack, tag, flags))


def encodeFrame(frame):
    """
    Encode a L{Frame} as it goes on the wire.
    """
    return encode(
        frame.type,
        frame.stream,
        frame.payload,
        frame.seq,
        frame.ack,
        frame.tag,
        frame.flags,
    )


class FrameDecoder:
    """
    Decode frames from an unescaped byte stream, resynchronising after any
    garbage, truncation, loss, duplication or corruption.

    Memory is bounded: at most one maximal frame plus one input chunk is
    buffered.  Bytes that were not part of a valid frame are counted in
    C{skipped}; C{resyncs} counts the times the decoder had to hunt, and
    C{decoded} the valid frames it returned.

    @ivar maxPayload: the largest payload accepted; longer frames are
        treated as corruption.
    """

    def __init__(self, maxPayload=MAX_PAYLOAD_LIMIT):
        if not 0 < maxPayload <= MAX_PAYLOAD_LIMIT:
            raise ValueError("maxPayload must be in 1..%d" % (MAX_PAYLOAD_LIMIT,))
        self.maxPayload = maxPayload
        # Bytes held for a frame not complete yet, as the chunks they came
        # in; they are joined once there are C{_need} of them, so a frame
        # that arrives in many chunks is copied once, not once per chunk.
        self._parts = []
        self._have = 0
        self._need = 0
        self.skipped = 0
        self.resyncs = 0
        self.decoded = 0
        self._hunting = False

    def _skipped(self, n):
        if n:
            if not self._hunting:
                self._hunting = True
                self.resyncs += 1
            self.skipped += n

    def feed(self, data):
        """
        Add unescaped bytes; return the list of complete valid frames.
        """
        if self._parts:
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            buf = b"".join(self._parts)
        else:
            buf = bytes(data)
        n = len(buf)
        pos = 0
        out = []
        crc32, unpackHeader, unpackCRC = zlib.crc32, HEADER.unpack_from, CRC.unpack_from
        maxPayload = self.maxPayload
        need = 0
        while True:
            start = buf.find(MAGIC, pos)
            if start < 0:
                # Keep a trailing first magic byte: it may start a frame.
                keep = 1 if n > pos and buf[n - 1] == MAGIC[0] else 0
                self._skipped(n - keep - pos)
                pos = n - keep
                need = HEADER_SIZE
                break
            self._skipped(start - pos)
            pos = start
            if n - pos < HEADER_SIZE:
                need = HEADER_SIZE
                break
            _magic, version, ftype, flags, length, tag, stream, seq, ack = unpackHeader(buf, pos)
            if (
                crc32(buf[pos : pos + HEADER.size]) != unpackCRC(buf, pos + HEADER.size)[0]
                or version != VERSION
                or buf[pos + 5] != 0
                or length > maxPayload
            ):
                self._skipped(1)
                pos += 1
                continue
            total = HEADER_SIZE + length + (4 if length else 0)
            if n - pos < total:
                need = total
                break
            payload = b""
            if length:
                at = pos + HEADER_SIZE
                payload = buf[at : at + length]
                if crc32(payload) != unpackCRC(buf, at + length)[0]:
                    self._skipped(1)
                    pos += 1
                    continue
            pos += total
            self._hunting = False
            self.decoded += 1
            out.append(Frame(ftype, stream, payload, seq, ack, tag, flags))
        rest = buf[pos:] if pos else buf
        self._parts = [rest] if rest else []
        self._have = len(rest)
        self._need = need
        return out

    def discardPartial(self):
        """
        Drop a partly received frame: the caller knows it cannot complete
        (an LF was seen, and escaped frames never contain one).
        """
        self._skipped(self._have)
        self._parts = []
        self._have = 0
        self._hunting = False

    @property
    def buffered(self):
        """
        The number of bytes held while waiting for the rest of a frame.
        """
        return self._have
