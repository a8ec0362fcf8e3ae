# -*- test-case-name: tests.system.test_runner -*-
"""
Spawning a child process in its own process group.

Twisted's L{twisted.internet.process.Process} puts the child in the agent's
process group, so a timeout could only kill the child itself, never its
children (twisted/twisted#2726).  L{ProcessGroupProcess} makes every child
the leader of a new process group (pgid == pid) on both of Twisted's spawn
paths:

  - the fast path, C{os.posix_spawnp}, which Twisted takes when no uid/gid is
    given and C{path} is None or equals the agent's current directory: we
    pass C{setpgroup=0};

  - the fork path (any other C{path}): the child calls C{os.setpgid(0, 0)}
    before Twisted's own child setup, and the parent calls
    C{os.setpgid(pid, pid)} too, so the group exists as soon as the
    constructor returns whichever of the two runs first.

A descendant that leaves the group (C{setsid()}) is found and signalled by
L{ProcessGroupProcess.signalTree}, with the help of
L{prokshy.guest.proctable} and L{prokshy.guest.subreaper}.

The overridden methods are private Twisted API; this module mirrors Twisted
26.10's C{Process._trySpawnInsteadOfFork} and must be re-checked when Twisted
changes it.
"""

from __future__ import annotations

import _signal
import fcntl
import os
import signal
import struct
import termios
from typing import Any, Callable, Dict, List, Optional

from twisted.internet import process as _twistedProcess
from twisted.internet.interfaces import IProcessProtocol, IProcessTransport
from twisted.internet.error import ConnectionDone
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, implementer

from prokshy.guest import proctable, subreaper

_log = Logger()

#: The child's file descriptors: stdin is written by us, stdout and stderr
#: are read by us.  No other descriptor is inherited.
STDIO_CHILD_FDS: Dict[int, str] = {0: "w", 1: "r", 2: "r"}

#: Every signal, as plain ints, computed once: what is blocked across a
#: spawn.  (C{_signal}'s functions take and return ints; C{signal}'s
#: wrappers convert each of them to and from an enum, about 180 conversions
#: a spawn.)
ALL_SIGNALS = frozenset(int(s) for s in signal.valid_signals())

#: The signals a posix_spawn child has set to their default disposition:
#: all of them but the two that cannot be caught (FreeBSD's posix_spawn
#: fails on those).  Caught signals are reset by the exec anyway, so this
#: resets exactly the ignored ones (Python ignores SIGPIPE), whatever the
#: agent ignores at the time, without scanning the 64 dispositions a spawn.
CHILD_DEFAULT_SIGNALS = tuple(
    sorted(ALL_SIGNALS - {int(signal.SIGKILL), int(signal.SIGSTOP)})
)


class _Descriptors:
    """
    The agent's descriptors as a posix_spawn child would inherit them.

    Python creates every descriptor non-inheritable (close-on-exec, PEP
    446), and so do Twisted and the agent; only those the agent inherited
    when it started may be inheritable.  L{closeOnExecAll} makes those
    close-on-exec once, at the first spawn; after that a spawn needs the
    state of the child's own descriptors only (L{state}), not a scan of
    every open descriptor (a directory listing and one C{fcntl} each, per
    spawn).
    """

    scanned = False

    def closeOnExecAll(self) -> None:
        """
        Make every open descriptor above 2 close-on-exec (once).
        """
        if self.scanned:
            return
        for fd in _twistedProcess._listOpenFDs():
            if fd > 2:
                try:
                    os.set_inheritable(fd, False)
                except OSError:
                    pass
        self.scanned = True

    def state(self, fds: Any) -> List[Any]:
        """
        (fd, close-on-exec) for C{fds} that are open, as Twisted's
        C{_getFileActions} wants them.
        """
        self.closeOnExecAll()
        fdState = []
        for fd in fds:
            try:
                fdState.append((fd, fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC))
            except OSError:
                pass
        return fdState


#: The one L{_Descriptors} of the agent.
descriptors = _Descriptors()


class IProcessGroup(IProcessTransport):
    """
    A process transport whose child leads its own process group.
    """

    def signalGroup(signalNumber):
        """
        Send a signal to the child's whole process group.

        @return: C{True} if it was sent, C{False} if the group is gone.
        """


class IProcessTree(IProcessGroup):
    """
    A process group whose descendants that left it are found too.
    """

    pgid = Attribute("The child's process group id (kept after the child is reaped), or None.")
    startTime = Attribute("When the child started, in seconds since boot, or None.")
    pipeInodes = Attribute("(device, inode) of the child's stdio pipes (Linux), or ().")
    spawnMethod = Attribute(
        'Which of Twisted\'s paths created the child: "posix_spawn" or "fork" (about 5x slower).'
    )

    def signalTree(signalNumber):
        """
        Send a signal to the group and to every descendant that left it.

        @return: C{True} if anything was signalled.
        """


#: The most bytes one read of a command's stdout or stderr asks for: a whole
#: pipe buffer (Linux's default), where Twisted asks for 8 KiB, so a command
#: that writes fast costs the agent one read, and one round of framing, per
#: 64 KiB instead of per 8 KiB.
PIPE_READ_SIZE = 64 * 1024


class BigReadProcessReader(_twistedProcess.ProcessReader):
    """
    A command's output pipe, read L{PIPE_READ_SIZE} bytes at a time.
    """

    def doRead(self):
        try:
            output = os.read(self.fd, PIPE_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return CONNECTION_LOST
        if not output:
            return CONNECTION_DONE
        self.dataReceived(output)
        return None


class _TreeSignals:
    """
    Signalling a child that leads its own process group (C{pgid}), and
    the descendants that left it: shared by L{ProcessGroupProcess} and
    L{PTYProcessGroupProcess}.
    """

    pgid: Optional[int] = None
    pid: Optional[int] = None
    startTime: Optional[float] = None
    pipeInodes: Any = ()
    _escaped: Any = None

    def signalGroup(self, signalNumber: int) -> bool:
        """
        Send a signal to the child's whole process group.

        @return: C{True} if it was sent, C{False} if the group is gone.
        """
        if self.pgid is None:
            return False
        try:
            os.killpg(self.pgid, signalNumber)
        except (ProcessLookupError, PermissionError):
            # ESRCH: nobody left.  EPERM: (BSD) only zombies left.  Should
            # the child somehow not lead a group, still signal the child
            # itself while it is unreaped (its pid cannot be reused yet).
            if self.pid is None:
                return False
            try:
                os.kill(self.pid, signalNumber)
            except OSError:
                return False
        return True

    def signalTree(self, signalNumber: int) -> bool:
        """
        Send a signal to the child's whole process group and to every
        descendant that left it.

        On FreeBSD, when the agent is a reaper, the kernel signals the
        child's whole reaper subtree (C{PROC_REAP_KILL}).  On Linux, the
        descendants outside the group are found in C{/proc}
        (L{proctable.findTree}: the child's descendants, and processes
        holding its stdio pipes), remembered, and signalled through a
        pidfd after checking their start time; the remembered ones are
        signalled again on later calls, even once their parent is gone.

        @return: C{True} if anything was signalled.
        """
        sent = self.signalGroup(signalNumber)
        if self.pgid is None:
            return sent
        try:
            if subreaper.FREEBSD:
                # The subtree id is the child's pid; once the child is
                # reaped, skip it if a new child of ours has that pid.
                if self.pid is not None or self.pgid not in _twistedProcess.reapProcessHandlers:
                    if subreaper.reapKillSubtree(self.pgid, signalNumber):
                        sent = True
            elif proctable.haveProc():
                table = proctable.ProcessTable.read()
                found = proctable.findTree(
                    table,
                    self.pgid,
                    leader=self.pid,
                    leaderStart=self.startTime,
                    pipes=self.pipeInodes,
                    notAfter=self.startTime,
                )
                for pid, start in found.items():
                    info = table.procs.get(pid)
                    if info is not None and info.pgid != self.pgid:
                        self._escaped[pid] = start
                for pid, start in list(self._escaped.items()):
                    if proctable.signalVerified(pid, start, signalNumber):
                        sent = True
                    else:
                        del self._escaped[pid]
        except Exception:
            _log.failure("could not signal the descendants of pid {pid}", pid=self.pgid)
        return sent


@implementer(IProcessTree)
class ProcessGroupProcess(_TreeSignals, _twistedProcess.Process):
    """
    A L{twisted.internet.process.Process} whose child leads its own process
    group.

    @ivar pgid: the child's process group id (equal to its pid); kept after
        the child is reaped so that grandchildren still holding the group can
        be signalled.
    @ivar spawnMethod: C{"posix_spawn"} or C{"fork"}: which path created the
        child.
    @ivar startTime: when the child started, in seconds since boot (from
        C{/proc} on Linux; the agent's uptime clock at spawn elsewhere).
    @ivar pipeInodes: (device, inode) of the child's stdio pipes (Linux),
        which identify processes that inherited them.
    """

    processReaderFactory = BigReadProcessReader
    pgid: Optional[int] = None
    spawnMethod: Optional[str] = None
    startTime: Optional[float] = None
    pipeInodes: Any = ()
    _childSignalMask: Any = ()
    _escaped: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._escaped = {}
        super().__init__(*args, **kwargs)
        if self.pid is not None:
            if subreaper.LINUX:
                self.startTime = proctable.processStart(self.pid)
                self.pipeInodes = proctable.pipeInodes(
                    pipe.fileno() for pipe in self.pipes.values()
                )
            else:
                self.startTime = proctable.systemUptime()

    def _trySpawnInsteadOfFork(
        self, path, uid, gid, executable, args, environment, kwargs
    ):
        """
        Use C{posix_spawnp} with C{setpgroup=0} when Twisted would use
        C{posix_spawnp}; the conditions and the file actions are Twisted's.

        @return: whether C{posix_spawnp} was used.
        """
        if (
            getattr(os, "posix_spawnp", None) is None
            or uid is not None
            or gid is not None
            or (path is not None and os.path.abspath(path) != os.path.abspath("."))
            or getattr(self._reactor, "_neverUseSpawn", False)
        ):
            return False
        fdmap = kwargs.get("fdmap")
        # The child's descriptors (0, 1, 2 and the pipes mapped onto them);
        # every other one is close-on-exec (see _Descriptors).
        fdState = descriptors.state(sorted(set(fdmap) | set(fdmap.values()) | {0, 1, 2}))
        if environment is None:
            environment = os.environ
        self.pid = os.posix_spawnp(
            executable,
            args,
            environment,
            file_actions=_twistedProcess._getFileActions(
                fdState,
                fdmap,
                doClose=_twistedProcess._PS_CLOSE,
                doDup2=_twistedProcess._PS_DUP2,
            ),
            setsigdef=CHILD_DEFAULT_SIGNALS,
            setsigmask=self._childSignalMask,
            setpgroup=0,
        )
        self.status = -1
        self.spawnMethod = "posix_spawn"
        return True

    def _setupChild(self, *args: Any, **kwargs: Any) -> None:
        """
        In the forked child: become a process group leader, reset the
        signals the agent handles in Python to their defaults, restore the
        signal mask, then let Twisted arrange the file descriptors.

        Signals are blocked across the fork (see L{_fork}), so a signal sent
        to the new group before the exec, such as an early TERM, is not run
        by the agent's handlers in the child and lost: it stays pending until
        the defaults are in place, then acts (TERM kills the child).
        """
        os.setpgid(0, 0)
        for signalNumber in ALL_SIGNALS:
            handler = _signal.getsignal(signalNumber)
            if callable(handler):
                _signal.signal(signalNumber, _signal.SIG_DFL)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, self._childSignalMask)
        super()._setupChild(*args, **kwargs)

    def _fork(self, path, uid, gid, executable, args, environment, **kwargs):
        """
        Spawn or fork (only the parent returns) with all signals blocked in
        this thread, then make sure the group exists before anyone may
        signal it.  The child gets the signal mask we had before.
        """
        self._childSignalMask = _signal.pthread_sigmask(_signal.SIG_BLOCK, ALL_SIGNALS)
        try:
            super()._fork(path, uid, gid, executable, args, environment, **kwargs)
        finally:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, self._childSignalMask)
        if self.spawnMethod is None:
            self.spawnMethod = "fork"
            try:
                os.setpgid(self.pid, self.pid)
            except OSError:
                # EACCES: the child has already exec'd, after its own
                # setpgid(0, 0).
                pass
        self.pgid = self.pid

def spawnProcessGroup(
    reactor: Any,
    protocol: IProcessProtocol,
    executable: str,
    args: List[str],
    environment: Dict[str, str],
    path: Optional[str],
) -> IProcessTransport:
    """
    Spawn C{executable} in its own process group with piped stdio.

    This is the default spawn function of
    L{prokshy.guest.runner.CommandRunner}.  C{reactor} must be a POSIX
    reactor providing C{IReactorProcess} (the process uses its
    C{addReader}/C{addWriter}).

    @return: a L{ProcessGroupProcess}, an L{IProcessTree}.
    """
    return ProcessGroupProcess(
        reactor,
        executable,
        args,
        environment,
        path,
        protocol,
        childFDs=dict(STDIO_CHILD_FDS),
    )


class IPTYProcess(IProcessTree):
    """
    A process group on a pty of its own (C{prokshy -t}).
    """

    def setWindowSize(rows, cols):
        """
        Set the pty's size (C{TIOCSWINSZ}): the kernel signals SIGWINCH to
        its foreground process group.
        """

    def closeStdin():
        """
        The host's EOF: write the pty's VEOF character (^D) once.
        """


def _winsize(rows: int, cols: int) -> bytes:
    return struct.pack("HHHH", rows, cols, 0, 0)


@implementer(IPTYProcess)
class PTYProcessGroupProcess(_TreeSignals, _twistedProcess.PTYProcess):
    """
    A command on a new pty: the session leader (so also its process group
    leader, C{pgid == pid}), the pty its controlling terminal and its
    stdin, stdout and stderr.  Its output is read from the pty's master
    (one stream: stdout); what is written goes to the master.

    Spawned by forking (a pty needs C{setsid} and C{TIOCSCTTY} in the
    child, which C{posix_spawn} cannot do portably), with every signal
    blocked across the fork as in L{ProcessGroupProcess}.

    @param rows: the pty's initial rows, and C{cols} its columns: set
        before the command starts.
    """

    spawnMethod = "fork"
    _childSignalMask: Any = ()
    _eofSent = False
    #: No descriptor of the slave is open any more (see L{doRead}).
    _slaveClosed = False

    def __init__(
        self,
        reactor: Any,
        executable: Any,
        args: List[Any],
        environment: Dict[str, str],
        path: Optional[str],
        proto: IProcessProtocol,
        rows: int = 24,
        cols: int = 80,
    ) -> None:
        self._escaped = {}
        master, slave = os.openpty()
        try:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, _winsize(rows, cols))
            super().__init__(
                reactor, executable, args, environment, path, proto,
                usePTY=(master, slave, None),
            )
        except BaseException:
            for fd in (master, slave):
                try:
                    os.close(fd)
                except OSError:
                    pass
            raise
        if self.pid is not None:
            self.startTime = (
                proctable.processStart(self.pid) if subreaper.LINUX else proctable.systemUptime()
            )

    def _setupChild(self, masterfd: int, slavefd: int) -> None:
        """
        In the forked child: reset the signals the agent handles in Python,
        let Twisted make the session and the controlling terminal, then
        restore the signal mask (see L{ProcessGroupProcess._setupChild}).
        """
        for signalNumber in ALL_SIGNALS:
            handler = _signal.getsignal(signalNumber)
            if callable(handler):
                _signal.signal(signalNumber, _signal.SIG_DFL)
        super()._setupChild(masterfd, slavefd)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, self._childSignalMask)

    def _fork(self, path, uid, gid, executable, args, environment, **kwargs):
        self._childSignalMask = _signal.pthread_sigmask(_signal.SIG_BLOCK, ALL_SIGNALS)
        try:
            super()._fork(path, uid, gid, executable, args, environment, **kwargs)
        finally:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, self._childSignalMask)
        # setsid() in the child: the pid is the session's and the group's.
        self.pgid = self.pid

    def doRead(self) -> Any:
        """
        Read the command's output from the master, L{PIPE_READ_SIZE} bytes
        at a time.

        Once no descriptor of the pty's slave is left open (the read fails
        with C{EIO}, or ends), the master is closed only after the command
        is reaped: closing it hangs the pty up, and the kernel would kill
        with SIGHUP a command that has closed its descriptors but not exited
        yet (C{cat} does, at its end), or its descendants.
        """
        try:
            data = os.read(self.fd, PIPE_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if data:
            self.proto.childDataReceived(1, data)
            return None
        if self.pid is not None:
            self._slaveClosed = True
            self.stopReading()
            return None
        return CONNECTION_DONE

    def resumeProducing(self) -> None:
        if not self._slaveClosed:
            super().resumeProducing()

    def connectionLost(self, reason: Failure) -> None:
        """
        The master's end: at once when we close it (or a write fails);
        the slave's hangup while the command is not reaped yet (the reactor
        sees it as the end of the master) only once it is (L{doRead}).
        """
        if self.pid is not None and not self.disconnecting and not self._slaveClosed:
            self._slaveClosed = True
            self.stopReading()
            self.stopWriting()
            return
        if self.pid is not None and self._slaveClosed and not self.disconnecting:
            return
        super().connectionLost(reason)

    def processEnded(self, status: int) -> None:
        super().processEnded(status)
        if self._slaveClosed and self.connected:
            self.connectionLost(Failure(ConnectionDone("the pty's slave is closed")))

    def setWindowSize(self, rows: int, cols: int) -> bool:
        """
        Set the pty's size; C{False} once it is closed.
        """
        if not self.connected or self.fd is None:
            return False
        try:
            fcntl.ioctl(self.fd, termios.TIOCSWINSZ, _winsize(rows, cols))
        except OSError:
            return False
        return True

    def closeStdin(self) -> None:
        """
        The host's EOF: a pty has no stdin of its own to close; write its
        VEOF character (^D by default) once, after what was written.
        """
        if self._eofSent or not self.connected:
            return
        self._eofSent = True
        try:
            veof = termios.tcgetattr(self.fd)[6][termios.VEOF]
        except (OSError, termios.error):
            veof = b"\x04"
        if isinstance(veof, int):
            veof = bytes([veof])
        self.write(veof)


def spawnPTYProcessGroup(
    reactor: Any,
    protocol: IProcessProtocol,
    executable: str,
    args: List[Any],
    environment: Dict[str, str],
    path: Optional[str],
    rows: int = 24,
    cols: int = 80,
) -> IProcessTransport:
    """
    Spawn C{executable} on a new pty of C{rows} x C{cols} (see
    L{PTYProcessGroupProcess}).

    @return: a L{PTYProcessGroupProcess}, an L{IPTYProcess}.
    """
    return PTYProcessGroupProcess(
        reactor, executable, args, environment, path, protocol, rows=rows, cols=cols
    )


def spawnWithReactor(
    reactor: Any,
    protocol: IProcessProtocol,
    executable: str,
    args: List[str],
    environment: Dict[str, str],
    path: Optional[str],
) -> IProcessTransport:
    """
    Spawn through C{reactor.spawnProcess}.

    Use it with a fake process reactor in tests.  With a real reactor the
    child shares the agent's process group: unless the transport is an
    L{IProcessGroup}, only the child itself can be signalled.
    """
    return reactor.spawnProcess(
        protocol,
        executable,
        args,
        environment,
        path,
        childFDs=dict(STDIO_CHILD_FDS),
    )


SpawnFunction = Callable[..., IProcessTransport]
PTYSpawnFunction = Callable[..., IProcessTransport]
