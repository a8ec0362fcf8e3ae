"""
The demo's tour (C{python -m prokshy.demo --tour}) as a subprocess: the
whole stack on loopback, driven by the real CLI and line-protocol clients.
"""

import os
import sys

from twisted.internet import error, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from tests.hostharness import ROOT


class _Collect(ProcessProtocol):
    def __init__(self):
        self.out = []
        self.err = []
        self.ended = Deferred()

    def connectionMade(self):
        self.transport.closeStdin()

    def outReceived(self, data):
        self.out.append(data)

    def errReceived(self, data):
        self.err.append(data)

    def processEnded(self, reason):
        code = reason.value.exitCode
        if code is None:
            code = -(reason.value.signal or 0)
        self.ended.callback((b"".join(self.out), b"".join(self.err), code))


class TourTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_tour(self):
        """
        The tour exits 0 and says it passed.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
        proto = _Collect()
        reactor.spawnProcess(
            proto, sys.executable, [sys.executable, "-m", "prokshy.demo", "--tour"], env=env, path=ROOT
        )

        def kill():
            try:
                proto.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass

        killer = reactor.callLater(90, kill)
        out, err, code = yield proto.ended
        if killer.active():
            killer.cancel()
        text = out.decode("utf-8", "replace")
        self.assertEqual(code, 0, text[-3000:] + err.decode("utf-8", "replace")[-2000:])
        self.assertIn("tour passed", text)
        self.assertNotIn("FAILED", text)
        self.assertEqual(text.count("-> exit"), text.count(": ok\n"))
        self.assertNotIn(b"Traceback", err)
