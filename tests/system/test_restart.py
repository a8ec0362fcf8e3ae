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
from tests.harness import HostHellos, Rig, groupAlive, waitFor, withTimeout

#: Liveness settings short enough for tests.
LIVENESS = ("--ping-interval", "0.2", "--dead-after", "1.5")

#: Host hellos (probes) a new session may take once the new agent has its
#: device open: it answers the first hello it reads, so 1 is the rule; one
#: more may be on its way while the answer travels.  Three would take the
#: agent being deaf to two probes in a row (1 s at the host's 0.5 s
#: interval).  Counted instead of timing "a new session within 5 s".
MAX_PROBES = 3

#: How the host learns that its guest restarted, from the guest itself:
#: the stopping agent's GOODBYE, or the new agent's answer (a new nonce) to
#: a probe.  Not its silence ("peer silent", the host's dead-after of 8 s).
TOLD_BY_GUEST = ("goodbye (agent stopping)", "guest restarted")

#: Prints its pid, then streams a line every 50 ms until killed.
TICKER = "echo $$; while :; do echo tick; sleep 0.05; done"


class RestartTestMixin:
    #: A liveness limit only: real twistd agents start slowly on a loaded
    #: machine (no test here times a claim).
    timeout = 120

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
        L{SessionEnded} naming the restart, and the host gets a new session
        within a few seconds, by its hello probes.

        "Within a few seconds" is shown by its cause, not timed: the host
        is told by the guest (not by its silence: the host's dead-after is
        8 s), and the new agent answers the first probe or so it can read.
        """
        rig = self.rig()
        hellos = HostHellos(rig.sim)
        agent = yield rig.startAgent(*LIVENESS)
        host = yield rig.connectHost()
        firstTag = host.link.info.tag
        running, pid, out = yield self.startTicker(host.session)

        yield withTimeout(agent.stop(), 5, "the agent to stop")
        self.assertFalse(groupAlive(pid), "the agent left its command running")
        restartedAt = reactor.seconds()
        yield rig.startAgent(*LIVENESS)
        probes = hellos.count  # the new agent has its device open

        failure = yield self.assertFailure(
            withTimeout(running.result, 10, "the stream to fail"), SessionEnded
        )
        # A stopping agent says goodbye; one that died is noticed by the new
        # agent's answer to a probe.
        self.assertTrue(any(why in str(failure) for why in TOLD_BY_GUEST), str(failure))
        # a liveness bound only: the claim is counted below
        session = yield host.newSession(timeout=30)
        self.assertLessEqual(hellos.count - probes, MAX_PROBES)
        self.assertEqual([str(why) for why in host.downs], [str(failure)])
        self.assertEqual(len(host.sessions), 2)
        self.assertNotEqual(host.link.info.tag, firstTag)
        self.assertFalse(host.isLost)
        result = yield withTimeout(session.exec("cat", stdin=b"new agent"), 10, "exec")
        self.assertEqual(result.stdout, b"new agent")
        info = yield session.info()
        # the agent answering is the one started after the restart (its
        # uptime is from time.time(), as reactor.seconds(); 1 ms of rounding)
        self.assertLessEqual(info["agent_uptime"], reactor.seconds() - restartedAt + 0.001)

    @inlineCallbacks
    def test_agentRestartDuringUpload(self):
        """
        The agent restarts while the host is sending stdin as fast as the
        window allows: the new agent first sees the rest of the old
        session's frames (line mode: one long garbage line), and still
        answers the host's probe, so the host gets a new session.
        """
        rig = self.rig()
        hellos = HostHellos(rig.sim)
        agent = yield rig.startAgent(*LIVENESS)
        host = yield rig.connectHost()
        out = bytearray()
        running = yield host.session.execStream("count", out.extend, lambda data: None)
        running.write(b"x" * (16 * 1024 * 1024))
        yield waitFor(lambda: running.stream.bytesOut > 1024 * 1024, "stdin to flow")
        yield withTimeout(agent.stop(), 5, "the agent to stop")
        yield rig.startAgent(*LIVENESS)
        probes = hellos.count  # the new agent has its device open
        failure = yield self.assertFailure(
            withTimeout(running.result, 10, "the stream to fail"), SessionEnded
        )
        # Not timed ("within 5 s"), but shown by its cause: the host was told
        # by the guest, and the new agent, past the old session's garbage,
        # answered the first probe or so it could read.
        self.assertTrue(any(why in str(failure) for why in TOLD_BY_GUEST), str(failure))
        session = yield host.newSession(timeout=30)  # a liveness bound only
        self.assertLessEqual(hellos.count - probes, MAX_PROBES)
        self.assertEqual(len(host.sessions), 2)
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
        ends = []
        agent.protocol.mux.whenDown(lambda why: ends.append(str(why)))

        goneAt = reactor.seconds()
        yield host.disconnect()
        yield self.assertFailure(running.result, SessionEnded)
        # a liveness bound only (the claim is the cause, below)
        yield waitFor(lambda: not groupAlive(pid), "the command to be killed", timeout=20)
        elapsed = reactor.seconds() - goneAt
        # not before --dead-after (less the last ping interval: the host was
        # last heard up to 0.2 s before it went)
        self.assertGreater(elapsed, 1.0)
        # and by it (shown by the cause, where "< 4 s" was timed): the guest
        # ended the session, once, because the host was silent for
        # --dead-after (1.5 s), and killed the command as that session's
        self.assertEqual(len(ends), 1, ends)
        [why] = ends
        self.assertIn("peer silent for", why)
        silent = float(why.rsplit("peer silent for ", 1)[1].split()[0])
        self.assertGreaterEqual(silent, 1.5)
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
        agent = yield rig.startAgent("--ping-interval", "1", "--dead-after", "30")
        host = yield rig.connectHost()
        running, pid, out = yield self.startTicker(host.session)
        ends = []
        agent.protocol.mux.whenDown(lambda why: ends.append(str(why)))
        host.link.goodbye("test over")
        yield self.assertFailure(running.result, SessionEnded)
        # The guest ended the session because of the GOODBYE (not its silence
        # watch), and killed the command as that session's: shown by the
        # cause, not timed.  The waits are liveness bounds, still far below
        # --dead-after.
        yield waitFor(lambda: ends, "the guest to end the session", timeout=10)
        self.assertEqual(len(ends), 1, ends)
        self.assertIn("goodbye (test over)", ends[0])
        yield waitFor(lambda: not groupAlive(pid), "the command to be killed", timeout=10)
