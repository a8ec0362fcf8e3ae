"""
The link's lifecycle machines (L{prokshy.link.lifecycle}): every (state,
input) pair declared, the transition tables in the module docstring are
the machines', and each state's timers run exactly while the link is in
that state.
"""

from twisted.trial import unittest

from prokshy import _machines
from prokshy.link import lifecycle
from prokshy.link.lifecycle import GuestLifecycle, HostLifecycle
from prokshy.link.session import LinkConfig
from prokshy.wire import frames
from prokshy.testing import LinkPair, deterministicNonces
from tests.unit.test_link import Recorder

MACHINES = (HostLifecycle, GuestLifecycle)


class TableTests(unittest.SynchronousTestCase):
    def test_everyPairDeclared(self):
        """
        Every (state, input) pair of both machines is a declared
        transition: none is missing.
        """
        for machine in MACHINES:
            self.assertEqual(_machines.undeclared(machine._machine), set(), machine.__name__)

    def test_states(self):
        self.assertEqual(
            _machines.states(HostLifecycle._machine), ["hello", "idle", "stopped", "up"]
        )
        self.assertEqual(
            _machines.states(GuestLifecycle._machine), ["idle", "quiet", "stopped", "up"]
        )

    def test_docstringTables(self):
        """
        The module docstring carries both transition tables, generated from
        the machines (regenerate them with L{_machines.table} after a
        change).
        """
        for machine in MACHINES:
            table = _machines.table(machine._machine)
            self.assertIn(table, lifecycle.__doc__, "regenerate the table of " + machine.__name__)

    def test_stateNames(self):
        """
        L{Link.state} names every state of both machines.
        """
        from prokshy.link.session import _STATE_NAMES

        for machine in MACHINES:
            for state in _machines.states(machine._machine):
                self.assertIn(state, _STATE_NAMES)

    def test_currentFollowsTheMachine(self):
        """
        The lifecycle's C{current} is kept by the machine's tracer: it
        names the state after every input, before the outputs run.
        """
        deterministicNonces(self, seed=2)
        h, g = Recorder(), Recorder()
        pair = LinkPair(h, g, None, LinkConfig(quietPings=3))
        self.addCleanup(pair.stop)
        seen = []
        h.linkUp = lambda link, info: seen.append(link._lifecycle.current)
        self.assertEqual((pair.host.state, pair.guest.state), ("IDLE", "IDLE"))
        pair.connect()
        self.assertEqual(seen, ["up"])
        self.assertEqual((pair.host.state, pair.guest.state), ("UP", "UP"))
        pair.channel.host.blackhole = True
        pair.run(until=lambda: pair.guest.quiet)
        self.assertEqual((pair.guest._lifecycle.current, pair.guest.state), ("quiet", "UP"))
        pair.host.stop()
        self.assertEqual(pair.host.state, "STOPPED")


class TimerOwnershipTests(unittest.SynchronousTestCase):
    """
    Entering a state starts its timers and leaving it stops them: at every
    step, the clock holds exactly the timers of the states the two links
    are in, and nothing else.
    """

    HOST_UP = {"ping", "dead", "rehello"}
    GUEST_UP = {"ping", "dead", "quiet"}

    def setUp(self):
        deterministicNonces(self, seed=9)
        self.h, self.g = Recorder(), Recorder()
        self.pair = LinkPair(
            self.h, self.g, None, LinkConfig(quietPings=3, deadAfter=20.0), latency=0.01
        )
        self.addCleanup(self.pair.stop)

    def check(self, host, guest):
        pair = self.pair
        self.assertEqual(pair.host.runningTimers(), host)
        self.assertEqual(pair.guest.runningTimers(), guest)
        self.assertEqual(len(pair.clock.getDelayedCalls()), len(host) + len(guest))

    def test_host(self):
        pair = self.pair
        self.check(set(), set())
        pair.guest.start()
        pair.channel.guest.receiver = None
        pair.host.start()
        self.check({"hello"}, set())
        pair.run(duration=1.2)
        self.assertEqual(pair.host.state, "HELLO")
        self.check({"hello"}, set())
        pair.channel.guest.receiver = pair.guest
        pair.run(until=lambda: pair.up)
        self.check(self.HOST_UP, self.GUEST_UP)
        # Frames in flight: the retransmission timer too, until acknowledged.
        pair.host.send(frames.DATA, 1, b"x")
        self.check(self.HOST_UP | {"retransmit"}, self.GUEST_UP)
        pair.run(until=lambda: not pair.host.sender.unacked)
        self.check(self.HOST_UP, self.GUEST_UP)
        # The guest falls silent: the host says hello again (same timers),
        # then declares it dead and starts over.
        pair.guest.stop()
        self.check(self.HOST_UP, set())
        pair.run(until=lambda: self.h.downs)
        self.assertEqual(pair.host.state, "HELLO")
        self.check({"hello"}, set())
        pair.host.stop()
        self.check(set(), set())

    def test_hostRestartsOnEveryEnd(self):
        """
        Every way a host session ends leaves only the hello timer.
        """
        pair = self.pair
        pair.connect()
        pair.host.endSession("test")
        self.assertEqual(pair.host.state, "HELLO")
        self.assertEqual(pair.host.runningTimers(), {"hello"})
        pair.run(until=lambda: pair.up)
        pair.guest.goodbye()
        pair.run(until=lambda: len(self.h.downs) == 2)
        self.assertIn("goodbye", str(self.h.downs[1]))
        self.assertEqual(pair.host.state, "HELLO")
        self.assertEqual(pair.host.runningTimers(), {"hello"})
        self.assertEqual(pair.guest.runningTimers(), set())

    def test_guest(self):
        pair = self.pair
        pair.connect()
        self.check(self.HOST_UP, self.GUEST_UP)
        # The host falls silent: the guest goes quiet (only the dead watch
        # is left), and resumes when it hears the host again.
        pair.channel.host.blackhole = True
        pair.run(until=lambda: pair.guest.quiet)
        self.assertEqual(pair.guest.state, "UP")
        self.assertEqual(pair.guest.runningTimers(), {"dead"})
        pair.guest.send(frames.DATA, 2, b"held back")
        self.assertEqual(pair.guest.runningTimers(), {"dead"})
        pair.channel.host.blackhole = False
        pair.run(until=lambda: not pair.guest.quiet)
        self.assertEqual(pair.guest.runningTimers(), self.GUEST_UP | {"retransmit"})
        pair.run(until=lambda: self.h.frames)
        pair.run(until=lambda: not pair.guest.sender.unacked)
        self.check(self.HOST_UP, self.GUEST_UP)
        pair.guest.endSession("a new client")
        self.assertEqual(pair.guest.state, "IDLE")
        self.assertEqual(pair.guest.runningTimers(), set())
        pair.run(until=lambda: pair.up and len(self.g.ups) == 2)
        self.check(self.HOST_UP, self.GUEST_UP)
        pair.guest.stop()
        self.assertEqual(pair.guest.runningTimers(), set())

    def test_quietGuestDies(self):
        """
        A guest quiet until C{deadAfter} ends the session and stops its
        last timer.
        """
        pair = self.pair
        pair.connect()
        pair.host.stop()
        pair.run(until=lambda: self.g.downs)
        self.assertEqual(pair.guest.state, "IDLE")
        self.assertEqual(pair.guest.stats["quiet"], 1)
        self.check(set(), set())
