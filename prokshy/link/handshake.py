# -*- test-case-name: tests.unit.test_link -*-
"""
The hello exchange, as data: the fields we say hello with, and what a
peer's hello means for a session (its version, its limits, our session
tag).  No state and no I/O: L{prokshy.link.lifecycle} decides when to say
hello and what a hello does.
"""

import zlib

import attr

from prokshy._version import __version__
from prokshy.wire import frames

PROTOCOL_VERSIONS = (1,)
#: The smallest C{max_payload} and C{window} a peer may advertise: a hello
#: below them is refused (a guest answers with an error, a host ignores the
#: answer), because the control payloads (OPEN, REFUSE, EXIT) must fit in
#: one frame and a window must hold a few of them.
MIN_PAYLOAD = 256
MIN_WINDOW = 1024
#: Assumed when a peer's hello does not say how often it pings.
DEFAULT_PEER_PING = 1.0
#: Assumed for an absent or malformed C{window} / C{max_payload}.
DEFAULT_PEER_WINDOW = 8192
DEFAULT_PEER_PAYLOAD = 1024
#: The longest nonce accepted in a hello.
MAX_NONCE = 64


@attr.s
class SessionInfo:
    """
    What both sides agreed in the hello exchange.
    """

    version = attr.ib()
    localNonce = attr.ib()
    peerNonce = attr.ib()
    tag = attr.ib()
    features = attr.ib()
    peerHello = attr.ib()
    startedAt = attr.ib()
    sendPayload = attr.ib()
    sendWindow = attr.ib()


def sessionTag(hostNonce, guestNonce):
    """
    The session tag every frame of the session carries: CRC-32 of both
    nonces.
    """
    return zlib.crc32((hostNonce + ":" + guestNonce).encode("ascii"))


def validNonce(nonce):
    return isinstance(nonce, str) and 0 < len(nonce) <= MAX_NONCE and nonce.isascii()


def helloFields(config, role, nonce):
    """
    The fields of our hello (before C{peer} / C{error}).

    @param config: a L{prokshy.link.session.LinkConfig}.
    """
    fields = {
        "v": list(PROTOCOL_VERSIONS),
        "role": role,
        "nonce": nonce,
        "agent": "prokshy/" + __version__,
        "features": list(config.features),
        "window": config.window,
        "max_payload": config.maxPayload,
        "ping_interval": config.pingInterval,
    }
    if config.auth is not None:
        fields["auth"] = config.auth
    fields.update(config.extra)
    return fields


def negotiate(hello):
    """
    The highest protocol version both sides speak, or None.
    """
    versions = hello.get("v")
    if not isinstance(versions, list):
        return None
    common = set(PROTOCOL_VERSIONS) & set(v for v in versions if isinstance(v, int))
    return max(common) if common else None


def _int(value, default):
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def limitsProblem(hello):
    """
    Why the C{window} or C{max_payload} a peer advertises is unusable, or
    None.  Absent (or malformed) fields get the defaults.
    """
    window = _int(hello.get("window"), DEFAULT_PEER_WINDOW)
    if window < MIN_WINDOW:
        return "window %d is below the minimum of %d bytes" % (window, MIN_WINDOW)
    payload = _int(hello.get("max_payload"), DEFAULT_PEER_PAYLOAD)
    if payload < MIN_PAYLOAD:
        return "max_payload %d is below the minimum of %d bytes" % (payload, MIN_PAYLOAD)
    return None


def peerLimits(hello, ourSendWindow):
    """
    What we may send toward a peer whose hello L{limitsProblem} accepted.

    @return: C{(payload, window)}: the largest payload and the window.
    """
    payload = min(_int(hello.get("max_payload"), DEFAULT_PEER_PAYLOAD), frames.MAX_PAYLOAD_LIMIT)
    window = min(_int(hello.get("window"), DEFAULT_PEER_WINDOW), ourSendWindow)
    return payload, window


def commonFeatures(ours, hello):
    theirs = hello.get("features")
    return sorted(set(ours) & set(theirs)) if isinstance(theirs, list) else []


def peerPing(hello):
    """
    How often the peer pings, from its hello (seconds), within sane bounds.
    """
    value = hello.get("ping_interval")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return DEFAULT_PEER_PING
    return min(max(float(value), 0.01), 3600.0)


def shortRepr(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def versionProblem(hello, role):
    """
    Why a peer's hello has no usable version or limits, or None.

    @param role: our role: a host names the guest in its message.
    """
    if negotiate(hello) is None:
        if role == "host":
            return "the guest speaks no protocol version we do (it offers %s, we speak %s)" % (
                shortRepr(hello.get("v")),
                list(PROTOCOL_VERSIONS),
            )
        return "no common protocol version (we speak %s)" % (list(PROTOCOL_VERSIONS),)
    return limitsProblem(hello)
