# -*- test-case-name: tests.unit.test_host_queue -*-
"""
The daemon's per-VM queue of stream opens.

Every stream a client (framed or line protocol) opens on a VM goes through
the VM's L{OpenQueue}.  Opens of kind C{exec} are limited: the guest runs
at most C{--max-concurrency} commands and lets C{--max-queue} more wait,
and refuses the rest as C{busy}.  So the daemon keeps at most C{limit} exec
opens in flight per VM (sent, or accepted and not yet ended) and holds the
others here:

    event                                   action
    --------------------------------------  ------------------------------------
    open, in flight < limit (or no limit)   send the OPEN now
    open, in flight >= limit                wait (bounded: count and bytes),
                                            beyond the bound: refuse "busy"
    guest refuses an exec with "busy"       limit := execs still in flight;
                                            the open waits again, ahead of
                                            the others (round-robin too); with
                                            nothing of ours in flight to wait
                                            for, retry every IDLE_RETRY s, at
                                            most IDLE_RETRIES times, then
                                            refuse "busy"
    an exec in flight ends                  send the next waiting open
    session up                              limit := max_concurrency +
                                            max_queue if the guest's hello
                                            says them, else none (learnt)
    session ends                            waiting opens fail with the reason

Waiting opens are taken round-robin across clients (one client connection
is one key), so a client with many requests waits behind its own, never
pushes the others out.  Other kinds (C{info}) are not limited.

An OPEN too big for the VM's session (its args exceed the guest's
C{max_payload}) is refused C{too-big} at once, with one rate-limited log
line.
"""

import bisect
import itertools
from collections import OrderedDict

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from prokshy._loglimit import LogLimiter
from prokshy.link.session import NotConnected, SessionEnded
from prokshy.streams.stream import StreamRefused, encodeJSON

#: Opens waiting per VM, and the bytes of their arguments, beyond which
#: more are refused as busy.
MAX_WAITING = 4096
MAX_WAITING_BYTES = 8 * 1024 * 1024
#: A guest that says busy while none of our commands runs (it is still
#: killing cancelled ones) is asked again this often, this many times.
IDLE_RETRY = 0.25
IDLE_RETRIES = 8

_log = Logger()


class _Tracked:
    """
    Wraps the protocol of a limited stream, to learn when the stream ends.
    Everything else is passed through.
    """

    def __init__(self, protocol, ended):
        self._protocol = protocol
        self._ended = ended
        # What the stream hands over follows the wrapped protocol's
        # interfaces (prokshy.streams.interfaces).
        directlyProvides(self, providedBy(protocol))

    def makeConnection(self, transport):
        self.transport = transport
        self._protocol.makeConnection(transport)

    def connectionLost(self, reason):
        ended, self._ended = self._ended, None
        try:
            self._protocol.connectionLost(reason)
        finally:
            if ended is not None:
                ended()

    def __getattr__(self, name):
        return getattr(self._protocol, name)


class _Rotation:
    """
    Requests by client, taken round-robin across clients, and in order of
    arrival (C{seq}) within a client.
    """

    def __init__(self):
        self._clients = OrderedDict()  # client -> list of (seq, _Request)
        self.count = 0

    def add(self, request):
        entries = self._clients.get(request.client)
        if entries is None:
            entries = self._clients[request.client] = []
        bisect.insort(entries, (request.seq, request))
        self.count += 1

    def remove(self, request):
        entries = self._clients[request.client]
        entries.remove((request.seq, request))
        if not entries:
            del self._clients[request.client]
        self.count -= 1

    def pop(self):
        client, entries = next(iter(self._clients.items()))
        _, request = entries.pop(0)
        if entries:
            self._clients.move_to_end(client)
        else:
            del self._clients[client]
        self.count -= 1
        return request

    def drain(self):
        requests = [r for entries in self._clients.values() for _, r in entries]
        self._clients.clear()
        self.count = 0
        return requests


class _Request:
    def __init__(self, seq, client, kind, args, protocol, size):
        self.seq = seq
        self.client = client
        self.kind = kind
        self.args = args
        self.protocol = protocol
        self.size = size
        self.state = "new"  # waiting | retry | sent | done
        self.cancelled = False
        self.idleRetries = 0
        self.result = Deferred(self._cancel)
        self.queue = None

    def _cancel(self, d):
        self.cancelled = True
        if self.state in ("waiting", "retry"):
            self.queue._remove(self)
        # "sent": the stream is aborted when the guest accepts it.


class OpenQueue:
    """
    The stream opens of one VM (see the module docstring).

    @param vm: the L{prokshy.host.vm.VMConnection}.
    @ivar limit: exec opens in flight allowed now, or None (not known yet).
    @ivar inFlight: exec opens sent and not yet ended.
    @ivar stats: counters for status reports.
    """

    def __init__(self, vm, clock, maxWaiting=MAX_WAITING, maxWaitingBytes=MAX_WAITING_BYTES):
        self.vm = vm
        self.clock = clock
        self.maxWaiting = maxWaiting
        self.maxWaitingBytes = maxWaitingBytes
        self.limit = None
        self.advertised = None
        self.inFlight = 0
        self.waitingBytes = 0
        self._waiting = _Rotation()
        self._retry = _Rotation()  # opens the guest refused as busy: first
        self._seq = itertools.count()
        self._count = 0
        self._pumping = False
        self._retryCall = None
        self._tooBigLog = LogLimiter(clock, _log)
        self._busyLog = LogLimiter(clock, _log, interval=10.0)
        self.stats = {"retried": 0, "refused_busy": 0, "too_big": 0, "peak_waiting": 0}

    @property
    def waiting(self):
        return self._count

    # -- session ------------------------------------------------------------

    def sessionUp(self, info):
        """
        A new session: forget what the last guest allowed.  A guest hello
        with C{max_concurrency} and C{max_queue} sets the limit at once.
        """
        hello = info.peerHello if info is not None else {}
        running, queued = _count(hello.get("max_concurrency")), _count(hello.get("max_queue"))
        self.advertised = running + queued if running else None
        self.limit = self.advertised
        self._pump()

    def sessionDown(self, reason):
        """
        The session ended: waiting opens fail with C{reason}.
        """
        why = str(reason)
        self._cancelRetry()
        waiting = self._retry.drain() + self._waiting.drain()
        self._count = 0
        self.waitingBytes = 0
        for request in waiting:
            request.state = "done"
            request.result.errback(StreamRefused("vm-unavailable", why))

    # -- opening ------------------------------------------------------------

    def open(self, client, kind, args, protocol):
        """
        Open C{kind} on the VM for C{client}, now or when there is room.

        @param client: the key of the client connection (for fairness).
        @return: a Deferred firing with the VM's L{Stream} once the guest
            accepts, or failing with L{StreamRefused} (C{busy},
            C{vm-unavailable}, C{too-big}, or the guest's own refusal).
            Cancelling it withdraws a waiting open, or aborts the stream
            once accepted.
        """
        from prokshy.host.vm import VMUnavailable

        try:
            mux = self.vm.mux
        except VMUnavailable as e:
            return _refused("vm-unavailable", e)
        body = dict(args)
        body["kind"] = kind
        body["window"] = mux.window
        size = len(encodeJSON(body))
        allowed = mux.link.info.sendPayload
        if size > allowed:
            self.stats["too_big"] += 1
            self._tooBigLog.emit(
                "vm {vm}: refused a {kind} open too big to relay ({size} bytes, the guest takes {allowed})",
                vm=self.vm.name,
                kind=kind,
                size=size,
                allowed=allowed,
            )
            return _refused(
                "too-big",
                "the request is %d bytes; vm %s takes at most %d" % (size, self.vm.name, allowed),
            )
        request = _Request(next(self._seq), client, kind, args, protocol, size)
        request.queue = self
        if kind != "exec":
            self._send(request, mux)
            return request.result
        if self._room() and not self._count:
            self._send(request, mux)
            return request.result
        if self._count >= self.maxWaiting or self.waitingBytes + size > self.maxWaitingBytes:
            self.stats["refused_busy"] += 1
            self._busyLog.emit(
                "vm {vm} busy: {waiting} opens waiting, {inflight} in flight; refusing more",
                vm=self.vm.name,
                waiting=self._count,
                inflight=self.inFlight,
            )
            return _refused("busy", "vm %s busy: %d requests waiting" % (self.vm.name, self._count))
        self._enqueue(request)
        return request.result

    def _room(self):
        return self.limit is None or self.inFlight < self.limit

    def _enqueue(self, request, retry=False):
        request.state = "retry" if retry else "waiting"
        (self._retry if retry else self._waiting).add(request)
        self._count += 1
        self.waitingBytes += request.size
        if self._count > self.stats["peak_waiting"]:
            self.stats["peak_waiting"] = self._count

    def _remove(self, request):
        (self._retry if request.state == "retry" else self._waiting).remove(request)
        self._count -= 1
        self.waitingBytes -= request.size
        request.state = "done"

    def _next(self):
        request = (self._retry if self._retry.count else self._waiting).pop()
        self._count -= 1
        self.waitingBytes -= request.size
        return request

    def _pump(self):
        """
        Send waiting opens while there is room.
        """
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._count and self._room():
                proto = self.vm.protocol
                if proto is None or not proto.mux.connected:
                    return  # sessionDown fails them, or the next session takes them
                self._send(self._next(), proto.mux)
        finally:
            self._pumping = False

    def _send(self, request, mux):
        request.state = "sent"
        limited = request.kind == "exec"
        protocol = request.protocol
        if limited:
            self.inFlight += 1
            protocol = _Tracked(protocol, self._ended)
        try:
            d = mux.openStream(request.kind, request.args, protocol)
        except (NotConnected, ValueError) as e:
            if limited:
                self.inFlight -= 1
            request.state = "done"
            if not request.cancelled:
                request.result.errback(StreamRefused("vm-unavailable", str(e)))
            return
        d.addCallbacks(self._accepted, self._failed, (request,), None, (request, limited))

    def _accepted(self, stream, request):
        request.state = "done"
        if request.cancelled:
            stream.abort("cancelled", "the client went away")
            return
        request.result.callback(stream)

    def _failed(self, failure, request, limited):
        if limited:
            self.inFlight -= 1
        if failure.check(StreamRefused) and failure.value.code == "busy" and limited:
            if not request.cancelled and self.inFlight > 0:
                # The guest is full: wait for one of ours to end.
                self.limit = self.inFlight
                self.stats["retried"] += 1
                self._enqueue(request, retry=True)
                return
            if not request.cancelled and request.idleRetries < IDLE_RETRIES:
                # Full, but not with ours: ask again a little later.
                request.idleRetries += 1
                self.stats["retried"] += 1
                self._enqueue(request, retry=True)
                self._retryLater()
                return
            self.stats["refused_busy"] += 1
            failure = Failure(StreamRefused("busy", "vm %s busy: %s" % (self.vm.name, failure.value.message)))
        request.state = "done"
        if limited:
            self._pump()
        if request.cancelled:
            return
        if failure.check(SessionEnded):
            failure = Failure(StreamRefused("vm-unavailable", str(failure.value)))
        elif failure.check(CancelledError):
            return
        request.result.errback(failure)

    def _retryLater(self):
        if self._retryCall is None:
            self._retryCall = self.clock.callLater(IDLE_RETRY, self._retryNow)

    def _retryNow(self):
        self._retryCall = None
        self._pump()

    def _cancelRetry(self):
        if self._retryCall is not None and self._retryCall.active():
            self._retryCall.cancel()
        self._retryCall = None

    def _ended(self):
        self.inFlight -= 1
        self._pump()

    def status(self):
        """
        A JSON-able description for status reports.
        """
        return {
            "execs_in_flight": self.inFlight,
            "exec_limit": self.limit,
            "waiting": self._count,
            "busy_retries": self.stats["retried"],
            "refused_busy": self.stats["refused_busy"],
            "refused_too_big": self.stats["too_big"],
        }


def _count(value):
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 0


def _refused(code, message):
    d = Deferred()
    d.errback(StreamRefused(code, str(message)))
    return d
