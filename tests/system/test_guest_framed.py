"""
Integration tests of the guest agent's framed mode: the real agent (in this
process) on a simulated bhyve console port (L{prokshy.sim.vmsim.VMSim}, a
real pty and a real unix socket), real commands, and the host client API
(L{prokshy.host.client}).
"""

import os
import platform
import random

from twisted.internet import reactor, task
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from prokshy._version import __version__
from prokshy.guest.agent import TTY_WINDOW
from prokshy.link.session import SessionEnded
from prokshy.sim.faults import TO_GUEST, TO_HOST, Faults
from prokshy.streams.stream import StreamRefused, StreamReset
from tests.harness import Rig, groupAlive, sleep, waitFor, withTimeout

MiB = 1024 * 1024


def randomBytes(n, seed):
    """
    C{n} reproducible bytes of every value (LFs, 0xDB, 0xFF, NULs included).
    """
    return random.Random(seed).randbytes(n)


class FramedTestMixin:
    """
    Starts a simulator, the in-process agent and a host session.
    """

    timeout = 60

    @inlineCallbacks
    def start(self, *agentArgs, faults=None, commands=None):
        """
        @return: a Deferred firing with (rig, agent, host).
        """
        rig = Rig(self, commands=commands)
        rig.startSim(faults=faults)
        agent = yield rig.startAgent(*agentArgs)
        host = yield rig.connectHost()
        return rig, agent, host

    @inlineCallbacks
    def startStreaming(self, session, name, **kw):
        """
        execStream C{name} collecting its output.

        @return: a Deferred firing with (running, stdout, stderr): the
            L{RunningExec} and the bytearrays the output goes to.
        """
        out, err = bytearray(), bytearray()
        running = yield session.execStream(name, out.extend, err.extend, **kw)
        return running, out, err

    @inlineCallbacks
    def pidFrom(self, out):
        """
        Wait for a command that prints C{$$} first to have printed it.
        """
        yield waitFor(lambda: b"\n" in out, "the command's pid")
        return int(bytes(out).split(b"\n", 1)[0])


class ExecTests(FramedTestMixin, TestCase):
    """
    exec streams: stdin, stdout, stderr and how commands end.
    """

    @inlineCallbacks
    def test_largeStdinByteExact(self):
        """
        Several MiB of stdin, holding every byte value and many LFs, reach
        the command byte for byte (stdin is not one line), and its output
        comes back byte for byte.
        """
        rig, agent, host = yield self.start()
        data = randomBytes(3 * MiB, seed=1) + b"\n" * 100000 + b"\xff" * 1000
        result = yield withTimeout(host.session.exec("cat", stdin=data), 30, "cat")
        self.assertEqual(result.code, 0)
        self.assertEqual(len(result.stdout), len(data))
        self.assertTrue(result.stdout == data, "stdout differs from stdin")
        self.assertEqual(result.stderr, b"")
        count = yield withTimeout(host.session.exec("count", stdin=data), 30, "wc")
        self.assertEqual(int(count.stdout), len(data))

    @inlineCallbacks
    def test_stdoutStderrExitCode(self):
        """
        stdout and stderr arrive separately, and the exit code is reported.
        """
        rig, agent, host = yield self.start()
        result = yield host.session.exec("outerr")
        self.assertEqual(result.stdout, b"out\nmore-out\n")
        self.assertEqual(result.stderr, b"err\n")
        self.assertEqual((result.code, result.signal, result.exitStatus), (3, None, 3))
        self.assertFalse(result.timedOut)
        self.assertFalse(result.truncated)

    @inlineCallbacks
    def test_exitBySignal(self):
        """
        A command killed by a signal reports the signal, and the shell-style
        status 128 + N.
        """
        rig, agent, host = yield self.start()
        result = yield host.session.exec("selfterm")
        self.assertEqual((result.code, result.signal), (None, 15))
        self.assertEqual(result.exitStatus, 143)
        self.assertFalse(result.timedOut)

    @inlineCallbacks
    def test_signalTerm(self):
        """
        L{RunningExec.signal} delivers a signal to the command's process
        group (the shell and its child).
        """
        rig, agent, host = yield self.start()
        running, out, err = yield self.startStreaming(host.session, "sleepchild")
        pid = yield self.pidFrom(out)
        self.assertTrue(groupAlive(pid))
        running.signal("TERM")
        result = yield withTimeout(running.result, 5, "the signalled command to end")
        self.assertEqual((result.code, result.signal, result.exitStatus), (None, 15, 143))
        self.assertNotIn(b"woke", bytes(out))
        yield waitFor(lambda: not groupAlive(pid), "the process group to be gone")

    @inlineCallbacks
    def test_signalNumberAndUnknown(self):
        """
        A signal may be a number; an unknown signal name is ignored and the
        command keeps running.
        """
        rig, agent, host = yield self.start()
        running, out, err = yield self.startStreaming(host.session, "sleeper")
        pid = yield self.pidFrom(out)
        running.signal("NOSUCHSIGNAL")
        yield sleep(0.3)
        self.assertFalse(running.result.called)
        self.assertTrue(groupAlive(pid))
        running.signal(9)
        result = yield withTimeout(running.result, 5, "the killed command to end")
        self.assertEqual(result.signal, 9)

    @inlineCallbacks
    def test_cancelKillsProcessGroup(self):
        """
        L{RunningExec.cancel} resets the stream; the guest kills the
        command's whole process group.
        """
        rig, agent, host = yield self.start()
        running, out, err = yield self.startStreaming(host.session, "sleepchild")
        pid = yield self.pidFrom(out)
        self.assertTrue(groupAlive(pid))
        running.cancel()
        yield self.assertFailure(running.result, StreamReset)
        yield waitFor(lambda: not groupAlive(pid), "the process group to be gone", timeout=3)
        yield waitFor(lambda: not agent.runner.running, "the runner to forget it", timeout=3)
        # The session is still fine.
        result = yield host.session.exec("outerr")
        self.assertEqual(result.code, 3)

    @inlineCallbacks
    def test_timeout(self):
        """
        A per-command C{timeout} kills the command and says so.
        """
        rig, agent, host = yield self.start()
        started = reactor.seconds()
        result = yield withTimeout(host.session.exec("sleeper", timeout=0.5), 10, "the timeout")
        elapsed = reactor.seconds() - started
        self.assertTrue(result.timedOut)
        self.assertEqual(result.signal, 15)
        self.assertLess(elapsed, 5)
        pid = int(result.stdout.split(b"\n")[0])
        yield waitFor(lambda: not groupAlive(pid), "the process group to be gone")

    @inlineCallbacks
    def test_defaultTimeoutOption(self):
        """
        The agent's C{--timeout} applies to execs that give none, and it is
        a cap: an exec asking for a longer timeout, or for none, still gets
        it; one asking for a shorter one gets that.
        """
        rig, agent, host = yield self.start("--timeout", "0.3")
        result = yield withTimeout(host.session.exec("sleeper"), 10, "the default timeout")
        self.assertTrue(result.timedOut)
        rig.addCommand("briefly", "sleep 0.6; echo fine")
        for asked in (5, 0):
            result = yield withTimeout(host.session.exec("briefly", timeout=asked), 10, "briefly")
            self.assertEqual((result.stdout, result.timedOut), (b"", True), asked)
        rig, agent, host = yield self.start("--timeout", "30")
        rig.addCommand("briefly", "sleep 0.6; echo fine")
        result = yield withTimeout(host.session.exec("briefly", timeout=5), 10, "briefly")
        self.assertEqual((result.code, result.stdout, result.timedOut), (0, b"fine\n", False))
        result = yield withTimeout(host.session.exec("sleeper", timeout=0.3), 10, "sleeper")
        self.assertTrue(result.timedOut)

    @inlineCallbacks
    def test_largeStderr(self):
        """
        A MiB of stderr and a MiB of stdout stay apart, each complete.
        """
        rig, agent, host = yield self.start()
        rig.addCommand(
            "both",
            "head -c 1048576 /dev/zero >&2; head -c 1048576 /dev/zero | tr '\\0' o; echo end >&2",
        )
        result = yield withTimeout(host.session.exec("both"), 20, "both")
        self.assertEqual(result.code, 0)
        self.assertTrue(result.stdout == b"o" * MiB, "stdout is wrong")
        self.assertTrue(result.stderr == b"\0" * MiB + b"end\n", "stderr is wrong")

    @inlineCallbacks
    def test_commandIgnoringStdinFreesItsStream(self):
        """
        A command that exits without reading its stdin, while the host is
        still sending more stdin than the pipe holds, ends normally, and
        the guest forgets its stream once both sides have closed it.

        (Bug: the stdin pipe paused the stream when it filled up, and
        nothing resumes it after the command exits, so the host's CLOSE
        waits forever behind undelivered stdin in the guest's stream: the
        stream, and up to a window of buffered stdin, leak for the rest of
        the session.)
        """
        rig, agent, host = yield self.start()
        rig.addCommand("ignore", "sleep 0.3; echo bye")
        result = yield withTimeout(
            host.session.exec("ignore", stdin=b"y" * (4 * MiB)), 10, "the command"
        )
        self.assertEqual((result.code, result.stdout), (0, b"bye\n"))
        self.assertEqual(host.protocol.mux.streams, {})
        guestMux = agent.protocol.mux
        yield waitFor(
            lambda: not guestMux.streams,
            "the guest to forget the stream (it holds %r)" % (guestMux.streams,),
            timeout=2,
        )

    @inlineCallbacks
    def test_outputCap(self):
        """
        C{--max-output} truncates the output and kills the command.
        """
        rig, agent, host = yield self.start("--max-output", "100000")
        rig.addCommand("flood", "exec cat /dev/zero")
        result = yield withTimeout(host.session.exec("flood"), 10, "the capped command")
        self.assertTrue(result.truncated)
        self.assertEqual(len(result.stdout), 100000)


class ConcurrencyTests(FramedTestMixin, TestCase):
    """
    Many streams on one session, and the concurrency limit.
    """

    @inlineCallbacks
    def test_maxConcurrencyAndQueue(self):
        """
        With C{--max-concurrency 2 --max-queue 1}, two commands run, a third
        waits (accepted, its stdin held back) and starts when a slot frees,
        and a fourth is refused C{busy}.
        """
        rig, agent, host = yield self.start("--max-concurrency", "2", "--max-queue", "1")
        session = host.session
        first = yield self.startStreaming(session, "waitstdin")
        second = yield self.startStreaming(session, "waitstdin")
        third = yield self.startStreaming(session, "waitstdin")
        info = yield session.info()
        self.assertEqual((info["running"], info["waiting"]), (2, 1))
        self.assertEqual(len(agent.runner.running), 2)
        refused = yield self.assertFailure(session.execStream("outerr", len, len), StreamRefused)
        self.assertEqual(refused.code, "busy")

        # The waiting one has not started: its stdin's end changes nothing.
        third[0].closeStdin()
        yield sleep(0.3)
        self.assertFalse(third[0].result.called)
        # A slot frees: the waiting one runs (and sees its stdin's end).
        first[0].closeStdin()
        result = yield withTimeout(first[0].result, 5, "the first command")
        self.assertEqual(bytes(first[1]), b"done\n")
        result = yield withTimeout(third[0].result, 5, "the queued command")
        self.assertEqual((result.code, bytes(third[1])), (0, b"done\n"))
        second[0].closeStdin()
        yield withTimeout(second[0].result, 5, "the second command")
        self.assertEqual(bytes(second[1]), b"done\n")
        info = yield session.info()
        self.assertEqual((info["running"], info["waiting"]), (0, 0))
        # And there is room again.
        result = yield session.exec("outerr")
        self.assertEqual(result.code, 3)

    @inlineCallbacks
    def test_helloAdvertisesLimits(self):
        """
        The guest's hello says how many commands it runs and queues, so a
        daemon queues the rest itself instead of learning the limit from
        C{busy} refusals (the fields L{prokshy.host.queue} reads).
        """
        rig, agent, host = yield self.start("--max-concurrency", "3", "--max-queue", "5")
        info = host.link.info
        self.assertEqual(
            (info.peerHello["max_concurrency"], info.peerHello["max_queue"]), (3, 5)
        )

    @inlineCallbacks
    def test_recordInTheRigsRunDir(self):
        """
        The rig's agents keep their record of running commands in the rig's
        own directory, never in the system's run directory.
        """
        from prokshy.guest.record import recordName

        rig, agent, host = yield self.start()
        running, out, err = yield self.startStreaming(host.session, "waitstdin")
        record = os.path.join(rig.runDir, recordName(rig.devicePath))
        yield waitFor(lambda: os.path.exists(record) and b'"pid"' in open(record, "rb").read(),
                      "the command in the record")
        running.closeStdin()
        yield withTimeout(running.result, 5, "the command")

    @inlineCallbacks
    def test_queuedStdinHeldUntilStart(self):
        """
        A queued command's stdin (more than a window of it) is delivered in
        full once it starts.
        """
        rig, agent, host = yield self.start("--max-concurrency", "1", "--max-queue", "1")
        blocker = yield self.startStreaming(host.session, "waitstdin")
        data = randomBytes(600 * 1024, seed=5)
        queued = host.session.exec("count", stdin=data)
        yield sleep(0.3)
        self.assertFalse(queued.called)
        blocker[0].closeStdin()
        yield withTimeout(blocker[0].result, 5, "the blocker")
        result = yield withTimeout(queued, 10, "the queued command")
        self.assertEqual(int(result.stdout), len(data))

    @inlineCallbacks
    def test_cancelQueued(self):
        """
        Cancelling a command that waits for a slot frees its place in the
        queue; it never runs.
        """
        rig, agent, host = yield self.start("--max-concurrency", "1", "--max-queue", "1")
        running = yield self.startStreaming(host.session, "waitstdin")
        queued = yield self.startStreaming(host.session, "outerr")
        info = yield host.session.info()
        self.assertEqual((info["running"], info["waiting"]), (1, 1))
        queued[0].cancel()
        yield self.assertFailure(queued[0].result, StreamReset)
        info = yield host.session.info()
        self.assertEqual((info["running"], info["waiting"]), (1, 0))
        running[0].closeStdin()
        yield withTimeout(running[0].result, 5, "the running command")
        self.assertEqual((bytes(queued[1]), bytes(queued[2])), (b"", b""))
        info = yield host.session.info()
        self.assertEqual((info["running"], info["waiting"]), (0, 0))

    @inlineCallbacks
    def test_terminatingSignalCancelsQueued(self):
        """
        TERM to a command still waiting for a slot ends it at once as if
        killed by TERM, without running it, and frees its place.
        """
        rig, agent, host = yield self.start("--max-concurrency", "1", "--max-queue", "1")
        running = yield self.startStreaming(host.session, "waitstdin")
        queued = yield self.startStreaming(host.session, "outerr")
        queued[0].signal("TERM")
        result = yield withTimeout(queued[0].result, 5, "the signalled queued command")
        self.assertEqual((result.code, result.signal, result.exitStatus), (None, 15, 143))
        self.assertEqual((bytes(queued[1]), bytes(queued[2])), (b"", b""))
        info = yield host.session.info()
        self.assertEqual((info["running"], info["waiting"]), (1, 0))
        running[0].closeStdin()
        yield withTimeout(running[0].result, 5, "the running command")

    @inlineCallbacks
    def test_otherSignalDeliveredAtStart(self):
        """
        A signal that does not terminate (here CONT) sent while queued is
        delivered when the command starts; the command then runs normally.
        """
        rig, agent, host = yield self.start("--max-concurrency", "1", "--max-queue", "1")
        running = yield self.startStreaming(host.session, "waitstdin")
        queued = yield self.startStreaming(host.session, "outerr")
        queued[0].signal("CONT")
        yield sleep(0.2)
        self.assertFalse(queued[0].result.called)
        running[0].closeStdin()
        yield withTimeout(running[0].result, 5, "the running command")
        result = yield withTimeout(queued[0].result, 5, "the queued command")
        self.assertEqual(result.code, 3)

    @inlineCallbacks
    def test_manyConcurrentStreams(self):
        """
        Fifty exec streams at once on one session all get their own output,
        byte for byte.
        """
        rig, agent, host = yield self.start()
        inputs = [randomBytes(20000 + i * 997, seed=100 + i) for i in range(50)]
        results = yield withTimeout(
            gatherResults([host.session.exec("cat", stdin=data) for data in inputs]),
            40,
            "fifty execs",
        )
        self.assertEqual(len(results), 50)
        for i, (data, result) in enumerate(zip(inputs, results)):
            self.assertEqual(result.code, 0, "stream %d" % (i,))
            self.assertTrue(result.stdout == data, "stream %d: wrong output" % (i,))


class RefusalTests(FramedTestMixin, TestCase):
    """
    Opens the guest refuses, with the REFUSE code.
    """

    @inlineCallbacks
    def assertRefused(self, session, name, code):
        refused = yield self.assertFailure(session.execStream(name, len, len), StreamRefused)
        self.assertEqual(refused.code, code, "%r: %s" % (name, refused))

    @inlineCallbacks
    def test_refusals(self):
        """
        Bad names (even though the client sends them), missing commands,
        non-executables and group- or world-writable commands are refused
        with their codes, and the session stays usable.
        """
        rig, agent, host = yield self.start()
        rig.addCommand("groupw", "echo no", mode=0o775)
        rig.addCommand("worldw", "echo no", mode=0o757)
        rig.addCommand("noexec", "echo no", mode=0o644)
        os.symlink("/nonexistent/x", os.path.join(rig.commandDir, "dangling"))
        session = host.session
        for name in ("../x", "..", ".", "a b", "x/y", "", "cat\n", "\xe9t\xe9"):
            yield self.assertRefused(session, name, "bad-name")
        yield self.assertRefused(session, "nope", "no-such-command")
        yield self.assertRefused(session, "dangling", "no-such-command")
        yield self.assertRefused(session, "groupw", "insecure")
        yield self.assertRefused(session, "worldw", "insecure")
        yield self.assertRefused(session, "noexec", "not-executable")
        self.assertEqual(agent.runner.running, [])
        result = yield session.exec("outerr")
        self.assertEqual(result.code, 3)

    @inlineCallbacks
    def test_insecureDirectory(self):
        """
        A group-writable command directory makes every command insecure.
        """
        rig, agent, host = yield self.start()
        os.chmod(rig.commandDir, 0o775)
        self.addCleanup(os.chmod, rig.commandDir, 0o755)
        yield self.assertRefused(host.session, "outerr", "insecure")

    @inlineCallbacks
    def test_badTimeoutAndUnknownKind(self):
        """
        A malformed timeout is C{bad-open}; an unknown stream kind is
        C{unknown-kind}.
        """
        rig, agent, host = yield self.start()
        refused = yield self.assertFailure(
            host.session.execStream("outerr", len, len, timeout="soon"), StreamRefused
        )
        self.assertEqual(refused.code, "bad-open")
        refused = yield self.assertFailure(
            host.session.mux.openStream("teleport", {}, None), StreamRefused
        )
        self.assertEqual(refused.code, "unknown-kind")


class InfoTests(FramedTestMixin, TestCase):
    @inlineCallbacks
    def test_info(self):
        """
        C{Session.info} returns the agent's version, features, OS and uptime.
        """
        rig, agent, host = yield self.start("--max-concurrency", "3")
        yield sleep(0.2)
        info = yield host.session.info()
        self.assertEqual(info["version"], __version__)
        self.assertEqual(info["protocol"], [1])
        for feature in ("exec", "info", "signal", "stderr"):
            self.assertIn(feature, info["features"])
        self.assertEqual(info["os"], platform.uname().system)
        self.assertIsInstance(info["agent_uptime"], float)
        self.assertTrue(0.1 <= info["agent_uptime"] < 30, info["agent_uptime"])
        self.assertEqual(info["pid"], os.getpid())
        self.assertEqual((info["running"], info["waiting"], info["max_concurrency"]), (0, 0, 3))
        # The agent's hello offered the same features, forwarding's kinds too.
        self.assertEqual(
            sorted(host.link.info.peerHello["features"]),
            ["args", "connect", "exec", "files", "info", "list", "listen", "signal", "stderr", "tty"],
        )
        self.assertEqual(sorted(info["features"]), sorted(host.link.info.peerHello["features"]))


class LegacyCoexistenceTests(FramedTestMixin, TestCase):
    """
    The line protocol and the framed protocol share the device.
    """

    @inlineCallbacks
    def test_legacyAfterGoodbye(self):
        """
        After a framed session says goodbye, the guest is back in line mode:
        a legacy client gets the command's raw output, and nothing else.
        """
        rig, agent, host = yield self.start()
        result = yield host.session.exec("outerr")
        self.assertEqual(result.code, 3)
        host.link.goodbye()
        yield host.disconnect()
        yield waitFor(
            lambda: agent.protocol.line_mode and agent.protocol.link.state != "UP",
            "the guest to go back to line mode",
        )
        received = yield rig.legacyExchange(b"cat\nhello legacy\n", b"hello legacy")
        self.assertEqual(received, b"hello legacy")
        received = yield rig.legacyExchange(b"outerr \n", b"more-out\n")
        self.assertEqual(received, b"out\nmore-out\n")
        # And a framed session again.
        host = yield rig.connectHost()
        result = yield host.session.exec("cat", stdin=b"framed again")
        self.assertEqual(result.stdout, b"framed again")

    @inlineCallbacks
    def test_legacyBeforeFramed(self):
        """
        A legacy exchange before any framed hello works, and a framed
        session after it too.
        """
        rig = Rig(self)
        rig.startSim()
        yield rig.startAgent()
        received = yield rig.legacyExchange(b"cat hello, original protocol\n", b"protocol")
        self.assertEqual(received, b"hello, original protocol")
        host = yield rig.connectHost()
        result = yield host.session.exec("count", stdin=b"12345")
        self.assertEqual(result.stdout.strip(), b"5")


class ChannelTests(FramedTestMixin, TestCase):
    """
    The channel: its bound on bytes in flight, faults, cuts.
    """

    @inlineCallbacks
    def test_inFlightBoundedByTtyWindow(self):
        """
        On a tty the guest advertises a 20480-byte window (TTY_WINDOW), so
        the bytes in flight toward it never overflow bhyve's 23040-byte ring: a large
        stdin transfer loses nothing to ring drops, and the simulator never
        sees more than the ring unread.
        """
        rig, agent, host = yield self.start()
        sim = rig.sim
        self.assertEqual(host.link.info.peerHello["window"], TTY_WINDOW)
        self.assertEqual(host.link.info.sendWindow, TTY_WINDOW)
        peak = [0]

        def sample():
            peak[0] = max(peak[0], sim.guestUnread())

        sampler = task.LoopingCall(sample)
        sampler.start(0.002)
        self.addCleanup(lambda: sampler.running and sampler.stop())
        data = randomBytes(6 * MiB, seed=3)
        result = yield withTimeout(host.session.exec("count", stdin=data), 30, "wc")
        sampler.stop()
        self.assertEqual(int(result.stdout), len(data))
        self.assertGreater(sim.counters.bytesToGuest, len(data))
        self.assertEqual(sim.counters.ringDropped, 0)
        self.assertLessEqual(peak[0], 23040)
        self.assertGreater(peak[0], 0)

    @inlineCallbacks
    def test_oversizedWindowOverflowsRing(self):
        """
        The control for the test above: with C{--window 65536}, more than
        the ring holds, the simulator does drop bytes (and retransmission
        still delivers everything).
        """
        rig, agent, host = yield self.start("--window", "65536")
        self.assertEqual(host.link.info.sendWindow, 65536)
        data = randomBytes(MiB, seed=8)
        result = yield withTimeout(host.session.exec("count", stdin=data), 30, "wc")
        self.assertEqual(int(result.stdout), len(data))
        self.assertGreater(rig.sim.counters.ringDropped, 0)

    @inlineCallbacks
    def test_faultsByteExact(self):
        """
        With drops, corruption and duplicates in both directions, 1 MiB of
        stdin and 1 MiB of stdout still arrive byte for byte: delivery is
        reliable end to end, through the real pty.
        """
        faults = Faults(seed=11, dropRate=0.01, corruptRate=0.0005, dupRate=0.01, direction="both")
        rig, agent, host = yield self.start(faults=faults)
        data = randomBytes(MiB, seed=4)
        result = yield withTimeout(host.session.exec("cat", stdin=data), 40, "cat over faults")
        self.assertEqual(result.code, 0)
        self.assertEqual(len(result.stdout), len(data))
        self.assertTrue(result.stdout == data, "stdout differs from stdin")
        stats = rig.sim.injector.stats
        for direction in (TO_GUEST, TO_HOST):
            self.assertGreater(stats[direction].chunksDropped, 0, direction)
            self.assertGreater(stats[direction].chunksDuplicated, 0, direction)
            self.assertGreater(stats[direction].bitsFlipped, 0, direction)
        self.assertGreater(host.link.stats["retransmits"], 0)

    @inlineCallbacks
    def test_cutConnection(self):
        """
        When the host's connection is cut mid-stream, the stream fails with
        L{SessionEnded}, the guest's command is cancelled once a new host
        says hello, and the new connection gets a new session.
        """
        faults = Faults(cutEvery=400000)
        rig, agent, host = yield self.start(faults=faults)
        first = host.link.info.tag
        running, out, err = yield self.startStreaming(host.session, "cat")
        running.write(randomBytes(MiB, seed=6))
        failure = yield self.assertFailure(
            withTimeout(running.result, 20, "the cut"), SessionEnded
        )
        self.assertIn("channel closed", str(failure))
        yield withTimeout(host.lost, 5, "the connection to be lost")
        self.assertEqual(rig.sim.counters.cuts, 1)
        self.assertFalse(host.connected)

        again = yield rig.connectHost()
        self.assertNotEqual(again.link.info.tag, first)
        yield waitFor(lambda: not agent.runner.running, "the old command to be cancelled")
        result = yield again.session.exec("cat", stdin=b"after the cut")
        self.assertEqual(result.stdout, b"after the cut")
