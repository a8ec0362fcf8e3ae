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
"""

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol


class OutputError(Exception):
    """
    Writing the received bytes to the output failed.

    @ivar error: the L{OSError} raised by the output.
    """

    def __init__(self, error):
        Exception.__init__(self, error)
        self.error = error


def buildRequest(command, data):
    """
    Build the legacy request.

    @param command: the command name.
    @type command: L{bytes}
    @param data: the command's single line of input, without its line end.
    @type data: L{bytes}
    @rtype: L{bytes}
    """
    return command + b"\n" + data + b"\n"


def echoForms(command, data):
    """
    The forms in which a guest's tty may echo the request back.

    A FreeBSD cooked tty echoes each input C{LF} as C{CR LF} (C{ONLCR}); the
    plain C{LF} form covers a tty without output processing.

    @rtype: L{tuple} of L{bytes}
    """
    return (
        command + b"\r\n" + data + b"\r\n",
        command + b"\n" + data + b"\n",
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


class LegacyExchange(Protocol):
    """
    One legacy request and its raw reply.

    On connection the request C{command LF data LF} is written. Every byte
    received afterwards (less the echoed request) goes to C{output}. The
    exchange ends after C{idleTimeout} seconds without data, or when the
    connection ends, whichever is first.

    @ivar done: a L{Deferred} that fires with the exit code (C{0}) when the
        exchange is over, or fails with L{OutputError} if the output could
        not be written.
    """

    def __init__(self, command, data, output, idleTimeout, clock):
        """
        @param command: the command name.
        @type command: L{bytes}
        @param data: the command's input line, without its line end.
        @type data: L{bytes}
        @param output: a binary file-like object for the reply.
        @param idleTimeout: seconds of silence that end the exchange.
        @type idleTimeout: L{float}
        @param clock: an L{IReactorTime} provider.
        """
        self.command = command
        self.data = data
        self.output = output
        self.idleTimeout = idleTimeout
        self.clock = clock
        self.done = Deferred()
        self._stripper = EchoStripper(echoForms(command, data))
        self._timer = None
        self._finished = False

    def connectionMade(self):
        self.transport.write(buildRequest(self.command, self.data))
        self._timer = self.clock.callLater(self.idleTimeout, self._idle)

    def dataReceived(self, data):
        if self._finished:
            return
        self._timer.reset(self.idleTimeout)
        self._emit(self._stripper.feed(data))

    def connectionLost(self, reason):
        self._finish()

    def _idle(self):
        """
        The guest has been silent for C{idleTimeout} seconds: the reply is
        taken to be complete.
        """
        self._timer = None
        self.transport.loseConnection()
        self._finish()

    def _emit(self, data):
        """
        Write C{data} to the output; a failure ends the exchange.
        """
        if not data:
            return
        try:
            self.output.write(data)
            flush = getattr(self.output, "flush", None)
            if flush is not None:
                flush()
        except OSError as e:
            self._finish(OutputError(e))

    def _finish(self, error=None):
        """
        End the exchange once: flush what the echo stripper held, stop the
        timer, drop the connection and fire L{done}.
        """
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
        if self.transport is not None:
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
    @param output: a binary file-like object for the reply.
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
    "LegacyExchange",
    "EchoStripper",
    "OutputError",
    "buildRequest",
    "echoForms",
    "runLegacy",
]
