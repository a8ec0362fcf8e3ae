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
(L{prokshy.cli.hellos.HelloFilter}): a framed agent that answers the
CLI's hello after the fallback must not have its hello, pings or frames
printed.

The exchange is an Automat state machine.  States: C{waiting} (not
connected yet), C{reading} (timer: the idle timeout, armed on entering,
restarted by every chunk received, cancelled on every transition out),
C{paused} (the output is full: the socket is not read and no idle timeout
runs, since silence while we do not read means nothing), C{ended} (L{done}
has fired, or the exchange was abandoned to a late framed answer).  Every
(state, input) pair is declared; an empty output list is a deliberate
"nothing to do" (an input that cannot happen in that state, such as the
idle timeout outside C{reading}, whose timer dies with that state, or one
that comes after the end).  An output lost in C{ended} is recorded: a write
of the held bytes at the end that fails makes L{done} fail::

    ended    abandoned    -> ended
    ended    closed       -> ended
    ended    idleExpired  -> ended
    ended    opened       -> ended
    ended    outputFull   -> ended
    ended    outputLost   -> ended    _recordError
    ended    outputRoom   -> ended
    ended    received     -> ended
    paused   abandoned    -> ended    _closeGate, _resumeTransport
    paused   closed       -> ended    _endedClosed, _flushHeld, _closeGate, _resumeTransport, _fireDone
    paused   idleExpired  -> paused
    paused   opened       -> paused
    paused   outputFull   -> paused
    paused   outputLost   -> ended    _recordError, _closeGate, _resumeTransport, _disconnect, _fireDone
    paused   outputRoom   -> reading  _resumeTransport, _armIdle
    paused   received     -> paused   _deliver
    reading  abandoned    -> ended    _cancelIdle, _closeGate
    reading  closed       -> ended    _cancelIdle, _endedClosed, _flushHeld, _closeGate, _fireDone
    reading  idleExpired  -> ended    _cancelIdle, _endedIdle, _flushHeld, _closeGate, _disconnect, _fireDone
    reading  opened       -> reading
    reading  outputFull   -> paused   _cancelIdle, _pauseTransport
    reading  outputLost   -> ended    _cancelIdle, _recordError, _closeGate, _disconnect, _fireDone
    reading  outputRoom   -> reading
    reading  received     -> reading  _restartIdle, _deliver
    waiting  abandoned    -> ended
    waiting  closed       -> ended    _endedClosed, _fireDone
    waiting  idleExpired  -> waiting
    waiting  opened       -> reading  _sendRequest, _armIdle, _attachGate, _watchLoss
    waiting  outputFull   -> waiting
    waiting  outputLost   -> waiting
    waiting  outputRoom   -> waiting
    waiting  received     -> waiting
"""

from automat import MethodicalMachine
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

    _machine = MethodicalMachine()

    def __init__(self, command, data, output, idleTimeout, clock, helloSink=None, lead=b"",
                 helloFilter=None):
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
        @param helloSink: with C{helloFilter}: hello lines in the reply are
            not output but passed to C{helloSink(hello, rest)}; when it
            returns true it has taken over the connection and C{rest}, and
            the exchange stops.
        @param lead: bytes sent before the request (see L{buildRequest}).
        @param helloFilter: builds the hello line filter from C{holdLF}
            (L{prokshy.cli.hellos.HelloFilter}).
        """
        self.command = command
        self.data = data
        self.output = asOutput(output)
        self.idleTimeout = idleTimeout
        self.clock = clock
        self.done = Deferred()
        self.lead = lead
        self.outputBytes = 0
        self.endedBy = None
        self.helloSink = helloSink
        self._stripper = EchoStripper(echoForms(command, data, lead))
        self._filter = None
        if helloSink is not None:
            self._filter = helloFilter(lambda: self.outputBytes == 0)
        #: The reading state's idle timer.
        self._idleCall = None
        self._gate = None
        self._error = None

    # -- the protocol and producer interfaces ---------------------------------

    def connectionMade(self):
        self.opened()

    def dataReceived(self, data):
        self.received(data)

    def connectionLost(self, reason):
        self.closed(reason)

    def pauseProducing(self):
        self.outputFull()

    def resumeProducing(self):
        self.outputRoom()

    def stopProducing(self):
        pass

    def abandon(self):
        """
        Stop without an outcome: the connection is someone else's now (a
        late framed answer).  L{done} never fires.
        """
        self.abandoned()

    # -- states -----------------------------------------------------------

    @_machine.state(initial=True)
    def waiting(self):
        "Not connected yet."

    @_machine.state()
    def reading(self):
        "The request is sent; the reply is read.  Timer: the idle timeout."

    @_machine.state()
    def paused(self):
        "The output is full: the socket is not read, no idle timeout runs."

    @_machine.state()
    def ended(self):
        "Done (L{done} has fired), or abandoned."

    # -- inputs -----------------------------------------------------------

    @_machine.input()
    def opened(self):
        "connectionMade."

    @_machine.input()
    def received(self, data):
        "Bytes from the connection."

    @_machine.input()
    def idleExpired(self):
        "idleTimeout seconds without a byte, while reading."

    @_machine.input()
    def outputFull(self):
        "The output cannot take more for now (pauseProducing)."

    @_machine.input()
    def outputRoom(self):
        "The output can take more again (resumeProducing)."

    @_machine.input()
    def outputLost(self, error):
        "The output stopped taking data (a write failed, its reader went away)."

    @_machine.input()
    def closed(self, reason):
        "connectionLost."

    @_machine.input()
    def abandoned(self):
        "abandon(): a late framed answer took the connection over."

    # -- outputs ----------------------------------------------------------

    @_machine.output()
    def _sendRequest(self):
        self.transport.write(buildRequest(self.command, self.data, self.lead))

    @_machine.output()
    def _armIdle(self):
        self._idleCall = self.clock.callLater(self.idleTimeout, self.idleExpired)

    @_machine.output()
    def _restartIdle(self):
        # Bytes arrived, even ones that are not output.
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.reset(self.idleTimeout)

    @_machine.output()
    def _cancelIdle(self):
        call, self._idleCall = self._idleCall, None
        if call is not None and call.active():
            call.cancel()

    @_machine.output()
    def _attachGate(self):
        self._gate = FlowGate(self).attach(self.output)

    @_machine.output()
    def _watchLoss(self):
        self.output.whenLost(self.outputLost)

    @_machine.output()
    def _closeGate(self):
        if self._gate is not None:
            self._gate.close()

    @_machine.output()
    def _pauseTransport(self):
        self.transport.pauseProducing()

    @_machine.output()
    def _resumeTransport(self):
        self.transport.resumeProducing()

    @_machine.output()
    def _deliver(self, data):
        if self._filter is None:
            self._emit(self._stripper.feed(data))
            return
        while True:
            out, hello, data = self._filter.feed(data)
            if out:
                self._emit(self._stripper.feed(out))
                if self.output.lost:
                    return
            if hello is None or self.helloSink(hello, data) or not data:
                return

    @_machine.output()
    def _endedIdle(self):
        self.endedBy = "idle"

    @_machine.output()
    def _endedClosed(self):
        self.endedBy = "closed"

    @_machine.output()
    def _flushHeld(self):
        # What the hello filter and the echo stripper held back is output
        # now (an unfinished hello line is dropped).
        if self._filter is not None:
            self._emit(self._stripper.feed(self._filter.flush()))
        self._emit(self._stripper.flush())

    @_machine.output()
    def _disconnect(self):
        self.transport.loseConnection()

    @_machine.output()
    def _recordError(self, error):
        if self._error is None:
            self._error = OutputError(error)

    @_machine.output()
    def _fireDone(self):
        if self._error is None:
            self.done.callback(0)
        else:
            self.done.errback(self._error)

    def _emit(self, data):
        if data:
            self.outputBytes += len(data)
            self.output.write(data)

    # -- the table --------------------------------------------------------

    waiting.upon(opened, enter=reading, outputs=[_sendRequest, _armIdle, _attachGate, _watchLoss])
    waiting.upon(received, enter=waiting, outputs=[])
    waiting.upon(idleExpired, enter=waiting, outputs=[])
    waiting.upon(outputFull, enter=waiting, outputs=[])
    waiting.upon(outputRoom, enter=waiting, outputs=[])
    waiting.upon(outputLost, enter=waiting, outputs=[])
    waiting.upon(closed, enter=ended, outputs=[_endedClosed, _fireDone])
    waiting.upon(abandoned, enter=ended, outputs=[])

    reading.upon(opened, enter=reading, outputs=[])
    reading.upon(received, enter=reading, outputs=[_restartIdle, _deliver])
    reading.upon(idleExpired, enter=ended,
                 outputs=[_cancelIdle, _endedIdle, _flushHeld, _closeGate, _disconnect, _fireDone])
    reading.upon(outputFull, enter=paused, outputs=[_cancelIdle, _pauseTransport])
    reading.upon(outputRoom, enter=reading, outputs=[])
    reading.upon(outputLost, enter=ended,
                 outputs=[_cancelIdle, _recordError, _closeGate, _disconnect, _fireDone])
    reading.upon(closed, enter=ended, outputs=[_cancelIdle, _endedClosed, _flushHeld, _closeGate, _fireDone])
    reading.upon(abandoned, enter=ended, outputs=[_cancelIdle, _closeGate])

    paused.upon(opened, enter=paused, outputs=[])
    paused.upon(received, enter=paused, outputs=[_deliver])
    paused.upon(idleExpired, enter=paused, outputs=[])
    paused.upon(outputFull, enter=paused, outputs=[])
    paused.upon(outputRoom, enter=reading, outputs=[_resumeTransport, _armIdle])
    paused.upon(outputLost, enter=ended,
                outputs=[_recordError, _closeGate, _resumeTransport, _disconnect, _fireDone])
    paused.upon(closed, enter=ended, outputs=[_endedClosed, _flushHeld, _closeGate, _resumeTransport, _fireDone])
    paused.upon(abandoned, enter=ended, outputs=[_closeGate, _resumeTransport])

    ended.upon(opened, enter=ended, outputs=[])
    ended.upon(received, enter=ended, outputs=[])
    ended.upon(idleExpired, enter=ended, outputs=[])
    ended.upon(outputFull, enter=ended, outputs=[])
    ended.upon(outputRoom, enter=ended, outputs=[])
    ended.upon(outputLost, enter=ended, outputs=[_recordError])
    ended.upon(closed, enter=ended, outputs=[])
    ended.upon(abandoned, enter=ended, outputs=[])


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
    "EchoStripper",
    "LegacyExchange",
    "OutputError",
    "buildRequest",
    "echoForms",
    "runLegacy",
]
