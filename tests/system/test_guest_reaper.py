"""
Tests for L{prokshy.guest.reaper}, L{prokshy.guest.record},
L{prokshy.guest.proctable}, L{prokshy.guest.subreaper} and the descendant kill of
L{prokshy.guest._process.ProcessGroupProcess.signalTree}: real processes
that leave their process group with C{setsid()}, orphans, a subreaper, and
the record from which a restarted agent kills what a killed agent left.

Zombies count as dead everywhere: this container's init reaps orphans only
every few seconds.
"""

import json
import os
import signal
import subprocess
import sys
import time

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ProcessProtocol
from twisted.trial import unittest

from prokshy.guest import proctable, reaper, subreaper
from prokshy.guest import record as records
from prokshy.execs.status import ExitStatus
from prokshy.guest.runner import CommandRunner

from tests.fakes import PY, LogCapture, RecordingSink, addScript, makeCommandDir
from tests.harness import Rig, shortTempDir, sleep, waitFor, withTimeout

LINUX = sys.platform.startswith("linux")


def alive(pid):
    """
    Whether C{pid} exists and is not a zombie.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return not LINUX
    return state not in ("Z", "X")


def parentOf(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


#: A command whose child leaves the process group and session, prints its
#: pid and sleeps.  C{IGNORE_TERM}: the child ignores SIGTERM.
ESCAPER = PY + """\
import os, signal, sys, time
pid = os.fork()
if pid == 0:
    os.setsid()
    if {ignoreTerm}:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.write(1, b"%d\\n" % os.getpid())
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""

#: A command that double-forks: its grandchild leaves the session, keeps
#: stdout, and is orphaned when the middle process exits; then the command
#: itself exits 0 while the grandchild still holds its stdout.
ORPHAN_HOLDING_STDOUT = PY + """\
import os, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.close(r)
        os.write(1, b"%d\\n" % os.getpid())
        os.write(w, b"x")
        os.close(w)
        time.sleep(60)
        os._exit(0)
    os._exit(0)
os.close(w)
os.read(r, 1)
os.wait()
time.sleep(0.2)
"""


class _Mixin:
    timeout = 30

    def setUp(self):
        self.path = makeCommandDir()
        self.runner = CommandRunner(reactor, self.path, killGrace=0.5)
        self.pids = []
        self.addCleanup(self.killAll)

    def killAll(self):
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        running = self.runner.running
        for execution in running:
            execution.signal(signal.SIGKILL)
        return defer.gatherResults([e.done for e in running])

    def start(self, name, script, **kw):
        addScript(self.path, name, script)
        sink = RecordingSink()
        execution = self.runner.start(name, sink, **kw)
        execution.closeStdin()
        return execution, sink

    @defer.inlineCallbacks
    def firstPid(self, sink):
        yield waitFor(lambda: b"\n" in sink.stdout, "the escaped child's pid")
        pid = int(sink.stdout.split(b"\n")[0])
        self.pids.append(pid)
        return pid

    @defer.inlineCallbacks
    def waitDead(self, pid, what="the escaped process"):
        yield waitFor(lambda: not alive(pid), "%s (pid %d) to die" % (what, pid), timeout=10)


class EscapedDescendantTests(_Mixin, unittest.TestCase):
    """
    A command's descendant that called C{setsid()} dies with the command.
    (Before: only the process group was signalled, and it lived on.)
    """

    @defer.inlineCallbacks
    def test_cancelKillsSetsidGrandchild(self):
        execution, sink = self.start("escaper", ESCAPER.format(ignoreTerm=False))
        child = yield self.firstPid(sink)
        self.assertTrue(alive(child))
        self.assertEqual(os.getsid(child), child)
        self.assertNotEqual(os.getpgid(child), execution.pid)
        execution.cancel()
        status = yield execution.done
        self.assertEqual(status.signal, signal.SIGTERM)
        yield self.waitDead(child)

    @defer.inlineCallbacks
    def test_timeoutKillsSetsidGrandchild(self):
        execution, sink = self.start("escaper", ESCAPER.format(ignoreTerm=False), timeout=1)
        child = yield self.firstPid(sink)
        status = yield execution.done
        self.assertTrue(status.timedOut)
        yield self.waitDead(child)

    @defer.inlineCallbacks
    def test_grandchildIgnoringTermGetsKill(self):
        """
        An escaped child that ignores SIGTERM gets SIGKILL after the grace
        period, although the command itself died of the TERM and the child
        has lost its parent by then.
        """
        execution, sink = self.start("stubborn", ESCAPER.format(ignoreTerm=True))
        child = yield self.firstPid(sink)
        execution.cancel()
        yield execution.done
        yield self.waitDead(child)

    @defer.inlineCallbacks
    def test_orphanHoldingStdoutKilledAfterExit(self):
        """
        With the agent as subreaper, an orphaned grandchild that left the
        session is reparented to the agent; the command exits 0, the
        grandchild keeps its stdout open, and after the grace period it is
        found by the pipe it holds and killed.
        """
        if not subreaper.acquireSubreaper():
            raise unittest.SkipTest("cannot become a subreaper here")
        self.addCleanup(subreaper.releaseSubreaper)
        execution, sink = self.start("orphan", ORPHAN_HOLDING_STDOUT)
        grandchild = yield self.firstPid(sink)
        self.addCleanup(self.reap, grandchild)
        yield waitFor(lambda: parentOf(grandchild) == os.getpid(), "the orphan to be ours")
        status = yield execution.done
        self.assertEqual(status, ExitStatus(0, None))
        yield self.waitDead(grandchild)

    @defer.inlineCallbacks
    def test_orphanHoldingStdoutWithoutSubreaper(self):
        """
        Without the subreaper the orphan goes to init; it is still found by
        its pipe (among all processes) and killed.
        """
        self.assertFalse(subreaper.isSubreaper())
        execution, sink = self.start("orphan", ORPHAN_HOLDING_STDOUT)
        grandchild = yield self.firstPid(sink)
        yield waitFor(lambda: parentOf(grandchild) != execution.pid, "the orphan")
        status = yield execution.done
        self.assertEqual(status.code, 0)
        yield self.waitDead(grandchild)

    def reap(self, pid):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass

    @defer.inlineCallbacks
    def test_hostSignalGoesToGroupOnly(self):
        """
        A signal the host sends (L{Execution.signal}) still goes to the
        process group only, not to escaped descendants.  (The child, which
        still holds stdout, is killed once the command has exited and the
        grace period is over.)
        """
        script = ESCAPER.format(ignoreTerm=False).replace(
            "    os.setsid()\n",
            "    os.setsid()\n"
            "    signal.signal(signal.SIGUSR1, lambda *a: os.write(1, b'got USR1\\n'))\n",
        )
        execution, sink = self.start("escaper", script)
        child = yield self.firstPid(sink)
        execution.signal("USR1")
        status = yield execution.done
        self.assertEqual(status.signal, signal.SIGUSR1)
        self.assertNotIn(b"got USR1", sink.stdout)
        yield self.waitDead(child)


class StrayReapingTests(unittest.TestCase):
    """
    L{subreaper.reapStrays} reaps orphans reparented to a subreaper, and never
    a child that Twisted spawned.
    """

    timeout = 20

    def setUp(self):
        if not subreaper.acquireSubreaper():
            raise unittest.SkipTest("cannot become a subreaper here")
        self.addCleanup(subreaper.releaseSubreaper)

    @defer.inlineCallbacks
    def test_orphanReaped(self):
        # sh starts a background sleep and exits: the sleep is ours.
        out = subprocess.run(
            ["sh", "-c", "sleep 0.3 >/dev/null 2>&1 & echo $!"], capture_output=True, check=True
        ).stdout
        orphan = int(out)
        self.assertEqual(parentOf(orphan), os.getpid())
        yield waitFor(lambda: not alive(orphan), "the orphan to exit")
        self.assertIn(orphan, subreaper.reapStrays())
        self.assertFalse(os.path.exists(f"/proc/{orphan}"))

    @defer.inlineCallbacks
    def test_twistedChildrenLeftToTwisted(self):
        ended = defer.Deferred()

        class Protocol(ProcessProtocol):
            def processEnded(self, reason):
                ended.callback(reason.value.exitCode)

        process = reactor.spawnProcess(Protocol(), "/bin/sh", ["sh", "-c", "exit 7"], env={})
        pid = process.pid
        for _ in range(200):
            reaped = subreaper.reapStrays()
            self.assertNotIn(pid, reaped)
            if ended.called:
                break
            yield sleep(0.005)
        code = yield withTimeout(ended, 10, "Twisted to reap its child")
        self.assertEqual(code, 7)


def _killQuietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


class ProcessTableTests(unittest.TestCase):
    """
    The process table from C{/proc} and from ps(1) (what FreeBSD uses).
    """

    def test_procTable(self):
        if not LINUX:
            raise unittest.SkipTest("Linux /proc")
        table = proctable.ProcessTable.read()
        me = table.procs[os.getpid()]
        self.assertEqual(me.ppid, os.getppid())
        self.assertEqual(me.pgid, os.getpgrp())
        self.assertEqual(me.start, proctable.processStart(os.getpid()))
        self.assertTrue(table.sameProcess(os.getpid(), me.start))
        self.assertFalse(table.sameProcess(os.getpid(), me.start - 0.01))

    def test_psTable(self):
        if subprocess.run(["sh", "-c", "command -v ps"], capture_output=True).returncode:
            raise unittest.SkipTest("no ps(1)")
        table = proctable.ProcessTable.read(useProc=False)
        self.assertEqual(table.tolerance, proctable.PS_TOLERANCE)
        me = table.procs[os.getpid()]
        self.assertEqual((me.ppid, me.pgid), (os.getppid(), os.getpgrp()))
        exact = proctable.processStart(os.getpid())
        if exact is not None:
            self.assertTrue(table.sameProcess(os.getpid(), exact))

    def test_systemUptimeMatchesProc(self):
        if not os.path.exists("/proc/uptime"):
            raise unittest.SkipTest("no /proc/uptime")
        with open("/proc/uptime") as f:
            before = float(f.read().split()[0])
        uptime = proctable.systemUptime()
        with open("/proc/uptime") as f:
            after = float(f.read().split()[0])
        # /proc/uptime is truncated to 1/100 s.
        self.assertTrue(before <= uptime <= after + 0.01, (before, uptime, after))


class _Sleeper:
    """
    A real process to be recorded as a leftover: C{sleep 60}, or a pipe
    holder when C{pipe} is given.
    """

    def __init__(self, testCase, pipe=None, setsid=False):
        self.process = subprocess.Popen(
            ["sleep", "60"],
            stdin=subprocess.DEVNULL,
            stdout=pipe if pipe is not None else subprocess.DEVNULL,
            start_new_session=setsid,
        )
        self.pid = self.process.pid
        testCase.addCleanup(self.kill)

    @property
    def start(self):
        return proctable.processStart(self.pid)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    @property
    def dead(self):
        return not alive(self.pid)


class LeftoverTests(unittest.TestCase):
    """
    L{records.killLeftovers} kills what a previous agent's record names,
    and only processes whose start time matches.
    """

    def setUp(self):
        if not LINUX:
            raise unittest.SkipTest("needs /proc for exact start times")

    def test_recordedCommandKilled(self):
        leftover = _Sleeper(self)
        killed = records.killLeftovers([{"pid": leftover.pid, "start": leftover.start, "pipes": []}])
        self.assertEqual(killed, {leftover.pid: [leftover.pid]})
        self.assertEqual(leftover.process.wait(), -signal.SIGKILL)

    def test_reusedPidNeverKilled(self):
        """
        A pid whose start time is not the recorded one belongs to another
        process now: it is left alone.
        """
        other = _Sleeper(self)
        for start in (other.start - 1, other.start + 0.01, None):
            entry = {"pid": other.pid, "start": start, "pipes": []}
            self.assertEqual(records.killLeftovers([entry]), {})
        self.assertFalse(other.dead)

    def test_groupAndDescendants(self):
        """
        The recorded command's group and its descendants (also those that
        left the group) are killed with it.
        """
        addScript(os.getcwd(), "family", ESCAPER.format(ignoreTerm=False))
        command = subprocess.Popen(
            [os.path.join(os.getcwd(), "family")], stdout=subprocess.PIPE, start_new_session=True
        )
        self.addCleanup(command.wait)
        self.addCleanup(_killQuietly, command.pid)
        child = int(command.stdout.readline())
        command.stdout.close()
        self.addCleanup(_killQuietly, child)
        self.assertEqual(os.getsid(child), child)
        entry = {"pid": command.pid, "start": proctable.processStart(command.pid), "pipes": []}
        killed = records.killLeftovers([entry])
        self.assertEqual(sorted(killed[command.pid]), sorted([command.pid, child]))
        self.assertEqual(command.wait(), -signal.SIGKILL)
        for _ in range(500):
            if not alive(child):
                break
            time.sleep(0.01)
        self.assertFalse(alive(child))

    def test_pipeHoldersOfDeadCommand(self):
        """
        The command is gone; processes still holding its recorded pipes
        that started after it are killed, older ones are not.
        """
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        older = _Sleeper(self, pipe=w)
        time.sleep(0.05)
        dead = subprocess.Popen(["true"])
        dead.wait()
        # The dead command "started" after the older holder and before the
        # younger one.
        recordedStart = older.start + 0.02
        time.sleep(0.05)
        younger = _Sleeper(self, pipe=w, setsid=True)
        os.close(w)
        st = os.fstat(r)
        entry = {"pid": dead.pid, "start": recordedStart, "pipes": [(st.st_dev, st.st_ino)]}
        killed = records.killLeftovers([entry])
        self.assertEqual(killed, {dead.pid: [younger.pid]})
        self.assertEqual(younger.process.wait(), -signal.SIGKILL)
        self.assertFalse(older.dead)

    def test_psTableTolerance(self):
        """
        Where start times come from ps(1) (FreeBSD), a start recorded from
        the uptime clock at spawn matches within L{proctable.PS_TOLERANCE}.
        """
        spawnedAt = proctable.systemUptime()
        leftover = _Sleeper(self)
        table = proctable.ProcessTable.read(useProc=False)
        self.assertTrue(table.sameProcess(leftover.pid, spawnedAt))
        self.assertFalse(table.sameProcess(leftover.pid, spawnedAt - 60))


class ProcessRecordTests(unittest.TestCase):
    """
    The record file: private, locked, readable after a crash.
    """

    def setUp(self):
        self.dir = os.path.join(shortTempDir(self), "run")
        self.path = os.path.join(self.dir, "dev_x.pids")

    def test_createdPrivateAndLocked(self):
        record = records.ProcessRecord(self.path)
        self.assertEqual(record.open(), [])
        self.addCleanup(record.close)
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(self.dir).st_mode & 0o777, 0o755)
        second = records.ProcessRecord(self.path)
        e = self.assertRaises(records.RecordError, second.open)
        self.assertIn("locked by another running agent", str(e))

    def test_survivesACrash(self):
        """
        What an agent killed with SIGKILL recorded is read by the next.
        """
        record = records.ProcessRecord(self.path)
        record.open()
        record.add("a", 1234, 56.78, [(1, 2)])
        record.add("b", 2345, 67.89, [])
        record.discard("a")
        os.close(record._fd)  # what the kernel does to a killed agent
        record._fd = None
        with open(self.path) as f:
            header = json.loads(f.readline())
        self.assertEqual(header["agent"], os.getpid())
        after = records.ProcessRecord(self.path)
        self.assertEqual(after.open(), [{"pid": 2345, "start": 67.89, "pipes": []}])
        after.close()
        self.assertFalse(os.path.exists(self.path))

    def test_garbageIgnored(self):
        os.makedirs(self.dir, 0o755)
        with open(self.path, "w") as f:
            f.write('{"agent": 1}\n{"pid": 99, "start": 1.5}\nnot json\n{"pid": "x"}\n{"pid": 1}\n{"pi')
        os.chmod(self.path, 0o600)
        record = records.ProcessRecord(self.path)
        self.assertEqual(record.open(), [{"pid": 99, "start": 1.5, "pipes": []}])
        record.close()

    def test_unsafeRefused(self):
        """
        A record anyone else could write would let them name processes for
        the agent to kill: it is refused.
        """
        if os.geteuid() != 0:
            raise unittest.SkipTest("chown needs root")
        os.makedirs(self.dir, 0o755)
        with open(self.path, "w"):
            pass
        os.chmod(self.path, 0o600)
        os.chown(self.path, 65534, 65534)
        e = self.assertRaises(records.RecordError, records.ProcessRecord(self.path).open)
        self.assertIn("owned by uid 65534", str(e))
        os.chown(self.path, 0, 0)
        os.chmod(self.path, 0o622)
        e = self.assertRaises(records.RecordError, records.ProcessRecord(self.path).open)
        self.assertIn("writable", str(e))
        os.chmod(self.path, 0o600)
        os.chmod(self.dir, 0o777)
        e = self.assertRaises(records.RecordError, records.ProcessRecord(self.path).open)
        self.assertIn("run directory", str(e))
        os.chmod(self.dir, 0o755)
        os.unlink(self.path)
        os.symlink("/etc/passwd", self.path)
        self.assertRaises(records.RecordError, records.ProcessRecord(self.path).open)

    def test_defaultRunDir(self):
        self.assertEqual(records.defaultRunDir(0, {}), "/var/run/prokshy")
        self.assertEqual(
            records.defaultRunDir(1000, {"XDG_RUNTIME_DIR": "/run/user/1000"}),
            "/run/user/1000/prokshy",
        )
        self.assertEqual(records.defaultRunDir(1000, {}), "")
        self.assertEqual(records.defaultRunDir(1000, {"XDG_RUNTIME_DIR": "rel"}), "")

    def test_recordName(self):
        self.assertEqual(records.recordName("/dev/vtcon/prokshy"), "dev_vtcon_prokshy.pids")
        self.assertEqual(records.recordName("/tmp/a b/dev"), "tmp_a_b_dev.pids")
        long = records.recordName("/x" * 200)
        self.assertLess(len(long), 110)
        self.assertNotEqual(long, records.recordName("/y" + "/x" * 199))


class RunnerRecordTests(_Mixin, unittest.TestCase):
    """
    The runner lists its running commands in its record.
    """

    @defer.inlineCallbacks
    def test_runningCommandsRecorded(self):
        path = os.path.join(shortTempDir(self), "run", "x.pids")
        record = records.ProcessRecord(path)
        record.open()
        self.addCleanup(record.close)
        self.runner.processRecord = record
        execution, sink = self.start("sleeper", PY + "import time; print('up', flush=True); time.sleep(60)\n")
        yield waitFor(lambda: sink.stdout, "the command")
        [entry] = record.entries
        self.assertEqual(entry["pid"], execution.pid)
        if LINUX:
            self.assertEqual(entry["start"], proctable.processStart(execution.pid))
            self.assertEqual(len(entry["pipes"]), 3)
        with open(path) as f:
            self.assertEqual(json.loads(f.read().splitlines()[1])["pid"], execution.pid)
        execution.cancel()
        yield execution.done
        self.assertEqual(record.entries, [])
        with open(path) as f:
            self.assertEqual(len(f.read().splitlines()), 1)


class AgentRestartTests(unittest.TestCase):
    """
    A real agent killed with SIGKILL leaves a running command and the
    child it started with C{setsid()}; the agent restarted on the same
    device kills both.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_restartedAgentKillsLeftovers(self):
        if not LINUX:
            raise unittest.SkipTest("start times from /proc")
        rig = Rig(self)
        addScript(rig.commandDir, "escaper", ESCAPER.format(ignoreTerm=False))
        rig.startSim()
        runDir = os.path.join(rig.dir, "run")
        first = rig.spawnAgent("--run-dir", runDir)
        yield withTimeout(first.started, 20, "the first agent")
        host = yield rig.connectHost()
        out = bytearray()
        running = yield host.session.execStream("escaper", out.extend, len)
        running.result.addErrback(lambda f: None)  # the agent is killed
        yield waitFor(lambda: b"\n" in out, "the escaped child's pid", timeout=10)
        child = int(bytes(out).split(b"\n")[0])
        command = parentOf(child)
        self.assertEqual(os.getpgid(command), command)
        self.addCleanup(self._kill, child, command)
        record = os.path.join(runDir, records.recordName(rig.devicePath))
        with open(record) as f:
            self.assertEqual([json.loads(line)["pid"] for line in f.read().splitlines()[1:]], [command])
        yield first.kill()
        yield sleep(0.2)
        self.assertTrue(alive(child))
        self.assertTrue(alive(command))
        second = rig.spawnAgent("--run-dir", runDir)
        yield withTimeout(second.started, 20, "the second agent")
        yield waitFor(lambda: not alive(child) and not alive(command), "the leftovers to die", timeout=10)
        log = second.output.decode("utf-8", "replace")
        self.assertIn("killed 2 processes left by command pid %d" % (command,), log)
        # The record is the second agent's now, with nothing running.
        with open(record) as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 1)
        self.assertEqual(json.loads(lines[0])["agent"], second.pid)
        yield second.kill()

    def _kill(self, *pids):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


class ReaperServiceTests(unittest.TestCase, LogCapture):
    """
    L{reaper.ProcessReaper} in the agent: a subreaper while it runs, the
    record kept up to date and removed at a clean stop.
    """

    timeout = 30

    @defer.inlineCallbacks
    def test_inTheAgent(self):
        rig = Rig(self)
        rig.startSim()
        runDir = os.path.join(rig.dir, "run")
        record = os.path.join(runDir, records.recordName(rig.devicePath))
        agent = yield rig.startAgent("--run-dir", runDir)
        self.assertTrue(subreaper.isSubreaper())
        self.assertTrue(os.path.exists(record))
        host = yield rig.connectHost()
        out = bytearray()
        running = yield host.session.execStream("sleeper", out.extend, len)
        yield waitFor(lambda: b"\n" in out, "the sleeper")
        pid = int(bytes(out).split(b"\n")[0])
        with open(record) as f:
            self.assertEqual(json.loads(f.read().splitlines()[1])["pid"], pid)
        running.cancel()
        yield self.assertFailure(running.result, Exception)
        yield waitFor(lambda: not agent.runner.running, "the sleeper to end")
        with open(record) as f:
            self.assertEqual(len(f.read().splitlines()), 1)
        yield agent.stop()
        self.assertFalse(os.path.exists(record))
        self.assertFalse(subreaper.isSubreaper())

    @defer.inlineCallbacks
    def test_unusableRunDir(self):
        """
        A run directory the agent cannot trust is logged, and the agent
        runs without a record.
        """
        self.captureLogs()
        rig = Rig(self)
        rig.startSim()
        runDir = os.path.join(rig.dir, "run")
        os.mkdir(runDir, 0o777)
        os.chmod(runDir, 0o777)
        agent = yield rig.startAgent("--run-dir", runDir)
        self.assertLogged("not recording running commands", "run directory", "writable")
        host = yield rig.connectHost()
        result = yield host.session.exec("outerr")
        self.assertEqual(result.code, 3)
        self.assertEqual(os.listdir(runDir), [])
        yield agent.stop()
