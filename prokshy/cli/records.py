# -*- test-case-name: tests.unit.test_cli_records -*-
"""
The one shape of every C{--json} result (docs/cli.md, "JSON output").

Every mode (exec, status, info, list, forwards, push, pull) prints
records with the same keys, success or failure:

  - C{vm}: the VM's name, or L{None} (a VM's own socket, or the daemon's
    default VM);
  - C{mode}: C{"exec"}, C{"status"}, C{"info"}, C{"ping"}, C{"list"}, C{"forwards"},
    C{"push"} or C{"pull"};
  - C{ok}: whether it succeeded: the command ran and its status is 0, the
    query was answered, the file was moved and verified;
  - C{status}: the exit status this record gives the CLI (docs/cli.md's
    table);
  - C{failure}: L{None} when prokshy did its part (the command ran, even if
    it failed), else a short code for prokshy's own failure (L{FAILURES});
  - C{code}, C{signal}, C{timed_out}, C{truncated}: the remote command's
    EXIT (L{None}, L{None}, C{False}, C{False} where nothing ran);
  - C{error}: L{None}, or a one-line message for people;
  - C{stdout}, C{stderr}: the command's output as text (C{""} where there
    is none), and C{encoding}: C{"utf-8"} when both are valid UTF-8 and are
    given as they are, else C{"base64"}, and both are base64;
  - C{protocol}: C{"framed"}, or C{"line"} for the original agent's line
    protocol (exec only), or L{None} when no session was started;
  - the mode's own key (L{PAYLOAD_KEYS}), L{None} on failure (exec's
    C{command} is the command's name, on failure too; C{forwards} lists
    the forwards added or removed before a failure).

Non-UTF-8 output is thus handled one way: the record says C{"encoding":
"base64"} and both output fields are base64 of the bytes.
"""

import base64
import codecs
import collections
import json

#: The keys of every record, whatever its mode.
KEYS = (
    "vm",
    "mode",
    "ok",
    "status",
    "failure",
    "code",
    "signal",
    "timed_out",
    "truncated",
    "error",
    "stdout",
    "stderr",
    "encoding",
    "protocol",
)

#: Each mode's own key, holding what the mode answers (L{None} on failure).
PAYLOAD_KEYS = {
    "exec": "command",
    "status": "daemon",
    "info": "info",
    "ping": "ping",
    "list": "commands",
    "forwards": "forwards",
    "push": "file",
    "pull": "file",
}

#: C{failure} codes: prokshy's own failures, as opposed to the command's.
#: The guest's and the daemon's refusal and reset codes are passed as they
#: are (C{no-such-command}, C{not-allowed}, C{vm-unavailable}, ...); these
#: are the CLI's own.
FAILURES = (
    "usage",  # the command line, or something it names, is wrong
    "connect-failed",  # the socket or endpoint could not be reached
    "no-answer",  # no prokshy agent answered
    "session-refused",  # the daemon or agent refused the session (a token)
    "transport",  # the session or stream ended before a result
    "local-file",  # a local file could not be read or written
    "output",  # stdout could not be written
    "checksum-mismatch",  # push/pull: the sha256 differs end to end
    "interrupted",  # Ctrl-C or SIGTERM
    "unsupported",  # the guest or daemon does not serve this
    "too-big",  # --json's in-memory limit; use --json-stream
    "stdout-closed",  # stdout's reader went away (| head): the rest is cancelled
    "internal",  # a bug in prokshy (the traceback goes to a file)
)


def record(mode, vm=None, **fields):
    """
    A record of C{mode} with every key at its "nothing happened" value, then
    C{fields}.

    @rtype: L{dict}
    """
    r = {
        "vm": vm,
        "mode": mode,
        "ok": False,
        "status": 0,
        "failure": None,
        "code": None,
        "signal": None,
        "timed_out": False,
        "truncated": False,
        "error": None,
        "stdout": "",
        "stderr": "",
        "encoding": "utf-8",
        "protocol": "framed",
        PAYLOAD_KEYS[mode]: None,
    }
    r.update(fields)
    return r


def failed(r, status, failure, error):
    """
    Mark C{r} as prokshy's own failure (or the guest's refusal).

    @param failure: a code of L{FAILURES}, or a refusal code passed on.
    @return: C{r}.
    """
    r.update(ok=False, status=status, failure=failure, error=error)
    return r


def setOutput(r, stdout=b"", stderr=b""):
    """
    Put the command's output (bytes) in C{r}: as text when both are UTF-8,
    else both as base64 with C{"encoding": "base64"}.

    @return: C{r}.
    """
    try:
        out, err = stdout.decode("utf-8"), stderr.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        out = base64.b64encode(stdout).decode("ascii")
        err = base64.b64encode(stderr).decode("ascii")
        encoding = "base64"
    r.update(stdout=out, stderr=err, encoding=encoding)
    return r


#: Whether records are printed as --json-stream's last events (their
#: C{"event": "result"}): set once per run by the CLI (L{streamEvents}).
_streaming = False


def streamEvents(on):
    """
    Print every record from now on as a --json-stream C{result} event
    (C{on} true) or as a plain --json record: the CLI's run sets it from
    its options, so that every mode's records follow it.
    """
    global _streaming
    _streaming = bool(on)


def line(r):
    """
    One record as one line of JSON Lines, as bytes (keys sorted, ASCII);
    under --json-stream (L{streamEvents}) with C{"event": "result"}.
    """
    if _streaming and "mode" in r and "event" not in r:
        r = dict(r, event="result")
    return json.dumps(r, sort_keys=True).encode("ascii") + b"\n"


#: --json keeps at most this many bytes of one VM's stdout and stderr
#: together; past it the command is cancelled and its record fails with
#: C{too-big} (--json-stream keeps nothing).
JSON_OUTPUT_LIMIT = 16 * 1024 * 1024

#: The C{event} of --json-stream lines: output chunks, then the record.
EVENTS = ("stdout", "stderr", "result")


def event(vm, kind, data):
    """
    One --json-stream output event: C{{"data": BASE64, "event": kind,
    "vm": vm}} and LF, as bytes (each event's data decodes on its own).
    """
    return line({"vm": vm, "event": kind, "data": base64.b64encode(data).decode("ascii")})


def isUTF8(chunks):
    """
    Whether the concatenation of C{chunks} (bytes) is valid UTF-8, checked
    chunk by chunk (nothing is joined).
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for chunk in chunks:
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _textPieces(chunks, encoding):
    """
    The JSON string body (without quotes) of C{chunks}, in ASCII pieces,
    each chunk dropped from C{chunks} as soon as it is encoded.
    """
    if encoding == "utf-8":
        decoder = codecs.getincrementaldecoder("utf-8")()
        while chunks:
            text = decoder.decode(chunks.popleft())
            if text:
                yield json.dumps(text)[1:-1].encode("ascii")
        text = decoder.decode(b"", final=True)
        if text:
            yield json.dumps(text)[1:-1].encode("ascii")
        return
    carry = b""
    while chunks:
        data = carry + chunks.popleft()
        cut = len(data) - len(data) % 3
        carry = data[cut:]
        if cut:
            yield base64.b64encode(data[:cut])
    if carry:
        yield base64.b64encode(carry)


def writeLine(write, r, stdout=(), stderr=(), kind=None):
    """
    Write C{r} as one JSON line, as L{line} would, with the command's output
    C{stdout} and C{stderr} (bytes, or deques of bytes chunks, consumed as
    they are written) as its C{stdout} and C{stderr} (L{setOutput}'s one
    encoding rule): the output is never joined nor held twice in memory.

    @param kind: an C{event} to add (--json-stream's C{"result"}).
    """
    out = stdout if isinstance(stdout, collections.deque) else collections.deque([stdout] if stdout else [])
    err = stderr if isinstance(stderr, collections.deque) else collections.deque([stderr] if stderr else [])
    encoding = "utf-8" if isUTF8(out) and isUTF8(err) else "base64"
    r = dict(r, encoding=encoding)
    if kind is None and _streaming:
        kind = "result"
    if kind is not None:
        r["event"] = kind
    keys = sorted(r)
    write(b"{")
    for i, key in enumerate(keys):
        write(("" if i == 0 else ", ").encode("ascii") + json.dumps(key).encode("ascii") + b": ")
        if key in ("stdout", "stderr"):
            write(b'"')
            for piece in _textPieces(out if key == "stdout" else err, encoding):
                write(piece)
            write(b'"')
        else:
            write(json.dumps(r[key], sort_keys=True).encode("ascii"))
    write(b"}\n")


__all__ = [
    "EVENTS",
    "FAILURES",
    "JSON_OUTPUT_LIMIT",
    "KEYS",
    "PAYLOAD_KEYS",
    "event",
    "failed",
    "isUTF8",
    "line",
    "record",
    "streamEvents",
    "setOutput",
    "writeLine",
]
