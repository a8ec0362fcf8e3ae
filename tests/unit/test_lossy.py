"""
The headline test: 1,000 random mixed operations (execs, large stdin, large
stdout, concurrent streams) through a channel that drops 1% of 2 KiB chunks
and corrupts 0.1% of bytes.  Everything arrives exactly once and in order,
or fails with a clear error.  Seeded, so runs repeat.

The guest side is emulated in memory: an C{"exec"} stream writes C{out}
pseudo-random bytes to stdout (DATA) and C{err} to stderr, echoes its stdin
to stdout, and on stdin EOF sends EXIT C{{"code": code}} and closes.  Some
operations name a missing command (refused) and some "crash" (the guest
resets the stream after part of its output), so the clear-error paths are
exercised too.
"""

import random

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.trial import unittest
from zope.interface import implementer

from prokshy.streams.interfaces import IExecStreamProtocol, IStreamProtocol
from prokshy.streams.mux import Mux
from prokshy.streams.stream import StreamRefused, StreamReset
from prokshy.wire import frames
from prokshy.testing import LinkPair, deterministicNonces

KiB = 1024
MiB = 1024 * KiB


def generate(seed, n):
    """
    C{n} deterministic pseudo-random bytes.
    """
    return random.Random(seed).randbytes(n) if n else b""


@implementer(IStreamProtocol)
class GuestExec(Protocol):
    """
    The guest's side of an emulated exec stream.
    """

    def connectionMade(self):
        args = self.transport.args
        self.args = args
        out = generate(args["seed"], args["out"])
        if args.get("crash"):
            # Write part of the output, then fail hard.
            self.transport.write(out[: len(out) // 2])
            self.transport.abort("crashed", "the command died")
            return
        self.transport.write(out)
        self.transport.writeStderr(generate(args["seed"] + 1, args["err"]))

    def dataReceived(self, data):
        self.transport.write(data)

    def eofReceived(self):
        self.transport.sendControl(frames.EXIT, {"code": self.args["code"]})
        self.transport.loseConnection()


def guestOpen(stream):
    if stream.kind != "exec":
        raise StreamRefused("unsupported", stream.kind)
    if stream.args.get("name") == "missing":
        raise StreamRefused("no-such-command", "missing")
    return GuestExec()


@implementer(IExecStreamProtocol)
class HostExec(Protocol):
    """
    The host's side: writes stdin, closes it, records what comes back.
    """

    def __init__(self, op):
        self.op = op
        self.stdout = []
        self.stderr = []
        self.exit = None
        self.atExit = None
        self.reason = None

    def connectionMade(self):
        if self.op.stdin:
            self.transport.write(self.op.stdin)
        self.transport.writeEof()

    def dataReceived(self, data):
        self.stdout.append(data)

    def stderrReceived(self, data):
        self.stderr.append(data)

    def exitReceived(self, status):
        if self.exit is not None:
            raise AssertionError("EXIT twice")
        self.exit = status
        self.atExit = (sum(map(len, self.stdout)), sum(map(len, self.stderr)))

    def connectionLost(self, reason):
        self.reason = reason
        self.op.finished()


class Operation:
    def __init__(self, index, kind, stdin, out, err, code, seed):
        self.index = index
        self.kind = kind
        self.stdin = stdin
        self.out = out
        self.err = err
        self.code = code
        self.seed = seed
        self.protocol = None
        self.failure = None
        self.done = False
        self.onDone = None

    def args(self):
        args = {"seed": self.seed, "out": self.out, "err": self.err, "code": self.code}
        args["name"] = "missing" if self.kind == "refused" else "cmd%d" % (self.index,)
        if self.kind == "crash":
            args["crash"] = True
        return args

    def finished(self):
        if not self.done:
            self.done = True
            self.onDone(self)

    def failed(self, failure):
        self.failure = failure
        self.finished()

    @property
    def expectedStdout(self):
        return generate(self.seed, self.out) + self.stdin

    @property
    def expectedStderr(self):
        return generate(self.seed + 1, self.err)


def makeOperations(rng, n):
    """
    A seeded mix: mostly small execs, some medium, a few with large stdin
    (up to 256 KiB) or large stdout (up to 1 MiB), and a few refused or
    crashing ones.
    """
    ops = []
    for i in range(n):
        r = rng.random()
        code = rng.randrange(256)
        seed = rng.randrange(2**32)
        if r < 0.012:
            size = 256 * KiB if i % 3 == 0 else rng.randrange(32 * KiB, 256 * KiB)
            op = Operation(i, "bigin", rng.randbytes(size), rng.randrange(512), 0, code, seed)
        elif r < 0.018:
            if any(o.out == MiB for o in ops):
                size = rng.randrange(64 * KiB, 512 * KiB)
            else:
                size = MiB
            op = Operation(i, "bigout", b"", size, rng.randrange(4 * KiB), code, seed)
        elif r < 0.07:
            op = Operation(
                i, "medium", rng.randbytes(rng.randrange(16 * KiB)),
                rng.randrange(16 * KiB), rng.randrange(8 * KiB), code, seed,
            )
        elif r < 0.085:
            op = Operation(i, "refused", b"x", 10, 10, code, seed)
        elif r < 0.095:
            op = Operation(i, "crash", b"", rng.randrange(1, 20 * KiB), 0, code, seed)
        else:
            op = Operation(
                i, "small", rng.randbytes(rng.randrange(600)),
                rng.randrange(1200), rng.randrange(300), code, seed,
            )
        ops.append(op)
    return ops


class LossyChannelTests(unittest.SynchronousTestCase):
    SEED = 20251121
    OPERATIONS = 1000
    MAX_CONCURRENT = 20

    def setUp(self):
        deterministicNonces(self, seed=self.SEED)

    def test_thousandOperations(self):
        """
        1,000 random mixed operations with up to 20 at once, over a channel
        that drops 1% of 2 KiB chunks and corrupts 0.1% of bytes: every
        byte arrives exactly once and in order, every exit status arrives
        after the output before it, and the failures are the expected
        refusals and resets, with their codes.
        """
        rng = random.Random(self.SEED)
        ops = makeOperations(rng, self.OPERATIONS)
        kinds = {op.kind for op in ops}
        self.assertEqual(kinds, {"small", "medium", "bigin", "bigout", "refused", "crash"})
        self.assertIn(256 * KiB, [len(op.stdin) for op in ops])
        self.assertIn(1 * MiB, [op.out for op in ops])

        hostMux = Mux("host")
        guestMux = Mux("guest", guestOpen)
        pair = LinkPair(
            hostMux,
            guestMux,
            seed=self.SEED,
            dropChunkRate=0.01,
            chunkSize=2048,
            corruptByteRate=0.001,
            latency=0.002,
        )
        self.addCleanup(pair.stop)
        pair.connect()

        queue = list(ops)
        active = set()
        finished = []
        state = {"target": 1, "peak": 0}

        def onDone(op):
            active.discard(op)
            finished.append(op)
            launch()

        def launch():
            while queue and len(active) < state["target"]:
                op = queue.pop(0)
                op.onDone = onDone
                op.protocol = HostExec(op)
                active.add(op)
                state["peak"] = max(state["peak"], len(active))
                hostMux.openStream("exec", op.args(), op.protocol).addErrback(op.failed)
                if rng.random() < 0.05:
                    state["target"] = rng.randrange(1, self.MAX_CONCURRENT + 1)

        state["target"] = self.MAX_CONCURRENT
        launch()
        pair.run(until=lambda: len(finished) == len(ops), duration=3600, maxSteps=2000000)
        self.assertEqual(len(finished), len(ops))
        self.assertEqual(state["peak"], self.MAX_CONCURRENT)
        # The guest's side of the last streams ends when the host's CLOSE
        # reaches it.
        self.assertTrue(pair.run(until=lambda: not guestMux.streams, duration=60))

        for op in ops:
            self._checkOperation(op)

        # One session throughout, and the channel really was hostile.
        host, guest = pair.host, pair.guest
        self.assertEqual((host.stats["sessions"], guest.stats["sessions"]), (1, 1))
        self.assertEqual((hostMux.streams, guestMux.streams), ({}, {}))
        for end in pair.channel.ends:
            self.assertGreater(end.droppedChunks, 10)
            self.assertGreater(end.corruptedBytes, 100)
        self.assertGreater(host.stats["retransmits"], 10)
        self.assertGreater(guest.stats["retransmits"], 10)
        self.assertGreater(guest.decoder.skipped, 0)
        self.assertEqual(host.stats["stale"] + guest.stats["stale"], 0)

    def _checkOperation(self, op):
        where = "operation %d (%s)" % (op.index, op.kind)
        p = op.protocol
        stdout, stderr = b"".join(p.stdout), b"".join(p.stderr)
        if op.kind == "refused":
            self.assertIsNotNone(op.failure, where)
            op.failure.trap(StreamRefused)
            self.assertEqual(op.failure.value.code, "no-such-command", where)
            self.assertIsNone(p.reason, where)
            return
        self.assertIsNone(op.failure, where)
        if op.kind == "crash":
            p.reason.trap(StreamReset)
            reset = p.reason.value
            self.assertEqual((reset.code, reset.message), ("crashed", "the command died"), where)
            self.assertTrue(op.expectedStdout.startswith(stdout), where)
            self.assertIsNone(p.exit, where)
            return
        p.reason.trap(ConnectionDone)
        self.assertEqual(len(stdout), len(op.expectedStdout), where)
        self.assertEqual(stdout, op.expectedStdout, where)
        self.assertEqual(stderr, op.expectedStderr, where)
        self.assertEqual(p.exit, {"code": op.code}, where)
        self.assertEqual(p.atExit, (len(stdout), len(stderr)), where)

    def test_channelRepeats(self):
        """
        The same seed gives the same faults, hence the same run.
        """

        def once():
            deterministicNonces(self, seed=1)
            hostMux, guestMux = Mux("host"), Mux("guest", guestOpen)
            pair = LinkPair(
                hostMux, guestMux, seed=99, dropChunkRate=0.05, corruptByteRate=0.002, latency=0.002
            )
            pair.connect()
            op = Operation(0, "medium", generate(5, 50000), 30000, 2000, 7, 11)
            op.protocol = HostExec(op)
            op.onDone = lambda op: None
            hostMux.openStream("exec", op.args(), op.protocol)
            pair.run(until=lambda: op.done, duration=600)
            pair.stop()
            self._checkOperation(op)
            ends = [
                (e.droppedChunks, e.corruptedBytes, e.bytesWritten, e.bytesDelivered)
                for e in pair.channel.ends
            ]
            return ends, pair.clock.seconds(), pair.host.snapshot()

        first, second = once(), once()
        self.assertEqual(first, second)
        self.assertGreater(first[0][0][0], 0)
