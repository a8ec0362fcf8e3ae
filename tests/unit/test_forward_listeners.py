"""
L{prokshy.forward.listeners}: one listening socket per address at a time,
and the one-line reasons a listen fails.
"""

from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from prokshy.forward.listeners import ListenFailed, Listeners
from prokshy.forward.spec import Tcp, Unix


class _Port:
    """
    A listening port that closes when told (as Twisted's closes a reactor
    turn after C{stopListening}).
    """

    def __init__(self, reactor, address):
        self.reactor = reactor
        self.address = address
        self.closing = None

    def stopListening(self):
        self.closing = Deferred()
        return self.closing

    def closed(self):
        self.reactor.bound.discard(self.address)
        self.closing.callback(None)


class _Reactor(MemoryReactor):
    """
    Refuses to bind an address that is bound (until its port has closed).
    """

    def __init__(self):
        MemoryReactor.__init__(self)
        self.bound = set()
        self.failWith = None

    def _bind(self, address):
        if self.failWith is not None:
            raise self.failWith
        if address in self.bound:
            raise CannotListenError(address[0], address[1], OSError(98, "Address already in use"))
        self.bound.add(address)
        return _Port(self, address)

    def listenTCP(self, port, factory, backlog=50, interface=""):
        self.tcpServers.append((port, factory, backlog, interface))
        return self._bind((interface, port))

    def listenUNIX(self, address, factory, backlog=50, mode=0o666, wantPID=0):
        self.unixServers.append((address, factory, backlog, mode, wantPID))
        return self._bind((address, None))


def _result(d):
    box = []
    d.addBoth(box.append)
    return box[0] if box else None


class ListenersTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = _Reactor()
        self.listeners = Listeners(self.reactor)
        self.factory = Factory.forProtocol(Protocol)

    def test_reListenWhileClosing(self):
        """
        Listening again on an address whose port is still closing waits for
        the close, then binds: not "address already in use".
        """
        side = Tcp("127.0.0.1", 8080)
        port = _result(self.listeners.listen(side, self.factory))
        self.assertIsInstance(port, _Port)
        stopped = self.listeners.stop(side, port)
        again = self.listeners.listen(side, self.factory)
        self.assertNoResult(again)  # waiting for the close
        self.assertEqual(len(self.reactor.tcpServers), 1)
        port.closed()
        self.successResultOf(stopped)
        self.assertIsInstance(self.successResultOf(again), _Port)
        self.assertEqual(len(self.reactor.tcpServers), 2)

    def test_otherAddressesDoNotWait(self):
        side = Tcp("127.0.0.1", 8080)
        port = _result(self.listeners.listen(side, self.factory))
        self.listeners.stop(side, port)
        self.assertIsInstance(_result(self.listeners.listen(Tcp("127.0.0.1", 8081), self.factory)), _Port)

    def test_inUse(self):
        """
        An address in use (by someone else) fails at once, one line.
        """
        side = Tcp("127.0.0.1", 8080)
        self.reactor.bound.add(("127.0.0.1", 8080))
        failure = _result(self.listeners.listen(side, self.factory))
        failure.trap(ListenFailed)
        self.assertEqual(str(failure.value), "127.0.0.1:8080: address already in use")

    def test_unixLockHeld(self):
        """
        A unix path whose Twisted lock file a live listener holds: "address
        already in use", not Twisted's text.
        """
        self.reactor.failWith = CannotListenError(None, "/run/h.sock", "Cannot acquire lock")
        failure = _result(self.listeners.listen(Unix("/run/h.sock"), self.factory))
        failure.trap(ListenFailed)
        self.assertEqual(str(failure.value), "/run/h.sock: address already in use")

    def test_cancelWhileWaiting(self):
        """
        A listen given up while it waits for a close never binds.
        """
        side = Tcp("127.0.0.1", 8080)
        port = _result(self.listeners.listen(side, self.factory))
        self.listeners.stop(side, port)
        again = self.listeners.listen(side, self.factory)
        again.cancel()
        self.failureResultOf(again)
        port.closed()
        self.assertEqual(len(self.reactor.tcpServers), 1)
