# -*- test-case-name: tests.test_cli_framed -*-
"""
The CLI's framed mode: say a hello, and either run over the framed protocol
or, when no framed hello answers in time (the original shell agent), fall
back to the legacy exchange on the same connection.
"""

import base64
import json
import os
import stat

from twisted.internet import fdesc
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from prokshy.cli.legacy import LegacyExchange
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
EXIT_REFUSED = 126
EXIT_NOT_FOUND = 127
EXIT_TRANSPORT = 255

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


class AutoChannel(Protocol):
    """
    Says a framed hello; in C{auto} mode falls back to the legacy exchange
    when no answer comes within C{fallbackAfter} seconds.

    @ivar decided: fires with C{("framed", HostProtocol)} or
        C{("legacy", LegacyExchange)}.
    """

    def __init__(self, reactor, options, output):
        self.reactor = reactor
        self.options = options
        self.output = output
        config = LinkConfig(window=HOST_WINDOW, maxPayload=HOST_PAYLOAD, auth=options.token)
        self.host = HostProtocol(reactor, config)
        self.legacy = None
        self.decided = Deferred()
        self.closed = Deferred()
        self._timer = None
        self._lostReason = None

    def connectionMade(self):
        self.host.makeConnection(self.transport)
        self.host.whenSession().addCallbacks(self._framed, self._failed)
        if self.options.protocol == "auto" and self.options.connect is None:
            self._timer = self.reactor.callLater(self.options.fallback_after, self._fallback)
        else:
            wait = max(5.0, self.options.fallback_after)
            self._timer = self.reactor.callLater(wait, self._noAnswer, wait)

    def _cancelTimer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _framed(self, session):
        self._cancelTimer()
        if not self.decided.called:
            self.decided.callback(("framed", self.host))

    def _failed(self, failure):
        self._cancelTimer()
        if not self.decided.called:
            if failure.check(SessionRefused):
                failure = CLIError("refused: %s" % (failure.value,), EXIT_TRANSPORT)
            elif failure.check(SessionEnded):
                failure = CLIError(self._closedMessage(), EXIT_TRANSPORT)
            self.decided.errback(failure)

    def _noAnswer(self, wait):
        self._timer = None
        if not self.decided.called:
            self.host.link.stop("no answer")
            self.transport.loseConnection()
            self.decided.errback(
                CLIError("no framed hello answer within %g s" % (wait,), EXIT_TRANSPORT)
            )

    def _fallback(self):
        self._timer = None
        if self.decided.called:
            return
        # Everything received so far was echo of our hellos; the line
        # protocol starts clean after them (each hello line ends with LF).
        self.host.link.stop("falling back to the line protocol")
        opts = self.options
        self.legacy = LegacyExchange(
            opts.command.encode("ascii"), opts.data, self.output, opts.timeout, self.reactor
        )
        self.legacy.makeConnection(self.transport)
        self.decided.callback(("legacy", self.legacy))

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
            self.decided.errback(CLIError(self._closedMessage(), EXIT_TRANSPORT))

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
    then calls C{onEnd}.  Pipes and terminals are read when readable;
    regular files, which are always readable, a chunk per reactor turn.
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
        if not self._regular:
            fdesc.setNonBlocking(fd)
        self._reader = _FDReader(self) if not self._regular else None

    def start(self):
        self.resumeProducing()

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


def _text(data, key, out):
    try:
        out[key] = data.decode("utf-8")
    except UnicodeDecodeError:
        out[key + "_base64"] = base64.b64encode(data).decode("ascii")


class FramedRun:
    """
    What the CLI does once a framed session is up.
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

    @property
    def isDaemon(self):
        return self.hello.get("server") == "prokshy-host"

    def say(self, message):
        self.stderr.write(b"prokshy: " + message.encode("utf-8", "replace") + b"\n")
        self.stderr.flush()

    def _write(self, stream):
        def write(data):
            stream.write(data)
            stream.flush()

        return write

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
            return await self._status()
        if opts.info:
            return await self._info()
        return await self._exec()

    async def _status(self):
        if not self.isDaemon:
            return await self._info()
        status = await self.session.status()
        if self.options.json:
            self.stdout.write(json.dumps(status, indent=2, sort_keys=True).encode() + b"\n")
        else:
            self.stdout.write(formatStatus(status).encode("utf-8"))
        self.stdout.flush()
        return 0

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
                self.say(("vm %s: " % vm if vm else "") + code[1])
                worst = max(worst, code[0])
                continue
            if vm is not None:
                info = dict(info, vm=vm)
            self.stdout.write(json.dumps(info, sort_keys=True).encode() + b"\n")
            self.stdout.flush()
        return worst

    async def _exec(self):
        opts = self.options
        vms = self.targets()
        if not vms:
            raise CLIError("the daemon has no VMs", EXIT_TRANSPORT)
        labelled = len(vms) > 1 and not opts.json
        streamStdin = opts.stdin and len(vms) == 1
        stdinData = opts.fullData
        if opts.stdin and not streamStdin:
            stdinData = _readAll(self.stdinFD)
        runs = [self._one(vm, labelled, stdinData, streamStdin) for vm in vms]
        results = await DeferredList([ensureDeferred(r) for r in runs], consumeErrors=True)
        codes = []
        for ok, value in results:
            if not ok:
                value.raiseException()
            codes.append(value)
        return max(codes) if codes else 0

    async def _one(self, vm, labelled, stdinData, streamStdin):
        opts = self.options
        label = vm if vm is not None else "default"
        out, err = [], []
        if opts.json:
            onOut, onErr = out.append, err.append
        elif labelled:
            onOut = _Labeller(label, self._write(self.stdout))
            onErr = _Labeller(label, self._write(self.stderr))
        else:
            onOut, onErr = self._write(self.stdout), self._write(self.stderr)
        record = {"vm": vm, "command": opts.command}
        prefix = "vm %s: " % (vm,) if vm is not None and (labelled or opts.json) else ""
        try:
            running = await self.session.execStream(
                opts.command, onOut, onErr, timeout=opts.exec_timeout, vm=vm
            )
            self.running.append(running)
            if streamStdin:
                source = StdinSource(self.reactor, self.stdinFD, running.write, running.closeStdin)
                running.registerProducer(source, True)
                source.start()
            else:
                if stdinData:
                    running.write(stdinData)
                running.closeStdin()
            result = await running.result
        except Exception as e:
            code = exitFor(_failure(e))
            if code is None:
                raise
            record.update(status=code[0], error=code[1])
            if opts.json:
                self._json(record, out, err)
            else:
                self.say(prefix + code[1])
            return code[0]
        finally:
            for f in (onOut, onErr):
                if isinstance(f, _Labeller):
                    f.flush()
        status = result.exitStatus
        notes = []
        if result.timedOut:
            status = EXIT_TIMED_OUT
            notes.append("%s timed out on the guest" % (opts.command,))
        if result.truncated:
            notes.append("%s: output truncated at the guest's --max-output" % (opts.command,))
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
        _text(b"".join(out), "stdout", record)
        _text(b"".join(err), "stderr", record)
        self.stdout.write(json.dumps(record, sort_keys=True).encode() + b"\n")
        self.stdout.flush()

    def interrupt(self, channel):
        """
        Ctrl-C: cancel remote commands and end the session cleanly.

        @return: a Deferred firing once the connection is closed (at most
            a second later), so the RESETs and GOODBYE leave before exit.
        """
        for running in self.running:
            try:
                running.cancel()
            except Exception:
                pass
        if self.host.link is not None:
            self.host.link.goodbye("client interrupted")
        return channel.close(timeout=1.0)


def _failure(e):
    from twisted.python.failure import Failure

    return Failure(e)


def _readAll(fd):
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            import select

            select.select([fd], [], [])
            continue
        if not data:
            return b"".join(chunks)
        chunks.append(data)


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


__all__ = ["AutoChannel", "CLIError", "FramedRun", "StdinSource", "formatStatus"]
