# -*- test-case-name: tests.test_guest_reaper -*-
"""
Finding and killing every process a command leaves behind.

A command runs in its own process group, but a descendant that calls
C{setsid()} (or C{setpgid()}) leaves the group, and a signal to the group
misses it.  This module uses what the OS offers to find such escapees:

  - B{Linux}: the agent becomes a I{child subreaper}
    (C{prctl(PR_SET_CHILD_SUBREAPER)}), so that an orphaned descendant is
    reparented to the agent instead of to init and stays in the agent's
    process tree.  A command's tree is then found in C{/proc}: its process
    group, the descendants of the command (C{ppid} chains), and any of the
    agent's descendants that still holds one of the command's stdio pipes
    (an escapee whose parent has died), with their descendants.  Each is
    signalled through a pidfd after checking its start time, so that a pid
    reused in the meantime is never signalled.  A descendant that has
    closed the command's stdio, left its session I{and} lost its parent has
    detached on purpose (a daemon started by the command); Linux offers no
    way short of cgroups to tie it to its command, and it is left alone.

  - B{FreeBSD}: the agent becomes a reaper (C{procctl(PROC_REAP_ACQUIRE)}),
    and the kernel remembers for each descendant which of the agent's
    children it descends from; C{procctl(PROC_REAP_KILL)} with
    C{REAPER_KILL_SUBTREE} signals all of a command's descendants at once,
    detached or not.

With a subreaper, orphans become the agent's children: L{reapStrays} reaps
those that exit (Twisted only reaps the processes it spawned).

L{ProcessRecord} is a small file listing the commands that are running
(pid, start time, stdio pipes).  An agent killed with SIGKILL cannot clean
up; the next agent, started with the same file, kills what is left of the
recorded commands, after checking each process's start time.

L{ProcessReaper} is the service that ties this together in the agent.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Set, Tuple

from twisted.application import service
from twisted.internet import process as _twistedProcess
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = [
    "ProcessRecord",
    "ProcessReaper",
    "ProcessTable",
    "acquireSubreaper",
    "findTree",
    "haveProc",
    "isSubreaper",
    "killLeftovers",
    "processStart",
    "reapKillSubtree",
    "reapStrays",
    "releaseSubreaper",
    "signalVerified",
    "systemUptime",
]

_log = Logger()

LINUX = sys.platform.startswith("linux")
FREEBSD = sys.platform.startswith("freebsd")

# <sys/prctl.h>
PR_SET_CHILD_SUBREAPER = 36
# <sys/procctl.h>, <sys/wait.h> (idtype_t P_PID is 0)
P_PID = 0
PROC_REAP_ACQUIRE = 2
PROC_REAP_RELEASE = 3
PROC_REAP_KILL = 6
REAPER_KILL_SUBTREE = 0x2

#: Seconds two start times read through ps(1) may differ by and still name
#: the same process (ps gives whole seconds of elapsed time).
PS_TOLERANCE = 2.0


class _ReaperKill(ctypes.Structure):
    """
    FreeBSD's C{struct procctl_reaper_kill}.
    """

    _fields_ = [
        ("rk_sig", ctypes.c_int),
        ("rk_flags", ctypes.c_uint),
        ("rk_subtree", ctypes.c_int),
        ("rk_killed", ctypes.c_uint),
        ("rk_fpid", ctypes.c_int),
        ("rk_pad0", ctypes.c_uint * 15),
    ]


_libc: Any = None


def _c() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        if FREEBSD:
            _libc.procctl.argtypes = [
                ctypes.c_int,
                ctypes.c_int64,
                ctypes.c_int,
                ctypes.c_void_p,
            ]
            _libc.procctl.restype = ctypes.c_int
    return _libc


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


# -- being a reaper ----------------------------------------------------------

_subreaperUsers = 0
_subreaperOn = False


def _setSubreaper(on: bool) -> bool:
    """
    @return: whether the call succeeded.
    """
    try:
        libc = _c()
        if LINUX:
            result = libc.prctl(
                PR_SET_CHILD_SUBREAPER,
                ctypes.c_ulong(1 if on else 0),
                ctypes.c_ulong(0),
                ctypes.c_ulong(0),
                ctypes.c_ulong(0),
            )
        elif FREEBSD:
            command = PROC_REAP_ACQUIRE if on else PROC_REAP_RELEASE
            result = libc.procctl(P_PID, os.getpid(), command, None)
            if result != 0 and on and ctypes.get_errno() == errno.EBUSY:
                return True  # already the reaper
        else:
            return False
    except (OSError, AttributeError) as e:
        _log.warn("cannot become a subreaper: {error}", error=e)
        return False
    if result != 0:
        _log.warn(
            "cannot {what} a subreaper: {error}",
            what="become" if on else "stop being",
            error=os.strerror(ctypes.get_errno()),
        )
        return False
    return True


def acquireSubreaper() -> bool:
    """
    Make this process the reaper of its orphaned descendants (counted: each
    call needs a L{releaseSubreaper}).

    @return: whether this process is one now.
    """
    global _subreaperUsers, _subreaperOn
    if _subreaperUsers == 0:
        _subreaperOn = _setSubreaper(True)
    _subreaperUsers += 1
    return _subreaperOn


def releaseSubreaper() -> None:
    """
    Undo one L{acquireSubreaper}; the last one gives the role up.
    """
    global _subreaperUsers, _subreaperOn
    if _subreaperUsers == 0:
        return
    _subreaperUsers -= 1
    if _subreaperUsers == 0 and _subreaperOn:
        _setSubreaper(False)
        _subreaperOn = False


def isSubreaper() -> bool:
    """
    Whether L{acquireSubreaper} made this process a (sub)reaper.
    """
    return _subreaperOn


def reapKillSubtree(subtree: int, signalNumber: int) -> int:
    """
    FreeBSD: signal every descendant of this reaper that descends from its
    direct child C{subtree}, including those reparented to the reaper.

    @return: how many processes were signalled.
    """
    if not (FREEBSD and _subreaperOn):
        return 0
    request = _ReaperKill(rk_sig=signalNumber, rk_flags=REAPER_KILL_SUBTREE, rk_subtree=subtree)
    result = _c().procctl(P_PID, os.getpid(), PROC_REAP_KILL, ctypes.byref(request))
    if result != 0:
        code = ctypes.get_errno()
        if code != errno.ESRCH:
            _log.warn(
                "procctl(PROC_REAP_KILL) of subtree {subtree} failed: {error}",
                subtree=subtree,
                error=os.strerror(code),
            )
        return 0
    return int(request.rk_killed)


def reapStrays(limit: int = 1000) -> List[int]:
    """
    Reap exited children that Twisted did not spawn: orphans reparented to
    this subreaper.  A child Twisted spawned is left for Twisted to reap.

    @return: the pids reaped.
    """
    reaped: List[int] = []
    waitid = getattr(os, "waitid", None)
    if waitid is None:
        return reaped
    for _ in range(limit):
        try:
            info = waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            break
        except OSError:
            break
        if info is None or not info.si_pid:
            break
        pid = info.si_pid
        if pid in _twistedProcess.reapProcessHandlers:
            # Twisted's own child: it reaps it on SIGCHLD.  waitid reports
            # the same one until then, so stop here.
            break
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        reaped.append(pid)
    return reaped


# -- processes -----------------------------------------------------------------


class Proc(NamedTuple):
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
        if _subreaperOn and not searchAll:
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


# -- the record of running commands --------------------------------------------


def recordName(device: str) -> str:
    """
    The record file's name for an agent on C{device}.
    """
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", device.strip("/")) or "agent"
    if len(name) > 120:
        import hashlib

        name = name[:80] + "-" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return name + ".pids"


def defaultRunDir(euid: Optional[int] = None, environ: Optional[Dict[str, str]] = None) -> str:
    """
    C{/var/run/prokshy} for root, else C{$XDG_RUNTIME_DIR/prokshy}, else
    C{""} (no record).
    """
    euid = os.geteuid() if euid is None else euid
    environ = os.environ if environ is None else environ
    if euid == 0:
        return "/var/run/prokshy"
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "prokshy")
    return ""


class RecordError(Exception):
    """
    The record file cannot be used (the message says why).
    """


class ProcessRecord:
    """
    A file listing the running commands, kept locked (C{flock}) by the
    agent that writes it.  Line 1 names the agent; each further line is one
    command: C{{"pid", "start", "pipes"}}.  It is rewritten in place
    (C{pwrite} of the whole, then C{ftruncate}), so a kill mid-update
    leaves at worst a line that does not parse and is ignored.

    @ivar path: the file.
    """

    maxEntries = 4096

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: Optional[int] = None
        self._entries: Dict[Any, Dict[str, Any]] = {}
        self._lines: Dict[Any, bytes] = {}
        self._header = b""

    @property
    def active(self) -> bool:
        return self._fd is not None

    def open(self) -> List[Dict[str, Any]]:
        """
        Create the directory (0755) and the file (0600) if needed, check
        that both are ours and safe, lock the file and read what a previous
        agent left in it.

        @return: the previous agent's entries.
        @raise RecordError: the file is unsafe or held by a running agent.
        """
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
            st = os.lstat(directory)
        except OSError as e:
            raise RecordError(f"run directory {directory}: {e.strerror}") from None
        problem = _unsafe(st, "run directory " + directory, directory=True)
        if problem:
            raise RecordError(problem)
        try:
            fd = os.open(
                self.path,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                0o600,
            )
        except OSError as e:
            raise RecordError(f"{self.path}: {e.strerror}") from None
        try:
            problem = _unsafe(os.fstat(fd), self.path, directory=False)
            if problem:
                raise RecordError(problem)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise RecordError(
                    f"{self.path} is locked by another running agent"
                ) from None
            data = b""
            while True:
                chunk = os.pread(fd, 65536, len(data))
                if not chunk or len(data) > 1 << 20:
                    break
                data += chunk
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._header = json.dumps({"agent": os.getpid(), "start": processStart(os.getpid())}).encode()
        self._write()
        return _parseRecord(data)

    def add(self, key: Any, pid: int, start: Optional[float], pipes: Iterable[Tuple[int, int]]) -> None:
        if self._fd is None or len(self._entries) >= self.maxEntries:
            return
        entry = {"pid": pid, "start": start, "pipes": [list(p) for p in pipes]}
        self._entries[key] = entry
        self._lines[key] = json.dumps(entry).encode()
        self._write()

    def discard(self, key: Any) -> None:
        if self._fd is not None and self._entries.pop(key, None) is not None:
            del self._lines[key]
            self._write()

    @property
    def entries(self) -> List[Dict[str, Any]]:
        return list(self._entries.values())

    def _write(self) -> None:
        data = b"\n".join([self._header, *self._lines.values()]) + b"\n"
        try:
            os.pwrite(self._fd, data, 0)
            os.ftruncate(self._fd, len(data))
        except OSError as e:
            _log.warn("cannot update {path}: {error}", path=self.path, error=e.strerror)

    def close(self) -> None:
        """
        Remove the file (nothing is left to kill) and release it.
        """
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        self._entries.clear()
        self._lines.clear()
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(fd)


def _unsafe(st: os.stat_result, what: str, directory: bool) -> Optional[str]:
    if directory and not stat.S_ISDIR(st.st_mode):
        return f"{what} is not a directory"
    if not directory and not stat.S_ISREG(st.st_mode):
        return f"{what} is not a regular file"
    if st.st_uid not in (0, os.geteuid()):
        return f"{what} is owned by uid {st.st_uid}, not by root or this agent's uid {os.geteuid()}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{what} is group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _parseRecord(data: bytes) -> List[Dict[str, Any]]:
    entries = []
    for number, line in enumerate(data.splitlines()):
        if number == 0:
            continue
        try:
            entry = json.loads(line)
            pid = entry["pid"]
            start = entry.get("start")
            pipes = [tuple(int(x) for x in p) for p in entry.get("pipes", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if isinstance(pid, int) and not isinstance(pid, bool) and pid > 1:
            if start is not None and not isinstance(start, (int, float)):
                continue
            entries.append({"pid": pid, "start": start, "pipes": pipes})
    return entries


def killLeftovers(entries: List[Dict[str, Any]], table: Optional[ProcessTable] = None) -> Dict[int, List[int]]:
    """
    Kill (SIGKILL) what is left of commands recorded by a previous agent:
    for each entry, the command itself if it is still the process that
    started at the recorded time, and then its process group; the
    processes holding its recorded pipes that started after it; and the
    descendants of all these.  A process whose start time does not match is
    never signalled.

    @return: command pid -> pids killed.
    """
    killed: Dict[int, List[int]] = {}
    if not entries:
        return killed
    if table is None:
        table = ProcessTable.read()
    for entry in entries:
        pid, start = entry["pid"], entry["start"]
        if start is None:
            continue
        leaderAlive = table.sameProcess(pid, start)
        if leaderAlive:
            pgid = pid
        else:
            # The leader is gone: its group id may have been reused.
            pgid = -1
        tree = findTree(
            table,
            pgid,
            leader=pid if leaderAlive else None,
            leaderStart=start,
            pipes=entry["pipes"],
            notAfter=start,
            searchAll=True,
        )
        done = [
            member
            for member, memberStart in sorted(tree.items())
            if signalVerified(member, memberStart, signal.SIGKILL, table.tolerance)
        ]
        if done:
            killed[pid] = done
    return killed


class ProcessReaper(service.Service):
    """
    The agent's process hygiene: be a subreaper while running, reap
    reparented orphans, record running commands in C{path} (if given) and,
    at start, kill the leftovers a killed predecessor recorded there.

    Add it to the agent's services before the one that cancels commands
    at stop: it is stopped after that one, and waits for the commands to
    end before it removes the record.

    @ivar interval: seconds between L{reapStrays} passes.
    """

    interval = 2.0

    def __init__(self, clock: Any, runner: Any, path: Optional[str] = None) -> None:
        self.clock = clock
        self.runner = runner
        self.path = path
        self.record: Optional[ProcessRecord] = None
        self._loop: Optional[LoopingCall] = None
        self._acquired = False

    def startService(self) -> None:
        service.Service.startService(self)
        self._acquired = True
        if acquireSubreaper():
            loop = self._loop = LoopingCall(self._reap)
            loop.clock = self.clock
            loop.start(self.interval, now=False)
        if self.path:
            record = ProcessRecord(self.path)
            try:
                leftovers = record.open()
            except RecordError as e:
                _log.warn(
                    "not recording running commands: {why}; commands left "
                    "running by a killed agent will not be cleaned up",
                    why=str(e),
                )
            else:
                self.record = record
                self.runner.processRecord = record
                self._killLeftovers(leftovers)

    def _reap(self) -> None:
        try:
            reapStrays()
        except Exception:
            _log.failure("could not reap orphaned processes")

    def _killLeftovers(self, leftovers: List[Dict[str, Any]]) -> None:
        if not leftovers:
            return
        try:
            killed = killLeftovers(leftovers)
        except Exception:
            _log.failure("could not clean up after the previous agent")
            return
        for pid, pids in killed.items():
            _log.warn(
                "killed {count} processes left by command pid {pid} of a "
                "previous agent: {pids}",
                count=len(pids),
                pid=pid,
                pids=" ".join(map(str, pids)),
            )
        if not killed:
            _log.info(
                "{count} commands recorded by the previous agent: none left",
                count=len(leftovers),
            )

    def stopService(self) -> Any:
        service.Service.stopService(self)
        d = maybeDeferred(self.runner.cancelAll)
        d.addBoth(self._stopped)
        return d

    def _stopped(self, result: Any) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self._reap()
        if self.record is not None:
            if getattr(self.runner, "processRecord", None) is self.record:
                self.runner.processRecord = None
            self.record.close()
            self.record = None
        if self._acquired:
            self._acquired = False
            releaseSubreaper()
