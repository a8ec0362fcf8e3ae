"""
The real guest agent on a real virtio-serial port (QEMU, Linux guest),
driven from the host straight through the VM's console socket: the line
protocol, framed execs, big streams both ways, a forward to an HTTP server
in the guest, and the throughput of one stream each way against the raw
port measured in the same boot.

One VM is booted for the whole module (in the first test that needs it)
and stopped at exit or when another module boots its own. Skipped unless
C{vmtest/run} prepared a guest (C{PROKSHY_VMTEST_WORK}).
"""

import hashlib
import json
import os
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.trial import unittest

from bench._rig import download, upload
from tests.realvm import vm as V

INFO = V.manifest()
SKIP = INFO if isinstance(INFO, str) else None

#: Bytes per timed transfer through prokshy: chosen from a first, untimed
#: transfer of PROBE_BYTES so that one takes about STREAM_SECONDS, within
#: [MIN_STREAM, MAX_STREAM]; or PROKSHY_VMTEST_STREAM_MB.
PROBE_BYTES = 2 << 20
STREAM_SECONDS = 2.0
MIN_STREAM, MAX_STREAM = 4 << 20, 128 << 20
#: Bytes per timed transfer through the raw port (hundreds of MB/s).
RAW_BYTES = 128 << 20
ROUNDS = 3


def streamBytes(probeSeconds):
    fixed = os.environ.get("PROKSHY_VMTEST_STREAM_MB")
    if fixed:
        return int(fixed) << 20
    n = int(PROBE_BYTES / max(probeSeconds, 1e-3) * STREAM_SECONDS) >> 20 << 20
    return max(MIN_STREAM, min(MAX_STREAM, n))

_vm = None


def sharedVM():
    """
    The module's VM, booted on first use (and again if it died).
    """
    global _vm
    if _vm is None or not _vm.alive():
        if _vm is not None:
            _vm.cleanup()
        for other in list(V._running):
            other.stop()
        _vm = V.VM(INFO)
        seconds = _vm.boot()
        report("REALVM boot to agent answering: %.1f s (accel %s)" % (seconds, INFO.get("accel")))
    return _vm


def report(line):
    sys.__stdout__.write(line + "\n")
    sys.__stdout__.flush()


def cli(*args, timeout=600, **kw):
    """
    Run the C{prokshy} CLI of the host venv; return the CompletedProcess.
    """
    return subprocess.run([V.tool(INFO, "prokshy")] + list(args), capture_output=True, timeout=timeout, **kw)


def freePort():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def expectedGen(n, seed):
    """
    The sha256 of what the guest's C{gen} command writes for C{n SEED}.
    """
    base = random.Random(seed).randbytes(1 << 20)
    h, i, left = hashlib.sha256(), 0, n
    while left:
        chunk = (struct.pack(">Q", i) + base[8:])[:left]
        h.update(chunk)
        left -= len(chunk)
        i += 1
    return h.hexdigest()


async def openSession(testCase, socketPath, timeout=60):
    """
    A framed session on C{socketPath} through L{prokshy.host.client}; it is
    closed (and its close waited for) at the end of the test.

    @return: the L{prokshy.host.client.HostProtocol}.
    """
    from prokshy.host.client import HostProtocol

    proto = await UNIXClientEndpoint(reactor, socketPath, timeout=10).connect(
        Factory.forProtocol(lambda: HostProtocol(reactor)))
    lost = Deferred()
    proto.whenLost(lambda reason: lost.called or lost.callback(None))
    testCase.addCleanup(closeSession, proto, lost)
    up = proto.whenSession()
    up.addTimeout(timeout, reactor)
    await up
    proto.lost = lost
    return proto


def closeSession(proto, lost):
    if proto.transport is not None and not lost.called:
        proto.transport.loseConnection()
    lost.addTimeout(10, reactor)
    return lost


class _OnTheSharedVM(unittest.TestCase):
    """
    A test on the module's VM, with a host temporary directory of its own.
    """

    skip = SKIP
    timeout = 900

    def setUp(self):
        self.vm = sharedVM()
        self.tmp = tempfile.mkdtemp(prefix="prokshy-vmtest-host-")
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", self.tmp]))


class RealVMAgentTests(_OnTheSharedVM):
    """
    The guest agent in a real VM, from the host, straight on the VM's socket.
    """

    def test_lineProtocol(self):
        """
        The original line protocol: C{NAME SP DATA LF} and C{NAME LF DATA
        LF} on the raw socket get the command's raw stdout back, as does
        the CLI with C{--protocol legacy}.
        """
        self.assertIn(b"hello from the line protocol", self.vm.lineRequest(
            b"echo hello from the line protocol\n", b"hello from the line protocol", 60))
        self.assertIn(b"the second form", self.vm.lineRequest(
            b"echo\nthe second form\n", b"the second form", 60))
        p = cli("--socket-path", self.vm.socketPath, "--protocol", "legacy", "--timeout", "3",
                "--command", "echo", "--from-string", "via the CLI", timeout=120)
        self.assertEqual((p.returncode, p.stdout), (0, b"via the CLI"), p.stderr)

    def test_framedExec(self):
        """
        A framed exec through the CLI and through the client API: the exit
        status and stderr come back separate from stdout; an unknown
        command is exit 127.
        """
        p = cli("--socket-path", self.vm.socketPath, "--command", "fail", "--from-string", "abc", timeout=120)
        self.assertEqual(p.returncode, 3, p.stderr)
        self.assertEqual(p.stdout, b"abc")
        self.assertEqual(p.stderr, b"to stderr\n")
        p = cli("--socket-path", self.vm.socketPath, "--command", "nosuchcommand", "--from-string", "", timeout=120)
        self.assertEqual(p.returncode, 127, p.stderr)
        self.assertIn(b"no such command", p.stderr)

        async def api():
            proto = await openSession(self, self.vm.socketPath)
            result = await proto.session.exec("fail", stdin=b"through the API")
            self.assertEqual((result.code, result.signal), (3, None))
            self.assertEqual(result.stdout, b"through the API")
            self.assertEqual(result.stderr, b"to stderr\n")
            info = await proto.session.info()
            report("REALVM agent info: %s" % (json.dumps(info, sort_keys=True)[:400],))

        return ensureDeferred(api())

    def test_streamedStdin(self):
        """
        8 MiB of random stdin, streamed through the API and through the
        CLI's C{--stdin}, reach the command intact (its count and sha256
        against ours).
        """
        n = 8 << 20
        payload = os.urandom(n)
        want = b"%d %s\n" % (n, hashlib.sha256(payload).hexdigest().encode())
        path = os.path.join(self.tmp, "stdin.bin")
        with open(path, "wb") as f:
            f.write(payload)
        with open(path, "rb") as f:
            p = cli("--socket-path", self.vm.socketPath, "--command", "digest", "--stdin", stdin=f)
        self.assertEqual((p.returncode, p.stdout), (0, want), p.stderr)

        async def api():
            proto = await openSession(self, self.vm.socketPath)
            out = []
            seconds, result = await upload(
                proto.session, "digest", n, out.append, data=lambda at: payload[at:at + 65536])
            self.assertEqual(result.exitStatus, 0)
            self.assertEqual(b"".join(out), want)
            report("REALVM 8 MiB stdin through the API: %.1f s" % (seconds,))

        return ensureDeferred(api())

    def test_output100MB(self):
        """
        100 MB of output through the CLI, to a file: as many bytes, and the
        same sha256, as the guest wrote (its own count and sha256 on
        stderr, and ours of the same generated stream).
        """
        n, seed = 100 * 1000 * 1000, random.randrange(1 << 30)
        out = os.path.join(self.tmp, "out.bin")
        t0 = time.perf_counter()
        with open(out, "wb") as f:
            p = subprocess.run(
                [V.tool(INFO, "prokshy"), "--socket-path", self.vm.socketPath, "--command", "gen",
                 "--from-string", "%d %d" % (n, seed)], stdout=f, stderr=subprocess.PIPE, timeout=600)
        seconds = time.perf_counter() - t0
        self.assertEqual(p.returncode, 0, p.stderr)
        h, count = hashlib.sha256(), 0
        with open(out, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
                count += len(block)
        self.assertEqual(count, n)
        self.assertEqual(p.stderr.decode().split(), [str(n), h.hexdigest()])
        self.assertEqual(h.hexdigest(), expectedGen(n, seed))
        report("REALVM 100 MB of output through the CLI: %.1f s (%.1f MB/s)" % (seconds, n / seconds / 1e6))

    def test_forward(self):
        """
        C{prokshy --forward} on the VM's socket (the CLI serves it in the
        foreground) reaches the HTTP server on the guest's 127.0.0.1:8000:
        the body fetched twice is byte for byte the file served; SIGTERM
        ends the CLI with 130.
        """
        with open(INFO["body"], "rb") as f:
            body = f.read()
        port = freePort()
        err = open(os.path.join(self.tmp, "forward.err"), "w+b")
        self.addCleanup(err.close)
        p = subprocess.Popen(
            [V.tool(INFO, "prokshy"), "--socket-path", self.vm.socketPath,
             "--forward", "%d:127.0.0.1:8000" % (port,)],
            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)

        def stop():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)

        self.addCleanup(stop)
        deadline = time.monotonic() + 60
        while b"active" not in open(err.name, "rb").read():
            self.assertIsNone(p.poll(), open(err.name, "rb").read())
            self.assertLess(time.monotonic(), deadline, open(err.name, "rb").read())
            time.sleep(0.1)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for attempt in range(2):
            got = None
            for _ in range(30):  # the guest's http.server may still be starting
                try:
                    got = opener.open("http://127.0.0.1:%d/body.bin" % (port,), timeout=30).read()
                    break
                except OSError:
                    time.sleep(1)
            self.assertIsNotNone(got, open(err.name, "rb").read())
            self.assertEqual(len(got), len(body))
            self.assertTrue(got == body, "the forwarded body differs from the file served")
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(30), 130, open(err.name, "rb").read())

    def test_throughput(self):
        """
        One exec stream each way through prokshy (C{zeros} guest->host,
        C{sink} host->guest, on the API), and the raw port with the agent
        stopped (the guest's raw.py), interleaved, 3 rounds in this boot.
        Reported as ratios (printed, and in C{$PROKSHY_VMTEST_RESULTS});
        only the data is asserted, never the time.
        """
        rows = {"g2h": ([], []), "h2g": ([], [])}
        sizes = {}

        async def run():
            for i in range(ROUNDS):
                proto = await openSession(self, self.vm.socketPath)
                if not sizes:
                    probe = await download(proto.session, PROBE_BYTES)
                    sizes["stream"] = streamBytes(probe)
                STREAM_BYTES = sizes["stream"]
                seconds = await download(proto.session, STREAM_BYTES)
                rows["g2h"][0].append(STREAM_BYTES / seconds / 1e6)
                counted = []
                seconds, result = await upload(proto.session, "count", STREAM_BYTES, counted.append)
                self.assertEqual((result.exitStatus, int(b"".join(counted))), (0, STREAM_BYTES))
                rows["h2g"][0].append(STREAM_BYTES / seconds / 1e6)
                result = await proto.session.exec("vmctl", stdin=b"raw %d\n" % (RAW_BYTES,))
                self.assertEqual(result.exitStatus, 0, result.stderr)
                await closeSession(proto, proto.lost)
                g2h, h2g = V.rawChannel(self.vm, RAW_BYTES)
                rows["g2h"][1].append(g2h / 1e6)
                rows["h2g"][1].append(h2g / 1e6)
                self.vm.waitAgent()
                report("REALVM round %d: g2h prokshy %.1f raw %.1f, h2g prokshy %.1f raw %.1f MB/s (%d MiB, raw %d MiB)" % (
                    i + 1, rows["g2h"][0][-1], rows["g2h"][1][-1], rows["h2g"][0][-1], rows["h2g"][1][-1],
                    STREAM_BYTES >> 20, RAW_BYTES >> 20))
            writeRows(rows, sizes["stream"])

        return ensureDeferred(run())


def writeRows(rows, streamBytes):
    """
    Print the throughput rows and add them to C{$PROKSHY_VMTEST_RESULTS}.
    """
    out = []
    for key, label in (("g2h", "guest->host"), ("h2g", "host->guest")):
        ours, raw = rows[key]
        p, b = statistics.median(ours), statistics.median(raw)
        row = {
            "row": "real QEMU virtio-serial (%s), one stream %s" % (INFO.get("accel", "tcg").upper(), label),
            "prokshy": round(p, 2), "baseline": round(b, 2), "unit": "MB/s", "ratio": round(p / b, 4),
            "prokshy_runs": [round(x, 2) for x in ours], "baseline_runs": [round(x, 2) for x in raw],
            "baseline_what": "raw port in the same boot, agent stopped (guest python 32 KiB writes / 64 KiB reads)",
            "bytes": streamBytes, "baseline_bytes": RAW_BYTES,
        }
        out.append(row)
        report("REALVM one stream %s: prokshy %.1f MB/s [%.1f-%.1f], raw %.1f MB/s [%.1f-%.1f], ratio %.3f" % (
            label, p, min(ours), max(ours), b, min(raw), max(raw), p / b))
    path = os.environ.get(V.RESULTS_ENV)
    if path:
        try:
            with open(path) as f:
                old = [r for r in json.load(f) if r.get("row") not in {r2["row"] for r2 in out}]
        except (OSError, ValueError):
            old = []
        with open(path, "w") as f:
            json.dump(old + out, f, indent=1)


def underPTY(args, rows, cols, script, timeout=120):
    """
    Run the CLI with C{args} on a new local pty of C{rows} x C{cols}, as a
    user at a terminal would: C{script} is a list of C{(wait_for, send)}:
    once the output so far holds C{wait_for} (bytes), C{send} is typed.

    @return: C{(exit status, everything the pty showed, the pty's termios
        attributes before and after)}.
    """
    import fcntl
    import select
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    before = termios.tcgetattr(slave)
    env = dict(os.environ, TERM="xterm-256color")
    p = subprocess.Popen([V.tool(INFO, "prokshy")] + list(args), stdin=slave, stdout=slave, stderr=slave,
                         env=env, start_new_session=True)
    shown, steps, deadline = b"", list(script), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if steps and steps[0][0] in shown:
                os.write(master, steps.pop(0)[1])
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    chunk = b""
                shown += chunk
            if p.poll() is not None and not ready:
                break
        after = termios.tcgetattr(slave)
        code = p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
        os.close(slave)
    return code, shown, before, after


class RealVMFeatureTests(_OnTheSharedVM):
    """
    What the simulator cannot tell: files pushed to and pulled from a real
    Linux guest's file system (the agent's --allow-files /srv/files), a
    command's argv, and a command on a real guest pty driven from a local
    pty.
    """

    def test_pushPull(self):
        """
        8 MiB of random bytes pushed into the guest and pulled back: the same
        sha256 (ours, and the guest's in the --json record), the mode kept,
        --preserve keeps the mtime; a path outside --allow-files is refused
        (126, not-allowed).
        """
        n = 8 << 20
        payload = os.urandom(n)
        digest = hashlib.sha256(payload).hexdigest()
        local = os.path.join(self.tmp, "push.bin")
        with open(local, "wb") as f:
            f.write(payload)
        os.chmod(local, 0o640)
        os.utime(local, (1700000000, 1700000000))
        t0 = time.perf_counter()
        p = cli("--socket-path", self.vm.socketPath, "--push", local, "/srv/files/x.bin", "--preserve", "--json")
        pushed = time.perf_counter() - t0
        self.assertEqual(p.returncode, 0, p.stderr)
        record = json.loads(p.stdout)
        self.assertEqual((record["ok"], record["file"]["sha256"], record["file"]["size"]), (True, digest, n))
        back = os.path.join(self.tmp, "back.bin")
        t0 = time.perf_counter()
        p = cli("--socket-path", self.vm.socketPath, "--pull", "/srv/files/x.bin", back, "--preserve")
        pulled = time.perf_counter() - t0
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(back, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), digest)
        st = os.stat(back)
        self.assertEqual((st.st_mode & 0o777, int(st.st_mtime)), (0o640, 1700000000))
        p = cli("--socket-path", self.vm.socketPath, "--pull", "/etc/passwd", back, "--json")
        self.assertEqual(p.returncode, 126, p.stderr)
        self.assertEqual(json.loads(p.stdout)["failure"], "not-allowed")
        report("REALVM 8 MiB push %.1f s, pull %.1f s (CLI runs, sha256 checked)" % (pushed, pulled))

    def test_args(self):
        """
        ARGs reach the command as its argv, exactly (spaces, an empty one, a
        leading dash, UTF-8), apart from its stdin.
        """
        args = ["a b", "", "-x", "h\u00e9llo", "*"]
        p = cli("--socket-path", self.vm.socketPath, "--command", "argv", "--from-string", "data", "--", *args)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.decode("utf-8"), "".join("[%s]\n" % a for a in args) + "stdin 4\n")

    def test_tty(self):
        """
        C{-t} from a local pty of 30 x 100: the command runs on a guest
        terminal of that size with our TERM, a typed line reaches it, its
        exit status comes back, and the local terminal is restored exactly.
        """
        code, shown, before, after = underPTY(
            ["--socket-path", self.vm.socketPath, "-t", "--command", "ttyinfo"], 30, 100,
            [(b"TERM=", b"typed here\r")])
        text = shown.decode("utf-8", "replace")
        self.assertEqual(code, 0, text)
        self.assertIn("tty yes", text)
        self.assertIn("size 30 100", text)
        self.assertIn("TERM=xterm-256color", text)
        self.assertIn("typed [typed here]", text)
        self.assertEqual(before, after)
