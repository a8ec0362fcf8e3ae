"""
The guest's limits on commands (issue 7, item 6): by default a framed exec
has no output cap and no timeout, since the host can cancel it and credit
windows bound memory; the line protocol, whose client cannot cancel,
keeps a 60 s timeout and a 16 MiB cap.  C{--timeout} and C{--max-output}
bound every command, and a framed exec may only ask for a shorter timeout.

The limits are checked with the runner the real option parser and
C{makeService} build, on a fake process reactor (time is a
L{twisted.internet.task.Clock}), through both fronts: the framed
L{ExecStreamProtocol} and the line L{LegacyHandler}.  Two tests at the end
use the real agent.
"""

import signal

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.trial import unittest

from prokshy.guest._process import spawnWithReactor
from prokshy.guest.execs import ExecStreamProtocol, Slots
from prokshy.lines.legacy import LegacyHandler
from prokshy.execs.status import ExitStatus
from prokshy.guest.runner import CommandRunner
from prokshy.tap import guest as guestTap

from tests.fakes import SH, MemoryProcessReactor, makeCommandDir
from tests.harness import RawClient, Rig, waitFor, withTimeout

MiB = 1024 * 1024


class FakeStream:
    """
    The parts of a framed stream (L{prokshy.streams.stream.Stream}) that
    L{ExecStreamProtocol} uses, recording what it does.
    """

    def __init__(self):
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.controls = []
        self.aborted = None
        self.eof = False
        self.closed = False
        self.paused = False
        self.producer = None

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.stdout += data

    def writeStderr(self, data):
        self.stderr += data

    def writeEof(self):
        self.eof = True

    def sendControl(self, kind, obj):
        self.controls.append((kind, obj))

    def loseConnection(self):
        self.closed = True

    def abort(self, code="aborted", message=""):
        self.aborted = (code, message)
        self.closed = True


def agentRunner(testCase, *args):
    """
    The runner that C{makeService} builds from the agent's command line
    C{args}, on a fake process reactor.

    @return: (runner, reactor).
    """
    path = makeCommandDir({"cmd": SH})
    options = guestTap.Options()
    options.parseOptions(["--device", "/dev/x", "--command-dir", path, "--run-dir", ""] + list(args))
    reactor = MemoryProcessReactor()
    top = guestTap.makeService(options, reactor)
    runners = {getattr(s, "runner", None) for s in top} - {None}
    [runner] = runners
    runner._spawn = spawnWithReactor
    return runner, reactor


def startFramed(runner, timeout=None):
    """
    Run C{cmd} through the framed front.

    @return: (stream, child).
    """
    stream = FakeStream()
    protocol = ExecStreamProtocol(runner, Slots(8, 64), "cmd", timeout)
    protocol.makeConnection(stream)
    return stream, runner.reactor.processes[-1], protocol


def startLine(runner):
    """
    Run C{cmd} through the line front.

    @return: (output list, child, handler).
    """
    output = []
    handler = LegacyHandler(runner, output.append, runner.reactor)
    handler.lineReceived(b"cmd data")
    return output, runner.reactor.processes[-1], handler


def feed(child, total, chunk=MiB):
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        child.feedStdout(b"x" * n)
        sent += n


class DefaultLimitsTests(unittest.TestCase):
    """
    The defaults, as the agent's option parser and makeService set them.
    """

    def setUp(self):
        self.runner, self.reactor = agentRunner(self)

    def test_defaults(self):
        self.assertEqual((self.runner.timeout, self.runner.maxOutput), (0, 0))
        self.assertEqual((self.runner.lineTimeout, self.runner.lineMaxOutput), (60, 16 * MiB))
        self.assertEqual(self.runner.limits(), (0, 0))
        self.assertEqual(self.runner.limits(line=True), (60, 16 * MiB))

    def test_framedNotKilledAfterAnHour(self):
        """
        A framed exec running far longer than 60 s is not killed.
        (Before: SIGTERM at 60 s, exit 143/124.)
        """
        stream, child, protocol = startFramed(self.runner)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(3600)
        self.assertEqual(child.signals, [])
        child.end(0)
        kind, exit = stream.controls[-1]
        self.assertEqual((exit["code"], exit["timed_out"], exit["truncated"]), (0, False, False))

    def test_framedOutputNotCut(self):
        """
        A framed exec's 17 MiB of output all reach the stream.
        (Before: cut at 16 MiB and killed.)
        """
        stream, child, protocol = startFramed(self.runner)
        feed(child, 17 * MiB)
        self.assertEqual(len(stream.stdout), 17 * MiB)
        self.assertEqual(child.signals, [])
        child.end(0)
        self.assertFalse(stream.controls[-1][1]["truncated"])

    def test_framedTimeoutAskedFor(self):
        """
        The host may ask for a timeout per exec.
        """
        stream, child, protocol = startFramed(self.runner, timeout=5)
        self.reactor.advance(5)
        self.assertEqual(child.signals, [("group", signal.SIGTERM)])

    def test_lineKilledAt60s(self):
        """
        The line protocol keeps its timeout: its client cannot cancel.
        """
        output, child, handler = startLine(self.runner)
        self.reactor.advance(59.9)
        self.assertEqual(child.signals, [])
        self.reactor.advance(0.1)
        self.assertEqual(child.signals, [("group", signal.SIGTERM)])
        child.end(None, signal.SIGTERM)
        self.assertTrue(handler.runner.running == [])

    def test_lineOutputCutAt16MiB(self):
        output, child, handler = startLine(self.runner)
        results = []
        handler.current.done.addCallback(results.append)
        feed(child, 17 * MiB)
        self.assertEqual(sum(map(len, output)), 16 * MiB)
        self.assertEqual(child.signals, [("group", signal.SIGTERM)])
        child.end(None, signal.SIGTERM)
        self.assertEqual(results, [ExitStatus(None, signal.SIGTERM, False, True)])


class AdminLimitsTests(unittest.TestCase):
    """
    The guest administrator's C{--timeout} and C{--max-output} bound every
    command, in both protocols; C{--line-timeout} and C{--line-max-output}
    set the line protocol's own.
    """

    def test_timeoutBoundsFramedAndLine(self):
        runner, reactor = agentRunner(self, "--timeout", "30")
        self.assertEqual(runner.limits(), (30, 0))
        self.assertEqual(runner.limits(line=True), (30, 16 * MiB))
        stream, child, protocol = startFramed(runner)
        reactor.advance(30)
        self.assertEqual(child.signals, [("group", signal.SIGTERM)])

    def test_framedCannotAskForLonger(self):
        runner, reactor = agentRunner(self, "--timeout", "30")
        stream, child, protocol = startFramed(runner, timeout=100)
        reactor.advance(30)
        self.assertEqual(child.signals, [("group", signal.SIGTERM)])
        stream, child, protocol = startFramed(runner, timeout=0)
        reactor.advance(30)
        self.assertEqual(child.signals, [("group", signal.SIGTERM)])
        stream, child, protocol = startFramed(runner, timeout=10)
        reactor.advance(10)
        self.assertEqual(child.signals, [("group", signal.SIGTERM)])

    def test_maxOutputBoundsFramed(self):
        runner, reactor = agentRunner(self, "--max-output", "1000")
        self.assertEqual(runner.limits(line=True), (60, 1000))
        stream, child, protocol = startFramed(runner)
        child.feedStdout(b"y" * 5000)
        self.assertEqual(len(stream.stdout), 1000)
        child.end(None, signal.SIGTERM)
        self.assertTrue(stream.controls[-1][1]["truncated"])

    def test_lineLimitsConfigurable(self):
        runner, reactor = agentRunner(self, "--line-timeout", "0", "--line-max-output", "0")
        self.assertEqual(runner.limits(line=True), (0, 0))
        output, child, handler = startLine(runner)
        reactor.advance(3600)
        feed(child, 17 * MiB)
        self.assertEqual(child.signals, [])
        runner2, reactor2 = agentRunner(self, "--line-timeout", "5", "--line-max-output", "10")
        self.assertEqual(runner2.limits(line=True), (5, 10))
        self.assertEqual(runner2.limits(), (0, 0))

    def test_badValues(self):
        for option in ("--line-timeout", "--line-max-output"):
            for value in ("-1", "soon"):
                options = guestTap.Options()
                self.assertRaises(
                    Exception, options.parseOptions, ["--device", "/x", option, value]
                )

    def test_helpSaysSo(self):
        text = str(guestTap.Options())
        for fragment in ("--line-timeout", "--line-max-output", "no limit, the default"):
            self.assertIn(fragment, text)


class RealAgentLimitsTests(unittest.TestCase):
    """
    The real agent, with its default options.
    """

    timeout = 120

    @inlineCallbacks
    def test_framedOutputBeyond16MiB(self):
        """
        17 MiB of output through a framed exec, through the simulated
        console port, arrive whole.
        """
        rig = Rig(self)
        rig.addCommand("big", "head -c %d /dev/zero" % (17 * MiB,))
        rig.startSim()
        yield rig.startAgent()
        host = yield rig.connectHost()
        total = []
        running = yield host.session.execStream("big", lambda d: total.append(len(d)), len)
        running.closeStdin()
        result = yield withTimeout(running.result, 100, "17 MiB")
        self.assertEqual(sum(total), 17 * MiB)
        self.assertEqual((result.code, result.truncated, result.timedOut), (0, False, False))

    @inlineCallbacks
    def test_lineProtocolStillCuts(self):
        """
        A line-protocol command is cut at C{--line-max-output}.
        """
        rig = Rig(self)
        rig.addCommand("flood", "exec cat /dev/zero")
        rig.startSim()
        agent = yield rig.startAgent("--line-max-output", "5000")
        executions = []
        start = agent.runner.start

        def recordingStart(*args, **kwargs):
            executions.append(start(*args, **kwargs))
            return executions[-1]

        self.patch(agent.runner, "start", recordingStart)
        client = RawClient()
        yield connectProtocol(UNIXClientEndpoint(reactor, rig.socketPath), client)
        self.addCleanup(client.transport.loseConnection)
        client.transport.write(b"flood x\n")
        [execution] = yield waitFor(lambda: executions, "the command")
        status = yield withTimeout(execution.done, 20, "the capped command")
        self.assertTrue(status.truncated)
        yield waitFor(lambda: len(client.received) >= 5000, "the output")
        self.assertEqual(bytes(client.received), b"\0" * 5000)
