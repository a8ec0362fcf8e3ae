"""
L{prokshy.forward.spec}: ssh's C{-L}/C{-R} syntax for forwards.
"""

from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from prokshy._endpointstrings import parse
from prokshy.forward.spec import ForwardSpec, SpecError, Tcp, Unix, parseSpec, sideArgs, sideFromArgs


class ParseTests(TestCase):
    def test_forms(self):
        """
        Every form the issue names, with BIND defaulting to 127.0.0.1.
        """
        cases = {
            "8080:127.0.0.1:80": ForwardSpec(Tcp("127.0.0.1", 8080), Tcp("127.0.0.1", 80)),
            "web=8080:LocalHost:80": ForwardSpec(Tcp("127.0.0.1", 8080), Tcp("localhost", 80), "web"),
            "0.0.0.0:2222:10.1.2.3:22": ForwardSpec(Tcp("0.0.0.0", 2222), Tcp("10.1.2.3", 22)),
            "[::1]:8080:[FE80::0001]:80": ForwardSpec(Tcp("::1", 8080), Tcp("fe80::1", 80)),
            "/run/h.sock:/run/app.sock": ForwardSpec(Unix("/run/h.sock"), Unix("/run/app.sock")),
            "8080:/run/app.sock": ForwardSpec(Tcp("127.0.0.1", 8080), Unix("/run/app.sock")),
            "/run/h.sock:127.0.0.1:80": ForwardSpec(Unix("/run/h.sock"), Tcp("127.0.0.1", 80)),
            "*:2222:127.0.0.1:22": ForwardSpec(Tcp("", 2222), Tcp("127.0.0.1", 22)),
            ":2222:127.0.0.1:22": ForwardSpec(Tcp("", 2222), Tcp("127.0.0.1", 22)),
            "db.1=127.0.0.1:0:/x": ForwardSpec(Tcp("127.0.0.1", 0), Unix("/x"), "db.1"),
        }
        for text, spec in cases.items():
            self.assertEqual(parseSpec(text), spec, text)

    def test_roundTrip(self):
        """
        A spec's text form parses back to the same spec.
        """
        for text in ["8080:h:80", "w=[::1]:1:[::2]:2", "/a:/b", "*:1:h:2", "1:/p"]:
            spec = parseSpec(text)
            self.assertEqual(parseSpec(str(spec)), spec)

    def test_errors(self):
        """
        Malformed specs are one-line errors saying what is wrong.
        """
        cases = {
            "": "empty",
            "8080": "is not [BIND:]PORT:HOST:HOSTPORT",
            "8080:80": "is not [BIND:]PORT:HOST:HOSTPORT",
            "a:b:c:d": "listening port 'b' is not a port number",
            "99999:h:1": "listening port 99999 is out of range",
            "1:h:0": "target port 0 is out of range",
            "8080:::1:80": "put IPv6 addresses in brackets",
            "8080:[::1:80": "'[' without ']'",
            "8080:[nope]:80": "not an IPv6 address in brackets",
            "8080:h_x:80": "neither an address nor a host name",
            "8080:127.1:80": "neither an address nor a host name",
            "8080:2130706433:80": "neither an address nor a host name",
            "web=": "nothing after web=",
            "8080:h:80:9": "listening port 'h' is not a port number",
            "/" + "x" * 200 + ":h:1": "longer than",
        }
        for text, message in cases.items():
            error = self.assertRaises(SpecError, parseSpec, text)
            self.assertIn(message, str(error), text)
            self.assertNotIn("\n", str(error))

    def test_requireVM(self):
        self.assertEqual(parseSpec("a=1:h:2", requireVM=True).vm, "a")
        error = self.assertRaises(SpecError, parseSpec, "1:h:2", requireVM=True)
        self.assertIn("say which VM", str(error))

    def test_endpoints(self):
        """
        Each side gives the Twisted endpoint strings that mean it, escaped as
        Twisted reads them.
        """
        spec = parseSpec("[::1]:8080:[fe80::1]:80")
        server = parse(spec.listen.serverEndpoint())
        self.assertEqual((server.kind, server.args, server.kwargs), ("tcp6", ("8080",), {"interface": "::1"}))
        client = parse(spec.connect.clientEndpoint())
        self.assertEqual((client.kind, client.kwargs), ("tcp", {"host": "fe80::1", "port": "80"}))
        spec = parseSpec("/run/a=b.sock:/run/c")
        server = parse(spec.listen.serverEndpoint())
        self.assertEqual((server.args, server.kwargs), (("/run/a=b.sock",), {"mode": "600"}))
        self.assertEqual(parse(parseSpec("1:/run/x").connect.clientEndpoint()).kwargs, {"path": "/run/x"})
        self.assertEqual(
            parse(parseSpec("1:/run/x").connect.clientEndpoint(timeout=10)).kwargs,
            {"path": "/run/x", "timeout": "10"},
        )
        self.assertEqual(parse(spec.connect.clientEndpoint(2.5)).kwargs, {"path": "/run/c", "timeout": "2.5"})


class SideArgsTests(TestCase):
    """
    L{sideArgs} and L{sideFromArgs}: a target in OPEN arguments
    (docs/protocol.md §10.3.1).
    """

    def test_sideArgs(self):
        """
        TCP as host and port (IPv6 without brackets, every interface as
        ""), unix as path.
        """
        self.assertEqual(sideArgs(Tcp("127.0.0.1", 80)), {"host": "127.0.0.1", "port": 80})
        self.assertEqual(sideArgs(Tcp("::1", 22)), {"host": "::1", "port": 22})
        self.assertEqual(sideArgs(Tcp("", 8080)), {"host": "", "port": 8080})
        self.assertEqual(sideArgs(Tcp("db.example", 5432)), {"host": "db.example", "port": 5432})
        self.assertEqual(sideArgs(Unix("/run/app.sock")), {"path": "/run/app.sock"})

    def test_roundTrip(self):
        for side in [Tcp("127.0.0.1", 80), Tcp("::1", 22), Tcp("fe80::1", 1), Tcp("db.example", 65535), Unix("/run/a")]:
            self.assertEqual(sideFromArgs(sideArgs(side)), side)
            self.assertEqual(sideFromArgs(sideArgs(side), listening=True), side)
        self.assertEqual(sideFromArgs(sideArgs(Tcp("", 8080)), listening=True), Tcp("", 8080))

    def test_normalised(self):
        """
        localhost is 127.0.0.1; IPv6 in canonical form; names in lower case.
        """
        cases = {
            ("localhost", 80): Tcp("127.0.0.1", 80),
            ("LocalHost", 80): Tcp("127.0.0.1", 80),
            ("0:0:0:0:0:0:0:1", 22): Tcp("::1", 22),
            ("FE80:0:0::1", 22): Tcp("fe80::1", 22),
            ("DB.Example", 5432): Tcp("db.example", 5432),
        }
        for (host, port), side in cases.items():
            self.assertEqual(sideFromArgs({"host": host, "port": port}), side, host)

    def test_extraArgumentsIgnored(self):
        """
        Other OPEN arguments (C{peer}, C{window}) do not matter.
        """
        self.assertEqual(
            sideFromArgs({"host": "127.0.0.1", "port": 80, "peer": "x", "window": 5}), Tcp("127.0.0.1", 80)
        )

    def test_errors(self):
        cases = [
            ({}, "host (a string) and port (an integer) are required"),
            ({"host": "127.0.0.1"}, "are required"),
            ({"port": 80}, "are required"),
            ({"host": "127.0.0.1", "port": "80"}, "are required"),
            ({"host": "127.0.0.1", "port": True}, "are required"),
            ({"host": "127.0.0.1", "port": 80.0}, "are required"),
            ({"host": "127.0.0.1", "port": 0}, "port 0 is out of range (1-65535)"),
            ({"host": "127.0.0.1", "port": 65536}, "out of range"),
            ({"host": 1, "port": 80}, "are required"),
            ({"host": "", "port": 80}, "neither an address nor a host name"),
            ({"host": "a_b", "port": 80}, "neither an address nor a host name"),
            ({"host": "[::1]", "port": 80}, "IPv6"),
            ({"path": "/x", "host": "h"}, "not both"),
            ({"path": "/x", "port": 1}, "not both"),
            ({"path": "x"}, "absolute"),
            ({"path": 7}, "absolute"),
            ({"path": "/a\0b"}, "NUL"),
            ({"path": "/" + "x" * 103}, "longer than 103 bytes"),
            ({"path": "/" + "\u00e9" * 52}, "longer than 103 bytes"),
        ]
        for args, text in cases:
            for listening in (False, True):
                if args == {"host": "", "port": 80} and listening:
                    continue
                error = self.assertRaises(SpecError, sideFromArgs, args, listening)
                self.assertIn(text, str(error), args)
                self.assertNotIn("\n", str(error))

    def test_pathLength(self):
        """
        A path of 103 bytes in UTF-8 is the longest.
        """
        self.assertEqual(sideFromArgs({"path": "/" + "x" * 102}), Unix("/" + "x" * 102))
        self.assertEqual(sideFromArgs({"path": "/" + "\u00e9" * 51}), Unix("/" + "\u00e9" * 51))

    def test_everyInterfaceListening(self):
        """
        An empty host is every interface, when listening only.
        """
        self.assertEqual(sideFromArgs({"host": "", "port": 8080}, listening=True), Tcp("", 8080))
        self.assertRaises(SpecError, sideFromArgs, {"host": "", "port": 8080})


class TwistedEndpointTests(TestCase):
    """
    The endpoint strings of each side are ones Twisted's
    C{serverFromString}/C{clientFromString} build endpoints from, and those
    listen or connect where the side says (on a memory reactor).
    """

    def connected(self, side):
        reactor = MemoryReactorClock()
        clientFromString(reactor, side.clientEndpoint(10)).connect(Factory.forProtocol(Protocol))
        return reactor

    def test_clientIPv4(self):
        reactor = self.connected(Tcp("127.0.0.1", 80))
        self.assertEqual(reactor.tcpClients[0][:2], ("127.0.0.1", 80))
        self.assertEqual(reactor.tcpClients[0][3], 10)

    def test_clientHostName(self):
        reactor = self.connected(Tcp("db.example", 5432))
        self.assertEqual(reactor.tcpClients[0][:2], ("db.example", 5432))

    def test_clientIPv6(self):
        """
        An IPv6 target connects: Twisted has no C{tcp6} client endpoint
        string, and C{tcp:}'s C{connectTCP} takes an IPv6 literal.
        """
        reactor = self.connected(Tcp("::1", 22))
        self.assertEqual(reactor.tcpClients[0][:2], ("::1", 22))

    def test_clientUnix(self):
        reactor = self.connected(Unix("/run/app.sock"))
        self.assertEqual(reactor.unixClients[0][:3:2], ("/run/app.sock", 10))

    def test_servers(self):
        reactor = MemoryReactorClock()
        for side in (Tcp("127.0.0.1", 8080), Tcp("::1", 8081), Tcp("", 8082), Unix("/run/h.sock")):
            serverFromString(reactor, side.serverEndpoint()).listen(Factory.forProtocol(Protocol))
        self.assertEqual([s[0::3] for s in reactor.tcpServers], [(8080, "127.0.0.1"), (8081, "::1"), (8082, "")])
        [(path, factory, backlog, mode, wantPID)] = reactor.unixServers
        self.assertEqual((path, mode, bool(wantPID)), ("/run/h.sock", 0o600, True))
