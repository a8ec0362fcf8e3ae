"""
C{prokshy --command NAME [--] ARG...} (issue 11, section 3), with real
processes: the CLI as a subprocess, the real guest agent on a simulated
VM (L{tests.hostharness}), directly on the VM's socket and through a real
daemon.  The command receives its argv exactly, never through a shell; the
limits are refused on both sides; the line protocol and a guest without
the C{args} feature are clear errors that run nothing.
"""

import ast
import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from prokshy.guest import execs
from prokshy.streams.stream import StreamRefused
from tests.hostharness import DEFAULT_SCRIPTS, HostHarness, shortTempDir, waitFor
from tests.system.test_cli_framed import CLITestMixin, OriginalAgent, runCLI

#: Prints its argv[1:], each followed by a NUL, then its stdin after a
#: line "STDIN:"; and leaves a mark that it ran.
ARGV = (
    "#!/bin/sh\n"
    "touch \"$(dirname \"$0\")/../ran.$$\" 2>/dev/null\n"
    "for a in \"$@\"; do printf '%s\\0' \"$a\"; done\n"
    "printf 'STDIN:'\n"
    "cat\n"
)

#: Arguments a shell would mangle, split, expand or take for options.
TRICKY = [
    "two words",
    "",
    "-x",
    "--flag=1",
    "-",
    "--",
    "'single'",
    '"double"',
    "back\\slash",
    "$HOME",
    "$(touch /tmp/prokshy-args-not-a-shell)",
    "*",
    ";",
    "a\nb",
    "tab\there",
    "unicode: \u00e9\u00fc \u65e5\u672c \U0001f600",
    " leading and trailing ",
]


def scripts():
    return dict(DEFAULT_SCRIPTS, argv=ARGV)


def splitArgv(out):
    """
    What L{ARGV} printed: (the arguments, the stdin).
    """
    head, _, stdin = out.partition(b"STDIN:")
    parts = head.split(b"\0")
    assert parts[-1] == b"", parts
    return [p.decode("utf-8") for p in parts[:-1]], stdin


class ArgsMixin(CLITestMixin):
    timeout = 60

    def setUp(self):
        return self.startHarness()

    def ranCount(self):
        """
        How many times the L{ARGV} command ran on the VM.
        """
        root = os.path.dirname(self.vm.commandDir)
        return len([n for n in os.listdir(root) if n.startswith("ran.")])

    @inlineCallbacks
    def test_argvExact(self):
        """
        Every argument arrives as it was given: spaces, quotes, shell
        syntax, empty strings, leading dashes, newlines, unicode; none goes
        through a shell (no expansion, no command substitution).
        """
        marker = "/tmp/prokshy-args-not-a-shell"
        if os.path.exists(marker):
            os.unlink(marker)
        out, err, code = yield self.cli("--command", "argv", "--", *TRICKY)
        self.assertEqual((err, code), (b"", 0))
        self.assertEqual(splitArgv(out), (TRICKY, b""))
        self.assertFalse(os.path.exists(marker))

    @inlineCallbacks
    def test_argsAndStdin(self):
        """
        Arguments are argv, the input is stdin: the command tells them
        apart.
        """
        out, err, code = yield self.cli(
            "--command", "argv", "--from-string", "data\nmore", "--", "arg one", "-n"
        )
        self.assertEqual((err, code), (b"", 0))
        self.assertEqual(splitArgv(out), (["arg one", "-n"], b"data\nmore"))
        out, err, code = yield self.cli("--command", "argv", "--stdin", "--", "x", stdin=b"streamed")
        self.assertEqual((err, code), (b"", 0))
        self.assertEqual(splitArgv(out), (["x"], b"streamed"))

    @inlineCallbacks
    def test_argsWithoutDashes(self):
        """
        Arguments that do not start with a dash need no C{--}.
        """
        out, err, code = yield self.cli("--command", "argv", "plain", "second")
        self.assertEqual((err, code), (b"", 0))
        self.assertEqual(splitArgv(out), (["plain", "second"], b""))

    @inlineCallbacks
    def test_manyArguments(self):
        """
        The most arguments allowed, 1024 (small ones, so that the OPEN fits
        the guest's 4 KiB frames), all arrive.
        """
        args = ["" if i % 2 else str(i % 10) for i in range(1024)]
        out, err, code = yield self.cli("--command", "argv", "--", *args)
        self.assertEqual((err, code), (b"", 0))
        self.assertEqual(splitArgv(out), (args, b""))

    @inlineCallbacks
    def test_tooManyArguments(self):
        """
        1025 arguments: a one-line usage error naming the limit, exit 2,
        before anything is sent (nothing ran).
        """
        out, err, code = yield self.cli("--command", "argv", "--", *(["a"] * 1025))
        self.assertEqual((out, code), (b"", 2))
        self.assertOneLineError(err, "1025 arguments", "at most 1024")
        self.assertEqual(self.ranCount(), 0)

    @inlineCallbacks
    def test_argumentsTooBig(self):
        """
        More than 65536 bytes of UTF-8 in all: a one-line usage error
        naming the limit, exit 2.
        """
        big = ["\u00e9" * 20000, "\u00e9" * 20000]  # 80000 bytes of UTF-8
        out, err, code = yield self.cli("--command", "argv", "--", *big)
        self.assertEqual((out, code), (b"", 2))
        self.assertOneLineError(err, "80000 bytes", "at most 65536")
        self.assertEqual(self.ranCount(), 0)

    @inlineCallbacks
    def test_notUTF8(self):
        """
        An argument that is not UTF-8 (JSON cannot carry it): a one-line
        usage error, exit 2.
        """
        out, err, code = yield self.cli("--command", "argv", "--", "ok", "bad\udcff")
        self.assertEqual((out, code), (b"", 2))
        self.assertOneLineError(err, "argument 2 is not valid UTF-8")

    @inlineCallbacks
    def test_legacyProtocol(self):
        """
        C{--protocol legacy} with ARGs: a one-line usage error, exit 2.
        """
        out, err, code = yield self.cli("--protocol", "legacy", "--command", "argv", "--", "a")
        self.assertEqual((out, code), (b"", 2))
        self.assertOneLineError(err, "framed protocol", "takes no arguments")

    @inlineCallbacks
    def test_guestWithoutArgsFeature(self):
        """
        A guest whose features lack C{args} (an older agent, which would
        run the command without them): a one-line error, nothing runs.
        """
        self.patch(execs, "EXEC_FEATURES", ())
        yield self.restartAgent()
        out, err, code = yield self.cli("--command", "argv", "--", "a")
        self.assertEqual((out, code), (b"", 1))
        self.assertOneLineError(err, "cannot take arguments", "'args' feature", "not run")
        out, err, code = yield self.cli("--reserved-exit-codes", "--command", "argv", "--", "a")
        self.assertEqual((out, code), (b"", 209))
        self.assertEqual(self.ranCount(), 0)
        # Without ARGs the command runs as before.
        out, err, code = yield self.cli("--command", "argv", "--from-string", "in")
        self.assertEqual((out, err, code), (b"STDIN:in", b"", 0))


class DirectArgsTests(ArgsMixin, TestCase):
    """
    ARGs on a VM's own console socket, with the real guest agent.
    """

    @inlineCallbacks
    def startHarness(self):
        self.h = yield HostHarness(self, daemon=False, scripts=scripts()).start()
        self.vm = self.h.vms["vm1"]

    def cli(self, *args, **kw):
        return runCLI(self, "--socket-path", self.vm.socketPath, *args, **kw)

    @inlineCallbacks
    def restartAgent(self):
        yield self.vm.stopAgent()
        self.vm.startAgent()
        yield waitFor(lambda: self.vm.deviceOpen, "the agent to open its device")

    @inlineCallbacks
    def test_doesNotFit(self):
        """
        Arguments within the limits whose OPEN does not fit one frame of the
        guest's (4 KiB on a bhyve tty): a one-line usage error naming the
        guest's max_payload, exit 2, nothing sent.
        """
        out, err, code = yield self.cli("--command", "argv", "--", "x" * 5000)
        self.assertEqual((out, code), (b"", 2))
        self.assertOneLineError(err, "do not fit", "at most 4096", "max_payload")
        out, err, code = yield self.cli("--reserved-exit-codes", "--command", "argv", "--", "x" * 5000)
        self.assertEqual((out, code), (b"", 200))
        self.assertEqual(self.ranCount(), 0)


class DaemonArgsTests(ArgsMixin, TestCase):
    """
    ARGs through a real prokshy-host daemon, which relays them.
    """

    @inlineCallbacks
    def startHarness(self):
        self.h = yield HostHarness(self, scripts=scripts()).start()
        self.vm = self.h.vms["vm1"]

    def cli(self, *args, **kw):
        return runCLI(self, "--socket-path", self.h.unixPath, *args, **kw)

    @inlineCallbacks
    def restartAgent(self):
        yield self.vm.stopAgent()
        yield waitFor(lambda: self.h.daemon.vms["vm1"].state != "up", "the daemon to lose the VM")
        self.vm.startAgent()
        yield self.h.waitUp()

    @inlineCallbacks
    def test_tcp(self):
        """
        Through the daemon's TCP listener (C{--connect}) too.
        """
        out, err, code = yield runCLI(
            self, "--connect", "tcp:host=127.0.0.1:port=%d" % (self.h.tcpPort,),
            "--command", "argv", "--", "-a", "b c",
        )
        self.assertEqual((err, code), (b"", 0))
        self.assertEqual(splitArgv(out), (["-a", "b c"], b""))

    @inlineCallbacks
    def test_tooBigForTheGuest(self):
        """
        Arguments that fit the daemon's frames (32 KiB) but not the guest's
        (4 KiB): the daemon refuses the relay (C{too-big}), one line saying
        what the VM takes; nothing ran.
        """
        out, err, code = yield self.cli("--command", "argv", "--", "x" * 6000)
        self.assertEqual(out, b"")
        self.assertNotEqual(code, 0)
        self.assertOneLineError(err, "takes at most 4096")
        self.assertEqual(self.ranCount(), 0)

    @inlineCallbacks
    def test_doesNotFitTheDaemon(self):
        """
        Beyond the daemon's own 32 KiB frames: the CLI's usage error, exit 2.
        """
        out, err, code = yield self.cli("--command", "argv", "--", "x" * 40000)
        self.assertEqual((out, code), (b"", 2))
        self.assertOneLineError(err, "do not fit", "the daemon takes at most 32768")


class FallbackArgsTests(CLITestMixin, TestCase):
    """
    ARGs in auto mode, on the original agent (no framed hello answers): a
    clear error, and the command is not run without them.
    """

    timeout = 30

    @inlineCallbacks
    def test_fallbackRefused(self):
        self.dir = shortTempDir(self)
        sock = os.path.join(self.dir, "old.sock")
        agents = []

        def build():
            agent = OriginalAgent({b"greet": lambda arg: b"hello\n"})
            agents.append(agent)
            return agent

        port = reactor.listenUNIX(sock, Factory.forProtocol(build))
        self.addCleanup(port.stopListening)

        def closeAgents():
            for agent in agents:
                if agent.transport is not None:
                    agent.transport.abortConnection()

        self.addCleanup(closeAgents)
        out, err, code = yield runCLI(
            self, "--socket-path", sock, "--fallback-after", "0.3", "--command", "greet", "--", "a"
        )
        self.assertEqual(out, b"")
        self.assertEqual(code, 255)
        self.assertOneLineError(err, "original agent cannot take arguments", "not run")
        # The original agent got hellos only: no request line.
        (agent,) = agents
        self.assertNotIn(b"greet", agent.received)


class GuestRefusalTests(TestCase):
    """
    The guest refuses bad C{args} (and C{tty}) itself, C{bad-open}, with a
    clear message, whatever a client sends.
    """

    timeout = 30

    @inlineCallbacks
    def setUp(self):
        self.h = yield HostHarness(self, daemon=False, scripts=scripts()).start()
        self.vm = self.h.vms["vm1"]
        from prokshy.host.client import HostProtocol
        from twisted.internet.endpoints import UNIXClientEndpoint

        proto = yield UNIXClientEndpoint(reactor, self.vm.socketPath).connect(
            Factory.forProtocol(lambda: HostProtocol(reactor))
        )
        self.addCleanup(proto.transport.loseConnection)
        self.session = yield proto.whenSession()

    @inlineCallbacks
    def refused(self, body):
        body = dict({"name": "argv"}, **body)
        try:
            yield self.session.mux.openStream("exec", body, Protocol())
        except StreamRefused as e:
            return e
        self.fail("not refused: %r" % (body,))

    @inlineCallbacks
    def test_refusals(self):
        for body, fragment in (
            ({"args": "a b"}, "list of strings"),
            ({"args": ["a", 1]}, "argument 2 is not a string"),
            ({"args": ["a", "b\0c"]}, "argument 2 contains a NUL"),
            ({"args": [""] * 1025}, "1025 arguments; at most 1024"),
            ({"args": ["\ud800"]}, "argument 1 is not valid UTF-8"),
            ({"tty": {"rows": 0, "cols": 80}}, "rows and cols"),
            ({"tty": {"rows": 24, "cols": 80, "term": "x y"}}, "term must match"),
            ({"tty": "yes"}, "tty must be an object"),
        ):
            e = yield self.refused(body)
            self.assertEqual(e.code, "bad-open", body)
            self.assertIn(fragment, e.message)
        root = os.path.dirname(self.vm.commandDir)
        self.assertEqual([n for n in os.listdir(root) if n.startswith("ran.")], [])

    @inlineCallbacks
    def test_argvZeroIsThePath(self):
        """
        argv[0] stays the command's path; ARGs are argv[1:] as given (an
        empty string and C{-c} included).
        """
        path = os.path.join(self.vm.commandDir, "zero")
        with open(path, "w") as f:
            f.write("#!%s\nimport sys\nsys.stdout.write(repr(sys.argv))\n" % (sys.executable,))
        os.chmod(path, 0o755)
        got = []
        running = yield self.session.execStream(
            "zero", got.append, got.append, args=["-c", "", "x y"], stdin=b""
        )
        result = yield running.result
        self.assertEqual(result.exitStatus, 0)
        argv = ast.literal_eval(b"".join(got).decode())
        self.assertEqual(argv, [path, "-c", "", "x y"])
