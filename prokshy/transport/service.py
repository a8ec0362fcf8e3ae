# -*- test-case-name: tests.system.test_transport_service -*-
"""
L{DeviceService}: keep the console device open for as long as the agent runs.

The device may be missing (the VM has no such port yet, the module is not
loaded), busy (another agent holds it) or go away (unplugged, pty closed).
None of that is fatal: the service retries with a capped exponential backoff
and logs one line per change of state, never one per retry.

It is Twisted's L{ClientService}: its machine does the connecting, waiting
and stopping.  What is added:

  - the retry policy, L{DeviceBackoff}: Twisted's L{backoffPolicy}
    (L{DeviceService.initialDelay} doubling to L{DeviceService.maxDelay}),
    whose count restarts only once an open has held for C{maxDelay}
    seconds, so that a device that opens and drops at once is not reopened
    five times a second;
  - the log: failed opens come from the endpoint (L{ReportingEndpoint}), the
    open from C{prepareConnection}, the end from the transport's
    C{whenLost} (L{IDeviceTransport}); L{ClientService}'s own per-attempt
    "Scheduling retry" lines are dropped (L{prokshy._retrylog});
  - a bounded stop: the transport gets L{DeviceService.stopTimeout} seconds
    to flush, then is aborted.

Every open goes through the endpoint again, so a tty is put back into raw
mode each time (L{prokshy.transport.endpoints.VtconClientEndpoint}).
"""

from __future__ import annotations

from typing import Any, Optional

import attrs

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from prokshy._retrylog import ReportingEndpoint, quietLogger
from prokshy.transport.endpoints import DeviceBusy, DeviceError, DeviceMissing
from prokshy.transport.interfaces import IDeviceEndpoint, IDeviceTransport

__all__ = ["DeviceBackoff", "DeviceService"]


@attrs.define
class DeviceBackoff:
    """
    The retry policy of a L{DeviceService}: for L{ClientService}, a callable
    from the number of failed attempts in a row to the delay before the next.

    L{ClientService} restarts its count at every connection; this policy
    carries it on across an open that did not hold for C{maxDelay} seconds.

    @ivar clock: an L{IReactorTime}.
    @ivar initialDelay: the first delay; each one after doubles it, up to
        C{maxDelay}.
    """

    clock: Any
    initialDelay: float
    maxDelay: float
    #: Delays given since the backoff last restarted.
    _count: int = 0
    #: When the connection that is up now was opened, or L{None}.
    _openedAt: Optional[float] = None
    _policy: Any = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # backoffPolicy's first delay (attempt 1) is initialDelay * factor.
        self._policy = backoffPolicy(
            initialDelay=self.initialDelay / 2.0,
            maxDelay=self.maxDelay,
            factor=2.0,
            jitter=lambda: 0.0,
        )

    def restart(self) -> None:
        """
        Start again from C{initialDelay} (the service starts).
        """
        self._count = 0
        self._openedAt = None

    def opened(self) -> None:
        """
        A connection is up.
        """
        self._openedAt = self.clock.seconds()

    def __call__(self, attempt: int) -> float:
        if self._openedAt is not None:
            # The connection that was up is lost: restart the backoff only
            # if it had held.
            if self.clock.seconds() - self._openedAt >= self.maxDelay:
                self._count = 0
            self._openedAt = None
        self._count += 1
        return self._policy(self._count)


class DeviceService(ClientService):
    """
    Connect C{factory}'s protocol to C{endpoint} when started, and reconnect
    whenever opening fails or the connection is lost.

    The endpoint's transports must provide L{IDeviceTransport} (those of
    L{prokshy.transport.endpoints.VtconClientEndpoint} do).

    @ivar protocol: the connected protocol, or L{None}.
    @ivar path: the device path (of an L{IDeviceEndpoint}), for the log.
    @ivar initialDelay: the first retry's delay.
    @ivar maxDelay: the longest delay; an open that held this long restarts
        the backoff.
    @ivar stopTimeout: how long C{stopService} lets the transport flush
        before closing it hard.
    """

    #: L{ClientService}'s own log, without its per-attempt lines.
    _log = quietLogger("prokshy.transport.service.ClientService")
    log = Logger()

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
        self.path = endpoint.path if IDeviceEndpoint.providedBy(endpoint) else repr(endpoint)
        self.initialDelay = initialDelay
        self.maxDelay = maxDelay
        self.stopTimeout = stopTimeout
        self.protocol = None
        self._transport: Optional[IDeviceTransport] = None
        self._state: Any = None
        self._awaiting: Optional[Deferred] = None
        self._backoff = DeviceBackoff(reactor, initialDelay, maxDelay)
        ClientService.__init__(
            self,
            ReportingEndpoint(endpoint, self._failed, "<device %s>" % (self.path,)),
            factory,
            retryPolicy=self._backoff,
            clock=reactor,
            prepareConnection=self._opened,
        )

    def __repr__(self) -> str:
        return "<DeviceService %s>" % (self.path,)

    # -- state and logging ----------------------------------------------

    def _enter(self, state: Any, level: str, fmt: str, **kw: Any) -> None:
        if state == self._state:
            return
        self._state = state
        getattr(self.log, level)(fmt, path=self.path, **kw)

    # -- service ----------------------------------------------------------

    def startService(self) -> None:
        if self.running:
            return ClientService.startService(self)  # it logs the duplicate
        self._backoff.restart()
        self._state = None
        ClientService.startService(self)
        self._awaitConnection()

    def stopService(self) -> Deferred:
        transport = self._transport
        stopped = ClientService.stopService(self)
        if transport is None:
            return stopped
        # ClientService closes the transport and waits; we wait for our own
        # bookkeeping too (whenLost), and abort a transport that takes more
        # than stopTimeout seconds.
        timer = self._reactor.callLater(self.stopTimeout, self._forceClose, transport)
        closed: Deferred = Deferred()
        transport.whenLost(lambda reason: closed.callback(None))

        def done(result: Any) -> None:
            if timer.active():
                timer.cancel()

        return gatherResults([stopped, closed]).addCallback(done)

    def _forceClose(self, transport: IDeviceTransport) -> None:
        self.log.warn(
            "device {path} did not close in {timeout}s; aborting",
            path=self.path,
            timeout=self.stopTimeout,
        )
        transport.abortConnection()

    # -- what ClientService's machine reports ---------------------------------

    def _failed(self, reason: Failure) -> None:
        """
        The endpoint failed to open the device (ClientService retries).
        """
        if reason.check(CancelledError):
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

    def _opened(self, proxy) -> None:
        """
        ClientService's C{prepareConnection}: the device is open.

        @param proxy: ClientService's stand-in for the protocol.
        """
        transport = proxy.transport
        if not IDeviceTransport.providedBy(transport):
            # A programming error: ClientService counts it as a failed
            # attempt (and leaves the connection as it is).
            error = "DeviceService needs an IDeviceTransport, not a %s" % (type(transport).__name__,)
            self._enter(("error", TypeError, error), "error", "device {path}: {error}", error=error)
            raise TypeError(error)
        self._transport = transport
        self._backoff.opened()
        transport.whenLost(lambda reason: self._lost(transport, reason))

    def _awaitConnection(self) -> None:
        """
        Learn the next protocol from ClientService (at once if connected).
        """
        if self._awaiting is None:
            d = self._awaiting = self.whenConnected()
            d.addCallbacks(self._connected, self._notConnecting)

    def _connected(self, protocol) -> None:
        self._awaiting = None
        self.protocol = protocol
        self._enter("open", "info", "device {path} opened")

    def _notConnecting(self, reason: Failure) -> None:
        # The service stopped.
        self._awaiting = None
        reason.trap(CancelledError)

    def _lost(self, transport: IDeviceTransport, reason: Failure) -> None:
        """
        The transport's C{whenLost}: the connection is over (ClientService
        has already scheduled the next open, unless it is stopping).
        """
        if transport is not self._transport:
            # Restarted while stopping: ClientService opened the next one
            # before this one's end got here.
            return
        self._transport = None
        self.protocol = None
        if not self.running:
            self._enter("closed", "info", "device {path} closed")
            return
        self._awaitConnection()
        if reason.check(ConnectionDone):
            self._enter("lost", "info", "device {path} closed; reopening")
        else:
            self._enter(
                "lost",
                "warn",
                "device {path} lost, reopening: {error}",
                error=reason.getErrorMessage(),
            )
