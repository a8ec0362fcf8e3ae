"""
C{prokshy-guest-setup} (L{prokshy.tap.install}) into a temporary prefix:
the service file names the twistd installed beside this Python and the
command directory; the command directory holds the samples, mode 755 and
root-owned when run as root; the administrator's commands are kept on a
second run; a bad C{--init} is a one-line usage error.  Where
C{systemd-analyze} exists the unit is verified; the rc.d script is checked
by C{sh -n}.  Real processes (the module run as a script).
"""

import os
import shutil
import stat
import subprocess
import sys
import tempfile

from twisted.trial import unittest

from prokshy.tap import install

SAMPLES = ("fileio", "statgrab", "sysinfo")


def _setup(*args):
    return subprocess.run(
        [sys.executable, "-m", "prokshy.tap.install"] + list(args),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60,
    )


class GuestSetupTests(unittest.TestCase):
    def setUp(self):
        self.prefix = tempfile.mkdtemp(prefix="prokshy-setup-")
        self.addCleanup(shutil.rmtree, self.prefix, True)

    def below(self, path):
        return os.path.join(self.prefix, path.lstrip("/"))

    def assertCommands(self, directory):
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o755)
        for name in SAMPLES:
            st = os.stat(os.path.join(directory, name))
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o755, name)
            if os.geteuid() == 0:
                self.assertEqual((st.st_uid, st.st_gid), (0, 0), name)

    def test_systemd(self):
        """
        The unit runs the twistd beside this Python with the command
        directory, is written with mode 644, and the output says how to
        start it.
        """
        result = _setup("--init", "systemd", "--prefix", self.prefix)
        self.assertEqual(result.returncode, 0, result.stderr)
        twistd = install.findTwistd()
        self.assertTrue(os.access(twistd, os.X_OK), twistd)
        unit = self.below("/etc/systemd/system/prokshy-guest.service")
        text = open(unit).read()
        self.assertIn("ExecStart=%s -n --rundir=/ --pidfile= prokshy-guest " % (twistd,), text)
        self.assertIn("--command-dir /etc/prokshy/command.d\n", text)
        self.assertNotIn("/usr/local/bin/twistd", text)
        self.assertEqual(stat.S_IMODE(os.stat(unit).st_mode), 0o644)
        self.assertCommands(self.below("/etc/prokshy/command.d"))
        self.assertIn("wrote %s" % (unit,), result.stdout)
        self.assertEqual(
            result.stdout.splitlines()[-1],
            "start it with: systemctl daemon-reload && systemctl enable --now prokshy-guest",
        )

    def test_systemdVerifies(self):
        """
        Where C{systemd-analyze} exists, the generated unit verifies.
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise unittest.SkipTest("systemd-analyze is not installed here")
        self.assertEqual(_setup("--init", "systemd", "--prefix", self.prefix).returncode, 0)
        unit = self.below("/etc/systemd/system/prokshy-guest.service")
        check = subprocess.run([analyze, "verify", unit], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, timeout=60)
        self.assertEqual(check.returncode, 0, check.stdout)

    def test_rcd(self):
        """
        The rc.d script defaults to the installed twistd and the command
        directory given, is executable (555), and is valid sh.
        """
        result = _setup("--init", "rc.d", "--prefix", self.prefix, "--command-dir", "/opt/prokshy/command.d")
        self.assertEqual(result.returncode, 0, result.stderr)
        script = self.below("/usr/local/etc/rc.d/prokshy")
        text = open(script).read()
        self.assertIn(': ${prokshy_twistd:="%s"}' % (install.findTwistd(),), text)
        self.assertIn(': ${prokshy_command_dir:="/opt/prokshy/command.d"}', text)
        self.assertEqual(stat.S_IMODE(os.stat(script).st_mode), 0o555)
        self.assertEqual(subprocess.run(["sh", "-n", script]).returncode, 0)
        self.assertCommands(self.below("/opt/prokshy/command.d"))
        self.assertEqual(result.stdout.splitlines()[-1],
                         "start it with: sysrc prokshy_enable=YES && service prokshy start")

    def test_keepsTheAdministratorsCommands(self):
        """
        A second run rewrites the service file but keeps every command that
        is already there, changed or not, and says so.
        """
        self.assertEqual(_setup("--init", "systemd", "--prefix", self.prefix).returncode, 0)
        mine = self.below("/etc/prokshy/command.d/sysinfo")
        with open(mine, "w") as f:
            f.write("#!/bin/sh\necho mine\n")
        result = _setup("--init", "systemd", "--prefix", self.prefix)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(open(mine).read(), "#!/bin/sh\necho mine\n")
        self.assertIn("kept %s (already there)" % (mine,), result.stdout)
        self.assertIn("replaced %s" % (self.below("/etc/systemd/system/prokshy-guest.service"),), result.stdout)

    def test_existingDirectoryKeptAndWarned(self):
        """
        A command directory that exists keeps its mode; one the agent would
        refuse (group-writable) is named in a warning, not silently changed.
        """
        commands = self.below("/etc/prokshy/command.d")
        os.makedirs(commands)
        os.chmod(commands, 0o775)
        result = _setup("--init", "systemd", "--prefix", self.prefix)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(stat.S_IMODE(os.stat(commands).st_mode), 0o775)
        self.assertIn("warning: %s is group- or world-writable (mode 0775)" % (commands,), result.stdout)
        os.chmod(commands, 0o750)
        result = _setup("--init", "systemd", "--prefix", self.prefix)
        self.assertEqual(stat.S_IMODE(os.stat(commands).st_mode), 0o750)
        self.assertNotIn("warning", result.stdout)

    def test_usageErrors(self):
        """
        An unknown init system or a relative command directory: one line,
        exit 2, nothing written.
        """
        for args in (["--init", "upstart"], ["--init", "systemd", "--command-dir", "relative/dir"], []):
            result = _setup("--prefix", self.prefix, *args)
            self.assertEqual(result.returncode, 2, (args, result.stderr))
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
            self.assertTrue(result.stderr.startswith("prokshy-guest-setup: "), result.stderr)
        self.assertEqual(os.listdir(self.prefix), [])

    def test_noTwistd(self):
        """
        With no twistd beside the Python and none on PATH, it says so.
        """
        empty = tempfile.mkdtemp(prefix="prokshy-bin-")
        self.addCleanup(shutil.rmtree, empty, True)
        old = os.environ.get("PATH", "")
        os.environ["PATH"] = empty
        self.addCleanup(os.environ.__setitem__, "PATH", old)
        with self.assertRaises(install.SetupError) as e:
            install.findTwistd(os.path.join(empty, "python3"))
        self.assertIn("no twistd", str(e.exception))

    def test_pathsAServiceFileCannotCarry(self):
        """
        A command directory or a twistd path with white space (or another
        character an unquoted C{ExecStart=} or rc.d C{command_args} would
        split or expand) is refused in one line, exit 1, and no service
        file is written; a plain path is taken.
        """
        for bad in ("/etc/prokshy/my commands", "/etc/prokshy/100%", "/etc/$HOME", "/etc/a'b"):
            result = _setup("--init", "systemd", "--prefix", self.prefix, "--command-dir", bad)
            self.assertEqual(result.returncode, 1, (bad, result.stderr))
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
            self.assertIn(repr(bad), result.stderr)
            self.assertEqual(os.listdir(self.prefix), [], bad)
        with self.assertRaises(install.SetupError):
            install.install("rc.d", self.prefix, "/usr/local/etc/prokshy/command.d", "/opt/my venv/bin/twistd",
                            say=lambda line: None)
        self.assertEqual(os.listdir(self.prefix), [])
        self.assertEqual(install.checkPlainPath("/opt/venv-3.11/bin/twistd", "twistd"), "/opt/venv-3.11/bin/twistd")
