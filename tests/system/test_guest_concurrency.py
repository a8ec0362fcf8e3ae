"""
The guest agent's concurrency defaults (issue 10): derived from its CPUs,
they let hundreds of concurrent execs wait for a slot, in order, instead of
refusing them C{busy} (the old 8 running and 64 waiting refused most of
500), within a documented memory bound.

The derivation is unit-tested here too; the load test runs the real agent
(twistd, its default limits) with real processes, and asserts counts and a
memory bound, never a time.
"""

import os

from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from prokshy.tap import guest
from tests.harness import Rig, rssBytes, waitFor, withTimeout

CLIENTS = 500
BLOCKERS_PER_CPU = 4


class DerivationTests(SynchronousTestCase):
    def parse(self, *args):
        options = guest.Options()
        options.parseOptions(["--device", "/dev/x"] + list(args))
        return options

    def test_concurrencyFromCPUs(self):
        """
        4 commands per CPU, at least 8, at most 64.
        """
        self.assertEqual(
            [guest.defaultConcurrency(n) for n in (1, 2, 3, 8, 16, 64)], [8, 8, 12, 32, 64, 64]
        )

    def test_queueFillsTheExecStreams(self):
        """
        The queue takes what the running commands leave of 768 exec
        streams (at least 64), so that running + waiting stays within a
        session's 1024 streams.
        """
        self.assertEqual(guest.EXEC_STREAMS, 768)
        self.assertEqual([guest.defaultQueue(c) for c in (8, 32, 64, 760, 2000)], [760, 736, 704, 64, 64])

    def test_cpuCount(self):
        """
        The CPUs the agent may run on: its affinity where there is one.
        """
        if hasattr(os, "sched_getaffinity"):
            self.assertEqual(guest.cpuCount(), len(os.sched_getaffinity(0)))
        else:
            self.assertEqual(guest.cpuCount(), os.cpu_count() or 1)

    def test_optionDefaults(self):
        """
        Without the options, the agent takes the derived defaults; the
        queue follows a given --max-concurrency; either can be set.
        """
        self.patch(guest, "cpuCount", lambda: 4)
        options = self.parse()
        self.assertEqual((options["max-concurrency"], options["max-queue"]), (16, 752))
        options = self.parse("--max-concurrency", "40")
        self.assertEqual((options["max-concurrency"], options["max-queue"]), (40, 728))
        options = self.parse("--max-concurrency", "8", "--max-queue", "64")
        self.assertEqual((options["max-concurrency"], options["max-queue"]), (8, 64))

    def test_memoryBound(self):
        """
        The documented bound: at most 266 KiB per waiting exec and 330 KiB
        per running one, so about 200 MiB at worst for the defaults.
        """
        self.assertEqual((guest.QUEUED_EXEC_BYTES, guest.RUNNING_EXEC_BYTES), (266 * 1024, 330 * 1024))
        for cpus in (1, 2, 16, 64):
            c = guest.defaultConcurrency(cpus)
            worst = c * guest.RUNNING_EXEC_BYTES + guest.defaultQueue(c) * guest.QUEUED_EXEC_BYTES
            self.assertLess(worst, 210 * 1024 * 1024)


class ConcurrentExecsTests(TestCase):
    timeout = 180

    @inlineCallbacks
    def test_500ConcurrentExecsServed(self):
        """
        With every slot held by a command waiting for its stdin, 500 more
        execs all wait (none refused), the agent's memory grows by less
        than 64 KiB for each, and once the slots free up every one of them
        runs, with its own output, in the order they came.
        """
        if not os.path.exists("/proc/self/status"):
            self.skipTest("needs /proc")
        rig = Rig(self)
        rig.addCommand("order", "exec cat")
        rig.startSim()
        agent = rig.spawnAgent()  # the default limits
        yield withTimeout(agent.started, 20, "twistd to start")
        host = yield rig.connectHost(timeout=20)
        session = host.session
        info = yield session.info()
        running, queue = info["max_concurrency"], info["max_queue"]
        self.assertEqual(running, guest.defaultConcurrency())
        self.assertGreaterEqual(queue, CLIENTS)
        blockers = []
        for _ in range(running):
            blocker = yield session.execStream("cat", lambda data: None, lambda data: None)
            blockers.append(blocker)
        yield waitFor(lambda: len(blockers) == running, "the blockers")
        before = rssBytes(agent.pid)
        started = []
        done = []
        results = []
        for i in range(CLIENTS):
            d = session.exec("order", stdin=b"%d\n" % (i,))
            d.addBoth(lambda r, i=i: (results.append((i, r)), done.append(i)))
            started.append(d)

        def waiting():
            return session.info().addCallback(lambda info: info["waiting"])

        counts = []

        @inlineCallbacks
        def allWaiting():
            n = yield waiting()
            counts.append(n)
            return n == CLIENTS

        for _ in range(200):
            if (yield allWaiting()) or done:
                break
            yield waitFor(lambda: True, "a tick", timeout=0.05)
        self.assertEqual(done, [], "an exec ended while every slot was held")
        self.assertEqual(counts[-1], CLIENTS)
        grown = rssBytes(agent.pid) - before
        self.assertLess(grown, CLIENTS * 64 * 1024, grown)
        print("\n%d execs waiting: agent RSS grew %d KiB (%.1f KiB each)" % (CLIENTS, grown // 1024, grown / 1024 / CLIENTS))
        for blocker in blockers:
            blocker.closeStdin()
        yield withTimeout(DeferredList(started), 120, "the 500 execs")
        refused = [(i, r) for i, r in results if not hasattr(r, "exitStatus")]
        self.assertEqual(refused, [])
        self.assertEqual(sorted(i for i, _ in results), list(range(CLIENTS)))
        for i, r in results:
            self.assertEqual((r.exitStatus, r.stdout), (0, b"%d\n" % (i,)))
        # Started in the order they came (the slots are a FIFO), so each
        # ended near its place: never behind more than the slots' worth of
        # later ones (a loose bound: how long each runs varies).
        self.assertLessEqual(max(abs(i - k) for k, i in enumerate(done)), 4 * running, done)
        for blocker in blockers:
            status = yield blocker.result
            self.assertEqual(status.exitStatus, 0)

