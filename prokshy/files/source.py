# -*- test-case-name: tests.unit.test_files_guest -*-
"""
L{FileSource}: a push producer reading a regular file's descriptor into a
stream, the same on both sides (the guest's C{file-get}, the host's
C{--push}).

A regular file is always readable (and epoll cannot watch one), so it is
read as L{twisted.protocols.basic.FileSender} does, from the clock: at most
L{CHUNKS_PER_TURN} chunks of L{CHUNK} bytes per reactor turn, while not
paused.  A resume reads on at once (the stream has room now) rather than a
turn later: that turn was a fifth of a push's throughput.
"""

import os

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from prokshy.files.wire import CHUNK

#: Chunks read per reactor turn at most (1 MiB), so the reactor runs in
#: between.
CHUNKS_PER_TURN = 16


@implementer(IPushProducer)
class FileSource:
    """
    Reads C{fd} into C{write}, then calls C{onEnd()} at its end, or
    C{onError(OSError)}; it does not close C{fd}.

    @param limit: stop (and call C{onEnd}) once more than this many bytes
        were read, or L{None}: a file that keeps growing ends one chunk past
        the size its reader announced.
    """

    def __init__(self, clock, fd, write, onEnd, onError, limit=None):
        self.clock = clock
        self.fd = fd
        self.write = write
        self.onEnd = onEnd
        self.onError = onError
        self.limit = limit
        self.count = 0
        self._paused = False
        self._done = False
        self._pumping = False
        self._call = None

    def start(self):
        """
        Start reading at the next turn of the clock.
        """
        self._schedule()

    def _schedule(self):
        if self._call is None and not self._paused and not self._done:
            self._call = self.clock.callLater(0, self._pump)

    def _pump(self):
        self._call = None
        self._pumping = True
        try:
            for _ in range(CHUNKS_PER_TURN):
                if self._paused or self._done:
                    return
                try:
                    data = os.read(self.fd, CHUNK)
                except OSError as e:
                    self._done = True
                    self.onError(e)
                    return
                if data:
                    self.count += len(data)
                    self.write(data)
                if not data or (self.limit is not None and self.count > self.limit):
                    self._done = True
                    self.onEnd()
                    return
        finally:
            self._pumping = False
        self._schedule()

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        """
        Read on at once (the stream has room now), unless already reading.
        """
        if self._done:
            return
        self._paused = False
        if self._pumping:
            return
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._pump()

    def stopProducing(self):
        self._done = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


__all__ = ["CHUNKS_PER_TURN", "FileSource"]
