# -*- test-case-name: tests.system.test_guest_reaper -*-
"""
The record of running commands, for the agent that comes after a killed
one.

L{ProcessRecord} is a small file listing the commands that are running
(pid, start time, stdio pipes).  An agent killed with SIGKILL cannot clean
up; the next agent, started with the same file, kills what is left of the
recorded commands (L{killLeftovers}), after checking each process's start
time.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import stat
from typing import Any, Dict, Iterable, List, Optional, Tuple

from twisted.logger import Logger

from prokshy.guest.proctable import ProcessTable, findTree, processStart, signalVerified

__all__ = [
    "ProcessRecord",
    "RecordError",
    "defaultRunDir",
    "killLeftovers",
    "recordName",
]

_log = Logger()


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
