# -*- test-case-name: tests.test_host -*-
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
"""

import time

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from prokshy.host.client import HostProtocol


class VMUnavailable(Exception):
    """
    The VM has no session now.
    """


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


class VMConnection:
    """
    @ivar name: the VM's name.
    @ivar path: its console socket.
    @ivar state: C{"connecting"}, C{"connected"} or C{"up"}.
    @ivar since: wall-clock time of the last state change.
    @ivar protocol: the current L{HostProtocol}, or None.
    """

    log = Logger()

    def __init__(self, reactor, name, path, linkConfig=None, maxDelay=1.0):
        self.reactor = reactor
        self.name = name
        self.path = path
        self.linkConfig = linkConfig
        self.state = "connecting"
        self.since = time.time()
        self.reason = "not connected yet"
        self.protocol = None
        self.sessions = 0
        endpoint = _RecordingEndpoint(UNIXClientEndpoint(reactor, path, timeout=2), self)
        factory = Factory.forProtocol(self._buildProtocol)
        factory.noisy = False
        self.service = ClientService(
            endpoint,
            factory,
            retryPolicy=backoffPolicy(initialDelay=0.1, maxDelay=maxDelay, factor=2.0, jitter=lambda: 0),
            clock=reactor,
        )

    def _setState(self, state, reason):
        if state != self.state:
            self.log.info(
                "vm {vm}: {old} -> {new} ({why})", vm=self.name, old=self.state, new=state, why=reason
            )
            self.state = state
            self.since = time.time()
        self.reason = reason

    def _buildProtocol(self):
        proto = HostProtocol(self.reactor, self.linkConfig)
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

    def _down(self, proto, why):
        if proto is self.protocol and self.state == "up":
            self._setState("connected", str(why))

    def _lost(self, proto, why):
        if proto is self.protocol:
            self.protocol = None
            self._setState("connecting", "socket closed: %s" % (why.getErrorMessage(),))

    def _connectFailed(self, failure):
        self._setState("connecting", failure.getErrorMessage())

    @property
    def mux(self):
        """
        The session's stream table.

        @raise VMUnavailable: with a clear reason, if there is no session.
        """
        proto = self.protocol
        if self.state != "up" or proto is None or not proto.mux.connected:
            raise VMUnavailable(
                "vm %s: %s since %s (%s)"
                % (
                    self.name,
                    "no agent session" if self.state == "connected" else "not connected",
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)),
                    self.reason,
                )
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
