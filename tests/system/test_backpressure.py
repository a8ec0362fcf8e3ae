"""
Backpressure end to end, from the issue: "a command writing 1 GiB to a
reader that reads slowly keeps both processes' memory bounded. Assert a
bound."

The guest agent runs as a real C{twistd -n prokshy-guest} process on a
simulated bhyve port; the host is this process. The command writes 1 GiB of
zeros; the host reads part of it slowly, then not at all, while the
resident memory of both processes is sampled. The measurements are logged
(C{backpressure:} lines in trial's C{test.log}).
"""

import os

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from prokshy.host.client import HOST_WINDOW
from prokshy.streams.stream import StreamReset
from tests.harness import Rig, bytesWritten, groupAlive, rssBytes, sleep, waitFor, withTimeout

MiB = 1024 * 1024

#: What the command writes.
TOTAL = 1024 * MiB
#: What the host reads, slowly.
READ = 48 * MiB
#: The slow reader: after each burst it pauses the stream this long.
BURST = MiB
PAUSE = 0.03
#: The bound asserted on each process's memory growth.
MEMORY_BOUND = 64 * MiB
#: The bound on bytes written by the command but not yet read by the host:
#: the pipe, the agent's stream buffer and window, the pty, the simulator
#: and the sockets hold at most a few hundred KiB each.
BUFFERED_BOUND = 8 * MiB

_log = Logger()


class SlowReader:
    """
    Consumes an exec stream's stdout slowly: after every C{burst} bytes it
    pauses the stream (so no credit goes back to the guest) for C{pause}
    seconds. L{stop} pauses it for good.
    """

    def __init__(self, burst, pause):
        self.burst = burst
        self.pause = pause
        self.stream = None
        self.received = 0
        self.nonZero = 0
        self._sinceBurst = 0
        self._resumeCall = None
        self.stopped = False

    def dataReceived(self, data):
        self.received += len(data)
        self.nonZero += len(data) - data.count(0)
        self._sinceBurst += len(data)
        if self._sinceBurst >= self.burst and self.stream is not None and not self.stopped:
            self._sinceBurst = 0
            self.stream.pauseProducing()
            self._resumeCall = reactor.callLater(self.pause, self._resume)

    def _resume(self):
        self._resumeCall = None
        if not self.stopped:
            self.stream.resumeProducing()

    def stop(self):
        self.stopped = True
        self.stream.pauseProducing()
        if self._resumeCall is not None and self._resumeCall.active():
            self._resumeCall.cancel()
        self._resumeCall = None


class Sampler:
    """
    Samples the resident memory of the agent and of this process (and what
    the command has written) every C{interval} seconds.
    """

    def __init__(self, agentPid, interval=0.05):
        self.agentPid = agentPid
        self.commandPid = None
        self.agentBase = rssBytes(agentPid)
        self.hostBase = rssBytes(os.getpid())
        self.agentPeak = self.agentBase
        self.hostPeak = self.hostBase
        self.samples = 0
        self._loop = task.LoopingCall(self.sample)
        self._loop.start(interval)

    def sample(self):
        self.samples += 1
        self.agentPeak = max(self.agentPeak, rssBytes(self.agentPid))
        self.hostPeak = max(self.hostPeak, rssBytes(os.getpid()))

    def stop(self):
        if self._loop.running:
            self._loop.stop()

    @property
    def agentGrowth(self):
        return self.agentPeak - self.agentBase

    @property
    def hostGrowth(self):
        return self.hostPeak - self.hostBase


class BackpressureTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_slowReaderBoundsMemory(self):
        """
        A command writing 1 GiB to a host that reads slowly: both the agent
        and the host stay within L{MEMORY_BOUND} of their starting memory,
        the command is held back (blocked, not finished) by flow control,
        and cancelling it kills it.
        """
        rig = Rig(self)
        rig.addCommand("flood", "echo $$ >&2; exec head -c %d /dev/zero" % (TOTAL,))
        rig.startSim()
        agent = rig.spawnAgent("--max-output", "0", "--timeout", "0")
        yield withTimeout(agent.started, 20, "twistd to start")
        host = yield rig.connectHost(timeout=20)
        # Warm up both sides (imports, first process spawn) before the baseline.
        result = yield host.session.exec("cat", stdin=b"x" * MiB)
        self.assertEqual(len(result.stdout), MiB)
        yield sleep(0.2)

        sampler = Sampler(agent.pid)
        self.addCleanup(sampler.stop)
        reader = SlowReader(BURST, PAUSE)
        stderr = bytearray()
        startedAt = reactor.seconds()
        running = yield host.session.execStream("flood", reader.dataReceived, stderr.extend)
        reader.stream = running.stream
        yield waitFor(lambda: b"\n" in stderr, "the command's pid")
        pid = int(bytes(stderr))
        self.assertTrue(groupAlive(pid))

        # Phase 1: read slowly.
        yield waitFor(lambda: reader.received >= READ, "%d bytes" % (READ,), timeout=30)
        readFor = reactor.seconds() - startedAt
        self.assertEqual(reader.nonZero, 0)

        # Phase 2: stop reading. The command must stop too.
        reader.stop()
        yield sleep(0.5)
        written1, received1 = bytesWritten(pid), reader.received
        toHost1 = rig.sim.counters.bytesToHost
        yield sleep(0.7)
        written2, received2 = bytesWritten(pid), reader.received
        toHost2 = rig.sim.counters.bytesToHost
        sampler.sample()
        sampler.stop()

        self.assertFalse(running.result.called, "the command finished: it ran away")
        self.assertTrue(groupAlive(pid), "the command died")
        self.assertEqual(received2, received1, "the paused stream still delivered")
        # Nothing but keepalives crosses the channel while the reader is paused.
        self.assertLess(toHost2 - toHost1, 4096)
        # The stream holds at most its window of undelivered data. Credit
        # counts stdout and stderr together, and the command's stderr (its
        # pid line) was delivered to another callback than the reader's.
        self.assertLessEqual(running.stream.bytesIn - reader.received - len(stderr), HOST_WINDOW)
        if written1 is not None:
            self.assertEqual(written2, written1, "the command kept writing")
            self.assertLess(written1 - received1, BUFFERED_BOUND)
        _log.info(
            "backpressure: read {read} MiB in {secs:.2f} s; agent RSS {abase:.1f} -> peak "
            "{apeak:.1f} MiB (+{agrow:.1f}); host RSS {hbase:.1f} -> peak {hpeak:.1f} MiB "
            "(+{hgrow:.1f}); command wrote {written} bytes, host read {received} "
            "(buffered {buffered}); {samples} samples",
            read=READ // MiB,
            secs=readFor,
            abase=sampler.agentBase / MiB,
            apeak=sampler.agentPeak / MiB,
            agrow=sampler.agentGrowth / MiB,
            hbase=sampler.hostBase / MiB,
            hpeak=sampler.hostPeak / MiB,
            hgrow=sampler.hostGrowth / MiB,
            written=written1,
            received=received1,
            buffered=None if written1 is None else written1 - received1,
            samples=sampler.samples,
        )
        self.assertGreater(sampler.samples, 10)
        self.assertLess(sampler.agentGrowth, MEMORY_BOUND)
        self.assertLess(sampler.hostGrowth, MEMORY_BOUND)

        # Phase 3: cancel.
        running.cancel()
        yield self.assertFailure(running.result, StreamReset)
        yield waitFor(lambda: not groupAlive(pid), "the command to be killed", timeout=5)
        info = yield host.session.info()
        self.assertEqual(info["running"], 0)
