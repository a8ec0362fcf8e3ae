# -*- test-case-name: tests.unit.test_cli_records -*-
"""
The one shape of every C{--json} result (docs/cli.md, "JSON output").

Every mode (exec, status, info, list, forwards, push, pull) prints
records with the same keys, success or failure:

  - C{vm}: the VM's name, or L{None} (a VM's own socket, or the daemon's
    default VM);
  - C{mode}: C{"exec"}, C{"status"}, C{"info"}, C{"list"}, C{"forwards"},
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
  - the mode's own key (L{PAYLOAD_KEYS}), L{None} on failure.

Non-UTF-8 output is thus handled one way: the record says C{"encoding":
"base64"} and both output fields are base64 of the bytes.
"""

import base64
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
)

#: Each mode's own key, holding what the mode answers (L{None} on failure).
PAYLOAD_KEYS = {
    "exec": "command",
    "status": "daemon",
    "info": "info",
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
    "transport",  # the session or stream ended before a result
    "local-file",  # a local file could not be read or written
    "output",  # stdout could not be written
    "checksum-mismatch",  # push/pull: the sha256 differs end to end
    "interrupted",  # Ctrl-C or SIGTERM
    "unsupported",  # the guest or daemon does not serve this
    "too-big",  # --json's in-memory limit; use --json-stream
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


def line(r):
    """
    One record as one line of JSON Lines, as bytes (keys sorted, ASCII).
    """
    return json.dumps(r, sort_keys=True).encode("ascii") + b"\n"


__all__ = ["FAILURES", "KEYS", "PAYLOAD_KEYS", "failed", "line", "record", "setOutput"]
