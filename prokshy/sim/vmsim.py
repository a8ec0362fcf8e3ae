# -*- test-case-name: tests.system.test_vmsim -*-
"""
prokshy-vmsim: a bhyve-faithful simulator of one virtio-console port.

The host side is a unix socket, as bhyve's
C{-s N,virtio-console,prokshy=PATH} creates. The guest side is a pty whose
slave is symlinked at the device link; the guest agent opens that path as it
would open C{/dev/vtcon/prokshy}.

The simulator is in four parts:

  - this module: L{VMSim}, the plumbing (the host socket and its clients,
    the device link, the faults, the counters);
  - L{prokshy.sim.pty}: the guest's side, a cooked pty, and the estimate of
    what the guest has not read yet;
  - L{prokshy.sim.policy}: the channel semantics of C{bhyve} mode and
    C{qemu} mode, where they differ (one client or a queue, a ring that
    drops or backpressure, guest output dropped or held while no client is
    connected, a stale socket refused or replaced);
  - L{prokshy.sim.cli}: the C{prokshy-vmsim} command line (L{main}, offered
    here too, is the console script's entry point).

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

import os
import stat
import sys
from typing import Any, List, Optional, Set

from attrs import asdict, define
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from prokshy.sim.cli import faultsFromArgs, main, makeParser
from prokshy.sim.faults import TO_GUEST, TO_HOST, FaultInjector, Faults
from prokshy.sim.policy import (
    BHYVE,
    DEFAULT_GUEST_BUFFER,
    MODES,
    QEMU,
    RING_DISCARD_CHUNK,
    IChannelPolicy,
    policyFor,
)
from prokshy.sim.pty import READ_SIZE, GuestPty, PauseFor

__all__ = [
    "BHYVE",
    "QEMU",
    "MODES",
    "DEFAULT_GUEST_BUFFER",
    "RING_DISCARD_CHUNK",
    "READ_SIZE",
    "Counters",
    "Faults",
    "SimError",
    "VMSim",
    "faultsFromArgs",
    "main",
    "makeParser",
]

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
    @ivar policy: the mode's L{IChannelPolicy}.
    @ivar guestBuffer: bhyve: the guest's input queue in bytes; host data that
        would overflow it is discarded. qemu: how many host bytes may wait
        for the guest before the client's socket stops being read.
    @ivar faults: the L{Faults} in force.
    @ivar injector: the L{FaultInjector} applying them (see its C{stats}).
    @ivar counters: the L{Counters}.
    @ivar pty: the L{GuestPty} while running, else L{None}.
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
        if guestBuffer < 1:
            raise ValueError(f"guestBuffer must be positive, got {guestBuffer!r}")
        self.policy: IChannelPolicy = policyFor(mode, self)
        self._reactor = reactor
        self.socketPath = socketPath
        self.deviceLink = deviceLink
        self.mode = mode
        self.guestBuffer = guestBuffer
        self.faults = faults if faults is not None else Faults()
        self.injector = FaultInjector(self.faults)
        self.counters = Counters()
        self.pty: Optional[GuestPty] = None
        self.ptyPath: Optional[str] = None
        self._state = "new"
        self._port: Any = None
        self._linked = False
        self._current: Optional[_HostClient] = None
        self._clients: Set[_HostClient] = set()
        self._clientNumber = 0
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
        return self.policy.waiting

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
            self.pty = GuestPty(self._reactor, self._fromGuest, self.guestBuffer)
            self.ptyPath = self.pty.path
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
        self.policy.stop()
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
        if not self.policy.replacesStaleSocket:
            raise SimError(
                f"socket {path} already exists (bhyve never unlinks a stale "
                f"socket: remove it, or use --mode qemu)"
            )
        try:
            os.unlink(path)
        except OSError as e:
            raise SimError(f"cannot remove stale socket {path}: {e.strerror}") from e
        _log.info("removed stale socket {socket}", socket=path)

    def _closePty(self) -> None:
        if self.pty is not None:
            self.pty.close()
            self.pty = None

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
        else:
            self.policy.anotherClient(client, self._current)

    def _attach(self, client: _HostClient) -> None:
        assert self.pty is not None
        self._current = client
        self.counters.clientsServed += 1
        self.injector.newConnection()
        _log.info("client {n} connected", n=client.number)
        client.transport.registerProducer(PauseFor(self.pty.master, "host-stalled"), True)
        self.policy.attached(client)

    def _detach(self, client: _HostClient) -> None:
        self._current = None
        client.transport.unregisterProducer()
        if self.pty is None:
            return
        master = self.pty.master
        if master.producer is client.transport:
            master.unregisterProducer()
        master.resumeFor("host-stalled")
        following = self.policy.nextClient()
        if following is not None:
            self._attach(following)

    def _clientLost(self, client: _HostClient, reason: Failure) -> None:
        self._clients.discard(client)
        if client is self._current:
            _log.info(
                "client {n} disconnected: {why}",
                n=client.number,
                why=reason.getErrorMessage(),
            )
            self._detach(client)
        elif self.policy.clientLeft(client):
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
            assert self.pty is not None
            self.policy.toGuest(data)
        if cut is not None:
            self._cut(client)

    def guestUnread(self) -> int:
        """
        Estimate the host bytes the guest has not read yet: those queued in
        the simulator plus those in the pty (see L{prokshy.sim.pty}).
        """
        if self.pty is None:
            return 0
        return self.pty.unread()

    # Guest to host.

    def _fromGuest(self, data: bytes) -> None:
        self.counters.bytesFromGuest += len(data)
        self.toHost(data)

    def toHost(self, data: bytes) -> None:
        """
        Send guest bytes to the host client being served, through the
        faults; with no client, the policy decides (drop or hold).
        """
        while data:
            client = self._current
            if client is None:
                self.policy.noClient(data)
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


if __name__ == "__main__":
    sys.exit(main())
