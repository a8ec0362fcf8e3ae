# -*- test-case-name: tests.system.test_runner -*-
"""
The command-name rule: which names a host may ask to run.

The guest checks it before it looks at C{command.d}; the daemon's line
protocol checks it before it opens an exec stream (whether the command
exists is the guest's business).
"""

from __future__ import annotations

import re
from typing import Union

from prokshy.execs.refusals import BAD_NAME, CommandRefused

__all__ = ["NAME_CHARS", "NAME_PATTERN", "checkName"]

#: The characters of a command name, as a regular-expression class body.
NAME_CHARS = "a-zA-Z0-9_.-"
#: Valid command names (the original agent's C{^[a-zA-Z0-9_.-]+$}; C{\\Z},
#: because C{$} also matches before a trailing newline).  C{.} and C{..}
#: match but are refused by L{checkName}.
NAME_PATTERN = re.compile("[%s]+\\Z" % (NAME_CHARS,))


def checkName(name: Union[str, bytes]) -> str:
    """
    Validate a command name without looking at the file system.

    @param name: the name, as C{str} or ASCII C{bytes}.
    @return: the name as C{str}.
    @raise CommandRefused: C{bad-name}.
    @raise TypeError: C{name} is neither C{str} nor C{bytes}.
    """
    if isinstance(name, bytes):
        try:
            text = name.decode("ascii")
        except UnicodeDecodeError:
            raise CommandRefused(BAD_NAME, f"bad name {name[:64]!r}") from None
    elif isinstance(name, str):
        text = name
    else:
        raise TypeError(f"command name must be str or bytes, not {name!r}")
    if not NAME_PATTERN.match(text) or text in (".", ".."):
        raise CommandRefused(BAD_NAME, f"bad name {name[:64]!r}")
    return text
