# -*- test-case-name: tests.unit.test_link_interfaces -*-
"""
The link's collaborators, as zope interfaces.

A L{prokshy.link.session.Link} calls its listener (L{ILinkListener}) and,
on the guest side, its authorizer (L{ILinkAuthorizer}) directly: every
method here is required, nothing is probed for.  Its listener talks back to
it through L{ILink}.
"""

from zope.interface import Attribute, Interface, implementer


class ILinkListener(Interface):
    """
    What a link tells the layer above it (L{prokshy.streams.mux.Mux}).
    """

    def linkUp(link, info):
        """
        A session is up.

        @param link: the L{ILink}.
        @param info: its L{prokshy.link.handshake.SessionInfo}.
        """

    def linkDown(link, reason):
        """
        The session ended.

        @param reason: a L{prokshy.link.session.SessionEnded}.
        """

    def frameReceived(frame):
        """
        The next sequenced frame of the session, exactly once and in order.

        @param frame: a L{prokshy.wire.frames.Frame}.
        """

    def linkWritable():
        """
        Nothing is queued behind the window any more: new frames handed to
        L{ILink.send} now would go out at once.
        """

    def linkRefused(link, reason):
        """
        Host: the guest refused our hello; the link has stopped.

        @param reason: the guest's reason (text).
        """


class ILinkAuthorizer(Interface):
    """
    Guest role: decides whether a host hello may start a session.
    """

    def authorize(hello):
        """
        @param hello: the host's hello (a C{dict}), already found compatible.
        @return: None to accept it, or a refusal reason (text) that the
            host is told in our answer.
        """


class ILink(Interface):
    """
    What a listener may use of its link.
    """

    state = Attribute('"IDLE", "HELLO", "UP" or "STOPPED".')
    info = Attribute("The L{SessionInfo} of the current (or last) session, or None.")
    writable = Attribute("True when a frame handed to L{send} would go out at once.")
    maxPayload = Attribute("The payload size to use now, in bytes.")

    def send(ftype, stream, payload=b""):
        """
        Queue a sequenced frame for reliable, in-order delivery.

        @raise prokshy.link.session.NotConnected: if there is no session.
        """

    def goodbye(reason="goodbye"):
        """
        End the session on purpose, telling the peer; then stop.
        """

    def endSession(reason):
        """
        End the session without telling the peer; the link keeps running.
        """

    def stop(reason="stopped"):
        """
        End the session, if any, and stop for good.
        """


@implementer(ILinkAuthorizer)
class AcceptAll:
    """
    The authorizer of a link that was given none: every compatible hello
    is accepted.
    """

    def authorize(self, hello):
        return None


ACCEPT_ALL = AcceptAll()
