# -*- test-case-name: tests.test_runner -*-
"""
Running the executables of a C{command.d} directory.

L{CommandRunner} starts a command that its
L{CommandDirectory<prokshy.guest.commands.CommandDirectory>} found safe, with no
shell, a fixed clean environment (L{COMMAND_ENVIRONMENT}), cwd C{/} and in
its own process group, and returns an L{Execution}: the handle used to feed
stdin, apply backpressure in both directions, signal or cancel the command,
and wait for its L{ExitStatus}.

Bounds: a wall-clock timeout (TERM to the whole group and to descendants
that left it, KILL after the grace period), a cap on the output delivered
(both off by default, on for line-protocol commands), and, once the command
has exited, a bounded wait for grandchildren that still hold its output
pipes.
"""

from __future__ import annotations

import os
import signal as _signal
from typing import Any, Dict, List, Optional, Set, Union

from zope.interface import implementer

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from prokshy.execs.interfaces import ICommandRunner, IExecution, IOutputFinished
from prokshy.execs.refusals import CommandRefused
from prokshy.execs.status import ExitStatus
from prokshy.guest.commands import CommandDirectory
from prokshy.guest._process import SpawnFunction, spawnProcessGroup, spawnWithReactor

__all__ = [
    "COMMAND_ENVIRONMENT",
    "CommandRunner",
    "Execution",
    "spawnProcessGroup",
    "spawnWithReactor",
]

_log = Logger()

MiB = 1024 * 1024

#: The whole environment of a command.  Nothing of the agent's own
#: environment leaks in.  C{PATH} is the one the original README's example
#: command sets; C{HOME=/} matches the working directory; C{PROKSHY=1} lets a
#: script know it runs under prokshy.  No locale variable is set: commands run
#: in the C locale, as under the original sh agent started by rc.d.
COMMAND_ENVIRONMENT: Dict[str, str] = {
    "PATH": "/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin",
    "HOME": "/",
    "PROKSHY": "1",
}

#: The working directory of every command.
COMMAND_CWD = "/"

#: The line protocol's limits: its client cannot cancel a command, so a
#: command that never ends would block the device for good.
LINE_TIMEOUT = 60.0
LINE_MAX_OUTPUT = 16 * MiB


def _signalNumber(sig: Union[int, str]) -> int:
    if isinstance(sig, str):
        name = sig.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        number = getattr(_signal, name, None)
        if not isinstance(number, _signal.Signals):
            raise ValueError(f"unknown signal {sig!r}")
        return int(number)
    number = int(sig)
    if number not in _signal.valid_signals():
        raise ValueError(f"unknown signal {sig!r}")
    return number


class _ExecutionProtocol(ProcessProtocol):
    """
    Forwards process events to its L{Execution}.
    """

    def __init__(self, execution: "Execution") -> None:
        self._execution = execution

    def connectionMade(self) -> None:
        self._execution._connected(self.transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._execution._output(childFD, data)

    def processExited(self, reason: Failure) -> None:
        self._execution._processExited(reason)

    def processEnded(self, reason: Failure) -> None:
        self._execution._processEnded(reason)


@implementer(IExecution)
class Execution:
    """
    One running command.

    @ivar name: the command name.
    @ivar path: the executable.
    @ivar pid: the process id, which is also its process group id.
    @ivar done: fires exactly once with the L{ExitStatus}, after the process
        is reaped and its output pipes are closed (waiting at most
        C{killGrace} seconds for grandchildren holding them).  It never
        fails.
    @ivar status: the L{ExitStatus} once C{done} has fired, else C{None}.
    @ivar outputBytes: bytes of stdout plus stderr delivered to the sink.
    @ivar elapsed: seconds from start to C{done} (or to now while running).
    """

    def __init__(
        self,
        clock: IReactorTime,
        name: str,
        path: str,
        sink: Any,
        timeout: float,
        maxOutput: int,
        killGrace: float,
    ) -> None:
        self.name = name
        self.path = path
        self.pid: Optional[int] = None
        self.done: Deferred[ExitStatus] = Deferred()
        self.status: Optional[ExitStatus] = None
        self.outputBytes = 0
        self._clock = clock
        self._sink = sink
        self._timeout = timeout
        self._maxOutput = maxOutput
        self._killGrace = killGrace
        self._startedAt = clock.seconds()
        self._endedAt: Optional[float] = None
        self._transport: Any = None
        self._code: Optional[int] = None
        self._signal: Optional[int] = None
        self._exited = False
        self._finished = False
        self._paused = False
        self._discard = False
        self._terminating = False
        self._killed = False
        self._timedOut = False
        self._truncated = False
        self._timeoutCall: Any = None
        self._killCall: Any = None
        self._drainCall: Any = None
        self._fallbackCall: Any = None

    def __repr__(self) -> str:
        return f"<Execution {self.name!r} pid={self.pid} finished={self._finished}>"

    @property
    def elapsed(self) -> float:
        end = self._endedAt if self._endedAt is not None else self._clock.seconds()
        return end - self._startedAt

    @property
    def finished(self) -> bool:
        return self._finished

    # -- stdin -------------------------------------------------------------

    def writeStdin(self, data: bytes) -> None:
        """
        Write to the command's stdin (buffered; dropped once stdin is gone).
        """
        if self._transport is not None and not self._finished:
            self._transport.write(data)

    def closeStdin(self) -> None:
        """
        Close the command's stdin once what was written is flushed.
        """
        if self._transport is not None and not self._finished:
            self._transport.closeStdin()

    def registerStdinProducer(self, producer: Any, streaming: bool) -> None:
        """
        Register a producer feeding stdin: it is paused while the stdin pipe
        (and its write buffer) is full and resumed when it drains; it is
        stopped if stdin is already closed.
        """
        if self._transport is None or self._finished:
            producer.stopProducing()
            return
        self._transport.registerProducer(producer, streaming)

    def unregisterStdinProducer(self) -> None:
        if self._transport is not None and not self._finished:
            self._transport.unregisterProducer()

    # -- output backpressure (IPushProducer) -------------------------------

    def pauseProducing(self) -> None:
        """
        Stop reading stdout and stderr: the command blocks once the pipes
        fill.  While paused, the wait for the pipes to close after exit is
        suspended (the pipes cannot reach EOF unless read).
        """
        if self._finished or self._paused:
            return
        self._paused = True
        if self._transport is not None:
            self._transport.pauseProducing()
        if self._drainCall is not None:
            self._drainCall.cancel()
            self._drainCall = None

    def resumeProducing(self) -> None:
        """
        Read stdout and stderr again.
        """
        if self._finished or not self._paused:
            return
        self._paused = False
        if self._transport is not None:
            self._transport.resumeProducing()
        if self._exited:
            self._startDrainWait()

    def stopProducing(self) -> None:
        """
        The consumer is gone: discard further output and cancel the command.
        """
        if self._finished:
            return
        self._discard = True
        self.resumeProducing()
        self.cancel()

    # -- signals -----------------------------------------------------------

    def signal(self, sig: Union[int, str]) -> bool:
        """
        Send a signal to the command's whole process group.

        @param sig: a number, or a name such as C{"TERM"} or C{"SIGTERM"}.
        @return: whether it was sent (C{False} once the command has finished
            or its group is gone).
        """
        number = _signalNumber(sig)
        if self._finished or self._transport is None:
            return False
        signalGroup = getattr(self._transport, "signalGroup", None)
        if signalGroup is not None:
            return bool(signalGroup(number))
        try:
            self._transport.signalProcess(number)
        except (ProcessExitedAlready, ProcessLookupError):
            return False
        return True

    def cancel(self) -> None:
        """
        Terminate the command: TERM to its process group now, KILL after
        the grace period.
        """
        if not self._finished:
            self._terminate()

    # -- internals ---------------------------------------------------------

    def _connected(self, transport: Any) -> None:
        self._transport = transport
        self.pid = transport.pid
        if self._timeout and self._timeout > 0 and not self._finished:
            self._timeoutCall = self._clock.callLater(self._timeout, self._expire)

    def _signalAll(self, number: int) -> bool:
        """
        Signal the command's group and every descendant that left it (the
        transport's C{signalTree}, if it has one).
        """
        if self._transport is None:
            return False
        signalTree = getattr(self._transport, "signalTree", None)
        if signalTree is not None:
            return bool(signalTree(number))
        return self.signal(number)

    def _terminate(self) -> None:
        if self._terminating:
            return
        self._terminating = True
        self._signalAll(_signal.SIGTERM)
        if not self._finished:
            self._killCall = self._clock.callLater(self._killGrace, self._kill)

    def _kill(self) -> None:
        self._killCall = None
        self._killed = True
        self._signalAll(_signal.SIGKILL)

    def _expire(self) -> None:
        self._timeoutCall = None
        self._timedOut = True
        _log.warn(
            "command {name!r} timed out after {timeout} s: terminating it",
            name=self.name,
            timeout=self._timeout,
        )
        self._terminate()

    def _output(self, childFD: int, data: bytes) -> None:
        if self._discard or self._finished:
            return
        capped = False
        if self._maxOutput:
            room = self._maxOutput - self.outputBytes
            if len(data) > room:
                capped = True
                data = data[:room]
        self.outputBytes += len(data)
        if data:
            try:
                if childFD == 1:
                    self._sink.stdoutReceived(data)
                elif childFD == 2:
                    self._sink.stderrReceived(data)
            except Exception:
                _log.failure("sink of command {name!r} failed", name=self.name)
        if capped:
            self._capReached()

    def _capReached(self) -> None:
        self._truncated = True
        self._discard = True
        _log.warn(
            "command {name!r} wrote more than {limit} bytes: output truncated, "
            "terminating it",
            name=self.name,
            limit=self._maxOutput,
        )
        if self._transport is not None:
            # Close our read ends: further writes fail with EPIPE/SIGPIPE.
            self._transport.closeStdout()
            self._transport.closeStderr()
        self._terminate()

    def _processExited(self, reason: Failure) -> None:
        if self._exited:
            return
        self._exited = True
        self._code = getattr(reason.value, "exitCode", None)
        self._signal = getattr(reason.value, "signal", None)
        if self._timeoutCall is not None:
            self._timeoutCall.cancel()
            self._timeoutCall = None
        if not self._finished and not self._paused:
            self._startDrainWait()

    def _startDrainWait(self) -> None:
        if self._drainCall is None and not self._finished:
            self._drainCall = self._clock.callLater(self._killGrace, self._drainExpired)

    def _drainExpired(self) -> None:
        self._drainCall = None
        _log.warn(
            "command {name!r} exited but its output is still open after "
            "{grace} s: killing its process group",
            name=self.name,
            grace=self._killGrace,
        )
        self._terminating = True
        self._discard = True
        # If closing the pipes does not end the process promptly (a process
        # outside the group holds stdin and a write is pending), finish
        # anyway.
        self._fallbackCall = self._clock.callLater(self._killGrace, self._finish)
        self._killed = True
        self._signalAll(_signal.SIGKILL)
        if self._transport is not None:
            self._transport.loseConnection()

    def _processEnded(self, reason: Failure) -> None:
        self._processExited(reason)
        self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        if self._terminating and not self._killed and self._transport is not None:
            # Stragglers that ignored TERM: the group id cannot have been
            # reused while any of them is alive.
            self._killed = True
            self._signalAll(_signal.SIGKILL)
        self._finished = True
        self._endedAt = self._clock.seconds()
        for name in ("_timeoutCall", "_killCall", "_drainCall", "_fallbackCall"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)
        status = ExitStatus(self._code, self._signal, self._timedOut, self._truncated)
        self.status = status
        if IOutputFinished.providedBy(self._sink):
            try:
                self._sink.outputFinished()
            except Exception:
                _log.failure("sink of command {name!r} failed", name=self.name)
        _log.emit(
            _exitLevel(status),
            "command {name!r} {description} ({elapsed:.2f} s, {nbytes} bytes)",
            name=self.name,
            description=status.describe(),
            elapsed=self.elapsed,
            nbytes=self.outputBytes,
            exitStatus=status,
        )
        self._sink = None
        self.done.callback(status)


def _exitLevel(status: ExitStatus) -> LogLevel:
    if status.timedOut or status.truncated:
        return LogLevel.warn
    return LogLevel.info


@implementer(ICommandRunner)
class CommandRunner:
    """
    Starts commands from a L{CommandDirectory}.

    Limits: C{timeout} and C{maxOutput} bound every command (0: no bound,
    the default).  A command started with C{line=True}, for the line
    protocol, whose client cannot cancel it, is also bounded by
    C{lineTimeout} and C{lineMaxOutput}.  A timeout asked for at
    L{start} can only make the bound tighter.

    @param reactor: provides C{IReactorTime}, and C{IReactorProcess} unless
        a C{spawn} function is given.
    @param directory: a L{CommandDirectory} or its path.
    @param timeout: wall-clock limit in seconds for every command (0: none).
    @param maxOutput: cap on stdout plus stderr bytes delivered, for every
        command (0: none).
    @param lineTimeout: wall-clock limit for line-protocol commands (0:
        none).
    @param lineMaxOutput: output cap for line-protocol commands (0: none).
    @param killGrace: seconds between TERM and KILL, and the bounded wait
        for the output pipes to close after the command exits.
    @param spawn: C{spawn(reactor, protocol, executable, args, environment,
        path) -> IProcessTransport}; the default, L{spawnProcessGroup}, puts
        each command in its own process group.  Tests pass
        L{spawnWithReactor} and a fake process reactor.
    @param environment: the commands' environment (default
        L{COMMAND_ENVIRONMENT}).
    @param maxRunning: refuse (code C{busy}) beyond this many running
        commands (0: no limit).

    @ivar processRecord: if set (a L{prokshy.guest.reaper.ProcessRecord}),
        each running command is listed in it, so that a later agent can
        kill what is left of it should this one be killed.
    """

    processRecord: Any = None

    def __init__(
        self,
        reactor: Any,
        directory: Union[CommandDirectory, str, bytes],
        timeout: float = 0,
        maxOutput: int = 0,
        killGrace: float = 2,
        *,
        lineTimeout: float = LINE_TIMEOUT,
        lineMaxOutput: int = LINE_MAX_OUTPUT,
        spawn: Optional[SpawnFunction] = None,
        environment: Optional[Dict[str, str]] = None,
        maxRunning: int = 0,
    ) -> None:
        if not IReactorTime.providedBy(reactor):
            raise TypeError(f"{reactor!r} does not provide IReactorTime")
        if spawn is None:
            if not IReactorProcess.providedBy(reactor) or os.name != "posix":
                raise TypeError(
                    f"{reactor!r} is not a POSIX reactor providing IReactorProcess"
                )
            spawn = spawnProcessGroup
        if not isinstance(directory, CommandDirectory):
            directory = CommandDirectory(directory)
        self.reactor = reactor
        self.directory = directory
        self.timeout = timeout
        self.maxOutput = maxOutput
        self.lineTimeout = lineTimeout
        self.lineMaxOutput = lineMaxOutput
        self.killGrace = killGrace
        self.environment = dict(
            COMMAND_ENVIRONMENT if environment is None else environment
        )
        self.maxRunning = maxRunning
        self._spawn = spawn
        self._running: Set[Execution] = set()

    @property
    def running(self) -> List[Execution]:
        """
        The executions whose C{done} has not fired yet.
        """
        return list(self._running)

    def limits(self, timeout: Optional[float] = None, line: bool = False) -> "tuple[float, int]":
        """
        The timeout and output cap a command gets (0: none).

        @param timeout: the timeout asked for (C{None} or 0: none of its
            own); it can only tighten the runner's.
        @param line: a line-protocol command.
        """
        return (
            _tightest(self.timeout, self.lineTimeout if line else 0, timeout or 0),
            int(_tightest(self.maxOutput, self.lineMaxOutput if line else 0)),
        )

    def start(
        self,
        name: Union[str, bytes],
        sink: Any,
        timeout: Optional[float] = None,
        line: bool = False,
    ) -> Execution:
        """
        Start a command.

        @param name: the command name (C{str} or ASCII C{bytes}).
        @param sink: has C{stdoutReceived(data)} and C{stderrReceived(data)};
            and optionally C{outputFinished()}, called once just before
            C{done} fires (no output follows it).
        @param timeout: a timeout of the caller's (C{None} or 0: none); the
            runner's own limits still apply (see L{limits}).
        @param line: a line-protocol command: L{lineTimeout} and
            L{lineMaxOutput} apply too.
        @raise CommandRefused: the command was not started.
        """
        path = self.directory.resolve(name)
        text = self.directory.checkName(name)
        if self.maxRunning and len(self._running) >= self.maxRunning:
            raise CommandRefused(
                "busy",
                f"command {text!r} refused: {len(self._running)} commands "
                f"already running",
            )
        effectiveTimeout, maxOutput = self.limits(timeout, line)
        execution = Execution(
            self.reactor,
            text,
            path,
            sink,
            timeout=effectiveTimeout,
            maxOutput=maxOutput,
            killGrace=self.killGrace,
        )
        self._running.add(execution)
        execution.done.addBoth(self._forget, execution)
        argv = [os.path.join(self.directory.path, text)]
        try:
            self._spawn(
                self.reactor,
                _ExecutionProtocol(execution),
                path,
                argv,
                dict(self.environment),
                COMMAND_CWD,
            )
        except OSError as e:
            self._running.discard(execution)
            raise CommandRefused(
                "not-executable",
                f"command {text!r} could not be started: {e.strerror or e}",
            ) from None
        _log.debug(
            "command {name!r} started, pid {pid}", name=text, pid=execution.pid
        )
        self._record(execution)
        return execution

    def _record(self, execution: Execution) -> None:
        record = self.processRecord
        transport = execution._transport
        if record is None or transport is None or execution.finished:
            return
        pid = getattr(transport, "pgid", None)
        if pid is None:
            return
        try:
            record.add(
                execution,
                pid,
                getattr(transport, "startTime", None),
                getattr(transport, "pipeInodes", ()),
            )
        except Exception:
            _log.failure("could not record command {name!r}", name=execution.name)

    def _forget(self, result: Any, execution: Execution) -> Any:
        self._running.discard(execution)
        record = self.processRecord
        if record is not None:
            try:
                record.discard(execution)
            except Exception:
                _log.failure("could not update the record of running commands")
        return result

    def cancelAll(self) -> Deferred:
        """
        Cancel every running command.

        @return: a Deferred firing when all of them are done.
        """
        executions = list(self._running)
        for execution in executions:
            execution.cancel()
        return gatherResults([_chain(e.done) for e in executions])


def _tightest(*limits: float) -> float:
    """
    The smallest positive limit, or 0 (none) if none is positive.
    """
    positive = [limit for limit in limits if limit and limit > 0]
    return min(positive) if positive else 0


def _chain(d: Deferred) -> Deferred:
    result: Deferred = Deferred()

    def fire(value: Any) -> Any:
        result.callback(value)
        return value

    d.addBoth(fire)
    return result
