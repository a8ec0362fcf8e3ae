"""
The CLI behind pipes (issue 7, point 5), with real processes:

  - C{prokshy ... | head -c 10}, with one VM, C{--all-vms} or C{--vm}
    twice: the CLI exits on its own, quietly, with status 141, using little
    CPU after the pipe closed, and the remote commands are cancelled;
  - a reader that stops reading for a while (longer than the agent's
    C{--dead-after}): the session survives, because the CLI's reactor is
    never blocked on stdout, and every byte arrives;
  - C{--stdin} to several VMs is streamed to all of them.
"""

import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from prokshy.cli.output import EXIT_PIPE
from tests.hostharness import DEFAULT_SCRIPTS, ROOT, HostHarness, groupAlive, shortTempDir, sleep, waitFor
from tests.system.test_cli_framed import _ENV, CLITestMixin, runCLI, startCLI

#: Runs C{prokshy ARGS | head -c 10} and reports, as JSON, how the CLI
#: ended: its status, its stderr, and the wall and CPU time it used after
#: head exited (the CPU time read from /proc while it is a zombie, before
#: it is reaped).  A CLI still running LIMIT seconds after head exited is
#: killed and reported as such.
_HEAD = r"""
import json, os, select, signal, subprocess, sys, time

limit = float(sys.argv[1])
cli = [sys.executable, "-m", "prokshy.cli.main"] + sys.argv[2:]

def cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

p = subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
head = subprocess.Popen(["head", "-c", "10"], stdin=p.stdout, stdout=subprocess.PIPE)
p.stdout.close()
got = head.stdout.read()
head.wait()
closedAt = time.monotonic()
cpuAtClose = cpu(p.pid)
err = b""
timedOut = False
while True:
    left = closedAt + limit - time.monotonic()
    if left <= 0:
        timedOut = True
        break
    ready, _, _ = select.select([p.stderr], [], [], left)
    if ready:
        chunk = os.read(p.stderr.fileno(), 65536)
        if not chunk:
            break
        err += chunk
if not timedOut:
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
cpuAtEnd = cpu(p.pid)
wall = time.monotonic() - closedAt
if timedOut:
    p.kill()
status = p.wait()
print(json.dumps({
    "status": status, "head": got.decode("latin-1"), "stderr": err.decode("utf-8", "replace"),
    "timed_out": timedOut, "wall_after_close": wall, "cpu_after_close": cpuAtEnd - cpuAtClose,
}))
"""

#: Generous: the CLI must end on its own long before this.
_LIMIT = 60.0


class _HeadMixin(CLITestMixin):
    """
    C{| head -c 10}.
    """

    timeout = 120
    VMS = ("a", "b", "c")
    DAEMON = True

    @inlineCallbacks
    def setUp(self):
        self.dir = shortTempDir(self, "pp")
        self.pids = os.path.join(self.dir, "pids")
        open(self.pids, "w").close()
        scripts = dict(DEFAULT_SCRIPTS, flood="#!/bin/sh\necho $$ >> %s\nexec yes flood\n" % (self.pids,))
        self.h = yield HostHarness(self, vms=self.VMS, scripts=scripts, daemon=self.DAEMON).start()

    @inlineCallbacks
    def head(self, *args):
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-c", _HEAD, str(_LIMIT)] + list(args), env=_ENV, path=ROOT, reactor=reactor,
        )
        self.assertEqual(code, 0, err)
        result = json.loads(out)
        return result

    @inlineCallbacks
    def check(self, args, commands):
        result = yield self.head(*args)
        self.assertFalse(result["timed_out"], result)
        self.assertEqual(result["status"], EXIT_PIPE, result)
        self.assertEqual(result["stderr"], "")
        self.assertEqual(len(result["head"]), 10)
        # A CLI spinning on a closed pipe would use about as much CPU as
        # wall time; a quiet exit takes a fraction of a second of either.
        self.assertLess(result["cpu_after_close"], 2.0, result)
        # the remote commands were cancelled
        with open(self.pids) as f:
            pids = [int(line) for line in f.read().split()]
        self.assertEqual(len(pids), commands)
        yield waitFor(lambda: not any(groupAlive(pid) for pid in pids), "the remote commands to be killed", 10)
        return result


class DirectHeadTests(_HeadMixin, TestCase):
    VMS = ("a",)
    DAEMON = False

    def test_oneVM(self):
        """
        The VM's own console socket, one command.
        """
        return self.check(["--socket-path", self.h.vms["a"].socketPath, "--command", "flood",
                           "--from-string", ""], 1)


class DaemonHeadTests(_HeadMixin, TestCase):
    def test_daemonDefaultVM(self):
        return self.check(["--socket-path", self.h.unixPath, "--command", "flood", "--from-string", ""], 1)

    def test_allVMs(self):
        return self.check(["--socket-path", self.h.unixPath, "--all-vms", "--command", "flood",
                           "--from-string", ""], 3)

    def test_twoVMs(self):
        return self.check(["--connect", "tcp:host=127.0.0.1:port=%d" % (self.h.tcpPort,), "--vm", "a",
                           "--vm", "c", "--command", "flood", "--from-string", ""], 2)


class _Flood(Protocol):
    """
    An original agent's command that writes a lot: 4 MiB, then silence.
    """

    def connectionMade(self):
        self.transport.write(b"y\n" * (2 * 1024 * 1024))


class LineProtocolHeadTests(TestCase):
    """
    The line protocol behind C{| head -c 10}: 141 and quiet too.
    """

    timeout = 120

    @inlineCallbacks
    def test_legacyHead(self):
        directory = shortTempDir(self)
        sock = os.path.join(directory, "old.sock")
        port = reactor.listenUNIX(sock, Factory.forProtocol(_Flood))
        self.addCleanup(port.stopListening)
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-c", _HEAD, str(_LIMIT), "--socket-path", sock, "--protocol", "legacy", "--command", "x",
             "--from-string", "", "--timeout", "30"],
            env=_ENV, path=ROOT, reactor=reactor,
        )
        result = json.loads(out)
        self.assertFalse(result["timed_out"], result)
        self.assertEqual((result["status"], result["stderr"], result["head"]), (EXIT_PIPE, "", "y\ny\ny\ny\ny\n"))


class SlowReaderTests(CLITestMixin, TestCase):
    """
    A reader that stops reading for longer than the agent's C{--dead-after}
    does not cost the session: the CLI keeps answering keepalives while
    credit holds the command back.
    """

    timeout = 120
    SIZE = 8 * 1024 * 1024
    DEAD_AFTER = 1.5

    @inlineCallbacks
    def setUp(self):
        self.h = yield HostHarness(
            self, daemon=False, guestArgs=["--ping-interval", "0.25", "--dead-after", str(self.DEAD_AFTER)]
        ).start()
        self.sock = self.h.vms["vm1"].socketPath

    @inlineCallbacks
    def test_pausedReader(self):
        proc = startCLI(self, ["--socket-path", self.sock, "--command", "zeros", "--from-string", str(self.SIZE)],
                        timeout=100)
        yield waitFor(lambda: proc.out, "the first output", 20)
        proc.transport.pauseProducing()
        held = len(proc.stdout)
        # three times the agent's --dead-after without reading
        yield sleep(3 * self.DEAD_AFTER)
        self.assertLess(held, self.SIZE)
        proc.transport.resumeProducing()
        out, err, code = yield proc.ended
        self.assertEqual((len(out), err, code), (self.SIZE, b"", 0))
        self.assertEqual(out.count(b"\0"), self.SIZE)
        # one session: the agent never took the CLI for gone
        self.assertEqual(self.h.vms["vm1"].deviceService.protocol.link.stats["sessions"], 1)


class StdinFanoutTests(CLITestMixin, TestCase):
    """
    C{--stdin} with several VMs: stdin is read once, without blocking the
    reactor, and every VM gets all of it.
    """

    timeout = 120

    @inlineCallbacks
    def test_stdinToAllVMs(self):
        h = yield HostHarness(self, vms=("a", "b"), scripts=dict(DEFAULT_SCRIPTS, count="#!/bin/sh\nwc -c\n")).start()
        data = os.urandom(1024 * 1024 + 7)
        out, err, code = yield runCLI(self, "--socket-path", h.unixPath, "--all-vms", "--command", "count",
                                      "--stdin", stdin=data, timeout=100)
        self.assertEqual((err, code), (b"", 0))
        self.assertEqual(sorted(out.split(b"\n")[:-1]), [b"[a] %d" % len(data), b"[b] %d" % len(data)])
