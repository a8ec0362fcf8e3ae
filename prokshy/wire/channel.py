# -*- test-case-name: tests.unit.test_wire -*-
"""
The channel codec: the raw byte stream of a framed channel carries escaped
frames and hello lines, and nothing else.

Escaped frames never contain LF, so an LF also tells the decoder that any
partly received frame was truncated: it is dropped at once instead of
swallowing the frames after it.  Senders put an LF before every PING, so a
truncated frame never holds up a session for longer than a ping interval.

A hello line is::

    LF 0xFF "PROKSHY" SP <JSON object, ASCII only> LF

Escaped frames never contain LF, so after any LF the decoder looks at the
next byte: 0xFF starts a hello line, anything else is frame data (or
garbage, which the frame decoder skips).  Hello lines are printable apart
from the 0xFF, so a cooked tty on the far side cannot act on them as control
characters, and the original shell agent ignores them (the 0xFF fails its
name check).
"""

import json

from prokshy.wire.frames import ESC, FrameDecoder, MAX_PAYLOAD_LIMIT, unescape

HELLO_PREFIX = b"\xffPROKSHY "
MAX_HELLO = 2048


class HelloError(ValueError):
    """
    A hello line that does not parse.
    """


def encodeHello(fields):
    """
    Encode a hello line for the JSON-able mapping C{fields}.
    """
    body = json.dumps(fields, separators=(",", ":"), sort_keys=True, ensure_ascii=True)
    line = b"\n" + HELLO_PREFIX + body.encode("ascii") + b"\n"
    if len(line) > MAX_HELLO:
        raise ValueError("hello line too long")
    return line


def parseHello(line):
    """
    Parse a hello line (without its LFs) into a dict.

    @raise HelloError: if it is not a well-formed hello line.
    """
    line = line.rstrip(b"\r")
    if not line.startswith(HELLO_PREFIX):
        raise HelloError("not a hello line")
    try:
        fields = json.loads(line[len(HELLO_PREFIX) :].decode("ascii"))
    except (UnicodeDecodeError, ValueError) as e:
        raise HelloError("bad hello JSON: %s" % (e,))
    if not isinstance(fields, dict):
        raise HelloError("hello is not a JSON object")
    return fields


class ChannelDecoder:
    """
    Split a raw channel byte stream into hello lines and frames.

    @ivar frameDecoder: the L{FrameDecoder}; its counters include
        everything skipped here too.
    """

    _FRAMES, _AFTER_LF, _HELLO = range(3)

    def __init__(self, maxPayload=MAX_PAYLOAD_LIMIT):
        self.frameDecoder = FrameDecoder(maxPayload)
        self._state = self._FRAMES
        self._heldEsc = b""
        self._line = bytearray()

    @property
    def skipped(self):
        return self.frameDecoder.skipped

    @property
    def resyncs(self):
        return self.frameDecoder.resyncs

    def _frameBytes(self, raw, out):
        raw = self._heldEsc + raw
        self._heldEsc = b""
        if raw and raw[-1] == ESC:
            # An escape pair may be split across chunks.
            self._heldEsc = raw[-1:]
            raw = raw[:-1]
        if raw:
            out.extend(self.frameDecoder.feed(unescape(raw)))

    def _helloBytes(self, data, pos, out):
        """
        Collect a hello line while the bytes still fit one (the prefix, then
        printable ASCII or CR, at most MAX_HELLO); on the first byte that does not,
        hand everything back to the frame decoder, so that damage which
        looks like the start of a hello line costs no frames.
        """
        line = self._line
        prefix = HELLO_PREFIX
        n = len(data)
        i = pos
        while i < n:
            b = data[i]
            if b == 0x0A:
                break
            k = len(line)
            if k >= MAX_HELLO - 2:
                break
            if k < len(prefix):
                if b != prefix[k]:
                    break
            elif not (0x20 <= b <= 0x7E or b == 0x0D):
                break
            line.append(b)
            i += 1
        if i == n:
            return n
        self._line = bytearray()
        if data[i] == 0x0A:
            self._state = self._AFTER_LF
            try:
                out.append(parseHello(bytes(line)))
            except HelloError:
                self._garbage(len(line) + 1)
            return i + 1
        self._state = self._FRAMES
        self._frameBytes(bytes(line), out)
        return i

    def _garbage(self, n):
        if n:
            self.frameDecoder.skipped += n
            self.frameDecoder.resyncs += 1

    def feed(self, data):
        """
        Add raw channel bytes.

        @return: a list of items, each either a L{Frame} or a C{dict} (a
            parsed hello).
        """
        out = []
        pos = 0
        n = len(data)
        while pos < n:
            if self._state == self._FRAMES:
                lf = data.find(b"\n", pos)
                if lf < 0:
                    self._frameBytes(data[pos:], out)
                    break
                self._frameBytes(data[pos:lf], out)
                # Escaped frames never contain LF: whatever partial frame is
                # buffered was truncated (lost bytes, a cut connection).
                self._heldEsc = b""
                self.frameDecoder.discardPartial()
                self._state = self._AFTER_LF
                pos = lf + 1
            elif self._state == self._AFTER_LF:
                if data[pos] == 0xFF:
                    self._state = self._HELLO
                    self._line = bytearray()
                elif data[pos] == 0x0A:
                    # An empty line (a hello line, then a PING's LF): a
                    # boundary like any other, not damage.
                    pos += 1
                else:
                    self._state = self._FRAMES
            else:
                pos = self._helloBytes(data, pos, out)
        return out
