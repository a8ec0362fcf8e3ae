# -*- test-case-name: tests.system.test_host_policy -*-
"""
What each listener of the host daemon allows, decided from its endpoint
string before anything listens.

    listener                         legacy protocol   token required
    -------------------------------  ----------------  ----------------------
    unix:PATH                        yes               no (file mode guards it)
    tcp/ssl on a loopback interface  yes               no
    ssl on any other interface,      no                no: the client
      with --tls-ca                                    certificate authenticates
    tcp (or ssl without --tls-ca)    no                yes: refuses to start
      on any other interface                           without --auth-token-file

With C{--tls-ca}, every C{ssl:} listener (loopback ones too) requires a
client certificate signed by one of its CAs (see L{prokshy.host.tls}).

Unix sockets get C{mode=600} and C{lockfile=1} unless the string says
otherwise: only the owner may connect, and a stale socket left by a crashed
daemon is replaced at start.  Every listener gets C{backlog=1024} unless
given one: with Twisted's default of 50, a burst of clients connecting to a
unix socket at once is refused.

The string is read as Twisted will read it (L{prokshy._endpointstrings}:
Twisted's tokeniser, and the signature of Twisted's own parser for the type
as the schema), so the interface judged is the one Twisted listens on,
given by key or by position (C{tcp:7000:127.0.0.1}), with every escape
undone (C{interface=\\:\\:1}).  A string Twisted could not listen on
(an unknown or misspelt key, a value too many, an unescaped C{:} or C{=}
inside a value) is refused here, in one line.
"""

import ipaddress

import attr
from twisted.internet import endpoints

from prokshy.host import tls
from prokshy._endpointstrings import EndpointStringError, bind, parse

#: The schemas of the endpoint types this module judges: Twisted's own
#: parsers, whose signatures (after the leading C{factory} or C{reactor})
#: say what each positional value and key means.  With C{--tls-ca}, C{ssl:}
#: is read by L{tls.SSL_SCHEMA} instead.
_SCHEMAS = {
    "tcp": endpoints._serverParsers["tcp"],
    "tcp6": endpoints._TCP6ServerParser()._parseServer,
    "unix": endpoints._serverParsers["unix"],
    "ssl": endpoints._serverParsers["ssl"],
}


class PolicyError(Exception):
    """
    A listener that may not start as configured.
    """


@attr.s(frozen=True)
class ListenerPolicy:
    description = attr.ib()
    local = attr.ib()
    legacy = attr.ib()
    requireToken = attr.ib()


def _isLoopback(interface):
    if interface in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(interface.strip("[]")).is_loopback
    except ValueError:
        return False


def _arguments(description, haveClientCA):
    """
    The endpoint type of C{description} and its arguments bound to the
    type's schema, or C{(kind, None)} for a type this module does not know.

    @raise EndpointStringError: when the string does not fit the schema.
    """
    endpoint = parse(description)
    kind = endpoint.kind.lower()
    if kind == "ssl" and haveClientCA:
        return kind, bind(tls.SSL_SCHEMA, endpoint, allowRepeated=False, label="ssl: with --tls-ca")
    if kind in _SCHEMAS:
        return kind, bind(_SCHEMAS[kind], endpoint, leading=1)
    return kind, None


def listenerPolicy(description, haveToken, haveClientCA=False):
    """
    Decide the policy for a server endpoint string, and fill in safe
    defaults for unix sockets.

    The string is read as Twisted reads it (L{prokshy._endpointstrings}):
    the interface judged is the one Twisted will listen on, given by key or
    by position, with every escape undone.

    @param haveToken: whether C{--auth-token-file} is configured.
    @param haveClientCA: whether C{--tls-ca} is configured: C{ssl:}
        listeners then require client certificates, which authenticate
        clients in place of the token.
    @return: a L{ListenerPolicy} whose C{description} is the string to
        listen on (the endpoint type in lower case, as Twisted needs it for
        C{tcp}, C{unix} and C{ssl}).
    @raise PolicyError: for a non-loopback listener authenticated neither
        by a token nor (C{ssl:} only) by client certificates, or for a
        string Twisted could not listen on as written (an unknown key, a
        value too many), in one line naming what is wrong.
    """
    try:
        kind, arguments = _arguments(description, haveClientCA)
    except EndpointStringError as e:
        raise PolicyError("listener %r: %s" % (description, e))
    if arguments is None:
        # Another endpoint type (systemd:, a plugin's...): never local.
        interface = None
    else:
        description = kind + description[len(kind):]
        if "backlog" not in arguments.given:
            # Twisted's default of 50 makes a burst of unix connects fail at once.
            description += ":backlog=1024"
        if kind == "unix":
            if "mode" not in arguments.given:
                description += ":mode=600"
            if "lockfile" not in arguments.given:
                description += ":lockfile=1"
            return ListenerPolicy(description, local=True, legacy=True, requireToken=False)
        interface = arguments["interface"]
    if interface is not None and _isLoopback(interface):
        return ListenerPolicy(description, local=True, legacy=True, requireToken=False)
    if kind == "ssl" and haveClientCA:
        # Client certificates authenticate every connection: no token needed.
        return ListenerPolicy(description, local=False, legacy=False, requireToken=False)
    if not haveToken:
        raise PolicyError(
            "listener %r is not loopback: it needs --auth-token-file%s "
            "(or use interface=127.0.0.1, or a unix socket)"
            % (description, " or --tls-ca" if kind == "ssl" else "")
        )
    return ListenerPolicy(description, local=False, legacy=False, requireToken=True)
