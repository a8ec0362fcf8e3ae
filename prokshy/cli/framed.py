# -*- test-case-name: tests.test_cli_framed -*-
"""
The CLI's framed mode: say a hello, and either run over the framed protocol
or, when no framed hello answers in time (the original shell agent), fall
back to the legacy exchange on the same connection.
"""

import atexit
import fcntl
import json
import os
import stat

from twisted.internet import fdesc
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from prokshy.cli.legacy import GARBAGE, Collector, LegacyExchange, OutputError, legacyRecord, textField
from prokshy.cli.output import EXIT_PIPE, FlowGate
from prokshy.host.client import (
    HOST_PAYLOAD,
    HOST_WINDOW,
    ExecFailed,
    HostProtocol,
    SessionRefused,
)
from prokshy.link.session import LinkConfig, SessionEnded
from prokshy.streams.stream import StreamError, StreamRefused

EXIT_USAGE = 2
EXIT_TIMED_OUT = 124
EXIT_TRUNCATED = 125
EXIT_REFUSED = 126
EXIT_NOT_FOUND = 127
EXIT_TRANSPORT = 255
#: No hello answer and no byte of line-protocol output (auto mode).
EXIT_NO_ANSWER = EXIT_TRANSPORT

#: How long to wait for a framed agent that answered late to answer again.
LATE_SESSION_WAIT = 5.0

_REFUSAL_EXIT = {
    "no-such-command": EXIT_NOT_FOUND,
    "bad-name": EXIT_REFUSED,
    "not-executable": EXIT_REFUSED,
    "insecure": EXIT_REFUSED,
}


_CLOSED_EARLY = (
    "the connection closed before a session started; a VM's console socket "
    "serves one client: is prokshy-host holding it?"
)


class CLIError(Exception):
    """
    An expected failure: a one-line message and an exit code.
    """

    def __init__(self, message, code):
        Exception.__init__(self, message)
        self.message = message
        self.code = code


def _seconds(value):
    return "%g s" % (value,)


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
            self._fail(CLIError("no framed hello answer within %s" % (_seconds(wait),), EXIT_TRANSPORT))

    def _fallback(self):
        self._timer = None
        if self.decided.called:
            return
        opts = self.options
        wait = _seconds(opts.fallback_after)
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
            helloSink=self._lateHello, lead=b"\n",
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
            self._fail(
                CLIError(
                    "a prokshy agent answered the framed hello after the fallback to the "
                    "line protocol, when %d bytes of line-protocol output were already "
                    "written: that output may be incomplete; run the command again"
                    % (legacy.outputBytes,),
                    EXIT_TRANSPORT,
                )
            )
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
            record = legacyRecord(self.options.command, self._collector.getvalue())
            self.output.write(json.dumps(record, sort_keys=True).encode() + b"\n")
        self._decide(("legacy", code))

    def _legacyFailed(self, failure):
        if not self.decided.called:
            self._decide(failure.value)

    def _noAnswerMessage(self, legacy):
        opts = self.options
        where = " on %s" % (self.target,) if self.target else ""
        if legacy.endedBy == "closed":
            line = "until the connection closed"
        else:
            line = "for %s (--timeout)" % (_seconds(opts.timeout),)
        return (
            "no answer from a prokshy agent%s: tried the framed hello for %s (--fallback-after) "
            "and the original line protocol (%s) %s, and got no byte back (an original agent "
            "prints nothing for an unknown command or a command without output; "
            "--protocol legacy accepts an empty answer)"
            % (where, _seconds(opts.fallback_after), opts.command, line)
        )

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
        reason = self._lostReason
        if reason is None or reason.check(ConnectionDone, ConnectionLost):
            return _CLOSED_EARLY
        # A TLS handshake refused, a reset: say what it was.
        return "the connection was lost before a session started: %s" % (
            reason.getErrorMessage(),
        )


@implementer(IPushProducer)
class StdinSource:
    """
    Streams a file descriptor (the CLI's stdin) to a consumer's C{write},
    then calls C{onEnd}.  Pipes and terminals are read, without blocking,
    when readable; regular files, which are always readable (and which
    epoll cannot watch), a chunk per reactor turn, as
    L{twisted.protocols.basic.FileSender} does.  A descriptor made
    non-blocking gets its flags back at the end (and at exit).
    """

    chunk = 65536

    def __init__(self, reactor, fd, write, onEnd):
        self.reactor = reactor
        self.fd = fd
        self.write = write
        self.onEnd = onEnd
        self._paused = False
        self._done = False
        self._regular = stat.S_ISREG(os.fstat(fd).st_mode)
        self._call = None
        self._flags = None
        if not self._regular:
            self._flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fdesc.setNonBlocking(fd)
            atexit.register(self._restore)
        self._reader = _FDReader(self) if not self._regular else None

    def start(self):
        self.resumeProducing()

    def _restore(self):
        flags, self._flags = self._flags, None
        if flags is not None:
            try:
                fcntl.fcntl(self.fd, fcntl.F_SETFL, flags)
            except OSError:
                pass

    def _readOnce(self):
        try:
            data = os.read(self.fd, self.chunk)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self._finish()
            return False
        self.write(data)
        return True

    def _tick(self):
        self._call = None
        if self._paused or self._done:
            return
        if self._readOnce() and not self._paused and not self._done:
            self._call = self.reactor.callLater(0, self._tick)

    def _finish(self):
        if not self._done:
            self._done = True
            if self._reader is not None:
                self.reactor.removeReader(self._reader)
            self._restore()
            self.onEnd()

    def pauseProducing(self):
        self._paused = True
        if self._reader is not None:
            self.reactor.removeReader(self._reader)

    def resumeProducing(self):
        if self._done:
            return
        self._paused = False
        if self._reader is not None:
            self.reactor.addReader(self._reader)
        elif self._call is None:
            self._call = self.reactor.callLater(0, self._tick)

    def stopProducing(self):
        self._done = True
        if self._reader is not None:
            self.reactor.removeReader(self._reader)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._restore()


class _FDReader:
    def __init__(self, source):
        self.source = source

    def fileno(self):
        return self.source.fd

    def doRead(self):
        self.source._readOnce()

    def logPrefix(self):
        return "stdin"

    def connectionLost(self, reason):
        self.source._finish()


@implementer(IPushProducer)
class _StdinHandle:
    """
    What one running exec sees as its stdin producer in a L{StdinFanout}.
    """

    def __init__(self, fanout, running):
        self.fanout = fanout
        self.running = running

    def pauseProducing(self):
        self.fanout.gate.block(self.running)

    def resumeProducing(self):
        self.fanout.gate.unblock(self.running)

    def stopProducing(self):
        self.fanout._gone(self.running)


class StdinFanout:
    """
    Streams the CLI's stdin to one or more running execs, read once; the
    reading pauses while any of them has no room (credit) for more.
    """

    def __init__(self, reactor, fd, runnings):
        self.targets = list(runnings)
        self.source = StdinSource(reactor, fd, self._write, self._end)
        self.gate = FlowGate(self.source)
        for running in self.targets:
            running.registerProducer(_StdinHandle(self, running), True)

    def start(self):
        if self.targets:
            self.source.start()
        else:
            self.source.stopProducing()

    def _write(self, data):
        for running in list(self.targets):
            running.write(data)

    def _end(self):
        targets, self.targets = self.targets, []
        for running in targets:
            running.unregisterProducer()
            running.closeStdin()

    def _gone(self, running):
        if running in self.targets:
            self.targets.remove(running)
            self.gate.unblock(running)
            if not self.targets:
                self.source.stopProducing()

    def stop(self):
        self.targets = []
        self.gate.close()
        self.source.stopProducing()


class _Labeller:
    """
    Prefixes every line with C{[vm] }, keeping partial lines until they end.
    """

    def __init__(self, label, write):
        self.prefix = b"[" + label.encode("utf-8", "replace") + b"] "
        self.write = write
        self._partial = b""

    def __call__(self, data):
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if lines:
            self.write(b"".join(self.prefix + line + b"\n" for line in lines))

    def flush(self):
        if self._partial:
            self.write(self.prefix + self._partial + b"\n")
            self._partial = b""


def exitFor(failure):
    """
    The exit code and message for a failed exec.
    """
    if failure.check(StreamRefused):
        e = failure.value
        return _REFUSAL_EXIT.get(e.code, EXIT_TRANSPORT), str(e.message or e.code)
    if failure.check(SessionEnded, StreamError, ExecFailed, SessionRefused):
        return EXIT_TRANSPORT, str(failure.value)
    return None


def prefixed(prefix, message):
    """
    C{prefix + message}, unless C{message} already starts with C{prefix}
    (the daemon's messages about a VM start with C{vm NAME: }).
    """
    if prefix and message.startswith(prefix):
        return message
    return prefix + message


class FramedRun:
    """
    What the CLI does once a framed session is up.

    @param stdout: the output for the commands' stdout (an
        L{prokshy.cli.output.OutputPort} or L{prokshy.cli.output.FileOutput}).
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
        self.stdinFD = stdinFD
        self.hello = host.mux.info.peerHello if host.mux.info else {}
        self.running = []
        self.outputError = None
        self._stdin = None
        stdout.whenLost(self._stdoutLost)

    @property
    def isDaemon(self):
        return self.hello.get("server") == "prokshy-host"

    def say(self, message):
        self.stderr.write(b"prokshy: " + message.encode("utf-8", "replace") + b"\n")

    def _stdoutLost(self, error):
        if self.outputError is not None:
            return
        self.outputError = error
        self._cancelAll()
        if self.host.link is not None:
            self.host.link.goodbye("the output was closed")

    def _cancelAll(self):
        if self._stdin is not None:
            self._stdin.stop()
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
            self.stdout.write(json.dumps(status, indent=2, sort_keys=True).encode() + b"\n")
        elif status.get("vms") or not wanted:
            self.stdout.write(formatStatus(status).encode("utf-8"))
        return code

    async def _info(self):
        vms = self.targets()
        worst = 0
        for vm in vms:
            try:
                info = await self.session.info(vm=vm)
            except Exception as e:
                code = exitFor(_failure(e))
                if code is None:
                    raise
                self.say(prefixed("vm %s: " % vm if vm else "", code[1]))
                worst = max(worst, code[0])
                continue
            if vm is not None:
                info = dict(info, vm=vm)
            self.stdout.write(json.dumps(info, sort_keys=True).encode() + b"\n")
        return worst

    async def _exec(self):
        opts = self.options
        vms = self.targets()
        if not vms:
            raise CLIError("the daemon has no VMs", EXIT_TRANSPORT)
        labelled = len(vms) > 1 and not opts.json
        opened = [Deferred() for vm in vms]
        runs = [
            ensureDeferred(self._one(vm, labelled, ready)) for vm, ready in zip(vms, opened)
        ]
        if opts.stdin:
            # Stdin is read once and streamed to every VM, once every
            # command was started (or refused).
            started = await DeferredList(opened)
            runnings = [running for ok, running in started if running is not None]
            if self.outputError is None:
                self._stdin = StdinFanout(self.reactor, self.stdinFD, runnings)
                self._stdin.start()
        try:
            results = await DeferredList(runs, consumeErrors=True)
        finally:
            if self._stdin is not None:
                self._stdin.stop()
        codes = []
        for ok, value in results:
            if not ok:
                value.raiseException()
            codes.append(value)
        return max(codes) if codes else 0

    async def _one(self, vm, labelled, opened):
        opts = self.options
        label = vm if vm is not None else "default"
        out, err = [], []
        if opts.json:
            onOut, onErr = out.append, err.append
        elif labelled:
            onOut = _Labeller(label, self.stdout.write)
            onErr = _Labeller(label, self.stderr.write)
        else:
            onOut, onErr = self.stdout.write, self.stderr.write
        record = {"vm": vm, "command": opts.command, "protocol": "framed"}
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
            if not opts.json:
                gate = FlowGate(running.stream).attach(self.stdout, self.stderr)
            opened.callback(running)
            if not opts.stdin:
                if opts.fullData:
                    running.write(opts.fullData)
                running.closeStdin()
            result = await running.result
        except Exception as e:
            if self.outputError is not None:
                return EXIT_PIPE
            code = exitFor(_failure(e))
            if code is None:
                raise
            record.update(status=code[0], error=prefixed(prefix, code[1]))
            if opts.json:
                self._json(record, out, err)
            else:
                self.say(record["error"])
            return code[0]
        finally:
            if gate is not None:
                gate.close()
            for f in (onOut, onErr):
                if isinstance(f, _Labeller):
                    f.flush()
        status = result.exitStatus
        notes = []
        if result.truncated:
            status = EXIT_TRUNCATED
            notes.append(
                "%s: output truncated: the guest stopped the command at its --max-output limit"
                % (opts.command,)
            )
        elif result.timedOut:
            status = EXIT_TIMED_OUT
        if result.timedOut:
            notes.append("%s timed out on the guest" % (opts.command,))
        record.update(
            status=status,
            code=result.code,
            signal=result.signal,
            timed_out=result.timedOut,
            truncated=result.truncated,
        )
        if opts.json:
            self._json(record, out, err)
        else:
            for note in notes:
                self.say(prefix + note)
        return status

    def _json(self, record, out, err):
        textField(b"".join(out), "stdout", record)
        textField(b"".join(err), "stderr", record)
        self.stdout.write(json.dumps(record, sort_keys=True).encode() + b"\n")

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


def _failure(e):
    from twisted.python.failure import Failure

    return Failure(e)


def formatStatus(status):
    """
    A table of the daemon's VMs.
    """
    import time

    rows = [("VM", "STATE", "SINCE", "SESSION", "RTT", "STREAMS", "IN", "OUT", "RESYNCS", "RETRANS")]
    for vm in status.get("vms", []):
        age = vm.get("session_age")
        rtt = vm.get("rtt_ms")
        rows.append(
            (
                vm.get("name", "?"),
                vm.get("state", "?"),
                time.strftime("%H:%M:%S", time.localtime(vm.get("since", 0))),
                "-" if age is None else "%.0fs" % age,
                "-" if rtt is None else "%.2fms" % rtt,
                str(vm.get("streams_open", 0)),
                _size(vm.get("bytes_in", 0)),
                _size(vm.get("bytes_out", 0)),
                str(vm.get("resyncs", 0)),
                str(vm.get("retransmits", 0)),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for vm in status.get("vms", []):
        if vm.get("state") != "up":
            lines.append("%s: %s" % (vm.get("name"), vm.get("reason")))
    return "\n".join(lines) + "\n"


def _size(n):
    n = n or 0
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return ("%d%s" if unit == "B" else "%.1f%s") % (n, unit)
        n /= 1000.0


__all__ = [
    "AutoChannel",
    "CLIError",
    "EXIT_NO_ANSWER",
    "EXIT_TRUNCATED",
    "FramedRun",
    "StdinFanout",
    "StdinSource",
    "formatStatus",
    "prefixed",
]
