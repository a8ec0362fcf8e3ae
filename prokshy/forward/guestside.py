# -*- test-case-name: tests.unit.test_forward_guest,tests.system.test_forward -*-
"""
The guest's end of forwarding: it decides what the host may reach.

    kind       from   the guest
    ---------  -----  ---------------------------------------------------
    connect    host   checks --allow-connect, connects, ACCEPTs once
                      connected; the stream then carries the connection
    listen     host   checks --allow-listen, listens, ACCEPTs once
                      listening; every connection accepted there opens a
                      C{forwarded} stream to the host; the listener closes
                      when the stream ends (the host's CLOSE or RESET, or
                      the session's end)

Refusals (docs/protocol.md §10.3-§10.4): C{bad-open} (no valid target),
C{not-allowed} (the allowlist's one-line reason), C{connection-refused},
C{connect-failed}, C{listen-failed}.  Each refusal is logged, at most a
few lines a second.
"""

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from prokshy.forward.allow import DEFAULT_CONNECT, DEFAULT_LISTEN, parsePatterns, resolvedPath
from prokshy.forward.bridge import CONNECT_TIMEOUT, Splice, connectSplice, describeAddress
from prokshy.forward.listeners import ListenFailed, Listeners
from prokshy.forward.spec import SpecError, sideFromArgs
from prokshy._loglimit import LogLimiter
from prokshy.streams.interfaces import IStreamProtocol
from prokshy.streams.stream import StreamRefused

__all__ = ["FEATURES", "KINDS", "GuestForwards"]

#: The kinds served, which the guest's hello lists as features.
KINDS = FEATURES = ("connect", "listen")


class GuestForwards:
    """
    The open handler for C{connect} and C{listen} streams.

    @param allowConnect: an L{prokshy.forward.allow.AllowList} (default:
        loopback, any port).
    @param allowListen: the same for listeners (default: loopback, ports
        1024 and up).
    """

    log = Logger()

    def __init__(self, reactor, allowConnect=None, allowListen=None, connectTimeout=CONNECT_TIMEOUT):
        self.reactor = reactor
        self.allowConnect = allowConnect or parsePatterns((), DEFAULT_CONNECT)
        self.allowListen = allowListen or parsePatterns((), DEFAULT_LISTEN)
        self.connectTimeout = connectTimeout
        self.connections = 0
        self.listeners = 0
        self._refusals = LogLimiter(reactor, self.log, interval=10.0)
        self._listening = Listeners(reactor)

    def open(self, stream, opener):
        """
        Serve C{stream}, of one of L{KINDS}.

        @param opener: the session's stream table (it opens the
            C{forwarded} streams of a listener).
        """
        if stream.kind == "connect":
            return self._connect(stream)
        return self._listen(stream, opener)

    def _target(self, stream, listening, allow, option):
        try:
            target = sideFromArgs(stream.args, listening)
        except SpecError as e:
            raise StreamRefused("bad-open", "%s: %s" % (stream.kind, e))
        why = allow.refusal(target, option, resolve=resolvedPath)
        if why is not None:
            self._refusals.emit("refused {kind} {target}: {why}", kind=stream.kind, target=str(target), why=why)
            raise StreamRefused("not-allowed", why)
        return target

    def _connect(self, stream):
        target = self._target(stream, False, self.allowConnect, "--allow-connect")
        self.connections += 1
        d = connectSplice(self.reactor, target, self._connectionDone, self.connectTimeout)

        def failed(failure):
            self.connections -= 1
            failure.trap(StreamRefused)
            self._refusals.emit("connect {target}: {why}", target=str(target), why=failure.value.message)
            return failure

        return d.addErrback(failed)

    def _connectionDone(self, splice):
        self.connections -= 1

    def _listen(self, stream, opener):
        target = self._target(stream, True, self.allowListen, "--allow-listen")
        listener = _Listener(self, opener, target)
        factory = Factory.forProtocol(Protocol)
        factory.buildProtocol = listener.buildProtocol
        factory.noisy = False

        def listening(port):
            listener.port = port
            self.listeners += 1
            self.log.info("listening on {target} for the host", target=str(target))
            return listener

        def failed(failure):
            failure.trap(ListenFailed)
            message = str(failure.value)
            self._refusals.emit("listen {why}", why=message)
            raise StreamRefused("listen-failed", message)

        return self._listening.listen(target, factory).addCallbacks(listening, failed)


@implementer(IStreamProtocol)
class _Listener(Protocol):
    """
    A C{listen} stream's protocol: its listener lives as long as it does.
    """

    def __init__(self, forwards, opener, target):
        self.forwards = forwards
        self.opener = opener
        self.target = target
        self.port = None

    def buildProtocol(self, addr):
        if self.transport is None or self.transport.ended:
            return None
        splice = Splice()
        try:
            d = self.opener.openStream(
                "forwarded",
                {"listener": self.transport.id, "peer": describeAddress(addr)},
                splice.streamProtocol(),
            )
        except Exception as e:
            self.forwards.log.info("cannot forward a connection to the host: {why}", why=str(e))
            return None

        def refused(failure):
            self.forwards._refusals.emit(
                "the host refused a connection on {target}: {why}",
                target=str(self.target),
                why=failure.getErrorMessage(),
            )
            splice.abandon()

        d.addErrback(refused)
        return splice.socketProtocol()

    def dataReceived(self, data):
        pass  # a listen stream carries no data

    def eofReceived(self):
        pass

    def connectionLost(self, reason):
        if self.port is not None:
            self.forwards.listeners -= 1
            self.forwards.log.info("stopped listening on {target}", target=str(self.target))
            self.forwards._listening.stop(self.target, self.port)
            self.port = None
