"""
The host daemon (C{twistd prokshy-host}) on a real VM's socket, started
BEFORE the VM: it serves the CLI once the VM is up, forwards a host port to
the guest's HTTP server, and recovers from a guest agent restart, a guest
reboot (C{reboot -f}; QEMU resets the VM, the socket stays) and QEMU
stopped and started again on the same socket path.

The daemon and the VM are shared by the tests of this module, which run
in name order (trial's); each test first checks that both are up. Skipped
unless C{vmtest/run} prepared a guest (C{PROKSHY_VMTEST_WORK}).
"""

import os
import signal
import socket
import subprocess
import time
import urllib.request

from twisted.trial import unittest

from tests.realvm import vm as V
from tests.realvm.test_agent import INFO, SKIP, cli, freePort, report

#: Seconds for the daemon to serve again after the guest or QEMU restarts
#: (boot about 5 s, Twisted's import 3.5 s, the daemon's reconnect within
#: 1 s; 10x margin).
RECOVER_TIMEOUT = 150

_rig = None


class Rig:
    """
    A daemon started first, then the VM it points at.
    """

    def __init__(self):
        for other in list(V._running):
            other.stop()
        self.vm = V.VM(INFO)
        self.daemonSocket = os.path.join(self.vm.dir, "daemon.sock")
        self.daemonLog = os.path.join(self.vm.dir, "daemon.log")
        self.port = freePort()
        self.daemon = subprocess.Popen(
            [V.tool(INFO, "twistd"), "-n", "--pidfile=", "--logfile", self.daemonLog, "prokshy-host",
             "--listen", "unix:" + self.daemonSocket, "--vm", "vm=" + self.vm.socketPath,
             "--forward", "vm=127.0.0.1:%d:127.0.0.1:8000" % (self.port,)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, cwd="/")
        deadline = time.monotonic() + 60
        while not os.path.exists(self.daemonSocket):
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the daemon did not start:\n" + self.log())
            time.sleep(0.05)
        self.statusBefore = self.status()
        self.execBefore = self.cli("--command", "echo", "--from-string", "x", timeout=60)
        t0 = time.monotonic()
        self.vm.start()
        self.waitServing()
        report("REALVM boot to the daemon serving: %.1f s" % (time.monotonic() - t0,))

    def log(self):
        try:
            with open(self.daemonLog) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def cli(self, *args, timeout=120):
        return cli("--socket-path", self.daemonSocket, *args, timeout=timeout)

    def status(self):
        """
        @return: the VM's state in C{prokshy --status} (and the whole output).
        """
        p = self.cli("--status", timeout=60)
        lines = p.stdout.decode().splitlines()
        return (lines[1].split()[1] if len(lines) > 1 and p.returncode == 0 else None), p

    def whoami(self):
        """
        @return: (the guest's boot id, the agent's pid), through the daemon.
        """
        p = self.cli("--command", "whoami", "--from-string", "")
        if p.returncode != 0:
            raise AssertionError("whoami: rc %s %r\n%s" % (p.returncode, p.stderr, self.describe()))
        return tuple(p.stdout.decode().split())

    def waitServing(self, timeout=RECOVER_TIMEOUT):
        """
        Wait until a command runs through the daemon.

        @return: the seconds it took.
        """
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            p = self.cli("--command", "ready", "--from-string", "", timeout=60)
            if p.returncode == 0 and p.stdout == b"READY\n":
                return time.monotonic() - t0
            if time.monotonic() > deadline or self.daemon.poll() is not None:
                raise AssertionError("the daemon does not serve the VM (last: rc %s %r)\n%s" % (
                    p.returncode, p.stderr, self.describe()))
            time.sleep(0.5)

    def describe(self):
        return "daemon log:\n%s\n%s" % (self.log(), self.vm.describe())

    def stop(self):
        if self.daemon.poll() is None:
            os.killpg(self.daemon.pid, signal.SIGTERM)
            try:
                self.daemon.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.daemon.pid, signal.SIGKILL)
                self.daemon.wait(10)
        self.vm.cleanup()


def sharedRig():
    global _rig
    if _rig is None:
        _rig = Rig()
        import atexit

        atexit.register(_rig.stop)
    if not _rig.vm.alive():
        _rig.vm.start()
    _rig.waitServing()
    return _rig


class RealVMDaemonTests(unittest.TestCase):
    """
    The daemon serving a real VM through everything a VM does.
    """

    skip = SKIP
    timeout = 900

    def setUp(self):
        self.rig = sharedRig()

    def fetch(self):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        return opener.open("http://127.0.0.1:%d/body.bin" % (self.rig.port,), timeout=60).read()

    def assertForwardIntact(self):
        with open(INFO["body"], "rb") as f:
            body = f.read()
        got = None
        for _ in range(30):  # the guest's http.server may still be starting after a boot
            try:
                got = self.fetch()
                break
            except OSError:
                time.sleep(1)
        self.assertIsNotNone(got, self.rig.describe())
        self.assertEqual(len(got), len(body))
        self.assertTrue(got == body, "the forwarded body differs from the file served")

    def test_1_startedBeforeTheVM(self):
        """
        Started before QEMU, the daemon said the VM was not up, refused a
        command with a clear error, and then served it once the VM booted:
        the CLI through the daemon, framed, with exit status and stderr,
        and the line protocol (C{nc}-style) on the daemon's socket.
        """
        state, p = self.rig.statusBefore
        self.assertNotEqual(state, "up", p.stdout)
        self.assertEqual(self.rig.execBefore.returncode, 255, self.rig.execBefore.stderr)
        self.assertIn(b"not connected", self.rig.execBefore.stderr)
        self.assertEqual(self.rig.status()[0], "up", self.rig.describe())
        p = self.rig.cli("--command", "fail", "--from-string", "abc")
        self.assertEqual((p.returncode, p.stdout, p.stderr), (3, b"abc", b"to stderr\n"))
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(self.rig.daemonSocket)
        try:
            s.sendall(b"echo through the daemon's line protocol\n")
            got = b""
            while True:
                data = s.recv(65536)
                if not data:
                    break
                got += data
        finally:
            s.close()
        self.assertEqual(got, b"through the daemon's line protocol")

    def test_2_forward(self):
        """
        The daemon's C{--forward} reaches the guest's HTTP server; the body
        is byte for byte the file served.
        """
        self.assertForwardIntact()

    def agentRestart(self, how):
        boot, pid = self.rig.whoami()
        exited = self.rig.vm.countInConsole("INIT: agent exited")
        p = self.rig.cli("--command", "vmctl", "--from-string", how)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.rig.vm.waitConsole("INIT: agent exited", exited + 1, timeout=60)
        seconds = self.rig.waitServing()
        report("REALVM daemon serving again after an agent %s: %.1f s" % (how, seconds))
        newBoot, newPid = self.rig.whoami()
        self.assertEqual(newBoot, boot)
        self.assertNotEqual(newPid, pid)
        self.assertForwardIntact()

    def test_3_agentRestart(self):
        """
        The guest agent is stopped (SIGTERM) and /init starts it again: the
        daemon gets a new session with it by itself, and the forward works
        again.
        """
        self.agentRestart("restart")

    def test_3_agentKilled(self):
        """
        The same with the agent killed (SIGKILL): no goodbye, no cleanup.
        """
        self.agentRestart("kill")

    def test_4_reboot(self):
        """
        The guest reboots (C{reboot -f}; QEMU resets it, its socket stays
        connected): the daemon serves the new boot.
        """
        boot, pid = self.rig.whoami()
        starts = self.rig.vm.countInConsole("INIT: start ")
        p = self.rig.cli("--command", "vmctl", "--from-string", "reboot")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.rig.vm.waitConsole("INIT: start ", starts + 1, timeout=RECOVER_TIMEOUT)
        seconds = self.rig.waitServing()
        report("REALVM daemon serving again after a guest reboot: %.1f s" % (seconds,))
        self.assertNotEqual(self.rig.whoami()[0], boot)
        self.assertForwardIntact()

    def test_5_qemuRestart(self):
        """
        QEMU is stopped (the socket goes away) and started again on the
        same path: meanwhile the daemon answers with a clear error; then it
        reconnects by itself and serves the new boot.
        """
        boot, pid = self.rig.whoami()
        self.rig.vm.stop()
        deadline = time.monotonic() + 60
        while True:
            p = self.rig.cli("--command", "echo", "--from-string", "x", timeout=60)
            if p.returncode == 255:
                break
            self.assertLess(time.monotonic(), deadline, (p.returncode, p.stderr))
            time.sleep(0.5)
        self.assertIn(b"vm", p.stderr)
        t0 = time.monotonic()
        self.rig.vm.start()
        self.rig.waitServing()
        report("REALVM daemon serving again after QEMU restarted: %.1f s" % (time.monotonic() - t0,))
        self.assertNotEqual(self.rig.whoami()[0], boot)
        self.assertForwardIntact()
        self.assertEqual(self.rig.daemon.poll(), None)
