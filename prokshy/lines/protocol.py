# -*- test-case-name: tests.system.test_lines -*-
"""
Line mode on the guest's device.

L{GuestLineProtocol} splits the byte stream from the host into LF-terminated
lines.  Lines starting with byte C{0xFF} go to L{helloLineReceived
<GuestLineProtocol.helloLineReceived>}, the hook for the upgrade to the
framed protocol; every other line goes to a
L{LegacyHandler<prokshy.lines.legacy.LegacyHandler>}.

Unlike Twisted's default, a line longer than C{MAX_LENGTH} does not close the
device: it is discarded up to its LF (even if that LF arrives much later),
logged once, and the lines after it are handled normally.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from prokshy.execs.interfaces import ICommandRunner
from prokshy.lines.legacy import LegacyHandler
from prokshy._loglimit import LogLimiter
from prokshy.wire.channel import HELLO_PREFIX

__all__ = ["GuestLineProtocol"]

_log = Logger()

#: The first byte of a framed-protocol hello line (after its leading LF):
#: a line starting with it is an upgrade, never a command.
_HELLO_MARK = HELLO_PREFIX[:1]


class GuestLineProtocol(LineReceiver):
    """
    The original line protocol on the device.

    A subclass implementing the framed-protocol upgrade overrides
    L{helloLineReceived}; calling C{self.setRawMode()} there makes
    L{LineReceiver} hand the rest of the current buffer, and everything
    after it, to C{rawDataReceived}.

    @ivar handler: the L{LegacyHandler}; its C{write} is the transport's
        C{write} while connected.
    """

    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024
    #: A partial line older than this when more bytes arrive was left by a
    #: host that went away mid-line (bhyve never says so): it is dropped.
    staleLine = 5.0

    def __init__(
        self, runner: ICommandRunner, clock: IReactorTime, maxLine: int = 64 * 1024
    ) -> None:
        self.runner = runner
        self.clock = clock
        self.MAX_LENGTH = maxLine
        self.handler = LegacyHandler(runner, self._writeOutput, clock)
        self._discarding = False
        self._discardedBytes = 0
        self._lastData = 0.0
        self._rest = b""
        self._lost = False
        self._dropLogged = False
        self._longLineLog = LogLimiter(clock, _log)
        self._helloLog = LogLimiter(clock, _log)

    # -- connection --------------------------------------------------------

    def connectionMade(self) -> None:
        self._lost = False
        self._dropLogged = False
        if IConsumer.providedBy(self.transport):
            self.handler.consumer = self.transport

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        """
        Forget partial input; a running command keeps running, but its
        output is dropped.
        """
        self._lost = True
        if self._discarding:
            self._endDiscard()
        self.clearLineBuffer()
        self.handler.reset()
        self.handler.consumer = None
        self._longLineLog.flush()
        self._helloLog.flush()

    def _writeOutput(self, data: bytes) -> None:
        if self._lost or self.transport is None:
            if not self._dropLogged:
                self._dropLogged = True
                _log.warn(
                    "dropped command output: the device is closed "
                    "({nbytes} bytes, later drops not logged)",
                    nbytes=len(data),
                )
            return
        self.transport.write(data)

    # -- input -------------------------------------------------------------

    def hostAway(self) -> None:
        """
        The device says the host left (Linux virtio-ports): a partial line,
        and a name still waiting for its argument line, can never complete.
        """
        if self.line_mode:
            self._dropPartial("the host went away")

    def _dropPartial(self, why: str) -> None:
        if self._buffer:
            _log.info(
                "discarded a partial line ({nbytes} bytes): {why}",
                nbytes=len(self._buffer),
                why=why,
            )
            self.clearLineBuffer()
        self.handler.dropPending(why)

    def dataReceived(self, data: bytes) -> Any:
        if self._busyReceiving:
            return LineReceiver.dataReceived(self, data)
        if self.line_mode:
            now = self.clock.seconds()
            if self._buffer and now - self._lastData > self.staleLine:
                self._dropPartial(
                    "no more of it came for %.0f s (the host left mid-line?)"
                    % (now - self._lastData,)
                )
            self._lastData = now
        while data:
            if self._discarding and self.line_mode:
                end = data.find(self.delimiter)
                if end < 0:
                    self._discardedBytes += len(data)
                    return None
                self._discardedBytes += end
                self._endDiscard()
                data = data[end + len(self.delimiter) :]
                if not data:
                    return None
            self._rest = b""
            why = LineReceiver.dataReceived(self, data)
            data, self._rest = self._rest, b""
            if why:
                return why
        return None

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        Discard the over-long line up to its LF and keep what follows it,
        instead of closing the connection.

        @param line: the rest of the buffer, starting with the long line.
        """
        end = line.find(self.delimiter)
        if end < 0:
            self._discarding = True
            self._discardedBytes = len(line)
            return None
        self._discarding = True
        self._discardedBytes = end
        self._endDiscard()
        # dataReceived feeds this back once LineReceiver has returned.
        self._rest = line[end + len(self.delimiter) :]
        return None

    def _endDiscard(self) -> None:
        self._discarding = False
        size, self._discardedBytes = self._discardedBytes, 0
        self._longLineLog.emit(
            "discarded over-long line ({nbytes} bytes, limit {limit})",
            nbytes=size,
            limit=self.MAX_LENGTH,
        )
        if not self._lost:
            self.handler.lineDiscarded()

    def lineReceived(self, line: bytes) -> Optional[Any]:
        if line.startswith(_HELLO_MARK):
            return self.helloLineReceived(line)
        self.handler.lineReceived(line)
        return None

    def helloLineReceived(self, line: bytes) -> Optional[Any]:
        """
        A line starting with C{0xFF}: a framed-protocol hello.  This
        implementation has no framed mode: it logs and ignores it.
        """
        self._helloLog.emit(
            "ignored framed-protocol hello line ({nbytes} bytes): "
            "framed mode is not available here",
            nbytes=len(line),
        )
        return None
