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
import sys
import tempfile

from twisted.internet import defer, task
from twisted.internet.endpoints import UNIXClientEndpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from prokshy.host.client import connectSession  # noqa: E402
from bench._rig import download, startVM, stopAll, upload  # noqa: E402


def start(args, work):
    sim = []
    for opt in ("drop_rate", "corrupt_rate", "dup_rate"):
        value = getattr(args, opt)
        if value:
            sim += ["--" + opt.replace("_", "-"), str(value), "--seed", "1"]
    sock, _log, procs = startVM(work, sim)
    return sock, procs


async def measure(reactor, sock, mib):
    session = await connectSession(reactor, UNIXClientEndpoint(reactor, sock))
    n = mib * 1024 * 1024
    down = await download(session, n)
    up, result = await upload(session, "sink", n)
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
        stopAll(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
