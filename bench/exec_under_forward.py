"""
An exec's round trip through the daemon while a forward saturates the same
VM channel, as a ratio to the same exec on the idle channel in the same run
(issue 9: the line protocol, exec and forwards share the channel without
starving each other).

    python bench/exec_under_forward.py [--execs 30] [--seconds 60]

The real processes, as in use: C{prokshy-vmsim} (bhyve mode), the guest
agent and C{twistd -n prokshy-host --forward 127.0.0.1:P:127.0.0.1:G},
where G is a server "in the guest" (on this machine's loopback) that sends
zeros as fast as it can.  A host client reads everything from P while
C{--execs} execs of a command that exits at once run one after the other
through the daemon's unix socket.  Prints p50 and max, idle and loaded,
their ratio, and the forward's MB/s meanwhile.  Bounded: every wait has a
deadline, and the whole run at most C{--seconds}.
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.endpoints import UNIXClientEndpoint  # noqa: E402

from bench._rig import freePort, startVM, stopAll  # noqa: E402
from prokshy.host.client import connectSession  # noqa: E402
from prokshy.streams.stream import StreamRefused  # noqa: E402


def _source():
    """
    A server that sends zeros to each client until it goes away.
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def serve():
        while True:
            conn, _ = server.accept()
            threading.Thread(target=_flood, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


def _flood(conn):
    chunk = bytes(65536)
    try:
        while True:
            conn.sendall(chunk)
    except OSError:
        conn.close()


class _Sink:
    def __init__(self, port, deadline):
        self.port = port
        self.deadline = deadline
        self.received = 0
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        conn = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        with conn:
            while not self.stop and time.monotonic() < self.deadline:
                try:
                    data = conn.recv(262144)
                except OSError:
                    break  # the daemon stopped under us, at the end
                if not data:
                    break
                self.received += len(data)


async def _execs(session, n, deadline):
    times = []
    for _ in range(n):
        if time.monotonic() > deadline:
            raise RuntimeError("out of time")
        t0 = time.perf_counter()
        result = await session.exec("nop")
        times.append(time.perf_counter() - t0)
        assert result.exitStatus == 0, result
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--execs", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    deadline = time.monotonic() + args.seconds
    work = tempfile.mkdtemp(prefix="pbench-")
    sock, _log, procs = startVM(work)
    nop = os.path.join(work, "command.d", "nop")
    with open(nop, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(nop, 0o755)
    guestPort, hostPort = _source(), freePort()
    daemon = os.path.join(work, "daemon.sock")
    procs.append(
        subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "--logfile", os.path.join(work, "daemon.log"), "prokshy-host", "--socket-path", sock,
             "--listen", "unix:" + daemon, "--forward", "127.0.0.1:%d:127.0.0.1:%d" % (hostPort, guestPort)],
            env=dict(os.environ, PYTHONPATH=ROOT),
        )
    )

    async def run(reactor):
        for _ in range(100):
            if os.path.exists(daemon):
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        session = await connectSession(reactor, UNIXClientEndpoint(reactor, daemon))
        while True:  # until the VM's session is up, then warm up
            try:
                await _execs(session, 3, deadline)
                break
            except StreamRefused:
                if time.monotonic() > deadline:
                    raise
                await task.deferLater(reactor, 0.1, lambda: None)
        idle = await _execs(session, args.execs, deadline)
        sink = _Sink(hostPort, deadline)
        sink.thread.start()
        while sink.received < 4 << 20 and time.monotonic() < deadline:
            await task.deferLater(reactor, 0.05, lambda: None)
        before, t0 = sink.received, time.perf_counter()
        loaded = await _execs(session, args.execs, deadline)
        rate = (sink.received - before) / (time.perf_counter() - t0) / 1e6
        sink.stop = True
        p50i, p50l = statistics.median(idle), statistics.median(loaded)
        print(
            "exec p50 idle %.2f ms (max %.2f); while a forward moves %.1f MB/s: p50 %.2f ms (max %.2f); "
            "ratio %.2f" % (p50i * 1e3, max(idle) * 1e3, rate, p50l * 1e3, max(loaded) * 1e3, p50l / p50i)
        )

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    finally:
        stopAll(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
