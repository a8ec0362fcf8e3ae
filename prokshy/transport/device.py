# -*- test-case-name: tests.system.test_transport_device,tests.system.test_transport -*-
"""
The guest's non-tty device transport, L{DeviceTransport}, for a char
device that is no tty (Linux C{/dev/virtio-ports/NAME}); the tty transport
is in L{prokshy.transport.tty} (its names are also importable from here).

L{DeviceTransport} is a small L{abstract.FileDescriptor} on a plain
non-blocking fd.  While no host is connected such a port answers C{read()
== 0} and polls C{POLLIN|POLLHUP} for ever; that is "host away", not end of
file.  The transport then stops polling the fd (a level triggered C{POLLHUP}
would spin, and a write-only registration would be turned into
C{connectionLost} by the reactor), keeps the fd open so that queued input
survives, buffers writes, and probes the fd on a timer with a capped
exponential backoff until the host is back.  The host that comes back is a
new client (a host connection never survives a disconnect), so the writes
still buffered then, which were meant for the host that left, are discarded
rather than sent to it.

Both device transports provide L{IDeviceTransport}: C{discardBuffered()}
drops the writes not sent yet (the protocol calls it when a framed session
ends, so that a later client never receives the dead session's frames), and
C{whenLost(callback)} says when the connection has ended
(L{prokshy.transport.service} uses it).

The presence of the host on a L{DeviceTransport} is an Automat state
machine.  States: C{present} (a host, the fd in the reactor), C{closing}
(the end is decided: flushing for C{loseConnection}, or an error handed to
the reactor), C{away} (no host; timer: the probe, backing off from
C{awayInitialDelay} to C{awayMaxDelay}), C{closingAway} (C{loseConnection}
with no host; timer: the close on the next tick), C{gone} (closed).  A
state's timer is armed on entering it and cancelled on every transition out
of it.  The protocol hears C{hostAway()} and C{hostReturned()} if it
provides L{IHostPresence}.  Every (state, input) pair is declared; an
empty output list is a deliberate "nothing to do" (harmless there, or a
probe result outside C{away}, which cannot happen as the probe timer dies
with that state)::

    state        input             -> new state    outputs
    away         closeRequested    -> closingAway  _cancelProbe, _armClose
    away         endDecided        -> away
    away         hangUpReported    -> away
    away         hostLeft          -> away
    away         hostQueried       -> away         _no
    away         lost              -> gone         _cancelProbe, _shutDown
    away         probeFoundHost    -> present      _cancelProbe, _discardForNewClient, _registerReading, _notifyReturned, _deliver
    away         probeFoundNoHost  -> away         _armProbe
    away         readingWanted     -> away
    away         writable          -> away
    away         writingWanted     -> away
    closing      closeRequested    -> closing
    closing      endDecided        -> closing
    closing      hangUpReported    -> gone         _shutDown
    closing      hostLeft          -> closingAway  _leaveReactor, _armClose
    closing      hostQueried       -> closing      _yes
    closing      lost              -> gone         _shutDown
    closing      probeFoundHost    -> closing
    closing      probeFoundNoHost  -> closing
    closing      readingWanted     -> closing      _registerReading
    closing      writable          -> closing      _write
    closing      writingWanted     -> closing      _registerWriting
    closingAway  closeRequested    -> closingAway
    closingAway  endDecided        -> closingAway
    closingAway  hangUpReported    -> gone         _cancelClose, _shutDown
    closingAway  hostLeft          -> closingAway
    closingAway  hostQueried       -> closingAway  _no
    closingAway  lost              -> gone         _cancelClose, _shutDown
    closingAway  probeFoundHost    -> closingAway
    closingAway  probeFoundNoHost  -> closingAway
    closingAway  readingWanted     -> closingAway
    closingAway  writable          -> closingAway
    closingAway  writingWanted     -> closingAway
    gone         closeRequested    -> gone
    gone         endDecided        -> gone
    gone         hangUpReported    -> gone
    gone         hostLeft          -> gone
    gone         hostQueried       -> gone         _no
    gone         lost              -> gone
    gone         probeFoundHost    -> gone
    gone         probeFoundNoHost  -> gone
    gone         readingWanted     -> gone
    gone         writable          -> gone
    gone         writingWanted     -> gone
    present      closeRequested    -> closing      _flushAndClose
    present      endDecided        -> closing
    present      hangUpReported    -> away         _leaveReactor, _logAway, _startBackoff, _armProbe, _notifyAway
    present      hostLeft          -> away         _leaveReactor, _logAway, _startBackoff, _armProbe, _notifyAway
    present      hostQueried       -> present      _yes
    present      lost              -> gone         _shutDown
    present      probeFoundHost    -> present
    present      probeFoundNoHost  -> present
    present      readingWanted     -> present      _registerReading
    present      writable          -> present      _write
    present      writingWanted     -> present      _registerWriting
"""

from __future__ import annotations

import errno
import os
import select
from typing import Any, Callable, List, Optional

from automat import MethodicalMachine
from zope.interface import implementer

from twisted.internet import abstract, fdesc, main
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from prokshy import _machines
from prokshy.transport._base import (
    READ_SIZE,
    DeviceAddress,
    EagerWrites,
    LossCallbacks,
    discardWriteBuffer,
    readBatch,
)
from prokshy.transport.interfaces import IDeviceTransport, IHostPresence
from prokshy.transport.tty import RawSerial, SerialTransport, makeRaw, openSerial

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


def openDevice(path: str, _open: Callable[..., int] = os.open) -> int:
    """
    Open the device at C{path} with L{DEVICE_OPEN_FLAGS}.

    @raise OSError: as C{os.open} does.
    """
    return _open(path, DEVICE_OPEN_FLAGS)


_PRESENT, _AWAY, _GONE = "present", "away", "gone"
_RETRY_ERRNOS = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


def _result(values: List[Any]) -> Any:
    """
    An Automat collector: the value of the last output, or L{None}.
    """
    return values[-1] if values else None


@_machines.fast
@implementer(IDeviceTransport)
class DeviceTransport(EagerWrites, LossCallbacks, abstract.FileDescriptor):
    """
    A transport on a non-tty char device fd (Linux virtio-serial port), which
    survives the host going away.

    The constructor takes an already open fd (see L{openDevice}; tests pass
    socketpair ends), makes it non-blocking, connects C{protocol} and starts
    reading, like L{SerialPort}.  The transport owns the fd and closes
    it in C{connectionLost}.

    Presence is the state machine in the module docstring.  Host away: a
    read of 0 bytes, or a hang-up reported by the reactor while the fd still
    polls C{POLLIN|POLLHUP}, means no host is connected.  The transport then
    unregisters the fd from the reactor, buffers writes, tells a protocol
    that provides L{IHostPresence} (C{hostAway()}), and probes the fd after
    L{awayInitialDelay} seconds, doubling up to L{awayMaxDelay}: one C{read}
    per probe (or one C{poll} if the protocol paused reading).  When the
    probe finds data or C{EAGAIN}, the host is back, as a new client: the
    writes still buffered are discarded (they were for the host that left),
    the protocol's C{hostReturned()} is called and reading resumes; what the
    protocol writes from then on goes to the new host.  Real errors
    (C{ENODEV} when the port is unplugged, C{EIO}, a hang-up without
    C{POLLIN}) end the connection.

    @ivar path: the device path, for L{DeviceAddress} and the log.
    @ivar clock: the L{IReactorTime} used for the probe timer.
    @ivar readSize: the most bytes one C{read()} asks for (virtio gives
        4 KiB per read; very large reads are slow in Python).  Consecutive
        reads are gathered (L{readBatch}) before the protocol sees them.
    """

    readSize = READ_SIZE
    awayInitialDelay = 0.05
    awayMaxDelay = 1.0

    #: test seams
    _read = staticmethod(os.read)
    _close = staticmethod(os.close)

    _log = Logger()
    _machine = MethodicalMachine()

    def __init__(self, protocol, fd: int, path: str, reactor=None, clock=None) -> None:
        abstract.FileDescriptor.__init__(self, reactor)
        LossCallbacks.__init__(self)
        fdesc.setNonBlocking(fd)
        self._fd = fd
        self.path = path
        self.clock = clock if clock is not None else self.reactor
        self.protocol = protocol
        self.connected = 1
        #: Whether the protocol wants input (it has not paused us).  Not
        #: presence: while away, it says whether the probe may read.
        self._reading = True
        #: The next probe's delay (the away state's backoff).
        self._probeDelay = self.awayInitialDelay
        #: The away state's probe timer, the closingAway state's close timer.
        self._probeCall: Optional[IDelayedCall] = None
        self._closeCall: Optional[IDelayedCall] = None
        try:
            protocol.makeConnection(self)
        except BaseException:
            self.lost(Failure())
            raise
        if self.connected and not self.disconnecting and self._reading:
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
            "" if self.hostConnected else " no host",
        )

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "DeviceTransport"

    def getHost(self) -> DeviceAddress:
        return DeviceAddress(self.path)

    def getPeer(self) -> DeviceAddress:
        return DeviceAddress(self.path)

    # -- states -----------------------------------------------------------

    @_machine.state(initial=True)
    def present(self):
        """
        A host is connected: the fd is in the reactor as the protocol wants.
        """

    @_machine.state()
    def closing(self):
        """
        The end is decided (C{loseConnection} flushes the buffer, or C{doRead}
        has returned an error to the reactor): the next C{connectionLost}
        is the end, never the host going away.
        """

    @_machine.state()
    def away(self):
        """
        No host: the fd is out of the reactor, writes are buffered.  Timer:
        the probe, armed on entering (backing off), cancelled on leaving.
        """

    @_machine.state()
    def closingAway(self):
        """
        C{loseConnection} while no host: the buffered writes can never be
        sent.  Timer: the close, on the next tick.
        """

    @_machine.state()
    def gone(self):
        """
        Closed: the fd is closed and the protocol has been told.
        """

    # -- inputs -----------------------------------------------------------

    @_machine.input()
    def hostLeft(self):
        "A read of 0 bytes on a fd that polls as host away."

    @_machine.input()
    def hangUpReported(self, reason):
        "The reactor reports a hang-up on a fd that polls as host away."

    @_machine.input()
    def probeFoundHost(self, data):
        "The probe read data (or EAGAIN: nothing yet): a host is there."

    @_machine.input()
    def probeFoundNoHost(self):
        "The probe read 0 bytes and the fd polls as host away."

    @_machine.input()
    def closeRequested(self):
        "loseConnection()."

    @_machine.input()
    def endDecided(self):
        "doRead returns an error (or an unplugged port's hang-up) to the reactor."

    @_machine.input()
    def lost(self, reason):
        "The connection ends (connectionLost, abortConnection, an error the probe found)."

    @_machine.input()
    def readingWanted(self):
        "startReading(): the protocol wants input."

    @_machine.input()
    def writingWanted(self):
        "startWriting(): there is something to write."

    @_machine.input()
    def writable(self):
        "doWrite(): the reactor says the fd is writable."

    @_machine.input()
    def hostQueried(self):
        "hostConnected: is a host there?"

    # -- outputs ----------------------------------------------------------

    @_machine.output()
    def _leaveReactor(self):
        abstract.FileDescriptor.stopReading(self)
        abstract.FileDescriptor.stopWriting(self)

    @_machine.output()
    def _logAway(self):
        self._log.info("host away from {path}; waiting for it", path=self.path)

    @_machine.output()
    def _startBackoff(self):
        self._probeDelay = self.awayInitialDelay

    @_machine.output()
    def _armProbe(self):
        self._probeCall = self.clock.callLater(self._probeDelay, self._probe)
        self._probeDelay = min(self._probeDelay * 2, self.awayMaxDelay)

    @_machine.output()
    def _cancelProbe(self):
        call, self._probeCall = self._probeCall, None
        if call is not None and call.active():
            call.cancel()

    @_machine.output()
    def _notifyAway(self):
        if IHostPresence.providedBy(self.protocol):
            self._safely(self.protocol.hostAway)

    @_machine.output()
    def _discardForNewClient(self):
        # A host connection never survives a disconnect: this is a new
        # client, and what was written for the one that left is not its.
        dropped = discardWriteBuffer(self)
        if dropped:
            self._log.info(
                "host back on {path}; discarded {nbytes} bytes written for the host that left",
                path=self.path,
                nbytes=dropped,
            )
        else:
            self._log.info("host back on {path}", path=self.path)

    @_machine.output()
    def _registerReading(self):
        if self._reading:
            abstract.FileDescriptor.startReading(self)

    @_machine.output()
    def _registerWriting(self):
        abstract.FileDescriptor.startWriting(self)

    @_machine.output()
    def _notifyReturned(self):
        if IHostPresence.providedBy(self.protocol):
            self._safely(self.protocol.hostReturned)

    @_machine.output()
    def _deliver(self, data):
        if not data or not self.connected:
            return
        try:
            self.protocol.dataReceived(data)
        except BaseException:
            failure = Failure()
            self._log.failure(
                "Unhandled error in {protocol}.dataReceived", failure, protocol=self.protocol
            )
            self.lost(failure)

    @_machine.output()
    def _flushAndClose(self):
        abstract.FileDescriptor.loseConnection(self)

    @_machine.output()
    def _armClose(self):
        self.disconnecting = 1
        self._closeCall = self.clock.callLater(0, self.lost, Failure(main.CONNECTION_DONE))

    @_machine.output()
    def _cancelClose(self):
        call, self._closeCall = self._closeCall, None
        if call is not None and call.active():
            call.cancel()

    @_machine.output()
    def _shutDown(self, reason):
        abstract.FileDescriptor.connectionLost(self, reason)
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                self._close(fd)
            except OSError:
                pass
        try:
            self.protocol.connectionLost(reason)
        finally:
            self._runLossCallbacks(reason)

    @_machine.output()
    def _write(self):
        return abstract.FileDescriptor.doWrite(self)

    @_machine.output()
    def _yes(self):
        return True

    @_machine.output()
    def _no(self):
        return False

    # -- the table --------------------------------------------------------
    # Every (state, input) pair is declared; an empty output list is a
    # deliberate "nothing to do here" (the input is harmless in that state,
    # or cannot happen: a probe result outside away, whose timer is
    # cancelled on leaving it).

    _goAway = [_leaveReactor, _logAway, _startBackoff, _armProbe, _notifyAway]
    _comeBack = [_cancelProbe, _discardForNewClient, _registerReading, _notifyReturned, _deliver]

    present.upon(hostLeft, enter=away, outputs=_goAway)
    present.upon(hangUpReported, enter=away, outputs=_goAway)
    present.upon(probeFoundHost, enter=present, outputs=[])
    present.upon(probeFoundNoHost, enter=present, outputs=[])
    present.upon(closeRequested, enter=closing, outputs=[_flushAndClose])
    present.upon(endDecided, enter=closing, outputs=[])
    present.upon(lost, enter=gone, outputs=[_shutDown])
    present.upon(readingWanted, enter=present, outputs=[_registerReading])
    present.upon(writingWanted, enter=present, outputs=[_registerWriting])
    present.upon(writable, enter=present, outputs=[_write], collector=_result)
    present.upon(hostQueried, enter=present, outputs=[_yes], collector=_result)

    closing.upon(hostLeft, enter=closingAway, outputs=[_leaveReactor, _armClose])
    closing.upon(hangUpReported, enter=gone, outputs=[_shutDown])
    closing.upon(probeFoundHost, enter=closing, outputs=[])
    closing.upon(probeFoundNoHost, enter=closing, outputs=[])
    closing.upon(closeRequested, enter=closing, outputs=[])
    closing.upon(endDecided, enter=closing, outputs=[])
    closing.upon(lost, enter=gone, outputs=[_shutDown])
    closing.upon(readingWanted, enter=closing, outputs=[_registerReading])
    closing.upon(writingWanted, enter=closing, outputs=[_registerWriting])
    closing.upon(writable, enter=closing, outputs=[_write], collector=_result)
    closing.upon(hostQueried, enter=closing, outputs=[_yes], collector=_result)

    away.upon(hostLeft, enter=away, outputs=[])
    away.upon(hangUpReported, enter=away, outputs=[])
    away.upon(probeFoundHost, enter=present, outputs=_comeBack)
    away.upon(probeFoundNoHost, enter=away, outputs=[_armProbe])
    away.upon(closeRequested, enter=closingAway, outputs=[_cancelProbe, _armClose])
    away.upon(endDecided, enter=away, outputs=[])
    away.upon(lost, enter=gone, outputs=[_cancelProbe, _shutDown])
    away.upon(readingWanted, enter=away, outputs=[])
    away.upon(writingWanted, enter=away, outputs=[])
    away.upon(writable, enter=away, outputs=[], collector=_result)
    away.upon(hostQueried, enter=away, outputs=[_no], collector=_result)

    closingAway.upon(hostLeft, enter=closingAway, outputs=[])
    closingAway.upon(hangUpReported, enter=gone, outputs=[_cancelClose, _shutDown])
    closingAway.upon(probeFoundHost, enter=closingAway, outputs=[])
    closingAway.upon(probeFoundNoHost, enter=closingAway, outputs=[])
    closingAway.upon(closeRequested, enter=closingAway, outputs=[])
    closingAway.upon(endDecided, enter=closingAway, outputs=[])
    closingAway.upon(lost, enter=gone, outputs=[_cancelClose, _shutDown])
    closingAway.upon(readingWanted, enter=closingAway, outputs=[])
    closingAway.upon(writingWanted, enter=closingAway, outputs=[])
    closingAway.upon(writable, enter=closingAway, outputs=[], collector=_result)
    closingAway.upon(hostQueried, enter=closingAway, outputs=[_no], collector=_result)

    gone.upon(hostLeft, enter=gone, outputs=[])
    gone.upon(hangUpReported, enter=gone, outputs=[])
    gone.upon(probeFoundHost, enter=gone, outputs=[])
    gone.upon(probeFoundNoHost, enter=gone, outputs=[])
    gone.upon(closeRequested, enter=gone, outputs=[])
    gone.upon(endDecided, enter=gone, outputs=[])
    gone.upon(lost, enter=gone, outputs=[])
    gone.upon(readingWanted, enter=gone, outputs=[])
    gone.upon(writingWanted, enter=gone, outputs=[])
    gone.upon(writable, enter=gone, outputs=[], collector=_result)
    gone.upon(hostQueried, enter=gone, outputs=[_no], collector=_result)

    del _goAway, _comeBack

    # -- the public surface -------------------------------------------------

    @property
    def hostConnected(self) -> bool:
        """
        Whether a host is there: C{False} from the moment the transport has
        seen the host go away until it sees it come back, and once closed.
        """
        return self.hostQueried()

    def doRead(self):
        data, end = readBatch(self._fd, self._read, self.readSize)
        if data:
            self.protocol.dataReceived(data)
        if end is None:
            return None
        if isinstance(end, OSError):
            self.endDecided()
            return self._fatal(end)
        if self._pollHostState() == _GONE:
            self.endDecided()
            return self._hungUp()
        self.hostLeft()
        return None

    def writeSomeData(self, data):
        return fdesc.writeToFD(self._fd, data)

    def doWrite(self):
        # doRead may have found the host away during this very poll event,
        # after which the reactor still calls doWrite: the state says.
        return self.writable()

    # The reactor registrations follow the state; the public methods record
    # what the protocol wants and tell the machine.

    def startReading(self) -> None:
        self._reading = True
        self.readingWanted()

    def stopReading(self) -> None:
        self._reading = False
        abstract.FileDescriptor.stopReading(self)

    def startWriting(self) -> None:
        self.writingWanted()

    def _mayWriteNow(self) -> bool:
        # Only while a host is there: with none, writes wait (and are
        # discarded for the next host).
        return self.hostQueried()

    def loseConnection(self) -> None:
        """
        Close after flushing buffered writes; while the host is away they
        cannot be flushed, so close soon and discard them.
        """
        self.closeRequested()

    def abortConnection(self) -> None:
        """
        Close at once, discarding unwritten data.
        """
        self.lost(Failure(ConnectionAborted()))

    def discardBuffered(self) -> int:
        """
        Drop the writes not sent yet.

        @return: how many bytes were dropped.
        """
        return discardWriteBuffer(self)

    def connectionLost(self, reason: Failure) -> None:
        # Twisted reports a hang-up on a fd that is registered only for
        # writing (or for reading with no POLLIN) as a lost connection
        # without calling doRead: it may be the host going away.
        if type(reason.value) in (ConnectionDone, ConnectionLost) and self._pollHostState() == _AWAY:
            self.hangUpReported(reason)
        else:
            self.lost(reason)

    # -- helpers ----------------------------------------------------------

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

    def _probe(self) -> None:
        """
        The away state's timer: look at the fd once and say what was found.
        """
        self._probeCall = None
        if not self._reading:
            state = self._pollHostState()
            if state == _AWAY:
                self.probeFoundNoHost()
            elif state == _PRESENT:
                self.probeFoundHost(b"")
            else:
                self.lost(Failure(self._hungUp()))
            return
        while True:
            try:
                data = self._read(self._fd, self.readSize)
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                if e.errno in _RETRY_ERRNOS:
                    self.probeFoundHost(b"")
                else:
                    self.lost(Failure(self._fatal(e)))
                return
            break
        if data:
            self.probeFoundHost(data)
        elif self._pollHostState() == _GONE:
            self.lost(Failure(self._hungUp()))
        else:
            self.probeFoundNoHost()

    def _hungUp(self) -> ConnectionDone:
        # POLLHUP without POLLIN: the port was unplugged (what the reactor
        # itself reports as ConnectionDone under poll and epoll).
        return ConnectionDone("device %s hung up" % (self.path,))

    def _fatal(self, e: OSError) -> ConnectionLost:
        return ConnectionLost(
            "device %s: %s (%s)"
            % (self.path, e.strerror, errno.errorcode.get(e.errno, e.errno))
        )

    def _safely(self, method: Callable[[], Any]) -> None:
        try:
            method()
        except Exception:
            self._log.failure(
                "Error in {protocol}.{name}()", protocol=self.protocol, name=method.__name__
            )
