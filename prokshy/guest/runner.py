# -*- test-case-name: tests.system.test_runner -*-
"""
Running the executables of a C{command.d} directory.

L{CommandRunner} starts a command that its
L{CommandDirectory<prokshy.guest.commands.CommandDirectory>} found safe, with no
shell, a fixed clean environment (L{COMMAND_ENVIRONMENT}), cwd C{/} and in
its own process group, and returns an
L{Execution<prokshy.guest.execution.Execution>}: the handle used to feed
stdin, apply backpressure in both directions, signal or cancel the command,
and wait for its L{ExitStatus<prokshy.execs.status.ExitStatus>}.

Bounds: a wall-clock timeout (TERM to the whole group and to descendants
that left it, KILL after the grace period), a cap on the output delivered
(both off by default, on for line-protocol commands), and, once the command
has exited, a bounded wait for grandchildren that still hold its output
pipes.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Set, Union

from zope.interface import implementer

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.logger import Logger

from prokshy.execs.interfaces import ICommandRunner, ISpawnCounts
from prokshy.execs.refusals import CommandRefused
from prokshy.guest.commands import CommandDirectory
from prokshy.execs.request import TTYRequest
from prokshy.guest._process import (
    IProcessTree,
    PTYSpawnFunction,
    SpawnFunction,
    spawnProcessGroup,
    spawnPTYProcessGroup,
    spawnWithReactor,
)
from prokshy.guest.execution import Execution, _ExecutionProtocol

__all__ = [
    "COMMAND_ENVIRONMENT",
    "CommandRunner",
    "spawnProcessGroup",
    "spawnPTYProcessGroup",
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


@implementer(ICommandRunner, ISpawnCounts)
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
    @param spawnPTY: C{spawnPTY(reactor, protocol, executable, args,
        environment, path, rows=, cols=) -> IProcessTransport}, for
        commands run on a pty (C{tty}); the default, with the default
        C{spawn}, is L{spawnPTYProcessGroup}; with another C{spawn} and no
        C{spawnPTY} such commands are refused.

    @ivar processRecord: if set (a L{prokshy.guest.record.ProcessRecord}),
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
        spawnPTY: Optional[PTYSpawnFunction] = None,
    ) -> None:
        if not IReactorTime.providedBy(reactor):
            raise TypeError(f"{reactor!r} does not provide IReactorTime")
        if spawn is None:
            if not IReactorProcess.providedBy(reactor) or os.name != "posix":
                raise TypeError(
                    f"{reactor!r} is not a POSIX reactor providing IReactorProcess"
                )
            spawn = spawnProcessGroup
            if spawnPTY is None:
                spawnPTY = spawnPTYProcessGroup
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
        self._spawnPTY = spawnPTY
        self._running: Set[Execution] = set()
        #: Commands started, by the spawn path Twisted took (C{posix_spawn},
        #: or C{fork}, about 5x slower: docs/architecture.md); the C{info}
        #: stream reports it.
        self.spawns: Dict[str, int] = {"posix_spawn": 0, "fork": 0}

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
        args: "tuple[str, ...]" = (),
        tty: Optional[TTYRequest] = None,
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
        @param args: the command's arguments, its argv[1:] (checked by
            L{prokshy.execs.request.parseArgs}): passed to C{execve} as
            they are, encoded in UTF-8, never to a shell.
        @param tty: a L{TTYRequest}: run the command on a new pty of that
            size, the session leader with the pty as its controlling
            terminal and its stdin, stdout and stderr (all its output is
            stdout), C{TERM} set; L{None}: pipes, the fast spawn path.
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
        argv: List[Any] = [os.path.join(self.directory.path, text)]
        if args:
            argv.extend(arg.encode("utf-8") for arg in args)
        try:
            if tty is None:
                self._spawn(
                    self.reactor,
                    _ExecutionProtocol(execution),
                    path,
                    argv,
                    dict(self.environment),
                    COMMAND_CWD,
                )
            else:
                self._spawnOnPTY(execution, text, path, argv, tty)
        except OSError as e:
            self._running.discard(execution)
            raise CommandRefused(
                "not-executable",
                f"command {text!r} could not be started: {e.strerror or e}",
            ) from None
        # (No log line per start: the exit's line says it all, with the pid
        # as a field, at a formatted file write less per command.)
        transport = execution.transport
        if IProcessTree.providedBy(transport):
            self.spawns[transport.spawnMethod] = self.spawns.get(transport.spawnMethod, 0) + 1
        self._record(execution)
        return execution

    def _spawnOnPTY(
        self, execution: Execution, text: str, path: str, argv: List[Any], tty: TTYRequest
    ) -> None:
        if self._spawnPTY is None:
            self._running.discard(execution)
            raise CommandRefused(
                "not-executable", f"command {text!r} cannot run on a tty: this agent has no pty support"
            )
        environment = dict(self.environment)
        environment["TERM"] = tty.term
        self._spawnPTY(
            self.reactor,
            _ExecutionProtocol(execution),
            path,
            argv,
            environment,
            COMMAND_CWD,
            rows=tty.rows,
            cols=tty.cols,
        )

    def _record(self, execution: Execution) -> None:
        record = self.processRecord
        transport = execution.transport
        if record is None or execution.finished or not IProcessTree.providedBy(transport):
            return
        if transport.pgid is None:
            return
        try:
            record.add(execution, transport.pgid, transport.startTime, transport.pipeInodes)
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
