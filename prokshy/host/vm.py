# -*- test-case-name: tests.system.test_host -*-
"""
One VM as the host daemon sees it: a persistent connection to its console
socket, re-established with backoff, and a framed session on it.

    state          meaning
    -------------  ---------------------------------------------------------
    connecting     no socket connection (the VM is down, or not started yet)
    connected      socket connected, no framed session (the agent is not up)
    up             framed session established: streams can be opened

The daemon says hello after every connect and reads the socket continuously
(bhyve stalls the guest's output when its one client stops reading).

Logging: one line per state change (and per new reason a connect fails
for), then, while the VM stays down, a reminder after 1 minute, doubling up
to one every hour.  Twisted's "Scheduling retry N" line for each connection
attempt (one a second) is not logged.

Stopping the service (the daemon stopping) says GOODBYE on the session, so
that the guest ends it at once and a later client of the VM's socket
starts clean; the stop waits at most L{STOP_FLUSH} seconds for that to be
written.
"""

import time

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from prokshy._retrylog import quietLogger
from prokshy.forward.interfaces import IForwardVM
from prokshy.host.client import HostProtocol
from prokshy.host.queue import OpenQueue
from prokshy.streams.stream import StreamRefused

#: Seconds before the first "still down" reminder; it doubles up to
#: L{REMIND_MAX}.
REMIND_FIRST = 60.0
REMIND_MAX = 3600.0
#: Seconds a stopping daemon waits for its GOODBYE to be written to a VM.
STOP_FLUSH = 1.0


class VMUnavailable(Exception):
    """
    The VM has no session now.

    @ivar vm: the VM's name.
    @ivar detail: why, without the VM's name.
    """

    def __init__(self, vm, detail):
        Exception.__init__(self, "vm %s: %s" % (vm, detail))
        self.vm = vm
        self.detail = detail


class _VMService(ClientService):
    """
    A L{ClientService} that logs no line per connection attempt and says
    GOODBYE to the VM when it stops.
    """

    _log = quietLogger("prokshy.host.vm.ClientService")

    def __init__(self, vm, *args, **kwargs):
        ClientService.__init__(self, *args, **kwargs)
        self.vm = vm

    def startService(self):
        self.vm._stopping = False
        ClientService.startService(self)

    def stopService(self):
        proto = self.vm.protocol
        self.vm._stopping = True
        self.vm._cancelReminder()
        if proto is None or proto.transport is None:
            return ClientService.stopService(self)
        if proto.link is not None and proto.link.state == "UP":
            proto.link.goodbye("host daemon stopping")
        stopped = ClientService.stopService(self)
        # loseConnection writes what is buffered (the GOODBYE) first; a VM
        # socket that takes nothing is aborted after STOP_FLUSH seconds.
        transport = proto.transport
        clock = self.vm.reactor
        timer = clock.callLater(STOP_FLUSH, transport.abortConnection)

        def done(result):
            if timer.active():
                timer.cancel()
            return result

        return stopped.addBoth(done)


class _RecordingEndpoint:
    """
    Wraps an endpoint to remember why the last connect failed.
    """

    def __init__(self, endpoint, vm):
        self.endpoint = endpoint
        self.vm = vm

    def connect(self, factory):
        d = self.endpoint.connect(factory)
        d.addErrback(self._failed)
        return d

    def _failed(self, failure):
        self.vm._connectFailed(failure)
        return failure

    def __repr__(self):
        return "<vm %s console %s>" % (self.vm.name, self.vm.path)


@implementer(IForwardVM)
class VMConnection:
    """
    @ivar name: the VM's name.
    @ivar path: its console socket.
    @ivar state: C{"connecting"}, C{"connected"} or C{"up"}.
    @ivar since: wall-clock time of the last state change.
    @ivar protocol: the current L{HostProtocol}, or None.
    @ivar queue: the L{OpenQueue} every stream opened on this VM goes
        through.
    """

    log = Logger()

    def __init__(self, reactor, name, path, linkConfig=None, maxDelay=1.0, endpoint=None,
                 maxWaiting=None):
        self.reactor = reactor
        self.name = name
        self.path = path
        self.linkConfig = linkConfig
        self.state = "connecting"
        self.since = time.time()
        self.reason = "not connected yet"
        self.protocol = None
        self.sessions = 0
        self._logged = None
        self._reminder = None
        self._remindDelay = REMIND_FIRST
        self._stopping = False
        self._upObservers = []
        self._downObservers = []
        self._guestOpens = {}
        kwargs = {} if maxWaiting is None else {"maxWaiting": maxWaiting}
        self.queue = OpenQueue(self, reactor, **kwargs)
        if endpoint is None:
            endpoint = UNIXClientEndpoint(reactor, path, timeout=2)
        factory = Factory.forProtocol(self._buildProtocol)
        factory.noisy = False
        self.service = _VMService(
            self,
            _RecordingEndpoint(endpoint, self),
            factory,
            retryPolicy=backoffPolicy(initialDelay=0.1, maxDelay=maxDelay, factor=2.0, jitter=lambda: 0),
            clock=reactor,
        )

    def _setState(self, state, reason):
        old = self.state
        changed = state != old
        if changed:
            self.state = state
            self.since = time.time()
        self.reason = reason
        if changed or (state != "up" and reason != self._logged):
            self._logged = reason
            if changed:
                self.log.info("vm {vm}: {old} -> {new} ({why})", vm=self.name, old=old, new=state, why=reason)
            else:
                self.log.info("vm {vm}: {state} ({why})", vm=self.name, state=state, why=reason)
            self._cancelReminder()
            self._remindDelay = REMIND_FIRST
            if state != "up" and not self._stopping:
                self._scheduleReminder()

    # -- reminders while down -----------------------------------------------

    def _scheduleReminder(self):
        self._reminder = self.reactor.callLater(self._remindDelay, self._remind)

    def _cancelReminder(self):
        if self._reminder is not None and self._reminder.active():
            self._reminder.cancel()
        self._reminder = None

    def _remind(self):
        self._reminder = None
        if self.state == "up" or self._stopping:
            return
        self.log.info(
            "vm {vm}: still {state} since {since} ({why})",
            vm=self.name,
            state=self.state,
            since=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)),
            why=self.reason,
        )
        self._remindDelay = min(self._remindDelay * 2, REMIND_MAX)
        self._scheduleReminder()

    # -- the connection -----------------------------------------------------

    def _buildProtocol(self):
        proto = HostProtocol(self.reactor, self.linkConfig)
        proto.mux.openHandler = self._guestOpened
        proto.closedReason = "vm down: console socket closed"
        proto.mux.whenUp(lambda info: self._up(proto, info))
        proto.mux.whenDown(lambda why: self._down(proto, why))
        proto.whenLost(lambda why: self._lost(proto, why))
        self.protocol = proto
        self._setState("connected", "socket connected, waiting for the agent")
        return proto

    def _up(self, proto, info):
        if proto is self.protocol:
            self.sessions += 1
            self._setState("up", "session with agent %s" % (info.peerHello.get("agent", "?"),))
            self.queue.sessionUp(info)
            for cb in list(self._upObservers):
                cb(proto.mux)

    def _down(self, proto, why):
        if proto is self.protocol:
            wasUp = self.state == "up"
            if wasUp:
                self._setState("connected", str(why))
            self.queue.sessionDown(why)
            if wasUp:
                for cb in list(self._downObservers):
                    cb(why)

    def _lost(self, proto, why):
        if proto is self.protocol:
            self.protocol = None
            self._setState("connecting", "socket closed: %s" % (why.getErrorMessage(),))

    def _connectFailed(self, failure):
        self._setState("connecting", failure.getErrorMessage())

    # -- IForwardVM -----------------------------------------------------------

    def session(self):
        try:
            return self.mux
        except VMUnavailable:
            return None

    def unavailable(self):
        try:
            self.mux
        except VMUnavailable as e:
            return e.detail
        return "up"

    def whenUp(self, callback):
        self._upObservers.append(callback)

    def whenDown(self, callback):
        self._downObservers.append(callback)

    def serveGuestOpens(self, kind, handler):
        self._guestOpens[kind] = handler

    def _guestOpened(self, stream):
        handler = self._guestOpens.get(stream.kind)
        if handler is None:
            raise StreamRefused("unknown-kind", "the host opens no %r streams" % (stream.kind,))
        return handler(stream)

    @property
    def mux(self):
        """
        The session's stream table.

        @raise VMUnavailable: with a clear reason, if there is no session.
        """
        proto = self.protocol
        if self.state != "up" or proto is None or not proto.mux.connected:
            raise VMUnavailable(
                self.name,
                "%s since %s (%s)"
                % (
                    "no agent session" if self.state == "connected" else "not connected",
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)),
                    self.reason,
                ),
            )
        return proto.mux

    def status(self):
        """
        A JSON-able description for status reports.
        """
        d = {
            "name": self.name,
            "socket": self.path,
            "state": self.state,
            "since": round(self.since, 3),
            "reason": self.reason,
            "sessions": self.sessions,
        }
        d.update(self.queue.status())
        proto = self.protocol
        if proto is not None and proto.link is not None:
            snap = proto.link.snapshot()
            d.update(
                session_age=snap["session_age"],
                rtt_ms=snap["rtt_ms"],
                streams_open=len(proto.mux.streams),
                bytes_in=snap["bytes_in"],
                bytes_out=snap["bytes_out"],
                resyncs=snap["resyncs"],
                skipped_bytes=snap["skipped_bytes"],
                retransmits=snap["retransmits"],
            )
            if proto.mux.info is not None:
                d["agent"] = proto.mux.info.peerHello.get("agent")
        return d


__all__ = ["VMConnection", "VMUnavailable"]
