# -*- test-case-name: tests.test_host -*-
"""
The host daemon's client side: every listener speaks two protocols, told
apart by the first bytes a client sends.

    first bytes        protocol
    -----------------  ----------------------------------------------------
    LF 0xFF or 0xFF    framed (docs/protocol.md): the daemon answers the
                       client's hello as a guest would, then relays each
                       stream the client opens onto the chosen VM's session
    anything else      the original line protocol, served on the listener's
                       legacy VM (unix and loopback listeners only)

Framed clients may open, besides the guest's own kinds (C{exec}, C{info}),
C{status}: one JSON document describing every VM.  An OPEN may carry
C{"vm": NAME}; without it the daemon's first VM is used.
"""

import hmac
import time

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from prokshy._version import __version__
from prokshy.host.relay import relay
from prokshy.host.vm import VMUnavailable
from prokshy.link.session import Link, LinkConfig
from prokshy.streams.mux import Mux
from prokshy.streams.stream import StreamRefused, encodeJSON

CLIENT_WINDOW = 256 * 1024
CLIENT_PAYLOAD = 16 * 1024


class StatusProtocol(Protocol):
    def __init__(self, daemon):
        self.daemon = daemon

    def connectionMade(self):
        self.transport.write(encodeJSON(self.daemon.status()))
        self.transport.loseConnection()


class FramedClient(Protocol):
    """
    A framed client: the daemon is its guest.
    """

    log = Logger()

    def __init__(self, daemon, policy):
        self.daemon = daemon
        self.policy = policy
        self.mux = Mux("guest", openHandler=self._open, window=CLIENT_WINDOW)
        self.mux.authorize = self._authorize
        self.mux.whenDown(self._down)
        self.link = None
        self._closeCall = None

    def connectionMade(self):
        config = LinkConfig(
            window=CLIENT_WINDOW,
            maxPayload=CLIENT_PAYLOAD,
            features=("exec", "info", "signal", "stderr", "status", "vm"),
            extra={"server": "prokshy-host", "vms": self.daemon.names},
        )
        self.link = Link(self.daemon.reactor, self.transport.write, "guest", self.mux, config)
        self.link.start()

    def _authorize(self, hello):
        token = self.daemon.token
        if token is None or not self.policy.requireToken:
            return None
        given = hello.get("auth")
        if isinstance(given, str) and hmac.compare_digest(given.encode(), token.encode()):
            return None
        if self._closeCall is None:
            self._closeCall = self.daemon.reactor.callLater(0.1, self.transport.loseConnection)
        return "authentication required: a valid token (--auth-token-file)"

    def dataReceived(self, data):
        self.link.dataReceived(data)

    def _down(self, reason):
        # A framed client whose session ended (it went silent, or said
        # goodbye) is gone: close so its streams' commands are cancelled.
        self.transport.loseConnection()

    def connectionLost(self, reason):
        if self._closeCall is not None and self._closeCall.active():
            self._closeCall.cancel()
        if self.link is not None:
            self.link.stop("client went away")

    def _open(self, stream):
        kind = stream.kind
        if kind == "status":
            return StatusProtocol(self.daemon)
        args = dict(stream.args)
        name = args.pop("vm", None)
        if name is None:
            name = self.daemon.defaultVM
        vm = self.daemon.vms.get(name) if isinstance(name, str) else None
        if vm is None:
            raise StreamRefused("no-such-vm", "no vm named %r (have: %s)" % (name, ", ".join(self.daemon.names)))
        try:
            mux = vm.mux
        except VMUnavailable as e:
            raise StreamRefused("vm-unavailable", str(e))
        return relay(mux, stream, kind, args)


@implementer(IHalfCloseableProtocol)
class ClientChannel(Protocol):
    """
    Sniffs the first bytes, then hands the connection to the framed or the
    legacy protocol.
    """

    log = Logger()

    def __init__(self, daemon, policy):
        self.daemon = daemon
        self.policy = policy
        self.inner = None
        self._buf = b""

    def dataReceived(self, data):
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self._buf += data
        buf = self._buf
        if buf == b"\n":
            return  # wait: LF 0xFF starts a framed hello
        if buf.startswith(b"\n\xff") or buf.startswith(b"\xff"):
            self.inner = FramedClient(self.daemon, self.policy)
        elif not self.policy.legacy:
            self.log.info("refused a legacy client on {listener}", listener=self.policy.description)
            self.transport.write(b"prokshy-host: the line protocol is only served on unix and loopback listeners\n")
            self.transport.loseConnection()
            return
        else:
            from prokshy.host.legacy import LegacyClient

            self.inner = LegacyClient(self.daemon, self.daemon.legacyVM(self.policy))
        self._buf = b""
        self.inner.makeConnection(self.transport)
        self.inner.dataReceived(buf)

    def readConnectionLost(self):
        handler = getattr(self.inner, "readConnectionLost", None)
        if handler is not None:
            handler()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        if self.inner is not None:
            self.inner.connectionLost(reason)


class ClientFactory(Factory):
    noisy = False

    def __init__(self, daemon, policy):
        self.daemon = daemon
        self.policy = policy

    def buildProtocol(self, addr):
        return ClientChannel(self.daemon, self.policy)


class Daemon:
    """
    The VMs and the shared state of the daemon.

    @ivar vms: VM name to L{prokshy.host.vm.VMConnection}, in order.
    @ivar token: the auth token, or None.
    """

    def __init__(self, reactor, vms, token=None, legacyVMs=None, linger=1.5):
        self.reactor = reactor
        self.vms = vms
        self.token = token
        self.legacyVMs = legacyVMs or {}
        self.linger = linger
        self.startedAt = time.time()

    @property
    def names(self):
        return list(self.vms)

    @property
    def defaultVM(self):
        return self.names[0]

    def legacyVM(self, policy):
        return self.vms[self.legacyVMs.get(policy.description, self.defaultVM)]

    def status(self):
        return {
            "daemon": {"version": __version__, "uptime": round(time.time() - self.startedAt, 3)},
            "vms": [vm.status() for vm in self.vms.values()],
        }
