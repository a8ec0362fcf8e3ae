"""
C{prokshy --push} and C{--pull} as real processes against the real guest
agent (simulated VMs, L{tests.hostharness}): direct on a VM's socket and
through a real daemon; sha256 compared end to end, mode and mtime, C{-}
both ways, several VMs, every refusal with its message and exit code, a
cancelled transfer leaving the target as it was, and no temporary file
left behind.
"""

import hashlib
import json
import os
import signal

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from prokshy.files.wire import isTempName
from tests.hostharness import HostHarness, waitFor
from tests.system.test_cli_framed import CLITestMixin, runCLI, startCLI

MB = 1000 * 1000


def sha(data):
    return hashlib.sha256(data).hexdigest()


def allowDirs(harness):
    """
    Give each VM's agent its own --allow-files directory (before start).
    """
    dirs = {}
    for name, vm in harness.vms.items():
        d = os.path.join(harness.dir, name + ".files")
        os.mkdir(d, 0o755)
        os.chmod(d, 0o755)
        vm.guestArgs += ["--allow-files", d]
        dirs[name] = d
    return dirs


def temps(directory):
    return [n for n in os.listdir(directory) if isTempName(n)]


class Files:
    def write(self, name, data, mode=0o644, where=None):
        path = os.path.join(where or self.h.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        return path

    def read(self, path):
        with open(path, "rb") as f:
            return f.read()


class DirectTests(Files, CLITestMixin, TestCase):
    timeout = 120

    @inlineCallbacks
    def setUp(self):
        self.h = HostHarness(self, daemon=False)
        self.allow = allowDirs(self.h)["vm1"]
        yield self.h.start()
        self.sock = self.h.vms["vm1"].socketPath

    def cli(self, *args, **kw):
        return runCLI(self, "--socket-path", self.sock, *args, **kw)

    @inlineCallbacks
    def test_pushPull(self):
        """
        A few MB of random bytes there and back: the same sha256, the mode
        kept both ways, no temporary file left on either side.
        """
        data = os.urandom(3 * MB + 7)
        local = self.write("src.bin", data, 0o640)
        remote = os.path.join(self.allow, "dst.bin")
        out, err, code = yield self.cli("--push", local, remote)
        self.assertEqual((out, err, code), (b"", b"", 0))
        self.assertEqual(sha(self.read(remote)), sha(data))
        self.assertEqual(os.stat(remote).st_mode & 0o777, 0o640)
        os.chmod(remote, 0o600)
        back = os.path.join(self.h.dir, "back.bin")
        out, err, code = yield self.cli("--pull", remote, back)
        self.assertEqual((out, err, code), (b"", b"", 0))
        self.assertEqual(sha(self.read(back)), sha(data))
        self.assertEqual(os.stat(back).st_mode & 0o777, 0o600)
        self.assertEqual(temps(self.allow), [])
        self.assertEqual(temps(self.h.dir), [])

    @inlineCallbacks
    def test_overwriteAndIntoDirectory(self):
        remote = self.write("t", b"old", where=self.allow)
        local = self.write("l", b"new contents")
        out, err, code = yield self.cli("--push", local, remote)
        self.assertEqual(code, 0, err)
        self.assertEqual(self.read(remote), b"new contents")
        into = os.path.join(self.h.dir, "into")
        os.mkdir(into)
        out, err, code = yield self.cli("--pull", remote, into)
        self.assertEqual(code, 0, err)
        self.assertEqual(self.read(os.path.join(into, "t")), b"new contents")

    @inlineCallbacks
    def test_preserve(self):
        local = self.write("m", b"dated")
        os.utime(local, (1000000000, 1000000000.5))
        remote = os.path.join(self.allow, "m")
        yield self.cli("--push", local, remote)
        self.assertNotEqual(os.stat(remote).st_mtime, 1000000000.5)
        out, err, code = yield self.cli("--push", local, remote, "--preserve")
        self.assertEqual(code, 0, err)
        self.assertEqual(os.stat(remote).st_mtime, 1000000000.5)
        os.utime(remote, (2000000000, 2000000000))
        back = os.path.join(self.h.dir, "mb")
        yield self.cli("--pull", remote, back)
        self.assertNotEqual(os.stat(back).st_mtime, 2000000000)
        yield self.cli("--pull", remote, back, "--preserve")
        self.assertEqual(os.stat(back).st_mtime, 2000000000)

    @inlineCallbacks
    def test_dashBothWays(self):
        """
        C{-}: stdin for a push, stdout for a pull.
        """
        data = os.urandom(MB)
        remote = os.path.join(self.allow, "s")
        out, err, code = yield self.cli("--push", "-", remote, stdin=data)
        self.assertEqual((out, err, code), (b"", b"", 0))
        self.assertEqual(self.read(remote), data)
        out, err, code = yield self.cli("--pull", remote, "-")
        self.assertEqual((err, code), (b"", 0))
        self.assertEqual(sha(out), sha(data))

    @inlineCallbacks
    def test_json(self):
        local = self.write("j", b"json", 0o600)
        remote = os.path.join(self.allow, "j")
        out, err, code = yield self.cli("--push", local, remote, "--json")
        self.assertEqual((err, code), (b"", 0))
        record = json.loads(out)
        from prokshy.cli import records

        self.assertEqual(set(record), set(records.KEYS) | {"file"})
        self.assertEqual((record["mode"], record["ok"], record["status"], record["failure"]), ("push", True, 0, None))
        self.assertEqual(record["file"], {"local": local, "remote": remote, "size": 4, "sha256": sha(b"json"),
                                          "mode": 0o600, "mtime": os.stat(local).st_mtime})
        out, err, code = yield self.cli("--pull", remote + "x", os.path.join(self.h.dir, "jj"), "--json")
        record = json.loads(out)
        self.assertEqual(set(record), set(records.KEYS) | {"file"})
        self.assertEqual((record["mode"], record["ok"], record["status"], record["failure"], record["file"]),
                         ("pull", False, 127, "no-such-file", None))
        self.assertIn(remote + "x", record["error"])
        self.assertEqual(code, 127)

    @inlineCallbacks
    def test_refusals(self):
        """
        Each refusal reaches the CLI as one line naming the path and the
        reason, with its exit code, and changes nothing.
        """
        outside = self.write("secret", b"secret")
        os.symlink(outside, os.path.join(self.allow, "out-link"))
        os.symlink(self.h.dir, os.path.join(self.allow, "dir-link"))
        os.mkdir(os.path.join(self.allow, "pub"))
        os.chmod(os.path.join(self.allow, "pub"), 0o777)
        os.mkdir(os.path.join(self.allow, "sub"), 0o755)
        self.write("gw", b"gw", 0o664, where=self.allow)
        os.mkfifo(os.path.join(self.allow, "fifo"), 0o644)
        local = self.write("l", b"l")
        back = os.path.join(self.h.dir, "back")
        a = self.allow
        cases = [
            (("--pull", outside, back), 126, "not inside an --allow-files directory"),
            (("--push", local, outside), 126, "not inside an --allow-files directory"),
            (("--pull", a + "/../secret", back), 126, "'..'"),
            (("--pull", a + "/out-link", back), 126, "symbolic link"),
            (("--push", local, a + "/out-link"), 126, "symbolic link"),
            (("--pull", a + "/dir-link/secret", back), 126, "symbolic link"),
            (("--push", local, a + "/pub/x"), 126, "group- or world-writable"),
            (("--pull", a + "/gw", back), 126, "group- or world-writable"),
            (("--pull", a + "/fifo", back), 126, "a fifo"),
            (("--pull", a + "/sub", back), 126, "a directory"),
            (("--push", local, a + "/sub"), 126, "a directory"),
            (("--pull", a + "/missing", back), 127, "no such file"),
            (("--push", local, a + "/nodir/x"), 127, "no such directory"),
        ]
        for args, status, fragment in cases:
            out, err, code = yield self.cli(*args)
            self.assertEqual(code, status, (args, err))
            self.assertOneLineError(err, fragment, args[1] if args[0] == "--pull" else args[2])
        self.assertEqual(self.read(outside), b"secret")
        self.assertFalse(os.path.exists(back))
        self.assertEqual(temps(self.allow) + temps(self.h.dir), [])

    @inlineCallbacks
    def test_localErrors(self):
        out, err, code = yield self.cli("--push", os.path.join(self.h.dir, "none"), self.allow + "/x")
        self.assertEqual(code, 1)
        self.assertOneLineError(err, "cannot read", "No such file or directory")
        self.write("f", b"f", where=self.allow)
        out, err, code = yield self.cli("--pull", self.allow + "/f", os.path.join(self.h.dir, "no", "x"))
        self.assertEqual(code, 1)
        self.assertOneLineError(err, "cannot write")

    @inlineCallbacks
    def test_usage(self):
        for args, fragment in (
            (("--push", "x", "relative"), "must be absolute"),
            (("--push", "-", "/x", "--vm", "a", "--vm", "b"), "one VM"),
            (("--pull", "/x", "y", "--all-vms"), "one VM"),
            (("--pull", "/x", "-", "--json"), "--json"),
            (("--push", "x", "/y", "--command", "cat"), "--command"),
            (("--preserve", "--command", "cat", "--from-string", ""), "--preserve"),
        ):
            out, err, code = yield self.cli(*args)
            self.assertEqual(code, 2, (args, err))
            self.assertIn(fragment, err.decode())

    @inlineCallbacks
    def test_interruptedPush(self):
        """
        A push cut short (the CLI interrupted while stdin still flows):
        the target is unchanged and the guest's temporary file is removed.
        """
        remote = self.write("keep", b"as it was", where=self.allow)
        proc = startCLI(self, ["--socket-path", self.sock, "--push", "-", remote], stdin=b"x" * 100000,
                        keepStdinOpen=True)
        yield waitFor(lambda: temps(self.allow), "the guest's temporary file", 20)
        proc.transport.signalProcess(signal.SIGINT)
        out, err, code = yield proc.ended
        self.assertEqual(code, 130, err)
        yield waitFor(lambda: not temps(self.allow), "the temporary file to go", 20)
        self.assertEqual(self.read(remote), b"as it was")


class NoAllowFilesTests(CLITestMixin, TestCase):
    timeout = 60

    @inlineCallbacks
    def test_refused(self):
        """
        A guest with no --allow-files refuses every file stream.
        """
        h = yield HostHarness(self, daemon=False).start()
        sock = h.vms["vm1"].socketPath
        out, err, code = yield runCLI(self, "--socket-path", sock, "--pull", "/etc/hostname", h.dir + "/x")
        self.assertEqual(code, 126)
        self.assertOneLineError(err, "no --allow-files directory on the guest", "/etc/hostname")

    @inlineCallbacks
    def test_unsupported(self):
        """
        A guest whose agent does not list the files feature: one line,
        exit 1 (docs/cli.md: C{unsupported}), 209 with
        C{--reserved-exit-codes}.
        """
        from prokshy.guest import execs

        self.patch(execs, "FILES_FEATURE", "not-files")
        h = yield HostHarness(self, daemon=False).start()
        sock = h.vms["vm1"].socketPath
        out, err, code = yield runCLI(self, "--socket-path", sock, "--push", "/etc/hostname", "/tmp/x")
        self.assertEqual(code, 1)
        self.assertOneLineError(err, "the guest's agent (prokshy/", "does not support files")
        out, err, code = yield runCLI(
            self, "--socket-path", sock, "--push", "/etc/hostname", "/tmp/x", "--reserved-exit-codes"
        )
        self.assertEqual(code, 209)


class DaemonTests(Files, CLITestMixin, TestCase):
    timeout = 120

    @inlineCallbacks
    def setUp(self):
        self.h = HostHarness(self, vms=("a", "b"))
        self.dirs = allowDirs(self.h)
        yield self.h.start()
        self.sock = self.h.unixPath

    def cli(self, *args, **kw):
        return runCLI(self, "--socket-path", self.sock, *args, **kw)

    @inlineCallbacks
    def test_pushPullThroughDaemon(self):
        data = os.urandom(2 * MB + 3)
        local = self.write("d.bin", data, 0o604)
        remote = os.path.join(self.dirs["b"], "d.bin")
        out, err, code = yield self.cli("--vm", "b", "--push", local, remote)
        self.assertEqual((out, err, code), (b"", b"", 0))
        self.assertEqual(sha(self.read(remote)), sha(data))
        self.assertEqual(os.stat(remote).st_mode & 0o777, 0o604)
        back = os.path.join(self.h.dir, "back")
        out, err, code = yield self.cli("--vm", "b", "--pull", remote, back)
        self.assertEqual((out, err, code), (b"", b"", 0))
        self.assertEqual(sha(self.read(back)), sha(data))
        out, err, code = yield self.cli("--vm", "b", "--pull", remote, "-")
        self.assertEqual(sha(out), sha(data))
        self.assertEqual(temps(self.dirs["b"]) + temps(self.h.dir), [])

    @inlineCallbacks
    def test_allVMs(self):
        """
        C{--all-vms}: the file reaches each VM; one VM's refusal is its
        own line, prefixed C{vm NAME: }, then the summary line of a run
        on several VMs; the status is the highest (218 with
        C{--reserved-exit-codes}: some VMs failed).
        """
        data = os.urandom(MB)
        local = self.write("all.bin", data)
        # Both agents see the same paths: a's directory exists for b's agent
        # too, but b's --allow-files is its own.
        remote = os.path.join(self.dirs["a"], "all.bin")
        out, err, code = yield self.cli("--all-vms", "--push", local, remote, "--json")
        lines = [json.loads(line) for line in out.splitlines()]
        byVM = {r["vm"]: r for r in lines}
        self.assertEqual(sorted(byVM), ["a", "b"])
        self.assertTrue(byVM["a"]["ok"])
        self.assertEqual(byVM["a"]["file"]["sha256"], sha(data))
        self.assertEqual((byVM["b"]["status"], byVM["b"]["failure"]), (126, "not-allowed"))
        self.assertTrue(byVM["b"]["error"].startswith("vm b: "), byVM["b"]["error"])
        self.assertEqual(code, 126)
        out, err, code = yield self.cli("--all-vms", "--push", local, remote)
        self.assertEqual(code, 126)
        first, summary = err.decode().splitlines()
        self.assertOneLineError(first.encode() + b"\n", "vm b: ", "not inside an --allow-files directory")
        self.assertEqual(summary, "prokshy: 1 of 2 VMs failed: vm b: not-allowed")
        out, err, code = yield self.cli("--all-vms", "--push", local, remote, "--reserved-exit-codes")
        self.assertEqual(code, 218, err)
        # Two VMs that both allow it: each gets it.
        for name in ("a", "b"):
            remote = os.path.join(self.dirs[name], "each.bin")
            out, err, code = yield self.cli("--vm", "a", "--vm", "b", "--push", local, remote)
            results = {line.split(":")[0] for line in err.decode().splitlines()}
            self.assertEqual(code, 126, err)
            self.assertEqual(self.read(remote), data)
        self.assertEqual(temps(self.dirs["a"]) + temps(self.dirs["b"]), [])
