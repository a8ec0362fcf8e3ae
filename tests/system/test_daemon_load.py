"""
Line-protocol clients through the daemon under load, with the guest agent's
DEFAULT limits (C{--max-concurrency 8 --max-queue 64}): every answer must be
right.  The guest refuses opens beyond its limits as C{busy}; the daemon
queues them per VM and retries them as commands end (L{prokshy.host.queue}).

The daemon runs in this process on real sockets; the simulated bhyve VM and
its agent run in a child process (C{HostHarness(external=True)}), so each of
the 1,000 commands is a real process spawned by a real agent.  Counts are
asserted, not times.
"""

import sys
import time

from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.hostharness import HostHarness
from tests.system.test_load import raiseFileLimit

CLIENTS = 200
COMMANDS = 5


class DefaultGuestLimitsTests(TestCase):
    timeout = 180

    @inlineCallbacks
    def test_200LineClientsX5Commands(self):
        """
        200 concurrent line-protocol clients, each running 5 commands one
        after the other (a connection per command, as C{nc} does), all
        through the daemon to one VM whose agent has its default limits:
        all 1,000 answers are exact.  Before the daemon queued requests,
        the guest refused about 20% of them as C{busy} and those clients
        got zero bytes and a normal EOF.
        """
        restore = raiseFileLimit()
        if restore is not None:
            self.addCleanup(restore)
        h = yield HostHarness(self, tcp=False, external=True).start()
        report = {"ok": 0, "bad": []}

        @inlineCallbacks
        def client(i):
            for j in range(COMMANDS):
                tag = b"%d.%d" % (i, j)
                out = yield h.legacy(b"shout " + tag + b"\n", halfClose=True)
                if out == b"got:" + tag:
                    report["ok"] += 1
                else:
                    report["bad"].append((i, j, out[:200]))

        start = time.monotonic()
        results = yield DeferredList([client(i) for i in range(CLIENTS)], consumeErrors=True)
        elapsed = time.monotonic() - start
        failures = [r for ok, r in results if not ok]
        if failures:
            failures[0].raiseException()
        queue = h.daemon.vms["vm1"].queue
        sys.stdout.write(
            "\nload: %d line clients x %d commands in %.1f s; guest busy refusals retried: %d; "
            "largest wait queue: %d; learned limit: %r\n"
            % (CLIENTS, COMMANDS, elapsed, queue.stats["retried"], queue.stats["peak_waiting"], queue.limit)
        )
        self.assertEqual(report["bad"][:5], [])
        self.assertEqual(report["ok"], CLIENTS * COMMANDS)
        self.assertEqual(queue.waiting, 0)
        self.assertEqual(queue.inFlight, 0)
