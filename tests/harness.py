"""
An integration harness for the guest agent: a simulated bhyve (or QEMU)
console port, the real guest agent on it (in this process, or as a real
C{twistd -n prokshy-guest} subprocess), a command.d of tiny shell scripts,
and real host sessions over the simulator's unix socket.

Everything runs on the global reactor with real ptys, sockets and
processes, and everything a L{Rig} starts is stopped by C{addCleanup} on the
test case, in reverse order (host clients, then agents, then the
simulator), so trial's dirty-reactor check passes.

Typical use, in a L{twisted.trial.unittest.TestCase}::

    @inlineCallbacks
    def test_something(self):
        rig = Rig(self)                       # temp dir, command.d
        rig.addCommand("hello", "echo hello")
        rig.startSim()                        # VMSim in bhyve mode
        agent = yield rig.startAgent("--max-concurrency", "2")  # in-process
        host = yield rig.connectHost()        # a HostClient, session up
        result = yield host.session.exec("hello")

or, with the agent as a real process::

        agent = rig.spawnAgent("--max-output", "0")   # an AgentProcess
        yield agent.started                   # it has opened the device
        ...
        yield agent.terminate()               # SIGTERM, wait for exit

L{Rig.legacyExchange} talks the original line protocol over a plain socket.
L{HostClient} records every session that comes up on its connection
(L{HostClient.newSession} waits for the next one, e.g. after a restart).

Helpers: L{waitFor} polls a predicate, L{sleep} lets the reactor run,
L{withTimeout} bounds a Deferred so that a hang is a failure, L{groupAlive}
and L{groupMembers} look for a command's live processes (zombies do not
count), L{rssBytes} reads a process's resident memory and L{bytesWritten}
what it has written (C{/proc}, Linux).  L{HostHellos} counts the host's
hellos (probes) through a simulator, so that a test bounds how many probes
a session needed rather than how long it took.

Agent options: C{--run-dir} inside the rig's directory and
L{DEFAULT_AGENT_ARGS} (a short kill grace) come before the test's own, so
a test can override them; pass e.g. C{--ping-interval 0.2
--dead-after 1.5} where liveness matters.
"""

import os
import shutil
import socket
import sys
import tempfile

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol

import prokshy
from prokshy.host.client import HostProtocol
from prokshy.sim.vmsim import BHYVE, DEFAULT_GUEST_BUFFER, VMSim
from prokshy.tap import guest as guestTap
from prokshy.wire.channel import HelloError, parseHello

#: Seconds between polls in L{waitFor}.
POLL = 0.01

#: The directory holding the C{prokshy} package (and C{twisted/plugins}).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(prokshy.__file__)))

#: Agent options every rig uses unless told otherwise: a short kill grace,
#: so that cancelled commands and cleanups are quick.
DEFAULT_AGENT_ARGS = ("--kill-grace", "0.5")

#: A few commands most tests want (name -> sh script body).
STANDARD_COMMANDS = {
    # stdin to stdout, byte for byte
    "cat": "exec cat",
    # stdout, stderr and an exit code
    "outerr": "echo out; echo err >&2; echo more-out; exit 3",
    # print our pid (= process group), then wait a long time
    "sleeper": "echo $$; exec sleep 60",
    # print our pid, then wait with a child in the group
    "sleepchild": "echo $$; sleep 60; echo woke",
    # wait for stdin's end, then report
    "waitstdin": "cat >/dev/null; echo done",
    # killed by its own SIGTERM
    "selfterm": "kill -TERM $$; sleep 5",
    # count stdin bytes
    "count": "exec wc -c",
}


def shortTempDir(testCase, prefix="pk"):
    """
    A fresh directory under C{/tmp}, short enough for AF_UNIX socket paths
    (under 100 bytes), removed after the test.
    """
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(path, 0o755)
    testCase.addCleanup(shutil.rmtree, path, True)
    return path


def sleep(seconds, clock=reactor):
    """
    @return: a Deferred firing after C{seconds} of C{clock}'s time.
    """
    return task.deferLater(clock, seconds, lambda: None)


@inlineCallbacks
def waitFor(predicate, what, timeout=5.0, interval=POLL, clock=reactor):
    """
    Poll C{predicate} every C{interval} seconds until it returns something
    true; return that.

    @raise AssertionError: after C{timeout} seconds, naming C{what}.
    """
    deadline = clock.seconds() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if clock.seconds() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
        yield sleep(interval, clock)


def withTimeout(d, seconds, what):
    """
    Fail C{d} with an L{AssertionError} naming C{what} unless it fires within
    C{seconds}: a test that would hang fails instead.
    """
    timedOut = []

    def onTimeout(result, timeout):
        timedOut.append(True)
        return result

    d.addTimeout(seconds, reactor, onTimeoutCancel=onTimeout)

    def translate(failure):
        if timedOut:
            raise AssertionError("timed out after %.1f s waiting for %s" % (seconds, what))
        return failure

    d.addErrback(translate)
    return d


def writeCommand(directory, name, body, mode=0o755):
    """
    Write C{#!/bin/sh} plus C{body} as C{directory/name} with C{mode}.

    @return: the path.
    """
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body + "\n")
    os.chmod(path, mode)
    return path


def pidAlive(pid):
    """
    Whether a process C{pid} exists (zombies count as existing).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def groupMembers(pgid):
    """
    The live (not zombie) processes of process group C{pgid}, from C{/proc}.

    A zombie does not count: an orphan killed with its group waits for
    init to reap it, which some inits do only now and then.

    @return: a list of (pid, state, command) tuples.
    """
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % (name,), "rb") as f:
                stat = f.read()
        except OSError:
            continue
        command = stat[stat.index(b"(") + 1 : stat.rindex(b")")]
        fields = stat[stat.rindex(b")") + 2 :].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in (b"Z", b"X"):
            members.append((int(name), state.decode(), command.decode("utf-8", "replace")))
    return members


def groupAlive(pgid):
    """
    The pids of the live (not zombie) processes left in process group
    C{pgid}: empty, so false, once the group is gone.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    return [pid for pid, _state, _command in groupMembers(pgid)]


def rssBytes(pid):
    """
    The resident set size of process C{pid} (C{/proc/PID/status} VmRSS).
    """
    with open("/proc/%d/status" % (pid,)) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError("no VmRSS for pid %d" % (pid,))


def bytesWritten(pid):
    """
    The bytes process C{pid} has written so far (C{/proc/PID/io} wchar),
    or None if that cannot be read.
    """
    try:
        with open("/proc/%d/io" % (pid,)) as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class HostClient:
    """
    One host connection to the simulator's socket.

    @ivar protocol: the L{HostProtocol}.
    @ivar session: its L{prokshy.host.client.Session}.
    @ivar lost: a Deferred firing (with None) when the connection is lost.
    @ivar lostReason: then, the L{Failure} it was lost with.
    @ivar sessions: the L{prokshy.link.session.SessionInfo} of every session
        that came up on this connection, in order.
    @ivar downs: the reason (a L{SessionEnded}) of every session that ended.
    """

    def __init__(self, protocol):
        self.protocol = protocol
        self.session = protocol.session
        self.lost = Deferred()
        self.isLost = False
        self.lostReason = None
        self.sessions = []
        self.downs = []
        protocol.mux.whenUp(self.sessions.append)
        protocol.mux.whenDown(self.downs.append)
        protocol.whenLost(self._lost)

    def _lost(self, reason):
        self.isLost = True
        self.lostReason = reason
        self.lost.callback(None)

    @property
    def link(self):
        return self.protocol.link

    @property
    def connected(self):
        """
        Whether a session is up.
        """
        return self.protocol.mux.connected

    def newSession(self, timeout=10.0):
        """
        Wait for a session other than the current one.

        @return: a Deferred firing with the L{Session} once a new session
            (a new session tag) is up.
        """
        count = len(self.sessions)
        d = waitFor(
            lambda: len(self.sessions) > count and self.connected,
            "a new session",
            timeout,
        )
        d.addCallback(lambda _: self.session)
        return d

    def disconnect(self):
        """
        Close the connection; the Deferred fires once it is closed.
        """
        if self.isLost:
            return succeed(None)
        self.protocol.transport.loseConnection()
        return self.lost


class HostHellos:
    """
    Counts the host hellos (the host's probes) that a L{VMSim} passes on
    toward the guest, by watching its channel policy's C{toGuest}: a test
    can then bound how many probes a new session needed, not how long it
    took.

    A hello line is C{LF 0xFF "PROKSHY" SP JSON LF} with C{"role":"host"}
    (docs/protocol.md, parsed by L{prokshy.wire.channel.parseHello});
    frames never hold a raw LF, so the bytes are split into lines and only
    whole lines that are host hellos count.

    @ivar count: host hellos seen so far.
    """

    #: A partial line longer than this is not a hello (hellos are short).
    MAX_LINE = 64 * 1024

    def __init__(self, sim):
        self.count = 0
        self._partial = b""
        self._discarding = False
        policy = sim.policy
        original = policy.toGuest

        def toGuest(data):
            self._feed(data)
            return original(data)

        policy.toGuest = toGuest

    def _feed(self, data):
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if self._discarding and lines:
            # the rest of an over-long line: not a hello
            self._discarding = False
            lines.pop(0)
        if len(self._partial) > self.MAX_LINE:
            self._partial = b""
            self._discarding = True
        for line in lines:
            if line.startswith(b"\xff"):
                try:
                    hello = parseHello(line)
                except HelloError:
                    continue
                if hello.get("role") == "host":
                    self.count += 1


class RawClient(Protocol):
    """
    A raw client of a socket (a legacy-protocol host): records what it
    receives; C{lost} fires when the connection ends.
    """

    def __init__(self):
        self.received = bytearray()
        self.lost = Deferred()
        self.isLost = False

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.isLost = True
        self.lost.callback(None)


class InProcessAgent:
    """
    The guest agent's service, running in this process.

    @ivar service: the service from L{prokshy.tap.guest.makeService}.
    @ivar options: the parsed L{prokshy.tap.guest.Options}.
    """

    def __init__(self, service, options):
        self.service = service
        self.options = options
        self.stopped = False

    @property
    def device(self):
        """
        The agent's L{prokshy.transport.service.DeviceService}.
        """
        from prokshy.transport.service import DeviceService

        for child in self.service:
            if isinstance(child, DeviceService):
                return child
        raise AssertionError("no DeviceService in the agent")

    @property
    def protocol(self):
        """
        The agent's L{prokshy.guest.agent.GuestProtocol} while the device is open.
        """
        return self.device.protocol

    @property
    def runner(self):
        """
        The agent's L{prokshy.guest.runner.CommandRunner} (the one its
        C{_Cleanup} service cancels).
        """
        for child in self.service:
            runner = getattr(child, "runner", None)
            if runner is not None:
                return runner
        raise AssertionError("no runner in the agent")

    def stop(self):
        """
        Stop the agent (it closes the device and cancels its commands).
        """
        if self.stopped:
            return succeed(None)
        self.stopped = True
        return self.service.stopService()


class AgentProcess(ProcessProtocol):
    """
    The guest agent as a real C{twistd -n prokshy-guest} process.

    @ivar started: fires once the agent logged that it opened the device
        (its C{DeviceService} logs "device PATH opened"), or fails if it
        exits first.
    @ivar ended: fires with the exit code (or the signal as C{-N}) when the
        process has exited.
    @ivar output: everything it wrote (its log), as bytes.
    """

    def __init__(self):
        self.started = Deferred()
        self.ended = Deferred()
        self.output = bytearray()
        self.process = None
        self.isEnded = False
        self.exitCode = None

    @property
    def pid(self):
        return self.process.pid

    def outReceived(self, data):
        self.output += data
        if not self.started.called and b"opened" in self.output:
            self.started.callback(self)

    errReceived = outReceived

    def processEnded(self, reason):
        self.isEnded = True
        value = reason.value
        self.exitCode = value.exitCode if value.exitCode is not None else -(value.signal or 0)
        if not self.started.called:
            self.started.errback(
                AssertionError(
                    "the agent exited (%s) before opening its device:\n%s"
                    % (self.exitCode, self.output.decode("utf-8", "replace")[-4000:])
                )
            )
        self.ended.callback(self.exitCode)

    def terminate(self, sig="TERM"):
        """
        Send C{sig} and wait for the process to exit.

        @return: a Deferred firing with its exit code (C{-N} for signal N).
        """
        if not self.isEnded:
            self.process.signalProcess(sig)
        return self.ended

    def kill(self):
        return self.terminate("KILL")


class Rig:
    """
    One simulated VM: a temp dir with a command.d, a L{VMSim}, agents and
    host clients, all cleaned up after the test.

    @ivar dir: the temp dir (short: AF_UNIX paths must be under 100 bytes).
    @ivar socketPath: the simulator's host socket.
    @ivar devicePath: the simulator's device link (the agent's C{--device}).
    @ivar commandDir: the agent's C{--command-dir}, holding
        L{STANDARD_COMMANDS} unless C{commands} says otherwise.
    @ivar sim: the L{VMSim} once started.
    """

    def __init__(self, testCase, commands=None):
        self.testCase = testCase
        self.dir = shortTempDir(testCase)
        self.socketPath = os.path.join(self.dir, "s")
        self.devicePath = os.path.join(self.dir, "dev")
        self.commandDir = os.path.join(self.dir, "command.d")
        #: The agents' --run-dir (their record of running commands): inside
        #: the rig's directory, so that tests leave nothing outside it.
        self.runDir = os.path.join(self.dir, "run")
        os.mkdir(self.commandDir)
        os.chmod(self.commandDir, 0o755)
        for name, body in (STANDARD_COMMANDS if commands is None else commands).items():
            writeCommand(self.commandDir, name, body)
        self.sim = None

    def addCommand(self, name, body, mode=0o755):
        """
        Add a command (an sh script body) to the command.d.
        """
        return writeCommand(self.commandDir, name, body, mode)

    # -- the simulator ----------------------------------------------------

    def startSim(self, mode=BHYVE, guestBuffer=DEFAULT_GUEST_BUFFER, faults=None):
        """
        Start the L{VMSim}; it is stopped after the test.
        """
        sim = VMSim(
            reactor, self.socketPath, self.devicePath, mode=mode,
            guestBuffer=guestBuffer, faults=faults,
        )
        sim.start()
        self.sim = sim
        self.testCase.addCleanup(sim.stop)
        return sim

    # -- agents -----------------------------------------------------------

    def agentArgs(self, *extra):
        """
        The agent's command line: device, command dir, the defaults and
        C{extra} (later options win).
        """
        return (
            ["--device", self.devicePath, "--command-dir", self.commandDir, "--run-dir", self.runDir]
            + list(DEFAULT_AGENT_ARGS)
            + list(extra)
        )

    @inlineCallbacks
    def startAgent(self, *extra):
        """
        Start the agent in this process (C{Options().parseOptions} +
        C{makeService} + C{startService}) and wait until it has opened the
        device. It is stopped after the test (or by L{InProcessAgent.stop}).

        @return: a Deferred firing with an L{InProcessAgent}.
        """
        options = guestTap.Options()
        options.parseOptions(self.agentArgs(*extra))
        service = guestTap.makeService(options, reactor, chdir=stayHere)
        agent = InProcessAgent(service, options)
        service.startService()
        self.testCase.addCleanup(agent.stop)
        yield waitFor(lambda: agent.device.protocol is not None, "the agent to open its device")
        return agent

    def spawnAgent(self, *extra, env=None):
        """
        Start C{twistd -n --pidfile= prokshy-guest ARGS} as a real process,
        with C{PYTHONPATH} set so that the plugin is found. It is killed
        after the test if still running.

        @return: an L{AgentProcess}; wait for its C{started}.
        """
        child = AgentProcess()
        environ = dict(os.environ)
        environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [PACKAGE_ROOT, environ.get("PYTHONPATH")])
        )
        environ.update(env or {})
        argv = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "prokshy-guest",
        ] + self.agentArgs(*extra)
        child.process = reactor.spawnProcess(child, sys.executable, argv, env=environ, path=self.dir)

        def cleanup():
            if child.isEnded:
                return None
            child.process.signalProcess("KILL")
            return child.ended

        self.testCase.addCleanup(cleanup)
        return child

    # -- hosts ------------------------------------------------------------

    @inlineCallbacks
    def connectHost(self, config=None, timeout=10.0, waitSession=True):
        """
        Connect a L{HostProtocol} to the simulator's socket and, unless
        C{waitSession} is false, wait for its session. It is disconnected
        after the test.

        @return: a Deferred firing with a L{HostClient}.
        """
        endpoint = UNIXClientEndpoint(reactor, self.socketPath)
        protocol = yield endpoint.connect(Factory.forProtocol(lambda: HostProtocol(reactor, config)))
        client = HostClient(protocol)
        self.testCase.addCleanup(client.disconnect)
        if waitSession:
            yield withTimeout(protocol.whenSession(), timeout, "a framed session")
        return client

    @inlineCallbacks
    def legacyExchange(self, request, expect, timeout=10.0):
        """
        As the original CLI or C{nc}: connect a plain socket, send
        C{request} (e.g. C{b"NAME\\nDATA\\n"}) and read until C{expect} has
        arrived (the line protocol has no end marker), then close.

        @return: a Deferred firing with everything received.
        """
        collector = RawClient()
        yield connectProtocol(UNIXClientEndpoint(reactor, self.socketPath), collector)
        try:
            collector.transport.write(request)
            yield waitFor(
                lambda: expect in collector.received or collector.isLost,
                "%r from the legacy protocol" % (expect,),
                timeout,
            )
        finally:
            if not collector.isLost:
                collector.transport.loseConnection()
                yield collector.lost
        return bytes(collector.received)


__all__ = [
    "AgentProcess",
    "DEFAULT_AGENT_ARGS",
    "HostClient",
    "HostHellos",
    "InProcessAgent",
    "PACKAGE_ROOT",
    "POLL",
    "Rig",
    "STANDARD_COMMANDS",
    "bytesWritten",
    "groupAlive",
    "groupMembers",
    "pidAlive",
    "rssBytes",
    "shortTempDir",
    "sleep",
    "waitFor",
    "withTimeout",
    "writeCommand",
]


def freeTcpPort():
    """
    A TCP port on 127.0.0.1 that nothing listens on now, for a listener
    that cannot use port 0 (a guest's).  Another process could take it
    before it is bound; the kernel hands out ephemeral ports in turn, so
    that is rare.
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def stayHere(path):
    """
    The C{chdir} of an agent run in the test process: trial's working
    directory stays (the real agent works in C{/}).
    """
