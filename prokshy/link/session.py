# -*- test-case-name: tests.unit.test_link -*-
"""
One prokshy session over one byte channel: L{Link}, the object the layers
above use.  It is a façade over the link's parts:

    part                          module
    ----------------------------  -----------------------------------------
    sessions: hello, up, ended    L{prokshy.link.lifecycle} (the state
                                  machines and their transition tables)
    what a hello says             L{prokshy.link.handshake}
    keepalive timers, PING/PONG   L{prokshy.link.keepalive}
    a session's sequenced frames  L{prokshy.link.retransmit} (the
    (acks, loss, resends, sizes)  retransmission timer, L{Delivery}) over
                                  L{prokshy.link.reliable} (the window)
    its collaborators             L{prokshy.link.interfaces}

Every frame carries the session tag (CRC-32 of both nonces), so frames from an
earlier session, stale in the channel, are dropped.  Sequenced frames are
delivered to the listener exactly once and in order.

Everything the link writes toward the peer, hello lines and unsequenced
frames included, counts against the window the peer advertised until the
peer is known to have read it (L{prokshy.link.reliable.Sender}); a frame is
resent only once the peer has read past it without it.
"""

import os

import attr
from twisted.logger import Logger
from zope.interface import implementer

from prokshy.link import handshake
from prokshy.link.handshake import (  # noqa: F401 (the link's public names)
    DEFAULT_PEER_PING,
    MIN_PAYLOAD,
    MIN_WINDOW,
    PROTOCOL_VERSIONS,
    SessionInfo,
    sessionTag,
)
from prokshy.link.interfaces import ACCEPT_ALL, ILink
from prokshy.link.keepalive import Pinger
from prokshy.link.lifecycle import ISessionCore, lifecycleFor
from prokshy.link.retransmit import Delivery, IDeliveryOwner
from prokshy.wire import frames
from prokshy.wire.channel import ChannelDecoder, encodeHello


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
    @ivar window: bytes the peer may have written toward us and we not read
        yet (advertised).
    @ivar maxPayload: the largest payload we accept (advertised).
    @ivar sendWindow: our own cap on the window toward the peer.
    @ivar pingInterval: seconds between keepalive pings.
    @ivar deadAfter: seconds of silence after which the peer is dead.
    @ivar rehelloAfter: host only: seconds of silence after which we say
        hello again (then every C{helloInterval}), so that a restarted
        guest answers with a new nonce.
    @ivar helloInterval: seconds between hello retransmissions.
    @ivar rtoMin, rtoMax: bounds of the retransmission timeout
        (L{prokshy.link.retransmit}).
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
    rehelloAfter = attr.ib(default=1.5)
    helloInterval = attr.ib(default=0.5)
    rtoMin = attr.ib(default=0.2)
    rtoMax = attr.ib(default=2.0)
    features = attr.ib(default=())
    auth = attr.ib(default=None)
    extra = attr.ib(default=attr.Factory(dict))
    quietPings = attr.ib(default=None)


def _newNonce():
    return os.urandom(8).hex()


_STATE_NAMES = {"idle": "IDLE", "hello": "HELLO", "up": "UP", "quiet": "UP", "stopped": "STOPPED"}


@implementer(ILink, ISessionCore, IDeliveryOwner)
class Link:
    """
    A session over one channel: handshake, keepalive, reliable delivery.

    @param clock: an C{IReactorTime}.
    @param write: called with bytes for the channel.
    @param role: C{"host"} or C{"guest"}.
    @param listener: an L{prokshy.link.interfaces.ILinkListener}.
    @param authorizer: guest role: an
        L{prokshy.link.interfaces.ILinkAuthorizer} that may refuse a host's
        hello; None accepts every compatible hello.

    @ivar heard: how many times the peer was heard (a valid frame of the
        session, or a hello): a caller can tell whether some input was the
        peer's at all.
    @ivar lastHeard: when the peer was last heard (clock seconds).
    @ivar nonce: our current nonce (None before the first).
    """

    log = Logger()

    def __init__(self, clock, write, role, listener, config=None, authorizer=None):
        if role not in ("host", "guest"):
            raise ValueError("role must be host or guest")
        self.clock = clock
        self._write = write
        self.role = role
        self.listener = listener
        self.authorizer = authorizer if authorizer is not None else ACCEPT_ALL
        self.config = config or LinkConfig()
        self.info = None
        self.decoder = ChannelDecoder(frames.MAX_PAYLOAD_LIMIT)
        self.decoder.frameDecoder.maxPayload = self.config.maxPayload
        self.nonce = None
        self.lastHeard = clock.seconds()
        self.heard = 0
        self.lastError = None
        self.stats = {
            "bytes_in": 0,
            "bytes_out": 0,
            "frames_in": 0,
            "frames_out": 0,
            "stale": 0,
            "sessions": 0,
            "retransmits": 0,
            "checkpoints": 0,
            "quiet": 0,
        }
        # The open session (UP, or quiet), or None.
        self._current = None
        self._quietAfter = None
        self._paused = False
        self._incompatibleLogged = None
        # The sizes of the hello lines written with the current nonce,
        # outside a session.
        self._helloSizes = []
        self._pinger = Pinger(clock)
        self._delivery = self._newDelivery(self.config.sendWindow, 0, handshake.DEFAULT_PEER_PAYLOAD, 0)
        self._lifecycle = lifecycleFor(role, self, clock, self.config)

    def _newDelivery(self, window, precharge, sendPayload, tag):
        return Delivery(
            self, self.clock, self.config, window, precharge, sendPayload, MIN_PAYLOAD, tag, self.stats
        )

    @property
    def sender(self):
        """
        The session's L{prokshy.link.reliable.Sender}.
        """
        return self._delivery.sender

    @property
    def receiver(self):
        """
        The session's L{prokshy.link.reliable.Receiver}.
        """
        return self._delivery.receiver

    # -- state ------------------------------------------------------------

    @property
    def state(self):
        """
        C{"IDLE"}, C{"HELLO"} (host), C{"UP"} or C{"STOPPED"}.
        """
        return _STATE_NAMES[self._lifecycle.current]

    @property
    def quiet(self):
        """
        True while the session is up but we send nothing of our own, the
        peer having been silent for C{quietPings} of its ping intervals.
        """
        return self._lifecycle.current == "quiet"

    def runningTimers(self):
        """
        The names of the link's timers that are running now (see
        L{prokshy.link.lifecycle}), C{"retransmit"} included.
        """
        names = self._lifecycle.runningTimers()
        if self._delivery.timer.running:
            names.add("retransmit")
        return names

    @property
    def rtt(self):
        """
        The smoothed round-trip time in seconds (from PONGs), or None.
        """
        return self._pinger.rtt

    # -- lifecycle --------------------------------------------------------

    def start(self):
        """
        Host: begin the handshake.  Guest: wait for a hello.
        """
        self.lastHeard = self.clock.seconds()
        self._lifecycle.start()

    def stop(self, reason="stopped"):
        """
        Cancel all timers; end the session if there is one.
        """
        self._lifecycle.stop(reason)

    def goodbye(self, reason="goodbye"):
        """
        End the session on purpose and tell the peer.

        The GOODBYE frames are written after the session has ended on our
        side, so that a listener that discards the session's unsent output
        when it ends does not discard them too.
        """
        wire = None
        if self._current is not None:
            wire = self._delivery.encode(frames.GOODBYE, reason.encode("utf-8")[:200])
        self.stop(reason)
        if wire is not None:
            self.stats["bytes_out"] += 2 * len(wire)
            self.stats["frames_out"] += 1
            self._write(wire + wire)

    def endSession(self, reason):
        """
        End the current session at once, without telling the peer (it is
        gone: a guest learnt that a new client took the channel).  The link
        keeps running: a guest waits for the next hello, a host starts a
        new handshake.
        """
        self._lifecycle.endSession(reason)

    # -- input ------------------------------------------------------------

    def dataReceived(self, data):
        """
        Bytes from the channel.
        """
        if self.state == "STOPPED":
            return
        self.stats["bytes_in"] += len(data)
        for item in self.decoder.feed(data):
            if isinstance(item, dict):
                if self.state == "STOPPED":
                    return
                self.helloReceived(item)
            else:
                self._frameReceived(item)
        if self._current is not None:
            self._delivery.flushAck()

    def helloReceived(self, hello):
        """
        A parsed hello line (the guest's line layer calls this directly for
        the hello that upgrades the channel).
        """
        if self.state == "STOPPED":
            return
        if not handshake.validNonce(hello.get("nonce")):
            self.log.info("ignored a hello without a valid nonce")
            return
        role = hello.get("role")
        if self.role == "guest" and role == "host":
            self._hostHello(hello)
        elif self.role == "host" and role == "guest":
            self._guestHello(hello)
        # Anything else is our own echo or a confused peer: ignore it.

    def _hostHello(self, hello):
        self._heard()
        lifecycle = self._lifecycle
        if self._current is not None and hello["nonce"] == self._current.peerNonce:
            lifecycle.hostHelloRepeated(hello)
            return
        refusal = handshake.versionProblem(hello, self.role)
        if refusal is None:
            refusal = self.authorizer.authorize(hello)
        if refusal is not None:
            lifecycle.hostHelloRefused(hello, refusal)
            return
        lifecycle.hostHello(hello, handshake.negotiate(hello))

    def _guestHello(self, hello):
        if self.nonce is None or hello.get("peer") != self.nonce:
            return  # stale: an answer to an earlier session of ours
        self._heard()
        lifecycle = self._lifecycle
        if "error" in hello:
            lifecycle.refused(str(hello["error"])[:200])
            return
        if self._current is not None and hello["nonce"] == self._current.peerNonce:
            lifecycle.answerRepeated()
            return
        problem = handshake.versionProblem(hello, self.role)
        if problem is not None:
            lifecycle.incompatible(problem)
            return
        lifecycle.answered(hello, handshake.negotiate(hello))

    def _heard(self):
        """
        The peer said something valid: it is alive.
        """
        self.lastHeard = self.clock.seconds()
        self.heard += 1
        lifecycle = self._lifecycle
        if lifecycle.current == "quiet":
            lifecycle.heard()

    def _frameReceived(self, frame):
        self.stats["frames_in"] += 1
        if self._current is None or frame.tag != self._current.tag:
            self.stats["stale"] += 1
            return
        self._heard()
        delivery = self._delivery
        delivery.acknowledged(frame)
        if frame.sequenced:
            for ready in delivery.received(frame):
                if self._current is None:
                    return
                self.listener.frameReceived(ready)
            return
        ftype = frame.type
        if ftype == frames.PING:
            # What we hold out of order goes first: the PONG tells the peer
            # we read its PING, and so everything it wrote before.
            delivery.flushAck()
            delivery.writeControl(frames.PONG, frame.payload)
        elif ftype == frames.PONG:
            self._pongReceived(frame.payload)
        elif ftype == frames.GOODBYE:
            why = frame.payload.decode("utf-8", "replace")
            self._lifecycle.goodbyeReceived("peer said goodbye (%s)" % (why,))

    def _pongReceived(self, payload):
        offset = self._pinger.answered(payload)
        if offset is not None and self._current is not None:
            self._delivery.readThrough(offset)

    # -- output -----------------------------------------------------------

    def send(self, ftype, stream, payload=b""):
        """
        Queue a sequenced frame for reliable, in-order delivery.

        @raise NotConnected: if there is no session.
        """
        if self._current is None:
            raise NotConnected("no session")
        if ftype not in frames.SEQUENCED:
            raise ValueError("not a sequenced frame type")
        if len(payload) > self.info.sendPayload:
            raise ValueError("payload larger than the peer accepts")
        self._delivery.enqueue(ftype, stream, payload)

    @property
    def maxPayload(self):
        """
        The payload size to use now: at most what the peer accepts, less
        while the channel is losing frames.
        """
        return self._delivery.sizer.size if self.info else handshake.DEFAULT_PEER_PAYLOAD

    @property
    def writable(self):
        """
        True when new data frames would go out at once (nothing queued
        behind the window).  Streams hand data to the link only then, so
        that frame sizes follow the channel and streams share it fairly.
        """
        return self._current is not None and self.mayWrite() and not self.sender.queue

    def pump(self):
        """
        Write whatever the window has room for.
        """
        if self._current is not None:
            self._delivery.pump()

    # -- IDeliveryOwner ---------------------------------------------------

    def writeFrames(self, data):
        self.stats["bytes_out"] += len(data)
        self.stats["frames_out"] += 1
        self._write(data)

    def mayWrite(self):
        return not self._paused and self._lifecycle.current != "quiet"

    def pingWaiting(self, offset):
        return self._pinger.waiting(offset)

    def currentRTT(self):
        return self._pinger.rtt

    def deliveryWritable(self):
        self.listener.linkWritable()

    def pauseProducing(self):
        """
        The channel's write buffer is full: stop sending new frames.
        """
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self.pump()

    def stopProducing(self):
        self.stop("channel closed")

    # -- hellos -----------------------------------------------------------

    def _writeHello(self, fields):
        line = encodeHello(fields)
        if self._current is not None:
            self._delivery.sender.wrote(len(line))
        else:
            self._helloSizes.append(len(line))
        self.stats["bytes_out"] += len(line)
        self._write(line)

    def _fields(self, **extra):
        fields = handshake.helloFields(self.config, self.role, self.nonce)
        fields.update(extra)
        return fields

    # -- ISessionCore: what the lifecycle machines do ---------------------

    def makeNonce(self):
        self.nonce = _newNonce()
        self._helloSizes = []

    def sendHello(self):
        self._writeHello(self._fields())

    def sendAnswer(self, hello):
        self._writeHello(self._fields(peer=hello["nonce"]))

    def sendRefusal(self, hello, reason):
        self.log.warn("refused a host hello: {why}", why=reason)
        self._writeHello(self._fields(peer=hello["nonce"], error=reason, nonce=_newNonce()))

    def sendPing(self):
        payload = self._pinger.payload()
        end = self._delivery.writeControl(frames.PING, payload, lf=True)
        self._pinger.sent(payload, end)

    def openSession(self, hello, version):
        if self.role == "host":
            hostNonce, guestNonce = self.nonce, hello["nonce"]
            # The guest read one of our hellos; the others may still wait.
            precharge = sum(self._helloSizes[1:])
            self._incompatibleLogged = None
        else:
            hostNonce, guestNonce = hello["nonce"], self.nonce
            # Our answer: not read yet.
            precharge = sum(self._helloSizes)
        sendPayload, sendWindow = handshake.peerLimits(hello, self.config.sendWindow)
        tag = sessionTag(hostNonce, guestNonce)
        self._delivery.stop()
        self._delivery = self._newDelivery(sendWindow, precharge, sendPayload, tag)
        self._pinger.reset()
        if self.config.quietPings is None:
            self._quietAfter = None
        else:
            self._quietAfter = self.config.quietPings * handshake.peerPing(hello)
        self.info = self._current = SessionInfo(
            version=version,
            localNonce=self.nonce,
            peerNonce=hello["nonce"],
            tag=tag,
            features=handshake.commonFeatures(self.config.features, hello),
            peerHello=hello,
            startedAt=self.clock.seconds(),
            sendPayload=sendPayload,
            sendWindow=sendWindow,
        )
        self.stats["sessions"] += 1
        self.lastHeard = self.clock.seconds()

    def closeSession(self):
        self._delivery.stop()
        self._current = None

    def pauseTransfer(self):
        self._delivery.stop()

    def resumeTransfer(self):
        self.log.info("heard the peer again: resuming")
        self._delivery.resume()

    def noteRefusal(self, reason):
        self.lastError = reason
        self.log.warn("guest refused the session: {why}", why=reason)

    def noteIncompatible(self, problem):
        # Not a session; keep saying hello, so that a compatible guest that
        # takes its place gets one.
        self.lastError = problem
        if self._incompatibleLogged != problem:
            self._incompatibleLogged = problem
            self.log.warn("ignored the guest's answer: {why}; still saying hello", why=problem)

    def noteQuiet(self):
        self.stats["quiet"] += 1
        self.log.info(
            "peer silent for {silent:.1f} s: sending nothing until it is heard again",
            silent=self.clock.seconds() - self.lastHeard,
        )

    def lastHeardAt(self):
        return self.lastHeard

    def quietAfter(self):
        return self._quietAfter

    def notifyUp(self):
        self.listener.linkUp(self, self.info)

    def notifyDown(self, reason):
        self.log.info(
            "session ended: {reason} (retransmits={retransmits} checkpoints={checkpoints}"
            " resyncs={resyncs} gaps={gaps} duplicates={duplicates})",
            reason=reason,
            retransmits=self._delivery.retransmits,
            checkpoints=self._delivery.checkpoints,
            resyncs=self.decoder.resyncs,
            gaps=self.receiver.gaps,
            duplicates=self.receiver.duplicates,
        )
        self.listener.linkDown(self, SessionEnded(reason))

    def notifyRefused(self, reason):
        self.listener.linkRefused(self, reason)

    # -- status -----------------------------------------------------------

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
        d["inflight"] = self.sender.inflight
        d["session_age"] = (
            None if self._current is None
            else round(self.clock.seconds() - self._current.startedAt, 3)
        )
        return d
