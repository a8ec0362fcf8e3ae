"""
The original prokshy exchange, host side.

The original C{cli.py} connects to the VM's unix socket, sends C{NAME LF
DATA LF}, copies whatever comes back to stdout and stops after a stretch of
silence (see C{docs/architecture.md} and the channel notes). L{LegacyExchange}
does the same as a Twisted protocol, with two fixes:

  - the end of the connection (bhyve closing a second client, or a daemon
    closing after the output) ends the exchange instead of spinning;
  - the request echoed by a FreeBSD guest's cooked tty is stripped even when
    it arrives split over several reads, in its C{CR LF} or C{LF} form.

L{runLegacy} connects an endpoint and runs one exchange.

In the C{auto} mode's fallback the exchange also watches for hello lines
(L{HelloFilter}): a framed agent that answers the CLI's hello after the
fallback must not have its hello, pings or frames printed.
"""

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from prokshy.cli.output import FlowGate, asOutput


class OutputError(Exception):
    """
    Writing the received bytes to the output failed.

    @ivar error: the L{OSError} raised by the output.
    """

    def __init__(self, error):
        Exception.__init__(self, error)
        self.error = error


def buildRequest(command, data, lead=b""):
    """
    Build the legacy request.

    @param command: the command name.
    @type command: L{bytes}
    @param data: the command's single line of input, without its line end.
    @type data: L{bytes}
    @param lead: bytes before it: the C{auto} mode's fallback sends an
        empty line first (C{LF}), which the original agent and a prokshy
        agent in line mode skip, and which keeps a prokshy agent that is in
        framed mode (it answered the hello late) from taking the request for
        a new line-protocol client's.
    @rtype: L{bytes}
    """
    return lead + command + b"\n" + data + b"\n"


def echoForms(command, data, lead=b""):
    """
    The forms in which a guest's tty may echo the request back.

    A FreeBSD cooked tty echoes each input C{LF} as C{CR LF} (C{ONLCR}); the
    plain C{LF} form covers a tty without output processing.

    @rtype: L{tuple} of L{bytes}
    """
    return (
        lead.replace(b"\n", b"\r\n") + command + b"\r\n" + data + b"\r\n",
        lead + command + b"\n" + data + b"\n",
    )


class EchoStripper:
    """
    Remove the echoed request from the start of the received stream.

    Bytes are held back while everything received so far could still be
    the beginning of an echo. As soon as the stream has a whole echo as a
    prefix, the echo is dropped; as soon as it cannot be one, everything is
    passed through untouched. After that decision every byte passes through.
    """

    def __init__(self, forms):
        self._forms = tuple(forms)
        self._held = b""
        self.decided = False

    def feed(self, data):
        """
        Take received bytes.

        @return: the bytes that can be output now.
        @rtype: L{bytes}
        """
        if self.decided:
            return data
        buffered = self._held + data
        for form in self._forms:
            if buffered.startswith(form):
                self._decide()
                return buffered[len(form):]
        for form in self._forms:
            if form.startswith(buffered):
                self._held = buffered
                return b""
        self._decide()
        return buffered

    def flush(self):
        """
        The stream ended: give back whatever was held.

        @rtype: L{bytes}
        """
        held = self._held
        self._decide()
        return held

    def _decide(self):
        self.decided = True
        self._held = b""


#: What L{HelloFilter.feed} returns for a hello-like line that does not parse.
GARBAGE = object()

_NOT_HELLO = object()


class HelloFilter:
    """
    Takes the raw bytes of a line-protocol reply and separates out hello
    lines (C{LF 0xFF "PROKSHY " ... LF}, with a C{CR} before the LF when a
    tty echoes them), which are never output.

    Bytes that may be the start of a hello line are held back until the
    next bytes decide: a proper prefix of C{0xFF "PROKSHY "} after an LF,
    and, while C{holdLF()} is true, the LF (and a CR before it) at the end
    of what arrived.  Once output has begun C{holdLF()} is false and a
    trailing LF is passed on at once; a hello starting right after it is
    still recognised.  Once its prefix is complete, a hello line is
    collected while its bytes fit one (printable ASCII or CR, at most
    2048 bytes in all); a byte that does not fit gives the whole line back
    as output.
    """

    def __init__(self, holdLF=lambda: True):
        from prokshy.wire.channel import HELLO_PREFIX, MAX_HELLO

        self._prefix = HELLO_PREFIX
        self._maxLine = MAX_HELLO - 2
        self.holdLF = holdLF
        self._held = b""
        self._line = None
        self._lead = b""
        self._afterLF = False

    def _match(self, buf, j):
        """
        C{"full"} if the hello prefix starts at C{buf[j]}, C{"partial"} if
        C{buf[j:]} is a proper prefix of it, else C{"no"}.
        """
        prefix = self._prefix
        rest = buf[j:j + len(prefix)]
        if rest == prefix:
            return "full"
        if len(rest) < len(prefix) and prefix.startswith(rest):
            return "partial"
        return "no"

    def _collect(self, buf, i):
        """
        Add C{buf[i:]} to the hello line being collected.

        @return: C{(index, result)}: C{None} (all taken, the line goes on),
            L{_NOT_HELLO} (C{buf[index]} does not fit), or the parsed hello
            (a dict, or L{GARBAGE}) with C{index} just after its LF.
        """
        from prokshy.wire.channel import HelloError, parseHello

        line = self._line
        n = len(buf)
        while i < n:
            b = buf[i]
            if b == 0x0A:
                try:
                    hello = parseHello(bytes(line))
                except HelloError:
                    hello = GARBAGE
                return i + 1, hello
            if len(line) >= self._maxLine or not (0x20 <= b <= 0x7E or b == 0x0D):
                return i, _NOT_HELLO
            line.append(b)
            i += 1
        return n, None

    def feed(self, data):
        """
        Take received bytes.

        @return: C{(output, hello, rest)}: the bytes to pass on now, then
            either C{None} (everything was taken) or a hello line (a dict,
            or L{GARBAGE}) followed by C{rest}, the bytes after it, not yet
            looked at.
        """
        out = bytearray()
        if self._line is not None:
            i, result = self._collect(data, 0)
            if result is None:
                return b"", None, b""
            if result is not _NOT_HELLO:
                self._line = None
                return b"", result, data[i:]
            out += self._lead + self._line
            self._line = None
            self._afterLF = False
            data = data[i:]
        buf = self._held + data
        self._held = b""
        start = 0
        pos = 0
        candidate = self._afterLF
        self._afterLF = False
        while True:
            if candidate:
                # The LF before buf[0] was passed on already.
                j, lead = 0, 0
                candidate = False
            else:
                k = buf.find(b"\n", pos)
                if k < 0:
                    break
                j = k + 1
                lead = 2 if k > start and buf[k - 1] == 0x0D else 1
            m = self._match(buf, j)
            if m == "full":
                out += buf[start:j - lead]
                self._lead = buf[j - lead:j]
                self._line = bytearray(self._prefix)
                i, result = self._collect(buf, j + len(self._prefix))
                if result is None:
                    return bytes(out), None, b""
                if result is _NOT_HELLO:
                    out += self._lead + self._line
                    self._line = None
                    start = pos = i
                    continue
                self._line = None
                return bytes(out), result, buf[i:]
            if m == "partial":
                if lead == 0:
                    out += buf[start:j]
                    self._held = buf[j:]
                    self._afterLF = True
                elif j == len(buf) and not self.holdLF():
                    out += buf[start:]
                    self._afterLF = True
                else:
                    out += buf[start:j - lead]
                    self._held = buf[j - lead:]
                return bytes(out), None, b""
            pos = j
        out += buf[start:]
        if out.endswith(b"\n"):
            self._afterLF = True
        return bytes(out), None, b""

    def flush(self):
        """
        The reply ended: the bytes held back.  An unfinished hello line is
        dropped.
        """
        held, self._held = self._held, b""
        self._line = None
        return held


@implementer(IPushProducer)
class LegacyExchange(Protocol):
    """
    One legacy request and its raw reply.

    On connection the request C{command LF data LF} is written. Every byte
    received afterwards (less the echoed request) goes to C{output}. The
    exchange ends after C{idleTimeout} seconds without data, or when the
    connection ends, whichever is first.

    An output with flow control (a L{prokshy.cli.output.OutputPort}) pauses
    the exchange while it is full: the socket is not read and the idle
    timeout does not run meanwhile.  An output that is lost (its reader went
    away) ends the exchange with L{OutputError}.

    @ivar done: a L{Deferred} that fires with the exit code (C{0}) when the
        exchange is over, or fails with L{OutputError} if the output could
        not be written.
    @ivar outputBytes: the bytes of reply written to the output so far.
    @ivar endedBy: C{"idle"} or C{"closed"} once the exchange is over.
    """

    def __init__(self, command, data, output, idleTimeout, clock, helloSink=None, lead=b""):
        """
        @param command: the command name.
        @type command: L{bytes}
        @param data: the command's input line, without its line end.
        @type data: L{bytes}
        @param output: an L{prokshy.cli.output.IOutput}, or a binary
            file-like object for the reply.
        @param idleTimeout: seconds of silence that end the exchange.
        @type idleTimeout: L{float}
        @param clock: an L{IReactorTime} provider.
        @param helloSink: if given, hello lines in the reply are not output
            (see L{HelloFilter}) but passed to C{helloSink(hello, rest)};
            when it returns true it has taken over the connection and
            C{rest}, and the exchange stops.
        @param lead: bytes sent before the request (see L{buildRequest}).
        """
        self.command = command
        self.data = data
        self.output = asOutput(output)
        self.idleTimeout = idleTimeout
        self.clock = clock
        self.done = Deferred()
        self.lead = lead
        self._stripper = EchoStripper(echoForms(command, data, lead))
        self._timer = None
        self._finished = False
        self._paused = False
        self._gate = None
        self.outputBytes = 0
        self.endedBy = None
        self.helloSink = helloSink
        self._filter = None
        if helloSink is not None:
            self._filter = HelloFilter(lambda: self.outputBytes == 0)

    def connectionMade(self):
        self.transport.write(buildRequest(self.command, self.data, self.lead))
        self._timer = self.clock.callLater(self.idleTimeout, self._idle)
        self._gate = FlowGate(self).attach(self.output)
        self.output.whenLost(self._outputLost)

    def touch(self):
        """
        Bytes arrived (even ones that are not output): restart the idle
        timeout.
        """
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.idleTimeout)

    def dataReceived(self, data):
        if self._finished:
            return
        self.touch()
        if self._filter is None:
            self._emit(self._stripper.feed(data))
            return
        while not self._finished:
            out, hello, data = self._filter.feed(data)
            if out:
                self._emit(self._stripper.feed(out))
                if self._finished:
                    return
            if hello is None:
                return
            if self.helloSink(hello, data):
                return
            if not data:
                return

    def connectionLost(self, reason):
        if self.endedBy is None:
            self.endedBy = "closed"
        self._finish()

    def _idle(self):
        """
        The guest has been silent for C{idleTimeout} seconds: the reply is
        taken to be complete.
        """
        self._timer = None
        if self.endedBy is None:
            self.endedBy = "idle"
        self.transport.loseConnection()
        self._finish()

    # -- flow control from the output ---------------------------------------

    def pauseProducing(self):
        """
        The output is full: stop reading the socket, and stop the idle
        timeout (silence while we do not read means nothing).
        """
        if self._finished or self._paused:
            return
        self._paused = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.transport.pauseProducing()

    def resumeProducing(self):
        if self._finished or not self._paused:
            return
        self._paused = False
        self.transport.resumeProducing()
        if not self._finished:
            self._timer = self.clock.callLater(self.idleTimeout, self._idle)

    def stopProducing(self):
        pass

    def _outputLost(self, error):
        self._finish(OutputError(error))

    def abandon(self):
        """
        Stop without an outcome: the connection is someone else's now (a
        late framed answer).  L{done} never fires.
        """
        self._finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._gate is not None:
            self._gate.close()
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()

    def _emit(self, data):
        """
        Write C{data} to the output; a failure ends the exchange.
        """
        if not data:
            return
        self.outputBytes += len(data)
        # An IOutput never raises: a failed write loses it (_outputLost).
        self.output.write(data)

    def _finish(self, error=None):
        """
        End the exchange once: flush what the echo stripper held, stop the
        timer, drop the connection and fire L{done}.
        """
        if self._finished:
            return
        if error is None and self._filter is not None:
            held = self._filter.flush()
            if held:
                self._emit(self._stripper.feed(held))
                if self._finished:
                    return
        if error is None:
            held = self._stripper.flush()
            if held:
                self._emit(held)
                if self._finished:
                    # Writing the held bytes failed and finished us.
                    return
        self._finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._gate is not None:
            self._gate.close()
        if self.transport is not None:
            if self._paused:
                self._paused = False
                self.transport.resumeProducing()
            self.transport.loseConnection()
        if error is None:
            self.done.callback(0)
        else:
            self.done.errback(error)


def runLegacy(reactor, endpoint, command, data, output, idleTimeout):
    """
    Connect C{endpoint} and run one L{LegacyExchange} over it.

    @param reactor: the reactor, used as the exchange's clock.
    @param endpoint: an L{IStreamClientEndpoint}, for example a
        L{UNIXClientEndpoint} for the VM's console socket.
    @type command: L{bytes}
    @type data: L{bytes}
    @param output: an L{prokshy.cli.output.IOutput}, or a binary file-like
        object for the reply.
    @type idleTimeout: L{float}
    @return: a L{Deferred} firing with the exit code, or failing with the
        connection error or L{OutputError}.
    """
    factory = Factory.forProtocol(
        lambda: LegacyExchange(command, data, output, idleTimeout, reactor)
    )
    factory.noisy = False
    connecting = endpoint.connect(factory)
    return connecting.addCallback(lambda protocol: protocol.done)


__all__ = [
    "GARBAGE",
    "HelloFilter",
    "LegacyExchange",
    "EchoStripper",
    "OutputError",
    "buildRequest",
    "echoForms",
    "runLegacy",
]
