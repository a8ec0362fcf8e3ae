"""
Restarts in the middle of a stream: the guest agent restarting (in this
process, and as a real C{twistd -n prokshy-guest}), and the host closing its
connection and opening a new one. Nothing may hang, commands of a dead
session must be killed, and a new session must come up within seconds.
"""

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from prokshy.link.session import SessionEnded
from tests.harness import Rig, groupAlive, waitFor, withTimeout

#: Liveness settings short enough for tests.
LIVENESS = ("--ping-interval", "0.2", "--dead-after", "1.5")

#: Prints its pid, then streams a line every 50 ms until killed.
TICKER = "echo $$; while :; do echo tick; sleep 0.05; done"


class RestartTestMixin:
    timeout = 60

    def rig(self):
        rig = Rig(self)
        rig.addCommand("ticker", TICKER)
        rig.startSim()
        return rig

    @inlineCallbacks
    def startTicker(self, session):
        """
        Start the ticker and wait until it streams.

        @return: a Deferred firing with (running, pid, output bytearray).
        """
        out = bytearray()
        running = yield session.execStream("ticker", out.extend, lambda data: None)
        yield waitFor(lambda: out.count(b"tick") >= 3, "the ticker to stream")
        return running, int(bytes(out).split(b"\n", 1)[0]), out


class GuestRestartTests(RestartTestMixin, TestCase):
    @inlineCallbacks
    def test_agentRestartMidStream(self):
        """
        The agent stops while a command streams (the command is killed) and
        a new agent starts on the same device: the host's stream fails with
        L{SessionEnded} naming the restart (or the silence), and the host
        gets a new session within a few seconds, by its hello probes.
        """
        rig = self.rig()
        agent = yield rig.startAgent(*LIVENESS)
        host = yield rig.connectHost()
        firstTag = host.link.info.tag
        running, pid, out = yield self.startTicker(host.session)

        yield withTimeout(agent.stop(), 5, "the agent to stop")
        self.assertFalse(groupAlive(pid), "the agent left its command running")
        restartedAt = reactor.seconds()
        yield rig.startAgent(*LIVENESS)

        failure = yield self.assertFailure(
            withTimeout(running.result, 10, "the stream to fail"), SessionEnded
        )
        # A stopping agent says goodbye; one that died is noticed by its
        # silence or by the new agent's answer to a probe.
        self.assertTrue(
            any(why in str(failure) for why in ("agent stopping", "restarted", "silent")),
            str(failure),
        )
        session = yield host.newSession(timeout=10)
        self.assertLess(reactor.seconds() - restartedAt, 5)
        self.assertNotEqual(host.link.info.tag, firstTag)
        self.assertFalse(host.isLost)
        result = yield withTimeout(session.exec("cat", stdin=b"new agent"), 10, "exec")
        self.assertEqual(result.stdout, b"new agent")
        info = yield session.info()
        self.assertLess(info["agent_uptime"], 10)

    @inlineCallbacks
    def test_agentRestartDuringUpload(self):
        """
        The agent restarts while the host is sending stdin as fast as the
        window allows: the new agent first sees the rest of the old
        session's frames (line mode: one long garbage line), and still
        answers the host's probe, so the host gets a new session.
        """
        rig = self.rig()
        agent = yield rig.startAgent(*LIVENESS)
        host = yield rig.connectHost()
        out = bytearray()
        running = yield host.session.execStream("count", out.extend, lambda data: None)
        running.write(b"x" * (16 * 1024 * 1024))
        yield waitFor(lambda: running.stream.bytesOut > 1024 * 1024, "stdin to flow")
        yield withTimeout(agent.stop(), 5, "the agent to stop")
        restartedAt = reactor.seconds()
        yield rig.startAgent(*LIVENESS)
        yield self.assertFailure(withTimeout(running.result, 10, "the stream to fail"), SessionEnded)
        session = yield host.newSession(timeout=10)
        self.assertLess(reactor.seconds() - restartedAt, 5)
        result = yield withTimeout(session.exec("count", stdin=b"12345"), 10, "exec")
        self.assertEqual(result.stdout.strip(), b"5")

    @inlineCallbacks
    def test_twistdRestart(self):
        """
        The same with the agent as a real C{twistd -n prokshy-guest}
        process: it serves, shuts down cleanly on SIGTERM having killed its
        command,
        and once it is started again the host recovers on its own.
        """
        rig = self.rig()
        first = rig.spawnAgent(*LIVENESS)
        yield withTimeout(first.started, 20, "twistd to start")
        host = yield rig.connectHost(timeout=20)
        info = yield host.session.info()
        self.assertEqual(info["pid"], first.pid)
        result = yield host.session.exec("outerr")
        self.assertEqual((result.code, result.stdout, result.stderr), (3, b"out\nmore-out\n", b"err\n"))
        running, pid, out = yield self.startTicker(host.session)

        code = yield withTimeout(first.terminate(), 10, "twistd to exit")
        self.assertCleanExit(first, code)
        yield waitFor(lambda: not groupAlive(pid), "the agent's command to be killed", timeout=3)

        second = rig.spawnAgent(*LIVENESS)
        yield withTimeout(second.started, 20, "twistd to start again")
        yield self.assertFailure(withTimeout(running.result, 10, "the stream to fail"), SessionEnded)
        session = yield host.newSession(timeout=10)
        info = yield session.info()
        self.assertEqual(info["pid"], second.pid)
        result = yield withTimeout(session.exec("cat", stdin=b"again"), 10, "exec")
        self.assertEqual(result.stdout, b"again")
        code = yield withTimeout(second.terminate(), 10, "twistd to exit")
        self.assertCleanExit(second, code)

    def assertCleanExit(self, agent, code):
        """
        twistd shut down cleanly on SIGTERM (it then exits by re-raising the
        signal, as Twisted's twistd does, or with 0).
        """
        log = agent.output.decode("utf-8", "replace")
        self.assertIn(code, (0, -15), log[-3000:])
        self.assertIn("Server Shut Down.", log)
        self.assertNotIn("Traceback", log)


class HostRestartTests(RestartTestMixin, TestCase):
    @inlineCallbacks
    def test_hostReconnectsMidStream(self):
        """
        The host closes its connection while a command streams and opens a
        new one: the old stream fails with L{SessionEnded}, the guest kills
        the command of the old session (the new host's hello ends it), and
        the new session works.
        """
        rig = self.rig()
        agent = yield rig.startAgent(*LIVENESS)
        host = yield rig.connectHost()
        running, pid, out = yield self.startTicker(host.session)

        yield host.disconnect()
        yield self.assertFailure(withTimeout(running.result, 5, "the stream to fail"), SessionEnded)
        again = yield rig.connectHost()
        # The group dies first; its execution ends once its pipes are drained.
        yield waitFor(
            lambda: not groupAlive(pid) and agent.runner.running == [],
            "the old command to be killed and its execution to end",
            timeout=15,
        )
        result = yield again.session.exec("cat", stdin=b"new host")
        self.assertEqual(result.stdout, b"new host")

    @inlineCallbacks
    def test_hostGoneForGood(self):
        """
        The host closes its connection and does not come back (bhyve tells
        the guest nothing): after C{--dead-after} the guest ends the
        session, kills the command and goes back to line mode.
        """
        rig = self.rig()
        agent = yield rig.startAgent(*LIVENESS)
        host = yield rig.connectHost()
        running, pid, out = yield self.startTicker(host.session)

        goneAt = reactor.seconds()
        yield host.disconnect()
        yield self.assertFailure(running.result, SessionEnded)
        yield waitFor(lambda: not groupAlive(pid), "the command to be killed", timeout=5)
        elapsed = reactor.seconds() - goneAt
        self.assertGreater(elapsed, 1.0)
        self.assertLess(elapsed, 4.0)
        yield waitFor(lambda: agent.protocol.line_mode, "the guest to go back to line mode")
        received = yield rig.legacyExchange(b"cat\nline mode\n", b"line mode")
        self.assertEqual(received, b"line mode")

    @inlineCallbacks
    def test_hostGoodbyeKillsCommands(self):
        """
        A host that says goodbye ends the session at once on the guest: its
        commands are killed without waiting for C{--dead-after}.
        """
        rig = self.rig()
        yield rig.startAgent("--ping-interval", "1", "--dead-after", "30")
        host = yield rig.connectHost()
        running, pid, out = yield self.startTicker(host.session)
        host.link.goodbye("test over")
        yield self.assertFailure(running.result, SessionEnded)
        yield waitFor(lambda: not groupAlive(pid), "the command to be killed", timeout=3)
