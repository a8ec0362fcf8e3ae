"""
The demo's tour (C{python -m prokshy.demo --tour}) as a subprocess: the
whole stack on loopback, driven by the real CLI and line-protocol clients.
"""

import json
import os
import re
import shutil
import socket
import sys
import tempfile

from twisted.internet import error, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
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
    Sends SIGINT (Ctrl-C), or C{signal}, once the banner is out.
    """

    signal = "INT"

    def connectionMade(self):
        self.transport.closeStdin()

    def outReceived(self, data):
        _Collect.outReceived(self, data)
        if b"Ctrl-C stops the demo" in b"".join(self.out):
            try:
                self.transport.signalProcess(self.signal)
            except error.ProcessExitedAlready:
                pass


class _Killed(_Interactive):
    signal = "KILL"


def _bannerPorts(out):
    """
    The web VM's HTTP server's port and the forward's host port, from the
    banner.
    """
    match = re.search(
        rb"An HTTP server listens on 127\.0\.0\.1:(\d+) in the web VM, and the daemon\s+"
        rb"forwards 127\.0\.0\.1:(\d+) to it \(--forward web=127\.0\.0\.1:\2:127\.0\.0\.1:\1\)",
        out,
    )
    if match is None:
        raise AssertionError("no forward in the banner: %r" % (out,))
    return int(match.group(1)), int(match.group(2))


def _listening(port):
    """
    Whether something accepts connections on 127.0.0.1:C{port}.
    """
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _steps(text):
    """
    The tour's steps: C{(command line, its output, "ok" or "FAILED")}, in
    order.
    """
    return [
        (m.group(1), m.group(2), m.group(3))
        for m in re.finditer(r"^\$ (.*)\n((?:.*\n)*?.*?)-> exit -?\d+: (ok|FAILED)$", text, re.M)
    ]


def _forwardSteps(test, steps):
    """
    The tour's three forward steps (the fetch, C{--forwards}, C{--forwards
    --json}): they are its last three.
    """
    fetch, table, rows = steps[-3:]
    test.assertRegex(fetch[0], r"^(curl .*|urllib-get) http://127\.0\.0\.1:\d+/$")
    test.assertRegex(table[0], r"^prokshy --socket-path \S+ --forwards$")
    test.assertRegex(rows[0], r"^prokshy --socket-path \S+ --forwards --json$")
    return fetch, table, rows


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
    def test_bannerForwardAndCtrlCEndsHTTPServer(self):
        """
        The banner names the web VM's HTTP server and the forward to it,
        with the C{curl} line and the C{--forwards} line to try; Ctrl-C ends
        the HTTP server (a child process) with the demo.
        """
        tmpdir = self.shortTemp()
        out, err, code = yield self._spawn(_Interactive(), ["-m", "prokshy.demo", "--port", "0"], tmpdir)
        guestPort, hostPort = _bannerPorts(out)
        self.assertIn(("\n  curl http://127.0.0.1:%d/\n" % (hostPort,)).encode(), out)
        self.assertRegex(out.decode(), r"\n  prokshy --socket-path %s/prokshy-demo-\w+/prokshy\.sock --forwards\n" % (tmpdir,))
        self.assertEqual(code, 0, err)
        self.assertFalse(_listening(guestPort), "the HTTP server outlived the demo")
        self.assertEqual(os.listdir(tmpdir), [], (out, err))

    @inlineCallbacks
    def test_killedDemoHTTPServerEnds(self):
        """
        The HTTP server does not outlive a demo killed with SIGKILL (which
        cannot clean up): it ends once its stdin closes.
        """
        tmpdir = self.shortTemp()
        out, err, code = yield self._spawn(_Killed(), ["-m", "prokshy.demo", "--port", "0"], tmpdir)
        self.assertEqual(code, -9)
        guestPort, hostPort = _bannerPorts(out)
        for _ in range(200):  # at most 10 s; it takes about 0.1 s
            if not _listening(guestPort):
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(_listening(guestPort), "the HTTP server outlived a killed demo")

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


# The web VM's agent refuses every connection the host asks for: the forward
# is broken, and the tour must say so.
_BROKEN_FORWARD = (
    "import prokshy.demo as d; args = d.Demo.guestArgs; "
    "d.Demo.guestArgs = lambda self, dev, cmds: args(self, dev, cmds) + "
    "(['--allow-connect', 'none'] if dev.endswith('/web.dev') else []); "
    "d.main(['--tour'])"
)

# The web VM's server serves other bytes than the demo expects (as a forward
# that garbles them would deliver): the fetch must fail the tour.
_WRONG_BODY = (
    "import prokshy.demo as d; write = d.writeSite\n"
    "def writeSite(workdir, token):\n"
    "    root, body = write(workdir, token)\n"
    "    with open(root + '/index.html', 'wb') as f:\n"
    "        f.write(body.replace(b'Token', b'T0ken'))\n"
    "    return root, body\n"
    "d.writeSite = writeSite; d.main(['--tour'])\n"
)

# The first host port the demo picks for its forward is taken (by a socket
# of its own process that listens on it), and there is no curl.
_TAKEN_PORT = """
import socket, sys
import prokshy.demo as d
taken = socket.socket()
taken.bind(("127.0.0.1", 0))
taken.listen(1)
free, ports = d.freePort, [taken.getsockname()[1]]
d.freePort = lambda: ports.pop() if ports else free()
sys.stderr.write("taken: %d\\n" % (taken.getsockname()[1],))
sys.stderr.flush()
d.main(["--tour", "--port", str(free())])
"""


class TourTests(_ShortTemp, TestCase):
    timeout = 120

    def _tour(self, args, env=None):
        tmpdir = self.shortTemp()
        env = _env(tmpdir) if env is None else dict(env, TMPDIR=tmpdir)
        proto = _Collect()
        reactor.spawnProcess(proto, sys.executable, [sys.executable] + args, env=env, path=ROOT)

        def kill():
            try:
                proto.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass

        killer = reactor.callLater(90, kill)

        def done(result):
            if killer.active():
                killer.cancel()
            out, err, code = result
            return out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), code, tmpdir

        return proto.ended.addCallback(done)

    @inlineCallbacks
    def test_tour(self):
        """
        The tour exits 0 and says it passed; its forward steps passed (the
        body fetched through the forward, the forward listed active with
        that connection counted).
        """
        text, err, code, tmpdir = yield self._tour(["-m", "prokshy.demo", "--tour"])
        self.assertEqual(code, 0, text[-3000:] + err[-2000:])
        self.assertIn("tour passed", text)
        self.assertNotIn("FAILED", text)
        self.assertEqual(text.count("-> exit"), text.count(": ok\n"))
        self.assertNotIn("Traceback", err)
        self.assertEqual(os.listdir(tmpdir), [], "a passed tour leaves nothing behind")
        self._checkForward(text)

    def _checkForward(self, text):
        """
        The tour's forward steps passed: the body fetched through the
        forward is the web VM's index with its token, and the daemon lists
        the forward active with that one connection and its bytes counted.
        """
        steps = _steps(text)
        self.assertEqual(len(steps), text.count("-> exit"))
        fetch, table, rows = _forwardSteps(self, steps)
        self.assertEqual([step[2] for step in steps], ["ok"] * len(steps), text[-3000:])
        hostPort = int(re.search(r"http://127\.0\.0\.1:(\d+)/$", fetch[0]).group(1))
        self.assertRegex(fetch[1], r"^<!doctype html>\n<title>prokshy demo</title>\n"
                                   r"<p>Hello from the web VM, through a prokshy forward\. Token: [0-9a-f]{16}</p>\n$")
        (record,) = [json.loads(line) for line in rows[1].splitlines()]
        self.assertEqual((record["mode"], record["ok"], record["failure"]), ("forwards", True, None))
        (row,) = record["forwards"]
        self.assertEqual(
            (row["vm"], row["direction"], row["listen"], row["state"], row["total_connections"]),
            ("web", "forward", "127.0.0.1:%d" % (hostPort,), "active", 1),
        )
        self.assertGreaterEqual(row["bytes_from_target"], len(fetch[1]))
        self.assertIn(" %s  active " % (row["target"],), table[1])
        return row

    @inlineCallbacks
    def test_takenPortAndNoCurl(self):
        """
        A host port taken before the daemon listens on it is replaced by
        another; without C{curl}, the tour fetches with C{urllib} (checked
        as strictly).
        """
        nowhere = self.shortTemp()  # a PATH with no curl (nor anything else)
        env = dict(_env(), PATH=nowhere)
        text, err, code, tmpdir = yield self._tour(["-c", _TAKEN_PORT], env)
        self.assertEqual(code, 0, text[-3000:] + err[-2000:])
        self.assertIn("tour passed", text)
        taken = int(re.search(r"taken: (\d+)", err).group(1))
        row = self._checkForward(text)
        self.assertRegex(_steps(text)[-3][0], r"^urllib-get ")
        self.assertNotEqual(row["listen"], "127.0.0.1:%d" % (taken,))
        self.assertEqual(row["id"], "2", "the forward on the taken port (1) was removed")
        self.assertEqual(os.listdir(tmpdir), [])

    @inlineCallbacks
    def test_brokenForwardFailsTour(self):
        """
        When the forward does not reach the HTTP server (the web VM's agent
        refuses every connection), the fetch and the forward's counters
        fail, the tour fails, and the guest's refusal shows under the
        forward in C{--forwards}.
        """
        text, err, code, tmpdir = yield self._tour(["-c", _BROKEN_FORWARD])
        self.assertEqual(code, 1, text[-3000:] + err[-2000:])
        self.assertIn("tour FAILED", text)
        steps = _steps(text)
        fetch, table, rows = _forwardSteps(self, steps)
        self.assertEqual([step[2] for step in steps[:-3]], ["ok"] * (len(steps) - 3), text)
        self.assertEqual((fetch[2], table[2], rows[2]), ("FAILED", "ok", "FAILED"), text[-3000:])
        self.assertRegex(table[1], r"last error: connection from 127\.0\.0\.1:\d+ refused by the guest: not-allowed")
        self.assertIn("log kept in", err)

    @inlineCallbacks
    def test_wrongBodyFailsTour(self):
        """
        A fetch through the forward that succeeds but does not bring back
        the index byte for byte fails the tour.
        """
        text, err, code, tmpdir = yield self._tour(["-c", _WRONG_BODY])
        self.assertEqual(code, 1, text[-3000:] + err[-2000:])
        self.assertIn("tour FAILED", text)
        steps = _steps(text)
        fetch, table, rows = _forwardSteps(self, steps)
        self.assertIn("T0ken: ", fetch[1])
        self.assertEqual([step[2] for step in steps], ["ok"] * (len(steps) - 3) + ["FAILED", "ok", "ok"], text[-3000:])
