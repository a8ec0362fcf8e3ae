"""
The one shape of every C{--json} record (L{prokshy.cli.records}), the
exit-code table and its C{--reserved-exit-codes} range
(L{prokshy.cli.format}), how several VMs' statuses combine, and that
docs/cli.md, the C{--help} epilog and L{prokshy.cli.main}'s docstring give
the same table.
"""

import base64
import collections
import json
import os
import re

from twisted.trial.unittest import SynchronousTestCase

import prokshy
from prokshy.cli import format as fmt
from prokshy.cli import main as climain
from prokshy.cli import records
from prokshy.cli.options import buildParser, parseArgs


def _written(r, stdout=b"", stderr=b""):
    chunks = []
    records.writeLine(chunks.append, r, stdout, stderr)
    return b"".join(chunks)


class RecordShapeTests(SynchronousTestCase):
    """
    Every mode's record has exactly L{records.KEYS} and its payload key,
    success and failure alike.
    """

    def test_issueKeys(self):
        """
        The keys issue 11 asks for are all there, with exec's C{command}
        and C{protocol}, which records had before.
        """
        for key in ("vm", "ok", "code", "signal", "timed_out", "truncated", "error", "stdout", "stderr",
                    "status", "failure", "mode", "encoding", "protocol"):
            self.assertIn(key, records.KEYS)
        self.assertEqual(records.PAYLOAD_KEYS["exec"], "command")

    def test_everyModeSameKeys(self):
        for mode, payload in records.PAYLOAD_KEYS.items():
            ok = records.record(mode, "a")
            bad = records.failed(records.record(mode, "a"), 255, "transport", "lost")
            self.assertEqual(set(ok), set(records.KEYS) | {payload})
            self.assertEqual(set(bad), set(ok))
            self.assertEqual((bad["ok"], bad["status"], bad["failure"], bad["error"]),
                             (False, 255, "transport", "lost"))
            # on the wire too
            self.assertEqual(set(json.loads(records.line(bad))), set(ok))

    def test_failureCodes(self):
        """
        The CLI's own failure codes are all known causes, and every
        cause but the multi-VM one has a default code.
        """
        for code in records.FAILURES:
            self.assertIn(code, fmt.REFUSAL_CAUSES, code)
        for cause, (default, reserved) in fmt.CAUSES.items():
            if cause != "some-vms-failed":
                self.assertIsInstance(default, int, cause)


class OutputEncodingTests(SynchronousTestCase):
    """
    Non-UTF-8 output is handled one way, and L{records.writeLine} writes
    exactly what L{records.line} would, without joining the output.
    """

    def test_utf8(self):
        r = records.setOutput(records.record("exec", None, command="c"), "h\u00e9".encode(), b"e")
        self.assertEqual((r["stdout"], r["stderr"], r["encoding"]), ("h\u00e9", "e", "utf-8"))

    def test_base64Both(self):
        """
        Either stream not UTF-8: both are base64, and C{encoding} says so.
        """
        r = records.setOutput(records.record("exec", None, command="c"), b"ok", b"\xff")
        self.assertEqual(r["encoding"], "base64")
        self.assertEqual((base64.b64decode(r["stdout"]), base64.b64decode(r["stderr"])), (b"ok", b"\xff"))

    def test_writeLineSameBytes(self):
        """
        Chunked output (a UTF-8 character split across chunks, binary
        chunks not a multiple of 3) gives the same line as the whole.
        """
        r = records.record("exec", "vm", command="c", status=3, code=3)
        for out, err in (
            ([b"h\xc3", b"\xa9llo \"q\"\n\t", b"\x00"], [b"e"]),
            ([b"\xff", b"ab", b"cdef", b"g"], [b"x", b"yz"]),
            ([], []),
        ):
            whole = records.line(records.setOutput(dict(r), b"".join(out), b"".join(err)))
            chunked = _written(r, collections.deque(out), collections.deque(err))
            self.assertEqual(chunked, whole)

    def test_writeLineConsumes(self):
        """
        The chunks are dropped from their deque as they are written.
        """
        out = collections.deque([b"a" * 10, b"b" * 10])
        seen = []

        def write(data):
            seen.append(len(out))

        records.writeLine(write, records.record("exec", None, command="c"), out, b"")
        self.assertEqual(len(out), 0)
        self.assertIn(1, seen)

    def test_streamEvents(self):
        """
        Under --json-stream every record is its VM's last event,
        C{"event": "result"}; the output events carry base64 chunks.
        """
        self.addCleanup(records.streamEvents, False)
        r = records.record("info", "a")
        self.assertNotIn("event", json.loads(records.line(r)))
        records.streamEvents(True)
        self.assertEqual(json.loads(records.line(r))["event"], "result")
        self.assertEqual(json.loads(_written(r))["event"], "result")
        e = json.loads(records.event("a", "stderr", b"\xffx"))
        self.assertEqual((e["vm"], e["event"], base64.b64decode(e["data"])), ("a", "stderr", b"\xffx"))


class ExitCodeTableTests(SynchronousTestCase):
    """
    The exit-code table: the defaults of docs/cli.md, and one reserved code
    per cause, in the reserved range.
    """

    def test_reservedDistinctInRange(self):
        codes = [reserved for default, reserved in fmt.CAUSES.values()]
        self.assertEqual(len(codes), len(set(codes)))
        low, high = fmt.RESERVED_RANGE
        for code in codes:
            self.assertTrue(low <= code <= high, code)
        # above every signal status (128 + 64), below ssh's 255
        self.assertGreater(low, 128 + 64)
        self.assertLess(high, 255)

    def test_defaults(self):
        for failure, default in (
            ("usage", 2), ("connect-failed", 1), ("no-such-command", 127), ("no-such-file", 127),
            ("bad-name", 126), ("insecure", 126), ("not-executable", 126), ("not-allowed", 126),
            ("vm-unavailable", 255), ("no-such-vm", 255), ("transport", 255), ("checksum-mismatch", 255),
            ("interrupted", 130), ("stdout-closed", 141), ("too-big", 1), ("unsupported", 1),
            ("busy", 255), ("some-new-refusal", 255),
        ):
            self.assertEqual(fmt.exitStatus(failure), default, failure)

    def test_reserved(self):
        self.assertEqual(fmt.exitStatus("no-such-command", True), 206)
        self.assertEqual(fmt.exitStatus("no-such-file", True), 206)
        self.assertEqual(fmt.exitStatus("vm-unavailable", True), 204)
        self.assertEqual(fmt.exitStatus("usage", True), 200)
        self.assertEqual(fmt.exitStatus("some-new-refusal", True), fmt.reservedFor("rejected"))

    def test_resultStatus(self):
        """
        The guest's timeout and --max-output: 124 and 125, or their
        reserved codes; else the command's own status, reserved or not.
        """
        from prokshy.host.client import ExecResult

        timedOut = ExecResult(None, 15, True, False)
        truncated = ExecResult(0, None, False, True)
        own = ExecResult(127, None, False, False)
        self.assertEqual(fmt.resultStatus("c", timedOut)[0], 124)
        self.assertEqual(fmt.resultStatus("c", timedOut, True)[0], 216)
        self.assertEqual(fmt.resultStatus("c", truncated)[0], 125)
        self.assertEqual(fmt.resultStatus("c", truncated, True)[0], 217)
        self.assertEqual(fmt.resultStatus("c", own, True)[0], 127)

    def test_reservedUsageError(self):
        """
        A usage error exits 2, or the reserved usage code with the flag
        (even an error argparse finds itself).
        """
        for args, code in (([], 2), (["--reserved-exit-codes"], 200), (["--reserved-exit"], 200)):
            with self.assertRaises(SystemExit) as e:
                parseArgs(["--socket-path", "/s", "--no-such-flag"] + args)
            self.assertEqual(e.exception.code, code)


class CombineTests(SynchronousTestCase):
    """
    How several VMs' statuses combine (docs/cli.md, "Several VMs").
    """

    def test_allRan(self):
        """
        Every command ran: the largest status, no summary.
        """
        self.assertEqual(fmt.combine([("a", 0, None), ("b", 3, None), ("c", 1, None)]), (3, None))
        self.assertEqual(fmt.combine([("a", 0, None), ("b", 3, None)], True), (3, None))
        self.assertEqual(fmt.combine([]), (0, None))

    def test_someFailed(self):
        """
        One VM down among three: the largest status (255) and a summary
        line; reserved: 218, "some VMs failed".
        """
        results = [("a", 0, None), ("b", 0, None), ("c", 255, "vm-unavailable")]
        self.assertEqual(fmt.combine(results), (255, "1 of 3 VMs failed: vm c: vm-unavailable"))
        reserved = [("a", 0, None), ("b", 0, None), ("c", 204, "vm-unavailable")]
        self.assertEqual(fmt.combine(reserved, True)[0], 218)

    def test_allFailed(self):
        """
        Every VM failed for one cause: that cause's code; for several
        causes, reserved: 218.
        """
        same = [("a", 204, "vm-unavailable"), ("b", 204, "no-such-vm")]
        self.assertEqual(fmt.combine(same, True), (204, "2 of 2 VMs failed: vm a: vm-unavailable, vm b: no-such-vm"))
        mixed = [("a", 204, "vm-unavailable"), ("b", 206, "no-such-command")]
        self.assertEqual(fmt.combine(mixed, True)[0], 218)

    def test_oneVM(self):
        """
        One VM: its status, no summary.
        """
        self.assertEqual(fmt.combine([(None, 206, "no-such-command")], True), (206, None))


class ListTableTests(SynchronousTestCase):
    def test_aligned(self):
        text = fmt.formatCommands([
            {"name": "a", "description": "first"},
            {"name": "longer", "description": None},
            {"name": "mid", "description": "third\x1bx"},
        ])
        self.assertEqual(text, "a       first\nlonger\nmid     third?x\n")
        self.assertEqual(fmt.formatCommands([]), "")


class DocumentedTableTests(SynchronousTestCase):
    """
    docs/cli.md, the --help epilog and the main module's docstring give
    the same exit codes.
    """

    def texts(self):
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(prokshy.__file__))), "docs", "cli.md")
        if not os.path.exists(path):
            self.skipTest("docs/cli.md is not in this tree")
        with open(path) as f:
            doc = f.read()
        return {"docs/cli.md": doc, "--help": buildParser().epilog, "main": climain.__doc__}

    def test_reservedCodes(self):
        for where, text in self.texts().items():
            flat = " ".join(text.split())
            for cause, (default, reserved) in fmt.CAUSES.items():
                self.assertIn(str(reserved), flat, (where, cause))
                self.assertIn(cause, flat, (where, cause))
            self.assertIn("%d-%d" % fmt.RESERVED_RANGE, flat.replace("\u2013", "-"), where)

    def test_docTable(self):
        """
        docs/cli.md's table has a row per cause with both codes.
        """
        doc = self.texts()["docs/cli.md"]
        for cause, (default, reserved) in fmt.CAUSES.items():
            rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
                    for line in doc.splitlines() if line.startswith("|")]
            rows = [cells for cells in rows if len(cells) == 4 and cells[0] == "`%s`" % (cause,)]
            self.assertEqual(len(rows), 1, cause)
            cells = rows[0]
            self.assertIn(str(reserved), cells, cause)
            if default is not None:
                self.assertIn(str(default), cells, cause)
