# -*- test-case-name: tests.test_streams_interfaces -*-
"""
The stream layer's collaborators, as zope interfaces.

A L{prokshy.streams.stream.Stream} talks to the table that owns it only
through L{IStreamOwner} (L{prokshy.streams.mux.Mux} provides it), and the
owner talks to its streams only through L{IOwnedStream}.

The protocol bound to a stream provides Twisted's L{IProtocol} (DATA reaches
C{dataReceived}), and it says with C{@implementer} which other frames it
wants: L{IStreamProtocol} (the peer's EOF), L{IExecStreamProtocol} (the
opener's end of an exec stream: the command's stderr and exit status) and
L{ISignalStreamProtocol} (the command's end: signals).  A frame for an
interface the protocol does not provide is consumed and dropped; nothing is
looked up by name.
"""

from twisted.internet.interfaces import IProtocol
from zope.interface import Attribute, Interface


class IStreamOwner(Interface):
    """
    What a stream needs of its owner, the session's stream table.
    """

    writable = Attribute("True when the session takes a DATA or STDERR frame now.")
    maxPayload = Attribute("The most payload bytes one frame may carry now.")

    def send(ftype, sid, payload):
        """
        Send one frame of stream C{sid} now (nothing when there is no
        session).
        """

    def blocked(stream):
        """
        C{stream} has data waiting because the session is not writable: call
        its L{IOwnedStream.resumeSending} when it is (streams take turns).
        """

    def forget(stream):
        """
        C{stream} has ended: drop it (and anything still waiting to accept
        it).
        """


class IOwnedStream(Interface):
    """
    What a stream's owner may use of it.
    """

    id = Attribute("The stream id.")
    kind = Attribute("The kind given at open.")
    args = Attribute("The open arguments (a dict).")

    def accept(protocol, window):
        """
        The stream is open: bind C{protocol} (an L{IProtocol}), take the
        peer's C{window} as our first credit, and connect the protocol.
        """

    earlyEof = Attribute(
        "The opener's side: whether its EOF went (or waits) with its early data (L{sendEarly})."
    )

    def acceptAfterEof(protocol, window):
        """
        As L{accept}, for an opener whose EOF went with its early data: the
        stream is then half-closed on our side.
        """

    def sendEarly(data, eof, allowance):
        """
        The opener, right after its OPEN: send up to C{allowance} bytes of
        C{data} (and then EOF if C{eof}) before the answer
        (docs/protocol.md section 9.2); queue the rest for the ACCEPT.
        """

    def frameReceived(frame):
        """
        A frame of this stream arrived from the peer.
        """

    def resumeSending():
        """
        The session is writable again (after L{IStreamOwner.blocked}).
        """

    def sessionEnded(reason):
        """
        The session ended: end at once with C{reason} (a L{Failure}).
        """


class IStreamProtocol(IProtocol):
    """
    A stream protocol that hears the peer's half-close.
    """

    def eofReceived():
        """
        The peer sends no more data (EOF), after everything it sent before.
        """


class IExecStreamProtocol(IProtocol):
    """
    The opener's end of an exec stream: the command's stderr and exit.
    """

    def stderrReceived(data):
        """
        Bytes of the command's stderr (STDERR), in order with its stdout.
        """

    def exitReceived(status):
        """
        The command's exit status (EXIT): a dict with C{code}, C{signal},
        C{timed_out} and C{truncated}.
        """


class ISignalStreamProtocol(IProtocol):
    """
    The command's end of an exec stream: signals from the opener.
    """

    def signalReceived(request):
        """
        A SIGNAL (a dict with C{signal}), on arrival: even while the stream
        holds data back.
        """


__all__ = [
    "IStreamOwner",
    "IOwnedStream",
    "IStreamProtocol",
    "IExecStreamProtocol",
    "ISignalStreamProtocol",
]
