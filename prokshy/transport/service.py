# -*- test-case-name: tests.test_transport_service -*-
"""
L{DeviceService}: keep the console device open for as long as the agent runs.

The device may be missing (the VM has no such port yet, the module is not
loaded), busy (another agent holds it) or go away (unplugged, pty closed).
None of that is fatal: the service retries with a capped exponential backoff
and logs one line per change of state, never one per retry.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

from twisted.application import service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from prokshy.transport.endpoints import DeviceBusy, DeviceError, DeviceMissing

__all__ = ["DeviceService"]


class _LossNotifyingProtocol:
    """
    Stands in for a protocol and tells the service when its connection is
    lost; everything else goes to the real protocol (so optional methods such
    as C{hostAway} are found with C{getattr}).
    """

    def __init__(self, protocol, onLost: Callable[[Failure], None]) -> None:
        self.__dict__["_protocol"] = protocol
        self.__dict__["_onLost"] = onLost

    def connectionLost(self, reason: Failure) -> None:
        try:
            self._protocol.connectionLost(reason)
        finally:
            self._onLost(reason)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._protocol, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._protocol, name, value)

    def __repr__(self) -> str:
        return "<%s wrapping %r>" % (type(self).__name__, self._protocol)


class _LossNotifyingFactory(Factory):
    def __init__(self, factory, onLost: Callable[[Failure], None]) -> None:
        self._factory = factory
        self._onLost = onLost

    def buildProtocol(self, addr):
        protocol = self._factory.buildProtocol(addr)
        if protocol is None:
            return None
        return _LossNotifyingProtocol(protocol, self._onLost)


class DeviceService(service.Service):
    """
    Connect C{factory}'s protocol to C{endpoint} when started, and reconnect
    whenever opening fails or the connection is lost.

    Retries wait L{initialDelay} seconds, doubling up to L{maxDelay}.  The
    backoff starts again from L{initialDelay} once an open has held for
    L{maxDelay} seconds, so a device that opens and drops at once is not
    reopened five times a second.

    @ivar protocol: the connected protocol, or L{None}.
    @ivar stopTimeout: how long C{stopService} lets the transport flush
        before closing it hard.
    """

    _log = Logger()

    def __init__(
        self,
        reactor,
        endpoint,
        factory,
        initialDelay: float = 0.2,
        maxDelay: float = 5.0,
        stopTimeout: float = 5.0,
    ) -> None:
        self._reactor = reactor
        self.endpoint = endpoint
        self.factory = factory
        self.initialDelay = initialDelay
        self.maxDelay = maxDelay
        self.stopTimeout = stopTimeout
        self.protocol = None
        self._delay = initialDelay
        self._wrapper: Optional[_LossNotifyingProtocol] = None
        self._openedAt = 0.0
        self._connecting: Optional[Deferred] = None
        self._retryCall = None
        self._stopCall = None
        self._stopWaiters: List[Deferred] = []
        self._state: Any = None

    @property
    def path(self) -> str:
        return getattr(self.endpoint, "path", repr(self.endpoint))

    def __repr__(self) -> str:
        return "<DeviceService %s>" % (self.path,)

    # -- state and logging ----------------------------------------------

    def _enter(self, state: Any, level: str, fmt: str, **kw: Any) -> None:
        if state == self._state:
            return
        self._state = state
        getattr(self._log, level)(fmt, path=self.path, **kw)

    # -- service ----------------------------------------------------------

    def startService(self) -> None:
        service.Service.startService(self)
        self._delay = self.initialDelay
        self._state = None
        self._attempt()

    def stopService(self) -> Deferred:
        service.Service.stopService(self)
        if self._retryCall is not None and self._retryCall.active():
            self._retryCall.cancel()
        self._retryCall = None
        if self._connecting is not None:
            self._connecting.cancel()
        if self._wrapper is None:
            return succeed(None)
        d = Deferred()
        self._stopWaiters.append(d)
        if self._stopCall is None:
            transport = self._wrapper.transport
            self._stopCall = self._reactor.callLater(self.stopTimeout, self._forceClose)
            transport.loseConnection()
        return d

    def _forceClose(self) -> None:
        self._stopCall = None
        if self._wrapper is None:
            return
        transport = self._wrapper.transport
        self._log.warn("device {path} did not close in {timeout}s; aborting",
                       path=self.path, timeout=self.stopTimeout)
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.connectionLost(Failure(ConnectionAborted()))

    # -- the loop -----------------------------------------------------------

    def _attempt(self) -> None:
        self._retryCall = None
        factory = _LossNotifyingFactory(self.factory, self._lost)
        d = self._connecting = maybeDeferred(self.endpoint.connect, factory)
        d.addCallbacks(self._opened, self._failed)

    def _opened(self, wrapper: _LossNotifyingProtocol) -> None:
        self._connecting = None
        self._wrapper = wrapper
        self.protocol = wrapper._protocol
        self._openedAt = self._reactor.seconds()
        self._enter("open", "info", "device {path} opened")
        if not self.running:
            wrapper.transport.loseConnection()

    def _failed(self, reason: Failure) -> None:
        self._connecting = None
        if reason.check(CancelledError) and not self.running:
            return
        if reason.check(DeviceMissing):
            self._enter("missing", "info", "device {path} missing; retrying")
        elif reason.check(DeviceBusy):
            self._enter("busy", "warn", "device {path} busy: another agent holds it; retrying")
        else:
            # A DeviceError's message names the path already.
            fmt = "{error}; retrying" if reason.check(DeviceError) else "device {path}: {error}; retrying"
            error = reason.getErrorMessage()
            self._enter(("error", reason.type, error), "error", fmt, error=error)
        if self.running:
            self._scheduleRetry()

    def _lost(self, reason: Failure) -> None:
        self._wrapper = None
        self.protocol = None
        if self._stopCall is not None and self._stopCall.active():
            self._stopCall.cancel()
        self._stopCall = None
        waiters, self._stopWaiters = self._stopWaiters, []
        if waiters or not self.running:
            self._enter("closed", "info", "device {path} closed")
            for d in waiters:
                d.callback(None)
            return
        if reason.check(ConnectionDone):
            self._enter("lost", "info", "device {path} closed; reopening")
        else:
            self._enter("lost", "warn", "device {path} lost, reopening: {error}",
                        error=reason.getErrorMessage())
        if self._reactor.seconds() - self._openedAt >= self.maxDelay:
            self._delay = self.initialDelay
        self._scheduleRetry()

    def _scheduleRetry(self) -> None:
        self._retryCall = self._reactor.callLater(self._delay, self._attempt)
        self._delay = min(self._delay * 2, self.maxDelay)
