"""
Tests for L{prokshy.host.policy.listenerPolicy}: what each listener of the
host daemon allows, decided from its endpoint string.
"""

from twisted.internet import endpoints, reactor
from twisted.internet.endpoints import UNIXServerEndpoint, serverFromString
from twisted.trial.unittest import SynchronousTestCase

from prokshy.host.policy import ListenerPolicy, PolicyError, listenerPolicy


def _options(description):
    """
    The C{key=value} options of an endpoint string, as a list of pairs in
    order, as Twisted's own tokeniser reads them.
    """
    options, part = [], []
    for token, value in list(endpoints._tokenize(description)) + [(endpoints._OP, ":")]:
        if token is endpoints._STRING:
            part.append(value)
        elif value == ":":
            if len(part) == 2:
                options.append(tuple(part))
            part = []
    return options


def _canonical(description):
    """
    C{description} with its endpoint type in lower case, as the policy
    gives it to Twisted.
    """
    kind, sep, rest = description.partition(":")
    return kind.lower() + sep + rest


class UnixTests(SynchronousTestCase):
    """
    Unix sockets are local: line protocol allowed, no token, and safe
    defaults filled in.  (Other defaults may be added too: only these are
    checked.)
    """

    def assertPolicy(self, description, expected, haveToken=False):
        """
        The policy keeps C{description} as it is (its type in lower case),
        only appending options, and the result has exactly once each option
        of C{expected}.
        """
        policy = listenerPolicy(description, haveToken)
        self.assertIsInstance(policy, ListenerPolicy)
        self.assertEqual((policy.local, policy.legacy, policy.requireToken), (True, True, False))
        self.assertTrue(policy.description.startswith(_canonical(description)), policy.description)
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
        C{UNIX:} is a unix socket too, and the policy writes it C{unix:}:
        Twisted matches its built-in types (C{tcp}, C{unix}, C{ssl}) by
        case, and would not listen on C{UNIX:} at all.
        """
        policy = self.assertPolicy("UNIX:/run/p.sock", {"mode": "600", "lockfile": "1"})
        self.assertRaises(ValueError, serverFromString, reactor, "UNIX:/run/p.sock")
        endpoint = serverFromString(reactor, policy.description)
        self.assertIsInstance(endpoint, UNIXServerEndpoint)
        self.assertEqual((endpoint._address, endpoint._mode), ("/run/p.sock", 0o600))

    def test_pathLookingLikeAnOption(self):
        """
        A path containing C{mode=} is a path when its C{=} is escaped, as
        Twisted reads it; unescaped, Twisted takes C{/run/mode} for a key
        (and cannot listen), so the policy refuses it in one line saying
        how to write it.
        """
        policy = self.assertPolicy("unix:/run/mode\\=1.sock", {"mode": "600", "lockfile": "1"})
        self.assertEqual(serverFromString(reactor, policy.description)._address, "/run/mode=1.sock")
        e = self.assertRaises(PolicyError, listenerPolicy, "unix:/run/mode=1.sock", True)
        self.assertIn("'/run/mode'", str(e))
        self.assertIn("\\=", str(e))
        self.assertNotIn("\n", str(e))

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
            self.assertTrue(policy.description.startswith(_canonical(description)), policy.description)

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
        self.assertTrue(policy.description.startswith(_canonical(description)), policy.description)

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
        An IPv6 loopback written without escapes is not taken for loopback:
        Twisted reads it as C{interface=""} and two more values, and cannot
        listen on it, so it is refused, token or not, in one line saying
        how to write a colon.
        """
        self.assertRaises(TypeError, serverFromString, reactor, "tcp6:7000:interface=::1")
        for haveToken in (False, True):
            e = self.assertRaises(PolicyError, listenerPolicy, "tcp6:7000:interface=::1", haveToken)
            self.assertIn("interface given twice", str(e))
            self.assertIn("\\:", str(e))
            self.assertNotIn("\n", str(e))

    def test_otherKinds(self):
        """
        Endpoint kinds other than unix, tcp, tcp6 and ssl are never local.
        """
        self.assertRemote("systemd:domain=INET:index=0")
        self.assertRemote("udp:7000:interface=127.0.0.1")


class ReadAsTwistedReadsTests(SynchronousTestCase):
    """
    The policy reads a string with Twisted's tokeniser and Twisted's own
    parser signatures: the interface, mode and backlog it judges are those
    Twisted listens with, whether given by key or by position, with every
    escape (C{\\:}, C{\\=}, C{\\\\}, or a backslash before any character)
    undone.
    """

    def listen(self, description, haveToken=False):
        """
        The policy for C{description}, and the endpoint Twisted makes from
        the string the policy returns.
        """
        policy = listenerPolicy(description, haveToken)
        return policy, serverFromString(reactor, policy.description)

    def test_interfaceAgreement(self):
        """
        For each string, the listener is local exactly when the interface
        Twisted binds is a loopback address.
        """
        for description, interface, local in [
            ("tcp6:7000:interface=\\:\\:1", "::1", True),
            ("tcp6:7000:interface=0\\:0\\:0\\:0\\:0\\:0\\:0\\:1", "0:0:0:0:0:0:0:1", True),
            ("tcp6:7000:interface=\\:\\:", "::", False),
            ("tcp6:7000", "::", False),
            # A backslash before an ordinary character is dropped, so this
            # listens on 127.0.0.1 (the old hand-written reader kept it).
            ("tcp:7000:interface=\\127.0.0.1", "127.0.0.1", True),
            ("tcp:7000:interface=127.0.0.1\\=x", "127.0.0.1=x", False),
            ("tcp:7000", "", False),
        ]:
            policy, endpoint = self.listen(description, haveToken=True)
            self.assertEqual(endpoint._interface, interface, description)
            self.assertEqual(policy.local, local, description)
            self.assertEqual(policy.requireToken, not local, description)

    def test_positionalInterface(self):
        """
        C{tcp:7000:127.0.0.1} listens on 127.0.0.1 (Twisted's C{tcp:} takes
        the interface as its second value): it is local.
        """
        policy, endpoint = self.listen("tcp:7000:127.0.0.1")
        self.assertEqual(endpoint._interface, "127.0.0.1")
        self.assertEqual((policy.local, policy.legacy, policy.requireToken), (True, True, False))
        self.assertEqual(endpoint._backlog, 1024)

    def test_positionalTCP6(self):
        """
        C{tcp6:} takes the backlog, then the interface, by position.
        """
        policy, endpoint = self.listen("tcp6:7000:10:\\:\\:1")
        self.assertEqual((endpoint._backlog, endpoint._interface), (10, "::1"))
        self.assertTrue(policy.local)

    def test_positionalMode(self):
        """
        C{unix:PATH:660} gives the mode by position: the policy adds no
        C{mode=600} (which would give Twisted the mode twice).
        """
        policy, endpoint = self.listen("unix:/run/p.sock:660")
        self.assertEqual((endpoint._mode, endpoint._backlog, endpoint._wantPID), (0o660, 1024, True))
        policy, endpoint = self.listen("unix:/run/p.sock:640:12:0")
        self.assertEqual(policy.description, "unix:/run/p.sock:640:12:0")
        self.assertEqual((endpoint._mode, endpoint._backlog, endpoint._wantPID), (0o640, 12, False))

    def test_escapedKey(self):
        """
        A key written with escapes is the key Twisted reads: C{mo\\de=660}
        is the mode, and the policy does not add C{mode=600} after it
        (which, the last winning, would have made the socket 0600).
        """
        policy, endpoint = self.listen("unix:/run/p.sock:mo\\de=660")
        self.assertEqual(endpoint._mode, 0o660)
        self.assertNotIn("mode=600", policy.description)

    def test_escapesInUnixPath(self):
        """
        Escaped C{=}, C{:} and C{\\} stay in a unix path, and the defaults
        are added after it.
        """
        policy, endpoint = self.listen("unix:/run/a\\=b\\:c\\\\d.sock")
        self.assertEqual(endpoint._address, "/run/a=b:c\\d.sock")
        self.assertEqual((endpoint._mode, endpoint._wantPID, endpoint._backlog), (0o600, True, 1024))
        self.assertTrue(policy.local)

    def test_kindCaseTCP(self):
        """
        C{TCP:} is written C{tcp:}, which Twisted can listen on.
        """
        policy, endpoint = self.listen("TCP:7000:interface=127.0.0.1")
        self.assertTrue(policy.description.startswith("tcp:7000:interface=127.0.0.1"))
        self.assertEqual(endpoint._interface, "127.0.0.1")

    def test_theSchemasAreTwisteds(self):
        """
        The signatures the policy binds to are Twisted's own parsers.
        """
        from prokshy.host import policy

        self.assertIs(policy._SCHEMAS["tcp"], endpoints._parseTCP)
        self.assertIs(policy._SCHEMAS["unix"], endpoints._parseUNIX)
        self.assertIs(policy._SCHEMAS["ssl"], endpoints._parseSSL)
        self.assertEqual(policy._SCHEMAS["tcp6"].__func__, endpoints._TCP6ServerParser._parseServer)


class BadStringTests(SynchronousTestCase):
    """
    A string Twisted could not listen on as written is refused before
    anything listens, token or not, with one line naming what is wrong.
    """

    def assertRefused(self, description, *fragments):
        for haveToken in (False, True):
            e = self.assertRaises(PolicyError, listenerPolicy, description, haveToken)
            message = str(e)
            self.assertNotIn("\n", message)
            self.assertTrue(message.startswith("listener %r: " % (description,)), message)
            for fragment in fragments:
                self.assertIn(fragment, message)
        return message

    def test_unknownKey(self):
        self.assertRefused("tcp:7000:bogus=1", "unsupported key 'bogus'", "tcp: takes port, interface, backlog")

    def test_misspeltKey(self):
        self.assertRefused("tcp:7000:interfce=127.0.0.1", "'interfce'", "did you mean 'interface'?")
        self.assertRefused("unix:/run/p.sock:Mode=600", "'Mode'", "did you mean 'mode'?")

    def test_tooManyValues(self):
        self.assertRefused("tcp:7000:127.0.0.1:5:6", "4 value(s) without a key=", "port, interface, backlog")

    def test_givenTwice(self):
        self.assertRefused("tcp:7000:port=7001", "port given twice")

    def test_noPort(self):
        self.assertRefused("tcp:interface=127.0.0.1", "no port given")

    def test_loneBackslash(self):
        """
        A final backslash (Twisted: C{RuntimeError}) is refused.
        """
        self.assertRaises(RuntimeError, serverFromString, reactor, "unix:/run/p.sock\\")
        self.assertRefused("unix:/run/p.sock\\", "lone backslash")
        self.assertRefused("tcp:7000:interface=127.0.0.1\\", "lone backslash")

    def test_typeNotPlain(self):
        """
        The endpoint type decides what a listener allows: it must come
        first and be written plainly.  (C{s\\sl:} is C{ssl:} to Twisted.)
        """
        self.assertRefused("s\\sl:7001:interface=0.0.0.0", "endpoint type")
        self.assertRefused("port=7000:tcp", "endpoint type")
        self.assertRefused("", "endpoint type")


class EndpointStringsTests(SynchronousTestCase):
    """
    L{prokshy._endpointstrings}: Twisted's tokens, and a quoting that
    they undo.
    """

    CORPUS = [
        "tcp:7000",
        "tcp:port=7000:interface=\\:\\:1",
        "unix:/run/a\\=b\\:c\\\\d.sock:mode=660",
        "ssl:443:privateKey=C\\:/key.pem:certKey=a=b",
        "tcp:7000:interface=127.0.0.1:interface=0.0.0.0",
        "a:b=c=d:e\\=f:g",
        "tcp6:7000::",
        "x:\\q\\u\\o\\t\\e",
    ]

    def test_sameAsTwisted(self):
        """
        L{parse} gives what Twisted's C{_parse} gives (the last of a
        repeated key), and names the repeated keys.
        """
        from prokshy._endpointstrings import parse

        for description in self.CORPUS:
            args, kwargs = endpoints._parse(description)
            parsed = parse(description)
            self.assertEqual(([parsed.kind] + list(parsed.args), parsed.kwargs), (args, kwargs), description)
        self.assertEqual(parse("tcp:7000:interface=a:interface=b").repeated, ("interface",))

    def test_quote(self):
        """
        L{quote} escapes a value for any place in a string: as a value
        without a key, after a key, and for Twisted too.
        """
        from prokshy._endpointstrings import parse, quote

        for value in ["", "::1", "/run/a=b:c\\d.sock", "\\", "=", "k=v:w"]:
            positional = "unix:" + quote(value)
            keyword = "unix:address=" + quote(value)
            self.assertEqual(parse(positional).args, (value,), positional)
            self.assertEqual(parse(keyword).kwargs, {"address": value}, keyword)
            self.assertEqual(endpoints._parse(positional), (["unix", value], {}), positional)
