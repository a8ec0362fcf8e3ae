"""
A real QEMU VM for tests/realvm: the guest that C{vmtest/run} prepared
(kernel, initrd with the guest agent, C{vmtest.json} in the work dir named
by C{PROKSHY_VMTEST_WORK}), booted under TCG (KVM only where C{kvm_intel}
or C{kvm_amd} is loaded) with one virtio-serial port, C{prokshy}, whose
host end is a QEMU unix socket server.

Everything here is synchronous and bounded: every wait has a hard
timeout, QEMU runs in a session of its own and is stopped by process
group (SIGTERM, then SIGKILL), and at most one host client is connected to
the VM's socket at a time (QEMU would queue a second one unserved).
"""

import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

WORK_ENV = "PROKSHY_VMTEST_WORK"
RESULTS_ENV = "PROKSHY_VMTEST_RESULTS"
PORT_NAME = "prokshy"

#: Seconds from qemu's start to a line-protocol answer from the agent. A
#: boot takes about 5 s and Twisted's import 3.5 s on this machine type
#: (TCG); 15x margin for a loaded machine.
BOOT_TIMEOUT = 120


def manifest():
    """
    @return: the prepared work dir's C{vmtest.json} as a dict, or a string
        saying why there is none (the reason the tests skip).
    """
    work = os.environ.get(WORK_ENV)
    if not work:
        return (
            "%s is not set: the real-VM tests run under vmtest/run "
            "(bash vmtest/run), which prepares a QEMU guest" % (WORK_ENV,)
        )
    path = os.path.join(work, "vmtest.json")
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        return "%s=%s is not prepared (%s): run bash vmtest/run --work %s" % (WORK_ENV, work, e, work)
    for key in ("qemu", "kernel", "initrd"):
        if not os.path.exists(info.get(key, "")):
            return "%s=%s: %s %r is missing: run bash vmtest/run again" % (WORK_ENV, work, key, info.get(key))
    info["work"] = work
    return info


def tool(info, name):
    """
    The path of a console script (C{prokshy}, C{twistd}) of the host venv.
    """
    return os.path.join(info["bin"], name)


_running = set()
_made = set()


@atexit.register
def _stopAll():
    for vm in list(_made):
        vm.cleanup()


class VM:
    """
    One QEMU process with the vmtest guest.

    @ivar socketPath: the host end of the virtio-serial port.
    @ivar dir: a fresh temporary directory (socket, console log, pidfile).
    """

    def __init__(self, info, memory=512, cpus=1, socketPath=None, dir=None, append=""):
        """
        @param append: more kernel command line arguments (e.g.
            C{vmtest.profile=FILE}, read by C{vmtest/init}).
        """
        self.info = info
        self.append = append
        self.memory = memory
        self.cpus = cpus
        self.dir = dir or tempfile.mkdtemp(prefix="prokshy-vmtest-")
        self.socketPath = socketPath or os.path.join(self.dir, "vm.sock")
        self.consolePath = os.path.join(self.dir, "console.log")
        self.process = None
        _made.add(self)

    def command(self):
        accel = self.info.get("accel", "tcg")
        return [
            self.info["qemu"], "-accel", accel, "-m", str(self.memory), "-smp", str(self.cpus),
            "-nographic", "-nodefaults", "-no-user-config",
            "-serial", "file:" + self.consolePath,
            "-kernel", self.info["kernel"], "-initrd", self.info["initrd"],
            "-append", ("console=ttyS0 quiet loglevel=3 panic=-1 " + self.append).strip(),
            "-device", "virtio-serial-pci",
            "-chardev", "socket,id=c0,path=%s,server=on,wait=off" % (self.socketPath,),
            "-device", "virtserialport,chardev=c0,name=" + PORT_NAME,
        ]

    def start(self):
        """
        Start QEMU (not waiting for the guest); the socket exists within
        a few tens of ms.
        """
        assert self.process is None or self.process.poll() is not None
        # The console log is appended to across qemu starts.
        with open(os.path.join(self.dir, "qemu.err"), "ab") as err:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                start_new_session=True,
            )
        _running.add(self)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socketPath):
            if self.process.poll() is not None:
                raise RuntimeError("qemu exited with %s: %s" % (self.process.returncode, self.qemuErrors()))
            if time.monotonic() > deadline:
                raise RuntimeError("qemu made no socket %s in 30 s" % (self.socketPath,))
            time.sleep(0.02)

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def stop(self):
        """
        Stop QEMU: SIGTERM to its process group, SIGKILL after 10 s.
        """
        p = self.process
        if p is not None and p.poll() is None:
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    pass
        _running.discard(self)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        _made.discard(self)

    def console(self):
        try:
            with open(self.consolePath, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]|\x1bc", "", text)

    def qemuErrors(self):
        try:
            with open(os.path.join(self.dir, "qemu.err"), "rb") as f:
                return f.read().decode("utf-8", "replace")[-2000:]
        except OSError:
            return ""

    def describe(self):
        """
        The end of the console and of qemu's stderr, for failure messages.
        """
        return "console (last 3000 chars):\n%s\nqemu stderr:\n%s" % (self.console()[-3000:], self.qemuErrors())

    def countInConsole(self, text):
        return self.console().count(text)

    def waitConsole(self, text, count=1, timeout=BOOT_TIMEOUT):
        """
        Wait until C{text} is in the console C{count} times.
        """
        deadline = time.monotonic() + timeout
        while self.countInConsole(text) < count:
            if not self.alive():
                raise RuntimeError("qemu exited (rc %s) waiting for %r\n%s" % (
                    self.process.returncode, text, self.describe()))
            if time.monotonic() > deadline:
                raise RuntimeError("no %r on the console in %d s\n%s" % (text, timeout, self.describe()))
            time.sleep(0.05)

    def connect(self, timeout=10):
        """
        A plain socket connected to the VM's port (the caller closes it).
        """
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(self.socketPath)
        return s

    def lineRequest(self, request, expect, timeout=BOOT_TIMEOUT):
        """
        The original line protocol, as C{echo REQUEST | nc -U SOCKET}
        would: send C{request}, read until C{expect} has arrived, close.

        @return: everything read.
        """
        s = self.connect()
        try:
            s.sendall(request)
            got = b""
            deadline = time.monotonic() + timeout
            while expect not in got:
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive():
                    raise RuntimeError("line request %r: no %r in %d s (got %r)\n%s" % (
                        request, expect, timeout, got[-500:], self.describe()))
                s.settimeout(min(left, 1.0))
                try:
                    data = s.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    raise RuntimeError("line request %r: the socket closed (got %r)\n%s" % (
                        request, got[-500:], self.describe()))
                got += data
            return got
        finally:
            s.close()

    def waitAgent(self, timeout=BOOT_TIMEOUT, attempt=20):
        """
        Wait until the guest agent answers a line-protocol request. QEMU
        holds a request until a guest program opens the port, but the
        guest's driver discards what reached it while the program that had
        the port open (an agent being stopped, raw.py) was closing it; so
        the request is sent again every C{attempt} seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.lineRequest(b"ready go\n", b"READY", min(attempt, max(1, deadline - time.monotonic())))
                return
            except RuntimeError:
                if time.monotonic() >= deadline or not self.alive():
                    raise

    def boot(self, timeout=BOOT_TIMEOUT):
        """
        Start QEMU and wait for the agent.

        @return: the seconds it took.
        """
        t0 = time.monotonic()
        self.start()
        self.waitAgent(timeout)
        return time.monotonic() - t0


def readUntil(s, marker, deadline, buffered=b""):
    """
    Read from C{s} until C{marker}; return what follows it.
    """
    while marker not in buffered:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError("no %r in time (last %r)" % (marker, buffered[-200:]))
        s.settimeout(left)
        data = s.recv(1 << 20)
        if not data:
            raise RuntimeError("socket closed waiting for %r" % (marker,))
        buffered += data
    return buffered[buffered.index(marker) + len(marker):]


def rawChannel(vm, n, timeout=120):
    """
    The raw port, with the agent stopped (the guest's /init runs raw.py,
    see vmtest/guest/raw.py): N bytes guest->host, then N bytes
    host->guest, counted on the receiving side.

    @return: (guest->host bytes/s, host->guest bytes/s).
    """
    deadline = time.monotonic() + timeout
    s = vm.connect()
    try:
        rest = readUntil(s, b"\nRAWSTART %d\n" % n, deadline)
        t0 = time.perf_counter()
        got, last = len(rest), rest
        while got < n:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            last = s.recv(1 << 20)
            if not last:
                raise RuntimeError("raw guest->host: closed after %d of %d bytes" % (got, n))
            got += len(last)
        g2h = time.perf_counter() - t0
        # what came after the N bytes is the start of RAWREADY
        readUntil(s, b"\nRAWREADY\n", deadline, last[len(last) - (got - n):] if got > n else b"")
        block = b"\0" * (1 << 20)
        t0 = time.perf_counter()
        sent = 0
        s.settimeout(max(0.1, deadline - time.monotonic()))
        while sent < n:
            chunk = block[: min(len(block), n - sent)]
            s.sendall(chunk)
            sent += len(chunk)
        tail = readUntil(s, b"\nRAWDONE ", deadline)
        h2g = time.perf_counter() - t0
        while b"\n" not in tail:
            tail += s.recv(100)
        counted = int(tail.split(b"\n")[0])
        if counted != n:
            raise RuntimeError("raw host->guest: the guest counted %d of %d bytes" % (counted, n))
    finally:
        s.close()
    return n / g2h, n / h2g
