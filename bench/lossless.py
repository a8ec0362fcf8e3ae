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
import sys
import tempfile

from twisted.internet import defer, task
from twisted.internet.endpoints import UNIXClientEndpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from prokshy.host.client import connectSession  # noqa: E402
from bench._rig import download, startVM, stopAll, upload  # noqa: E402

ENDED = re.compile(
    r"session ended: (?P<reason>.*?) \(retransmits=(?P<retransmits>\d+) "
    r"checkpoints=(?P<checkpoints>\d+) resyncs=(?P<resyncs>\d+) "
    r"gaps=(?P<gaps>\d+) duplicates=(?P<duplicates>\d+)\)"
)
KEYS = ("retransmits", "checkpoints", "resyncs", "gaps", "duplicates")


async def measure(reactor, sock, mib):
    session = await connectSession(reactor, UNIXClientEndpoint(reactor, sock))
    link = session.mux.link
    n = mib * 1024 * 1024
    down = await download(session, n)
    counted = []
    up, result = await upload(session, "count", n, counted.append)
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
    sock, log, procs = startVM(work, ["--mode", "bhyve"])
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
        stopAll(procs)
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
