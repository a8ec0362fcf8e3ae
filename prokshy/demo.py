# -*- test-case-name: tests.system.test_demo -*-
"""
C{prokshy-demo}: the whole stack in one process, on loopback.

It starts two simulated bhyve VMs (L{prokshy.sim.vmsim.VMSim}), the real
guest agent on each (with the sample commands of C{etc/prokshy/command.d}),
and the real host daemon on C{tcp:127.0.0.1:PORT} and a unix socket.  Then
it prints what to try and serves until Ctrl-C, or, with C{--tour}, runs the
tour itself and exits 0 only if every step succeeded.
"""

import argparse
import os
import shutil
import socket
import stat
import sys
import tempfile
import time

from twisted.internet import defer, task
from twisted.internet.utils import getProcessOutputAndValue

from prokshy._version import __version__

VMS = ("web", "db")


def sampleCommands():
    """
    The directory of the sample commands shipped with the package.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [
        os.path.join(here, "examples", "command.d"),
        os.path.join(os.path.dirname(here), "etc", "prokshy", "command.d"),
    ]
    for path in candidates:
        if os.path.isdir(path) and os.listdir(path):
            return path
    raise SystemExit("prokshy-demo: the sample commands are missing from this installation")


def prepareCommands(workdir):
    """
    Copy the samples into a private command.d with safe modes.
    """
    target = os.path.join(workdir, "command.d")
    os.mkdir(target, 0o755)
    os.chmod(target, 0o755)
    source = sampleCommands()
    for name in sorted(os.listdir(source)):
        if name.startswith(".") or name.startswith("__"):
            continue
        path = os.path.join(source, name)
        if os.path.isfile(path):
            dest = os.path.join(target, name)
            shutil.copyfile(path, dest)
            os.chmod(dest, 0o755)
    return target


def freePort():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Demo:
    """
    The running stack.
    """

    def __init__(self, reactor, workdir, port):
        self.reactor = reactor
        self.workdir = workdir
        self.port = port
        self.sims = []
        self.services = []
        self.unixPath = os.path.join(workdir, "prokshy.sock")
        self.daemon = None

    def start(self):
        from prokshy.sim.vmsim import VMSim
        from prokshy.tap import guest, host

        commands = prepareCommands(self.workdir)
        vmArgs = []
        for name in VMS:
            sock = os.path.join(self.workdir, name + ".sock")
            dev = os.path.join(self.workdir, name + ".dev")
            sim = VMSim(self.reactor, sock, dev, mode="bhyve")
            sim.start()
            self.sims.append(sim)
            opts = guest.Options()
            opts.parseOptions(["--device", dev, "--command-dir", commands])
            svc = guest.makeService(opts, self.reactor)
            svc.startService()
            self.services.append(svc)
            vmArgs += ["--vm", "%s=%s" % (name, sock)]
        opts = host.Options()
        opts.parseOptions(
            [
                "--listen", "tcp:%d:interface=127.0.0.1" % (self.port,),
                "--listen", "unix:%s" % (self.unixPath,),
            ]
            + vmArgs
        )
        svc = host.makeService(opts, self.reactor)
        svc.startService()
        self.services.append(svc)
        self.daemon = svc.daemon

    @defer.inlineCallbacks
    def waitUp(self, timeout=15.0, until=None):
        deadline = time.time() + timeout
        while time.time() < deadline and not (until is not None and until.called):
            if all(vm.state == "up" for vm in self.daemon.vms.values()):
                return True
            yield task.deferLater(self.reactor, 0.05, lambda: None)
        return False

    @defer.inlineCallbacks
    def stop(self):
        for svc in reversed(self.services):
            yield svc.stopService()
        for sim in self.sims:
            yield sim.stop()


def banner(demo):
    tcp = "tcp:host=127.0.0.1:port=%d" % (demo.port,)
    u = demo.unixPath
    return """
prokshy %(version)s demo: two simulated bhyve VMs (web, db), each with the real
guest agent, and the host daemon on 127.0.0.1:%(port)d and %(unix)s.

Try, in another terminal:

  prokshy --connect %(tcp)s --command sysinfo --from-string ''
  prokshy --socket-path %(unix)s --all-vms --command sysinfo --from-string ''
  prokshy --socket-path %(unix)s --vm db --command fileio --from-string 'filename=/etc/hostname'
  prokshy --socket-path %(unix)s --status
  echo sysinfo | nc -U %(unix)s
  nc 127.0.0.1 %(port)d          (then type: sysinfo)

Commands live in %(cmds)s. Ctrl-C stops the demo.
""" % {
        "version": __version__,
        "port": demo.port,
        "unix": u,
        "tcp": tcp,
        "cmds": os.path.join(demo.workdir, "command.d"),
    }


def _cli(*args):
    return [sys.executable, "-m", "prokshy.cli.main"] + list(args)


_NC = r"""
import socket, sys
family, addr = (socket.AF_UNIX, sys.argv[1]) if sys.argv[1].startswith("/") else (socket.AF_INET, ("127.0.0.1", int(sys.argv[1])))
s = socket.socket(family)
s.settimeout(20)
s.connect(addr)
s.sendall(sys.argv[2].encode() + b"\n")
out = b""
while True:
    data = s.recv(65536)
    if not data:
        break
    out += data
sys.stdout.buffer.write(out)
"""


def tourSteps(demo):
    """
    (title, argv, check) for each step of the tour.
    """
    tcp = "tcp:host=127.0.0.1:port=%d" % (demo.port,)
    u = demo.unixPath
    hostname = lambda out: b"general.hostname = " in out
    return [
        ("CLI over TCP: sysinfo on the default VM (web)",
         _cli("--connect", tcp, "--command", "sysinfo", "--from-string", ""), hostname),
        ("CLI over the unix socket, fan-out to every VM",
         _cli("--socket-path", u, "--all-vms", "--command", "sysinfo", "--from-string", ""),
         lambda out: b"[web] general.hostname" in out and b"[db] general.hostname" in out),
        ("fan-out with --json, one result per VM",
         _cli("--socket-path", u, "--all-vms", "--json", "--command", "sysinfo", "--from-string", ""),
         lambda out: out.count(b'"status": 0') == 2),
        ("fileio: write a file in the db VM, then read it back",
         _cli("--socket-path", u, "--vm", "db", "--command", "fileio", "--from-string",
              "mode=write,filename=%s,content=aGVsbG8gZnJvbSB0aGUgaG9zdAo=" % (os.path.join(demo.workdir, "hello.txt"),)),
         lambda out: True),
        ("", _cli("--socket-path", u, "--vm", "db", "--command", "fileio", "--from-string",
                  "filename=%s" % (os.path.join(demo.workdir, "hello.txt"),)),
         lambda out: out.strip() == b"aGVsbG8gZnJvbSB0aGUgaG9zdAo="),
        ("daemon status",
         _cli("--socket-path", u, "--status"),
         lambda out: out.count(b" up ") >= 2),
        ("the original line protocol, like: echo sysinfo | nc -U %s" % (u,),
         [sys.executable, "-c", _NC, u, "sysinfo"], hostname),
        ("the line protocol over TCP, like: nc 127.0.0.1 %d" % (demo.port,),
         [sys.executable, "-c", _NC, str(demo.port), "sysinfo"], hostname),
        ("an unknown command is refused with exit 127",
         _cli("--socket-path", u, "--command", "nosuchcommand", "--from-string", ""),
         None),
    ]


@defer.inlineCallbacks
def runTour(reactor, demo, out):
    ok = True
    env = dict(os.environ)
    pkgRoot = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkgRoot] + [p for p in [env.get("PYTHONPATH")] if p])
    for title, argv, check in tourSteps(demo):
        shown = " ".join(_quote(a) for a in argv[1:] if a != _NC)
        if title:
            out.write("\n== %s\n" % (title,))
        out.write("$ %s\n" % (shown.replace("-m prokshy.cli.main", "prokshy").replace("-c ", "nc-like "),))
        stdout, stderr, code = yield getProcessOutputAndValue(argv[0], argv[1:], env=env, reactor=reactor)
        out.write(stdout.decode("utf-8", "replace"))
        if stderr:
            out.write(stderr.decode("utf-8", "replace"))
        if check is None:
            good = code == 127
        else:
            good = code == 0 and check(stdout)
        out.write("-> exit %d: %s\n" % (code, "ok" if good else "FAILED"))
        out.flush()
        ok = ok and good
    return ok


def _quote(arg):
    return arg if arg and all(c.isalnum() or c in "-_./:=,@" for c in arg) else "'%s'" % arg.replace("'", "'\\''")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="prokshy-demo",
        description="Run prokshy on two simulated VMs, all on loopback.",
    )
    parser.add_argument("--tour", action="store_true", help="run the tour and exit (0 if every step succeeded)")
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: 7000; with --tour a free one)")
    args = parser.parse_args(argv)
    port = args.port if args.port is not None else (freePort() if args.tour else 7000)

    def run(reactor):
        return defer.ensureDeferred(_run(reactor, args, port))

    task.react(run)


def cleanUp(workdir, keep=None):
    """
    Remove the demo's work directory (sockets, lock links, pty links,
    command.d), or everything in it but C{keep} (the log, after a failure).
    """
    if keep is None:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    for name in os.listdir(workdir):
        if name == keep:
            continue
        path = os.path.join(workdir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass


async def _run(reactor, args, port):
    from twisted.logger import globalLogBeginner, textFileLogObserver, FilteringLogObserver, LogLevelFilterPredicate, LogLevel

    workdir = tempfile.mkdtemp(prefix="prokshy-demo-")
    os.chmod(workdir, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    logPath = os.path.join(workdir, "demo.log")
    logFile = open(logPath, "a")
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(logFile), [LogLevelFilterPredicate(LogLevel.info)])],
        redirectStandardIO=False,
    )
    demo = Demo(reactor, workdir, port)
    finished = defer.Deferred()
    stopped = defer.Deferred()

    def beforeShutdown():
        # Ctrl-C (or any reactor.stop): let the finally below stop the stack
        # and remove the work directory before the reactor goes away.
        if not stopped.called:
            stopped.callback(None)
        return finished

    reactor.addSystemEventTrigger("before", "shutdown", beforeShutdown)
    failed = True
    try:
        try:
            demo.start()
        except Exception as e:
            sys.stderr.write("prokshy-demo: cannot start: %s\n" % (e,))
            raise SystemExit(1)
        up = await demo.waitUp(until=stopped)
        if stopped.called:
            failed = False
            return
        if not up:
            sys.stderr.write("prokshy-demo: the VMs did not come up\n")
            raise SystemExit(1)
        if args.tour:
            ok = await runTour(reactor, demo, sys.stdout)
            failed = not ok
            sys.stdout.write("\ntour %s\n" % ("passed" if ok else "FAILED",))
            raise SystemExit(0 if ok else 1)
        sys.stdout.write(banner(demo))
        sys.stdout.write("log: %s (removed when the demo stops)\n" % (logPath,))
        sys.stdout.flush()
        await stopped
        failed = False
    finally:
        try:
            await demo.stop()
        finally:
            logFile.close()
            cleanUp(workdir, keep=os.path.basename(logPath) if failed else None)
            if failed:
                sys.stderr.write("prokshy-demo: log kept in %s\n" % (logPath,))
            finished.callback(None)


if __name__ == "__main__":
    main()

