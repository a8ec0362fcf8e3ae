"""
A harness for integration tests of the host daemon (C{twistd prokshy-host})
on real sockets, real ptys and real processes, by default all in the test's
process:

    client(s) --unix/tcp--> daemon --unix--> VMSim --pty--> guest agent --> /bin/sh scripts
                            (prokshy.tap.host)  (bhyve mode)    (prokshy.tap.guest)

L{HostHarness} starts C{N} simulated VMs (L{prokshy.sim.vmsim.VMSim}), the
real guest agent on each (built by C{prokshy.tap.guest.makeService}, with a
private C{command.d} of tiny C{#!/bin/sh} scripts, mode 0755), and the real
daemon (C{prokshy.tap.host.Options().parseOptions([...])},
C{makeService(opts, reactor)}, C{startService()}).  L{HostHarness.start}
fires once every VM is C{"up"} in C{daemon.vms[name].state}.

Everything started is stopped again through C{testCase.addCleanup}: client
connections first (and the daemon's side of them), then the daemon, the
agents (which kill their commands) and the simulators, so that trial's
dirty-reactor check passes.  AF_UNIX paths must be shorter than about 100
bytes, so all files live in a short temporary directory under C{/tmp}.

Options: C{daemon=False} (VMs only, for clients of a VM's own socket),
C{external=True} (each VM, simulator and agent, in a child process running
L{vmMain}: C{python -m tests.hostharness SOCKET DEVICE COMMAND_DIR ...}).
For tests that prove by counts and causes what they would otherwise time:
C{countConnects=True} (count, and hold, the daemon's connects toward its VMs:
L{VMConnects}), C{recordLegacy=True} and C{legacyArgWait=SECONDS} (the
daemon's line-protocol clients, recorded, with another argument wait).

Typical use::

    @inlineCallbacks
    def test_something(self):
        h = yield HostHarness(self, vms=("a", "b")).start()
        session = yield h.connect()                  # framed, unix listener
        result = yield session.exec("cat", b"hi", vm="b")
        out = yield h.legacy(b"cat\\nhi\\n")           # line protocol, bytes until close
"""

import os
import sys

from twisted.internet import defer, reactor as globalReactor, tcp
from twisted.internet.defer import Deferred, DeferredSemaphore, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol

from prokshy.host.client import HOST_PAYLOAD, HOST_WINDOW, HostProtocol
from prokshy.link.session import LinkConfig
from tests.harness import POLL, PACKAGE_ROOT, stayHere, groupAlive, shortTempDir, sleep, waitFor  # noqa: F401 (re-exported)

#: The directory holding the C{prokshy} package (and C{tests}).
ROOT = PACKAGE_ROOT

#: Scripts every VM's command.d gets.  C{vmname} is added per VM.
DEFAULT_SCRIPTS = {
    # stdin to stdout, byte-exact
    "cat": "#!/bin/sh\nexec cat\n",
    # output that depends on the input, through a shell
    "shout": "#!/bin/sh\nprintf 'got:%s' \"$(cat)\"\n",
    # stdout and stderr
    "both": "#!/bin/sh\necho out\necho err >&2\n",
    # a command that runs for a long time, telling its pid first
    "pidsleep": "#!/bin/sh\necho $$\nsleep 60\n",
    # exits with the status given on stdin
    "status": "#!/bin/sh\nexit \"$(cat)\"\n",
    # killed by a signal
    "killself": "#!/bin/sh\nkill -TERM $$\nsleep 5\n",
    # a lot of output
    "zeros": "#!/bin/sh\nexec head -c \"$(cat)\" /dev/zero\n",
    # tells its pid, then writes a line every 0.1 s until killed
    "ticker": "#!/bin/sh\necho $$\nwhile :; do echo tick; sleep 0.1; done\n",
}

#: Connection attempts in flight at once (see L{HostHarness.throttle}).
CONNECTS_IN_FLIGHT = 40



def writeCommands(directory, scripts):
    """
    Create C{directory} (mode 0755) holding one executable script (mode
    0755) per C{name: text} of C{scripts}.
    """
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o755)
    for name, text in scripts.items():
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)
    return directory


def rssKiB():
    """
    This process's resident set size, in KiB (from C{/proc/self/status}).
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


class GuestVM:
    """
    One simulated VM: a bhyve-mode L{VMSim} and the guest agent service on
    its device.

    @ivar name: the VM's name (as the daemon knows it).
    @ivar socketPath: the host side (what the daemon connects to).
    @ivar deviceLink: the guest side (what the agent opens).
    @ivar commandDir: the agent's command.d.
    @ivar sim: the current L{VMSim}, or None.
    @ivar agent: the current agent service, or None.
    """

    def __init__(self, reactor, name, directory, scripts, guestArgs=(), mode="bhyve"):
        self.reactor = reactor
        self.name = name
        self.socketPath = os.path.join(directory, name + ".sock")
        self.deviceLink = os.path.join(directory, name + ".dev")
        self.commandDir = writeCommands(
            os.path.join(directory, name + ".d"),
            dict(scripts, vmname="#!/bin/sh\necho %s\n" % (name,)),
        )
        self.guestArgs = list(guestArgs)
        self.mode = mode
        self.sim = None
        self.agent = None
        self.external = None

    def startSim(self):
        from prokshy.sim.vmsim import VMSim

        self.sim = VMSim(self.reactor, self.socketPath, self.deviceLink, mode=self.mode)
        self.sim.start()
        return self.sim

    def stopSim(self):
        sim, self.sim = self.sim, None
        return sim.stop() if sim is not None else defer.succeed(None)

    def runDir(self):
        """
        The agent's C{--run-dir}: beside the VM's socket, so that tests
        leave nothing outside their temporary directories.
        """
        return os.path.join(os.path.dirname(os.path.abspath(self.socketPath)), "run")

    def startAgent(self):
        from prokshy.tap import guest

        opts = guest.Options()
        opts.parseOptions(
            ["--device", self.deviceLink, "--command-dir", self.commandDir, "--run-dir", self.runDir()]
            + self.guestArgs
        )
        self.agent = guest.makeService(opts, self.reactor, chdir=stayHere)
        self.agent.startService()
        return self.agent

    def stopAgent(self):
        agent, self.agent = self.agent, None
        return agent.stopService() if agent is not None else defer.succeed(None)

    def startExternal(self):
        """
        Run the simulator and the agent in a child process instead (see
        L{vmMain}), as a real VM's agent runs apart from the host.

        @return: a Deferred firing once the child's VM is listening.
        """
        self.external = _VMProcess()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
        args = [sys.executable, "-m", "tests.hostharness", self.socketPath, self.deviceLink, self.commandDir]
        self.reactor.spawnProcess(self.external, sys.executable, args + self.guestArgs, env=env, path=ROOT)
        return self.external.ready

    def stopExternal(self):
        external, self.external = self.external, None
        if external is None or external.ended.called:
            return defer.succeed(None)
        external.transport.signalProcess("TERM")
        return external.ended

    @property
    def deviceService(self):
        from prokshy.transport.service import DeviceService

        if self.agent is None:
            return None
        for svc in self.agent:
            if isinstance(svc, DeviceService):
                return svc
        return None

    @property
    def deviceOpen(self):
        """
        Whether the agent has its device open (it is ready for a host).
        """
        svc = self.deviceService
        return svc is not None and svc.protocol is not None


class _VMProcess(ProcessProtocol):
    def __init__(self):
        self.ready = Deferred()
        self.ended = Deferred()
        self.output = b""

    def outReceived(self, data):
        self.output += data
        if b"ready\n" in self.output and not self.ready.called:
            self.ready.callback(None)

    def errReceived(self, data):
        self.output += data

    def processEnded(self, reason):
        if not self.ready.called:
            self.ready.errback(RuntimeError("the VM process failed: %r" % (self.output[-2000:],)))
        self.ended.callback(None)


def vmMain(argv):
    """
    A child process's VM: C{SOCKET DEVICE COMMAND_DIR [guest options]}.
    Prints C{ready} once the simulator listens and the agent runs; stops
    cleanly on SIGTERM.
    """
    from twisted.internet import reactor

    from prokshy.sim.vmsim import VMSim
    from prokshy.tap import guest

    socketPath, deviceLink, commandDir = argv[:3]
    # Commands run with cwd /: from there Twisted spawns them with
    # posix_spawn rather than fork.
    os.chdir("/")
    sim = VMSim(reactor, socketPath, deviceLink, mode="bhyve")
    sim.start()
    opts = guest.Options()
    # The record of running commands stays beside the VM's own files.
    runDir = os.path.join(os.path.dirname(os.path.abspath(socketPath)), "run")
    opts.parseOptions(["--device", deviceLink, "--command-dir", commandDir, "--run-dir", runDir] + list(argv[3:]))
    agent = guest.makeService(opts, reactor, chdir=stayHere)
    agent.startService()
    reactor.addSystemEventTrigger("before", "shutdown", agent.stopService)
    reactor.addSystemEventTrigger("before", "shutdown", sim.stop)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    reactor.run()


class VMConnects:
    """
    The daemon's connection attempts toward its VMs' sockets, counted per
    socket path; attempts toward a path can be held (left pending, as a
    connect to a stuck socket is) and released (failed, as the endpoint's
    own timeout would fail them).  Installed by L{HostHarness} with
    C{countConnects=True}, in place of the C{UNIXClientEndpoint} that
    L{prokshy.host.vm.VMConnection} builds for its socket.

    A test then proves causally what it would otherwise time: that a
    refusal made no connect attempt and waited for none (the one attempt
    in flight stays pending throughout), or that a daemon reached its VM
    at its first attempt (no retry, so no backoff).
    """

    def __init__(self):
        self._attempts = {}
        self._held = set()
        self._pending = {}

    def endpoint(self, reactor, path, *args, **kwargs):
        """
        Build the wrapping endpoint (the signature of C{UNIXClientEndpoint}).
        """
        return _CountedEndpoint(self, UNIXClientEndpoint(reactor, path, *args, **kwargs), path)

    def reset(self):
        """
        Count afresh (e.g. for a daemon about to start).
        """
        self._attempts.clear()

    def attempts(self, path):
        """
        How many connects toward C{path} were started (since L{reset}).
        """
        return self._attempts.get(path, 0)

    def pending(self, path):
        """
        How many held connects toward C{path} are pending now.
        """
        return len([d for d in self._pending.get(path, []) if not d.called])

    def hold(self, path):
        """
        From now on, connects toward C{path} stay pending until L{release}.
        """
        self._held.add(path)

    def release(self, path):
        """
        Connect normally again toward C{path}; the held connects fail with a
        timeout (the daemon retries by its own policy).
        """
        from twisted.internet.error import TimeoutError

        self._held.discard(path)
        for d in self._pending.pop(path, []):
            if not d.called:
                d.errback(TimeoutError("the test held this connect"))

    def _connect(self, endpoint, path, factory):
        self._attempts[path] = self._attempts.get(path, 0) + 1
        if path in self._held:
            d = Deferred()
            self._pending.setdefault(path, []).append(d)
            return d
        return endpoint.connect(factory)


class _CountedEndpoint:
    def __init__(self, connects, endpoint, path):
        self._connects = connects
        self._endpoint = endpoint
        self._path = path

    def connect(self, factory):
        return self._connects._connect(self._endpoint, self._path, factory)


def _legacyClientClass(harness, argWait):
    """
    The daemon's L{prokshy.host.legacy.LegacyClient}, recording its
    instances in C{harness.legacyClients} and, if C{argWait} is not None,
    with that argument wait (seconds a bare name waits for its argument
    line) instead of the original protocol's 1 s.
    """
    from prokshy.host import legacy

    base = legacy.LegacyClient

    class RecordedLegacyClient(base):
        def __init__(self, *args, **kwargs):
            base.__init__(self, *args, **kwargs)
            if argWait is not None:
                self.handler.argWait = argWait
            harness.legacyClients.append(self)

    return RecordedLegacyClient


class _Collector(Protocol):
    """
    A line-protocol client: sends a request, collects until the peer closes.
    """

    def __init__(self, request, halfClose=False):
        self.request = request
        self.halfClose = halfClose
        self.received = []
        self.done = Deferred()

    def connectionMade(self):
        self.transport.write(self.request)
        if self.halfClose:
            self.transport.loseWriteConnection()

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason):
        self.done.callback(b"".join(self.received))


class HostHarness:
    """
    VMs, their agents, and a daemon, for one test.

    @param testCase: the trial test case (for cleanups).
    @param vms: the VMs' names; the first is the daemon's default VM.
    @param scripts: C{name: text} of every VM's commands (default
        L{DEFAULT_SCRIPTS}); each VM also gets C{vmname}, printing its name.
    @param guestArgs: extra C{prokshy-guest} options for every agent.
    @param hostArgs: extra C{prokshy-host} options.
    @param tcp: also listen on C{tcp:0:interface=127.0.0.1}.
    @param listens: more C{--listen} endpoint strings.
    @param linger: the daemon's C{--legacy-linger}.
    @param daemon: start the daemon; without it, L{start} waits until
        every agent has its device open, and clients may use the VMs'
        sockets directly (a bhyve socket takes one client at a time).
    @param external: run each VM (simulator and agent) in a child process
        (L{vmMain}) instead of this one.  A guest agent spawning commands
        from a process holding thousands of descriptors (all the clients'
        sockets) spends most of its time closing them in each child; a real
        agent runs apart from the host.
    @param countConnects: count (and let the test hold) the daemon's
        connection attempts toward the VMs' sockets: see L{VMConnects}
        (C{connects}).
    @param recordLegacy: record the daemon's line-protocol clients in
        C{legacyClients}.
    @param legacyArgWait: if not None, the daemon's line-protocol clients
        wait this many seconds (instead of 1) for a bare name's argument
        line (implies C{recordLegacy}).

    @ivar unixPath: the daemon's unix listener.
    @ivar tcpPorts: the ports of its TCP listeners, in C{--listen} order.
    @ivar tcpPort: the first of them, or None.
    @ivar service: the daemon's service; C{daemon} is C{service.daemon}.
    @ivar connects: the L{VMConnects}, or None.
    @ivar legacyClients: the daemon's L{prokshy.host.legacy.LegacyClient}s,
        in order (with C{recordLegacy} or C{legacyArgWait}).
    @ivar throttle: when true (the default), at most L{CONNECTS_IN_FLIGHT}
        client connection attempts are in flight at once (for L{connect},
        until the session is up); the connections themselves, and their
        commands, are all concurrent.  Why: the daemon's listeners use
        Twisted's default listen backlog of 50, and a non-blocking
        C{connect()} to a unix socket whose backlog is full fails at once
        (C{EAGAIN}, which Twisted reports as
        C{ConnectError(ConnectionDone)}); the test of that burst
        (C{test_host.ManyClientsTests.test_unixConnectBurst}) sets this to
        false.
    """

    def __init__(
        self,
        testCase,
        vms=("vm1",),
        scripts=None,
        guestArgs=(),
        hostArgs=(),
        tcp=True,
        listens=None,
        linger=0.2,
        external=False,
        daemon=True,
        reactor=None,
        countConnects=False,
        recordLegacy=False,
        legacyArgWait=None,
    ):
        self.testCase = testCase
        self.reactor = reactor if reactor is not None else globalReactor
        self.dir = shortTempDir(testCase)
        scripts = DEFAULT_SCRIPTS if scripts is None else scripts
        self.vms = {name: GuestVM(self.reactor, name, self.dir, scripts, guestArgs) for name in vms}
        self.unixPath = os.path.join(self.dir, "d.sock")
        self.listens = ["unix:%s" % (self.unixPath,)]
        if tcp:
            self.listens.append("tcp:0:interface=127.0.0.1")
        self.listens += list(listens or ())
        self.hostArgs = list(hostArgs)
        self.linger = linger
        self.external = external
        self.withDaemon = daemon
        self.service = None
        self.ports = []
        self.tcpPorts = []
        self.tcpPort = None
        self._clients = []
        self._started = False
        self.throttle = True
        self._connecting = DeferredSemaphore(CONNECTS_IN_FLIGHT)
        self.connects = None
        self.legacyClients = []
        if countConnects:
            from prokshy.host import vm as hostvm

            self.connects = VMConnects()
            testCase.patch(hostvm, "UNIXClientEndpoint", self.connects.endpoint)
        if recordLegacy or legacyArgWait is not None:
            from prokshy.host import legacy

            testCase.patch(legacy, "LegacyClient", _legacyClientClass(self, legacyArgWait))

    # -- the stack ----------------------------------------------------------

    @property
    def daemon(self):
        return self.service.daemon

    def hostOptions(self, extra=()):
        """
        The daemon's command line.
        """
        args = []
        for listen in self.listens:
            args += ["--listen", listen]
        for vm in self.vms.values():
            args += ["--vm", "%s=%s" % (vm.name, vm.socketPath)]
        args += ["--legacy-linger", str(self.linger)]
        return args + self.hostArgs + list(extra)

    @inlineCallbacks
    def start(self, timeout=10.0):
        """
        Start the simulators, the agents and the daemon; wait until every VM
        is up.

        @return: a Deferred firing with this harness.
        """
        if not self._started:
            self._started = True
            self.testCase.addCleanup(self.stop)
        for vm in self.vms.values():
            if self.external:
                yield vm.startExternal()
            else:
                vm.startSim()
                vm.startAgent()
        if self.withDaemon:
            self.startDaemon()
            yield self.waitUp(timeout)
        elif not self.external:
            yield waitFor(
                lambda: all(vm.deviceOpen for vm in self.vms.values()), "the agents to open their devices", timeout
            )
        return self

    def startDaemon(self, extra=()):
        """
        Start a daemon (a new one after L{stopDaemon}).
        """
        from prokshy.tap import host

        opts = host.Options()
        opts.parseOptions(self.hostOptions(extra))
        self.service = host.makeService(opts, self.reactor)
        self.ports = []
        self.service.startService()
        for svc in self.service:
            waiting = getattr(svc, "_waitingForPort", None)
            if waiting is not None:
                waiting.addCallback(self._listening)
        self.tcpPorts = [p.getHost().port for p in self.ports if hasattr(p.getHost(), "port")]
        self.tcpPort = self.tcpPorts[0] if self.tcpPorts else None
        return self.service

    def _listening(self, port):
        self.ports.append(port)
        return port

    def stopDaemon(self):
        svc, self.service = self.service, None
        if svc is None or not svc.running:
            return defer.succeed(None)
        return svc.stopService()

    def waitUp(self, timeout=10.0, names=None):
        """
        @return: a Deferred firing once every VM (or those in C{names}) is
            C{"up"}.
        """
        names = list(self.vms) if names is None else names
        return waitFor(
            lambda: self.service is not None
            and all(self.daemon.vms[n].state == "up" for n in names),
            "VMs %s up" % (", ".join(names),),
            timeout,
            clock=self.reactor,
        )

    @inlineCallbacks
    def stop(self):
        """
        Stop everything (registered as a cleanup by L{start}).
        """
        yield self.closeClients()
        yield self.stopDaemon()
        for vm in self.vms.values():
            yield vm.stopAgent()
        for vm in self.vms.values():
            yield vm.stopSim()
            yield vm.stopExternal()
        # The daemon's side of client connections closes a reactor turn or
        # two after ours: wait for it so the reactor is clean.
        yield waitFor(lambda: not serverConnections(self.reactor), "server connections to close", 5.0)

    # -- clients --------------------------------------------------------------

    def unixEndpoint(self):
        return UNIXClientEndpoint(self.reactor, self.unixPath, timeout=5)

    def tcpEndpoint(self, port=None):
        return TCP4ClientEndpoint(self.reactor, "127.0.0.1", port or self.tcpPort, timeout=5)

    def connectProtocol(self, endpoint=None, token=None, throttle=True):
        """
        Connect a framed client (a L{HostProtocol}), closed at cleanup.

        @return: a Deferred firing with the connected protocol (its session
            may not be up yet: see C{whenSession}).
        """
        endpoint = endpoint if endpoint is not None else self.unixEndpoint()
        config = LinkConfig(window=HOST_WINDOW, maxPayload=HOST_PAYLOAD, auth=token)
        proto = HostProtocol(self.reactor, config)
        proto.lostD = Deferred()
        proto.whenLost(lambda reason: proto.lostD.callback(None))
        self._clients.append(proto)
        return self._connect(endpoint, proto, throttle)

    def _connect(self, endpoint, proto, throttle=True):
        if not (self.throttle and throttle):
            return endpoint.connect(Factory.forProtocol(lambda: proto))
        return self._connecting.run(endpoint.connect, Factory.forProtocol(lambda: proto))

    def connect(self, endpoint=None, token=None):
        """
        Connect a framed client and wait for its session.

        @return: a Deferred firing with its L{prokshy.host.client.Session}.
        """

        def connectAndWait():
            d = self.connectProtocol(endpoint, token, throttle=False)
            d.addCallback(lambda proto: proto.whenSession())
            return d

        if not self.throttle:
            return connectAndWait()
        # A unix connect() completes as soon as the connection is in the
        # listener's backlog: hold the slot until the daemon has accepted
        # it and answered.
        return self._connecting.run(connectAndWait)

    def closeClient(self, proto):
        """
        Drop one framed client's connection.

        @return: a Deferred firing once it is closed.
        """
        if proto.transport is not None and proto.transport.connected:
            proto.transport.abortConnection()
            return proto.lostD
        return defer.succeed(None)

    @inlineCallbacks
    def closeClients(self):
        clients, self._clients = self._clients, []
        for proto in clients:
            if proto.transport is not None:
                if proto.link is not None:
                    proto.link.stop("test over")
                yield self.closeClient(proto)

    def legacy(self, request, endpoint=None, halfClose=False):
        """
        One line-protocol exchange: send C{request}, collect everything
        until the daemon closes the connection.

        @return: a Deferred firing with the bytes received.
        """
        endpoint = endpoint if endpoint is not None else self.unixEndpoint()
        proto = _Collector(request, halfClose)
        d = self._connect(endpoint, proto)
        d.addCallback(lambda _: proto.done)
        return d


def serverConnections(reactor):
    """
    The accepted (server side) TCP and unix connections open in
    C{reactor}.
    """
    return [
        s
        for s in set(reactor.getReaders()) | set(reactor.getWriters())
        if isinstance(s, tcp.Server)
    ]


def hostsideOf(harness, vm=None):
    """
    The daemon's L{HostProtocol} for a VM (default: the first).
    """
    name = vm or next(iter(harness.vms))
    return harness.daemon.vms[name].protocol


if __name__ == "__main__":
    vmMain(sys.argv[1:])
