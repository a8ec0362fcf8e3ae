# -*- test-case-name: tests.system.test_guest_framed -*-
"""
The guest agent on its device: line mode (the original protocol) until a
host says a framed hello, framed mode until that session ends.

    mode    event                                     next    action
    ------  ----------------------------------------  ------  ---------------------------
    line    a line starting with 0xFF that parses     framed  start a guest Link, answer
            as a hello (docs/protocol.md)                     the hello, raw mode
    line    any other line                            line    legacy protocol
    framed  bytes                                     framed  to the Link
    framed  session ends (keepalive timeout or        line    streams end, commands are
            GOODBYE), or the hello was refused                cancelled, line mode again
    framed  a new client: a host hello with a new     line    the old session ends at once
            nonce, a line-protocol request, or the    or      (its unsent output is discarded),
            device reports the host away or back      framed  then the new client is served
    any     device closed                             -       session ends, commands cancelled

The guest never hands bytes of a dead session to a later client: when a
session ends, what the device transport still buffers of it is discarded,
and a host that comes back after the device reported it away is a new
client, so the transport discards what was written for the one that left
(Linux).  On a tty (bhyve) nothing reports that the host left, so the link
goes quiet (no pings, no retransmissions) once the host has been silent
for L{QUIET_PINGS} of its ping intervals, well before C{--dead-after}.
"""

import re

from twisted.internet.serialport import SerialPort
from twisted.logger import Logger
from zope.interface import implementer

from prokshy.lines.protocol import GuestLineProtocol
from prokshy.execs.names import NAME_CHARS
from prokshy.execs.refusals import CommandRefused
from prokshy.link.session import MIN_PAYLOAD, MIN_WINDOW, Link, LinkConfig
from prokshy.streams.mux import Mux
from prokshy.streams.stream import EARLY_DATA
from prokshy.streams.throttle import Throttle
from prokshy.transport.interfaces import IHostPresence
from prokshy.wire.channel import HelloError, parseHello

#: Bytes in flight toward the guest when its device is a tty: under the
#: FreeBSD tty input queue, which drops what does not fit.  That queue is
#: min(input speed / 5, 64 KiB) bytes, and for a driver with no C{param}
#: method of its own, as virtio_console, the speed is clamped to 115200
#: (C{ttydevsw_defparam}): so 23040 bytes, whatever speed is set.  The window
#: leaves 2.5 KB of it spare; a sender that keeps to it never overflows it.
TTY_WINDOW = 20 * 1024
TTY_PAYLOAD = 4096
#: Where the channel has backpressure (Linux virtio-ports, QEMU).
PIPE_WINDOW = 256 * 1024
PIPE_PAYLOAD = 32 * 1024
#: The host pings every second (it says how often in its hello): after this
#: many intervals without a word from it, it is taken to be gone, and the
#: guest sends nothing more of the session until it is heard again.
QUIET_PINGS = 3
#: The longest line-protocol request that is looked for in framed input.
_MAX_REQUEST_PROBE = 4096
#: How a line-protocol request starts: blanks, then a command name (the
#: name check of L{prokshy.guest.commands.CommandDirectory} follows).
_REQUEST_START = re.compile(rb"[ \t]*([%s]+)" % (NAME_CHARS.encode("ascii"),))
#: What may follow the name on its line: DATA after a space, or the end.
_AFTER_NAME = b" \t\r\n"


@implementer(IHostPresence)
class GuestProtocol(GuestLineProtocol):
    """
    The agent's protocol on the device.

    @param streams: the open handler for framed streams
        (L{prokshy.guest.execs.GuestStreams}).
    @param linkConfig: a L{LinkConfig}, or None to choose from the device
        type when connected.
    """

    log = Logger()

    def __init__(
        self,
        runner,
        clock,
        streams,
        maxLine=64 * 1024,
        linkConfig=None,
        window=0,
        pingInterval=1.0,
        deadAfter=8.0,
    ):
        GuestLineProtocol.__init__(self, runner, clock, maxLine=maxLine)
        self.streams = streams
        self.linkConfig = linkConfig
        self.window = window
        self.pingInterval = pingInterval
        self.deadAfter = deadAfter
        self.link = None
        self.mux = None
        # The start of a possible line-protocol request (the first bytes of
        # a chunk that held nothing of the session), waiting for its LF.
        self._candidate = None
        self._linkThrottle = None

    def _config(self):
        if self.linkConfig is not None:
            return self.linkConfig
        if isinstance(self.transport, SerialPort):
            window, payload = TTY_WINDOW, TTY_PAYLOAD
        else:
            window, payload = PIPE_WINDOW, PIPE_PAYLOAD
        if self.window:
            window = max(self.window, MIN_WINDOW)
            payload = min(payload, max(MIN_PAYLOAD, window // 4))
        return LinkConfig(
            window=window,
            maxPayload=payload,
            features=self.streams.features,
            pingInterval=self.pingInterval,
            deadAfter=self.deadAfter,
            quietPings=QUIET_PINGS,
            extra=dict(self.streams.helloFields(), **{EARLY_DATA: self.streams.earlyData}),
        )

    def _ensureLink(self):
        if self.link is None:
            self.mux = Mux("guest", earlyData=self.streams.earlyData)
            self.mux.openHandler = self.streams.forSession(self.mux)
            self.mux.whenDown(self._sessionDown)
            self.mux.whenUp(self._sessionUp)
            self.link = Link(self.clock, self.transport.write, "guest", self.mux, self._config())
            self.link.start()
        return self.link

    def helloLineReceived(self, line):
        try:
            hello = parseHello(line)
        except HelloError as e:
            return GuestLineProtocol.helloLineReceived(self, line + b" (%s)" % (str(e).encode(),))
        link = self._ensureLink()
        link.helloReceived(hello)
        if link.state == "UP":
            self.handler.reset()
            self._candidate = None
            self._produceForLink()
            self.setRawMode()
        return None

    def _produceForLink(self):
        # In framed mode a full device buffer pauses the link: frames then
        # wait in the link, where control frames (an exec's ACCEPT, EXIT)
        # go out before the streams' next data, not behind a window of it.
        # (In line mode a command's output is the device's producer.)
        if self._linkThrottle is None and self.transport.producer is None:
            self._linkThrottle = Throttle(self.link)
            self.transport.registerProducer(self._linkThrottle, True)

    def _stopProducingForLink(self):
        throttle, self._linkThrottle = self._linkThrottle, None
        if throttle is not None and self.transport.producer is throttle:
            self.transport.unregisterProducer()

    def rawDataReceived(self, data):
        link = self.link
        heard = link.heard
        link.dataReceived(data)
        if link.state == "UP" and not self.line_mode:
            if link.heard != heard:
                self._candidate = None
            else:
                request = self._lineRequest(data)
                if request is not None:
                    self._newClient("a line-protocol client took the device")
                    return self._toLineMode(request)
        self._syncMode()
        return None

    def _lineRequest(self, data):
        """
        Input that held nothing of the session: is it a line-protocol
        client's request?  That is, does it start (the first bytes of a
        chunk, as a new client's are) with a complete line naming a command
        that exists?  Frames are escaped and hold no LF, and a frame's tail
        that looks like such a line is followed by a frame of the session
        in the same chunk, so a live host is not mistaken for one.

        @return: the bytes to hand to line mode (the request and what
            follows it), or None.
        """
        if self._candidate is not None:
            data = self._candidate + data
        self._candidate = None
        start = _REQUEST_START.match(data)
        if start is None:
            return None
        if start.end() == len(data) or data[start.end()] != 0x0A:
            # The name is not complete, or the line goes on: wait for its LF.
            if start.end() < len(data) and data[start.end()] not in _AFTER_NAME:
                return None
            end = data.find(b"\n", start.end(), _MAX_REQUEST_PROBE)
            if end < 0:
                if len(data) <= _MAX_REQUEST_PROBE:
                    self._candidate = data
                return None
        name = start.group(1)
        try:
            self.runner.directory.resolve(name)
        except CommandRefused:
            return None
        return data

    def _newClient(self, why):
        """
        A new client took the device: the framed session, whose host is
        gone, ends at once, and nothing more of it is sent.
        """
        self.link.endSession(why)

    def _toLineMode(self, extra=b""):
        self._candidate = None
        self._stopProducingForLink()
        # A partial line in the new data must not look stale to line mode.
        self._lastData = self.clock.seconds()
        return self.setLineMode(extra)

    def _syncMode(self):
        if not self.line_mode and (self.link is None or self.link.state != "UP"):
            self.log.info("framed session over: back to line mode")
            self._toLineMode()

    def hostAway(self):
        """
        The device reports that the host left (Linux): a host connection
        never survives that, so its framed session ends now, and the output
        of a line-protocol command it started is not kept for the next one.
        """
        if not self.line_mode and self.link is not None and self.link.state == "UP":
            self._newClient("the host went away (the device says so)")
            self._toLineMode()
        GuestLineProtocol.hostAway(self)
        self.handler.reset()

    def hostReturned(self):
        """
        The device reports a host again: a new one (the transport has
        discarded what was written for the one that left).
        """
        if not self.line_mode and self.link is not None and self.link.state == "UP":
            self._newClient("a new host took the device")
            self._toLineMode()

    def _sessionUp(self, info):
        self.log.info(
            "framed session up (host {host}, agent {agent})",
            host=info.peerNonce,
            agent=info.peerHello.get("agent", "?"),
        )

    def _sessionDown(self, reason):
        self.log.info("framed session down: {why}", why=str(reason))
        # What the transport still holds of the session is for a host that
        # is gone or done: never let a later client receive it.
        discard = getattr(self.transport, "discardBuffered", None)
        if discard is not None and self.transport.connected:
            dropped = discard()
            if dropped:
                self.log.info(
                    "discarded {nbytes} unsent bytes of the ended session", nbytes=dropped
                )
        self.clock.callLater(0, self._syncMode)

    def connectionLost(self, reason=None):
        if self.link is not None:
            self.link.stop("device closed")
        GuestLineProtocol.connectionLost(self, reason)
