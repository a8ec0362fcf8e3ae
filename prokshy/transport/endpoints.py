# -*- test-case-name: tests.system.test_transport -*-
"""
The C{vtcon:} client endpoint: connect a protocol to the guest's end of a
virtio-console port (or any serial tty).

C{connect} opens the device and looks at what it got.  A tty (FreeBSD
C{/dev/vtcon/NAME}, isa-serial, a pty) is closed again and reopened through
pyserial in full raw mode (L{prokshy.transport.tty.openSerial}); anything
else (Linux C{/dev/virtio-ports/NAME}) keeps the fd and gets a
L{DeviceTransport}.  The probe is closed before pyserial opens the path, so
an exclusive device (Linux returns C{EBUSY} to a second opener) is never
opened twice at once.

Failures are L{DeviceError}s with a one-line message naming the path:
L{DeviceBusy} when another agent holds the port, L{DeviceMissing} when it
does not exist.
"""

from __future__ import annotations

import errno
import os
import termios
from typing import Optional

from zope.interface import implementer

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectError, NoProtocol

from prokshy.transport._base import DeviceAddress
from prokshy.transport.device import DeviceTransport, openDevice
from prokshy.transport.tty import SerialTransport, openSerial
from prokshy.transport.interfaces import IDeviceEndpoint

__all__ = ["DeviceBusy", "DeviceError", "DeviceMissing", "VtconClientEndpoint"]


class DeviceError(ConnectError):
    """
    The console device could not be opened.

    @ivar path: the device path.
    @ivar errno: the system error number, or L{None}.
    @ivar detail: what went wrong, in words.
    """

    def __init__(self, path: str, errno: Optional[int] = None, detail: str = "") -> None:
        ConnectError.__init__(self, errno, detail)
        self.path = path
        self.errno = errno
        self.detail = detail

    def _errnoName(self) -> str:
        if self.errno is None:
            return ""
        return " (%s)" % (errno.errorcode.get(self.errno, self.errno),)

    def __str__(self) -> str:
        return "cannot open device %s: %s%s" % (self.path, self.detail, self._errnoName())


class DeviceBusy(DeviceError):
    """
    Another process holds the device (C{EBUSY}; C{EMFILE} on older Linux;
    our C{flock} on a tty).
    """

    def __str__(self) -> str:
        return "device %s is busy: another agent holds it%s" % (self.path, self._errnoName())


class DeviceMissing(DeviceError):
    """
    The device does not exist (C{ENOENT}; C{ENODEV} once unplugged).
    """

    def __str__(self) -> str:
        return "device %s does not exist%s" % (self.path, self._errnoName())


_BUSY = frozenset({errno.EBUSY, errno.EMFILE, errno.EAGAIN, errno.EWOULDBLOCK})
_MISSING = frozenset({errno.ENOENT, errno.ENODEV})


def _deviceError(path: str, e: BaseException) -> DeviceError:
    """
    Translate an exception from opening or configuring C{path}.
    """
    code = getattr(e, "errno", None)
    if isinstance(e, termios.error) and e.args and isinstance(e.args[0], int):
        code = e.args[0]
    if code in _BUSY:
        return DeviceBusy(path, code)
    if code in _MISSING:
        return DeviceMissing(path, code)
    if code is not None:
        return DeviceError(path, code, os.strerror(code))
    return DeviceError(path, None, str(e) or type(e).__name__)


@implementer(IDeviceEndpoint)
class VtconClientEndpoint:
    """
    An endpoint for the guest side of a console port.

    C{connect(factory)} is synchronous: the Deferred it returns has already
    fired with the protocol built by C{factory.buildProtocol(DeviceAddress(path))},
    connected to a L{SerialTransport} or a L{DeviceTransport}, or failed with
    a L{DeviceError}.

    @ivar path: the device path.
    @ivar baudrate: the tty speed (ignored for non-tty devices).
    """

    #: test seams: how the probe is opened and how a tty is opened.
    _open = staticmethod(os.open)
    _openSerial = staticmethod(openSerial)

    def __init__(self, reactor, path: str, baudrate: int = 115200) -> None:
        self._reactor = reactor
        self.path = path
        self.baudrate = baudrate

    def __repr__(self) -> str:
        return "<VtconClientEndpoint %s baudrate=%d>" % (self.path, self.baudrate)

    def connect(self, protocolFactory) -> Deferred:
        try:
            return succeed(self._connect(protocolFactory))
        except Exception:
            return fail()

    def _connect(self, factory):
        try:
            fd = openDevice(self.path, self._open)
        except OSError as e:
            raise _deviceError(self.path, e) from e
        try:
            isTTY = os.isatty(fd)
        except BaseException:
            os.close(fd)
            raise
        if isTTY:
            os.close(fd)
            return self._connectTTY(factory)
        return self._connectDevice(fd, factory)

    def _buildProtocol(self, factory, release):
        try:
            protocol = factory.buildProtocol(DeviceAddress(self.path))
        except BaseException:
            release()
            raise
        if protocol is None:
            release()
            raise NoProtocol()
        return protocol

    def _connectTTY(self, factory):
        try:
            opened = self._openSerial(self.path, self.baudrate)
        except (OSError, termios.error) as e:
            raise _deviceError(self.path, e) from e
        protocol = self._buildProtocol(factory, opened.close)
        SerialTransport(protocol, opened, self.path, self._reactor)
        return protocol

    def _connectDevice(self, fd, factory):
        protocol = self._buildProtocol(factory, lambda: os.close(fd))
        DeviceTransport(protocol, fd, self.path, self._reactor)
        return protocol
