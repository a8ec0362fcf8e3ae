# -*- test-case-name: tests.unit.test_forward_bridge -*-
"""
A splice: one socket connection carried by one stream (docs/protocol.md
§10.3, the rules shared by C{connect} and C{forwarded} streams).

    socket                         stream
    ---------------------------    -----------------------------------------
    bytes read                  -> DATA
    read EOF (peer's SHUT_WR)   -> EOF
    closed cleanly, both ways   -> CLOSE (after EOF)
    error or reset              -> RESET connection-reset
    shutdown(SHUT_WR)           <- EOF
    flushed, then closed        <- CLOSE
    aborted at once             <- RESET, the session's end

Flow control runs through: the socket is the stream's producer (not read
while the stream holds more than its high water of unsent data) and the
stream is the socket's (no credit granted to the peer while the socket's
write buffer is full), so memory per connection stays within the windows.
Writes are never batched: TCP sockets get TCP_NODELAY, so a single byte
typed into an interactive session goes out at once.

The side that opens the stream (a forward's listener) holds its socket
paused from the connection until the peer accepts; the side that accepts
(the far end's connect) holds its socket paused from the connection until
the stream is bound.  Neither reads a byte it has nowhere to send.

Counters (L{Splice.bytesToStream}, L{Splice.bytesFromStream}) are the
payload bytes carried each way; L{Splice.whenDone} is called once, with
the splice, when both ends are gone.
"""

import errno
import os

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from prokshy._nodelay import noDelay
from prokshy.streams.interfaces import IStreamProtocol
from prokshy.streams.stream import StreamRefused
from prokshy.streams.throttle import throttleEachOther

__all__ = ["CONNECT_TIMEOUT", "Splice", "connectSplice", "connectRefusal", "describeAddress"]

#: Seconds a forward's connection attempt may take before it is refused
#: C{connect-failed}.
CONNECT_TIMEOUT = 10.0
_REFUSED_ERRNOS = (errno.ECONNREFUSED, errno.ENOENT)


class Splice:
    """
    One socket connection and one stream, joined.

    @ivar socket: the socket's transport, once connected (else None).
    @ivar stream: the stream, once bound (else None).
    @ivar peer: a description of the socket's peer, for logs.
    """

    log = Logger()

    def __init__(self, onDone=None):
        self.socket = None
        self.stream = None
        self.peer = "?"
        self._onDone = onDone
        self._socketGone = False
        self._streamGone = False
        self._finished = False
        self._readEnded = False
        self._writeEnded = False
        self._bytesIn = 0
        self._bytesOut = 0

    # -- the two protocols ----------------------------------------------------

    def socketProtocol(self):
        """
        The protocol for the socket connection.
        """
        return _SocketSide(self)

    def streamProtocol(self):
        """
        The protocol to bind to the stream (L{IStreamProtocol}).
        """
        return _StreamSide(self)

    # -- counters -------------------------------------------------------------

    @property
    def bytesToStream(self):
        """
        Bytes read from the socket and sent on the stream.
        """
        return self.stream.bytesOut if self.stream is not None else self._bytesOut

    @property
    def bytesFromStream(self):
        """
        Bytes received on the stream (for the socket).
        """
        return self.stream.bytesIn if self.stream is not None else self._bytesIn

    @property
    def done(self):
        return self._finished

    # -- events ---------------------------------------------------------------

    def socketConnected(self, transport):
        self.socket = transport
        noDelay(transport)
        self.peer = describeAddress(transport.getPeer())
        if self._streamGone:
            transport.abortConnection()
        elif self.stream is None:
            transport.pauseProducing()
        else:
            self._join()

    def streamConnected(self, stream):
        self.stream = stream
        if self._socketGone:
            stream.abort("connection-reset", "the connection closed before the stream opened")
        elif self.socket is not None:
            self._join()

    def _join(self):
        throttleEachOther(self.stream, self.socket)
        self.socket.resumeProducing()

    def socketData(self, data):
        self.stream.write(data)

    def socketReadEnded(self):
        self._readEnded = True
        if self.stream is not None and not self.stream.ended:
            self.stream.writeEof()
        self._closeIfHalfClosedBoth()

    def socketWriteEnded(self):
        self._writeEnded = True
        self._closeIfHalfClosedBoth()

    def _closeIfHalfClosedBoth(self):
        # Twisted keeps a socket open after both halves are shut down: close
        # it, which ends the stream with CLOSE (socketLost).
        if self._readEnded and self._writeEnded and not self._socketGone:
            self.socket.loseConnection()

    def socketLost(self, reason):
        self._socketGone = True
        stream = self.stream
        if stream is not None and not stream.ended:
            if reason.check(ConnectionDone):
                stream.loseConnection()
            else:
                stream.abort("connection-reset", reason.getErrorMessage())
        self._check()

    def streamData(self, data):
        self.socket.write(data)

    def streamEof(self):
        if not self._socketGone:
            self.socket.loseWriteConnection()

    def streamLost(self, reason):
        self._streamGone = True
        if self.stream is not None:
            self._bytesIn, self._bytesOut = self.stream.bytesIn, self.stream.bytesOut
        socket = self.socket
        if socket is not None and not self._socketGone:
            if reason.check(ConnectionDone):
                socket.loseConnection()
            else:
                socket.abortConnection()
        self._check()

    def abandon(self):
        """
        The stream will never open (refused, or no session): close the
        socket now.
        """
        self._streamGone = True
        if self.socket is not None and not self._socketGone:
            self.socket.loseConnection()
        self._check()

    def _check(self):
        if self._finished:
            return
        if self._streamGone and (self._socketGone or self.socket is None):
            self._finished = True
            if self._onDone is not None:
                self._onDone(self)


@implementer(IHalfCloseableProtocol)
class _SocketSide(Protocol):
    def __init__(self, splice):
        self.splice = splice

    def connectionMade(self):
        self.splice.socketConnected(self.transport)

    def dataReceived(self, data):
        self.splice.socketData(data)

    def readConnectionLost(self):
        self.splice.socketReadEnded()

    def writeConnectionLost(self):
        self.splice.socketWriteEnded()

    def connectionLost(self, reason):
        self.splice.socketLost(reason)


@implementer(IStreamProtocol)
class _StreamSide(Protocol):
    def __init__(self, splice):
        self.splice = splice

    def connectionMade(self):
        self.splice.streamConnected(self.transport)

    def dataReceived(self, data):
        self.splice.streamData(data)

    def eofReceived(self):
        self.splice.streamEof()

    def connectionLost(self, reason):
        self.splice.streamLost(reason)


def connectRefusal(target, failure):
    """
    The refusal for a connection attempt to C{target} that failed:
    C{connection-refused} when nothing listens there (or a unix path does
    not exist), else C{connect-failed}.
    """
    exc = failure.value
    refused = isinstance(exc, error.ConnectionRefusedError) or (
        isinstance(exc, error.ConnectError) and exc.osError in _REFUSED_ERRNOS
    )
    if isinstance(exc, error.TimeoutError):
        why = "timed out"
    elif isinstance(exc, error.ConnectError) and isinstance(exc.osError, int):
        why = os.strerror(exc.osError).lower()
    elif refused:
        why = "connection refused"
    else:
        why = failure.getErrorMessage()
    return StreamRefused("connection-refused" if refused else "connect-failed", "%s: %s" % (target, why))


def connectSplice(reactor, target, onDone=None, timeout=CONNECT_TIMEOUT, splice=None):
    """
    Connect to C{target} (a L{prokshy.forward.spec.Tcp} or C{Unix}) for a
    stream that is being opened, with a new L{Splice} (calling C{onDone})
    or with C{splice}.

    @return: a Deferred firing with the stream protocol of a L{Splice} once
        connected, or failing with L{StreamRefused} (L{connectRefusal}).
        Cancelling it gives up the attempt.
    """
    if splice is None:
        splice = Splice(onDone)
    endpoint = clientFromString(reactor, target.clientEndpoint(timeout))
    factory = Factory.forProtocol(splice.socketProtocol)
    factory.noisy = False
    attempt = endpoint.connect(factory)
    result = Deferred(lambda _: attempt.cancel())

    def connected(_):
        result.callback(splice.streamProtocol())

    def failed(failure):
        if not result.called:
            result.errback(connectRefusal(target, failure))

    attempt.addCallbacks(connected, failed)
    return result


def describeAddress(addr):
    """
    C{HOST:PORT} of a TCP address (IPv6 in brackets), or C{unix}.
    """
    if isinstance(addr, IPv6Address):
        return "[%s]:%d" % (addr.host, addr.port)
    if isinstance(addr, IPv4Address):
        return "%s:%d" % (addr.host, addr.port)
    return "unix"
