"""
The C{prokshy} CLI's framed mode, run as a real subprocess
(C{python -m prokshy.cli.main}) against:

  - a simulated VM's console socket with the real guest agent (the agent
    and the simulator run in this process, see L{tests.hostharness});
  - the real host daemon (in this process) on unix and TCP listeners;
  - a fake I{original} shell agent (L{OriginalAgent}), with and without
    the FreeBSD tty's echo, to which the CLI must fall back.
"""

import json
import os
import re
import signal
import sys
import time

from twisted.internet import error, reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.trial.unittest import TestCase

from tests.hostharness import ROOT, HostHarness, groupAlive, shortTempDir, waitFor

_ENV = dict(os.environ)
_ENV["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [_ENV.get("PYTHONPATH")] if p])
_ENV.pop("PROKSHY_SOCKET", None)


class CLIProcess(ProcessProtocol):
    """
    A running CLI: collects stdout and stderr; C{ended} fires with
    C{(stdout, stderr, exit code)} (the code is C{-N} if signal N killed it).
    """

    def __init__(self, stdin=b"", keepStdinOpen=False):
        self.stdin = stdin
        self.keepStdinOpen = keepStdinOpen
        self.out = []
        self.err = []
        self.ended = Deferred()
        self.startedAt = time.monotonic()
        self.endedAt = None

    def connectionMade(self):
        if self.stdin:
            self.transport.write(self.stdin)
        if not self.keepStdinOpen:
            self.transport.closeStdin()

    def outReceived(self, data):
        self.out.append(data)

    def errReceived(self, data):
        self.err.append(data)

    @property
    def stdout(self):
        return b"".join(self.out)

    @property
    def stderr(self):
        return b"".join(self.err)

    def processEnded(self, reason):
        self.endedAt = time.monotonic()
        code = reason.value.exitCode
        if code is None:
            code = -(reason.value.signal or 0)
        self.ended.callback((self.stdout, self.stderr, code))


def startCLI(testCase, args, stdin=b"", keepStdinOpen=False, timeout=30):
    """
    Start C{prokshy ARGS}; it is killed after C{timeout} seconds, and at
    cleanup if still running.

    @return: the L{CLIProcess}.
    """
    proto = CLIProcess(stdin, keepStdinOpen)
    reactor.spawnProcess(
        proto, sys.executable, [sys.executable, "-m", "prokshy.cli.main"] + list(args), env=_ENV, path=ROOT
    )

    def kill():
        if not proto.ended.called:
            try:
                proto.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass

    killer = reactor.callLater(timeout, kill)
    proto.ended.addBoth(lambda r: (killer.cancel() if killer.active() else None, r)[1])

    def cleanup():
        kill()
        return proto.ended

    testCase.addCleanup(cleanup)
    return proto


def runCLI(testCase, *args, **kw):
    """
    Run C{prokshy ARGS} to the end.

    @return: a Deferred firing with C{(stdout, stderr, exit code)}.
    """
    return startCLI(testCase, args, **kw).ended


class CLITestMixin:
    def assertOneLineError(self, stderr, *fragments):
        """
        C{stderr} is exactly one line, C{prokshy: ...}, holding every
        fragment, and no traceback.
        """
        text = stderr.decode("utf-8", "replace")
        self.assertNotIn("Traceback", text)
        self.assertEqual(text.count("\n"), 1, text)
        self.assertTrue(text.startswith("prokshy: "), text)
        for fragment in fragments:
            self.assertIn(fragment, text)


# -- (a) a VM's console socket ---------------------------------------------


class DirectVMTests(CLITestMixin, TestCase):
    """
    The CLI on a VM's console socket, talking to the real guest agent.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.h = yield HostHarness(self, daemon=False).start()
        self.vm = self.h.vms["vm1"]
        self.sock = self.vm.socketPath

    def cli(self, *args, **kw):
        return runCLI(self, "--socket-path", self.sock, *args, **kw)

    @inlineCallbacks
    def test_exitStatus(self):
        """
        The exit code is the remote command's.
        """
        out, err, code = yield self.cli("--command", "status", "--from-string", "3")
        self.assertEqual((out, err, code), (b"", b"", 3))
        out, err, code = yield self.cli("--command", "cat", "--from-string", "hello")
        self.assertEqual((out, err, code), (b"hello", b"", 0))

    @inlineCallbacks
    def test_signal(self):
        """
        A command killed by signal N gives 128+N.
        """
        out, err, code = yield self.cli("--command", "killself", "--from-string", "")
        self.assertEqual(code, 128 + signal.SIGTERM)

    @inlineCallbacks
    def test_unknownCommand(self):
        """
        No such command: 127, one line on stderr.
        """
        out, err, code = yield self.cli("--command", "nosuchcommand", "--from-string", "")
        self.assertEqual((out, code), (b"", 127))
        self.assertOneLineError(err, "nosuchcommand")

    @inlineCallbacks
    def test_insecure(self):
        """
        A world-writable command is refused: 126, one line on stderr.
        """
        path = os.path.join(self.vm.commandDir, "unsafe")
        with open(path, "w") as f:
            f.write("#!/bin/sh\necho should not run\n")
        os.chmod(path, 0o777)
        out, err, code = yield self.cli("--command", "unsafe", "--from-string", "")
        self.assertEqual((out, code), (b"", 126))
        self.assertOneLineError(err)

    @inlineCallbacks
    def test_execTimeout(self):
        """
        C{--exec-timeout}: the guest kills the command; 124, with a note.
        """
        start = time.monotonic()
        out, err, code = yield self.cli("--command", "pidsleep", "--from-string", "", "--exec-timeout", "0.5")
        self.assertEqual(code, 124)
        self.assertLess(time.monotonic() - start, 10)
        pid = int(out.split(b"\n")[0])
        self.assertIn(b"timed out", err)
        yield waitFor(lambda: not groupAlive(pid), "the timed-out group to be gone", 5)

    @inlineCallbacks
    def test_stdinStreamed(self):
        """
        C{--stdin} streams a few MiB byte-exact, both ways.
        """
        data = os.urandom(3 * 1024 * 1024 + 12345)
        out, err, code = yield self.cli("--command", "cat", "--stdin", stdin=data, timeout=50)
        self.assertEqual((len(out), err, code), (len(data), b"", 0))
        self.assertTrue(out == data, "the output differs from the input")

    @inlineCallbacks
    def test_fromFileWhole(self):
        """
        Over the framed protocol C{--from-file} sends the whole file, not
        only its first line.
        """
        path = os.path.join(self.h.dir, "input")
        data = b"line one\nline two\n\xff\x00 binary\n"
        with open(path, "wb") as f:
            f.write(data)
        out, err, code = yield self.cli("--command", "cat", "--from-file", path)
        self.assertEqual((out, err, code), (data, b"", 0))

    @inlineCallbacks
    def test_stderr(self):
        """
        The command's stderr goes to stderr, its stdout to stdout.
        """
        out, err, code = yield self.cli("--command", "both", "--from-string", "")
        self.assertEqual((out, err, code), (b"out\n", b"err\n", 0))

    @inlineCallbacks
    def test_info(self):
        """
        C{--info} prints the agent's description as JSON.
        """
        out, err, code = yield self.cli("--info")
        self.assertEqual((err, code), (b"", 0))
        info = json.loads(out)
        for key in ("agent", "version", "protocol", "features", "os", "hostname", "pid", "max_concurrency"):
            self.assertIn(key, info)
        self.assertEqual(info["pid"], os.getpid())
        self.assertIn("exec", info["features"])

    @inlineCallbacks
    def test_vmNeedsDaemon(self):
        """
        C{--vm} on a VM's own socket is a usage error.
        """
        out, err, code = yield self.cli("--vm", "x", "--command", "cat", "--from-string", "")
        self.assertEqual(code, 2)
        self.assertOneLineError(err, "daemon")

    @inlineCallbacks
    def test_interrupt(self):
        """
        Ctrl-C (SIGINT) during a long remote command: the CLI exits 130 and
        the remote process group is killed soon after; the agent then
        serves the next client.
        """
        yield self._interrupt(self, ["--socket-path", self.sock])
        out, err, code = yield self.cli("--command", "cat", "--from-string", "next")
        self.assertEqual((out, code), (b"next", 0))

    @staticmethod
    @inlineCallbacks
    def _interrupt(testCase, target):
        proc = startCLI(testCase, target + ["--command", "pidsleep", "--from-string", ""])
        yield waitFor(lambda: b"\n" in proc.stdout, "the remote pid", 10)
        pid = int(proc.stdout.split(b"\n")[0])
        testCase.assertTrue(groupAlive(pid))
        proc.transport.signalProcess("INT")
        out, err, code = yield proc.ended
        testCase.assertEqual(code, 130, err)
        testCase.assertNotIn(b"Traceback", err)
        # well before the agent's 8 s keepalive timeout would kill it anyway
        yield waitFor(lambda: not groupAlive(pid), "the remote process group to die", 5)


# -- (b) the daemon ---------------------------------------------------------


class DaemonTests(CLITestMixin, TestCase):
    """
    The CLI on the host daemon, over TCP and unix listeners.
    """

    timeout = 60
    TOKEN = "cli-test-token-0123456789abcdef"

    @inlineCallbacks
    def setUp(self):
        self.h = HostHarness(self, vms=("a", "b", "c"), listens=["tcp:0:interface=0.0.0.0"])
        self.tokenFile = os.path.join(self.h.dir, "token")
        with open(self.tokenFile, "w") as f:
            f.write(self.TOKEN + "\n")
        os.chmod(self.tokenFile, 0o600)
        self.h.hostArgs += ["--auth-token-file", self.tokenFile]
        yield self.h.start()
        self.tcp = "tcp:host=127.0.0.1:port=%d" % (self.h.tcpPorts[0],)
        self.remote = "tcp:host=127.0.0.1:port=%d" % (self.h.tcpPorts[1],)
        self.sock = self.h.unixPath

    def cli(self, *args, **kw):
        return runCLI(self, *args, **kw)

    @inlineCallbacks
    def test_connectTCP(self):
        """
        C{--connect} a TCP endpoint: the default VM (the first).
        """
        out, err, code = yield self.cli("--connect", self.tcp, "--command", "vmname", "--from-string", "")
        self.assertEqual((out, err, code), (b"a\n", b"", 0))

    @inlineCallbacks
    def test_socketPathDetectsDaemon(self):
        """
        C{--socket-path} of the daemon's socket: detected as a daemon, so
        C{--vm} works; several C{--vm} are labelled.
        """
        results = yield gatherResults(
            [
                self.cli("--socket-path", self.sock, "--vm", "b", "--command", "vmname", "--from-string", ""),
                self.cli("--socket-path", self.sock, "--vm", "c", "--vm", "a", "--command", "vmname",
                         "--from-string", ""),
                self.cli("--socket-path", self.sock, "--command", "status", "--from-string", "7"),
            ]
        )
        self.assertEqual(results[0], (b"b\n", b"", 0))
        out, err, code = results[1]
        self.assertEqual((sorted(out.splitlines()), err, code), ([b"[a] a", b"[c] c"], b"", 0))
        self.assertEqual(results[2], (b"", b"", 7))

    @inlineCallbacks
    def test_allVMs(self):
        """
        C{--all-vms}: every VM's output, each line labelled C{[vm] }; stderr
        labelled too; the exit code is the worst.
        """
        out, err, code = yield self.cli("--socket-path", self.sock, "--all-vms", "--command", "both",
                                        "--from-string", "")
        self.assertEqual(code, 0)
        self.assertEqual(sorted(out.splitlines()), [b"[a] out", b"[b] out", b"[c] out"])
        self.assertEqual(sorted(err.splitlines()), [b"[a] err", b"[b] err", b"[c] err"])
        out, err, code = yield self.cli("--connect", self.tcp, "--all-vms", "--command", "vmname",
                                        "--from-string", "")
        self.assertEqual(sorted(out.splitlines()), [b"[a] a", b"[b] b", b"[c] c"])
        out, err, code = yield self.cli("--connect", self.tcp, "--all-vms", "--command", "status",
                                        "--from-string", "5")
        self.assertEqual(code, 5)

    @inlineCallbacks
    def test_json(self):
        """
        C{--all-vms --json}: one JSON object per VM per line.
        """
        out, err, code = yield self.cli("--connect", self.tcp, "--all-vms", "--json", "--command", "both",
                                        "--from-string", "")
        self.assertEqual((err, code), (b"", 0))
        lines = out.splitlines()
        self.assertEqual(len(lines), 3, out)
        records = sorted((json.loads(line) for line in lines), key=lambda r: r["vm"])
        self.assertEqual([r["vm"] for r in records], ["a", "b", "c"])
        for r in records:
            self.assertEqual((r["status"], r["stdout"], r["stderr"], r["command"]), (0, "out\n", "err\n", "both"))
            self.assertEqual((r["code"], r["signal"], r["timed_out"], r["truncated"]), (0, None, False, False))

    @inlineCallbacks
    def test_jsonBinary(self):
        """
        Output that is not UTF-8: C{"encoding": "base64"}, and C{stdout}
        (and C{stderr}) in base64 (it was a C{stdout_base64} key).
        """
        import base64

        data = b"\xff\xfe\x00binary"
        out, err, code = yield self.cli("--connect", self.tcp, "--vm", "b", "--json", "--command", "cat",
                                        "--from-string", "", "--stdin", stdin=data)
        # --from-string and --stdin are exclusive: a usage error
        self.assertEqual(code, 2)
        path = os.path.join(self.h.dir, "bin")
        with open(path, "wb") as f:
            f.write(data)
        out, err, code = yield self.cli("--connect", self.tcp, "--vm", "b", "--json", "--command", "cat",
                                        "--from-file", path)
        self.assertEqual(code, 0)
        record = json.loads(out)
        self.assertEqual(record["encoding"], "base64")
        self.assertEqual((base64.b64decode(record["stdout"]), record["stderr"]), (data, ""))

    @inlineCallbacks
    def test_status(self):
        """
        C{--status}: a table of the daemon's VMs.
        """
        out, err, code = yield self.cli("--socket-path", self.sock, "--status")
        self.assertEqual((err, code), (b"", 0))
        lines = out.decode().splitlines()
        self.assertEqual(lines[0].split(), ["VM", "STATE", "SINCE", "SESSION", "RTT", "STREAMS", "IN", "OUT",
                                            "RESYNCS", "RETRANS"])
        rows = {line.split()[0]: line.split() for line in lines[1:]}
        self.assertEqual(sorted(rows), ["a", "b", "c"])
        for row in rows.values():
            self.assertEqual(row[1], "up")

    @inlineCallbacks
    def test_authToken(self):
        """
        The non-loopback listener wants the token: without it the CLI is
        refused (255, one line); with C{--auth-token-file} it runs.
        """
        out, err, code = yield self.cli("--connect", self.remote, "--command", "vmname", "--from-string", "")
        self.assertEqual((out, code), (b"", 255))
        self.assertOneLineError(err, "authentication required")
        out, err, code = yield self.cli("--connect", self.remote, "--auth-token-file", self.tokenFile,
                                        "--vm", "c", "--command", "vmname", "--from-string", "")
        self.assertEqual((out, err, code), (b"c\n", b"", 0))

    @inlineCallbacks
    def test_vmDown(self):
        """
        A VM that is down: 255 and one line naming it; with C{--all-vms}
        the other VMs still answer, and a summary line follows (issue 11:
        C{1 of 3 VMs failed: vm b: vm-unavailable}).
        """
        yield self.h.vms["b"].stopSim()
        yield waitFor(lambda: self.h.daemon.vms["b"].state == "connecting", "vm b down")
        out, err, code = yield self.cli("--socket-path", self.sock, "--vm", "b", "--command", "vmname",
                                        "--from-string", "")
        self.assertEqual((out, code), (b"", 255))
        self.assertOneLineError(err, "vm b", "not connected since")
        out, err, code = yield self.cli("--socket-path", self.sock, "--all-vms", "--command", "vmname",
                                        "--from-string", "")
        self.assertEqual(code, 255)
        self.assertEqual(sorted(out.splitlines()), [b"[a] a", b"[c] c"])
        first, summary = err.splitlines(True)
        self.assertOneLineError(first, "vm b", "not connected since")
        self.assertEqual(summary, b"prokshy: 1 of 3 VMs failed: vm b: vm-unavailable\n")

    @inlineCallbacks
    def test_unknownVM(self):
        out, err, code = yield self.cli("--connect", self.tcp, "--vm", "nosuchvm", "--command", "vmname",
                                        "--from-string", "")
        self.assertEqual((out, code), (b"", 255))
        self.assertOneLineError(err, "nosuchvm")

    @inlineCallbacks
    def test_daemonNotRunning(self):
        """
        No daemon at the address: 1, one line.
        """
        yield self.h.stopDaemon()
        out, err, code = yield self.cli("--socket-path", self.sock, "--command", "vmname", "--from-string", "")
        self.assertEqual((out, code), (b"", 1))
        self.assertOneLineError(err, "cannot connect")

    def test_interrupt(self):
        """
        Ctrl-C through the daemon: 130, and the remote group is killed.
        """
        return DirectVMTests._interrupt(self, ["--socket-path", self.sock, "--vm", "b"])


# -- (c) an original agent ------------------------------------------------------

_NAME = re.compile(rb"[a-zA-Z0-9_.-]+\Z")


class OriginalAgent(Protocol):
    """
    The original shell agent (C{main.sh} under unixexec), as seen through
    the VM's socket (docs: channel-semantics.md, section 1)::

        while :; do
            read -r CMD
            if ! printf "%s" "${CMD}" | grep -qEe '^[a-zA-Z0-9_.-]+$'; then continue; fi
            if [ ! -x "${CMDDIR}/${CMD}" ]; then continue; fi
            read -r -t 1 ARG
            printf "%s" "${ARG}" | "${CMDDIR}/${CMD}"
        done

    C{commands} maps a name to a function of ARG returning the output.
    With C{tty=True} it behaves as on FreeBSD's cooked vtcon tty: every
    received byte is echoed at once, and output LFs become CR LF (ONLCR).

    @ivar received: every byte received.
    """

    def __init__(self, commands, tty=False, clock=reactor):
        self.commands = commands
        self.tty = tty
        self.clock = clock
        self.received = b""
        self._buf = b""
        self._waiting = None
        self._timer = None

    def _out(self, data):
        if self.tty:
            data = data.replace(b"\n", b"\r\n")
        self.transport.write(data)

    def dataReceived(self, data):
        self.received += data
        if self.tty:
            self._out(data)
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            self._line(line)

    def _line(self, line):
        if self.tty:
            line = line.rstrip(b"\r")  # ICRNL
        if self._waiting is not None:
            name, self._waiting = self._waiting, None
            self._timer.cancel()
            self._run(name, line)
            return
        name = line.strip(b" \t")  # read -r trims blanks
        if not _NAME.match(name) or name not in self.commands:
            return
        self._waiting = name
        self._timer = self.clock.callLater(1.0, self._argTimeout)

    def _argTimeout(self):
        name, self._waiting = self._waiting, None
        self._run(name, b"")

    def _run(self, name, arg):
        self._out(self.commands[name](arg))

    def connectionLost(self, reason):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()


class FallbackTests(CLITestMixin, TestCase):
    """
    The CLI (C{--protocol auto}, the default) on an original agent: no
    framed hello answers, so after C{--fallback-after} it speaks the line
    protocol on the same connection and prints exactly the output.
    """

    timeout = 30
    COMMANDS = {
        b"greet": lambda arg: b"hello " + arg + b"\nsecond line\n",
        b"sysinfo": lambda arg: b"general.hostname = old\n",
    }

    def serve(self, tty):
        self.dir = shortTempDir(self)
        self.sock = os.path.join(self.dir, "old.sock")
        self.agents = []

        def build():
            agent = OriginalAgent(self.COMMANDS, tty=tty)
            self.agents.append(agent)
            return agent

        port = reactor.listenUNIX(self.sock, Factory.forProtocol(build))
        self.addCleanup(port.stopListening)
        self.addCleanup(self._closeAgents)

    def _closeAgents(self):
        waits = []
        for agent in self.agents:
            if agent.transport is not None and agent.transport.connected:
                d = Deferred()
                original = agent.connectionLost

                def lost(reason, original=original, d=d):
                    original(reason)
                    d.callback(None)

                agent.connectionLost = lost
                agent.transport.loseConnection()
                waits.append(d)
        return gatherResults(waits)

    @inlineCallbacks
    def _fallback(self, tty, fallbackAfter=None):
        self.serve(tty)
        args = ["--socket-path", self.sock, "--command", "greet", "--from-string", "world", "--timeout", "0.5"]
        if fallbackAfter is not None:
            args += ["--fallback-after", str(fallbackAfter)]
        proc = startCLI(self, args)
        out, err, code = yield proc.ended
        expected = b"hello world\nsecond line\n"
        if tty:
            expected = expected.replace(b"\n", b"\r\n")
        self.assertEqual((out, err, code), (expected, b"", 0))
        (agent,) = self.agents
        # hellos first (each ignored by the agent), then the request
        self.assertTrue(agent.received.endswith(b"\ngreet\nworld\n"), agent.received[-200:])
        hellos = agent.received[: -len(b"greet\nworld\n")]
        self.assertIn(b"\xffPROKSHY ", hellos)
        for line in hellos.split(b"\n"):
            self.assertTrue(line == b"" or line.startswith(b"\xffPROKSHY {"), line)
        return proc

    @inlineCallbacks
    def test_fallback(self):
        """
        A plain original agent: fall back after C{--fallback-after}.
        """
        proc = yield self._fallback(tty=False, fallbackAfter=0.6)
        self.assertGreaterEqual(proc.endedAt - proc.startedAt, 0.6)

    @inlineCallbacks
    def test_fallbackEchoingTTY(self):
        """
        On a FreeBSD cooked tty the agent's side echoes everything at once
        (LF as CR LF), so the CLI sees its own hellos and request echoed:
        an echoed hello is not an answer, and the echoed request is
        stripped.  With the default C{--fallback-after} (1 s).
        """
        yield self._fallback(tty=True)

    @inlineCallbacks
    def test_fallbackEchoingTTYShortWait(self):
        yield self._fallback(tty=True, fallbackAfter=0.3)

    @inlineCallbacks
    def test_protocolLegacy(self):
        """
        C{--protocol legacy} sends no hello: only C{NAME LF DATA LF}.
        """
        self.serve(tty=False)
        out, err, code = yield runCLI(
            self, "--socket-path", self.sock, "--protocol", "legacy", "--command", "sysinfo",
            "--from-string", "x", "--timeout", "0.5",
        )
        self.assertEqual((out, err, code), (b"general.hostname = old\n", b"", 0))
        (agent,) = self.agents
        self.assertEqual(agent.received, b"sysinfo\nx\n")

    @inlineCallbacks
    def test_protocolLegacyEchoingTTY(self):
        """
        The same on a cooked tty: the echoed request is stripped.
        """
        self.serve(tty=True)
        out, err, code = yield runCLI(
            self, "--socket-path", self.sock, "--protocol", "legacy", "--command", "sysinfo",
            "--from-string", "x", "--timeout", "0.5",
        )
        self.assertEqual((out, err, code), (b"general.hostname = old\r\n", b"", 0))
        self.assertEqual(self.agents[0].received, b"sysinfo\nx\n")

    @inlineCallbacks
    def test_protocolFramedNoAnswer(self):
        """
        C{--protocol framed} on an original agent does not fall back: 255
        and one line, after waiting for an answer.
        """
        self.serve(tty=False)
        out, err, code = yield runCLI(
            self, "--socket-path", self.sock, "--protocol", "framed", "--command", "sysinfo",
            "--from-string", "", "--fallback-after", "0.5",
        )
        self.assertEqual((out, code), (b"", 255))
        self.assertOneLineError(err, "no framed hello answer")
        self.assertNotIn(b"sysinfo", self.agents[0].received)
