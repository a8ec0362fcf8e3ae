# -*- test-case-name: tests.system.test_guest_framed -*-
"""
The guest's stream handlers for the framed protocol: C{exec} streams run a
command.d command, C{info} streams describe the agent.

An exec stream::

    host -> guest   OPEN {"kind": "exec", "name": NAME, "timeout": SECONDS?,
                          "args": [ARG, ...]?, "tty": {"rows", "cols", "term"}?}
    guest -> host   ACCEPT, or REFUSE {"code": bad-name | no-such-command |
                    not-executable | insecure | busy, "message": ...}
    host -> guest   DATA (stdin) ... EOF          (stdin streams in, any size)
    guest -> host   DATA (stdout), STDERR (stderr) ... EOF,
                    EXIT {"code", "signal", "timed_out", "truncated"}, CLOSE
    host -> guest   SIGNAL {"signal": "TERM"}     (any time: to the process group)
    host -> guest   SIGNAL {"signal": "WINCH", "rows": R, "cols": C}
                                                  (a tty exec: the pty's new size)
    host -> guest   CLOSE (after EXIT) or RESET   (a RESET cancels the command)

Commands run at most C{maxConcurrency} at a time; up to C{maxQueue} more
wait (accepted, their stdin held back by flow control); beyond that an open
is refused with C{busy}.  L{Slots} is a L{DeferredSemaphore} with a bounded
queue, and C{Slots.busy} is the one rule for "busy".  The guest's hello
advertises both limits (C{max_concurrency}, C{max_queue}:
L{GuestStreams.helloFields}).

An L{ExecStreamProtocol} is an Automat state machine.  States: C{waiting}
(for a slot; the stream paused, stdin and signals held; a terminating
signal ends it with an EXIT as if killed, without running), C{starting}
(the runner is starting it: the stream was accepted, and its ACCEPT
queued, just before), C{running}, C{abandoned} (the stream ended:
the command is cancelled, and its end gives the slot back) and C{closed}.
It has no timers (the execution's are in L{prokshy.guest.execution}).
Stdin and EOF sent as early data with the OPEN (docs/protocol.md section
9.2) are held like any stdin that comes before the command runs.
With C{args} the command gets them as its argv[1:] (no shell); with C{tty}
it runs on a pty of its own (L{prokshy.guest._process.PTYProcessGroupProcess}):
its output comes as DATA only, the host's EOF is the pty's VEOF, and a WINCH
with a size (C{resized}) sets the pty's size, held until the command runs.
Every (state, input) pair is declared; an empty output list is a deliberate
"nothing to do" (the stream or the command is gone, or the input cannot
come in that state)::

    abandoned  commandDone    -> closed     _releaseSlot
    abandoned  killSignalled  -> abandoned
    abandoned  lost           -> abandoned
    abandoned  refused        -> abandoned
    abandoned  resized        -> abandoned
    abandoned  signalled      -> abandoned
    abandoned  slotAcquired   -> abandoned
    abandoned  started        -> abandoned
    abandoned  stdinEnded     -> abandoned
    abandoned  stdinReceived  -> abandoned
    closed     commandDone    -> closed
    closed     killSignalled  -> closed
    closed     lost           -> closed
    closed     refused        -> closed
    closed     resized        -> closed
    closed     signalled      -> closed
    closed     slotAcquired   -> closed
    closed     started        -> closed
    closed     stdinEnded     -> closed
    closed     stdinReceived  -> closed
    running    commandDone    -> closed     _releaseSlot, _sendExit
    running    killSignalled  -> running    _deliverSignal
    running    lost           -> abandoned  _cancelCommand
    running    refused        -> running
    running    resized        -> running    _resize
    running    signalled      -> running    _deliverSignal
    running    slotAcquired   -> running
    running    started        -> running
    running    stdinEnded     -> running    _closeStdin
    running    stdinReceived  -> running    _writeStdin
    starting   commandDone    -> starting
    starting   killSignalled  -> starting   _holdSignal
    starting   lost           -> starting
    starting   refused        -> closed     _releaseSlot, _abort
    starting   resized        -> starting   _holdSize
    starting   signalled      -> starting   _holdSignal
    starting   slotAcquired   -> starting
    starting   started        -> running    _hookUp
    starting   stdinEnded     -> starting   _holdEof
    starting   stdinReceived  -> starting   _holdStdin
    waiting    commandDone    -> waiting
    waiting    killSignalled  -> closed     _cancelSlot, _sendKilledExit
    waiting    lost           -> closed     _cancelSlot
    waiting    refused        -> waiting
    waiting    resized        -> waiting    _holdSize
    waiting    signalled      -> waiting    _holdSignal
    waiting    slotAcquired   -> starting   _start
    waiting    started        -> waiting
    waiting    stdinEnded     -> waiting    _holdEof
    waiting    stdinReceived  -> waiting    _holdStdin
"""

import os
import platform
import signal
import socket
import time
from collections import deque

import attrs
from automat import MethodicalMachine
from twisted.internet.defer import CancelledError, DeferredSemaphore
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from prokshy import _machines
from prokshy._version import __version__
from prokshy._loglimit import LogLimiter
from prokshy.guest.proctable import systemUptime
from prokshy.execs.interfaces import ICommandSink, ISpawnCounts
from prokshy.execs.refusals import BUSY, INTERNAL_ERROR, CommandRefused
from prokshy.execs.request import BadOpen, isWinch, parseArgs, parseTTY, windowSize
from prokshy.execs.status import ExitStatus
from prokshy.forward.guestside import KINDS as FORWARD_KINDS
from prokshy.guest.execution import signalNumber
from prokshy.guest.files import FILES_FEATURE, FILE_KINDS, GuestFiles
from prokshy.link.session import PROTOCOL_VERSIONS
from prokshy.streams.interfaces import ISignalStreamProtocol, IStreamProtocol
from prokshy.streams.stream import EARLY_WINDOW, StreamRefused
from prokshy.streams.throttle import Throttle
from prokshy.wire import frames

FEATURES = ("exec", "info", "signal", "stderr", "list")
#: Exec's OPEN arguments (docs/protocol.md): C{args} (argv) and C{tty} (a
#: pty, with WINCH), which an older guest would ignore: the host checks
#: these features first.
EXEC_FEATURES = ("args", "tty")
_TERMINATING = frozenset(
    getattr(signal, name)
    for name in ("SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGALRM")
)


class Slots:
    """
    Bounded concurrency with a bounded wait queue: a
    L{DeferredSemaphore} of C{maxConcurrency} tokens, with at most
    C{maxQueue} acquisitions waiting.

    The one rule for "busy" (L{busy}): every slot taken and the queue full.

    @ivar semaphore: the L{DeferredSemaphore}.
    """

    def __init__(self, maxConcurrency, maxQueue):
        self.maxConcurrency = maxConcurrency
        self.maxQueue = maxQueue
        self.semaphore = DeferredSemaphore(maxConcurrency)

    @property
    def running(self):
        """
        The slots taken.
        """
        return self.maxConcurrency - self.semaphore.tokens

    @property
    def waiting(self):
        """
        The acquisitions waiting for a slot.
        """
        return len(self.semaphore.waiting)

    @property
    def busy(self):
        """
        Whether an acquisition now would be refused.
        """
        return self.running >= self.maxConcurrency and self.waiting >= self.maxQueue

    def refusal(self):
        """
        @return: the L{CommandRefused} for an acquisition while L{busy}.
        """
        return CommandRefused(
            BUSY, "%d commands running and %d waiting (the limit)" % (self.running, self.waiting)
        )

    def acquire(self):
        """
        @return: a Deferred firing when a slot is ours (cancel it to give up
            waiting).
        @raise CommandRefused: C{busy}.
        """
        if self.busy:
            raise self.refusal()
        return self.semaphore.acquire()

    def release(self):
        """
        Give a slot back: the first waiting acquisition gets it.
        """
        self.semaphore.release()


@_machines.fast
@implementer(ICommandSink, IStreamProtocol, ISignalStreamProtocol)
class ExecStreamProtocol(Protocol):
    """
    Runs one command for one exec stream (the machine in the module
    docstring).
    """

    log = Logger()
    _machine = MethodicalMachine()

    def __init__(self, runner, slots, name, timeout, args=(), tty=None):
        self.runner = runner
        self.slots = slots
        self.name = name
        self.timeout = timeout
        #: The command's arguments (argv[1:]), and its L{TTYRequest} or
        #: None (docs/protocol.md: exec's C{args} and C{tty}).
        self.args = tuple(args)
        self.tty = tty
        self.execution = None
        #: The waiting state's claim on a slot.
        self._slot = None
        #: What the host sent while the command was not running yet.
        self._stdin = deque()
        self._stdinClosed = False
        self._pendingSignals = []

    def connectionMade(self):
        # Hold stdin back (no credit granted) until the command runs.
        self.transport.pauseProducing()
        slot = self._slot = self.slots.acquire()
        slot.addCallbacks(self._slotFired, lambda f: f.trap(CancelledError))

    def _slotFired(self, _):
        self._slot = None
        self.slotAcquired()

    # -- states -----------------------------------------------------------

    @_machine.state(initial=True)
    def waiting(self):
        "Waiting for a slot: the stream is paused, stdin and signals are held."

    @_machine.state()
    def starting(self):
        "The slot is ours; the runner is starting the command."

    @_machine.state()
    def running(self):
        "The command runs: stdin, output and signals flow."

    @_machine.state()
    def abandoned(self):
        "The stream is gone and the command cancelled: its end gives the slot back."

    @_machine.state()
    def closed(self):
        "Over: EXIT sent (or the stream reset, or gone), the slot given back."

    # -- inputs -----------------------------------------------------------

    @_machine.input()
    def slotAcquired(self):
        "The slot is ours."

    @_machine.input()
    def started(self, execution):
        "The runner started the command."

    @_machine.input()
    def refused(self, code, message):
        "The runner could not start it."

    @_machine.input()
    def stdinReceived(self, data):
        "DATA from the host."

    @_machine.input()
    def stdinEnded(self):
        "EOF from the host."

    @_machine.input()
    def signalled(self, number):
        "SIGNAL with a signal that does not end a command by default."

    @_machine.input()
    def killSignalled(self, number):
        "SIGNAL with a signal that ends a command by default (TERM, KILL, HUP, ...)."

    @_machine.input()
    def resized(self, rows, cols):
        "SIGNAL WINCH with a size, on a tty exec."

    @_machine.input()
    def commandDone(self, status):
        "The command ended with this ExitStatus."

    @_machine.input()
    def lost(self, reason):
        "The stream ended (closed, reset, or its session ended)."

    # -- outputs ----------------------------------------------------------

    @_machine.output()
    def _start(self):
        # Only what the OPEN asked for: a runner of its own (the daemon's
        # line protocol, tests) need not know about args and tty.
        extra = {}
        if self.args:
            extra["args"] = self.args
        if self.tty is not None:
            extra["tty"] = self.tty
        try:
            execution = self.runner.start(self.name, self, timeout=self.timeout, **extra)
        except CommandRefused as e:
            self.refused(e.code, e.message)
            return
        except Exception as e:
            # Whatever went wrong, the slot is free again and the host
            # learns why: the stream was accepted, so it is reset.
            self.log.failure("command {name!r} could not be started", name=self.name)
            self.refused(
                INTERNAL_ERROR,
                "command %r could not be started: %s: %s" % (self.name, type(e).__name__, e),
            )
            return
        self.started(execution)

    @_machine.output()
    def _hookUp(self, execution):
        self.execution = ex = execution
        self.transport.registerProducer(ex, True)
        ex.registerStdinProducer(Throttle(self.transport), True)
        ex.done.addCallback(self._doneFired)
        for number in self._pendingSignals:
            ex.signal(number)
        self._pendingSignals = []
        while self._stdin:
            ex.writeStdin(self._stdin.popleft())
        if self._stdinClosed:
            ex.closeStdin()
        self.transport.resumeProducing()

    @_machine.output()
    def _releaseSlot(self):
        self.slots.release()

    @_machine.output()
    def _cancelSlot(self):
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.cancel()

    @_machine.output()
    def _abort(self, code, message):
        self.transport.abort(code, message)

    @_machine.output()
    def _holdStdin(self, data):
        self._stdin.append(data)

    @_machine.output()
    def _holdEof(self):
        self._stdinClosed = True

    @_machine.output()
    def _holdSignal(self, number):
        self._pendingSignals.append(number)

    @_machine.output()
    def _writeStdin(self, data):
        self.execution.writeStdin(data)

    @_machine.output()
    def _closeStdin(self):
        self.execution.closeStdin()

    @_machine.output()
    def _deliverSignal(self, number):
        self.execution.signal(number)

    @_machine.output()
    def _holdSize(self, rows, cols):
        # The pty is made at the start with the latest size.
        self.tty = attrs.evolve(self.tty, rows=rows, cols=cols)

    @_machine.output()
    def _resize(self, rows, cols):
        self.execution.resize(rows, cols)

    @_machine.output()
    def _sendKilledExit(self, number):
        # Cancelled while waiting: it ends as if killed by that signal,
        # without running.
        self._exit(ExitStatus(None, number))

    @_machine.output()
    def _sendExit(self, status):
        self.transport.unregisterProducer()
        self._exit(status)

    @_machine.output()
    def _cancelCommand(self, reason):
        self.log.info(
            "command {name!r} cancelled: {why}", name=self.name, why=reason.getErrorMessage()
        )
        self.execution.cancel()

    def _exit(self, status):
        # The command may have left stdin unread, with the stdin pipe having
        # paused the stream: resume, so the host's EOF and CLOSE get through
        # (leftover stdin is dropped: the command is gone).
        self.transport.resumeProducing()
        self.transport.writeEof()
        self.transport.sendControl(frames.EXIT, status.toExit())
        self.transport.loseConnection()

    def _doneFired(self, status):
        self.commandDone(status)
        return status

    # -- the table --------------------------------------------------------
    # Every (state, input) pair is declared; an empty output list is a
    # deliberate "nothing to do": the stream or the command is gone, or the
    # input cannot come in that state (a slot is acquired once; the runner
    # answers started or refused only while starting).

    waiting.upon(slotAcquired, enter=starting, outputs=[_start])
    waiting.upon(started, enter=waiting, outputs=[])
    waiting.upon(refused, enter=waiting, outputs=[])
    waiting.upon(stdinReceived, enter=waiting, outputs=[_holdStdin])
    waiting.upon(stdinEnded, enter=waiting, outputs=[_holdEof])
    waiting.upon(signalled, enter=waiting, outputs=[_holdSignal])
    waiting.upon(killSignalled, enter=closed, outputs=[_cancelSlot, _sendKilledExit])
    waiting.upon(commandDone, enter=waiting, outputs=[])
    waiting.upon(resized, enter=waiting, outputs=[_holdSize])
    waiting.upon(lost, enter=closed, outputs=[_cancelSlot])

    starting.upon(slotAcquired, enter=starting, outputs=[])
    starting.upon(started, enter=running, outputs=[_hookUp])
    starting.upon(refused, enter=closed, outputs=[_releaseSlot, _abort])
    starting.upon(stdinReceived, enter=starting, outputs=[_holdStdin])
    starting.upon(stdinEnded, enter=starting, outputs=[_holdEof])
    starting.upon(signalled, enter=starting, outputs=[_holdSignal])
    starting.upon(killSignalled, enter=starting, outputs=[_holdSignal])
    starting.upon(commandDone, enter=starting, outputs=[])
    starting.upon(resized, enter=starting, outputs=[_holdSize])
    starting.upon(lost, enter=starting, outputs=[])

    running.upon(slotAcquired, enter=running, outputs=[])
    running.upon(started, enter=running, outputs=[])
    running.upon(refused, enter=running, outputs=[])
    running.upon(stdinReceived, enter=running, outputs=[_writeStdin])
    running.upon(stdinEnded, enter=running, outputs=[_closeStdin])
    running.upon(signalled, enter=running, outputs=[_deliverSignal])
    running.upon(killSignalled, enter=running, outputs=[_deliverSignal])
    running.upon(commandDone, enter=closed, outputs=[_releaseSlot, _sendExit])
    running.upon(resized, enter=running, outputs=[_resize])
    running.upon(lost, enter=abandoned, outputs=[_cancelCommand])

    abandoned.upon(slotAcquired, enter=abandoned, outputs=[])
    abandoned.upon(started, enter=abandoned, outputs=[])
    abandoned.upon(refused, enter=abandoned, outputs=[])
    abandoned.upon(stdinReceived, enter=abandoned, outputs=[])
    abandoned.upon(stdinEnded, enter=abandoned, outputs=[])
    abandoned.upon(signalled, enter=abandoned, outputs=[])
    abandoned.upon(killSignalled, enter=abandoned, outputs=[])
    abandoned.upon(commandDone, enter=closed, outputs=[_releaseSlot])
    abandoned.upon(resized, enter=abandoned, outputs=[])
    abandoned.upon(lost, enter=abandoned, outputs=[])

    for _input in (slotAcquired, started, refused, stdinReceived, stdinEnded, signalled,
                   killSignalled, resized, commandDone, lost):
        closed.upon(_input, enter=closed, outputs=[])
    del _input

    # -- the stream's protocol ----------------------------------------------

    def dataReceived(self, data):
        self.stdinReceived(data)

    def eofReceived(self):
        self.stdinEnded()

    def signalReceived(self, obj):
        sig = obj.get("signal")
        if not isinstance(sig, (str, int)) or isinstance(sig, bool):
            return
        if self.tty is not None and isWinch(sig):
            size = windowSize(obj)
            if size is not None:
                self.resized(*size)
                return
        try:
            number = signalNumber(sig)
        except (ValueError, KeyError):
            self.log.info("ignored unknown signal {sig!r}", sig=sig)
            return
        if number in _TERMINATING:
            self.killSignalled(number)
        else:
            self.signalled(number)

    def connectionLost(self, reason):
        self.lost(reason)

    # -- output from the command (ICommandSink) -----------------------------

    def stdoutReceived(self, data):
        self.transport.write(data)

    def stderrReceived(self, data):
        self.transport.writeStderr(data)


class InfoProtocol(Protocol):
    """
    Answers an C{info} (or C{ping}) stream with one JSON document.
    """

    def __init__(self, describe):
        self.describe = describe

    def connectionMade(self):
        from prokshy.streams.stream import encodeJSON

        self.transport.write(encodeJSON(self.describe()))
        self.transport.loseConnection()


class GuestStreams:
    """
    The guest's C{openHandler}: validates opens and builds their protocols.
    """

    log = Logger()

    def __init__(self, runner, maxConcurrency=8, maxQueue=64, startedAt=None, forwards=None, files=None):
        self.runner = runner
        #: The L{prokshy.forward.guestside.GuestForwards} serving C{connect}
        #: and C{listen}, or None (this agent then refuses them).
        self.forwards = forwards
        self.slots = Slots(maxConcurrency, maxQueue)
        #: The early data the streams the host opens may carry behind their
        #: OPEN (docs/protocol.md section 9.2): the agent's Mux holds it,
        #: and its hello says so (C{early_data}).
        self.earlyData = EARLY_WINDOW
        self.startedAt = time.time() if startedAt is None else startedAt
        clock = getattr(runner, "reactor", None)
        if clock is None:
            from twisted.internet import reactor as clock
        self._insecureLog = LogLimiter(clock, self.log)
        #: The L{prokshy.guest.files.GuestFiles} serving C{file-put} and
        #: C{file-get} (by default one with no --allow-files directory:
        #: every file stream is refused C{not-allowed}).
        self.files = files if files is not None else GuestFiles(clock)

    @property
    def features(self):
        """
        The features the guest's hello lists.
        """
        return FEATURES + EXEC_FEATURES + (FILES_FEATURE,) + (FORWARD_KINDS if self.forwards is not None else ())

    def forSession(self, opener):
        """
        The open handler for one session's stream table C{opener} (a
        listener's connections open streams on it).
        """
        return lambda stream: self.open(stream, opener)

    def __call__(self, stream):
        return self.open(stream, None)

    def open(self, stream, opener):
        kind = stream.kind
        if kind == "exec":
            return self._exec(stream.args)
        if kind in ("info", "ping"):
            return InfoProtocol(self.describe)
        if kind == "list":
            # The commands an exec would run (the same checks), as info's
            # one JSON document.
            return InfoProtocol(self.runner.directory.listing)
        if kind in FILE_KINDS:
            return self.files.open(stream)
        if kind in FORWARD_KINDS and self.forwards is not None and (opener is not None or kind == "connect"):
            return self.forwards.open(stream, opener)
        raise StreamRefused("unknown-kind", "this agent opens no %r streams" % (kind,))

    def _exec(self, args):
        name = args.get("name")
        timeout = args.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0
        ):
            raise StreamRefused("bad-open", "timeout must be a number of seconds")
        if not isinstance(name, str):
            raise StreamRefused("bad-name", "exec needs a command name")
        try:
            argv = parseArgs(args.get("args"))
            tty = parseTTY(args.get("tty"))
        except BadOpen as e:
            raise StreamRefused("bad-open", str(e))
        try:
            self.runner.directory.resolve(name)
        except CommandRefused as e:
            if e.code == "insecure":
                self._insecureLog.emit("refused exec: {reason}", reason=e.message)
            raise StreamRefused(e.code, e.message)
        if self.slots.busy:
            e = self.slots.refusal()
            raise StreamRefused(e.code, e.message)
        if not argv and tty is None:
            return ExecStreamProtocol(self.runner, self.slots, name, timeout)
        return ExecStreamProtocol(self.runner, self.slots, name, timeout, args=argv, tty=tty)

    def describe(self):
        """
        The agent's version, features, OS and uptime.
        """
        uname = platform.uname()
        info = {
            "agent": "prokshy",
            "version": __version__,
            "protocol": list(PROTOCOL_VERSIONS),
            "features": list(self.features),
            "os": uname.system,
            "release": uname.release,
            "machine": uname.machine,
            "hostname": socket.gethostname(),
            "agent_uptime": round(time.time() - self.startedAt, 3),
            "system_uptime": _systemUptime(),
            "pid": os.getpid(),
            "running": self.slots.running,
            "waiting": self.slots.waiting,
            "max_concurrency": self.slots.maxConcurrency,
            "max_queue": self.slots.maxQueue,
        }
        if ISpawnCounts.providedBy(self.runner):
            info["spawns"] = dict(self.runner.spawns)
        return info

    def helloFields(self):
        """
        The limits the guest's hello advertises (docs/protocol.md section 2):
        a daemon then queues what is beyond them instead of learning them
        from C{busy} refusals.
        """
        return {"max_concurrency": self.slots.maxConcurrency, "max_queue": self.slots.maxQueue}


def _systemUptime():
    """
    Seconds since boot from the uptime clock (no file, no subprocess), or
    None.
    """
    uptime = systemUptime()
    return None if uptime is None else round(uptime, 3)
