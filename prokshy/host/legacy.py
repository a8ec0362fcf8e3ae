# -*- test-case-name: tests.test_host -*-
"""
The original line protocol, served by the host daemon on a VM's session.

The same line handling as the guest agent (L{GuestLineProtocol} and
L{LegacyHandler}: C{NAME SP DATA}, C{NAME LF DATA LF}, the 1 s wait for a
bare name's argument, over-long lines discarded), but each command runs as a
framed exec stream on the VM, so many legacy clients share the VM at once.

Improvements over talking to bhyve's socket directly: output is never lost
or mixed with another client's, a VM that is down gets a one-line message,
and the daemon closes the connection C{linger} seconds (default 1.5) after
the output has ended, so C{nc} returns by itself.  The linger is longer than
the original CLI's 1 s silence timeout, because that CLI spins forever if
the server closes first.
"""

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import Logger
from zope.interface import implementer

from prokshy.guest.lines import GuestLineProtocol
from prokshy.guest.runner import CommandDirectory, CommandRefused, ExitStatus
from prokshy.host.client import Session
from prokshy.host.vm import VMUnavailable


class _Names:
    """
    Name checks only: whether the command exists is the guest's business.
    """

    resolve = staticmethod(CommandDirectory.checkName)


class RemoteExecution:
    """
    An L{Execution}-like handle on a command run through an exec stream.
    """

    log = Logger()

    def __init__(self, session, name, sink):
        self.name = name
        self.done = Deferred()
        self.finished = False
        self._sink = sink
        self._running = None
        self._stdin = []
        self._eof = False
        self._paused = False
        d = session.execStream(name, sink.stdoutReceived, sink.stderrReceived)
        d.addCallbacks(self._started, self._refused)

    def _started(self, running):
        self._running = running
        if self._paused:
            running.stream.pauseProducing()
        for data in self._stdin:
            running.write(data)
        self._stdin = []
        if self._eof:
            running.closeStdin()
        running.result.addCallbacks(
            lambda r: self._finish(ExitStatus(r.code, r.signal, r.timedOut, r.truncated)),
            self._failed,
        )

    def _refused(self, failure):
        self.log.info("command {name!r} not run: {why}", name=self.name, why=failure.getErrorMessage())
        self._finish(ExitStatus(None, None))

    def _failed(self, failure):
        self.log.info("command {name!r} failed: {why}", name=self.name, why=failure.getErrorMessage())
        self._finish(ExitStatus(None, None))

    def _finish(self, status):
        if not self.finished:
            self.finished = True
            self.done.callback(status)

    def writeStdin(self, data):
        if self._running is None:
            self._stdin.append(data)
        else:
            self._running.write(data)

    def closeStdin(self):
        if self._running is None:
            self._eof = True
        else:
            self._running.closeStdin()

    def pauseProducing(self):
        self._paused = True
        if self._running is not None:
            self._running.stream.pauseProducing()

    def resumeProducing(self):
        self._paused = False
        if self._running is not None:
            self._running.stream.resumeProducing()

    def stopProducing(self):
        self.cancel()

    def cancel(self):
        if self._running is not None and not self.finished:
            self._running.cancel()


class _RemoteRunner:
    directory = _Names()

    def __init__(self, vm, sinkForUnavailable):
        self.vm = vm
        self._unavailable = sinkForUnavailable

    def start(self, name, sink, timeout=None):
        try:
            session = Session(self.vm.mux)
        except VMUnavailable as e:
            self._unavailable(str(e))
            raise CommandRefused("busy", str(e))
        return RemoteExecution(session, CommandDirectory.checkName(name), sink)


@implementer(IHalfCloseableProtocol)
class LegacyClient(GuestLineProtocol):
    """
    One legacy client of the daemon.
    """

    log = Logger()
    #: A client that vanishes closes its own connection; a slow typist on
    #: nc must not lose a partial line.
    staleLine = float("inf")

    def __init__(self, daemon, vm):
        self.daemon = daemon
        self.vm = vm
        GuestLineProtocol.__init__(self, _RemoteRunner(vm, self._unavailable), daemon.reactor)
        self.handler.onIdle = self._idle
        self._closeCall = None
        self._inputDone = False
        self._gone = False

    def _unavailable(self, message):
        if self.transport is not None:
            self.transport.write(b"prokshy-host: " + message.encode("utf-8", "replace") + b"\n")

    def dataReceived(self, data):
        if self._closeCall is not None and self._closeCall.active():
            self._closeCall.cancel()
        self._closeCall = None
        return GuestLineProtocol.dataReceived(self, data)

    def helloLineReceived(self, line):
        return None

    def _idle(self):
        if self._gone:
            return
        if self._closeCall is None or not self._closeCall.active():
            delay = 0 if self._inputDone else self.daemon.linger
            self._closeCall = self.daemon.reactor.callLater(delay, self.transport.loseConnection)

    def readConnectionLost(self):
        # The client sent everything (e.g. nc at the end of its input):
        # run a bare name now instead of waiting for its argument line.
        self._inputDone = True
        if self._buffer:
            self.lineReceived(self._buffer)
            self._buffer = b""
        self.handler.flushPending()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason=None):
        self._gone = True
        current = self.handler.current
        if current is not None and not current.finished:
            self.log.info("legacy client went away: cancelling {name!r}", name=current.name)
            current.cancel()
        if self._closeCall is not None and self._closeCall.active():
            self._closeCall.cancel()
        GuestLineProtocol.connectionLost(self, reason)
