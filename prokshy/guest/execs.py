# -*- test-case-name: tests.test_guest_framed -*-
"""
The guest's stream handlers for the framed protocol: C{exec} streams run a
command.d command, C{info} streams describe the agent.

An exec stream::

    host -> guest   OPEN {"kind": "exec", "name": NAME, "timeout": SECONDS?}
    guest -> host   ACCEPT, or REFUSE {"code": bad-name | no-such-command |
                    not-executable | insecure | busy, "message": ...}
    host -> guest   DATA (stdin) ... EOF          (stdin streams in, any size)
    guest -> host   DATA (stdout), STDERR (stderr) ... EOF,
                    EXIT {"code", "signal", "timed_out", "truncated"}, CLOSE
    host -> guest   SIGNAL {"signal": "TERM"}     (any time: to the process group)
    host -> guest   CLOSE (after EXIT) or RESET   (a RESET cancels the command)

Commands run at most C{maxConcurrency} at a time; up to C{maxQueue} more
wait (accepted, their stdin held back by flow control); beyond that an open
is refused with C{busy}.
"""

import os
import platform
import signal
import socket
import time
from collections import deque

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from prokshy._version import __version__
from prokshy.lines.loglimit import LogLimiter
from prokshy.guest.reaper import systemUptime
from prokshy.execs.refusals import CommandRefused
from prokshy.execs.status import ExitStatus
from prokshy.guest.execution import signalNumber
from prokshy.link.session import PROTOCOL_VERSIONS
from prokshy.streams.stream import StreamRefused
from prokshy.wire import frames

FEATURES = ("exec", "info", "signal", "stderr")
_TERMINATING = frozenset(
    getattr(signal, name)
    for name in ("SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGALRM")
)


class Slots:
    """
    Bounded concurrency with a bounded wait queue.
    """

    def __init__(self, maxConcurrency, maxQueue):
        self.maxConcurrency = maxConcurrency
        self.maxQueue = maxQueue
        self.running = 0
        self._waiting = deque()

    @property
    def waiting(self):
        return len(self._waiting)

    def acquire(self):
        """
        @return: a Deferred firing when a slot is ours.
        @raise CommandRefused: C{busy}, when the queue is full too.
        """
        if self.running < self.maxConcurrency:
            self.running += 1
            d = Deferred()
            d.callback(None)
            return d
        if len(self._waiting) >= self.maxQueue:
            raise CommandRefused(
                "busy",
                "%d commands running and %d waiting (the limit)"
                % (self.running, len(self._waiting)),
            )
        d = Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(d)
        return d

    def release(self):
        if self._waiting:
            self._waiting.popleft().callback(None)
        else:
            self.running -= 1


class _StdinThrottle:
    """
    Lets the command's stdin pipe pause and resume the stream, but not stop
    it: the pipe "stops" its producer whenever it closes, which is normal.
    """

    def __init__(self, stream):
        self.stream = stream

    def pauseProducing(self):
        self.stream.pauseProducing()

    def resumeProducing(self):
        self.stream.resumeProducing()

    def stopProducing(self):
        pass


class ExecStreamProtocol(Protocol):
    """
    Runs one command for one exec stream.
    """

    log = Logger()

    def __init__(self, runner, slots, name, timeout):
        self.runner = runner
        self.slots = slots
        self.name = name
        self.timeout = timeout
        self.execution = None
        self._slot = None
        self._stdin = deque()
        self._stdinClosed = False
        self._gone = False
        self._pendingSignals = []

    def connectionMade(self):
        # Hold stdin back (no credit granted) until the command runs.
        self.transport.pauseProducing()
        slot = self._slot = self.slots.acquire()
        slot.addCallback(self._start)
        slot.addErrback(lambda f: f.trap(CancelledError))

    def _start(self, _):
        self._slot = None
        if self._gone:
            self.slots.release()
            return
        try:
            self.execution = self.runner.start(self.name, self, timeout=self.timeout)
        except CommandRefused as e:
            self.slots.release()
            self.transport.abort(e.code, e.message)
            return
        except Exception as e:
            # Whatever went wrong, the slot is free again and the host
            # learns why: the stream was accepted, so it is reset.
            self.slots.release()
            self.log.failure("command {name!r} could not be started", name=self.name)
            self.transport.abort(
                "internal-error",
                "command %r could not be started: %s: %s"
                % (self.name, type(e).__name__, e),
            )
            return
        ex = self.execution
        self.transport.registerProducer(ex, True)
        ex.registerStdinProducer(_StdinThrottle(self.transport), True)
        ex.done.addCallback(self._finished)
        for number in self._pendingSignals:
            ex.signal(number)
        self._pendingSignals = []
        while self._stdin:
            ex.writeStdin(self._stdin.popleft())
        if self._stdinClosed:
            ex.closeStdin()
        self.transport.resumeProducing()

    # stdin from the host
    def dataReceived(self, data):
        if self.execution is None:
            self._stdin.append(data)
        else:
            self.execution.writeStdin(data)

    def eofReceived(self):
        self._stdinClosed = True
        if self.execution is not None:
            self.execution.closeStdin()

    def signalReceived(self, obj):
        sig = obj.get("signal")
        if not isinstance(sig, (str, int)) or isinstance(sig, bool):
            return
        if self.execution is None:
            self._signalWhileWaiting(sig)
            return
        try:
            self.execution.signal(sig)
        except (ValueError, KeyError):
            self.log.info("ignored unknown signal {sig!r}", sig=sig)

    def _signalWhileWaiting(self, sig):
        """
        A signal for a command still waiting for a slot: a terminating
        signal cancels it (it ends as if killed by that signal, without
        running); any other is delivered when it starts.
        """
        try:
            number = signalNumber(sig)
        except (ValueError, KeyError):
            self.log.info("ignored unknown signal {sig!r}", sig=sig)
            return
        if number not in _TERMINATING:
            self._pendingSignals.append(number)
            return
        if self._slot is not None:
            slot, self._slot = self._slot, None
            slot.cancel()
        self._gone = True
        self.transport.resumeProducing()
        self.transport.writeEof()
        self.transport.sendControl(frames.EXIT, ExitStatus(None, number).toExit())
        self.transport.loseConnection()

    # output from the command (the runner's sink)
    def stdoutReceived(self, data):
        self.transport.write(data)

    def stderrReceived(self, data):
        self.transport.writeStderr(data)

    def _finished(self, status):
        self.slots.release()
        if self._gone:
            return status
        self.transport.unregisterProducer()
        # The command may have left stdin unread, with the stdin pipe having
        # paused the stream: resume, so the host's EOF and CLOSE get through
        # (leftover stdin is dropped: the command is gone).
        self.transport.resumeProducing()
        self.transport.writeEof()
        self.transport.sendControl(frames.EXIT, status.toExit())
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self._gone = True
        if self._slot is not None:
            self._slot.cancel()
            self._slot = None
        if self.execution is not None and not self.execution.finished:
            self.log.info(
                "command {name!r} cancelled: {why}", name=self.name, why=reason.getErrorMessage()
            )
            self.execution.cancel()


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

    def __init__(self, runner, maxConcurrency=8, maxQueue=64, startedAt=None):
        self.runner = runner
        self.slots = Slots(maxConcurrency, maxQueue)
        self.startedAt = time.time() if startedAt is None else startedAt
        clock = getattr(runner, "reactor", None)
        if clock is None:
            from twisted.internet import reactor as clock
        self._insecureLog = LogLimiter(clock, self.log)

    def __call__(self, stream):
        kind = stream.kind
        if kind == "exec":
            return self._exec(stream.args)
        if kind in ("info", "ping"):
            return InfoProtocol(self.describe)
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
            self.runner.directory.resolve(name)
        except CommandRefused as e:
            if e.code == "insecure":
                self._insecureLog.emit("refused exec: {reason}", reason=e.message)
            raise StreamRefused(e.code, e.message)
        if self.slots.running >= self.slots.maxConcurrency and (
            self.slots.waiting >= self.slots.maxQueue
        ):
            raise StreamRefused(
                "busy",
                "%d commands running and %d waiting (the limit)"
                % (self.slots.running, self.slots.waiting),
            )
        return ExecStreamProtocol(self.runner, self.slots, name, timeout)

    def describe(self):
        """
        The agent's version, features, OS and uptime.
        """
        uname = platform.uname()
        return {
            "agent": "prokshy",
            "version": __version__,
            "protocol": list(PROTOCOL_VERSIONS),
            "features": list(FEATURES),
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
        }


def _systemUptime():
    """
    Seconds since boot from the uptime clock (no file, no subprocess), or
    None.
    """
    uptime = systemUptime()
    return None if uptime is None else round(uptime, 3)
