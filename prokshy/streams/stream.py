# -*- test-case-name: tests.unit.test_streams,tests.unit.test_streams_machine -*-
"""
One multiplexed stream: a Twisted transport for the protocol bound to it,
with credit-based flow control in both directions.

The stream talks to the table that owns it (a L{prokshy.streams.mux.Mux})
only through L{IStreamOwner}, and the owner to it only through
L{IOwnedStream}.  It hands the protocol's frames over as the protocol
declares it wants them (L{prokshy.streams.interfaces}).

Outgoing: DATA and STDERR payload bytes spend the peer's credit
(L{OutboundCredit}); a write beyond it waits in the L{Outbox}, and a
registered producer is paused while more than C{highWater} bytes wait.
Control frames (EOF, EXIT, CLOSE, SIGNAL) queue behind data so their order
is kept.

Incoming: the peer may send at most the window we granted
(L{InboundCredit}); beyond it, the stream is reset C{flow-control}.  Frames
wait in the L{Inbox} while the protocol has paused us, and credit is granted
back (WINDOW) only for data handed to the protocol while it is not paused,
so a slow consumer stops its sender without growing memory.  SIGNAL is the
exception: it is delivered on arrival, even while the stream is paused.

The lifecycle is an Automat state machine.  Frames from the peer are inputs
twice: on arrival (C{frameArrived}, C{signalArrived}, C{creditArrived},
C{resetArrived}) and, for those held in order, when they are handed to the
protocol (C{deliverData}, C{deliverEof}, C{deliverExit}, C{deliverClose}).
States:

  - C{opening}: not accepted yet, no protocol.  From the peer, RESET (and
    the end of the session) counts, and, on the acceptor's side, early DATA
    and EOF (docs/protocol.md section 9.2): held, at most L{EARLY_WINDOW}
    bytes (beyond, the open is refused C{flow-control}), and handed to the
    protocol once accepted; local writes raise L{StreamError}
    (C{not-accepted}), as the stream is nobody's transport yet.  The
    opener's own early data is sent with L{Stream.sendEarly}; an opener
    whose early EOF went is accepted into C{halfClosedLocal}
    (C{acceptAfterEof}).
  - C{open}: data both ways.
  - C{halfClosedLocal}: our EOF is queued: we send no more data (EXIT and
    SIGNAL still go); the peer still may.
  - C{halfClosedRemote}: the peer's EOF was delivered: data from it after
    that resets the stream C{protocol-error}; we still send.
  - C{halfClosedBoth}: both EOFs, no CLOSE yet.
  - C{closing}: our CLOSE (after our EOF) is queued: the peer's remaining
    data is still delivered until its CLOSE.
  - C{closingAfterEof}: C{closing}, and the peer's EOF was delivered.
  - C{flushing}: the peer's CLOSE came after ours was queued: what we
    queued before it still goes out (with the peer's credit), then closed.
  - C{closed}: both CLOSEs: C{connectionLost(ConnectionDone)}.
  - C{reset}: ended at once: RESET either way, a flow-control or protocol
    error (C{connectionLost(StreamReset)}), or the session ended
    (C{connectionLost(SessionEnded)}).

A CLOSE delivered before ours was queued is answered at once: what we have
not sent is dropped, EOF (unless it went already) and CLOSE are sent, and
the stream is closed.  There are no timers.  Every (state, input) pair is
declared; an empty output list ignores the input on purpose (it is
harmless there, too late, or cannot reach that state)::

    state             input           -> new state         outputs
    closed            accept          -> closed            _alreadyAccepted
    closed            acceptAfterEof  -> closed
    closed            creditArrived   -> closed
    closed            deliverClose    -> closed
    closed            deliverData     -> closed
    closed            deliverEof      -> closed
    closed            deliverExit     -> closed
    closed            earlyOverflow   -> closed
    closed            endedQueried    -> closed            _yes
    closed            frameArrived    -> closed
    closed            inboxDrained    -> closed
    closed            localAbort      -> closed
    closed            localClose      -> closed
    closed            localControl    -> closed
    closed            localData       -> closed
    closed            localEof        -> closed
    closed            outboxEmptied   -> closed
    closed            resetArrived    -> closed
    closed            resumeSending   -> closed
    closed            sessionEnded    -> closed
    closed            signalArrived   -> closed
    closing           accept          -> closing           _alreadyAccepted
    closing           acceptAfterEof  -> closing           _alreadyAccepted
    closing           creditArrived   -> closing           _addCredit
    closing           deliverClose    -> flushing          _finishIfFlushed
    closing           deliverData     -> closing           _dataReceived
    closing           deliverEof      -> closingAfterEof   _eofReceived
    closing           deliverExit     -> closing           _exitReceived
    closing           earlyOverflow   -> closing
    closing           endedQueried    -> closing           _no
    closing           frameArrived    -> closing           _admit
    closing           inboxDrained    -> closing           _grant
    closing           localAbort      -> reset             _sendReset, _reset
    closing           localClose      -> closing
    closing           localControl    -> closing
    closing           localData       -> closing
    closing           localEof        -> closing
    closing           outboxEmptied   -> closing
    closing           resetArrived    -> reset             _reset
    closing           resumeSending   -> closing           _send
    closing           sessionEnded    -> reset             _lost
    closing           signalArrived   -> closing           _signalReceived
    closingAfterEof   accept          -> closingAfterEof   _alreadyAccepted
    closingAfterEof   acceptAfterEof  -> closingAfterEof   _alreadyAccepted
    closingAfterEof   creditArrived   -> closingAfterEof   _addCredit
    closingAfterEof   deliverClose    -> flushing          _finishIfFlushed
    closingAfterEof   deliverData     -> reset             _resetDataAfterEof
    closingAfterEof   deliverEof      -> closingAfterEof
    closingAfterEof   deliverExit     -> closingAfterEof   _exitReceived
    closingAfterEof   earlyOverflow   -> closingAfterEof
    closingAfterEof   endedQueried    -> closingAfterEof   _no
    closingAfterEof   frameArrived    -> closingAfterEof   _admit
    closingAfterEof   inboxDrained    -> closingAfterEof   _grant
    closingAfterEof   localAbort      -> reset             _sendReset, _reset
    closingAfterEof   localClose      -> closingAfterEof
    closingAfterEof   localControl    -> closingAfterEof
    closingAfterEof   localData       -> closingAfterEof
    closingAfterEof   localEof        -> closingAfterEof
    closingAfterEof   outboxEmptied   -> closingAfterEof
    closingAfterEof   resetArrived    -> reset             _reset
    closingAfterEof   resumeSending   -> closingAfterEof   _send
    closingAfterEof   sessionEnded    -> reset             _lost
    closingAfterEof   signalArrived   -> closingAfterEof   _signalReceived
    flushing          accept          -> flushing          _alreadyAccepted
    flushing          acceptAfterEof  -> flushing          _alreadyAccepted
    flushing          creditArrived   -> flushing          _addCredit, _finishIfFlushed
    flushing          deliverClose    -> flushing
    flushing          deliverData     -> flushing
    flushing          deliverEof      -> flushing
    flushing          deliverExit     -> flushing
    flushing          earlyOverflow   -> flushing
    flushing          endedQueried    -> flushing          _no
    flushing          frameArrived    -> flushing
    flushing          inboxDrained    -> flushing
    flushing          localAbort      -> reset             _sendReset, _reset
    flushing          localClose      -> flushing
    flushing          localControl    -> flushing
    flushing          localData       -> flushing
    flushing          localEof        -> flushing
    flushing          outboxEmptied   -> closed            _closed
    flushing          resetArrived    -> reset             _reset
    flushing          resumeSending   -> flushing          _send, _finishIfFlushed
    flushing          sessionEnded    -> reset             _lost
    flushing          signalArrived   -> flushing
    halfClosedBoth    accept          -> halfClosedBoth    _alreadyAccepted
    halfClosedBoth    acceptAfterEof  -> halfClosedBoth    _alreadyAccepted
    halfClosedBoth    creditArrived   -> halfClosedBoth    _addCredit
    halfClosedBoth    deliverClose    -> closed            _dropUnsent, _sendClose, _closed
    halfClosedBoth    deliverData     -> reset             _resetDataAfterEof
    halfClosedBoth    deliverEof      -> halfClosedBoth
    halfClosedBoth    deliverExit     -> halfClosedBoth    _exitReceived
    halfClosedBoth    earlyOverflow   -> halfClosedBoth
    halfClosedBoth    endedQueried    -> halfClosedBoth    _no
    halfClosedBoth    frameArrived    -> halfClosedBoth    _admit
    halfClosedBoth    inboxDrained    -> halfClosedBoth    _grant
    halfClosedBoth    localAbort      -> reset             _sendReset, _reset
    halfClosedBoth    localClose      -> closingAfterEof   _queueClose, _send
    halfClosedBoth    localControl    -> halfClosedBoth    _queueControl, _send
    halfClosedBoth    localData       -> halfClosedBoth
    halfClosedBoth    localEof        -> halfClosedBoth
    halfClosedBoth    outboxEmptied   -> halfClosedBoth
    halfClosedBoth    resetArrived    -> reset             _reset
    halfClosedBoth    resumeSending   -> halfClosedBoth    _send
    halfClosedBoth    sessionEnded    -> reset             _lost
    halfClosedBoth    signalArrived   -> halfClosedBoth    _signalReceived
    halfClosedLocal   accept          -> halfClosedLocal   _alreadyAccepted
    halfClosedLocal   acceptAfterEof  -> halfClosedLocal   _alreadyAccepted
    halfClosedLocal   creditArrived   -> halfClosedLocal   _addCredit
    halfClosedLocal   deliverClose    -> closed            _dropUnsent, _sendClose, _closed
    halfClosedLocal   deliverData     -> halfClosedLocal   _dataReceived
    halfClosedLocal   deliverEof      -> halfClosedBoth    _eofReceived
    halfClosedLocal   deliverExit     -> halfClosedLocal   _exitReceived
    halfClosedLocal   earlyOverflow   -> halfClosedLocal
    halfClosedLocal   endedQueried    -> halfClosedLocal   _no
    halfClosedLocal   frameArrived    -> halfClosedLocal   _admit
    halfClosedLocal   inboxDrained    -> halfClosedLocal   _grant
    halfClosedLocal   localAbort      -> reset             _sendReset, _reset
    halfClosedLocal   localClose      -> closing           _queueClose, _send
    halfClosedLocal   localControl    -> halfClosedLocal   _queueControl, _send
    halfClosedLocal   localData       -> halfClosedLocal
    halfClosedLocal   localEof        -> halfClosedLocal
    halfClosedLocal   outboxEmptied   -> halfClosedLocal
    halfClosedLocal   resetArrived    -> reset             _reset
    halfClosedLocal   resumeSending   -> halfClosedLocal   _send
    halfClosedLocal   sessionEnded    -> reset             _lost
    halfClosedLocal   signalArrived   -> halfClosedLocal   _signalReceived
    halfClosedRemote  accept          -> halfClosedRemote  _alreadyAccepted
    halfClosedRemote  acceptAfterEof  -> halfClosedRemote  _alreadyAccepted
    halfClosedRemote  creditArrived   -> halfClosedRemote  _addCredit
    halfClosedRemote  deliverClose    -> closed            _dropUnsent, _sendEof, _sendClose, _closed
    halfClosedRemote  deliverData     -> reset             _resetDataAfterEof
    halfClosedRemote  deliverEof      -> halfClosedRemote
    halfClosedRemote  deliverExit     -> halfClosedRemote  _exitReceived
    halfClosedRemote  earlyOverflow   -> halfClosedRemote
    halfClosedRemote  endedQueried    -> halfClosedRemote  _no
    halfClosedRemote  frameArrived    -> halfClosedRemote  _admit
    halfClosedRemote  inboxDrained    -> halfClosedRemote  _grant
    halfClosedRemote  localAbort      -> reset             _sendReset, _reset
    halfClosedRemote  localClose      -> closingAfterEof   _queueEof, _queueClose, _send
    halfClosedRemote  localControl    -> halfClosedRemote  _queueControl, _send
    halfClosedRemote  localData       -> halfClosedRemote  _queueData, _send
    halfClosedRemote  localEof        -> halfClosedBoth    _queueEof, _send
    halfClosedRemote  outboxEmptied   -> halfClosedRemote
    halfClosedRemote  resetArrived    -> reset             _reset
    halfClosedRemote  resumeSending   -> halfClosedRemote  _send
    halfClosedRemote  sessionEnded    -> reset             _lost
    halfClosedRemote  signalArrived   -> halfClosedRemote  _signalReceived
    open              accept          -> open              _alreadyAccepted
    open              acceptAfterEof  -> open              _alreadyAccepted
    open              creditArrived   -> open              _addCredit
    open              deliverClose    -> closed            _dropUnsent, _sendEof, _sendClose, _closed
    open              deliverData     -> open              _dataReceived
    open              deliverEof      -> halfClosedRemote  _eofReceived
    open              deliverExit     -> open              _exitReceived
    open              earlyOverflow   -> open
    open              endedQueried    -> open              _no
    open              frameArrived    -> open              _admit
    open              inboxDrained    -> open              _grant
    open              localAbort      -> reset             _sendReset, _reset
    open              localClose      -> closing           _queueEof, _queueClose, _send
    open              localControl    -> open              _queueControl, _send
    open              localData       -> open              _queueData, _send
    open              localEof        -> halfClosedLocal   _queueEof, _send
    open              outboxEmptied   -> open
    open              resetArrived    -> reset             _reset
    open              resumeSending   -> open              _send
    open              sessionEnded    -> reset             _lost
    open              signalArrived   -> open              _signalReceived
    opening           accept          -> open              _bind, _takeWindow, _connect, _drainEarly
    opening           acceptAfterEof  -> halfClosedLocal   _bind, _takeWindow, _connect, _drainEarly
    opening           creditArrived   -> opening
    opening           deliverClose    -> opening
    opening           deliverData     -> opening
    opening           deliverEof      -> opening
    opening           deliverExit     -> opening
    opening           earlyOverflow   -> reset             _sendRefuse, _reset
    opening           endedQueried    -> opening           _no
    opening           frameArrived    -> opening           _admitEarly
    opening           inboxDrained    -> opening
    opening           localAbort      -> reset             _sendReset, _reset
    opening           localClose      -> opening           _notAccepted
    opening           localControl    -> opening           _notAccepted
    opening           localData       -> opening           _notAccepted
    opening           localEof        -> opening           _notAccepted
    opening           outboxEmptied   -> opening
    opening           resetArrived    -> reset             _reset
    opening           resumeSending   -> opening
    opening           sessionEnded    -> reset             _lost
    opening           signalArrived   -> opening
    reset             accept          -> reset             _alreadyAccepted
    reset             acceptAfterEof  -> reset
    reset             creditArrived   -> reset
    reset             deliverClose    -> reset
    reset             deliverData     -> reset
    reset             deliverEof      -> reset
    reset             deliverExit     -> reset
    reset             earlyOverflow   -> reset
    reset             endedQueried    -> reset             _yes
    reset             frameArrived    -> reset
    reset             inboxDrained    -> reset
    reset             localAbort      -> reset
    reset             localClose      -> reset
    reset             localControl    -> reset
    reset             localData       -> reset
    reset             localEof        -> reset
    reset             outboxEmptied   -> reset
    reset             resetArrived    -> reset
    reset             resumeSending   -> reset
    reset             sessionEnded    -> reset
    reset             signalArrived   -> reset
"""

import json
import struct

import attr
from automat import MethodicalMachine
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.python.failure import Failure
from zope.interface import implementer

from prokshy import _machines
from prokshy.streams.buffers import DATA_TYPES, Inbox, Outbox
from prokshy.streams.credit import FlowControlError, InboundCredit, OutboundCredit
from prokshy.streams.interfaces import (
    IExecStreamProtocol,
    IOwnedStream,
    ISignalStreamProtocol,
    IStreamOwner,
    IStreamProtocol,
)
from prokshy.wire import frames

_U32 = struct.Struct(">I")
#: Early data (docs/protocol.md section 9.2): the DATA payload bytes an
#: opener may send right behind its OPEN, before the answer, to a peer whose
#: hello's C{early_data} field allows them; the acceptor holds them (and an
#: EOF) and hands them to the stream's protocol once it accepts.  This
#: implementation's acceptors hold this many, and its openers send at most
#: this many.
EARLY_WINDOW = 16384
#: The hello field of a side that takes early data as an acceptor: how many
#: bytes a stream may carry before the answer.
EARLY_DATA = "early_data"
#: Frames held in order and handed to the protocol (SIGNAL is not held).
_HELD_TYPES = (frames.DATA, frames.STDERR, frames.EOF, frames.EXIT, frames.CLOSE)


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


def _result(values):
    """
    An Automat collector: the value of the last output, or None.
    """
    return values[-1] if values else None


@_machines.fast
@implementer(ITransport, IPushProducer, IConsumer, IOwnedStream)
class Stream:
    """
    The transport of one stream.

    @ivar id: the stream id.
    @ivar kind: the kind given at open (C{"exec"}, C{"info"}, ...).
    @ivar args: the open arguments.
    @ivar protocol: the protocol bound at accept, or None before.
    """

    highWater = 65536
    _machine = MethodicalMachine()

    def __init__(self, owner, sid, kind, args, window, early=0):
        """
        @param owner: the L{IStreamOwner}.
        @param window: our receive window (bytes).
        @param early: the acceptor's side: how many bytes of early data it
            holds before it answers (what its hello's C{early_data} says,
            L{EARLY_WINDOW}; 0 ignores early data, as a peer without the
            field does).
        """
        self._owner = IStreamOwner(owner)
        self.id = sid
        self.kind = kind
        self.args = args
        self.protocol = None
        self.disconnecting = False
        self._outCredit = OutboundCredit()
        self._inCredit = InboundCredit(window)
        self._outbox = Outbox(self.highWater)
        self._inbox = Inbox()
        #: The opener's early data: payload bytes sent before the answer,
        #: and whether its EOF is queued or sent.
        self.earlySent = 0
        self.earlyEof = False
        self._earlyAllowed = early

    def __repr__(self):
        return "<Stream %d %s>" % (self.id, self.kind)

    @property
    def bytesIn(self):
        """
        DATA and STDERR payload bytes received.
        """
        return self._inCredit.received

    @property
    def bytesOut(self):
        """
        DATA and STDERR payload bytes sent.
        """
        return self._outCredit.sent

    @property
    def ended(self):
        """
        Whether the stream is closed or reset.
        """
        return self.endedQueried()

    # -- ITransport -------------------------------------------------------

    def write(self, data):
        """
        Send data (stdout for exec streams, stdin from the opener).
        """
        if data:
            self.localData(frames.DATA, bytes(data))

    def writeSequence(self, seq):
        self.write(b"".join(seq))

    def writeStderr(self, data):
        """
        Send data on the stderr channel (exec streams, guest to host).
        """
        if data:
            self.localData(frames.STDERR, bytes(data))

    def sendControl(self, ftype, obj):
        """
        Send a JSON control frame (EXIT, SIGNAL) in order with the data.
        """
        self.localControl(ftype, encodeJSON(obj))

    def writeEof(self):
        """
        Half-close: we send no more data.
        """
        self.localEof()

    loseWriteConnection = writeEof

    def loseConnection(self):
        """
        Finish: send what is queued, then EOF and CLOSE.
        """
        self.localClose()

    def abort(self, code="aborted", message=""):
        """
        Reset the stream at once, dropping anything unsent.
        """
        self.localAbort(code, message)

    def abortConnection(self):
        self.abort("aborted", "aborted by the local side")

    def getPeer(self):
        return StreamAddress(self.kind, self.id)

    getHost = getPeer

    # -- IConsumer (local data source) ------------------------------------

    def registerProducer(self, producer, streaming):
        self._outbox.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self._outbox.unregisterProducer()

    # -- IPushProducer (incoming data toward the protocol) ----------------

    def pauseProducing(self):
        """
        The consumer of this stream's input is full: stop delivering, and so
        stop granting credit to the peer.
        """
        self._inbox.paused = True

    def resumeProducing(self):
        self._inbox.paused = False
        self._drain()

    def stopProducing(self):
        self.abort("cancelled", "the consumer went away")

    # -- the opener's early data (docs/protocol.md section 9.2) -------------

    def sendEarly(self, data, eof, allowance):
        """
        The opener, right after its OPEN: send up to C{allowance} bytes of
        C{data} now, as DATA behind the OPEN (its early data), and the EOF
        too if C{eof} and all of it went; queue the rest, which goes once
        the stream is accepted, within the credit its ACCEPT gives (the
        early bytes count against it).

        @param allowance: the early data the peer's hello allows (at most
            L{EARLY_WINDOW}), else 0 (everything waits for the ACCEPT, as
            with an old peer).
        """
        owner, view = self._owner, memoryview(bytes(data))
        now, rest = view[:allowance], view[allowance:]
        step = owner.maxPayload
        for start in range(0, len(now), step):
            owner.send(frames.DATA, self.id, now[start:start + step].tobytes())
        self.earlySent = len(now)
        if len(rest):
            self._outbox.appendData(frames.DATA, rest)
        if eof:
            self.earlyEof = True
            if len(rest) or not allowance:
                self._outbox.appendControl(frames.EOF, b"")
            else:
                owner.send(frames.EOF, self.id, b"")

    # -- IOwnedStream -------------------------------------------------------

    def frameReceived(self, frame):
        """
        A frame of this stream from the peer (the owner routes it here).
        """
        ftype = frame.type
        if ftype in _HELD_TYPES:
            self.frameArrived(frame)
        elif ftype == frames.WINDOW:
            if len(frame.payload) == 4:
                self.creditArrived(_U32.unpack(frame.payload)[0])
        elif ftype == frames.SIGNAL:
            self.signalArrived(frame)
        elif ftype == frames.RESET:
            try:
                obj = decodeJSON(frame.payload)
                code, message = str(obj.get("code", "reset")), str(obj.get("message", ""))
            except ValueError:
                code, message = "reset", ""
            self.resetArrived(code, message)
        # Anything else (OPEN, ACCEPT, REFUSE of a live id) means nothing here.

    # -- helpers of the outputs -------------------------------------------

    def _flush(self):
        """
        Send what the credit and the session allow, in order.
        """
        owner, out, credit = self._owner, self._outbox, self._outCredit
        while len(out):
            ftype, payload = out.head()
            if ftype in DATA_TYPES:
                n = credit.allowance(owner.maxPayload)
                if n <= 0:
                    break
                if not owner.writable:
                    owner.blocked(self)
                    break
                chunk = out.takeData(n)
                credit.spend(len(chunk))
                owner.send(ftype, self.id, chunk)
            else:
                out.popControl()
                owner.send(ftype, self.id, payload)
        out.regulate()

    def _drain(self):
        """
        Hand held frames to the protocol, in order, until it pauses us.
        """
        inbox = self._inbox
        frame = inbox.next()
        while frame is not None:
            ftype = frame.type
            if ftype in DATA_TYPES:
                self.deliverData(frame)
            elif ftype == frames.EOF:
                self.deliverEof()
            elif ftype == frames.EXIT:
                self.deliverExit(frame)
            else:
                self.deliverClose()
            frame = inbox.next()
        if not inbox.paused and self._inCredit.due():
            self.inboxDrained()

    def _control(self, frame):
        """
        The JSON object of a control frame, or None (the stream is reset
        C{protocol-error}).
        """
        try:
            return decodeJSON(frame.payload)
        except ValueError:
            self.abort("protocol-error", "bad control payload")
            return None

    def _end(self, reason):
        self._outbox.clear()
        self._inbox.clear()
        self._owner.forget(self)
        producer = self._outbox.detachProducer()
        if producer is not None and not reason.check(ConnectionDone):
            try:
                producer.stopProducing()
            except Exception:
                pass
        if self.protocol is not None:
            self.protocol.connectionLost(reason)

    # -- states -----------------------------------------------------------

    @_machine.state(initial=True)
    def opening(self):
        "Not accepted yet: no protocol."

    @_machine.state()
    def open(self):
        "Data both ways."

    @_machine.state()
    def halfClosedLocal(self):
        "Our EOF is queued; the peer may still send."

    @_machine.state()
    def halfClosedRemote(self):
        "The peer's EOF was delivered; we may still send."

    @_machine.state()
    def halfClosedBoth(self):
        "Both EOFs, no CLOSE yet."

    @_machine.state()
    def closing(self):
        "Our CLOSE is queued; the peer's data is still delivered."

    @_machine.state()
    def closingAfterEof(self):
        "Our CLOSE is queued and the peer's EOF was delivered."

    @_machine.state()
    def flushing(self):
        "Both CLOSEs: what we queued before the peer's still goes out."

    @_machine.state()
    def closed(self):
        "Ended normally."

    @_machine.state()
    def reset(self):
        "Ended at once (reset, protocol error, session end)."

    # -- inputs: from the owner -------------------------------------------

    @_machine.input()
    def accept(self, protocol, window):
        "The stream is open: bind the protocol; the peer's window is our credit."

    @_machine.input()
    def acceptAfterEof(self, protocol, window):
        "As accept, for an opener whose EOF was sent (or queued) with its early data."

    @_machine.input()
    def earlyOverflow(self, code, message):
        "The acceptor got more early data than the protocol allows: refuse the open."

    @_machine.input()
    def sessionEnded(self, reason):
        "The session ended (a Failure)."

    @_machine.input()
    def resumeSending(self):
        "The session is writable again (after IStreamOwner.blocked)."

    # -- inputs: frames arriving ------------------------------------------

    @_machine.input()
    def frameArrived(self, frame):
        "DATA, STDERR, EOF, EXIT or CLOSE arrived: held in order."

    @_machine.input()
    def signalArrived(self, frame):
        "SIGNAL arrived: delivered at once."

    @_machine.input()
    def creditArrived(self, credit):
        "WINDOW arrived."

    @_machine.input()
    def resetArrived(self, code, message):
        "RESET arrived."

    # -- inputs: held frames handed to the protocol -----------------------

    @_machine.input()
    def deliverData(self, frame):
        "The next held frame is DATA or STDERR."

    @_machine.input()
    def deliverEof(self):
        "The next held frame is EOF."

    @_machine.input()
    def deliverExit(self, frame):
        "The next held frame is EXIT."

    @_machine.input()
    def deliverClose(self):
        "The next held frame is CLOSE."

    @_machine.input()
    def inboxDrained(self):
        "Everything held was handed over, the protocol has not paused us, and credit is due."

    # -- inputs: the protocol (local side) --------------------------------

    @_machine.input()
    def localData(self, ftype, data):
        "write() or writeStderr()."

    @_machine.input()
    def localControl(self, ftype, payload):
        "sendControl(): EXIT or SIGNAL."

    @_machine.input()
    def localEof(self):
        "writeEof()."

    @_machine.input()
    def localClose(self):
        "loseConnection()."

    @_machine.input()
    def localAbort(self, code, message):
        "abort(), or a flow-control or protocol error found here."

    # -- inputs: internal and queries -------------------------------------

    @_machine.input()
    def outboxEmptied(self):
        "Everything queued has been sent (checked in flushing)."

    @_machine.input()
    def endedQueried(self):
        "Is the stream closed or reset?"

    # -- outputs: opening -------------------------------------------------

    @_machine.output()
    def _bind(self, protocol):
        self.protocol = protocol

    @_machine.output()
    def _takeWindow(self, window):
        credit = self._outCredit
        credit.grant(window)
        early = self.earlySent
        if early:
            # The early data spent the first of the ACCEPT's window.
            if early > window:
                self.abort("flow-control", "accepted with a window of %d after %d early bytes" % (window, early))
                return
            credit.spend(early)
        self._flush()

    @_machine.output()
    def _drainEarly(self):
        # The acceptor's early data, held while opening, goes to the protocol
        # (unless it paused us in connectionMade: then when it resumes).
        if len(self._inbox):
            self._drain()

    @_machine.output()
    def _admitEarly(self, frame):
        allowed = self._earlyAllowed
        if not allowed:
            return  # no early data taken here: ignored (section 9.2)
        ftype = frame.type
        if ftype == frames.DATA:
            n = len(frame.payload)
            if self._inCredit.received + n > allowed:
                self.earlyOverflow(
                    "flow-control", "more than %d bytes of early data" % (allowed,)
                )
                return
            try:
                self._inCredit.receive(n)
            except FlowControlError as e:
                self.earlyOverflow("flow-control", str(e))
                return
            self._inbox.append(frame)
        elif ftype == frames.EOF:
            self._inbox.append(frame)
        # Anything else before ACCEPT is ignored (section 9.2).

    @_machine.output()
    def _sendRefuse(self, code, message):
        self._owner.send(frames.REFUSE, self.id, encodeJSON({"code": code, "message": message}))

    @_machine.output()
    def _connect(self):
        self.protocol.makeConnection(self)

    @_machine.output()
    def _alreadyAccepted(self, protocol):
        raise StreamError("already-accepted", "stream %d was accepted already" % (self.id,))

    @_machine.output()
    def _notAccepted(self):
        raise StreamError("not-accepted", "stream %d is not accepted yet" % (self.id,))

    # -- outputs: arrivals ------------------------------------------------

    @_machine.output()
    def _admit(self, frame):
        if frame.type in DATA_TYPES:
            try:
                self._inCredit.receive(len(frame.payload))
            except FlowControlError as e:
                self.abort("flow-control", str(e))
                return
        self._inbox.append(frame)
        self._drain()

    @_machine.output()
    def _signalReceived(self, frame):
        request = self._control(frame)
        if request is not None and ISignalStreamProtocol.providedBy(self.protocol):
            self.protocol.signalReceived(request)

    @_machine.output()
    def _addCredit(self, credit):
        try:
            self._outCredit.grant(credit)
        except FlowControlError as e:
            self.abort("flow-control", str(e))
            return
        self._flush()

    # -- outputs: delivery ------------------------------------------------

    @_machine.output()
    def _dataReceived(self, frame):
        self._inCredit.consume(len(frame.payload))
        proto = self.protocol
        if frame.type == frames.DATA:
            proto.dataReceived(frame.payload)
        elif IExecStreamProtocol.providedBy(proto):
            proto.stderrReceived(frame.payload)

    @_machine.output()
    def _resetDataAfterEof(self, frame):
        message = "%s after EOF" % (frames.NAMES[frame.type],)
        self._owner.send(
            frames.RESET, self.id, encodeJSON({"code": "protocol-error", "message": message})
        )
        self._end(Failure(StreamReset("protocol-error", message)))

    @_machine.output()
    def _eofReceived(self):
        if IStreamProtocol.providedBy(self.protocol):
            self.protocol.eofReceived()

    @_machine.output()
    def _exitReceived(self, frame):
        status = self._control(frame)
        if status is not None and IExecStreamProtocol.providedBy(self.protocol):
            self.protocol.exitReceived(status)

    @_machine.output()
    def _grant(self):
        if self._inbox.paused:
            return
        n = self._inCredit.grant()
        if n:
            self._owner.send(frames.WINDOW, self.id, _U32.pack(n))

    # -- outputs: the local side ------------------------------------------

    @_machine.output()
    def _queueData(self, ftype, data):
        self._outbox.appendData(ftype, data)

    @_machine.output()
    def _queueControl(self, ftype, payload):
        self._outbox.appendControl(ftype, payload)

    @_machine.output()
    def _queueEof(self):
        self._outbox.appendControl(frames.EOF, b"")

    @_machine.output()
    def _queueClose(self):
        self.disconnecting = True
        self._outbox.appendControl(frames.CLOSE, b"")

    @_machine.output()
    def _send(self):
        self._flush()

    # -- outputs: the end -------------------------------------------------

    @_machine.output()
    def _dropUnsent(self):
        """
        The peer closed: drop what we have not sent; an EOF among it still
        goes.
        """
        if frames.EOF in self._outbox.clear():
            self._owner.send(frames.EOF, self.id, b"")

    @_machine.output()
    def _sendEof(self):
        self._owner.send(frames.EOF, self.id, b"")

    @_machine.output()
    def _sendClose(self):
        self._owner.send(frames.CLOSE, self.id, b"")

    @_machine.output()
    def _finishIfFlushed(self):
        if not len(self._outbox):
            self.outboxEmptied()

    @_machine.output()
    def _closed(self):
        self._end(Failure(ConnectionDone("stream closed")))

    @_machine.output()
    def _sendReset(self, code, message):
        self._owner.send(frames.RESET, self.id, encodeJSON({"code": code, "message": message}))

    @_machine.output()
    def _reset(self, code, message):
        self._end(Failure(StreamReset(code, message)))

    @_machine.output()
    def _lost(self, reason):
        self._end(reason)

    @_machine.output()
    def _yes(self):
        return True

    @_machine.output()
    def _no(self):
        return False

    # -- the table --------------------------------------------------------
    # Every (state, input) pair, by state.  An empty output list ignores the
    # input on purpose.

    opening.upon(accept, enter=open, outputs=[_bind, _takeWindow, _connect, _drainEarly])
    opening.upon(
        acceptAfterEof, enter=halfClosedLocal, outputs=[_bind, _takeWindow, _connect, _drainEarly]
    )
    opening.upon(earlyOverflow, enter=reset, outputs=[_sendRefuse, _reset])
    opening.upon(sessionEnded, enter=reset, outputs=[_lost])
    opening.upon(resumeSending, enter=opening, outputs=[])
    opening.upon(frameArrived, enter=opening, outputs=[_admitEarly])
    opening.upon(signalArrived, enter=opening, outputs=[])
    opening.upon(creditArrived, enter=opening, outputs=[])
    opening.upon(resetArrived, enter=reset, outputs=[_reset])
    opening.upon(deliverData, enter=opening, outputs=[])
    opening.upon(deliverEof, enter=opening, outputs=[])
    opening.upon(deliverExit, enter=opening, outputs=[])
    opening.upon(deliverClose, enter=opening, outputs=[])
    opening.upon(inboxDrained, enter=opening, outputs=[])
    opening.upon(localData, enter=opening, outputs=[_notAccepted])
    opening.upon(localControl, enter=opening, outputs=[_notAccepted])
    opening.upon(localEof, enter=opening, outputs=[_notAccepted])
    opening.upon(localClose, enter=opening, outputs=[_notAccepted])
    opening.upon(localAbort, enter=reset, outputs=[_sendReset, _reset])
    opening.upon(outboxEmptied, enter=opening, outputs=[])
    opening.upon(endedQueried, enter=opening, outputs=[_no], collector=_result)

    open.upon(accept, enter=open, outputs=[_alreadyAccepted])
    open.upon(sessionEnded, enter=reset, outputs=[_lost])
    open.upon(resumeSending, enter=open, outputs=[_send])
    open.upon(frameArrived, enter=open, outputs=[_admit])
    open.upon(signalArrived, enter=open, outputs=[_signalReceived])
    open.upon(creditArrived, enter=open, outputs=[_addCredit])
    open.upon(resetArrived, enter=reset, outputs=[_reset])
    open.upon(deliverData, enter=open, outputs=[_dataReceived])
    open.upon(deliverEof, enter=halfClosedRemote, outputs=[_eofReceived])
    open.upon(deliverExit, enter=open, outputs=[_exitReceived])
    open.upon(deliverClose, enter=closed, outputs=[_dropUnsent, _sendEof, _sendClose, _closed])
    open.upon(inboxDrained, enter=open, outputs=[_grant])
    open.upon(localData, enter=open, outputs=[_queueData, _send])
    open.upon(localControl, enter=open, outputs=[_queueControl, _send])
    open.upon(localEof, enter=halfClosedLocal, outputs=[_queueEof, _send])
    open.upon(localClose, enter=closing, outputs=[_queueEof, _queueClose, _send])
    open.upon(localAbort, enter=reset, outputs=[_sendReset, _reset])
    open.upon(outboxEmptied, enter=open, outputs=[])
    open.upon(endedQueried, enter=open, outputs=[_no], collector=_result)

    halfClosedLocal.upon(accept, enter=halfClosedLocal, outputs=[_alreadyAccepted])
    halfClosedLocal.upon(sessionEnded, enter=reset, outputs=[_lost])
    halfClosedLocal.upon(resumeSending, enter=halfClosedLocal, outputs=[_send])
    halfClosedLocal.upon(frameArrived, enter=halfClosedLocal, outputs=[_admit])
    halfClosedLocal.upon(signalArrived, enter=halfClosedLocal, outputs=[_signalReceived])
    halfClosedLocal.upon(creditArrived, enter=halfClosedLocal, outputs=[_addCredit])
    halfClosedLocal.upon(resetArrived, enter=reset, outputs=[_reset])
    halfClosedLocal.upon(deliverData, enter=halfClosedLocal, outputs=[_dataReceived])
    halfClosedLocal.upon(deliverEof, enter=halfClosedBoth, outputs=[_eofReceived])
    halfClosedLocal.upon(deliverExit, enter=halfClosedLocal, outputs=[_exitReceived])
    halfClosedLocal.upon(deliverClose, enter=closed, outputs=[_dropUnsent, _sendClose, _closed])
    halfClosedLocal.upon(inboxDrained, enter=halfClosedLocal, outputs=[_grant])
    halfClosedLocal.upon(localData, enter=halfClosedLocal, outputs=[])
    halfClosedLocal.upon(localControl, enter=halfClosedLocal, outputs=[_queueControl, _send])
    halfClosedLocal.upon(localEof, enter=halfClosedLocal, outputs=[])
    halfClosedLocal.upon(localClose, enter=closing, outputs=[_queueClose, _send])
    halfClosedLocal.upon(localAbort, enter=reset, outputs=[_sendReset, _reset])
    halfClosedLocal.upon(outboxEmptied, enter=halfClosedLocal, outputs=[])
    halfClosedLocal.upon(endedQueried, enter=halfClosedLocal, outputs=[_no], collector=_result)

    halfClosedRemote.upon(accept, enter=halfClosedRemote, outputs=[_alreadyAccepted])
    halfClosedRemote.upon(sessionEnded, enter=reset, outputs=[_lost])
    halfClosedRemote.upon(resumeSending, enter=halfClosedRemote, outputs=[_send])
    halfClosedRemote.upon(frameArrived, enter=halfClosedRemote, outputs=[_admit])
    halfClosedRemote.upon(signalArrived, enter=halfClosedRemote, outputs=[_signalReceived])
    halfClosedRemote.upon(creditArrived, enter=halfClosedRemote, outputs=[_addCredit])
    halfClosedRemote.upon(resetArrived, enter=reset, outputs=[_reset])
    halfClosedRemote.upon(deliverData, enter=reset, outputs=[_resetDataAfterEof])
    halfClosedRemote.upon(deliverEof, enter=halfClosedRemote, outputs=[])
    halfClosedRemote.upon(deliverExit, enter=halfClosedRemote, outputs=[_exitReceived])
    halfClosedRemote.upon(
        deliverClose, enter=closed, outputs=[_dropUnsent, _sendEof, _sendClose, _closed]
    )
    halfClosedRemote.upon(inboxDrained, enter=halfClosedRemote, outputs=[_grant])
    halfClosedRemote.upon(localData, enter=halfClosedRemote, outputs=[_queueData, _send])
    halfClosedRemote.upon(localControl, enter=halfClosedRemote, outputs=[_queueControl, _send])
    halfClosedRemote.upon(localEof, enter=halfClosedBoth, outputs=[_queueEof, _send])
    halfClosedRemote.upon(
        localClose, enter=closingAfterEof, outputs=[_queueEof, _queueClose, _send]
    )
    halfClosedRemote.upon(localAbort, enter=reset, outputs=[_sendReset, _reset])
    halfClosedRemote.upon(outboxEmptied, enter=halfClosedRemote, outputs=[])
    halfClosedRemote.upon(endedQueried, enter=halfClosedRemote, outputs=[_no], collector=_result)

    halfClosedBoth.upon(accept, enter=halfClosedBoth, outputs=[_alreadyAccepted])
    halfClosedBoth.upon(sessionEnded, enter=reset, outputs=[_lost])
    halfClosedBoth.upon(resumeSending, enter=halfClosedBoth, outputs=[_send])
    halfClosedBoth.upon(frameArrived, enter=halfClosedBoth, outputs=[_admit])
    halfClosedBoth.upon(signalArrived, enter=halfClosedBoth, outputs=[_signalReceived])
    halfClosedBoth.upon(creditArrived, enter=halfClosedBoth, outputs=[_addCredit])
    halfClosedBoth.upon(resetArrived, enter=reset, outputs=[_reset])
    halfClosedBoth.upon(deliverData, enter=reset, outputs=[_resetDataAfterEof])
    halfClosedBoth.upon(deliverEof, enter=halfClosedBoth, outputs=[])
    halfClosedBoth.upon(deliverExit, enter=halfClosedBoth, outputs=[_exitReceived])
    halfClosedBoth.upon(deliverClose, enter=closed, outputs=[_dropUnsent, _sendClose, _closed])
    halfClosedBoth.upon(inboxDrained, enter=halfClosedBoth, outputs=[_grant])
    halfClosedBoth.upon(localData, enter=halfClosedBoth, outputs=[])
    halfClosedBoth.upon(localControl, enter=halfClosedBoth, outputs=[_queueControl, _send])
    halfClosedBoth.upon(localEof, enter=halfClosedBoth, outputs=[])
    halfClosedBoth.upon(localClose, enter=closingAfterEof, outputs=[_queueClose, _send])
    halfClosedBoth.upon(localAbort, enter=reset, outputs=[_sendReset, _reset])
    halfClosedBoth.upon(outboxEmptied, enter=halfClosedBoth, outputs=[])
    halfClosedBoth.upon(endedQueried, enter=halfClosedBoth, outputs=[_no], collector=_result)

    closing.upon(accept, enter=closing, outputs=[_alreadyAccepted])
    closing.upon(sessionEnded, enter=reset, outputs=[_lost])
    closing.upon(resumeSending, enter=closing, outputs=[_send])
    closing.upon(frameArrived, enter=closing, outputs=[_admit])
    closing.upon(signalArrived, enter=closing, outputs=[_signalReceived])
    closing.upon(creditArrived, enter=closing, outputs=[_addCredit])
    closing.upon(resetArrived, enter=reset, outputs=[_reset])
    closing.upon(deliverData, enter=closing, outputs=[_dataReceived])
    closing.upon(deliverEof, enter=closingAfterEof, outputs=[_eofReceived])
    closing.upon(deliverExit, enter=closing, outputs=[_exitReceived])
    closing.upon(deliverClose, enter=flushing, outputs=[_finishIfFlushed])
    closing.upon(inboxDrained, enter=closing, outputs=[_grant])
    closing.upon(localData, enter=closing, outputs=[])
    closing.upon(localControl, enter=closing, outputs=[])
    closing.upon(localEof, enter=closing, outputs=[])
    closing.upon(localClose, enter=closing, outputs=[])
    closing.upon(localAbort, enter=reset, outputs=[_sendReset, _reset])
    closing.upon(outboxEmptied, enter=closing, outputs=[])
    closing.upon(endedQueried, enter=closing, outputs=[_no], collector=_result)

    closingAfterEof.upon(accept, enter=closingAfterEof, outputs=[_alreadyAccepted])
    closingAfterEof.upon(sessionEnded, enter=reset, outputs=[_lost])
    closingAfterEof.upon(resumeSending, enter=closingAfterEof, outputs=[_send])
    closingAfterEof.upon(frameArrived, enter=closingAfterEof, outputs=[_admit])
    closingAfterEof.upon(signalArrived, enter=closingAfterEof, outputs=[_signalReceived])
    closingAfterEof.upon(creditArrived, enter=closingAfterEof, outputs=[_addCredit])
    closingAfterEof.upon(resetArrived, enter=reset, outputs=[_reset])
    closingAfterEof.upon(deliverData, enter=reset, outputs=[_resetDataAfterEof])
    closingAfterEof.upon(deliverEof, enter=closingAfterEof, outputs=[])
    closingAfterEof.upon(deliverExit, enter=closingAfterEof, outputs=[_exitReceived])
    closingAfterEof.upon(deliverClose, enter=flushing, outputs=[_finishIfFlushed])
    closingAfterEof.upon(inboxDrained, enter=closingAfterEof, outputs=[_grant])
    closingAfterEof.upon(localData, enter=closingAfterEof, outputs=[])
    closingAfterEof.upon(localControl, enter=closingAfterEof, outputs=[])
    closingAfterEof.upon(localEof, enter=closingAfterEof, outputs=[])
    closingAfterEof.upon(localClose, enter=closingAfterEof, outputs=[])
    closingAfterEof.upon(localAbort, enter=reset, outputs=[_sendReset, _reset])
    closingAfterEof.upon(outboxEmptied, enter=closingAfterEof, outputs=[])
    closingAfterEof.upon(endedQueried, enter=closingAfterEof, outputs=[_no], collector=_result)

    flushing.upon(accept, enter=flushing, outputs=[_alreadyAccepted])
    flushing.upon(sessionEnded, enter=reset, outputs=[_lost])
    flushing.upon(resumeSending, enter=flushing, outputs=[_send, _finishIfFlushed])
    flushing.upon(frameArrived, enter=flushing, outputs=[])
    flushing.upon(signalArrived, enter=flushing, outputs=[])
    flushing.upon(creditArrived, enter=flushing, outputs=[_addCredit, _finishIfFlushed])
    flushing.upon(resetArrived, enter=reset, outputs=[_reset])
    flushing.upon(deliverData, enter=flushing, outputs=[])
    flushing.upon(deliverEof, enter=flushing, outputs=[])
    flushing.upon(deliverExit, enter=flushing, outputs=[])
    flushing.upon(deliverClose, enter=flushing, outputs=[])
    flushing.upon(inboxDrained, enter=flushing, outputs=[])
    flushing.upon(localData, enter=flushing, outputs=[])
    flushing.upon(localControl, enter=flushing, outputs=[])
    flushing.upon(localEof, enter=flushing, outputs=[])
    flushing.upon(localClose, enter=flushing, outputs=[])
    flushing.upon(localAbort, enter=reset, outputs=[_sendReset, _reset])
    flushing.upon(outboxEmptied, enter=closed, outputs=[_closed])
    flushing.upon(endedQueried, enter=flushing, outputs=[_no], collector=_result)

    closed.upon(accept, enter=closed, outputs=[_alreadyAccepted])
    closed.upon(sessionEnded, enter=closed, outputs=[])
    closed.upon(resumeSending, enter=closed, outputs=[])
    closed.upon(frameArrived, enter=closed, outputs=[])
    closed.upon(signalArrived, enter=closed, outputs=[])
    closed.upon(creditArrived, enter=closed, outputs=[])
    closed.upon(resetArrived, enter=closed, outputs=[])
    closed.upon(deliverData, enter=closed, outputs=[])
    closed.upon(deliverEof, enter=closed, outputs=[])
    closed.upon(deliverExit, enter=closed, outputs=[])
    closed.upon(deliverClose, enter=closed, outputs=[])
    closed.upon(inboxDrained, enter=closed, outputs=[])
    closed.upon(localData, enter=closed, outputs=[])
    closed.upon(localControl, enter=closed, outputs=[])
    closed.upon(localEof, enter=closed, outputs=[])
    closed.upon(localClose, enter=closed, outputs=[])
    closed.upon(localAbort, enter=closed, outputs=[])
    closed.upon(outboxEmptied, enter=closed, outputs=[])
    closed.upon(endedQueried, enter=closed, outputs=[_yes], collector=_result)

    reset.upon(accept, enter=reset, outputs=[_alreadyAccepted])
    reset.upon(sessionEnded, enter=reset, outputs=[])
    reset.upon(resumeSending, enter=reset, outputs=[])
    reset.upon(frameArrived, enter=reset, outputs=[])
    reset.upon(signalArrived, enter=reset, outputs=[])
    reset.upon(creditArrived, enter=reset, outputs=[])
    reset.upon(resetArrived, enter=reset, outputs=[])
    reset.upon(deliverData, enter=reset, outputs=[])
    reset.upon(deliverEof, enter=reset, outputs=[])
    reset.upon(deliverExit, enter=reset, outputs=[])
    reset.upon(deliverClose, enter=reset, outputs=[])
    reset.upon(inboxDrained, enter=reset, outputs=[])
    reset.upon(localData, enter=reset, outputs=[])
    reset.upon(localControl, enter=reset, outputs=[])
    reset.upon(localEof, enter=reset, outputs=[])
    reset.upon(localClose, enter=reset, outputs=[])
    reset.upon(localAbort, enter=reset, outputs=[])
    reset.upon(outboxEmptied, enter=reset, outputs=[])
    reset.upon(endedQueried, enter=reset, outputs=[_yes], collector=_result)

    # Accepted once only; early data overflows only while opening.
    # (Ended, an accept is ignored.)
    for _state in (open, halfClosedLocal, halfClosedRemote, halfClosedBoth, closing,
                   closingAfterEof, flushing, closed, reset):
        _state.upon(
            acceptAfterEof, enter=_state,
            outputs=[] if _state in (closed, reset) else [_alreadyAccepted],
        )
        _state.upon(earlyOverflow, enter=_state, outputs=[])
    del _state


__all__ = [
    "EARLY_DATA",
    "EARLY_WINDOW",
    "Stream",
    "StreamAddress",
    "StreamError",
    "StreamRefused",
    "StreamReset",
    "decodeJSON",
    "encodeJSON",
]
