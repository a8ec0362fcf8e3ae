"""
Issue 7 on a real daemon, real sockets, real agents (L{tests.hostharness}):
busy guests and per-client limits, connection limits, an OPEN too big to
relay, GOODBYE when the daemon stops, the reason a VM failure reaches a
relayed client with, the token file's mode and what a refused hello says,
and a busy C{--listen} port under a real C{twistd}.
"""

import os
import socket
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python import usage
from twisted.trial.unittest import TestCase

from prokshy.streams.stream import StreamError, StreamRefused
from prokshy.tap import host as hosttap
from prokshy.wire.channel import encodeHello, parseHello
from tests.hostharness import ROOT, HostHarness, hostsideOf, sleep, waitFor


class _Raw(Protocol):
    """
    A raw client: sends C{request} (if any), records what it receives.
    """

    def __init__(self, request=b""):
        self.request = request
        self.received = b""
        self.lost = Deferred()
        self.isLost = False

    def connectionMade(self):
        if self.request:
            self.transport.write(self.request)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.isLost = True
        self.lost.callback(None)


def _rawConnect(h, request=b"", endpoint=None):
    proto = _Raw(request)
    endpoint = endpoint if endpoint is not None else h.unixEndpoint()
    return endpoint.connect(Factory.forProtocol(lambda: proto))


class BusyTests(TestCase):
    """
    A guest that is full: line clients get a line, framed clients a clear
    refusal, and one framed client cannot take every stream.
    """

    timeout = 60

    @inlineCallbacks
    def test_legacyBusyLine(self):
        """
        A line-protocol request that can run neither now nor after waiting
        (the guest is full and the daemon's wait queue too) gets exactly one
        line, C{prokshy-host: vm NAME busy}; one that fits in the queue
        waits and runs once the guest has room.
        """
        h = yield HostHarness(
            self, tcp=False, guestArgs=["--max-concurrency", "1", "--max-queue", "0"],
            hostArgs=["--max-waiting", "1"],
        ).start()
        first = yield _rawConnect(h, b"ticker\n\n")
        yield waitFor(lambda: b"tick" in first.received, "the first command to run")
        waiting = h.legacy(b"vmname\n", halfClose=True)
        answered = []
        waiting.addCallback(lambda out: answered.append(out) or out)
        yield waitFor(lambda: h.daemon.vms["vm1"].queue.waiting == 1, "the second to wait")
        refused = yield h.legacy(b"vmname\n", halfClose=True)
        self.assertEqual(refused, b"prokshy-host: vm vm1 busy\n")
        self.assertEqual(answered, [])
        first.transport.loseConnection()
        out = yield waiting
        self.assertEqual(out, b"vm1\n")

    @inlineCallbacks
    def test_framedBusyRefusal(self):
        """
        A framed client whose exec cannot wait is refused C{busy}.
        """
        h = yield HostHarness(
            self, tcp=False, guestArgs=["--max-concurrency", "1", "--max-queue", "0"],
            hostArgs=["--max-waiting", "1"],
        ).start()
        session = yield h.connect()
        chunks = []
        running = yield session.execStream("ticker", chunks.append, chunks.append)
        running.result.addErrback(lambda f: None)
        queued = session.exec("vmname")
        yield waitFor(lambda: h.daemon.vms["vm1"].queue.waiting == 1, "the second to wait")
        try:
            yield session.exec("vmname")
        except StreamRefused as e:
            self.assertEqual(e.code, "busy")
            self.assertIn("vm vm1 busy", e.message)
        else:
            self.fail("not refused")
        running.cancel()
        result = yield queued
        self.assertEqual(result.stdout, b"vm1\n")

    @inlineCallbacks
    def test_maxStreamsPerClient(self):
        """
        A framed client may hold C{--max-streams-per-client} streams; its
        next open is refused with a reason, other clients are served, and
        once one of its streams ends it may open another.
        """
        h = yield HostHarness(self, tcp=False, hostArgs=["--max-streams-per-client", "3"]).start()
        greedy = yield h.connect()
        runs = []
        for _ in range(3):
            running = yield greedy.execStream("ticker", lambda d: None, lambda d: None)
            running.result.addErrback(lambda f: None)
            runs.append(running)
        try:
            yield greedy.exec("vmname")
        except StreamRefused as e:
            self.assertEqual(e.code, "too-many-streams")
            self.assertIn("--max-streams-per-client", e.message)
        else:
            self.fail("a fourth stream was let in")
        other = yield h.connect()
        result = yield other.exec("vmname")
        self.assertEqual(result.stdout, b"vm1\n")
        runs[0].cancel()
        yield waitFor(lambda: len(hostsideOf(h).mux.streams) == 2, "the cancelled stream to end")
        yield sleep(0.1)
        result = yield greedy.exec("vmname")
        self.assertEqual(result.stdout, b"vm1\n")
        for running in runs[1:]:
            running.cancel()


class ConnectionLimitTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_handshakeTimeout(self):
        """
        On real sockets: a connection that says nothing, and a line client
        that never finishes its request line, are closed after
        C{--handshake-timeout}; the line client is told why.
        """
        h = yield HostHarness(self, hostArgs=["--handshake-timeout", "0.5"]).start()
        silent = yield _rawConnect(h)
        partial = yield _rawConnect(h, b"cat", h.tcpEndpoint())
        framed = yield h.connect()
        start = reactor.seconds()
        yield waitFor(lambda: silent.isLost and partial.isLost, "both to be closed", 10)
        self.assertGreaterEqual(reactor.seconds() - start, 0.4)
        self.assertEqual(silent.received, b"")
        self.assertEqual(partial.received, b"prokshy-host: no request line within 0.5 s\n")
        # a framed client that finished its hello stays
        result = yield framed.exec("cat", b"still here")
        self.assertEqual(result.stdout, b"still here")

    @inlineCallbacks
    def test_maxConnections(self):
        """
        Beyond C{--max-connections} on a listener, a new connection gets one
        line and is closed at once; the other listener is not affected.
        """
        h = yield HostHarness(self, hostArgs=["--max-connections", "4"]).start()
        held = []
        for _ in range(4):
            held.append((yield _rawConnect(h)))
            self.addCleanup(lambda p=held[-1]: p.isLost or p.transport.abortConnection())
        yield waitFor(lambda: h.daemon and _factory(h, "unix").connections == 4, "4 connections")
        extra = yield _rawConnect(h)
        yield extra.lost
        self.assertEqual(extra.received, b"prokshy-host: too many connections (4, --max-connections); try again later\n")
        out = yield h.legacy(b"vmname\n", h.tcpEndpoint(), halfClose=True)
        self.assertEqual(out, b"vm1\n")
        held[0].transport.loseConnection()
        yield waitFor(lambda: _factory(h, "unix").connections == 3, "one to close")
        out = yield h.legacy(b"vmname\n", halfClose=True)
        self.assertEqual(out, b"vm1\n")


def _factory(h, kind):
    for port in h.ports:
        if hasattr(port.getHost(), "name") == (kind == "unix"):
            return port.factory
    raise AssertionError("no %s listener" % (kind,))


class TooBigTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_tooBigOpens(self):
        """
        A framed client's OPEN whose request is larger than the VM's
        session takes (the daemon accepts 16 KiB from clients, a tty guest
        4 KiB) is refused C{too-big}; 300 of them leave no pending entry in
        the VM's stream table and log a bounded number of lines, none of
        them a traceback.
        """
        h = yield HostHarness(self, tcp=False).start()
        session = yield h.connect()
        allowed = hostsideOf(h).link.info.sendPayload
        if allowed > 15000:
            self.skipTest("the guest takes opens as big as the daemon's clients may send")
        pad = "x" * (allowed + 100)
        start = reactor.seconds()
        with capturedLogs() as events:
            for _ in range(300):
                try:
                    yield _open(session, pad)
                except StreamRefused as e:
                    self.assertEqual(e.code, "too-big")
                else:
                    self.fail("a too-big open was accepted")
        elapsed = reactor.seconds() - start
        self.assertEqual(hostsideOf(h).mux._pending, {})
        lines = [e for e in events if "too big" in formatEvent(e)]
        self.assertLessEqual(len(lines), 2 + int(elapsed))
        self.assertEqual([e for e in events if e.get("log_level") == LogLevel.critical], [])
        self.assertEqual(h.daemon.vms["vm1"].queue.stats["too_big"], 300)
        result = yield session.exec("cat", b"fine")
        self.assertEqual(result.stdout, b"fine")


def _open(session, pad):
    """
    An exec open with an oversized argument.
    """
    from prokshy.host.client import _ExecClient

    return session.mux.openStream("exec", {"name": "cat", "pad": pad}, _ExecClient(lambda d: None, lambda d: None))


class StopAndFailureTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_goodbyeWhenStopping(self):
        """
        Stopping the daemon's service says GOODBYE to every VM: each guest
        ends its session as said goodbye to, and a relayed client's running
        command ends with that reason, not "the consumer went away".
        """
        h = yield HostHarness(self, vms=("a", "b"), tcp=False).start()
        ended = {}
        for name, vm in h.vms.items():
            vm.deviceService.protocol.mux.whenDown(lambda why, name=name: ended.setdefault(name, str(why)))
        session = yield h.connect()
        running = yield session.execStream("ticker", lambda d: None, lambda d: None, vm="b")
        failed = []
        running.result.addErrback(failed.append)
        yield h.stopDaemon()
        yield waitFor(lambda: len(ended) == 2, "both guests to end their sessions", 3)
        for name in ("a", "b"):
            self.assertIn("goodbye", ended[name])
            self.assertIn("host daemon stopping", ended[name])
        yield waitFor(lambda: failed, "the relayed command to end", 3)
        self.assertTrue(failed[0].check(StreamError), failed[0])
        message = str(failed[0].value)
        self.assertNotIn("consumer went away", message)
        self.assertIn("host daemon stopping", message)

    @inlineCallbacks
    def test_vmDownReason(self):
        """
        A VM whose console socket goes away while a relayed command runs:
        the client is told the VM is down.
        """
        h = yield HostHarness(self, tcp=False).start()
        session = yield h.connect()
        running = yield session.execStream("ticker", lambda d: None, lambda d: None)
        failed = []
        running.result.addErrback(failed.append)
        yield h.vms["vm1"].stopSim()
        yield waitFor(lambda: failed, "the relayed command to end", 5)
        message = str(failed[0].value)
        self.assertNotIn("consumer went away", message)
        self.assertIn("vm-unavailable", message)
        self.assertIn("vm down", message)

    @inlineCallbacks
    def test_guestRestartReason(self):
        """
        A guest agent that restarts while a relayed command runs: the client
        is told the session ended, and why.
        """
        h = yield HostHarness(self, tcp=False).start()
        session = yield h.connect()
        running = yield session.execStream("ticker", lambda d: None, lambda d: None)
        failed = []
        running.result.addErrback(failed.append)
        vm = h.vms["vm1"]
        yield vm.stopAgent()
        yield waitFor(lambda: failed, "the relayed command to end", 5)
        message = str(failed[0].value)
        self.assertNotIn("consumer went away", message)
        self.assertIn("session ended", message)
        vm.startAgent()
        yield h.waitUp()


class AuthTests(TestCase):
    timeout = 30

    def _tokenFile(self, mode):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("s3cret-token-0123456789abcdef\n")
        os.chmod(path, mode)
        return path

    def test_tokenFileMode(self):
        """
        A token file that others may read (or write) is refused at start,
        in one line; mode 0600 or 0400 is fine.
        """
        for mode in (0o644, 0o640, 0o604, 0o620, 0o666):
            path = self._tokenFile(mode)
            e = self.assertRaises(
                usage.UsageError, hosttap.Options().parseOptions,
                ["--listen", "tcp:0:interface=0.0.0.0", "--vm", "a=/x", "--auth-token-file", path],
            )
            self.assertIn("chmod 600", str(e))
            self.assertIn("%04o" % (mode,), str(e))
            self.assertNotIn("\n", str(e))
        for mode in (0o600, 0o400):
            opts = hosttap.Options()
            opts.parseOptions(
                ["--listen", "tcp:0:interface=0.0.0.0", "--vm", "a=/x", "--auth-token-file", self._tokenFile(mode)]
            )
            self.assertEqual(opts["token"], "s3cret-token-0123456789abcdef")

    @inlineCallbacks
    def test_refusedHelloSaysNothing(self):
        """
        A hello refused for want of a token says "authentication required"
        and nothing about the daemon: no VM names, no features.
        """
        h = HostHarness(self, vms=("secretvm", "othervm"), listens=["tcp:0:interface=0.0.0.0"])
        path = os.path.join(h.dir, "token")
        with open(path, "w") as f:
            f.write("s3cret-token-0123456789abcdef\n")
        os.chmod(path, 0o600)
        h.hostArgs += ["--auth-token-file", path]
        yield h.start()
        hello = encodeHello({"v": [1], "role": "host", "nonce": "0123456789abcdef", "features": ["exec"],
                             "window": 65536, "max_payload": 4096})
        raw = yield _rawConnect(h, hello, h.tcpEndpoint(h.tcpPorts[1]))
        yield raw.lost
        self.assertNotIn(b"secretvm", raw.received)
        self.assertNotIn(b"othervm", raw.received)
        lines = [line for line in raw.received.split(b"\n") if line.startswith(b"\xff")]
        self.assertEqual(len(lines), 1, raw.received)
        answer = parseHello(lines[0])
        self.assertEqual(answer["error"], "authentication required")
        self.assertEqual(answer["features"], [])
        self.assertNotIn("vms", answer)
        self.assertNotIn("server", answer)
        # with the token, the hello tells the VMs
        session = yield h.connect(h.tcpEndpoint(h.tcpPorts[1]), token="s3cret-token-0123456789abcdef")
        self.assertEqual(session.mux.info.peerHello["vms"], ["secretvm", "othervm"])


class ListenFailureTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_busyPortOneLine(self):
        """
        C{twistd prokshy-host} with a C{--listen} port that is taken prints
        one line naming the listener and the reason, no traceback, and
        exits non-zero.
        """
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
        workdir = self.mktemp()
        os.makedirs(workdir)
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "prokshy-host",
             "--listen", "tcp:%d:interface=127.0.0.1" % (port,), "--vm", "a=%s/a.sock" % (workdir,)],
            env=env, path=workdir,
        )
        self.assertNotEqual(code, 0)
        self.assertNotIn(b"Traceback", out + err)
        lines = err.decode().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertEqual(
            lines[0], "prokshy-host: cannot listen on tcp:%d:interface=127.0.0.1: Address already in use" % (port,)
        )



class ManyVMsTests(TestCase):
    """
    A daemon with more VMs than its hello line can list (a hello is at most
    2048 bytes) still answers every client's hello, and C{--all-vms} finds
    every VM through the status stream.
    """

    timeout = 60

    @inlineCallbacks
    def test_manyVMs(self):
        from twisted.internet.endpoints import UNIXClientEndpoint

        from prokshy.host.client import HostProtocol
        from tests.hostharness import shortTempDir

        directory = shortTempDir(self)
        names = ["vm-%013d" % (i,) for i in range(150)]
        options = hosttap.Options()
        path = os.path.join(directory, "d.sock")
        argv = ["--listen", "unix:%s" % (path,)]
        for name in names:
            argv += ["--vm", "%s=%s" % (name, os.path.join(directory, name + ".sock"))]
        options.parseOptions(argv)
        service = hosttap.makeService(options, reactor)
        service.startService()
        self.addCleanup(service.stopService)

        proto = yield UNIXClientEndpoint(reactor, path).connect(Factory.forProtocol(lambda: HostProtocol(reactor)))
        lost = Deferred()
        proto.whenLost(lambda reason: lost.callback(None))

        def disconnect():
            proto.transport.loseConnection()
            return lost

        self.addCleanup(disconnect)
        session = yield proto.whenSession()
        status = yield session.status()
        self.assertEqual([vm["name"] for vm in status["vms"]], names)

        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-m", "prokshy.cli.main", "--socket-path", path, "--all-vms", "--command", "x", "--from-string", ""],
            env=env,
            reactor=reactor,
        )
        lines = err.decode().splitlines()
        self.assertEqual(code, 255, err)
        # Each VM's own line, then one summary line naming the first few.
        *lines, summary = lines
        self.assertEqual(sorted({line.split(": ")[1] for line in lines}), sorted("vm " + n for n in names))
        self.assertRegex(summary, r"^prokshy: %d of %d VMs failed: vm %s: vm-unavailable, .*, and %d more$"
                         % (len(names), len(names), names[0], len(names) - 8))
