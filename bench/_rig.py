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


async def upload(session, name, n, onStdout=lambda d: None):
    """
    Move C{n} bytes host->guest into command C{name}, as fast as its credit
    allows; return (the seconds it took, its L{ExecResult}).
    """
    block = b"\0" * 65536
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
            running.write(block)
            sent += len(block)
        if sent >= n:
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
