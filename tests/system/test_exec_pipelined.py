"""
Early data through the real daemon (issue 10): a client's exec sends its
OPEN, stdin and EOF in one go to the daemon, whose hello allows it; the
daemon holds them while the open waits for the VM and relays them once the
guest accepts.  Real sockets, a real agent and real processes; counts and
bytes, never times.
"""

from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.trial.unittest import TestCase

from prokshy.streams.stream import EARLY_WINDOW, StreamRefused
from tests.hostharness import HostHarness


class DaemonEarlyDataTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_throughTheDaemon(self):
        """
        The daemon's hello allows early data; execs with stdin within the
        early window and beyond it, and many at once (more than the guest
        runs, so some wait in the daemon's queue), all get exactly their
        stdin back; a refused one keeps the guest's code.
        """
        h = yield HostHarness(self, tcp=False).start()
        session = yield h.connect(h.unixEndpoint())
        self.assertEqual(session.mux.peerEarlyData, EARLY_WINDOW)
        small, big = b"early stdin", bytes(range(256)) * 300
        for data in (small, big, b""):
            result = yield session.exec("cat", data)
            self.assertEqual((result.exitStatus, result.stdout), (0, data))
        datas = [b"%d " % (i,) * (i + 1) for i in range(40)]
        results = yield DeferredList([session.exec("cat", d) for d in datas], consumeErrors=True)
        self.assertEqual([r.stdout if ok else r for ok, r in results], datas)
        try:
            yield session.exec("no-such-thing", b"dropped")
        except StreamRefused as e:
            self.assertEqual(e.code, "no-such-command")
        else:
            self.fail("not refused")
        result = yield session.exec("cat", small)
        self.assertEqual(result.stdout, small)
