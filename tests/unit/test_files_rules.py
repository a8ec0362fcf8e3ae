"""
L{prokshy.files.rules}: the --allow-files walk, every refusal, and
L{prokshy.files.wire}: the header line, the commit signal, temp names.
"""

import os
import stat
import shutil
import tempfile

from twisted.trial.unittest import TestCase

from prokshy.files import rules, wire
from prokshy.files.rules import FileRefused, FileRules, checkAllowDir


class RulesTests(TestCase):
    def setUp(self):
        self.top = tempfile.mkdtemp(prefix="pkfiles-")
        os.chmod(self.top, 0o755)
        self.addCleanup(shutil.rmtree, self.top, True)
        self.allow = os.path.join(self.top, "allow")
        os.mkdir(self.allow, 0o755)
        self.outside = os.path.join(self.top, "outside")
        os.mkdir(self.outside, 0o755)
        with open(os.path.join(self.outside, "secret"), "w") as f:
            f.write("secret")
        with open(os.path.join(self.allow, "ok"), "w") as f:
            f.write("ok")
        os.chmod(os.path.join(self.allow, "ok"), 0o644)
        self.rules = FileRules([self.allow])

    def refused(self, code, fragment, f, *args):
        e = self.assertRaises(FileRefused, f, *args)
        self.assertEqual(e.code, code, e.message)
        self.assertIn(fragment, e.message)
        self.assertNotIn("\n", e.message)
        return e

    def read(self, path):
        fd, st = self.rules.openForRead(path)
        os.close(fd)
        return st

    def test_readInside(self):
        st = self.read(os.path.join(self.allow, "ok"))
        self.assertEqual(st.st_size, 2)
        # "." and empty components are dropped
        self.read(self.allow + "/./ok")
        self.read(self.allow + "//ok")

    def test_noDirs(self):
        e = self.refused(rules.NOT_ALLOWED, "no --allow-files directory on the guest",
                         FileRules(()).openForRead, os.path.join(self.allow, "ok"))
        self.assertIn(self.allow, e.message)

    def test_outside(self):
        self.refused(rules.NOT_ALLOWED, "not inside an --allow-files directory",
                     self.rules.openForRead, os.path.join(self.outside, "secret"))
        # a prefix of a name is not a parent
        os.mkdir(self.allow + "x", 0o755)
        self.refused(rules.NOT_ALLOWED, "not inside", self.rules.openForWrite, self.allow + "x/f")

    def test_dotDot(self):
        self.refused(rules.NOT_ALLOWED, "'..'", self.rules.openForRead, self.allow + "/../outside/secret")
        self.refused(rules.NOT_ALLOWED, "'..'", self.rules.openForWrite, self.allow + "/sub/../ok")

    def test_relative(self):
        self.refused(rules.NOT_ALLOWED, "not an absolute path", self.rules.openForRead, "allow/ok")

    def test_badPath(self):
        self.refused(rules.BAD_OPEN, "NUL", self.rules.openForRead, self.allow + "/o\0k")
        self.refused(rules.BAD_OPEN, "non-empty", self.rules.openForRead, "")
        self.refused(rules.BAD_OPEN, "bytes", self.rules.openForRead, "/" + "a" * 5000)

    def test_symlinkOut(self):
        """
        A symbolic link as the file, pointing out of DIR: refused, for read
        and for write (which would replace the link, never follow it).
        """
        link = os.path.join(self.allow, "link")
        os.symlink(os.path.join(self.outside, "secret"), link)
        self.refused(rules.NOT_ALLOWED, "symbolic link", self.rules.openForRead, link)
        self.refused(rules.NOT_ALLOWED, "symbolic link", self.rules.openForWrite, link)

    def test_symlinkInsidePointingOut(self):
        """
        A directory link below DIR pointing out: refused on the way.
        """
        os.symlink(self.outside, os.path.join(self.allow, "d"))
        self.refused(rules.NOT_ALLOWED, "is a symbolic link", self.rules.openForRead, self.allow + "/d/secret")
        self.refused(rules.NOT_ALLOWED, "is a symbolic link", self.rules.openForWrite, self.allow + "/d/new")

    def test_symlinkInsidePointingInside(self):
        """
        Even a link that stays inside DIR is not followed.
        """
        os.mkdir(os.path.join(self.allow, "real"), 0o755)
        os.symlink("real", os.path.join(self.allow, "alias"))
        self.refused(rules.NOT_ALLOWED, "symbolic link", self.rules.openForWrite, self.allow + "/alias/f")

    def test_dirItselfSymlink(self):
        """
        DIR itself a symbolic link: refused at start-up, and at each open
        if it became one afterwards.
        """
        link = os.path.join(self.top, "linkdir")
        os.symlink(self.allow, link)
        e = self.assertRaises(ValueError, checkAllowDir, link)
        self.assertIn("symbolic link", str(e))
        r = FileRules([link])
        self.refused(rules.NOT_ALLOWED, "symbolic link", r.openForRead, link + "/ok")

    def test_worldWritableDir(self):
        sub = os.path.join(self.allow, "pub")
        os.mkdir(sub)
        os.chmod(sub, 0o777)
        self.refused(rules.NOT_ALLOWED, "group- or world-writable", self.rules.openForWrite, sub + "/f")
        os.chmod(sub, 0o1777)  # sticky does not help
        self.refused(rules.NOT_ALLOWED, "group- or world-writable", self.rules.openForWrite, sub + "/f")

    def test_groupWritableAllowDir(self):
        os.chmod(self.allow, 0o775)
        self.refused(rules.NOT_ALLOWED, "group- or world-writable", self.rules.openForRead, self.allow + "/ok")
        e = self.assertRaises(ValueError, checkAllowDir, self.allow)
        self.assertIn("group- or world-writable", str(e))

    def test_groupWritableFile(self):
        path = os.path.join(self.allow, "gw")
        with open(path, "w") as f:
            f.write("x")
        os.chmod(path, 0o664)
        self.refused(rules.NOT_ALLOWED, "group- or world-writable", self.rules.openForRead, path)
        self.refused(rules.NOT_ALLOWED, "group- or world-writable", self.rules.openForWrite, path)

    def test_foreignOwner(self):
        """
        A directory owned by someone else than root or the agent.
        """
        r = FileRules([self.allow], uid=os.geteuid() + 12345)
        if os.geteuid() == 0:
            os.chown(self.allow, 4242, -1)
            self.addCleanup(os.chown, self.allow, 0, -1)
            r = FileRules([self.allow], uid=0)
        e = self.assertRaises(FileRefused, r.openForRead, self.allow + "/ok")
        self.assertEqual(e.code, rules.NOT_ALLOWED)
        self.assertIn("owned by uid", e.message)

    def test_fifo(self):
        path = os.path.join(self.allow, "fifo")
        os.mkfifo(path, 0o644)
        self.refused(rules.NOT_A_FILE, "a fifo", self.rules.openForRead, path)
        self.refused(rules.NOT_A_FILE, "a fifo", self.rules.openForWrite, path)

    def test_socket(self):
        # A socket file made by mknod, not bound: a unit test opens no
        # socket (tests/unit/test_isolation.py).
        path = os.path.join(self.allow, "s")
        os.mknod(path, stat.S_IFSOCK | 0o600)
        self.refused(rules.NOT_A_FILE, "a socket", self.rules.openForRead, path)

    def test_device(self):
        fr = FileRules(["/dev"], uid=os.geteuid())
        e = self.assertRaises(FileRefused, fr.openForRead, "/dev/null")
        self.assertIn(e.code, (rules.NOT_A_FILE, rules.NOT_ALLOWED))

    def test_directory(self):
        os.mkdir(os.path.join(self.allow, "d"), 0o755)
        self.refused(rules.NOT_A_FILE, "a directory", self.rules.openForRead, self.allow + "/d")
        self.refused(rules.NOT_A_FILE, "a directory", self.rules.openForWrite, self.allow + "/d")
        self.refused(rules.NOT_A_FILE, "an --allow-files directory", self.rules.openForRead, self.allow)

    def test_missing(self):
        self.refused(rules.NO_SUCH_FILE, "no such file", self.rules.openForRead, self.allow + "/nope")
        target = self.rules.openForWrite(self.allow + "/new")
        self.assertFalse(target.exists)
        target.close()

    def test_missingParent(self):
        self.refused(rules.NO_SUCH_FILE, "no such directory", self.rules.openForWrite, self.allow + "/no/f")
        self.refused(rules.NO_SUCH_FILE, "no such directory", self.rules.openForRead, self.allow + "/no/f")

    def test_parentIsAFile(self):
        self.refused(rules.NO_SUCH_FILE, "is not a directory", self.rules.openForWrite, self.allow + "/ok/f")

    def test_unreadable(self):
        if os.geteuid() == 0:
            raise self.skipTest("root reads anything")
        path = os.path.join(self.allow, "closed")
        with open(path, "w") as f:
            f.write("x")
        os.chmod(path, 0o200)
        self.refused(rules.FILE_ERROR, "Permission denied", self.rules.openForRead, path)

    def test_longestBase(self):
        """
        Nested DIRs: the deepest is the base (its own checks apply).
        """
        inner = os.path.join(self.allow, "inner")
        os.mkdir(inner, 0o755)
        r = FileRules([self.allow, inner])
        self.assertEqual(r._base(inner + "/x")[0], inner)

    def test_putTarget(self):
        """
        The temporary file: O_EXCL, 0600, beside the target, named
        .NAME.prokshy-RANDOM; commit renames it over the target with the
        mode and mtime; discard removes it.
        """
        target = self.rules.openForWrite(self.allow + "/ok")
        self.assertTrue(target.exists)
        fd = target.createTemp()
        name = target.tempName
        self.assertTrue(wire.isTempName(name), name)
        self.assertTrue(name.startswith(".ok.prokshy-"))
        self.assertEqual(os.stat(os.path.join(self.allow, name)).st_mode & 0o777, 0o600)
        os.write(fd, b"new")
        target.commit(fd, 0o640, 1000000.0)
        target.close()
        st = os.stat(self.allow + "/ok")
        self.assertEqual((st.st_mode & 0o777, st.st_mtime), (0o640, 1000000.0))
        with open(self.allow + "/ok", "rb") as f:
            self.assertEqual(f.read(), b"new")
        self.assertEqual(sorted(os.listdir(self.allow)), ["ok"])
        target = self.rules.openForWrite(self.allow + "/ok")
        fd = target.createTemp()
        os.close(fd)
        target.close()
        self.assertEqual(sorted(os.listdir(self.allow)), ["ok"])

    def test_tempNameExclusive(self):
        target = self.rules.openForWrite(self.allow + "/f")
        self.addCleanup(target.close)
        fd = target.createTemp(token="abc")
        os.close(fd)
        e = self.assertRaises(FileRefused, target.createTemp, "abc")
        self.assertEqual(e.code, rules.FILE_ERROR)

    def test_checkAllowDir(self):
        self.assertEqual(checkAllowDir(self.allow + "/"), self.allow)
        for bad, fragment in (("relative", "absolute"), (self.allow + "/ok", "not a directory"),
                              (self.allow + "/missing", "no such directory"),
                              (self.allow + "/../allow", "'..'")):
            e = self.assertRaises(ValueError, checkAllowDir, bad)
            self.assertIn(fragment, str(e))
            self.assertTrue(str(e).startswith("--allow-files "))


class WireTests(TestCase):
    def test_header(self):
        line = wire.encodeHeader(10, 0o644, 12.5)
        self.assertTrue(line.endswith(b"\n"))
        r = wire.HeaderReader()
        self.assertEqual(r.feed(line[:5]), b"")
        self.assertIsNone(r.header)
        self.assertEqual(r.feed(line[5:] + b"DATA"), b"DATA")
        self.assertEqual(r.header, {"size": 10, "mode": 0o644, "mtime": 12.5})
        self.assertEqual(r.feed(b"more"), b"more")

    def test_headerTooLong(self):
        r = wire.HeaderReader()
        r.feed(b"x" * 4000)
        self.assertRaises(wire.HeaderError, r.feed, b"y" * 200)

    def test_headerBad(self):
        for line in (b"[]\n", b"nope\n", b'{"size": -1, "mode": 1, "mtime": 1}\n',
                     b'{"size": 1, "mode": "x", "mtime": 1}\n', b'{"size": 1, "mode": 1}\n'):
            self.assertRaises(wire.HeaderError, wire.HeaderReader().feed, line)

    def test_commit(self):
        digest = "a" * 64
        self.assertEqual(wire.parseCommit(wire.commitSignal(3, digest)), (3, digest))
        for bad in ({"signal": "TERM"}, {"signal": "commit", "size": 1}, {"signal": "commit", "size": -1,
                    "sha256": digest}, {"signal": "commit", "size": 1, "sha256": "A" * 64}, []):
            self.assertRaises(ValueError, wire.parseCommit, bad)
        self.assertEqual(wire.parseExit(wire.exitDocument(3, digest)), (3, digest))

    def test_putArgs(self):
        r = wire.parsePutArgs({"path": "/a", "mode": 0o600, "mtime": 5, "size": 3})
        self.assertEqual((r.path, r.mode, r.mtime, r.size), ("/a", 0o600, 5, 3))
        for bad in ({}, {"path": 3}, {"path": "/a", "mode": 0o1000}, {"path": "/a", "mode": True},
                    {"path": "/a", "mtime": float("nan")}, {"path": "/a", "size": -1}):
            e = self.assertRaises(FileRefused, wire.parsePutArgs, bad)
            self.assertEqual(e.code, rules.BAD_OPEN)

    def test_tempName(self):
        self.assertEqual(wire.tempName("a.txt", "00ff"), ".a.txt.prokshy-00ff")
        long = wire.tempName("é" * 200)
        self.assertLessEqual(len(long.encode("utf-8")), 255)
        self.assertTrue(wire.isTempName(long))

    def test_digest(self):
        import hashlib

        d = wire.Digest()
        d.update(b"ab")
        d.update(b"c")
        self.assertEqual((d.size, d.hexdigest()), (3, hashlib.sha256(b"abc").hexdigest()))
