# -*- test-case-name: tests.system.test_tls -*-
"""
TLS client certificates for the host daemon's C{ssl:} listeners.

Twisted's C{ssl:} server endpoint string cannot ask for, or verify, client
certificates.  With C{--tls-ca FILE}, C{prokshy-host} therefore builds its
C{ssl:} listeners itself: L{parseSSLDescription} reads the endpoint string
with L{prokshy._endpointstrings} (Twisted's tokens and escapes; the
signature of L{_parseSSL} is the schema: the keys and defaults of Twisted's
C{ssl:} parser, minus C{sslmethod}), and L{serverContextFactory} makes a
context factory that requires a client certificate signed by one of the CAs
in C{FILE}; a client without one fails the handshake.  The daemon then listens with
C{tcp:PORT:interface=...:backlog=...} and wraps its factory in a
L{twisted.protocols.tls.TLSMemoryBIOFactory}.

Everything here needs pyOpenSSL (C{pip install prokshy[tls]}, which is
C{twisted[tls]}); it is imported only when used.
"""

import re

from prokshy._endpointstrings import EndpointStringError, bind, parse, quote

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL)


class TLSConfigError(ValueError):
    """
    A TLS setting (an C{ssl:} description, a key, a certificate, a CA file)
    that cannot be used.  The message says which and why, in one line.
    """


def _number(name, text, highest):
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not 0 <= number <= highest:
        raise EndpointStringError("bad %s %r" % (name, text))
    return number


def _parseSSL(
    port,
    *,
    privateKey="server.pem",
    certKey=None,
    interface="",
    backlog=50,
    extraCertChain=None,
    dhParameters=None,
):
    """
    The C{ssl:} server string with C{--tls-ca}.  Its signature is the
    schema, as the signature of Twisted's C{_parseSSL} is for its C{ssl:}:
    the same keys and defaults, minus C{sslmethod} (TLS versions are
    Twisted's defaults), and only the port without a key.

    @return: the dict L{parseSSLDescription} describes.
    """
    return {
        "port": _number("port", port, 65535),
        "privateKey": privateKey,
        "certKey": privateKey if certKey is None else certKey,
        "interface": interface,
        "backlog": _number("backlog", backlog, 1 << 20),
        "extraCertChain": extraCertChain,
        "dhParameters": dhParameters,
    }


#: The schema of an C{ssl:} listener with C{--tls-ca} (see L{bind}).
SSL_SCHEMA = _parseSSL


def parseSSLDescription(description):
    """
    Parse an C{ssl:} server endpoint string (see L{SSL_SCHEMA}).

    @return: a dict with C{port} (int), C{interface} (str, C{""} for every
        IPv4 interface), C{backlog} (int), C{privateKey} (default
        C{server.pem}), C{certKey} (default: C{privateKey}),
        C{extraCertChain} and C{dhParameters} (paths or None).
    @raise TLSConfigError: for another endpoint type, a missing or bad
        port, a key given twice, or a key this daemon does not support
        (C{sslmethod} included), named in one line.
    """
    try:
        endpoint = parse(description)
        if endpoint.kind.lower() != "ssl":
            raise EndpointStringError("not an ssl: endpoint")
        return _parseSSL(**bind(_parseSSL, endpoint, allowRepeated=False, label="ssl: with --tls-ca"))
    except EndpointStringError as e:
        raise TLSConfigError("listener %r: %s" % (description, e))


def tcpDescription(params):
    """
    The C{tcp:} server endpoint string listening where the parsed C{ssl:}
    description C{params} (from L{parseSSLDescription}) does.
    """
    return "tcp:%d:interface=%s:backlog=%d" % (params["port"], quote(params["interface"]), params["backlog"])


def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError("cannot read %s %s: %s" % (what, path, e.strerror or e))


def _ssl():
    try:
        from twisted.internet import ssl
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise TLSConfigError("TLS needs pyOpenSSL: pip install 'twisted[tls]' (%s)" % (e,))
    if not getattr(ssl, "supported", True):  # pragma: no cover
        raise TLSConfigError("TLS needs pyOpenSSL: pip install 'twisted[tls]'")
    return ssl


def loadCertificates(path, what="CA file"):
    """
    Every PEM certificate in the file C{path}.

    @return: a non-empty list of L{twisted.internet.ssl.Certificate}.
    @raise TLSConfigError: if the file cannot be read, holds no PEM
        certificate, or one of them is invalid.
    """
    ssl = _ssl()
    data = _read(path, what)
    blocks = _PEM_CERTIFICATE.findall(data)
    if not blocks:
        raise TLSConfigError("%s %s holds no PEM certificate" % (what, path))
    certificates = []
    for block in blocks:
        try:
            certificates.append(ssl.Certificate.loadPEM(block))
        except Exception as e:
            raise TLSConfigError("%s %s: invalid certificate: %s" % (what, path, _describe(e)))
    return certificates


def _describe(exc):
    text = str(exc).strip()
    return text if text else exc.__class__.__name__


def serverContextFactory(privateKeyPath, certKeyPath, caPath, extraCertChain=None, dhParameters=None):
    """
    A server context factory presenting the certificate in C{certKeyPath}
    (with the private key in C{privateKeyPath}; the two may be one file) and
    requiring a client certificate signed by a CA in C{caPath}.

    This is C{PrivateCertificate.loadPEM(cert + key).options(*caCerts)}
    (which sets C{verify} and C{requireCertificate}), plus the optional
    C{extraCertChain} and C{dhParameters} files of Twisted's C{ssl:}
    endpoint.

    @return: an L{IOpenSSLServerConnectionCreator}
        (a L{twisted.internet.ssl.CertificateOptions}).
    @raise TLSConfigError: when a file cannot be read or is not valid, or
        when the key does not match the certificate.
    """
    ssl = _ssl()
    cas = loadCertificates(caPath, "CA file")
    certPEM = _read(certKeyPath, "certificate")
    keyPEM = _read(privateKeyPath, "private key")
    if not _PEM_CERTIFICATE.search(certPEM):
        raise TLSConfigError("certificate %s holds no PEM certificate" % (certKeyPath,))
    try:
        private = ssl.PrivateCertificate.loadPEM(certPEM + b"\n" + keyPEM)
    except Exception as e:
        raise TLSConfigError(
            "cannot use certificate %s with private key %s: %s" % (certKeyPath, privateKeyPath, _describe(e))
        )
    chain = None
    if extraCertChain is not None:
        chain = [c.original for c in loadCertificates(extraCertChain, "certificate chain")]
    dh = None
    if dhParameters is not None:
        from twisted.python.filepath import FilePath

        _read(dhParameters, "DH parameters")
        dh = ssl.DiffieHellmanParameters.fromFile(FilePath(dhParameters))
    try:
        options = ssl.CertificateOptions(
            privateKey=private.privateKey.original,
            certificate=private.original,
            trustRoot=ssl.trustRootFromCertificates(cas),
            extraCertChain=chain,
            dhParameters=dh,
        )
        # Build the context now, so that a bad file fails at start-up
        # rather than at the first connection.
        options.getContext()
    except Exception as e:
        raise TLSConfigError("cannot set up TLS with certificate %s: %s" % (certKeyPath, _describe(e)))
    return options
