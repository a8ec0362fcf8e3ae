"""
Exit codes that tell prokshy's failures from the command's (issue 11,
section 7), with real processes: the CLI as a subprocess, the real guest
agent on a simulated VM, the real daemon.
"""

import json
import os

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from prokshy.cli import records
from tests.hostharness import HostHarness
from tests.system.test_cli_framed import CLITestMixin, runCLI


class CommandOrProkshyTests(CLITestMixin, TestCase):
    """
    A remote C{exit 127} and "no such command" are told apart by
    C{--reserved-exit-codes} and by C{--json}'s C{failure}.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.h = yield HostHarness(self, daemon=False).start()
        self.sock = self.h.vms["vm1"].socketPath

    def cli(self, *args):
        return runCLI(self, "--socket-path", self.sock, *args)

    @inlineCallbacks
    def test_defaultSame(self):
        """
        Without the flag both are 127, as they always were.
        """
        out, err, own = yield self.cli("--command", "status", "--from-string", "127")
        out, err, missing = yield self.cli("--command", "nosuchcommand", "--from-string", "")
        self.assertEqual((own, missing), (127, 127))

    @inlineCallbacks
    def test_reserved(self):
        out, err, code = yield self.cli("--reserved-exit-codes", "--command", "status", "--from-string", "127")
        self.assertEqual((out, err, code), (b"", b"", 127))
        out, err, code = yield self.cli("--reserved-exit-codes", "--command", "nosuchcommand", "--from-string", "")
        self.assertEqual((out, code), (b"", 206))
        self.assertOneLineError(err, "nosuchcommand")
        out, err, code = yield self.cli("--reserved-exit-codes", "--command", "status", "--from-string", "3")
        self.assertEqual(code, 3)

    @inlineCallbacks
    def test_json(self):
        """
        C{failure} is null when the command ran (whatever its status), the
        refusal's code when it did not; the keys are the same.
        """
        out, err, code = yield self.cli("--json", "--command", "status", "--from-string", "127")
        ran = json.loads(out)
        out, err, code = yield self.cli("--json", "--command", "nosuchcommand", "--from-string", "")
        refused = json.loads(out)
        self.assertEqual(set(ran), set(refused))
        self.assertEqual(set(ran), set(records.KEYS) | {"command"})
        self.assertEqual((ran["failure"], ran["code"], ran["status"], ran["ok"]), (None, 127, 127, False))
        self.assertEqual((refused["failure"], refused["code"], refused["status"], refused["ok"]),
                         ("no-such-command", None, 127, False))
        self.assertIn("nosuchcommand", refused["error"])

    @inlineCallbacks
    def test_cannotConnect(self):
        """
        No socket: 1, or 201 reserved; with C{--json} a record says
        C{connect-failed}.
        """
        missing = os.path.join(self.h.dir, "missing.sock")
        out, err, code = yield runCLI(self, "--socket-path", missing, "--command", "cat", "--from-string", "")
        self.assertEqual(code, 1)
        out, err, code = yield runCLI(self, "--socket-path", missing, "--command", "cat", "--from-string", "",
                                      "--json", "--reserved-exit-codes")
        self.assertEqual((err, code), (b"", 201))
        record = json.loads(out)
        self.assertEqual((record["failure"], record["status"], record["protocol"], record["command"]),
                         ("connect-failed", 201, None, "cat"))


class OneVMDownTests(CLITestMixin, TestCase):
    """
    C{--all-vms} with one VM down (the daemon has a VM whose socket is
    missing): the others run; the status is the documented combination.
    """

    timeout = 90

    @inlineCallbacks
    def setUp(self):
        self.h = HostHarness(self, vms=("a", "b"))
        self.h.hostArgs = ["--vm", "c=%s" % (os.path.join(self.h.dir, "missing.sock"),)]
        yield self.h.start()

    def cli(self, *args):
        return runCLI(self, "--socket-path", self.h.unixPath, "--all-vms", "--command", "vmname",
                      "--from-string", "", *args)

    @inlineCallbacks
    def test_default(self):
        """
        The largest status (255), the others' output, the VM's own line and
        a summary line.
        """
        out, err, code = yield self.cli()
        self.assertEqual(code, 255)
        self.assertEqual(sorted(out.splitlines()), [b"[a] a", b"[b] b"])
        lines = err.decode().splitlines()
        self.assertEqual(len(lines), 2, err)
        self.assertTrue(lines[0].startswith("prokshy: vm c: "), lines)
        self.assertEqual(lines[1], "prokshy: 1 of 3 VMs failed: vm c: vm-unavailable")

    @inlineCallbacks
    def test_reservedJSON(self):
        """
        C{--reserved-exit-codes}: 218 (some VMs failed); C{--json}: one
        record per VM, the down one's C{failure} C{vm-unavailable}.
        """
        out, err, code = yield self.cli("--reserved-exit-codes")
        self.assertEqual(code, 218)
        out, err, code = yield self.cli("--reserved-exit-codes", "--json")
        self.assertEqual(code, 218)
        self.assertEqual(err, b"prokshy: 1 of 3 VMs failed: vm c: vm-unavailable\n")
        recs = sorted((json.loads(line) for line in out.splitlines()), key=lambda r: r["vm"])
        self.assertEqual([(r["vm"], r["ok"], r["failure"], r["status"], r["stdout"]) for r in recs],
                         [("a", True, None, 0, "a\n"), ("b", True, None, 0, "b\n"),
                          ("c", False, "vm-unavailable", 204, "")])
        for r in recs:
            self.assertEqual(set(r), set(records.KEYS) | {"command"})

    @inlineCallbacks
    def test_allDown(self):
        """
        Only the down VM: its own cause's code, no summary.
        """
        out, err, code = yield runCLI(self, "--socket-path", self.h.unixPath, "--vm", "c", "--command", "vmname",
                                      "--from-string", "", "--reserved-exit-codes")
        self.assertEqual(code, 204)
        self.assertOneLineError(err, "vm c")
