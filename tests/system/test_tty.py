"""
C{prokshy -t} (issue 11, section 2) with real processes and real ptys: the
CLI runs as a subprocess on a pty of the test's (its controlling terminal,
as in a terminal emulator), against the real guest agent on a simulated VM
(L{tests.hostharness}), directly and through a real daemon; the remote
command runs on the guest's own pty.

What is checked: the remote command sees a terminal (stdin, stdout and
stderr; session leader, foreground; TERM; the CLI's size), a resize of
the CLI's terminal reaches it (SIGWINCH, new size), the Ctrl-C and Ctrl-Z
bytes reach its pty's line discipline (SIGINT, SIGTSTP), the exit status
comes back, and the CLI's terminal gets exactly its termios attributes
back: after a normal end, a remote failure, a timeout, SIGTERM, SIGINT and
SIGHUP.  Also the guest side through the client API: EOF is one VEOF,
a resize held while the command waits for a slot, non-tty execs still on
posix_spawn, cancel killing the pty's process group.
"""

import fcntl
import os
import signal
import struct
import sys
import termios

from twisted.internet import error, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.trial.unittest import TestCase

from prokshy.execs.request import TTYRequest
from prokshy.guest import execs
from prokshy.guest.runner import CommandRunner
from prokshy.host.client import HostProtocol
from tests.fakes import RecordingSink
from tests.hostharness import DEFAULT_SCRIPTS, ROOT, HostHarness, groupAlive, waitFor
from tests.system.test_cli_framed import _ENV, CLIProcess, CLITestMixin
from tests.system.test_guest_spawn_path import _inRoot

#: Tells what it sees, then reports its signals and its input lines.
TTYINFO = """#!%s
import fcntl, os, signal, struct, sys, termios

def size():
    rows, cols = struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, b"\\0" * 8))[:2]
    return "%%dx%%d" %% (rows, cols)

def say(message):
    os.write(1, (message + "\\n").encode())

say("ISATTY=%%s %%s %%s" %% (os.isatty(0), os.isatty(1), os.isatty(2)))
say("SIZE=" + size())
say("TERM=" + os.environ.get("TERM", "-"))
say("ARGV=%%r" %% (sys.argv[1:],))
say("LEADER=%%s FOREGROUND=%%s" %% (os.getsid(0) == os.getpid(), os.tcgetpgrp(0) == os.getpgrp()))
say("PID=%%d" %% (os.getpid(),))
os.write(2, b"STDERR-LINE\\n")
signal.signal(signal.SIGWINCH, lambda n, f: say("WINCH " + size()))
signal.signal(signal.SIGTSTP, lambda n, f: say("TSTP"))

def interrupted(n, f):
    say("INT")
    os._exit(42)

signal.signal(signal.SIGINT, interrupted)
say("READY")
for line in sys.stdin:
    line = line.rstrip("\\n")
    say("LINE " + line)
    if line.startswith("exit "):
        sys.exit(int(line[5:]))
say("EOF")
sys.exit(3)
""" % (sys.executable,)

#: Its pid (its group's and session's), then sleeps in its place.
SLEEPER = "#!/bin/sh\necho PID=$$\necho READY\nexec sleep 60\n"

#: Raw itself (so ^D is a byte), then prints what it reads, byte by byte.
RAWREAD = """#!%s
import os, sys, tty
tty.setraw(0)
os.write(1, b"READY\\n")
while True:
    data = os.read(0, 100)
    if not data:
        break
    os.write(1, repr(data).encode() + b"\\n")
    if b"X" in data:
        break
""" % (sys.executable,)


def scripts():
    return dict(DEFAULT_SCRIPTS, ttyinfo=TTYINFO, sleeper=SLEEPER, rawread=RAWREAD)


def setSize(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class PTYCLI(ProcessProtocol):
    """
    The CLI on a pty of ours: what it writes to its terminal, its exit
    code (C{exited}: the code, or -N for signal N), and the waits on both.
    """

    def __init__(self):
        self.output = b""
        self.exited = Deferred()
        self.ended = Deferred()
        self._waits = []

    def childDataReceived(self, fd, data):
        self.output += data
        for needle, d in list(self._waits):
            if needle in self.output:
                self._waits.remove((needle, d))
                d.callback(self.output)

    def waitFor(self, needle, timeout=20):
        """
        A Deferred firing once C{needle} has been written.
        """
        if needle in self.output:
            return _fired(self.output)
        d = Deferred()
        self._waits.append((needle, d))

        def expire():
            if not d.called:
                self._waits.remove((needle, d))
                d.errback(AssertionError("no %r in %r" % (needle, self.output[-2000:])))

        call = reactor.callLater(timeout, expire)
        d.addBoth(lambda r: (call.cancel() if call.active() else None, r)[1])
        return d

    def processExited(self, reason):
        code = reason.value.exitCode
        if code is None:
            code = -(reason.value.signal or 0)
        self.exited.callback(code)

    def processEnded(self, reason):
        self.ended.callback(None)


def _fired(value):
    d = Deferred()
    d.callback(value)
    return d


class PTYDriver(CLITestMixin):
    """
    Runs the CLI on a pty of the test's; C{startHarness} and C{target} (the
    socket) are the test case's.
    """

    timeout = 60

    def setUp(self):
        return self.startHarness()

    def startTTY(self, *args, rows=30, cols=100, env=None):
        """
        Start C{prokshy --socket-path ... ARGS} with a pty of C{rows} x
        C{cols} as its controlling terminal (stdin, stdout, stderr).  The
        test keeps a descriptor of that terminal (C{self.watch}) to read
        its attributes, before (C{self.before}) and after.
        """
        master, slave = os.openpty()
        setSize(slave, rows, cols)
        name = os.ttyname(slave)
        self.watch = os.open(name, os.O_RDWR | os.O_NOCTTY)
        self.before = termios.tcgetattr(self.watch)
        environ = dict(_ENV, TERM="xterm-256color")
        for key in ("LINES", "COLUMNS"):
            environ.pop(key, None)
        environ.update(env or {})
        proto = PTYCLI()
        argv = [sys.executable, "-m", "prokshy.cli.main", "--socket-path", self.target()] + list(args)
        reactor.spawnProcess(proto, sys.executable, argv, env=environ, path=ROOT, usePTY=(master, slave, name))
        self.master = master
        self.cli = proto

        def cleanup():
            if not proto.exited.called:
                try:
                    proto.transport.signalProcess("KILL")
                except error.ProcessExitedAlready:
                    pass
            os.close(self.watch)
            return proto.ended

        self.addCleanup(cleanup)
        return proto

    def attributes(self):
        return termios.tcgetattr(self.watch)

    def assertRaw(self):
        lflag = self.attributes()[3]
        self.assertEqual(lflag & (termios.ECHO | termios.ICANON | termios.ISIG), 0)

    def assertRestored(self):
        self.assertEqual(self.attributes(), self.before)


class TTYMixin(PTYDriver):
    """
    The tests of C{-t}, for a direct and a daemon case.
    """

    @inlineCallbacks
    def test_terminal(self):
        """
        The remote command is on a terminal of the CLI's size, with TERM and
        its arguments; a resize, typed lines, Ctrl-Z and Ctrl-C reach it;
        its exit status comes back; the terminal is exactly restored.
        """
        cli = self.startTTY("-t", "--command", "ttyinfo", "--", "a b", "-x")
        out = yield cli.waitFor(b"READY")
        for line in (
            b"ISATTY=True True True",
            b"SIZE=30x100",
            b"TERM=xterm-256color",
            b"ARGV=['a b', '-x']",
            b"LEADER=True FOREGROUND=True",
            b"STDERR-LINE",
        ):
            self.assertIn(line, out)
        self.assertRaw()
        setSize(self.master, 40, 120)  # the kernel signals the CLI: SIGWINCH
        yield cli.waitFor(b"WINCH 40x120")
        os.write(self.master, b"hello there\r")
        yield cli.waitFor(b"LINE hello there")
        os.write(self.master, b"\x1a")
        yield cli.waitFor(b"TSTP")
        os.write(self.master, b"\x03")
        code = yield cli.exited
        self.assertEqual(code, 42)
        self.assertIn(b"INT", cli.output)
        self.assertRestored()

    @inlineCallbacks
    def test_exitStatus(self):
        """
        The remote command's own status (a failure: 5) comes back.
        """
        cli = self.startTTY("--tty", "--command", "ttyinfo")
        yield cli.waitFor(b"READY")
        os.write(self.master, b"exit 5\r")
        code = yield cli.exited
        self.assertEqual(code, 5)
        self.assertRestored()

    @inlineCallbacks
    def test_ctrlCKillsSleep(self):
        """
        Ctrl-C is a byte here and SIGINT there: a remote sleep dies of it,
        130; its process group is gone.
        """
        cli = self.startTTY("-t", "--command", "sleeper")
        out = yield cli.waitFor(b"READY")
        pid = int(out.split(b"PID=")[1].split(b"\r")[0])
        self.assertRaw()
        os.write(self.master, b"\x03")
        code = yield cli.exited
        self.assertEqual(code, 130)
        self.assertRestored()
        yield waitFor(lambda: not groupAlive(pid), "the remote group to be gone", 10)

    @inlineCallbacks
    def _signalled(self, sig):
        cli = self.startTTY("-t", "--command", "sleeper")
        out = yield cli.waitFor(b"READY")
        pid = int(out.split(b"PID=")[1].split(b"\r")[0])
        self.assertRaw()
        cli.transport.signalProcess(sig)
        code = yield cli.exited
        self.assertEqual(code, 130)
        self.assertRestored()
        # The remote command was cancelled.
        yield waitFor(lambda: not groupAlive(pid), "the remote group to be gone", 10)

    def test_sigterm(self):
        """
        SIGTERM to the CLI: the terminal is restored, the remote command
        cancelled, exit 130.
        """
        return self._signalled("TERM")

    def test_sigint(self):
        """
        SIGINT from outside (not the Ctrl-C key, a byte in raw mode): the
        same.
        """
        return self._signalled("INT")

    def test_sighup(self):
        """
        SIGHUP (the terminal went away): the same, not death in raw mode.
        """
        return self._signalled("HUP")

    @inlineCallbacks
    def test_timeout(self):
        """
        The guest's timeout applies to a tty exec too: 124, restored.
        """
        cli = self.startTTY("-t", "--exec-timeout", "0.5", "--command", "sleeper")
        code = yield cli.exited
        self.assertEqual(code, 124)
        self.assertIn(b"timed out", cli.output)
        self.assertRestored()

    @inlineCallbacks
    def test_refused(self):
        """
        No such command: 127 and one message; the terminal never went raw,
        and is as it was.
        """
        cli = self.startTTY("-t", "--command", "nosuchcommand")
        code = yield cli.exited
        self.assertEqual(code, 127)
        self.assertIn(b"prokshy: ", cli.output)
        self.assertRestored()

    @inlineCallbacks
    def test_noTTYFeature(self):
        """
        A guest whose features lack C{tty}: one line, exit 1, not run.
        """
        self.patch(execs, "EXEC_FEATURES", ("args",))
        yield self.restartAgent()
        cli = self.startTTY("-t", "--command", "ttyinfo")
        code = yield cli.exited
        self.assertEqual(code, 1)
        self.assertIn(b"'tty' feature", cli.output)
        self.assertNotIn(b"READY", cli.output)
        self.assertRestored()

    def _notATerminal(self, stdin, env):
        proto = CLIProcess(stdin)
        environ = dict(_ENV, **env)
        for key in ("LINES", "COLUMNS"):
            if key not in env:
                environ.pop(key, None)
        argv = [sys.executable, "-m", "prokshy.cli.main", "--socket-path", self.target(),
                "-t", "--command", "ttyinfo"]
        reactor.spawnProcess(proto, sys.executable, argv, env=environ, path=ROOT)
        return proto.ended

    @inlineCallbacks
    def test_stdinNotATerminal(self):
        """
        C{-t} with stdin a pipe: still a remote pty, of C{LINES} x
        C{COLUMNS} (else 24 x 80); no raw mode; the end of stdin is the
        pty's VEOF there.
        """
        out, err, code = yield self._notATerminal(b"one\ntwo\n", {"LINES": "33", "COLUMNS": "99"})
        self.assertEqual(code, 3, (out, err))
        for line in (b"ISATTY=True True True", b"SIZE=33x99", b"LINE one", b"LINE two", b"EOF"):
            self.assertIn(line, out)
        out, err, code = yield self._notATerminal(b"", {})
        self.assertEqual(code, 3, (out, err))
        self.assertIn(b"SIZE=24x80", out)


class DirectHarness:
    """
    The VM's own console socket, with the real agent.
    """

    @inlineCallbacks
    def startHarness(self):
        self.h = yield HostHarness(self, daemon=False, scripts=scripts()).start()
        self.vm = self.h.vms["vm1"]

    def target(self):
        return self.vm.socketPath

    @inlineCallbacks
    def restartAgent(self):
        yield self.vm.stopAgent()
        self.vm.startAgent()
        yield waitFor(lambda: self.vm.deviceOpen, "the agent to open its device")


class DirectTTYTests(DirectHarness, TTYMixin, TestCase):
    """
    C{-t} on a VM's own console socket.
    """


class DaemonTTYTests(TTYMixin, TestCase):
    """
    C{-t} through a real prokshy-host daemon.
    """

    @inlineCallbacks
    def startHarness(self):
        self.h = yield HostHarness(self, scripts=scripts()).start()
        self.vm = self.h.vms["vm1"]

    def target(self):
        return self.h.unixPath

    @inlineCallbacks
    def restartAgent(self):
        yield self.vm.stopAgent()
        yield waitFor(lambda: self.h.daemon.vms["vm1"].state != "up", "the daemon to lose the VM")
        self.vm.startAgent()
        yield self.h.waitUp()


class GuestTTYTests(TestCase):
    """
    The guest's side of a tty exec, through the client API and the runner.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.h = yield HostHarness(
            self, daemon=False, scripts=scripts(), guestArgs=("--max-concurrency", "1")
        ).start()
        self.vm = self.h.vms["vm1"]
        proto = yield UNIXClientEndpoint(reactor, self.vm.socketPath).connect(
            Factory.forProtocol(lambda: HostProtocol(reactor))
        )
        self.addCleanup(proto.transport.loseConnection)
        self.session = yield proto.whenSession()

    @inlineCallbacks
    def test_resizeHeldWhileWaiting(self):
        """
        A WINCH that comes while the exec waits for a slot is kept: the pty
        is made with the latest size.
        """
        first = yield self.session.execStream("sleeper", [].append, [].append)
        first.result.addErrback(lambda f: None)  # cancelled below
        out = []
        second = yield self.session.execStream(
            "ttyinfo", out.append, out.append, tty=TTYRequest(10, 20), stdin=b""
        )
        second.resize(50, 60)
        first.cancel()
        result = yield second.result
        self.assertEqual(result.exitStatus, 3)
        self.assertIn(b"SIZE=50x60", b"".join(out))

    @inlineCallbacks
    def test_spawnPaths(self):
        """
        A tty exec forks (a pty needs setsid and TIOCSCTTY in the child);
        the others, with arguments too, keep the posix_spawn path.
        """
        runner = CommandRunner(reactor, self.vm.commandDir)
        for tty, args, method in (
            (None, (), "posix_spawn"),
            (None, ("-x", "y z"), "posix_spawn"),
            (TTYRequest(24, 80), (), "fork"),
        ):
            sink = RecordingSink()
            execution = _inRoot(lambda: runner.start("cat", sink, args=args, tty=tty))
            self.assertEqual(execution.transport.spawnMethod, method)
            execution.writeStdin(b"x\n")
            execution.closeStdin()
            status = yield execution.done
            self.assertEqual(status.exitStatus, 0)
        self.assertEqual(runner.spawns, {"posix_spawn": 2, "fork": 1})

    @inlineCallbacks
    def test_cancelKillsTheGroup(self):
        """
        Cancelling a tty exec kills its process group, as for any exec.
        """
        out = []
        running = yield self.session.execStream("sleeper", out.append, out.append, tty=TTYRequest(24, 80))
        yield waitFor(lambda: b"READY" in b"".join(out), "the sleeper to start")
        pid = int(b"".join(out).split(b"PID=")[1].split(b"\r")[0])
        self.assertTrue(groupAlive(pid))
        running.result.addErrback(lambda f: None)  # reset by us
        running.cancel()
        yield waitFor(lambda: not groupAlive(pid), "the group to be gone", 10)

    @inlineCallbacks
    def test_eofIsOneVEOF(self):
        """
        The host's EOF is the pty's VEOF character, written once, after
        what came before it (here the program reads its pty raw, so ^D is
        a byte it sees).
        """
        directory = self.vm.commandDir
        done = Deferred()
        out = []

        class Sink:
            def stdoutReceived(self, data):
                out.append(data)

            def stderrReceived(self, data):
                out.append(data)

        runner = CommandRunner(reactor, directory)
        execution = runner.start("rawread", Sink(), tty=TTYRequest(24, 80))
        execution.done.addCallback(done.callback)
        yield waitFor(lambda: b"READY" in b"".join(out), "rawread to start")
        execution.writeStdin(b"a")
        execution.closeStdin()
        execution.closeStdin()
        execution.writeStdin(b"X")
        status = yield done
        self.assertEqual(status.exitStatus, 0)
        text = b"".join(out)
        self.assertEqual(text.count(b"\\x04"), 1, text)
        self.assertLess(text.index(b"a"), text.index(b"\\x04"))
        self.assertLess(text.index(b"\\x04"), text.index(b"X"))
