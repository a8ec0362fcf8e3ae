"""
File push and pull (issue 11, section 1) against one exec stream, same
run, same VM, interleaved: exec upload (N bytes into C{sink}), file push
(a local file of N bytes to the guest: temporary file, sha256 both sides,
fsync, rename), exec download (C{zeros}), file pull (to a local file:
the same checks); repeated.

    python bench/files.py [--mib 64] [--repeat 3]

The VM: C{prokshy-vmsim --mode qemu} with the real guest agent (twistd, as
L{bench.streams}), its window L{bench.streams.QEMU_AGENT_WINDOW}, and
C{--allow-files} on a directory of the run's own temporary directory.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from twisted.internet.endpoints import UNIXClientEndpoint  # noqa: E402

from bench._rig import connectRetrying, download, runReactor, startVM, stopAllHard, upload  # noqa: E402
from bench.streams import QEMU_AGENT_WINDOW, _probe, _timed  # noqa: E402

MiB = 1024 * 1024


async def _push(reactor, session, local, remote, n):
    from prokshy.host.files import startPush

    fd = os.open(local, os.O_RDONLY)
    try:
        t0 = time.perf_counter()
        transfer = await startPush(reactor, session, remote, fd, mode=0o644, size=n)
        result = await transfer.result
        seconds = time.perf_counter() - t0
    finally:
        os.close(fd)
    if result.size != n:
        raise RuntimeError("push: %r" % (result,))
    return n / seconds / 1e6


async def _pull(reactor, session, remote, local, n):
    from prokshy.host.files import LocalFile, startPull

    t0 = time.perf_counter()
    transfer = await startPull(reactor, session, remote, LocalFile(local).open())
    result = await transfer.result
    seconds = time.perf_counter() - t0
    if result.size != n:
        raise RuntimeError("pull: %r" % (result,))
    return n / seconds / 1e6


async def _execUp(reactor, session, n):
    seconds, result = await upload(session, "sink", n)
    if result.exitStatus != 0:
        raise RuntimeError("sink: %r" % (result,))
    return n / seconds / 1e6


async def _execDown(reactor, session, n):
    return n / (await download(session, n)) / 1e6


async def measure(reactor, mib=64, repeat=3, log=lambda m: None):
    """
    @return: {"repeats": [{key: value}], "info": {...}, "skipped": {}}
    """
    n = mib * MiB
    work = tempfile.mkdtemp(prefix="pfiles-")
    procs = []
    try:
        allow = os.path.join(work, "allow")
        os.mkdir(allow, 0o755)
        os.chmod(work, 0o755)
        d = os.path.join(work, "vm")
        os.mkdir(d)
        sock, _log, p = startVM(d, ["--mode", "qemu"],
                                agentArgs=["--window", str(QEMU_AGENT_WINDOW), "--allow-files", allow])
        procs += p
        session = await connectRetrying(reactor, UNIXClientEndpoint(reactor, sock), probe=_probe)
        local = os.path.join(work, "local.bin")
        block = os.urandom(MiB)
        with open(local, "wb") as f:
            for _ in range(mib):
                f.write(block)
        remote = os.path.join(allow, "remote.bin")
        back = os.path.join(work, "back.bin")
        # Warm up.
        await _execUp(reactor, session, MiB)
        await _execDown(reactor, session, MiB)
        await _push(reactor, session, local, remote, n)
        await _pull(reactor, session, remote, back, n)
        repeats = []
        for r in range(repeat):
            row = {}
            row["exec_h2g_MBps"] = await _timed(reactor, _execUp(reactor, session, n), "exec upload")
            row["push_MBps"] = await _timed(reactor, _push(reactor, session, local, remote, n), "push")
            row["exec_g2h_MBps"] = await _timed(reactor, _execDown(reactor, session, n), "exec download")
            row["pull_MBps"] = await _timed(reactor, _pull(reactor, session, remote, back, n), "pull")
            log("  files repeat %d: %s" % (r + 1, ", ".join("%s %.3g" % kv for kv in sorted(row.items()))))
            repeats.append(row)
        with open(back, "rb") as f:
            same = hashlib.sha256(f.read()).hexdigest()
        with open(local, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != same:
                raise RuntimeError("the pulled file differs from the pushed one")
        return {"repeats": repeats, "skipped": {}, "info": {"mib": mib, "mode": "qemu",
                                                            "agentWindow": QEMU_AGENT_WINDOW}}
    finally:
        stopAllHard(procs)
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    result = runReactor(lambda r: measure(r, args.mib, args.repeat, log=say), timeout=1800)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
