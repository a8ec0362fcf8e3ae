"""
Tests for L{prokshy.guest.execs}: the C{info} answer without subprocesses
(issue 7, item 5), the concurrency slot when a command fails to start in an
unexpected way (item 9), and insecure commands refused with the reason
(item 8).
"""

import builtins
import os
import signal
import subprocess

from twisted.internet.defer import CancelledError, DeferredSemaphore, inlineCallbacks
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from prokshy import _machines
from prokshy.execs.interfaces import ICommandSink
from prokshy.execs.refusals import CommandRefused
from prokshy.guest import execs
from prokshy.guest._process import spawnWithReactor
from prokshy.guest.execs import ExecStreamProtocol, GuestStreams, Slots
from prokshy.guest.runner import CommandRunner
from prokshy.streams.stream import StreamRefused, StreamReset

from tests.fakes import SH, LogCapture, MemoryProcessReactor, makeCommandDir
from tests.harness import Rig, waitFor, withTimeout
from tests.system.test_guest_limits import FakeStream


class InfoTests(unittest.TestCase):
    """
    C{info} takes the system uptime from the uptime clock: no subprocess
    (it used to run sysctl(8) in the reactor on FreeBSD, on every request)
    and no file.
    """

    def setUp(self):
        reactor = MemoryProcessReactor()
        self.streams = GuestStreams(CommandRunner(reactor, makeCommandDir(), spawn=spawnWithReactor))

    def test_noSubprocessNoFile(self):
        """
        With subprocesses and C{/proc} unavailable (as on FreeBSD, where
        C{/proc} is not mounted), C{system_uptime} is still a number.
        """
        def refuse(*args, **kwargs):
            raise AssertionError("info must not start a process")

        realOpen = builtins.open

        def noProc(path, *args, **kwargs):
            if str(path).startswith("/proc"):
                raise FileNotFoundError(2, "No such file or directory", path)
            return realOpen(path, *args, **kwargs)

        for name in ("run", "Popen", "check_output", "call"):
            self.patch(subprocess, name, refuse)
        self.patch(os, "system", refuse)
        self.patch(builtins, "open", noProc)
        info = self.streams.describe()
        self.assertIsInstance(info["system_uptime"], float)
        self.assertGreater(info["system_uptime"], 0)

    def test_uptimeAgreesWithProc(self):
        if not os.path.exists("/proc/uptime"):
            raise unittest.SkipTest("no /proc/uptime")
        with open("/proc/uptime") as f:
            before = float(f.read().split()[0])
        uptime = self.streams.describe()["system_uptime"]
        with open("/proc/uptime") as f:
            after = float(f.read().split()[0])
        # /proc/uptime truncates to 1/100 s, info rounds to 1/1000 s.
        self.assertTrue(before - 0.001 <= uptime <= after + 0.011, (before, uptime, after))

    def test_noClock(self):
        """
        An OS with neither clock says null.
        """
        import time

        for name in ("CLOCK_BOOTTIME", "CLOCK_UPTIME"):
            if hasattr(time, name):
                self.patch(time, name, None)
        self.assertIsNone(self.streams.describe()["system_uptime"])


class StartFailureTests(unittest.TestCase, LogCapture):
    """
    A command whose start fails with anything but L{CommandRefused} gives
    its concurrency slot back, and its stream is reset with the reason.
    (Before: the slot leaked, and the stream hung.)
    """

    def setUp(self):
        self.captureLogs()
        self.reactor = MemoryProcessReactor()
        self.runner = CommandRunner(
            self.reactor, makeCommandDir({"cmd": SH}), spawn=spawnWithReactor
        )
        self.slots = Slots(1, 0)

    def test_slotFreedAndStreamReset(self):
        def broken(*args, **kwargs):
            raise RuntimeError("boom")

        self.patch(self.runner, "start", broken)
        stream = FakeStream()
        protocol = ExecStreamProtocol(self.runner, self.slots, "cmd", None)
        protocol.makeConnection(stream)
        self.assertEqual(self.slots.running, 0)
        code, message = stream.aborted
        self.assertEqual(code, "internal-error")
        self.assertIn("RuntimeError: boom", message)
        self.assertIn("'cmd'", message)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        # The one slot is free: the next command runs.
        self.patch(self.runner, "start", CommandRunner.start.__get__(self.runner))
        stream = FakeStream()
        ExecStreamProtocol(self.runner, self.slots, "cmd", None).makeConnection(stream)
        self.assertIsNone(stream.aborted)
        self.assertEqual(self.slots.running, 1)
        self.reactor.processes[-1].end(0)
        self.assertEqual(self.slots.running, 0)

    def test_queuedCommandFailing(self):
        """
        The same for a command that waited for its slot.
        """
        slots = Slots(1, 1)
        first = FakeStream()
        ExecStreamProtocol(self.runner, slots, "cmd", None).makeConnection(first)
        calls = []

        def broken(*args, **kwargs):
            calls.append(args)
            raise OSError(24, "Too many open files")

        second = FakeStream()
        ExecStreamProtocol(self.runner, slots, "cmd", None).makeConnection(second)
        self.assertEqual(slots.waiting, 1)
        self.patch(self.runner, "start", broken)
        self.reactor.processes[-1].end(0)
        self.assertEqual(len(calls), 1)
        self.assertEqual(second.aborted[0], "internal-error")
        self.assertIn("Too many open files", second.aborted[1])
        self.assertEqual((slots.running, slots.waiting), (0, 0))
        self.flushLoggedErrors(OSError)


class RealStartFailureTests(unittest.TestCase):
    timeout = 30

    @inlineCallbacks
    def test_hostSeesTheReason(self):
        """
        Through the real agent: the host's exec fails with a reset naming
        the error, and with C{--max-concurrency 1} the next exec still runs.
        """
        rig = Rig(self)
        rig.startSim()
        agent = yield rig.startAgent("--max-concurrency", "1", "--max-queue", "0")
        host = yield rig.connectHost()
        runner = agent.runner
        original = runner.start
        calls = []

        def failOnce(*args, **kwargs):
            if not calls:
                calls.append(args)
                raise ValueError("injected")
            return original(*args, **kwargs)

        self.patch(runner, "start", failOnce)
        e = yield self.assertFailure(
            withTimeout(host.session.exec("outerr"), 10, "the failed exec"), StreamReset
        )
        self.assertIn("ValueError: injected", str(e))
        self.flushLoggedErrors(ValueError)
        result = yield withTimeout(host.session.exec("outerr"), 10, "the next exec")
        self.assertEqual(result.code, 3)


class InsecureRefusalTests(unittest.TestCase, LogCapture):
    """
    A command file owned by another user is refused, saying who owns it,
    in the REFUSE and in the log.
    """

    timeout = 30

    @inlineCallbacks
    def test_refusedWithOwner(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("chown needs root")
        self.captureLogs()
        rig = Rig(self)
        path = rig.addCommand("theirs", "echo hi")
        os.chown(path, 65534, 65534)
        rig.startSim()
        yield rig.startAgent()
        host = yield rig.connectHost()
        e = yield self.assertFailure(host.session.exec("theirs"), StreamRefused)
        self.assertEqual(e.code, "insecure")
        self.assertIn("owned by uid 65534", e.message)
        self.assertIn(path, e.message)
        yield waitFor(
            lambda: any("owned by uid 65534" in m for m in self.logged()), "the log line"
        )
        self.assertLogged("refused exec", "theirs", "owned by uid 65534")


class SlotsTests(unittest.TestCase):
    """
    L{Slots} is a L{DeferredSemaphore} with a bounded queue, and one rule
    for "busy".
    """

    def test_semaphore(self):
        slots = Slots(2, 1)
        self.assertIsInstance(slots.semaphore, DeferredSemaphore)
        self.assertEqual(slots.semaphore.limit, 2)

    def test_fifoAndBusy(self):
        slots = Slots(1, 2)
        order = []
        first = slots.acquire()
        self.assertEqual(self.successResultOf(first), slots.semaphore)
        for name in ("a", "b"):
            slots.acquire().addCallback(lambda _, name=name: order.append(name))
        self.assertEqual((slots.running, slots.waiting, slots.busy), (1, 2, True))
        e = self.assertRaises(CommandRefused, slots.acquire)
        self.assertEqual(e.code, "busy")
        self.assertEqual(e.message, "1 commands running and 2 waiting (the limit)")
        slots.release()
        self.assertEqual(order, ["a"])
        self.assertEqual((slots.running, slots.waiting, slots.busy), (1, 1, False))
        slots.release()
        slots.release()
        self.assertEqual(order, ["a", "b"])
        self.assertEqual((slots.running, slots.waiting), (0, 0))

    def test_cancelWaiting(self):
        """
        A waiting acquisition that is cancelled leaves the queue.
        """
        slots = Slots(1, 1)
        slots.acquire()
        waiting = slots.acquire()
        self.assertTrue(slots.busy)
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.assertEqual((slots.waiting, slots.busy), (0, False))
        slots.release()
        self.assertEqual(slots.running, 0)

    def test_oneRule(self):
        """
        An open is refused exactly when an acquisition would be.
        """
        streams = GuestStreams(
            CommandRunner(MemoryProcessReactor(), makeCommandDir({"cmd": SH}), spawn=spawnWithReactor),
            maxConcurrency=1,
            maxQueue=0,
        )
        stream = _Open({"name": "cmd"})
        self.assertIsInstance(streams(stream), ExecStreamProtocol)
        streams.slots.acquire()
        self.assertTrue(streams.slots.busy)
        e = self.assertRaises(StreamRefused, streams, stream)
        self.assertEqual((e.code, e.message), ("busy", streams.slots.refusal().message))

    def test_helloFields(self):
        streams = GuestStreams(
            CommandRunner(MemoryProcessReactor(), makeCommandDir(), spawn=spawnWithReactor),
            maxConcurrency=3,
            maxQueue=7,
        )
        self.assertEqual(streams.helloFields(), {"max_concurrency": 3, "max_queue": 7})
        info = streams.describe()
        self.assertEqual((info["max_concurrency"], info["max_queue"]), (3, 7))


class _Open:
    kind = "exec"

    def __init__(self, args):
        self.args = args


class ExecStreamMachineTests(unittest.TestCase):
    """
    L{ExecStreamProtocol} is an Automat machine: every pair declared, the
    table in the module docstring.
    """

    def test_everyPairDeclared(self):
        self.assertEqual(_machines.undeclared(ExecStreamProtocol._machine), set())

    def test_states(self):
        self.assertEqual(
            _machines.states(ExecStreamProtocol._machine),
            ["abandoned", "closed", "running", "starting", "waiting"],
        )

    def test_tableInDocstring(self):
        self.assertIn(_machines.table(ExecStreamProtocol._machine), execs.__doc__)

    def test_sink(self):
        self.assertTrue(verifyObject(ICommandSink, ExecStreamProtocol(None, None, "cmd", None)))

    def test_lostWhileRunningKeepsTheSlotUntilTheEnd(self):
        """
        A stream that ends while its command runs cancels the command; the
        slot is given back only when the command has ended, and no EXIT is
        sent on the dead stream.
        """
        reactor = MemoryProcessReactor()
        runner = CommandRunner(reactor, makeCommandDir({"cmd": SH}), spawn=spawnWithReactor)
        slots = Slots(1, 0)
        stream = FakeStream()
        protocol = ExecStreamProtocol(runner, slots, "cmd", None)
        protocol.makeConnection(stream)
        child = reactor.processes[-1]
        protocol.connectionLost(Failure(StreamReset("reset", "gone")))
        self.assertEqual(child.signals, [("group", signal.SIGTERM)])
        self.assertEqual(slots.running, 1)
        child.end(None, signal.SIGTERM)
        self.assertEqual(slots.running, 0)
        self.assertEqual(stream.controls, [])
