"""
The guest's spawn path (issue 10): what a spawn computes once rather than
per command, and that it stays correct (no descriptor leaks into a
command, every signal disposition is the default in it), on Twisted's
posix_spawn path and on the fork path; and that an agent started in any
directory takes the posix_spawn path.

Real children and the real reactor; counts, never times.
"""

from __future__ import annotations

import os
import signal

from twisted.internet import defer, reactor
from twisted.internet import process as twistedProcess
from twisted.trial import unittest

from prokshy.guest import _process
from prokshy.guest.runner import CommandRunner
from tests.fakes import SH, RecordingSink, addScript, makeCommandDir


def _inRoot(f):
    """
    Call C{f()} with the current directory C{/} (the agent's, once started:
    L{prokshy.tap.guest}), as the posix_spawn path needs.
    """
    here = os.getcwd()
    os.chdir("/")
    try:
        return f()
    finally:
        os.chdir(here)


class _Counting:
    """
    Wraps a function, counting calls.
    """

    def __init__(self, f):
        self.f = f
        self.calls = 0

    def __call__(self, *a, **kw):
        self.calls += 1
        return self.f(*a, **kw)


class SpawnWorkTests(unittest.TestCase):
    """
    Per-spawn Python work: the descriptor scan runs once per agent, and the
    signal dispositions are not scanned at all.
    """

    timeout = 20

    def setUp(self):
        self.path = makeCommandDir()
        addScript(self.path, "fds", SH + "exec ls /proc/self/fd\n")
        addScript(self.path, "ignored", SH + "exec grep -E '^Sig(Ign|Blk)' /proc/self/status\n")
        self.runner = CommandRunner(reactor, self.path, killGrace=0.5)
        # A fresh agent: its descriptors not scanned yet.
        self.patch(_process, "descriptors", _process._Descriptors())

    @defer.inlineCallbacks
    def runCommand(self, name, method="posix_spawn"):
        sink = RecordingSink()
        if method == "posix_spawn":
            execution = _inRoot(lambda: self.runner.start(name, sink))
        else:
            self.assertNotEqual(os.path.abspath("."), "/")
            execution = self.runner.start(name, sink)
        self.assertEqual(execution.transport.spawnMethod, method)
        execution.closeStdin()
        status = yield execution.done
        self.assertEqual(status.code, 0, sink.stderr)
        return sink.stdout

    @defer.inlineCallbacks
    def test_scanOnce(self):
        """
        Five spawns list the agent's open descriptors once (the first), and
        do not look at the signals' dispositions; before, each spawn listed
        every descriptor and read all 64 dispositions.
        """
        if not os.path.isdir("/proc/self/fd"):
            raise unittest.SkipTest("needs /proc/self/fd")
        listing = _Counting(twistedProcess._listOpenFDs)
        getsignal = _Counting(signal.getsignal)
        self.patch(twistedProcess, "_listOpenFDs", listing)
        self.patch(signal, "getsignal", getsignal)
        for _ in range(5):
            yield self.runCommand("fds")
        self.assertEqual(listing.calls, 1)
        # (Twisted itself may look at SIGCHLD's; not one per spawn.)
        self.assertLess(getsignal.calls, 5)

    @defer.inlineCallbacks
    def _noLeakTest(self, method):
        """
        A descriptor the agent inherited (inheritable) and one it opened
        later (Python's default, close-on-exec) reach no command: it sees
        0, 1, 2 and the one ls opens for the listing.
        """
        if not os.path.isdir("/proc/self/fd"):
            raise unittest.SkipTest("needs /proc/self/fd")
        inherited = os.open(os.devnull, os.O_RDONLY)
        os.set_inheritable(inherited, True)
        self.addCleanup(os.close, inherited)
        first = yield self.runCommand("fds", method)
        later = os.open(os.devnull, os.O_RDONLY)
        self.addCleanup(os.close, later)
        second = yield self.runCommand("fds", method)
        for listing in (first, second):
            fds = sorted(int(n) for n in listing.split())
            self.assertEqual(fds[:3], [0, 1, 2])
            self.assertEqual(len(fds), 4, listing)
            self.assertNotIn(inherited, fds[:3])

    def test_noLeakSpawn(self):
        return self._noLeakTest("posix_spawn")

    def test_noLeakFork(self):
        return self._noLeakTest("fork")

    @defer.inlineCallbacks
    def _dispositionTest(self, method):
        """
        A signal the agent ignores (SIGPIPE, Python's; SIGUSR2, set here)
        is at its default in the command, and nothing is blocked there,
        whatever the agent ignores or blocks when it spawns.
        """
        if not os.path.exists("/proc/self/status"):
            raise unittest.SkipTest("needs /proc/self/status")
        old = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        self.addCleanup(signal.signal, signal.SIGUSR2, old)
        output = yield self.runCommand("ignored", method)
        fields = dict(line.split(":") for line in output.decode().splitlines())
        # (glibc's posix_spawn leaves its two internal signals, 32 and 33,
        # ignored in every child, whatever one asks: not valid signals.)
        valid = sum(1 << (n - 1) for n in signal.valid_signals())
        self.assertEqual(int(fields["SigIgn"], 16) & valid, 0, output)
        self.assertEqual(int(fields["SigBlk"], 16) & valid, 0, output)

    def test_dispositionsSpawn(self):
        return self._dispositionTest("posix_spawn")

    def test_dispositionsFork(self):
        return self._dispositionTest("fork")

    def test_childDefaults(self):
        """
        The posix_spawn child's default set is every signal but KILL and
        STOP (which no process can catch or ignore, and FreeBSD's
        posix_spawn refuses).
        """
        defaults = set(_process.CHILD_DEFAULT_SIGNALS)
        self.assertNotIn(signal.SIGKILL, defaults)
        self.assertNotIn(signal.SIGSTOP, defaults)
        self.assertEqual(
            defaults | {signal.SIGKILL, signal.SIGSTOP}, {int(s) for s in signal.valid_signals()}
        )


class FastPathTests(unittest.TestCase):
    """
    The real agent (twistd, started in a directory other than C{/}, as the
    README's examples and every test start it) spawns commands on Twisted's
    posix_spawn path, and its C{info} stream says so.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_agentStartedElsewhere(self):
        from tests.harness import Rig, withTimeout

        rig = Rig(self)
        self.assertNotEqual(rig.dir, "/")
        rig.startSim()
        agent = rig.spawnAgent()
        yield withTimeout(agent.started, 20, "twistd to start")
        host = yield rig.connectHost(timeout=20)
        for _ in range(3):
            result = yield host.session.exec("cat", stdin=b"x")
            self.assertEqual((result.exitStatus, result.stdout), (0, b"x"))
        info = yield host.session.info()
        self.assertEqual(info["spawns"], {"posix_spawn": 3, "fork": 0})
