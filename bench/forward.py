"""
Forwarded TCP streams through one simulated VM channel, each as a ratio to
the raw channel measured in the same run (issue 9: one stream should reach
at least 50% of the raw channel each way).

    python bench/forward.py [--mib 32] [--agg-mib 4] [--streams 16]
                            [--raw-mib 32] [--repeat 1] [--mode bhyve|qemu]
                            [--profile DIR] [--py-spy DIR] [--only ROWS]

The real processes, as in use: C{prokshy-vmsim} (bhyve mode by default),
the guest agent (C{twistd -n prokshy-guest --device D}, its default
allowlists) and the host daemon::

    twistd -n prokshy-host --socket-path S --listen unix:W/daemon.sock
        --forward 127.0.0.1:F1:127.0.0.1:SINK   --forward 127.0.0.1:F2:127.0.0.1:SOURCE
        --reverse 127.0.0.1:R1:127.0.0.1:SINK   --reverse 127.0.0.1:R2:127.0.0.1:SOURCE

Two TCP servers in this process on 127.0.0.1 stand for the services on
either side (host and guest share the loopback here): SINK reads an 8-byte
tag, then counts bytes (and their CRC-32) until EOF; SOURCE reads a tag and
a size, sends that many bytes, then shuts down its write side.  The
clients, in this process too, connect to the forwards' listen ports:

  - forward host->guest: a host client sends N bytes to F1, through the
    daemon, the channel and the agent to SINK (the guest's service);
  - forward guest->host: a host client asks F2 for N bytes, which SOURCE
    (the guest's service) sends;
  - reverse guest->host: a guest client sends N bytes to R1 (the agent's
    listener), through the channel and the daemon to SINK (the host's);
  - reverse host->guest: a guest client asks R2 for N bytes from SOURCE
    (the host's service);
  - the same four with C{--streams} connections at once, each moving
    C{--agg-mib} MiB (the aggregate: all bytes over the time from the first
    connect to the last byte).

Every transfer is checked (byte count and CRC-32).  A row's time runs from
the client's connect to the last byte counted at the receiving end.  The
raw channel (L{bench.rawchannel}, nothing of prokshy) is measured in a
simulator of its own with the same options: first, then just before each
row in that row's direction, and last.  These machines are noisy (the raw
channel alone varies several-fold from one measurement to the next), so
each row is shown as a ratio to the raw figure taken just before it
("ratio"; with C{--repeat N}, the median of its N ratios) and to the best
raw figure of the run in its direction ("/best", the conservative one).
Each row also shows the CPU time all the processes spent per MB moved and
each one's share of a core: a row whose processes together use about one
core is bound by latency (the windows' round trips), not by any one
process running flat out.

C{--profile DIR}: run the agent and the daemon under twistd's cProfile
(C{--profile --profiler cprofile --savestats}) and print their top
functions by cumulative and by self time (cProfile slows them: read the
ratios of a run without it).  C{--py-spy DIR}: sample the agent, the daemon
and the simulator with py-spy (if installed) during the rows instead, at
little cost, and print the same tables from the samples.
"""

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench._rig import freePort, startVM, stopAll  # noqa: E402
from bench.rawchannel import WINDOW, RawChannel, cpuSeconds  # noqa: E402

_TAG = struct.Struct("!Q")
_REQUEST = struct.Struct("!QQ")
_BLOCK = 65536
_PATTERN = bytes(range(256)) * (_BLOCK // 256)
MiB = 1024 * 1024

ROWS = ("fwd-h2g", "fwd-g2h", "rev-h2g", "rev-g2h", "fwd-h2g-agg", "fwd-g2h-agg", "rev-h2g-agg", "rev-g2h-agg")


def expectedCrc(n, _cache={}):
    """
    @return: the CRC-32 of the first C{n} bytes of the repeated pattern.
    """
    if n not in _cache:
        crc, left = 0, n
        while left:
            piece = _PATTERN[: min(left, _BLOCK)]
            crc = zlib.crc32(piece, crc)
            left -= len(piece)
        _cache[n] = crc
    return _cache[n]


# The services.

class Sink(asyncio.Protocol):
    """
    Read an 8-byte tag, then count bytes until EOF; then resolve the tag's
    future in C{waiters} with (count, crc, time of the last byte).
    """

    def __init__(self, waiters):
        self.waiters = waiters
        self.head = b""
        self.tag = None
        self.count = 0
        self.crc = 0
        self.last = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.tag is None:
            self.head += data
            if len(self.head) < _TAG.size:
                return
            self.tag = _TAG.unpack_from(self.head)[0]
            data = self.head[_TAG.size:]
            self.head = b""
        if data:
            self.count += len(data)
            self.crc = zlib.crc32(data, self.crc)
            self.last = time.perf_counter()

    def eof_received(self):
        self._done(None)
        return False

    def connection_lost(self, exc):
        self._done(exc or ConnectionError("closed before EOF"))

    def _done(self, exc):
        fut = self.waiters.pop(self.tag, None) if self.tag is not None else None
        if fut is not None and not fut.done():
            if exc is None:
                fut.set_result((self.count, self.crc, self.last))
            else:
                fut.set_exception(exc)


class Source(asyncio.Protocol):
    """
    Read a tag and a size; send that many bytes of the pattern, as fast as
    the connection takes them; then shut down the write side.
    """

    def __init__(self):
        self.head = b""
        self.left = None
        self.paused = False

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.left is not None:
            return
        self.head += data
        if len(self.head) >= _REQUEST.size:
            self.left = _REQUEST.unpack_from(self.head)[1]
            self._pump()

    def _pump(self):
        while not self.paused and self.left:
            piece = _PATTERN[: min(self.left, _BLOCK)]
            self.left -= len(piece)
            self.transport.write(piece)
        if self.left == 0 and not self.transport.is_closing():
            self.left = -1
            self.transport.write_eof()

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        if self.left and self.left > 0:
            self._pump()

    def eof_received(self):
        return False


# The clients.

class Bench:
    def __init__(self, ports, timeout):
        self.ports = ports
        self.timeout = timeout
        self.waiters = {}
        self.tags = iter(range(1, 1 << 62))

    async def send(self, port, n):
        """
        Send C{n} bytes through C{port} to SINK.

        @return: (start, end) times.
        """
        tag = next(self.tags)
        closed = None
        fut = asyncio.get_running_loop().create_future()
        self.waiters[tag] = fut
        t0 = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            writer.write(_TAG.pack(tag))
            left = n
            while left:
                piece = _PATTERN[: min(left, _BLOCK)]
                left -= len(piece)
                writer.write(piece)
                await writer.drain()
            writer.write_eof()
            # The sink sends nothing back: the connection's end before the
            # sink's EOF means the forward closed it (no session yet, say).
            closed = asyncio.ensure_future(reader.read())
            done, _ = await asyncio.wait([fut, closed], timeout=self.timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if fut not in done:
                if closed in done:
                    await asyncio.wait([fut], timeout=1.0)
                if not fut.done():
                    raise AssertionError("port %d: the connection ended before the sink saw EOF" % (port,)
                                         if closed.done() else "port %d: no EOF at the sink within %gs"
                                         % (port, self.timeout))
            count, crc, last = fut.result()
        finally:
            self.waiters.pop(tag, None)
            if closed is not None:
                closed.cancel()
        writer.close()
        if count != n or crc != expectedCrc(n):
            raise AssertionError("sink on port %d got %d bytes (crc %08x), wanted %d (crc %08x)"
                                 % (port, count, crc, n, expectedCrc(n)))
        return t0, last if last is not None else time.perf_counter()

    async def fetch(self, port, n):
        """
        Ask C{port}'s SOURCE for C{n} bytes and read them to EOF.

        @return: (start, end) times.
        """
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4 * _BLOCK)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(_REQUEST.pack(next(self.tags), n))
        count, crc, last = 0, 0, None

        async def readAll():
            nonlocal count, crc, last
            while True:
                data = await reader.read(4 * _BLOCK)
                if not data:
                    return
                count += len(data)
                crc = zlib.crc32(data, crc)
                last = time.perf_counter()

        try:
            await asyncio.wait_for(readAll(), self.timeout)
        finally:
            writer.close()
        if count != n or crc != expectedCrc(n):
            raise AssertionError("source via port %d gave %d bytes (crc %08x), wanted %d (crc %08x)"
                                 % (port, count, crc, n, expectedCrc(n)))
        return t0, last if last is not None else time.perf_counter()

    async def row(self, kind, port, n, streams):
        """
        C{streams} transfers of C{n} bytes at once.

        @return: MB/s over all of them.
        """
        go = self.send if kind == "send" else self.fetch
        spans = await asyncio.gather(*[go(port, n) for _ in range(streams)])
        t0 = min(s for s, _ in spans)
        t1 = max(e for _, e in spans)
        return n * streams / (t1 - t0) / 1e6, t1 - t0

    async def ready(self, deadline):
        """
        Wait until a 1-byte transfer succeeds through every forward.
        """
        pending = {"fwd-sink": ("send", self.ports["F1"]), "fwd-source": ("fetch", self.ports["F2"]),
                   "rev-sink": ("send", self.ports["R1"]), "rev-source": ("fetch", self.ports["R2"])}
        last = {}
        saved, self.timeout = self.timeout, 3.0
        try:
            while pending and time.monotonic() < deadline:
                for name, (kind, port) in list(pending.items()):
                    try:
                        await (self.send if kind == "send" else self.fetch)(port, 1)
                    except (OSError, AssertionError, asyncio.TimeoutError) as e:
                        last[name] = "%s: %s" % (type(e).__name__, e)
                    else:
                        del pending[name]
                if pending:
                    await asyncio.sleep(0.2)
        finally:
            self.timeout = saved
        if pending:
            raise RuntimeError("forwards not ready: %s" % (", ".join("%s (%s)" % (k, last.get(k)) for k in pending),))


# Processes.

def startDaemon(work, sock, ports, twistdArgs=()):
    log = os.path.join(work, "daemon.log")
    ctl = os.path.join(work, "daemon.sock")
    f = "127.0.0.1:%d:127.0.0.1:%d"
    cmd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
           "--logfile", log] + list(twistdArgs) + [
        "prokshy-host", "--socket-path", sock, "--listen", "unix:" + ctl,
        "--forward", f % (ports["F1"], ports["SINK"]), "--forward", f % (ports["F2"], ports["SOURCE"]),
        "--reverse", f % (ports["R1"], ports["SINK"]), "--reverse", f % (ports["R2"], ports["SOURCE"])]
    proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=ROOT), cwd=work)
    return proc, log, ctl


def _cli(ctl, *args):
    """
    Run the prokshy CLI against the daemon at C{ctl}; its completed process.
    """
    return subprocess.run(
        [sys.executable, "-c", "import sys; from prokshy.cli.main import main; sys.exit(main())",
         "--socket-path", ctl] + list(args),
        capture_output=True, text=True, timeout=20, env=dict(os.environ, PYTHONPATH=ROOT))


def listForwards(ctl):
    try:
        out = _cli(ctl, "--forwards", "--json")
    except (OSError, subprocess.SubprocessError) as e:
        return "(--forwards failed: %s)" % (e,)
    rows = []
    for line in out.stdout.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        rows.append("  %s %-7s %s -> %s %s conns=%s total=%s to_target=%s from_target=%s"
                    % (r.get("id"), r.get("direction"), r.get("listen"), r.get("target"), r.get("state"),
                       r.get("connections"), r.get("total_connections"), r.get("bytes_to_target"),
                       r.get("bytes_from_target")))
    return "\n".join(rows) or "(--forwards: %s)" % ((out.stderr or out.stdout).strip()[:300],)


def daemonStatus(ctl):
    """
    The VM's link counters, as the daemon's --status --json shows them.
    """
    try:
        out = _cli(ctl, "--status", "--json")
    except (OSError, subprocess.SubprocessError) as e:
        return "(--status failed: %s)" % (e,)
    lines = []
    try:
        d = json.loads(out.stdout)
    except ValueError:
        d = {}
    if isinstance(d, dict):
        for vm in d.get("vms", []):
            lines.append("  vm %s: %s, rtt %s ms, in %s out %s bytes, retransmits %s, resyncs %s, skipped %s"
                         % (vm.get("name"), vm.get("state"), vm.get("rtt_ms"), vm.get("bytes_in"),
                            vm.get("bytes_out"), vm.get("retransmits"), vm.get("resyncs"), vm.get("skipped_bytes")))
    return "\n".join(lines) or "(--status: %s)" % ((out.stderr or out.stdout).strip()[:300],)


def pySpy():
    found = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    return found if os.path.exists(found) else None


def startSpies(outdir, pids, rate=250):
    spies = []
    exe = pySpy()
    if exe is None:
        print("py-spy not found: no profile", file=sys.stderr)
        return spies
    for name, pid in pids.items():
        out = os.path.join(outdir, name + ".collapsed")
        spies.append((name, out, subprocess.Popen(
            [exe, "record", "-p", str(pid), "-r", str(rate), "-f", "raw", "-o", out, "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    time.sleep(1.0)
    return spies


def stopSpies(spies):
    for _, _, p in spies:
        p.send_signal(signal.SIGINT)
    for _, _, p in spies:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _short(frame):
    m = _FRAME.match(frame)
    if not m:
        return frame
    return "%s (%s)" % (m.group("func"), _shortPath(m.group("file")))


#: Frames that only dispatch (the reactor's loop and its logging context):
#: left out of the cumulative tables, where they would top every one.
_DISPATCH = re.compile(
    r"^(<module>|_run_code|_run_module_as_main|main|run|runApp|runReactorWithLogging|"
    r"ReactorBase\.(run|mainLoop)|mainLoop|ApplicationRunner\.\w+|UnixApplicationRunner\.\w+|"
    r"EPollReactor\.doPoll|doPoll|callWithLogger|callWithContext|\w*ContextTracker\.callWithContext|"
    r"_PollLikeMixin\._doReadOrWrite|_doReadOrWrite|Runner\.run|BaseEventLoop\.\w+|Handle\._run)(?= |$)")

#: Where a reactor waits: samples and time there are idle.
_WAIT = re.compile(r"^(EPollReactor\.doPoll|EpollSelector\.select|\{method 'poll' of 'select\.epoll' objects\})")


def collapsedSummary(path, top=12):
    """
    Self and cumulative shares per function of py-spy's raw (collapsed)
    samples, leaving out those waiting in epoll (py-spy here does not
    always tell them from running ones).
    """
    selfs, cums = collections.Counter(), collections.Counter()
    total = waiting = 0
    try:
        with open(path) as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not stack:
                    continue
                n = int(count)
                frames = [_short(fr) for fr in stack.split(";")]
                if _WAIT.match(frames[-1]):
                    waiting += n
                    continue
                total += n
                selfs[frames[-1]] += n
                for fr in set(frames):
                    if not _DISPATCH.match(fr):
                        cums[fr] += n
    except OSError as e:
        return "  (no samples: %s)" % (e,)
    if not total:
        return "  (no samples)"
    lines = ["  %d samples working (%d more in epoll, left out); by self time:" % (total, waiting)]
    lines += ["    %5.1f%%  %s" % (100.0 * n / total, fr) for fr, n in selfs.most_common(top)]
    lines.append("  by cumulative time (the reactor's dispatch frames left out):")
    lines += ["    %5.1f%%  %s" % (100.0 * n / total, fr) for fr, n in cums.most_common(top)]
    return "\n".join(lines)


def cprofileSummary(path, top=15):
    """
    The top functions of a cProfile file by self and by cumulative time, as
    shares of the time the process was busy (its whole life less the time
    in epoll).
    """
    import pstats

    if not os.path.exists(path):
        return "  (no profile written at %s)" % (path,)
    stats = pstats.Stats(path).stats
    rows = []
    waited = 0.0
    for (filename, line, func), (cc, nc, tt, ct, callers) in stats.items():
        name = func if filename == "~" else "%s (%s:%d)" % (func, _shortPath(filename), line)
        if _WAIT.match(name) or (filename == "~" and "poll' of 'select.epoll" in func):
            waited += tt
            continue
        rows.append((name, nc, tt, ct))
    busy = sum(tt for _, _, tt, _ in rows)
    if busy <= 0:
        return "  (nothing recorded)"
    out = ["  busy %.2f s (plus %.2f s waiting in epoll); by self time:" % (busy, waited)]
    out.append("    %6s %8s %7s  %s" % ("self", "calls", "us/call", "function"))
    for name, nc, tt, ct in sorted(rows, key=lambda r: -r[2])[:top]:
        out.append("    %5.1f%% %8d %7.1f  %s" % (100 * tt / busy, nc, 1e6 * tt / max(nc, 1), name))
    out.append("  by cumulative time (the reactor's dispatch frames left out):")
    out.append("    %6s %8s  %s" % ("cum", "calls", "function"))
    cum = [r for r in rows if not _DISPATCH.match(r[0])]
    for name, nc, tt, ct in sorted(cum, key=lambda r: -r[3])[:top]:
        out.append("    %5.1f%% %8d  %s" % (100 * min(ct, busy) / busy, nc, name))
    return "\n".join(out)


def _shortPath(path):
    for cut in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if cut in path:
            return path.split(cut, 1)[1]
    return path


# The run.

def stolenSeconds():
    """
    @return: the CPU time the hypervisor has taken from this machine (all
        its CPUs together), from /proc/stat; 0 where it is not known.
    """
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


#: name: (client kind, forward port, single stream?, direction)
PLAN = {
    "fwd-h2g": ("send", "F1", True, "h2g"), "fwd-g2h": ("fetch", "F2", True, "g2h"),
    "rev-h2g": ("fetch", "R2", True, "h2g"), "rev-g2h": ("send", "R1", True, "g2h"),
    "fwd-h2g-agg": ("send", "F1", False, "h2g"), "fwd-g2h-agg": ("fetch", "F2", False, "g2h"),
    "rev-h2g-agg": ("fetch", "R2", False, "h2g"), "rev-g2h-agg": ("send", "R1", False, "g2h"),
}


def parseArgs(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=32, help="MiB per single-stream row (default %(default)s)")
    parser.add_argument("--agg-mib", type=int, default=4,
                        help="MiB per stream in the aggregate rows (default %(default)s)")
    parser.add_argument("--streams", type=int, default=16, help="streams in the aggregate rows (default %(default)s)")
    parser.add_argument("--raw-mib", type=int, default=32,
                        help="MiB for each raw-channel measurement (default %(default)s)")
    parser.add_argument("--mode", choices=("bhyve", "qemu"), default="bhyve")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the rows this many times; each row's median ratio is reported (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a row may take at most")
    parser.add_argument("--only", default=",".join(ROWS),
                        help="rows to run, comma-separated (default: all: %(default)s)")
    parser.add_argument("--profile", metavar="DIR", help="run the agent and the daemon under cProfile, files in DIR")
    parser.add_argument("--py-spy", metavar="DIR",
                        help="sample the agent, daemon, simulator and this process with py-spy, files in DIR")
    args = parser.parse_args(argv)
    only = [r for r in args.only.split(",") if r]
    bad = [r for r in only if r not in ROWS]
    if bad:
        parser.error("unknown rows %s (have %s)" % (", ".join(bad), ", ".join(ROWS)))
    for name in ("mib", "agg_mib", "raw_mib"):
        if not 1 <= getattr(args, name) <= 4096:
            parser.error("--%s must be 1..4096" % (name.replace("_", "-"),))
    if not 1 <= args.streams <= 500:
        parser.error("--streams must be 1..500")
    if not 1 <= args.repeat <= 20:
        parser.error("--repeat must be 1..20")
    if not 1 <= args.timeout <= 3600:
        parser.error("--timeout must be 1..3600")
    return args, only


def measureAll(args, only):
    """
    Start the processes, measure the raw channel first, then the rows
    C{only} (each after a raw measurement in its direction), then the
    raw channel last; stop the processes.

    @return: a dict: first, last (raw (host->guest, guest->host) dicts),
        results (row name: a list of dicts or failure strings),
        forwards (the daemon's view at the end), work, agentLog, daemonLog.
    """
    simArgs = ["--mode", args.mode]
    work = tempfile.mkdtemp(prefix="pfwd-")
    procs, raw, spies = [], None, []
    results, forwards = {}, ""
    try:
        # The raw channel first (as rawThroughput would), in a simulator of
        # its own that stays up for the measurements between the rows.
        raw = RawChannel(work, simArgs)
        first = (raw.toGuest(args.raw_mib * MiB), raw.toHost(args.raw_mib * MiB))
        ports = {k: freePort() for k in ("SINK", "SOURCE", "F1", "F2", "R1", "R2")}
        profDir = os.path.abspath(args.profile) if args.profile else None
        guestTw = daemonTw = ()
        if profDir:
            os.makedirs(profDir, exist_ok=True)
            guestTw = ["--profile", os.path.join(profDir, "guest.prof"), "--profiler", "cprofile", "--savestats"]
            daemonTw = ["--profile", os.path.join(profDir, "daemon.prof"), "--profiler", "cprofile", "--savestats"]
        vm = os.path.join(work, "vm")
        os.mkdir(vm)
        sock, agentLog, procs = startVM(vm, simArgs, twistdArgs=guestTw)
        daemon, daemonLog, ctl = startDaemon(work, sock, ports, daemonTw)
        procs.append(daemon)
        try:
            results = asyncio.run(_rows(args, only, ports, procs, spies, raw))
            forwards = listForwards(ctl) + "\n" + daemonStatus(ctl)
        finally:
            stopSpies(spies)
        last = (raw.toGuest(args.raw_mib * MiB), raw.toHost(args.raw_mib * MiB))
    finally:
        stopAll(procs)
        if raw is not None:
            raw.stop()
    return {"first": first, "last": last, "results": results, "forwards": forwards, "work": work,
            "agentLog": agentLog, "daemonLog": daemonLog, "profDir": profDir}


def main(argv=None):
    args, only = parseArgs(argv)
    m = measureAll(args, only)
    first, last, results, forwards = m["first"], m["last"], m["results"], m["forwards"]
    work, agentLog, daemonLog, profDir = m["work"], m["agentLog"], m["daemonLog"], m["profDir"]
    _report(args, first, last, results, forwards)
    if args.profile:
        for name in ("daemon", "guest"):
            print("\ncProfile of the %s:" % (name,))
            print(cprofileSummary(os.path.join(profDir, name + ".prof")))
    if args.py_spy:
        for name in ("simulator", "daemon", "guest", "bench"):
            print("\npy-spy of the %s (samples while it ran Python code):" % (name,))
            print(collapsedSummary(os.path.join(os.path.abspath(args.py_spy), name + ".collapsed")))
    ok = all(isinstance(v, dict) for runs in results.values() for v in runs)
    if ok:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("\nlogs kept: %s, %s" % (agentLog, daemonLog))
    return 0 if ok else 1


async def _row(args, bench, ports, pids, raw, name):
    """
    One row, after a raw measurement in its direction.

    @return: a dict (MBps, seconds, raw, cpu, cpuMsPerMB) or a string
        saying why it failed.
    """
    kind, port, single, direction = PLAN[name]
    mib, streams = (args.mib, 1) if single else (args.agg_mib, args.streams)
    # The raw channel just before the row, in the row's direction (these
    # machines are noisy; see bench/rawchannel.py).
    r = (raw.toGuest if direction == "h2g" else raw.toHost)(args.raw_mib * MiB)
    before = {k: cpuSeconds(pid) for k, pid in pids.items()}
    stolen = stolenSeconds()
    try:
        mbps, seconds = await asyncio.wait_for(bench.row(kind, ports[port], mib * MiB, streams), args.timeout)
    except (OSError, AssertionError, asyncio.TimeoutError) as e:
        value = "FAILED: %s: %s" % (type(e).__name__, e)
        print("  %s: %s" % (name, value), file=sys.stderr, flush=True)
        return value
    cpu = {k: cpuSeconds(pid) - before[k] for k, pid in pids.items()}
    stolen = stolenSeconds() - stolen
    value = {"MBps": mbps, "seconds": seconds, "raw": r, "cpu": {k: v / seconds for k, v in cpu.items()},
             "stolen": stolen / seconds / (os.cpu_count() or 1),
             "cpuMsPerMB": 1e3 * sum(cpu.values()) / (mib * MiB * streams / 1e6)}
    print("  %s: %.1f MB/s in %.2f s (raw just before: %.1f MB/s)" % (name, mbps, seconds, r["MBps"]),
          file=sys.stderr, flush=True)
    return value


async def _rows(args, only, ports, procs, spies, raw):
    loop = asyncio.get_running_loop()
    bench = Bench(ports, args.timeout)
    servers = [
        await loop.create_server(lambda: Sink(bench.waiters), "127.0.0.1", ports["SINK"]),
        await loop.create_server(Source, "127.0.0.1", ports["SOURCE"]),
    ]
    pids = {"simulator": procs[0].pid, "guest": procs[1].pid, "daemon": procs[2].pid, "bench": os.getpid()}
    results = {}
    try:
        await bench.ready(time.monotonic() + 60)
        if args.py_spy:
            outdir = os.path.abspath(args.py_spy)
            os.makedirs(outdir, exist_ok=True)
            spies.extend(startSpies(outdir, pids))
        for _ in range(args.repeat):
            for name in only:
                results.setdefault(name, []).append(await _row(args, bench, ports, pids, raw, name))
    finally:
        for s in servers:
            s.close()
    return results


def _report(args, first, last, results, forwards):
    samples = {"h2g": [first[0]], "g2h": [first[1]]}
    for name, runs in results.items():
        for value in runs:
            if isinstance(value, dict):
                samples[PLAN[name][3]].append(value["raw"])
    samples["h2g"].append(last[0])
    samples["g2h"].append(last[1])
    best = {d: max(x["MBps"] for x in v) for d, v in samples.items()}
    print("\nraw channel (prokshy-vmsim --mode %s, nothing of prokshy; %d MiB each time, window %d), "
          "first, before each row, last:" % (args.mode, args.raw_mib, WINDOW))
    for d, text in (("h2g", "host->guest"), ("g2h", "guest->host")):
        values = sorted(x["MBps"] for x in samples[d])
        def median(f):
            v = sorted(f(x) for x in samples[d])
            return v[len(v) // 2]

        each = {k: median(lambda x: 1e9 * x["cpu"][k] / max(x["delivered"], 1)) for k in ("simulator", "guest", "host")}
        print("  %s %s MB/s\n    median %.1f, best %.1f; lost %d bytes in all; CPU median %.0f ms/MB "
              "(simulator %.0f, guest process %.0f, host side %.0f)"
              % (text, " ".join("%.1f" % x["MBps"] for x in samples[d]), values[len(values) // 2],
                 best[d], sum(x["lost"] or 0 for x in samples[d]), median(lambda x: x["cpuMsPerMB"]),
                 each["simulator"], each["guest"], each["host"]))
    label = {}
    for name, (kind, port, single, direction) in PLAN.items():
        way = "host->guest" if direction == "h2g" else "guest->host"
        opt = "--forward" if name.startswith("fwd") else "--reverse"
        label[name] = ("%s, 1 stream, %s (%d MiB)" % (opt, way, args.mib) if single else
                       "%s, %d streams, %s (%dx%d MiB)" % (opt, args.streams, way, args.streams, args.agg_mib))
    print("\n%-45s %6s %6s | %6s %6s %6s | %6s | %s" % (
        "row", "MB/s", "s", "raw", "ratio", "/best", "ms/MB", "CPU%: sim daemon guest bench stolen"))
    for name in ROWS:
        if name not in results:
            continue
        runs = results[name]
        good = [v for v in runs if isinstance(v, dict)]
        for v in runs:
            if not isinstance(v, dict):
                print("%-45s %s" % (label[name], v))
        if not good:
            continue
        good.sort(key=lambda v: v["MBps"] / v["raw"]["MBps"])
        value = good[len(good) // 2]
        cpu = value["cpu"]
        print("%-45s %6.1f %6.2f | %6.1f %5.0f%% %5.0f%% | %6.0f |      %3.0f %6.0f %5.0f %5.0f %6.0f%s"
              % (label[name], value["MBps"], value["seconds"], value["raw"]["MBps"],
                 100.0 * value["MBps"] / value["raw"]["MBps"], 100.0 * value["MBps"] / best[PLAN[name][3]],
                 value["cpuMsPerMB"], 100 * cpu["simulator"], 100 * cpu["daemon"], 100 * cpu["guest"],
                 100 * cpu["bench"], 100 * value["stolen"],
                 "" if len(good) == 1 else "  ratios %s" % (
                     " ".join("%.0f%%" % (100.0 * v["MBps"] / v["raw"]["MBps"]) for v in good),)))
    print("(raw: the raw channel in the same direction just before the row; ratio: to it%s; /best: to the\n"
          " best raw figure of the run; ms/MB: CPU time of the simulator, daemon, guest agent and this\n"
          " process per MB moved; CPU%%: each one's share of a core during the row; stolen: the share of\n"
          " the machine's CPUs the hypervisor took meanwhile)"
          % (", the median of the runs" if args.repeat > 1 else "",))
    print("\nthe daemon's forwards and its link to the VM at the end:\n" + forwards)


if __name__ == "__main__":
    sys.exit(main())
