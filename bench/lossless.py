"""
Issue 8, section 5: no retransmission and no resync on a channel that loses
nothing.  Three processes, as in real use: C{prokshy-vmsim --mode bhyve}
with no faults, the guest agent (twistd), and this host client.  Moves N
MiB guest->host (a command writing zeros) and N MiB host->guest (into
C{wc -c}), then prints the host's link counters (what C{--status} shows)
and the guest's (from the agent's log line at the session's end).

    python bench/lossless.py [--mib 100]

Exits 1 if it shows a retransmission, a resync, a gap or a duplicate
on either side.  tests/system/test_link_vmsim.py runs the same with 16 MiB.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, task
from twisted.internet.endpoints import UNIXClientEndpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from prokshy.host.client import connectSession  # noqa: E402

ENDED = re.compile(
    r"session ended: (?P<reason>.*?) \(retransmits=(?P<retransmits>\d+) "
    r"checkpoints=(?P<checkpoints>\d+) resyncs=(?P<resyncs>\d+) "
    r"gaps=(?P<gaps>\d+) duplicates=(?P<duplicates>\d+)\)"
)
KEYS = ("retransmits", "checkpoints", "resyncs", "gaps", "duplicates")


def start(work):
    env = dict(os.environ, PYTHONPATH=ROOT)
    cmd = os.path.join(work, "command.d")
    os.mkdir(cmd, 0o755)
    for name, body in (("zeros", 'exec head -c "$(cat)" /dev/zero\n'), ("count", "exec wc -c\n")):
        path = os.path.join(cmd, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + body)
        os.chmod(path, 0o755)
    sock, dev = os.path.join(work, "vm.sock"), os.path.join(work, "vm.dev")
    sim = [sys.executable, "-m", "prokshy.sim.vmsim", "--mode", "bhyve", "--socket", sock, "--device-link", dev]
    procs = [subprocess.Popen(sim, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    for _ in range(200):
        if os.path.exists(dev):
            break
        time.sleep(0.05)
    log = os.path.join(work, "agent.log")
    procs.append(
        subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "--logfile", log, "prokshy-guest", "--device", dev,
             "--command-dir", cmd, "--max-output", "0", "--timeout", "0"],
            env=env, cwd="/",
        )
    )
    return sock, log, procs


async def measure(reactor, sock, mib):
    session = await connectSession(reactor, UNIXClientEndpoint(reactor, sock))
    link = session.mux.link
    n = mib * 1024 * 1024
    got = [0]
    t0 = time.perf_counter()
    running = await session.execStream("zeros", lambda d: got.__setitem__(0, got[0] + len(d)), lambda d: None)
    running.write(str(n).encode())
    running.closeStdin()
    result = await running.result
    down = time.perf_counter() - t0
    assert got[0] == n and result.exitStatus == 0, (got, result)
    counted = []
    block = b"u" * 65536
    t0 = time.perf_counter()
    running = await session.execStream("count", counted.append, lambda d: None)
    sent = 0

    class Source:
        paused = False

        def pauseProducing(self):
            self.paused = True

        def resumeProducing(self):
            self.paused = False
            pump()

        def stopProducing(self):
            self.paused = True

    src = Source()

    def pump():
        nonlocal sent
        while not src.paused and sent < n:
            running.write(block)
            sent += len(block)
        if sent >= n:
            running.closeStdin()

    running.registerProducer(src, True)
    pump()
    result = await running.result
    up = time.perf_counter() - t0
    assert result.exitStatus == 0 and int(b"".join(counted)) == n, (result, counted)
    snap = link.snapshot()
    link.goodbye("bench over")
    await task.deferLater(reactor, 0.5, lambda: None)
    return n / down / 1e6, n / up / 1e6, snap


def guestCounters(log):
    with open(log) as f:
        found = list(ENDED.finditer(f.read()))
    if not found:
        return None
    return {k: int(found[-1].group(k)) for k in KEYS}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=100)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="plossless-")
    sock, log, procs = start(work)
    result = {}

    async def go(reactor):
        await task.deferLater(reactor, 2.0, lambda: None)
        result["m"] = await measure(reactor, sock, args.mib)

    try:
        task.react(lambda r: defer.ensureDeferred(go(r)))
    except SystemExit as e:
        if e.code:
            raise
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        guest = guestCounters(log)
        shutil.rmtree(work, ignore_errors=True)
    down, up, snap = result["m"]
    host = {k: snap.get(k) for k in KEYS}
    host["skipped_bytes"] = snap["skipped_bytes"]
    print(
        "guest->host %.1f MB/s, host->guest %.1f MB/s (%d MiB each way)\n"
        "  host:  %s\n  guest: %s" % (down, up, args.mib, host, guest)
    )
    bad = guest is None or any(
        counters.get(k) for counters in (host, guest) for k in ("retransmits", "resyncs", "gaps", "duplicates")
    )
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
