# -*- test-case-name: tests.test_vmsim -*-
"""
prokshy-vmsim: a bhyve-faithful simulator of one virtio-console port.

The host side is a unix socket, as bhyve's
C{-s N,virtio-console,prokshy=PATH} creates. The guest side is a pty whose
slave is symlinked at the device link; the guest agent opens that path as it
would open C{/dev/vtcon/prokshy}. The pty is left cooked (echo, ONLCR, ...),
as FreeBSD leaves a vtcon tty, so the agent has to set raw mode itself. The
simulator keeps the slave open too, so the pty never hangs up when the agent
closes and reopens the device.

C{bhyve} mode (see docs and the channel-semantics notes, section 2):
  - one host client at a time; a second one is accepted and closed at once;
  - guest output made while no client is connected is dropped (counted);
  - host input is discarded, in chunks of up to 2048 bytes, when the bytes
    the guest has not read yet would exceed the guest buffer (the FreeBSD tty
    input queue, 23040 bytes at 115200 baud); there is no backpressure;
  - the guest is never told that the host left;
  - a stale socket file makes start fail (bhyve never unlinks);
  - a host client that stops reading stalls guest output.

C{qemu} mode:
  - extra clients wait their turn (queued, not closed);
  - nothing is dropped: host input waits while the guest side is full, and
    guest output made while no client is connected is held (bounded; beyond
    that the guest's writes block) and delivered to the next client;
  - a stale socket file is unlinked and recreated.

Usage::

    prokshy-vmsim --socket PATH --device-link PATH [--mode bhyve|qemu]
                  [--guest-buffer BYTES] [fault options]

The guest's unread bytes (bhyve mode) are estimated as the bytes queued in
the simulator plus the bytes in the pty. The latter is C{FIONREAD} on the
slave while the line discipline's buffer is not full; while it is full, the
kernel holds more that C{FIONREAD} does not show, so everything written to
the pty since C{FIONREAD} last showed a buffer that was not full counts as
unread. In canonical (cooked) mode C{FIONREAD} counts complete lines only,
so the estimate is rougher there; the kernel then discards overlong lines
itself.

Not modelled: a Linux pty keeps its termios when the guest reopens it
(FreeBSD resets a vtcon tty on first open), and since the simulator holds the
slave open, host input is echoed (cooked mode) even when no guest has the
device open (FreeBSD would discard it).

Faults (L{prokshy.sim.faults}, off by default) apply between the host socket
and the pty. Data flowing in a faulted direction (C{--fault-direction}) is
cut into chunks of at most C{--fault-chunk} bytes as it arrives; each chunk is
dropped with probability C{--drop-rate}, or else sent twice with probability
C{--dup-rate}; each byte sent has probability C{--corrupt-rate} of getting
one random bit flipped. C{--cut-every N} closes the host connection once N
bytes (both ways together, counted at the socket before the other faults)
went through it; the count restarts with each connection. All randomness
comes from C{random.Random(--seed)}, so runs repeat.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import stat
import struct
import sys
import termios
from collections import deque
from typing import Any, Callable, Deque, List, Optional, Set

from attrs import asdict, define
from twisted.internet import abstract, fdesc, main as _main
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from prokshy.sim.faults import (
    BOTH,
    DIRECTIONS,
    FAULT_HELP,
    TO_GUEST,
    TO_HOST,
    FaultInjector,
    Faults,
)

__all__ = [
    "BHYVE",
    "QEMU",
    "MODES",
    "DEFAULT_GUEST_BUFFER",
    "Counters",
    "Faults",
    "SimError",
    "VMSim",
    "main",
    "makeParser",
]

BHYVE = "bhyve"
QEMU = "qemu"
MODES = (BHYVE, QEMU)

#: The FreeBSD tty input queue at 115200 baud: C{MIN(speed / 5, TTYBUF_MAX)}.
DEFAULT_GUEST_BUFFER = 23040

#: bhyve discards host data in reads of up to this many bytes when the ring is full.
RING_DISCARD_CHUNK = 2048

#: Bytes read from the pty master at a time.
READ_SIZE = 65536

#: Linux's N_TTY buffer is 4096 bytes; at or above this many unread bytes it
#: may be full, and then the kernel holds more input that FIONREAD does not count.
_TTY_FULL_MARK = 3072

_log = Logger()


class SimError(Exception):
    """
    The simulator could not start. C{str()} is a one-line message for users.
    """


@define
class Counters:
    """
    What went through the simulator.

    @ivar bytesFromHost: bytes read from the host client being served.
    @ivar bytesToGuest: bytes passed on to the pty (after faults and drops).
    @ivar bytesFromGuest: bytes read from the pty (guest output, echo included).
    @ivar bytesToHost: bytes written to host clients (after faults).
    @ivar ringDropped: host bytes discarded because the guest's queue was
        full (bhyve mode).
    @ivar noClientDropped: guest bytes discarded because no host client was
        connected (bhyve mode).
    @ivar clientsServed: host clients that were served.
    @ivar clientsRefused: host clients closed at once (bhyve mode).
    @ivar clientsQueued: host clients that had to wait their turn (qemu mode).
    @ivar cuts: connections closed by C{cutEvery}.
    """

    bytesFromHost: int = 0
    bytesToGuest: int = 0
    bytesFromGuest: int = 0
    bytesToHost: int = 0
    ringDropped: int = 0
    noClientDropped: int = 0
    clientsServed: int = 0
    clientsRefused: int = 0
    clientsQueued: int = 0
    cuts: int = 0

    def asDict(self) -> dict:
        """
        @return: the counters as a C{dict}.
        """
        return asdict(self)


def _unreadInput(fd: int) -> int:
    """
    @return: C{FIONREAD} on the tty C{fd}: the input bytes a read would see.
    """
    raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])


class _PtyMaster(abstract.FileDescriptor):
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
class _PauseFor:
    """
    A push producer that pauses the pty master's reading for one reason: a
    host transport that cannot keep up stalls guest output.
    """

    def __init__(self, pty: _PtyMaster, reason: str) -> None:
        self._pty = pty
        self._reason = reason

    def pauseProducing(self) -> None:
        self._pty.pauseFor(self._reason)

    def resumeProducing(self) -> None:
        self._pty.resumeFor(self._reason)

    def stopProducing(self) -> None:
        self._pty.resumeFor(self._reason)


class _HostClient(Protocol):
    """
    One host connection to the simulator's socket; the L{VMSim} decides
    what happens to it.
    """

    number = 0
    cut = False
    refused = False

    def __init__(self, sim: "VMSim") -> None:
        self._sim = sim
        self._lostWaiters: List[Deferred] = []
        self.isLost = False

    def connectionMade(self) -> None:
        self._sim._clientConnected(self)

    def dataReceived(self, data: bytes) -> None:
        self._sim._fromHost(self, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.isLost = True
        self._sim._clientLost(self, reason)
        waiters, self._lostWaiters = self._lostWaiters, []
        for d in waiters:
            d.callback(None)

    def whenLost(self) -> Deferred:
        """
        @return: a L{Deferred} that fires once the connection is lost.
        """
        if self.isLost:
            return succeed(None)
        d: Deferred = Deferred()
        self._lostWaiters.append(d)
        return d


class _HostFactory(Factory):
    noisy = False

    def __init__(self, sim: "VMSim") -> None:
        self._sim = sim

    def buildProtocol(self, addr: Any) -> _HostClient:
        return _HostClient(self._sim)


class VMSim:
    """
    One simulated virtio-console port: a unix socket for the host, a pty
    (linked at C{deviceLink}) for the guest.

    @ivar mode: C{"bhyve"} or C{"qemu"}.
    @ivar guestBuffer: bhyve: the guest's input queue in bytes; host data that
        would overflow it is discarded. qemu: how many host bytes may wait
        for the guest before the client's socket stops being read.
    @ivar faults: the L{Faults} in force.
    @ivar injector: the L{FaultInjector} applying them (see its C{stats}).
    @ivar counters: the L{Counters}.
    @ivar ptyPath: the pty slave's path once started (the link's target).
    @ivar holdLimit: qemu: guest output held while no client is connected
        before the pty stops being read.
    """

    holdLimit = 65536

    def __init__(
        self,
        reactor: Any,
        socketPath: str,
        deviceLink: str,
        mode: str = BHYVE,
        guestBuffer: int = DEFAULT_GUEST_BUFFER,
        faults: Optional[Faults] = None,
    ) -> None:
        """
        @param reactor: the reactor (L{IReactorUNIX}, L{IReactorFDSet},
            L{IReactorTime}).
        @param socketPath: where to create the host's unix socket.
        @param deviceLink: where to create the symlink to the pty slave.
        @param mode: C{"bhyve"} or C{"qemu"}.
        @param guestBuffer: see C{guestBuffer} above; must be positive.
        @param faults: the L{Faults} to inject, or L{None} for none.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if guestBuffer < 1:
            raise ValueError(f"guestBuffer must be positive, got {guestBuffer!r}")
        self._reactor = reactor
        self.socketPath = socketPath
        self.deviceLink = deviceLink
        self.mode = mode
        self.guestBuffer = guestBuffer
        self.faults = faults if faults is not None else Faults()
        self.injector = FaultInjector(self.faults)
        self.counters = Counters()
        self.ptyPath: Optional[str] = None
        self._state = "new"
        self._port: Any = None
        self._pty: Optional[_PtyMaster] = None
        self._slave = -1
        self._linked = False
        self._current: Optional[_HostClient] = None
        self._queue: Deque[_HostClient] = deque()
        self._clients: Set[_HostClient] = set()
        self._clientNumber = 0
        self._held: List[bytes] = []
        self._heldBytes = 0
        self._consumedMark = 0
        self._stopWaiters: List[Deferred] = []

    @property
    def hostConnected(self) -> bool:
        """
        Whether a host client is being served.
        """
        return self._current is not None

    @property
    def clientsWaiting(self) -> int:
        """
        How many host clients wait their turn (qemu mode).
        """
        return len(self._queue)

    # Starting and stopping.

    def start(self) -> None:
        """
        Create the pty, the device link and the listening socket. When this
        returns, clients can connect and the guest can open the link.

        @raise SimError: if any of them cannot be created; nothing is left
            behind then.
        """
        if self._state != "new":
            raise RuntimeError("VMSim.start() may be called only once")
        self._state = "starting"
        try:
            self._prepareSocketPath()
            self._openPty()
            self._makeLink()
            self._listen()
        except BaseException:
            self._closePty()
            self._removeLink()
            self._state = "stopped"
            raise
        self._state = "running"
        _log.info(
            "{mode} console: host socket {socket}, guest device {link} -> {pty}",
            mode=self.mode,
            socket=self.socketPath,
            link=self.deviceLink,
            pty=self.ptyPath,
        )

    def stop(self) -> Deferred:
        """
        Close the socket, every client and the pty; remove the socket file
        and the device link.

        @return: a L{Deferred} that fires with L{None} when all is closed.
        """
        if self._state == "stopped":
            return succeed(None)
        d: Deferred = Deferred()
        self._stopWaiters.append(d)
        if self._state == "stopping":
            return d
        self._state = "stopping"
        waits = []
        if self._port is not None:
            waits.append(maybeDeferred(self._port.stopListening))
            self._port = None
        self._closePty()
        self._queue.clear()
        self._current = None
        for client in list(self._clients):
            waits.append(client.whenLost())
            client.transport.abortConnection()
        gatherResults(waits, consumeErrors=True).addBoth(self._stopped)
        return d

    def _stopped(self, result: Any) -> None:
        self._removeLink()
        self._state = "stopped"
        _log.info("{mode} console {socket} stopped", mode=self.mode, socket=self.socketPath)
        waiters, self._stopWaiters = self._stopWaiters, []
        for d in waiters:
            d.callback(None)

    def _prepareSocketPath(self) -> None:
        path = self.socketPath
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as e:
            raise SimError(f"cannot use socket path {path}: {e.strerror}") from e
        if not stat.S_ISSOCK(st.st_mode):
            raise SimError(f"{path} exists and is not a socket; not touching it")
        if self.mode == BHYVE:
            raise SimError(
                f"socket {path} already exists (bhyve never unlinks a stale "
                f"socket: remove it, or use --mode qemu)"
            )
        try:
            os.unlink(path)
        except OSError as e:
            raise SimError(f"cannot remove stale socket {path}: {e.strerror}") from e
        _log.info("removed stale socket {socket}", socket=path)

    def _openPty(self) -> None:
        master, slave = os.openpty()
        os.set_blocking(master, False)
        self._slave = slave
        self.ptyPath = os.ttyname(slave)
        self._pty = _PtyMaster(self._reactor, master, self._fromGuest)
        self._pty.bufferSize = self.guestBuffer
        self._pty.startReading()

    def _closePty(self) -> None:
        if self._pty is not None:
            self._pty.close()
            self._pty = None
        if self._slave >= 0:
            os.close(self._slave)
            self._slave = -1

    def _makeLink(self) -> None:
        link = self.deviceLink
        assert self.ptyPath is not None
        try:
            st: Optional[os.stat_result] = os.lstat(link)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise SimError(f"cannot use device link {link}: {e.strerror}") from e
        if st is not None and not stat.S_ISLNK(st.st_mode):
            raise SimError(f"device link {link} exists and is not a symlink; not touching it")
        temporary = f"{link}.{os.getpid()}.tmp"
        try:
            os.symlink(self.ptyPath, temporary)
            os.replace(temporary, link)
        except OSError as e:
            raise SimError(f"cannot create device link {link}: {e.strerror}") from e
        self._linked = True

    def _removeLink(self) -> None:
        if not self._linked:
            return
        self._linked = False
        try:
            if os.readlink(self.deviceLink) == self.ptyPath:
                os.unlink(self.deviceLink)
        except OSError:
            pass

    def _listen(self) -> None:
        try:
            self._port = self._reactor.listenUNIX(
                self.socketPath, _HostFactory(self), mode=0o600
            )
        except CannotListenError as e:
            reason = e.socketError
            if isinstance(reason, OSError) and reason.strerror:
                reason = reason.strerror
            raise SimError(f"cannot listen on {self.socketPath}: {reason}") from e

    # Host clients.

    def _clientConnected(self, client: _HostClient) -> None:
        self._clientNumber += 1
        client.number = self._clientNumber
        if self._state != "running":
            client.transport.abortConnection()
            return
        self._clients.add(client)
        if self._current is None:
            self._attach(client)
        elif self.mode == BHYVE:
            self.counters.clientsRefused += 1
            client.refused = True
            _log.info(
                "client {n} refused: client {current} is connected (bhyve serves one)",
                n=client.number,
                current=self._current.number,
            )
            client.transport.loseConnection()
        else:
            self.counters.clientsQueued += 1
            client.transport.pauseProducing()
            self._queue.append(client)
            _log.info(
                "client {n} queued behind client {current} ({waiting} waiting)",
                n=client.number,
                current=self._current.number,
                waiting=len(self._queue),
            )

    def _attach(self, client: _HostClient) -> None:
        assert self._pty is not None
        self._current = client
        self.counters.clientsServed += 1
        self.injector.newConnection()
        _log.info("client {n} connected", n=client.number)
        client.transport.registerProducer(_PauseFor(self._pty, "host-stalled"), True)
        if self.mode == QEMU:
            self._pty.registerProducer(client.transport, True)
            client.transport.resumeProducing()
            held = self._takeHeld()
            if held:
                self._toHost(held)

    def _detach(self, client: _HostClient) -> None:
        self._current = None
        client.transport.unregisterProducer()
        if self._pty is None:
            return
        if self._pty.producer is client.transport:
            self._pty.unregisterProducer()
        self._pty.resumeFor("host-stalled")
        if self._queue:
            self._attach(self._queue.popleft())

    def _clientLost(self, client: _HostClient, reason: Failure) -> None:
        self._clients.discard(client)
        if client is self._current:
            _log.info(
                "client {n} disconnected: {why}",
                n=client.number,
                why=reason.getErrorMessage(),
            )
            self._detach(client)
        elif client in self._queue:
            self._queue.remove(client)
            _log.info("queued client {n} left", n=client.number)

    def _cut(self, client: _HostClient) -> None:
        self.counters.cuts += 1
        client.cut = True
        _log.info(
            "client {n} cut (--cut-every {every})",
            n=client.number,
            every=self.faults.cutEvery,
        )
        self._detach(client)
        client.transport.loseConnection()

    # Host to guest.

    def _fromHost(self, client: _HostClient, data: bytes) -> None:
        if client is not self._current:
            return
        self.counters.bytesFromHost += len(data)
        cut = self.injector.cutPoint(len(data))
        if cut is not None:
            data = data[:cut]
        data = self.injector.mangle(TO_GUEST, data)
        if data:
            self._toGuest(data)
        if cut is not None:
            self._cut(client)

    def _toGuest(self, data: bytes) -> None:
        assert self._pty is not None
        if self.mode == QEMU:
            self.counters.bytesToGuest += len(data)
            self._pty.write(data)
            return
        unread = self.guestUnread()
        kept = []
        for start in range(0, len(data), RING_DISCARD_CHUNK):
            piece = data[start : start + RING_DISCARD_CHUNK]
            if unread + len(piece) > self.guestBuffer:
                self.counters.ringDropped += len(piece)
            else:
                kept.append(piece)
                unread += len(piece)
        if kept:
            accepted = b"".join(kept)
            self.counters.bytesToGuest += len(accepted)
            self._pty.write(accepted)

    def guestUnread(self) -> int:
        """
        Estimate the host bytes the guest has not read yet: those queued in
        the simulator plus those in the pty (see the module docstring).
        """
        pty = self._pty
        if pty is None:
            return 0
        inq = _unreadInput(self._slave)
        written = pty.bytesWritten
        if inq < _TTY_FULL_MARK:
            self._consumedMark = written - inq
            inKernel = inq
        else:
            inKernel = max(inq, written - self._consumedMark)
        return inKernel + pty.pending

    # Guest to host.

    def _fromGuest(self, data: bytes) -> None:
        self.counters.bytesFromGuest += len(data)
        self._toHost(data)

    def _toHost(self, data: bytes) -> None:
        while data:
            client = self._current
            if client is None:
                if self.mode == BHYVE:
                    self.counters.noClientDropped += len(data)
                else:
                    self._hold(data)
                return
            cut = self.injector.cutPoint(len(data))
            if cut is None:
                piece, data = data, b""
            else:
                piece, data = data[:cut], data[cut:]
            out = self.injector.mangle(TO_HOST, piece)
            if out:
                self.counters.bytesToHost += len(out)
                client.transport.write(out)
            if cut is not None:
                self._cut(client)

    def _hold(self, data: bytes) -> None:
        self._held.append(data)
        self._heldBytes += len(data)
        if self._heldBytes >= self.holdLimit and self._pty is not None:
            self._pty.pauseFor("held")

    def _takeHeld(self) -> bytes:
        held = b"".join(self._held)
        self._held = []
        self._heldBytes = 0
        if self._pty is not None:
            self._pty.resumeFor("held")
        return held


# The command line.


def _positiveInt(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _nonNegativeInt(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def makeParser() -> argparse.ArgumentParser:
    """
    @return: the C{prokshy-vmsim} argument parser.
    """
    parser = argparse.ArgumentParser(
        prog="prokshy-vmsim",
        description=(
            "Simulate one bhyve (or QEMU) virtio-console port: a unix socket\n"
            "for the host and a pty, linked at --device-link, for the guest.\n"
            "The pty is left cooked. Serves until SIGINT or SIGTERM."
        ),
        epilog=FAULT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--socket", required=True, metavar="PATH", help="the host's unix socket to create")
    add(
        "--device-link",
        required=True,
        metavar="PATH",
        help="symlink to create to the pty slave (the guest's device)",
    )
    add("--mode", choices=MODES, default=BHYVE, help="channel semantics (default: %(default)s)")
    add(
        "--guest-buffer",
        type=_positiveInt,
        default=DEFAULT_GUEST_BUFFER,
        metavar="BYTES",
        help="bhyve: the guest's input queue; host data beyond it is discarded. "
        "qemu: host bytes that may wait for the guest (default: %(default)s)",
    )
    faults = parser.add_argument_group("fault injection (see below)")
    add = faults.add_argument
    add("--seed", type=_int, default=0, metavar="N", help="random seed (default: %(default)s)")
    add("--drop-rate", type=_rate, default=0.0, metavar="R", help="probability a chunk is dropped")
    add(
        "--corrupt-rate",
        type=_rate,
        default=0.0,
        metavar="R",
        help="probability a byte gets a bit flipped",
    )
    add(
        "--dup-rate",
        type=_rate,
        default=0.0,
        metavar="R",
        help="probability a chunk is sent twice",
    )
    add(
        "--cut-every",
        type=_nonNegativeInt,
        default=0,
        metavar="N",
        help="close the host connection every N bytes (0: never)",
    )
    add(
        "--fault-chunk",
        type=_positiveInt,
        default=512,
        metavar="BYTES",
        help="chunk size for drops and duplicates (default: %(default)s)",
    )
    add(
        "--fault-direction",
        choices=DIRECTIONS,
        default=BOTH,
        help="direction of drops, duplicates and corruption (default: %(default)s)",
    )
    return parser


def faultsFromArgs(args: argparse.Namespace) -> Faults:
    """
    @param args: parsed by L{makeParser}.
    @return: the L{Faults} they ask for.
    """
    return Faults(
        seed=args.seed,
        dropRate=args.drop_rate,
        corruptRate=args.corrupt_rate,
        dupRate=args.dup_rate,
        cutEvery=args.cut_every,
        chunk=args.fault_chunk,
        direction=args.fault_direction,
    )


def main(argv: Optional[List[str]] = None) -> int:
    """
    Run C{prokshy-vmsim} until SIGINT or SIGTERM.

    @param argv: the arguments, without the program name; C{sys.argv[1:]}
        if L{None}.
    @return: 0 after a clean shutdown, 1 if the simulator could not start.
        Usage errors exit with status 2 (C{SystemExit}).
    """
    args = makeParser().parse_args(argv)
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    sim = VMSim(
        reactor,
        args.socket,
        args.device_link,
        mode=args.mode,
        guestBuffer=args.guest_buffer,
        faults=faultsFromArgs(args),
    )
    try:
        sim.start()
    except SimError as e:
        print(f"prokshy-vmsim: error: {e}", file=sys.stderr)
        return 1
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stderr)], redirectStandardIO=False
    )
    reactor.addSystemEventTrigger("before", "shutdown", sim.stop)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
