# -*- test-case-name: tests.system.test_cli_answers,tests.system.test_cli_machines -*-
"""
The C{auto} mode's decision: say a framed hello and run over the framed
protocol, or, when no framed hello answers in time (the original shell
agent), fall back to the line protocol on the same connection; and, when
a framed agent answers after all (late, on a slow channel), switch back to
a new framed session.

L{AutoChannel} is an Automat state machine.  States: C{connecting} (not
connected yet), C{hello} (the first framed hello is out; timer: the
fallback after C{--fallback-after} seconds, or, where there is nothing to
fall back to, the end of the wait), C{line} (the line-protocol exchange
runs, its reply watched for a late hello; the exchange's idle timer is its
own, see L{prokshy.cli.legacy}), C{switching} (a late guest hello: a new
framed session is being started; timer: how long it may take,
L{LATE_SESSION_FACTOR} times as long as the late answer took), C{framed}
(decided: a framed session is up), C{done} (decided: the line-protocol
exchange is over with an answer), C{failed} (decided: a failure).  A
state's timer is armed on entering it and cancelled on every transition
out of it.  L{AutoChannel.decided} fires once, on entering one of the last
three.  Every (state, input) pair is declared; an empty output list is a
deliberate "nothing to do": a decided channel ignores the rest, and the
other empty pairs cannot happen (a late hello is only heard in C{line}; a
session from the host stopped on falling back cannot come up).  The byte
stream goes to whichever protocol holds the connection (the framed host,
or the line-protocol exchange) whatever the state::

    connecting  connect         -> hello       _startHost, _armHelloTimer
    connecting  fallBack        -> connecting
    connecting  giveUp          -> connecting
    connecting  lateHello       -> connecting
    connecting  lineAnswered    -> connecting
    connecting  lineUnanswered  -> connecting
    connecting  lost            -> failed      _noteLost, _fireClosed, _decideClosed
    connecting  sessionFailed   -> connecting
    connecting  sessionUp       -> connecting
    done        connect         -> done
    done        fallBack        -> done
    done        giveUp          -> done
    done        lateHello       -> done
    done        lineAnswered    -> done
    done        lineUnanswered  -> done
    done        lost            -> done        _noteLost, _fireClosed, _forwardLost
    done        sessionFailed   -> done
    done        sessionUp       -> done
    failed      connect         -> failed
    failed      fallBack        -> failed
    failed      giveUp          -> failed
    failed      lateHello       -> failed
    failed      lineAnswered    -> failed
    failed      lineUnanswered  -> failed
    failed      lost            -> failed      _noteLost, _fireClosed, _forwardLost
    failed      sessionFailed   -> failed
    failed      sessionUp       -> failed
    framed      connect         -> framed
    framed      fallBack        -> framed
    framed      giveUp          -> framed
    framed      lateHello       -> framed
    framed      lineAnswered    -> framed
    framed      lineUnanswered  -> framed
    framed      lost            -> framed      _noteLost, _fireClosed, _forwardLost
    framed      sessionFailed   -> framed
    framed      sessionUp       -> framed
    hello       connect         -> hello
    hello       fallBack        -> line        _cancelHelloTimer, _stopHost, _startLine
    hello       giveUp          -> failed      _cancelHelloTimer, _abandonConnection, _decideError
    hello       lateHello       -> hello
    hello       lineAnswered    -> hello
    hello       lineUnanswered  -> hello
    hello       lost            -> failed      _cancelHelloTimer, _noteLost, _fireClosed, _forwardLost, _decideClosed
    hello       sessionFailed   -> failed      _cancelHelloTimer, _decideSessionFailure
    hello       sessionUp       -> framed      _cancelHelloTimer, _decideFramed
    line        connect         -> line
    line        fallBack        -> line
    line        giveUp          -> failed      _abandonConnection, _decideError
    line        lateHello       -> switching   _abandonLine, _startNewHost, _armSwitchTimer, _feedRest
    line        lineAnswered    -> done        _writeLineJSON, _decideLine
    line        lineUnanswered  -> failed      _decideNoAnswer
    line        lost            -> line        _noteLost, _fireClosed, _forwardLost
    line        sessionFailed   -> line
    line        sessionUp       -> line
    switching   connect         -> switching
    switching   fallBack        -> switching
    switching   giveUp          -> failed      _cancelSwitchTimer, _abandonConnection, _decideError
    switching   lateHello       -> switching
    switching   lineAnswered    -> switching
    switching   lineUnanswered  -> switching
    switching   lost            -> failed      _cancelSwitchTimer, _noteLost, _fireClosed, _forwardLost, _decideClosed
    switching   sessionFailed   -> failed      _cancelSwitchTimer, _decideSessionFailure
    switching   sessionUp       -> framed      _cancelSwitchTimer, _decideFramed
"""

from automat import MethodicalMachine
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol

from prokshy._nodelay import noDelay
from prokshy.cli import records
from prokshy.cli.format import (
    EXIT_NO_ANSWER,
    EXIT_TRANSPORT,
    CLIError,
    closedMessage,
    lateAfterOutputMessage,
    legacyRecord,
    noAnswerMessage,
    seconds,
)
from prokshy.cli.hellos import GARBAGE, HelloFilter
from prokshy.cli.legacy import LegacyExchange
from prokshy.cli.output import Collector
from prokshy.host.client import HOST_PAYLOAD, HOST_WINDOW, HostProtocol, SessionRefused
from prokshy.link.session import LinkConfig, SessionEnded

#: After a late hello, the new framed session may take this many times as
#: long as the late answer took (counted from the connection), before the
#: CLI gives up on it.  No fixed minimum: a short C{--fallback-after} on a
#: fast channel gives up quickly.
LATE_SESSION_FACTOR = 5


class AutoChannel(Protocol):
    """
    Says a framed hello; in C{auto} mode on a socket falls back to the
    line-protocol exchange when no answer comes within C{fallbackAfter}
    seconds.

    After the fallback, hello lines in the reply are never output.  A valid
    guest hello that arrives then (a framed agent that answered late) makes
    the channel start a new framed session on the same connection, as long
    as no line-protocol output was written yet; after output it is a clear
    failure.

    @ivar decided: fires with C{("framed", HostProtocol)} once a framed
        session is up, or C{("legacy", code)} once a line-protocol exchange
        with an answer is over; fails with L{CLIError} (or
        L{prokshy.cli.legacy.OutputError}).
    @ivar closed: fires once the connection is closed.
    @ivar host: the current framed host (a new one after a late hello).
    """

    _machine = MethodicalMachine()

    def __init__(self, reactor, options, output, target=None):
        self.reactor = reactor
        self.options = options
        self.output = output
        self.target = target
        self.host = self._newHost()
        self.legacy = None
        self.decided = Deferred()
        self.closed = Deferred()
        #: The protocol that gets the connection's bytes.
        self._current = self.host
        #: The hello state's timer, and the switching state's.
        self._helloCall = None
        self._switchCall = None
        self._lostReason = None
        self._nonce = None
        self._collector = None
        self._connectedAt = None

    def _newHost(self):
        config = LinkConfig(window=HOST_WINDOW, maxPayload=HOST_PAYLOAD, auth=self.options.token)
        return HostProtocol(self.reactor, config)

    @property
    def canFallBack(self):
        """
        Whether there is something to fall back to: C{auto} mode on a
        socket (a daemon reached with C{--connect} always speaks framed).
        """
        return self.options.protocol == "auto" and self.options.connect is None

    # -- the protocol -----------------------------------------------------

    def connectionMade(self):
        noDelay(self.transport)  # --connect tcp:...: no Nagle stall
        self.connect()

    def dataReceived(self, data):
        self._current.dataReceived(data)

    def connectionLost(self, reason):
        self.lost(reason)

    def close(self, timeout=2.0):
        """
        Close the connection after what was written has been sent.

        @return: a Deferred firing once it is closed (at most C{timeout}
            seconds later).
        """
        if not self.closed.called:
            self.transport.loseConnection()
            call = self.reactor.callLater(timeout, self.transport.abortConnection)
            self.closed.addBoth(lambda r: call.cancel() if call.active() else None)
        return self.closed

    # -- what decides which input ------------------------------------------

    def _helloExpired(self):
        """
        The hello state's timer: fall back, or give up.
        """
        self._helloCall = None
        opts = self.options
        wait = seconds(opts.fallback_after)
        if not self.canFallBack:
            self.giveUp(CLIError("no framed hello answer within %s" % (wait,), EXIT_TRANSPORT, "no-answer"))
            return
        need = None
        if opts.forward_mode is not None:
            need = "forwarding needs a prokshy agent or daemon"
        elif opts.status or opts.info or getattr(opts, "ping", False):
            need = "--status, --info and --ping need a prokshy agent"
        elif getattr(opts, "mode", None) == "list":
            need = "--list needs a prokshy agent (the original agent cannot list its commands)"
        elif opts.stdin:
            need = "--stdin needs the framed protocol"
        elif opts.tty:
            need = "-t needs a prokshy agent (the original agent has no terminals)"
        elif opts.args:
            need = (
                "the original agent cannot take arguments (ARG...): the command was not "
                "run without them"
            )
        elif getattr(opts, "mode", None) in ("push", "pull"):
            need = "--push and --pull need a prokshy agent"
        elif opts.vm or opts.all_vms:
            need = "--vm and --all-vms need a prokshy-host daemon"
        if need is not None:
            self.giveUp(CLIError("no framed hello answer within %s: %s" % (wait, need), EXIT_TRANSPORT, "no-answer"))
        else:
            self.fallBack()

    def _switchExpired(self, wait):
        self._switchCall = None
        self.giveUp(CLIError("no framed hello answer within %s" % (seconds(wait),), EXIT_TRANSPORT, "no-answer"))

    def _sessionUp(self, host):
        if host is self.host:
            self.sessionUp()

    def _sessionFailed(self, failure, host):
        if host is self.host:
            self.sessionFailed(failure)

    def _lineEnded(self, code):
        if self.legacy.outputBytes:
            self.lineAnswered(code)
        else:
            self.lineUnanswered()

    def _lineFailed(self, failure):
        self.giveUp(failure.value)

    def _heardHello(self, hello, rest):
        """
        A hello line in the line-protocol reply.

        @return: whether the exchange must stop (a new framed session, or a
            failure, took over the connection).
        """
        if hello is GARBAGE or hello.get("role") != "guest" or not isinstance(hello.get("nonce"), str):
            # our own hello echoed by a tty, or noise: dropped
            return False
        if "error" in hello:
            if hello.get("peer") != self._nonce:
                return False
            self.giveUp(CLIError("refused: %s" % (str(hello["error"])[:200],), EXIT_TRANSPORT, "session-refused"))
            return True
        written = self.legacy.outputBytes
        if written:
            self.giveUp(CLIError(lateAfterOutputMessage(written), EXIT_TRANSPORT))
            return True
        self.lateHello(rest)
        return True

    # -- states -----------------------------------------------------------

    @_machine.state(initial=True)
    def connecting(self):
        "Not connected yet."

    @_machine.state()
    def hello(self):
        "The framed hello is out.  Timer: the fallback (or the end of the wait)."

    @_machine.state()
    def line(self):
        "Fell back: the line-protocol exchange runs, watched for a late hello."

    @_machine.state()
    def switching(self):
        "A late guest hello: a new framed session is starting.  Timer: its wait."

    @_machine.state()
    def framed(self):
        "Decided: a framed session is up."

    @_machine.state()
    def done(self):
        "Decided: the line-protocol exchange is over, with an answer."

    @_machine.state()
    def failed(self):
        "Decided: a failure."

    # -- inputs -----------------------------------------------------------

    @_machine.input()
    def connect(self):
        "connectionMade."

    @_machine.input()
    def fallBack(self):
        "The hello timer fired in auto mode, and the request can go over the line protocol."

    @_machine.input()
    def giveUp(self, error):
        "A failure that ends the attempt (a timer with nothing to fall back to, a late refusal, ...)."

    @_machine.input()
    def sessionUp(self):
        "The current host's framed session is up."

    @_machine.input()
    def sessionFailed(self, failure):
        "The current host's session was refused or ended before it started."

    @_machine.input()
    def lateHello(self, rest):
        "A guest hello in the line-protocol reply, before any output."

    @_machine.input()
    def lineAnswered(self, code):
        "The line-protocol exchange is over, and wrote output."

    @_machine.input()
    def lineUnanswered(self):
        "The line-protocol exchange is over without a byte of output."

    @_machine.input()
    def lost(self, reason):
        "connectionLost."

    # -- outputs ----------------------------------------------------------

    @_machine.output()
    def _startHost(self):
        self._connectedAt = self.reactor.seconds()
        self._connectHost()

    def _connectHost(self):
        host = self.host
        self._current = host
        host.makeConnection(self.transport)
        host.whenSession().addCallbacks(
            lambda session: self._sessionUp(host), lambda failure: self._sessionFailed(failure, host)
        )

    @_machine.output()
    def _armHelloTimer(self):
        self._helloCall = self.reactor.callLater(self.options.fallback_after, self._helloExpired)

    @_machine.output()
    def _cancelHelloTimer(self):
        call, self._helloCall = self._helloCall, None
        if call is not None and call.active():
            call.cancel()

    @_machine.output()
    def _stopHost(self):
        # The link's nonce: a refusal aimed at our hello names it as its
        # peer.  (Link has no public accessor for it yet.)
        self._nonce = self.host.link.nonce
        self.host.link.stop("falling back to the line protocol")
        # The link was the connection's producer (HostProtocol); the line
        # exchange, or a new host after a late hello, takes its place.
        self.transport.unregisterProducer()

    @_machine.output()
    def _startLine(self):
        # Everything received so far was echo of our hellos; the line
        # protocol starts clean after them (each hello line ends with LF).
        # The request goes after an empty line: a prokshy agent that
        # answered our hello too late to be heard is in framed mode by now,
        # and takes a chunk that starts with a command line for a new line
        # client; one that starts with LF it ignores, so the command runs
        # once, over the framed session started on its late hello.
        opts = self.options
        output = self.output
        if opts.json:
            output = self._collector = Collector()
        self.legacy = LegacyExchange(
            opts.command.encode("ascii"), opts.data, output, opts.timeout, self.reactor,
            helloSink=self._heardHello, lead=b"\n", helloFilter=HelloFilter,
        )
        self._current = self.legacy
        self.legacy.makeConnection(self.transport)
        self.legacy.done.addCallbacks(self._lineEnded, self._lineFailed)

    @_machine.output()
    def _abandonLine(self):
        self.legacy.abandon()

    @_machine.output()
    def _startNewHost(self):
        # A framed agent that answered late: a new session (a new hello
        # nonce makes the agent end the one it started for the old hello).
        self._collector = None
        self.host = self._newHost()
        self._connectHost()

    @_machine.output()
    def _armSwitchTimer(self):
        # How long the late answer took, counted from the connection (it
        # is after the fallback, so at least --fallback-after).
        late = self.reactor.seconds() - self._connectedAt
        wait = LATE_SESSION_FACTOR * late
        self._switchCall = self.reactor.callLater(wait, self._switchExpired, wait)

    @_machine.output()
    def _cancelSwitchTimer(self):
        call, self._switchCall = self._switchCall, None
        if call is not None and call.active():
            call.cancel()

    @_machine.output()
    def _feedRest(self, rest):
        if rest:
            self.host.dataReceived(rest)

    @_machine.output()
    def _abandonConnection(self):
        if self.legacy is not None:
            self.legacy.abandon()
        if self.host.link is not None:
            self.host.link.stop("giving up")
        self.transport.loseConnection()

    @_machine.output()
    def _noteLost(self, reason):
        self._lostReason = reason

    @_machine.output()
    def _fireClosed(self):
        self.closed.callback(None)

    @_machine.output()
    def _forwardLost(self, reason):
        self._current.connectionLost(reason)

    @_machine.output()
    def _writeLineJSON(self):
        if self._collector is not None:
            records.writeLine(self.output.write, legacyRecord(self.options.command, b""), self._collector.getvalue())

    @_machine.output()
    def _decideFramed(self):
        self.decided.callback(("framed", self.host))

    @_machine.output()
    def _decideLine(self, code):
        self.decided.callback(("legacy", code))

    @_machine.output()
    def _decideError(self, error):
        self.decided.errback(error)

    @_machine.output()
    def _decideSessionFailure(self, failure):
        if failure.check(SessionRefused):
            self.decided.errback(CLIError("refused: %s" % (failure.value,), EXIT_TRANSPORT, "session-refused"))
        elif failure.check(SessionEnded):
            self.decided.errback(CLIError(closedMessage(self._lostReason), EXIT_TRANSPORT))
        else:
            self.decided.errback(failure)

    @_machine.output()
    def _decideClosed(self):
        self.decided.errback(CLIError(closedMessage(self._lostReason), EXIT_TRANSPORT))

    @_machine.output()
    def _decideNoAnswer(self):
        message = noAnswerMessage(self.options, self.target, self.legacy.endedBy)
        self.decided.errback(CLIError(message, EXIT_NO_ANSWER, "no-answer"))

    # -- the table --------------------------------------------------------

    _lostEarly = [_noteLost, _fireClosed, _forwardLost, _decideClosed]

    connecting.upon(connect, enter=hello, outputs=[_startHost, _armHelloTimer])
    connecting.upon(fallBack, enter=connecting, outputs=[])
    connecting.upon(giveUp, enter=connecting, outputs=[])
    connecting.upon(sessionUp, enter=connecting, outputs=[])
    connecting.upon(sessionFailed, enter=connecting, outputs=[])
    connecting.upon(lateHello, enter=connecting, outputs=[])
    connecting.upon(lineAnswered, enter=connecting, outputs=[])
    connecting.upon(lineUnanswered, enter=connecting, outputs=[])
    connecting.upon(lost, enter=failed, outputs=[_noteLost, _fireClosed, _decideClosed])

    hello.upon(connect, enter=hello, outputs=[])
    hello.upon(fallBack, enter=line, outputs=[_cancelHelloTimer, _stopHost, _startLine])
    hello.upon(giveUp, enter=failed, outputs=[_cancelHelloTimer, _abandonConnection, _decideError])
    hello.upon(sessionUp, enter=framed, outputs=[_cancelHelloTimer, _decideFramed])
    hello.upon(sessionFailed, enter=failed, outputs=[_cancelHelloTimer, _decideSessionFailure])
    hello.upon(lateHello, enter=hello, outputs=[])
    hello.upon(lineAnswered, enter=hello, outputs=[])
    hello.upon(lineUnanswered, enter=hello, outputs=[])
    hello.upon(lost, enter=failed, outputs=[_cancelHelloTimer] + _lostEarly)

    line.upon(connect, enter=line, outputs=[])
    line.upon(fallBack, enter=line, outputs=[])
    line.upon(giveUp, enter=failed, outputs=[_abandonConnection, _decideError])
    line.upon(sessionUp, enter=line, outputs=[])
    line.upon(sessionFailed, enter=line, outputs=[])
    line.upon(lateHello, enter=switching, outputs=[_abandonLine, _startNewHost, _armSwitchTimer, _feedRest])
    line.upon(lineAnswered, enter=done, outputs=[_writeLineJSON, _decideLine])
    line.upon(lineUnanswered, enter=failed, outputs=[_decideNoAnswer])
    # The exchange ends on the connection's end, and says how (lineAnswered,
    # lineUnanswered, or giveUp with an output error).
    line.upon(lost, enter=line, outputs=[_noteLost, _fireClosed, _forwardLost])

    switching.upon(connect, enter=switching, outputs=[])
    switching.upon(fallBack, enter=switching, outputs=[])
    switching.upon(giveUp, enter=failed, outputs=[_cancelSwitchTimer, _abandonConnection, _decideError])
    switching.upon(sessionUp, enter=framed, outputs=[_cancelSwitchTimer, _decideFramed])
    switching.upon(sessionFailed, enter=failed, outputs=[_cancelSwitchTimer, _decideSessionFailure])
    switching.upon(lateHello, enter=switching, outputs=[])
    switching.upon(lineAnswered, enter=switching, outputs=[])
    switching.upon(lineUnanswered, enter=switching, outputs=[])
    switching.upon(lost, enter=failed, outputs=[_cancelSwitchTimer] + _lostEarly)

    for _decided in (framed, done, failed):
        _decided.upon(connect, enter=_decided, outputs=[])
        _decided.upon(fallBack, enter=_decided, outputs=[])
        _decided.upon(giveUp, enter=_decided, outputs=[])
        _decided.upon(sessionUp, enter=_decided, outputs=[])
        _decided.upon(sessionFailed, enter=_decided, outputs=[])
        _decided.upon(lateHello, enter=_decided, outputs=[])
        _decided.upon(lineAnswered, enter=_decided, outputs=[])
        _decided.upon(lineUnanswered, enter=_decided, outputs=[])
        _decided.upon(lost, enter=_decided, outputs=[_noteLost, _fireClosed, _forwardLost])
    del _decided



__all__ = ["AutoChannel", "LATE_SESSION_FACTOR"]
