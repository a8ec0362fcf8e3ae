# -*- test-case-name: tests.unit.test_forward_host,tests.system.test_forward -*-
"""
The host's forwards: configuration that outlives sessions.

    direction  the host                       each connection
    ---------  -----------------------------  --------------------------------
    forward    listens on the listen side     opens a C{connect} stream; the
               (up while the VM is away)      guest connects to the target
    reverse    opens a C{listen} stream on    the guest opens a C{forwarded}
               every new session              stream; the host connects to
                                              the target

States (a forward's row, docs/protocol.md §12.9):

    state    forward                          reverse
    -------  -------------------------------  ---------------------------------
    active   listening, the VM's session up   the guest listens
    waiting  listening, no session: a new     no session: the listen stream is
             connection is closed at once     opened when one comes up
    failed   the host could not listen        the guest refused the listen
                                              stream (until the next session)

A connection open when its session ends is aborted on both sides (its
stream ends with the session).  Removing a forward closes its listener (or
its listen stream, so the guest stops listening) at once; its live
connections go on until they end, as with C{ssh -O cancel}.
"""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from prokshy._coded import CodedError
from prokshy._loglimit import LogLimiter
from prokshy.forward.allow import DEFAULT_CONNECT, DEFAULT_LISTEN, parsePatterns, resolvedPath
from prokshy.forward.bridge import CONNECT_TIMEOUT, Splice, connectSplice, describeAddress
from prokshy.forward.interfaces import IForwardVM
from prokshy.forward.listeners import ListenFailed, Listeners
from prokshy.forward.spec import SpecError, Tcp, checkDirection, sideArgs
from prokshy.link.session import SessionEnded
from prokshy.streams.interfaces import IStreamProtocol
from prokshy.streams.stream import StreamRefused

__all__ = ["ForwardError", "ForwardTable", "NOT_SUPPORTED"]

DIRECTIONS = ("forward", "reverse")
NOT_SUPPORTED = "not supported by the guest"


class ForwardError(CodedError):
    """
    A forward could not be added or found.
    """


def _agent(mux):
    hello = mux.info.peerHello if mux.info is not None else {}
    return str(hello.get("agent", "?"))


def _guestServes(mux, kind):
    return mux.info is not None and kind in mux.info.peerHello.get("features", ())


def _refusalText(code, message, mux=None):
    if code in ("unknown-kind", "unsupported"):
        agent = "agent %s" % (_agent(mux),) if mux is not None else "its agent"
        return "%s (%s predates forwarding: %s)" % (NOT_SUPPORTED, agent, message)
    return "%s: %s" % (code, message)


class _Forward:
    """
    What both directions share: identity, state and counters.
    """

    log = Logger()

    def __init__(self, table, fid, vm, direction, spec, origin):
        self.table = table
        self.id = fid
        self.vm = IForwardVM(vm)
        self.direction = direction
        self.spec = spec
        self.origin = origin
        self.state = "waiting"
        self.reason = "starting"
        self.lastError = None
        self.removed = False
        self.splices = set()
        self.total = 0
        self._toTarget = 0
        self._fromTarget = 0

    def row(self):
        toTarget, fromTarget = self._toTarget, self._fromTarget
        for splice in self.splices:
            t, f = self._counts(splice)
            toTarget += t
            fromTarget += f
        return {
            "id": self.id,
            "vm": self.vm.name,
            "direction": self.direction,
            "listen": self.listenText(),
            "target": str(self.spec.connect),
            "state": self.state,
            "reason": self.reason,
            "last_error": self.lastError,
            "connections": len(self.splices),
            "total_connections": self.total,
            "bytes_to_target": toTarget,
            "bytes_from_target": fromTarget,
            "origin": self.origin,
        }

    def listenText(self):
        return str(self.spec.listen)

    def describe(self):
        arrow = "%s -> vm %s %s" if self.direction == "forward" else "vm %s %s -> %s"
        if self.direction == "forward":
            return arrow % (self.spec.listen, self.vm.name, self.spec.connect)
        return arrow % (self.vm.name, self.spec.listen, self.spec.connect)

    def _setState(self, state, reason):
        changed = (state, reason) != (self.state, self.reason)
        self.state, self.reason = state, reason
        if changed and not self.removed:
            self.table._event(self, "%s: %s" % (state, reason))

    def _error(self, message):
        # One connection's failure: logged at most every few seconds (with
        # a count of the rest), as anyone who can connect can cause them.
        self.lastError = message
        self.table._event(self, message, limited=True)

    def _spliced(self, splice):
        self.splices.add(splice)

    def _spliceDone(self, splice):
        if splice in self.splices:
            self.splices.discard(splice)
            t, f = self._counts(splice)
            self._toTarget += t
            self._fromTarget += f


class _LocalForward(_Forward):
    """
    C{forward}: the host listens; the guest connects.
    """

    def __init__(self, *args):
        _Forward.__init__(self, *args)
        self.port = None

    def sessionUp(self, mux):
        self._sessionChanged()

    def sessionDown(self, reason):
        self._sessionChanged()

    @staticmethod
    def _counts(splice):
        return splice.bytesToStream, splice.bytesFromStream

    def listenText(self):
        listen = self.spec.listen
        if isinstance(listen, Tcp) and listen.port == 0 and self.port is not None:
            return str(Tcp(listen.host, self.port.getHost().port))  # the port bound
        return str(listen)

    def start(self):
        factory = Factory.forProtocol(Protocol)
        factory.buildProtocol = self._buildProtocol
        factory.noisy = False
        d = self.table.listeners.listen(self.spec.listen, factory)

        def listening(port):
            self.port = port
            if self.removed:
                self.stop()
                return self
            self._sessionChanged()
            return self

        def failed(failure):
            failure.trap(ListenFailed)
            self._setState("failed", "cannot listen on %s" % (failure.value,))
            raise ForwardError("listen-failed", self.reason)

        return d.addCallbacks(listening, failed)

    def _sessionChanged(self):
        if self.port is None or self.removed:
            return
        mux = self.vm.session()
        if mux is None:
            self._setState("waiting", "listening; waiting for the VM (%s)" % (self.vm.unavailable(),))
        elif not _guestServes(mux, "connect"):
            self._setState("failed", "listening; %s (agent %s predates forwarding)" % (NOT_SUPPORTED, _agent(mux)))
        else:
            self._setState("active", "listening")

    def _buildProtocol(self, addr):
        peer = describeAddress(addr)
        self.total += 1
        mux = self.vm.session()
        if mux is None:
            self._error("connection from %s closed: vm %s: %s" % (peer, self.vm.name, self.vm.unavailable()))
            return None  # closed at once
        if not _guestServes(mux, "connect"):
            self._error(
                "connection from %s closed: %s (agent %s predates forwarding)" % (peer, NOT_SUPPORTED, _agent(mux))
            )
            return None
        splice = Splice(self._spliceDone)
        args = sideArgs(self.spec.connect)
        args["peer"] = peer
        try:
            d = mux.openStream("connect", args, splice.streamProtocol())
        except Exception as e:
            self._error("connection from %s closed: %s" % (peer, e))
            return None
        self._spliced(splice)

        def refused(failure):
            why = failure.value
            if isinstance(why, StreamRefused):
                text = "refused by the guest: %s" % (_refusalText(why.code, why.message, mux),)
            else:
                text = "closed: %s" % (failure.getErrorMessage(),)
            self._error("connection from %s %s" % (peer, text))
            splice.abandon()

        d.addErrback(refused)
        return splice.socketProtocol()

    def stop(self):
        self.removed = True
        if self.port is not None:
            port, self.port = self.port, None
            return self.table.listeners.stop(self.spec.listen, port)
        return succeed(None)


class _ReverseForward(_Forward):
    """
    C{reverse}: the guest listens (one C{listen} stream per session); the
    host connects.
    """

    def __init__(self, *args):
        _Forward.__init__(self, *args)
        self.listenStream = None
        self._started = False
        self._opening = False
        self._firstAnswer = Deferred()

    @staticmethod
    def _counts(splice):
        return splice.bytesFromStream, splice.bytesToStream

    def start(self):
        self._started = True
        mux = self.vm.session()
        if mux is None:
            self._setState("waiting", "waiting for the VM (%s)" % (self.vm.unavailable(),))
            # Settled: a later session's answer goes to the state only (a
            # refusal then must not fail a Deferred nobody holds).
            self._firstAnswer = None
            return succeed(self)
        first = self._firstAnswer
        self.sessionUp(mux)
        return first

    def _answered(self, error=None):
        first, self._firstAnswer = self._firstAnswer, None
        if first is not None:
            if error is None:
                first.callback(self)
            else:
                first.errback(error)

    def sessionUp(self, mux):
        if self.removed or not self._started or self._opening:
            return
        if not _guestServes(mux, "listen"):
            self._setState("failed", "%s (agent %s predates forwarding)" % (NOT_SUPPORTED, _agent(mux)))
            self._answered(ForwardError("unsupported", self.reason))
            return
        self._setState("waiting", "asking the guest to listen")
        protocol = _ListenSide(self)
        try:
            d = mux.openStream("listen", sideArgs(self.spec.listen), protocol)
        except Exception as e:
            self._setState("waiting", "cannot ask the guest: %s" % (e,))
            self._answered()
            return
        self._opening = True

        def accepted(stream):
            self._opening = False
            if self.removed:
                stream.loseConnection()
                self._answered(ForwardError("no-such-forward", "forward %s was removed meanwhile" % (self.id,)))
                return
            self.listenStream = stream
            self.table._listening(self, mux, stream.id)
            self._setState("active", "the guest listens")
            self._answered()

        def refused(failure):
            self._opening = False
            why = failure.value
            if isinstance(why, StreamRefused):
                text = _refusalText(why.code, why.message, mux)
                self._setState("failed", "the guest refused to listen: %s" % (text,))
                unsupported = why.code in ("unknown-kind", "unsupported")
                # The error's code is its own; its message is the guest's.
                self._answered(ForwardError("unsupported" if unsupported else why.code, text if unsupported else why.message))
            else:
                self._setState("waiting", "waiting for the VM (%s)" % (failure.getErrorMessage(),))
                self._answered()

        d.addCallbacks(accepted, refused)

    def sessionDown(self, reason):
        self.listenStream = None
        if not self.removed:
            self._setState("waiting", "waiting for the VM (session ended: %s)" % (reason,))

    def listenEnded(self, reason):
        """
        The listen stream ended while the session goes on (the guest's
        listener failed).
        """
        self.listenStream = None
        if not self.removed and self.state == "active" and not reason.check(SessionEnded):
            self._setState("failed", "the guest stopped listening: %s" % (reason.getErrorMessage(),))

    def connection(self, stream):
        """
        The guest accepted a connection on our listener: connect to the
        target.
        """
        peer = stream.args.get("peer")
        peer = peer if isinstance(peer, str) else "?"
        self.total += 1
        splice = Splice(self._spliceDone)
        self._spliced(splice)
        d = connectSplice(self.table.reactor, self.spec.connect, splice=splice, timeout=self.table.connectTimeout)

        def failed(failure):
            self.splices.discard(splice)
            if failure.check(StreamRefused):
                self._error("connection from guest %s refused: %s" % (peer, failure.value))
            return failure

        return d.addErrback(failed)

    def stop(self):
        self.removed = True
        stream, self.listenStream = self.listenStream, None
        if stream is not None and not stream.ended:
            stream.loseConnection()
        return succeed(None)


@implementer(IStreamProtocol)
class _ListenSide(Protocol):
    def __init__(self, forward):
        self.forward = forward

    def dataReceived(self, data):
        pass

    def eofReceived(self):
        pass

    def connectionLost(self, reason):
        self.forward.table._notListening(self.forward, self.transport)
        self.forward.listenEnded(reason)


class ForwardTable:
    """
    Every forward of a daemon (or of the CLI's foreground mode), by id.

    @param vms: VM name to an L{IForwardVM}, in order.
    """

    log = Logger()

    def __init__(self, reactor, vms, connectTimeout=CONNECT_TIMEOUT, clientListen=None, clientConnect=None):
        """
        @param clientListen: an L{prokshy.forward.allow.AllowList}: where
            forwards that clients add (L{add}) may make the host listen
            (default: loopback, ports 1024 and up).
        @param clientConnect: where their reverse forwards may make the
            host connect (default: loopback).  Forwards from the
            configuration (L{addConfigured}) are the administrator's, and
            not checked.
        """
        self.reactor = reactor
        self.vms = vms
        self.connectTimeout = connectTimeout
        self.listeners = Listeners(reactor)
        self._connectionLog = LogLimiter(reactor, self.log, interval=10.0)
        self.clientListen = clientListen or parsePatterns((), DEFAULT_LISTEN)
        self.clientConnect = clientConnect or parsePatterns((), DEFAULT_CONNECT)
        self.forwards = {}
        self._nextId = 1
        self._observers = []
        # (vm name, listen stream id) -> reverse forward, for this session.
        self._listeners = {}
        for vm in vms.values():
            vm = IForwardVM(vm)
            vm.serveGuestOpens("forwarded", self._makeHandler(vm))
            vm.whenUp(lambda mux, vm=vm: self._sessionUp(vm, mux))
            vm.whenDown(lambda reason, vm=vm: self._sessionDown(vm, reason))

    # -- adding and removing --------------------------------------------------

    def _resolveVM(self, spec):
        if spec.vm is None:
            if len(self.vms) == 1:
                return next(iter(self.vms.values()))
            raise ForwardError(
                "no-such-vm", "several VMs (%s): say which, as VM=%s" % (", ".join(self.vms), spec)
            )
        vm = self.vms.get(spec.vm)
        if vm is None:
            raise ForwardError("no-such-vm", "no vm named %r (have: %s)" % (spec.vm, ", ".join(self.vms)))
        return vm

    def _create(self, direction, spec, origin):
        if direction not in DIRECTIONS:
            raise ForwardError("bad-spec", "direction must be forward or reverse")
        try:
            checkDirection(spec, direction)
        except SpecError as e:
            raise ForwardError("bad-spec", str(e))
        vm = self._resolveVM(spec)
        fid = str(self._nextId)
        self._nextId += 1
        cls = _LocalForward if direction == "forward" else _ReverseForward
        forward = cls(self, fid, vm, direction, spec, origin)
        self.forwards[fid] = forward
        return forward

    def add(self, direction, spec, origin="client"):
        """
        Add a forward and start it.

        @return: a Deferred firing with its row once its first attempt
            settled, or failing with L{ForwardError}; a forward that failed
            is not kept.
        """
        try:
            if origin == "client":
                self._resolveVM(spec)  # an unknown VM is said first
                self._checkClient(direction, spec)
            forward = self._create(direction, spec, origin)
        except ForwardError as e:
            return fail(e)

        def failed(failure):
            forward.stop()
            forward.removed = True
            self.forwards.pop(forward.id, None)
            return failure

        d = forward.start()
        d.addCallbacks(lambda _: forward.row(), failed)
        # The caller may give up waiting (a client that goes away): the
        # forward is kept all the same (docs/protocol.md §12.9).
        result = Deferred()
        d.chainDeferred(result)
        return result

    def _checkClient(self, direction, spec):
        """
        A client's forward may make the host listen, or connect, only where
        the daemon's policy allows (the guest checks its own side).
        """
        if direction == "forward":
            why = self.clientListen.refusal(spec.listen, "--client-allow-listen", "the daemon", resolvedPath)
        else:
            why = self.clientConnect.refusal(spec.connect, "--client-allow-connect", "the daemon", resolvedPath)
        if why is not None:
            raise ForwardError("not-allowed", why)

    def addConfigured(self, direction, spec):
        """
        Add a forward from the configuration: a failure is kept as its
        state (and logged), not raised.
        """
        forward = self._create(direction, spec, "config")
        forward.start().addErrback(lambda f: f.trap(ForwardError))
        return forward

    def remove(self, fid):
        """
        Remove a forward: its listener closes now, its live connections go
        on.

        @return: its last row.
        @raise ForwardError: C{no-such-forward}.
        """
        forward = self.forwards.pop(fid, None) if isinstance(fid, str) else None
        if forward is None:
            raise ForwardError(
                "no-such-forward",
                "no forward %r (have: %s)" % (fid, ", ".join(self.forwards) or "none"),
            )
        row = forward.row()
        forward.stop()
        self._event(forward, "removed")
        return row

    def rows(self):
        return [f.row() for f in self.forwards.values()]

    def stop(self):
        """
        Close every listener (the daemon is stopping).
        """
        from twisted.internet.defer import gatherResults

        return gatherResults([f.stop() for f in self.forwards.values()])

    # -- events ---------------------------------------------------------------

    def observe(self, callback):
        """
        Call C{callback(row, message)} for each notable event.
        """
        self._observers.append(callback)

    def _event(self, forward, message, limited=False):
        log = self._connectionLog.emit if limited else self.log.info
        # ("message" is a key legacy log observers own: "event" it is.)
        log("forward {id} ({what}): {event}", id=forward.id, what=forward.describe(), event=message)
        if self._observers:
            row = forward.row()
            for cb in list(self._observers):
                cb(row, message)

    # -- reverse forwards' connections ---------------------------------------

    def _listening(self, forward, mux, sid):
        self._listeners[(forward.vm.name, sid)] = (forward, mux)

    def _notListening(self, forward, stream):
        if stream is not None:
            entry = self._listeners.get((forward.vm.name, stream.id))
            if entry is not None and entry[0] is forward:
                del self._listeners[(forward.vm.name, stream.id)]

    def _forwardsOf(self, vm):
        return [f for f in self.forwards.values() if f.vm is vm]

    def _sessionUp(self, vm, mux):
        for forward in self._forwardsOf(vm):
            forward.sessionUp(mux)

    def _sessionDown(self, vm, reason):
        for key in [k for k in self._listeners if k[0] == vm.name]:
            del self._listeners[key]
        for forward in self._forwardsOf(vm):
            forward.sessionDown(reason)

    def _makeHandler(self, vm):
        def forwarded(stream):
            sid = stream.args.get("listener")
            valid = isinstance(sid, int) and not isinstance(sid, bool)
            entry = self._listeners.get((vm.name, sid)) if valid else None
            if entry is None:
                raise StreamRefused("no-such-listener", "no listen stream %r on this session" % (sid,))
            return entry[0].connection(stream)

        return forwarded
