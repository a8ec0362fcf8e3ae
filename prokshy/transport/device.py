# -*- test-case-name: tests.test_transport,tests.test_transport_device -*-
"""
The guest's device transports.

Two kinds of device carry the console port into the guest:

  - a B{tty} (FreeBSD C{/dev/vtcon/NAME}, an isa-serial port, a pty in the
    tests).  It goes through pyserial and Twisted's L{SerialPort}, but
    pyserial's own configuration is not trusted to be raw: L{RawSerial}
    enforces the full C{cfmakeraw} set, the speed, C{VMIN=1 VTIME=0} and an
    input flush every time the port is opened, because FreeBSD resets the
    termios of a vtcon tty to cooked on each first open.  L{SerialTransport}
    wraps an already opened L{RawSerial}, so that opening errors surface
    before a protocol is built, and gives C{getHost}/C{getPeer}.

  - a B{non-tty} char device (Linux C{/dev/virtio-ports/NAME}).
    L{DeviceTransport} is a small L{abstract.FileDescriptor} on a plain
    non-blocking fd.  While no host is connected such a port answers
    C{read() == 0} and polls C{POLLIN|POLLHUP} for ever; that is "host away",
    not end of file.  The transport then stops polling the fd (a level
    triggered C{POLLHUP} would spin, and a write-only registration would be
    turned into C{connectionLost} by the reactor), keeps the fd open so that
    queued input survives, buffers writes, and probes the fd on a timer with
    a capped exponential backoff until the host is back.  The host that
    comes back is a new client (a host connection never survives a
    disconnect), so the writes still buffered then, which were meant for the
    host that left, are discarded rather than sent to it.

Both have C{discardBuffered()}: drop the writes not sent yet (the protocol
calls it when a framed session ends, so that a later client never receives
the dead session's frames).
"""

from __future__ import annotations

import errno
import os
import select
import termios
from typing import Any, Callable, Optional

import attrs
import serial
from serial import EIGHTBITS, PARITY_NONE, STOPBITS_ONE
from zope.interface import implementer

from twisted.internet import abstract, fdesc, main
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress
from twisted.internet.serialport import SerialPort
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = [
    "DEVICE_OPEN_FLAGS",
    "DeviceAddress",
    "DeviceTransport",
    "RawSerial",
    "SerialTransport",
    "makeRaw",
    "openDevice",
    "openSerial",
]

#: Flags for opening a device: non-blocking, never our controlling terminal,
#: never inherited by the commands we spawn.
DEVICE_OPEN_FLAGS = os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC


@implementer(IAddress)
@attrs.frozen
class DeviceAddress:
    """
    The address of a console device: its path.  Both C{getHost} and
    C{getPeer} of the device transports return one.
    """

    path: str


def _discardWriteBuffer(transport: abstract.FileDescriptor) -> int:
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


# -- tty ------------------------------------------------------------------


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


class SerialTransport(SerialPort):
    """
    Twisted's L{SerialPort} on an already opened L{RawSerial}, with
    C{getHost}/C{getPeer} returning a L{DeviceAddress} and an
    C{abortConnection}.

    Like L{SerialPort}, the constructor connects C{protocol} and starts
    reading.  If C{protocol.makeConnection} raises, the port is closed, the
    protocol gets C{connectionLost} and the exception propagates.
    """

    def __init__(self, protocol, opened: serial.Serial, path: str, reactor) -> None:
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
        dropped = _discardWriteBuffer(self)
        if self.connected:
            try:
                termios.tcflush(self.fileno(), termios.TCOFLUSH)
            except (termios.error, OSError, ValueError):
                pass
        return dropped

    def connectionLost(self, reason: Failure) -> None:
        if self.disconnected:
            return
        SerialPort.connectionLost(self, reason)

    def logPrefix(self) -> str:
        return "SerialTransport"


# -- non-tty ----------------------------------------------------------------


def openDevice(path: str, _open: Callable[..., int] = os.open) -> int:
    """
    Open the device at C{path} with L{DEVICE_OPEN_FLAGS}.

    @raise OSError: as C{os.open} does.
    """
    return _open(path, DEVICE_OPEN_FLAGS)


_PRESENT, _AWAY, _GONE = "present", "away", "gone"
_RETRY_ERRNOS = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class DeviceTransport(abstract.FileDescriptor):
    """
    A transport on a non-tty char device fd (Linux virtio-serial port), which
    survives the host going away.

    The constructor takes an already open fd (see L{openDevice}; tests pass
    socketpair ends), makes it non-blocking, connects C{protocol} and starts
    reading, like L{SerialPort}.  The transport owns the fd and closes
    it in C{connectionLost}.

    Host away: a read of 0 bytes, or a hang-up reported by the reactor while
    the fd still polls C{POLLIN|POLLHUP}, means no host is connected.  The
    transport then unregisters the fd from the reactor, buffers writes, calls
    the protocol's optional C{hostAway()}, and probes the fd after
    L{awayInitialDelay} seconds, doubling up to L{awayMaxDelay}: one C{read}
    per probe (or one C{poll} if the protocol paused reading).  When the
    probe finds data or C{EAGAIN}, the host is back, as a new client: the
    writes still buffered are discarded (they were for the host that left),
    the protocol's optional C{hostReturned()} is called and reading resumes;
    what the protocol writes from then on goes to the new host.  Real errors (C{ENODEV} when the port is unplugged, C{EIO}, a
    hang-up without C{POLLIN}) end the connection.

    @ivar path: the device path, for L{DeviceAddress} and the log.
    @ivar clock: the L{IReactorTime} used for the probe timer.
    @ivar readSize: the most bytes read at once (virtio gives 4 KiB per
        read; very large reads are slow in Python).
    """

    readSize = 64 * 1024
    awayInitialDelay = 0.05
    awayMaxDelay = 1.0

    #: test seams
    _read = staticmethod(os.read)
    _close = staticmethod(os.close)

    _log = Logger()

    def __init__(self, protocol, fd: int, path: str, reactor=None, clock=None) -> None:
        abstract.FileDescriptor.__init__(self, reactor)
        fdesc.setNonBlocking(fd)
        self._fd = fd
        self.path = path
        self.clock = clock if clock is not None else self.reactor
        self.protocol = protocol
        self.connected = 1
        self._wantRead = True
        self._away = False
        self._awayDelay = self.awayInitialDelay
        self._probeCall = None
        self._closeCall = None
        self._closing = False
        try:
            protocol.makeConnection(self)
        except BaseException:
            self._closing = True
            self.connectionLost(Failure())
            raise
        if self.connected and not self.disconnecting and self._wantRead:
            self.startReading()

    @classmethod
    def fromPath(cls, protocol, path: str, reactor=None, clock=None) -> DeviceTransport:
        """
        Open C{path} with L{openDevice} and connect C{protocol} to it.
        """
        return cls(protocol, openDevice(path), path, reactor, clock)

    def __repr__(self) -> str:
        return "<%s %s fd=%d%s>" % (
            type(self).__name__,
            self.path,
            self._fd,
            " away" if self._away else "",
        )

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "DeviceTransport"

    def getHost(self) -> DeviceAddress:
        return DeviceAddress(self.path)

    def getPeer(self) -> DeviceAddress:
        return DeviceAddress(self.path)

    @property
    def hostConnected(self) -> bool:
        """
        C{False} from the moment the transport has seen the host go away
        until it sees it come back.
        """
        return not self._away

    # -- reading and writing -------------------------------------------

    def doRead(self):
        if self._away:
            return None
        try:
            data = self._read(self._fd, self.readSize)
        except OSError as e:
            if e.errno in _RETRY_ERRNOS:
                return None
            return self._fatal(e)
        if not data:
            if self._pollHostState() == _GONE:
                return self._hungUp()
            self._goAway()
            return None
        self.protocol.dataReceived(data)
        return None

    def writeSomeData(self, data):
        return fdesc.writeToFD(self._fd, data)

    def doWrite(self):
        # doRead may have found the host away during this very poll event,
        # after which the reactor still calls doWrite.
        if self._away:
            return None
        return abstract.FileDescriptor.doWrite(self)

    # The reactor registrations are ours while the host is away; the public
    # methods only record what the protocol wants.

    def startReading(self) -> None:
        self._wantRead = True
        if not self._away:
            abstract.FileDescriptor.startReading(self)

    def stopReading(self) -> None:
        self._wantRead = False
        abstract.FileDescriptor.stopReading(self)

    def startWriting(self) -> None:
        if not self._away:
            abstract.FileDescriptor.startWriting(self)

    def loseConnection(self) -> None:
        """
        Close after flushing buffered writes; while the host is away they
        cannot be flushed, so close soon and discard them.
        """
        if self._away and self.connected and not self.disconnecting:
            self.disconnecting = 1
            self._cancelProbe()
            self._closeCall = self.clock.callLater(
                0, self.connectionLost, Failure(main.CONNECTION_DONE)
            )
            return
        abstract.FileDescriptor.loseConnection(self)

    def abortConnection(self) -> None:
        """
        Close at once, discarding unwritten data.
        """
        if self.connected:
            self._closing = True
            self.connectionLost(Failure(ConnectionAborted()))

    def _hasPendingWrites(self) -> bool:
        return len(self.dataBuffer) > self.offset or bool(self._tempDataLen)

    def discardBuffered(self) -> int:
        """
        Drop the writes not sent yet.

        @return: how many bytes were dropped.
        """
        return _discardWriteBuffer(self)

    # -- host away ------------------------------------------------------

    def _pollHostState(self) -> str:
        """
        Ask C{poll} whether the host is there, without reading.
        """
        if self._fd < 0:
            return _GONE
        poller = select.poll()
        poller.register(self._fd, select.POLLIN | select.POLLOUT)
        try:
            events = poller.poll(0)
        except OSError:
            return _GONE
        revents = events[0][1] if events else 0
        if revents & (select.POLLERR | select.POLLNVAL):
            return _GONE
        if revents & select.POLLHUP:
            # A virtio port with no host polls POLLIN|POLLHUP; one that was
            # unplugged polls POLLHUP alone.
            return _AWAY if revents & select.POLLIN else _GONE
        return _PRESENT

    def _goAway(self) -> None:
        self._away = True
        abstract.FileDescriptor.stopReading(self)
        abstract.FileDescriptor.stopWriting(self)
        self._awayDelay = self.awayInitialDelay
        self._log.info("host away from {path}; waiting for it", path=self.path)
        self._scheduleProbe()
        self._notify("hostAway")

    def _comeBack(self) -> None:
        self._away = False
        # A host connection never survives a disconnect: this is a new
        # client, and what was written for the one that left is not its.
        dropped = _discardWriteBuffer(self)
        if dropped:
            self._log.info(
                "host back on {path}; discarded {nbytes} bytes written for the host that left",
                path=self.path,
                nbytes=dropped,
            )
        else:
            self._log.info("host back on {path}", path=self.path)
        if self._wantRead:
            abstract.FileDescriptor.startReading(self)
        self._notify("hostReturned")
        if self.connected and not self._away and self._hasPendingWrites():
            abstract.FileDescriptor.startWriting(self)

    def _scheduleProbe(self) -> None:
        self._probeCall = self.clock.callLater(self._awayDelay, self._probe)
        self._awayDelay = min(self._awayDelay * 2, self.awayMaxDelay)

    def _cancelProbe(self) -> None:
        if self._probeCall is not None and self._probeCall.active():
            self._probeCall.cancel()
        self._probeCall = None

    def _probe(self) -> None:
        self._probeCall = None
        if not self.connected or not self._away:
            return
        if not self._wantRead:
            state = self._pollHostState()
            if state == _AWAY:
                self._scheduleProbe()
            elif state == _PRESENT:
                self._comeBack()
            else:
                self._loseFromTimer(self._hungUp())
            return
        try:
            data = self._read(self._fd, self.readSize)
        except OSError as e:
            if e.errno == errno.EINTR:
                self._probeCall = self.clock.callLater(0, self._probe)
            elif e.errno in _RETRY_ERRNOS:
                self._comeBack()
            else:
                self._loseFromTimer(self._fatal(e))
            return
        if not data:
            if self._pollHostState() == _GONE:
                self._loseFromTimer(self._hungUp())
            else:
                self._scheduleProbe()
            return
        self._comeBack()
        if self.connected:
            try:
                self.protocol.dataReceived(data)
            except BaseException:
                failure = Failure()
                self._log.failure("Unhandled error in {protocol}.dataReceived",
                                  failure, protocol=self.protocol)
                self._loseFromTimer(failure.value)

    def _loseFromTimer(self, why: BaseException) -> None:
        # What the reactor does when doRead returns an exception.
        self._closing = True
        abstract.FileDescriptor.stopReading(self)
        abstract.FileDescriptor.stopWriting(self)
        self.connectionLost(Failure(why))

    def _hungUp(self) -> ConnectionDone:
        # POLLHUP without POLLIN: the port was unplugged (what the reactor
        # itself reports as ConnectionDone under poll and epoll).
        self._closing = True
        return ConnectionDone("device %s hung up" % (self.path,))

    def _fatal(self, e: OSError) -> ConnectionLost:
        self._closing = True
        return ConnectionLost(
            "device %s: %s (%s)"
            % (self.path, e.strerror, errno.errorcode.get(e.errno, e.errno))
        )

    def _notify(self, name: str) -> None:
        method = getattr(self.protocol, name, None)
        if method is None:
            return
        try:
            method()
        except Exception:
            self._log.failure("Error in {protocol}.{name}()", protocol=self.protocol, name=name)

    def _isHostAwayReport(self, reason: Failure) -> bool:
        """
        Is C{reason}, handed to C{connectionLost} by the reactor, really the
        host going away?  Twisted reports a hang-up on a fd that is
        registered only for writing (or for reading with no C{POLLIN}) as a
        lost connection without calling C{doRead}.
        """
        return (
            bool(self.connected)
            and not self.disconnecting
            and not self._closing
            and type(reason.value) in (ConnectionDone, ConnectionLost)
            and self._pollHostState() == _AWAY
        )

    # -- the end --------------------------------------------------------

    def connectionLost(self, reason: Failure) -> None:
        if self.disconnected:
            return
        if self._isHostAwayReport(reason):
            if not self._away:
                self._goAway()
            return
        self._cancelProbe()
        if self._closeCall is not None and self._closeCall.active():
            self._closeCall.cancel()
        self._closeCall = None
        self._away = False
        abstract.FileDescriptor.connectionLost(self, reason)
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                self._close(fd)
            except OSError:
                pass
        self.protocol.connectionLost(reason)
