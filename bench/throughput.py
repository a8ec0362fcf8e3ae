"""
Throughput of one exec stream through prokshy-vmsim (bhyve mode), with and
without loss.  Three processes, as in real use: the simulator, the guest
agent (twistd), and this host client.

    python bench/throughput.py [--mib 16] [--drop-rate 0.01 --corrupt-rate 0.0005 ...]

Prints MB/s guest->host (a command writing N MiB of zeros to stdout) and
host->guest (N MiB on stdin into a command that discards it).
"""

import argparse
import os
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


def start(args, work):
    env = dict(os.environ, PYTHONPATH=ROOT)
    cmd = os.path.join(work, "command.d")
    os.mkdir(cmd, 0o755)
    for name, body in (("zeros", 'exec head -c "$(cat)" /dev/zero\n'), ("sink", "exec cat >/dev/null\n")):
        path = os.path.join(cmd, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + body)
        os.chmod(path, 0o755)
    sock, dev = os.path.join(work, "vm.sock"), os.path.join(work, "vm.dev")
    sim = [sys.executable, "-m", "prokshy.sim.vmsim", "--socket", sock, "--device-link", dev]
    for opt in ("drop_rate", "corrupt_rate", "dup_rate"):
        value = getattr(args, opt)
        if value:
            sim += ["--" + opt.replace("_", "-"), str(value), "--seed", "1"]
    procs = [subprocess.Popen(sim, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    for _ in range(100):
        if os.path.exists(dev):
            break
        time.sleep(0.05)
    procs.append(
        subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "--logfile", os.path.join(work, "agent.log"), "prokshy-guest", "--device", dev,
             "--command-dir", cmd, "--max-output", "0", "--timeout", "0"],
            env=env, cwd="/",
        )
    )
    return sock, procs


async def measure(reactor, sock, mib):
    session = await connectSession(reactor, UNIXClientEndpoint(reactor, sock))
    n = mib * 1024 * 1024
    got = [0]
    t0 = time.perf_counter()
    running = await session.execStream("zeros", lambda d: got.__setitem__(0, got[0] + len(d)), lambda d: None)
    running.write(str(n).encode())
    running.closeStdin()
    result = await running.result
    down = time.perf_counter() - t0
    assert got[0] == n and result.exitStatus == 0, (got, result)
    block = b"\0" * 65536
    t0 = time.perf_counter()
    running = await session.execStream("sink", lambda d: None, lambda d: None)
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
    assert result.exitStatus == 0, result
    return n / down / 1e6, n / up / 1e6


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--drop-rate", type=float, default=0.0)
    parser.add_argument("--corrupt-rate", type=float, default=0.0)
    parser.add_argument("--dup-rate", type=float, default=0.0)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="pbench-")
    sock, procs = start(args, work)

    async def run(reactor):
        await task.deferLater(reactor, 1.5, lambda: None)
        down, up = await measure(reactor, sock, args.mib)
        print("guest->host %.1f MB/s, host->guest %.1f MB/s (%d MiB each; drop %g corrupt %g dup %g)"
              % (down, up, args.mib, args.drop_rate, args.corrupt_rate, args.dup_rate))

    try:
        task.react(lambda r: defer.ensureDeferred(run(r)))
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
