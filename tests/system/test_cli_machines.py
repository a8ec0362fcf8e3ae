"""
The CLI's state machines (issue 8): L{prokshy.cli.fallback.AutoChannel}
(the auto mode's fallback decision) and L{prokshy.cli.legacy.LegacyExchange}
(the line-protocol exchange) declare every (state, input) pair, their module
docstrings carry their transition tables, and their timers belong to
states; the CLI's outputs provide L{prokshy.cli.output.IOutput}; and
C{cli/framed.py} is split along its seams.  On a L{task.Clock}, in memory.
"""

import io
import os

from twisted.internet import reactor, task
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import prokshy.cli
import prokshy.cli.fallback
import prokshy.cli.legacy
from prokshy import _machines
from prokshy.cli import framed
from prokshy.cli.fallback import LATE_SESSION_FACTOR, AutoChannel
from prokshy.cli.format import CLIError
from prokshy.cli.legacy import LegacyExchange
from prokshy.cli.options import parseArgs
from prokshy.cli.output import Collector, FileOutput, FlowGate, IOutput, OutputPort
from prokshy.wire.channel import encodeHello, parseHello


def _hostHellos(data):
    return [parseHello(line) for line in data.split(b"\n") if line.startswith(b"\xffPROKSHY ")]


def _guestHello(peer, **extra):
    fields = {"v": [1], "role": "guest", "nonce": "feedc0de", "peer": peer, "features": ["exec"],
              "window": 65536, "max_payload": 4096}
    fields.update(extra)
    return encodeHello(fields)


class AutoChannelMachineTests(SynchronousTestCase):
    """
    The fallback decision's machine.
    """

    def test_everyPairDeclared(self):
        self.assertEqual(_machines.undeclared(AutoChannel._machine), set())

    def test_states(self):
        self.assertEqual(
            _machines.states(AutoChannel._machine),
            ["connecting", "done", "failed", "framed", "hello", "line", "switching"],
        )

    def test_tableInDocstring(self):
        self.assertIn(_machines.table(AutoChannel._machine), prokshy.cli.fallback.__doc__)

    def test_timersBelongToStates(self):
        """
        The hello timer is cancelled on every transition out of C{hello},
        the switching timer on every transition out of C{switching}, and
        nothing else cancels them.
        """
        for old, inp, new, outputs in _machines.transitions(AutoChannel._machine):
            for state, arm, cancel in (("hello", "_armHelloTimer", "_cancelHelloTimer"),
                                       ("switching", "_armSwitchTimer", "_cancelSwitchTimer")):
                leaving = old == state and new != state
                self.assertEqual(cancel in outputs, leaving, (old, inp, new))
                self.assertEqual(arm in outputs, new == state and old != state, (old, inp, new))

    def test_decidedOnce(self):
        """
        C{decided} is fired only on entering C{framed}, C{done} or
        C{failed}, and they are never left.
        """
        decide = {"_decideFramed", "_decideLine", "_decideError", "_decideSessionFailure",
                  "_decideClosed", "_decideNoAnswer"}
        final = {"framed", "done", "failed"}
        for old, inp, new, outputs in _machines.transitions(AutoChannel._machine):
            if old in final:
                self.assertEqual(new, old)
            self.assertEqual(bool(decide & set(outputs)), old not in final and new in final, (old, inp))


class LegacyExchangeMachineTests(SynchronousTestCase):
    """
    The line-protocol exchange's machine: the idle timer belongs to the
    C{reading} state.
    """

    def test_everyPairDeclared(self):
        self.assertEqual(_machines.undeclared(LegacyExchange._machine), set())

    def test_tableInDocstring(self):
        self.assertIn(_machines.table(LegacyExchange._machine), prokshy.cli.legacy.__doc__)

    def test_idleTimerBelongsToReading(self):
        for old, inp, new, outputs in _machines.transitions(LegacyExchange._machine):
            leaving = old == "reading" and new != "reading"
            self.assertEqual("_cancelIdle" in outputs, leaving, (old, inp, new))
            self.assertEqual("_armIdle" in outputs, new == "reading" and old != "reading", (old, inp, new))

    def exchange(self):
        clock = task.Clock()
        proto = LegacyExchange(b"cat", b"x", io.BytesIO(), 1.0, clock)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport, clock

    def test_pausedHasNoTimer(self):
        """
        While the output is full no idle timer runs and the socket is not
        read; with room again the timer is armed afresh, for the whole
        C{--timeout}.
        """
        proto, transport, clock = self.exchange()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(0.9)
        proto.pauseProducing()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(transport.producerState, "paused")
        clock.advance(30)
        self.assertNoResult(proto.done)
        proto.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        clock.advance(0.99)
        self.assertNoResult(proto.done)
        clock.advance(0.01)
        self.assertEqual(self.successResultOf(proto.done), 0)

    def test_closedWhilePaused(self):
        """
        The connection ending while paused ends the exchange, and the
        transport is resumed (the exchange holds it no more).
        """
        proto, transport, clock = self.exchange()
        proto.pauseProducing()
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(proto.done), 0)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(proto.endedBy, "closed")

    def test_abandonedStopsTimer(self):
        proto, transport, clock = self.exchange()
        proto.abandon()
        self.assertEqual(clock.getDelayedCalls(), [])
        proto.dataReceived(b"late")
        clock.advance(5)
        self.assertNoResult(proto.done)
        self.assertEqual(proto.outputBytes, 0)


class LateSessionWaitTests(SynchronousTestCase):
    """
    After a late hello the new framed session gets
    L{LATE_SESSION_FACTOR} times as long as the late answer took: no fixed
    minimum (it was at least 5 s whatever C{--fallback-after} said).
    """

    def channel(self, fallbackAfter):
        clock = task.Clock()
        options = parseArgs(["--socket-path", "/s", "--command", "greet", "--from-string", "w",
                             "--fallback-after", fallbackAfter, "--timeout", "30"])
        channel = AutoChannel(clock, options, FileOutput(io.BytesIO(), "stdout"), "/s")
        transport = StringTransport()
        channel.makeConnection(transport)
        nonce = _hostHellos(transport.value())[0]["nonce"]
        return channel, transport, clock, nonce

    def test_shortFallbackShortWait(self):
        """
        C{--fallback-after 0.25} and an answer right after the fallback:
        the new session may take 1.25 s (it was 5 s).
        """
        channel, transport, clock, nonce = self.channel("0.25")
        clock.advance(0.25)
        self.assertTrue(transport.value().endswith(b"\ngreet\nw\n"))
        channel.dataReceived(_guestHello(nonce))
        self.assertEqual(LATE_SESSION_FACTOR, 5)
        clock.advance(1.125)
        self.assertNoResult(channel.decided)
        clock.advance(0.125)
        e = self.failureResultOf(channel.decided, CLIError).value
        self.assertEqual((e.code, e.message), (255, "no framed hello answer within 1.25 s"))
        self.assertTrue(transport.disconnecting)

    def test_waitFollowsTheLateAnswer(self):
        """
        An answer 0.75 s after the connection: the new session may take
        3.75 s.
        """
        channel, transport, clock, nonce = self.channel("0.25")
        clock.advance(0.25)
        clock.advance(0.5)
        channel.dataReceived(_guestHello(nonce))
        clock.advance(3.5)
        self.assertNoResult(channel.decided)
        clock.advance(0.25)
        e = self.failureResultOf(channel.decided, CLIError).value
        self.assertEqual(e.message, "no framed hello answer within 3.75 s")

    def test_sessionUpCancelsTheWait(self):
        """
        The new session coming up leaves the switching state: its timer
        is gone, and nothing fails later.
        """
        channel, transport, clock, nonce = self.channel("0.25")
        clock.advance(0.25)
        transport.clear()
        channel.dataReceived(_guestHello(nonce))
        newNonce = _hostHellos(transport.value())[0]["nonce"]
        channel.dataReceived(_guestHello(newNonce, nonce="g2"))
        mode, host = self.successResultOf(channel.decided)
        self.assertEqual(mode, "framed")
        # the link's timers aside, nothing is left: not the switching
        # state's timer, not the line exchange's idle timer
        host.link.stop("done")
        self.assertEqual(clock.getDelayedCalls(), [])


class HelloTimerTests(SynchronousTestCase):
    """
    The hello state's timer is the fallback in auto mode, the end of the
    wait with C{--protocol framed}; a session up before it fires cancels it.
    """

    def channel(self, *extra):
        clock = task.Clock()
        options = parseArgs(["--socket-path", "/s", "--command", "greet", "--from-string", "w",
                             "--fallback-after", "1"] + list(extra))
        channel = AutoChannel(clock, options, FileOutput(io.BytesIO(), "stdout"), "/s")
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport, clock

    def test_sessionUpBeforeTimer(self):
        channel, transport, clock = self.channel()
        nonce = _hostHellos(transport.value())[0]["nonce"]
        channel.dataReceived(_guestHello(nonce))
        mode, host = self.successResultOf(channel.decided)
        host.link.stop("done")
        # the fallback timer died with the hello state
        self.assertEqual(clock.getDelayedCalls(), [])
        transport.clear()
        clock.advance(1.5)
        self.assertNotIn(b"greet\nw\n", transport.value())

    def test_framedGivesUp(self):
        channel, transport, clock = self.channel("--protocol", "framed")
        clock.advance(1)
        e = self.failureResultOf(channel.decided, CLIError).value
        self.assertEqual(e.message, "no framed hello answer within 1 s")
        self.assertTrue(transport.disconnecting)
        self.assertNotIn(b"greet\nw\n", transport.value())


class OutputInterfaceTests(SynchronousTestCase):
    """
    The CLI's outputs are declared L{IOutput} providers.
    """

    def test_providers(self):
        verifyObject(IOutput, FileOutput(io.BytesIO(), "stdout"))
        verifyObject(IOutput, Collector())
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        port = OutputPort(reactor, w, "stdout")
        self.addCleanup(port.abort)
        verifyObject(IOutput, port)

    def test_collectorNeverFull(self):
        c = Collector()
        gate = FlowGate(self)
        c.attach(gate)
        c.write(b"x" * 1000000)
        self.assertEqual((c.getvalue(), c.bytesWritten, c.lost), (b"x" * 1000000, 1000000, False))

    def pauseProducing(self):
        self.fail("a collector never pauses its producers")


class SplitTests(SynchronousTestCase):
    """
    C{cli/framed.py} keeps the framed run; the fallback decision, the input
    and the output formatting are modules of their own.
    """

    def test_seams(self):
        from prokshy.cli import fallback, format, hellos, input

        self.assertEqual(framed.__all__, ["FramedRun"])
        self.assertIn("AutoChannel", fallback.__all__)
        self.assertIn("HelloFilter", hellos.__all__)
        self.assertIn("StdinFanout", input.__all__)
        self.assertIn("formatStatus", format.__all__)
        self.assertIn("exitFor", format.__all__)

    def test_small(self):
        """
        No module of the CLI over 550 lines (framed.py was 824), and
        C{framed.py} is the framed run alone.
        """
        directory = os.path.dirname(prokshy.cli.__file__)
        sizes = {}
        for name in sorted(os.listdir(directory)):
            if name.endswith(".py"):
                with open(os.path.join(directory, name)) as f:
                    sizes[name] = len(f.readlines())
        self.assertEqual({n: s for n, s in sizes.items() if s > 550}, {})
        self.assertLess(sizes["framed.py"], 300)
