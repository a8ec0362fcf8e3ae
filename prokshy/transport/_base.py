# -*- test-case-name: tests.system.test_transport,tests.system.test_transport_device -*-
"""
What the guest's two device transports (L{prokshy.transport.tty} and
L{prokshy.transport.device}) share: their address, dropping unsent writes,
and C{whenLost}.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import attrs
from zope.interface import implementer

from twisted.internet import abstract
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["DeviceAddress", "LossCallbacks", "discardWriteBuffer"]


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
