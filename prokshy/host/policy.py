# -*- test-case-name: tests.test_host_policy -*-
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
"""

import ipaddress

import attr


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


def _split(description):
    parts = []
    cur = []
    escaped = False
    for ch in description:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            cur.append(ch)
            escaped = True
        elif ch == ":":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _isLoopback(interface):
    if interface in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(interface.strip("[]")).is_loopback
    except ValueError:
        return False


def listenerPolicy(description, haveToken, haveClientCA=False):
    """
    Decide the policy for a server endpoint string, and fill in safe
    defaults for unix sockets.

    @param haveToken: whether C{--auth-token-file} is configured.
    @param haveClientCA: whether C{--tls-ca} is configured: C{ssl:}
        listeners then require client certificates, which authenticate
        clients in place of the token.
    @return: a L{ListenerPolicy} whose C{description} is the string to
        listen on.
    @raise PolicyError: for a non-loopback listener authenticated neither
        by a token nor (C{ssl:} only) by client certificates.
    """
    parts = _split(description)
    kind = parts[0].lower()
    keys = {p.split("=", 1)[0] for p in parts[1:] if "=" in p}
    if "backlog" not in keys and kind in ("unix", "tcp", "tcp6", "ssl"):
        # Twisted's default of 50 makes a burst of unix connects fail at once.
        description += ":backlog=1024"
    if kind == "unix":
        if "mode" not in keys:
            description += ":mode=600"
        if "lockfile" not in keys:
            description += ":lockfile=1"
        return ListenerPolicy(description, local=True, legacy=True, requireToken=False)
    interface = None
    for p in parts[1:]:
        if p.startswith("interface="):
            interface = p.split("=", 1)[1].replace("\\:", ":")
    loopback = kind in ("tcp", "tcp6", "ssl") and interface is not None and _isLoopback(interface)
    if loopback:
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
