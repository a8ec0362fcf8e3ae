# -*- test-case-name: tests.system.test_cli_messages,tests.test_cli_split -*-
"""
What the CLI prints, and its exit codes: the C{prokshy: } message lines,
the C{[vm] } labels of several VMs' output, the C{--json} records (framed
and line protocol, with the same keys), the C{--status} table, and the
mapping of a remote result or a failure to an exit code.
"""

import json
import time

from twisted.internet.error import ConnectionDone, ConnectionLost

from prokshy.cli import records
from prokshy.host.client import ExecFailed, SessionRefused
from prokshy.link.session import SessionEnded
from prokshy.streams.stream import StreamError, StreamRefused

# -- the exit-code table (docs/cli.md, "Exit codes") ----------------------------
#
# Without --reserved-exit-codes prokshy's own failures share the codes of
# the original tool, ssh and timeout(1) (the DEFAULT column); with it each
# cause has its own code in RESERVED_RANGE (the RESERVED column), so that it
# cannot be taken for the command's status (a command that itself exits
# with 200-220 is the one ambiguity left: --json's "failure" always says).

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_TIMED_OUT = 124
EXIT_TRUNCATED = 125
EXIT_REFUSED = 126
EXIT_NOT_FOUND = 127
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141
EXIT_TRANSPORT = 255
#: No hello answer and no byte of line-protocol output (auto mode).
EXIT_NO_ANSWER = EXIT_TRANSPORT
#: Push/pull: the sha256 (or size) differs end to end: the data was not
#: carried intact, a transport failure.
EXIT_CHECKSUM = EXIT_TRANSPORT
#: A local file could not be read or written.
EXIT_LOCAL_FILE = EXIT_FAILURE
#: The guest or daemon does not serve what was asked (an older agent).
EXIT_UNSUPPORTED = EXIT_FAILURE
#: --json's in-memory limit (JSON_OUTPUT_LIMIT); --json-stream has none.
EXIT_TOO_BIG = EXIT_FAILURE
EXIT_INTERNAL = EXIT_TRANSPORT

#: The codes --reserved-exit-codes uses (inclusive).
RESERVED_RANGE = (200, 220)

#: Each cause: (its name in docs/cli.md, the default code, the reserved
#: code).  The names are the --json "failure" codes where there is one
#: (a refusal's code is mapped by REFUSAL_CAUSES).
CAUSES = {
    "usage": (EXIT_USAGE, 200),
    "connect-failed": (EXIT_FAILURE, 201),
    "no-answer": (EXIT_NO_ANSWER, 202),
    "transport": (EXIT_TRANSPORT, 203),
    "vm-unavailable": (EXIT_TRANSPORT, 204),
    "refused": (EXIT_REFUSED, 205),
    "not-found": (EXIT_NOT_FOUND, 206),
    "busy": (EXIT_TRANSPORT, 207),
    "rejected": (EXIT_TRANSPORT, 208),
    "unsupported": (EXIT_UNSUPPORTED, 209),
    "local-file": (EXIT_LOCAL_FILE, 210),
    "output": (EXIT_FAILURE, 211),
    "stdout-closed": (EXIT_PIPE, 212),
    "interrupted": (EXIT_INTERRUPTED, 213),
    "checksum-mismatch": (EXIT_CHECKSUM, 214),
    "too-big": (EXIT_TOO_BIG, 215),
    "timed-out": (EXIT_TIMED_OUT, 216),
    "truncated": (EXIT_TRUNCATED, 217),
    "some-vms-failed": (None, 218),
    "file-error": (EXIT_FAILURE, 219),
    "internal": (EXIT_INTERNAL, 220),
}

#: The guest's and the daemon's refusal and reset codes, and the CLI's own
#: failure codes (prokshy.cli.records.FAILURES), by cause; any other code
#: is "rejected".
REFUSAL_CAUSES = {
    "usage": "usage",
    "connect-failed": "connect-failed",
    "no-answer": "no-answer",
    "transport": "transport",
    "vm-unavailable": "vm-unavailable",
    "no-such-vm": "vm-unavailable",
    "bad-name": "refused",
    "not-executable": "refused",
    "insecure": "refused",
    "not-allowed": "refused",
    "not-a-file": "refused",
    "no-such-command": "not-found",
    "no-such-file": "not-found",
    "busy": "busy",
    "too-many-streams": "busy",
    "unsupported": "unsupported",
    "unknown-kind": "unsupported",
    "local-file": "local-file",
    "output": "output",
    "stdout-closed": "stdout-closed",
    "interrupted": "interrupted",
    "checksum-mismatch": "checksum-mismatch",
    "too-big": "too-big",
    "file-error": "file-error",
    "file-changed": "file-error",
    "session-refused": "rejected",
    "internal": "internal",
}


def causeOf(failure):
    """
    The cause (a key of L{CAUSES}) of a C{--json} C{failure} code.
    """
    return REFUSAL_CAUSES.get(failure, "rejected")


def exitStatus(failure, reserved=False):
    """
    The exit code for prokshy's own failure C{failure} (a C{--json}
    C{failure} code: the guest's or the daemon's refusal code, or one of
    L{prokshy.cli.records.FAILURES}).

    @param reserved: C{--reserved-exit-codes}.
    """
    default, code = CAUSES[causeOf(failure)]
    return code if reserved else default


def reservedFor(cause):
    """
    The reserved exit code of a cause (a key of L{CAUSES}).
    """
    return CAUSES[cause][1]


#: The old name of the refusal mapping (exit codes without
#: --reserved-exit-codes).
_REFUSAL_EXIT = {code: exitStatus(code) for code in ("no-such-command", "bad-name", "not-executable", "insecure")}


class CLIError(Exception):
    """
    An expected failure: a one-line message and an exit code.

    @ivar failure: its C{--json} C{failure} code (L{records.FAILURES}, or a
        refusal's code); by default C{usage} for exit code 2,
        C{unsupported} for 1 and C{transport} otherwise.
    """

    def __init__(self, message, code, failure=None):
        Exception.__init__(self, message)
        self.message = message
        self.code = code
        if failure is None:
            failure = {EXIT_USAGE: "usage", EXIT_UNSUPPORTED: "unsupported"}.get(code, "transport")
        self.failure = failure


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


def failureOf(failure):
    """
    The C{--json} C{failure} code and the message of a failed stream, or
    L{None} for a failure that is not an expected one: a refusal's or a
    reset's code as it is (C{no-such-command}, C{vm-unavailable},
    C{checksum-mismatch}, ...; a reset with a code of no known cause, and a
    session or stream that ended without a result: C{transport}).

    @return: C{(failure, message)} or L{None}.
    """
    if failure.check(StreamRefused):
        e = failure.value
        return str(e.code), str(e.message or e.code)
    if failure.check(StreamError):
        e = failure.value
        code = str(e.code) if e.code in REFUSAL_CAUSES else "transport"
        return code, str(e)
    if failure.check(SessionEnded, ExecFailed, SessionRefused):
        return "transport", str(failure.value)
    return None


def exitFor(failure, reserved=False):
    """
    The exit code and message for a failed exec, or L{None} for a failure
    that is not an expected one (L{failureOf}, L{exitStatus}).
    """
    known = failureOf(failure)
    if known is None:
        return None
    return exitStatus(known[0], reserved), known[1]


def resultStatus(command, result, reserved=False):
    """
    The exit status for a remote command's result, and the notes to print
    about it: 125 when the guest cut its output at C{--max-output}, 124
    when the guest's timeout killed it (217 and 216 with
    C{--reserved-exit-codes}), else the command's own status.

    @return: C{(status, notes)}.
    """
    status = result.exitStatus
    notes = []
    if result.truncated:
        status = reservedFor("truncated") if reserved else EXIT_TRUNCATED
        notes.append(
            "%s: output truncated: the guest stopped the command at its --max-output limit" % (command,)
        )
    elif result.timedOut:
        status = reservedFor("timed-out") if reserved else EXIT_TIMED_OUT
    if result.timedOut:
        notes.append("%s timed out on the guest" % (command,))
    return status, notes


#: The failed VMs a summary line names at most (then "and N more").
SUMMARY_VMS = 8


def combine(results, reserved=False):
    """
    The exit status of a run on several VMs (docs/cli.md, "Several VMs"),
    and the summary line to print when prokshy failed on some of them.

    A VM I{failed} when prokshy could not do its part there (its record's
    C{failure} is not L{None}: the VM is down, the command was refused, the
    session was lost...); a command that ran and exited non-zero did not
    fail in this sense.  The status is the largest of the VMs' statuses
    (0 only when every VM's is 0), as before; with C{--reserved-exit-codes}
    it is 218 (some VMs failed) when prokshy failed on some VMs but not
    all, or on all of them for different causes.

    @param results: C{(vm, status, failure)} for each VM, in order.
    @return: C{(status, summary)}; C{summary} is L{None} or one line like
        C{1 of 3 VMs failed: vm c: vm-unavailable}.
    """
    results = list(results)
    if not results:
        return EXIT_OK, None
    status = max(code for vm, code, failure in results)
    failed = [(vm, failure) for vm, code, failure in results if failure is not None]
    summary = None
    if len(results) > 1 and failed:
        named = ["vm %s: %s" % ("default" if vm is None else vm, failure) for vm, failure in failed]
        if len(named) > SUMMARY_VMS:
            # One line stays one line: each VM's own message said the rest.
            named = named[:SUMMARY_VMS] + ["and %d more" % (len(named) - SUMMARY_VMS,)]
        summary = "%d of %d VMs failed: %s" % (len(failed), len(results), ", ".join(named))
        if reserved:
            causes = set(causeOf(failure) for vm, failure in failed)
            if len(failed) < len(results) or len(causes) > 1:
                status = reservedFor("some-vms-failed")
    return status, summary


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


def execRecord(vm, command, protocol="framed"):
    """
    The start of an exec's C{--json} record (L{prokshy.cli.records}): the
    rest is added by L{finishRecord}, or by L{records.failed}.
    """
    return records.record("exec", vm, command=command, protocol=protocol)


def finishRecord(record, status, result):
    """
    Add a framed result's fields to its record: the command ran (C{failure}
    stays L{None}); C{ok} when its status is 0.
    """
    record.update(
        ok=status == 0,
        status=status,
        code=result.code,
        signal=result.signal,
        timed_out=result.timedOut,
        truncated=result.truncated,
    )
    return record


def legacyRecord(command, output):
    """
    The C{--json} record of a line-protocol exchange: an exec record with
    what the line protocol tells.  It sends neither an exit status nor
    stderr, so C{code} and C{signal} are C{null}, C{stderr} is empty,
    C{status} is the CLI's exit status (0) and C{ok} is true once the
    exchange ended with an answer; C{protocol} is C{"line"}.

    @type command: L{str}
    @type output: L{bytes}
    @rtype: L{dict}
    """
    record = execRecord(None, command, protocol="line")
    record.update(ok=True, status=0)
    return records.setOutput(record, output, b"")


# -- --list -------------------------------------------------------------------


def formatCommands(commands):
    """
    The C{--list} table: C{NAME  DESCRIPTION}, the descriptions aligned
    after the longest name; a command without a description is its name
    alone.  Control characters in a description are shown as C{?}.

    @param commands: the guest's C{commands} (dicts with C{name} and
        C{description}).
    @rtype: L{str}
    """
    rows = [(str(c.get("name")), c.get("description")) for c in commands]
    width = max((len(name) for name, description in rows), default=0)
    lines = []
    for name, description in rows:
        if description:
            text = "".join("?" if ord(ch) < 32 or ord(ch) == 127 else ch for ch in str(description))
            lines.append("%s  %s" % (name.ljust(width), text))
        else:
            lines.append(name)
    return "".join(line + "\n" for line in lines)


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
    "CAUSES",
    "CLIError",
    "EXIT_CHECKSUM",
    "EXIT_FAILURE",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_LOCAL_FILE",
    "EXIT_NOT_FOUND",
    "EXIT_NO_ANSWER",
    "EXIT_OK",
    "EXIT_PIPE",
    "EXIT_REFUSED",
    "EXIT_TIMED_OUT",
    "EXIT_TOO_BIG",
    "EXIT_TRANSPORT",
    "EXIT_TRUNCATED",
    "EXIT_UNSUPPORTED",
    "EXIT_USAGE",
    "Labeller",
    "REFUSAL_CAUSES",
    "RESERVED_RANGE",
    "causeOf",
    "closedMessage",
    "combine",
    "execRecord",
    "exitFor",
    "exitStatus",
    "failureOf",
    "finishRecord",
    "formatCommands",
    "formatStatus",
    "jsonLine",
    "lateAfterOutputMessage",
    "legacyRecord",
    "messageLine",
    "noAnswerMessage",
    "prefixed",
    "reservedFor",
    "resultStatus",
    "seconds",
]
