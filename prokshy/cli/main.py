"""
The C{prokshy} command: run a guest command through the VM's console socket.

Exit codes (docs/cli.md, "Exit codes"; L{prokshy.cli.format.CAUSES} is the
table).  The remote command's status (128+N for signal N) when it ran;
else prokshy's own failure, by cause, as DEFAULT/RESERVED, the second with
C{--reserved-exit-codes} (the reserved range 200-220, one code per cause):

    usage 2/200             connect-failed 1/201     no-answer 255/202
    transport 255/203       vm-unavailable 255/204   refused 126/205
    not-found 127/206       busy 255/207             rejected 255/208
    unsupported 1/209       local-file 1/210         output 1/211
    stdout-closed 141/212   interrupted 130/213      checksum-mismatch 255/214
    too-big 1/215           timed-out 124/216        truncated 125/217
    some-vms-failed -/218   file-error 1/219         internal 255/220

  - C{--json}'s C{failure} is null when the command ran, else the cause's
    code (L{prokshy.cli.records}): it always tells the two apart.
  - several VMs (L{prokshy.cli.format.combine}): the largest status, and a
    summary line C{prokshy: N of M VMs failed: vm X: CODE, ...} when prokshy
    failed on some; reserved: 218 when it failed on some but not all (or on
    all for different causes).
  - line protocol (the original agent): C{0} when the exchange ended (after
    C{--timeout} seconds of silence, or when the other end closed the
    connection): the remote command's exit status is not sent.  In C{auto}
    mode a fallback that got no byte back is C{no-answer}.
  - forwarding (L{prokshy.cli.forwards}), with a daemon: C{0} once done;
    C{1} when the daemon or the guest refused (one line, C{prokshy: forward
    SPEC: CODE: MESSAGE}; reserved: the refusal's cause); C{2} for a
    malformed SPEC, checked before connecting; on a VM's own socket
    C{--forward} and C{--reverse} are served in the foreground until SIGINT
    or SIGTERM: C{130}.
  - C{141}: stdout was closed by its reader (C{| head}): the remote
    commands are cancelled and the CLI exits quietly, as C{cat} killed by
    SIGPIPE does.

stdout and stderr are written without blocking the reactor (see
L{prokshy.cli.output}): a slow reader holds the remote command back
through the framed protocol's credit, and keepalives go on meanwhile.
"""

import os
import re
import sys

from twisted.internet import error, task
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import UNIXClientEndpoint, clientFromString
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from prokshy.cli.fallback import AutoChannel
from prokshy.cli import records
from prokshy.cli.format import EXIT_TRUNCATED, CLIError, exitStatus, legacyRecord, messageLine
from prokshy.cli.forwards import ForwardRun
from prokshy.cli.framed import FramedRun
from prokshy.cli.legacy import OutputError, runLegacy
from prokshy.cli.options import parseArgs
from prokshy.cli.output import EXIT_PIPE, Collector, FileOutput, IOutput, isClosedPipe, openOutput

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 255

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PIPE",
    "EXIT_TRUNCATED",
    "EXIT_USAGE",
    "exitCodeForFailure",
    "internalError",
    "main",
    "run",
]


def _describeConnectError(exc):
    """
    A short reason for a connection failure, like C{No such file or
    directory}.
    """
    code = getattr(exc, "osError", None)
    if isinstance(code, int) and code:
        return os.strerror(code)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = exc.args[0] if exc.args and exc.args[0] else None
    return str(text) if text else str(exc)


def _report(message, stderr=None):
    """
    Write C{prokshy: message} to stderr: a text stream, or one of the CLI's
    outputs (bytes, not blocking).
    """
    stderr = sys.stderr if stderr is None else stderr
    if IOutput.providedBy(stderr):
        stderr.write(messageLine(message))
        return
    stderr.write(f"prokshy: {message}\n")
    stderr.flush()


def exitCodeForFailure(failure, socketPath, stderr=None, options=None, stdout=None):
    """
    Turn an expected failure of the exchange into an exit code, reporting it
    on stderr in one line (with C{--json}, as a record on C{stdout}
    instead). Unexpected failures are returned unchanged.

    A closed output pipe is L{EXIT_PIPE}, without a message.
    """
    if failure.check(error.ConnectError, OSError):
        reason = _describeConnectError(failure.value)
        return _failedRun(options, stdout, stderr, "connect-failed",
                          f"cannot connect to {socketPath}: {reason}", EXIT_FAILURE)
    if failure.check(OutputError):
        e = failure.value.error
        if isClosedPipe(e):
            return _exitCode(options, "stdout-closed", EXIT_PIPE)
        _report(f"cannot write output: {getattr(e, 'strerror', None) or e}", stderr)
        return _exitCode(options, "output", EXIT_FAILURE)
    return failure


# -- --json records and --reserved-exit-codes for failures before any mode ran --


def _reserved(options):
    return bool(getattr(options, "reserved_exit_codes", False))


def _exitCode(options, failure, default):
    """
    The exit code of prokshy's own failure C{failure}: C{default}, or its
    reserved code with C{--reserved-exit-codes} (docs/cli.md).
    """
    return exitStatus(failure, True) if _reserved(options) else default


def _failedRun(options, stdout, stderr, failure, message, default):
    """
    A failure of the whole run (nothing reached a VM, or the run could not
    go on): with C{--json} one record per VM named (one with C{vm} null
    otherwise) on C{stdout}, else the message on stderr.

    @return: the exit code.
    """
    code = _exitCode(options, failure, default)
    if options is not None and stdout is not None and options.json:
        mode = getattr(options, "mode", None) or "exec"
        for vm in list(options.vm or [None]):
            extra = {"command": options.command} if mode == "exec" else {}
            r = records.record(mode, vm, protocol=None, **extra)
            records.failed(r, code, failure, message)
            stdout.write(records.line(r))
    else:
        _report(message, stderr)
    return code


def _target(options):
    return options.socket_path if options.socket_path is not None else options.connect


_KNOWN_PREFIXES = ("tcp", "tcp6", "unix", "ssl", "tls", "tor", "onion", "systemd", "stdio", "fd")


def connectHint(text):
    """
    A suggestion for a C{--connect} value that is not an endpoint string:
    C{tcp:host=H:port=P} for C{H:P} or a bare port, C{unix:path=...} for a
    path.

    @rtype: L{str} or L{None}
    """
    text = text.strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)", text)
    if m:
        return "tcp6:host=%s:port=%s" % (m.group(1).replace(":", "\\:"), m.group(2))
    m = re.fullmatch(r"([A-Za-z0-9._-]+):(\d+)", text)
    if m and m.group(1).lower() not in _KNOWN_PREFIXES:
        return "tcp:host=%s:port=%s" % m.groups()
    if text.isdigit():
        return "tcp:host=127.0.0.1:port=%s" % (text,)
    if text.startswith(("/", "./", "~")):
        return "unix:path=%s (or --socket-path %s)" % (text, text)
    return None


def _endpoint(reactor, options):
    if options.socket_path is not None:
        return UNIXClientEndpoint(reactor, options.socket_path)
    try:
        return clientFromString(reactor, options.connect)
    except (ValueError, KeyError, TypeError) as e:
        hint = connectHint(options.connect)
        if hint is None:
            hint = "tcp:host=127.0.0.1:port=7000 or unix:path=/path/to/prokshy-host.sock"
            advice = "an endpoint string looks like %s" % (hint,)
        else:
            advice = "did you mean %s?" % (hint,)
        raise CLIError(f"bad --connect endpoint {options.connect!r}: {e}; {advice}", EXIT_USAGE)


class _Nowhere:
    def write(self, data):
        pass


def run(reactor, options, output=None, errors=None, current=None):
    """
    Run what C{options} describe.

    @param options: the result of L{parseArgs}.
    @param output: a file descriptor number, or a binary file-like object;
        file descriptor 1 by default.
    @param errors: the same for messages and the commands' stderr; file
        descriptor 2 by default.
    @param current: a list that receives the L{FramedRun}, for interrupts.
    @return: a L{Deferred} firing with the exit code, once the output is
        written.
    """
    return ensureDeferred(_run(reactor, options, output, errors, current))


async def _run(reactor, options, output, errors, current):
    try:
        stderr = openOutput(reactor, 2 if errors is None else errors, "stderr")
    except OSError:
        stderr = FileOutput(_Nowhere(), "stderr")
    try:
        stdout = openOutput(reactor, 1 if output is None else output, "stdout")
    except OSError as e:
        _report(f"cannot write output: {e.strerror or e}", stderr)
        await stderr.close()
        return EXIT_FAILURE
    try:
        records.streamEvents(getattr(options, "json_stream", False))
        try:
            if options.protocol == "legacy":
                code = await _runLegacy(reactor, options, stdout)
            else:
                code = await _runFramed(reactor, options, stdout, stderr, current)
        except Exception:
            code = exitCodeForFailure(Failure(), _target(options), stderr, options, stdout)
            if isinstance(code, Failure):
                code.raiseException()
        await stdout.close()
        if stdout.lost and code not in (EXIT_PIPE, _exitCode(options, "stdout-closed", EXIT_PIPE)):
            code = exitCodeForFailure(Failure(OutputError(stdout.error)), None, stderr, options)
        await stderr.close()
    finally:
        stdout.restore()
        stderr.restore()
    return code


async def _runFramed(reactor, options, stdout, stderr, current):
    try:
        endpoint = _endpoint(reactor, options)
    except CLIError as e:
        return _failedRun(options, stdout, stderr, e.failure, e.message, e.code)
    channel = AutoChannel(reactor, options, stdout, _target(options))
    await endpoint.connect(Factory.forProtocol(lambda: channel))
    try:
        mode, value = await channel.decided
    except CLIError as e:
        return _failedRun(options, stdout, stderr, e.failure, e.message, e.code)
    if mode == "legacy":
        return value
    host = value
    if options.forward_mode is not None:
        framed = ForwardRun(reactor, host, channel, endpoint, options, stdout, stderr, _target(options))
    elif options.mode in ("push", "pull"):
        from prokshy.cli.files import FileRun

        framed = FileRun(reactor, host, options, stdout, stderr)
    elif options.tty:
        from prokshy.cli.tty import TTYRun

        framed = TTYRun(reactor, host, options, stdout, stderr)
    else:
        framed = FramedRun(reactor, host, options, stdout, stderr)
    if current is not None:
        current.append((framed, channel))
    try:
        code = await framed.run()
    except CLIError as e:
        code = _failedRun(options, stdout, stderr, e.failure, e.message, e.code)
    finally:
        if host.link is not None:
            host.link.goodbye("done")
        await channel.close()
    return code


async def _runLegacy(reactor, options, stdout):
    endpoint = UNIXClientEndpoint(reactor, options.socket_path)
    output = Collector() if options.json else stdout
    code = await runLegacy(
        reactor,
        endpoint,
        options.command.encode("ascii"),
        options.data,
        output,
        options.timeout,
    )
    if options.json:
        records.writeLine(stdout.write, legacyRecord(options.command, b""), output.getvalue())
    return code


def _main(reactor, options):
    """
    L{task.react}'s main function: run, and turn the exit code into the
    L{SystemExit} that L{task.react} exits with.
    """
    result = Deferred()
    current = []

    def interrupted():
        # The reactor is stopping before the exchange ended: a signal.
        if not result.called:
            closing = [framed.interrupt(channel) for framed, channel in current]
            result.errback(SystemExit(_exitCode(options, "interrupted", EXIT_INTERRUPTED)))
            if closing:
                return DeferredList(closing)

    reactor.addSystemEventTrigger("before", "shutdown", interrupted)

    def finished(code):
        if not result.called:
            result.errback(SystemExit(code))

    def failed(failure):
        if not result.called:
            result.errback(SystemExit(_exitCode(options, "internal", internalError(failure))))

    run(reactor, options, current=current).addCallbacks(finished, failed)
    return result


def internalError(failure, stderr=None):
    """
    An unexpected failure (a bug): one line on stderr, the traceback in a
    file, as the original CLI did, and the transport-failure exit code.

    @return: L{EXIT_INTERNAL}.
    """
    import tempfile

    try:
        fd, path = tempfile.mkstemp(prefix="prokshy-error-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(failure.getTraceback())
        where = f" (details in {path})"
    except OSError:
        where = ""
    _report(f"internal error: {failure.getErrorMessage()}{where}", stderr)
    return EXIT_INTERNAL


def main(argv=None):
    """
    The C{prokshy} console script.

    @param argv: the arguments without the program name; L{None} for
        C{sys.argv[1:]}.
    @raise SystemExit: always, with the exit code.
    """
    options = parseArgs(argv)
    task.react(_main, (options,))


if __name__ == "__main__":
    main()
