# -*- test-case-name: tests.system.test_cli_messages,tests.test_cli_split -*-
"""
What the CLI prints, and its exit codes: the C{prokshy: } message lines,
the C{[vm] } labels of several VMs' output, the C{--json} records (framed
and line protocol, with the same keys), the C{--status} table, and the
mapping of a remote result or a failure to an exit code.
"""

import base64
import json
import time

from twisted.internet.error import ConnectionDone, ConnectionLost

from prokshy.host.client import ExecFailed, SessionRefused
from prokshy.link.session import SessionEnded
from prokshy.streams.stream import StreamError, StreamRefused

EXIT_USAGE = 2
EXIT_TIMED_OUT = 124
EXIT_TRUNCATED = 125
EXIT_REFUSED = 126
EXIT_NOT_FOUND = 127
EXIT_TRANSPORT = 255
#: No hello answer and no byte of line-protocol output (auto mode).
EXIT_NO_ANSWER = EXIT_TRANSPORT

_REFUSAL_EXIT = {
    "no-such-command": EXIT_NOT_FOUND,
    "bad-name": EXIT_REFUSED,
    "not-executable": EXIT_REFUSED,
    "insecure": EXIT_REFUSED,
}


class CLIError(Exception):
    """
    An expected failure: a one-line message and an exit code.
    """

    def __init__(self, message, code):
        Exception.__init__(self, message)
        self.message = message
        self.code = code


def seconds(value):
    """
    C{0.3 s}, C{5 s}: a duration in a message.
    """
    return "%g s" % (value,)


def messageLine(message):
    """
    One message of the CLI's on stderr: C{prokshy: message LF}, as bytes.
    """
    return b"prokshy: " + message.encode("utf-8", "replace") + b"\n"


def prefixed(prefix, message):
    """
    C{prefix + message}, unless C{message} already starts with C{prefix}
    (the daemon's messages about a VM start with C{vm NAME: }).
    """
    if prefix and message.startswith(prefix):
        return message
    return prefix + message


def closedMessage(reason):
    """
    Why no session started when the connection ended first (C{reason}, a
    L{Failure}, or L{None} when it is not known).
    """
    if reason is None or reason.check(ConnectionDone, ConnectionLost):
        return (
            "the connection closed before a session started; a VM's console socket "
            "serves one client: is prokshy-host holding it?"
        )
    # A TLS handshake refused, a reset: say what it was.
    return "the connection was lost before a session started: %s" % (reason.getErrorMessage(),)


def noAnswerMessage(options, target, endedBy):
    """
    What was tried, in C{auto} mode, when neither a framed hello nor a byte
    of line-protocol output came back; C{endedBy} says how the line-protocol
    exchange ended (C{"idle"} or C{"closed"}).
    """
    where = " on %s" % (target,) if target else ""
    if endedBy == "closed":
        line = "until the connection closed"
    else:
        line = "for %s (--timeout)" % (seconds(options.timeout),)
    return (
        "no answer from a prokshy agent%s: tried the framed hello for %s (--fallback-after) "
        "and the original line protocol (%s) %s, and got no byte back (an original agent "
        "prints nothing for an unknown command or a command without output; "
        "--protocol legacy accepts an empty answer)"
        % (where, seconds(options.fallback_after), options.command, line)
    )


def lateAfterOutputMessage(written):
    """
    A framed agent answered after the fallback, once C{written} bytes of
    line-protocol output were written.
    """
    return (
        "a prokshy agent answered the framed hello after the fallback to the "
        "line protocol, when %d bytes of line-protocol output were already "
        "written: that output may be incomplete; run the command again" % (written,)
    )


# -- exit codes -----------------------------------------------------------


def exitFor(failure):
    """
    The exit code and message for a failed exec, or L{None} for a failure
    that is not an expected one.
    """
    if failure.check(StreamRefused):
        e = failure.value
        return _REFUSAL_EXIT.get(e.code, EXIT_TRANSPORT), str(e.message or e.code)
    if failure.check(SessionEnded, StreamError, ExecFailed, SessionRefused):
        return EXIT_TRANSPORT, str(failure.value)
    return None


def resultStatus(command, result):
    """
    The exit status for a remote command's result, and the notes to print
    about it: 125 when the guest cut its output at C{--max-output}, 124
    when the guest's timeout killed it, else the command's own status.

    @return: C{(status, notes)}.
    """
    status = result.exitStatus
    notes = []
    if result.truncated:
        status = EXIT_TRUNCATED
        notes.append(
            "%s: output truncated: the guest stopped the command at its --max-output limit" % (command,)
        )
    elif result.timedOut:
        status = EXIT_TIMED_OUT
    if result.timedOut:
        notes.append("%s timed out on the guest" % (command,))
    return status, notes


# -- labels -----------------------------------------------------------------


class Labeller:
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


# -- --json -------------------------------------------------------------------


def jsonLine(record, indent=None):
    """
    A record as one JSON document and a line end, as bytes (keys sorted).
    """
    return json.dumps(record, indent=indent, sort_keys=True).encode() + b"\n"


def textField(data, key, record):
    """
    Put C{data} in C{record} as C{key} if it is UTF-8, else as
    C{key_base64}.
    """
    try:
        record[key] = data.decode("utf-8")
    except UnicodeDecodeError:
        record[key + "_base64"] = base64.b64encode(data).decode("ascii")


def framedRecord(vm, command):
    """
    The start of a framed command's C{--json} result; the rest is added by
    L{finishRecord}, or as C{status} and C{error} for a failure.
    """
    return {"vm": vm, "command": command, "protocol": "framed"}


def finishRecord(record, status, result):
    """
    Add a framed result's fields to its record.
    """
    record.update(
        status=status,
        code=result.code,
        signal=result.signal,
        timed_out=result.timedOut,
        truncated=result.truncated,
    )
    return record


def withOutput(record, stdout, stderr):
    """
    Add the command's output (bytes) to its record.
    """
    textField(stdout, "stdout", record)
    textField(stderr, "stderr", record)
    return record


def legacyRecord(command, output):
    """
    The C{--json} result of a line-protocol exchange: the keys of a framed
    result, with what the line protocol tells.  It sends neither an exit
    status nor stderr, so C{code} and C{signal} are C{null}, C{stderr} is
    empty and C{status} is the CLI's exit status (0); C{protocol} is
    C{"line"} (a framed result says C{"framed"}).

    @type command: L{str}
    @type output: L{bytes}
    @rtype: L{dict}
    """
    record = {
        "vm": None,
        "command": command,
        "protocol": "line",
        "status": 0,
        "code": None,
        "signal": None,
        "timed_out": False,
        "truncated": False,
    }
    return withOutput(record, output, b"")


# -- --status -------------------------------------------------------------------


def formatStatus(status):
    """
    A table of the daemon's VMs.
    """
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
    "CLIError",
    "EXIT_NOT_FOUND",
    "EXIT_NO_ANSWER",
    "EXIT_REFUSED",
    "EXIT_TIMED_OUT",
    "EXIT_TRANSPORT",
    "EXIT_TRUNCATED",
    "EXIT_USAGE",
    "Labeller",
    "closedMessage",
    "exitFor",
    "finishRecord",
    "formatStatus",
    "framedRecord",
    "jsonLine",
    "lateAfterOutputMessage",
    "legacyRecord",
    "messageLine",
    "noAnswerMessage",
    "prefixed",
    "resultStatus",
    "seconds",
    "textField",
    "withOutput",
]
