# -*- test-case-name: tests.unit.test_faults -*-
"""
Seeded fault injection for the channel simulator: pure logic, no I/O.

L{Faults} is the configuration, L{FaultInjector} applies it to the bytes that
flow through L{prokshy.sim.vmsim.VMSim}. The semantics, also shown by
C{prokshy-vmsim --help}, are in L{FAULT_HELP}.

All randomness comes from C{random.Random(seed)}: it draws one 64-bit seed
for each direction, and each direction then uses its own C{random.Random}, so
the faults of one direction do not depend on how the two directions
interleave. The same seed and the same sequence of calls give the same
output, byte for byte.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Dict, Optional

from attrs import Attribute, define, field, frozen, validators

TO_GUEST = "to-guest"
TO_HOST = "to-host"
BOTH = "both"
DIRECTIONS = (BOTH, TO_GUEST, TO_HOST)

FAULT_HELP = """\
fault injection (all off by default; every run with the same --seed repeats):
  Data flowing in a faulted direction (--fault-direction) is cut into chunks
  of at most --fault-chunk bytes, as it arrives. Each chunk is dropped with
  probability --drop-rate, or else sent twice with probability --dup-rate.
  Then each byte that is sent has probability --corrupt-rate of getting one
  random bit flipped (a duplicated chunk's two copies are corrupted
  independently).
  --cut-every N closes the host connection once N bytes (host-to-guest plus
  guest-to-host, counted as they cross the host socket, before the other
  faults) have passed through it; the bytes beyond the N-th are not
  delivered on that connection. The count restarts with every connection and
  ignores --fault-direction.
  All randomness comes from random.Random(--seed).
"""


def _rate(instance: object, attribute: Attribute, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value!r}")


def _atLeast(minimum: int) -> Callable[[object, Attribute, int], None]:
    def check(instance: object, attribute: Attribute, value: int) -> None:
        if value < minimum:
            raise ValueError(f"{attribute.name} must be at least {minimum}, got {value!r}")

    return check


@frozen
class Faults:
    """
    What faults to inject; see L{FAULT_HELP}.

    @ivar seed: seed of the C{random.Random} all randomness comes from.
    @ivar dropRate: probability that a chunk is dropped.
    @ivar corruptRate: probability that a byte gets one random bit flipped.
    @ivar dupRate: probability that a chunk that was not dropped is sent twice.
    @ivar cutEvery: close the host connection after this many bytes through
        it, both ways together; 0 never cuts.
    @ivar chunk: the largest chunk, in bytes, for drops and duplicates.
    @ivar direction: C{"both"}, C{"to-guest"} or C{"to-host"}: which
        direction drops, duplicates and corruption apply to.
    """

    seed: int = field(default=0, validator=validators.instance_of(int))
    dropRate: float = field(default=0.0, converter=float, validator=_rate)
    corruptRate: float = field(default=0.0, converter=float, validator=_rate)
    dupRate: float = field(default=0.0, converter=float, validator=_rate)
    cutEvery: int = field(
        default=0, validator=[validators.instance_of(int), _atLeast(0)]
    )
    chunk: int = field(default=512, validator=[validators.instance_of(int), _atLeast(1)])
    direction: str = field(default=BOTH, validator=validators.in_(DIRECTIONS))

    def affects(self, direction: str) -> bool:
        """
        @param direction: L{TO_GUEST} or L{TO_HOST}.
        @return: whether drops, duplicates and corruption apply to C{direction}.
        """
        return self.direction in (BOTH, direction)

    @property
    def mangles(self) -> bool:
        """
        Whether any of drop, duplicate or corrupt is on.
        """
        return bool(self.dropRate or self.dupRate or self.corruptRate)


@define
class FaultStats:
    """
    What a L{FaultInjector} did to one direction.
    """

    chunksDropped: int = 0
    bytesDropped: int = 0
    chunksDuplicated: int = 0
    bytesDuplicated: int = 0
    bitsFlipped: int = 0


class FaultInjector:
    """
    Applies L{Faults} to byte strings. No I/O, no clock: the output depends
    only on the L{Faults} (seed included) and on the sequence of calls.

    @ivar faults: the L{Faults}.
    @ivar stats: a L{FaultStats} for each of L{TO_GUEST} and L{TO_HOST}.
    @ivar cuts: how many times L{cutPoint} asked for a cut.
    """

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        master = random.Random(faults.seed)
        self._rngs: Dict[str, random.Random] = {
            TO_GUEST: random.Random(master.getrandbits(64)),
            TO_HOST: random.Random(master.getrandbits(64)),
        }
        # Uncorrupted bytes left before the next corrupted one, per direction.
        self._gaps: Dict[str, Optional[int]] = {TO_GUEST: None, TO_HOST: None}
        self._sinceCut = 0
        self.stats = {TO_GUEST: FaultStats(), TO_HOST: FaultStats()}
        self.cuts = 0

    def newConnection(self) -> None:
        """
        A host connection starts: restart the C{cutEvery} count.
        """
        self._sinceCut = 0

    def cutPoint(self, length: int) -> Optional[int]:
        """
        Account for C{length} bytes crossing the host socket.

        @return: L{None} if all of them pass and the connection stays open;
            otherwise the number of them (at most C{length}) that pass before
            the connection must be closed. The count then restarts.
        """
        every = self.faults.cutEvery
        if not every:
            return None
        room = every - self._sinceCut
        if length < room:
            self._sinceCut += length
            return None
        self._sinceCut = 0
        self.cuts += 1
        return room

    def mangle(self, direction: str, data: bytes) -> bytes:
        """
        Drop, duplicate and corrupt C{data} flowing in C{direction}.

        @param direction: L{TO_GUEST} or L{TO_HOST}.
        @return: what to deliver instead of C{data}.
        """
        faults = self.faults
        if not data or not faults.mangles or not faults.affects(direction):
            return data
        if faults.dropRate or faults.dupRate:
            data = self._dropAndDuplicate(direction, data)
        if faults.corruptRate and data:
            data = self._corrupt(direction, data)
        return data

    def _dropAndDuplicate(self, direction: str, data: bytes) -> bytes:
        faults = self.faults
        rng = self._rngs[direction]
        stats = self.stats[direction]
        out = []
        for start in range(0, len(data), faults.chunk):
            piece = data[start : start + faults.chunk]
            if faults.dropRate and rng.random() < faults.dropRate:
                stats.chunksDropped += 1
                stats.bytesDropped += len(piece)
                continue
            out.append(piece)
            if faults.dupRate and rng.random() < faults.dupRate:
                stats.chunksDuplicated += 1
                stats.bytesDuplicated += len(piece)
                out.append(piece)
        return b"".join(out)

    def _corrupt(self, direction: str, data: bytes) -> bytes:
        rate = self.faults.corruptRate
        rng = self._rngs[direction]
        gap = self._gaps[direction]
        if gap is None:
            gap = _geometric(rng, rate)
        if gap >= len(data):
            self._gaps[direction] = gap - len(data)
            return data
        buf = bytearray(data)
        index = gap
        flipped = 0
        while index < len(buf):
            buf[index] ^= 1 << rng.randrange(8)
            flipped += 1
            index += 1 + _geometric(rng, rate)
        self._gaps[direction] = index - len(buf)
        self.stats[direction].bitsFlipped += flipped
        return bytes(buf)


def _geometric(rng: random.Random, rate: float) -> int:
    """
    How many bytes pass before the next corrupted one, when each byte is
    corrupted with probability C{rate}: P(k) = (1 - rate) ** k * rate. One
    draw per corrupted byte instead of one per byte.
    """
    if rate >= 1.0:
        return 0
    return int(math.log(1.0 - rng.random()) / math.log1p(-rate))
