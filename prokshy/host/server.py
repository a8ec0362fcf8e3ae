# -*- test-case-name: tests.system.test_host -*-
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
C{"vm": NAME}; without it the daemon's first VM is used.  Every open goes
through the VM's L{prokshy.host.queue.OpenQueue}, which waits for room on a
busy guest, fairly across clients.

Limits, per listener (see L{prokshy.tap.host}):

    limit                       default   beyond it
    --------------------------  --------  -------------------------------------
    --max-connections           1024      a new connection gets one line
                                          (prokshy-host: too many connections)
                                          and is closed at once
    --handshake-timeout         10 s      a connection that has not finished
                                          its hello (framed) or sent its first
                                          request line (line protocol) is
                                          closed (line clients get a line)
    --max-streams-per-client    64        a framed client's further opens are
                                          refused: too-many-streams

A hello refused for want of a token tells the peer nothing but that:
no VM names, no features.
"""

import hmac
import json
import time

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from prokshy._nodelay import noDelay
from prokshy._version import __version__
from prokshy._loglimit import LogLimiter
from prokshy.forward.hostside import ForwardTable
from prokshy.host.forwards import CONTROL_KINDS, DocumentProtocol, ForwardControl
from prokshy.host.relay import relay
from prokshy.host.vm import VMUnavailable
from prokshy.link.interfaces import ILinkAuthorizer
from prokshy.link.session import Link, LinkConfig
from prokshy.streams.mux import Mux
from prokshy.streams.stream import EARLY_DATA, EARLY_WINDOW
from prokshy.streams.throttle import Throttle
from prokshy.streams.stream import StreamRefused

CLIENT_WINDOW = 256 * 1024
#: Frames of 32 KiB: two per 64 KiB read of a socket or a pipe, and half the
#: per-frame work of 16 KiB ones.
CLIENT_PAYLOAD = 32 * 1024
#: Defaults of the per-listener limits (see the module docstring).
MAX_CONNECTIONS = 1024
HANDSHAKE_TIMEOUT = 10.0
MAX_STREAMS_PER_CLIENT = 64
FEATURES = ("exec", "info", "signal", "stderr", "status", "vm", "forward")
#: The most bytes of JSON the VM names may take in the daemon's hello: the
#: rest of the hello needs well under 1 KiB, and a hello line is at most
#: 2048 bytes.  Beyond it, the hello lists no VMs (the status stream does).
HELLO_VMS_BUDGET = 1024


@implementer(ILinkAuthorizer)
class FramedClient(Protocol):
    """
    A framed client: the daemon is its guest, and authorizes its hello.
    """

    log = Logger()

    def __init__(self, daemon, policy, onSession=None):
        self.daemon = daemon
        self.policy = policy
        self.mux = Mux("guest", openHandler=self._open, window=CLIENT_WINDOW, earlyData=EARLY_WINDOW)
        self.mux.whenDown(self._down)
        if onSession is not None:
            self.mux.whenUp(lambda info: onSession())
        self.link = None
        self._closeCall = None

    def connectionMade(self):
        # Until a hello is authorized, our hello says nothing about us (a
        # refusal goes out with these fields): no features, no VM names.
        config = LinkConfig(
            window=CLIENT_WINDOW,
            maxPayload=CLIENT_PAYLOAD,
            features=(),
            extra={"agent": "prokshy-host"},
        )
        self.link = Link(
            self.daemon.reactor, self.transport.write, "guest", self.mux, config, authorizer=self
        )
        # Frames wait in the link while the client's socket is full, so
        # control frames go before the streams' next data.
        self.transport.registerProducer(Throttle(self.link), True)
        self.link.start()

    def authorize(self, hello):
        token = self.daemon.token
        if token is not None and self.policy.requireToken:
            given = hello.get("auth")
            if not (isinstance(given, str) and hmac.compare_digest(given.encode(), token.encode())):
                if self._closeCall is None:
                    self._closeCall = self.daemon.reactor.callLater(0.1, self.transport.loseConnection)
                return "authentication required"
        config = self.link.config
        config.features = FEATURES
        config.extra = {"server": "prokshy-host", EARLY_DATA: EARLY_WINDOW}
        names = list(self.daemon.names)
        if len(json.dumps(names)) <= HELLO_VMS_BUDGET:
            # Only while the list leaves the hello line room for the rest
            # (a hello is at most 2048 bytes); clients ask the status
            # stream for the VMs a hello does not list.
            config.extra["vms"] = names
        return None

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
        limit = self.daemon.maxStreamsPerClient
        if len(self.mux.streams) > limit:
            # (the table holds this stream too)
            raise StreamRefused(
                "too-many-streams",
                "this client has %d streams open, the limit (--max-streams-per-client)"
                % (len(self.mux.streams) - 1,),
            )
        kind = stream.kind
        if kind == "status":
            return DocumentProtocol(self.daemon.status())
        if kind in CONTROL_KINDS:
            return self.daemon.control.open(kind, stream.args)
        if kind == "listen":
            # The guest's connections to it would come to the daemon, not to
            # this client.
            raise StreamRefused("unknown-kind", "reverse forwards are added with forward-add")
        args = dict(stream.args)
        name = args.pop("vm", None)
        named = name is not None
        if name is None:
            name = self.daemon.defaultVM
        vm = self.daemon.vms.get(name) if isinstance(name, str) else None
        if vm is None:
            raise StreamRefused("no-such-vm", "no vm named %r (have: %s)" % (name, ", ".join(self.daemon.names)))
        try:
            vm.mux
        except VMUnavailable as e:
            # A client that named the VM says which one itself (the CLI's
            # "vm NAME: ..."): the name is not repeated.
            raise StreamRefused("vm-unavailable", e.detail if named else str(e))
        return relay(vm.queue, self, stream, kind, args)


@implementer(IHalfCloseableProtocol)
class ClientChannel(Protocol):
    """
    Sniffs the first bytes, then hands the connection to the framed or the
    legacy protocol.
    """

    log = Logger()

    def __init__(self, daemon, policy, factory=None):
        self.daemon = daemon
        self.policy = policy
        self.factory = factory
        self.inner = None
        self._buf = b""
        self._handshakeCall = None

    def connectionMade(self):
        noDelay(self.transport)
        timeout = self.daemon.handshakeTimeout
        if timeout:
            self._handshakeCall = self.daemon.reactor.callLater(timeout, self._handshakeExpired)

    def handshakeDone(self):
        """
        The framed session is up, or the first request line came in.
        """
        if self._handshakeCall is not None and self._handshakeCall.active():
            self._handshakeCall.cancel()
        self._handshakeCall = None

    def _handshakeExpired(self):
        self._handshakeCall = None
        timeout = self.daemon.handshakeTimeout
        self.daemon.handshakeLog.emit(
            "closed a connection on {listener}: no {what} within {timeout} s (--handshake-timeout)",
            listener=self.policy.description,
            what="hello" if not isinstance(self.inner, _legacyClass()) else "request line",
            timeout=timeout,
        )
        if isinstance(self.inner, _legacyClass()):
            self.transport.write(b"prokshy-host: no request line within %g s\n" % (timeout,))
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()

    def dataReceived(self, data):
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self._buf += data
        buf = self._buf
        if buf == b"\n":
            return  # wait: LF 0xFF starts a framed hello
        if buf.startswith(b"\n\xff") or buf.startswith(b"\xff"):
            self.inner = FramedClient(self.daemon, self.policy, onSession=self.handshakeDone)
        elif not self.policy.legacy:
            self.log.info("refused a legacy client on {listener}", listener=self.policy.description)
            self.transport.write(b"prokshy-host: the line protocol is only served on unix and loopback listeners\n")
            self.transport.loseConnection()
            return
        else:
            from prokshy.host.legacy import LegacyClient

            self.inner = LegacyClient(self.daemon, self.daemon.legacyVM(self.policy))
            self.inner.onRequest = self.handshakeDone
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
        self.handshakeDone()
        if self.factory is not None:
            self.factory.connections -= 1
        if self.inner is not None:
            self.inner.connectionLost(reason)


def _legacyClass():
    from prokshy.host.legacy import LegacyClient

    return LegacyClient


class _TooMany(Protocol):
    """
    A connection beyond C{--max-connections}: one line, then closed.
    """

    def __init__(self, limit):
        self.limit = limit

    def connectionMade(self):
        self.transport.write(
            b"prokshy-host: too many connections (%d, --max-connections); try again later\n" % (self.limit,)
        )
        self.transport.loseConnection()


class ClientFactory(Factory):
    """
    The clients of one listener.

    @ivar connections: the connections open now.
    """

    noisy = False

    def __init__(self, daemon, policy):
        self.daemon = daemon
        self.policy = policy
        self.connections = 0

    def buildProtocol(self, addr):
        limit = self.daemon.maxConnections
        if limit and self.connections >= limit:
            self.daemon.connectionsLog.emit(
                "refused a connection on {listener}: {n} open, the limit (--max-connections)",
                listener=self.policy.description,
                n=self.connections,
            )
            return _TooMany(limit)
        self.connections += 1
        return ClientChannel(self.daemon, self.policy, self)


class Daemon:
    """
    The VMs and the shared state of the daemon.

    @ivar vms: VM name to L{prokshy.host.vm.VMConnection}, in order.
    @ivar token: the auth token, or None.
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        vms,
        token=None,
        legacyVMs=None,
        linger=1.5,
        maxConnections=MAX_CONNECTIONS,
        handshakeTimeout=HANDSHAKE_TIMEOUT,
        maxStreamsPerClient=MAX_STREAMS_PER_CLIENT,
        clientListen=None,
        clientConnect=None,
    ):
        self.reactor = reactor
        self.vms = vms
        self.token = token
        self.legacyVMs = legacyVMs or {}
        self.linger = linger
        self.maxConnections = maxConnections
        self.handshakeTimeout = handshakeTimeout
        self.maxStreamsPerClient = maxStreamsPerClient
        #: Every forward (configured and added by clients).
        self.forwards = ForwardTable(reactor, vms, clientListen=clientListen, clientConnect=clientConnect)
        self.control = ForwardControl(self.forwards)
        self.startedAt = time.time()
        self.handshakeLog = LogLimiter(reactor, self.log, interval=10.0)
        self.connectionsLog = LogLimiter(reactor, self.log, interval=10.0)

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
