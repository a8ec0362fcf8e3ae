"""
The raw simulated channel: bytes through C{prokshy-vmsim} (bhyve mode by
default) with nothing of prokshy in between, the yardstick the stream
benchmarks compare against (bench/forward.py measures it in the same run).

    python bench/rawchannel.py [--mib 32] [--repeat 1] [--window 16384]
                               [--credit channel|side] [--mode bhyve|qemu]

Two processes besides this one: the simulator, and a guest process that
opens the device link (a pty slave) and puts it in raw mode with
C{tty.setraw(fd, TCSANOW)}, as the guest agent does.

  - host->guest: this process writes N MiB to the unix socket; the guest
    process reads the device and counts.  bhyve has no backpressure toward
    the guest (the simulator reads the socket at once and discards what
    would overflow the guest's 23040-byte input queue), so the socket's own
    backpressure cannot pace the writer: that loses most of the bytes.  So
    the writer keeps at most C{--window} bytes sent and not yet read by the
    guest, and the guest tells it how much it has read after every read,
    with an 8-byte count written back through the channel (C{--credit
    channel}, the default: what any credit protocol must do, and the
    guest's writes are also what make the simulator move waiting host bytes
    on into the pty) or over a socketpair outside the simulator
    (C{--credit side}: zero-cost credit; slower here, since the simulator
    then moves host bytes on only when more arrive or every millisecond).
    The default window, 16384, is the one prokshy's guest agent advertises
    on a tty (C{TTY_WINDOW}), so the comparison is like for like; larger
    windows were no faster here, and from 20480 up the simulator's
    estimate of the guest's unread bytes (an upper bound) now and then
    drops a 2 KiB chunk.  Bytes the guest never receives are reported as
    lost (a stall of C{STALL} seconds writes the window off; that time is
    not counted).
  - guest->host: this process connects first and sends one byte; once the
    guest process has read it (so the simulator is serving the client, and
    bhyve drops no output), it writes N MiB to the device and this process
    reads the socket and counts.

Throughput is delivered bytes over the time from the first byte sent to
the last one counted, in MB/s (10**6 bytes).  These machines are noisy:
compare with figures taken in the same run (C{--repeat} prints each).
"""

import argparse
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import time
import tty

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench._rig import procCpuSeconds, startSim, stopAll  # noqa: E402
from prokshy.guest.agent import TTY_WINDOW  # noqa: E402

#: What the guest agent advertises on a tty (prokshy.guest.agent.TTY_WINDOW);
#: the simulator's guest buffer is 23040 bytes (see the module docstring).
WINDOW = TTY_WINDOW

#: Seconds without progress after which bytes in flight are taken as lost.
STALL = 2.0

#: Seconds one direction may take at most.
DEADLINE = 120.0

_COUNT = struct.Struct("!Q")
_BLOCK = 65536


def _cpu():
    t = os.times()
    return t.user + t.system


#: The user + system CPU seconds a process has used so far (L{bench._rig}).
cpuSeconds = procCpuSeconds


def _reap(proc):
    """
    Wait for a guest process; return the CPU seconds it reported (or NaN)
    and how many reads of the device it made.
    """
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    for line in (out or b"").decode(errors="replace").splitlines():
        if line.startswith("cpu "):
            return float(line.split()[1]), int(line.split()[2])
    return float("nan"), 0


# The guest process.

def _openRaw(device):
    fd = os.open(device, os.O_RDWR | os.O_NOCTTY)
    # TCSANOW: TCSAFLUSH would discard input already queued.
    tty.setraw(fd, termios.TCSANOW)
    return fd


def _guestRead(device, n, ctl, credit="side"):
    """
    Count what arrives on the device; report the count after every read
    (on C{ctl}, or with C{credit="channel"} on the device itself); stop at
    C{n} bytes or when C{ctl} closes.  The final count goes on C{ctl}.
    """
    fd = _openRaw(device)
    ctl.sendall(b"ready\n")
    cpu0 = _cpu()
    got = reads = 0
    deadline = time.monotonic() + DEADLINE
    while got < n and time.monotonic() < deadline:
        ready, _, _ = select.select([fd, ctl], [], [], 1.0)
        if fd in ready:
            data = os.read(fd, _BLOCK)
            got += len(data)
            reads += 1
            if credit == "channel":
                os.write(fd, _COUNT.pack(got))
            else:
                ctl.sendall(_COUNT.pack(got))
        if ctl in ready and not ctl.recv(4096):
            break
    ctl.sendall(_COUNT.pack(got))
    os.close(fd)
    print("cpu %.6f %d" % (_cpu() - cpu0, reads), flush=True)


def _guestWrite(device, n, ctl):
    """
    Once the host's go byte arrives on the device, write C{n} bytes to it.
    """
    fd = _openRaw(device)
    ctl.sendall(b"ready\n")
    cpu0 = _cpu()
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready and os.read(fd, 1):
            break
    else:
        return
    block = b"\xa5" * _BLOCK
    sent = 0
    while sent < n and time.monotonic() < deadline:
        sent += os.write(fd, block[: min(_BLOCK, n - sent)])
    ctl.sendall(_COUNT.pack(sent))
    # Stay until the host has read everything (or gives up): closing the
    # last writer early is harmless on a pty the simulator holds, but the
    # host ends it.
    ctl.settimeout(DEADLINE)
    try:
        ctl.recv(1)
    except OSError:
        pass
    os.close(fd)
    print("cpu %.6f 0" % (_cpu() - cpu0,), flush=True)


# The host side.

def _spawnGuest(role, device, n):
    mine, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--guest", role, "--device", device,
         "--bytes", str(n), "--ctl-fd", str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
        env=dict(os.environ, PYTHONPATH=ROOT),
        stdout=subprocess.PIPE,
    )
    theirs.close()
    mine.settimeout(30)
    line = b""
    while not line.endswith(b"\n"):
        chunk = mine.recv(64)
        if not chunk:
            raise RuntimeError("the raw guest process (%s) died before it was ready" % (role,))
        line += chunk
    return proc, mine


def _connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def toGuest(sock, device, n, window=WINDOW, credit="channel"):
    """
    Move C{n} bytes host->guest, at most C{window} unread at a time.  The
    guest's counts (credit) come back through the channel itself
    (C{credit="channel"}: 8 bytes per read, as a credit protocol would
    send them) or over a side channel (C{"side"}).

    @return: dict: seconds, delivered, lost, MBps.
    """
    proc, ctl = _spawnGuest("read" if credit == "side" else "read-channel", device, n)
    cpu0 = _cpu()
    s = _connect(sock)
    s.setblocking(False)
    ctl.setblocking(False)
    block = b"\x5a" * _BLOCK
    sent = acked = 0
    writtenOff = 0      # bytes in flight taken as lost after a stall
    stalls = 0
    pending = b""
    inband = b""
    t0 = time.perf_counter()
    last = lastAck = t0
    deadline = t0 + DEADLINE
    try:
        while acked + writtenOff < n:
            now = time.perf_counter()
            if now > deadline:
                break
            if now - last > STALL:
                # Lost in the channel: write the window off and go on.
                writtenOff = sent - acked
                stalls += 1
                last = now
            room = window - (sent - acked - writtenOff)
            wantWrite = sent < n and room > 0
            r, w, _ = select.select([ctl, s], [s] if wantWrite else [], [], 0.2)
            if ctl in r:
                pending += ctl.recv(65536)
                whole = len(pending) - len(pending) % _COUNT.size
                if whole:
                    acked = max(acked, _COUNT.unpack_from(pending, whole - _COUNT.size)[0])
                    pending = pending[whole:]
                    last = lastAck = time.perf_counter()
            if s in r:
                inband += s.recv(65536)
                whole = len(inband) - len(inband) % _COUNT.size
                if whole:
                    if credit == "channel":
                        acked = max(acked, _COUNT.unpack_from(inband, whole - _COUNT.size)[0])
                        last = lastAck = time.perf_counter()
                    inband = inband[whole:]
            if w:
                size = min(room, n - sent, _BLOCK)
                try:
                    sent += s.send(block[:size])
                except BlockingIOError:
                    pass
    finally:
        ctl.setblocking(True)
        ctl.shutdown(socket.SHUT_WR)
        ctl.settimeout(10)
        rest = b""
        try:
            while True:
                chunk = ctl.recv(65536)
                if not chunk:
                    break
                rest += chunk
        except OSError:
            pass
        guestCpu, reads = _reap(proc)
        s.close()
        ctl.close()
    hostCpu = _cpu() - cpu0
    pending += rest
    whole = len(pending) - len(pending) % _COUNT.size
    if whole:
        acked = _COUNT.unpack_from(pending, whole - _COUNT.size)[0]
    seconds = lastAck - t0
    return {"seconds": seconds, "delivered": acked, "lost": sent - acked, "sent": sent,
            "stalls": stalls, "cpu": {"host": hostCpu, "guest": guestCpu}, "guestReads": reads,
            "MBps": acked / seconds / 1e6 if seconds > 0 else 0.0}


def toHost(sock, device, n):
    """
    Move C{n} bytes guest->host.

    @return: dict: seconds, delivered, lost, MBps.
    """
    proc, ctl = _spawnGuest("write", device, n)
    cpu0 = _cpu()
    s = _connect(sock)
    got = 0
    try:
        s.settimeout(STALL)
        t0 = time.perf_counter()
        s.sendall(b"G")
        t1 = t0
        deadline = t0 + DEADLINE
        while got < n and time.perf_counter() < deadline:
            try:
                data = s.recv(262144)
            except socket.timeout:
                break
            if not data:
                break
            got += len(data)
            t1 = time.perf_counter()
    finally:
        ctl.settimeout(10)
        try:
            written = _COUNT.unpack(ctl.recv(_COUNT.size))[0]
        except (OSError, struct.error):
            written = None
        ctl.close()
        hostCpu = _cpu() - cpu0
        guestCpu, reads = _reap(proc)
        s.close()
    seconds = t1 - t0
    return {"seconds": seconds, "delivered": got, "written": written,
            "cpu": {"host": hostCpu, "guest": guestCpu},
            "lost": (written - got) if written is not None else None,
            "MBps": got / seconds / 1e6 if seconds > 0 else 0.0}


class RawChannel:
    """
    A simulator of its own, for raw measurements one after another (each
    with a fresh guest process and host connection), e.g. between the rows
    of another benchmark.
    """

    def __init__(self, work, simArgs=(), window=WINDOW, credit="channel"):
        here = tempfile.mkdtemp(prefix="raw-", dir=work)
        self.sock, self.dev, self.procs = startSim(here, simArgs)
        self.window = window
        self.credit = credit

    def toGuest(self, n):
        return self._measured(toGuest, self.sock, self.dev, n, self.window, self.credit)

    def toHost(self, n):
        return self._measured(toHost, self.sock, self.dev, n)

    def _measured(self, f, *args):
        """
        Add the simulator's CPU seconds, and the CPU time per MB of all
        three processes, to C{f}'s result.
        """
        before = cpuSeconds(self.procs[0].pid)
        result = f(*args)
        result["cpu"]["simulator"] = cpuSeconds(self.procs[0].pid) - before
        result["cpuMsPerMB"] = 1e9 * sum(result["cpu"].values()) / max(result["delivered"], 1)
        return result

    def stop(self):
        stopAll(self.procs)
        self.procs = []


def measureRaw(work, mib, simArgs=(), window=WINDOW, credit="channel"):
    """
    Start a simulator in a fresh directory under C{work}, move C{mib} MiB
    each way through it, stop it.

    @return: (host->guest dict, guest->host dict), see L{toGuest} and
        L{toHost}.
    """
    raw = RawChannel(work, simArgs, window, credit)
    try:
        n = mib * 1024 * 1024
        down = raw.toGuest(n)
        up = raw.toHost(n)
    finally:
        raw.stop()
    return down, up


def rawThroughput(work, mib, simArgs=(), window=WINDOW, credit="channel"):
    """
    @return: (host->guest MB/s, guest->host MB/s) of the raw simulated
        channel, as L{measureRaw} measures it.
    """
    down, up = measureRaw(work, mib, simArgs, window, credit)
    return down["MBps"], up["MBps"]


def describe(down, up, window):
    return (
        "raw channel host->guest %.1f MB/s (%d bytes in %.3f s, %d lost, %d stalls of %g s, window %d; "
        "CPU %.0f ms/MB)\n"
        "raw channel guest->host %.1f MB/s (%d bytes in %.3f s, %s lost; CPU %.0f ms/MB)"
        % (down["MBps"], down["delivered"], down["seconds"], down["lost"], down["stalls"], STALL, window,
           down["cpuMsPerMB"], up["MBps"], up["delivered"], up["seconds"], up["lost"], up["cpuMsPerMB"])
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1, help="measure this many times (default %(default)s)")
    parser.add_argument("--window", type=int, default=WINDOW,
                        help="host->guest bytes unread by the guest at most (default %(default)s)")
    parser.add_argument("--mode", choices=("bhyve", "qemu"), default="bhyve")
    parser.add_argument("--credit", choices=("channel", "side"), default="channel",
                        help="host->guest: the guest's counts come back through the channel "
                        "or a side channel (default %(default)s)")
    parser.add_argument("--guest", choices=("read", "read-channel", "write"), help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ctl-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.guest:
        ctl = socket.socket(fileno=args.ctl_fd)
        if args.guest == "write":
            _guestWrite(args.device, args.bytes, ctl)
        else:
            _guestRead(args.device, args.bytes, ctl, "channel" if args.guest == "read-channel" else "side")
        return 0
    if not (1 <= args.mib <= 4096 and 1 <= args.repeat <= 100 and args.window >= 1):
        parser.error("--mib must be 1..4096, --repeat 1..100, --window positive")
    work = tempfile.mkdtemp(prefix="praw-")
    try:
        for _ in range(args.repeat):
            down, up = measureRaw(work, args.mib, ["--mode", args.mode], args.window, args.credit)
            print(describe(down, up, args.window), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
