"""
The demo's tour (C{python -m prokshy.demo --tour}) as a subprocess: the
whole stack on loopback, driven by the real CLI and line-protocol clients.
"""

import os
import shutil
import sys
import tempfile

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


def _env(tmpdir=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    if tmpdir is not None:
        env["TMPDIR"] = tmpdir
    return env


class _Interactive(_Collect):
    """
    Sends SIGINT (Ctrl-C) once the banner is out.
    """

    def connectionMade(self):
        self.transport.closeStdin()

    def outReceived(self, data):
        _Collect.outReceived(self, data)
        if b"Ctrl-C stops the demo" in b"".join(self.out):
            try:
                self.transport.signalProcess("INT")
            except error.ProcessExitedAlready:
                pass


# A tour whose VMs never come up: the demo fails, and must keep its log.
_FAILING = (
    "from twisted.internet import defer; import prokshy.demo as d; "
    "d.Demo.waitUp = lambda self, timeout=15.0, until=None: defer.succeed(False); d.main(['--tour'])"
)


class _ShortTemp:
    def shortTemp(self):
        """
        A private TMPDIR short enough for unix socket paths.
        """
        tmpdir = tempfile.mkdtemp(prefix="pkt-")
        self.addCleanup(shutil.rmtree, tmpdir, True)
        return tmpdir


class CleanupTests(_ShortTemp, TestCase):
    timeout = 120

    def _spawn(self, proto, args, tmpdir):
        reactor.spawnProcess(proto, sys.executable, [sys.executable] + args, env=_env(tmpdir), path=ROOT)
        killer = reactor.callLater(90, lambda: proto.ended.called or proto.transport.signalProcess("KILL"))
        proto.ended.addBoth(lambda r: (killer.active() and killer.cancel(), r)[1])
        return proto.ended

    @inlineCallbacks
    def test_ctrlCRemovesEverything(self):
        """
        Ctrl-C on the interactive demo stops it and leaves nothing behind:
        no work directory, stale socket, lock link or dangling pty link.
        """
        tmpdir = self.shortTemp()
        out, err, code = yield self._spawn(_Interactive(), ["-m", "prokshy.demo", "--port", "0"], tmpdir)
        self.assertIn(b"Ctrl-C stops the demo", out, err)
        self.assertEqual(os.listdir(tmpdir), [], (out, err))
        self.assertNotIn(b"Traceback", err)

    @inlineCallbacks
    def test_failureKeepsLog(self):
        """
        A demo that fails keeps its log, says where it is, and removes the
        rest (sockets, links, command.d).
        """
        tmpdir = self.shortTemp()
        out, err, code = yield self._spawn(_Collect(), ["-c", _FAILING], tmpdir)
        self.assertEqual(code, 1, (out, err))
        (workdir,) = os.listdir(tmpdir)
        self.assertEqual(os.listdir(os.path.join(tmpdir, workdir)), ["demo.log"])
        self.assertIn(("log kept in %s" % (os.path.join(tmpdir, workdir, "demo.log"),)).encode(), err)


class TourTests(_ShortTemp, TestCase):
    timeout = 120

    @inlineCallbacks
    def test_tour(self):
        """
        The tour exits 0 and says it passed.
        """
        tmpdir = self.shortTemp()
        env = _env(tmpdir)
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
        self.assertEqual(os.listdir(tmpdir), [], "a passed tour leaves nothing behind")
