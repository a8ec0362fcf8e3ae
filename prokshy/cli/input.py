# -*- test-case-name: tests.system.test_cli_pipes,tests.test_cli_split -*-
"""
What the remote commands read: the whole of C{--from-string} or
C{--from-file}, written to each command once it has started, or the CLI's
stdin (C{--stdin}), read once, without blocking the reactor, and streamed
to every command; the reading pauses while any of them has no room (no
credit) for more.
"""

import os
import stat

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from prokshy.cli.output import FlowGate, NonBlocking


@implementer(IPushProducer)
class StdinSource:
    """
    Streams a file descriptor (the CLI's stdin) to a consumer's C{write},
    then calls C{onEnd}.  Pipes and terminals are read, without blocking,
    when readable; regular files, which are always readable (and which
    epoll cannot watch), a chunk per reactor turn, as
    L{twisted.protocols.basic.FileSender} does.  A descriptor made
    non-blocking gets its flags back at the end (and at exit).
    """

    chunk = 65536

    def __init__(self, reactor, fd, write, onEnd):
        self.reactor = reactor
        self.fd = fd
        self.write = write
        self.onEnd = onEnd
        self._paused = False
        self._done = False
        self._regular = stat.S_ISREG(os.fstat(fd).st_mode)
        self._call = None
        self._mode = NonBlocking(fd) if not self._regular else None
        self._reader = _FDReader(self) if not self._regular else None

    def start(self):
        self.resumeProducing()

    def _readOnce(self):
        try:
            data = os.read(self.fd, self.chunk)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self._finish()
            return False
        self.write(data)
        return True

    def _tick(self):
        self._call = None
        if self._paused or self._done:
            return
        if self._readOnce() and not self._paused and not self._done:
            self._call = self.reactor.callLater(0, self._tick)

    def _finish(self):
        if not self._done:
            self._done = True
            if self._reader is not None:
                self.reactor.removeReader(self._reader)
            self._restoreMode()
            self.onEnd()

    def _restoreMode(self):
        if self._mode is not None:
            self._mode.restore()

    def pauseProducing(self):
        self._paused = True
        if self._reader is not None:
            self.reactor.removeReader(self._reader)

    def resumeProducing(self):
        if self._done:
            return
        self._paused = False
        if self._reader is not None:
            self.reactor.addReader(self._reader)
        elif self._call is None:
            self._call = self.reactor.callLater(0, self._tick)

    def stopProducing(self):
        self._done = True
        if self._reader is not None:
            self.reactor.removeReader(self._reader)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._restoreMode()


class _FDReader:
    def __init__(self, source):
        self.source = source

    def fileno(self):
        return self.source.fd

    def doRead(self):
        self.source._readOnce()

    def logPrefix(self):
        return "stdin"

    def connectionLost(self, reason):
        self.source._finish()


@implementer(IPushProducer)
class _StdinHandle:
    """
    What one running exec sees as its stdin producer in a L{StdinFanout}.
    """

    def __init__(self, fanout, running):
        self.fanout = fanout
        self.running = running

    def pauseProducing(self):
        self.fanout.gate.block(self.running)

    def resumeProducing(self):
        self.fanout.gate.unblock(self.running)

    def stopProducing(self):
        self.fanout._gone(self.running)


class StdinFanout:
    """
    Streams the CLI's stdin to one or more running execs, read once; the
    reading pauses while any of them has no room (credit) for more.
    """

    def __init__(self, reactor, fd, runnings, progress=None):
        self.targets = list(runnings)
        # The upload's progress line (L{prokshy.cli.progressrun}), or None.
        self.progress = progress
        self.source = StdinSource(reactor, fd, self._write, self._end)
        self.gate = FlowGate(self.source)
        for running in self.targets:
            running.registerProducer(_StdinHandle(self, running), True)

    def start(self):
        if self.targets:
            self.source.start()
        else:
            self.source.stopProducing()

    def _write(self, data):
        if self.progress is not None:
            self.progress.advance(len(data))
        for running in list(self.targets):
            running.write(data)

    def _finishProgress(self):
        if self.progress is not None:
            self.progress.finish()

    def _end(self):
        self._finishProgress()
        targets, self.targets = self.targets, []
        for running in targets:
            running.unregisterProducer()
            running.closeStdin()

    def _gone(self, running):
        if running in self.targets:
            self.targets.remove(running)
            self.gate.unblock(running)
            if not self.targets:
                self.source.stopProducing()

    def stop(self):
        self._finishProgress()
        self.targets = []
        self.gate.close()
        self.source.stopProducing()


class CommandInput:
    """
    The input of one CLI run, for the commands it starts on one or more
    VMs.

    With C{--stdin} (L{streamed}), stdin is read once every command has
    started or been refused (L{allStarted}); otherwise each command gets the
    whole of C{--from-string} or C{--from-file} and the end of its input as
    soon as it has started (L{started}).
    """

    def __init__(self, reactor, options, fd=0):
        self.reactor = reactor
        self.streamed = bool(options.stdin)
        self.data = options.fullData
        self.fd = fd
        self._fanout = None
        #: L{prokshy.cli.progressrun.ExecProgress} of the run, or None.
        self.progress = None

    def started(self, running):
        """
        C{running} (a L{prokshy.host.client.RunningExec}) has started.
        """
        if not self.streamed:
            if self.data:
                running.write(self.data)
            running.closeStdin()

    def allStarted(self, runnings):
        """
        Every command has started (C{runnings}) or been refused.
        """
        if self.streamed and self._fanout is None:
            upload = self.progress.startUpload(self.fd) if self.progress is not None else None
            self._fanout = StdinFanout(self.reactor, self.fd, runnings, upload)
            self._fanout.start()

    def stop(self):
        """
        Stop reading stdin (the run is over, or was cancelled).
        """
        if self._fanout is not None:
            self._fanout.stop()


__all__ = ["CommandInput", "StdinFanout", "StdinSource"]
