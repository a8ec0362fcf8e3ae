"""
The C{prokshy} CLI's forwarding modes, run as real subprocesses
(C{python -m prokshy.cli.main}) against real processes and sockets:

  - a prokshy-host daemon (in this process) with a simulated VM
    (L{prokshy.sim.vmsim.VMSim}) and the real guest agent on it
    (L{tests.hostharness.HostHarness}): C{--forward}, C{--reverse},
    C{--forwards}, C{--unforward} at run time, their exit codes and
    C{--json};
  - a VM's own console socket (no daemon): the foreground mode, stopped by
    SIGINT.

The forwards' targets are a TCP echo server in this process on 127.0.0.1
(the guest agent runs on this machine too, so it reaches it "inside the
guest"); the listening sides are unix sockets in the test's directory (no
port to race for), allowed in the guest by C{--allow-listen DIR/*}.
"""

import errno
import json
import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from tests.harness import freeTcpPort, shortTempDir
from tests.hostharness import HostHarness, waitFor
from tests.system.test_cli_framed import CLITestMixin, runCLI, startCLI


class _Echo(Protocol):
    def connectionMade(self):
        self.factory.connections += 1

    def dataReceived(self, data):
        self.transport.write(data)


class EchoFactory(Factory):
    protocol = _Echo

    def __init__(self):
        self.connections = 0


class _Exchange(Protocol):
    def __init__(self, data):
        self.data = data
        self.received = b""
        self.done = Deferred()
        self.lost = Deferred()

    def connectionMade(self):
        self.transport.write(self.data)

    def dataReceived(self, data):
        self.received += data
        if len(self.received) >= len(self.data) and not self.done.called:
            self.done.callback(self.received)

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(self.received)
        self.lost.callback(None)


@inlineCallbacks
def exchange(path, data):
    """
    Connect to the unix socket C{path}, send C{data}, and collect as many
    bytes back (or what came before the connection closed).

    @return: a Deferred firing with the bytes.
    """
    proto = _Exchange(data)
    yield UNIXClientEndpoint(reactor, path, timeout=5).connect(Factory.forProtocol(lambda: proto))
    received = yield proto.done
    proto.transport.loseConnection()
    yield proto.lost
    return received


def refusesConnections(path):
    """
    Whether nothing listens on the unix socket C{path} (no file, or no
    listener behind it).
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError as e:
        return e.errno in (errno.ENOENT, errno.ECONNREFUSED)
    finally:
        s.close()
    return False


class _ForwardTestMixin(CLITestMixin):
    timeout = 120

    def startEcho(self):
        self.echo = EchoFactory()
        port = reactor.listenTCP(0, self.echo, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.echoPort = port.getHost().port

    def allowListen(self, harness):
        """
        Let every agent of C{harness} listen on unix sockets in its
        directory (before L{HostHarness.start}).
        """
        for vm in harness.vms.values():
            vm.guestArgs += ["--allow-listen", os.path.join(harness.dir, "*")]

    def path(self, name):
        return os.path.join(self.h.dir, name)

    def spec(self, listen):
        """
        A SPEC from a unix socket C{listen} (in the test's directory) to the
        echo server.
        """
        return "%s:127.0.0.1:%d" % (self.path(listen), self.echoPort)


class DaemonForwardTests(_ForwardTestMixin, TestCase):
    """
    The forwarding modes against a prokshy-host daemon.
    """

    @inlineCallbacks
    def setUp(self):
        self.startEcho()
        self.h = HostHarness(self)
        self.allowListen(self.h)
        # The daemon lets clients listen on unix sockets in the test's
        # directory (its default is loopback TCP only).
        self.h.hostArgs = list(self.h.hostArgs) + ["--client-allow-listen", os.path.join(self.h.dir, "*")]
        yield self.h.start()

    def cli(self, *args, **kw):
        return runCLI(self, "--socket-path", self.h.unixPath, *args, **kw)

    @inlineCallbacks
    def test_addListRemove(self):
        """
        C{--forward} adds a forward that lives in the daemon (its id on
        stdout, exit 0) and carries connections to the target inside the
        VM; C{--forwards} lists it with its counters; C{--unforward} removes
        it (nothing printed, exit 0) and its listener is gone at once.
        """
        out, err, code = yield self.cli("--forward", self.spec("h.sock"))
        self.assertEqual((out, err, code), (b"1\n", b"", 0))
        self.assertEqual((yield exchange(self.path("h.sock"), b"hello through the VM")), b"hello through the VM")
        self.assertEqual(self.echo.connections, 1)

        out, err, code = yield self.cli("--forwards")
        self.assertEqual((err, code), (b"", 0))
        lines = out.decode().splitlines()
        self.assertEqual(lines[0].split(), ["ID", "VM", "DIR", "LISTEN", "TARGET", "STATE", "CONNS", "TO-TARGET", "FROM-TARGET"])
        self.assertEqual(
            lines[1].split()[:6],
            ["1", "vm1", "forward", self.path("h.sock"), "127.0.0.1:%d" % (self.echoPort,), "active"],
        )
        self.assertEqual(len(lines), 2, out)

        out, err, code = yield self.cli("--forwards", "--json")
        self.assertEqual((err, code), (b"", 0))
        rows = json.loads(out)["forwards"]
        self.assertEqual(len(rows), 1)
        row = rows[0]
        self.assertEqual(
            (row["id"], row["vm"], row["direction"], row["listen"], row["target"], row["state"], row["origin"]),
            ("1", "vm1", "forward", self.path("h.sock"), "127.0.0.1:%d" % (self.echoPort,), "active", "client"),
        )
        self.assertEqual(row["total_connections"], 1)
        self.assertEqual((row["bytes_to_target"], row["bytes_from_target"]), (20, 20))

        out, err, code = yield self.cli("--unforward", "1")
        self.assertEqual((out, err, code), (b"", b"", 0))
        self.assertTrue(refusesConnections(self.path("h.sock")))
        out, err, code = yield self.cli("--forwards")
        self.assertEqual((out, err, code), (b"no forwards\n", b"", 0))
        out, err, code = yield self.cli("--forwards", "--json")
        self.assertEqual((json.loads(out)["forwards"], err, code), ([], b"", 0))

    @inlineCallbacks
    def test_mixedInOrder(self):
        """
        C{--forward} and C{--reverse} mixed on one command line are added
        in order (ids 1 and 2); with C{--json} one record lists the rows.
        The reverse forward listens inside the guest and reaches the host's
        target.
        """
        out, err, code = yield self.cli(
            "--json", "--reverse", self.spec("g.sock"), "--forward", self.spec("h.sock")
        )
        self.assertEqual((err, code), (b"", 0))
        rows = json.loads(out)["forwards"]
        self.assertEqual([(r["id"], r["direction"], r["state"]) for r in rows],
                         [("1", "reverse", "active"), ("2", "forward", "active")])
        self.assertEqual(rows[0]["listen"], self.path("g.sock"))
        self.assertEqual((yield exchange(self.path("g.sock"), b"back to the host")), b"back to the host")
        self.assertEqual((yield exchange(self.path("h.sock"), b"into the guest")), b"into the guest")
        self.assertEqual(self.echo.connections, 2)
        out, err, code = yield self.cli("--unforward", "1", "--unforward", "2")
        self.assertEqual((out, err, code), (b"", b"", 0))
        # the guest stops listening at once: its agent closed the listener
        yield waitFor(lambda: refusesConnections(self.path("g.sock")), "the guest's listener to close", 10)
        self.assertTrue(refusesConnections(self.path("h.sock")))

    @inlineCallbacks
    def test_refusedReverse(self):
        """
        A reverse forward the guest's allowlist refuses: one line with the
        guest's reason, exit 1; the forward is not kept.
        """
        spec = "127.0.0.1:80:127.0.0.1:%d" % (self.echoPort,)
        out, err, code = yield self.cli("--reverse", spec)
        self.assertEqual((out, code), (b"", 1))
        self.assertOneLineError(err, "prokshy: reverse %s: not-allowed: " % (spec,), "127.0.0.1:80 is not allowed",
                                "--allow-listen")
        out, err, code = yield self.cli("--forwards", "--json")
        self.assertEqual((json.loads(out)["forwards"], err, code), ([], b"", 0))

    @inlineCallbacks
    def test_refusedConnection(self):
        """
        A connection the guest refuses (a unix target no C{--allow-connect}
        names) is closed at once; C{--forwards} shows the guest's reason
        under the forward, and in C{last_error} with C{--json}.
        """
        target = self.path("app.sock")
        out, err, code = yield self.cli("--forward", "%s:%s" % (self.path("h.sock"), target))
        self.assertEqual((out, err, code), (b"1\n", b"", 0))
        self.assertEqual((yield exchange(self.path("h.sock"), b"let me in")), b"")
        out, err, code = yield self.cli("--forwards")
        self.assertEqual((err, code), (b"", 0))
        lines = out.decode().splitlines()
        self.assertEqual(len(lines), 3, lines)
        self.assertEqual(lines[1].split()[:6], ["1", "vm1", "forward", self.path("h.sock"), target, "active"])
        self.assertTrue(lines[2].startswith("    last error: connection from "), lines)
        self.assertIn("refused by the guest: not-allowed: %s is not allowed" % (target,), lines[2])
        out, err, code = yield self.cli("--forwards", "--json")
        [row] = json.loads(out)["forwards"]
        self.assertIn("not-allowed", row["last_error"])
        self.assertEqual(row["connections"], 0)

    @inlineCallbacks
    def test_malformedSpec(self):
        """
        A malformed SPEC is a one-line usage error, exit 2, found before
        connecting: the same with a socket that does not exist.
        """
        for target in (self.h.unixPath, self.path("nothing-here.sock")):
            out, err, code = yield runCLI(self, "--socket-path", target, "--forward", "8080:127.0.0.1")
            self.assertEqual((out, code), (b"", 2))
            self.assertOneLineError(err, "prokshy: error: --forward", "8080:127.0.0.1")
        out, err, code = yield self.cli("--forwards", "--json")
        self.assertEqual(json.loads(out)["forwards"], [])

    @inlineCallbacks
    def test_unknownVM(self):
        """
        A VM the daemon does not have: its refusal (C{no-such-vm}), exit 1,
        with C{VM=} and with C{--vm}.
        """
        for args in (["--forward", "nosuch=" + self.spec("h.sock")], ["--vm", "nosuch", "--forward", self.spec("h.sock")]):
            out, err, code = yield self.cli(*args)
            self.assertEqual((out, code), (b"", 1), err)
            self.assertOneLineError(err, "prokshy: forward ", ": no-such-vm: ", "nosuch")
        self.assertTrue(refusesConnections(self.path("h.sock")))

    @inlineCallbacks
    def test_daemonPolicy(self):
        """
        A forward that would make the daemon listen where its
        C{--client-allow-listen} does not allow (a unix path outside the
        test's directory, all interfaces, a privileged port), or a reverse
        forward that would make it connect to a unix socket: the daemon's
        refusal, exit 1, and nothing listens.
        """
        outside = os.path.join(shortTempDir(self), "h.sock")
        for option, spec, why in (
            ("--forward", "%s:127.0.0.1:%d" % (outside, self.echoPort), outside + " is not allowed by the daemon"),
            ("--forward", "*:0:127.0.0.1:%d" % (self.echoPort,), "*:0 is not allowed by the daemon"),
            ("--forward", "80:127.0.0.1:%d" % (self.echoPort,), "127.0.0.1:80 is not allowed by the daemon"),
            ("--reverse", "%d:/var/run/docker.sock" % (freeTcpPort(),), "/var/run/docker.sock is not allowed by the daemon"),
        ):
            out, err, code = yield self.cli(option, spec)
            self.assertEqual((out, code), (b"", 1), err)
            self.assertOneLineError(err, ": not-allowed: ", why)
        self.assertFalse(os.path.exists(outside))
        out, err, code = yield self.cli("--forwards", "--json")
        self.assertEqual((json.loads(out)["forwards"], code), ([], 0), err)

    @inlineCallbacks
    def test_unknownId(self):
        """
        C{--unforward} of an id the daemon does not have: exit 1, one line.
        """
        out, err, code = yield self.cli("--unforward", "99")
        self.assertEqual((out, code), (b"", 1))
        self.assertOneLineError(err, "prokshy: unforward 99: no-such-forward")

    @inlineCallbacks
    def test_connectEndpoint(self):
        """
        C{--connect ENDPOINT} works as C{--socket-path} does.
        """
        target = ["--connect", "tcp:host=127.0.0.1:port=%d" % (self.h.tcpPort,)]
        out, err, code = yield runCLI(self, *(target + ["--forward", self.spec("h.sock")]))
        self.assertEqual((out, err, code), (b"1\n", b"", 0))
        out, err, code = yield runCLI(self, *(target + ["--forwards", "--json"]))
        self.assertEqual([row["id"] for row in json.loads(out)["forwards"]], ["1"])
        self.assertEqual((yield exchange(self.path("h.sock"), b"x")), b"x")


class ForegroundTests(_ForwardTestMixin, TestCase):
    """
    The forwards served by the CLI itself on a VM's own console socket,
    until SIGINT.
    """

    @inlineCallbacks
    def setUp(self):
        self.startEcho()
        self.h = HostHarness(self, daemon=False)
        self.allowListen(self.h)
        yield self.h.start()
        self.sock = self.h.vms["vm1"].socketPath

    def start(self, *args):
        return startCLI(self, ["--socket-path", self.sock] + list(args), timeout=90)

    @inlineCallbacks
    def stopped(self, proc):
        """
        SIGINT the foreground CLI: it exits 130, without a traceback or an
        unhandled error.
        """
        proc.transport.signalProcess("INT")
        out, err, code = yield proc.ended
        self.assertEqual(code, 130, err)
        self.assertNotIn(b"Traceback", err)
        self.assertNotIn(b"Unhandled", err)
        return out, err

    @inlineCallbacks
    def test_forwardUntilInterrupted(self):
        """
        C{--forward} on a VM's socket listens on the host, says so on
        stderr (one line), carries connections to the target inside the
        VM, and stops on SIGINT: exit 130, the listener is gone, and the
        VM's socket serves the next client.
        """
        proc = self.start("--forward", self.spec("h.sock"))
        yield waitFor(lambda: b"active" in proc.stderr, "the forward to be set up", 30)
        line = proc.stderr.decode().splitlines()[-1]
        self.assertTrue(line.startswith("prokshy: forward %s -> 127.0.0.1:%d: " % (self.path("h.sock"), self.echoPort)), line)
        self.assertIn("listening", line)
        for data in (b"one", b"two" * 1000):
            self.assertEqual((yield exchange(self.path("h.sock"), data)), data)
        self.assertEqual(self.echo.connections, 2)
        out, err = yield self.stopped(proc)
        self.assertEqual(out, b"")
        self.assertTrue(refusesConnections(self.path("h.sock")))
        out, err, code = yield runCLI(self, "--socket-path", self.sock, "--info")
        self.assertEqual(code, 0, err)

    @inlineCallbacks
    def test_reverseAndRefusal(self):
        """
        C{--reverse} in the foreground: the guest listens and its
        connections reach the host's target; a reverse forward the guest
        refuses is reported on stderr with the guest's reason while the
        others go on; SIGINT ends it (130) and the guest stops listening.
        """
        refused = "127.0.0.1:80:127.0.0.1:%d" % (self.echoPort,)
        proc = self.start("--reverse", self.spec("g.sock"), "--reverse", refused)
        yield waitFor(lambda: b"not-allowed" in proc.stderr and b"active" in proc.stderr,
                      "both reverse forwards to settle", 30)
        lines = proc.stderr.decode().splitlines()
        refusal = [line for line in lines if "not-allowed" in line]
        self.assertEqual(len(refusal), 1, lines)
        self.assertTrue(refusal[0].startswith("prokshy: reverse 127.0.0.1:80 -> "), refusal)
        self.assertIn("127.0.0.1:80 is not allowed", refusal[0])
        self.assertEqual((yield exchange(self.path("g.sock"), b"to the host")), b"to the host")
        yield self.stopped(proc)
        yield waitFor(lambda: refusesConnections(self.path("g.sock")), "the guest's listener to close", 10)

    @inlineCallbacks
    def test_vmComesBack(self):
        """
        The foreground mode outlives the guest agent: while it is away the
        host's listener stays up and a connection to it is closed at once
        (never a hang), each forward says it waits for the VM; once the
        agent is back both forwards are set up again (the guest listens
        again) and carry connections.
        """
        vm = self.h.vms["vm1"]
        proc = self.start("--forward", self.spec("h.sock"), "--reverse", self.spec("g.sock"))
        yield waitFor(lambda: proc.stderr.count(b"active") == 2, "both forwards to be set up", 30)
        yield vm.stopAgent()
        yield waitFor(
            lambda: len([line for line in proc.stderr.splitlines() if b"waiting" in line and b"session ended" in line]) == 2,
            "both forwards to wait for the VM", 30,
        )
        self.assertFalse(refusesConnections(self.path("h.sock")))
        self.assertEqual((yield exchange(self.path("h.sock"), b"nobody home")), b"")
        self.assertEqual(self.echo.connections, 0)
        vm.startAgent()
        yield waitFor(lambda: proc.stderr.count(b"active") == 4, "both forwards to be set up again", 30)
        self.assertEqual((yield exchange(self.path("h.sock"), b"in again")), b"in again")
        self.assertEqual((yield exchange(self.path("g.sock"), b"out again")), b"out again")
        self.assertEqual(self.echo.connections, 2)
        yield self.stopped(proc)

    @inlineCallbacks
    def test_json(self):
        """
        With C{--json} each event is a JSON line on stdout: the forward's
        row and its message.
        """
        proc = self.start("--json", "--forward", self.spec("h.sock"))
        yield waitFor(lambda: b'"active"' in proc.stdout, "the forward to be set up", 30)
        events = [json.loads(line) for line in proc.stdout.splitlines()]
        self.assertEqual((events[-1]["event"], events[-1]["vm"]), ("forward", "default"))
        self.assertEqual(events[-1]["forward"]["listen"], self.path("h.sock"))
        self.assertEqual(events[-1]["forward"]["state"], "active")
        self.assertIn("listening", events[-1]["message"])
        yield self.stopped(proc)

    @inlineCallbacks
    def test_needsDaemon(self):
        """
        C{--forwards} and C{--unforward} need a daemon: a usage error on a
        VM's socket.
        """
        for args in (["--forwards"], ["--unforward", "1"]):
            out, err, code = yield runCLI(self, "--socket-path", self.sock, *args)
            self.assertEqual((out, code), (b"", 2))
            self.assertOneLineError(err, args[0], "needs a prokshy-host daemon")


__all__ = ["DaemonForwardTests", "ForegroundTests"]
