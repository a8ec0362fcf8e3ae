"""
Progress on long transfers (issue 11, section 5), with real processes: the
C{prokshy} CLI as a subprocess, its stderr a pty (or a pipe), its stdout a
file, against the real guest agent (L{tests.hostharness}), directly on a
VM's socket and through the daemon.

What the pty received is replayed on a tiny terminal model
(L{renderScreen}): whatever the progress line drew and erased, the screen
must end up holding exactly the command's stderr lines and the summary.
"""

import errno
import fcntl
import hashlib
import os
import re
import struct
import sys
import termios

from twisted.internet import error, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from tests.hostharness import DEFAULT_SCRIPTS, ROOT, HostHarness

_ENV = dict(os.environ)
_ENV["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [_ENV.get("PYTHONPATH")] if p])
_ENV.pop("PROKSHY_SOCKET", None)

CHUNK = 65536
CHUNKS = 64

# Writes CHUNKS chunks of CHUNK bytes (chunk i is the byte i), with a short
# sleep after each, and a line "note N" on stderr every 16 chunks: a few MB,
# slowly enough for several redraws (its run time is a lower bound).
_SLOW = (
    "import sys, time\n"
    "out = sys.stdout.buffer\n"
    "for i in range(%d):\n"
    "    if i %% 16 == 0:\n"
    "        sys.stderr.write('note %%d\\n' %% (i // 16)); sys.stderr.flush()\n"
    "    out.write(bytes([i %% 256]) * %d); out.flush()\n"
    "    time.sleep(0.04)\n"
) % (CHUNKS, CHUNK)

# Reads stdin slowly, then prints its size and sha256.
_SLOWREAD = (
    "import hashlib, sys, time\n"
    "h = hashlib.sha256(); n = 0\n"
    "while True:\n"
    "    data = sys.stdin.buffer.read1(%d)\n"
    "    if not data:\n"
    "        break\n"
    "    h.update(data); n += len(data)\n"
    "    time.sleep(0.02)\n"
    "print(n, h.hexdigest())\n"
) % (CHUNK,)


# Reads stdin slowly, telling on stdout every 32 chunks, then its size.
_SLOWECHO = (
    "import sys, time\n"
    "n = 0; i = 0\n"
    "while True:\n"
    "    data = sys.stdin.buffer.read1(%d)\n"
    "    if not data:\n"
    "        break\n"
    "    n += len(data)\n"
    "    if i %% 32 == 0:\n"
    "        print('got', i // 32, flush=True)\n"
    "    i += 1\n"
    "    time.sleep(0.02)\n"
    "print('done', n, flush=True)\n"
) % (CHUNK,)


def _script(program):
    return "#!/bin/sh\nexec %s -c '%s'\n" % (sys.executable, program.replace("'", "'\\''"))


SCRIPTS = dict(DEFAULT_SCRIPTS, slow=_script(_SLOW), slowread=_script(_SLOWREAD), slowecho=_script(_SLOWECHO))

EXPECTED_OUT = b"".join(bytes([i % 256]) * CHUNK for i in range(CHUNKS))
NOTES = ["note %d" % (i,) for i in range(CHUNKS // 16)]


def renderScreen(data):
    """
    The lines a terminal shows after C{data}: text overwrites at the cursor,
    C{\\r} goes to the line's start, C{\\n} to the next line, C{ESC [ K}
    erases to the end of the line.  Any other escape sequence fails.
    """
    lines = [[]]
    col = 0
    i = 0
    text = data.decode("utf-8", "replace")
    while i < len(text):
        c = text[i]
        if text.startswith("\x1b[K", i):
            del lines[-1][col:]
            i += 3
            continue
        if c == "\x1b":
            raise AssertionError("unexpected escape sequence at %d: %r" % (i, text[i : i + 10]))
        if c == "\r":
            col = 0
        elif c == "\n":
            lines.append([])
            col = 0
        else:
            line = lines[-1]
            if col < len(line):
                line[col] = c
            else:
                line.extend(" " * (col - len(line)))
                line.append(c)
            col += 1
        i += 1
    rendered = ["".join(line) for line in lines]
    if rendered and rendered[-1] == "":
        rendered.pop()
    return rendered


def draws(data, label):
    """
    How many times the progress line of C{label} was drawn (the summary,
    which says C{in}, excluded).
    """
    found = re.findall(rb"\r" + label.encode() + rb"  ([^\r\n\x1b]*)\x1b\[K", data)
    return len([f for f in found if b" in " not in f])


class _PtyReader:
    """
    Reads a pty's master side until the slave side is closed everywhere.
    """

    def __init__(self, fd):
        self.fd = fd
        self.chunks = []
        self.done = Deferred()
        os.set_blocking(fd, False)
        reactor.addReader(self)

    def fileno(self):
        return self.fd

    def logPrefix(self):
        return "pty"

    def doRead(self):
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self._end()
            return None
        self.chunks.append(data)
        return None

    def connectionLost(self, reason):
        self._end()

    def _end(self):
        if not self.done.called:
            reactor.removeReader(self)
            os.close(self.fd)
            self.done.callback(b"".join(self.chunks))


class _CLI(ProcessProtocol):
    def __init__(self, closeOutAfter=None, feed=None, slowOut=False):
        self.err = []
        self.out = 0
        self.outData = []
        self.closeOutAfter = closeOutAfter
        self.feed = feed
        self.slowOut = slowOut
        self.ended = Deferred()
        self._calls = []

    def _later(self, delay, f):
        self._calls.append(reactor.callLater(delay, f))

    def connectionMade(self):
        if self.feed is not None:
            self._feed(0)

    def _feed(self, i):
        # Stdin, slowly: COUNT chunks, DELAY seconds apart, then its end.
        chunk, count, delay = self.feed
        if self.ended.called:
            return
        if i == count:
            self.transport.closeChildFD(0)
            return
        self.transport.writeToChild(0, chunk(i))
        self._later(delay, lambda: self._feed(i + 1))

    def childDataReceived(self, fd, data):
        if fd == 2:
            self.err.append(data)
        elif fd == 1:
            self.out += len(data)
            if self.slowOut:
                # A slow reader: a pause after each read.
                self.outData.append(data)
                self.transport.pauseProducing()
                self._later(0.03, self._resume)
            if self.closeOutAfter is not None and self.out >= self.closeOutAfter:
                # the reader goes away, as | head does
                self.closeOutAfter = None
                self.transport.closeChildFD(1)

    def _resume(self):
        if not self.ended.called:
            self.transport.resumeProducing()

    def processEnded(self, reason):
        for call in self._calls:
            if call.active():
                call.cancel()
        code = reason.value.exitCode
        self.ended.callback(code if code is not None else -(reason.value.signal or 0))


class _Run:
    """
    Runs the CLI (C{self.target} names the socket) with its descriptors as
    a test wants them.
    """

    timeout = 120

    @inlineCallbacks
    def cli(self, args, stderr="pty", stdinPath=None, columns=100, stdout="file", feed=None):
        """
        Run C{prokshy TARGET ARGS}, stdout to a file (or, C{stdout="pty"},
        the same pty as stderr), stderr to a pty (with C{columns}) or a
        pipe, stdin from C{stdinPath} or nothing.

        @return: C{(stdout bytes, stderr bytes, exit code)}.
        """
        outPath = os.path.join(self.h.dir, "out-%d" % (len(os.listdir(self.h.dir)),))
        outFD = os.open(outPath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.addCleanup(os.close, outFD)
        inFD = os.open(stdinPath if stdinPath else os.devnull, os.O_RDONLY)
        self.addCleanup(os.close, inFD)
        childFDs = {0: inFD if feed is None else "w", 1: outFD}
        closeOutAfter = None
        if isinstance(stdout, int):
            # a pipe whose reader closes after this many bytes
            childFDs[1], closeOutAfter = "r", stdout
        elif stdout == "slowpipe":
            childFDs[1] = "r"
        reader = None
        if stderr == "pty":
            master, slave = os.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
            childFDs[2] = slave
            if stdout == "pty":
                childFDs[1] = slave
        else:
            childFDs[2] = "r"
        proto = _CLI(closeOutAfter, feed, stdout == "slowpipe")
        process = reactor.spawnProcess(
            proto,
            sys.executable,
            [sys.executable, "-m", "prokshy.cli.main"] + self.target + list(args),
            env=_ENV,
            path=ROOT,
            childFDs=childFDs,
        )

        def kill():
            if not proto.ended.called:
                try:
                    process.signalProcess("KILL")
                except error.ProcessExitedAlready:
                    pass
            return proto.ended

        self.addCleanup(kill)
        if stderr == "pty":
            os.close(slave)
            reader = _PtyReader(master)
        killer = reactor.callLater(60, kill)
        code = yield proto.ended
        if killer.active():
            killer.cancel()
        if reader is not None:
            err = yield reader.done
        else:
            err = b"".join(proto.err)
        with open(outPath, "rb") as f:
            out = f.read()
        if stdout == "slowpipe":
            out = b"".join(proto.outData)
        return out, err.replace(b"\r\n", b"\n"), code

    def assertSummary(self, line, label):
        self.assertRegex(line, r"^%s  [0-9.]+ [kMG]?B in [0-9.hms]+, [0-9.]+ [kMG]?B/s$" % (label,))


class ProgressTests(_Run, TestCase):
    """
    The CLI's progress line on stderr, on a VM's socket.
    """

    @inlineCallbacks
    def setUp(self):
        self.h = yield HostHarness(self, scripts=SCRIPTS, daemon=False).start()
        self.target = ["--socket-path", self.h.vms["vm1"].socketPath]

    @inlineCallbacks
    def test_outputOnPty(self):
        """
        stderr a terminal, stdout a file: the output's progress line is
        drawn (at least twice) and replaced by a summary; the command's own
        stderr lines are intact on the screen; stdout is exact.
        """
        out, err, code = yield self.cli(["--command", "slow", "--from-string", ""])
        self.assertEqual(code, 0, err)
        self.assertTrue(out == EXPECTED_OUT, "stdout differs (%d bytes)" % (len(out),))
        self.assertGreaterEqual(draws(err, "output"), 2, err[-2000:])
        screen = renderScreen(err)
        self.assertEqual(screen[:-1], NOTES, screen)
        self.assertSummary(screen[-1], "output")
        self.assertIn("4.2 MB in", screen[-1])
        for line in re.findall(rb"\routput  ([^\r\n\x1b]*)\x1b\[K", err):
            self.assertRegex(line.decode(), r"^[0-9.]+ [kMG]?B(  [0-9.]+ [kMG]?B/s)?( in .*)?")
            self.assertLess(len(line) + len("output  "), 100)

    @inlineCallbacks
    def test_narrowTerminal(self):
        """
        The line fits the terminal's width (TIOCGWINSZ on stderr): it never
        wraps.
        """
        out, err, code = yield self.cli(["--command", "slow", "--from-string", ""], columns=20)
        self.assertEqual(code, 0, err)
        self.assertGreaterEqual(len(re.findall(rb"\r[^\r\n\x1b]*\x1b\[K", err)), 2)
        for drawn in re.findall(rb"\r([^\r\n\x1b]*)\x1b\[K", err):
            self.assertLessEqual(len(drawn), 19, drawn)
        self.assertEqual(renderScreen(err)[: len(NOTES)], NOTES)

    @inlineCallbacks
    def test_pipeGetsNone(self):
        """
        stderr a pipe: not one byte of progress, the command's stderr as is.
        """
        out, err, code = yield self.cli(["--command", "slow", "--from-string", ""], stderr="pipe")
        self.assertEqual(code, 0, err)
        self.assertTrue(out == EXPECTED_OUT)
        self.assertEqual(err, "".join(n + "\n" for n in NOTES).encode())

    @inlineCallbacks
    def test_progressForcedOnPipe(self):
        """
        C{--progress}: the line goes to a pipe too.
        """
        out, err, code = yield self.cli(["--progress", "--command", "slow", "--from-string", ""], stderr="pipe")
        self.assertEqual(code, 0, err)
        self.assertTrue(out == EXPECTED_OUT)
        self.assertGreaterEqual(draws(err, "output"), 2, err[-2000:])
        screen = renderScreen(err)
        self.assertEqual(screen[:-1], NOTES)
        self.assertSummary(screen[-1], "output")

    @inlineCallbacks
    def test_noProgressOnPty(self):
        """
        C{--no-progress}: nothing on a terminal either.
        """
        out, err, code = yield self.cli(["--no-progress", "--command", "slow", "--from-string", ""])
        self.assertEqual(code, 0, err)
        self.assertTrue(out == EXPECTED_OUT)
        self.assertEqual(err, "".join(n + "\n" for n in NOTES).encode())

    @inlineCallbacks
    def test_shortOutputNone(self):
        """
        An ordinary command's output (under the threshold) draws nothing,
        even with C{--progress}.
        """
        out, err, code = yield self.cli(["--progress", "--command", "both", "--from-string", ""])
        self.assertEqual((out, err, code), (b"out\n", b"err\n", 0))

    @inlineCallbacks
    def test_stdinFromFile(self):
        """
        C{--stdin} from a regular file: the upload's line has the total, a
        percentage and an ETA; its summary ends it; the command got every
        byte.
        """
        path = os.path.join(self.h.dir, "upload")
        data = os.urandom(CHUNKS * CHUNK)
        with open(path, "wb") as f:
            f.write(data)
        out, err, code = yield self.cli(["--command", "slowread", "--stdin"], stdinPath=path)
        self.assertEqual(code, 0, err)
        self.assertEqual(out, b"%d %s\n" % (len(data), hashlib.sha256(data).hexdigest().encode()))
        self.assertGreaterEqual(draws(err, "stdin"), 2, err[-2000:])
        self.assertRegex(err, rb"\rstdin  [0-9.]+ [kM]?B / 4\.2 MB  [0-9]+%  [0-9.]+ [kMG]?B/s  (ETA [0-9ms]+|stalled)\x1b\[K")
        screen = renderScreen(err)
        self.assertEqual(len(screen), 1, screen)
        self.assertSummary(screen[0], "stdin")
        self.assertIn("4.2 MB in", screen[0])


    @inlineCallbacks
    def test_sameTerminal(self):
        """
        stdout the same terminal as stderr, C{--stdin} from a file: the
        upload's line is drawn only between the command's stdout lines
        (and erased before each), which all stay intact on the screen.
        """
        path = os.path.join(self.h.dir, "upload")
        with open(path, "wb") as f:
            f.write(b"u" * (CHUNKS * CHUNK))
        out, err, code = yield self.cli(["--command", "slowecho", "--stdin"], stdinPath=path, stdout="pty")
        self.assertEqual((out, code), (b"", 0), err)
        self.assertGreaterEqual(draws(err, "stdin"), 1, err[-2000:])
        screen = renderScreen(err)
        summaries = [line for line in screen if line.startswith("stdin  ")]
        self.assertEqual(len(summaries), 1, screen)
        self.assertSummary(summaries[0], "stdin")
        lines = [line for line in screen if not line.startswith("stdin  ")]
        # (a read may return less than a chunk: at least CHUNKS // 32 lines)
        self.assertGreaterEqual(len(lines), CHUNKS // 32 + 1, screen)
        self.assertEqual(lines, ["got %d" % (i,) for i in range(len(lines) - 1)] + ["done %d" % (CHUNKS * CHUNK,)])
        # no output line: the output is on the terminal
        self.assertEqual(draws(err, "output"), 0)


    @inlineCallbacks
    def test_readerGone(self):
        """
        stdout's reader goes away (C{| head}): the CLI exits 141 quietly,
        the line erased and no summary.
        """
        out, err, code = yield self.cli(["--command", "slow", "--from-string", ""], stdout=2 * 1024 * 1024)
        self.assertEqual(code, 141, err)
        self.assertGreaterEqual(draws(err, "output"), 1, err[-2000:])
        self.assertNotIn(b" in ", err.split(b"note")[-1])
        screen = renderScreen(err)
        self.assertEqual(screen, NOTES[: len(screen)], screen)


class DaemonProgressTests(ProgressTests):
    """
    The same through the daemon.
    """

    @inlineCallbacks
    def setUp(self):
        self.h = yield HostHarness(self, scripts=SCRIPTS).start()
        self.target = ["--connect", "unix:path=%s" % (self.h.unixPath,)]


def _allowFiles(harness):
    """
    Give each VM's agent an --allow-files directory (before start).
    """
    for name, vm in harness.vms.items():
        d = os.path.join(harness.dir, name + ".files")
        os.mkdir(d, 0o755)
        os.chmod(d, 0o755)
        vm.guestArgs += ["--allow-files", d]
    return os.path.join(harness.dir, "vm1.files")


def _chunk(i):
    return bytes([i % 256]) * CHUNK


class FileProgressTests(_Run, TestCase):
    """
    C{--push} and C{--pull} (L{prokshy.cli.files}, through
    L{prokshy.cli.progressrun.FileProgress}): the line is labelled with the
    remote path.
    """

    @inlineCallbacks
    def setUp(self):
        self.h = HostHarness(self, scripts=SCRIPTS, daemon=False)
        self.allow = _allowFiles(self.h)
        yield self.h.start()
        self.target = ["--socket-path", self.h.vms["vm1"].socketPath]

    @inlineCallbacks
    def test_pushSlowStdin(self):
        """
        C{--push - REMOTE} from a pipe fed slowly: the line is drawn at
        least twice, then its summary; the file is exact on the guest.
        """
        remote = os.path.join(self.allow, "pushed.bin")
        out, err, code = yield self.cli(["--push", "-", remote], feed=(_chunk, CHUNKS, 0.03))
        self.assertEqual((out, code), (b"", 0), err)
        with open(remote, "rb") as f:
            self.assertTrue(f.read() == EXPECTED_OUT, "the pushed file differs")
        self.assertGreaterEqual(draws(err, remote), 2, err[-2000:])
        screen = renderScreen(err)
        self.assertEqual(len(screen), 1, screen)
        self.assertSummary(screen[0], re.escape(remote))

    @inlineCallbacks
    def test_pushSlowStdinPipe(self):
        """
        The same with stderr a pipe: no progress at all.
        """
        remote = os.path.join(self.allow, "pushed.bin")
        out, err, code = yield self.cli(["--push", "-", remote], stderr="pipe", feed=(_chunk, 16, 0.03))
        self.assertEqual((out, err, code), (b"", b"", 0))

    @inlineCallbacks
    def test_pullSlowReader(self):
        """
        C{--pull REMOTE -} to a slow pipe (stderr a terminal): the line is
        drawn at least twice, then its summary; the bytes are exact.
        """
        remote = os.path.join(self.allow, "big.bin")
        with open(remote, "wb") as f:
            f.write(EXPECTED_OUT)
        out, err, code = yield self.cli(["--pull", remote, "-"], stdout="slowpipe")
        self.assertEqual(code, 0, err)
        self.assertTrue(out == EXPECTED_OUT, "the pulled bytes differ (%d)" % (len(out),))
        self.assertGreaterEqual(draws(err, remote), 2, err[-2000:])
        screen = renderScreen(err)
        self.assertEqual(len(screen), 1, screen)
        self.assertSummary(screen[0], re.escape(remote))
