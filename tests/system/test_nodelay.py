"""
TCP connections prokshy makes or accepts have Nagle's algorithm off
(C{TCP_NODELAY}): the daemon's TCP listeners and the CLI's C{--connect
tcp:...}.  (Forwarded connections: tests/unit/test_forward_bridge.py.)
Checked on the real sockets, since a Nagle stall shows only as time.
"""

import socket

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from prokshy._nodelay import noDelay
from prokshy.cli.fallback import AutoChannel
from prokshy.cli.options import parseArgs
from prokshy.host.policy import listenerPolicy
from prokshy.host.client import HostProtocol
from prokshy.host.server import ClientFactory, Daemon
from tests.harness import waitFor


def _noDelay(transport):
    return transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


class NoDelayFunctionTests(SynchronousTestCase):
    def test_notTCP(self):
        """
        A transport that is not TCP is left alone.
        """
        self.assertFalse(noDelay(StringTransport()))


class _Recorder(Protocol):
    def __init__(self, made):
        self.made = made

    def connectionMade(self):
        self.made.append(self.transport)


class DaemonListenerTests(TestCase):
    @inlineCallbacks
    def test_tcpListener(self):
        """
        A client's connection to the daemon's TCP listener has TCP_NODELAY
        on the daemon's side.
        """
        daemon = Daemon(reactor, {})
        factory = ClientFactory(daemon, listenerPolicy("tcp:0:interface=127.0.0.1", False))
        accepted = []
        build = factory.buildProtocol

        def recording(addr):
            proto = build(addr)
            original = proto.connectionMade

            def made():
                original()
                accepted.append(proto.transport)

            proto.connectionMade = made
            return proto

        factory.buildProtocol = recording
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        client = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(Protocol)
        )
        self.addCleanup(client.transport.abortConnection)
        yield waitFor(lambda: accepted, "the daemon's side of the connection", timeout=10)
        self.assertTrue(_noDelay(accepted[0]))


class CLIConnectTests(TestCase):
    @inlineCallbacks
    def test_connectTcp(self):
        """
        The CLI's connection to a daemon's TCP address has TCP_NODELAY.
        """
        made = []
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: _Recorder(made))
        )
        self.addCleanup(port.stopListening)
        options = parseArgs(
            ["--connect", "tcp:host=127.0.0.1:port=%d" % (port.getHost().port,), "--info"]
        )
        channel = AutoChannel(reactor, options, None, "test")
        channel.decided.addErrback(lambda f: None)  # no daemon answers here
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(lambda: channel)
        )
        self.addCleanup(channel.transport.abortConnection)
        self.assertTrue(_noDelay(channel.transport))
        yield waitFor(lambda: made, "the server's side", timeout=10)
        # Nagle is a sender's choice: the server here set nothing.
        self.assertFalse(_noDelay(made[0]))


class APIConnectTests(TestCase):
    @inlineCallbacks
    def test_connectSessionTcp(self):
        """
        The host API's connection (L{connectSession} over a TCP endpoint,
        to a daemon or a VM's TCP console) has TCP_NODELAY.
        """
        made = []
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: _Recorder(made))
        )
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        proto = yield endpoint.connect(Factory.forProtocol(lambda: HostProtocol(reactor)))
        self.addCleanup(proto.transport.abortConnection)
        self.assertTrue(_noDelay(proto.transport))
        yield waitFor(lambda: made, "the server's side", timeout=10)
