"""
The link's collaborators are declared zope interfaces (L{prokshy.link.interfaces})
that the link calls without probing, and the daemon's framed clients
authorize hellos as an L{ILinkAuthorizer} given to the link, not by
patching their Mux.
"""

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from prokshy.host.server import FramedClient
from prokshy.link.interfaces import ACCEPT_ALL, ILink, ILinkAuthorizer, ILinkListener
from prokshy.link.lifecycle import ISessionCore
from prokshy.link.retransmit import IDeliveryOwner
from prokshy.link.session import Link, LinkConfig
from prokshy.streams.mux import Mux
from prokshy.wire import frames
from prokshy.testing import LinkPair, deterministicNonces


@implementer(ILinkListener)
class Spy:
    """
    A listener that records every attribute the link looks up on it.
    """

    def __init__(self):
        object.__setattr__(self, "looked", [])
        object.__setattr__(self, "events", [])

    def __getattribute__(self, name):
        if not name.startswith("__") and name not in ("looked", "events"):
            object.__getattribute__(self, "looked").append(name)
        return object.__getattribute__(self, name)

    def linkUp(self, link, info):
        self.events.append("up")

    def linkDown(self, link, reason):
        self.events.append("down")

    def frameReceived(self, frame):
        self.events.append("frame")

    def linkWritable(self):
        self.events.append("writable")

    def linkRefused(self, link, reason):
        self.events.append("refused")


class DeclaredTests(unittest.SynchronousTestCase):
    def test_mux(self):
        """
        L{Mux} provides L{ILinkListener}, on either side.
        """
        for role in ("host", "guest"):
            verifyObject(ILinkListener, Mux(role))

    def test_link(self):
        """
        L{Link} provides L{ILink} to its listener, L{ISessionCore} to its
        lifecycle machine and L{IDeliveryOwner} to its session's delivery.
        """
        link = Link(Clock(), lambda data: None, "guest", Mux("guest"))
        verifyObject(ILink, link)
        verifyObject(ISessionCore, link)
        verifyObject(IDeliveryOwner, link)
        self.assertIs(link.authorizer, ACCEPT_ALL)
        verifyObject(ILinkAuthorizer, ACCEPT_ALL)

    def test_framedClientAuthorizes(self):
        """
        The daemon's framed client is the L{ILinkAuthorizer} of its link;
        its Mux is not patched with an C{authorize}.
        """

        class Daemon:
            reactor = Clock()
            token = None
            names = ["vm1"]

        client = FramedClient(Daemon(), policy=None)
        client.makeConnection(StringTransport())
        self.addCleanup(client.link.stop)
        verifyObject(ILinkAuthorizer, client)
        self.assertIs(client.link.authorizer, client)
        self.assertFalse(hasattr(client.mux, "authorize"))
        self.assertIsNone(client.authorize({"role": "host", "nonce": "n"}))


class NoProbingTests(unittest.SynchronousTestCase):
    def setUp(self):
        deterministicNonces(self, seed=5)

    def test_onlyInterfaceMethods(self):
        """
        Through a session (handshake, data both ways, refusal, goodbye) the
        link looks up nothing on its listeners but L{ILinkListener}'s
        methods: it does not probe for optional ones.
        """
        allowed = set(ILinkListener.names())
        h, g = Spy(), Spy()
        pair = LinkPair(h, g)
        self.addCleanup(pair.stop)
        pair.connect()
        pair.host.send(frames.DATA, 1, b"to the guest")
        pair.guest.send(frames.DATA, 2, b"to the host")
        pair.run(until=lambda: "frame" in h.events and "frame" in g.events)
        pair.host.goodbye("done")
        pair.channel.flush()
        self.assertIn("writable", h.events)
        self.assertEqual(h.events.count("down"), 1)
        self.assertEqual(g.events.count("down"), 1)
        refused = Spy()
        link = pair.newHost(refused, LinkConfig(extra={"v": [99]}))
        link.start()
        pair.run(until=lambda: "refused" in refused.events)
        for spy in (h, g, refused):
            self.assertTrue(spy.looked)
            self.assertEqual(set(spy.looked) - allowed, set())
