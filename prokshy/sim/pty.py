# -*- test-case-name: tests.system.test_vmsim -*-
"""
The guest's side of the simulated console port: a pty.

The guest agent opens the pty's slave (through the simulator's device link)
as it would open C{/dev/vtcon/prokshy}; the simulator reads and writes the
master (L{PtyMaster}) and keeps the slave open too, so the pty never hangs
up when the agent closes and reopens the device.  The pty is left cooked
(echo, ONLCR, ...), as FreeBSD leaves a vtcon tty, so the agent has to set
raw mode itself.

L{GuestPty.unread} estimates the host bytes the guest has not read yet (what
bhyve's ring drops against): the bytes the master still buffers plus those
in the pty.  The latter is C{FIONREAD} on the slave while the line
discipline's buffer is not full; while it is full, the kernel holds more
that C{FIONREAD} does not show, so everything written to the pty since
C{FIONREAD} last showed a buffer that was not full counts as unread.  In
canonical (cooked) mode C{FIONREAD} counts complete lines only, so the
estimate is rougher there; the kernel then discards overlong lines itself.

That upper bound only stays close to the truth if little is written while
the buffer is full: otherwise it grows with every byte the guest reads and
the kernel refills, and the simulator drops bytes that the real queue would
have held (a host that kept 12 KiB in flight was seen as 22 KiB).  So host
bytes meant for the guest (L{GuestPty.feed}) wait in the simulator and go
to the pty only while the line discipline's buffer is not full, at most
L{FEED_AHEAD} bytes beyond what it has room for; they are counted as
unread all along.  They move on whenever the guest writes, more host bytes
arrive, or every L{FEED_POLL} seconds while some wait.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios
from collections import deque
from typing import Any, Callable, Set

from twisted.internet import abstract, fdesc, main as _main
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["GuestPty", "PauseFor", "PtyMaster", "READ_SIZE", "unreadInput"]

#: Bytes read from the pty master at a time.
READ_SIZE = 65536

#: Linux's N_TTY buffer is 4096 bytes; at or above this many unread bytes it
#: may be full, and then the kernel holds more input that FIONREAD does not count.
_TTY_FULL_MARK = 3072

#: Linux's N_TTY buffer holds this many bytes at most.
_TTY_BUFFER = 4095

#: How far beyond the line discipline's free room L{GuestPty.feed} fills the
#: kernel (its flip buffers, which FIONREAD does not show).
FEED_AHEAD = 2048

#: While fed bytes wait, how often to look whether the guest has read.
FEED_POLL = 0.001

_log = Logger()


def unreadInput(fd: int) -> int:
    """
    @return: C{FIONREAD} on the tty C{fd}: the input bytes a read would see.
    """
    raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])


class PtyMaster(abstract.FileDescriptor):
    """
    The reactor's reader and writer for the pty master: the simulator's end
    of the guest device.

    Reading is paused while any reason given to L{pauseFor} stands.

    @ivar bytesWritten: bytes the kernel has accepted from L{write}.
    """

    def __init__(self, reactor: Any, fd: int, dataReceived: Callable[[bytes], None]) -> None:
        abstract.FileDescriptor.__init__(self, reactor)
        self._fd = fd
        self._dataReceived = dataReceived
        self._pauses: Set[str] = set()
        self._handed = 0
        self.bytesWritten = 0
        self.connected = 1

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "PtyMaster"

    @property
    def pending(self) -> int:
        """
        Bytes given to L{write} that the kernel has not accepted yet.
        """
        return self._handed - self.bytesWritten

    def write(self, data: bytes) -> None:
        if self.connected:
            self._handed += len(data)
        abstract.FileDescriptor.write(self, data)

    def writeSomeData(self, data: bytes) -> Any:
        result = fdesc.writeToFD(self._fd, data)
        if isinstance(result, int):
            self.bytesWritten += result
        return result

    def doRead(self) -> Any:
        # EIO (the reactor may see it first as a hangup) means that no slave
        # is open. The simulator holds one, so that is fatal.
        return fdesc.readFromFD(self._fd, self._dataReceived)

    def pauseFor(self, reason: str) -> None:
        """
        Stop reading until L{resumeFor} is called with C{reason}.
        """
        self._pauses.add(reason)
        self.stopReading()

    def resumeFor(self, reason: str) -> None:
        """
        Withdraw C{reason}; read again once no reason is left.
        """
        self._pauses.discard(reason)
        if not self._pauses and self.connected:
            self.startReading()

    def connectionLost(self, reason: Failure) -> None:
        if self.connected:
            _log.error("pty master lost: {why}", why=reason.getErrorMessage())
        self.close()

    def close(self) -> None:
        """
        Stop reading and writing and close the master fd, without touching
        any registered producer.
        """
        self.producer = None
        abstract.FileDescriptor.connectionLost(self, Failure(_main.CONNECTION_DONE))
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@implementer(IPushProducer)
class PauseFor:
    """
    A push producer that pauses the pty master's reading for one reason: a
    host transport that cannot keep up stalls guest output.
    """

    def __init__(self, pty: PtyMaster, reason: str) -> None:
        self._pty = pty
        self._reason = reason

    def pauseProducing(self) -> None:
        self._pty.pauseFor(self._reason)

    def resumeProducing(self) -> None:
        self._pty.resumeFor(self._reason)

    def stopProducing(self) -> None:
        self._pty.resumeFor(self._reason)


class GuestPty:
    """
    The pty: its master, read by the reactor, and the slave the simulator
    holds open.

    @ivar master: the L{PtyMaster}.
    @ivar path: the slave's path (what the device link points at).
    """

    def __init__(self, reactor: Any, dataReceived: Callable[[bytes], None], bufferSize: int) -> None:
        """
        Open a pty and start reading its master.

        @param dataReceived: called with what the guest writes.
        @param bufferSize: the master's write buffer (past it, a registered
            producer is paused).
        """
        master, slave = os.openpty()
        os.set_blocking(master, False)
        self._reactor = reactor
        self._slave = slave
        self._dataReceived = dataReceived
        self.path = os.ttyname(slave)
        self.master = PtyMaster(reactor, master, self._guestWrote)
        self.master.bufferSize = bufferSize
        self.master.startReading()
        self._consumedMark = 0
        self._fed = deque()
        self._fedBytes = 0
        self._feedCall = None

    def _guestWrote(self, data: bytes) -> None:
        self._dataReceived(data)
        if self._fedBytes:
            # The guest is running: it may have read too.
            self._feed()

    def feed(self, data: bytes) -> None:
        """
        Hand host bytes to the guest, paced so that L{unread} stays close
        to the truth (see the module docstring).
        """
        if data:
            self._fed.append(data)
            self._fedBytes += len(data)
            self._feed()

    def _feed(self) -> None:
        if self._feedCall is not None and self._feedCall.active():
            self._feedCall.cancel()
        self._feedCall = None
        if self._slave < 0:
            return
        if self._fed and self.master.pending == 0:
            inq = unreadInput(self._slave)
            if inq < _TTY_BUFFER:
                # Not full: the kernel holds nothing FIONREAD does not show.
                self._consumedMark = self.master.bytesWritten - inq
                room = _TTY_BUFFER - inq + FEED_AHEAD
                pieces = []
                while self._fed and room > 0:
                    piece = self._fed.popleft()
                    if len(piece) > room:
                        self._fed.appendleft(piece[room:])
                        piece = piece[:room]
                    pieces.append(piece)
                    room -= len(piece)
                data = b"".join(pieces)
                self._fedBytes -= len(data)
                self.master.write(data)
        if self._fed:
            self._feedCall = self._reactor.callLater(FEED_POLL, self._feed)

    def unread(self) -> int:
        """
        Estimate the host bytes the guest has not read yet (see the module
        docstring).
        """
        inq = unreadInput(self._slave)
        written = self.master.bytesWritten
        if inq < _TTY_FULL_MARK:
            self._consumedMark = written - inq
            inKernel = inq
        else:
            inKernel = max(inq, written - self._consumedMark)
        return inKernel + self.master.pending + self._fedBytes

    def close(self) -> None:
        """
        Close the master and the slave.
        """
        if self._feedCall is not None and self._feedCall.active():
            self._feedCall.cancel()
        self._feedCall = None
        self._fed.clear()
        self._fedBytes = 0
        self.master.close()
        if self._slave >= 0:
            os.close(self._slave)
            self._slave = -1
