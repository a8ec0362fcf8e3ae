"""
Tests for L{prokshy.guest.commands}, L{prokshy.guest.runner},
L{prokshy.guest.execution} and L{prokshy.guest._process}.

Validation and the execution state machine use a temporary command
directory and L{MemoryProcessReactor}; the integration tests at the end run
real tiny scripts with the real reactor.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile

from twisted.internet import defer, reactor, task
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest
from zope.interface import implementer_only
from zope.interface.verify import verifyObject

from prokshy.guest._process import IProcessTree, ProcessGroupProcess, spawnWithReactor
from prokshy.execs.refusals import CommandRefused
from prokshy.execs.status import ExitStatus
from prokshy.guest.commands import CommandDirectory
from prokshy import _machines
from prokshy.guest.execution import Execution
from prokshy.guest.runner import COMMAND_ENVIRONMENT, CommandRunner

from tests.fakes import (
    PY,
    SH,
    MemoryProcessReactor,
    RecordingSink,
    addScript,
    makeCommandDir,
)


class CommandDirectoryTests(unittest.TestCase):
    """
    L{CommandDirectory.resolve} validates names and files.
    """

    def setUp(self):
        self.path = makeCommandDir({"ok": SH + "exit 0\n"})
        self.directory = CommandDirectory(self.path)

    def assertRefused(self, name, code, *fragments):
        e = self.assertRaises(CommandRefused, self.directory.resolve, name)
        self.assertEqual(e.code, code, e.message)
        for fragment in fragments:
            self.assertIn(fragment, e.message)
        return e

    def test_valid(self):
        expected = os.path.join(self.path, "ok")
        self.assertEqual(self.directory.resolve("ok"), expected)
        self.assertEqual(self.directory.resolve(b"ok"), expected)

    def test_validCharacters(self):
        addScript(self.path, "a-Z_0.9", SH)
        self.assertEqual(
            self.directory.resolve("a-Z_0.9"), os.path.join(self.path, "a-Z_0.9")
        )

    def test_badNames(self):
        for name in [
            "",
            b"",
            "foo bar",
            "ok\n",
            "../ok",
            "/bin/sh",
            "sub/ok",
            "ok;",
            "ok\x00",
            "caf\xe9",
            b"caf\xc3\xa9",
            b"\xff\xfe",
        ]:
            self.assertRefused(name, "bad-name", "bad name")

    def test_dotNames(self):
        self.assertRefused(".", "bad-name")
        self.assertRefused("..", "bad-name")
        self.assertRefused(b"..", "bad-name")

    def test_notStrOrBytes(self):
        self.assertRaises(TypeError, self.directory.resolve, 42)

    def test_missing(self):
        self.assertRefused("nothere", "no-such-command", "no such command")

    def test_missingDirectory(self):
        directory = CommandDirectory(os.path.join(self.path, "nope"))
        e = self.assertRaises(CommandRefused, directory.resolve, "ok")
        self.assertEqual(e.code, "no-such-command")

    def test_notExecutable(self):
        addScript(self.path, "plain", SH, mode=0o644)
        self.assertRefused("plain", "not-executable", "0644")

    def test_subdirectory(self):
        os.mkdir(os.path.join(self.path, "sub"), 0o755)
        self.assertRefused("sub", "not-executable", "not a regular file")

    def test_fifo(self):
        os.mkfifo(os.path.join(self.path, "fifo"), 0o755)
        self.assertRefused("fifo", "not-executable", "not a regular file")

    def test_groupWritableFile(self):
        addScript(self.path, "gw", SH, mode=0o775)
        self.assertRefused("gw", "insecure", "group-writable", "0775")

    def test_worldWritableFile(self):
        addScript(self.path, "ww", SH, mode=0o757)
        self.assertRefused("ww", "insecure", "world-writable")

    def test_groupWritableDirectory(self):
        os.chmod(self.path, 0o775)
        self.assertRefused("ok", "insecure", "command directory", "group-writable")

    def test_worldWritableDirectory(self):
        os.chmod(self.path, 0o1777)
        self.assertRefused("ok", "insecure", "command directory", "world-writable")

    def test_symlinkToSafeTarget(self):
        elsewhere = makeCommandDir()
        target = addScript(elsewhere, "real", SH)
        os.symlink(target, os.path.join(self.path, "link"))
        self.assertEqual(self.directory.resolve("link"), os.path.realpath(target))

    def test_relativeSymlinkChain(self):
        os.symlink("ok", os.path.join(self.path, "one"))
        os.symlink("one", os.path.join(self.path, "two"))
        self.assertEqual(
            self.directory.resolve("two"),
            os.path.realpath(os.path.join(self.path, "ok")),
        )

    def test_symlinkToWritableTarget(self):
        elsewhere = makeCommandDir()
        target = addScript(elsewhere, "real", SH, mode=0o777)
        os.symlink(target, os.path.join(self.path, "link"))
        self.assertRefused("link", "insecure", "symlink target", "world-writable")
        os.chmod(target, 0o775)
        self.assertRefused("link", "insecure", "symlink target", "group-writable")

    def test_symlinkIntoWorldWritableDirectory(self):
        elsewhere = makeCommandDir(mode=0o1777)
        target = addScript(elsewhere, "real", SH)
        os.symlink(target, os.path.join(self.path, "link"))
        self.assertRefused("link", "insecure", "world-writable", elsewhere)

    def test_symlinkThroughWritableLinkToWritableFile(self):
        """
        A chain of links is followed to its end, and the end is checked.
        """
        elsewhere = makeCommandDir()
        target = addScript(elsewhere, "real", SH, mode=0o757)
        os.symlink(target, os.path.join(elsewhere, "hop"))
        os.symlink(os.path.join(elsewhere, "hop"), os.path.join(self.path, "link"))
        self.assertRefused("link", "insecure", "world-writable")

    def test_danglingSymlink(self):
        os.symlink("/nonexistent/x", os.path.join(self.path, "dangling"))
        self.assertRefused("dangling", "no-such-command", "dangling")

    def test_symlinkLoop(self):
        os.symlink("loop2", os.path.join(self.path, "loop1"))
        os.symlink("loop1", os.path.join(self.path, "loop2"))
        e = self.assertRaises(CommandRefused, self.directory.resolve, "loop1")
        self.assertIn(e.code, ("no-such-command", "not-executable"))

    def test_symlinkToDirectory(self):
        os.symlink(self.path, os.path.join(self.path, "dir"))
        self.assertRefused("dir", "not-executable", "not a regular file")

    def test_symlinkToNonExecutable(self):
        addScript(self.path, "plain", SH, mode=0o644)
        os.symlink("plain", os.path.join(self.path, "link"))
        self.assertRefused("link", "not-executable")


class OwnershipTests(unittest.TestCase):
    """
    Like sshd's StrictModes: every component of a command's path, of the
    command directory's and of a symlink's target must be owned by root or
    by the agent's uid, and the refusal says who owns what.  (Before: a
    command file owned by C{nobody} ran as root.)
    """

    other = 65534

    def setUp(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("chown needs root")
        self.parent = tempfile.mkdtemp(prefix="owner-", dir=os.getcwd())
        os.chmod(self.parent, 0o755)
        self.path = os.path.join(self.parent, "command.d")
        os.mkdir(self.path, 0o755)
        self.script = addScript(self.path, "ok", SH + "exit 0\n")
        self.directory = CommandDirectory(self.path)

    def assertInsecure(self, name, *fragments, directory=None):
        directory = directory or self.directory
        e = self.assertRaises(CommandRefused, directory.resolve, name)
        self.assertEqual(e.code, "insecure", e.message)
        for fragment in ("owned by uid %d" % (self.other,),) + fragments:
            self.assertIn(fragment, e.message)
        return e

    def test_rootOwnedAccepted(self):
        self.assertEqual(self.directory.resolve("ok"), self.script)

    def test_fileOwnedByOther(self):
        os.chown(self.script, self.other, self.other)
        e = self.assertInsecure("ok", self.script, "not by root or the agent's uid 0")
        self.assertTrue(e.message.startswith("command 'ok' is insecure: "), e.message)

    def test_directoryOwnedByOther(self):
        os.chown(self.path, self.other, self.other)
        self.assertInsecure("ok", "command directory", self.path)
        # Even a missing command: the directory is refused first.
        self.assertInsecure("missing", "command directory")

    def test_ancestorOwnedByOther(self):
        os.chown(self.parent, self.other, self.other)
        self.assertInsecure("ok", self.parent)

    def test_symlinkTargetOwnedByOther(self):
        elsewhere = makeCommandDir()
        target = addScript(elsewhere, "real", SH)
        os.symlink(target, os.path.join(self.path, "link"))
        self.assertEqual(self.directory.resolve("link"), os.path.realpath(target))
        os.chown(target, self.other, self.other)
        self.assertInsecure("link", os.path.realpath(target))

    def test_symlinkTargetDirectoryOwnedByOther(self):
        elsewhere = makeCommandDir()
        target = addScript(elsewhere, "real", SH)
        os.symlink(target, os.path.join(self.path, "link"))
        os.chown(elsewhere, self.other, self.other)
        self.assertInsecure("link", os.path.realpath(elsewhere))

    def test_symlinkOwnedByOther(self):
        os.symlink("ok", os.path.join(self.path, "link"))
        os.lchown(os.path.join(self.path, "link"), self.other, self.other)
        self.assertInsecure("link", os.path.join(self.path, "link"))

    def test_directoryThroughSymlinkInOthersDirectory(self):
        """
        A command directory reached through a symlink that another user
        could re-point is refused, though its real path is root's.
        """
        theirs = tempfile.mkdtemp(prefix="theirs-", dir=os.getcwd())
        os.chmod(theirs, 0o755)
        os.symlink(self.path, os.path.join(theirs, "cmds"))
        os.chown(theirs, self.other, self.other)
        self.assertInsecure("ok", theirs, directory=CommandDirectory(os.path.join(theirs, "cmds")))

    def test_writableAncestorMustBeSticky(self):
        os.chmod(self.parent, 0o777)
        e = self.assertRaises(CommandRefused, self.directory.resolve, "ok")
        self.assertEqual(e.code, "insecure")
        self.assertIn("world-writable and not sticky", e.message)
        self.assertIn(self.parent, e.message)
        os.chmod(self.parent, 0o1777)
        self.assertEqual(self.directory.resolve("ok"), self.script)

    def test_agentsOwnUid(self):
        """
        Files owned by the agent's own uid are fine, as are root's.
        """
        self.patch(os, "geteuid", lambda: self.other)
        os.chown(self.script, self.other, self.other)
        self.assertEqual(self.directory.resolve("ok"), self.script)
        os.chown(self.script, 4242, 4242)
        e = self.assertRaises(CommandRefused, self.directory.resolve, "ok")
        self.assertIn("owned by uid 4242, not by root or the agent's uid %d" % (self.other,), e.message)

    def test_runnerRefuses(self):
        """
        The runner starts nothing insecure.
        """
        os.chown(self.script, self.other, self.other)
        reactor = MemoryProcessReactor()
        runner = CommandRunner(reactor, self.path, spawn=spawnWithReactor)
        e = self.assertRaises(CommandRefused, runner.start, "ok", RecordingSink())
        self.assertEqual(e.code, "insecure")
        self.assertEqual(reactor.processes, [])


class FakeRunnerTests(unittest.TestCase):
    """
    The L{Execution} state machine, driven through a fake process reactor.
    """

    def setUp(self):
        self.path = makeCommandDir({"cmd": SH, "other": SH})
        self.reactor = MemoryProcessReactor()
        self.runner = CommandRunner(
            self.reactor,
            self.path,
            timeout=10,
            maxOutput=100,
            killGrace=2,
            spawn=spawnWithReactor,
        )
        self.sink = RecordingSink()

    def start(self, name="cmd", **kw):
        execution = self.runner.start(name, self.sink, **kw)
        self.results = []
        execution.done.addCallback(self.results.append)
        return execution, self.reactor.processes[-1]

    def test_spawnArguments(self):
        """
        No shell, argv is the command path, the clean environment, cwd /.
        """
        execution, child = self.start(b"cmd")
        path = os.path.join(self.path, "cmd")
        self.assertEqual(child.executable, path)
        self.assertEqual(child.args, [path])
        self.assertEqual(child.env, COMMAND_ENVIRONMENT)
        self.assertEqual(child.env["PROKSHY"], "1")
        self.assertEqual(child.path, "/")
        self.assertEqual(child.childFDs, {0: "w", 1: "r", 2: "r"})
        self.assertEqual(execution.pid, child.pid)
        self.assertEqual(execution.name, "cmd")

    def test_refusedIsRaised(self):
        e = self.assertRaises(CommandRefused, self.runner.start, "nope", self.sink)
        self.assertEqual(e.code, "no-such-command")
        self.assertEqual(self.reactor.processes, [])

    def test_spawnErrorIsRefusal(self):
        self.reactor.spawnError = OSError(8, "Exec format error")
        e = self.assertRaises(CommandRefused, self.runner.start, "cmd", self.sink)
        self.assertEqual(e.code, "not-executable")
        self.assertIn("Exec format error", e.message)
        self.assertEqual(self.runner.running, [])

    def test_requiresProcessReactor(self):
        self.assertRaises(TypeError, CommandRunner, MemoryReactorClock(), self.path)
        self.assertRaises(TypeError, CommandRunner, object(), self.path)

    def test_outputAndExit(self):
        execution, child = self.start()
        child.feedStdout(b"out")
        child.feedStderr(b"err")
        self.assertEqual(self.sink.chunks, [(1, b"out"), (2, b"err")])
        self.reactor.advance(0.5)
        child.end(3)
        self.assertEqual(self.results, [ExitStatus(3, None, False, False)])
        self.assertEqual(execution.status, self.results[0])
        self.assertEqual(execution.outputBytes, 6)
        self.assertEqual(execution.elapsed, 0.5)
        self.assertEqual(self.runner.running, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_exitZero(self):
        execution, child = self.start()
        child.end(0)
        self.assertEqual(self.results, [ExitStatus(0, None)])
        self.assertTrue(self.results[0].success)
        self.assertEqual(self.results[0].describe(), "exited 0")

    def test_killedBySignal(self):
        execution, child = self.start()
        child.end(None, signal.SIGSEGV)
        self.assertEqual(self.results, [ExitStatus(None, signal.SIGSEGV)])
        self.assertEqual(self.results[0].describe(), "killed by SIGSEGV")

    def test_stdin(self):
        execution, child = self.start()
        execution.writeStdin(b"abc")
        execution.writeStdin(b"def")
        self.assertFalse(child.stdinClosed)
        execution.closeStdin()
        self.assertEqual(child.stdin, b"abcdef")
        self.assertTrue(child.stdinClosed)

    def test_stdinProducer(self):
        execution, child = self.start()
        producer = object()
        execution.registerStdinProducer(producer, True)
        self.assertIs(child.producer, producer)
        self.assertTrue(child.streaming)
        execution.unregisterStdinProducer()
        self.assertIsNone(child.producer)

    def test_stdinProducerAfterEnd(self):
        execution, child = self.start()
        child.end(0)
        stopped = []

        class Producer:
            def stopProducing(self):
                stopped.append(True)

        execution.registerStdinProducer(Producer(), True)
        self.assertEqual(stopped, [True])

    def test_pauseResume(self):
        execution, child = self.start()
        execution.pauseProducing()
        self.assertTrue(child.paused)
        execution.resumeProducing()
        self.assertFalse(child.paused)

    def test_timeout(self):
        """
        On timeout: TERM to the group, KILL after the grace period.
        """
        execution, child = self.start()
        self.reactor.advance(9.9)
        self.assertEqual(child.signals, [])
        self.reactor.advance(0.1)
        self.assertEqual(child.signals, [("group", signal.SIGTERM)])
        self.reactor.advance(1.9)
        self.assertEqual(child.signals, [("group", signal.SIGTERM)])
        self.reactor.advance(0.1)
        self.assertEqual(
            child.signals, [("group", signal.SIGTERM), ("group", signal.SIGKILL)]
        )
        child.end(None, signal.SIGKILL)
        self.assertEqual(self.results, [ExitStatus(None, signal.SIGKILL, True, False)])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_timeoutOverride(self):
        """
        A caller's shorter timeout applies.
        """
        execution, child = self.start(timeout=1)
        self.reactor.advance(1)
        self.assertEqual(child.signals, [("group", signal.SIGTERM)])

    def test_timeoutIsACap(self):
        """
        The runner's timeout is an upper bound: a caller cannot lengthen it,
        nor lift it with 0.
        """
        for asked in (0, 20, None):
            execution, child = self.start(timeout=asked)
            self.reactor.advance(9.9)
            self.assertEqual(child.signals, [], asked)
            self.reactor.advance(0.1)
            self.assertEqual(child.signals, [("group", signal.SIGTERM)], asked)
            child.end(None, signal.SIGTERM)

    def test_noTimeout(self):
        self.runner.timeout = 0
        execution, child = self.start(timeout=0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(1000)
        self.assertEqual(child.signals, [])

    def test_termRespected(self):
        """
        If the group dies on TERM, the finish sends one final group KILL
        for stragglers and no timer is left.
        """
        execution, child = self.start()
        self.reactor.advance(10)
        child.groupAlive = False
        child.end(None, signal.SIGTERM)
        self.assertEqual(self.results, [ExitStatus(None, signal.SIGTERM, True, False)])
        self.assertEqual(
            child.signals, [("group", signal.SIGTERM), ("group", signal.SIGKILL)]
        )
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_exitedButPipesHeld(self):
        """
        After the exit, a grandchild holding the pipes gets C{killGrace}
        seconds; then the group is killed, the pipes closed, done fires.
        """
        execution, child = self.start()
        child.exit(0)
        self.assertEqual(self.results, [])
        child.feedStdout(b"late")
        self.reactor.advance(1.9)
        self.assertEqual(self.results, [])
        self.reactor.advance(0.1)
        self.assertEqual(child.signals, [("group", signal.SIGKILL)])
        self.assertEqual(child.closedByParent, {0, 1, 2})
        self.assertEqual(self.results, [ExitStatus(0, None)])
        self.assertEqual(self.sink.stdout, b"late")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_exitedButPipesNeverClose(self):
        """
        Even if closing the pipes does not end the process, done fires.
        """
        execution, child = self.start()
        child.exit(1)
        child.loseConnection = lambda: None
        self.reactor.advance(2)
        self.assertEqual(self.results, [])
        self.reactor.advance(2)
        self.assertEqual(self.results, [ExitStatus(1, None)])
        # A late processEnded changes nothing.
        child.closePipes()
        self.assertEqual(len(self.results), 1)

    def test_pausedDrainWaitSuspended(self):
        """
        While output is paused, the post-exit wait does not run: the pipes
        cannot reach EOF unless read.
        """
        execution, child = self.start()
        execution.pauseProducing()
        child.exit(0)
        self.reactor.advance(100)
        self.assertEqual(self.results, [])
        self.assertEqual(child.signals, [])
        execution.resumeProducing()
        child.closePipes()
        self.assertEqual(self.results, [ExitStatus(0, None)])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_outputCap(self):
        """
        Output is delivered up to C{maxOutput}, then the command is
        truncated: read ends closed, group terminated.
        """
        execution, child = self.start()
        child.feedStdout(b"x" * 60)
        child.feedStderr(b"y" * 30)
        self.assertEqual(child.signals, [])
        child.feedStdout(b"z" * 30)
        self.assertEqual(self.sink.stdout, b"x" * 60 + b"z" * 10)
        self.assertEqual(self.sink.stderr, b"y" * 30)
        self.assertEqual(execution.outputBytes, 100)
        self.assertEqual(child.signals, [("group", signal.SIGTERM)])
        self.assertIn(1, child.closedByParent)
        self.assertIn(2, child.closedByParent)
        child.end(None, signal.SIGPIPE)
        self.assertEqual(
            self.results, [ExitStatus(None, signal.SIGPIPE, False, True)]
        )

    def test_outputExactlyAtCap(self):
        execution, child = self.start()
        child.feedStdout(b"x" * 100)
        self.assertEqual(child.signals, [])
        child.end(0)
        self.assertEqual(self.results, [ExitStatus(0, None, False, False)])

    def test_noCap(self):
        self.runner.maxOutput = 0
        execution, child = self.start()
        child.feedStdout(b"x" * 100000)
        self.assertEqual(len(self.sink.stdout), 100000)
        self.assertEqual(child.signals, [])

    def test_cancel(self):
        execution, child = self.start()
        execution.cancel()
        execution.cancel()
        self.assertEqual(child.signals, [("group", signal.SIGTERM)])
        self.reactor.advance(2)
        self.assertEqual(
            child.signals, [("group", signal.SIGTERM), ("group", signal.SIGKILL)]
        )
        child.end(None, signal.SIGKILL)
        self.assertEqual(self.results, [ExitStatus(None, signal.SIGKILL, False, False)])

    def test_stopProducing(self):
        execution, child = self.start()
        execution.pauseProducing()
        execution.stopProducing()
        self.assertFalse(child.paused)
        self.assertEqual(child.signals, [("group", signal.SIGTERM)])
        child.feedStdout(b"dropped")
        self.assertEqual(self.sink.stdout, b"")

    def test_signal(self):
        execution, child = self.start()
        self.assertTrue(execution.signal("HUP"))
        self.assertTrue(execution.signal("SIGUSR1"))
        self.assertTrue(execution.signal(signal.SIGINT))
        self.assertEqual(
            child.signals,
            [
                ("group", signal.SIGHUP),
                ("group", signal.SIGUSR1),
                ("group", signal.SIGINT),
            ],
        )
        self.assertRaises(ValueError, execution.signal, "NOPE")
        self.assertRaises(ValueError, execution.signal, "SIG_IGN")
        self.assertRaises(ValueError, execution.signal, 9999)
        self.assertRaises(ValueError, execution.signal, 0)
        child.groupAlive = False
        self.assertFalse(execution.signal("TERM"))
        child.end(0)
        self.assertFalse(execution.signal("TERM"))

    def test_signalWithoutGroupSupport(self):
        """
        A transport that is not an L{IProcessGroup} gets C{signalProcess}; a
        process that is already gone is not an error.
        """
        execution, child = self.start()
        noGroup = type("NoGroup", (type(child),), {"signalGroup": None})
        child.__class__ = implementer_only(IProcessTransport)(noGroup)
        self.assertTrue(execution.signal("TERM"))
        self.assertEqual(child.signals, [("process", signal.SIGTERM)])

        def gone(sig):
            raise ProcessExitedAlready()

        child.signalProcess = gone
        self.assertFalse(execution.signal("TERM"))

    def test_doneOnce(self):
        execution, child = self.start()
        self.reactor.advance(10)  # timeout: TERM
        child.exit(None, signal.SIGTERM)
        self.reactor.advance(2)  # KILL timer and drain wait both expire
        child.closePipes()
        self.reactor.advance(10)
        self.assertEqual(len(self.results), 1)
        self.assertTrue(self.results[0].timedOut)

    def test_sinkErrorsAreContained(self):
        class Broken:
            def stdoutReceived(self, data):
                raise RuntimeError("boom")

            stderrReceived = stdoutReceived

        execution = self.runner.start("cmd", Broken())
        child = self.reactor.processes[-1]
        child.feedStdout(b"x")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        results = []
        execution.done.addCallback(results.append)
        child.end(0)
        self.assertEqual(results, [ExitStatus(0, None)])

    def test_maxRunning(self):
        self.runner.maxRunning = 1
        execution, child = self.start()
        e = self.assertRaises(CommandRefused, self.runner.start, "other", self.sink)
        self.assertEqual(e.code, "busy")
        child.end(0)
        self.runner.start("other", self.sink)

    def test_cancelAll(self):
        a, childA = self.start()
        b, childB = self.start("other")
        d = self.runner.cancelAll()
        self.assertEqual(childA.signals, [("group", signal.SIGTERM)])
        self.assertEqual(childB.signals, [("group", signal.SIGTERM)])
        childA.end(None, signal.SIGTERM)
        self.assertNoResult(d)
        childB.end(0)
        self.assertEqual(len(self.successResultOf(d)), 2)


class ExecutionMachineTests(unittest.TestCase):
    """
    L{Execution} is an Automat machine: every (state, input) pair declared,
    the table in the module docstring, each timer owned by one state.
    """

    def setUp(self):
        self.path = makeCommandDir({"cmd": SH})
        self.reactor = MemoryProcessReactor()
        self.runner = CommandRunner(
            self.reactor, self.path, timeout=10, killGrace=2, spawn=spawnWithReactor
        )
        self.sink = RecordingSink()

    def start(self):
        execution = self.runner.start("cmd", self.sink)
        self.results = []
        execution.done.addCallback(self.results.append)
        return execution, self.reactor.processes[-1]

    def timers(self):
        """
        When the pending timers fire, relative to now.
        """
        now = self.reactor.seconds()
        return sorted(call.getTime() - now for call in self.reactor.getDelayedCalls())

    def test_everyPairDeclared(self):
        self.assertEqual(_machines.undeclared(Execution._machine), set())

    def test_states(self):
        self.assertEqual(
            _machines.states(Execution._machine),
            ["closing", "done", "draining", "exited", "killed", "running", "starting", "terminating"],
        )

    def test_tableInDocstring(self):
        import prokshy.guest.execution

        self.assertIn(_machines.table(Execution._machine), prokshy.guest.execution.__doc__)

    def test_timersFollowStates(self):
        """
        running: the timeout; terminating: the kill grace; killed: none;
        draining: the wait for the pipes; exited (paused): none; closing:
        the fallback; done: none.
        """
        execution, child = self.start()
        self.assertEqual(self.timers(), [10])
        self.reactor.advance(4)
        execution.cancel()
        self.assertEqual(self.timers(), [2])
        self.reactor.advance(2)
        self.assertEqual(child.signals, [("group", signal.SIGTERM), ("group", signal.SIGKILL)])
        self.assertEqual(self.timers(), [])
        child.loseConnection = lambda: None
        child.exit(None, signal.SIGKILL)
        self.assertEqual(self.timers(), [2])
        self.reactor.advance(1)
        execution.pauseProducing()
        self.assertEqual(self.timers(), [])
        self.reactor.advance(50)
        execution.resumeProducing()
        self.assertEqual(self.timers(), [2])
        self.reactor.advance(2)
        self.assertEqual(self.timers(), [2])
        self.assertEqual(self.results, [])
        self.reactor.advance(2)
        self.assertEqual(self.results, [ExitStatus(None, signal.SIGKILL)])
        self.assertEqual(self.timers(), [])

    def test_exitWhileTerminatingEndsTheGrace(self):
        """
        TERM, then the command exits while a grandchild holds its pipes:
        the kill-grace timer dies with the terminating state, and the wait
        for the pipes alone bounds the rest (KILL and close at its end).
        """
        execution, child = self.start()
        execution.cancel()
        self.reactor.advance(1)
        child.exit(None, signal.SIGTERM)
        self.assertEqual(self.timers(), [2])
        self.reactor.advance(1.9)
        self.assertEqual(child.signals, [("group", signal.SIGTERM)])
        self.reactor.advance(0.1)
        self.assertEqual(child.signals, [("group", signal.SIGTERM), ("group", signal.SIGKILL)])
        self.assertEqual(child.closedByParent, {0, 1, 2})
        self.assertEqual(self.results, [ExitStatus(None, signal.SIGTERM)])
        self.assertEqual(self.timers(), [])

    def test_cancelAfterExit(self):
        """
        A cancel after the command exited TERMs what holds its pipes; the
        end sends the KILL for stragglers.
        """
        execution, child = self.start()
        child.exit(0)
        execution.cancel()
        self.assertEqual(child.signals, [("group", signal.SIGTERM)])
        self.assertEqual(self.timers(), [2])
        child.closePipes()
        self.assertEqual(child.signals, [("group", signal.SIGTERM), ("group", signal.SIGKILL)])
        self.assertEqual(self.results, [ExitStatus(0, None)])

    def test_interfaces(self):
        from zope.interface.verify import verifyObject

        from prokshy.execs.interfaces import IExecution

        execution, child = self.start()
        self.assertTrue(verifyObject(IExecution, execution))


class RealProcessTests(unittest.TestCase):
    """
    Real children, real reactor: small scripts in a temporary command.d.
    """

    timeout = 20

    def setUp(self):
        self.path = makeCommandDir()
        self.runner = CommandRunner(
            reactor, self.path, timeout=5, maxOutput=1 << 20, killGrace=0.3
        )
        self.addCleanup(self.killLeftovers)

    def killLeftovers(self):
        running = self.runner.running
        for execution in running:
            execution.signal(signal.SIGKILL)
        return defer.gatherResults([e.done for e in running])

    def startScript(self, name, stdin=None, script=None, **kw):
        """
        Start C{name} (creating it from C{script}), feed C{stdin}.

        @return: C{(execution, sink)}.
        """
        if script is not None:
            addScript(self.path, name, script)
        sink = RecordingSink()
        execution = self.runner.start(name, sink, **kw)
        if stdin is not None:
            execution.writeStdin(stdin)
            execution.closeStdin()
        return execution, sink

    @defer.inlineCallbacks
    def test_stdinToStdout(self):
        execution, sink = self.startScript(
            "cat", b"hello\x00\xff world", SH + "exec cat\n"
        )
        status = yield execution.done
        self.assertEqual(status, ExitStatus(0, None))
        self.assertEqual(sink.stdout, b"hello\x00\xff world")
        self.assertEqual(execution.outputBytes, 13)

    @defer.inlineCallbacks
    def test_stderrSeparate(self):
        execution, sink = self.startScript(
            "both", b"", SH + "echo out; echo err >&2; echo out2\n"
        )
        yield execution.done
        self.assertEqual(sink.stdout, b"out\nout2\n")
        self.assertEqual(sink.stderr, b"err\n")

    @defer.inlineCallbacks
    def test_exitCode(self):
        execution, sink = self.startScript("three", b"", SH + "exit 3\n")
        status = yield execution.done
        self.assertEqual(status, ExitStatus(3, None))

    @defer.inlineCallbacks
    def test_signalExit(self):
        script = SH + "kill -USR1 $$\nsleep 5\n"
        execution, sink = self.startScript("selfkill", b"", script)
        status = yield execution.done
        self.assertEqual(status, ExitStatus(None, signal.SIGUSR1))

    @defer.inlineCallbacks
    def test_environment(self):
        """
        The command gets exactly L{COMMAND_ENVIRONMENT}.  (The command is a
        symlink to env(1): a shell or Python would add variables.)
        """
        env = shutil.which("env")
        if env is None:
            raise unittest.SkipTest("no env(1)")
        os.symlink(os.path.realpath(env), os.path.join(self.path, "env"))
        execution, sink = self.startScript("env", b"")
        status = yield execution.done
        self.assertEqual(status, ExitStatus(0, None))
        lines = sink.stdout.decode("ascii").splitlines()
        environment = dict(line.split("=", 1) for line in lines)
        self.assertEqual(environment, COMMAND_ENVIRONMENT)

    @defer.inlineCallbacks
    def test_cwd(self):
        execution, sink = self.startScript("pwd", b"", SH + "pwd -P\n")
        yield execution.done
        self.assertEqual(sink.stdout, b"/\n")

    def _signalDispositionTest(self, method):
        """
        Signals the agent ignores (Python ignores SIGPIPE) are reset to
        their default in the child.
        """
        if not os.path.exists("/proc/self/status"):
            raise unittest.SkipTest("needs /proc/self/status")
        addScript(self.path, "sigs", SH + "exec grep SigIgn /proc/self/status\n")
        self.assertEqual(signal.getsignal(signal.SIGPIPE), signal.SIG_IGN)
        execution, sink = self.startWith(method, "sigs")
        execution.closeStdin()
        return execution.done.addCallback(
            lambda _: self.assertEqual(
                int(sink.stdout.split()[1], 16) & (1 << (signal.SIGPIPE - 1)), 0
            )
        )

    def startWith(self, method, name):
        """
        Start C{name} on the posix_spawn path (cwd /) or the fork path.
        """
        sink = RecordingSink()
        if method == "posix_spawn":
            here = os.getcwd()
            os.chdir("/")
            try:
                execution = self.runner.start(name, sink)
            finally:
                os.chdir(here)
        else:
            self.assertNotEqual(os.path.abspath("."), "/")
            execution = self.runner.start(name, sink)
        self.assertEqual(self.lastProcess().spawnMethod, method)
        return execution, sink

    def lastProcess(self):
        # The execution keeps its transport privately; tests may look.
        return max(self.runner.running, key=lambda e: e._startedAt).transport

    def test_signalDispositionSpawn(self):
        return self._signalDispositionTest("posix_spawn")

    def test_signalDispositionFork(self):
        return self._signalDispositionTest("fork")

    @defer.inlineCallbacks
    def _processGroupTest(self, method):
        addScript(self.path, "sleeper", SH + "echo started\nexec sleep 30\n")
        execution, sink = self.startWith(method, "sleeper")
        self.assertIsInstance(execution.transport, ProcessGroupProcess)
        self.assertTrue(verifyObject(IProcessTree, execution.transport))
        self.assertEqual(os.getpgid(execution.pid), execution.pid)
        self.assertNotEqual(os.getpgid(execution.pid), os.getpgrp())
        execution.cancel()
        status = yield execution.done
        self.assertEqual(status, ExitStatus(None, signal.SIGTERM))

    def test_processGroupSpawn(self):
        return self._processGroupTest("posix_spawn")

    def test_processGroupFork(self):
        return self._processGroupTest("fork")

    @defer.inlineCallbacks
    def test_grandchildKilledWithGroup(self):
        """
        Cancelling kills the command's own children too.
        """
        script = SH + "sleep 30 &\necho $!\nsleep 30\n"
        execution, sink = self.startScript("family", b"", script)
        grandchild = yield self.waitForPid(sink)
        self.assertTrue(isAlive(grandchild))
        self.assertEqual(os.getpgid(grandchild), execution.pid)
        execution.cancel()
        status = yield execution.done
        self.assertEqual(status.signal, signal.SIGTERM)
        yield self.waitDead(grandchild)

    @defer.inlineCallbacks
    def test_grandchildHoldingPipes(self):
        """
        The command exits but a background child keeps stdout open: after
        C{killGrace} the group is killed and done fires with the exit code.
        """
        script = SH + "sleep 30 &\necho $!\nexit 4\n"
        start = reactor.seconds()
        execution, sink = self.startScript("leaver", b"", script)
        status = yield execution.done
        elapsed = reactor.seconds() - start
        self.assertEqual(status, ExitStatus(4, None))
        self.assertTrue(0.3 <= elapsed < 3, elapsed)
        yield self.waitDead(int(sink.stdout))

    @defer.inlineCallbacks
    def waitForPid(self, sink):
        for _ in range(200):
            if sink.stdout.endswith(b"\n"):
                return int(sink.stdout)
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.fail("no pid printed")

    @defer.inlineCallbacks
    def waitDead(self, pid):
        for _ in range(200):
            if not isAlive(pid):
                return
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.fail(f"process {pid} still alive")

    @defer.inlineCallbacks
    def test_timeoutTermThenKill(self):
        """
        A command that traps TERM gets TERM at the timeout, then KILL.
        """
        script = SH + (
            "trap 'echo got TERM' TERM\n"
            "echo ready\n"
            "while :; do sleep 0.05; done\n"
        )
        start = reactor.seconds()
        execution, sink = self.startScript("stubborn", b"", script, timeout=0.3)
        status = yield execution.done
        elapsed = reactor.seconds() - start
        self.assertEqual(status, ExitStatus(None, signal.SIGKILL, True, False))
        self.assertIn(b"got TERM", sink.stdout)
        self.assertTrue(0.6 <= elapsed < 3, elapsed)

    @defer.inlineCallbacks
    def test_timeoutTerm(self):
        script = SH + "exec sleep 30\n"
        execution, sink = self.startScript("slow", b"", script, timeout=0.3)
        status = yield execution.done
        self.assertEqual(status, ExitStatus(None, signal.SIGTERM, True, False))

    @defer.inlineCallbacks
    def test_outputCap(self):
        self.runner.maxOutput = 100000
        script = PY + (
            "import os\n"
            "while True:\n"
            "    os.write(1, b'x' * 65536)\n"
        )
        execution, sink = self.startScript("flood", b"", script)
        status = yield execution.done
        self.assertTrue(status.truncated)
        self.assertFalse(status.timedOut)
        self.assertEqual(sink.stdout, b"x" * 100000)
        self.assertEqual(execution.outputBytes, 100000)

    @defer.inlineCallbacks
    def test_pausedChildBlocks(self):
        """
        While output is paused the child blocks on its full pipe: it stops
        making progress and nothing is read into memory.  Resuming lets it
        run again.
        """
        progress = os.path.join(self.path, "progress")
        script = PY + (
            "import os\n"
            f"progress = {progress!r}\n"
            "total = 0\n"
            "while True:\n"
            "    total += os.write(1, b'x' * 16384)\n"
            "    with open(progress + '.tmp', 'w') as f:\n"
            "        f.write(str(total))\n"
            "    os.rename(progress + '.tmp', progress)\n"
        )
        execution, sink = self.startScript("producer", b"", script, timeout=0)
        execution.pauseProducing()

        def written():
            try:
                with open(progress) as f:
                    return int(f.read())
            except (OSError, ValueError):
                return 0

        yield task.deferLater(reactor, 0.4, lambda: None)
        first = written()
        yield task.deferLater(reactor, 0.2, lambda: None)
        second = written()
        self.assertEqual(sink.stdout, b"")
        self.assertEqual(first, second)
        self.assertTrue(0 < second <= 1 << 20, second)  # at most a pipe buffer
        execution.resumeProducing()
        for _ in range(200):
            if len(sink.stdout) > 4 * second and written() > 4 * second:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertGreater(written(), 4 * second)
        execution.cancel()
        yield execution.done

    @defer.inlineCallbacks
    def test_stdinProducerBackpressure(self):
        """
        A stdin producer is paused while the child does not read, and
        resumed once it does.
        """
        events = []

        class Producer:
            def pauseProducing(self):
                events.append("pause")

            def resumeProducing(self):
                events.append("resume")

            def stopProducing(self):
                events.append("stop")

        script = SH + "sleep 0.3\nexec cat >/dev/null\n"
        execution, sink = self.startScript("slowreader", None, script)
        execution.registerStdinProducer(Producer(), True)
        execution.writeStdin(b"x" * (1 << 20))
        self.assertEqual(events, ["pause"])
        yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(events, ["pause"])
        for _ in range(300):
            if "resume" in events:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(events, ["pause", "resume"])
        execution.unregisterStdinProducer()
        execution.closeStdin()
        status = yield execution.done
        self.assertEqual(status, ExitStatus(0, None))


def isAlive(pid):
    """
    Whether C{pid} exists and is not a zombie (a reparented zombie may stay
    around if init does not reap it).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state not in ("Z", "X")
