"""
L{prokshy.forward.spec}: ssh's C{-L}/C{-R} syntax for forwards.
"""

from twisted.trial.unittest import TestCase

from prokshy._endpointstrings import parse
from prokshy.forward.spec import ForwardSpec, SpecError, Tcp, Unix, parseSpec


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
        self.assertEqual((client.kind, client.kwargs), ("tcp6", {"host": "fe80::1", "port": "80"}))
        spec = parseSpec("/run/a=b.sock:/run/c")
        server = parse(spec.listen.serverEndpoint())
        self.assertEqual((server.args, server.kwargs), (("/run/a=b.sock",), {"mode": "600"}))
        self.assertEqual(parse(parseSpec("1:/run/x").connect.clientEndpoint()).kwargs, {"path": "/run/x"})
        self.assertEqual(
            parse(parseSpec("1:/run/x").connect.clientEndpoint(timeout=10)).kwargs,
            {"path": "/run/x", "timeout": "10"},
        )
        self.assertEqual(parse(spec.connect.clientEndpoint(2.5)).kwargs, {"path": "/run/c", "timeout": "2.5"})
