# -*- test-case-name: tests.test_link -*-
"""
One prokshy session over one byte channel.

States and transitions (the host side opens, the guest side answers)::

    state        event                                   next         action
    -----------  --------------------------------------  -----------  ---------------------------------
    IDLE         host: start()                           HELLO        send hello (new nonce), every
                                                                      helloInterval until answered
    IDLE         guest: hello from a host                UP           new nonce, answer hello, linkUp
    HELLO        guest hello answering our nonce         UP           linkUp
    HELLO        guest hello answering another nonce     HELLO        ignore (stale, or our own echo)
    UP           guest: hello with the same host nonce   UP           answer again (our answer was lost)
    UP           guest: hello with a new host nonce      UP           linkDown(host restarted), new
                                                                      session, answer, linkUp
    UP           host: guest hello with a new nonce      UP           linkDown(guest restarted), linkUp
    UP           host: silent for probeAfter             UP           send hello probes (same nonce)
    UP           guest: silent for quietPings peer pings UP (quiet)   send nothing of our own (no pings,
                                                                      retransmissions or new frames)
                                                                      until the peer is heard again
    UP           host: guest hello, no common version    HELLO        linkDown(guest restarted), new
                 or limits below the minimums                         nonce, go on probing
    UP           endSession(reason)                      IDLE/HELLO   linkDown(reason); host restarts
    UP           silent for deadAfter                    IDLE/HELLO   linkDown(peer silent); the host
                                                                      starts over with a new nonce
    UP           GOODBYE received                        IDLE/HELLO   linkDown(goodbye); host restarts
    any          stop()                                  STOPPED      cancel timers, linkDown if UP

Every frame carries the session tag (CRC-32 of both nonces), so frames from an
earlier session, stale in the channel, are dropped.  Sequenced frames are
delivered to the listener exactly once and in order (L{prokshy.link.reliable}).
"""

import os
import struct
import zlib

import attr
from twisted.logger import Logger

from prokshy._version import __version__
from prokshy.link.reliable import Receiver, Sender, decodeSack, encodeOutgoing, encodeSack
from prokshy.wire import frames
from prokshy.wire.channel import ChannelDecoder, encodeHello

PROTOCOL_VERSIONS = (1,)
_PING = struct.Struct(">Qd")
#: The smallest C{max_payload} and C{window} a peer may advertise: a hello
#: below them is refused (a guest answers with an error, a host ignores the
#: answer), because the control payloads (OPEN, REFUSE, EXIT) must fit in
#: one frame and a window must hold a few of them.
MIN_PAYLOAD = 256
MIN_WINDOW = 1024
#: Assumed when a peer's hello does not say how often it pings.
DEFAULT_PEER_PING = 1.0


class SessionEnded(Exception):
    """
    The session ended; every stream of it ends with this error.
    """

    def __init__(self, reason):
        Exception.__init__(self, reason)
        self.reason = reason

    def __str__(self):
        return "session ended: %s" % (self.reason,)


class NotConnected(Exception):
    """
    There is no session to send on.
    """


@attr.s
class LinkConfig:
    """
    @ivar window: bytes in flight the peer may send toward us (advertised).
    @ivar maxPayload: the largest payload we accept (advertised).
    @ivar sendWindow: our own cap on bytes in flight toward the peer.
    @ivar pingInterval: seconds between keepalive pings.
    @ivar deadAfter: seconds of silence after which the peer is dead.
    @ivar probeAfter: host only: seconds of silence before re-sending hellos.
    @ivar helloInterval: seconds between hello retransmissions.
    @ivar features: feature names we support.
    @ivar auth: a token to send in our hello, or None.
    @ivar quietPings: guest: after this many of the peer's ping intervals
        (its hello's C{ping_interval}, else 1 s) without hearing it, stop
        sending anything of our own until it is heard again: a host that
        left without GOODBYE must not get the session's pings and
        retransmissions sprayed at whichever client takes its place
        (bhyve never tells the guest).  None: never go quiet.
    """

    window = attr.ib(default=16384)
    maxPayload = attr.ib(default=4096)
    sendWindow = attr.ib(default=1 << 20)
    pingInterval = attr.ib(default=1.0)
    deadAfter = attr.ib(default=8.0)
    probeAfter = attr.ib(default=1.5)
    helloInterval = attr.ib(default=0.5)
    rtoMin = attr.ib(default=0.2)
    rtoMax = attr.ib(default=2.0)
    features = attr.ib(default=())
    auth = attr.ib(default=None)
    extra = attr.ib(default=attr.Factory(dict))
    quietPings = attr.ib(default=None)


@attr.s
class SessionInfo:
    """
    What both sides agreed in the hello exchange.
    """

    version = attr.ib()
    localNonce = attr.ib()
    peerNonce = attr.ib()
    tag = attr.ib()
    features = attr.ib()
    peerHello = attr.ib()
    startedAt = attr.ib()
    sendPayload = attr.ib()
    sendWindow = attr.ib()


def _newNonce():
    return os.urandom(8).hex()


def sessionTag(hostNonce, guestNonce):
    return zlib.crc32((hostNonce + ":" + guestNonce).encode("ascii"))


class Link:
    """
    A session over one channel: handshake, keepalive, reliable delivery.

    @param clock: an C{IReactorTime}.
    @param write: called with bytes for the channel.
    @param role: C{"host"} or C{"guest"}.
    @param listener: has C{linkUp(link, info)}, C{frameReceived(frame)} and
        C{linkDown(link, reason)}; optionally C{authorize(hello) -> str|None}
        (guest role: a refusal reason or None).
    """

    log = Logger()

    def __init__(self, clock, write, role, listener, config=None):
        if role not in ("host", "guest"):
            raise ValueError("role must be host or guest")
        self.clock = clock
        self._write = write
        self.role = role
        self.listener = listener
        self.config = config or LinkConfig()
        self.state = "IDLE"
        self.info = None
        self.decoder = ChannelDecoder(frames.MAX_PAYLOAD_LIMIT)
        self.decoder.frames.maxPayload = self.config.maxPayload
        self._nonce = None
        self._helloCall = None
        self._pingCall = None
        self._rtoCall = None
        self._probeCall = None
        self._probeWatch = None
        self._lastHeard = clock.seconds()
        self._paused = False
        self._inWritable = False
        self._quietAfter = None
        self._incompatibleLogged = None
        #: How many times the peer was heard (a valid frame of the session,
        #: or a host hello): a caller can tell whether some input was the
        #: peer's at all.
        self.heard = 0
        self._resetTransfer()
        self.stats = {
            "bytes_in": 0,
            "bytes_out": 0,
            "frames_in": 0,
            "frames_out": 0,
            "stale": 0,
            "sessions": 0,
            "retransmits": 0,
            "quiet": 0,
        }
        self.rtt = None
        self.lastError = None

    # -- lifecycle --------------------------------------------------------

    def _resetTransfer(self):
        self.sender = Sender(self.config.sendWindow)
        # A peer that keeps to our window never has more than that in
        # flight, so no more than that is held out of order.
        self.receiver = Receiver(self.config.window)
        self._quiet = False
        self._lastAckSent = None
        self._ackOwed = False
        self._rto = 0.5
        self._sentCount = 0
        self._lossCount = 0
        self._payload = 1024
        self._pingSeq = 0
        self._pingSent = {}

    def start(self):
        """
        Host: begin the handshake.  Guest: nothing to do (wait for a hello).
        """
        self._lastHeard = self.clock.seconds()
        if self.role == "host":
            self._startHandshake()
            self._scheduleProbe()
        self._schedulePing()

    def stop(self, reason="stopped"):
        """
        Cancel all timers; end the session if there is one.
        """
        for name in ("_helloCall", "_pingCall", "_rtoCall", "_probeCall", "_probeWatch"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)
        wasUp = self.state == "UP"
        self.state = "STOPPED"
        if wasUp:
            self.listener.linkDown(self, SessionEnded(reason))

    def goodbye(self, reason="goodbye"):
        """
        End the session on purpose and tell the peer.

        The GOODBYE frames are written after the session has ended on our
        side, so that a listener that discards the session's unsent output
        when it ends does not discard them too.
        """
        wire = None
        if self.state == "UP":
            payload = reason.encode("utf-8")[:200]
            wire = self._encode(frames.GOODBYE, 0, payload)
        self.stop(reason)
        if wire is not None:
            self._send(wire + wire)

    def endSession(self, reason):
        """
        End the current session at once, without telling the peer (it is
        gone: a guest learnt that a new client took the channel).  The link
        keeps running: a guest waits for the next hello, a host starts a
        new handshake.
        """
        if self.state != "UP":
            return
        self._down(reason)
        if self.role == "host" and self.state != "STOPPED":
            self._startHandshake()

    # -- input ------------------------------------------------------------

    def dataReceived(self, data):
        """
        Bytes from the channel.
        """
        if self.state == "STOPPED":
            return
        self.stats["bytes_in"] += len(data)
        for item in self.decoder.feed(data):
            if self.state == "STOPPED":
                return
            if isinstance(item, dict):
                self.helloReceived(item)
            else:
                self._frameReceived(item)
        self._flushAck()

    def helloReceived(self, hello):
        """
        A parsed hello line (the guest's line layer calls this directly for
        the hello that upgrades the channel).
        """
        if self.state == "STOPPED":
            return
        role = hello.get("role")
        nonce = hello.get("nonce")
        if not isinstance(nonce, str) or not 0 < len(nonce) <= 64 or not nonce.isascii():
            self.log.info("ignored a hello without a valid nonce")
            return
        if self.role == "guest" and role == "host":
            self._hostHello(hello)
        elif self.role == "host" and role == "guest":
            self._guestHello(hello)
        # Anything else is our own echo or a confused peer: ignore it.

    def _negotiate(self, hello):
        versions = hello.get("v")
        if not isinstance(versions, list):
            return None
        common = set(PROTOCOL_VERSIONS) & set(v for v in versions if isinstance(v, int))
        return max(common) if common else None

    def _hostHello(self, hello):
        self._heard()
        if self.state == "UP" and hello["nonce"] == self.info.peerNonce:
            self._sendHello(peer=hello["nonce"])
            self._pump()  # anything held back while we were quiet
            return
        version = self._negotiate(hello)
        refusal = None
        if version is None:
            refusal = "no common protocol version (we speak %s)" % (list(PROTOCOL_VERSIONS),)
        else:
            refusal = _limitsProblem(hello)
        if refusal is None:
            authorize = getattr(self.listener, "authorize", None)
            if authorize is not None:
                refusal = authorize(hello)
        if refusal is not None:
            self.log.warn("refused a host hello: {why}", why=refusal)
            self._sendHello(peer=hello["nonce"], error=refusal, nonce=_newNonce())
            return
        if self.state == "UP":
            self._down("host started a new session")
        self._nonce = _newNonce()
        self._sendHello(peer=hello["nonce"])
        self._up(hello, version, hostNonce=hello["nonce"], guestNonce=self._nonce)

    def _guestHello(self, hello):
        if hello.get("peer") != self._nonce:
            return  # stale: an answer to an earlier session of ours
        self._heard()
        if "error" in hello:
            self.lastError = str(hello["error"])[:200]
            self.log.warn("guest refused the session: {why}", why=self.lastError)
            if self.state == "UP":
                self._down("refused: " + self.lastError)
            self.stop("refused: " + self.lastError)
            refused = getattr(self.listener, "linkRefused", None)
            if refused is not None:
                refused(self, self.lastError)
            return
        wasUp = self.state == "UP"
        if wasUp:
            if hello["nonce"] == self.info.peerNonce:
                return
            self._down("guest restarted")
        version = self._negotiate(hello)
        if version is None:
            problem = "the guest speaks no protocol version we do (it offers %s, we speak %s)" % (
                _shortRepr(hello.get("v")),
                list(PROTOCOL_VERSIONS),
            )
        else:
            problem = _limitsProblem(hello)
        if problem is not None:
            # Not a session; keep saying hello, so that a compatible guest
            # that takes its place gets one.
            self.lastError = problem
            if self._incompatibleLogged != problem:
                self._incompatibleLogged = problem
                self.log.warn("ignored the guest's answer: {why}; still probing", why=problem)
            if wasUp and self.state != "STOPPED":
                self._startHandshake()
            return
        self._incompatibleLogged = None
        self._cancelHello()
        self._up(hello, version, hostNonce=self._nonce, guestNonce=hello["nonce"])

    def _up(self, hello, version, hostNonce, guestNonce):
        self._resetTransfer()
        ours = set(self.config.features)
        theirs = hello.get("features")
        common = sorted(ours & set(theirs)) if isinstance(theirs, list) else []
        # _limitsProblem has refused anything below MIN_PAYLOAD / MIN_WINDOW.
        sendPayload = min(_int(hello.get("max_payload"), 1024), frames.MAX_PAYLOAD_LIMIT)
        sendWindow = min(_int(hello.get("window"), 8192), self.config.sendWindow)
        self.sender.window = sendWindow
        if self.config.quietPings is None:
            self._quietAfter = None
        else:
            self._quietAfter = self.config.quietPings * _peerPing(hello)
        self.info = SessionInfo(
            version=version,
            localNonce=self._nonce,
            peerNonce=hello["nonce"],
            tag=sessionTag(hostNonce, guestNonce),
            features=common,
            peerHello=hello,
            startedAt=self.clock.seconds(),
            sendPayload=sendPayload,
            sendWindow=self.sender.window,
        )
        # Start small and grow while the channel is clean: frames already in
        # flight cannot be split again, and a corrupting channel needs small ones.
        self._payload = min(self.info.sendPayload, 1024)
        self.state = "UP"
        self.stats["sessions"] += 1
        self._lastHeard = self.clock.seconds()
        self.listener.linkUp(self, self.info)

    def _down(self, reason):
        self.state = "IDLE"
        self._quiet = False
        self._cancelRto()
        self.listener.linkDown(self, SessionEnded(reason))

    # -- hearing the peer, and going quiet --------------------------------

    def _heard(self):
        """
        The peer said something valid: it is alive.
        """
        self._lastHeard = self.clock.seconds()
        self.heard += 1
        if self._quiet:
            self._quiet = False
            self.log.info("heard the peer again: resuming")
            if self.state == "UP":
                self._rto = self._baseRto()
                self._armRto()

    @property
    def quiet(self):
        """
        True while the session is up but we send nothing of our own, the
        peer having been silent for C{quietPings} of its ping intervals.
        """
        if self._quiet:
            return True
        if self.state != "UP" or self._quietAfter is None:
            return False
        silent = self.clock.seconds() - self._lastHeard
        if silent < self._quietAfter:
            return False
        self._quiet = True
        self.stats["quiet"] += 1
        self._cancelRto()
        self.log.info(
            "peer silent for {silent:.1f} s: sending nothing until it is heard again",
            silent=silent,
        )
        return True

    def _frameReceived(self, frame):
        self.stats["frames_in"] += 1
        if self.state != "UP" or frame.tag != self.info.tag:
            self.stats["stale"] += 1
            return
        self._heard()
        self._handleAck(frame)
        if frame.sequenced:
            self._ackOwed = True
            # Acknowledge even a duplicate: it means our last ACK was lost.
            self._lastAckSent = None
            for ready in self.receiver.accept(frame):
                if self.state != "UP":
                    return
                self.listener.frameReceived(ready)
            return
        if frame.type == frames.PING:
            self._send(self._encode(frames.PONG, 0, frame.payload))
        elif frame.type == frames.PONG:
            self._pongReceived(frame.payload)
        elif frame.type == frames.GOODBYE:
            why = frame.payload.decode("utf-8", "replace")
            self._down("peer said goodbye (%s)" % (why,))
            if self.role == "host" and self.state != "STOPPED":
                self._startHandshake()

    # -- acknowledgement and retransmission -------------------------------

    def _handleAck(self, frame):
        if self.sender.acknowledge(frame.ack):
            self._rto = self._baseRto()
            self._armRto()
        if frame.type == frames.ACK and frame.payload:
            highest = self.sender.sack(decodeSack(frame.payload))
            if highest is not None:
                now = self.clock.seconds()
                wires = self.sender.holes(highest, now, self._holeAge(), self._encodeOutgoing)
                self._retransmitted(wires)
        self._pump()

    def _holeAge(self):
        return max(1.5 * (self.rtt or 0.0), 0.01)

    def _flushAck(self):
        if self.state == "UP" and self._ackOwed:
            self._ackOwed = False
            ranges = self.receiver.sackRanges()
            if ranges:
                self._send(
                    self._encode(frames.ACK, 0, encodeSack(ranges), flags=frames.FLAG_NACK)
                )
            elif self._lastAckSent != self.receiver.expected:
                self._send(self._encode(frames.ACK, 0, b""))

    def _baseRto(self):
        if self.rtt is None:
            return 0.5
        return min(max(self.config.rtoMin, 3 * self.rtt + 0.05), self.config.rtoMax)

    def _armRto(self):
        self._cancelRto()
        if self.sender.unacked and self.state == "UP":
            self._rtoCall = self.clock.callLater(self._rto, self._rtoFired)
            probe = self._probeDelay()
            if probe < self._rto:
                self._probeCall = self.clock.callLater(probe, self._probeFired)

    def _cancelRto(self):
        for name in ("_rtoCall", "_probeCall"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)

    def _probeDelay(self):
        return max(2.5 * (self.rtt or 0.01), 0.01) + 0.005

    def _probeFired(self):
        """
        Tail-loss probe: nothing was acknowledged for about two round trips,
        so resend only the newest frame in flight.  If earlier frames were
        lost, the peer's answer carries SACK ranges and the holes are
        resent at once, long before the retransmission timer.
        """
        self._probeCall = None
        if self.state != "UP" or self.quiet:
            return
        wire = self.sender.probe(self.clock.seconds(), self._encodeOutgoing)
        if wire is not None:
            self.stats["retransmits"] = self.sender.retransmits
            self._send(wire)

    def _rtoFired(self):
        self._rtoCall = None
        if self.state != "UP" or not self.sender.unacked or self.quiet:
            return
        self._retransmitted(self.sender.retransmitAll(self.clock.seconds(), self._encodeOutgoing))
        self._rto = min(self._rto * 2, self.config.rtoMax)
        self._armRto()

    def _retransmitted(self, wires):
        if not wires:
            return
        self.stats["retransmits"] = self.sender.retransmits
        self._lossCount += len(wires)
        self._adapt()
        self._send(b"".join(wires))

    def _adapt(self):
        """
        Adapt the payload size to the channel: halve it while more than 10%
        of frames need resending, double it back while fewer than 2% do.
        """
        sent, lost = self._sentCount, self._lossCount
        if lost >= 4 and lost > 0.10 * max(sent, 1):
            self._payload = max(MIN_PAYLOAD, self._payload // 2)
        elif sent >= 64:
            if lost < 0.02 * sent:
                self._payload = min(self.info.sendPayload, self._payload * 2)
        else:
            return
        self._sentCount = self._lossCount = 0

    # -- output -----------------------------------------------------------

    def send(self, ftype, stream, payload=b""):
        """
        Queue a sequenced frame for reliable, in-order delivery.

        @raise NotConnected: if there is no session.
        """
        if self.state != "UP":
            raise NotConnected("no session")
        if ftype not in frames.SEQUENCED:
            raise ValueError("not a sequenced frame type")
        if len(payload) > self.info.sendPayload:
            raise ValueError("payload larger than the peer accepts")
        self.sender.enqueue(ftype, stream, payload)
        self._pump()

    @property
    def maxPayload(self):
        """
        The payload size to use now: at most what the peer accepts, less
        while the channel is losing frames.
        """
        return self._payload if self.info else 1024

    def _encodeOutgoing(self, item):
        return encodeOutgoing(item, self.receiver.expected, self.info.tag)

    def _encode(self, ftype, stream, payload, flags=0):
        tag = self.info.tag if self.info else 0
        return frames.encode(ftype, stream, payload, 0, self.receiver.expected, tag, flags)

    def _pump(self):
        if self.state != "UP" or self._paused or self.quiet:
            return
        wires = self.sender.takeSendable(self._encodeOutgoing, self.clock.seconds())
        if wires:
            self._sentCount += len(wires)
            self._adapt()
            hadTimer = self._rtoCall is not None
            self._send(b"".join(wires))
            if not hadTimer:
                self._armRto()
        if not self.sender.queue and not self._inWritable:
            writable = getattr(self.listener, "linkWritable", None)
            if writable is not None:
                self._inWritable = True
                try:
                    writable()
                finally:
                    self._inWritable = False

    @property
    def writable(self):
        """
        True when new data frames would go out at once (nothing queued
        behind the window).  Streams hand data to the link only then, so
        that frame sizes follow the channel and streams share it fairly.
        """
        return self.state == "UP" and not self._paused and not self.quiet and not self.sender.queue

    def _send(self, data):
        self.stats["bytes_out"] += len(data)
        self.stats["frames_out"] += 1
        self._lastAckSent = self.receiver.expected
        self._write(data)

    def pauseProducing(self):
        """
        The channel's write buffer is full: stop sending new frames.
        """
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self._pump()

    def stopProducing(self):
        self.stop("channel closed")

    # -- hello and keepalive ----------------------------------------------

    def _helloFields(self):
        fields = {
            "v": list(PROTOCOL_VERSIONS),
            "role": self.role,
            "nonce": self._nonce,
            "agent": "prokshy/" + __version__,
            "features": list(self.config.features),
            "window": self.config.window,
            "max_payload": self.config.maxPayload,
            "ping_interval": self.config.pingInterval,
        }
        if self.config.auth is not None:
            fields["auth"] = self.config.auth
        fields.update(self.config.extra)
        return fields

    def _sendHello(self, peer=None, error=None, nonce=None):
        fields = self._helloFields()
        if nonce is not None:
            fields["nonce"] = nonce
        if peer is not None:
            fields["peer"] = peer
        if error is not None:
            fields["error"] = error
        line = encodeHello(fields)
        self.stats["bytes_out"] += len(line)
        self._write(line)

    def _startHandshake(self):
        self.state = "HELLO"
        self._nonce = _newNonce()
        self._helloTick()

    def _helloTick(self):
        self._helloCall = None
        if self.state == "STOPPED":
            return
        self._sendHello()
        self._helloCall = self.clock.callLater(self.config.helloInterval, self._helloTick)

    def _cancelHello(self):
        if self._helloCall is not None and self._helloCall.active():
            self._helloCall.cancel()
        self._helloCall = None

    def _schedulePing(self):
        self._pingCall = self.clock.callLater(self.config.pingInterval, self._pingTick)

    def _pingTick(self):
        self._pingCall = None
        if self.state == "STOPPED":
            return
        now = self.clock.seconds()
        silent = now - self._lastHeard
        if self.state == "UP":
            if silent >= self.config.deadAfter:
                self._down("peer silent for %.1f s" % (silent,))
                if self.role == "host":
                    self._startHandshake()
            elif self.quiet:
                pass
            else:
                self._pingSeq += 1
                self._pingSent = {self._pingSeq: now}
                # The LF makes the peer drop any truncated frame it holds.
                self._send(b"\n" + self._encode(frames.PING, 0, _PING.pack(self._pingSeq, now)))
        self._schedulePing()

    def _scheduleProbe(self):
        self._probeWatch = self.clock.callLater(self.config.helloInterval, self._probeTick)

    def _probeTick(self):
        """
        Host: while the session is up but the guest has been silent for
        C{probeAfter}, send our hello again every C{helloInterval}: a
        restarted guest answers it with a new nonce.
        """
        self._probeWatch = None
        if self.state == "STOPPED":
            return
        if self.state == "UP" and self.clock.seconds() - self._lastHeard >= self.config.probeAfter:
            self._sendHello()
        self._scheduleProbe()

    def _pongReceived(self, payload):
        if len(payload) != _PING.size:
            return
        seq, _ = _PING.unpack(payload)
        sentAt = self._pingSent.pop(seq, None)
        if sentAt is not None:
            sample = self.clock.seconds() - sentAt
            self.rtt = sample if self.rtt is None else 0.8 * self.rtt + 0.2 * sample

    def snapshot(self):
        """
        A JSON-able dict of counters for status reports.
        """
        d = dict(self.stats)
        d["state"] = self.state
        d["rtt_ms"] = None if self.rtt is None else round(self.rtt * 1000, 3)
        d["resyncs"] = self.decoder.resyncs
        d["skipped_bytes"] = self.decoder.skipped
        d["duplicates"] = self.receiver.duplicates
        d["gaps"] = self.receiver.gaps
        d["session_age"] = (
            None if self.info is None or self.state != "UP"
            else round(self.clock.seconds() - self.info.startedAt, 3)
        )
        return d


def _int(value, default):
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def _limitsProblem(hello):
    """
    Why the C{window} or C{max_payload} a peer advertises is unusable, or
    None.  Absent (or malformed) fields get the defaults.
    """
    window = _int(hello.get("window"), 8192)
    if window < MIN_WINDOW:
        return "window %d is below the minimum of %d bytes" % (window, MIN_WINDOW)
    payload = _int(hello.get("max_payload"), 1024)
    if payload < MIN_PAYLOAD:
        return "max_payload %d is below the minimum of %d bytes" % (payload, MIN_PAYLOAD)
    return None


def _peerPing(hello):
    """
    How often the peer pings, from its hello (seconds), within sane bounds.
    """
    value = hello.get("ping_interval")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return DEFAULT_PEER_PING
    return min(max(float(value), 0.01), 3600.0)


def _shortRepr(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
