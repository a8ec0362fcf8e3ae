# -*- test-case-name: tests.unit.test_tty_open -*-
"""
The exec OPEN's C{args} and C{tty} (docs/protocol.md), checked the same way
on both sides: the guest refuses a bad one with C{bad-open}
(L{parseArgs}, L{parseTTY} raise L{BadOpen}), and the CLI checks its own
arguments against the same limits before it sends anything
(L{argsProblem}).

  - C{args}: a JSON list of strings, the command's argv[1:] (argv[0] stays
    the command's path): at most L{MAX_ARGS} items, none with a NUL, at
    most L{MAX_ARGS_BYTES} bytes of UTF-8 in all.  They go to C{execve} as
    they are: no shell anywhere.
  - C{tty}: C{{"rows": 1..4096, "cols": 1..4096, "term": TERM}}, C{term}
    matching L{TERM_RULE} (default C{xterm}): the command runs on a new
    pty of that size, with C{TERM} set.
  - A SIGNAL C{{"signal": "WINCH", "rows": R, "cols": C}} on a tty exec
    sets the pty's size (L{windowSize}).
"""

from __future__ import annotations

import re
from typing import Any, Optional, Tuple

import attrs

__all__ = [
    "BadOpen",
    "DEFAULT_TERM",
    "MAX_ARGS",
    "MAX_ARGS_BYTES",
    "MAX_SIZE",
    "TTYRequest",
    "argsProblem",
    "isWinch",
    "parseArgs",
    "parseTTY",
    "windowSize",
]

#: The most arguments an exec may carry.
MAX_ARGS = 1024
#: The most bytes of UTF-8 its arguments may take in all.
MAX_ARGS_BYTES = 65536
#: The largest number of rows or columns of a tty.
MAX_SIZE = 4096
#: What a C{term} may look like.
TERM_RULE = re.compile(r"[A-Za-z0-9._+-]{1,64}")
#: The C{term} of a C{tty} without one.
DEFAULT_TERM = "xterm"


class BadOpen(ValueError):
    """
    The OPEN's C{args} or C{tty} break the rules: the guest refuses it
    C{bad-open} with this message.
    """


@attrs.frozen
class TTYRequest:
    """
    A C{tty} of an exec OPEN: the pty's size and the C{TERM} of the
    command.
    """

    rows: int
    cols: int
    term: str = DEFAULT_TERM

    def toOpen(self) -> dict:
        return {"rows": self.rows, "cols": self.cols, "term": self.term}


def argsProblem(args: Any) -> Optional[str]:
    """
    Why C{args} cannot be an exec's arguments, or L{None}.
    """
    if not isinstance(args, (list, tuple)):
        return "args must be a list of strings"
    if len(args) > MAX_ARGS:
        return "%d arguments; at most %d are allowed" % (len(args), MAX_ARGS)
    total = 0
    for index, item in enumerate(args):
        if not isinstance(item, str):
            return "argument %d is not a string" % (index + 1,)
        if "\0" in item:
            return "argument %d contains a NUL character" % (index + 1,)
        try:
            total += len(item.encode("utf-8"))
        except UnicodeEncodeError:
            return "argument %d is not valid UTF-8" % (index + 1,)
    if total > MAX_ARGS_BYTES:
        return "the arguments take %d bytes of UTF-8; at most %d are allowed" % (
            total,
            MAX_ARGS_BYTES,
        )
    return None


def parseArgs(value: Any) -> Tuple[str, ...]:
    """
    The C{args} of an exec OPEN (absent: L{None}).

    @return: the arguments (empty for none).
    @raise BadOpen: with the reason.
    """
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadOpen("args must be a list of strings")
    problem = argsProblem(value)
    if problem is not None:
        raise BadOpen(problem)
    return tuple(value)


def _size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SIZE


def parseTTY(value: Any) -> Optional[TTYRequest]:
    """
    The C{tty} of an exec OPEN (absent: L{None}).

    @raise BadOpen: with the reason.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadOpen('tty must be an object {"rows": R, "cols": C, "term": T}')
    rows, cols = value.get("rows"), value.get("cols")
    if not (_size(rows) and _size(cols)):
        raise BadOpen("tty rows and cols must be whole numbers from 1 to %d" % (MAX_SIZE,))
    term = value.get("term", DEFAULT_TERM)
    if not isinstance(term, str) or not TERM_RULE.fullmatch(term):
        raise BadOpen("tty term must match [A-Za-z0-9._+-]{1,64}")
    return TTYRequest(rows, cols, term)


def windowSize(obj: Any) -> Optional[Tuple[int, int]]:
    """
    The C{(rows, cols)} of a WINCH SIGNAL, or L{None} if it has no valid
    size (it is then delivered as a plain signal).
    """
    rows, cols = obj.get("rows"), obj.get("cols")
    if _size(rows) and _size(cols):
        return rows, cols
    return None


def isWinch(sig: Any) -> bool:
    """
    Whether a SIGNAL's C{signal} names SIGWINCH.
    """
    return isinstance(sig, str) and sig.upper() in ("WINCH", "SIGWINCH")
