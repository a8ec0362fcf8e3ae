"""
The QEMU guest agent (qemu-ga) as a peer to measure prokshy against: found
or installed (Debian's C{qemu-guest-agent}), started on a unix socket of
its own and driven with its JSON commands, as a host tool would over a
virtio-serial port.

    python bench/qga.py [--execs 200] [--in-flight 16]

Prints its C{guest-exec} + C{guest-exec-status} round trip p50 for
C{/bin/true} and its execs/s with C{--in-flight} execs outstanding.

qemu-ga serves one client at a time, answers in order (so requests may be
pipelined on one connection), and exits if a client disconnects with a
reply unread: the client here always reads every reply before it closes.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from twisted.internet import defer  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402

#: Where Debian puts it.
CANDIDATES = ("/usr/sbin/qemu-ga", "/usr/bin/qemu-ga")


def findOrInstall(install=True, log=lambda msg: None):
    """
    @return: (the path of qemu-ga, None) or (None, why it cannot be had).
    """
    found = shutil.which("qemu-ga") or next((p for p in CANDIDATES if os.access(p, os.X_OK)), None)
    if found:
        return found, None
    if not install:
        return None, "qemu-ga is not installed"
    if os.geteuid() != 0:
        return None, "qemu-ga is not installed and installing it needs root"
    if not shutil.which("apt-get"):
        return None, "qemu-ga is not installed and there is no apt-get to install qemu-guest-agent"
    log("installing Debian's qemu-guest-agent with apt-get (for the qemu-ga rows)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    why = None
    for cmd in (["apt-get", "install", "-y", "-q", "--no-install-recommends", "qemu-guest-agent"],
                ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", "qemu-guest-agent"]):
        try:
            r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            why = "%s: %s" % (" ".join(cmd[:2]), e)
            continue
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
            why = "%s exited %d: %s" % (" ".join(cmd[:3]), r.returncode, tail[0][:200])
        found = shutil.which("qemu-ga") or next((p for p in CANDIDATES if os.access(p, os.X_OK)), None)
        if found:
            return found, None
    return None, "qemu-guest-agent could not be installed (%s)" % (why or "no qemu-ga after install",)


class QGA:
    """
    A qemu-ga process on a unix socket in a fresh directory under C{work}.
    """

    def __init__(self, exe, work):
        self.dir = tempfile.mkdtemp(prefix="qga-", dir=work)
        self.sock = os.path.join(self.dir, "qga.sock")
        self.log = os.path.join(self.dir, "qga.log")
        self.proc = subprocess.Popen(
            [exe, "-m", "unix-listen", "-p", self.sock, "-t", self.dir, "-l", self.log],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("qemu-ga did not create its socket (exit %s)" % (self.proc.poll(),))
            time.sleep(0.02)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class QGAProtocol(Protocol):
    """
    qemu-ga's JSON commands over one connection: L{call} returns a Deferred
    of the reply's C{return} value; replies come in order, so calls may be
    pipelined.
    """

    def __init__(self):
        self.buf = ""
        self.waiting = []
        self.decoder = json.JSONDecoder()

    def call(self, command, arguments=None):
        message = {"execute": command}
        if arguments is not None:
            message["arguments"] = arguments
        d = defer.Deferred()
        self.waiting.append(d)
        self.transport.write(json.dumps(message).encode() + b"\n")
        return d

    def dataReceived(self, data):
        self.buf += data.decode()
        while True:
            text = self.buf.lstrip()
            if not text:
                self.buf = ""
                return
            try:
                obj, end = self.decoder.raw_decode(text)
            except ValueError:
                self.buf = text
                return
            self.buf = text[end:]
            d = self.waiting.pop(0)
            if "return" in obj:
                d.callback(obj["return"])
            else:
                d.errback(RuntimeError("qemu-ga: %s" % (obj.get("error", obj),)))

    def connectionLost(self, reason):
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.errback(reason)

    async def execTrue(self, path, maxPolls=100000):
        """
        C{guest-exec} of C{path} with its output captured, then
        C{guest-exec-status} at once after each reply until it has exited.

        @return: how many status polls it took.
        """
        r = await self.call("guest-exec", {"path": path, "capture-output": True})
        pid = r["pid"]
        for polls in range(1, maxPolls + 1):
            status = await self.call("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                if status.get("exitcode") != 0:
                    raise RuntimeError("qemu-ga: %s exited %r" % (path, status))
                return polls
        raise RuntimeError("qemu-ga: %s did not exit after %d polls" % (path, maxPolls))


async def connect(reactor, sock):
    from twisted.internet.endpoints import UNIXClientEndpoint

    proto = await UNIXClientEndpoint(reactor, sock).connect(Factory.forProtocol(QGAProtocol))
    await proto.call("guest-ping")
    return proto


def main(argv=None):
    import argparse
    import statistics

    from bench._rig import runReactor

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--execs", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=16)
    args = parser.parse_args(argv)
    exe, why = findOrInstall(log=lambda m: print(m, file=sys.stderr))
    if exe is None:
        print("skipped: " + why)
        return 0
    work = tempfile.mkdtemp(prefix="pqga-")
    qga = QGA(exe, work)
    true = shutil.which("true")

    async def run(reactor):
        proto = await connect(reactor, qga.sock)
        times = []
        for _ in range(args.execs):
            t0 = time.perf_counter()
            await proto.execTrue(true)
            times.append(time.perf_counter() - t0)
        left = [args.execs]

        async def worker():
            while left[0] > 0:
                left[0] -= 1
                await proto.execTrue(true)

        t0 = time.perf_counter()
        await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(args.in_flight)])
        rate = args.execs / (time.perf_counter() - t0)
        proto.transport.loseConnection()
        return statistics.median(times), rate

    try:
        p50, rate = runReactor(run, timeout=120)
    finally:
        qga.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("qemu-ga exec+status p50 %.2f ms; %.0f execs/s with %d in flight" % (p50 * 1e3, rate, args.in_flight))
    return 0


if __name__ == "__main__":
    sys.exit(main())
