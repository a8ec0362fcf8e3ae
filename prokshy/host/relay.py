# -*- test-case-name: tests.system.test_host -*-
"""
Relays a client's stream onto a VM's session, so that one VM connection
serves many clients.

Every frame kind passes through in both directions (data, stderr, EOF, exit,
signal, close, reset).  Each stream throttles the other (it is registered as
the other's producer, through L{prokshy.streams.throttle.Throttle}), so credit windows run end to
end: a slow client pauses its VM stream, which stops granting credit to the
guest, and nobody else is stalled.

When one side ends abnormally the other is reset with the reason: a VM
session that ends (the guest restarted, the VM went down, the daemon is
stopping) reaches the client as C{vm-unavailable: session ended: ...}, and
a client that goes away cancels its command.
"""

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from prokshy.link.session import SessionEnded
from prokshy.streams.interfaces import IExecStreamProtocol, ISignalStreamProtocol, IStreamProtocol
from prokshy.streams.stream import StreamError
from prokshy.streams.throttle import throttleEachOther
from prokshy.wire import frames


@implementer(IStreamProtocol, IExecStreamProtocol, ISignalStreamProtocol)
class _Side(Protocol):
    """
    One end of a relay: what its stream receives goes to C{peer}.

    @ivar fromVM: this is the VM's stream (its peer is the client's).
    """

    peer = None

    def __init__(self, fromVM):
        self.fromVM = fromVM

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
        elif not self.fromVM:
            peer.abort("cancelled", "the client went away (%s)" % (reason.getErrorMessage(),))
        elif reason.check(SessionEnded):
            peer.abort("vm-unavailable", str(reason.value))
        else:
            peer.abort("peer-gone", reason.getErrorMessage())


def relay(queue, client, clientStream, kind, args):
    """
    Open C{kind} on a VM (through its L{prokshy.host.queue.OpenQueue}) for
    C{clientStream}.

    @param client: the client connection (the queue's fairness key).
    @return: a Deferred firing with the protocol for the client's stream
        once the guest accepts, or failing with L{StreamRefused} (the
        guest's own refusal, C{busy}, C{too-big} or C{vm-unavailable}).
        Cancelling it (the client went away first) withdraws the open, or
        aborts the VM's stream when it opens.
    """
    vmSide, clientSide = _Side(fromVM=True), _Side(fromVM=False)
    opening = queue.open(client, kind, args, vmSide)
    result = Deferred(lambda _: opening.cancel())

    def accepted(vmStream):
        vmSide.peer = clientStream
        clientSide.peer = vmStream
        throttleEachOther(vmStream, clientStream)
        result.callback(clientSide)

    def failed(failure):
        if not result.called:
            result.errback(failure)

    opening.addCallbacks(accepted, failed)
    return result
