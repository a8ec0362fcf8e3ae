"""
The whole stack as separate processes over a lossy channel: the real
C{prokshy-vmsim} in bhyve mode with its fault options on, the real guest
agent (C{twistd -n prokshy-guest}) and the real C{prokshy} CLI.
"""

import hashlib
import os
import random
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.harness import PACKAGE_ROOT, Rig, waitFor, withTimeout

FAULTS = (
    "--seed", "7",
    "--drop-rate", "0.01",
    "--dup-rate", "0.01",
    "--corrupt-rate", "0.0002",
    "--fault-direction", "both",
)


def environment():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
    return env


class _Child(ProcessProtocol):
    """
    A child process (the simulator): its output is kept for diagnosis.
    """

    def __init__(self):
        self.output = b""
        self.ended = Deferred()
        self.isEnded = False

    def childDataReceived(self, fd, data):
        self.output += data

    def processEnded(self, reason):
        self.isEnded = True
        self.ended.callback(None)


class FaultyChannelCLITests(TestCase):
    timeout = 120

    @inlineCallbacks
    def setUp(self):
        self.rig = Rig(self)
        self.rig.addCommand("digest", "exec sha256sum | cut -d' ' -f1")
        self.rig.addCommand("split", "head -c 300000 /dev/zero | tr '\\0' o; head -c 200000 /dev/zero | tr '\\0' e >&2; exit 5")
        sim = _Child()
        argv = [
            sys.executable, "-m", "prokshy.sim.vmsim",
            "--socket", self.rig.socketPath, "--device-link", self.rig.devicePath,
            "--mode", "bhyve",
        ] + list(FAULTS)
        reactor.spawnProcess(sim, sys.executable, argv, env=environment(), path=self.rig.dir)
        self.addCleanup(self._stop, sim)
        yield waitFor(lambda: os.path.exists(self.rig.devicePath), "prokshy-vmsim to start", timeout=10)
        self.sim = sim
        agent = self.rig.spawnAgent()
        yield withTimeout(agent.started, 15, "the agent to start")

    def _stop(self, child):
        if child.isEnded:
            return None
        child.transport.signalProcess("TERM")
        return child.ended

    def cli(self, *args, stdin=None):
        # --protocol framed: on a channel this lossy, auto mode could lose
        # both of its hellos within the 1 s before it falls back.
        argv = [
            "-m", "prokshy.cli.main", "--socket-path", self.rig.socketPath, "--protocol", "framed",
        ] + list(args)
        if stdin is None:
            return getProcessOutputAndValue(sys.executable, argv, env=environment(), reactor=reactor)
        path = os.path.join(self.rig.dir, "stdin")
        with open(path, "wb") as f:
            f.write(stdin)
        shell = "exec %s %s < %s" % (
            sys.executable, " ".join("'%s'" % a for a in argv), path,
        )
        return getProcessOutputAndValue("/bin/sh", ["-c", shell], env=environment(), reactor=reactor)

    @inlineCallbacks
    def test_stdinStreamedExactly(self):
        """
        Two MiB streamed from the CLI's stdin reach the command byte for
        byte through a channel that drops, duplicates and corrupts bytes.
        """
        data = random.Random(3).randbytes(2 * 1024 * 1024)
        out, err, code = yield self.cli("--command", "digest", "--stdin", stdin=data)
        self.assertEqual((code, err), (0, b""))
        self.assertEqual(out.strip().decode(), hashlib.sha256(data).hexdigest())

    @inlineCallbacks
    def test_outputSeparatedAndStatus(self):
        """
        stdout and stderr arrive complete and apart, and the CLI exits with
        the command's status.
        """
        out, err, code = yield self.cli("--command", "split", "--from-string", "")
        self.assertEqual(code, 5)
        self.assertEqual(out, b"o" * 300000)
        self.assertEqual(err, b"e" * 200000)

    @inlineCallbacks
    def test_manyRuns(self):
        """
        Run after run, each CLI gets a new session and exact results.
        """
        for i in range(5):
            data = ("run %d " % i).encode() * 5000
            out, err, code = yield self.cli("--command", "digest", "--from-string", data.decode())
            self.assertEqual((code, err), (0, b""))
            self.assertEqual(out.strip().decode(), hashlib.sha256(data).hexdigest())
