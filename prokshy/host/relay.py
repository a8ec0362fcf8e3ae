# -*- test-case-name: tests.test_host -*-
"""
Relays a client's stream onto a VM's session, so that one VM connection
serves many clients.

Every frame kind passes through in both directions (data, stderr, EOF, exit,
signal, close, reset).  Each stream is registered as the other's producer,
so credit windows run end to end: a slow client pauses its VM stream, which
stops granting credit to the guest, and nobody else is stalled.
"""

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol

from prokshy.link.session import SessionEnded
from prokshy.streams.stream import StreamError, StreamRefused
from prokshy.wire import frames


class _Side(Protocol):
    peer = None

    def dataReceived(self, data):
        self.peer.write(data)

    def stderrReceived(self, data):
        self.peer.writeStderr(data)

    def eofReceived(self):
        self.peer.writeEof()

    def exitReceived(self, obj):
        self.peer.sendControl(frames.EXIT, obj)

    def signalReceived(self, obj):
        self.peer.sendControl(frames.SIGNAL, obj)

    def connectionLost(self, reason):
        peer = self.peer
        if peer is None or peer.ended:
            return
        if reason.check(ConnectionDone):
            peer.loseConnection()
        elif reason.check(StreamError):
            peer.abort(reason.value.code, reason.value.message)
        else:
            peer.abort("peer-gone", reason.getErrorMessage())


def relay(vmMux, clientStream, kind, args):
    """
    Open C{kind} on C{vmMux} for C{clientStream}.

    @return: a Deferred firing with the protocol for the client's stream
        once the guest accepts, or failing with L{StreamRefused} (the
        guest's own refusal, or C{vm-unavailable}).  Cancelling it (the
        client went away first) aborts the VM's stream when it opens.
    """
    vmSide, clientSide = _Side(), _Side()
    cancelled = []
    result = Deferred(lambda _: cancelled.append(True))

    def accepted(vmStream):
        if cancelled:
            vmStream.abort("cancelled", "the client went away")
            return
        vmSide.peer = clientStream
        clientSide.peer = vmStream
        vmStream.registerProducer(clientStream, True)
        clientStream.registerProducer(vmStream, True)
        result.callback(clientSide)

    def failed(failure):
        if cancelled:
            return
        if failure.check(SessionEnded):
            result.errback(StreamRefused("vm-unavailable", str(failure.value)))
        else:
            result.errback(failure)

    vmMux.openStream(kind, args, vmSide).addCallbacks(accepted, failed)
    return result
