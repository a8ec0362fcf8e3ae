# -*- test-case-name: tests.test_guest_framed -*-
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
    any     device closed                             -       session ends, commands cancelled
"""

from twisted.internet.serialport import SerialPort
from twisted.logger import Logger

from prokshy.guest.execs import FEATURES
from prokshy.guest.lines import GuestLineProtocol
from prokshy.link.session import Link, LinkConfig
from prokshy.streams.mux import Mux
from prokshy.wire.channel import HelloError, parseHello

#: Bytes in flight toward the guest when its device is a tty: under the
#: ~23 KB FreeBSD tty input queue, which drops what does not fit.
TTY_WINDOW = 16 * 1024
TTY_PAYLOAD = 4096
#: Where the channel has backpressure (Linux virtio-ports, QEMU).
PIPE_WINDOW = 256 * 1024
PIPE_PAYLOAD = 16 * 1024


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

    def _config(self):
        if self.linkConfig is not None:
            return self.linkConfig
        if isinstance(self.transport, SerialPort):
            window, payload = TTY_WINDOW, TTY_PAYLOAD
        else:
            window, payload = PIPE_WINDOW, PIPE_PAYLOAD
        if self.window:
            window = self.window
            payload = min(payload, max(256, window // 4))
        return LinkConfig(
            window=window,
            maxPayload=payload,
            features=FEATURES,
            pingInterval=self.pingInterval,
            deadAfter=self.deadAfter,
        )

    def _ensureLink(self):
        if self.link is None:
            self.mux = Mux("guest", openHandler=self.streams)
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
            self.setRawMode()
        return None

    def rawDataReceived(self, data):
        self.link.dataReceived(data)
        self._syncMode()

    def _syncMode(self):
        if not self.line_mode and (self.link is None or self.link.state != "UP"):
            self.log.info("framed session over: back to line mode")
            self.setLineMode()

    def _sessionUp(self, info):
        self.log.info(
            "framed session up (host {host}, agent {agent})",
            host=info.peerNonce,
            agent=info.peerHello.get("agent", "?"),
        )

    def _sessionDown(self, reason):
        self.log.info("framed session down: {why}", why=str(reason))
        self.clock.callLater(0, self._syncMode)

    def connectionLost(self, reason=None):
        if self.link is not None:
            self.link.stop("device closed")
        GuestLineProtocol.connectionLost(self, reason)
