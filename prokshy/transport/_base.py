# -*- test-case-name: tests.system.test_transport,tests.system.test_transport_device -*-
"""
What the guest's two device transports (L{prokshy.transport.tty} and
L{prokshy.transport.device}) share: their address, dropping unsent writes,
and C{whenLost}.
"""

from __future__ import annotations

import os
from typing import Callable, List, Optional

import attrs
from zope.interface import implementer

from twisted.internet import abstract
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = [
    "BATCH_LIMIT",
    "DeviceAddress",
    "EAGER_LIMIT",
    "EagerWrites",
    "LossCallbacks",
    "READ_SIZE",
    "discardWriteBuffer",
    "readBatch",
]

#: The most bytes one C{read()} asks for.  A virtio port gives at most 4 KiB
#: and a tty about as much per read whatever is asked, and Python allocates
#: the whole size for each call, so asking for much more only costs.
READ_SIZE = 16 * 1024

#: The most bytes gathered from consecutive reads before the protocol sees
#: them (one C{dataReceived}): enough that its per-chunk work (decoding, an
#: acknowledgement, a write to a command's stdin) is paid once per batch,
#: not once per 4 KiB; small enough to keep latency and memory low.
BATCH_LIMIT = 64 * 1024


@implementer(IAddress)
@attrs.frozen
class DeviceAddress:
    """
    The address of a console device: its path.  Both C{getHost} and
    C{getPeer} of the device transports return one.
    """

    path: str


def discardWriteBuffer(transport: abstract.FileDescriptor) -> int:
    """
    Drop what C{transport} (an L{abstract.FileDescriptor}) has buffered for
    writing and not written yet, and resume a producer that the full buffer
    had paused.  A frame cut short this way is dropped by the receiving
    decoder at the next LF.

    @return: how many bytes were dropped.
    """
    dropped = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    transport.dataBuffer = b""
    transport.offset = 0
    transport._tempDataBuffer = []
    transport._tempDataLen = 0
    producer = transport.producer
    if dropped and producer is not None and transport.producerPaused and transport.connected:
        transport.producerPaused = False
        producer.resumeProducing()
    return dropped


def readBatch(fd: int, read: Callable[[int, int], bytes] = os.read, size: int = READ_SIZE,
              limit: int = BATCH_LIMIT):
    """
    Read from the non-blocking C{fd} until it has nothing more for now
    (C{EAGAIN}), it ends, or C{limit} bytes are gathered.

    A device that hands over 4 KiB per read (a tty, a virtio port) would
    otherwise cost the reader its whole per-chunk work for every 4 KiB;
    gathering what is already there costs one more C{read()} per batch.

    @return: C{(data, end)}: the bytes read (possibly empty), and C{None}
        while the fd may have more later, C{b""} if the last read returned
        0 bytes, or the C{OSError} that ended the batch (other than
        C{EAGAIN}/C{EINTR}).  Bytes read before an end are in C{data}.
    """
    chunks = []
    total = 0
    end = None
    while total < limit:
        try:
            data = read(fd, size)
        except InterruptedError:
            continue
        except BlockingIOError:
            break
        except OSError as e:
            end = e
            break
        if not data:
            end = b""
            break
        chunks.append(data)
        total += len(data)
    if len(chunks) == 1:
        return chunks[0], end
    return b"".join(chunks), end


#: Writes up to this size go to the device at once when nothing is waiting
#: to be written (L{EagerWrites}); larger ones wait for the reactor's write
#: pass, which joins a turn's writes into one system call.
EAGER_LIMIT = 2048


class EagerWrites:
    """
    C{write} for the device transports (L{abstract.FileDescriptor}s): a
    small write with nothing buffered before it goes to the device at once,
    rather than at the reactor's next write pass.

    The writes that matter for latency are small and come alone: an
    ACCEPT, an EXIT and CLOSE, an acknowledgement, a line-mode reply.
    Waiting for the write pass puts everything else the reactor does in
    that turn in front of them: an ACCEPT queued before a spawn left only
    after the spawn.  Bulk data still goes through the buffer, so a turn's
    frames are still written by one system call.

    The order of bytes is kept: nothing is written at once while anything
    is buffered.  A subclass says, with L{_mayWriteNow}, whether the device
    may be written at all now.
    """

    def _mayWriteNow(self) -> bool:
        return True

    def write(self, data: bytes) -> None:
        if (
            0 < len(data) <= EAGER_LIMIT
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnected
            and not self._tempDataLen
            and self.offset >= len(self.dataBuffer)
            and self._mayWriteNow()
        ):
            written = self.writeSomeData(data)
            if isinstance(written, int) and written > 0:
                if written == len(data):
                    return
                data = data[written:]
            # Nothing (EAGAIN) or an error: the write pass deals with it.
        abstract.FileDescriptor.write(self, data)


class LossCallbacks:
    """
    C{whenLost} for the device transports (L{IDeviceTransport}).
    """

    _log = Logger()

    def __init__(self) -> None:
        self._lossCallbacks: List[Callable[[Failure], object]] = []
        self._lossReason: Optional[Failure] = None

    def whenLost(self, callback: Callable[[Failure], object]) -> None:
        """
        Call C{callback(reason)} once the connection is lost, after the
        protocol's C{connectionLost}; at once if it is lost already.
        """
        if self._lossReason is not None:
            callback(self._lossReason)
        else:
            self._lossCallbacks.append(callback)

    def _runLossCallbacks(self, reason: Failure) -> None:
        self._lossReason = reason
        callbacks, self._lossCallbacks = self._lossCallbacks, []
        for callback in callbacks:
            try:
                callback(reason)
            except Exception:
                self._log.failure("Error in a whenLost callback of {transport}", transport=self)
