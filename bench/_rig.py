"""
What the stream benchmarks share: a simulated VM with the real guest agent
in child processes (as in real use), and one timed transfer each way.
"""

import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Commands the benchmarks run: N bytes of zeros out, stdin discarded or counted.
COMMANDS = {
    "zeros": 'exec head -c "$(cat)" /dev/zero\n',
    "sink": "exec cat >/dev/null\n",
    "count": "exec wc -c\n",
}


def startVM(work, simArgs=(), agentArgs=(), twistdArgs=()):
    """
    Start C{prokshy-vmsim} and the guest agent (twistd, cwd /) on its
    device, with L{COMMANDS}, in C{work}.

    @param agentArgs: more C{prokshy-guest} options.
    @param twistdArgs: more twistd options (before the plugin's name),
        e.g. C{--profile FILE --profiler cprofile --savestats}.

    @return: (the VM's socket path, the agent's log path, the processes).
    """
    env = dict(os.environ, PYTHONPATH=ROOT)
    cmd = os.path.join(work, "command.d")
    os.mkdir(cmd, 0o755)
    for name, body in COMMANDS.items():
        path = os.path.join(cmd, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + body)
        os.chmod(path, 0o755)
    sock, dev, procs = startSim(work, simArgs)
    log = os.path.join(work, "agent.log")
    procs.append(
        subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "--logfile", log] + list(twistdArgs)
            + ["prokshy-guest", "--device", dev,
               "--command-dir", cmd, "--max-output", "0", "--timeout", "0"] + list(agentArgs),
            env=env, cwd="/",
        )
    )
    return sock, log, procs


def startSim(work, simArgs=()):
    """
    Start C{prokshy-vmsim} alone in C{work} (socket C{vm.sock}, device
    link C{vm.dev}) and wait until both exist.

    @return: (the socket path, the device link, [the process]).
    """
    env = dict(os.environ, PYTHONPATH=ROOT)
    sock, dev = os.path.join(work, "vm.sock"), os.path.join(work, "vm.dev")
    sim = [sys.executable, "-m", "prokshy.sim.vmsim", "--socket", sock, "--device-link", dev] + list(simArgs)
    procs = [subprocess.Popen(sim, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    for _ in range(200):
        if os.path.exists(dev) and os.path.exists(sock):
            break
        time.sleep(0.05)
    return sock, dev, procs


def stopAll(procs):
    for p in procs:
        p.terminate()
        p.wait()


async def download(session, n):
    """
    Move C{n} bytes guest->host (C{zeros}); return the seconds it took.
    """
    got = [0]
    t0 = time.perf_counter()
    running = await session.execStream("zeros", lambda d: got.__setitem__(0, got[0] + len(d)), lambda d: None)
    running.write(str(n).encode())
    running.closeStdin()
    result = await running.result
    seconds = time.perf_counter() - t0
    assert got[0] == n and result.exitStatus == 0, (got, result)
    return seconds


async def upload(session, name, n, onStdout=lambda d: None, data=b"\0" * 65536):
    """
    Move C{n} bytes host->guest into command C{name}, as fast as its credit
    allows; return (the seconds it took, its L{ExecResult}).

    @param data: the bytes to send, repeated (cut to C{n} in all), or
        C{data(offset) -> bytes}, the piece that starts at C{offset}.
    """
    t0 = time.perf_counter()
    running = await session.execStream(name, onStdout, lambda d: None)
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
            piece = (data(sent) if callable(data) else data)[: n - sent]
            running.write(piece)
            sent += len(piece)
        if sent >= n:
            running.unregisterProducer()
            running.closeStdin()

    running.registerProducer(src, True)
    pump()
    result = await running.result
    return time.perf_counter() - t0, result


def freePort():
    """
    A TCP port on 127.0.0.1 that nothing listens on now.
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# What bench/run.py's groups share (each group runs in a process of its own,
# with its own reactor).

def runReactor(coroFunction, timeout=None):
    """
    Run C{coroFunction(reactor)} (an async function) under the default
    reactor and return its result (or raise its exception), without
    C{sys.exit} as C{task.react} does.  With C{timeout}, give up (raise
    L{TimeoutError}) after that many seconds.
    """
    from twisted.internet import defer, reactor

    box = {}

    def start():
        d = defer.ensureDeferred(coroFunction(reactor))
        if timeout:
            d.addTimeout(timeout, reactor)

        def done(result):
            box["result"] = result
            reactor.stop()

        def failed(f):
            box["failure"] = f
            reactor.stop()

        d.addCallbacks(done, failed)

    reactor.callWhenRunning(start)
    reactor.run()
    if "failure" in box:
        box["failure"].raiseException()
    return box.get("result")


def procCpuSeconds(pid):
    """
    The user + system CPU seconds process C{pid} has used so far (NaN if
    it is gone).
    """
    if pid == os.getpid():
        t = os.times()
        return t.user + t.system
    # The scheduler's own account, in ns, summed over the threads: finer
    # than /proc/PID/stat's clock ticks (10 ms), which idle rows need.
    try:
        total = 0
        for tid in os.listdir("/proc/%d/task" % (pid,)):
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rssBytes(pid):
    """
    The resident set size of process C{pid} (C{/proc/PID/status} VmRSS).
    """
    with open("/proc/%d/status" % (pid,)) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError("no VmRSS for pid %d" % (pid,))


def addTrue(work):
    """
    Copy C{/bin/true} into the VM's command.d as C{true} (the same binary
    the local spawn baselines run).

    @return: its path.
    """
    import shutil

    path = os.path.join(work, "command.d", "true")
    shutil.copy(shutil.which("true") or "/bin/true", path)
    os.chmod(path, 0o755)
    return path


def startDaemonProc(work, vmSock, listens, extra=()):
    """
    Start C{twistd -n prokshy-host --socket-path VMSOCK --listen ...}.

    @return: (the process, its log path).
    """
    log = os.path.join(work, "daemon-%d.log" % (len(os.listdir(work)),))
    cmd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
           "--logfile", log, "prokshy-host", "--socket-path", vmSock]
    for listen in listens:
        cmd += ["--listen", listen]
    proc = subprocess.Popen(cmd + list(extra), env=dict(os.environ, PYTHONPATH=ROOT), cwd=work)
    return proc, log


def waitPath(path, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError("%s did not appear within %g s" % (path, seconds))
        time.sleep(0.05)


async def connectRetrying(reactor, endpoint, seconds=30.0, probe=None):
    """
    L{connectSession} until it succeeds (and, with C{probe}, until
    C{await probe(session)} succeeds), within C{seconds}.
    """
    from twisted.internet import task
    from prokshy.host.client import connectSession

    deadline = time.monotonic() + seconds
    while True:
        try:
            session = await connectSession(reactor, endpoint)
            if probe is not None:
                await probe(session)
            return session
        except Exception:
            if time.monotonic() > deadline:
                raise
            await task.deferLater(reactor, 0.2, lambda: None)


def stopAllHard(procs, grace=5.0):
    """
    SIGTERM every process, SIGKILL those still there after C{grace}.
    """
    for p in procs:
        if p.poll() is None:
            try:
                p.terminate()
            except OSError:
                pass
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
