"""
The CLI's checks of C{-t} and C{ARG...} (L{prokshy.cli.tty.checkTTYOptions}
through L{prokshy.cli.options.parseArgs}: one-line usage errors, exit 2,
before anything connects) and the remote pty's size and C{TERM}, without
a terminal.
"""

import io
import sys

from twisted.trial.unittest import SynchronousTestCase

from prokshy.cli import tty
from prokshy.cli.options import parseArgs


class OptionTests(SynchronousTestCase):
    def parse(self, *args):
        return parseArgs(["--socket-path", "/s"] + list(args))

    def refused(self, *args):
        """
        C{parseArgs} exits 2 with exactly one line.

        @return: the line.
        """
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        e = self.assertRaises(SystemExit, self.parse, *args)
        self.assertEqual(e.code, 2)
        text = err.getvalue()
        self.assertEqual(text.count("\n"), 1, text)
        self.assertTrue(text.startswith("prokshy: error: "), text)
        return text

    def test_args(self):
        options = self.parse("--command", "c", "--", "-x", "", "a b")
        self.assertEqual(options.args, ["-x", "", "a b"])
        # No input needed with ARGs (stdin is empty), nor with -t.
        self.assertEqual(options.fullData, b"")
        self.assertTrue(self.parse("-t", "--command", "c").tty)

    def test_inputStillRequiredWithout(self):
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        self.assertRaises(SystemExit, self.parse, "--command", "c")
        self.assertIn("--from-string --from-file --stdin is required", err.getvalue())

    def test_argsLimits(self):
        self.assertIn("1025 arguments; at most 1024", self.refused("--command", "c", "--", *(["a"] * 1025)))
        self.assertIn("at most 65536", self.refused("--command", "c", "--", "x" * 65537))
        self.assertIn("not valid UTF-8", self.refused("--command", "c", "--", "\udcff"))

    def test_argsElsewhere(self):
        self.assertIn("arguments of --command NAME, not of --info", self.refused("--info", "x"))
        self.assertIn("takes no arguments", self.refused("--protocol", "legacy", "--command", "c", "--", "a"))

    def test_ttyExclusions(self):
        for extra in (
            ("--from-string", "x"),
            ("--from-file", "/dev/null"),
            ("--stdin",),
            ("--json",),
            ("--json-stream",),
        ):
            self.assertIn("-t cannot be used with " + extra[0], self.refused("-t", "--command", "c", *extra))
        self.assertIn("one VM", self.refused("-t", "--command", "c", "--all-vms"))
        self.assertIn("one VM", self.refused("-t", "--command", "c", "--vm", "a", "--vm", "b"))
        self.assertIn("framed protocol", self.refused("--protocol", "legacy", "-t", "--command", "c"))
        self.assertIn("cannot be used with --status", self.refused("-t", "--status"))
        # One VM is fine.
        self.assertEqual(self.parse("--tty", "--command", "c", "--vm", "a").vm, ["a"])


class SizeTests(SynchronousTestCase):
    """
    Without a terminal (descriptor -1 is none), C{LINES}/C{COLUMNS} or
    24 x 80; the size clamped to what the guest takes; C{TERM} checked.
    """

    def test_initialSize(self):
        self.assertEqual(tty.initialSize(-1, {}), (24, 80))
        self.assertEqual(tty.initialSize(-1, {"LINES": "33", "COLUMNS": "99"}), (33, 99))
        self.assertEqual(tty.initialSize(-1, {"LINES": "99999", "COLUMNS": "1"}), (4096, 1))
        for bad in ({"LINES": "x", "COLUMNS": "80"}, {"LINES": "0", "COLUMNS": "80"}, {"LINES": "33"}):
            self.assertEqual(tty.initialSize(-1, bad), (24, 80))

    def test_terminalSizeNoTerminal(self):
        self.assertIsNone(tty.terminalSize(-1))

    def test_terminalType(self):
        self.assertEqual(tty.terminalType({"TERM": "screen-256color"}), "screen-256color")
        self.assertEqual(tty.terminalType({}), "xterm")
        self.assertEqual(tty.terminalType({"TERM": "bad term"}), "xterm")
