"""
L{prokshy.forward.allow}: the guest decides what the host may reach.
"""

from twisted.trial.unittest import TestCase

from prokshy.forward.allow import DEFAULT_CONNECT, DEFAULT_LISTEN, PatternError, parsePatterns, resolvedPath
from prokshy.forward.spec import Tcp, Unix


class AllowTests(TestCase):
    def test_defaults(self):
        """
        By default connections may reach loopback only, and reverse forwards
        may bind loopback on ports 1024 and up; no unix path at all.
        """
        connect = parsePatterns([], DEFAULT_CONNECT)
        listen = parsePatterns([], DEFAULT_LISTEN)
        self.assertTrue(connect.allows(Tcp("127.0.0.1", 22)))
        self.assertTrue(connect.allows(Tcp("::1", 1)))
        self.assertFalse(connect.allows(Tcp("10.0.0.1", 22)))
        self.assertFalse(connect.allows(Tcp("localhost", 22)))
        self.assertFalse(connect.allows(Unix("/run/app.sock")))
        self.assertTrue(listen.allows(Tcp("127.0.0.1", 1024)))
        self.assertFalse(listen.allows(Tcp("127.0.0.1", 1023)))
        self.assertFalse(listen.allows(Tcp("", 8080)))
        self.assertFalse(listen.allows(Unix("/tmp/x.sock")))

    def test_patterns(self):
        allow = parsePatterns(["*:22", "[::1]:8000-8009", "/run/app/*.sock", "192.168.1.5:*"], ())
        self.assertTrue(allow.allows(Tcp("10.9.9.9", 22)))
        self.assertFalse(allow.allows(Tcp("10.9.9.9", 23)))
        self.assertTrue(allow.allows(Tcp("::1", 8009)))
        self.assertFalse(allow.allows(Tcp("::1", 8010)))
        self.assertTrue(allow.allows(Tcp("192.168.1.5", 65535)))
        self.assertTrue(allow.allows(Unix("/run/app/web.sock")))
        self.assertTrue(allow.allows(Unix("/run/app//./web.sock")))
        self.assertFalse(allow.allows(Unix("/run/app/sub/web.sock")), "* does not cross /")
        self.assertFalse(allow.allows(Unix("/run/app/../etc/web.sock")))
        self.assertFalse(allow.allows(Unix("run/app/web.sock")))

    def test_none(self):
        allow = parsePatterns(["none"], DEFAULT_CONNECT)
        self.assertTrue(allow.off)
        self.assertFalse(allow.allows(Tcp("127.0.0.1", 22)))
        self.assertIn("turned this direction off", allow.refusal(Tcp("127.0.0.1", 22), "--allow-connect"))
        self.assertRaises(PatternError, parsePatterns, ["none", "127.0.0.1:*"], ())

    def test_refusal(self):
        allow = parsePatterns([], DEFAULT_CONNECT)
        self.assertIsNone(allow.refusal(Tcp("127.0.0.1", 80), "--allow-connect"))
        self.assertEqual(
            allow.refusal(Tcp("10.0.0.1", 80), "--allow-connect"),
            "10.0.0.1:80 is not allowed by the guest (--allow-connect 127.0.0.1:* [::1]:*)",
        )

    def test_badPatterns(self):
        for text, message in {
            "127.0.0.1": "is not HOST:PORT",
            "h:0": "ports are 1-65535",
            "h:9-1": "low before high",
            "h:x": "the port must be",
            "::1:22": "is not HOST:PORT",
            "[::1:22": "'[' without ']'",
            "/a/../b": "without '..'",
            "h_x:1": "neither an address nor a host name",
        }.items():
            error = self.assertRaises(PatternError, parsePatterns, [text], ())
            self.assertIn(message, str(error), text)

    def test_localhostPattern(self):
        """
        A pattern naming localhost means 127.0.0.1, as a target does
        (targets are normalised so): it is not a pattern that never matches.
        """
        allow = parsePatterns(["localhost:*"], ())
        self.assertTrue(allow.allows(Tcp("127.0.0.1", 22)))
        self.assertFalse(allow.allows(Tcp("10.0.0.1", 22)))

    def test_portZeroCovered(self):
        """
        A listening port 0 (the kernel's pick, 1024 and up) is allowed only
        where every such port is: split ranges with a gap are not enough.
        """
        for patterns, allowed in [
            (DEFAULT_LISTEN, True),
            (["127.0.0.1:1024-2000", "127.0.0.1:2001-65535"], True),
            (["127.0.0.1:1024-2000", "127.0.0.1:60000-65535"], False),
            (["*:*"], True),
            (["10.0.0.1:*"], False),
        ]:
            why = parsePatterns(patterns, ()).refusal(Tcp("127.0.0.1", 0), "--client-allow-listen", "the daemon")
            self.assertEqual(why is None, allowed, patterns)
            if not allowed:
                self.assertIn("127.0.0.1:0 is not allowed by the daemon", why)

    def test_symlinkResolved(self):
        """
        With C{resolve}, a unix path is allowed only if the path it really
        names is allowed too: a symlink in an allowed directory does not
        reach (or create a socket in) another.
        """
        allow = parsePatterns(["/run/app/*.sock"], ())
        links = {"/run/app/evil.sock": "/var/run/docker.sock", "/run/app/ok.sock": "/run/app/ok.sock"}
        self.assertEqual(
            allow.refusal(Unix("/run/app/evil.sock"), "--allow-connect", resolve=links.get),
            "/run/app/evil.sock (really /var/run/docker.sock) is not allowed by the guest"
            " (--allow-connect /run/app/*.sock)",
        )
        self.assertIsNone(allow.refusal(Unix("/run/app/ok.sock"), "--allow-connect", resolve=links.get))

    def test_resolvedPath(self):
        """
        resolvedPath follows symlinks in a socket path's directory, whether
        or not the socket exists yet.
        """
        import os
        import tempfile

        base = os.path.realpath(tempfile.mkdtemp())
        self.addCleanup(__import__("shutil").rmtree, base)
        os.mkdir(os.path.join(base, "real"))
        os.symlink(os.path.join(base, "real"), os.path.join(base, "link"))
        self.assertEqual(resolvedPath(os.path.join(base, "link", "s.sock")), os.path.join(base, "real", "s.sock"))
        self.assertEqual(resolvedPath(os.path.join(base, "real", "s.sock")), os.path.join(base, "real", "s.sock"))
