"""
The guest's reading of an exec OPEN's C{args} and C{tty}
(L{prokshy.execs.request}, L{prokshy.guest.execs.GuestStreams}) and the
WINCH SIGNAL of a tty exec (L{prokshy.guest.execs.ExecStreamProtocol}), on
fakes and L{twisted.internet.testing}: no process, no pty.
"""

import signal

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from prokshy import _machines
from prokshy.execs.interfaces import ICommandNames
from prokshy.execs.request import (
    MAX_ARGS,
    MAX_ARGS_BYTES,
    BadOpen,
    TTYRequest,
    argsProblem,
    parseArgs,
    parseTTY,
    windowSize,
)
from prokshy.guest import execs
from prokshy.guest.execs import ExecStreamProtocol, GuestStreams, Slots
from prokshy.streams.stream import StreamRefused
from prokshy.wire import frames


@implementer(ICommandNames)
class _Names:
    def resolve(self, name):
        return "/cmd/" + name


class _Execution:
    """
    What L{ExecStreamProtocol} drives, recording it.
    """

    def __init__(self):
        self.done = Deferred()
        self.signals = []
        self.sizes = []
        self.stdin = []

    def registerStdinProducer(self, producer, streaming):
        pass

    def writeStdin(self, data):
        self.stdin.append(data)

    def closeStdin(self):
        self.stdin.append(None)

    def signal(self, number):
        self.signals.append(number)

    def resize(self, rows, cols):
        self.sizes.append((rows, cols))
        return True

    def cancel(self):
        pass


class _Runner:
    """
    Starts nothing: records each C{start}'s keyword arguments.
    """

    def __init__(self):
        self.reactor = MemoryReactorClock()
        self.directory = _Names()
        self.starts = []
        self.executions = []

    def start(self, name, sink, **kwargs):
        self.starts.append((name, kwargs))
        execution = _Execution()
        self.executions.append(execution)
        return execution


class _Stream:
    """
    The parts of a stream L{ExecStreamProtocol} uses.
    """

    def __init__(self, kind="exec", args=None):
        self.kind = kind
        self.args = args or {}
        self.controls = []
        self.closed = False

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def registerProducer(self, producer, streaming):
        pass

    def unregisterProducer(self):
        pass

    def write(self, data):
        pass

    def writeStderr(self, data):
        pass

    def writeEof(self):
        pass

    def sendControl(self, kind, obj):
        self.controls.append((kind, obj))

    def loseConnection(self):
        self.closed = True

    def abort(self, code="aborted", message=""):
        self.closed = True


class ParseTests(SynchronousTestCase):
    """
    L{parseArgs}, L{parseTTY}, L{windowSize}: the limits exactly.
    """

    def test_args(self):
        self.assertEqual(parseArgs(None), ())
        self.assertEqual(parseArgs([]), ())
        self.assertEqual(parseArgs(["", "-x", "a b", "\u00e9"]), ("", "-x", "a b", "\u00e9"))
        self.assertEqual(len(parseArgs([""] * MAX_ARGS)), MAX_ARGS)
        self.assertEqual(parseArgs(["x" * MAX_ARGS_BYTES]), ("x" * MAX_ARGS_BYTES,))
        # 2-byte characters: 32768 of them are exactly the limit.
        self.assertEqual(len(parseArgs(["\u00e9" * (MAX_ARGS_BYTES // 2)])[0]), MAX_ARGS_BYTES // 2)

    def test_argsRefused(self):
        for value, message in (
            ("a b", "args must be a list of strings"),
            ({"0": "a"}, "args must be a list of strings"),
            (["a", None], "argument 2 is not a string"),
            ([["a"]], "argument 1 is not a string"),
            (["a", "b\0"], "argument 2 contains a NUL character"),
            ([""] * (MAX_ARGS + 1), "1025 arguments; at most 1024 are allowed"),
            (["x" * (MAX_ARGS_BYTES + 1)], "65537 bytes of UTF-8; at most 65536"),
            (["\u00e9" * (MAX_ARGS_BYTES // 2), "x"], "65537 bytes of UTF-8; at most 65536"),
            (["\udcff"], "argument 1 is not valid UTF-8"),
        ):
            e = self.assertRaises(BadOpen, parseArgs, value)
            self.assertIn(message, str(e))

    def test_argsProblemForTheCLI(self):
        """
        The CLI's check is the same rule (a tuple is fine there).
        """
        self.assertIsNone(argsProblem(("a", "b")))
        self.assertIn("at most 1024", argsProblem(["a"] * 1025))

    def test_tty(self):
        self.assertIsNone(parseTTY(None))
        self.assertEqual(parseTTY({"rows": 24, "cols": 80}), TTYRequest(24, 80, "xterm"))
        self.assertEqual(
            parseTTY({"rows": 1, "cols": 4096, "term": "xterm-256color"}),
            TTYRequest(1, 4096, "xterm-256color"),
        )
        self.assertEqual(parseTTY({"rows": 4096, "cols": 1, "term": "a.b+c_d-1"}).term, "a.b+c_d-1")
        self.assertEqual(TTYRequest(3, 4, "vt100").toOpen(), {"rows": 3, "cols": 4, "term": "vt100"})

    def test_ttyRefused(self):
        for value in (
            "yes",
            [24, 80],
            {"rows": 24},
            {"cols": 80},
            {"rows": 0, "cols": 80},
            {"rows": 24, "cols": 4097},
            {"rows": True, "cols": 80},
            {"rows": 24.0, "cols": 80},
            {"rows": "24", "cols": 80},
            {"rows": 24, "cols": 80, "term": ""},
            {"rows": 24, "cols": 80, "term": "x" * 65},
            {"rows": 24, "cols": 80, "term": "xterm;rm"},
            {"rows": 24, "cols": 80, "term": 5},
            {"rows": 24, "cols": 80, "term": None},
        ):
            self.assertRaises(BadOpen, parseTTY, value)

    def test_windowSize(self):
        self.assertEqual(windowSize({"signal": "WINCH", "rows": 5, "cols": 6}), (5, 6))
        for obj in ({}, {"rows": 5}, {"rows": 0, "cols": 6}, {"rows": 5, "cols": 4097}, {"rows": "5", "cols": 6}):
            self.assertIsNone(windowSize(obj))


class OpenTests(SynchronousTestCase):
    """
    L{GuestStreams.open} of an exec: C{args} and C{tty} parsed, refused
    C{bad-open}, given to the stream's protocol; the features say so.
    """

    def setUp(self):
        self.runner = _Runner()
        self.streams = GuestStreams(self.runner)

    def open(self, **args):
        return self.streams(_Stream("exec", dict({"name": "cmd"}, **args)))

    def test_features(self):
        self.assertIn("args", self.streams.features)
        self.assertIn("tty", self.streams.features)

    def test_plain(self):
        protocol = self.open()
        self.assertEqual((protocol.args, protocol.tty), ((), None))

    def test_argsAndTTY(self):
        protocol = self.open(args=["-l", ""], tty={"rows": 30, "cols": 100, "term": "vt220"})
        self.assertEqual(protocol.args, ("-l", ""))
        self.assertEqual(protocol.tty, TTYRequest(30, 100, "vt220"))

    def test_refused(self):
        for args, message in (
            ({"args": "-l"}, "args must be a list of strings"),
            ({"args": ["a\0b"]}, "argument 1 contains a NUL character"),
            ({"args": ["a"] * 1025}, "at most 1024"),
            ({"tty": {"rows": 24, "cols": 0}}, "tty rows and cols"),
            ({"tty": {"rows": 24, "cols": 80, "term": "../x"}}, "tty term"),
        ):
            e = self.assertRaises(StreamRefused, self.open, **args)
            self.assertEqual(e.code, "bad-open")
            self.assertIn(message, e.message)
        self.assertEqual(self.runner.starts, [])


class ExecProtocolTests(SynchronousTestCase):
    """
    L{ExecStreamProtocol} gives the runner C{args} and C{tty}, and turns a
    tty exec's WINCH with a size into a resize (held while it waits).
    """

    def setUp(self):
        self.runner = _Runner()
        self.slots = Slots(1, 8)

    def start(self, args=(), tty=None):
        protocol = ExecStreamProtocol(self.runner, self.slots, "cmd", None, args=args, tty=tty)
        stream = _Stream()
        protocol.makeConnection(stream)
        return protocol, stream

    def winch(self, protocol, **size):
        protocol.signalReceived(dict({"signal": "WINCH"}, **size))

    def test_table(self):
        self.assertEqual(_machines.undeclared(ExecStreamProtocol._machine), set())
        self.assertIn(_machines.table(ExecStreamProtocol._machine), execs.__doc__)

    def test_runnerGetsArgsAndTTY(self):
        self.start(args=("a", "b c"), tty=TTYRequest(10, 20, "vt100"))
        self.assertEqual(
            self.runner.starts, [("cmd", {"timeout": None, "args": ("a", "b c"), "tty": TTYRequest(10, 20, "vt100")})]
        )

    def test_plainStartUnchanged(self):
        """
        Without them the runner is called as before (a runner of its own
        need not know them).
        """
        self.start()
        self.assertEqual(self.runner.starts, [("cmd", {"timeout": None})])

    def test_resizeRunning(self):
        protocol, stream = self.start(tty=TTYRequest(10, 20))
        (execution,) = self.runner.executions
        self.winch(protocol, rows=40, cols=120)
        self.winch(protocol, rows=41, cols=121)
        self.assertEqual(execution.sizes, [(40, 120), (41, 121)])
        self.assertEqual(execution.signals, [])

    def test_resizeHeldWhileWaiting(self):
        """
        A resize while waiting for a slot is the size the pty starts with.
        """
        first, _ = self.start()
        protocol, _ = self.start(tty=TTYRequest(10, 20))
        self.assertEqual(len(self.runner.starts), 1)
        self.winch(protocol, rows=50, cols=60)
        self.winch(protocol, rows=51, cols=61)
        self.runner.executions[0].done.callback(_exit())
        self.assertEqual(self.runner.starts[1][1]["tty"], TTYRequest(51, 61))
        self.assertEqual(self.runner.executions[1].sizes, [])

    def test_winchWithoutSize(self):
        """
        A WINCH without a valid size is delivered as a plain signal.
        """
        protocol, _ = self.start(tty=TTYRequest(10, 20))
        (execution,) = self.runner.executions
        self.winch(protocol)
        self.winch(protocol, rows=0, cols=5)
        self.assertEqual(execution.signals, [signal.SIGWINCH, signal.SIGWINCH])
        self.assertEqual(execution.sizes, [])

    def test_winchWithoutTTY(self):
        """
        On an exec without a tty a WINCH is a plain signal, size or not.
        """
        protocol, _ = self.start()
        (execution,) = self.runner.executions
        self.winch(protocol, rows=40, cols=120)
        protocol.signalReceived({"signal": "SIGWINCH"})
        self.assertEqual(execution.signals, [signal.SIGWINCH, signal.SIGWINCH])
        self.assertEqual(execution.sizes, [])

    def test_resizeAfterTheEnd(self):
        protocol, stream = self.start(tty=TTYRequest(10, 20))
        (execution,) = self.runner.executions
        execution.done.callback(_exit())
        self.assertIn(frames.EXIT, [kind for kind, obj in stream.controls])
        self.winch(protocol, rows=40, cols=120)
        self.assertEqual(execution.sizes, [])


def _exit():
    from prokshy.execs.status import ExitStatus

    return ExitStatus(0, None)
