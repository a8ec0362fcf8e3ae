# -*- test-case-name: tests.system.test_guest_reaper -*-
"""
The process table, and finding a command's descendants in it.

A command runs in its own process group, but a descendant that calls
C{setsid()} (or C{setpgid()}) leaves the group, and a signal to the group
misses it.  On B{Linux} a command's tree is found in C{/proc}
(L{findTree}): its process group, the descendants of the command
(C{ppid} chains), and any process that still holds one of the command's
stdio pipes (an escapee whose parent has died), with their descendants.
Each is signalled with L{signalVerified}: through a pidfd after checking
its start time, so that a pid reused in the meantime is never signalled.
A descendant that has closed the command's stdio, left its session I{and}
lost its parent has detached on purpose (a daemon started by the
command); Linux offers no way short of cgroups to tie it to its command,
and it is left alone.  Without C{/proc} the table comes from ps(1).

Start times are seconds since boot, on the clock of L{systemUptime}.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from typing import Dict, Iterable, List, Optional, Set, Tuple

import attr

from prokshy.guest.subreaper import FREEBSD, LINUX, isSubreaper

__all__ = [
    "FREEBSD",
    "LINUX",
    "PS_TOLERANCE",
    "Proc",
    "ProcessTable",
    "findTree",
    "haveProc",
    "pipeHolders",
    "pipeInodes",
    "processStart",
    "signalVerified",
    "systemUptime",
]

#: Seconds two start times read through ps(1) may differ by and still name
#: the same process (ps gives whole seconds of elapsed time).
PS_TOLERANCE = 2.0


def systemUptime() -> Optional[float]:
    """
    Seconds since boot, from C{clock_gettime}: C{CLOCK_BOOTTIME} (Linux,
    counting suspend) or C{CLOCK_UPTIME} (FreeBSD).  No file, no process.

    @return: the seconds, or C{None} if this OS has neither clock.
    """
    for name in ("CLOCK_BOOTTIME", "CLOCK_UPTIME"):
        clock = getattr(time, name, None)
        if clock is None:
            continue
        try:
            return time.clock_gettime(clock)
        except OSError:
            continue
    return None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Proc:
    """
    One process: its parent, group, state letter (C{"Z"}: zombie) and start
    time in seconds since boot.
    """

    pid: int
    ppid: int
    pgid: int
    state: str
    start: float


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _parseStat(pid: int, data: bytes) -> Proc:
    fields = data[data.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state) of proc(5); starttime is field 22.
    return Proc(
        pid,
        int(fields[1]),
        int(fields[2]),
        fields[0].decode("ascii", "replace"),
        int(fields[19]) / _CLOCK_TICKS,
    )


def _readStat(pid: int) -> Optional[Proc]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return _parseStat(pid, f.read())
    except (OSError, ValueError, IndexError):
        return None


def _haveProc() -> bool:
    return LINUX and os.path.exists("/proc/self/stat")


def haveProc() -> bool:
    """
    Whether this is Linux with C{/proc} mounted (exact start times, cheap
    process tables).
    """
    return _haveProc()


def processStart(pid: int) -> Optional[float]:
    """
    When process C{pid} started, in seconds since boot: exact, from
    C{/proc} (Linux), or C{None} where that cannot be read cheaply.
    """
    if not _haveProc():
        return None
    info = _readStat(pid)
    return None if info is None else info.start


class ProcessTable:
    """
    A snapshot of the processes: C{/proc} on Linux, ps(1) elsewhere.

    @ivar procs: pid -> L{Proc}.
    @ivar tolerance: seconds by which start times of the same process may
        differ (0 for C{/proc}).
    """

    def __init__(self, procs: Dict[int, Proc], tolerance: float) -> None:
        self.procs = procs
        self.tolerance = tolerance

    @classmethod
    def read(cls, useProc: Optional[bool] = None) -> "ProcessTable":
        """
        Read the table (C{/proc} if available unless C{useProc} is false).

        @raise OSError: if neither C{/proc} nor ps(1) can be read.
        """
        if useProc is None:
            useProc = _haveProc()
        if useProc:
            procs = {}
            for name in os.listdir("/proc"):
                if name.isdigit():
                    info = _readStat(int(name))
                    if info is not None:
                        procs[info.pid] = info
            return cls(procs, 0.0)
        return cls(_psTable(), PS_TOLERANCE)

    def sameProcess(self, pid: int, start: Optional[float]) -> bool:
        """
        Whether C{pid} is the process that started at C{start}.
        """
        info = self.procs.get(pid)
        if info is None or start is None:
            return False
        return abs(info.start - start) <= self.tolerance

    def children(self) -> Dict[int, List[int]]:
        result: Dict[int, List[int]] = {}
        for info in self.procs.values():
            result.setdefault(info.ppid, []).append(info.pid)
        return result

    def descendants(self, roots: Iterable[int]) -> Set[int]:
        """
        C{roots} (those in the table) and all their descendants.
        """
        children = self.children()
        found: Set[int] = set()
        stack = [pid for pid in roots if pid in self.procs]
        while stack:
            pid = stack.pop()
            if pid in found:
                continue
            found.add(pid)
            stack.extend(children.get(pid, ()))
        return found

    def ancestors(self, pid: int) -> Set[int]:
        """
        C{pid}'s parent, its parent, and so on.
        """
        found: Set[int] = set()
        info = self.procs.get(pid)
        while info is not None and info.ppid not in found and info.ppid > 0:
            found.add(info.ppid)
            info = self.procs.get(info.ppid)
        return found


def _psTable() -> Dict[int, Proc]:
    """
    The process table from ps(1) (FreeBSD has no C{/proc} by default).
    Start times are estimated as uptime minus elapsed seconds.
    """
    now = systemUptime()
    if now is None:
        raise OSError("no uptime clock")
    out = subprocess.run(
        ["ps", "-ax", "-o", "pid=,ppid=,pgid=,etimes=,stat="],
        capture_output=True,
        timeout=10,
        check=True,
        env={"PATH": "/bin:/usr/bin", "LC_ALL": "C"},
    ).stdout
    procs = {}
    for line in out.decode("ascii", "replace").splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        try:
            pid, ppid, pgid, elapsed = (int(f) for f in fields[:4])
        except ValueError:
            continue
        procs[pid] = Proc(pid, ppid, pgid, fields[4][:1], now - elapsed)
    return procs


def pipeInodes(fds: Iterable[int]) -> List[Tuple[int, int]]:
    """
    The (device, inode) of each of C{fds} that is a pipe.
    """
    result = []
    for fd in fds:
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISFIFO(st.st_mode):
            result.append((st.st_dev, st.st_ino))
    return result


def pipeHolders(pids: Iterable[int], pipes: Iterable[Tuple[int, int]]) -> Set[int]:
    """
    Those of C{pids} that have one of C{pipes} open (Linux C{/proc}).
    """
    wanted = set(map(tuple, pipes))
    found: Set[int] = set()
    if not wanted or not _haveProc():
        return found
    for pid in pids:
        base = f"/proc/{pid}/fd"
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            try:
                st = os.stat(f"{base}/{name}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in wanted:
                found.add(pid)
                break
    return found


def findTree(
    table: ProcessTable,
    pgid: int,
    leader: Optional[int] = None,
    leaderStart: Optional[float] = None,
    pipes: Iterable[Tuple[int, int]] = (),
    notAfter: Optional[float] = None,
    searchAll: bool = False,
) -> Dict[int, float]:
    """
    A command's processes: the members of its process group C{pgid}, its
    C{leader} (if it is still the process that started at C{leaderStart}),
    the processes holding one of its stdio C{pipes}, and all their
    descendants.  Never this process or its ancestors.

    Pipe holders are looked for among this process's descendants when it
    is a subreaper (every orphan of ours is one), else (or if C{searchAll})
    among all processes.

    @param notAfter: if given, only processes started at or after it
        (a command's processes cannot be older than the command).
    @return: pid -> start time.
    """
    me = os.getpid()
    roots = {info.pid for info in table.procs.values() if info.pgid == pgid}
    if leader is not None and (leaderStart is None or table.sameProcess(leader, leaderStart)):
        roots.add(leader)
    pipes = list(pipes)
    if pipes:
        if isSubreaper() and not searchAll:
            candidates = table.descendants([me]) - {me}
        else:
            candidates = set(table.procs)
        roots |= pipeHolders(candidates - roots, pipes)
    tree = table.descendants(roots)
    tree -= table.ancestors(me) | {me, 0, 1}
    result = {}
    for pid in tree:
        start = table.procs[pid].start
        if notAfter is not None and start + table.tolerance < notAfter:
            continue
        result[pid] = start
    return result


def signalVerified(pid: int, start: Optional[float], signalNumber: int, tolerance: float = 0.0) -> bool:
    """
    Signal C{pid} only if it is still the process that started at
    C{start}: through a pidfd on Linux (no race with pid reuse), else
    after checking C{/proc}, else (no C{/proc}) as is.

    @return: whether it was signalled.
    """
    if pid <= 1 or pid == os.getpid():
        return False
    if not _haveProc():
        try:
            os.kill(pid, signalNumber)
        except OSError:
            return False
        return True
    pidfd = None
    pidfdOpen = getattr(os, "pidfd_open", None)
    if pidfdOpen is not None:
        try:
            pidfd = pidfdOpen(pid)
        except ProcessLookupError:
            return False
        except OSError:
            pidfd = None  # ENOSYS (kernel before 5.3), EMFILE ...
    try:
        now = processStart(pid)
        if now is None or start is None or abs(now - start) > tolerance:
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signalNumber)
        else:
            os.kill(pid, signalNumber)
        return True
    except OSError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)
