# -*- test-case-name: tests.system.test_guest_reaper -*-
"""
L{ProcessReaper}: the agent's service for finding and killing every process
a command leaves behind.

While the agent runs it is a subreaper (L{prokshy.guest.subreaper}) and
reaps the orphans reparented to it; it keeps the record of running commands
(L{prokshy.guest.record}) and, at start, kills the leftovers a killed
predecessor recorded there.  Finding a command's descendants is
L{prokshy.guest.proctable}.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.application import service
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from prokshy.guest.record import ProcessRecord, RecordError, killLeftovers
from prokshy.guest.subreaper import acquireSubreaper, reapStrays, releaseSubreaper

__all__ = ["ProcessReaper"]

_log = Logger()


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
