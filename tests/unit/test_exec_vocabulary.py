"""
Tests for L{prokshy.execs}: the exec vocabulary the guest and the host share
(the name rule, the refusal codes, the exit record and its EXIT payload).
"""

import signal

import attrs
from twisted.trial import unittest

from prokshy.execs import names, refusals
from prokshy.execs.status import ExitStatus
from prokshy.guest.commands import CommandDirectory
from prokshy.host.client import ExecResult


class NameRuleTests(unittest.TestCase):
    def test_oneRule(self):
        """
        The guest's command directory and the daemon check names with the
        same function.
        """
        self.assertIs(CommandDirectory.checkName, names.checkName)
        self.assertEqual(names.checkName(b"a-Z_0.9"), "a-Z_0.9")
        for bad in ("", ".", "..", "a b", "a\n", b"\xff", "caf\xe9"):
            e = self.assertRaises(refusals.CommandRefused, names.checkName, bad)
            self.assertEqual(e.code, refusals.BAD_NAME)
        self.assertRaises(TypeError, names.checkName, 42)

    def test_codes(self):
        self.assertEqual(
            refusals.COMMAND_CODES,
            ("bad-name", "no-such-command", "not-executable", "insecure", "busy"),
        )
        self.assertEqual(refusals.CommandRefused.codes, refusals.COMMAND_CODES)


class ExitRecordTests(unittest.TestCase):
    def test_oneRecord(self):
        """
        The host's result is the guest's exit record with the output: the
        same class, so nothing converts one into the other.
        """
        self.assertTrue(issubclass(ExecResult, ExitStatus))
        self.assertTrue(attrs.has(ExitStatus))
        shared = [f.name for f in attrs.fields(ExitStatus)]
        self.assertEqual(shared, ["code", "signal", "timedOut", "truncated"])
        self.assertEqual([f.name for f in attrs.fields(ExecResult)], shared + ["stdout", "stderr"])

    def test_exitPayloadRoundTrip(self):
        for status in (
            ExitStatus(0, None),
            ExitStatus(3, None, True, False),
            ExitStatus(None, signal.SIGTERM, False, True),
        ):
            payload = status.toExit()
            self.assertEqual(set(payload), {"code", "signal", "timed_out", "truncated"})
            self.assertEqual(ExitStatus.fromExit(payload), status)
            result = ExecResult.fromExit(payload, stdout=b"out")
            self.assertEqual((result.code, result.signal, result.timedOut, result.truncated),
                             (status.code, status.signal, status.timedOut, status.truncated))
            self.assertEqual(result.stdout, b"out")

    def test_fromExitTolerant(self):
        """
        A field of the wrong type counts as absent.
        """
        self.assertEqual(
            ExitStatus.fromExit({"code": "0", "signal": 1.5, "timed_out": 1}),
            ExitStatus(None, None, True, False),
        )

    def test_exitStatus(self):
        self.assertEqual(ExitStatus(3, None).exitStatus, 3)
        self.assertEqual(ExitStatus(None, 15).exitStatus, 143)
        self.assertEqual(ExitStatus(None, None).exitStatus, 255)

    def test_describe(self):
        self.assertEqual(ExitStatus(0, None).describe(), "exited 0")
        self.assertEqual(ExitStatus(None, signal.SIGKILL, True).describe(), "killed by SIGKILL, timed out")
        self.assertEqual(ExitStatus(1, None, False, True).describe(), "exited 1, output truncated")
        self.assertEqual(ExitStatus(None, 99).describe(), "killed by signal 99")
