# -*- test-case-name: tests.test_cli_framed -*-
"""
The CLI's framed mode: say a hello, and either run over the framed protocol
or, when no framed hello answers in time (the original shell agent), fall
back to the legacy exchange on the same connection.

The run's input is L{prokshy.cli.input}'s, what it prints
L{prokshy.cli.format}'s.
"""

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from prokshy.cli.format import (
    EXIT_NO_ANSWER,
    EXIT_TRANSPORT,
    EXIT_USAGE,
    CLIError,
    Labeller,
    closedMessage,
    exitFor,
    finishRecord,
    formatStatus,
    framedRecord,
    jsonLine,
    lateAfterOutputMessage,
    legacyRecord,
    messageLine,
    noAnswerMessage,
    prefixed,
    resultStatus,
    seconds,
    withOutput,
)
from prokshy.cli.hellos import GARBAGE, HelloFilter
from prokshy.cli.input import CommandInput
from prokshy.cli.legacy import LegacyExchange, OutputError
from prokshy.cli.output import EXIT_PIPE, Collector, FlowGate
from prokshy.host.client import HOST_PAYLOAD, HOST_WINDOW, HostProtocol, SessionRefused
from prokshy.link.session import LinkConfig, SessionEnded

#: How long to wait for a framed agent that answered late to answer again.
LATE_SESSION_WAIT = 5.0


class AutoChannel(Protocol):
    """
    Says a framed hello; in C{auto} mode falls back to the legacy exchange
    when no answer comes within C{fallbackAfter} seconds.

    After the fallback, hello lines in the reply are never output.  A valid
    guest hello that arrives then (a framed agent that answered late) makes
    the channel start a new framed session on the same connection, as long
    as no line-protocol output was written yet; after output it is a clear
    failure.

    @ivar decided: fires with C{("framed", HostProtocol)} once a framed
        session is up, or C{("legacy", code)} once a line-protocol exchange
        with an answer is over; fails with L{CLIError} (or
        L{prokshy.cli.legacy.OutputError}).
    """

    def __init__(self, reactor, options, output, target=None):
        self.reactor = reactor
        self.options = options
        self.output = output
        self.target = target
        self.host = self._newHost()
        self.legacy = None
        self.decided = Deferred()
        self.closed = Deferred()
        self._timer = None
        self._lostReason = None
        self._nonce = None
        self._collector = None

    def _newHost(self):
        config = LinkConfig(window=HOST_WINDOW, maxPayload=HOST_PAYLOAD, auth=self.options.token)
        return HostProtocol(self.reactor, config)

    def _startHost(self):
        host = self.host
        host.makeConnection(self.transport)
        host.whenSession().addCallbacks(
            lambda session: self._framed(host), lambda failure: self._failed(failure, host)
        )

    def connectionMade(self):
        self._startHost()
        wait = self.options.fallback_after
        if self.options.protocol == "auto" and self.options.connect is None:
            self._timer = self.reactor.callLater(wait, self._fallback)
        else:
            self._timer = self.reactor.callLater(wait, self._noAnswer, wait)

    def _cancelTimer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _decide(self, result):
        self._cancelTimer()
        if self.decided.called:
            return
        if isinstance(result, Exception):
            self.decided.errback(result)
        else:
            self.decided.callback(result)

    def _fail(self, error):
        """
        Give up on the connection with C{error}.
        """
        if self.legacy is not None:
            self.legacy.abandon()
        if self.host.link is not None:
            self.host.link.stop("giving up")
        self.transport.loseConnection()
        self._decide(error)

    def _framed(self, host):
        if host is self.host:
            self._decide(("framed", host))

    def _failed(self, failure, host):
        if host is not self.host or self.decided.called:
            return
        if failure.check(SessionRefused):
            self._decide(CLIError("refused: %s" % (failure.value,), EXIT_TRANSPORT))
        elif failure.check(SessionEnded):
            self._decide(CLIError(self._closedMessage(), EXIT_TRANSPORT))
        else:
            self._cancelTimer()
            self.decided.errback(failure)

    def _noAnswer(self, wait):
        self._timer = None
        if not self.decided.called:
            self._fail(CLIError("no framed hello answer within %s" % (seconds(wait),), EXIT_TRANSPORT))

    def _fallback(self):
        self._timer = None
        if self.decided.called:
            return
        opts = self.options
        wait = seconds(opts.fallback_after)
        need = None
        if opts.status or opts.info:
            need = "--status and --info need a prokshy agent"
        elif opts.stdin:
            need = "--stdin needs the framed protocol"
        elif opts.vm or opts.all_vms:
            need = "--vm and --all-vms need a prokshy-host daemon"
        if need is not None:
            self._fail(CLIError("no framed hello answer within %s: %s" % (wait, need), EXIT_TRANSPORT))
            return
        # Everything received so far was echo of our hellos; the line
        # protocol starts clean after them (each hello line ends with LF).
        # The request goes after an empty line: a prokshy agent that
        # answered our hello too late to be heard is in framed mode by now,
        # and takes a chunk that starts with a command line for a new line
        # client; one that starts with LF it ignores, so the command runs
        # once, over the framed session started below (L{_lateHello}).
        self._nonce = getattr(self.host.link, "_nonce", None)
        self.host.link.stop("falling back to the line protocol")
        output = self.output
        if opts.json:
            output = self._collector = Collector()
        self.legacy = LegacyExchange(
            opts.command.encode("ascii"), opts.data, output, opts.timeout, self.reactor,
            helloSink=self._lateHello, lead=b"\n", helloFilter=HelloFilter,
        )
        self.legacy.makeConnection(self.transport)
        self.legacy.done.addCallbacks(self._legacyDone, self._legacyFailed)

    def _lateHello(self, hello, rest):
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
            self._fail(CLIError("refused: %s" % (str(hello["error"])[:200],), EXIT_TRANSPORT))
            return True
        legacy = self.legacy
        if legacy.outputBytes:
            self._fail(CLIError(lateAfterOutputMessage(legacy.outputBytes), EXIT_TRANSPORT))
            return True
        # A framed agent that answered late: start a new session (a new
        # hello nonce makes the agent end the one it started for the old
        # hello) and run over it.
        legacy.abandon()
        self.legacy = None
        self._collector = None
        self.host = self._newHost()
        self._startHost()
        wait = max(LATE_SESSION_WAIT, self.options.fallback_after)
        self._timer = self.reactor.callLater(wait, self._noAnswer, wait)
        if rest:
            self.host.dataReceived(rest)
        return True

    def _legacyDone(self, code):
        legacy = self.legacy
        if legacy is None or self.decided.called:
            return
        if not legacy.outputBytes:
            self._decide(CLIError(self._noAnswerMessage(legacy), EXIT_NO_ANSWER))
            return
        if self._collector is not None:
            self.output.write(jsonLine(legacyRecord(self.options.command, self._collector.getvalue())))
        self._decide(("legacy", code))

    def _legacyFailed(self, failure):
        if not self.decided.called:
            self._decide(failure.value)

    def _noAnswerMessage(self, legacy):
        return noAnswerMessage(self.options, self.target, legacy.endedBy)

    def dataReceived(self, data):
        if self.legacy is not None:
            self.legacy.dataReceived(data)
        else:
            self.host.dataReceived(data)

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

    def connectionLost(self, reason):
        self._lostReason = reason
        self._cancelTimer()
        if not self.closed.called:
            self.closed.callback(None)
        if self.legacy is not None:
            self.legacy.connectionLost(reason)
        else:
            self.host.connectionLost(reason)
        if not self.decided.called:
            self._decide(CLIError(self._closedMessage(), EXIT_TRANSPORT))

    def _closedMessage(self):
        return closedMessage(self._lostReason)


class FramedRun:
    """
    What the CLI does once a framed session is up.

    @param stdout: the output for the commands' stdout (an
        L{prokshy.cli.output.IOutput}).
    @param stderr: the same for their stderr and the CLI's messages.

    If stdout is lost (its reader went away), every remote command is
    cancelled, the session ends, and L{run} fails with L{OutputError}.
    """

    def __init__(self, reactor, host, options, stdout, stderr, stdinFD=0):
        self.reactor = reactor
        self.host = host
        self.session = host.session
        self.options = options
        self.stdout = stdout
        self.stderr = stderr
        self.hello = host.mux.info.peerHello if host.mux.info else {}
        self.running = []
        self.outputError = None
        self.input = CommandInput(reactor, options, stdinFD)
        stdout.whenLost(self._stdoutLost)

    @property
    def isDaemon(self):
        return self.hello.get("server") == "prokshy-host"

    def say(self, message):
        self.stderr.write(messageLine(message))

    def _stdoutLost(self, error):
        if self.outputError is not None:
            return
        self.outputError = error
        self._cancelAll()
        if self.host.link is not None:
            self.host.link.goodbye("the output was closed")

    def _cancelAll(self):
        self.input.stop()
        for running in self.running:
            try:
                running.cancel()
            except Exception:
                pass

    def targets(self):
        opts = self.options
        if (opts.vm or opts.all_vms) and not self.isDaemon:
            raise CLIError("--vm and --all-vms need a prokshy-host daemon", EXIT_USAGE)
        if opts.all_vms:
            return list(self.hello.get("vms") or [])
        return list(opts.vm or [None])

    async def run(self):
        opts = self.options
        if opts.status:
            code = await self._status()
        elif opts.info:
            code = await self._info()
        else:
            code = await self._exec()
        if self.outputError is not None:
            raise OutputError(self.outputError)
        return code

    async def _status(self):
        if not self.isDaemon:
            return await self._info()
        status = await self.session.status()
        code = 0
        wanted = self.options.vm
        if wanted:
            vms = list(status.get("vms") or [])
            names = [vm.get("name") for vm in vms]
            for name in wanted:
                if name not in names:
                    self.say("no vm named %r (the daemon has: %s)" % (name, ", ".join(map(str, names))))
                    code = EXIT_TRANSPORT
            status = dict(status, vms=[vm for vm in vms if vm.get("name") in wanted])
        if self.options.json:
            self.stdout.write(jsonLine(status, indent=2))
        elif status.get("vms") or not wanted:
            self.stdout.write(formatStatus(status).encode("utf-8"))
        return code

    async def _info(self):
        worst = 0
        for vm in self.targets():
            try:
                info = await self.session.info(vm=vm)
            except Exception as e:
                code = exitFor(Failure(e))
                if code is None:
                    raise
                self.say(prefixed("vm %s: " % vm if vm else "", code[1]))
                worst = max(worst, code[0])
                continue
            if vm is not None:
                info = dict(info, vm=vm)
            self.stdout.write(jsonLine(info))
        return worst

    async def _exec(self):
        vms = self.targets()
        if not vms:
            raise CLIError("the daemon has no VMs", EXIT_TRANSPORT)
        labelled = len(vms) > 1 and not self.options.json
        opened = [Deferred() for vm in vms]
        runs = [ensureDeferred(self._one(vm, labelled, ready)) for vm, ready in zip(vms, opened)]
        if self.input.streamed:
            # Stdin is read once and streamed to every VM, once every
            # command was started (or refused).
            started = await DeferredList(opened)
            if self.outputError is None:
                self.input.allStarted([running for ok, running in started if running is not None])
        try:
            results = await DeferredList(runs, consumeErrors=True)
        finally:
            self.input.stop()
        codes = []
        for ok, value in results:
            if not ok:
                value.raiseException()
            codes.append(value)
        return max(codes) if codes else 0

    def _sinks(self, vm, labelled):
        """
        Where one command's stdout and stderr go: kept for its C{--json}
        record, labelled C{[vm] } among several VMs, or written as they are.

        @return: C{(onStdout, onStderr, kept)}; C{kept} is L{None}, or the
            two lists the output is kept in.
        """
        if self.options.json:
            out, err = [], []
            return out.append, err.append, (out, err)
        if labelled:
            label = vm if vm is not None else "default"
            return Labeller(label, self.stdout.write), Labeller(label, self.stderr.write), None
        return self.stdout.write, self.stderr.write, None

    async def _one(self, vm, labelled, opened):
        opts = self.options
        onOut, onErr, kept = self._sinks(vm, labelled)
        record = framedRecord(vm, opts.command)
        # A daemon names the VM in its messages only when we did not name
        # it; an older daemon always did (L{prefixed} does not repeat it).
        prefix = "vm %s: " % (vm,) if vm is not None else ""
        gate = None
        try:
            try:
                running = await self.session.execStream(
                    opts.command, onOut, onErr, timeout=opts.exec_timeout, vm=vm
                )
            except BaseException:
                opened.callback(None)
                raise
            self.running.append(running)
            if self.outputError is not None:
                running.cancel()
            if kept is None:
                gate = FlowGate(running.stream).attach(self.stdout, self.stderr)
            opened.callback(running)
            self.input.started(running)
            result = await running.result
        except Exception as e:
            if self.outputError is not None:
                return EXIT_PIPE
            code = exitFor(Failure(e))
            if code is None:
                raise
            record.update(status=code[0], error=prefixed(prefix, code[1]))
            if kept is not None:
                self.stdout.write(jsonLine(withOutput(record, b"".join(kept[0]), b"".join(kept[1]))))
            else:
                self.say(record["error"])
            return code[0]
        finally:
            if gate is not None:
                gate.close()
            for f in (onOut, onErr):
                if isinstance(f, Labeller):
                    f.flush()
        status, notes = resultStatus(opts.command, result)
        finishRecord(record, status, result)
        if kept is not None:
            self.stdout.write(jsonLine(withOutput(record, b"".join(kept[0]), b"".join(kept[1]))))
        else:
            for note in notes:
                self.say(prefix + note)
        return status

    def interrupt(self, channel):
        """
        Ctrl-C: cancel remote commands and end the session cleanly.

        @return: a Deferred firing once the connection is closed (at most
            a second later), so the RESETs and GOODBYE leave before exit.
        """
        self._cancelAll()
        if self.host.link is not None:
            self.host.link.goodbye("client interrupted")
        return channel.close(timeout=1.0)


__all__ = ["AutoChannel", "CLIError", "EXIT_NO_ANSWER", "FramedRun"]
