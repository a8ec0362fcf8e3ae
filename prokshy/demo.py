# -*- test-case-name: tests.system.test_demo -*-
"""
C{prokshy-demo}: the whole stack in one process, on loopback.

It starts two simulated bhyve VMs (L{prokshy.sim.vmsim.VMSim}), the real
guest agent on each (with the sample commands of C{etc/prokshy/command.d}),
and the real host daemon on C{tcp:127.0.0.1:PORT} and a unix socket.  In
the C{web} VM a small HTTP server runs (Python's C{http.server} as a child
process, on a port of 127.0.0.1 it picks itself, serving an C{index.html}
that carries a token of this run), and the daemon forwards a free host port
to it (C{--forward web=127.0.0.1:HOSTPORT:127.0.0.1:GUESTPORT}; a port
taken before the daemon could listen on it is replaced by another).  Then
it prints what to try and serves until Ctrl-C, or, with C{--tour}, runs the
tour itself and exits 0 only if every step succeeded: among them a fetch
through the forward (with C{curl}, or C{urllib} where there is no C{curl})
whose body must be the index byte for byte, and C{prokshy --forwards},
which must list the forward active with that one connection counted.

Every child process ends with the demo, on Ctrl-C too.  The HTTP server
also ends by itself when its stdin closes, so it never outlives a demo that
was killed.
"""

import argparse
import json
import os
import secrets
import shutil
import socket
import stat
import sys
import tempfile
import time

from twisted.internet import defer, error, task
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger

from prokshy._version import __version__

VMS = ("web", "db")
#: The VM whose HTTP server a host port is forwarded to.
WEB_VM = "web"
#: Host ports tried for the forward: a free port may be taken by another
#: program between choosing it and the daemon listening on it.
FORWARD_TRIES = 5
#: Seconds the HTTP server has to say its port.
WEB_START_TIMEOUT = 15.0
#: Seconds it has to end on SIGTERM before it gets SIGKILL.
WEB_STOP_TIMEOUT = 5.0


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


_HTTP_SERVER = r"""
import functools, http.server, os, signal, sys, threading
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the demo stops this server itself
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
sys.stdout.write("%d\n" % (server.server_address[1],))
sys.stdout.flush()
def orphaned():
    sys.stdin.buffer.read()  # EOF: the demo is gone
    os._exit(0)
threading.Thread(target=orphaned, daemon=True).start()
server.serve_forever()
"""


def writeSite(workdir, token):
    """
    The HTTP server's directory, with an C{index.html} that carries
    C{token}.

    @return: C{(its path, the index's bytes)}.
    """
    root = os.path.join(workdir, "www")
    os.mkdir(root, 0o755)
    body = (
        "<!doctype html>\n<title>prokshy demo</title>\n"
        "<p>Hello from the %s VM, through a prokshy forward. Token: %s</p>\n" % (WEB_VM, token)
    ).encode("ascii")
    with open(os.path.join(root, "index.html"), "wb") as f:
        f.write(body)
    return root, body


class WebServer(ProcessProtocol):
    """
    The HTTP server "inside" the web VM: Python's C{http.server}, a child
    process with the guest agent's environment, on a port of 127.0.0.1 that
    it binds itself (no race) and says on stdout.  Its request log goes to
    the demo's log.

    @ivar port: that port, once L{start}'s Deferred has fired.
    """

    log = Logger()

    def __init__(self, reactor, root):
        self.reactor = reactor
        self.root = root
        self.port = None
        self.ready = defer.Deferred()
        self.ended = defer.Deferred()
        self._out = b""
        self._err = b""

    def start(self):
        """
        @return: a Deferred firing with the port once the server listens.
        """
        self.reactor.spawnProcess(
            self, sys.executable, [sys.executable, "-c", _HTTP_SERVER, self.root], env=dict(os.environ), path=self.root
        )

        def late(failure):
            failure.trap(defer.TimeoutError)
            raise RuntimeError("the HTTP server did not listen within %g s" % (WEB_START_TIMEOUT,))

        return self.ready.addTimeout(WEB_START_TIMEOUT, self.reactor).addErrback(late)

    def outReceived(self, data):
        self._out += data
        if self.port is None and b"\n" in self._out:
            self.port = int(self._out.split(b"\n", 1)[0])
            if not self.ready.called:
                self.ready.callback(self.port)

    def errReceived(self, data):
        lines = (self._err + data).split(b"\n")
        self._err = lines.pop()[-4096:]
        for line in lines:
            self.log.info("{vm} VM http.server: {line}", vm=WEB_VM, line=line.decode("utf-8", "replace"))

    def processEnded(self, reason):
        if not self.ready.called:
            self.ready.errback(RuntimeError("the HTTP server ended before listening (%s)" % (reason.value,)))
        self.ended.callback(None)

    def stop(self):
        """
        End the server: SIGTERM, and SIGKILL after L{WEB_STOP_TIMEOUT}.

        @return: a Deferred firing once it has ended.
        """
        if self.ended.called or self.transport is None:
            return defer.succeed(None)
        self._signal("TERM")
        killer = self.reactor.callLater(WEB_STOP_TIMEOUT, self._signal, "KILL")
        done = defer.Deferred()

        def ended(result):
            if killer.active():
                killer.cancel()
            done.callback(None)
            return result

        self.ended.addBoth(ended)
        return done

    def _signal(self, name):
        try:
            self.transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass


class Demo:
    """
    The running stack.

    @ivar hostPort: the host's end of the forward to the web VM's HTTP
        server (127.0.0.1).
    @ivar guestPort: that server's port inside the VM (127.0.0.1).
    @ivar forwardId: the forward's id in the daemon.
    @ivar body: the bytes the server serves at C{/}.
    """

    log = Logger()

    def __init__(self, reactor, workdir, port):
        self.reactor = reactor
        self.workdir = workdir
        self.port = port
        self.sims = []
        self.services = []
        self.unixPath = os.path.join(workdir, "prokshy.sock")
        self.daemon = None
        self.token = secrets.token_hex(8)
        self.web = None
        self.body = None
        self.hostPort = None
        self.guestPort = None
        self.forwardId = None

    def guestArgs(self, device, commands):
        """
        The guest agent's options (as after C{twistd -n prokshy-guest}).
        """
        return ["--device", device, "--command-dir", commands]

    def forwardSpec(self):
        return "%s=127.0.0.1:%d:127.0.0.1:%d" % (WEB_VM, self.hostPort, self.guestPort)

    @property
    def url(self):
        return "http://127.0.0.1:%d/" % (self.hostPort,)

    async def start(self):
        """
        Start the VMs with their agents, the web VM's HTTP server, and the
        daemon with its forward to that server.
        """
        from prokshy.sim.vmsim import VMSim
        from prokshy.tap import guest, host

        commands = prepareCommands(self.workdir)
        root, self.body = writeSite(self.workdir, self.token)
        self.web = WebServer(self.reactor, root)
        listening = self.web.start()
        vmArgs = []
        for name in VMS:
            sock = os.path.join(self.workdir, name + ".sock")
            dev = os.path.join(self.workdir, name + ".dev")
            sim = VMSim(self.reactor, sock, dev, mode="bhyve")
            sim.start()
            self.sims.append(sim)
            opts = guest.Options()
            opts.parseOptions(self.guestArgs(dev, commands))
            svc = guest.makeService(opts, self.reactor)
            svc.startService()
            self.services.append(svc)
            vmArgs += ["--vm", "%s=%s" % (name, sock)]
        self.guestPort = await listening
        self.hostPort = freePort()
        opts = host.Options()
        opts.parseOptions(
            [
                "--listen", "tcp:%d:interface=127.0.0.1" % (self.port,),
                "--listen", "unix:%s" % (self.unixPath,),
                "--forward", self.forwardSpec(),
            ]
            + vmArgs
        )
        svc = host.makeService(opts, self.reactor)
        svc.startService()
        self.services.append(svc)
        self.daemon = svc.daemon
        await self._forwardListening()

    async def _forwardListening(self):
        """
        Make sure the forward listens: while its port turns out taken (by
        another program since L{freePort} chose it), remove it and add it
        on another port, up to L{FORWARD_TRIES} ports in all.
        """
        from prokshy.forward.hostside import ForwardError
        from prokshy.forward.spec import parseSpec

        table = self.daemon.forwards
        (row,) = table.rows()
        tries = 1
        while row["state"] == "failed" and tries < FORWARD_TRIES:
            self.log.info("forward {spec}: {reason}; trying another port", spec=self.forwardSpec(), reason=row["reason"])
            if row["id"] is not None:
                table.remove(row["id"])
            self.hostPort = freePort()
            tries += 1
            try:
                row = await table.add("forward", parseSpec(self.forwardSpec()), origin="config")
            except ForwardError as e:
                row = {"id": None, "state": "failed", "reason": e.message}
        if row["state"] == "failed":
            raise RuntimeError("forward %s: %s" % (self.forwardSpec(), row["reason"]))
        self.forwardId = row["id"]

    def _forwardActive(self):
        forward = self.daemon.forwards.forwards.get(self.forwardId)
        return forward is not None and forward.state == "active"

    @defer.inlineCallbacks
    def waitUp(self, timeout=15.0, until=None):
        deadline = time.time() + timeout
        while time.time() < deadline and not (until is not None and until.called):
            if all(vm.state == "up" for vm in self.daemon.vms.values()) and self._forwardActive():
                return True
            yield task.deferLater(self.reactor, 0.05, lambda: None)
        return False

    @defer.inlineCallbacks
    def stop(self):
        try:
            for svc in reversed(self.services):
                yield svc.stopService()
            for sim in self.sims:
                yield sim.stop()
        finally:
            if self.web is not None:
                yield self.web.stop()


def banner(demo):
    tcp = "tcp:host=127.0.0.1:port=%d" % (demo.port,)
    u = demo.unixPath
    return """
prokshy %(version)s demo: two simulated bhyve VMs (web, db), each with the real
guest agent, and the host daemon on 127.0.0.1:%(port)d and %(unix)s.
An HTTP server listens on 127.0.0.1:%(gport)d in the web VM, and the daemon
forwards 127.0.0.1:%(hport)d to it (--forward %(spec)s).

Try, in another terminal:

  prokshy --connect %(tcp)s --command sysinfo --from-string ''
  prokshy --socket-path %(unix)s --all-vms --command sysinfo --from-string ''
  prokshy --socket-path %(unix)s --vm db --command fileio --from-string 'filename=/etc/hostname'
  prokshy --socket-path %(unix)s --status
  echo sysinfo | nc -U %(unix)s
  nc 127.0.0.1 %(port)d          (then type: sysinfo)
  curl %(url)s
  prokshy --socket-path %(unix)s --forwards

Commands live in %(cmds)s. Ctrl-C stops the demo.
""" % {
        "version": __version__,
        "port": demo.port,
        "unix": u,
        "tcp": tcp,
        "cmds": os.path.join(demo.workdir, "command.d"),
        "gport": demo.guestPort,
        "hport": demo.hostPort,
        "spec": demo.forwardSpec(),
        "url": demo.url,
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

_FETCH = r"""
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    body = opener.open(sys.argv[1], timeout=20).read()
except Exception as e:
    sys.exit("urllib-get: %s: %s" % (sys.argv[1], e))
sys.stdout.buffer.write(body)
"""

#: How the tour shows the scripts it runs with C{python -c}.
_SCRIPTS = {_NC: "nc-like", _FETCH: "urllib-get"}


def fetchArgv(url):
    """
    The tour's fetch of C{url}: C{curl} where there is one, else
    C{urllib}; no proxy either way.
    """
    curl = shutil.which("curl")
    if curl is not None:
        return [curl, "-sS", "--noproxy", "*", "--max-time", "20", url]
    return [sys.executable, "-c", _FETCH, url]


def forwardRow(demo, out):
    """
    The demo's forward in C{prokshy --forwards --json} output (one record
    of mode C{forwards}, docs/cli.md), or None.
    """
    records = [json.loads(line) for line in out.decode("utf-8").splitlines() if line.strip()]
    rows = [row for record in records if record.get("mode") == "forwards" for row in record.get("forwards") or ()]
    mine = [row for row in rows if row.get("id") == demo.forwardId]
    return mine[0] if len(mine) == 1 else None


def _forwardCounted(demo, out):
    row = forwardRow(demo, out)
    return (
        row is not None
        and row["state"] == "active"
        and (row["vm"], row["listen"], row["target"])
        == (WEB_VM, "127.0.0.1:%d" % (demo.hostPort,), "127.0.0.1:%d" % (demo.guestPort,))
        and row["total_connections"] == 1
        and row["bytes_to_target"] > 0
        and row["bytes_from_target"] >= len(demo.body)
    )


def _forwardListed(demo, out):
    listen = "127.0.0.1:%d" % (demo.hostPort,)
    return any(
        line.split()[:6] == [demo.forwardId, WEB_VM, "forward", listen, "127.0.0.1:%d" % (demo.guestPort,), "active"]
        for line in out.decode("utf-8").splitlines()
    )


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
        ("a host port forwarded to the web VM's HTTP server (127.0.0.1:%d in the VM)" % (demo.guestPort,),
         fetchArgv(demo.url), lambda out: out == demo.body),
        ("the daemon lists the forward: active, with that connection counted",
         _cli("--socket-path", u, "--forwards"), lambda out: _forwardListed(demo, out)),
        ("", _cli("--socket-path", u, "--forwards", "--json"), lambda out: _forwardCounted(demo, out)),
    ]


@defer.inlineCallbacks
def runTour(reactor, demo, out):
    ok = True
    env = dict(os.environ)
    pkgRoot = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkgRoot] + [p for p in [env.get("PYTHONPATH")] if p])
    for title, argv, check in tourSteps(demo):
        if title:
            out.write("\n== %s\n" % (title,))
        out.write("$ %s\n" % (shown(argv),))
        stdout, stderr, code = yield getProcessOutputAndValue(argv[0], argv[1:], env=env, reactor=reactor)
        for output in (stdout, stderr):
            text = output.decode("utf-8", "replace")
            out.write(text if not text or text.endswith("\n") else text + "\n")
        if check is None:
            good = code == 127
        else:
            try:
                good = code == 0 and bool(check(stdout))
            except Exception:  # output the check cannot read (not JSON, ...): the step failed
                good = False
        out.write("-> exit %d: %s\n" % (code, "ok" if good else "FAILED"))
        out.flush()
        ok = ok and good
    return ok


def shown(argv):
    """
    A tour step's command line as the tour prints it: C{prokshy ...} for
    the CLI, C{nc-like ...} or C{urllib-get ...} for the scripts, the
    program's name for others.
    """
    if argv[0] != sys.executable:
        return " ".join(_quote(a) for a in [os.path.basename(argv[0])] + argv[1:])
    if argv[1:3] == ["-m", "prokshy.cli.main"]:
        return " ".join(["prokshy"] + [_quote(a) for a in argv[3:]])
    if argv[1] == "-c" and argv[2] in _SCRIPTS:
        return " ".join([_SCRIPTS[argv[2]]] + [_quote(a) for a in argv[3:]])
    return " ".join(_quote(a) for a in argv)


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
            await demo.start()
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

