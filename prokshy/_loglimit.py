"""
L{LogLimiter}: at most one log event per interval, with a count of the
ones it held back.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel

__all__ = ["LogLimiter"]


class LogLimiter:
    """
    Emit at most one log event per C{interval}; count the others and report
    the count with the next one that is emitted (or on L{flush}).

    A flood of garbage therefore costs at most one log line per interval.
    """

    def __init__(
        self,
        clock: IReactorTime,
        log: Logger,
        interval: float = 1.0,
        level: LogLevel = LogLevel.warn,
    ) -> None:
        self._clock = clock
        self._log = log
        self._interval = interval
        self._level = level
        self._last: Optional[float] = None
        self.suppressed = 0

    def emit(self, format: str, **kwargs: Any) -> bool:
        """
        Log C{format} (a L{twisted.logger} format string; put data in
        C{kwargs}, never in C{format}) unless one was logged less than
        C{interval} ago.

        @return: whether it was logged.
        """
        now = self._clock.seconds()
        if self._last is not None and now - self._last < self._interval:
            self.suppressed += 1
            return False
        self._last = now
        if self.suppressed:
            format += " ({suppressed} similar messages suppressed)"
            kwargs["suppressed"] = self.suppressed
            self.suppressed = 0
        self._log.emit(self._level, format, **kwargs)
        return True

    def flush(self) -> None:
        """
        Report the suppressed count, if any.
        """
        if self.suppressed:
            self._log.emit(
                self._level,
                "{suppressed} similar messages suppressed",
                suppressed=self.suppressed,
            )
            self.suppressed = 0
