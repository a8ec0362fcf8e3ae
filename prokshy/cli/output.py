# -*- test-case-name: tests.system.test_cli_pipes -*-
"""
The CLI's stdout and stderr: non-blocking writers with flow control.

An L{OutputPort} writes to a file descriptor from the reactor without ever
blocking it: what the descriptor cannot take yet is buffered, and the
producers feeding the port (the exec streams, or the socket in line mode)
are paused while more than L{OutputPort.bufferSize} bytes wait.  A paused
stream grants no credit, so a slow reader (C{| less}, a stopped pipe) holds
the remote command back, while pings and acknowledgements keep flowing.

When the reader goes away (C{| head -c 10}: a write fails with C{EPIPE},
or the pipe's read end is seen to close while nothing is being written),
the port is I{lost}: its C{whenLost} callbacks run once with the error.
The CLI then cancels the remote commands and exits with L{EXIT_PIPE}, the
status a shell shows for C{cat} killed by SIGPIPE.

A port puts its descriptor in non-blocking mode and puts the original flags
back when it is closed (and at interpreter exit): a terminal shares one
open file description between stdin, stdout and stderr, and the shell must
not be left with a non-blocking terminal.
"""

import atexit
import errno
import fcntl
import os
import stat

from twisted.internet import abstract, main as _main
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

#: The exit status after the reader of stdout went away: 128 + SIGPIPE,
#: what a shell reports for C{cat} in the same place.
EXIT_PIPE = 141


def isClosedPipe(error):
    """
    Whether C{error} (from L{OutputPort.whenLost}) means the reader went
    away, as opposed to a real write error such as C{ENOSPC}.
    """
    return not isinstance(error, OSError) or error.errno in (errno.EPIPE, errno.ECONNRESET)


class IOutput(Interface):
    """
    Where the CLI writes a stream of bytes (stdout, stderr, a C{--json}
    collector): never blocking, never raising, with flow control for the
    producers that feed it.
    """

    name = Attribute("C{'stdout'} or C{'stderr'}, for messages.")
    lost = Attribute("Whether the output stopped taking data (its reader went away, a write failed).")
    error = Attribute("Once lost: why (an OSError, or a ConnectionDone when the reader closed).")
    bytesWritten = Attribute("Bytes handed to write (not necessarily written yet).")

    def write(data):
        """
        Queue C{data}; ignored once lost.
        """

    def attach(gate):
        """
        Let a L{FlowGate} pause its producer while this output is full.
        """

    def detach(gate):
        """
        Forget a gate given to L{attach}.
        """

    def whenLost(callback):
        """
        Call C{callback(error)} once if the output stops taking data.
        """

    def close():
        """
        Write what is buffered; a Deferred firing once done.
        """

    def abort():
        """
        Drop what is buffered.
        """

    def restore():
        """
        Give the underlying descriptor its original flags back.
        """


class _FDWriter(abstract.FileDescriptor):
    """
    A non-blocking writer for one descriptor.  On a write-only pipe it also
    watches for readability, which on a pipe means that the reader closed
    its end (the same trick as L{twisted.internet.process.ProcessWriter}).
    """

    connected = True

    def __init__(self, reactor, fd, port):
        abstract.FileDescriptor.__init__(self, reactor)
        self.fd = fd
        self.port = port
        self.watchClose = False
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            try:
                os.read(fd, 0)
            except OSError:
                # a write-only pipe end
                self.watchClose = True
        if self.watchClose:
            self.startReading()

    def fileno(self):
        return self.fd

    def logPrefix(self):
        return self.port.name

    def write(self, data):
        self.stopReading()
        abstract.FileDescriptor.write(self, data)

    def writeSomeData(self, data):
        try:
            n = os.write(self.fd, data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as e:
            return e
        if n == len(data) and self.watchClose:
            self.startReading()
        return n

    def doRead(self):
        if self.watchClose:
            return _main.CONNECTION_LOST
        self.stopReading()
        return None

    def connectionLost(self, reason):
        abstract.FileDescriptor.connectionLost(self, reason)
        self.port._writerLost(reason)


class FlowGate:
    """
    Pauses one producer while any of the outputs it feeds is full.
    """

    def __init__(self, producer):
        self.producer = producer
        self._blockers = set()
        self._ports = []
        self.active = True

    def block(self, who):
        if not self.active:
            return
        first = not self._blockers
        self._blockers.add(who)
        if first:
            self.producer.pauseProducing()

    def unblock(self, who):
        if not self.active or who not in self._blockers:
            return
        self._blockers.discard(who)
        if not self._blockers:
            self.producer.resumeProducing()

    @property
    def blocked(self):
        return bool(self._blockers)

    def attach(self, *ports):
        for port in ports:
            if port is not None:
                self._ports.append(port)
                port.attach(self)
        return self

    def close(self):
        """
        The producer is done: forget it (without resuming it).
        """
        self.active = False
        self._blockers.clear()
        ports, self._ports = self._ports, []
        for port in ports:
            port.detach(self)



class NonBlocking:
    """
    Puts a descriptor in non-blocking mode, and gives it its original flags
    back on L{restore} (also at exit: a shell must not inherit a
    non-blocking terminal).
    """

    def __init__(self, fd):
        self.fd = fd
        self._flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, self._flags | os.O_NONBLOCK)
        atexit.register(self.restore)

    def restore(self):
        flags, self._flags = self._flags, None
        if flags is not None:
            try:
                fcntl.fcntl(self.fd, fcntl.F_SETFL, flags)
            except OSError:
                pass


@implementer(IPushProducer, IOutput)
class OutputPort:
    """
    Non-blocking output to a file descriptor.

    @ivar name: C{"stdout"} or C{"stderr"}, for messages.
    @ivar error: after the port was lost, the reason (an L{OSError}, or a
        L{ConnectionDone}/L{ConnectionLost} when the reader closed).
    @ivar bytesWritten: bytes handed to L{write} (not necessarily written
        yet).
    """

    bufferSize = 65536

    def __init__(self, reactor, fd, name):
        self.reactor = reactor
        self.fd = fd
        self.name = name
        self.error = None
        self.lost = False
        self.paused = False
        self.bytesWritten = 0
        self._gates = []
        self._lostCallbacks = []
        self._closing = None
        self.closed = False
        self._mode = NonBlocking(fd)
        self._writer = _FDWriter(reactor, fd, self)
        self._writer.bufferSize = self.bufferSize
        self._writer.registerProducer(self, True)

    # -- the file-like side ----------------------------------------------

    def write(self, data):
        """
        Queue C{data}; never blocks, never raises.  Ignored once lost.
        """
        if self.lost or not data:
            return
        self.bytesWritten += len(data)
        self._writer.write(bytes(data))

    def flush(self):
        pass

    # -- flow control -------------------------------------------------------

    def attach(self, gate):
        self._gates.append(gate)
        if self.paused:
            gate.block(self)

    def detach(self, gate):
        if gate in self._gates:
            self._gates.remove(gate)

    def pauseProducing(self):
        self.paused = True
        for gate in list(self._gates):
            gate.block(self)

    def resumeProducing(self):
        self.paused = False
        for gate in list(self._gates):
            if self.paused:
                # Resuming one producer filled the buffer again.
                break
            gate.unblock(self)

    def stopProducing(self):
        pass

    # -- the end ------------------------------------------------------------

    def whenLost(self, callback):
        """
        Call C{callback(error)} once if the descriptor stops taking data
        (its reader went away, or a write failed).
        """
        if self.lost:
            callback(self.error)
        else:
            self._lostCallbacks.append(callback)

    def _writerLost(self, reason):
        if self._closing is not None and reason.check(ConnectionDone):
            # our own close: everything was written
            self._finishClose()
            return
        self.lost = True
        self.paused = False
        self.error = reason.value
        self.restore()
        gates, self._gates = self._gates, []
        for gate in gates:
            gate.close()
        callbacks, self._lostCallbacks = self._lostCallbacks, []
        for callback in callbacks:
            callback(self.error)
        if self._closing is not None:
            self._finishClose()

    def close(self):
        """
        Write what is buffered, then give the descriptor its flags back.

        @return: a Deferred firing once done (or once the port is lost).
        """
        if self.lost or self.closed:
            return succeed(None)
        if self._closing is None:
            self._closing = Deferred()
            self._writer.unregisterProducer()
            self._writer.loseConnection()
        return self._closing

    def abort(self):
        """
        Drop whatever is buffered and give the descriptor its flags back.
        """
        if not (self.lost or self.closed) and self._closing is None:
            self._closing = Deferred()
            self._writer.unregisterProducer()
            self._writer.stopReading()
            self._writer.stopWriting()
            self._writer.connectionLost(Failure(ConnectionDone("output aborted")))

    def _finishClose(self):
        self.closed = True
        self.restore()
        d = self._closing
        if not d.called:
            d.callback(None)

    def restore(self):
        """
        Give the descriptor its original flags (blocking mode) back.
        """
        self._mode.restore()


@implementer(IOutput)
class FileOutput:
    """
    The same interface over a file-like object written synchronously (for
    callers that pass their own output).  A write error loses the port.
    """

    def __init__(self, fileobj, name):
        self.file = fileobj
        self.name = name
        self.error = None
        self.lost = False
        self.paused = False
        self.bytesWritten = 0
        self._lostCallbacks = []

    def write(self, data):
        if self.lost or not data:
            return
        self.bytesWritten += len(data)
        try:
            self.file.write(data)
            flush = getattr(self.file, "flush", None)
            if flush is not None:
                flush()
        except OSError as e:
            self.lost = True
            self.error = e
            callbacks, self._lostCallbacks = self._lostCallbacks, []
            for callback in callbacks:
                callback(e)

    def flush(self):
        pass

    def attach(self, gate):
        pass

    def detach(self, gate):
        pass

    def whenLost(self, callback):
        if self.lost:
            callback(self.error)
        else:
            self._lostCallbacks.append(callback)

    def close(self):
        return succeed(None)

    def abort(self):
        pass

    def restore(self):
        pass


@implementer(IOutput)
class Collector:
    """
    An output that keeps everything (for C{--json}); it is never full and
    never lost.
    """

    name = "collector"
    lost = False
    error = None

    def __init__(self):
        self.chunks = []
        self.bytesWritten = 0

    def write(self, data):
        self.bytesWritten += len(data)
        self.chunks.append(bytes(data))

    def flush(self):
        pass

    def getvalue(self):
        return b"".join(self.chunks)

    def attach(self, gate):
        pass

    def detach(self, gate):
        pass

    def whenLost(self, callback):
        pass

    def close(self):
        return succeed(None)

    def abort(self):
        pass

    def restore(self):
        pass


def asOutput(target, name="output"):
    """
    C{target} if it is an L{IOutput}, else a L{FileOutput} over it (a
    binary file-like object written synchronously).
    """
    if IOutput.providedBy(target):
        return target
    return FileOutput(target, name)


class _FD:
    """
    A file-like object over a descriptor that never blocks in the
    C{EAGAIN} sense (a regular file, C{/dev/null}).
    """

    def __init__(self, fd):
        self.fd = fd

    def write(self, data):
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]


def openOutput(reactor, target, name):
    """
    An output for C{target}: a file descriptor number, or a file-like
    object (a L{FileOutput}).  A pipe, a socket or a terminal gets an
    L{OutputPort}; a regular file or another descriptor that cannot be
    polled (C{/dev/null}), where a write never waits for a reader, is
    written directly.

    @raise OSError: if the descriptor is not usable (closed).
    """
    if isinstance(target, int):
        mode = os.fstat(target).st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(target):
            return OutputPort(reactor, target, name)
        return FileOutput(_FD(target), name)
    return FileOutput(target, name)


__all__ = [
    "EXIT_PIPE",
    "Collector",
    "FileOutput",
    "FlowGate",
    "IOutput",
    "OutputPort",
    "asOutput",
    "isClosedPipe",
    "openOutput",
]
