# -*- test-case-name: tests.system.test_cli_answers -*-
"""
Hello lines in a line-protocol reply: after the C{auto} mode's fallback a
framed agent may still answer the CLI's hello (late, on a slow channel).
Its hello, and our own hellos echoed by a tty, must never reach stdout;
L{HelloFilter} takes them out of the byte stream and hands them to
L{prokshy.cli.fallback.AutoChannel}, which decides what they mean.
"""

from prokshy.wire.channel import HELLO_PREFIX, MAX_HELLO, HelloError, parseHello

#: What L{HelloFilter.feed} returns for a hello-like line that does not parse.
GARBAGE = object()

_NOT_HELLO = object()


class HelloFilter:
    """
    Takes the raw bytes of a line-protocol reply and separates out hello
    lines (C{LF 0xFF "PROKSHY " ... LF}, with a C{CR} before the LF when a
    tty echoes them), which are never output.

    Bytes that may be the start of a hello line are held back until the
    next bytes decide: a proper prefix of C{0xFF "PROKSHY "} after an LF,
    and, while C{holdLF()} is true, the LF (and a CR before it) at the end
    of what arrived.  Once output has begun C{holdLF()} is false and a
    trailing LF is passed on at once; a hello starting right after it is
    still recognised.  Once its prefix is complete, a hello line is
    collected while its bytes fit one (printable ASCII or CR, at most
    2048 bytes in all); a byte that does not fit gives the whole line back
    as output.
    """

    def __init__(self, holdLF=lambda: True):
        self._prefix = HELLO_PREFIX
        self._maxLine = MAX_HELLO - 2
        self.holdLF = holdLF
        self._held = b""
        self._line = None
        self._lead = b""
        self._afterLF = False

    def _match(self, buf, j):
        """
        C{"full"} if the hello prefix starts at C{buf[j]}, C{"partial"} if
        C{buf[j:]} is a proper prefix of it, else C{"no"}.
        """
        prefix = self._prefix
        rest = buf[j:j + len(prefix)]
        if rest == prefix:
            return "full"
        if len(rest) < len(prefix) and prefix.startswith(rest):
            return "partial"
        return "no"

    def _collect(self, buf, i):
        """
        Add C{buf[i:]} to the hello line being collected.

        @return: C{(index, result)}: C{None} (all taken, the line goes on),
            L{_NOT_HELLO} (C{buf[index]} does not fit), or the parsed hello
            (a dict, or L{GARBAGE}) with C{index} just after its LF.
        """
        line = self._line
        n = len(buf)
        while i < n:
            b = buf[i]
            if b == 0x0A:
                try:
                    hello = parseHello(bytes(line))
                except HelloError:
                    hello = GARBAGE
                return i + 1, hello
            if len(line) >= self._maxLine or not (0x20 <= b <= 0x7E or b == 0x0D):
                return i, _NOT_HELLO
            line.append(b)
            i += 1
        return n, None

    def feed(self, data):
        """
        Take received bytes.

        @return: C{(output, hello, rest)}: the bytes to pass on now, then
            either C{None} (everything was taken) or a hello line (a dict,
            or L{GARBAGE}) followed by C{rest}, the bytes after it, not yet
            looked at.
        """
        out = bytearray()
        if self._line is not None:
            i, result = self._collect(data, 0)
            if result is None:
                return b"", None, b""
            if result is not _NOT_HELLO:
                self._line = None
                return b"", result, data[i:]
            out += self._lead + self._line
            self._line = None
            self._afterLF = False
            data = data[i:]
        buf = self._held + data
        self._held = b""
        start = 0
        pos = 0
        candidate = self._afterLF
        self._afterLF = False
        while True:
            if candidate:
                # The LF before buf[0] was passed on already.
                j, lead = 0, 0
                candidate = False
            else:
                k = buf.find(b"\n", pos)
                if k < 0:
                    break
                j = k + 1
                lead = 2 if k > start and buf[k - 1] == 0x0D else 1
            m = self._match(buf, j)
            if m == "full":
                out += buf[start:j - lead]
                self._lead = buf[j - lead:j]
                self._line = bytearray(self._prefix)
                i, result = self._collect(buf, j + len(self._prefix))
                if result is None:
                    return bytes(out), None, b""
                if result is _NOT_HELLO:
                    out += self._lead + self._line
                    self._line = None
                    start = pos = i
                    continue
                self._line = None
                return bytes(out), result, buf[i:]
            if m == "partial":
                if lead == 0:
                    out += buf[start:j]
                    self._held = buf[j:]
                    self._afterLF = True
                elif j == len(buf) and not self.holdLF():
                    out += buf[start:]
                    self._afterLF = True
                else:
                    out += buf[start:j - lead]
                    self._held = buf[j - lead:]
                return bytes(out), None, b""
            pos = j
        out += buf[start:]
        if out.endswith(b"\n"):
            self._afterLF = True
        return bytes(out), None, b""

    def flush(self):
        """
        The reply ended: the bytes held back.  An unfinished hello line is
        dropped.
        """
        held, self._held = self._held, b""
        self._line = None
        return held


__all__ = ["GARBAGE", "HelloFilter"]
