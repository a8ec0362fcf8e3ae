"""
Tests for L{prokshy.lines.legacy}: the original line protocol, driven with
a fake process reactor (and, at the end, with real scripts).
"""

from __future__ import annotations

import os
import signal

from twisted.internet import defer, reactor, task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from prokshy.guest._process import spawnWithReactor
from prokshy.lines.legacy import LegacyHandler
from prokshy._loglimit import LogLimiter
from prokshy.execs.status import ExitStatus
from prokshy.guest.runner import CommandRunner

from tests.fakes import SH, LogCapture, MemoryProcessReactor, addScript, makeCommandDir


class HandlerTestCase(unittest.TestCase, LogCapture):
    def setUp(self):
        self.captureLogs()
        self.path = makeCommandDir(
            {"statgrab": SH, "OpenFile": SH, "echo": SH, "a-b_c.d": SH}
        )
        self.reactor = MemoryProcessReactor()
        self.runner = CommandRunner(
            self.reactor, self.path, timeout=60, killGrace=2, spawn=spawnWithReactor
        )
        self.output = []
        self.handler = LegacyHandler(self.runner, self.output.append, self.reactor)

    def feed(self, *lines):
        for line in lines:
            self.handler.lineReceived(line)

    def spawned(self):
        """
        @return: the command names spawned so far.
        """
        return [os.path.basename(p.args[0]) for p in self.reactor.processes]

    def last(self):
        return self.reactor.processes[-1]


class FormsTests(HandlerTestCase):
    """
    C{NAME SP DATA}, C{NAME LF DATA LF}, and a bare C{NAME}.
    """

    def test_spaceForm(self):
        self.feed(b"statgrab foo bar")
        self.assertEqual(self.spawned(), ["statgrab"])
        child = self.last()
        self.assertEqual(child.stdin, b"foo bar")
        self.assertTrue(child.stdinClosed)

    def test_spaceFormKeepsInnerBlanks(self):
        self.feed(b"echo  two  spaces")
        self.assertEqual(self.last().stdin, b" two  spaces")

    def test_lineForm(self):
        self.feed(b"OpenFile")
        self.assertEqual(self.spawned(), [])
        self.feed(b"filename=/tmp/hello.txt,mode=read")
        self.assertEqual(self.spawned(), ["OpenFile"])
        self.assertEqual(self.last().stdin, b"filename=/tmp/hello.txt,mode=read")
        self.assertTrue(self.last().stdinClosed)

    def test_argumentThatLooksLikeACommand(self):
        """
        The line after a bare NAME is its DATA, even if it names a command.
        """
        self.feed(b"echo", b"statgrab")
        self.assertEqual(self.spawned(), ["echo"])
        self.assertEqual(self.last().stdin, b"statgrab")
        self.last().end(0)
        self.assertEqual(self.spawned(), ["echo"])

    def test_emptyArgumentLine(self):
        self.feed(b"echo", b"")
        self.assertEqual(self.spawned(), ["echo"])
        self.assertEqual(self.last().stdin, b"")
        self.assertTrue(self.last().stdinClosed)

    def test_argumentWait(self):
        """
        A bare NAME with no DATA line within C{argWait} runs with empty
        data; the late line is then a command line.
        """
        self.feed(b"statgrab")
        self.reactor.advance(0.999)
        self.assertEqual(self.spawned(), [])
        self.reactor.advance(0.001)
        self.assertEqual(self.spawned(), ["statgrab"])
        self.assertEqual(self.last().stdin, b"")
        self.assertTrue(self.last().stdinClosed)
        self.last().end(0)
        self.feed(b"echo")
        self.reactor.advance(1)
        self.assertEqual(self.spawned(), ["statgrab", "echo"])

    def test_argumentWaitSetting(self):
        self.handler.argWait = 0.25
        self.feed(b"statgrab")
        self.reactor.advance(0.25)
        self.assertEqual(self.spawned(), ["statgrab"])

    def test_argumentArrivesInTime(self):
        self.feed(b"statgrab")
        self.reactor.advance(0.9)
        self.feed(b"data")
        self.assertEqual(self.last().stdin, b"data")
        self.reactor.advance(5)
        self.assertEqual(self.spawned(), ["statgrab"])

    def test_blanksAndCR(self):
        """
        Surrounding blanks and a trailing CR are stripped from the name line
        and the argument line.
        """
        self.feed(b"  \tstatgrab \t\r", b"  some data \r")
        self.assertEqual(self.spawned(), ["statgrab"])
        self.assertEqual(self.last().stdin, b"some data")
        self.last().end(0)
        self.feed(b" echo hi there \r")
        self.assertEqual(self.last().stdin, b"hi there")

    def test_onlyOneCRStripped(self):
        self.feed(b"echo", b"data\r\r")
        self.assertEqual(self.last().stdin, b"data\r")

    def test_emptyLinesIgnored(self):
        self.feed(b"", b"  ", b"\r")
        self.assertEqual(self.spawned(), [])
        self.assertEqual(self.logged(), [])
        self.feed(b"echo x")
        self.assertEqual(self.spawned(), ["echo"])

    def test_allNameCharacters(self):
        self.feed(b"a-b_c.d x")
        self.assertEqual(self.spawned(), ["a-b_c.d"])


class OutputTests(HandlerTestCase):
    def test_stdoutRaw(self):
        self.feed(b"statgrab x")
        self.last().feedStdout(b"cpu.idle = 1\r\n\x00\xff")
        self.last().feedStdout(b"more")
        self.assertEqual(self.output, [b"cpu.idle = 1\r\n\x00\xff", b"more"])

    def test_stderrAndExitLogged(self):
        self.feed(b"statgrab x")
        child = self.last()
        child.feedStderr(b"first line\nsecond ")
        child.feedStderr(b"line\npartial")
        self.reactor.advance(0.12)
        child.feedStdout(b"x" * 10)
        child.end(0)
        self.assertEqual(self.output, [b"x" * 10])
        self.assertLogged("'statgrab'", "stderr: first line")
        self.assertLogged("'statgrab'", "stderr: second line")
        self.assertLogged("'statgrab'", "stderr: partial")
        message = self.assertLogged("command 'statgrab' exited 0 (0.12 s, 40 bytes)")
        # The partial stderr line comes before the exit line.
        self.assertEqual(self.logged()[-1], message)

    def test_doneResultUnchanged(self):
        """
        The handler's callback on C{done} passes the status through.
        """
        self.feed(b"statgrab x")
        (execution,) = self.runner.running
        self.last().end(4)
        self.assertEqual(self.successResultOf(execution.done), ExitStatus(4, None))

    def test_failureLogged(self):
        self.feed(b"statgrab x")
        self.last().end(2)
        self.assertLogged("command 'statgrab' exited 2")
        self.feed(b"echo x")
        self.last().end(None, signal.SIGKILL)
        self.assertLogged("command 'echo' killed by SIGKILL")

    def test_stderrLogBounded(self):
        self.feed(b"statgrab x")
        for _ in range(1000):
            self.last().feedStderr(b"y" * 999 + b"\n")
        stderrLines = [m for m in self.logged() if "stderr:" in m]
        self.assertTrue(50 <= len(stderrLines) <= 70, len(stderrLines))
        self.assertLogged("further stderr not logged")


class RefusalTests(HandlerTestCase):
    """
    Refused names are ignored and logged with the reason; the next line is
    read as a command line, as in the original.
    """

    def test_badName(self):
        self.feed(b"foo$bar")
        self.assertEqual(self.spawned(), [])
        self.assertLogged("ignored command line", "bad name", "foo$bar")

    def test_badNameDoesNotConsumeArgument(self):
        self.feed(b"bo/gus", b"statgrab")
        self.reactor.advance(1)
        self.assertEqual(self.spawned(), ["statgrab"])
        self.assertEqual(self.last().stdin, b"")

    def test_missingDoesNotConsumeArgument(self):
        """
        C{--command bogus --from-string statgrab} runs statgrab.
        """
        self.feed(b"bogus", b"statgrab")
        self.assertLogged("ignored command line", "no such command 'bogus'")
        self.reactor.advance(1)
        self.assertEqual(self.spawned(), ["statgrab"])

    def test_missingSpaceForm(self):
        self.feed(b"bogus statgrab")
        self.reactor.advance(1)
        self.assertEqual(self.spawned(), [])
        self.assertLogged("no such command 'bogus'")

    def test_dots(self):
        self.feed(b".", b"..", b". x", b".. x")
        self.reactor.advance(1)
        self.assertEqual(self.spawned(), [])
        self.assertLogged("bad name", "'.'")

    def test_notExecutable(self):
        addScript(self.path, "plain", SH, mode=0o644)
        self.feed(b"plain", b"echo")
        self.assertLogged("ignored command line", "'plain' is not executable")
        self.reactor.advance(1)
        self.assertEqual(self.spawned(), ["echo"])

    def test_insecureFile(self):
        addScript(self.path, "open", SH, mode=0o757)
        self.feed(b"open x")
        self.assertEqual(self.spawned(), [])
        self.assertLogged("ignored command line", "insecure", "world-writable")

    def test_insecureDirectory(self):
        os.chmod(self.path, 0o775)
        self.feed(b"statgrab x")
        self.assertEqual(self.spawned(), [])
        self.assertLogged("insecure", "command directory", "group-writable")

    def test_insecureSymlinkTarget(self):
        elsewhere = makeCommandDir(mode=0o777)
        target = addScript(elsewhere, "real", SH)
        os.symlink(target, os.path.join(self.path, "link"))
        self.feed(b"link x")
        self.assertEqual(self.spawned(), [])
        self.assertLogged("insecure", "world-writable")

    def test_binaryGarbage(self):
        self.feed(b"\x00\x01\x02\xfe", b"caf\xc3\xa9", b"\x1b[A")
        self.assertEqual(self.spawned(), [])
        self.assertLogged("ignored command line", "bad name", "\\x00\\x01")

    def test_refusedAtStart(self):
        """
        A command that becomes unavailable between the name line and its
        start is logged and skipped.
        """
        self.feed(b"echo")
        os.chmod(os.path.join(self.path, "echo"), 0o644)
        self.reactor.advance(1)
        self.assertEqual(self.spawned(), [])
        self.assertLogged("ignored command line", "not executable")

    def test_spawnFailure(self):
        self.reactor.spawnError = OSError(8, "Exec format error")
        self.feed(b"echo x")
        self.assertLogged("could not be started", "Exec format error")
        self.reactor.spawnError = None
        self.feed(b"echo y")
        self.assertEqual(self.last().stdin, b"y")

    def test_garbageFloodRateLimited(self):
        """
        At most one "ignored" line per second, then a count.
        """
        for i in range(1000):
            self.feed(b"bad!%d" % (i,))
        ignored = [m for m in self.logged() if "ignored command line" in m]
        self.assertEqual(len(ignored), 1)
        self.reactor.advance(1)
        self.feed(b"still-bad!")
        message = self.assertLogged("ignored command line", "999 similar")
        self.assertIn("still-bad!", message)
        self.assertEqual(
            len([m for m in self.logged() if "ignored command line" in m]), 2
        )

    def test_rateLimitCountFlushedOnReset(self):
        self.feed(b"bad!", b"bad!", b"bad!")
        self.handler.reset()
        self.assertLogged("2 similar messages suppressed")


class QueueTests(HandlerTestCase):
    """
    One command at a time; lines are queued meanwhile.
    """

    def test_queuedInOrder(self):
        self.feed(b"statgrab one")
        self.feed(b"echo two", b"OpenFile", b"three", b"bogus", b"echo")
        self.assertEqual(self.spawned(), ["statgrab"])
        self.last().end(0)
        self.assertEqual(self.spawned(), ["statgrab", "echo"])
        self.assertEqual(self.last().stdin, b"two")
        self.last().end(0)
        self.assertEqual(self.spawned(), ["statgrab", "echo", "OpenFile"])
        self.assertEqual(self.last().stdin, b"three")
        self.last().end(0)
        # "bogus" is refused; the bare "echo" then waits for its argument.
        self.assertEqual(len(self.spawned()), 3)
        self.reactor.advance(1)
        self.assertEqual(self.spawned(), ["statgrab", "echo", "OpenFile", "echo"])
        self.assertEqual(self.last().stdin, b"")

    def test_argumentLineQueued(self):
        """
        A bare name and its argument both arriving during a run: the
        argument is taken from the queue without waiting.
        """
        self.feed(b"statgrab x", b"echo", b"arg")
        self.last().end(0)
        self.assertEqual(self.spawned(), ["statgrab", "echo"])
        self.assertEqual(self.last().stdin, b"arg")

    def test_busy(self):
        self.assertFalse(self.handler.busy)
        self.feed(b"statgrab x")
        self.assertTrue(self.handler.busy)
        self.last().end(0)
        self.assertFalse(self.handler.busy)

    def test_waitsForPipes(self):
        """
        The next command starts only when the previous one is done, not
        at its exit.
        """
        self.feed(b"statgrab x", b"echo y")
        self.last().exit(0)
        self.assertEqual(self.spawned(), ["statgrab"])
        self.reactor.advance(2)
        self.assertEqual(self.spawned(), ["statgrab", "echo"])

    def test_queueBoundLines(self):
        self.feed(b"statgrab x")
        for i in range(100):
            self.feed(b"echo %d" % (i,))
        self.assertLogged("discarded a line", "queue full", "64 lines")
        self.assertEqual(
            len([m for m in self.logged() if "queue full" in m]), 1
        )
        for i in range(64):
            self.last().end(0)
        self.assertEqual(len(self.spawned()), 65)
        self.assertEqual(self.last().stdin, b"63")
        self.last().end(0)
        self.assertEqual(len(self.spawned()), 65)

    def test_queueBoundBytes(self):
        self.handler.maxQueuedBytes = 100
        self.feed(b"statgrab x")
        self.feed(b"echo " + b"a" * 60, b"echo " + b"b" * 60, b"echo c")
        self.assertLogged("queue full")
        self.last().end(0)
        self.assertEqual(self.last().stdin, b"a" * 60)
        self.last().end(0)
        self.assertEqual(self.last().stdin, b"c")

    def test_timedOutCommandReleasesQueue(self):
        self.feed(b"statgrab x", b"echo y")
        self.reactor.advance(60)
        self.assertEqual(self.last().signals, [("group", signal.SIGTERM)])
        self.last().end(None, signal.SIGTERM)
        self.assertEqual(self.spawned(), ["statgrab", "echo"])


class DiscardTests(HandlerTestCase):
    """
    L{LegacyHandler.lineDiscarded}: an over-long line was thrown away.
    """

    def test_discardedArgument(self):
        self.feed(b"echo")
        self.handler.lineDiscarded()
        self.reactor.advance(5)
        self.assertEqual(self.spawned(), [])
        self.assertLogged("'echo' not run", "too long")

    def test_discardedWhileIdle(self):
        self.handler.lineDiscarded()
        self.feed(b"echo x")
        self.assertEqual(self.spawned(), ["echo"])

    def test_discardedKeepsPlaceInQueue(self):
        """
        A bare name queued before a discarded line does not take the line
        after the discarded one as its argument.
        """
        self.feed(b"statgrab x", b"echo")
        self.handler.lineDiscarded()
        self.feed(b"OpenFile data")
        self.last().end(0)
        self.assertEqual(self.spawned(), ["statgrab", "OpenFile"])
        self.assertEqual(self.last().stdin, b"data")


class ResetTests(HandlerTestCase):
    def test_resetForgetsPendingName(self):
        self.feed(b"echo")
        self.handler.reset()
        self.feed(b"statgrab")
        self.reactor.advance(1)
        self.assertEqual(self.spawned(), ["statgrab"])
        self.assertEqual(self.last().stdin, b"")

    def test_resetForgetsQueue(self):
        self.feed(b"statgrab x", b"echo y")
        self.handler.reset()
        self.last().end(0)
        self.assertEqual(self.spawned(), ["statgrab"])

    def test_resetKeepsCommandRunningDropsOutput(self):
        self.feed(b"statgrab x")
        self.last().feedStdout(b"before")
        self.handler.reset()
        self.last().feedStdout(b"after")
        self.assertEqual(self.output, [b"before"])
        self.assertEqual(self.last().signals, [])
        self.assertLogged("'statgrab' is still running", "dropped")
        self.last().end(0)
        self.assertLogged("command 'statgrab' exited 0")


class ThrottleTests(HandlerTestCase):
    """
    With a consumer (the device transport), the running command is
    registered as its producer.
    """

    def setUp(self):
        super().setUp()
        self.transport = StringTransport()
        self.handler.consumer = self.transport

    def test_registered(self):
        self.feed(b"statgrab x")
        child = self.last()
        producer = self.transport.producer
        self.assertIsNotNone(producer)
        self.assertTrue(self.transport.streaming)
        producer.pauseProducing()
        self.assertTrue(child.paused)
        producer.resumeProducing()
        self.assertFalse(child.paused)
        child.end(0)
        self.assertIsNone(self.transport.producer)

    def test_stopProducingDoesNotKill(self):
        self.feed(b"statgrab x")
        child = self.last()
        self.transport.producer.pauseProducing()
        self.transport.producer.stopProducing()
        self.assertFalse(child.paused)
        self.assertEqual(child.signals, [])

    def test_otherProducerLeftAlone(self):
        other = object()
        self.transport.registerProducer(other, True)
        self.feed(b"statgrab x")
        self.assertIs(self.transport.producer, other)
        self.last().end(0)
        self.assertIs(self.transport.producer, other)

    def test_resetUnregisters(self):
        self.feed(b"statgrab x")
        self.transport.producer.pauseProducing()
        self.handler.reset()
        self.assertIsNone(self.transport.producer)
        self.assertFalse(self.last().paused)


class LogLimiterTests(unittest.TestCase, LogCapture):
    def test_limits(self):
        self.captureLogs()
        from twisted.logger import Logger

        clock = task.Clock()
        limiter = LogLimiter(clock, Logger(), interval=1.0)
        self.assertTrue(limiter.emit("one {x}", x="{braces}"))
        self.assertFalse(limiter.emit("two"))
        self.assertFalse(limiter.emit("two"))
        clock.advance(1)
        self.assertTrue(limiter.emit("three"))
        self.assertEqual(
            self.logged(), ["one {braces}", "three (2 similar messages suppressed)"]
        )
        limiter.flush()
        self.assertEqual(len(self.logged()), 2)


class RealCommandTests(unittest.TestCase, LogCapture):
    """
    The handler with the real runner and small scripts.
    """

    def setUp(self):
        self.captureLogs()
        self.path = makeCommandDir(
            {
                "cat": SH + "exec cat\n",
                "upper": SH + "tr a-z A-Z; echo oops >&2; exit 5\n",
            }
        )
        self.runner = CommandRunner(reactor, self.path, timeout=5, killGrace=0.3)
        self.output = []
        self.clock = task.Clock()
        self.handler = LegacyHandler(self.runner, self.output.append, self.clock)

    def waitIdle(self):
        d = defer.Deferred()

        def check():
            if not self.handler.busy:
                d.callback(None)
            else:
                reactor.callLater(0.01, check)

        check()
        return d

    @defer.inlineCallbacks
    def test_bothForms(self):
        self.handler.lineReceived(b"cat hello")
        self.handler.lineReceived(b"upper")
        self.handler.lineReceived(b"shout")
        yield self.waitIdle()
        self.assertEqual(b"".join(self.output), b"helloSHOUT")
        self.assertLogged("'upper'", "stderr: oops")
        self.assertLogged("command 'upper' exited 5")

    @defer.inlineCallbacks
    def test_argumentTimeoutWithClock(self):
        self.handler.lineReceived(b"cat")
        self.clock.advance(1)
        yield self.waitIdle()
        self.assertEqual(self.output, [])
        self.assertLogged("command 'cat' exited 0", "0 bytes")


class InterfaceTests(unittest.TestCase):
    """
    The line protocol drives a runner through declared interfaces: the
    guest's L{CommandRunner} and the daemon's remote runner both provide
    them.
    """

    def test_guestRunner(self):
        from zope.interface.verify import verifyObject

        from prokshy.execs.interfaces import ICommandNames, ICommandRunner, IExecution

        reactor = MemoryProcessReactor()
        runner = CommandRunner(reactor, makeCommandDir({"cmd": SH}), spawn=spawnWithReactor)
        self.assertTrue(verifyObject(ICommandRunner, runner))
        self.assertTrue(verifyObject(ICommandNames, runner.directory))
        execution = runner.start("cmd", _Sink())
        self.assertTrue(verifyObject(IExecution, execution))
        reactor.processes[-1].end(0)

    def test_remoteRunner(self):
        from zope.interface.verify import verifyClass, verifyObject

        from prokshy.execs.interfaces import ICommandNames, ICommandRunner, IExecution
        from prokshy.host import legacy

        self.assertTrue(verifyClass(ICommandRunner, legacy._RemoteRunner))
        self.assertTrue(verifyObject(ICommandNames, legacy._Names()))
        self.assertTrue(verifyClass(IExecution, legacy.RemoteExecution))

    def test_sinkToldOfTheEnd(self):
        """
        A sink that provides L{IOutputFinished} is told, once, before done
        fires; one that does not is not asked.
        """
        from zope.interface import implementer

        from prokshy.execs.interfaces import IOutputFinished

        events = []

        @implementer(IOutputFinished)
        class Finishing(_Sink):
            def outputFinished(self):
                events.append("finished")

        reactor = MemoryProcessReactor()
        runner = CommandRunner(reactor, makeCommandDir({"cmd": SH}), spawn=spawnWithReactor)
        for sink in (Finishing(), _Sink()):
            execution = runner.start("cmd", sink)
            execution.done.addCallback(lambda status: events.append("done"))
            reactor.processes[-1].end(0)
        self.assertEqual(events, ["finished", "done", "done"])


class _Sink:
    def stdoutReceived(self, data):
        pass

    def stderrReceived(self, data):
        pass


class HandlerMachineTests(HandlerTestCase):
    """
    L{LegacyHandler} is an Automat machine (every pair declared, the table
    in the module docstring); the argument wait belongs to the
    awaitingArgument state.
    """

    def test_everyPairDeclared(self):
        from prokshy import _machines

        self.assertEqual(_machines.undeclared(LegacyHandler._machine), set())
        self.assertEqual(
            _machines.states(LegacyHandler._machine), ["awaitingArgument", "ready", "running"]
        )

    def test_tableInDocstring(self):
        from prokshy import _machines
        from prokshy.lines import legacy

        self.assertIn(_machines.table(LegacyHandler._machine), legacy.__doc__)

    def argTimers(self):
        return [c for c in self.reactor.getDelayedCalls() if c.func == self.handler._argWaitFired]

    def test_argWaitLeavesWithTheState(self):
        """
        However a held name is left (its argument, a reset, the host gone,
        a too-long line, the end of input), its timer is gone with it.
        """
        ways = [
            lambda: self.feed(b"data"),
            self.handler.reset,
            lambda: self.handler.dropPending("the host went away"),
            self.handler.lineDiscarded,
            self.handler.flushPending,
        ]
        for leave in ways:
            self.feed(b"echo")
            self.assertEqual(len(self.argTimers()), 1)
            leave()
            self.assertEqual(self.argTimers(), [], leave)
            for child in list(self.reactor.processes):
                if not child.ended:
                    child.end(0)
        self.assertEqual(self.spawned(), ["echo", "echo"])
