"""
The C{prokshy} command: run a guest command through the VM's console socket.

Exit codes:

  - framed protocol: the remote command's exit status, or 128+N when
    signal N ended it; 124 when the guest's timeout killed it; 126 when the
    guest refused it (bad name, not executable, insecure); 127 when there
    is no such command; 255 on a transport failure (the session ended, the
    VM is unavailable, no session could be started).
  - line protocol (the original agent): C{0} when the exchange ended (after
    C{--timeout} seconds of silence, or when the other end closed the
    connection). As in the original tool this says nothing about the remote
    command, whose exit status is not sent.
  - C{1}: the socket could not be connected to, or the output could not be
    written. A one-line message goes to stderr.
  - C{2}: usage error.
  - C{130}: interrupted (the reactor was stopped by a signal).
"""

import errno
import os
import sys

from twisted.internet import error, task
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import UNIXClientEndpoint, clientFromString
from twisted.internet.protocol import Factory

from prokshy.cli.framed import AutoChannel, CLIError, FramedRun
from prokshy.cli.legacy import OutputError, runLegacy
from prokshy.cli.options import parseArgs

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 255


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
    Write C{prokshy: message} to stderr.
    """
    stderr = sys.stderr if stderr is None else stderr
    stderr.write(f"prokshy: {message}\n")
    stderr.flush()


def exitCodeForFailure(failure, socketPath, stderr=None):
    """
    Turn an expected failure of the exchange into an exit code, reporting it
    on stderr in one line. Unexpected failures are returned unchanged.
    """
    if failure.check(error.ConnectError, OSError):
        reason = _describeConnectError(failure.value)
        _report(f"cannot connect to {socketPath}: {reason}", stderr)
        return EXIT_FAILURE
    if failure.check(OutputError):
        e = failure.value.error
        if e.errno != errno.EPIPE:
            _report(f"cannot write output: {e.strerror or e}", stderr)
        return EXIT_FAILURE
    return failure


def _target(options):
    return options.socket_path if options.socket_path is not None else options.connect


def _endpoint(reactor, options):
    if options.socket_path is not None:
        return UNIXClientEndpoint(reactor, options.socket_path)
    try:
        return clientFromString(reactor, options.connect)
    except (ValueError, KeyError, TypeError) as e:
        raise CLIError(f"bad --connect endpoint {options.connect!r}: {e}", EXIT_USAGE)


def run(reactor, options, output=None, errors=None, current=None):
    """
    Run what C{options} describe.

    @param options: the result of L{parseArgs}.
    @param output: a binary file-like object; C{sys.stdout.buffer} by
        default.
    @param errors: a binary file-like object; C{sys.stderr.buffer} by
        default.
    @param current: a list that receives the L{FramedRun}, for interrupts.
    @return: a L{Deferred} firing with the exit code.
    """
    if output is None:
        output = sys.stdout.buffer
    if errors is None:
        errors = sys.stderr.buffer
    if options.protocol == "legacy":
        d = _runLegacy(reactor, options, output)
    else:
        d = ensureDeferred(_runFramed(reactor, options, output, errors, current))
    if output is sys.stdout.buffer:
        d.addErrback(_stdoutBroken)
    d.addErrback(exitCodeForFailure, _target(options))
    return d


async def _runFramed(reactor, options, output, errors, current):
    try:
        endpoint = _endpoint(reactor, options)
    except CLIError as e:
        _report(e.message)
        return e.code
    channel = AutoChannel(reactor, options, output)
    await endpoint.connect(Factory.forProtocol(lambda: channel))
    try:
        mode, proto = await channel.decided
    except CLIError as e:
        _report(e.message)
        return e.code
    if mode == "legacy":
        return await proto.done
    framed = FramedRun(reactor, proto, options, output, errors)
    if current is not None:
        current.append((framed, channel))
    try:
        code = await framed.run()
    except CLIError as e:
        _report(e.message)
        code = e.code
    if proto.link is not None:
        proto.link.goodbye("done")
    await channel.close()
    return code


def _runLegacy(reactor, options, output):
    endpoint = UNIXClientEndpoint(reactor, options.socket_path)
    d = runLegacy(
        reactor,
        endpoint,
        options.command.encode("ascii"),
        options.data,
        output,
        options.timeout,
    )
    return d


def _stdoutBroken(failure):
    """
    After a broken pipe on stdout, point stdout at C{/dev/null} so that the
    interpreter's final flush does not complain; pass the failure on.
    """
    if failure.check(OutputError) and failure.value.error.errno == errno.EPIPE:
        _silenceStdout()
    return failure


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
            result.errback(SystemExit(EXIT_INTERRUPTED))
            if closing:
                return DeferredList(closing)

    reactor.addSystemEventTrigger("before", "shutdown", interrupted)

    def finished(code):
        if not result.called:
            result.errback(SystemExit(code))

    def failed(failure):
        if not result.called:
            result.errback(SystemExit(internalError(failure)))

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


def _silenceStdout():
    """
    Point the stdout file descriptor at C{/dev/null}.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


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
