"""
C{prokshy --ping} with real processes: the CLI as a subprocess, the real
guest agent on a simulated VM's console socket, and the real daemon.  The
answer names the agent and the round trip; a VM that is down is its own
line (or record) and the run's status says so.
"""

import json
import re

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from prokshy import __version__
from prokshy.cli import records
from tests.hostharness import HostHarness, waitFor
from tests.system.test_cli_framed import CLITestMixin, runCLI

_ANSWER = r"prokshy/%s answered in \d+\.\d\d ms" % (re.escape(__version__),)


class DirectPingTests(CLITestMixin, TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.h = yield HostHarness(self, daemon=False).start()
        self.sock = self.h.vms["vm1"].socketPath

    @inlineCallbacks
    def test_answer(self):
        """
        One line: the agent, its version, the round trip in ms; exit 0.
        """
        out, err, code = yield runCLI(self, "--socket-path", self.sock, "--ping")
        self.assertEqual((err, code), (b"", 0))
        self.assertRegex(out.decode(), r"\A%s\n\Z" % (_ANSWER,))

    @inlineCallbacks
    def test_json(self):
        """
        One record of the common shape, payload C{ping}: the agent and a
        positive round trip.
        """
        out, err, code = yield runCLI(self, "--socket-path", self.sock, "--ping", "--json")
        self.assertEqual((err, code), (b"", 0))
        record = json.loads(out)
        self.assertEqual(set(record), set(records.KEYS) | {"ping"})
        self.assertEqual((record["mode"], record["ok"], record["failure"], record["status"]), ("ping", True, None, 0))
        self.assertEqual(record["ping"]["agent"], "prokshy/%s" % (__version__,))
        self.assertGreater(record["ping"]["rtt_ms"], 0)

    @inlineCallbacks
    def test_usage(self):
        """
        C{--ping} is a mode of its own: not with C{--command} or C{--info}.
        """
        for other in (["--command", "cat"], ["--info"]):
            out, err, code = yield runCLI(self, "--socket-path", self.sock, "--ping", *other)
            self.assertEqual(code, 2, err)
            self.assertRegex(err.decode().splitlines()[-1], r"--ping cannot be used with|cannot be used with --ping")


class DaemonPingTests(CLITestMixin, TestCase):
    timeout = 90

    @inlineCallbacks
    def setUp(self):
        self.h = yield HostHarness(self, vms=("a", "b")).start()

    def cli(self, *args):
        return runCLI(self, "--socket-path", self.h.unixPath, "--ping", *args)

    @inlineCallbacks
    def test_allVMs(self):
        """
        Every VM answers through the daemon, each line prefixed C{vm NAME: }.
        """
        out, err, code = yield self.cli("--all-vms")
        self.assertEqual((err, code), (b"", 0))
        lines = out.decode().splitlines()
        self.assertEqual(len(lines), 2)
        for name, line in zip(("a", "b"), lines):
            self.assertRegex(line, r"\Avm %s: %s\Z" % (name, _ANSWER))

    @inlineCallbacks
    def test_vmDown(self):
        """
        A VM that is down: its message, the summary line, 255 (218 with
        C{--reserved-exit-codes}); the other VM still answers.
        """
        yield self.h.vms["b"].stopSim()
        yield waitFor(lambda: self.h.daemon.vms["b"].state == "connecting", "vm b down")
        out, err, code = yield self.cli("--all-vms")
        self.assertEqual(code, 255, err)
        self.assertRegex(out.decode(), r"\Avm a: %s\n\Z" % (_ANSWER,))
        self.assertEqual(err.splitlines()[-1], b"prokshy: 1 of 2 VMs failed: vm b: vm-unavailable")
        out, err, code = yield self.cli("--all-vms", "--json", "--reserved-exit-codes")
        self.assertEqual(code, 218)
        recs = [json.loads(line) for line in out.splitlines()]
        self.assertEqual([(r["vm"], r["ok"], r["failure"]) for r in recs],
                         [("a", True, None), ("b", False, "vm-unavailable")])
