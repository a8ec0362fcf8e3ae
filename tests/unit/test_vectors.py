"""
The codec against C{docs/vectors.json}: the protocol's test vectors, which a
second implementation can run too (see its C{how_to_use}).

The vectors are data, not code: this module checks the codec against them,
and rebuilds them only when asked (C{python -m tests.unit.test_vectors --write}),
so a change to the codec that changes the wire fails here first.
"""

import json
import os
import sys
import zlib

from twisted.trial.unittest import TestCase

from prokshy.wire import channel, frames

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VECTORS = os.path.join(ROOT, "docs", "vectors.json")

_TYPES = {name: value for value, name in frames.NAMES.items()}


def _frameFields(ftype, stream=0, payload=b"", seq=0, ack=0, tag=0, flags=0):
    return {
        "type": frames.NAMES[ftype],
        "stream": stream,
        "payload_hex": payload.hex(),
        "seq": seq,
        "ack": ack,
        "tag": tag,
        "flags": flags,
    }


def _fromFields(f):
    return frames.Frame(
        _TYPES[f["type"]], f["stream"], bytes.fromhex(f["payload_hex"]), f["seq"], f["ack"], f["tag"], f["flags"]
    )


def _toFields(frame):
    return _frameFields(frame.type, frame.stream, frame.payload, frame.seq, frame.ack, frame.tag, frame.flags)


_TAG = 0x1F2E3D4C
_HELLO = {
    "agent": "prokshy/0.2.0",
    "features": [],
    "max_payload": 16384,
    "nonce": "8edfbc8007dcf5a0",
    "role": "host",
    "v": [1],
    "window": 262144,
}


def _wire(*frameArgs):
    return frames.encode(*frameArgs)


def build():
    """
    Build the vectors from the reference codec.
    """
    f_ping = (frames.PING, 0, b"", 0, 0, _TAG)
    f_open = (frames.OPEN, 1, b'{"kind":"exec","name":"sysinfo"}', 0, 0, _TAG)
    f_data = (frames.DATA, 1, b"line one\nline two\n\xdb\x0a\xdb\xdc", 1, 3, _TAG)
    f_magic = (frames.DATA, 3, b"\x50\xf7\x01\x13 looks like a header", 7, 2, _TAG)
    f_ack = (frames.ACK, 0, b"\x00\x00\x00\x05\x00\x00\x00\x07", 0, 4, _TAG, frames.FLAG_NACK)
    f_exit = (frames.EXIT, 1, b'{"code":0}', 2, 3, _TAG)
    f_goodbye = (frames.GOODBYE, 0, b'{"reason":"stopping"}', 0, 9, _TAG)

    frameVectors = []
    for name, args in [
        ("PING, no payload (no payload CRC either)", f_ping),
        ("OPEN with a JSON payload", f_open),
        ("DATA whose payload holds LF, 0xDB and both escape pairs", f_data),
        ("DATA whose payload starts like a frame header", f_magic),
        ("ACK with the NACK flag and one SACK range", f_ack),
        ("EXIT", f_exit),
        ("GOODBYE with a reason", f_goodbye),
    ]:
        raw = frames.encodeRaw(*args)
        frameVectors.append(
            {
                "name": name,
                "fields": _frameFields(*args),
                "header_crc32": raw[24:28].hex(),
                "raw_hex": raw.hex(),
                "wire_hex": frames.escape(raw).hex(),
            }
        )

    escapes = [
        {"raw_hex": raw.hex(), "wire_hex": frames.escape(raw).hex()}
        for raw in [b"", b"abc", b"\n", b"\xdb", b"\xdb\xdc", b"\xdb\xdd", b"\n\n\xdb\n", b"\xdc\xdd\xff\x00"]
    ]

    crcs = [
        {"input_hex": data.hex(), "crc32": "%08x" % (zlib.crc32(data),)}
        for data in [b"", b"123456789", b"\x00" * 4, bytes(range(256))]
    ]

    helloWire = channel.encodeHello(_HELLO)
    hellos = {
        "valid": [
            {"fields": _HELLO, "wire_hex": helloWire.hex()},
            {"fields": {"role": "guest", "v": [1]}, "wire_hex": channel.encodeHello({"role": "guest", "v": [1]}).hex()},
        ],
        "line_with_trailing_cr_is_valid": {
            "wire_hex": (helloWire[:-1] + b"\r\n").hex(),
            "fields": _HELLO,
        },
    }

    data = _wire(*f_data)
    ping = _wire(*f_ping)
    opened = _wire(*f_open)
    exited = _wire(*f_exit)
    corruptPayload = bytearray(data)
    corruptPayload[40] ^= 0x20
    corruptHeader = bytearray(opened)
    corruptHeader[14] ^= 0x01
    badVersion = bytearray(frames.encodeRaw(*f_ping))
    badVersion[2] = 2
    badVersion[24:28] = frames.CRC.pack(zlib.crc32(bytes(badVersion[:24])))
    badVersion = frames.escape(bytes(badVersion))
    splitAt = data.index(b"\xdb") + 1

    cases = [
        ("two frames back to back", [opened + data], [f_open, f_data]),
        ("garbage before a frame is skipped", [b"login: \x1b[0m\x00\x50" + opened], [f_open]),
        ("a frame cut short, then LF: the partial frame is dropped at the LF, the next frame is whole",
         [opened[:20] + b"\n" + data], [f_data]),
        ("a payload CRC mismatch drops the frame; the decoder resyncs on the next",
         [bytes(corruptPayload) + exited], [f_exit]),
        ("a header CRC mismatch drops the frame; the decoder resyncs on the next",
         [bytes(corruptHeader) + exited], [f_exit]),
        ("an unknown version is treated as corruption", [badVersion + exited], [f_exit]),
        ("a frame delivered one byte at a time", [bytes([b]) for b in data], [f_data]),
        ("an escape pair split across reads", [data[:splitAt], data[splitAt:]], [f_data]),
        ("bytes that look like a header inside a payload do not confuse the decoder",
         [_wire(*f_magic) + ping], [f_magic, f_ping]),
        ("a duplicated frame is decoded twice (the link discards the copy by its seq)",
         [data + data], [f_data, f_data]),
        ("a hello line between frames", [opened + helloWire + exited], [f_open, "hello", f_exit]),
        ("a hello line split across reads", [helloWire[:7], helloWire[7:]], ["hello"]),
        ("LF 0xFF followed by non-hello bytes is handed back to the frame decoder: no frame is lost",
         [b"\n\xff" + data], [f_data]),
        ("a hello line with bad JSON is garbage", [b"\n\xffPROKSHY {not json}\n" + ping], [f_ping]),
        ("a hello line that is not a JSON object is garbage", [b"\n\xffPROKSHY [1,2]\n" + ping], [f_ping]),
        ("an over-long hello-like line is handed back to the frame decoder",
         [b"\n\xffPROKSHY {" + b"x" * 2100 + b"}\n" + ping], [f_ping]),
        ("a bare hello line with no leading LF at the very start of the stream is not a hello",
         [helloWire[1:] + ping], [f_ping]),
        ("the line protocol's echo and CR LF around frames is skipped", [b"sysinfo\r\n" + ping + b"\r\n"], [f_ping]),
    ]
    decoder = []
    for name, chunks, expect in cases:
        decoder.append(
            {
                "name": name,
                "chunks_hex": [c.hex() for c in chunks],
                "expect": [
                    {"hello": _HELLO} if e == "hello" else {"frame": _frameFields(*e)} for e in expect
                ],
            }
        )

    return {
        "format": 1,
        "description": "Test vectors for the prokshy wire protocol (docs/protocol.md): CRCs, escaping, "
        "frame encoding, hello lines, and the channel decoder's resynchronisation.",
        "how_to_use": [
            "Hex strings are lowercase, without separators.",
            "crc: crc32 of input is the CRC-32 of docs/protocol.md (IEEE, as zlib.crc32), as 8 hex digits.",
            "escape: escaping raw gives wire; unescaping wire gives raw.",
            "frames: encoding fields (payload_hex is the payload) gives raw_hex before escaping and wire_hex "
            "on the wire; decoding wire_hex gives fields.",
            "hellos.valid: encoding fields gives wire_hex exactly (JSON with sorted keys, no spaces, ASCII); "
            "parsing wire_hex gives fields.",
            "decoder: feed a fresh channel decoder the chunks in order; it yields exactly the expect items, "
            "in order: a frame with those fields, or a hello with those fields. Nothing else is delivered.",
        ],
        "constants": {
            "magic_hex": frames.MAGIC.hex(),
            "version": frames.VERSION,
            "header_size": frames.HEADER_SIZE,
            "max_hello": channel.MAX_HELLO,
            "hello_prefix_hex": channel.HELLO_PREFIX.hex(),
            "types": {name: value for name, value in sorted(_TYPES.items(), key=lambda kv: kv[1])},
            "flags": {"NACK": frames.FLAG_NACK},
        },
        "crc": crcs,
        "escape": escapes,
        "frames": frameVectors,
        "hellos": hellos,
        "decoder": decoder,
    }


def load():
    with open(VECTORS, encoding="utf-8") as f:
        return json.load(f)


class VectorTests(TestCase):
    """
    The reference codec satisfies every vector.
    """

    def setUp(self):
        self.v = load()

    def test_constants(self):
        c = self.v["constants"]
        self.assertEqual(bytes.fromhex(c["magic_hex"]), frames.MAGIC)
        self.assertEqual(c["header_size"], frames.HEADER_SIZE)
        self.assertEqual(c["max_hello"], channel.MAX_HELLO)
        self.assertEqual(bytes.fromhex(c["hello_prefix_hex"]), channel.HELLO_PREFIX)
        self.assertEqual(c["types"], _TYPES)

    def test_crc(self):
        self.assertIn({"input_hex": b"123456789".hex(), "crc32": "cbf43926"}, self.v["crc"])
        for case in self.v["crc"]:
            self.assertEqual("%08x" % (zlib.crc32(bytes.fromhex(case["input_hex"])),), case["crc32"])

    def test_escape(self):
        for case in self.v["escape"]:
            raw, wire = bytes.fromhex(case["raw_hex"]), bytes.fromhex(case["wire_hex"])
            self.assertEqual(frames.escape(raw), wire)
            self.assertEqual(frames.unescape(wire), raw)
            self.assertNotIn(b"\n", wire)

    def test_frames(self):
        for case in self.v["frames"]:
            frame = _fromFields(case["fields"])
            self.assertEqual(frames.encodeFrame(frame).hex(), case["wire_hex"], case["name"])
            raw = bytes.fromhex(case["raw_hex"])
            self.assertEqual(raw[24:28].hex(), case["header_crc32"])
            self.assertEqual(frames.escape(raw).hex(), case["wire_hex"])
            decoded = frames.FrameDecoder().feed(frames.unescape(bytes.fromhex(case["wire_hex"])))
            self.assertEqual([_toFields(f) for f in decoded], [case["fields"]], case["name"])

    def test_hellos(self):
        for case in self.v["hellos"]["valid"]:
            self.assertEqual(channel.encodeHello(case["fields"]).hex(), case["wire_hex"])
            self.assertEqual(channel.ChannelDecoder().feed(bytes.fromhex(case["wire_hex"])), [case["fields"]])
        cr = self.v["hellos"]["line_with_trailing_cr_is_valid"]
        self.assertEqual(channel.ChannelDecoder().feed(bytes.fromhex(cr["wire_hex"])), [cr["fields"]])

    def test_decoder(self):
        self.assertGreaterEqual(len(self.v["decoder"]), 15)
        for case in self.v["decoder"]:
            decoder = channel.ChannelDecoder()
            got = []
            for chunk in case["chunks_hex"]:
                for item in decoder.feed(bytes.fromhex(chunk)):
                    got.append({"hello": item} if isinstance(item, dict) else {"frame": _toFields(item)})
            self.assertEqual(got, case["expect"], case["name"])

    def test_upToDate(self):
        """
        The file is what the reference codec builds: regenerate it with
        C{python -m tests.unit.test_vectors --write} only for a deliberate change
        of the wire format.
        """
        self.assertEqual(self.v, json.loads(json.dumps(build())))


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python -m tests.unit.test_vectors --write")
    with open(VECTORS, "w", encoding="utf-8") as f:
        json.dump(build(), f, indent=1)
        f.write("\n")
