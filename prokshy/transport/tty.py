# -*- test-case-name: tests.system.test_transport -*-
"""
The guest's tty transport: a B{tty} (FreeBSD C{/dev/vtcon/NAME}, an
isa-serial port, a pty in the tests) goes through pyserial and Twisted's
L{SerialPort}, but pyserial's own configuration is not trusted to be raw:
L{RawSerial} enforces the full C{cfmakeraw} set, the speed, C{VMIN=1
VTIME=0} and an input flush every time the port is opened, because FreeBSD
resets the termios of a vtcon tty to cooked on each first open.
L{SerialTransport} wraps an already opened L{RawSerial}, so that opening
errors surface before a protocol is built, and provides
L{IDeviceTransport}.
"""

from __future__ import annotations

import termios
from typing import Any, Optional

import serial
from serial import EIGHTBITS, PARITY_NONE, STOPBITS_ONE
from zope.interface import implementer

from twisted.internet import main
from twisted.internet.error import ConnectionAborted
from twisted.internet.serialport import SerialPort
from twisted.python.failure import Failure

from prokshy.transport._base import DeviceAddress, EagerWrites, LossCallbacks, discardWriteBuffer, readBatch
from prokshy.transport.interfaces import IDeviceTransport

__all__ = ["RawSerial", "SerialTransport", "makeRaw", "openSerial"]


def _flags(*names: str) -> int:
    value = 0
    for name in names:
        value |= getattr(termios, name, 0)
    return value


# cfmakeraw(3), plus the bits pyserial leaves alone (BRKINT, IMAXBEL, IUTF8,
# TOSTOP, ...) and the ones only some platforms have.
_IFLAG_OFF = _flags(
    "IGNBRK", "BRKINT", "PARMRK", "ISTRIP", "INLCR", "IGNCR", "ICRNL",
    "IXON", "IXOFF", "IXANY", "INPCK", "IMAXBEL", "IUCLC", "IUTF8",
)  # fmt: skip
_OFLAG_OFF = _flags("OPOST", "ONLCR", "OCRNL", "ONOCR", "ONLRET", "OLCUC")
_LFLAG_OFF = _flags(
    "ECHO", "ECHOE", "ECHOK", "ECHONL", "ECHOCTL", "ECHOPRT", "ECHOKE",
    "ICANON", "ISIG", "IEXTEN", "TOSTOP", "FLUSHO", "PENDIN", "EXTPROC",
)  # fmt: skip
_CFLAG_OFF = _flags("CSIZE", "PARENB", "PARODD", "CSTOPB", "CRTSCTS")
_CFLAG_ON = termios.CS8 | termios.CLOCAL | termios.CREAD


def makeRaw(fd: int, baudrate: Optional[int] = 115200, flush: bool = True) -> None:
    """
    Put the tty C{fd} into full raw mode (the C{cfmakeraw} set: no echo, no
    line editing, no signals, no flow control, no CR/NL mapping, no
    stripping, no output processing; 8 bits, C{CLOCAL|CREAD}, C{VMIN=1},
    C{VTIME=0}) at C{baudrate}, then discard any input queued so far.

    The attributes are applied with C{TCSANOW} followed by an explicit
    C{tcflush(TCIFLUSH)} rather than with C{TCSAFLUSH}: C{TCSAFLUSH} first
    drains pending output, which never finishes on a tty whose output was
    stopped by a stray ^S while it was still cooked.

    @param baudrate: the speed; if the platform has no C{B<baudrate>}
        constant the speed is left as it is (pyserial sets custom speeds).
    @raise termios.error: if C{fd} is not a tty.
    """
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~_IFLAG_OFF
    oflag &= ~_OFLAG_OFF
    lflag &= ~_LFLAG_OFF
    cflag = (cflag & ~_CFLAG_OFF) | _CFLAG_ON
    speed = getattr(termios, "B%d" % (baudrate,), None) if baudrate else None
    if speed is not None:
        ispeed = ospeed = speed
    cc = list(cc)
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])
    if flush:
        termios.tcflush(fd, termios.TCIFLUSH)


class RawSerial(serial.Serial):
    """
    A pyserial port that is forced into full raw mode whenever pyserial
    (re)configures it, and flushed of stale input when it is opened.

    pyserial's own setup clears C{ECHO}, C{ICANON}, C{ISIG}, C{IEXTEN},
    C{OPOST}, C{ICRNL}, C{ISTRIP} and C{IXON}, but leaves C{BRKINT},
    C{IMAXBEL}, C{IUTF8} and C{TOSTOP} as it found them and sets C{VMIN=0};
    L{makeRaw} finishes the job.
    """

    def _reconfigure_port(self, force_update: bool = False) -> None:
        super()._reconfigure_port(force_update)
        # Flush only while opening: a later reconfiguration (a speed change)
        # must not throw away live input.
        makeRaw(self.fd, self._baudrate, flush=not self.is_open)


def openSerial(path: str, baudrate: int = 115200) -> RawSerial:
    """
    Open the tty at C{path} as a L{RawSerial}: raw, at C{baudrate}, input
    flushed, and C{flock}ed so that a second prokshy on the same tty fails
    (FreeBSD lets several processes open a tty, which would split the input).

    @raise serial.SerialException: (an C{OSError}) if it cannot be opened,
        with C{errno} set when the system said why.
    @raise termios.error: if raw mode cannot be applied.
    """
    return RawSerial(
        path,
        baudrate=baudrate,
        bytesize=EIGHTBITS,
        parity=PARITY_NONE,
        stopbits=STOPBITS_ONE,
        timeout=0,
        xonxoff=False,
        rtscts=False,
        exclusive=True,
    )


@implementer(IDeviceTransport)
class SerialTransport(EagerWrites, LossCallbacks, SerialPort):
    """
    Twisted's L{SerialPort} on an already opened L{RawSerial}, with
    C{getHost}/C{getPeer} returning a L{DeviceAddress}, an
    C{abortConnection} and the rest of L{IDeviceTransport}.

    Like L{SerialPort}, the constructor connects C{protocol} and starts
    reading.  If C{protocol.makeConnection} raises, the port is closed, the
    protocol gets C{connectionLost} and the exception propagates.
    """

    def __init__(self, protocol, opened: serial.Serial, path: str, reactor) -> None:
        LossCallbacks.__init__(self)
        self.path = path
        self._opened = opened
        try:
            SerialPort.__init__(self, protocol, path, reactor, baudrate=opened.baudrate)
        except BaseException:
            if getattr(self, "protocol", None) is None:
                opened.close()
            else:
                self.connectionLost(Failure())
            raise

    def doRead(self):
        """
        Read what the tty has now, in one batch (L{readBatch}): a tty hands
        over about 4 KiB per read.
        """
        data, end = readBatch(self.fileno())
        if data:
            self.protocol.dataReceived(data)
        if end is None or not self.connected or self.disconnecting:
            return None
        return main.CONNECTION_DONE if end == b"" else main.CONNECTION_LOST

    def _serialFactory(self, *args: Any, **kwargs: Any) -> serial.Serial:
        # SerialPort.__init__ asks for a new pyserial object; hand over ours.
        return self._opened

    def getHost(self) -> DeviceAddress:
        return DeviceAddress(self.path)

    def getPeer(self) -> DeviceAddress:
        return DeviceAddress(self.path)

    def abortConnection(self) -> None:
        """
        Close at once, discarding unwritten data.
        """
        if self.connected:
            self.connectionLost(Failure(ConnectionAborted()))

    def discardBuffered(self) -> int:
        """
        Drop the writes not sent yet: those in our buffer, and those in the
        tty's output queue (C{tcflush(TCOFLUSH)}).

        @return: how many bytes were dropped from our buffer (the tty does
            not say how many it dropped).
        """
        dropped = discardWriteBuffer(self)
        if self.connected:
            try:
                termios.tcflush(self.fileno(), termios.TCOFLUSH)
            except (termios.error, OSError, ValueError):
                pass
        return dropped

    def connectionLost(self, reason: Failure) -> None:
        if self.disconnected:
            return
        try:
            SerialPort.connectionLost(self, reason)
        finally:
            self._runLossCallbacks(reason)

    def logPrefix(self) -> str:
        return "SerialTransport"
