# -*- test-case-name: tests.test_vmsim -*-
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
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios
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
        self._slave = slave
        self.path = os.ttyname(slave)
        self.master = PtyMaster(reactor, master, dataReceived)
        self.master.bufferSize = bufferSize
        self.master.startReading()
        self._consumedMark = 0

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
        return inKernel + self.master.pending

    def close(self) -> None:
        """
        Close the master and the slave.
        """
        self.master.close()
        if self._slave >= 0:
            os.close(self._slave)
            self._slave = -1
