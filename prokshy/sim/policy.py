# -*- test-case-name: tests.system.test_vmsim -*-
"""
The channel semantics of the simulated console port: what bhyve does, and
what QEMU does, where they differ.  L{prokshy.sim.vmsim.VMSim} does the
plumbing (socket, pty, link, faults) and asks its policy
(L{IChannelPolicy}) at each point where the two differ.

C{bhyve} mode (L{BhyvePolicy}; see the channel-semantics notes, section 2):
  - one host client at a time; a second one is accepted and closed at once;
  - guest output made while no client is connected is dropped (counted);
  - host input is discarded, in chunks of up to L{RING_DISCARD_CHUNK} bytes,
    when the bytes the guest has not read yet would exceed the guest buffer
    (the FreeBSD tty input queue, 23040 bytes at 115200 baud); there is no
    backpressure;
  - the guest is never told that the host left;
  - a stale socket file makes start fail (bhyve never unlinks);
  - a host client that stops reading stalls guest output.

C{qemu} mode (L{QemuPolicy}):
  - extra clients wait their turn (queued, not closed);
  - nothing is dropped: host input waits while the guest side is full, and
    guest output made while no client is connected is held (bounded by
    C{VMSim.holdLimit}; beyond that the guest's writes block) and delivered
    to the next client;
  - a stale socket file is unlinked and recreated.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Deque, List, Optional

from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

__all__ = [
    "BHYVE",
    "DEFAULT_GUEST_BUFFER",
    "MODES",
    "QEMU",
    "RING_DISCARD_CHUNK",
    "BhyvePolicy",
    "IChannelPolicy",
    "QemuPolicy",
    "policyFor",
]

BHYVE = "bhyve"
QEMU = "qemu"
MODES = (BHYVE, QEMU)

#: The FreeBSD tty input queue at 115200 baud: C{MIN(speed / 5, TTYBUF_MAX)}.
DEFAULT_GUEST_BUFFER = 23040

#: bhyve discards host data in reads of up to this many bytes when the ring is full.
RING_DISCARD_CHUNK = 2048

_log = Logger()


class IChannelPolicy(Interface):
    """
    Where bhyve and QEMU differ.  Each policy serves one
    L{prokshy.sim.vmsim.VMSim} (its C{sim}): it uses the sim's C{counters},
    C{guestBuffer}, C{holdLimit}, its pty (C{sim.pty}) and C{sim.toHost}.
    """

    mode = Attribute("The mode's name: 'bhyve' or 'qemu'.")
    replacesStaleSocket = Attribute(
        "Whether a stale socket file is unlinked (qemu) rather than refused (bhyve)."
    )
    waiting = Attribute("How many host clients wait their turn.")

    def anotherClient(client: Any, current: Any) -> None:
        """
        C{client} connected while C{current} is served.
        """

    def attached(client: Any) -> None:
        """
        C{client} is served now.
        """

    def nextClient() -> Optional[Any]:
        """
        The served client left: the one to serve next, or L{None}.
        """

    def clientLeft(client: Any) -> bool:
        """
        C{client}, not served, went away.

        @return: whether it was waiting its turn.
        """

    def toGuest(data: bytes) -> None:
        """
        Host bytes (after faults) for the guest.
        """

    def noClient(data: bytes) -> None:
        """
        Guest bytes while no host client is served.
        """

    def stop() -> None:
        """
        The simulator stops: forget the waiting clients.
        """


@implementer(IChannelPolicy)
class BhyvePolicy:
    """
    bhyve's virtio-console: one client, a ring that drops what does not fit,
    guest output with no client dropped.
    """

    mode = BHYVE
    replacesStaleSocket = False
    waiting = 0

    def __init__(self, sim: Any) -> None:
        self.sim = sim

    def anotherClient(self, client: Any, current: Any) -> None:
        self.sim.counters.clientsRefused += 1
        client.refused = True
        _log.info(
            "client {n} refused: client {current} is connected (bhyve serves one)",
            n=client.number,
            current=current.number,
        )
        client.transport.loseConnection()

    def attached(self, client: Any) -> None:
        pass

    def nextClient(self) -> Optional[Any]:
        return None

    def clientLeft(self, client: Any) -> bool:
        return False

    def toGuest(self, data: bytes) -> None:
        sim = self.sim
        unread = sim.guestUnread()
        kept = []
        for start in range(0, len(data), RING_DISCARD_CHUNK):
            piece = data[start : start + RING_DISCARD_CHUNK]
            if unread + len(piece) > sim.guestBuffer:
                sim.counters.ringDropped += len(piece)
            else:
                kept.append(piece)
                unread += len(piece)
        if kept:
            accepted = b"".join(kept)
            sim.counters.bytesToGuest += len(accepted)
            sim.pty.feed(accepted)

    def noClient(self, data: bytes) -> None:
        self.sim.counters.noClientDropped += len(data)

    def stop(self) -> None:
        pass


@implementer(IChannelPolicy)
class QemuPolicy:
    """
    QEMU's chardev socket: clients queue, nothing is dropped, guest output
    with no client is held for the next one.
    """

    mode = QEMU
    replacesStaleSocket = True

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self._queue: Deque[Any] = deque()
        self._held: List[bytes] = []
        self._heldBytes = 0

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def anotherClient(self, client: Any, current: Any) -> None:
        self.sim.counters.clientsQueued += 1
        client.transport.pauseProducing()
        self._queue.append(client)
        _log.info(
            "client {n} queued behind client {current} ({waiting} waiting)",
            n=client.number,
            current=current.number,
            waiting=len(self._queue),
        )

    def attached(self, client: Any) -> None:
        # Backpressure both ways: the pty is read only as fast as the
        # client's socket takes it, and the client's socket read only as
        # fast as the pty takes it.
        self.sim.pty.master.registerProducer(client.transport, True)
        client.transport.resumeProducing()
        held = self._takeHeld()
        if held:
            self.sim.toHost(held)

    def nextClient(self) -> Optional[Any]:
        return self._queue.popleft() if self._queue else None

    def clientLeft(self, client: Any) -> bool:
        if client in self._queue:
            self._queue.remove(client)
            return True
        return False

    def toGuest(self, data: bytes) -> None:
        self.sim.counters.bytesToGuest += len(data)
        self.sim.pty.master.write(data)

    def noClient(self, data: bytes) -> None:
        self._held.append(data)
        self._heldBytes += len(data)
        if self._heldBytes >= self.sim.holdLimit and self.sim.pty is not None:
            self.sim.pty.master.pauseFor("held")

    def _takeHeld(self) -> bytes:
        held = b"".join(self._held)
        self._held = []
        self._heldBytes = 0
        if self.sim.pty is not None:
            self.sim.pty.master.resumeFor("held")
        return held

    def stop(self) -> None:
        self._queue.clear()


_POLICIES = {BHYVE: BhyvePolicy, QEMU: QemuPolicy}


def policyFor(mode: str, sim: Any) -> IChannelPolicy:
    """
    @return: the policy for C{mode} serving C{sim}.
    @raise ValueError: for an unknown mode.
    """
    try:
        policy = _POLICIES[mode]
    except KeyError:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}") from None
    return policy(sim)
