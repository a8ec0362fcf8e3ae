"""
Exec latency and rate, each against its baselines in the same run,
interleaved exec by exec: a local Twisted C{spawnProcess} of the same
binary (its posix_spawn path: no C{path=}, no uid, no pty), qemu-ga's
C{guest-exec} + C{guest-exec-status} (if qemu-ga can be had), prokshy's
API straight to the simulator, and prokshy through the daemon's unix and
TCP listeners.

    python bench/execs.py [--execs 200] [--rate-execs 800] [--in-flight 16] [--repeat 3]

The real processes: two C{prokshy-vmsim} (bhyve mode) each with the guest
agent at its defaults (one for the API straight to its socket, one behind
C{twistd -n prokshy-host --listen unix:... --listen tcp:0...}), and
qemu-ga on a unix socket.  The command is a copy of C{/bin/true} in
command.d; the spawn baseline and qemu-ga run that very copy.

Each repeat times C{--execs} round trips of every kind, one of each in
turn (the order rotating), and reports each kind's p50; then, one kind
after the other, C{--rate-execs} execs with C{--in-flight} outstanding
(spawn, the API, qemu-ga), and reports execs/s.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from twisted.internet import defer  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint  # noqa: E402
from twisted.internet.protocol import ProcessProtocol  # noqa: E402

from bench import qga as _qga  # noqa: E402
from bench._rig import (  # noqa: E402
    addTrue, connectRetrying, freePort, runReactor, startDaemonProc, startVM, stopAllHard, waitPath)

#: The environment the guest agent gives its commands.
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/", "PROKSHY": "1"}

LATENCY_KINDS = ("spawn", "api", "qga", "daemon_unix", "daemon_tcp")
RATE_KINDS = ("spawn", "api", "qga")


class _Ended(ProcessProtocol):
    def __init__(self):
        self.ended = defer.Deferred()

    def connectionMade(self):
        self.transport.closeStdin()

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


async def spawnOnce(reactor, path):
    proto = _Ended()
    reactor.spawnProcess(proto, path, [path], env=ENV)
    code = await proto.ended
    if code != 0:
        raise RuntimeError("local spawn of %s exited %r" % (path, code))


async def _checked(d):
    result = await d
    if result.exitStatus != 0:
        raise RuntimeError("exec true: %r" % (result,))


async def measure(reactor, execs=200, rateExecs=800, inFlight=16, repeat=3, install=True,
                  log=lambda m: None):
    """
    @return: {"repeats": [{"<kind>_p50_ms": ..., "<kind>_rate": ...}, ...],
        "skipped": {"qga": why, ...}, "info": {...}}
    """
    work = tempfile.mkdtemp(prefix="pexecs-")
    procs, qga, sessions, proto = [], None, [], None
    skipped, info = {}, {}
    try:
        exe, why = _qga.findOrInstall(install, log)
        if exe is None:
            skipped["qga"] = why
        else:
            qga = _qga.QGA(exe, work)
            info["qga"] = exe
        a, b = os.path.join(work, "a"), os.path.join(work, "b")
        os.mkdir(a)
        os.mkdir(b)
        sockA, _logA, p = startVM(a)
        procs += p
        true = addTrue(a)
        sockB, _logB, p = startVM(b)
        procs += p
        addTrue(b)
        ctl, port = os.path.join(work, "daemon.sock"), freePort()
        daemon, _dlog = startDaemonProc(work, sockB, ["unix:" + ctl, "tcp:%d:interface=127.0.0.1" % (port,)])
        procs.append(daemon)
        waitPath(ctl)

        def probe(session):
            return _checked(session.exec("true"))

        api = await connectRetrying(reactor, UNIXClientEndpoint(reactor, sockA), probe=probe)
        unix = await connectRetrying(reactor, UNIXClientEndpoint(reactor, ctl), probe=probe)
        tcp = await connectRetrying(reactor, TCP4ClientEndpoint(reactor, "127.0.0.1", port), probe=probe)
        sessions = [api, unix, tcp]
        if qga is not None:
            proto = await _qga.connect(reactor, qga.sock)

        once = {
            "spawn": lambda: spawnOnce(reactor, true),
            "api": lambda: _checked(api.exec("true")),
            "daemon_unix": lambda: _checked(unix.exec("true")),
            "daemon_tcp": lambda: _checked(tcp.exec("true")),
        }
        if proto is not None:
            once["qga"] = lambda: proto.execTrue(true)
        kinds = [k for k in LATENCY_KINDS if k in once]
        # Warm up every path (imports, caches, the first spawns).
        for _ in range(10):
            for k in kinds:
                await once[k]()

        repeats = []
        for r in range(repeat):
            times = {k: [] for k in kinds}
            for i in range(execs):
                for j in range(len(kinds)):
                    k = kinds[(i + j) % len(kinds)]
                    t0 = time.perf_counter()
                    await once[k]()
                    times[k].append(time.perf_counter() - t0)
            row = {"%s_p50_ms" % k: 1e3 * statistics.median(v) for k, v in times.items()}
            rkinds = [k for k in RATE_KINDS if k in once]
            for j in range(len(rkinds)):
                k = rkinds[(r + j) % len(rkinds)]
                row["%s_rate" % k] = await _rate(once[k], rateExecs, inFlight)
            log("  execs repeat %d: %s" % (r + 1, ", ".join("%s %.3g" % kv for kv in sorted(row.items()))))
            repeats.append(row)
        info.update(execs=execs, rateExecs=rateExecs, inFlight=inFlight, command=true)
        return {"repeats": repeats, "skipped": skipped, "info": info}
    finally:
        if proto is not None:
            proto.transport.loseConnection()
        for s in sessions:
            try:
                s.mux.link.transport.loseConnection()
            except Exception:
                pass
        stopAllHard(procs)
        if qga is not None:
            qga.stop()
        shutil.rmtree(work, ignore_errors=True)


async def _rate(once, n, inFlight):
    left = [n]

    async def worker():
        while left[0] > 0:
            left[0] -= 1
            await once()

    t0 = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(inFlight)], consumeErrors=True)
    return n / (time.perf_counter() - t0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--execs", type=int, default=200)
    parser.add_argument("--rate-execs", type=int, default=800)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    args = parser.parse_args(argv)
    result = runReactor(lambda reactor: measure(
        reactor, args.execs, args.rate_execs, args.in_flight, args.repeat,
        log=lambda m: print(m, file=sys.stderr, flush=True)), timeout=900)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for k, why in result["skipped"].items():
            print("%s: skipped: %s" % (k, why))
    return 0


if __name__ == "__main__":
    sys.exit(main())
