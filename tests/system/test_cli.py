"""
Tests for the C{prokshy} command in its legacy (original-compatible) form:
L{prokshy.cli.legacy}, L{prokshy.cli.options} and L{prokshy.cli.main}.
"""

import errno
import io
import os
import re
import shutil
import sys
import tempfile
import time

import prokshy
from prokshy._version import __version__
from prokshy.cli import main as climain
from prokshy.cli.legacy import (
    EchoStripper,
    LegacyExchange,
    OutputError,
    runLegacy,
)
from prokshy.cli.options import DEFAULT_TIMEOUT, firstLine, parseArgs
from twisted.internet import defer, error, protocol, reactor, task, utils
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest


class BrokenOutput:
    """
    An output whose writes fail like a closed pipe.
    """

    def write(self, data):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


def exchange(command=b"statgrab", data=b"foo", timeout=1.0, output=None):
    """
    Build a connected L{LegacyExchange} on a L{StringTransport} and a
    L{task.Clock}.

    @return: C{(protocol, transport, output, clock)}
    """
    clock = task.Clock()
    output = io.BytesIO() if output is None else output
    proto = LegacyExchange(command, data, output, timeout, clock)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, output, clock


class LegacyExchangeTests(unittest.TestCase):
    """
    Tests for L{LegacyExchange}.
    """

    def test_request(self):
        """
        On connection the request C{NAME LF DATA LF} is written, and nothing
        else.
        """
        _, transport, _, _ = exchange(b"OpenFile", b"filename=/tmp/x")
        self.assertEqual(transport.value(), b"OpenFile\nfilename=/tmp/x\n")

    def test_requestEmptyData(self):
        """
        Empty data still sends its (empty) line.
        """
        _, transport, _, _ = exchange(b"statgrab", b"")
        self.assertEqual(transport.value(), b"statgrab\n\n")

    def test_idleTimeout(self):
        """
        The exchange ends, with code 0, after C{idleTimeout} seconds without
        data, and drops the connection.
        """
        proto, transport, _, clock = exchange(timeout=0.5)
        clock.advance(0.49)
        self.assertFalse(proto.done.called)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.01)
        self.assertEqual(self.successResultOf(proto.done), 0)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_dataResetsIdleTimeout(self):
        """
        Each received chunk restarts the idle timeout.
        """
        proto, _, output, clock = exchange(timeout=1.0)
        clock.advance(0.8)
        proto.dataReceived(b"a")
        clock.advance(0.8)
        proto.dataReceived(b"b")
        clock.advance(0.8)
        self.assertFalse(proto.done.called)
        clock.advance(0.2)
        self.assertEqual(self.successResultOf(proto.done), 0)
        self.assertEqual(output.getvalue(), b"ab")

    def test_outputRaw(self):
        """
        Received bytes reach the output unchanged, binary ones included.
        """
        proto, _, output, clock = exchange()
        payload = bytes(range(256)) + b"\r\n\x00\xff"
        proto.dataReceived(payload)
        clock.advance(1)
        self.assertEqual(output.getvalue(), payload)

    def test_stripCRLFEcho(self):
        """
        The request echoed by a cooked tty (C{CR LF} line ends) is removed.
        """
        proto, _, output, clock = exchange(b"statgrab", b"foo")
        proto.dataReceived(b"statgrab\r\nfoo\r\ncpu.idle = 7\r\n")
        clock.advance(1)
        self.assertEqual(output.getvalue(), b"cpu.idle = 7\r\n")

    def test_stripLFEcho(self):
        """
        An echo with plain C{LF} line ends is removed too.
        """
        proto, _, output, clock = exchange(b"statgrab", b"foo")
        proto.dataReceived(b"statgrab\nfoo\nout\n")
        clock.advance(1)
        self.assertEqual(output.getvalue(), b"out\n")

    def test_stripEchoEmptyData(self):
        """
        With empty data the echo is the name line and an empty line.
        """
        proto, _, output, clock = exchange(b"statgrab", b"")
        proto.dataReceived(b"statgrab\r\n\r\nout\r\n")
        clock.advance(1)
        self.assertEqual(output.getvalue(), b"out\r\n")

    def test_stripEchoSplitByteByByte(self):
        """
        An echo arriving one byte at a time is still removed, and the
        output after it is passed on.
        """
        proto, _, output, clock = exchange(b"statgrab", b"foo")
        for i, byte in enumerate(b"statgrab\r\nfoo\r\nout"):
            proto.dataReceived(bytes([byte]))
            if i < len(b"statgrab\r\nfoo\r\n") - 1:
                self.assertEqual(output.getvalue(), b"")
        clock.advance(1)
        self.assertEqual(output.getvalue(), b"out")

    def test_stripEchoSplitAcrossChunks(self):
        """
        An echo split at arbitrary points over several chunks is removed.
        """
        proto, _, output, clock = exchange(b"statgrab", b"foo")
        proto.dataReceived(b"stat")
        proto.dataReceived(b"grab\r")
        proto.dataReceived(b"\nfoo\r\nline")
        proto.dataReceived(b" two\r\n")
        clock.advance(1)
        self.assertEqual(output.getvalue(), b"line two\r\n")

    def test_nonEchoPassedThrough(self):
        """
        Output that is not the echo is passed through untouched, including
        the bytes held while it looked like the echo.
        """
        proto, _, output, clock = exchange(b"statgrab", b"foo")
        proto.dataReceived(b"stat")
        proto.dataReceived(b"grab\r\nbar\r\n")
        clock.advance(1)
        self.assertEqual(output.getvalue(), b"statgrab\r\nbar\r\n")

    def test_echoOnlyAsPrefix(self):
        """
        The echo is only removed at the very start of the output.
        """
        proto, _, output, clock = exchange(b"statgrab", b"foo")
        proto.dataReceived(b"x")
        proto.dataReceived(b"statgrab\r\nfoo\r\n")
        clock.advance(1)
        self.assertEqual(output.getvalue(), b"xstatgrab\r\nfoo\r\n")

    def test_echoRemovedOnce(self):
        """
        Only one echo is removed; a second copy is output.
        """
        proto, _, output, clock = exchange(b"statgrab", b"foo")
        proto.dataReceived(b"statgrab\r\nfoo\r\n")
        proto.dataReceived(b"statgrab\r\nfoo\r\n")
        clock.advance(1)
        self.assertEqual(output.getvalue(), b"statgrab\r\nfoo\r\n")

    def test_partialEchoFlushedOnTimeout(self):
        """
        Bytes held as a possible echo are output when the exchange times
        out.
        """
        proto, _, output, clock = exchange(b"statgrab", b"foo")
        proto.dataReceived(b"statgrab\r\nfo")
        self.assertEqual(output.getvalue(), b"")
        clock.advance(1)
        self.assertEqual(output.getvalue(), b"statgrab\r\nfo")
        self.assertEqual(self.successResultOf(proto.done), 0)

    def test_partialEchoFlushedOnEOF(self):
        """
        Bytes held as a possible echo are output when the connection ends.
        """
        proto, _, output, _ = exchange(b"statgrab", b"foo")
        proto.dataReceived(b"stat")
        proto.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(output.getvalue(), b"stat")

    def test_eofEndsCleanly(self):
        """
        The other end closing the connection ends the exchange at once with
        code 0 and cancels the idle timer.
        """
        proto, _, output, clock = exchange()
        proto.dataReceived(b"out\n")
        proto.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.successResultOf(proto.done), 0)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(output.getvalue(), b"out\n")

    def test_connectionLostEndsCleanly(self):
        """
        An unclean close (say bhyve dropping a second client) also ends the
        exchange with code 0.
        """
        proto, _, _, clock = exchange()
        proto.connectionLost(Failure(error.ConnectionLost()))
        self.assertEqual(self.successResultOf(proto.done), 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_doneFiresOnce(self):
        """
        A connection loss after the timeout does not fire L{done} again,
        and data arriving after the end is ignored.
        """
        proto, _, output, clock = exchange()
        clock.advance(1)
        proto.dataReceived(b"late")
        proto.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.successResultOf(proto.done), 0)
        self.assertEqual(output.getvalue(), b"")

    def test_outputError(self):
        """
        A failing output ends the exchange with L{OutputError} and drops the
        connection.
        """
        proto, transport, _, clock = exchange(output=BrokenOutput())
        proto.dataReceived(b"out")
        failure = self.failureResultOf(proto.done, OutputError)
        self.assertEqual(failure.value.error.errno, errno.EPIPE)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_outputErrorFlushingHeldBytes(self):
        """
        A failure writing the held bytes at the end is reported too.
        """
        proto, _, _, clock = exchange(b"statgrab", b"", output=BrokenOutput())
        proto.dataReceived(b"stat")
        clock.advance(1)
        self.failureResultOf(proto.done, OutputError)


class EchoStripperTests(unittest.TestCase):
    """
    Tests for L{EchoStripper}.
    """

    def test_decidesOnMismatch(self):
        """
        The first byte that rules out every echo form releases everything.
        """
        stripper = EchoStripper([b"ab\r\n", b"ab\n"])
        self.assertEqual(stripper.feed(b"a"), b"")
        self.assertFalse(stripper.decided)
        self.assertEqual(stripper.feed(b"x"), b"ax")
        self.assertTrue(stripper.decided)
        self.assertEqual(stripper.feed(b"ab\n"), b"ab\n")

    def test_flushEmptyAfterDecision(self):
        """
        Once decided nothing is held.
        """
        stripper = EchoStripper([b"ab\n"])
        self.assertEqual(stripper.feed(b"ab\nrest"), b"rest")
        self.assertEqual(stripper.flush(), b"")


class StubEndpoint:
    """
    A client endpoint that connects its protocol to a L{StringTransport}
    at once, or fails with C{error}.
    """

    def __init__(self, error=None):
        self.error = error
        self.transport = None

    def connect(self, factory):
        if self.error is not None:
            return defer.fail(self.error)
        proto = factory.buildProtocol(None)
        self.transport = StringTransport()
        proto.makeConnection(self.transport)
        return defer.succeed(proto)


class RunLegacyTests(unittest.TestCase):
    """
    Tests for L{runLegacy} and the error handling of L{prokshy.cli.main}.
    """

    def test_runs(self):
        """
        L{runLegacy} connects, sends the request and fires with the exit
        code once the exchange is over.
        """
        clock = task.Clock()
        endpoint = StubEndpoint()
        output = io.BytesIO()
        d = runLegacy(clock, endpoint, b"sysinfo", b"", output, 0.2)
        self.assertEqual(endpoint.transport.value(), b"sysinfo\n\n")
        clock.advance(0.19)
        self.assertNoResult(d)
        clock.advance(0.01)
        self.assertEqual(self.successResultOf(d), 0)

    def test_connectFailure(self):
        """
        A connection failure fails the L{Deferred}.
        """
        endpoint = StubEndpoint(error.ConnectError(errno.ENOENT, "x"))
        d = runLegacy(task.Clock(), endpoint, b"a", b"", io.BytesIO(), 1)
        self.failureResultOf(d, error.ConnectError)

    def test_connectErrorExitCode(self):
        """
        A connection error is exit code 1 with a one-line message.
        """
        stderr = io.StringIO()
        failure = Failure(error.ConnectError(errno.ENOENT, "whatever"))
        code = climain.exitCodeForFailure(failure, "/vm/sock", stderr)
        self.assertEqual(code, 1)
        self.assertEqual(
            stderr.getvalue(),
            "prokshy: cannot connect to /vm/sock: No such file or directory\n",
        )

    def test_refusedExitCode(self):
        """
        A refused connection is reported the same way.
        """
        stderr = io.StringIO()
        failure = Failure(
            error.ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        )
        self.assertEqual(climain.exitCodeForFailure(failure, "/s", stderr), 1)
        self.assertEqual(
            stderr.getvalue(), "prokshy: cannot connect to /s: Connection refused\n"
        )

    def test_brokenPipeQuiet(self):
        """
        A broken output pipe is exit code 141 (as C{cat} killed by SIGPIPE)
        without a message; other output errors are 1 with one.
        """
        stderr = io.StringIO()
        epipe = Failure(OutputError(BrokenPipeError(errno.EPIPE, "Broken pipe")))
        self.assertEqual(climain.exitCodeForFailure(epipe, "/s", stderr), 141)
        self.assertEqual(climain.EXIT_PIPE, 141)
        closed = Failure(OutputError(error.ConnectionDone("the reader closed the pipe")))
        self.assertEqual(climain.exitCodeForFailure(closed, "/s", stderr), 141)
        self.assertEqual(stderr.getvalue(), "")
        enospc = Failure(OutputError(OSError(errno.ENOSPC, "No space left")))
        self.assertEqual(climain.exitCodeForFailure(enospc, "/s", stderr), 1)
        self.assertEqual(
            stderr.getvalue(), "prokshy: cannot write output: No space left\n"
        )

    def test_unexpectedFailurePassedOn(self):
        """
        Unexpected failures are not turned into exit codes.
        """
        failure = Failure(ZeroDivisionError())
        self.assertIs(climain.exitCodeForFailure(failure, "/s", io.StringIO()), failure)


class OptionsTests(unittest.TestCase):
    """
    Tests for L{parseArgs}.
    """

    def setUp(self):
        self.stderr = io.StringIO()
        self.stdout = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.patch(sys, "stdout", self.stdout)

    def parse(self, *args):
        return parseArgs(list(args))

    def assertUsageError(self, *args):
        """
        Parsing C{args} exits with code 2 and a message.
        """
        exc = self.assertRaises(SystemExit, parseArgs, list(args))
        self.assertEqual(exc.code, 2)
        self.assertIn("prokshy: error:", self.stderr.getvalue())

    def test_basic(self):
        """
        The flags are parsed into the namespace.
        """
        options = self.parse(
            "--command", "statgrab", "--from-string", "foo", "--socket-path", "/s"
        )
        self.assertEqual(options.command, "statgrab")
        self.assertEqual(options.data, b"foo")
        self.assertEqual(options.socket_path, "/s")
        self.assertEqual(options.timeout, DEFAULT_TIMEOUT)
        self.assertEqual(DEFAULT_TIMEOUT, 1.0)

    def test_timeout(self):
        """
        C{--timeout} takes a number of seconds.
        """
        options = self.parse(
            "--command", "a", "--from-string", "", "--socket-path", "/s",
            "--timeout", "0.2",
        )
        self.assertEqual(options.timeout, 0.2)
        self.assertIsInstance(options.timeout, float)

    def test_badTimeout(self):
        """
        Anything but a finite number greater than 0 is a usage error.
        """
        for bad in ("abc", "", "0", "-1", "nan", "inf", "1s"):
            self.assertUsageError(
                "--command", "a", "--from-string", "", "--socket-path", "/s",
                "--timeout", bad,
            )

    def test_requiredCommand(self):
        self.assertUsageError("--from-string", "x", "--socket-path", "/s")

    def test_requiredSocketPath(self):
        self.assertUsageError("--command", "a", "--from-string", "x")

    def test_requiredSource(self):
        """
        One of C{--from-string} and C{--from-file} is required.
        """
        self.assertUsageError("--command", "a", "--socket-path", "/s")

    def test_exclusiveSources(self):
        """
        C{--from-string} and C{--from-file} are mutually exclusive.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"x\n")
        self.assertUsageError(
            "--command", "a", "--socket-path", "/s",
            "--from-string", "x", "--from-file", path,
        )

    def test_badCommandName(self):
        """
        Names the guest would ignore are usage errors.
        """
        for bad in ("", ".", "..", "a b", "a/b", "a\nb", "ls;id"):
            self.assertUsageError(
                "--command", bad, "--from-string", "", "--socket-path", "/s"
            )

    def test_goodCommandNames(self):
        for good in ("a", "OpenFile", "stat-grab_1.2", "..."):
            options = self.parse(
                "--command", good, "--from-string", "", "--socket-path", "/s"
            )
            self.assertEqual(options.command, good)

    def test_fromStringFirstLine(self):
        """
        Only the first line of C{--from-string} is sent.
        """
        for given, expected in [
            ("a\nb", b"a"),
            ("a\r\nb", b"a"),
            ("a\rb", b"a"),
            ("a\n", b"a"),
            ("", b""),
            ("\nb", b""),
            ("a b\tc", b"a b\tc"),
        ]:
            options = self.parse(
                "--command", "a", "--from-string", given, "--socket-path", "/s"
            )
            self.assertEqual(options.data, expected, given)

    def test_fromStringUndecodable(self):
        """
        Bytes of an argument that are not valid in the locale's encoding
        are sent as they were given.
        """
        options = self.parse(
            "--command", "a", "--from-string", os.fsdecode(b"\xff\xfe"),
            "--socket-path", "/s",
        )
        self.assertEqual(options.data, b"\xff\xfe")

    def test_fromFileFirstLine(self):
        """
        C{--from-file} reads the file's first line only.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"filename=/tmp/x\xff\nsecond line\n")
        options = self.parse(
            "--command", "a", "--from-file", path, "--socket-path", "/s"
        )
        self.assertEqual(options.data, b"filename=/tmp/x\xff")

    def test_fromFileEmpty(self):
        path = self.mktemp()
        open(path, "wb").close()
        options = self.parse(
            "--command", "a", "--from-file", path, "--socket-path", "/s"
        )
        self.assertEqual(options.data, b"")

    def test_fromFileMissing(self):
        """
        An unreadable input file is a usage error.
        """
        self.assertUsageError(
            "--command", "a", "--from-file", self.mktemp(), "--socket-path", "/s"
        )
        self.assertIn("cannot read", self.stderr.getvalue())

    def test_version(self):
        """
        C{--version} prints C{prokshy VERSION} and exits 0, even without the
        required flags.
        """
        exc = self.assertRaises(SystemExit, parseArgs, ["--version"])
        self.assertEqual(exc.code, 0)
        self.assertEqual(self.stdout.getvalue(), f"prokshy {__version__}\n")

    def test_help(self):
        exc = self.assertRaises(SystemExit, parseArgs, ["--help"])
        self.assertEqual(exc.code, 0)
        self.assertIn("--socket-path", self.stdout.getvalue())

    def test_firstLine(self):
        self.assertEqual(firstLine(b""), b"")
        self.assertEqual(firstLine(b"abc"), b"abc")
        self.assertEqual(firstLine(b"abc\r\n"), b"abc")


class FakeGuest(protocol.Protocol):
    """
    The guest end of a VM's console socket, for one request, behaving like
    the original shell agent: lines that are not a valid command name (such
    as the CLI's framed hello lines) are ignored; the first valid name line
    and the line after it make the request.

    With C{tty}, every byte received is echoed at once as a FreeBSD cooked
    tty does (C{LF} becomes C{CR LF}), hello lines included.  Then it writes
    C{reply} (also with C{CR LF} if C{tty}) and closes the connection if
    C{close} is set.  C{received} holds the request's two lines.
    """

    _NAME = re.compile(rb"[a-zA-Z0-9_.-]+")

    def __init__(self, server):
        self.server = server
        self.received = b""
        self._buffer = b""
        self.replied = False

    def connectionMade(self):
        self.server.connections += 1
        if self.server.closeAtOnce:
            self.transport.loseConnection()

    def dataReceived(self, data):
        if self.server.tty:
            self.transport.write(data.replace(b"\n", b"\r\n"))
        self._buffer += data
        while b"\n" in self._buffer and not self.replied:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if not self.received:
                if self._NAME.fullmatch(line):
                    self.received = line + b"\n"
                continue
            self.received += line + b"\n"
            self._reply()

    def _reply(self):
        self.server.received = self.received
        self.replied = True
        if not self.server.requested.called:
            self.server.requested.callback(self.received)
        reply = self.server.reply
        if self.server.tty:
            reply = reply.replace(b"\n", b"\r\n")
        self.transport.write(reply)
        if self.server.close:
            self.transport.loseConnection()


class FakeGuestFactory(protocol.Factory):
    noisy = False

    def __init__(self, reply=b"", tty=False, close=False, closeAtOnce=False):
        self.reply = reply
        self.tty = tty
        self.close = close
        self.closeAtOnce = closeAtOnce
        self.received = b""
        self.connections = 0
        self.requested = defer.Deferred()

    def buildProtocol(self, addr):
        return FakeGuest(self)


def packageRoot():
    """
    The directory that holds the C{prokshy} package being tested.
    """
    return os.path.dirname(os.path.dirname(os.path.abspath(prokshy.__file__)))


class IntegrationTests(unittest.TestCase):
    """
    Run the real CLI as a subprocess against a unix socket served by a fake
    guest.
    """

    timeout = 30

    def setUp(self):
        # A short directory: unix socket paths are limited to ~100 bytes.
        self.directory = tempfile.mkdtemp(prefix="prokshy-cli-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.socketPath = os.path.join(self.directory, "vtcon.prokshy")

    def serve(self, factory):
        """
        Serve C{factory} on L{socketPath} until the test ends.
        """
        endpoint = UNIXServerEndpoint(reactor, self.socketPath)
        d = endpoint.listen(factory)
        d.addCallback(lambda port: self.addCleanup(port.stopListening))
        return d

    def environment(self):
        """
        The environment for the CLI: ours, with the package under test
        first on C{PYTHONPATH}.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [packageRoot()] + [p for p in [env.get("PYTHONPATH")] if p]
        )
        return env

    def runCLI(self, *args):
        """
        Run C{python -m prokshy.cli.main ARGS}.

        @return: a L{Deferred} firing with C{(stdout, stderr, exitCode)}.
        """
        return utils.getProcessOutputAndValue(
            sys.executable,
            ["-m", "prokshy.cli.main"] + list(args),
            env=self.environment(),
            path=self.directory,
            reactor=reactor,
        )

    @defer.inlineCallbacks
    def test_reply(self):
        """
        The request is C{NAME LF DATA LF} with the first line of the input;
        the reply is copied to stdout byte for byte and the run ends after
        the idle timeout with code 0.
        """
        reply = b"general.hostname = test-vm\n\x00\xff\xfe binary\r\n"
        factory = FakeGuestFactory(reply=reply)
        yield self.serve(factory)
        out, err, code = yield self.runCLI(
            "--command", "statgrab", "--from-string", "foo\nbar",
            "--socket-path", self.socketPath, "--timeout", "0.2",
        )
        self.assertEqual((out, err, code), (reply, b"", 0))
        self.assertEqual(factory.received, b"statgrab\nfoo\n")

    @defer.inlineCallbacks
    def test_fromFile(self):
        """
        C{--from-file} sends the file's first line.
        """
        inputPath = os.path.join(self.directory, "input")
        with open(inputPath, "wb") as f:
            f.write(b"filename=/tmp/hello.txt\nignored\n")
        factory = FakeGuestFactory(reply=b"SGVsbG8hCg==")
        yield self.serve(factory)
        out, err, code = yield self.runCLI(
            "--command", "OpenFile", "--from-file", inputPath,
            "--socket-path", self.socketPath, "--timeout", "0.2",
        )
        self.assertEqual((out, code), (b"SGVsbG8hCg==", 0), err)
        self.assertEqual(factory.received, b"OpenFile\nfilename=/tmp/hello.txt\n")

    @defer.inlineCallbacks
    def test_freebsdTtyEcho(self):
        """
        The request echoed by a FreeBSD cooked tty is not printed; the
        command's output (with the tty's C{CR LF}) is.
        """
        factory = FakeGuestFactory(reply=b"load.min1 = 0.10\nmem.free = 1\n", tty=True)
        yield self.serve(factory)
        out, err, code = yield self.runCLI(
            "--command", "statgrab", "--from-string", "",
            "--socket-path", self.socketPath, "--timeout", "0.2",
        )
        self.assertEqual(
            (out, err, code), (b"load.min1 = 0.10\r\nmem.free = 1\r\n", b"", 0)
        )
        self.assertEqual(factory.received, b"statgrab\n\n")

    @defer.inlineCallbacks
    def test_eofEndsRun(self):
        """
        When the other end closes after its output the run ends at once with
        code 0, long before the idle timeout.
        """
        factory = FakeGuestFactory(reply=b"done\n", close=True)
        yield self.serve(factory)
        started = time.monotonic()
        out, err, code = yield self.runCLI(
            "--command", "sysinfo", "--from-string", "",
            "--socket-path", self.socketPath, "--timeout", "60",
        )
        self.assertEqual((out, err, code), (b"done\n", b"", 0))
        self.assertLess(time.monotonic() - started, 20)

    @defer.inlineCallbacks
    def test_droppedClient(self):
        """
        With C{--protocol legacy}, a connection dropped at once (bhyve
        refusing a second client) ends the run with code 0 and no output
        instead of spinning, as the original would if it did not spin.
        """
        factory = FakeGuestFactory(closeAtOnce=True)
        yield self.serve(factory)
        started = time.monotonic()
        out, err, code = yield self.runCLI(
            "--command", "sysinfo", "--from-string", "",
            "--socket-path", self.socketPath, "--timeout", "60",
            "--protocol", "legacy",
        )
        self.assertEqual((out, err, code), (b"", b"", 0))
        self.assertEqual(factory.connections, 1)
        self.assertLess(time.monotonic() - started, 20)

    @defer.inlineCallbacks
    def test_droppedClientAuto(self):
        """
        In the default mode a connection dropped before any session is a
        transport failure: exit 255 with one line naming the likely cause.
        """
        factory = FakeGuestFactory(closeAtOnce=True)
        yield self.serve(factory)
        out, err, code = yield self.runCLI(
            "--command", "sysinfo", "--from-string", "",
            "--socket-path", self.socketPath,
        )
        self.assertEqual((out, code), (b"", 255))
        self.assertEqual(err.count(b"\n"), 1, err)
        self.assertIn(b"closed before a session started", err)
        self.assertIn(b"one client", err)
        self.assertNotIn(b"Traceback", err)

    @defer.inlineCallbacks
    def test_missingSocket(self):
        """
        A missing socket is exit code 1 with a one-line message, no
        traceback.
        """
        out, err, code = yield self.runCLI(
            "--command", "statgrab", "--from-string", "",
            "--socket-path", self.socketPath, "--timeout", "0.2",
        )
        self.assertEqual(code, 1)
        self.assertEqual(out, b"")
        self.assertNotIn(b"Traceback", err)
        self.assertEqual(
            err,
            b"prokshy: cannot connect to "
            + os.fsencode(self.socketPath)
            + b": No such file or directory\n",
        )

    @defer.inlineCallbacks
    def test_usageErrors(self):
        """
        Usage errors are exit code 2 with argparse's message.
        """
        for args in [
            ["--from-string", "", "--socket-path", self.socketPath],
            ["--command", "a", "--from-string", "", "--socket-path",
             self.socketPath, "--timeout", "soon"],
            ["--command", "a", "--socket-path", self.socketPath],
        ]:
            out, err, code = yield self.runCLI(*args)
            self.assertEqual(code, 2, args)
            self.assertIn(b"usage: prokshy", err)
            self.assertNotIn(b"Traceback", err)

    @defer.inlineCallbacks
    def test_terminated(self):
        """
        A run stopped by SIGTERM before its end exits with code 130.
        """
        factory = FakeGuestFactory(reply=b"partial")
        yield self.serve(factory)
        ended = defer.Deferred()

        class Watcher(protocol.ProcessProtocol):
            def processEnded(self, reason):
                ended.callback(reason.value.exitCode)

        process = reactor.spawnProcess(
            Watcher(),
            sys.executable,
            [sys.executable, "-m", "prokshy.cli.main", "--command", "a",
             "--from-string", "", "--socket-path", self.socketPath,
             "--timeout", "60"],
            env=self.environment(),
            path=self.directory,
        )
        yield factory.requested
        process.signalProcess("TERM")
        code = yield ended
        self.assertEqual(code, 130)

    @defer.inlineCallbacks
    def test_version(self):
        out, err, code = yield self.runCLI("--version")
        self.assertEqual((out, code), (f"prokshy {__version__}\n".encode(), 0))


class InternalErrorTests(unittest.TestCase):
    """
    A bug never shows the user a traceback: one line, and the details in a
    file.
    """

    def test_oneLineAndDetailsFile(self):
        from io import StringIO

        from twisted.python.failure import Failure

        from prokshy.cli.main import EXIT_INTERNAL, internalError

        try:
            raise ZeroDivisionError("boom")
        except ZeroDivisionError:
            failure = Failure()
        err = StringIO()
        self.assertEqual(internalError(failure, err), EXIT_INTERNAL)
        self.assertEqual(EXIT_INTERNAL, 255)
        text = err.getvalue()
        self.assertEqual(text.count("\n"), 1, text)
        self.assertTrue(text.startswith("prokshy: internal error: boom (details in "), text)
        self.assertNotIn("Traceback", text)
        path = text.rsplit("details in ", 1)[1].rstrip(")\n")
        self.addCleanup(os.remove, path)
        with open(path) as f:
            self.assertIn("ZeroDivisionError", f.read())
