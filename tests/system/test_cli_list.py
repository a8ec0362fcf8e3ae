"""
C{prokshy --list} (issue 11, section 4) with real processes: the CLI as a
subprocess, the real guest agent on a simulated VM's console socket, and
the real daemon; and the guest's listing itself
(L{prokshy.guest.commands.CommandDirectory.listing}) on real files.
"""

import json
import os

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from prokshy.cli import records
from prokshy.guest import commands as guestcommands
from prokshy.guest import execs
from prokshy.guest.commands import CommandDirectory, describe
from prokshy.streams.stream import StreamRefused
from tests.harness import shortTempDir, writeCommand  # noqa: F401
from tests.hostharness import DEFAULT_SCRIPTS, HostHarness, waitFor
from tests.system.test_cli_framed import CLITestMixin, runCLI

SCRIPTS = dict(
    DEFAULT_SCRIPTS,
    hello="#!/bin/sh\n# description: says hello\necho hello\n",
    longer_name="#!/bin/sh\n#\n#   description:   a second one  \necho\n",
)


def _names(vm):
    """
    The names a VM of the harness lists: its scripts and C{vmname}.
    """
    return sorted(list(SCRIPTS) + ["vmname"])


class ListingTests(SynchronousTestCase):
    """
    The guest's listing: the checks of an exec, sorted, bounded.
    """

    def setUp(self):
        self.dir = shortTempDir(self)
        os.chmod(self.dir, 0o755)

    def write(self, name, body, mode=0o755):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(body)
        os.chmod(path, mode)
        return path

    def test_sameChecksAsExec(self):
        """
        Only what an exec would run: not a file that is not executable,
        group-writable, a directory, a dangling symlink or a bad name.
        """
        self.write("good", "#!/bin/sh\n# description: fine\n")
        self.write("plain", "#!/bin/sh\n", 0o644)
        self.write("loose", "#!/bin/sh\n", 0o775)
        os.mkdir(os.path.join(self.dir, "adir"))
        os.symlink(os.path.join(self.dir, "nowhere"), os.path.join(self.dir, "dangling"))
        os.symlink(os.path.join(self.dir, "good"), os.path.join(self.dir, "alias"))
        self.write("bad name", "#!/bin/sh\n")
        directory = CommandDirectory(self.dir)
        listing = directory.listing()
        self.assertEqual(listing, {"commands": [{"name": "alias", "description": "fine"},
                                                {"name": "good", "description": "fine"}],
                                   "truncated": False})
        for entry in listing["commands"]:
            directory.resolve(entry["name"])

    def test_insecureDirectory(self):
        """
        A directory an exec refuses lists nothing.
        """
        self.write("good", "#!/bin/sh\n")
        os.chmod(self.dir, 0o777)
        self.assertEqual(CommandDirectory(self.dir).listing()["commands"], [])
        self.assertEqual(CommandDirectory(os.path.join(self.dir, "missing")).listing()["commands"], [])

    def test_limit(self):
        for i in range(5):
            self.write("c%d" % (i,), "#!/bin/sh\n")
        listing = CommandDirectory(self.dir).listing(limit=3)
        self.assertEqual(([c["name"] for c in listing["commands"]], listing["truncated"]),
                         (["c0", "c1", "c2"], True))
        self.assertFalse(CommandDirectory(self.dir).listing(limit=5)["truncated"])

    def test_describe(self):
        """
        The first C{# description:} line within the first 4096 bytes and 20
        lines, stripped, at most 200 characters, bad UTF-8 replaced.
        """
        cases = [
            ("#!/bin/sh\n# description: one\n# description: two\n", "one"),
            ("#!/bin/sh\n" + "#\n" * 18 + "# description: line 20\n", "line 20"),
            ("#!/bin/sh\n" + "#\n" * 19 + "# description: line 21\n", None),
            ("#!/bin/sh\n# description:    \n", None),
            ("#!/bin/sh\n# description: " + "x" * 300 + "\n", "x" * 200),
            ("#!/bin/sh\n# " + "y" * 4096 + "\n# description: too far\n", None),
            ("#!/bin/sh\necho no\n", None),
        ]
        for i, (body, expected) in enumerate(cases):
            self.assertEqual(describe(self.write("d%d" % (i,), body)), expected, body[:60])
        path = os.path.join(self.dir, "bin")
        with open(path, "wb") as f:
            f.write(b"#!/bin/sh\n# description: caf\xff\n")
        self.assertEqual(describe(path), "caf\ufffd")
        self.assertIsNone(describe(os.path.join(self.dir, "missing")))
        self.assertEqual(guestcommands.LIST_LIMIT, 4096)

    def test_samples(self):
        """
        Every sample in etc/prokshy/command.d has a description.
        """
        from tests.harness import PACKAGE_ROOT

        samples = os.path.join(PACKAGE_ROOT, "etc", "prokshy", "command.d")
        for name in sorted(os.listdir(samples)):
            self.assertTrue(describe(os.path.join(samples, name)), name)


class DirectListTests(CLITestMixin, TestCase):
    """
    C{--list} on a VM's own console socket.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.h = yield HostHarness(self, daemon=False, scripts=SCRIPTS).start()
        self.vm = self.h.vms["vm1"]

    def cli(self, *args):
        return runCLI(self, "--socket-path", self.vm.socketPath, "--list", *args)

    @inlineCallbacks
    def test_table(self):
        """
        C{NAME  DESCRIPTION}, aligned; no description: the name alone; a
        file an exec would refuse is not listed.
        """
        writeCommand(self.vm.commandDir, "unsafe", "#!/bin/sh\n", 0o777)
        out, err, code = yield self.cli()
        self.assertEqual((err, code), (b"", 0))
        lines = out.decode().splitlines()
        self.assertEqual([line.split()[0] for line in lines], _names("vm1"))
        width = len("longer_name")
        self.assertIn("hello" + " " * (width - len("hello") + 2) + "says hello", lines)
        self.assertIn("longer_name  a second one", lines)
        self.assertIn("cat", lines)

    @inlineCallbacks
    def test_json(self):
        out, err, code = yield self.cli("--json")
        self.assertEqual((err, code), (b"", 0))
        record = json.loads(out)
        self.assertEqual(set(record), set(records.KEYS) | {"commands"})
        self.assertEqual((record["mode"], record["ok"], record["failure"], record["vm"], record["truncated"]),
                         ("list", True, None, None, False))
        self.assertEqual([c["name"] for c in record["commands"]], _names("vm1"))
        self.assertIn({"name": "hello", "description": "says hello"}, record["commands"])


class DaemonListTests(CLITestMixin, TestCase):
    """
    C{--list} through the daemon: C{--vm}, C{--all-vms} (labelled, JSON
    Lines), a VM that is down.
    """

    timeout = 90

    @inlineCallbacks
    def setUp(self):
        self.h = yield HostHarness(self, vms=("a", "b"), scripts=SCRIPTS).start()

    def cli(self, *args):
        return runCLI(self, "--socket-path", self.h.unixPath, "--list", *args)

    @inlineCallbacks
    def test_vm(self):
        out, err, code = yield self.cli("--vm", "b")
        self.assertEqual((err, code), (b"", 0))
        self.assertEqual([line.split()[0] for line in out.decode().splitlines()], _names("b"))

    @inlineCallbacks
    def test_allVMs(self):
        out, err, code = yield self.cli("--all-vms")
        self.assertEqual((err, code), (b"", 0))
        lines = out.decode().splitlines()
        self.assertEqual(len(lines), 2 * len(_names("a")))
        self.assertIn("[a] hello        says hello", lines)
        self.assertIn("[b] cat", lines)
        out, err, code = yield self.cli("--all-vms", "--json")
        self.assertEqual((err, code), (b"", 0))
        recs = [json.loads(line) for line in out.splitlines()]
        self.assertEqual([(r["vm"], r["mode"], r["ok"]) for r in recs], [("a", "list", True), ("b", "list", True)])

    @inlineCallbacks
    def test_vmDown(self):
        """
        One VM down: the other's list, the down VM's record (or line), the
        summary line, and the documented status.
        """
        yield self.h.vms["b"].stopSim()
        yield waitFor(lambda: self.h.daemon.vms["b"].state == "connecting", "vm b down")
        out, err, code = yield self.cli("--all-vms", "--json", "--reserved-exit-codes")
        self.assertEqual(code, 218)
        recs = [json.loads(line) for line in out.splitlines()]
        self.assertEqual([(r["vm"], r["ok"], r["failure"], r["status"]) for r in recs],
                         [("a", True, None, 0), ("b", False, "vm-unavailable", 204)])
        self.assertEqual(err, b"prokshy: 1 of 2 VMs failed: vm b: vm-unavailable\n")
        out, err, code = yield self.cli("--all-vms")
        self.assertEqual(code, 255)
        self.assertEqual(err.splitlines()[-1], b"prokshy: 1 of 2 VMs failed: vm b: vm-unavailable")


class OldGuestListTests(CLITestMixin, TestCase):
    """
    A guest agent without the C{list} feature: one clear line naming it,
    exit 1 (C{unsupported}; 209 reserved), directly and through the daemon.
    """

    timeout = 60

    def setUp(self):
        self.patch(execs, "FEATURES", tuple(f for f in execs.FEATURES if f != "list"))
        serve = execs.GuestStreams.open

        def oldOpen(streams, stream, opener):
            if stream.kind == "list":
                raise StreamRefused("unknown-kind", "this agent opens no 'list' streams")
            return serve(streams, stream, opener)

        self.patch(execs.GuestStreams, "open", oldOpen)

    @inlineCallbacks
    def test_direct(self):
        h = yield HostHarness(self, daemon=False).start()
        out, err, code = yield runCLI(self, "--socket-path", h.vms["vm1"].socketPath, "--list")
        self.assertEqual((out, code), (b"", 1))
        self.assertOneLineError(err, "the guest's agent (prokshy/", "no 'list' feature")

    @inlineCallbacks
    def test_daemon(self):
        h = yield HostHarness(self).start()
        out, err, code = yield runCLI(self, "--socket-path", h.unixPath, "--list")
        self.assertEqual((out, code), (b"", 1))
        self.assertOneLineError(err, "the guest's agent (prokshy/", "no 'list' feature")
        out, err, code = yield runCLI(self, "--socket-path", h.unixPath, "--list", "--json",
                                      "--reserved-exit-codes")
        self.assertEqual((err, code), (b"", 209))
        record = json.loads(out)
        self.assertEqual((record["failure"], record["status"], record["commands"]), ("unsupported", 209, None))
