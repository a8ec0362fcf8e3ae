# -*- test-case-name: tests.test_streams -*-
"""
One multiplexed stream: a Twisted transport for the protocol bound to it,
with credit-based flow control in both directions.

Half-close table (each side independently)::

    event                      effect
    -------------------------  -------------------------------------------------
    local writeEof()           queue EOF behind pending data; no more writes
    local loseConnection()     queue EOF (if not sent) and CLOSE behind data
    remote EOF                 protocol.eofReceived() (after buffered data)
    remote CLOSE               deliver buffered input, answer CLOSE, end
    both CLOSEs                connectionLost(ConnectionDone)
    remote RESET / abort()     end at once: connectionLost(StreamReset)
    session ends               connectionLost(SessionEnded)

Outgoing: DATA and STDERR payload bytes spend the peer's credit; a write
beyond it is buffered, and a registered producer is paused while more than
C{highWater} bytes wait.  Control frames (EOF, EXIT, CLOSE, SIGNAL) queue
behind data so their order is kept.  On the receiving side SIGNAL is the
exception: it is delivered on arrival, even while the stream is paused.

Incoming: the peer may send at most the window we granted.  Credit is granted
back (WINDOW) only when data has been handed to the protocol while the stream
is not paused, so a slow consumer stops its sender without growing memory.
"""

import json
import struct
from collections import deque

import attr
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.python.failure import Failure
from zope.interface import implementer

from prokshy.wire import frames

_U32 = struct.Struct(">I")
_DATA_TYPES = (frames.DATA, frames.STDERR)


class StreamError(Exception):
    """
    A stream failed.

    @ivar code: a short machine-readable reason.
    @ivar message: a human-readable explanation.
    """

    def __init__(self, code, message=""):
        Exception.__init__(self, code, message)
        self.code = code
        self.message = message

    def __str__(self):
        return "%s: %s" % (self.code, self.message) if self.message else self.code


class StreamRefused(StreamError):
    """
    The peer refused to open the stream.
    """


class StreamReset(StreamError):
    """
    The stream was aborted.
    """


@attr.s(frozen=True)
class StreamAddress:
    """
    The address of a stream, for getPeer/getHost.
    """

    kind = attr.ib()
    stream = attr.ib()


def encodeJSON(obj):
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")


def decodeJSON(payload):
    """
    @raise ValueError: unless C{payload} is a JSON object.
    """
    obj = json.loads(payload.decode("utf-8"))
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


@implementer(ITransport, IPushProducer, IConsumer)
class Stream:
    """
    The transport of one stream.

    @ivar id: the stream id.
    @ivar kind: the kind given at open (C{"exec"}, C{"info"}, ...).
    @ivar args: the open arguments.
    """

    highWater = 65536

    def __init__(self, mux, sid, kind, args, window):
        self.mux = mux
        self.id = sid
        self.kind = kind
        self.args = args
        self.protocol = None
        self._acceptPending = None
        self.disconnecting = False
        self.bytesIn = 0
        self.bytesOut = 0
        # outgoing
        self._out = deque()
        self._outBytes = 0
        self._credit = 0
        self._eofSent = False
        self._closeSent = False
        self._producer = None
        self._streaming = True
        self._pulling = False
        self._producerPaused = False
        # incoming
        self._window = window
        self._recvCredit = window
        self._consumed = 0
        self._inbuf = deque()
        self._paused = False
        self._closeReceived = False
        self._ended = False

    def __repr__(self):
        return "<Stream %d %s>" % (self.id, self.kind)

    # -- ITransport -------------------------------------------------------

    def write(self, data):
        """
        Send data (stdout for exec streams, stdin from the opener).
        """
        self._queueData(frames.DATA, data)

    def writeSequence(self, seq):
        self.write(b"".join(seq))

    def writeStderr(self, data):
        """
        Send data on the stderr channel (exec streams, guest to host).
        """
        self._queueData(frames.STDERR, data)

    def _queueData(self, ftype, data):
        if self._ended or self._eofSent or not data:
            return
        data = bytes(data)
        self._out.append((ftype, memoryview(data)))
        self._outBytes += len(data)
        self._flush()

    def sendControl(self, ftype, obj):
        """
        Send a JSON control frame (EXIT, SIGNAL) in order with the data.
        """
        if self._ended or self._closeSent:
            return
        self._out.append((ftype, encodeJSON(obj)))
        self._flush()

    def writeEof(self):
        """
        Half-close: we send no more data.
        """
        if self._ended or self._eofSent:
            return
        self._eofSent = True
        self._out.append((frames.EOF, b""))
        self._flush()

    loseWriteConnection = writeEof

    def loseConnection(self):
        """
        Finish: send what is queued, then EOF and CLOSE.
        """
        if self._ended or self._closeSent:
            return
        self.disconnecting = True
        self.writeEof()
        self._closeSent = True
        self._out.append((frames.CLOSE, b""))
        self._flush()
        self._maybeFinish()

    def abort(self, code="aborted", message=""):
        """
        Reset the stream at once, dropping anything unsent.
        """
        if self._ended:
            return
        self._out.clear()
        self.mux._sendFrame(frames.RESET, self.id, encodeJSON({"code": code, "message": message}))
        self._end(Failure(StreamReset(code, message)))

    def abortConnection(self):
        self.abort("aborted", "aborted by the local side")

    def getPeer(self):
        return StreamAddress(self.kind, self.id)

    getHost = getPeer

    # -- IConsumer (local data source) ------------------------------------

    def registerProducer(self, producer, streaming):
        self._producer = producer
        self._streaming = streaming
        self._producerPaused = False
        if not streaming:
            self._pull()
        elif self._outBytes > self.highWater:
            self._pauseProducer()

    def unregisterProducer(self):
        self._producer = None

    def _pauseProducer(self):
        if self._producer is not None and self._streaming and not self._producerPaused:
            self._producerPaused = True
            self._producer.pauseProducing()

    def _resumeProducer(self):
        if self._producer is not None and self._producerPaused:
            self._producerPaused = False
            self._producer.resumeProducing()

    # -- IPushProducer (incoming data toward the protocol) ----------------

    def pauseProducing(self):
        """
        The consumer of this stream's input is full: stop delivering, and so
        stop granting credit to the peer.
        """
        self._paused = True

    def resumeProducing(self):
        if self._ended:
            return
        self._paused = False
        self._drainInput()

    def stopProducing(self):
        self.abort("cancelled", "the consumer went away")

    # -- flow -------------------------------------------------------------

    def _flush(self):
        mux = self.mux
        while self._out and not self._ended:
            ftype, payload = self._out[0]
            if ftype in _DATA_TYPES:
                if self._credit <= 0:
                    break
                if not mux.writable:
                    mux._blocked[self] = None
                    break
                n = min(self._credit, mux.maxPayload)
                if len(payload) > n:
                    chunk = payload[:n]
                    self._out[0] = (ftype, payload[n:])
                else:
                    chunk = payload
                    self._out.popleft()
                n = len(chunk)
                self._credit -= n
                self._outBytes -= n
                self.bytesOut += n
                mux._sendFrame(ftype, self.id, chunk.tobytes())
            else:
                self._out.popleft()
                mux._sendFrame(ftype, self.id, payload)
        if self._outBytes > self.highWater:
            self._pauseProducer()
        elif self._outBytes <= self.highWater // 2:
            self._resumeProducer()
            self._pull()
        self._maybeFinish()

    def _pull(self):
        """
        Ask a pull (non-streaming) producer for more while there is room.
        """
        if self._pulling:
            return
        self._pulling = True
        try:
            while (
                self._producer is not None
                and not self._streaming
                and not self._ended
                and self._outBytes <= self.highWater // 2
            ):
                before = self.bytesOut + self._outBytes
                self._producer.resumeProducing()
                if self.bytesOut + self._outBytes == before:
                    break
        finally:
            self._pulling = False

    def _granted(self, n):
        self._credit += n
        self._flush()

    def _incoming(self, frame):
        ftype = frame.type
        if ftype == frames.WINDOW:
            if len(frame.payload) == 4:
                self._granted(_U32.unpack(frame.payload)[0])
            return
        if ftype in _DATA_TYPES:
            n = len(frame.payload)
            if n > self._recvCredit:
                self.abort("flow-control", "peer sent %d bytes with %d credit" % (n, self._recvCredit))
                return
            self._recvCredit -= n
            self.bytesIn += n
        elif ftype == frames.CLOSE:
            self._closeReceived = True
        elif ftype == frames.SIGNAL:
            # Signals are not data: they reach the protocol at once, even
            # while it holds its input back (a command waiting for a slot).
            self._deliver(frame)
            return
        self._inbuf.append(frame)
        self._drainInput()

    def _drainInput(self):
        while self._inbuf and not self._paused and not self._ended:
            frame = self._inbuf.popleft()
            self._deliver(frame)
        if not self._paused and not self._ended:
            self._grant()
        self._maybeFinish()

    def _grant(self):
        if self._consumed and (
            self._consumed >= self._window // 4 or self._recvCredit < self._window // 2
        ):
            n, self._consumed = self._consumed, 0
            self._recvCredit += n
            self.mux._sendFrame(frames.WINDOW, self.id, _U32.pack(n))

    def _deliver(self, frame):
        proto = self.protocol
        ftype = frame.type
        if ftype == frames.DATA:
            self._consumed += len(frame.payload)
            proto.dataReceived(frame.payload)
        elif ftype == frames.STDERR:
            self._consumed += len(frame.payload)
            handler = getattr(proto, "stderrReceived", None)
            if handler is not None:
                handler(frame.payload)
        elif ftype == frames.EOF:
            handler = getattr(proto, "eofReceived", None)
            if handler is not None:
                handler()
        elif ftype in (frames.EXIT, frames.SIGNAL):
            try:
                obj = decodeJSON(frame.payload)
            except ValueError:
                self.abort("protocol-error", "bad control payload")
                return
            name = "exitReceived" if ftype == frames.EXIT else "signalReceived"
            handler = getattr(proto, name, None)
            if handler is not None:
                handler(obj)
        elif ftype == frames.CLOSE:
            if not self._closeSent:
                self._closeSent = True
                self._out.clear()
                self._outBytes = 0
                mux = self.mux
                if not self._eofSent:
                    self._eofSent = True
                    mux._sendFrame(frames.EOF, self.id, b"")
                mux._sendFrame(frames.CLOSE, self.id, b"")

    def _maybeFinish(self):
        if (
            not self._ended
            and self._closeSent
            and self._closeReceived
            and not self._out
            and not self._inbuf
        ):
            self._end(Failure(ConnectionDone("stream closed")))

    def _reset(self, payload):
        try:
            obj = decodeJSON(payload)
            code, message = str(obj.get("code", "reset")), str(obj.get("message", ""))
        except ValueError:
            code, message = "reset", ""
        self._end(Failure(StreamReset(code, message)))

    def _end(self, reason):
        if self._ended:
            return
        self._ended = True
        self._out.clear()
        self._inbuf.clear()
        self.mux._forget(self)
        pending, self._acceptPending = self._acceptPending, None
        if pending is not None:
            pending.cancel()
        producer, self._producer = self._producer, None
        if producer is not None and not reason.check(ConnectionDone):
            try:
                producer.stopProducing()
            except Exception:
                pass
        if self.protocol is not None:
            self.protocol.connectionLost(reason)

    @property
    def ended(self):
        return self._ended
