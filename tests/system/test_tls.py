"""
Tests for TLS client certificates on the host daemon's C{ssl:} listeners
(C{twistd prokshy-host --tls-ca FILE}): L{prokshy.host.tls}, the policy, the
options, and the real CLI connecting through C{ssl:...:certKey=...}.

Certificates are made here with C{cryptography}: a CA, a server certificate
for C{localhost} and C{127.0.0.1}, a client certificate from the CA and one
from a second, untrusted CA.  The daemon listens on C{0.0.0.0}; clients
connect only to C{127.0.0.1}.
"""

import datetime
import inspect
import ipaddress
import os
import sys

from twisted.internet import endpoints, reactor, ssl, utils
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import SSL4ClientEndpoint, serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from prokshy.host import tls
from prokshy.host.policy import PolicyError, listenerPolicy
from prokshy.host.server import ClientFactory
from prokshy.tap import host
from tests.hostharness import (
    ROOT,
    HostHarness,
    serverConnections,
    shortTempDir,
    waitFor,
)

TOKEN = "a-token-of-at-least-sixteen-chars"


def _makeKey():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _name(common):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(subject, key, issuer=None, issuerKey=None, ca=False, server=False):
    """
    A certificate for C{subject} (a common name) and C{key}, signed by
    C{issuer}/C{issuerKey} (self-signed without them).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.timezone.utc)
    issuerName = issuer.subject if issuer is not None else _name(subject)
    signer = issuerKey if issuerKey is not None else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuerName)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    elif server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def _pem(cert):
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _keyPEM(key):
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Certificates:
    """
    A directory of PEM files: C{ca} (C{ca.pem}; also alone in C{cadir/}
    for clients' C{caCertsDir}), C{other-ca}, C{server} and C{client}
    (signed by C{ca}), C{stranger} (a client certificate signed by
    C{other-ca}).  C{path("server")} is the certificate, C{key("server")}
    its private key.
    """

    def __init__(self, directory):
        self.dir = directory
        caKey, otherKey = _makeKey(), _makeKey()
        ca = _certificate("prokshy test CA", caKey, ca=True)
        other = _certificate("another CA", otherKey, ca=True)
        self._save("ca", ca, caKey)
        self._save("other-ca", other, otherKey)
        for name, issuer, issuerKey, server in [
            ("server", ca, caKey, True),
            ("client", ca, caKey, False),
            ("stranger", other, otherKey, False),
        ]:
            key = _makeKey()
            self._save(name, _certificate(name, key, issuer, issuerKey, server=server), key)
        self.caDir = os.path.join(directory, "cadir")
        os.mkdir(self.caDir)
        _write(os.path.join(self.caDir, "ca.pem"), _pem(ca))

    def _save(self, name, cert, key):
        _write(self.path(name), _pem(cert))
        _write(self.key(name), _keyPEM(key))

    def path(self, name):
        return os.path.join(self.dir, name + ".pem")

    def key(self, name):
        return os.path.join(self.dir, name + ".key")

    def listen(self, interface="0.0.0.0", port=0, extra=""):
        return "ssl:%d:interface=%s:privateKey=%s:certKey=%s%s" % (
            port, interface, self.key("server"), self.path("server"), extra,
        )


class ParseSSLDescriptionTests(SynchronousTestCase):
    """
    L{tls.parseSSLDescription} reads Twisted's C{ssl:} server strings.
    """

    def test_defaults(self):
        """
        Twisted's defaults: C{privateKey=server.pem}, C{certKey} the same
        file, every interface, backlog 50.
        """
        self.assertEqual(
            tls.parseSSLDescription("ssl:7001"),
            {
                "port": 7001,
                "privateKey": "server.pem",
                "certKey": "server.pem",
                "interface": "",
                "backlog": 50,
                "extraCertChain": None,
                "dhParameters": None,
            },
        )

    def test_certKeyDefaultsToPrivateKey(self):
        params = tls.parseSSLDescription("ssl:7001:privateKey=/k/both.pem")
        self.assertEqual((params["privateKey"], params["certKey"]), ("/k/both.pem", "/k/both.pem"))

    def test_allKeys(self):
        """
        Every supported key, an escaped IPv6 interface and C{port=}.
        """
        params = tls.parseSSLDescription(
            "SSL:port=443:interface=\\:\\:1:backlog=7:privateKey=k:certKey=c:"
            "extraCertChain=chain.pem:dhParameters=dh.pem"
        )
        self.assertEqual(
            params,
            {
                "port": 443,
                "privateKey": "k",
                "certKey": "c",
                "interface": "::1",
                "backlog": 7,
                "extraCertChain": "chain.pem",
                "dhParameters": "dh.pem",
            },
        )

    def test_tcpDescription(self):
        """
        L{tls.tcpDescription} listens where the C{ssl:} string says, with
        the interface escaped.
        """
        params = tls.parseSSLDescription("ssl:7001:interface=\\:\\:1:backlog=9")
        self.assertEqual(tls.tcpDescription(params), "tcp:7001:interface=\\:\\:1:backlog=9")
        params = tls.parseSSLDescription("ssl:0")
        self.assertEqual(tls.tcpDescription(params), "tcp:0:interface=:backlog=50")

    def test_rejected(self):
        """
        C{sslmethod}, unknown keys, a repeated key, a missing, extra or bad
        port, a bad backlog and other endpoint types are refused.
        """
        for description in [
            "ssl:7001:sslmethod=TLSv1_2_METHOD",
            "ssl:7001:verify=none",
            "ssl:7001:privateKey=a:privateKey=b",
            "ssl:privateKey=a",
            "ssl:7001:7002",
            "ssl:port=7001:7002",
            "ssl:http",
            "ssl:70000",
            "ssl:7001:backlog=many",
            "tcp:7001",
        ]:
            self.assertRaises(tls.TLSConfigError, tls.parseSSLDescription, description)

    def test_rejectedKeyNamed(self):
        e = self.assertRaises(tls.TLSConfigError, tls.parseSSLDescription, "ssl:1:sslmethod=X")
        self.assertIn("'sslmethod'", str(e))

    def assertRejected(self, description, *fragments):
        e = self.assertRaises(tls.TLSConfigError, tls.parseSSLDescription, description)
        message = str(e)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith("listener %r: " % (description,)), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_unknownKeyListsTheSchema(self):
        """
        An unknown key is named, with the keys the schema (the signature of
        L{tls._parseSSL}) accepts: Twisted's, minus C{sslmethod}.
        """
        self.assertRejected(
            "ssl:7001:verify=none",
            "unsupported key 'verify'",
            "ssl: with --tls-ca takes port, privateKey, certKey, interface, backlog, extraCertChain, dhParameters",
        )

    def test_misspeltKey(self):
        """
        A misspelt key is named, with the key it probably meant.
        """
        self.assertRejected("ssl:7001:privatekey=k.pem", "'privatekey'", "did you mean 'privateKey'?")
        self.assertRejected("ssl:7001:certkey=c.pem", "'certkey'", "did you mean 'certKey'?")
        self.assertRejected("ssl:7001:dhParameter=dh.pem", "'dhParameter'", "did you mean 'dhParameters'?")

    def test_positionalBeyondPort(self):
        """
        Only the port may be given without a key (Twisted's C{ssl:} would
        take a second value as the private key).
        """
        self.assertRejected("ssl:7001:key.pem", "without a key=", "takes only port that way")

    def test_givenTwiceNamed(self):
        self.assertRejected("ssl:7001:privateKey=a:privateKey=b", "privateKey given twice")
        self.assertRejected("ssl:port=7001:7002", "port given twice")

    def test_loneBackslash(self):
        """
        A final backslash is refused, as Twisted cannot read it either (it
        used to be dropped here).
        """
        self.assertRejected("ssl:7001:privateKey=k\\", "lone backslash")

    def test_escapesInPaths(self):
        """
        Escaped C{:}, C{=} and C{\\} in paths are read as Twisted reads
        them, and a C{=} after a key's own needs no escape.
        """
        description = "ssl:7001:privateKey=C\\:/k\\=1.pem:certKey=/c/a=b\\\\.pem"
        params = tls.parseSSLDescription(description)
        self.assertEqual((params["privateKey"], params["certKey"]), ("C:/k=1.pem", "/c/a=b\\.pem"))
        args, kwargs = endpoints._parse(description)
        self.assertEqual((kwargs["privateKey"], kwargs["certKey"]), (params["privateKey"], params["certKey"]))

    def test_schemaIsTwistedsMinusSSLMethod(self):
        """
        The schema's keys and defaults are those of Twisted's C{ssl:}
        parser, minus C{sslmethod}: a string it accepts means the same to
        Twisted (so the policy judges the interface this listener uses).
        """
        ours = inspect.signature(tls.SSL_SCHEMA).parameters
        twisted = inspect.signature(endpoints._parseSSL).parameters
        self.assertEqual(set(twisted) - set(ours), {"factory", "sslmethod"})
        self.assertEqual(set(ours) - set(twisted), set())
        for name in ours:
            self.assertEqual(ours[name].default, twisted[name].default, name)

    def test_tcpDescriptionRoundTrip(self):
        """
        Whatever the interface, Twisted reads from L{tls.tcpDescription}
        the interface, port and backlog parsed from the C{ssl:} string.
        """
        for written, interface in [
            ("\\:\\:1", "::1"),
            ("0\\:0\\:0\\:0\\:0\\:0\\:0\\:1", "0:0:0:0:0:0:0:1"),
            ("\\127.0.0.1", "127.0.0.1"),
            ("a\\=b\\\\c\\:d", "a=b\\c:d"),
            ("", ""),
        ]:
            params = tls.parseSSLDescription("ssl:7001:backlog=9:interface=" + written)
            self.assertEqual(params["interface"], interface, written)
            endpoint = serverFromString(reactor, tls.tcpDescription(params))
            self.assertEqual(
                (endpoint._port, endpoint._interface, endpoint._backlog), (7001, interface, 9), written
            )


class ServerContextFactoryTests(SynchronousTestCase):
    """
    L{tls.serverContextFactory}: a context requiring client certificates,
    and clear errors for bad files.
    """

    def setUp(self):
        self.certs = Certificates(shortTempDir(self, "pt"))

    def test_requiresClientCertificates(self):
        from OpenSSL import SSL

        c = self.certs
        options = tls.serverContextFactory(c.key("server"), c.path("server"), c.path("ca"))
        self.assertTrue(options.verify)
        self.assertTrue(options.requireCertificate)
        mode = options.getContext().get_verify_mode()
        self.assertEqual(mode & SSL.VERIFY_PEER, SSL.VERIFY_PEER)
        self.assertEqual(mode & SSL.VERIFY_FAIL_IF_NO_PEER_CERT, SSL.VERIFY_FAIL_IF_NO_PEER_CERT)

    def test_combinedFileAndChain(self):
        """
        Key and certificate may share one file; C{extraCertChain} is loaded.
        """
        c = self.certs
        both = _write(
            os.path.join(c.dir, "both.pem"),
            _read(c.path("server")) + _read(c.key("server")),
        )
        options = tls.serverContextFactory(both, both, c.path("ca"), extraCertChain=c.path("ca"))
        self.assertEqual(len(options.extraCertChain), 1)

    def test_severalCAs(self):
        c = self.certs
        cas = _write(
            os.path.join(c.dir, "cas.pem"),
            _read(c.path("ca")) + _read(c.path("other-ca")),
        )
        self.assertEqual(len(tls.loadCertificates(cas)), 2)

    def assertConfigError(self, fragment, *args, **kw):
        e = self.assertRaises(tls.TLSConfigError, tls.serverContextFactory, *args, **kw)
        self.assertIn(fragment, str(e))
        self.assertNotIn("\n", str(e))
        return e

    def test_errors(self):
        c = self.certs
        missing = os.path.join(c.dir, "missing.pem")
        garbage = _write(os.path.join(c.dir, "garbage.pem"), b"not a certificate\n")
        self.assertConfigError("cannot read CA file", c.key("server"), c.path("server"), missing)
        self.assertConfigError("holds no PEM certificate", c.key("server"), c.path("server"), garbage)
        self.assertConfigError("cannot read certificate", c.key("server"), missing, c.path("ca"))
        self.assertConfigError("cannot read private key", missing, c.path("server"), c.path("ca"))
        self.assertConfigError("holds no PEM certificate", c.key("server"), c.key("server"), c.path("ca"))
        # The client's key does not belong to the server's certificate.
        self.assertConfigError("cannot use certificate", c.key("client"), c.path("server"), c.path("ca"))
        self.assertConfigError("cannot use certificate", garbage, c.path("server"), c.path("ca"))
        self.assertConfigError(
            "cannot read certificate chain",
            c.key("server"), c.path("server"), c.path("ca"), extraCertChain=missing,
        )


class PolicyTests(SynchronousTestCase):
    """
    L{listenerPolicy} with C{haveClientCA}.
    """

    def test_sslWithClientCA(self):
        """
        A non-loopback C{ssl:} listener with client certificates starts
        without a token, requires none even when one is configured, and
        refuses the line protocol.
        """
        for haveToken in (False, True):
            policy = listenerPolicy("ssl:7001:privateKey=k.pem", haveToken, haveClientCA=True)
            self.assertEqual((policy.local, policy.legacy, policy.requireToken), (False, False, False))
            self.assertTrue(policy.description.startswith("ssl:7001:privateKey=k.pem"))

    def test_sslWithoutClientCA(self):
        self.assertRaises(PolicyError, listenerPolicy, "ssl:7001", False, False)
        self.assertRaises(PolicyError, listenerPolicy, "ssl:7001", False)
        policy = listenerPolicy("ssl:7001", True)
        self.assertEqual((policy.legacy, policy.requireToken), (False, True))

    def test_tcpStillNeedsToken(self):
        """
        Client certificates only apply to C{ssl:}: a non-loopback C{tcp:}
        listener still needs the token.
        """
        e = self.assertRaises(PolicyError, listenerPolicy, "tcp:7000", False, True)
        self.assertNotIn("--tls-ca", str(e))
        policy = listenerPolicy("tcp:7000", True, True)
        self.assertEqual((policy.legacy, policy.requireToken), (False, True))

    def test_sameInterfaceEverywhere(self):
        """
        With and without C{--tls-ca}, the policy judges the interface that
        L{tls.parseSSLDescription} (and so the TCP listener) uses, for the
        escapes that the two used to read differently.
        """
        for written, local in [
            ("\\:\\:1", True),
            ("\\127.0.0.1", True),
            ("[\\:\\:1]", True),
            ("\\:\\:", False),
            ("0.0.0.0", False),
        ]:
            description = "ssl:7001:interface=%s:privateKey=k.pem" % (written,)
            for haveClientCA in (False, True):
                policy = listenerPolicy(description, True, haveClientCA)
                self.assertEqual(policy.local, local, (description, haveClientCA))
            interface = tls.parseSSLDescription(policy.description)["interface"]
            self.assertEqual(interface, endpoints._parse(description)[1]["interface"])

    def test_badKeyWithClientCA(self):
        """
        With C{--tls-ca}, the policy reads C{ssl:} with the same schema:
        an unsupported or misspelt key is refused in one line naming it
        (without, Twisted's own C{ssl:} keys apply).
        """
        for description, fragment in [
            ("ssl:7001:sslmethod=TLSv1_2_METHOD", "unsupported key 'sslmethod'"),
            ("ssl:7001:privatekey=k.pem", "did you mean 'privateKey'?"),
        ]:
            e = self.assertRaises(PolicyError, listenerPolicy, description, True, True)
            self.assertIn(fragment, str(e))
            self.assertIn("with --tls-ca", str(e))
            self.assertNotIn("\n", str(e))
        self.assertFalse(listenerPolicy("ssl:7001:sslmethod=TLSv1_2_METHOD", True).local)

    def test_loopbackUnchanged(self):
        for description in ("ssl:7001:interface=127.0.0.1", "unix:/run/p.sock", "tcp:1:interface=\\:\\:1"):
            without = listenerPolicy(description, False)
            self.assertEqual(listenerPolicy(description, False, True), without)
            self.assertEqual((without.local, without.legacy, without.requireToken), (True, True, False))


class OptionsTests(SynchronousTestCase):
    """
    C{prokshy-host --tls-ca}.
    """

    def setUp(self):
        self.certs = Certificates(shortTempDir(self, "pt"))
        self.tokenFile = _write(os.path.join(self.certs.dir, "token"), TOKEN.encode())
        os.chmod(self.tokenFile, 0o600)  # the daemon refuses a token others may read

    def parse(self, *args):
        opts = host.Options()
        opts.parseOptions(list(args) + ["--vm", "a=/nonexistent/a.sock"])
        return opts

    def test_sslNeedsAuthentication(self):
        e = self.assertRaises(usage.UsageError, self.parse, "--listen", self.certs.listen())
        self.assertIn("--tls-ca", str(e))

    def test_sslWithClientCA(self):
        opts = self.parse("--listen", self.certs.listen(), "--tls-ca", self.certs.path("ca"))
        self.assertEqual(opts["token"], None)
        self.assertEqual(opts["policies"][0].requireToken, False)
        self.assertEqual(list(opts["tls"]), [0])

    def test_tcpWithClientCANeedsToken(self):
        self.assertRaises(
            usage.UsageError, self.parse, "--listen", "tcp:7000", "--tls-ca", self.certs.path("ca")
        )
        opts = self.parse(
            "--listen", "tcp:7000", "--tls-ca", self.certs.path("ca"), "--auth-token-file", self.tokenFile
        )
        self.assertTrue(opts["policies"][0].requireToken)
        self.assertEqual(opts["tls"], {})

    def test_badCAPath(self):
        missing = os.path.join(self.certs.dir, "nope.pem")
        e = self.assertRaises(
            usage.UsageError, self.parse, "--listen", self.certs.listen(), "--tls-ca", missing
        )
        self.assertIn(missing, str(e))
        # Checked even when no listener is ssl:.
        self.assertRaises(
            usage.UsageError, self.parse, "--listen", "unix:/tmp/x.sock", "--tls-ca", missing
        )

    def test_badCAContent(self):
        e = self.assertRaises(
            usage.UsageError,
            self.parse, "--listen", self.certs.listen(), "--tls-ca", self.certs.key("ca"),
        )
        self.assertIn("no PEM certificate", str(e))

    def test_unknownKey(self):
        e = self.assertRaises(
            usage.UsageError,
            self.parse,
            "--listen", self.certs.listen(extra=":sslmethod=TLSv1_2_METHOD"),
            "--tls-ca", self.certs.path("ca"),
        )
        self.assertIn("sslmethod", str(e))

    def test_misspeltKey(self):
        """
        A misspelt key is one line naming it and the key it probably meant.
        """
        e = self.assertRaises(
            usage.UsageError,
            self.parse,
            "--listen", "ssl:0:privatekey=%s:certKey=%s" % (self.certs.key("server"), self.certs.path("server")),
            "--tls-ca", self.certs.path("ca"),
        )
        self.assertIn("'privatekey' (did you mean 'privateKey'?)", str(e))
        self.assertNotIn("\n", str(e))

    def test_badServerKey(self):
        e = self.assertRaises(
            usage.UsageError,
            self.parse,
            "--listen", "ssl:0:privateKey=%s:certKey=%s" % (self.certs.key("client"), self.certs.path("server")),
            "--tls-ca", self.certs.path("ca"),
        )
        self.assertIn("cannot use certificate", str(e))

    def test_makeService(self):
        """
        With C{--tls-ca}, an C{ssl:} listener is TLS over a TCP listener on
        the same interface and port (with the policy's backlog); without,
        Twisted's own C{ssl:} endpoint is used.
        """
        c = self.certs
        opts = self.parse(
            "--listen", c.listen(port=7443), "--listen", "unix:%s" % (os.path.join(c.dir, "s"),),
            "--tls-ca", c.path("ca"),
        )
        memory = MemoryReactor()
        svc = host.makeService(opts, memory)
        svc.startService()
        self.addCleanup(svc.stopService)
        self.assertEqual(len(memory.tcpServers), 1)
        self.assertEqual(memory.sslServers, [])
        port, factory, backlog, interface = memory.tcpServers[0]
        self.assertEqual((port, backlog, interface), (7443, 1024, "0.0.0.0"))
        self.assertIsInstance(factory, TLSMemoryBIOFactory)
        self.assertIsInstance(factory.wrappedFactory, ClientFactory)
        self.assertIs(factory.wrappedFactory.policy, opts["policies"][0])

    def test_makeServiceWithoutCA(self):
        c = self.certs
        opts = self.parse("--listen", c.listen(port=7443), "--auth-token-file", self.tokenFile)
        memory = MemoryReactor()
        svc = host.makeService(opts, memory)
        svc.startService()
        self.addCleanup(svc.stopService)
        self.assertEqual(memory.tcpServers, [])
        self.assertEqual(len(memory.sslServers), 1)
        self.assertIsInstance(memory.sslServers[0][1], ClientFactory)


class DaemonTests(TestCase):
    """
    The real daemon on an C{ssl:} listener with C{--tls-ca} (and a token
    configured, which the listener does not require), and the real CLI.
    """

    timeout = 20

    @inlineCallbacks
    def setUp(self):
        self.certs = Certificates(shortTempDir(self, "pt"))
        tokenFile = _write(os.path.join(self.certs.dir, "token"), TOKEN.encode())
        os.chmod(tokenFile, 0o600)
        self.harness = HostHarness(
            self,
            tcp=False,
            listens=[self.certs.listen()],
            hostArgs=["--tls-ca", self.certs.path("ca"), "--auth-token-file", tokenFile],
        )
        yield self.harness.start()
        self.port = self.harness.tcpPort
        self.assertIsInstance(self.port, int)
        self.assertNotEqual(self.port, 0)

    def tlsConnections(self):
        """
        The daemon's accepted connections on the C{ssl:} listener.
        """
        return [s for s in serverConnections(reactor) if getattr(s.getHost(), "port", None) == self.port]

    def connectString(self, client="client"):
        description = "ssl:host=127.0.0.1:port=%d:caCertsDir=%s:hostname=localhost" % (
            self.port, self.certs.caDir,
        )
        if client is not None:
            description += ":certKey=%s:privateKey=%s" % (self.certs.path(client), self.certs.key(client))
        return description

    def runCLI(self, client, command, data):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
        args = [
            "-m", "prokshy.cli.main",
            "--connect", self.connectString(client),
            "--command", command,
            "--from-string", data,
        ]
        return utils.getProcessOutputAndValue(sys.executable, args, env=env, path=self.certs.dir, reactor=reactor)

    @inlineCallbacks
    def test_validClientCertificate(self):
        """
        With a client certificate from the CA, the CLI runs commands: the
        output is the command's, the exit code its status (no token needed).
        """
        out, err, code = yield self.runCLI("client", "shout", "hi")
        self.assertEqual((out, err, code), (b"got:hi", b"", 0))
        out, err, code = yield self.runCLI("client", "status", "7")
        self.assertEqual((out, code), (b"", 7), err)

    @inlineCallbacks
    def assertRefused(self, client):
        out, err, code = yield self.runCLI(client, "shout", "hi")
        self.assertNotEqual(code, 0)
        self.assertEqual(out, b"")
        lines = err.splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith(b"prokshy: "), err)
        self.assertNotIn(b"Traceback", err)
        # The message says what failed (the handshake), not the hint about
        # a VM socket held by another client.
        self.assertIn(b"lost before a session started", err)
        self.assertNotIn(b"holding it", err)
        # The daemon dropped its side.
        yield waitFor(lambda: not self.tlsConnections(), "the daemon to close the connection")

    def test_noClientCertificate(self):
        return self.assertRefused(None)

    def test_otherCA(self):
        return self.assertRefused("stranger")

    @inlineCallbacks
    def test_lineProtocolRefused(self):
        """
        The line protocol is not served on this (non-loopback) listener,
        even to a client with a valid certificate.
        """
        c = self.certs
        with open(c.path("client"), "rb") as f:
            certPEM = f.read()
        with open(c.key("client"), "rb") as f:
            keyPEM = f.read()
        with open(c.path("ca"), "rb") as f:
            ca = ssl.Certificate.loadPEM(f.read())
        options = ssl.optionsForClientTLS(
            "localhost", trustRoot=ca, clientCertificate=ssl.PrivateCertificate.loadPEM(certPEM + keyPEM)
        )
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", self.port, options, timeout=5)
        out = yield self.harness.legacy(b"shout\nhi\n", endpoint=endpoint)
        self.assertEqual(out, b"prokshy-host: the line protocol is only served on unix and loopback listeners\n")
