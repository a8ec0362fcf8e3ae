"""
Where the guest agent's time goes in the real VM (a measurement, not a
test; trial does not collect it: no TestCase here).

    PROKSHY_VMTEST_WORK=~/.cache/prokshy-vmtest \\
        ~/.cache/prokshy-vmtest/cache/venv/bin/python -m tests.realvm.profile_agent \\
        [--mb 32] [--rounds 3] [--out DIR]

One boot (after C{bash vmtest/run --prepare-only}):
  1. the link limits both sides agreed (the agent's hello: window,
     max_payload; our sendWindow/sendPayload) and the agent's info();
  2. ROUNDS interleaved rounds of one exec stream each way through the
     plain agent (C{zeros} guest->host, C{count} host->guest), each with
     the agent's CPU (utime+stime of /proc/PID/stat), its read/write
     syscalls and bytes (/proc/PID/io), its context switches, the whole
     guest's busy CPU (/proc/stat), QEMU's host CPU and ours, around it;
  3. the floors (vmtest/guest/floor.py, agent stopped): os.read loop,
     Twisted DeviceTransport reader, os.write loop, Twisted writer;
  4. the agent restarted under cProfile (C{vmctl profile FILE}; twistd
     C{--profile FILE --profiler cprofile --savestats}) for one download,
     then again for one upload; the stats fetched with C{cat} through an
     exec, saved in DIR and summarised (top functions by tottime, and the
     cumulative times of the device, wire, link, stream, process-pipe and
     reactor paths).
Everything is printed and written to DIR/summary.json; the VM is stopped
at the end (and at exit).

Caveats: /proc/PID/io (syscr, syscw, rchar, wchar) includes the counters of
the children the agent reaped in the window (the command's dd or count, and
the stat probe's shell), so "avg_read_bytes"/"avg_write_bytes" are not the
agent's own; utime/stime are its own. The profile is twistd's cProfile with
its default (wall-clock) timer: the epoll poll's tottime is waiting (the
guest has one vCPU, so also the time the command ran), not agent CPU.
"""

import argparse
import io
import json
import os
import pstats
import resource
import statistics
import sys
import tempfile
import time

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory

from tests.realvm import vm as V
from bench._rig import download, upload

CLK_TCK_GUEST = 100  # Linux USER_HZ on x86

STAT_SCRIPT = b"""p=$(cat /run/prokshy-agent.pid)
echo "STAT $(cat /proc/$p/stat)"
echo "CPU $(head -1 /proc/stat)"
sed 's/^/IO /' /proc/$p/io
grep ctxt_switches /proc/$p/status | sed 's/^/CS /'
"""

#: The functions whose cumulative time is reported (substrings of
#: "file:line(function)").
KEY_FUNCTIONS = [
    "transport/device.py", "transport/_base.py", "wire/frames.py", "prokshy/link/", "prokshy/streams/",
    "guest/agent.py", "guest/execs.py", "guest/execution.py", "guest/_process.py",
    "internet/epollreactor.py", "internet/process.py", "internet/abstract.py", "internet/fdesc.py",
    "internet/base.py", "posix.read", "posix.write", "epoll", "zlib.crc32", "json",
]


def log(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def openSession(reactor, socketPath, timeout=60):
    from prokshy.host.client import HostProtocol

    proto = await UNIXClientEndpoint(reactor, socketPath, timeout=10).connect(
        Factory.forProtocol(lambda: HostProtocol(reactor)))
    lost = Deferred()
    proto.whenLost(lambda reason: lost.called or lost.callback(None))
    up = proto.whenSession()
    up.addTimeout(timeout, reactor)
    await up
    proto.lost = lost
    return proto


async def closeSession(reactor, proto):
    if proto.transport is not None and not proto.lost.called:
        proto.transport.loseConnection()
    proto.lost.addTimeout(10, reactor)
    await proto.lost


def procTicks(pid):
    with open("/proc/%d/stat" % (pid,)) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


async def agentSample(session):
    r = await session.exec("shell", stdin=STAT_SCRIPT)
    out = {}
    for line in r.stdout.decode().splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "STAT":
            f = rest.rsplit(")", 1)[1].split()
            out["pid"] = int(rest.split()[0])
            out["utime"], out["stime"] = int(f[11]) / CLK_TCK_GUEST, int(f[12]) / CLK_TCK_GUEST
        elif kind == "CPU":
            v = [int(x) for x in rest.split()[1:]]
            out["guest_total"] = sum(v[:8]) / CLK_TCK_GUEST
            out["guest_idle"] = (v[3] + v[4]) / CLK_TCK_GUEST
        elif kind in ("IO", "CS"):
            k, _, val = rest.partition(":")
            out[k.strip()] = int(val)
    out["qemu"] = procTicks(_vm.process.pid) / os.sysconf("SC_CLK_TCK")
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["host_self"] = ru.ru_utime + ru.ru_stime
    out["t"] = time.perf_counter()
    return out


def delta(a, b, n, seconds):
    d = {k: round(b[k] - a[k], 3) for k in a if k not in ("pid",)}
    agent = d["utime"] + d["stime"]
    busy = d["guest_total"] - d["guest_idle"]
    return {
        "MB/s": round(n / seconds / 1e6, 2), "wall_s": round(seconds, 2),
        "agent_cpu_s": round(agent, 2), "agent_user_s": d["utime"], "agent_sys_s": d["stime"],
        "agent_cpu_s_per_100MB": round(agent / n * 1e8, 2),
        "agent_cpu_share_of_wall": round(agent / seconds, 2),
        "guest_busy_share_of_wall": round(busy / d["guest_total"], 2) if d["guest_total"] else None,
        "qemu_host_cpu_s": d["qemu"], "host_client_cpu_s": round(d["host_self"], 2),
        "agent_read_syscalls": d.get("syscr"), "agent_write_syscalls": d.get("syscw"),
        "agent_rchar": d.get("rchar"), "agent_wchar": d.get("wchar"),
        "avg_read_bytes": round(d["rchar"] / d["syscr"]) if d.get("syscr") else None,
        "avg_write_bytes": round(d["wchar"] / d["syscw"]) if d.get("syscw") else None,
        "voluntary_ctxt_switches": d.get("voluntary_ctxt_switches"),
        "nonvoluntary_ctxt_switches": d.get("nonvoluntary_ctxt_switches"),
    }


async def measured(session, what, n):
    a = await agentSample(session)
    t0 = time.perf_counter()
    if what == "download":
        await download(session, n)
    else:
        counted = []
        seconds, result = await upload(session, "count", n, counted.append)
        assert result.exitStatus == 0 and int(b"".join(counted)) == n, (result, counted)
    seconds = time.perf_counter() - t0
    b = await agentSample(session)
    return delta(a, b, n, seconds)


def floorRun(vm, mode, n, timeout=300):
    """
    One run of vmtest/guest/floor.py (already requested with vmctl floor).
    """
    deadline = time.monotonic() + timeout
    s = vm.connect()
    try:
        rest = V.readUntil(s, b"\nFLOORSTART %s %d\n" % (mode.encode(), n), deadline)
        t0 = time.perf_counter()
        if mode.endswith("write"):
            got, last = len(rest), rest
            while got < n:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                last = s.recv(1 << 20)
                if not last:
                    raise RuntimeError("floor %s: closed after %d of %d" % (mode, got, n))
                got += len(last)
            rest = last[len(last) - (got - n):] if got > n else b""
        else:
            block = b"\0" * (1 << 20)
            sent = 0
            s.settimeout(max(0.1, deadline - time.monotonic()))
            while sent < n:
                chunk = block[: min(len(block), n - sent)]
                s.sendall(chunk)
                sent += len(chunk)
            rest = b""
        tail = V.readUntil(s, b"\nFLOORDONE ", deadline, rest)
        seconds = time.perf_counter() - t0
        while b"\n" not in tail:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            tail += s.recv(4096)
        result = json.loads(tail.split(b"\n")[0])
    finally:
        s.close()
    cpu = result["user"] + result["sys"]
    result.update({"host_MB/s": round(n / seconds / 1e6, 1), "cpu_s": round(cpu, 3),
                   "cpu_s_per_100MB": round(cpu / n * 1e8, 3)})
    return result


def summarise(path, n, top=25):
    st = pstats.Stats(path)
    total = st.total_tt
    out = io.StringIO()
    st.stream = out
    st.sort_stats("tottime").print_stats(top)
    topText = out.getvalue()
    rows = []
    for (fn, line, name), (cc, nc, tt, ct, callers) in st.stats.items():
        label = "%s:%d(%s)" % (fn, line, name)
        if any(k in label for k in KEY_FUNCTIONS):
            rows.append((ct, tt, nc, label))
    rows.sort(reverse=True)
    keyText = "\n".join("%9.3f cum %9.3f tot %9d calls  %s" % r for r in rows[:60])
    calls = {}
    for (fn, line, name), (cc, nc, tt, ct, callers) in st.stats.items():
        for k in ("posix.read", "posix.write", "dataReceived", "readBatch", "doRead", "doWrite", "writeSomeData",
                  "epoll", "_doReadOrWrite"):
            if k in name:
                calls["%s:%d(%s)" % (os.path.basename(fn), line, name)] = nc
    return {"profiled_total_tt_s": round(total, 2), "per_100MB": round(total / n * 1e8, 2),
            "top": topText, "key_cumulative": keyText, "calls": calls}


_vm = None


async def main(reactor, args):
    global _vm
    info = V.manifest()
    if isinstance(info, str):
        raise SystemExit(info)
    out = args.out or tempfile.mkdtemp(prefix="prokshy-vmtest-profile-")
    os.makedirs(out, exist_ok=True)
    n = args.mb << 20
    summary = {"bytes": n, "out": out, "rounds": {"download": [], "upload": []}, "floor": {}, "profile": {}}
    _vm = V.VM(info)
    try:
        log("boot: %.1f s" % (_vm.boot(),))
        proto = await openSession(reactor, _vm.socketPath)
        li = proto.link.info
        summary["link"] = {
            "agent_hello_window": li.peerHello.get("window"), "agent_hello_max_payload": li.peerHello.get("max_payload"),
            "host_sendWindow": li.sendWindow, "host_sendPayload": li.sendPayload,
            "host_own_window": proto.link.config.window, "host_own_maxPayload": proto.link.config.maxPayload,
            "features": sorted(li.features) if li.features else li.features,
        }
        try:
            summary["agent_info"] = await proto.session.info()
        except Exception as e:
            summary["agent_info"] = repr(e)
        log("link: %s" % (json.dumps(summary["link"]),))
        log("agent info: %s" % (json.dumps(summary["agent_info"], sort_keys=True, default=str)[:1500],))
        r = await proto.session.exec("shell", stdin=b"command -v strace perf ltrace; uname -r; cat /proc/cpuinfo | grep -m1 'model name'; nproc\n")
        summary["guest_tools"] = r.stdout.decode()
        log("guest: %r" % (summary["guest_tools"],))
        # warm up once (untimed)
        await download(proto.session, 2 << 20)
        for i in range(args.rounds):
            for what in ("download", "upload"):
                d = await measured(proto.session, what, n)
                summary["rounds"][what].append(d)
                log("round %d %s: %s" % (i + 1, what, json.dumps(d)))
        await closeSession(reactor, proto)

        floors = [("osread", 128 << 20), ("twread", 64 << 20), ("oswrite", 128 << 20), ("twwrite", 64 << 20)]
        for i in range(args.floor_rounds):
            for mode, fn in floors:
                proto = await openSession(reactor, _vm.socketPath)
                r = await proto.session.exec("vmctl", stdin=b"floor %s %d\n" % (mode.encode(), fn))
                assert r.exitStatus == 0, r
                await closeSession(reactor, proto)
                res = floorRun(_vm, mode, fn)
                summary["floor"].setdefault(mode, []).append(res)
                log("floor %d %s: %s" % (i + 1, mode, json.dumps(res)))
                _vm.waitAgent()

        for what in ("download", "upload"):
            guestFile = "/run/prof-%s.pstats" % (what,)
            proto = await openSession(reactor, _vm.socketPath)
            r = await proto.session.exec("vmctl", stdin=b"profile %s\n" % (guestFile.encode(),))
            assert r.exitStatus == 0, r
            await closeSession(reactor, proto)
            _vm.waitConsole("profiled: --profile=" + guestFile)
            _vm.waitAgent()
            proto = await openSession(reactor, _vm.socketPath)
            d = await measured(proto.session, what, n)
            log("profiled %s: %s" % (what, json.dumps(d)))
            exited = _vm.countInConsole("INIT: agent exited")
            r = await proto.session.exec("vmctl", stdin=b"restart\n")
            await closeSession(reactor, proto)
            _vm.waitConsole("INIT: agent exited", exited + 1)
            _vm.waitAgent()
            proto = await openSession(reactor, _vm.socketPath)
            r = await proto.session.exec("shell", stdin=b"cat %s\n" % (guestFile.encode(),))
            await closeSession(reactor, proto)
            local = os.path.join(out, "agent-%s.pstats" % (what,))
            with open(local, "wb") as f:
                f.write(r.stdout)
            s = summarise(local, n)
            s["measured"] = d
            summary["profile"][what] = s
            log("profile %s saved to %s (%d bytes)\n%s\nkey cumulative:\n%s\ncalls: %s" % (
                what, local, len(r.stdout), s["top"], s["key_cumulative"], json.dumps(s["calls"], indent=1)))
    finally:
        _vm.cleanup()

    def med(rows, key):
        xs = [r[key] for r in rows]
        return "%s [%s-%s]" % (statistics.median(xs), min(xs), max(xs))

    for what, rows in summary["rounds"].items():
        if rows:
            log("SUMMARY %s: MB/s %s, agent CPU s/100MB %s, agent CPU share of wall %s, guest busy %s, avg read %s B, avg write %s B" % (
                what, med(rows, "MB/s"), med(rows, "agent_cpu_s_per_100MB"), med(rows, "agent_cpu_share_of_wall"),
                med(rows, "guest_busy_share_of_wall"), med(rows, "avg_read_bytes"), med(rows, "avg_write_bytes")))
    for mode, rows in summary["floor"].items():
        log("SUMMARY floor %s: CPU s/100MB %s, host MB/s %s" % (mode, med(rows, "cpu_s_per_100MB"), med(rows, "host_MB/s")))
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    log("written: %s" % (os.path.join(out, "summary.json"),))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--floor-rounds", type=int, default=2)
    p.add_argument("--out")
    a = p.parse_args()
    task.react(lambda reactor: __import__("twisted.internet.defer", fromlist=["x"]).ensureDeferred(main(reactor, a)))
