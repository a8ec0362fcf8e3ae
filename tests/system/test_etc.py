"""
Tests for the files under C{etc/}: the FreeBSD rc.d script, the systemd
unit and the sample commands in C{etc/prokshy/command.d}.
"""

import base64
import configparser
import importlib.machinery
import importlib.util
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ETC = os.path.join(ROOT, "etc")
RC_SCRIPT = os.path.join(ETC, "rc.d", "prokshy")
UNIT = os.path.join(ETC, "systemd", "prokshy-guest.service")
COMMANDS = os.path.join(ETC, "prokshy", "command.d")
SAMPLES = ("sysinfo", "statgrab", "fileio")
# The PATH the statgrab wrapper sets for itself.
STATGRAB_PATH = "/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin"


def command(name):
    return os.path.join(COMMANDS, name)


def run(argv, stdin=b"", env=None):
    """
    Run C{argv} and return the completed process (bytes output).
    """
    return subprocess.run(
        argv,
        input=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        timeout=60,
    )


def read(path):
    with open(path) as f:
        return f.read()


class RcScriptTests(unittest.TestCase):
    """
    Tests for C{etc/rc.d/prokshy}.
    """

    def setUp(self):
        self.text = read(RC_SCRIPT)

    def test_syntax(self):
        """
        The script is valid sh.
        """
        result = run(["sh", "-n", RC_SCRIPT])
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_rcorderKeywords(self):
        self.assertIn("# PROVIDE: prokshy\n", self.text)
        self.assertIn("# REQUIRE: LOGIN\n", self.text)
        self.assertIn("# KEYWORD: shutdown\n", self.text)

    def test_rcSubrStyle(self):
        self.assertTrue(self.text.startswith("#!/bin/sh\n"))
        self.assertIn(". /etc/rc.subr\n", self.text)
        self.assertIn("load_rc_config $name\n", self.text)
        self.assertTrue(self.text.rstrip().endswith('run_rc_command "$1"'))
        self.assertIn('rcvar="prokshy_enable"', self.text)

    def test_variables(self):
        """
        The rc variables and their defaults.
        """
        for line in [
            ': ${prokshy_enable:="NO"}',
            ': ${prokshy_device:="/dev/vtcon/prokshy"}',
            ': ${prokshy_command_dir:="/usr/local/etc/prokshy/command.d"}',
            ': ${prokshy_flags:=""}',
            ': ${prokshy_twistd:="/usr/local/bin/twistd"}',
        ]:
            self.assertIn(line, self.text)

    def test_daemonWithRestart(self):
        """
        The agent runs under daemon(8) with restart, a supervisor pidfile and
        syslog output.
        """
        self.assertIn('command="/usr/sbin/daemon"', self.text)
        self.assertRegex(self.text, r"command_args=\"-r -P \$\{pidfile\} -S -T")

    def commandLine(self, **variables):
        """
        Run the script's start precmd with a stub rc.subr and return the
        command line rc.subr would run, as a list of words.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        stub = os.path.join(directory, "rc.subr")
        with open(stub, "w") as f:
            f.write(
                "load_rc_config() { :; }\n"
                'warn() { echo "warn: $*" >&2; }\n'
                "run_rc_command() {\n"
                '    eval rc_flags=\\$${name}_flags\n'
                '    eval "$start_precmd" || exit 1\n'
                '    echo "$command $rc_flags $command_args"\n'
                "}\n"
            )
        script = os.path.join(directory, "prokshy")
        text = self.text.replace(". /etc/rc.subr\n", ". %s\n" % (stub,))
        self.assertNotEqual(text, self.text)
        with open(script, "w") as f:
            f.write(text)
        env = {"PATH": os.environ.get("PATH", "/bin:/usr/bin")}
        env.update(variables)
        result = run(["sh", script, "start"], env=env)
        return result.returncode, shlex.split(result.stdout.decode()), result.stderr

    def test_commandLine(self):
        """
        With the defaults, daemon(8) runs twistd with its options before the
        C{prokshy-guest} subcommand and the agent's after it; extra flags
        go to the agent, not to daemon(8).
        """
        code, words, err = self.commandLine(
            prokshy_twistd="/bin/sh", prokshy_flags="--verbose --x=1"
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(
            words,
            [
                "/usr/sbin/daemon", "-r", "-P", "/var/run/prokshy.pid",
                "-S", "-T", "prokshy", "-t", "prokshy",
                "/bin/sh", "-n", "--rundir=/", "--pidfile=", "prokshy-guest",
                "--device", "/dev/vtcon/prokshy",
                "--command-dir", "/usr/local/etc/prokshy/command.d",
                "--verbose", "--x=1",
            ],
        )

    def test_commandLineVariables(self):
        """
        C{prokshy_device} and C{prokshy_command_dir} reach the agent.
        """
        code, words, err = self.commandLine(
            prokshy_twistd="/bin/sh",
            prokshy_device="/dev/vtcon/other",
            prokshy_command_dir="/opt/cmds",
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(words[words.index("--device") + 1], "/dev/vtcon/other")
        self.assertEqual(words[words.index("--command-dir") + 1], "/opt/cmds")
        self.assertEqual(words[-1], "/opt/cmds")

    def test_missingTwistd(self):
        """
        A twistd that is not there stops the start with a warning.
        """
        code, words, err = self.commandLine(prokshy_twistd="/nonexistent/twistd")
        self.assertNotEqual(code, 0)
        self.assertIn(b"prokshy_twistd", err)
        self.assertEqual(words, [])


class SystemdUnitTests(unittest.TestCase):
    """
    Tests for C{etc/systemd/prokshy-guest.service}.
    """

    def setUp(self):
        self.unit = configparser.ConfigParser(interpolation=None, strict=True)
        self.unit.optionxform = str
        with open(UNIT) as f:
            self.unit.read_file(f)

    def test_execStart(self):
        self.assertEqual(
            shlex.split(self.unit["Service"]["ExecStart"]),
            [
                "/usr/local/bin/twistd", "-n", "--rundir=/", "--pidfile=",
                "prokshy-guest",
                "--device", "/dev/virtio-ports/prokshy",
                "--command-dir", "/usr/local/etc/prokshy/command.d",
            ],
        )

    def test_restart(self):
        service = self.unit["Service"]
        self.assertEqual(service["Restart"], "always")
        self.assertEqual(service["RestartSec"], "1")
        # Restart= alone would give up after a burst of failures.
        self.assertEqual(self.unit["Unit"]["StartLimitIntervalSec"], "0")

    def test_deviceOrderingOnly(self):
        """
        The unit is ordered after the port's device but does not require
        it: a missing device must not keep the agent from starting.
        """
        unit = self.unit["Unit"]
        self.assertIn(r"dev-virtio\x2dports-prokshy.device", unit["After"].split())
        for key in ("BindsTo", "Requires", "Requisite", "ConditionPathExists"):
            self.assertNotIn(key, unit)

    def test_commandsNotSandboxed(self):
        """
        Nothing hides the real filesystem from the administrator's commands.
        """
        service = self.unit["Service"]
        for key in (
            "PrivateTmp", "ProtectSystem", "ProtectHome", "ReadOnlyPaths",
            "NoNewPrivileges", "PrivateDevices", "SystemCallFilter",
        ):
            self.assertNotIn(key, service)

    def test_install(self):
        self.assertEqual(self.unit["Install"]["WantedBy"], "multi-user.target")


class SampleCommandFileTests(unittest.TestCase):
    """
    The sample commands are executable scripts that the agent accepts.
    """

    def test_modes(self):
        """
        Each sample is a regular file with mode 0755: executable, and not
        writable by group or others (the agent refuses those).
        """
        for name in SAMPLES:
            st = os.lstat(command(name))
            self.assertTrue(stat.S_ISREG(st.st_mode), name)
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o755, name)
            self.assertEqual(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH), 0, name)

    def test_shebangs(self):
        self.assertTrue(read(command("sysinfo")).startswith("#!/usr/bin/env python3\n"))
        self.assertTrue(read(command("fileio")).startswith("#!/usr/bin/env python3\n"))
        self.assertTrue(read(command("statgrab")).startswith("#!/bin/sh\n"))

    def test_packageDataLink(self):
        """
        C{prokshy/examples/command.d} is a relative link to the samples, so
        that they are installed as package data.
        """
        link = os.path.join(ROOT, "prokshy", "examples", "command.d")
        self.assertTrue(os.path.islink(link))
        self.assertEqual(os.readlink(link), "../../etc/prokshy/command.d")
        self.assertEqual(os.path.realpath(link), os.path.realpath(COMMANDS))

    def test_statgrabSyntax(self):
        result = run(["sh", "-n", command("statgrab")])
        self.assertEqual(result.returncode, 0, result.stderr)


def loadScript(name):
    """
    Import a Python sample command as a module, without running it.
    """
    loader = importlib.machinery.SourceFileLoader(
        "prokshy_sample_" + name, command(name)
    )
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


class SysinfoTests(unittest.TestCase):
    """
    Tests for the C{sysinfo} sample command.
    """

    def test_output(self):
        """
        C{sysinfo} ignores its input and prints sorted C{key = value} lines,
        among them the hostname.
        """
        result = run([command("sysinfo")], stdin=b"whatever\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, b"")
        lines = result.stdout.decode().splitlines()
        self.assertTrue(lines)
        facts = {}
        for line in lines:
            self.assertRegex(line, r"^[a-z0-9_.]+ = \S.*$")
            key, _, value = line.partition(" = ")
            facts[key] = value
        self.assertEqual([line.partition(" = ")[0] for line in lines], sorted(facts))
        self.assertEqual(facts["general.hostname"], socket.gethostname())
        self.assertEqual(facts["general.os_name"], os.uname().sysname)
        self.assertEqual(int(facts["general.ncpus"]), os.cpu_count())
        self.assertGreaterEqual(int(facts["general.uptime"]), 0)
        for key in ("load.min1", "load.min5", "load.min15"):
            float(facts[key])
        if os.path.exists("/proc/meminfo") or sys.platform.startswith("freebsd"):
            self.assertGreater(int(facts["mem.total"]), 0)

    def test_freebsdFallbacks(self):
        """
        Without C{/proc}, uptime comes from C{kern.boottime} and free memory
        from the page counters, as on FreeBSD.
        """
        module = loadScript("sysinfo")
        values = {
            "kern.boottime": "{ sec = 1000, usec = 5 } Thu Jan  1 00:16:40 1970",
            "vm.stats.vm.v_free_count": "10",
            "hw.pagesize": "4096",
            "hw.physmem": "8192",
        }

        def noProc(*args, **kwargs):
            raise FileNotFoundError(2, "No such file or directory")

        class FakeTime:
            @staticmethod
            def time():
                return 4600.5

        # A throwaway module: its globals can simply be replaced.
        module.open = noProc
        module.sysctl = values.get
        module.time = FakeTime
        self.assertEqual(module.uptime(), 3600)
        total, free = module.memory()
        self.assertEqual(free, 40960)
        self.assertGreater(total, 0)


class FileioTests(unittest.TestCase):
    """
    Tests for the C{fileio} sample command.
    """

    def setUp(self):
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory)
        self.path = os.path.join(self.directory, "hello.txt")

    def fileio(self, line):
        if isinstance(line, str):
            line = line.encode()
        return run([command("fileio")], stdin=line)

    def write(self, path, content):
        encoded = base64.b64encode(content).decode()
        return self.fileio(f"filename={path},mode=write,content={encoded}")

    def test_roundTrip(self):
        """
        What is written can be read back, in base64.
        """
        content = bytes(range(256)) * 3 + b"Hello!\n"
        result = self.write(self.path, content)
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, b"", b""))
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), content)
        result = self.fileio(f"filename={self.path},mode=read\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(base64.b64decode(result.stdout, validate=True), content)

    def test_readDefault(self):
        """
        The mode defaults to read; a large file is encoded in one piece.
        """
        content = os.urandom(3 * 64 * 1024 + 1)
        with open(self.path, "wb") as f:
            f.write(content)
        result = self.fileio(f"filename={self.path}")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(base64.b64decode(result.stdout, validate=True), content)

    def test_writeEmpty(self):
        result = self.fileio(f"mode=write,filename={self.path}")
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"")

    def test_writeReplacesAtomically(self):
        """
        Writing replaces an existing file, keeps its permission bits and
        leaves no temporary file behind.
        """
        with open(self.path, "wb") as f:
            f.write(b"old contents that are longer")
        os.chmod(self.path, 0o640)
        result = self.write(self.path, b"new")
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"new")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)
        self.assertEqual(os.listdir(self.directory), ["hello.txt"])

    def test_writeThroughSymlink(self):
        """
        A symbolic link is written through, not replaced.
        """
        os.symlink("hello.txt", os.path.join(self.directory, "link"))
        result = self.write(os.path.join(self.directory, "link"), b"via link")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(os.path.islink(os.path.join(self.directory, "link")))
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"via link")

    def assertFails(self, line, code, message):
        result = self.fileio(line)
        self.assertEqual(result.returncode, code, result.stderr)
        self.assertEqual(result.stdout, b"")
        self.assertIn(message.encode(), result.stderr)
        self.assertTrue(result.stderr.startswith(b"fileio: "), result.stderr)
        self.assertNotIn(b"Traceback", result.stderr)

    def test_readMissing(self):
        self.assertFails(f"filename={self.path}", 1, "No such file or directory")

    def test_writeMissingDirectory(self):
        path = os.path.join(self.directory, "no", "such")
        self.assertFails(f"filename={path},mode=write", 1, "No such file")

    def test_writeDirectory(self):
        """
        A directory is not replaced by a file.
        """
        self.assertFails(f"filename={self.directory},mode=write", 1, "directory")
        self.assertTrue(os.path.isdir(self.directory))

    def test_badArguments(self):
        """
        Bad arguments exit with code 2.
        """
        for line, message in [
            ("", "filename is required"),
            ("mode=read", "filename is required"),
            ("filename=relative.txt", "absolute"),
            (f"filename={self.path},mode=delete", "mode"),
            (f"filename={self.path},mode=write,content=@@@", "base64"),
            (f"filename={self.path},content=SGk=", "content"),
            (f"filename={self.path},owner=root", "unknown key"),
            (f"filename={self.path},filename=/etc/passwd", "more than once"),
            ("filename", "key=value"),
        ]:
            self.assertFails(line, 2, message)
        self.assertFalse(os.path.exists(self.path))


class StatgrabTests(unittest.TestCase):
    """
    Tests for the C{statgrab} sample command.
    """

    def test_missing(self):
        """
        Without statgrab the wrapper fails with code 127 and a one-line
        message on stderr, and prints nothing.
        """
        if sys.platform.startswith("freebsd"):
            raise unittest.SkipTest("would install libstatgrab with pkg")
        if shutil.which("statgrab", path=STATGRAB_PATH):
            raise unittest.SkipTest("statgrab is installed here")
        # The wrapper sets its own PATH; an empty one here makes sure it
        # does not depend on the caller's.
        result = run([command("statgrab")], stdin=b"ignored\n", env={"PATH": ""})
        self.assertEqual(result.returncode, 127)
        self.assertEqual(result.stdout, b"")
        self.assertEqual(
            result.stderr,
            b"statgrab: statgrab is not installed (install libstatgrab)\n",
        )
