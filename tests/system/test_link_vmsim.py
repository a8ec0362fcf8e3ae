"""
Issue 8, section 5, end to end: through a real C{prokshy-vmsim --mode
bhyve} process with no faults and a real guest agent process (twistd), a
transfer each way shows no retransmission and no resync on either side.

The test moves L{MIB} MiB each way; C{bench/lossless.py} runs the same with
100 MiB each way.
"""

import os
import re
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from prokshy.guest.agent import TTY_WINDOW
from tests.harness import PACKAGE_ROOT, Rig, waitFor, withTimeout

MIB = 16

#: What every guest link logs when its session ends (L{prokshy.link.session}).
_ENDED = re.compile(
    rb"session ended: (?P<reason>.*?) \(retransmits=(?P<retransmits>\d+) "
    rb"checkpoints=(?P<checkpoints>\d+) resyncs=(?P<resyncs>\d+) "
    rb"gaps=(?P<gaps>\d+) duplicates=(?P<duplicates>\d+)\)"
)


class SimProcess(ProcessProtocol):
    """
    C{prokshy-vmsim} as a process; C{ended} fires when it exits.
    """

    def __init__(self):
        self.output = bytearray()
        self.ended = Deferred()
        self.isEnded = False

    def outReceived(self, data):
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.isEnded = True
        self.ended.callback(None)


def spawnSim(testCase, rig, *extra):
    """
    Start C{python -m prokshy.sim.vmsim --mode bhyve} on C{rig}'s socket and
    device link; it is stopped after the test.
    """
    sim = SimProcess()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
    argv = [
        sys.executable, "-m", "prokshy.sim.vmsim", "--mode", "bhyve",
        "--socket", rig.socketPath, "--device-link", rig.devicePath,
    ] + list(extra)
    sim.process = reactor.spawnProcess(sim, sys.executable, argv, env=env, path=rig.dir)

    def stop():
        if sim.isEnded:
            return None
        sim.process.signalProcess("TERM")
        return sim.ended

    testCase.addCleanup(stop)
    return sim


def guestCounters(output):
    """
    The counters of the last session the agent's log says ended.
    """
    found = list(_ENDED.finditer(bytes(output)))
    if not found:
        raise AssertionError("no session end in the agent's log:\n%s" % (output[-3000:].decode("utf-8", "replace"),))
    last = found[-1]
    return last.group("reason").decode(), {
        k: int(last.group(k)) for k in ("retransmits", "checkpoints", "resyncs", "gaps", "duplicates")
    }


class LosslessTests(TestCase):
    timeout = 240

    @inlineCallbacks
    def test_zeroRetransmissions(self):
        """
        %d MiB from the guest, then %d MiB to it, through bhyve's 23040-byte
        queue: the host's counters (what C{--status} shows) and the guest's
        show no retransmission, no resync, no gap and no duplicate.
        """
        rig = Rig(self, commands={
            "zeros": 'exec head -c "$(cat)" /dev/zero',
            "count": "exec wc -c",
        })
        spawnSim(self, rig)
        yield waitFor(lambda: os.path.exists(rig.devicePath), "the simulator's device", 10)
        agent = rig.spawnAgent("--max-output", "0", "--timeout", "0")
        yield withTimeout(agent.started, 30, "the agent to open its device")
        host = yield rig.connectHost(timeout=20)
        n = MIB * 1024 * 1024
        self.assertEqual(host.link.info.sendWindow, TTY_WINDOW)

        down = yield withTimeout(host.session.exec("zeros", stdin=b"%d" % (n,)), 120, "zeros")
        self.assertEqual(len(down.stdout), n)
        self.assertEqual(down.stdout.count(b"\0"), n)
        up = yield withTimeout(host.session.exec("count", stdin=b"u" * n), 120, "count")
        self.assertEqual(int(up.stdout), n)

        snap = host.link.snapshot()
        for key in ("retransmits", "resyncs", "skipped_bytes", "gaps", "duplicates", "stale"):
            self.assertEqual(snap[key], 0, (key, snap))
        self.assertEqual(snap["sessions"], 1)
        host.link.goodbye("test over")
        yield waitFor(lambda: _ENDED.search(bytes(agent.output)), "the guest's session to end", 10)
        reason, guest = guestCounters(agent.output)
        self.assertIn("goodbye", reason)
        self.assertEqual(
            guest, dict(guest, retransmits=0, resyncs=0, gaps=0, duplicates=0), guest
        )

    test_zeroRetransmissions.__doc__ %= (MIB, MIB)
