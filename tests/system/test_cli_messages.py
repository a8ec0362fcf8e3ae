"""
What the CLI says (issue 7, points 6 and 9), with real processes:

  - output cut by the guest's C{--max-output} is reported as truncation,
    in the message and in C{--json}, with its own exit status (125), not as
    a SIGTERM (143);
  - C{--status --vm NAME} shows only that VM (text and C{--json});
  - a C{--connect} value that is not an endpoint string gets a hint;
  - a message about a VM names it once: C{vm down: not connected since},
    never C{vm down: vm down: ...}.
"""

import json
import signal

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from prokshy.cli.format import EXIT_TRUNCATED, prefixed
from prokshy.cli.main import connectHint
from tests.hostharness import HostHarness, waitFor
from tests.system.test_cli_framed import CLITestMixin, runCLI


class TruncatedTests(CLITestMixin, TestCase):
    """
    An agent with C{--max-output 1000}.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.h = yield HostHarness(self, daemon=False, guestArgs=["--max-output", "1000"]).start()
        self.sock = self.h.vms["vm1"].socketPath

    @inlineCallbacks
    def test_truncated(self):
        out, err, code = yield runCLI(self, "--socket-path", self.sock, "--command", "zeros",
                                      "--from-string", "100000")
        self.assertEqual(EXIT_TRUNCATED, 125)
        self.assertEqual(code, EXIT_TRUNCATED)
        self.assertNotEqual(code, 128 + signal.SIGTERM)
        self.assertEqual(out, b"\0" * 1000)
        self.assertOneLineError(err, "zeros: output truncated", "--max-output")
        self.assertNotIn(b"143", err)
        self.assertNotIn(b"timed out", err)

    @inlineCallbacks
    def test_truncatedJSON(self):
        out, err, code = yield runCLI(self, "--socket-path", self.sock, "--command", "zeros",
                                      "--from-string", "100000", "--json")
        self.assertEqual((err, code), (b"", EXIT_TRUNCATED))
        record = json.loads(out)
        self.assertEqual((record["status"], record["truncated"], record["timed_out"]), (125, True, False))
        self.assertEqual(record["stdout"], "\0" * 1000)

    @inlineCallbacks
    def test_notTruncated(self):
        """
        Output under the cap: the command's own status.
        """
        out, err, code = yield runCLI(self, "--socket-path", self.sock, "--command", "zeros",
                                      "--from-string", "999")
        self.assertEqual((len(out), err, code), (999, b"", 0))


def _statusRows(out):
    """
    The VM rows of C{--status --json}: one record per VM, each with its
    row in C{daemon.vm} (and the record's C{vm} its name).
    """
    rows = []
    for line in out.splitlines():
        record = json.loads(line)
        assert record["mode"] == "status" and record["vm"] == record["daemon"]["vm"]["name"], record
        rows.append(record["daemon"]["vm"])
    return rows


class StatusFilterTests(CLITestMixin, TestCase):
    """
    C{--status --vm}.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.h = yield HostHarness(self, vms=("web", "db", "cache")).start()

    def status(self, *args):
        return runCLI(self, "--socket-path", self.h.unixPath, "--status", *args)

    @inlineCallbacks
    def test_oneVM(self):
        out, err, code = yield self.status("--vm", "web")
        self.assertEqual((err, code), (b"", 0))
        lines = out.decode().splitlines()
        self.assertEqual(lines[0].split()[:2], ["VM", "STATE"])
        self.assertEqual([line.split()[0] for line in lines[1:]], ["web"])

    @inlineCallbacks
    def test_twoVMsJSON(self):
        out, err, code = yield self.status("--vm", "cache", "--vm", "web", "--json")
        self.assertEqual((err, code), (b"", 0))
        # one record per VM (issue 11), the VM's row in daemon.vm
        self.assertEqual(sorted(vm["name"] for vm in _statusRows(out)), ["cache", "web"])

    @inlineCallbacks
    def test_all(self):
        out, err, code = yield self.status("--json")
        self.assertEqual(sorted(vm["name"] for vm in _statusRows(out)), ["cache", "db", "web"])
        out, err, code = yield self.status("--all-vms", "--json")
        self.assertEqual(sorted(vm["name"] for vm in _statusRows(out)), ["cache", "db", "web"])

    @inlineCallbacks
    def test_unknownVM(self):
        """
        A name the daemon does not have: one line naming the VMs it has,
        255; the known ones are still shown.
        """
        out, err, code = yield self.status("--vm", "nosuch", "--vm", "db")
        self.assertEqual(code, 255)
        self.assertOneLineError(err, "no vm named 'nosuch'", "web, db, cache")
        self.assertEqual([line.split()[0] for line in out.decode().splitlines()[1:]], ["db"])


class ConnectHintTests(CLITestMixin, TestCase):
    """
    C{--connect} with something that is not an endpoint string.
    """

    timeout = 30

    @inlineCallbacks
    def test_hostPort(self):
        out, err, code = yield runCLI(self, "--connect", "localhost:7000", "--command", "x", "--from-string", "")
        self.assertEqual((out, code), (b"", 2))
        self.assertOneLineError(err, "bad --connect endpoint 'localhost:7000'",
                                "did you mean tcp:host=localhost:port=7000?")

    @inlineCallbacks
    def test_noHint(self):
        out, err, code = yield runCLI(self, "--connect", "tcp:host=x", "--command", "x", "--from-string", "")
        self.assertEqual(code, 2)
        self.assertOneLineError(err, "bad --connect endpoint", "tcp:host=127.0.0.1:port=7000")


class HintUnitTests(SynchronousTestCase):
    def test_hints(self):
        self.assertEqual(connectHint("localhost:7000"), "tcp:host=localhost:port=7000")
        self.assertEqual(connectHint("10.0.0.5:7000"), "tcp:host=10.0.0.5:port=7000")
        self.assertEqual(connectHint("7000"), "tcp:host=127.0.0.1:port=7000")
        self.assertEqual(connectHint("[::1]:7000"), "tcp6:host=\\:\\:1:port=7000")
        self.assertIn("unix:path=/run/p.sock", connectHint("/run/p.sock"))
        self.assertIsNone(connectHint("tcp:host=x"))
        self.assertIsNone(connectHint("tcp:7000"))

    def test_prefixed(self):
        self.assertEqual(prefixed("vm down: ", "not connected since x"), "vm down: not connected since x")
        self.assertEqual(prefixed("vm down: ", "vm down: not connected since x"), "vm down: not connected since x")
        self.assertEqual(prefixed("", "vm down: x"), "vm down: x")


class VMDownTests(CLITestMixin, TestCase):
    """
    A VM named C{down} that is down.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.h = yield HostHarness(self, vms=("up", "down")).start()
        yield self.h.vms["down"].stopSim()
        yield waitFor(lambda: self.h.daemon.vms["down"].state == "connecting", "vm down to be down")

    def cli(self, *args):
        return runCLI(self, "--socket-path", self.h.unixPath, "--command", "vmname", "--from-string", "", *args)

    def assertOnce(self, text):
        self.assertIn("vm down: not connected since", text)
        self.assertNotIn("vm down: vm down", text)

    @inlineCallbacks
    def test_named(self):
        out, err, code = yield self.cli("--vm", "down")
        self.assertEqual((out, code), (b"", 255))
        self.assertOneLineError(err)
        self.assertTrue(err.startswith(b"prokshy: vm down: not connected since"), err)
        self.assertOnce(err.decode())

    @inlineCallbacks
    def test_allVMs(self):
        out, err, code = yield self.cli("--all-vms")
        self.assertEqual((out, code), (b"[up] up\n", 255))
        first, summary = err.splitlines(True)
        self.assertOneLineError(first)
        self.assertOnce(first.decode())
        self.assertEqual(summary, b"prokshy: 1 of 2 VMs failed: vm down: vm-unavailable\n")

    @inlineCallbacks
    def test_json(self):
        out, err, code = yield self.cli("--vm", "down", "--json")
        self.assertEqual((err, code), (b"", 255))
        record = json.loads(out)
        self.assertEqual((record["vm"], record["status"]), ("down", 255))
        self.assertOnce(record["error"])
