# -*- test-case-name: tests.system.test_guest_reaper -*-
"""
Being a (sub)reaper, and reaping the orphans that brings.

  - B{Linux}: the agent becomes a I{child subreaper}
    (C{prctl(PR_SET_CHILD_SUBREAPER)}), so that an orphaned descendant is
    reparented to the agent instead of to init and stays in the agent's
    process tree, where L{prokshy.guest.proctable.findTree} finds it.

  - B{FreeBSD}: the agent becomes a reaper (C{procctl(PROC_REAP_ACQUIRE)}),
    and the kernel remembers for each descendant which of the agent's
    children it descends from; L{reapKillSubtree}
    (C{procctl(PROC_REAP_KILL)} with C{REAPER_KILL_SUBTREE}) signals all of
    a command's descendants at once, detached or not.

With a subreaper, orphans become the agent's children: L{reapStrays} reaps
those that exit (Twisted only reaps the processes it spawned).
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from typing import Any, List

from twisted.internet import process as _twistedProcess
from twisted.logger import Logger

__all__ = [
    "FREEBSD",
    "LINUX",
    "acquireSubreaper",
    "isSubreaper",
    "reapKillSubtree",
    "reapStrays",
    "releaseSubreaper",
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
