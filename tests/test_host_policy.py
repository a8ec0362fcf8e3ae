"""
Tests for L{prokshy.host.policy.listenerPolicy}: what each listener of the
host daemon allows, decided from its endpoint string.
"""

from twisted.internet import reactor
from twisted.internet.endpoints import UNIXServerEndpoint, serverFromString
from twisted.trial.unittest import SynchronousTestCase

from prokshy.host.policy import ListenerPolicy, PolicyError, listenerPolicy

def _options(description):
    """
    The C{key=value} options of an endpoint string, as a list of pairs in
    order (escaped colons respected).
    """
    parts, cur, escaped = [], "", False
    for ch in description:
        if escaped:
            cur += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [tuple(p.split("=", 1)) for p in parts[1:] if "=" in p]


class UnixTests(SynchronousTestCase):
    """
    Unix sockets are local: line protocol allowed, no token, and safe
    defaults filled in.  (Other defaults may be added too: only these are
    checked.)
    """

    def assertPolicy(self, description, expected, haveToken=False):
        """
        The policy keeps C{description} as it is, only appending options,
        and the result has exactly once each option of C{expected}.
        """
        policy = listenerPolicy(description, haveToken)
        self.assertIsInstance(policy, ListenerPolicy)
        self.assertEqual((policy.local, policy.legacy, policy.requireToken), (True, True, False))
        self.assertTrue(policy.description.startswith(description), policy.description)
        options = _options(policy.description)
        keys = [k for k, v in options]
        self.assertEqual(len(keys), len(set(keys)), "an option given twice: %s" % (policy.description,))
        for key, value in expected.items():
            self.assertIn((key, value), options, policy.description)
        return policy

    def test_defaultsAdded(self):
        """
        C{mode=600} and C{lockfile=1} are added when not given.
        """
        self.assertPolicy("unix:/run/p.sock", {"mode": "600", "lockfile": "1"})

    def test_defaultsAddedWithToken(self):
        """
        Having a token changes nothing for a unix socket.
        """
        self.assertPolicy("unix:/run/p.sock", {"mode": "600", "lockfile": "1"}, haveToken=True)

    def test_explicitModeKept(self):
        """
        An explicit mode is kept; the lockfile is added.
        """
        self.assertPolicy("unix:/run/p.sock:mode=660", {"mode": "660", "lockfile": "1"})

    def test_explicitLockfileKept(self):
        """
        An explicit lockfile (even 0) is kept; the mode is added.
        """
        self.assertPolicy("unix:/run/p.sock:lockfile=0", {"mode": "600", "lockfile": "0"})

    def test_bothKept(self):
        self.assertPolicy(
            "unix:address=/run/p.sock:lockfile=1:mode=640:backlog=10",
            {"address": "/run/p.sock", "mode": "640", "lockfile": "1", "backlog": "10"},
        )

    def test_kindCaseInsensitive(self):
        """
        C{UNIX:} is a unix socket too (Twisted's parser ignores the case of
        the kind).
        """
        self.assertPolicy("UNIX:/run/p.sock", {"mode": "600", "lockfile": "1"})

    def test_pathLookingLikeAnOption(self):
        """
        A path containing C{mode=} is a path, not an option.
        """
        self.assertPolicy("unix:/run/mode=1.sock", {"mode": "600", "lockfile": "1"})

    def test_escapedColonInPath(self):
        """
        An escaped colon in the path stays part of the path.
        """
        policy = self.assertPolicy("unix:/run/a\\:b.sock", {"mode": "600", "lockfile": "1"})
        endpoint = serverFromString(reactor, policy.description)
        self.assertEqual(endpoint._address, "/run/a:b.sock")
        self.assertEqual(endpoint._mode, 0o600)

    def test_twistedParsesTheDefaults(self):
        """
        The defaults mean what they should to Twisted: owner-only mode, and
        a lock file (so a stale socket is replaced at start).
        """
        policy = listenerPolicy("unix:/run/p.sock", False)
        endpoint = serverFromString(reactor, policy.description)
        self.assertIsInstance(endpoint, UNIXServerEndpoint)
        self.assertEqual(endpoint._address, "/run/p.sock")
        self.assertEqual(endpoint._mode, 0o600)
        self.assertTrue(endpoint._wantPID)


class LoopbackTests(SynchronousTestCase):
    """
    TCP/SSL listeners on a loopback interface are local: line protocol
    allowed, no token.
    """

    def assertLocal(self, description):
        for haveToken in (False, True):
            policy = listenerPolicy(description, haveToken)
            self.assertEqual((policy.local, policy.legacy, policy.requireToken), (True, True, False), description)
            self.assertTrue(policy.description.startswith(description), policy.description)

    def test_ipv4(self):
        self.assertLocal("tcp:7000:interface=127.0.0.1")

    def test_ipv4Range(self):
        """
        All of 127.0.0.0/8 is loopback.
        """
        self.assertLocal("tcp:7000:interface=127.1.2.3")

    def test_ipv6Escaped(self):
        """
        IPv6 interfaces have their colons escaped in endpoint strings.
        """
        self.assertLocal("tcp6:7000:interface=\\:\\:1")

    def test_ipv6Bracketed(self):
        self.assertLocal("tcp6:7000:interface=[\\:\\:1]")

    def test_ipv6Long(self):
        self.assertLocal("tcp6:7000:interface=0\\:0\\:0\\:0\\:0\\:0\\:0\\:1")

    def test_localhost(self):
        self.assertLocal("tcp:7000:interface=localhost")

    def test_keywordPort(self):
        """
        The interface may come before or after a C{port=} keyword.
        """
        self.assertLocal("tcp:port=7000:interface=127.0.0.1")
        self.assertLocal("tcp:interface=127.0.0.1:port=7000")

    def test_ssl(self):
        self.assertLocal("ssl:7000:interface=127.0.0.1:privateKey=key.pem:certKey=cert.pem")

    def test_kindCaseInsensitive(self):
        self.assertLocal("TCP:7000:interface=127.0.0.1")

    def test_twistedAgrees(self):
        """
        The interface the policy judged is the one Twisted listens on.
        """
        endpoint = serverFromString(reactor, "tcp6:7000:interface=\\:\\:1")
        self.assertEqual(endpoint._interface, "::1")


class NonLoopbackTests(SynchronousTestCase):
    """
    Any other listener needs a token, and serves no line protocol.
    """

    def assertRemote(self, description):
        e = self.assertRaises(PolicyError, listenerPolicy, description, False)
        self.assertIn("--auth-token-file", str(e))
        self.assertIn("not loopback", str(e))
        policy = listenerPolicy(description, True)
        self.assertEqual((policy.local, policy.legacy, policy.requireToken), (False, False, True), description)
        self.assertTrue(policy.description.startswith(description), policy.description)

    def test_allInterfaces(self):
        self.assertRemote("tcp:7000:interface=0.0.0.0")

    def test_noInterface(self):
        """
        No interface means all interfaces.
        """
        self.assertRemote("tcp:7000")
        self.assertRemote("tcp:port=7000")

    def test_ipv6Any(self):
        self.assertRemote("tcp6:7000:interface=\\:\\:")

    def test_otherAddress(self):
        self.assertRemote("tcp:7000:interface=10.0.0.1")
        self.assertRemote("tcp:7000:interface=192.168.1.1")

    def test_hostnameNotLocalhost(self):
        """
        Only the name C{localhost} is trusted, not names that start with it.
        """
        self.assertRemote("tcp:7000:interface=localhost.example.com")

    def test_lastInterfaceWins(self):
        """
        Given twice, the interface Twisted uses (the last) is the one judged.
        """
        description = "tcp:7000:interface=127.0.0.1:interface=0.0.0.0"
        self.assertEqual(serverFromString(reactor, description)._interface, "0.0.0.0")
        self.assertRemote(description)

    def test_unescapedIPv6(self):
        """
        An IPv6 loopback written without escapes is not taken for loopback
        (Twisted would not parse it as one address either).
        """
        self.assertRemote("tcp6:7000:interface=::1")

    def test_otherKinds(self):
        """
        Endpoint kinds other than unix, tcp, tcp6 and ssl are never local.
        """
        self.assertRemote("systemd:domain=INET:index=0")
        self.assertRemote("udp:7000:interface=127.0.0.1")
