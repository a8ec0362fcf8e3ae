# -*- test-case-name: tests.test_client -*-
"""
The host-side client API over any connected channel: a VM's console socket,
a pty, or (later) a prokshy-host daemon.

    d = connectSession(reactor, UNIXClientEndpoint(reactor, "/vm/prokshy.sock"))
    session = yield d
    result = yield session.exec("sysinfo", stdin=b"", timeout=30)
    print(result.exitStatus, result.stdout)

L{Session.exec} collects the whole output; L{Session.execStream} streams it
to callbacks and gives a handle to stream stdin, signal and cancel.
"""

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from prokshy._nodelay import noDelay
from prokshy.execs.request import TTYRequest
from prokshy.execs.status import ExitStatus
from prokshy.link.session import Link, LinkConfig, SessionEnded
from prokshy.streams.interfaces import IExecStreamProtocol
from prokshy.streams.mux import Mux
from prokshy.streams.throttle import Throttle
from prokshy.streams.stream import StreamError, decodeJSON
from prokshy.wire import frames

#: The host's receive window and payload size: the host side of the
#: channel is a socket with backpressure.
HOST_WINDOW = 256 * 1024
HOST_PAYLOAD = 32 * 1024


class SessionRefused(Exception):
    """
    The peer refused the session (e.g. a daemon wanting a token).
    """


class ExecFailed(Exception):
    """
    The exec stream ended without an exit status.
    """


@attrs.frozen
class ExecResult(ExitStatus):
    """
    How a remote command ended: an L{ExitStatus} (C{code}, C{signal},
    C{timedOut}, C{truncated}, C{exitStatus}, read from the EXIT frame by
    C{ExecResult.fromExit(obj)}) and the output L{Session.exec} collected.

    @ivar stdout: collected stdout (L{Session.exec} only).
    @ivar stderr: collected stderr (L{Session.exec} only).
    """

    stdout: bytes = attrs.field(default=b"", repr=False)
    stderr: bytes = attrs.field(default=b"", repr=False)


@implementer(IExecStreamProtocol)
class _ExecClient(Protocol):
    def __init__(self, onStdout, onStderr):
        self.onStdout = onStdout
        self.onStderr = onStderr
        self.exit = None
        self.result = Deferred()

    def dataReceived(self, data):
        self.onStdout(data)

    def stderrReceived(self, data):
        self.onStderr(data)

    def exitReceived(self, obj):
        self.exit = obj

    def connectionLost(self, reason):
        if self.exit is not None:
            self.result.callback(ExecResult.fromExit(self.exit))
        elif reason.check(ConnectionDone):
            self.result.errback(ExecFailed("the stream closed without an exit status"))
        else:
            self.result.errback(reason)


class RunningExec:
    """
    A command running remotely (L{Session.execStream}).

    @ivar result: a Deferred firing with an L{ExecResult} (without output),
        or failing with L{StreamError}, L{SessionEnded} or L{ExecFailed}.
    @ivar stream: the stream; write stdin to it, or register a producer.
    """

    def __init__(self, stream, client):
        self.stream = stream
        self.result = client.result

    def write(self, data):
        """
        Send stdin data.
        """
        self.stream.write(data)

    def closeStdin(self):
        self.stream.writeEof()

    def registerProducer(self, producer, streaming=True):
        """
        Stream stdin from C{producer}, paused while the guest has no room.
        """
        self.stream.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self.stream.unregisterProducer()

    def signal(self, sig):
        """
        Send a signal (a name like C{"TERM"} or a number) to the command's
        process group.
        """
        self.stream.sendControl(frames.SIGNAL, {"signal": sig})

    def resize(self, rows, cols):
        """
        A tty exec's new window size: a WINCH SIGNAL with it.
        """
        self.stream.sendControl(frames.SIGNAL, {"signal": "WINCH", "rows": rows, "cols": cols})

    def cancel(self):
        """
        Abort the stream; the guest kills the command.
        """
        self.stream.abort("cancelled", "cancelled by the client")


def _execArgs(name, timeout, vm, args=None, tty=None):
    body = {"name": name}
    if timeout is not None:
        body["timeout"] = timeout
    if vm is not None:
        body["vm"] = vm
    if args:
        body["args"] = list(args)
    if tty is not None:
        body["tty"] = tty.toOpen() if isinstance(tty, TTYRequest) else dict(tty)
    return body


class Session:
    """
    Runs commands over one session.

    @ivar mux: the host-side L{Mux}.
    """

    def __init__(self, mux):
        self.mux = mux

    @property
    def connected(self):
        return self.mux.connected

    def execStream(self, name, onStdout, onStderr, timeout=None, vm=None, stdin=None, args=None, tty=None):
        """
        Start C{name}, streaming its output to the callbacks.

        @param args: the command's arguments (its argv[1:], a list of
            strings), for a guest whose features have C{args}.
        @param tty: run it on a pty in the guest (a guest with the C{tty}
            feature): a L{prokshy.execs.request.TTYRequest} (or a dict with
            C{rows}, C{cols}, C{term}); all its output comes to
            C{onStdout}, and L{RunningExec.resize} changes the pty's size.

        @param stdin: None to stream stdin through the L{RunningExec}; or
            the command's whole stdin (bytes), sent with its EOF along with
            the OPEN, as early data to a peer that takes it
            (docs/protocol.md section 9.2), without waiting for the ACCEPT.
        @return: a Deferred firing with a L{RunningExec} once the guest has
            accepted, or failing with L{prokshy.streams.stream.StreamRefused}.
        """
        client = _ExecClient(onStdout, onStderr)
        body = _execArgs(name, timeout, vm, args, tty)
        if stdin is None:
            d = self.mux.openStream("exec", body, client)
        else:
            d = self.mux.openStream("exec", body, client, data=stdin, eof=True)
        d.addCallback(lambda stream: RunningExec(stream, client))
        return d

    @inlineCallbacks
    def exec(self, name, stdin=b"", timeout=None, vm=None):
        """
        Run C{name} with C{stdin}, collecting its output.

        @param vm: with a prokshy-host daemon, the VM to run on.
        @return: a Deferred firing with an L{ExecResult}.
        """
        out, err = [], []
        client = _ExecClient(out.append, err.append)
        # OPEN, stdin and EOF in one go: to a peer that takes early data
        # (docs/protocol.md section 9.2) without waiting for the ACCEPT.
        yield self.mux.openStream("exec", _execArgs(name, timeout, vm), client, data=stdin, eof=True)
        result = yield client.result
        return attrs.evolve(result, stdout=b"".join(out), stderr=b"".join(err))

    def info(self, vm=None):
        """
        The agent's version, features, OS and uptime.

        @param vm: with a prokshy-host daemon, the VM to ask.
        @return: a Deferred firing with a dict.
        """
        return self._document("info", {} if vm is None else {"vm": vm})

    def ping(self, vm=None):
        """
        The agent's answer to a C{ping} stream (C{info}'s alias, docs/protocol.md
        section 10.2): the same description; what the caller times is the
        round trip.

        @param vm: with a prokshy-host daemon, the VM to ask.
        @return: a Deferred firing with a dict.
        """
        return self._document("ping", {} if vm is None else {"vm": vm})

    def status(self):
        """
        A prokshy-host daemon's status: every VM's state and counters.

        @return: a Deferred firing with a dict.
        """
        return self._document("status", {})

    def forwardAdd(self, direction, spec, vm=None):
        """
        Add a forward to a prokshy-host daemon (its C{forward-add} stream).

        @param direction: C{"forward"} (the daemon listens, ssh's C{-L}) or
            C{"reverse"} (the guest listens, ssh's C{-R}).
        @param spec: the SPEC as text, C{[VM=][BIND:]PORT:HOST:HOSTPORT}
            (see L{prokshy.forward.spec}).
        @param vm: the VM, for a SPEC without C{VM=}.
        @return: a Deferred firing with the new forward's row (a dict: C{id},
            C{vm}, C{direction}, C{listen}, C{target}, C{state}, ...), or
            failing with L{prokshy.streams.stream.StreamRefused} (C{bad-spec},
            C{no-such-vm}, C{listen-failed}, the guest's C{not-allowed}, ...).
        """
        args = {"direction": direction, "spec": spec}
        if vm is not None:
            args["vm"] = vm
        return self._document("forward-add", args)

    def forwardList(self):
        """
        A prokshy-host daemon's forwards.

        @return: a Deferred firing with a list of rows (dicts), in id order.
        """
        d = self._document("forward-list", {})
        d.addCallback(lambda document: list(document.get("forwards") or []))
        return d

    def forwardRemove(self, fid):
        """
        Remove a daemon's forward: its listener closes at once, its open
        connections go on until they end.

        @param fid: the forward's id (C{"3"}).
        @return: a Deferred firing with its final row, or failing with
            L{prokshy.streams.stream.StreamRefused} (C{no-such-forward}).
        """
        return self._document("forward-remove", {"id": str(fid)})

    @inlineCallbacks
    def _document(self, kind, args):
        chunks = []
        done = Deferred()

        class _Info(Protocol):
            def dataReceived(self, data):
                chunks.append(data)

            def connectionLost(self, reason):
                done.callback(None) if reason.check(ConnectionDone) else done.errback(reason)

        yield self.mux.openStream(kind, args, _Info())
        yield done
        return decodeJSON(b"".join(chunks))


class HostProtocol(Protocol):
    """
    The host end of one channel: a host L{Link} and L{Mux}.

    @ivar session: the L{Session}.
    """

    log = Logger()
    #: How the session's end is explained when the channel closes.
    closedReason = "channel closed"

    def __init__(self, clock, config=None):
        self.clock = clock
        self.config = config or LinkConfig(window=HOST_WINDOW, maxPayload=HOST_PAYLOAD)
        self.mux = Mux("host")
        self.session = Session(self.mux)
        self.link = None
        self._waiting = []
        self._lost = []
        self.mux.whenUp(self._up)
        self.mux.whenRefused(self._refused)

    def connectionMade(self):
        noDelay(self.transport)
        self.link = Link(self.clock, self.transport.write, "host", self.mux, self.config)
        # Frames wait in the link while the channel's buffer is full (see
        # prokshy.guest.agent): control frames are not stuck behind data.
        self.transport.registerProducer(Throttle(self.link), True)
        self.link.start()

    def dataReceived(self, data):
        self.link.dataReceived(data)

    def connectionLost(self, reason):
        if self.link is not None:
            self.link.stop("%s: %s" % (self.closedReason, reason.getErrorMessage()))
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(SessionEnded("channel closed before a session started"))
        for cb in self._lost:
            cb(reason)

    def _up(self, info):
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self.session)

    def _refused(self, reason):
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(SessionRefused(reason))
        if self.transport is not None:
            self.transport.loseConnection()

    def whenSession(self):
        """
        @return: a Deferred firing with the L{Session} once one is up.
        """
        if self.mux.connected:
            d = Deferred()
            d.callback(self.session)
            return d
        d = Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(d)
        return d

    def whenLost(self, callback):
        self._lost.append(callback)


def connectSession(reactor, endpoint, config=None):
    """
    Connect to a channel and wait for a session.

    @return: a Deferred firing with a L{Session}.
    """
    d = endpoint.connect(Factory.forProtocol(lambda: HostProtocol(reactor, config)))
    d.addCallback(lambda proto: proto.whenSession())
    return d


__all__ = [
    "ExecFailed",
    "ExecResult",
    "HostProtocol",
    "RunningExec",
    "Session",
    "SessionRefused",
    "StreamError",
    "connectSession",
]
