"""
The opt-in sample C{shell} command (C{etc/prokshy/optional/shell}): kept
out of the default set, packaged beside it, and working as documented
with C{prokshy -t} under a real pty (a prompt, a command typed, job
control's Ctrl-C, the exit status), and without C{-t} on stdin.
"""

import os
import shutil

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.hostharness import ROOT
from tests.system.test_cli_framed import runCLI
from tests.system.test_tty import DirectHarness, PTYDriver

SHELL = os.path.join(ROOT, "etc", "prokshy", "optional", "shell")
DEFAULT_SET = os.path.join(ROOT, "etc", "prokshy", "command.d")


class SampleTests(TestCase):
    def test_optIn(self):
        """
        The sample is executable, says what it is on a C{# description:}
        line (C{--list} shows it), and is not in the default command set
        that C{prokshy-guest-setup} installs; the package carries it under
        C{prokshy/examples/optional}.
        """
        self.assertTrue(os.access(SHELL, os.X_OK))
        with open(SHELL) as f:
            head = f.read(4096).splitlines()[:20]
        self.assertIn(
            "# description: an interactive shell (opt-in: gives the host a root shell)", head
        )
        self.assertNotIn("shell", os.listdir(DEFAULT_SET))
        packaged = os.path.join(ROOT, "prokshy", "examples", "optional", "shell")
        self.assertEqual(os.path.realpath(packaged), os.path.realpath(SHELL))


class ShellTests(DirectHarness, PTYDriver, TestCase):
    """
    The sample enabled in a VM's command.d (copied, as the README says).
    """

    @inlineCallbacks
    def startHarness(self):
        yield DirectHarness.startHarness(self)
        target = os.path.join(self.vm.commandDir, "shell")
        shutil.copy(SHELL, target)
        os.chmod(target, 0o755)

    @inlineCallbacks
    def test_interactive(self):
        """
        With C{-t}: a prompt on a terminal; a typed command runs; Ctrl-C
        interrupts a foreground program and the shell goes on; C{exit 4}
        ends it with that status; the terminal is restored.
        """
        cli = self.startTTY("-t", "--command", "shell", env={})
        os.write(self.master, b"PS1='prompt> '; echo tty-is-$(tty | cut -c1-5)\r")
        yield cli.waitFor(b"tty-is-/dev/")
        self.assertRaw()
        os.write(self.master, b"sleep 30\r")
        yield cli.waitFor(b"prompt> sleep 30")
        os.write(self.master, b"\x03")
        yield cli.waitFor(b"^C")
        os.write(self.master, b"echo status-$?\r")
        yield cli.waitFor(b"status-130")
        os.write(self.master, b"exit 4\r")
        code = yield cli.exited
        self.assertEqual(code, 4)
        self.assertRestored()

    @inlineCallbacks
    def test_withoutTTY(self):
        """
        Without C{-t}: commands on stdin, the output on stdout; ARGs are
        the shell's (C{-c ...}).
        """
        out, err, code = yield runCLI(
            self, "--socket-path", self.target(), "--command", "shell", "--stdin",
            stdin=b"echo from-stdin\nexit 6\n",
        )
        self.assertEqual(code, 6, err)
        self.assertIn(b"from-stdin", out)
        out, err, code = yield runCLI(
            self, "--socket-path", self.target(), "--command", "shell", "--", "-c", "echo $0-$1", "zero", "one"
        )
        self.assertEqual((out, code), (b"zero-one\n", 0), err)

