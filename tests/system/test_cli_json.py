"""
C{--json} and C{--json-stream} (issue 11, section 6) with real processes:
every mode's records have one shape, and the CLI's memory stays bounded
for an output of 64 MiB (its peak RSS measured in the CLI process itself).
"""

import base64
import hashlib
import json
import os
import sys

from twisted.internet import error, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from prokshy.cli import records
from tests.hostharness import ROOT, HostHarness, shortTempDir
from tests.system.test_cli_framed import _ENV, CLITestMixin, runCLI

MiB = 1024 * 1024

#: Runs the CLI, then writes "RSS-at-start RSS-peak" (KiB, ru_maxrss) to
#: the file named by its first argument.
_RSS_WRAPPER = """
import atexit, resource, sys
where = sys.argv.pop(1)
import prokshy.cli.main as cli
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def done():
    with open(where, "w") as f:
        f.write("%d %d" % (start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
atexit.register(done)
cli.main()
"""


class _Streamed(ProcessProtocol):
    """
    The CLI's stdout read as JSON Lines without keeping it: each line
    parsed as it ends, output events hashed, other lines kept.
    """

    def __init__(self):
        self.partial = b""
        self.lines = []
        self.events = {"stdout": 0, "stderr": 0}
        self.bytes = 0
        self.digest = hashlib.sha256()
        self.err = []
        self.ended = Deferred()

    def connectionMade(self):
        self.transport.closeStdin()

    def outReceived(self, data):
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            obj = json.loads(line)
            if obj.get("event") in ("stdout", "stderr"):
                chunk = base64.b64decode(obj["data"])
                self.events[obj["event"]] += 1
                self.bytes += len(chunk)
                self.digest.update(chunk)
            else:
                self.lines.append(obj)

    def errReceived(self, data):
        self.err.append(data)

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


class ShapeTests(CLITestMixin, TestCase):
    """
    exec, status, info, list, forwards: the same keys (records.KEYS and
    the mode's payload), success and failure alike.
    """

    timeout = 90

    @inlineCallbacks
    def setUp(self):
        self.h = HostHarness(self, vms=("a", "b"))
        self.h.hostArgs = ["--vm", "gone=%s" % (os.path.join(self.h.dir, "missing.sock"),)]
        yield self.h.start()

    def cli(self, *args):
        return runCLI(self, "--socket-path", self.h.unixPath, "--json", *args)

    def assertShape(self, out, mode, count):
        recs = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(len(recs), count, out)
        for r in recs:
            self.assertEqual(set(r), set(records.KEYS) | {records.PAYLOAD_KEYS[mode]}, r)
            self.assertEqual(r["mode"], mode)
        return {r["vm"]: r for r in recs}

    @inlineCallbacks
    def test_modes(self):
        out, err, code = yield self.cli("--all-vms", "--command", "both", "--from-string", "")
        recs = self.assertShape(out, "exec", 3)
        self.assertEqual((recs["a"]["stdout"], recs["a"]["stderr"], recs["a"]["ok"]), ("out\n", "err\n", True))
        self.assertEqual(recs["gone"]["failure"], "vm-unavailable")
        for mode, flag, payload in (("info", "--info", "info"), ("list", "--list", "commands")):
            out, err, code = yield self.cli("--all-vms", flag)
            recs = self.assertShape(out, mode, 3)
            self.assertTrue(recs["a"]["ok"])
            self.assertIsNotNone(recs["a"][payload])
            self.assertEqual((recs["gone"]["failure"], recs["gone"][payload]), ("vm-unavailable", None))
        out, err, code = yield self.cli("--status")
        recs = self.assertShape(out, "status", 3)
        self.assertEqual((recs["a"]["ok"], recs["a"]["daemon"]["vm"]["state"]), (True, "up"))
        self.assertFalse(recs["gone"]["ok"])
        self.assertEqual(code, 0)
        out, err, code = yield self.cli("--status", "--vm", "nosuch")
        recs = self.assertShape(out, "status", 1)
        self.assertEqual((recs["nosuch"]["failure"], code), ("no-such-vm", 255))
        out, err, code = yield self.cli("--forwards")
        recs = self.assertShape(out, "forwards", 1)
        self.assertEqual(recs[None]["forwards"], [])

    @inlineCallbacks
    def test_binary(self):
        """
        Non-UTF-8 on stderr: both outputs base64, C{encoding} says so.
        """
        path = os.path.join(self.h.dir, "bin")
        with open(path, "wb") as f:
            f.write(b"ok\xff")
        out, err, code = yield self.cli("--vm", "a", "--command", "cat", "--from-file", path)
        r = json.loads(out)
        self.assertEqual((r["encoding"], base64.b64decode(r["stdout"]), base64.b64decode(r["stderr"])),
                         ("base64", b"ok\xff", b""))

    @inlineCallbacks
    def test_stream(self):
        """
        C{--json-stream}: output events (base64), then each VM's record
        with C{"event": "result"}, its output fields empty.
        """
        out, err, code = yield self.cli("--json-stream", "--all-vms", "--command", "both", "--from-string", "")
        lines = [json.loads(line) for line in out.splitlines()]
        for vm in ("a", "b"):
            mine = [line for line in lines if line["vm"] == vm]
            self.assertEqual([line["event"] for line in mine][-1], "result")
            data = {kind: b"".join(base64.b64decode(line["data"]) for line in mine if line["event"] == kind)
                    for kind in ("stdout", "stderr")}
            self.assertEqual(data, {"stdout": b"out\n", "stderr": b"err\n"})
            self.assertEqual((mine[-1]["stdout"], mine[-1]["ok"]), ("", True))
            self.assertEqual(set(mine[-1]), set(records.KEYS) | {"command", "event"})
        gone = [line for line in lines if line["vm"] == "gone"]
        self.assertEqual([(g["event"], g["failure"]) for g in gone], [("result", "vm-unavailable")])


class BoundedMemoryTests(TestCase):
    """
    A 64 MiB output: C{--json-stream} streams it all and C{--json} stops at
    its 16 MiB cap (C{too-big}); either way the CLI's peak RSS grows by
    less than 32 MiB, which keeping the output (or its JSON) could not.
    """

    timeout = 240
    size = 64 * MiB
    bound = 32 * MiB

    @inlineCallbacks
    def setUp(self):
        self.h = yield HostHarness(self, daemon=False).start()
        self.dir = shortTempDir(self)

    @inlineCallbacks
    def run_(self, *args):
        rssFile = os.path.join(self.dir, "rss-%d" % (len(os.listdir(self.dir)),))
        proto = _Streamed()
        argv = [sys.executable, "-c", _RSS_WRAPPER, rssFile, "--socket-path", self.h.vms["vm1"].socketPath,
                "--command", "zeros", "--from-string", str(self.size)] + list(args)
        process = reactor.spawnProcess(proto, sys.executable, argv, env=_ENV, path=ROOT)

        def kill():
            try:
                process.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass

        killer = reactor.callLater(self.timeout - 20, kill)
        code = yield proto.ended
        if killer.active():
            killer.cancel()
        with open(rssFile) as f:
            start, peak = (int(v) * 1024 for v in f.read().split())
        return proto, code, peak - start

    @inlineCallbacks
    def test_jsonStream(self):
        proto, code, growth = yield self.run_("--json-stream")
        self.assertEqual(code, 0, b"".join(proto.err))
        self.assertEqual(proto.bytes, self.size)
        self.assertEqual(proto.digest.hexdigest(), hashlib.sha256(b"\0" * self.size).hexdigest())
        [result] = proto.lines
        self.assertEqual((result["event"], result["ok"], result["status"]), ("result", True, 0))
        self.assertLess(growth, self.bound, "peak RSS grew by %.1f MiB" % (growth / MiB,))
        # (recorded for the report)
        print("json-stream: 64 MiB out, peak RSS growth %.1f MiB" % (growth / MiB,))

    @inlineCallbacks
    def test_jsonCap(self):
        proto, code, growth = yield self.run_("--json")
        [r] = proto.lines
        self.assertEqual((r["failure"], r["ok"], r["stdout"], code), ("too-big", False, "", 1))
        self.assertIn("--json-stream", r["error"])
        self.assertIn("16 MiB", r["error"])
        self.assertLess(growth, self.bound, "peak RSS grew by %.1f MiB" % (growth / MiB,))
        print("json cap: 64 MiB asked, peak RSS growth %.1f MiB" % (growth / MiB,))
        proto, code, growth = yield self.run_("--json", "--reserved-exit-codes")
        self.assertEqual(code, 215)


class InterruptedTests(CLITestMixin, TestCase):
    """
    Ctrl-C under C{--json-stream} and C{--json}: the run still ends with
    each running command's record, C{failure} C{interrupted}, with the
    output that came before it; exit 130.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.h = yield HostHarness(self, daemon=False).start()
        self.sock = self.h.vms["vm1"].socketPath

    @inlineCallbacks
    def test_interruptedRecord(self):
        from tests.hostharness import waitFor
        from tests.system.test_cli_framed import groupAlive, startCLI

        proc = startCLI(self, ["--socket-path", self.sock, "--json-stream", "--command", "pidsleep",
                               "--from-string", ""])
        yield waitFor(lambda: b'"event": "stdout"' in proc.stdout, "the remote pid's event", 10)
        first = json.loads(proc.stdout.split(b"\n")[0])
        pid = int(base64.b64decode(first["data"]))
        self.assertTrue(groupAlive(pid))
        proc.transport.signalProcess("INT")
        out, err, code = yield proc.ended
        self.assertEqual(code, 130, err)
        last = json.loads(out.splitlines()[-1])
        self.assertEqual(set(last), set(records.KEYS) | {"command", "event"})
        self.assertEqual((last["event"], last["mode"], last["ok"], last["failure"], last["status"]),
                         ("result", "exec", False, "interrupted", 130))
        self.assertIn("interrupted", last["error"])
        yield waitFor(lambda: not groupAlive(pid), "the remote process group to die", 5)
