"""
The CLI never reports success for an answer it did not get (issue 7, point
4), and honours C{--fallback-after} (issue 8's hard-coded 5 s wait):

  - auto mode on a socket where nothing answers: neither a hello nor a byte
    of line-protocol output is a failure (255) with one line saying what
    was tried, not an empty success;
  - a framed agent whose hello answer arrives after the fallback: none of
    its bytes reach stdout, and the CLI runs the command over a new framed
    session (the real agent behind a proxy that holds the CLI's bytes back
    until its line-protocol request went by);
  - C{--json} on the line-protocol fallback prints the documented JSON;
  - the pieces (L{HelloFilter}, L{AutoChannel}) on a L{task.Clock}.
"""

import base64
import io
import json
import os

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from prokshy.cli.fallback import AutoChannel
from prokshy.cli.format import EXIT_NO_ANSWER, CLIError
from prokshy.cli import records
from prokshy.cli.hellos import GARBAGE, HelloFilter
from prokshy.cli.options import parseArgs
from prokshy.cli.output import FileOutput
from prokshy.wire.channel import encodeHello, parseHello
from tests.hostharness import DEFAULT_SCRIPTS, GuestVM, HostHarness, shortTempDir
from tests.system.test_cli_framed import CLITestMixin, OriginalAgent, runCLI

#: The keys of a C{--json} exec result, framed or line protocol: every
#: record's (L{prokshy.cli.records.KEYS}, issue 11) and exec's C{command}.
JSON_KEYS = set(records.KEYS) | {"command"}
assert {"vm", "command", "protocol", "status", "code", "signal", "timed_out", "truncated",
        "stdout", "stderr"} <= JSON_KEYS


class _Silent(Protocol):
    """
    A peer that reads and never answers; with C{closeAfter}, it closes the
    connection once it has received that many bytes.
    """

    def __init__(self, received, closeAfter=None):
        self.received = received
        self.closeAfter = closeAfter

    def dataReceived(self, data):
        self.received.append(data)
        if self.closeAfter is not None and sum(map(len, self.received)) >= self.closeAfter:
            self.transport.loseConnection()


class _HoldAnswers(Protocol):
    """
    A proxy in front of a VM's console socket that passes what the client
    sends at once, but holds what the agent answers until the client sent
    C{trigger}: the agent's hello answer reaches the CLI only after the CLI
    fell back to the line protocol, as on a slow channel.
    """

    def __init__(self, target, trigger, seen):
        self.target = target
        self.trigger = trigger
        self.seen = seen
        self.fromClient = b""
        self.held = []
        self.peer = None
        self.released = False

    def connectionMade(self):
        self.transport.pauseProducing()
        outer = self

        class Back(Protocol):
            def dataReceived(self, data):
                outer.answer(data)

            def connectionLost(self, reason):
                outer.transport.loseConnection()

        d = UNIXClientEndpoint(reactor, self.target).connect(Factory.forProtocol(Back))

        def connected(back):
            self.peer = back
            self.transport.resumeProducing()

        d.addCallbacks(connected, lambda f: self.transport.loseConnection())

    def answer(self, data):
        if self.released:
            self.transport.write(data)
        else:
            self.held.append(data)

    def dataReceived(self, data):
        self.seen.append(data)
        self.peer.transport.write(data)
        if not self.released:
            self.fromClient += data
            if self.trigger in self.fromClient:
                self.released = True
                self.transport.write(b"".join(self.held))

    def connectionLost(self, reason):
        if self.peer is not None:
            self.peer.transport.loseConnection()


def _hellos(chunks):
    """
    The hello lines (parsed) in what a peer received.
    """
    data = b"".join(chunks)
    out = []
    for line in data.split(b"\n"):
        if line.startswith(b"\xffPROKSHY "):
            out.append(parseHello(line))
    return out


class NoAnswerTests(CLITestMixin, TestCase):
    """
    Auto mode where nothing answers.
    """

    timeout = 30

    def serve(self, closeAfter=None):
        self.dir = shortTempDir(self)
        self.sock = os.path.join(self.dir, "silent.sock")
        self.received = []
        port = reactor.listenUNIX(self.sock, Factory.forProtocol(lambda: _Silent(self.received, closeAfter)))
        self.addCleanup(port.stopListening)

    @inlineCallbacks
    def test_silentPeer(self):
        """
        No hello answer and not one byte of output: 255 and one line that
        says what was tried, for how long, and where.
        """
        self.serve()
        out, err, code = yield runCLI(
            self, "--socket-path", self.sock, "--command", "sysinfo", "--from-string", "x",
            "--fallback-after", "0.3", "--timeout", "0.4",
        )
        self.assertEqual((out, code), (b"", EXIT_NO_ANSWER))
        self.assertEqual(EXIT_NO_ANSWER, 255)
        self.assertOneLineError(
            err, "no answer from a prokshy agent on " + self.sock, "framed hello for 0.3 s",
            "original line protocol (sysinfo) for 0.4 s", "--protocol legacy",
        )
        # it did try both
        self.assertTrue(_hellos(self.received))
        self.assertTrue(b"".join(self.received).endswith(b"\nsysinfo\nx\n"))

    @inlineCallbacks
    def test_closedAfterRequest(self):
        """
        A peer that closes after the line-protocol request without a byte:
        the same failure, saying the connection closed.
        """
        self.dir = shortTempDir(self)
        out, err, code = yield self._closing()
        self.assertEqual((out, code), (b"", 255))
        self.assertOneLineError(err, "no answer from a prokshy agent", "until the connection closed")

    def _closing(self):
        received = []

        class CloseOnRequest(Protocol):
            def dataReceived(self, data):
                received.append(data)
                if b"".join(received).endswith(b"sysinfo\nx\n"):
                    self.transport.loseConnection()

        sock = os.path.join(self.dir, "closing.sock")
        port = reactor.listenUNIX(sock, Factory.forProtocol(CloseOnRequest))
        self.addCleanup(port.stopListening)
        return runCLI(self, "--socket-path", sock, "--command", "sysinfo", "--from-string", "x",
                      "--fallback-after", "0.3", "--timeout", "30")

    @inlineCallbacks
    def test_agentNotUp(self):
        """
        A VM whose agent is not up yet (the simulator's cooked pty echoes
        the CLI's bytes back, and nothing else happens): no answer, not an
        empty success.
        """
        directory = shortTempDir(self)
        vm = GuestVM(reactor, "vm1", directory, DEFAULT_SCRIPTS)
        vm.startSim()
        self.addCleanup(vm.stopSim)
        out, err, code = yield runCLI(
            self, "--socket-path", vm.socketPath, "--command", "cat", "--from-string", "hi",
            "--fallback-after", "0.3", "--timeout", "0.4",
        )
        self.assertEqual((out, code), (b"", 255))
        self.assertOneLineError(err, "no answer from a prokshy agent")

    @inlineCallbacks
    def test_legacyProtocolAcceptsEmpty(self):
        """
        C{--protocol legacy} keeps the original behaviour: an empty answer
        is 0.
        """
        self.serve()
        out, err, code = yield runCLI(
            self, "--socket-path", self.sock, "--protocol", "legacy", "--command", "sysinfo",
            "--from-string", "", "--timeout", "0.3",
        )
        self.assertEqual((out, err, code), (b"", b"", 0))

    @inlineCallbacks
    def test_infoOnOriginalAgent(self):
        """
        C{--info} where no framed hello answers: one line, not an internal
        error.
        """
        self.serve()
        out, err, code = yield runCLI(self, "--socket-path", self.sock, "--info", "--fallback-after", "0.3")
        self.assertEqual((out, code), (b"", 255))
        self.assertOneLineError(err, "no framed hello answer within 0.3 s", "--info")
        self.assertNotIn(b"internal error", err)


class FramedWaitTests(CLITestMixin, TestCase):
    """
    C{--protocol framed} waits C{--fallback-after} seconds, not at least
    5 s: counted in hellos (one every 0.5 s) the agent received.
    """

    timeout = 30

    @inlineCallbacks
    def test_fallbackAfterHonoured(self):
        directory = shortTempDir(self)
        sock = os.path.join(directory, "old.sock")
        agents = []

        def build():
            agent = OriginalAgent({b"sysinfo": lambda arg: b"x\n"})
            agents.append(agent)
            return agent

        port = reactor.listenUNIX(sock, Factory.forProtocol(build))
        self.addCleanup(port.stopListening)
        out, err, code = yield runCLI(
            self, "--socket-path", sock, "--protocol", "framed", "--command", "sysinfo",
            "--from-string", "", "--fallback-after", "0.2",
        )
        self.assertEqual((out, code), (b"", 255))
        self.assertOneLineError(err, "no framed hello answer within 0.2 s")
        (agent,) = agents
        # 0.2 s: the first hello only (the next is due at 0.5 s); a 5 s
        # wait would have sent ten.
        self.assertLessEqual(len(_hellos([agent.received])), 2)
        for a in agents:
            if a.transport is not None:
                a.transport.loseConnection()


class LateHelloTests(CLITestMixin, TestCase):
    """
    The real agent, behind a proxy that holds the agent's answers until the
    CLI's line-protocol request went by: the CLI hears the agent's answer
    to its first hello, and its pings, only after the fallback.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.h = yield HostHarness(self, daemon=False).start()
        self.vm = self.h.vms["vm1"]
        self.proxySock = os.path.join(self.h.dir, "late.sock")
        self.seen = []

    def proxy(self, trigger):
        port = reactor.listenUNIX(
            self.proxySock, Factory.forProtocol(lambda: _HoldAnswers(self.vm.socketPath, trigger, self.seen))
        )
        self.addCleanup(port.stopListening)

    @inlineCallbacks
    def test_lateHelloRunsFramed(self):
        """
        No framed byte reaches stdout; the command runs over a new framed
        session: its exit status (3) and its exact output are the CLI's.
        """
        self.proxy(b"status\n3\n")
        out, err, code = yield runCLI(
            self, "--socket-path", self.proxySock, "--command", "status", "--from-string", "3",
            "--fallback-after", "0.3", "--timeout", "10",
        )
        self.assertEqual((out, err, code), (b"", b"", 3))
        # two hello nonces: the one answered late, then the new session's
        nonces = {h["nonce"] for h in _hellos(self.seen) if h.get("role") == "host"}
        self.assertEqual(len(nonces), 2, nonces)
        # the line-protocol request went after an empty line
        self.assertIn(b"\n\nstatus\n3\n", b"".join(self.seen))

    @inlineCallbacks
    def test_lateHelloOutputExact(self):
        self.proxy(b"cat\nlate answer\n")
        out, err, code = yield runCLI(
            self, "--socket-path", self.proxySock, "--command", "cat", "--from-string", "late answer",
            "--fallback-after", "0.3", "--timeout", "10",
        )
        self.assertEqual((out, err, code), (b"late answer", b"", 0))

    @inlineCallbacks
    def test_lateHelloJSON(self):
        """
        With C{--json}, a late framed answer gives the framed JSON result.
        """
        self.proxy(b"both\n\n")
        out, err, code = yield runCLI(
            self, "--socket-path", self.proxySock, "--command", "both", "--from-string", "", "--json",
            "--fallback-after", "0.3", "--timeout", "10",
        )
        self.assertEqual((err, code), (b"", 0))
        record = json.loads(out)
        self.assertEqual(set(record), JSON_KEYS)
        self.assertEqual((record["protocol"], record["stdout"], record["stderr"]), ("framed", "out\n", "err\n"))


class FallbackJSONTests(CLITestMixin, TestCase):
    """
    C{--json} on the line-protocol fallback: one JSON object with the keys
    of a framed result.
    """

    timeout = 30

    @inlineCallbacks
    def test_fallbackJSON(self):
        directory = shortTempDir(self)
        sock = os.path.join(directory, "old.sock")
        agents = []

        def build():
            agent = OriginalAgent({b"greet": lambda arg: b"hello " + arg + b"\n\xff\n"})
            agents.append(agent)
            return agent

        port = reactor.listenUNIX(sock, Factory.forProtocol(build))
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [a.transport.loseConnection() for a in agents if a.transport])
        out, err, code = yield runCLI(
            self, "--socket-path", sock, "--command", "greet", "--from-string", "world", "--json",
            "--fallback-after", "0.3", "--timeout", "0.4",
        )
        self.assertEqual((err, code), (b"", 0))
        self.assertEqual(out.count(b"\n"), 1, out)
        record = json.loads(out)
        # Non-UTF-8 output: "encoding": "base64", stdout and stderr in base64
        # (issue 11's one rule; it was a stdout_base64 key).
        self.assertEqual(set(record), JSON_KEYS)
        self.assertEqual(record["encoding"], "base64")
        self.assertEqual(base64.b64decode(record["stdout"]), b"hello world\n\xff\n")
        self.assertEqual(
            {k: record[k] for k in ("vm", "command", "protocol", "status", "code", "signal", "timed_out",
                                    "truncated", "stderr", "mode", "ok", "failure", "error")},
            {"vm": None, "command": "greet", "protocol": "line", "status": 0, "code": None,
             "signal": None, "timed_out": False, "truncated": False, "stderr": "", "mode": "exec",
             "ok": True, "failure": None, "error": None},
        )

    @inlineCallbacks
    def test_framedJSONSameKeys(self):
        h = yield HostHarness(self, daemon=False).start()
        out, err, code = yield runCLI(
            self, "--socket-path", h.vms["vm1"].socketPath, "--command", "both", "--from-string", "", "--json",
        )
        self.assertEqual((err, code), (b"", 0))
        self.assertEqual(set(json.loads(out)), JSON_KEYS)


# -- the pieces, on a clock ---------------------------------------------------


def _guestHello(peer, **extra):
    fields = {"v": [1], "role": "guest", "nonce": "feedc0de", "peer": peer, "features": ["exec"],
              "window": 65536, "max_payload": 4096}
    fields.update(extra)
    return encodeHello(fields)


class HelloFilterTests(SynchronousTestCase):
    """
    L{HelloFilter} separates hello lines from line-protocol output.
    """

    def run_(self, chunks, holdLF=True):
        f = HelloFilter(lambda: holdLF)
        out, hellos = b"", []
        for chunk in chunks:
            data = chunk
            while True:
                o, hello, data = f.feed(data)
                out += o
                if hello is None:
                    break
                hellos.append(hello)
        return out + f.flush(), hellos

    def test_plainOutput(self):
        out, hellos = self.run_([b"line one\nline two\n", b"\xff\xfe binary\r\n"])
        self.assertEqual((out, hellos), (b"line one\nline two\n\xff\xfe binary\r\n", []))

    def test_helloRemoved(self):
        hello = _guestHello("abc")
        out, hellos = self.run_([b"before\n" + hello[1:] + b"after\n"])
        # the hello's own leading LF is the LF after "before"
        self.assertEqual(out, b"beforeafter\n")
        self.assertEqual([h["peer"] for h in hellos], ["abc"])

    def test_helloSplitEverywhere(self):
        """
        A hello cut anywhere, even byte by byte, is still found and removed.
        """
        hello = _guestHello("abc")
        data = b"x" + hello + b"y"
        out, hellos = self.run_([bytes([b]) for b in data])
        self.assertEqual((out, len(hellos)), (b"xy", 1))
        for cut in range(1, len(data)):
            out, hellos = self.run_([data[:cut], data[cut:]])
            self.assertEqual((out, len(hellos)), (b"xy", 1), cut)

    def test_echoedHelloCRLF(self):
        """
        A hello echoed by a cooked tty (CR LF) goes, CR included.
        """
        echoed = encodeHello({"role": "host", "nonce": "n1", "v": [1]}).replace(b"\n", b"\r\n")
        out, hellos = self.run_([b"out\r\n" + echoed + b"more\r\n"])
        self.assertEqual(out, b"out\r\nmore\r\n")
        self.assertEqual(hellos[0]["role"], "host")

    def test_notAHello(self):
        """
        Bytes that start like a hello but stop fitting one are output.
        """
        data = b"a\n\xffPROKSHY \x00binary\n\xffPRO\n\xffx"
        out, hellos = self.run_([data])
        self.assertEqual((out, hellos), (data, []))
        for cut in range(1, len(data)):
            self.assertEqual(self.run_([data[:cut], data[cut:]]), (data, []), cut)

    def test_garbageHello(self):
        out, hellos = self.run_([b"a\n\xffPROKSHY {not json\nb"])
        self.assertEqual((out, hellos), (b"ab", [GARBAGE]))

    def test_trailingLFHeld(self):
        """
        Before any output, a trailing LF waits for the next bytes (it may
        start a hello); once output began it is passed on at once, and a
        hello right after it is still recognised.
        """
        f = HelloFilter(lambda: True)
        self.assertEqual(f.feed(b"\n"), (b"", None, b""))
        self.assertEqual(f.feed(b"z"), (b"\nz", None, b""))
        f = HelloFilter(lambda: False)
        self.assertEqual(f.feed(b"out\n"), (b"out\n", None, b""))
        out, hello, rest = f.feed(_guestHello("p")[1:] + b"tail")
        self.assertEqual((out, hello["peer"], rest), (b"", "p", b"tail"))

    def test_unfinishedHelloDropped(self):
        out, hellos = self.run_([b"a\n\xffPROKSHY {\"role\": "])
        self.assertEqual((out, hellos), (b"a", []))


class AutoChannelTests(SynchronousTestCase):
    """
    L{AutoChannel}'s fallback and late-hello decisions on a clock.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.options = parseArgs(["--socket-path", "/s", "--command", "greet", "--from-string", "w",
                                  "--fallback-after", "1", "--timeout", "2"])
        self.out = io.BytesIO()
        self.channel = AutoChannel(self.clock, self.options, FileOutput(self.out, "stdout"), "/s")
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)
        self.nonce = _hellos([self.transport.value()])[0]["nonce"]

    def fallBack(self):
        self.clock.advance(1)
        self.assertTrue(self.transport.value().endswith(b"\ngreet\nw\n"))
        self.transport.clear()

    def test_noAnswer(self):
        self.fallBack()
        self.clock.advance(2)
        e = self.failureResultOf(self.channel.decided, CLIError).value
        self.assertEqual(e.code, 255)
        self.assertIn("no answer from a prokshy agent on /s", e.message)

    def test_answer(self):
        self.fallBack()
        self.channel.dataReceived(b"hello w\n")
        self.clock.advance(2)
        self.assertEqual(self.successResultOf(self.channel.decided), ("legacy", 0))
        self.assertEqual(self.out.getvalue(), b"hello w\n")

    def test_ownEchoNotOutput(self):
        """
        Our own hello echoed after the fallback is dropped, and is no
        answer.
        """
        self.fallBack()
        self.channel.dataReceived(encodeHello({"role": "host", "nonce": self.nonce, "v": [1]}))
        self.clock.advance(2)
        self.failureResultOf(self.channel.decided, CLIError)
        self.assertEqual(self.out.getvalue(), b"")

    def test_lateHelloNewSession(self):
        """
        A late guest hello: a new host hello with a new nonce goes out, and
        the session it answers is the one used.
        """
        self.fallBack()
        self.channel.dataReceived(_guestHello(self.nonce) + b"\x50\xf7pingish")
        sent = _hellos([self.transport.value()])
        self.assertEqual(len(sent), 1)
        newNonce = sent[0]["nonce"]
        self.assertNotEqual(newNonce, self.nonce)
        self.assertNoResult(self.channel.decided)
        self.clock.advance(3)  # the legacy idle timeout is off
        self.assertNoResult(self.channel.decided)
        self.channel.dataReceived(_guestHello(newNonce, nonce="g2"))
        mode, host = self.successResultOf(self.channel.decided)
        self.assertEqual(mode, "framed")
        self.assertIs(host, self.channel.host)
        self.assertEqual(self.out.getvalue(), b"")

    def test_lateHelloAfterOutput(self):
        """
        A late guest hello after line-protocol output was written: a clear
        failure, and the hello is not output.
        """
        self.fallBack()
        self.channel.dataReceived(b"some output\n")
        self.channel.dataReceived(_guestHello(self.nonce) + b"\x50\xf7frames")
        e = self.failureResultOf(self.channel.decided, CLIError).value
        self.assertEqual(e.code, 255)
        self.assertIn("answered the framed hello after the fallback", e.message)
        self.assertEqual(self.out.getvalue(), b"some output\n")
        self.assertTrue(self.transport.disconnecting)

    def test_lateRefusal(self):
        self.fallBack()
        self.channel.dataReceived(_guestHello(self.nonce, error="no common protocol version"))
        e = self.failureResultOf(self.channel.decided, CLIError).value
        self.assertEqual(e.message, "refused: no common protocol version")

    def test_lateNewSessionNoAnswer(self):
        """
        After a late hello, a new session that does not come up is a
        failure, not a hang.
        """
        self.fallBack()
        self.channel.dataReceived(_guestHello(self.nonce))
        self.clock.advance(5)
        e = self.failureResultOf(self.channel.decided, CLIError).value
        self.assertIn("no framed hello answer within 5 s", e.message)

