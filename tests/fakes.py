"""
Shared test doubles.

L{MemoryProcessReactor} is a L{MemoryReactorClock} that also provides
C{IReactorProcess}: C{spawnProcess} records a L{FakeProcessTransport} in
C{processes} instead of starting anything.  Tests then drive the child's
side by hand (in the style of treq's in-memory test doubles)::

    reactor = MemoryProcessReactor()
    runner = CommandRunner(reactor, path, spawn=spawnWithReactor)
    execution = runner.start("hello", sink)
    child = reactor.processes[-1]
    child.feedStdout(b"hi")
    child.end(0)          # exit 0, then EOF on all pipes

No real process is ever signalled: signals are recorded in
C{FakeProcessTransport.signals}.
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from zope.interface import implementer

from twisted.internet import error
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from prokshy.guest._process import IProcessGroup

__all__ = [
    "FakeProcessTransport",
    "LogCapture",
    "MemoryProcessReactor",
    "PY",
    "RecordingSink",
    "SH",
    "addScript",
    "makeCommandDir",
]

# Far above any real pid_max, so a fake pid can never name a real process.
_fakePids = itertools.count(1 << 30)


@implementer(IProcessTransport, IProcessGroup)
class FakeProcessTransport:
    """
    The parent's side of a fake child process.

    @ivar executable, args, env, path, childFDs: what was spawned.
    @ivar stdin: bytes written to the child's stdin.
    @ivar closedByParent: child fds the parent closed (0: stdin EOF sent).
    @ivar signals: C{("group" | "process", signum)} in the order sent.
    @ivar groupAlive: what C{signalGroup} returns (C{False}: ESRCH).
    @ivar paused: whether reading stdout/stderr is paused.
    @ivar producer, streaming: the registered stdin producer.
    """

    def __init__(
        self,
        reactor: "MemoryProcessReactor",
        protocol: Any,
        executable: str,
        args: List[str],
        env: Dict[str, str],
        path: Optional[str],
        childFDs: Optional[Dict[int, Any]],
    ) -> None:
        self.reactor = reactor
        self.proto = protocol
        self.executable = executable
        self.args = list(args)
        self.env = dict(env or {})
        self.path = path
        self.childFDs = childFDs
        self.pid: Optional[int] = next(_fakePids)
        self.stdin = b""
        self.closedByParent: set = set()
        self.signals: List[Tuple[str, int]] = []
        self.groupAlive = True
        self.paused = False
        self.producer: Any = None
        self.streaming: Optional[bool] = None
        self._exitReason: Optional[Failure] = None
        self._openPipes = {0, 1, 2}
        self._ended = False

    # -- IProcessTransport -------------------------------------------------

    @property
    def stdinClosed(self) -> bool:
        return 0 in self.closedByParent

    def write(self, data: bytes) -> None:
        if 0 in self._openPipes and 0 not in self.closedByParent:
            self.stdin += data

    def writeSequence(self, seq: List[bytes]) -> None:
        self.write(b"".join(seq))

    def closeChildFD(self, childFD: int) -> None:
        self.closedByParent.add(childFD)
        self._pipeClosed(childFD)

    def closeStdin(self) -> None:
        self.closeChildFD(0)

    def closeStdout(self) -> None:
        self.closeChildFD(1)

    def closeStderr(self) -> None:
        self.closeChildFD(2)

    def loseConnection(self) -> None:
        for fd in (0, 1, 2):
            self.closeChildFD(fd)

    def signalProcess(self, signalID: Any) -> None:
        if self._exitReason is not None:
            raise error.ProcessExitedAlready()
        self.signals.append(("process", signalID))

    def signalGroup(self, signalNumber: int) -> bool:
        self.signals.append(("group", signalNumber))
        return self.groupAlive

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.loseConnection()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if 0 in self._openPipes:
            self.producer, self.streaming = producer, streaming
        else:
            producer.stopProducing()

    def unregisterProducer(self) -> None:
        self.producer = self.streaming = None

    def getHost(self) -> None:
        raise NotImplementedError()

    def getPeer(self) -> None:
        raise NotImplementedError()

    # -- driving the child -------------------------------------------------

    def feedStdout(self, data: bytes) -> None:
        """
        The child writes to stdout.
        """
        assert 1 in self._openPipes, "stdout is closed"
        self.proto.childDataReceived(1, data)

    def feedStderr(self, data: bytes) -> None:
        """
        The child writes to stderr.
        """
        assert 2 in self._openPipes, "stderr is closed"
        self.proto.childDataReceived(2, data)

    def exit(self, code: Optional[int] = 0, signal: Optional[int] = None) -> None:
        """
        The child is reaped: C{processExited}; C{processEnded} follows once
        all pipes are closed.
        """
        assert self._exitReason is None, "already exited"
        if code or signal:
            reason = Failure(error.ProcessTerminated(code, signal))
        else:
            reason = Failure(error.ProcessDone(0))
        self._exitReason = reason
        self.pid = None
        self.proto.processExited(reason)
        self._maybeEnded()

    def closePipes(self) -> None:
        """
        The child side closes every pipe (EOF on stdout and stderr).
        """
        for fd in (0, 1, 2):
            self._pipeClosed(fd)

    def end(self, code: Optional[int] = 0, signal: Optional[int] = None) -> None:
        """
        The child exits and its pipes close.
        """
        self.exit(code, signal)
        self.closePipes()

    @property
    def ended(self) -> bool:
        return self._ended

    def _pipeClosed(self, fd: int) -> None:
        if fd in self._openPipes:
            self._openPipes.discard(fd)
            self.proto.childConnectionLost(fd)
            self._maybeEnded()

    def _maybeEnded(self) -> None:
        if self._exitReason is not None and not self._openPipes and not self._ended:
            self._ended = True
            self.proto.processEnded(self._exitReason)


@implementer(IReactorProcess)
class MemoryProcessReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} whose C{spawnProcess} records fake processes.

    @ivar processes: every L{FakeProcessTransport} spawned, in order.
    @ivar spawnError: if set, C{spawnProcess} raises it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.processes: List[FakeProcessTransport] = []
        self.spawnError: Optional[BaseException] = None

    def spawnProcess(
        self,
        processProtocol: Any,
        executable: str,
        args: Any = (),
        env: Any = None,
        path: Optional[str] = None,
        uid: Optional[int] = None,
        gid: Optional[int] = None,
        usePTY: bool = False,
        childFDs: Optional[Dict[int, Any]] = None,
    ) -> FakeProcessTransport:
        if self.spawnError is not None:
            raise self.spawnError
        transport = FakeProcessTransport(
            self, processProtocol, executable, list(args), env, path, childFDs
        )
        self.processes.append(transport)
        processProtocol.makeConnection(transport)
        return transport


class RecordingSink:
    """
    A command output sink that keeps everything.
    """

    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""
        self.chunks: List[Tuple[int, bytes]] = []

    def stdoutReceived(self, data: bytes) -> None:
        self.stdout += data
        self.chunks.append((1, data))

    def stderrReceived(self, data: bytes) -> None:
        self.stderr += data
        self.chunks.append((2, data))


#: Script headers for command files.
SH = "#!/bin/sh\n"
PY = f"#!{sys.executable}\n"


def makeCommandDir(
    scripts: Optional[Dict[str, str]] = None, mode: int = 0o755
) -> str:
    """
    Create a fresh command directory (under the current directory, i.e.
    trial's temporary directory) holding C{scripts} (name -> text), each
    mode 0755.

    @return: its path.
    """
    path = tempfile.mkdtemp(prefix="command.d-", dir=os.getcwd())
    os.chmod(path, mode)
    for name, text in (scripts or {}).items():
        addScript(path, name, text)
    return path


def addScript(directory: str, name: str, text: str, mode: int = 0o755) -> str:
    """
    Write an executable script.

    @return: its path.
    """
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


class LogCapture:
    """
    Mixin for L{twisted.trial.unittest.TestCase}: capture log events.
    """

    def captureLogs(self) -> None:
        self.observer = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher
        )

    def logged(self) -> List[str]:
        """
        @return: the formatted messages so far.
        """
        return [formatEvent(event) for event in self.observer]

    def assertLogged(self, *fragments: str) -> str:
        """
        Assert that a single message contains every fragment.

        @return: that message.
        """
        for message in self.logged():
            if all(fragment in message for fragment in fragments):
                return message
        self.fail(  # type: ignore[attr-defined]
            f"no log message with {fragments!r} in {self.logged()!r}"
        )
