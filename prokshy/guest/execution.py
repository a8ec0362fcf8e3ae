# -*- test-case-name: tests.system.test_runner -*-
"""
L{Execution}: one running command, from its spawn to its exit record.

It feeds stdin, applies backpressure both ways (it is the
C{IPushProducer} of the command's output), signals and cancels the
command, enforces the timeout and the output cap that
L{CommandRunner<prokshy.guest.runner.CommandRunner>} gave it, and fires
C{done} with the L{ExitStatus<prokshy.execs.status.ExitStatus>} once the
process is reaped and its output pipes are closed.

An L{Execution} is an Automat state machine.  States: C{starting} (the
spawn has not connected yet), C{running} (timer: the timeout), C{terminating}
(TERM sent; timer: the kill grace, then KILL), C{killed} (KILL sent),
C{exited} (reaped, its pipes still open and reading them paused: no timer,
the pipes cannot end unless read), C{draining} (reaped, pipes open and read;
timer: the wait for them, C{killGrace}), C{closing} (that wait expired: the
tree was killed and the pipes closed; timer: a fallback that finishes
anyway) and C{done}.  A state's timer is armed on entering it and cancelled
on every transition out of it.  Whether output is paused is the consumer's
doing, not a state: it decides only whether the command's exit is
C{exitedPaused} or C{exitedReading}.  A TERM not followed by a KILL is
followed by one at the end, for stragglers.  Every (state, input) pair is
declared; an empty output list is a deliberate "nothing to do" (a second
cancel, an exit already recorded, a late C{processEnded}, or a timer of
another state, which cannot fire as each dies with its state)::

    closing      cancelRequested  -> closing
    closing      connected        -> closing
    closing      drainExpired     -> closing
    closing      ended            -> done         _cancelFallback, _finish
    closing      exitedPaused     -> closing
    closing      exitedReading    -> closing
    closing      fallbackExpired  -> done         _cancelFallback, _finish
    closing      graceExpired     -> closing
    closing      outputCapped     -> closing
    closing      outputPaused     -> closing      _pauseTransport
    closing      outputResumed    -> closing      _resumeTransport
    closing      timeoutExpired   -> closing
    done         cancelRequested  -> done
    done         connected        -> done
    done         drainExpired     -> done
    done         ended            -> done
    done         exitedPaused     -> done
    done         exitedReading    -> done
    done         fallbackExpired  -> done
    done         graceExpired     -> done
    done         outputCapped     -> done
    done         outputPaused     -> done
    done         outputResumed    -> done
    done         timeoutExpired   -> done
    draining     cancelRequested  -> draining     _sendTerm
    draining     connected        -> draining
    draining     drainExpired     -> closing      _cancelDrain, _logDrainExpired, _armFallback, _sendKill, _closePipes
    draining     ended            -> done         _cancelDrain, _finish
    draining     exitedPaused     -> draining
    draining     exitedReading    -> draining
    draining     fallbackExpired  -> draining
    draining     graceExpired     -> draining
    draining     outputCapped     -> draining     _markTruncated, _closeOutput
    draining     outputPaused     -> exited       _cancelDrain, _pauseTransport
    draining     outputResumed    -> draining
    draining     timeoutExpired   -> draining
    exited       cancelRequested  -> exited       _sendTerm
    exited       connected        -> exited
    exited       drainExpired     -> exited
    exited       ended            -> done         _finish
    exited       exitedPaused     -> exited
    exited       exitedReading    -> exited
    exited       fallbackExpired  -> exited
    exited       graceExpired     -> exited
    exited       outputCapped     -> exited       _markTruncated, _closeOutput
    exited       outputPaused     -> exited
    exited       outputResumed    -> draining     _resumeTransport, _armDrain
    exited       timeoutExpired   -> exited
    killed       cancelRequested  -> killed
    killed       connected        -> killed
    killed       drainExpired     -> killed
    killed       ended            -> done         _recordExit, _finish
    killed       exitedPaused     -> exited       _recordExit
    killed       exitedReading    -> draining     _recordExit, _armDrain
    killed       fallbackExpired  -> killed
    killed       graceExpired     -> killed
    killed       outputCapped     -> killed       _markTruncated, _closeOutput
    killed       outputPaused     -> killed       _pauseTransport
    killed       outputResumed    -> killed       _resumeTransport
    killed       timeoutExpired   -> killed
    running      cancelRequested  -> terminating  _cancelTimeout, _sendTerm, _armGrace
    running      connected        -> running
    running      drainExpired     -> running
    running      ended            -> done         _cancelTimeout, _recordExit, _finish
    running      exitedPaused     -> exited       _cancelTimeout, _recordExit
    running      exitedReading    -> draining     _cancelTimeout, _recordExit, _armDrain
    running      fallbackExpired  -> running
    running      graceExpired     -> running
    running      outputCapped     -> terminating  _cancelTimeout, _markTruncated, _sendTerm, _armGrace, _closeOutput
    running      outputPaused     -> running      _pauseTransport
    running      outputResumed    -> running      _resumeTransport
    running      timeoutExpired   -> terminating  _cancelTimeout, _logTimeout, _sendTerm, _armGrace
    starting     cancelRequested  -> starting
    starting     connected        -> running      _attach, _armTimeout
    starting     drainExpired     -> starting
    starting     ended            -> starting
    starting     exitedPaused     -> starting
    starting     exitedReading    -> starting
    starting     fallbackExpired  -> starting
    starting     graceExpired     -> starting
    starting     outputCapped     -> starting
    starting     outputPaused     -> starting
    starting     outputResumed    -> starting
    starting     timeoutExpired   -> starting
    terminating  cancelRequested  -> terminating
    terminating  connected        -> terminating
    terminating  drainExpired     -> terminating
    terminating  ended            -> done         _cancelGrace, _recordExit, _finish
    terminating  exitedPaused     -> exited       _cancelGrace, _recordExit
    terminating  exitedReading    -> draining     _cancelGrace, _recordExit, _armDrain
    terminating  fallbackExpired  -> terminating
    terminating  graceExpired     -> killed       _cancelGrace, _sendKill
    terminating  outputCapped     -> terminating  _markTruncated, _closeOutput
    terminating  outputPaused     -> terminating  _pauseTransport
    terminating  outputResumed    -> terminating  _resumeTransport
    terminating  timeoutExpired   -> terminating
"""

from __future__ import annotations

import signal as _signal
from typing import Any, List, Optional, Union

from automat import MethodicalMachine
from zope.interface import implementer

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from prokshy import _machines
from prokshy.execs.interfaces import IExecution, IOutputFinished
from prokshy.execs.status import ExitStatus
from prokshy.guest._process import IProcessGroup, IProcessTree, IPTYProcess

__all__ = ["Execution", "signalNumber"]

_log = Logger()


def signalNumber(sig: Union[int, str]) -> int:
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
        self._execution.connected(self.transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._execution._output(childFD, data)

    def processExited(self, reason: Failure) -> None:
        self._execution._leaderExited(reason)

    def processEnded(self, reason: Failure) -> None:
        self._execution.ended(reason)


@_machines.fast
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

    _machine = MethodicalMachine()

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
        # What the exit record will say.
        self._code: Optional[int] = None
        self._signal: Optional[int] = None
        self._timedOut = False
        self._truncated = False
        #: Whether output is paused (the consumer's doing, not a state: it
        #: decides only which input the leader's exit is).
        self._paused = False
        #: Output is no longer delivered (the consumer went away, the cap
        #: was reached, or the pipes are being closed).
        self._discard = False
        #: A TERM was sent and no KILL since: the end kills stragglers.
        self._termOwed = False
        # Each state's timer: running's timeout, terminating's kill grace,
        # draining's wait for the pipes, closing's fallback.
        self._timeoutCall: Any = None
        self._graceCall: Any = None
        self._drainCall: Any = None
        self._fallbackCall: Any = None

    def __repr__(self) -> str:
        return f"<Execution {self.name!r} pid={self.pid} finished={self.finished}>"

    @property
    def elapsed(self) -> float:
        end = self._endedAt if self._endedAt is not None else self._clock.seconds()
        return end - self._startedAt

    @property
    def finished(self) -> bool:
        """
        Whether C{done} has fired (or is firing).
        """
        return self.status is not None

    @property
    def transport(self) -> Any:
        """
        The process transport (an C{IProcessTransport}; an
        L{IProcessTree<prokshy.guest._process.IProcessTree>} with the default
        spawn), once spawned.
        """
        return self._transport

    # -- states -----------------------------------------------------------

    @_machine.state(initial=True)
    def starting(self):
        "Spawning: the process transport is not connected yet."

    @_machine.state()
    def running(self):
        "The command runs.  Timer: the timeout (if any), armed on entering."

    @_machine.state()
    def terminating(self):
        "TERM was sent to the command's tree.  Timer: the kill grace."

    @_machine.state()
    def killed(self):
        "KILL was sent; waiting for the command to be reaped."

    @_machine.state()
    def exited(self):
        """
        The command was reaped, but its output pipes are open and reading
        them is paused: the wait for them is suspended (they cannot reach
        end of file unless read).
        """

    @_machine.state()
    def draining(self):
        """
        The command was reaped; its output pipes are still open (held by
        descendants) and read.  Timer: the bounded wait for them.
        """

    @_machine.state()
    def closing(self):
        """
        The wait for the pipes expired: the tree was killed and the pipes
        closed.  Timer: the fallback, should the process still not end.
        """

    @_machine.state()
    def done(self):
        "C{done} has fired with the exit record."

    # -- inputs -----------------------------------------------------------

    @_machine.input()
    def connected(self, transport):
        "The spawn connected the process transport."

    @_machine.input()
    def timeoutExpired(self):
        "The timeout timer fired."

    @_machine.input()
    def cancelRequested(self):
        "cancel() (or stopProducing)."

    @_machine.input()
    def outputCapped(self):
        "The output cap was reached."

    @_machine.input()
    def graceExpired(self):
        "The kill-grace timer fired."

    @_machine.input()
    def exitedReading(self, reason):
        "The command was reaped while its output is read."

    @_machine.input()
    def exitedPaused(self, reason):
        "The command was reaped while its output is paused."

    @_machine.input()
    def outputPaused(self):
        "pauseProducing()."

    @_machine.input()
    def outputResumed(self):
        "resumeProducing()."

    @_machine.input()
    def drainExpired(self):
        "The wait for the output pipes expired."

    @_machine.input()
    def fallbackExpired(self):
        "The fallback timer fired: the pipes were closed but the process did not end."

    @_machine.input()
    def ended(self, reason):
        "The command was reaped and all its pipes are closed (processEnded)."

    # -- outputs ----------------------------------------------------------

    @_machine.output()
    def _attach(self, transport):
        self._transport = transport
        self.pid = transport.pid

    @_machine.output()
    def _armTimeout(self):
        if self._timeout and self._timeout > 0:
            self._timeoutCall = self._clock.callLater(self._timeout, self._fire, "_timeoutCall", self.timeoutExpired)

    @_machine.output()
    def _cancelTimeout(self):
        self._cancel("_timeoutCall")

    @_machine.output()
    def _logTimeout(self):
        self._timedOut = True
        _log.warn(
            "command {name!r} timed out after {timeout} s: terminating it",
            name=self.name,
            timeout=self._timeout,
        )

    @_machine.output()
    def _sendTerm(self):
        self._termOwed = True
        self._signalAll(_signal.SIGTERM)

    @_machine.output()
    def _armGrace(self):
        self._graceCall = self._clock.callLater(self._killGrace, self._fire, "_graceCall", self.graceExpired)

    @_machine.output()
    def _cancelGrace(self):
        self._cancel("_graceCall")

    @_machine.output()
    def _sendKill(self):
        self._termOwed = False
        self._signalAll(_signal.SIGKILL)

    @_machine.output()
    def _markTruncated(self):
        self._truncated = True
        self._discard = True
        _log.warn(
            "command {name!r} wrote more than {limit} bytes: output truncated, "
            "terminating it",
            name=self.name,
            limit=self._maxOutput,
        )

    @_machine.output()
    def _closeOutput(self):
        # Close our read ends: further writes fail with EPIPE/SIGPIPE.
        self._transport.closeStdout()
        self._transport.closeStderr()

    @_machine.output()
    def _recordExit(self, reason):
        self._code = getattr(reason.value, "exitCode", None)
        self._signal = getattr(reason.value, "signal", None)

    @_machine.output()
    def _pauseTransport(self):
        self._transport.pauseProducing()

    @_machine.output()
    def _resumeTransport(self):
        self._transport.resumeProducing()

    @_machine.output()
    def _armDrain(self):
        self._drainCall = self._clock.callLater(self._killGrace, self._fire, "_drainCall", self.drainExpired)

    @_machine.output()
    def _cancelDrain(self):
        self._cancel("_drainCall")

    @_machine.output()
    def _logDrainExpired(self):
        _log.warn(
            "command {name!r} exited but its output is still open after "
            "{grace} s: killing its process group",
            name=self.name,
            grace=self._killGrace,
        )
        self._discard = True

    @_machine.output()
    def _armFallback(self):
        self._fallbackCall = self._clock.callLater(
            self._killGrace, self._fire, "_fallbackCall", self.fallbackExpired
        )

    @_machine.output()
    def _cancelFallback(self):
        self._cancel("_fallbackCall")

    @_machine.output()
    def _closePipes(self):
        # If closing the pipes does not end the process promptly (a process
        # outside the group holds stdin and a write is pending), the
        # fallback timer finishes anyway.
        self._transport.loseConnection()

    @_machine.output()
    def _finish(self):
        if self._termOwed:
            # Stragglers that ignored TERM: the group id cannot have been
            # reused while any of them is alive.
            self._termOwed = False
            self._signalAll(_signal.SIGKILL)
        self._endedAt = self._clock.seconds()
        status = ExitStatus(self._code, self._signal, self._timedOut, self._truncated)
        self.status = status
        sink, self._sink = self._sink, None
        if IOutputFinished.providedBy(sink):
            try:
                sink.outputFinished()
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
            pid=self.pid,
        )
        self.done.callback(status)

    # -- the table --------------------------------------------------------
    # Every (state, input) pair is declared.  An empty output list is a
    # deliberate "nothing to do": the input is harmless there (a second
    # cancel, an exit already recorded, a late processEnded), or cannot
    # happen (a timer of another state: each is cancelled on leaving its
    # state; anything before the spawn connects).  A state's timer is armed
    # on entering it and cancelled on every transition out of it.

    _nothing: List[Any] = []

    starting.upon(connected, enter=running, outputs=[_attach, _armTimeout])
    for _input in (timeoutExpired, cancelRequested, outputCapped, graceExpired, exitedReading,
                   exitedPaused, outputPaused, outputResumed, drainExpired, fallbackExpired, ended):
        starting.upon(_input, enter=starting, outputs=[])

    running.upon(connected, enter=running, outputs=[])
    running.upon(timeoutExpired, enter=terminating, outputs=[_cancelTimeout, _logTimeout, _sendTerm, _armGrace])
    running.upon(cancelRequested, enter=terminating, outputs=[_cancelTimeout, _sendTerm, _armGrace])
    running.upon(outputCapped, enter=terminating,
                 outputs=[_cancelTimeout, _markTruncated, _sendTerm, _armGrace, _closeOutput])
    running.upon(graceExpired, enter=running, outputs=[])
    running.upon(exitedReading, enter=draining, outputs=[_cancelTimeout, _recordExit, _armDrain])
    running.upon(exitedPaused, enter=exited, outputs=[_cancelTimeout, _recordExit])
    running.upon(outputPaused, enter=running, outputs=[_pauseTransport])
    running.upon(outputResumed, enter=running, outputs=[_resumeTransport])
    running.upon(drainExpired, enter=running, outputs=[])
    running.upon(fallbackExpired, enter=running, outputs=[])
    running.upon(ended, enter=done, outputs=[_cancelTimeout, _recordExit, _finish])

    terminating.upon(connected, enter=terminating, outputs=[])
    terminating.upon(timeoutExpired, enter=terminating, outputs=[])
    terminating.upon(cancelRequested, enter=terminating, outputs=[])
    terminating.upon(outputCapped, enter=terminating, outputs=[_markTruncated, _closeOutput])
    terminating.upon(graceExpired, enter=killed, outputs=[_cancelGrace, _sendKill])
    terminating.upon(exitedReading, enter=draining, outputs=[_cancelGrace, _recordExit, _armDrain])
    terminating.upon(exitedPaused, enter=exited, outputs=[_cancelGrace, _recordExit])
    terminating.upon(outputPaused, enter=terminating, outputs=[_pauseTransport])
    terminating.upon(outputResumed, enter=terminating, outputs=[_resumeTransport])
    terminating.upon(drainExpired, enter=terminating, outputs=[])
    terminating.upon(fallbackExpired, enter=terminating, outputs=[])
    terminating.upon(ended, enter=done, outputs=[_cancelGrace, _recordExit, _finish])

    killed.upon(connected, enter=killed, outputs=[])
    killed.upon(timeoutExpired, enter=killed, outputs=[])
    killed.upon(cancelRequested, enter=killed, outputs=[])
    killed.upon(outputCapped, enter=killed, outputs=[_markTruncated, _closeOutput])
    killed.upon(graceExpired, enter=killed, outputs=[])
    killed.upon(exitedReading, enter=draining, outputs=[_recordExit, _armDrain])
    killed.upon(exitedPaused, enter=exited, outputs=[_recordExit])
    killed.upon(outputPaused, enter=killed, outputs=[_pauseTransport])
    killed.upon(outputResumed, enter=killed, outputs=[_resumeTransport])
    killed.upon(drainExpired, enter=killed, outputs=[])
    killed.upon(fallbackExpired, enter=killed, outputs=[])
    killed.upon(ended, enter=done, outputs=[_recordExit, _finish])

    exited.upon(connected, enter=exited, outputs=[])
    exited.upon(timeoutExpired, enter=exited, outputs=[])
    exited.upon(cancelRequested, enter=exited, outputs=[_sendTerm])
    exited.upon(outputCapped, enter=exited, outputs=[_markTruncated, _closeOutput])
    exited.upon(graceExpired, enter=exited, outputs=[])
    exited.upon(exitedReading, enter=exited, outputs=[])
    exited.upon(exitedPaused, enter=exited, outputs=[])
    exited.upon(outputPaused, enter=exited, outputs=[])
    exited.upon(outputResumed, enter=draining, outputs=[_resumeTransport, _armDrain])
    exited.upon(drainExpired, enter=exited, outputs=[])
    exited.upon(fallbackExpired, enter=exited, outputs=[])
    exited.upon(ended, enter=done, outputs=[_finish])

    draining.upon(connected, enter=draining, outputs=[])
    draining.upon(timeoutExpired, enter=draining, outputs=[])
    draining.upon(cancelRequested, enter=draining, outputs=[_sendTerm])
    draining.upon(outputCapped, enter=draining, outputs=[_markTruncated, _closeOutput])
    draining.upon(graceExpired, enter=draining, outputs=[])
    draining.upon(exitedReading, enter=draining, outputs=[])
    draining.upon(exitedPaused, enter=draining, outputs=[])
    draining.upon(outputPaused, enter=exited, outputs=[_cancelDrain, _pauseTransport])
    draining.upon(outputResumed, enter=draining, outputs=[])
    draining.upon(drainExpired, enter=closing,
                  outputs=[_cancelDrain, _logDrainExpired, _armFallback, _sendKill, _closePipes])
    draining.upon(fallbackExpired, enter=draining, outputs=[])
    draining.upon(ended, enter=done, outputs=[_cancelDrain, _finish])

    closing.upon(connected, enter=closing, outputs=[])
    closing.upon(timeoutExpired, enter=closing, outputs=[])
    closing.upon(cancelRequested, enter=closing, outputs=[])
    closing.upon(outputCapped, enter=closing, outputs=[])
    closing.upon(graceExpired, enter=closing, outputs=[])
    closing.upon(exitedReading, enter=closing, outputs=[])
    closing.upon(exitedPaused, enter=closing, outputs=[])
    closing.upon(outputPaused, enter=closing, outputs=[_pauseTransport])
    closing.upon(outputResumed, enter=closing, outputs=[_resumeTransport])
    closing.upon(drainExpired, enter=closing, outputs=[])
    closing.upon(fallbackExpired, enter=done, outputs=[_cancelFallback, _finish])
    closing.upon(ended, enter=done, outputs=[_cancelFallback, _finish])

    for _input in (connected, timeoutExpired, cancelRequested, outputCapped, graceExpired,
                   exitedReading, exitedPaused, outputPaused, outputResumed, drainExpired,
                   fallbackExpired, ended):
        done.upon(_input, enter=done, outputs=[])
    del _input, _nothing

    # -- stdin -------------------------------------------------------------

    def writeStdin(self, data: bytes) -> None:
        """
        Write to the command's stdin (buffered; dropped once stdin is gone).
        """
        if self._transport is not None and not self.finished:
            self._transport.write(data)

    def closeStdin(self) -> None:
        """
        Close the command's stdin once what was written is flushed.
        """
        if self._transport is not None and not self.finished:
            self._transport.closeStdin()

    def registerStdinProducer(self, producer: Any, streaming: bool) -> None:
        """
        Register a producer feeding stdin: it is paused while the stdin pipe
        (and its write buffer) is full and resumed when it drains; it is
        stopped if stdin is already closed.
        """
        if self._transport is None or self.finished:
            producer.stopProducing()
            return
        self._transport.registerProducer(producer, streaming)

    def unregisterStdinProducer(self) -> None:
        if self._transport is not None and not self.finished:
            self._transport.unregisterProducer()

    # -- output backpressure (IPushProducer) -------------------------------

    def pauseProducing(self) -> None:
        """
        Stop reading stdout and stderr: the command blocks once the pipes
        fill.  While paused, the wait for the pipes to close after exit is
        suspended (the pipes cannot reach EOF unless read).
        """
        if self.finished or self._paused:
            return
        self._paused = True
        self.outputPaused()

    def resumeProducing(self) -> None:
        """
        Read stdout and stderr again.
        """
        if self.finished or not self._paused:
            return
        self._paused = False
        self.outputResumed()

    def stopProducing(self) -> None:
        """
        The consumer is gone: discard further output and cancel the command.
        """
        if self.finished:
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
        @raise ValueError: not a signal.
        """
        number = signalNumber(sig)
        if self.finished or self._transport is None:
            return False
        return self._signalGroup(number)

    def resize(self, rows: int, cols: int) -> bool:
        """
        Set the size of the command's pty (a C{tty} exec: its transport is
        an L{IPTYProcess<prokshy.guest._process.IPTYProcess>}); the kernel
        then signals SIGWINCH to the pty's foreground process group.

        @return: whether it was set (C{False} without a pty, or once the
            command has finished).
        """
        transport = self._transport
        if self.finished or not IPTYProcess.providedBy(transport):
            return False
        return bool(transport.setWindowSize(rows, cols))

    def cancel(self) -> None:
        """
        Terminate the command: TERM to its process group and to descendants
        that left it now, KILL after the grace period.  Once the command has
        exited, TERM what still holds its output; the wait for the pipes
        bounds the rest.
        """
        self.cancelRequested()

    # -- internals ---------------------------------------------------------

    def _fire(self, name: str, input: Any) -> None:
        setattr(self, name, None)
        input()

    def _cancel(self, name: str) -> None:
        call = getattr(self, name)
        setattr(self, name, None)
        if call is not None and call.active():
            call.cancel()

    def _leaderExited(self, reason: Failure) -> None:
        if self._paused:
            self.exitedPaused(reason)
        else:
            self.exitedReading(reason)

    def _signalGroup(self, number: int) -> bool:
        transport = self._transport
        if IProcessGroup.providedBy(transport):
            return bool(transport.signalGroup(number))
        try:
            transport.signalProcess(number)
        except (ProcessExitedAlready, ProcessLookupError):
            return False
        return True

    def _signalAll(self, number: int) -> bool:
        """
        Signal the command's group and every descendant that left it (if the
        transport is an L{IProcessTree}).
        """
        transport = self._transport
        if transport is None:
            return False
        if IProcessTree.providedBy(transport):
            return bool(transport.signalTree(number))
        return self._signalGroup(number)

    def _output(self, childFD: int, data: bytes) -> None:
        if self._discard or self.finished:
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
            self.outputCapped()


def _exitLevel(status: ExitStatus) -> LogLevel:
    if status.timedOut or status.truncated:
        return LogLevel.warn
    return LogLevel.info
