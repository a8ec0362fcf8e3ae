# -*- test-case-name: tests.unit.test_streams -*-
"""
The stream table of one session: opening, accepting and refusing streams,
and routing frames to them.

Stream ids are partitioned by side: the host opens odd ids (1, 3, ...), the
guest even ids (2, 4, ...); 0 is the session itself.  An OPEN carries JSON
C{{"kind": ..., "window": N, ...arguments}}; the answer is ACCEPT
C{{"window": N}} or REFUSE C{{"code": ..., "message": ...}}.  When the session
ends, every stream ends with L{SessionEnded} and every pending open fails.
"""

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from prokshy.link.interfaces import ILinkListener
from prokshy.link.session import NotConnected, SessionEnded
from prokshy.streams.credit import MAX_CREDIT
from prokshy.streams.interfaces import IStreamOwner
from prokshy.streams.stream import (
    EARLY_DATA,
    EARLY_WINDOW,
    Stream,
    StreamError,
    StreamRefused,
    StreamReset,
    decodeJSON,
    encodeJSON,
)
from prokshy.wire import frames

DEFAULT_WINDOW = 256 * 1024
#: Refused ids remembered for their early data (bounded).
_REMEMBER_REFUSED = 64
#: The largest stream id (the frame header's 32 bits); ids are never reused
#: within a session.
MAX_STREAM_ID = 0xFFFFFFFF


@implementer(ILinkListener, IStreamOwner)
class Mux:
    """
    Streams over one L{prokshy.link.session.Link}; the link's listener, and
    the L{IStreamOwner} of its streams.

    @param role: C{"host"} or C{"guest"}.
    @param openHandler: C{openHandler(stream) -> protocol}, called for a
        stream the peer opens; raise L{StreamRefused} to refuse it.  None
        refuses every open.
    @param window: the receive window granted to each stream.
    @param maxStreams: streams open at once, beyond which opens are refused.
    @param earlyData: the early data this side's hello allows (its
        C{early_data}, bytes; 0: none): the streams the peer opens hold up
        to that much of the data sent behind their OPEN (docs/protocol.md
        section 9.2) instead of ignoring it.
    """

    log = Logger()

    def __init__(self, role, openHandler=None, window=DEFAULT_WINDOW, maxStreams=1024, earlyData=0):
        self.role = role
        self.earlyData = earlyData
        self.openHandler = openHandler
        self.window = window
        self.maxStreams = maxStreams
        self.link = None
        self.info = None
        self.streams = {}
        self._pending = {}
        self._nextId = 1 if role == "host" else 2
        self._blocked = {}
        #: Remote opens whose handler answered with a Deferred: stream -> it.
        self._accepting = {}
        #: The last ids we refused while taking early data: the early DATA
        #: that follows their OPEN is dropped quietly, not answered with
        #: RESET unknown-stream (section 9.2).
        self._refused = {}
        self._upObservers = []
        self._downObservers = []
        self._refusedObservers = []

    # -- observers --------------------------------------------------------

    def whenUp(self, callback):
        """
        Call C{callback(info)} on every new session.
        """
        self._upObservers.append(callback)

    def whenRefused(self, callback):
        """
        Call C{callback(reason)} if the peer refuses the session.
        """
        self._refusedObservers.append(callback)

    def linkRefused(self, link, reason):
        for cb in list(self._refusedObservers):
            cb(reason)

    def whenDown(self, callback):
        """
        Call C{callback(reason)} whenever a session ends.
        """
        self._downObservers.append(callback)

    @property
    def connected(self):
        return self.link is not None and self.link.state == "UP"

    @property
    def writable(self):
        return self.link is not None and self.link.writable

    @property
    def maxPayload(self):
        return self.link.maxPayload if self.link is not None else 1024

    # -- link listener ----------------------------------------------------

    def linkUp(self, link, info):
        self.link = link
        self.info = info
        self._refused.clear()
        self._nextId = 1 if self.role == "host" else 2
        for cb in list(self._upObservers):
            cb(info)

    def linkDown(self, link, reason):
        self.info = None
        failure = Failure(reason)
        self._blocked.clear()
        pending, self._pending = self._pending, {}
        streams, self.streams = self.streams, {}
        for stream, protocol, d in pending.values():
            d.errback(failure)
        for stream in streams.values():
            stream.sessionEnded(failure)
        for cb in list(self._downObservers):
            cb(reason)

    def linkWritable(self):
        """
        The link has room: let blocked streams send, round-robin.
        """
        while self._blocked and self.writable:
            stream = next(iter(self._blocked))
            del self._blocked[stream]
            stream.resumeSending()

    def frameReceived(self, frame):
        sid = frame.stream
        ftype = frame.type
        if sid == 0:
            return  # no sequenced session-level types in version 1
        if ftype == frames.OPEN:
            self._remoteOpen(frame)
            return
        if ftype in (frames.ACCEPT, frames.REFUSE, frames.RESET) and sid in self._pending:
            # (A RESET answering an OPEN breaks the spec, which says REFUSE;
            # it is taken as a refusal rather than leaving the open hanging.)
            self._openAnswered(frame)
            return
        stream = self.streams.get(sid)
        if stream is None:
            if ftype == frames.DATA and sid in self._refused:
                return  # early data of an open we refused: discarded
            if ftype not in (frames.RESET, frames.CLOSE, frames.WINDOW, frames.EOF):
                self.send(frames.RESET, sid, encodeJSON({"code": "unknown-stream", "message": ""}))
            return
        stream.frameReceived(frame)

    # -- opening ----------------------------------------------------------

    @property
    def peerEarlyData(self):
        """
        How many bytes of early data this side sends behind an OPEN: what
        the peer's hello's C{early_data} allows, at most L{EARLY_WINDOW}
        (0: none, a peer without the field).
        """
        if self.info is None:
            return 0
        n = self.info.peerHello.get(EARLY_DATA)
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            return 0
        return min(n, EARLY_WINDOW)

    def openStream(self, kind, args, protocol, data=b"", eof=False):
        """
        Open a stream to the peer.

        @param kind: the stream kind.
        @param args: a JSON-able dict of arguments.
        @param protocol: a L{twisted.internet.protocol.Protocol} bound to the
            stream once it is accepted.
        @param data: DATA to send on the stream, and C{eof}: then EOF, as
            if written once it is accepted.  To a peer whose hello has
            C{early_data}, the first bytes it allows (and the EOF, if all
            of it fits) go at once, behind the OPEN, without waiting
            for the answer (docs/protocol.md section 9.2); the rest waits.
        @return: a Deferred firing with the L{Stream}, or failing with
            L{StreamRefused} or L{SessionEnded}.
        """
        if not self.connected:
            raise NotConnected("no session")
        sid = self._nextId
        if sid > MAX_STREAM_ID:
            raise StreamError("stream ids exhausted: this session can open no more streams")
        self._nextId += 2
        stream = Stream(self, sid, kind, args, self.window)
        d = Deferred()
        self._pending[sid] = (stream, protocol, d)
        body = dict(args)
        body["kind"] = kind
        body["window"] = self.window
        try:
            self.send(frames.OPEN, sid, encodeJSON(body))
        except BaseException:
            del self._pending[sid]  # an OPEN the link would not take
            raise
        if data or eof:
            stream.sendEarly(data, eof, self.peerEarlyData)
        return d

    def _openAnswered(self, frame):
        stream, protocol, d = self._pending.pop(frame.stream)
        try:
            obj = decodeJSON(frame.payload)
        except ValueError:
            obj = {}
        if frame.type in (frames.REFUSE, frames.RESET):
            d.errback(
                StreamRefused(str(obj.get("code", "refused")), str(obj.get("message", "")))
            )
            return
        self.streams[stream.id] = stream
        if stream.earlyEof:
            stream.acceptAfterEof(protocol, _window(obj))
        else:
            stream.accept(protocol, _window(obj))
        d.callback(stream)

    def _remoteOpen(self, frame):
        sid = frame.stream
        if sid % 2 == (1 if self.role == "host" else 0) or sid == 0:
            self._refuse(sid, "bad-id", "stream id of the wrong parity")
            return
        if sid in self.streams:
            # A REFUSE would reach the peer's live stream of that id: ignore.
            self.log.warn("ignored a second OPEN for stream {sid}", sid=sid)
            return
        try:
            args = decodeJSON(frame.payload)
        except ValueError:
            self._refuse(sid, "bad-open", "OPEN payload is not a JSON object")
            return
        kind = args.pop("kind", None)
        window = _window(args)
        args.pop("window", None)
        if not isinstance(kind, str):
            self._refuse(sid, "bad-open", "OPEN without a kind")
            return
        if len(self.streams) >= self.maxStreams:
            self._refuse(sid, "too-many-streams", "%d streams open" % (len(self.streams),))
            return
        stream = Stream(self, sid, kind, args, self.window, self.earlyData)
        if self.openHandler is None:
            self._refuse(sid, "unsupported", "this side opens no streams")
            return
        self.streams[sid] = stream
        try:
            result = self.openHandler(stream)
        except Exception:
            self._openFailed(Failure(), stream)
            return
        if isinstance(result, Deferred):
            # Accepted later (a relay waits for the far side); the id stays
            # reserved meanwhile.
            self._accepting[stream] = result
            result.addCallbacks(self._accept, self._openFailed, (stream, window), None, (stream,))
        else:
            self._accept(result, stream, window)

    def _accept(self, protocol, stream, window):
        self._accepting.pop(stream, None)
        if self.streams.get(stream.id) is not stream:
            # The session ended, or the peer reset the stream, meanwhile.
            protocol.connectionLost(
                Failure(StreamReset("reset", "the stream ended before it was accepted"))
            )
            return
        self.send(frames.ACCEPT, stream.id, encodeJSON({"window": self.window}))
        stream.accept(protocol, window)

    def _openFailed(self, failure, stream):
        self._accepting.pop(stream, None)
        if self.streams.get(stream.id) is not stream:
            return None
        del self.streams[stream.id]
        if failure.check(StreamRefused):
            self._refuse(stream.id, failure.value.code, failure.value.message)
        else:
            self.log.failure("open handler failed for {kind}", failure, kind=stream.kind)
            self._refuse(stream.id, "internal-error", "the open handler failed")
        return None

    def _refuse(self, sid, code, message):
        if self.earlyData:
            refused = self._refused
            refused[sid] = None
            if len(refused) > _REMEMBER_REFUSED:
                del refused[next(iter(refused))]
        self.send(frames.REFUSE, sid, encodeJSON({"code": code, "message": message}))

    # -- IStreamOwner -------------------------------------------------------

    def send(self, ftype, sid, payload):
        if self.connected:
            self.link.send(ftype, sid, payload)

    def blocked(self, stream):
        self._blocked[stream] = None

    def forget(self, stream):
        self._blocked.pop(stream, None)
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
        accepting = self._accepting.pop(stream, None)
        if accepting is not None:
            accepting.cancel()


def _window(obj):
    w = obj.get("window")
    if isinstance(w, int) and not isinstance(w, bool) and 0 < w <= MAX_CREDIT:
        return w
    return 65536


__all__ = ["Mux", "StreamRefused", "StreamReset", "SessionEnded", "DEFAULT_WINDOW"]
