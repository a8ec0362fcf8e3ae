# -*- test-case-name: tests.system.test_legacy -*-
"""
The original prokshy line protocol.

The original guest agent (C{main.sh}, see the channel-semantics notes) reads
a command name line, checks it against C{^[a-zA-Z0-9_.-]+$} and the execute
bit, then waits up to one second for an argument line, which it feeds to the
command's stdin without its newline.  L{LegacyHandler} reproduces that, and
also accepts the C{NAME SP DATA} form the original README describes:

  - C{NAME SP DATA LF}: run NAME with DATA.
  - C{NAME LF DATA LF}: the next line is DATA, whatever it looks like.
  - C{NAME LF} alone: after C{argWait} seconds without a line, run NAME
    with empty data.
  - Surrounding blanks (space, tab) and a trailing CR are stripped from
    every line, as C{read -r} trims blanks; an empty line is ignored.
  - A refused name (bad name, C{.}/C{..}, missing, not executable,
    insecure) is logged and ignored, and the next line is read as a command
    again: the argument line is not consumed.
  - stdout goes back raw through C{write}; stderr and the exit status go to
    the log.  A line client cannot cancel a command, so the runner's
    line-protocol limits (C{lineTimeout}, C{lineMaxOutput}) apply.  One command runs at a time; lines that arrive meanwhile are
    queued (bounded) and handled in order afterwards.

L{LegacyHandler} is an Automat state machine.  States: C{ready} (the next
line is a request), C{awaitingArgument} (a bare NAME waits for its argument
line; timer: C{argWait}, armed on entering and cancelled on every way out,
after which NAME runs with empty data) and C{running} (a command runs;
lines queue, bounded).  A reset while a command runs keeps it running but
drops its output.  Every (state, input) pair is declared; an empty output
list is a deliberate "nothing to do" (the input cannot come in that state,
or is harmless there)::

    awaitingArgument  argWaitExpired  -> ready             _cancelArgWait, _runHeld
    awaitingArgument  commandEnded    -> awaitingArgument
    awaitingArgument  nameHeld        -> awaitingArgument
    awaitingArgument  pendingTaken    -> ready             _cancelArgWait, _dropName
    awaitingArgument  resetRequested  -> ready             _cancelArgWait, _dropName, _forgetInput
    awaitingArgument  started         -> awaitingArgument
    ready             argWaitExpired  -> ready
    ready             commandEnded    -> ready
    ready             nameHeld        -> awaitingArgument  _holdName, _armArgWait
    ready             pendingTaken    -> ready
    ready             resetRequested  -> ready             _forgetInput
    ready             started         -> running           _attach
    running           argWaitExpired  -> running
    running           commandEnded    -> ready             _detach, _pumpQueue
    running           nameHeld        -> running
    running           pendingTaken    -> running
    running           resetRequested  -> running           _forgetInput, _dropOutput
    running           started         -> running
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Optional, Union

from automat import MethodicalMachine
from zope.interface import implementer

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger

from prokshy.execs.interfaces import ICommandRunner, IExecution, IOutputFinished
from prokshy.execs.refusals import CommandRefused
from prokshy._loglimit import LogLimiter

__all__ = ["LegacyHandler"]

_log = Logger()

_BLANKS = b" \t"

#: The queue marker for a line that was too long and was discarded.
_DISCARDED = object()


def _strip(line: bytes) -> bytes:
    """
    Remove a trailing CR, then surrounding blanks.
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    return line.strip(_BLANKS)


@implementer(IOutputFinished)
class _LegacySink:
    """
    Receives one command's output: stdout to the handler's C{write}, stderr
    to the log, line by line.
    """

    #: At most this many stderr bytes per command go to the log.
    maxStderrLog = 64 * 1024

    def __init__(self, handler: "LegacyHandler", name: str) -> None:
        self._handler = handler
        self.name = name
        self.detached = False
        self._stderr = b""
        self._stderrLogged = 0

    def stdoutReceived(self, data: bytes) -> None:
        if not self.detached:
            self._handler._writeOutput(data)

    def stderrReceived(self, data: bytes) -> None:
        if self._stderrLogged >= self.maxStderrLog:
            return
        self._stderr += data
        *lines, self._stderr = self._stderr.split(b"\n")
        for line in lines:
            self._logStderr(line)
        if len(self._stderr) > 4096:
            self._logStderr(self._stderr)
            self._stderr = b""

    def outputFinished(self) -> None:
        if self._stderr:
            self._logStderr(self._stderr)
            self._stderr = b""

    def _logStderr(self, line: bytes) -> None:
        if self._stderrLogged >= self.maxStderrLog:
            return
        self._stderrLogged += len(line) + 1
        _log.info(
            "command {name!r} stderr: {line}",
            name=self.name,
            line=line.rstrip(b"\r").decode("utf-8", "backslashreplace"),
        )
        if self._stderrLogged >= self.maxStderrLog:
            _log.info(
                "command {name!r}: further stderr not logged", name=self.name
            )


@implementer(IPushProducer)
class _OutputThrottle:
    """
    Registered with the device transport while a command runs, so that a
    full device write buffer pauses the command's output.  The device going
    away resumes it rather than killing it.
    """

    def __init__(self, execution: IExecution) -> None:
        self.execution = execution

    def pauseProducing(self) -> None:
        self.execution.pauseProducing()

    def resumeProducing(self) -> None:
        self.execution.resumeProducing()

    def stopProducing(self) -> None:
        self.execution.resumeProducing()


class LegacyHandler:
    """
    The original line protocol, fed one line at a time (the machine in the
    module docstring).

    @ivar write: called with the running command's stdout.
    @ivar consumer: if set (an C{IConsumer}, normally the device transport),
        each command is registered with it as a streaming producer while it
        runs, so the device's write buffer throttles the command's output.
    @ivar maxQueuedLines: lines kept while a command runs; more are dropped.
    @ivar maxQueuedBytes: bytes kept while a command runs; more are dropped.
    """

    maxQueuedLines = 64
    maxQueuedBytes = 1024 * 1024

    _machine = MethodicalMachine()

    def __init__(
        self,
        runner: ICommandRunner,
        write: Callable[[bytes], Any],
        clock: IReactorTime,
        argWait: float = 1.0,
    ) -> None:
        self.runner = runner
        self.write = write
        self.clock = clock
        self.argWait = argWait
        self.consumer: Any = None
        self._inputEnded = False
        #: Called with no arguments whenever the handler becomes idle: no
        #: command running, none waiting for its argument, no queued lines.
        self.onIdle: Optional[Callable[[], Any]] = None
        #: The running state's command, its sink and its throttle.
        self.current: Optional[IExecution] = None
        self._sink: Optional[_LegacySink] = None
        self._throttle: Optional[_OutputThrottle] = None
        #: The awaitingArgument state's name and timer.
        self._pendingName: Optional[bytes] = None
        self._argCall: Any = None
        self._queue: Deque[Union[bytes, object]] = deque()
        self._queuedBytes = 0
        self._pumping = False
        self._ignoredLog = LogLimiter(clock, _log)
        self._overflowLog = LogLimiter(clock, _log)

    @property
    def busy(self) -> bool:
        """
        Whether a command started by this handler is still running.
        """
        return self.current is not None

    @property
    def idle(self) -> bool:
        """
        No command running, none waiting for its argument, no queued lines.
        """
        return self.current is None and self._pendingName is None and not self._queue

    # -- states -----------------------------------------------------------

    @_machine.state(initial=True)
    def ready(self):
        "No command runs and none waits for its argument: the next line is a request."

    @_machine.state()
    def awaitingArgument(self):
        "A bare NAME waits for its argument line.  Timer: argWait, then it runs with no data."

    @_machine.state()
    def running(self):
        "A command runs; lines queue (bounded) until it ends."

    # -- inputs -----------------------------------------------------------

    @_machine.input()
    def nameHeld(self, name):
        "A bare NAME: its argument line may follow."

    @_machine.input()
    def pendingTaken(self):
        "The held name is used (its argument came) or dropped."

    @_machine.input()
    def argWaitExpired(self):
        "No argument line came within argWait."

    @_machine.input()
    def started(self, execution, sink):
        "A command started."

    @_machine.input()
    def commandEnded(self):
        "The running command's done fired."

    @_machine.input()
    def resetRequested(self):
        "reset(): the client is gone."

    # -- outputs ----------------------------------------------------------

    @_machine.output()
    def _holdName(self, name):
        self._pendingName = name

    @_machine.output()
    def _armArgWait(self):
        self._argCall = self.clock.callLater(self.argWait, self._argWaitFired)

    @_machine.output()
    def _cancelArgWait(self):
        call, self._argCall = self._argCall, None
        if call is not None and call.active():
            call.cancel()

    @_machine.output()
    def _dropName(self):
        self._pendingName = None

    @_machine.output()
    def _runHeld(self):
        name, self._pendingName = self._pendingName, None
        if name is not None:
            self._run(name, b"")
            self._pump()

    @_machine.output()
    def _attach(self, execution, sink):
        self.current = execution
        self._sink = sink
        self._throttleWith(execution)

    @_machine.output()
    def _detach(self):
        self._unthrottle()
        self.current = None
        self._sink = None

    @_machine.output()
    def _pumpQueue(self):
        self._pump()

    @_machine.output()
    def _dropOutput(self):
        if self._sink is not None and not self._sink.detached:
            self._sink.detached = True
            _log.info(
                "command {name!r} is still running; its output will be dropped",
                name=self._sink.name,
            )
        self._unthrottle()

    @_machine.output()
    def _forgetInput(self):
        self._queue.clear()
        self._queuedBytes = 0
        self._ignoredLog.flush()
        self._overflowLog.flush()

    # -- the table --------------------------------------------------------
    # Every (state, input) pair is declared; an empty output list is a
    # deliberate "nothing to do": the input cannot come in that state (a
    # name is held, and a command started, only while no command runs and
    # no name waits; the argument timer dies with awaitingArgument) or is
    # harmless there.

    ready.upon(nameHeld, enter=awaitingArgument, outputs=[_holdName, _armArgWait])
    ready.upon(pendingTaken, enter=ready, outputs=[])
    ready.upon(argWaitExpired, enter=ready, outputs=[])
    ready.upon(started, enter=running, outputs=[_attach])
    ready.upon(commandEnded, enter=ready, outputs=[])
    ready.upon(resetRequested, enter=ready, outputs=[_forgetInput])

    awaitingArgument.upon(nameHeld, enter=awaitingArgument, outputs=[])
    awaitingArgument.upon(pendingTaken, enter=ready, outputs=[_cancelArgWait, _dropName])
    awaitingArgument.upon(argWaitExpired, enter=ready, outputs=[_cancelArgWait, _runHeld])
    awaitingArgument.upon(started, enter=awaitingArgument, outputs=[])
    awaitingArgument.upon(commandEnded, enter=awaitingArgument, outputs=[])
    awaitingArgument.upon(resetRequested, enter=ready, outputs=[_cancelArgWait, _dropName, _forgetInput])

    running.upon(nameHeld, enter=running, outputs=[])
    running.upon(pendingTaken, enter=running, outputs=[])
    running.upon(argWaitExpired, enter=running, outputs=[])
    running.upon(started, enter=running, outputs=[])
    running.upon(commandEnded, enter=ready, outputs=[_detach, _pumpQueue])
    running.upon(resetRequested, enter=running, outputs=[_forgetInput, _dropOutput])

    # -- input -------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        """
        A line (without its LF) from the host.
        """
        if self.current is not None and (
            len(self._queue) >= self.maxQueuedLines
            or self._queuedBytes + len(line) > self.maxQueuedBytes
        ):
            self._overflowLog.emit(
                "discarded a line while command {name!r} runs: queue full "
                "({lines} lines, {nbytes} bytes)",
                name=self.current.name,
                lines=len(self._queue),
                nbytes=self._queuedBytes,
            )
            return
        self._queuedBytes += len(line)
        self._queue.append(line)
        self._pump()

    def lineDiscarded(self) -> None:
        """
        A line was too long and was thrown away.  If it was the argument of
        a pending command, that command is not run.
        """
        if not (self._queue and self._queue[-1] is _DISCARDED):
            self._queue.append(_DISCARDED)
        self._pump()

    def reset(self) -> None:
        """
        Forget partial state: a pending command waiting for its argument and
        the queued lines.  A running command is not killed, but its output
        is no longer written (it is dropped, and that is logged once).
        """
        self.resetRequested()

    def dropPending(self, why: str) -> None:
        """
        Forget a name waiting for its argument line: that line cannot come.
        """
        if self._pendingName is not None:
            name = self._pendingName
            self.pendingTaken()
            self._ignoredLog.emit(
                "command {name!r} not run: {why}", name=name.decode("ascii"), why=why
            )

    def flushPending(self) -> None:
        """
        The input has ended: a name still waiting for its argument line runs
        now with empty data instead of after the wait.
        """
        self._inputEnded = True
        if self._pendingName is not None and self.current is None and not self._queue:
            name = self._pendingName
            self.pendingTaken()
            self._run(name, b"")
            self._pump()
        elif self.idle and self.onIdle is not None:
            self.onIdle()

    # -- processing --------------------------------------------------------

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._queue and self.current is None:
                item = self._queue.popleft()
                if isinstance(item, bytes):
                    self._queuedBytes -= len(item)
                self._process(item)
        finally:
            self._pumping = False
        if self.idle and self.onIdle is not None:
            self.onIdle()

    def _process(self, item: Union[bytes, object]) -> None:
        if item is _DISCARDED:
            if self._pendingName is not None:
                name = self._pendingName
                self.pendingTaken()
                self._ignoredLog.emit(
                    "command {name!r} not run: its argument line was too long",
                    name=name.decode("ascii"),
                )
            return
        assert isinstance(item, bytes)
        text = _strip(item)
        if self._pendingName is not None:
            name = self._pendingName
            self.pendingTaken()
            self._run(name, text)
            return
        if not text:
            return
        name, sep, data = text.partition(b" ")
        try:
            self.runner.directory.resolve(name)
        except CommandRefused as e:
            self._ignore(e)
            return
        if sep:
            self._run(name, data)
        elif self._inputEnded and not self._queue:
            # No argument line can come any more: run it now.
            self._run(name, b"")
        else:
            self.nameHeld(name)

    def _argWaitFired(self) -> None:
        self._argCall = None
        self.argWaitExpired()

    def _ignore(self, refusal: CommandRefused) -> None:
        self._ignoredLog.emit(
            "ignored command line: {reason}", reason=refusal.message, code=refusal.code
        )

    def _run(self, name: bytes, data: bytes) -> None:
        sink = _LegacySink(self, name.decode("ascii"))
        try:
            # line=True: the runner's line-protocol limits apply (this
            # client cannot cancel a command).
            execution = self.runner.start(name, sink, line=True)
        except CommandRefused as e:
            self._ignore(e)
            return
        except Exception:
            _log.failure("command {name!r} could not be started", name=sink.name)
            return
        self.started(execution, sink)
        if data:
            execution.writeStdin(data)
        execution.closeStdin()
        execution.done.addBoth(self._commandDone, execution)

    def _commandDone(self, result: Any, execution: IExecution) -> Any:
        if execution is self.current:
            self.commandEnded()
        return result

    def _writeOutput(self, data: bytes) -> None:
        self.write(data)

    # -- device backpressure -----------------------------------------------

    def _throttleWith(self, execution: IExecution) -> None:
        consumer = self.consumer
        if consumer is None or getattr(consumer, "producer", None) is not None:
            return
        throttle = _OutputThrottle(execution)
        try:
            consumer.registerProducer(throttle, True)
        except RuntimeError:
            return
        self._throttle = throttle

    def _unthrottle(self) -> None:
        throttle, self._throttle = self._throttle, None
        if throttle is None:
            return
        consumer = self.consumer
        if consumer is not None and getattr(consumer, "producer", None) is throttle:
            consumer.unregisterProducer()
        throttle.execution.resumeProducing()
