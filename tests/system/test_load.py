"""
A load test of the host daemon: many concurrent framed clients, each
running several commands (100 x 5 here; C{python bench/load.py} runs the
full 500 x 20).  Every result must be correct, and memory is asserted
bounded.  The count is what matters here, not the time.

The daemon runs in this process (see L{tests.hostharness}), on real
sockets.  The framed clients, each a L{prokshy.host.client.HostProtocol}
on its own connection to the daemon's unix socket, run in two child
processes of this module (L{clientMain}), as real clients are processes of
their own; the two simulated bhyve VMs and their guest agents run in child
processes too (C{HostHarness(external=True)}).  Every command is a real
process spawned by an agent.  The agents' limits are raised
so that nothing is refused as C{busy}.

All the clients connect and hold their sessions before any command starts;
then each runs its commands one after the other, checks every output and
exit status byte for byte, and its process reports the counts.  The time
and memory are printed, not asserted (except the memory bound).

C{PROKSHY_LOAD_CLIENTS} and C{PROKSHY_LOAD_COMMANDS} override the counts
(C{bench/load.py} sets them to 500 and 20).
"""

import json
import os
import resource
import sys
import time

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from tests.hostharness import ROOT, HostHarness, serverConnections, rssKiB

CLIENTS = int(os.environ.get("PROKSHY_LOAD_CLIENTS", 100))
COMMANDS = int(os.environ.get("PROKSHY_LOAD_COMMANDS", 5))
CLIENT_PROCESSES = 2
RSS_BOUND_MIB = 300
VMS = ("a", "b")


def raiseFileLimit(wanted=8192):
    """
    Raise the soft limit on open files to C{wanted} (or the hard limit).

    @return: a function restoring the old limit, or None.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return None


def payload(client, command):
    """
    A distinct stdin for every command, of varying length (up to ~2 KiB),
    with bytes that need escaping on the wire (LF, 0xDB).
    """
    head = b"client %03d command %02d\n" % (client, command)
    return head + bytes(range(256)) * ((client + command) % 8) + b"\xdb\n\xdb\xdc"


def rssOf(pid):
    """
    The resident set size of process C{pid} in KiB, or 0 if it is gone.
    """
    try:
        with open("/proc/%d/status" % (pid,)) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _nameOf(connection):
    name = getattr(connection.getHost(), "name", None)
    return os.fsdecode(name) if name is not None else None


# -- the client processes ---------------------------------------------------


@inlineCallbacks
def _runClients(reactor, socketPath, first, count, commands):
    from twisted.internet import stdio
    from twisted.internet.endpoints import UNIXClientEndpoint
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineReceiver

    from prokshy.host.client import HostProtocol

    raiseFileLimit()
    # Connection attempts in flight, all client processes together, stay
    # under the daemon's listen backlog (see HostHarness.throttle).
    connecting = DeferredSemaphore(40 // CLIENT_PROCESSES)

    @inlineCallbacks
    def connect():
        # A unix connect() completes once the connection is in the
        # listener's backlog, so hold the slot until the daemon has
        # accepted it and answered the hello.
        proto = HostProtocol(reactor)
        endpoint = UNIXClientEndpoint(reactor, socketPath, timeout=10)
        yield endpoint.connect(Factory.forProtocol(lambda: proto))
        session = yield proto.whenSession()
        return proto, session

    clients = yield DeferredList([connecting.run(connect) for _ in range(count)], fireOnOneErrback=True)
    clients = [c for ok, c in clients]

    go = Deferred()

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line):
            if line == b"go" and not go.called:
                go.callback(None)

        def connectionLost(self, reason):
            if not go.called:
                go.errback(reason)

    stdio.StandardIO(Control(), reactor=reactor)
    sys.stdout.write("connected %d\n" % (len(clients),))
    sys.stdout.flush()
    yield go

    report = {"ok": 0, "bad": [], "errors": []}

    @inlineCallbacks
    def client(i, session):
        for j in range(commands):
            data = payload(i, j)
            vm = VMS[(i + j) % len(VMS)]
            try:
                result = yield session.exec("cat", data, vm=vm)
            except Exception as e:
                report["errors"].append("client %d command %d: %r" % (i, j, e))
                return
            if (result.exitStatus, result.stdout, result.stderr) == (0, data, b""):
                report["ok"] += 1
            else:
                report["bad"].append(
                    "client %d command %d on %s: status %r, %d bytes out, %d bytes err"
                    % (i, j, vm, result.exitStatus, len(result.stdout), len(result.stderr))
                )

    start = time.monotonic()
    yield DeferredList([client(first + k, s) for k, (p, s) in enumerate(clients)])
    report["seconds"] = time.monotonic() - start
    report["rss_kib"] = rssKiB()
    report["bad"] = report["bad"][:20]
    report["errors"] = report["errors"][:20]
    sys.stdout.write("report %s\n" % (json.dumps(report),))
    sys.stdout.flush()
    for proto, session in clients:
        proto.link.goodbye("done")
        proto.transport.loseConnection()
    yield task.deferLater(reactor, 0.2, lambda: None)


def clientMain(argv):
    """
    C{SOCKET FIRST COUNT COMMANDS}: connect C{COUNT} clients (numbered from
    C{FIRST}), print C{connected N}, wait for C{go} on stdin, run
    C{COMMANDS} commands on each, and print C{report JSON}.
    """
    socketPath, first, count, commands = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    task.react(lambda r: _runClients(r, socketPath, first, count, commands))


class _ClientProcess(ProcessProtocol):
    def __init__(self):
        self.whenConnected = Deferred()
        self.report = Deferred()
        self.ended = Deferred()
        self.out = b""
        self.err = b""

    def outReceived(self, data):
        self.out += data
        for line in self.out.split(b"\n")[:-1]:  # complete lines only
            if line.startswith(b"connected ") and not self.whenConnected.called:
                self.whenConnected.callback(int(line.split()[1]))
            elif line.startswith(b"report ") and not self.report.called:
                self.report.callback(json.loads(line[7:]))

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        why = RuntimeError(
            "client process ended: %s\n%s"
            % (reason.getErrorMessage(), self.err[-3000:].decode("utf-8", "replace"))
        )
        for d in (self.whenConnected, self.report):
            if not d.called:
                d.errback(why)
        self.ended.callback(None)


class LoadTests(TestCase):
    timeout = 240

    @inlineCallbacks
    def test_manyClientsManyCommands(self):
        """
        C{CLIENTS} framed clients, all connected to the daemon at once, each
        run C{COMMANDS} commands one after the other (spread over two VMs);
        every output and exit status is exact, and the daemon's process
        (this one) grows by less than 300 MiB.
        """
        restore = raiseFileLimit()
        if restore is not None:
            self.addCleanup(restore)
        h = yield HostHarness(
            self,
            vms=VMS,
            tcp=False,
            external=True,
            guestArgs=["--max-concurrency", "32", "--max-queue", "2000"],
        ).start()
        baseline = rssKiB()
        peak = [baseline]
        sampler = task.LoopingCall(lambda: peak.append(max(peak[-1], rssKiB())))
        sampler.start(0.25)
        self.addCleanup(lambda: sampler.running and sampler.stop())

        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
        per = CLIENTS // CLIENT_PROCESSES
        procs = []
        for k in range(CLIENT_PROCESSES):
            proc = _ClientProcess()
            args = [sys.executable, "-m", "tests.system.test_load", h.unixPath, str(k * per), str(per), str(COMMANDS)]
            reactor.spawnProcess(proc, sys.executable, args, env=env, path=ROOT)
            procs.append(proc)
            self.addCleanup(self._reap, proc)

        connectStart = time.monotonic()
        counts = yield DeferredList([p.whenConnected for p in procs], fireOnOneErrback=True)
        connectTime = time.monotonic() - connectStart
        self.assertEqual(sum(c for ok, c in counts), CLIENTS)
        daemonSide = [c for c in serverConnections(reactor) if _nameOf(c) == h.unixPath]
        self.assertEqual(len(daemonSide), CLIENTS, "the daemon does not hold every client at once")

        start = time.monotonic()
        for p in procs:
            p.transport.write(b"go\n")
        reports = yield DeferredList([p.report for p in procs], fireOnOneErrback=True)
        elapsed = time.monotonic() - start
        reports = [r for ok, r in reports]
        sampler.stop()
        peak.append(max(peak[-1], rssKiB()))
        growth = (peak[-1] - baseline) / 1024.0
        total = CLIENTS * COMMANDS
        vmRss = [rssOf(vm.external.transport.pid) for vm in h.vms.values()]
        sys.stdout.write(
            "\nload: %d clients (connected in %.1f s) x %d commands = %d execs in %.1f s (%.0f/s); "
            "daemon RSS %.0f MiB at start, peak growth %.1f MiB; client processes %s MiB; VM processes %s MiB\n"
            % (CLIENTS, connectTime, COMMANDS, total, elapsed, total / elapsed, baseline / 1024.0, growth,
               "/".join("%.0f" % (r["rss_kib"] / 1024.0) for r in reports),
               "/".join("%.0f" % (r / 1024.0) for r in vmRss))
        )
        errors = sum((r["errors"] for r in reports), [])
        bad = sum((r["bad"] for r in reports), [])
        self.assertEqual(errors, [])
        self.assertEqual(bad, [])
        self.assertEqual(sum(r["ok"] for r in reports), total)
        self.assertLess(growth, RSS_BOUND_MIB)
        for vm in h.daemon.vms.values():
            self.assertEqual(vm.state, "up")
            self.assertEqual(vm.sessions, 1, "a VM's session was lost under load")
            self.assertEqual(vm.protocol.mux.streams, {})
        yield DeferredList([p.ended for p in procs])

    def _reap(self, proc):
        if proc.ended.called:
            return None
        sys.stderr.write("client process output: %r %r\n" % (proc.out[-2000:], proc.err[-3000:]))
        try:
            proc.transport.signalProcess("KILL")
        except Exception:
            pass
        return proc.ended


if __name__ == "__main__":
    clientMain(sys.argv[1:])
