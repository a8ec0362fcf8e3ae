# -*- test-case-name: tests.system.test_host -*-
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

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import Logger
from zope.interface import implementer

from prokshy.lines.protocol import GuestLineProtocol
from prokshy.execs.interfaces import ICommandNames, ICommandRunner, IExecution
from prokshy.execs.names import checkName
from prokshy.execs.status import ExitStatus
from prokshy.host.client import RunningExec, _ExecClient
from prokshy.streams.stream import StreamRefused


@implementer(ICommandNames)
class _Names:
    """
    Name checks only: whether the command exists is the guest's business.
    """

    resolve = staticmethod(checkName)


@implementer(IExecution)
class RemoteExecution:
    """
    An L{Execution}-like handle on a command run through an exec stream,
    opened through the VM's L{prokshy.host.queue.OpenQueue} (so it may wait
    there for room on a busy guest).

    @param unavailable: called with a one-line reason when the daemon
        cannot run the command (the VM is down or busy); the guest's own
        refusals (no such command, ...) are only logged, as the original
        agent ignores such lines.
    """

    log = Logger()
    #: Refusal codes the client is told about, with a line.
    _told = ("busy", "vm-unavailable", "too-big")

    def __init__(self, vm, client, name, sink, unavailable):
        self.name = name
        self.done = Deferred()
        self.finished = False
        self._vm = vm
        self._sink = sink
        self._unavailable = unavailable
        self._running = None
        self._stdin = []
        self._eof = False
        self._paused = False
        self._cancelled = False
        exec_ = self._exec = _ExecClient(sink.stdoutReceived, sink.stderrReceived)
        self._opening = vm.queue.open(client, "exec", {"name": name}, exec_)
        self._opening.addCallbacks(lambda stream: self._started(RunningExec(stream, exec_)), self._refused)

    def _started(self, running):
        self._opening = None
        self._running = running
        if self._paused:
            running.stream.pauseProducing()
        for data in self._stdin:
            running.write(data)
        self._stdin = []
        if self._eof:
            running.closeStdin()
        running.result.addCallbacks(
            self._finish,
            self._failed,
        )

    def _refused(self, failure):
        self._opening = None
        if failure.check(CancelledError):
            self._finish(ExitStatus(None, None))
            return
        self.log.info("command {name!r} not run: {why}", name=self.name, why=failure.getErrorMessage())
        if failure.check(StreamRefused) and failure.value.code in self._told:
            e = failure.value
            if e.code == "busy":
                line = "vm %s busy" % (self._vm.name,)
            elif e.code == "vm-unavailable" and not e.message.startswith("vm "):
                line = "vm %s: %s" % (self._vm.name, e.message)
            else:
                line = e.message
            self._unavailable(line)
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
        if self.finished:
            return
        if self._running is not None:
            self._running.cancel()
        elif self._opening is not None:
            # Still waiting for room on the VM: withdraw it (if the guest
            # accepts it meanwhile, the stream is reset at once).
            self._exec.result.addErrback(lambda f: None)
            self._opening.cancel()


@implementer(ICommandRunner)
class _RemoteRunner:
    directory = _Names()

    def __init__(self, vm, client, unavailable):
        self.vm = vm
        self.client = client
        self._unavailable = unavailable

    def start(self, name, sink, timeout=None, line=False):
        # The guest's line-protocol limits (line=True) are not asked for: the
        # daemon cancels the command when its client goes away.
        return RemoteExecution(
            self.vm, self.client, checkName(name), sink, self._unavailable
        )


@implementer(IHalfCloseableProtocol)
class LegacyClient(GuestLineProtocol):
    """
    One legacy client of the daemon.
    """

    log = Logger()
    #: A client that vanishes closes its own connection; a slow typist on
    #: nc must not lose a partial line.
    staleLine = float("inf")
    #: Called with no arguments when the first line arrives (the daemon's
    #: handshake timeout ends there).
    onRequest = None

    def __init__(self, daemon, vm):
        self.daemon = daemon
        self.vm = vm
        GuestLineProtocol.__init__(self, _RemoteRunner(vm, self, self._unavailable), daemon.reactor)
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

    def lineReceived(self, line):
        onRequest, self.onRequest = self.onRequest, None
        if onRequest is not None:
            onRequest()
        return GuestLineProtocol.lineReceived(self, line)

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
