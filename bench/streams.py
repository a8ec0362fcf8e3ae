"""
One exec stream each way, in qemu mode and in bhyve mode, each against the
raw channel through the same simulator path measured just before it; the
guest agent's and the daemon's CPU per 100 MB; and 1% chunk loss against
the same channel without loss.  Interleaved: raw, prokshy, raw, prokshy...

    python bench/streams.py [--mib 64] [--repeat 3] [--loss-mib 8] [--json]

The real processes: C{prokshy-vmsim} (one per mode, and one more in qemu
mode behind C{twistd -n prokshy-host} for the daemon's CPU), each with
the guest agent (twistd, cwd /, command.d of L{bench._rig.COMMANDS});
the raw channel is a simulator of its own per mode, with a plain guest
process on its pty (L{bench.rawchannel}).

  - guest->host: C{zeros} writes N bytes to stdout (L{bench._rig.download});
    raw: the guest process writes N bytes to the pty, this one reads the
    socket.
  - host->guest: N bytes into C{sink} (L{bench._rig.upload}); raw: this
    process writes the socket, the guest process reads the pty and reports
    its count back through the channel, at most a window unread: in
    bhyve mode 16384 bytes (the agent's tty window: the 23040-byte guest
    queue loses the rest), in qemu mode L{QEMU_RAW_WINDOW} (the simulator's
    backpressure paces the writer, as a virtio port's does).
  - the agent's window: in qemu mode L{QEMU_AGENT_WINDOW}, what it chooses
    on a virtio port (the simulator's pty would make it choose a tty's);
    in bhyve mode its own choice for a tty.
  - CPU per 100 MB: user + system seconds of the agent (or the daemon)
    during the transfer, per 10**8 bytes moved; the baseline is what the
    raw channel's plain loop (its guest process, or its host side) spent
    for the same bytes just before.
  - loss: C{prokshy-vmsim --mode bhyve --drop-rate 0.01} (chunks of 512
    bytes, both directions, seed 1) against a lossless one, alternately.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from twisted.internet import task, threads  # noqa: E402
from twisted.internet.endpoints import UNIXClientEndpoint  # noqa: E402

from bench._rig import (  # noqa: E402
    connectRetrying, download, procCpuSeconds, rssBytes, runReactor, startDaemonProc, startVM,
    stopAllHard, upload, waitPath)
from bench.rawchannel import WINDOW, RawChannel  # noqa: E402
from prokshy.guest.agent import PIPE_WINDOW  # noqa: E402

MiB = 1024 * 1024

#: The raw host->guest window in qemu mode: large enough that only the
#: simulator's backpressure paces the writer.
QEMU_RAW_WINDOW = 1 * MiB

#: The agent's window in qemu mode: what it chooses itself on a virtio port
#: (a non-tty, with backpressure: L{prokshy.guest.agent.PIPE_WINDOW}).  The
#: simulator's guest end is a pty in both modes, which the agent must take
#: for a FreeBSD vtcon tty (a 20 KiB window, below its 23040-byte queue), so in
#: qemu mode it is told (C{--window}).
QEMU_AGENT_WINDOW = PIPE_WINDOW

#: Seconds one transfer may take at most.
TRANSFER_TIMEOUT = 300.0


def _per100MB(seconds, n):
    return seconds * 1e8 / n


async def _probe(session):
    result = await session.exec("count", stdin=b"x")
    if result.exitStatus != 0:
        raise RuntimeError("probe: %r" % (result,))


async def _timed(reactor, coro, what):
    from twisted.internet import defer

    d = defer.ensureDeferred(coro)
    d.addTimeout(TRANSFER_TIMEOUT, reactor)
    try:
        return await d
    except defer.TimeoutError:
        raise RuntimeError("%s took longer than %g s" % (what, TRANSFER_TIMEOUT))


async def _down(reactor, session, n, pid):
    cpu0 = procCpuSeconds(pid)
    seconds = await _timed(reactor, download(session, n), "guest->host")
    return n / seconds / 1e6, _per100MB(procCpuSeconds(pid) - cpu0, n)


async def _up(reactor, session, n, pid):
    cpu0 = procCpuSeconds(pid)
    seconds, result = await _timed(reactor, upload(session, "sink", n), "host->guest")
    if result.exitStatus != 0:
        raise RuntimeError("sink: %r" % (result,))
    return n / seconds / 1e6, _per100MB(procCpuSeconds(pid) - cpu0, n)


def _agentArgs(mode):
    return ["--window", str(QEMU_AGENT_WINDOW)] if mode == "qemu" else []


async def measure(reactor, mib=64, repeat=3, daemonMib=None, log=lambda m: None):
    """
    The stream rows, both modes, and the daemon's CPU.

    @return: {"repeats": [{key: value}], "info": {...}, "skipped": {}}
    """
    n = mib * MiB
    dn = (daemonMib or mib) * MiB
    work = tempfile.mkdtemp(prefix="pstreams-")
    procs, raws = [], {}
    try:
        vms = {}
        for mode in ("qemu", "bhyve"):
            d = os.path.join(work, mode)
            os.mkdir(d)
            sock, _log, p = startVM(d, ["--mode", mode], agentArgs=_agentArgs(mode))
            procs += p
            vms[mode] = (sock, p[1].pid)
            raws[mode] = RawChannel(work, ["--mode", mode], QEMU_RAW_WINDOW if mode == "qemu" else WINDOW)
        d = os.path.join(work, "relay")
        os.mkdir(d)
        sock, _log, p = startVM(d, ["--mode", "qemu"], agentArgs=_agentArgs("qemu"))
        procs += p
        ctl = os.path.join(work, "daemon.sock")
        daemon, _dlog = startDaemonProc(work, sock, ["unix:" + ctl])
        procs.append(daemon)
        waitPath(ctl)
        sessions = {}
        for mode, (sock, _pid) in vms.items():
            sessions[mode] = await connectRetrying(reactor, UNIXClientEndpoint(reactor, sock), probe=_probe)
        relay = await connectRetrying(reactor, UNIXClientEndpoint(reactor, ctl), probe=_probe)
        # Warm up (imports, the first spawns, the windows' first rounds).
        for mode, (sock, pid) in vms.items():
            await _down(reactor, sessions[mode], MiB, pid)
            await _up(reactor, sessions[mode], MiB, pid)
        await _down(reactor, relay, MiB, daemon.pid)
        await _up(reactor, relay, MiB, daemon.pid)

        repeats = []
        for r in range(repeat):
            row = {}
            for mode in ("qemu", "bhyve"):
                raw, (sock, pid) = raws[mode], vms[mode]
                for way in ("g2h", "h2g"):
                    rawResult = await threads.deferToThread(raw.toHost if way == "g2h" else raw.toGuest, n)
                    ours = await (_down if way == "g2h" else _up)(reactor, sessions[mode], n, pid)
                    key = "%s_%s" % (mode, way)
                    row[key + "_MBps"], row[key + "_agent_cpu"] = ours
                    row[key + "_raw_MBps"] = rawResult["MBps"]
                    # The raw channel's plain loops: the guest process (the
                    # agent's counterpart) and this process (the daemon's).
                    row[key + "_raw_guest_cpu"] = _per100MB(rawResult["cpu"]["guest"], max(rawResult["delivered"], 1))
                    row[key + "_raw_host_cpu"] = _per100MB(rawResult["cpu"]["host"], max(rawResult["delivered"], 1))
                    if rawResult.get("lost"):
                        row[key + "_raw_lost"] = rawResult["lost"]
            for way in ("g2h", "h2g"):
                row["relay_%s_MBps" % way], row["relay_%s_daemon_cpu" % way] = await (
                    _down if way == "g2h" else _up)(reactor, relay, dn, daemon.pid)
            log("  streams repeat %d: %s" % (r + 1, ", ".join(
                "%s %.3g" % kv for kv in sorted(row.items()) if kv[0].endswith("MBps"))))
            repeats.append(row)
        return {"repeats": repeats, "skipped": {},
                "info": {"mib": mib, "daemonMib": daemonMib or mib, "qemuRawWindow": QEMU_RAW_WINDOW,
                         "qemuAgentWindow": QEMU_AGENT_WINDOW,
                         "bhyveRawWindow": WINDOW}}
    finally:
        stopAllHard(procs)
        for raw in raws.values():
            raw.stop()
        shutil.rmtree(work, ignore_errors=True)


async def measureLoss(reactor, mib=8, repeat=3, rate=0.01, log=lambda m: None):
    """
    One stream each way with C{rate} chunk loss against the same without
    loss, alternately (bhyve mode).
    """
    n = mib * MiB
    work = tempfile.mkdtemp(prefix="ploss-")
    procs = []
    try:
        vms = {}
        for name, sim in (("lossless", []), ("loss", ["--drop-rate", str(rate), "--seed", "1"])):
            d = os.path.join(work, name)
            os.mkdir(d)
            sock, _log, p = startVM(d, ["--mode", "bhyve"] + sim)
            procs += p
            session = await connectRetrying(reactor, UNIXClientEndpoint(reactor, sock), seconds=60, probe=_probe)
            vms[name] = (session, p[1].pid)
        for name, (session, pid) in vms.items():
            await _down(reactor, session, MiB // 4, pid)
        repeats = []
        for r in range(repeat):
            row = {}
            for way in ("g2h", "h2g"):
                order = ("lossless", "loss") if r % 2 == 0 else ("loss", "lossless")
                for name in order:
                    session, pid = vms[name]
                    row["%s_%s_MBps" % (name, way)], _cpu = await (_down if way == "g2h" else _up)(
                        reactor, session, n, pid)
            for name, (session, _pid) in vms.items():
                snap = session.mux.link.snapshot()
                row["%s_retransmits" % name] = snap.get("retransmits")
            log("  loss repeat %d: %s" % (r + 1, ", ".join("%s %.3g" % kv for kv in sorted(row.items())
                                                            if kv[1] is not None)))
            repeats.append(row)
        return {"repeats": repeats, "skipped": {}, "info": {"mib": mib, "dropRate": rate, "chunk": 512}}
    finally:
        stopAllHard(procs)
        shutil.rmtree(work, ignore_errors=True)


async def measureMemory(reactor, outputMib=1024, idleSeconds=5.0, repeat=3, log=lambda m: None):
    """
    The guest agent's resident memory idle (after a warm-up) and its peak
    growth while a command writes C{outputMib} MiB to the host (qemu
    mode), and the agent's CPU share while idle: with a host session
    connected (keepalives only), and with no host at all (a second VM no
    one connects to), over the same C{idleSeconds}.
    """
    n = outputMib * MiB
    work = tempfile.mkdtemp(prefix="pmem-")
    procs = []
    try:
        d = os.path.join(work, "vm")
        os.mkdir(d)
        sock, _log, p = startVM(d, ["--mode", "qemu"])
        procs += p
        pid = p[1].pid
        d = os.path.join(work, "alone")
        os.mkdir(d)
        _sock, _log, p = startVM(d, ["--mode", "qemu"])
        procs += p
        alonePid = p[1].pid
        session = await connectRetrying(reactor, UNIXClientEndpoint(reactor, sock), probe=_probe)
        await _down(reactor, session, 4 * MiB, pid)
        await _up(reactor, session, 4 * MiB, pid)
        repeats = []
        for r in range(repeat):
            row = {}
            await task.deferLater(reactor, 0.5, lambda: None)
            w0, c0, a0 = time.monotonic(), procCpuSeconds(pid), procCpuSeconds(alonePid)
            await task.deferLater(reactor, idleSeconds, lambda: None)
            wall = time.monotonic() - w0
            row["idle_cpu_pct"] = 100 * (procCpuSeconds(pid) - c0) / wall
            row["idle_alone_cpu_pct"] = 100 * (procCpuSeconds(alonePid) - a0) / wall
            base = rssBytes(pid)
            row["idle_rss_mib"] = base / MiB
            row["idle_rss_anon_mib"] = rssAnonBytes(pid) / MiB
            row["idle_alone_rss_mib"] = rssBytes(alonePid) / MiB
            peak = [base]

            def sample():
                peak[0] = max(peak[0], rssBytes(pid))

            loop = task.LoopingCall(sample)
            loop.start(0.05)
            try:
                row["output_MBps"], _cpu = await _down(reactor, session, n, pid)
            finally:
                loop.stop()
            sample()
            row["rss_growth_mib"] = (peak[0] - base) / MiB
            log("  memory repeat %d: %s" % (r + 1, ", ".join("%s %.3g" % kv for kv in sorted(row.items()))))
            repeats.append(row)
        return {"repeats": repeats, "skipped": {}, "info": {"outputMib": outputMib, "idleSeconds": idleSeconds}}
    finally:
        stopAllHard(procs)
        shutil.rmtree(work, ignore_errors=True)


def rssAnonBytes(pid):
    """
    The process's private anonymous resident memory (C{RssAnon}): its RSS
    less the shared libraries and files it maps.
    """
    with open("/proc/%d/status" % (pid,)) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--loss-mib", type=int, default=8)
    parser.add_argument("--output-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("streams", "loss", "memory"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731

    async def run(reactor):
        out = {}
        if args.only in (None, "streams"):
            out["streams"] = await measure(reactor, args.mib, args.repeat, log=say)
        if args.only in (None, "loss"):
            out["loss"] = await measureLoss(reactor, args.loss_mib, args.repeat, log=say)
        if args.only in (None, "memory"):
            out["memory"] = await measureMemory(reactor, args.output_mib, repeat=args.repeat, log=say)
        return out

    result = runReactor(run, timeout=3600)
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
