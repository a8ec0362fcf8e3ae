# -*- test-case-name: tests.system.test_runner -*-
"""
The C{command.d} checks: which file a command name runs, and whether it is
safe to run.

L{CommandDirectory} turns a command name sent by the host into the path of
an executable, refusing anything unsafe, as sshd's C{StrictModes} does: the
directory, the file and a symlink's target must not be group- or
world-writable, and every component of their paths must be owned by root or
by the agent's uid, with no writable directory above them unless it is
sticky.  The name rule itself is L{prokshy.execs.names}.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any, Dict, List, Optional, Set, Union

from zope.interface import implementer

from prokshy.execs.interfaces import ICommandNames
from prokshy.execs.names import checkName
from prokshy.execs.refusals import CommandRefused

__all__ = ["CommandDirectory", "LIST_LIMIT", "describe"]

#: At most this many commands in a listing (L{CommandDirectory.listing}).
LIST_LIMIT = 4096
#: A description is looked for in this much of the file's start...
DESCRIPTION_BYTES = 4096
#: ...and in at most this many of its first lines.
DESCRIPTION_LINES = 20
#: A description is cut to this many characters.
DESCRIPTION_CHARS = 200

_DESCRIPTION = re.compile(rb"#[ \t]*description:(.*)")


def describe(path: str) -> Optional[str]:
    """
    The description of the command file at C{path}: the text of its first
    line of the form C{# description: TEXT} within its first
    L{DESCRIPTION_BYTES} bytes and L{DESCRIPTION_LINES} lines, stripped,
    cut to L{DESCRIPTION_CHARS} characters, invalid UTF-8 replaced; or
    C{None} (no such line, an empty text, or the file cannot be read).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(DESCRIPTION_BYTES)
    except OSError:
        return None
    for line in head.splitlines()[:DESCRIPTION_LINES]:
        m = _DESCRIPTION.match(line.strip())
        if m:
            text = m.group(1).decode("utf-8", "replace").strip()
            return text[:DESCRIPTION_CHARS].strip() or None
    return None


def _writable(mode: int) -> Optional[str]:
    """
    @return: C{"world-writable"}, C{"group-writable"} or C{None}.
    """
    if mode & stat.S_IWOTH:
        return "world-writable"
    if mode & stat.S_IWGRP:
        return "group-writable"
    return None


def _untrusted(path: str, checked: Optional[Set[str]] = None) -> Optional[str]:
    """
    Check, as sshd's StrictModes does, everything C{path} depends on: each
    component of the path as written (C{lstat}) and, if a symlink is on the
    way, of the path it resolves to (C{stat}) must be owned by root or by
    the agent's own (effective) uid, and the directories above it must not
    be group- or world-writable unless sticky (like C{/tmp}).

    @param checked: components already found fine (updated), so that
        checking a directory and then a file in it costs one more C{lstat}.
    @return: what is wrong, or C{None}.
    """
    if checked is None:
        checked = set()
    euid = os.geteuid()
    lexical = os.path.abspath(path)
    problem, sawLink = _checkComponents(lexical, os.lstat, euid, checked)
    if problem is None and sawLink:
        problem, _ = _checkComponents(os.path.realpath(lexical), os.stat, euid, checked)
    return problem


def _checkComponents(
    path: str, statFunction: Any, euid: int, checked: Set[str]
) -> "tuple[Optional[str], bool]":
    """
    Check C{path} and its ancestors, up to the first one in C{checked}.

    @return: (the problem or C{None}, whether a symlink was seen).
    """
    sawLink = False
    current = path
    first = True
    while current not in checked:
        try:
            st = statFunction(current)
        except OSError as e:
            return f"cannot check {current}: {e.strerror}", sawLink
        if stat.S_ISLNK(st.st_mode):
            sawLink = True
        if st.st_uid not in (0, euid):
            return (
                f"{current} is owned by uid {st.st_uid}, not by root or "
                f"the agent's uid {euid}"
            ), sawLink
        if not first and stat.S_ISDIR(st.st_mode) and not st.st_mode & stat.S_ISVTX:
            problem = _writable(st.st_mode)
            if problem:
                return (
                    f"{current} is {problem} and not sticky "
                    f"(mode {stat.S_IMODE(st.st_mode):04o})"
                ), sawLink
        if not first:
            # The path itself is re-checked every time (its mode and owner
            # are what the caller asks about); its ancestors once.
            checked.add(current)
        first = False
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return None, sawLink


@implementer(ICommandNames)
class CommandDirectory:
    """
    The C{command.d} directory: maps a command name to an executable.

    @ivar path: the absolute path of the directory.
    """

    def __init__(self, path: Union[str, bytes]) -> None:
        self.path = os.path.abspath(os.fsdecode(path))

    def __repr__(self) -> str:
        return f"CommandDirectory({self.path!r})"

    #: The name rule (L{prokshy.execs.names.checkName}).
    checkName = staticmethod(checkName)

    def resolve(self, name: Union[str, bytes]) -> str:
        """
        Check a command name and the file it names.

        The directory must exist and not be group- or world-writable.  The
        command must be an executable regular file that is not group- or
        world-writable.  A symlink may point anywhere, as long as its final
        target passes the same checks and the target's directory is not
        world-writable.  Every component of the directory's, the command's
        and the target's paths must be owned by root or by the agent's uid,
        and no directory above them may be group- or world-writable unless
        it is sticky (see L{_untrusted}).

        @return: the absolute path to execute (a symlink's final target).
        @raise CommandRefused: with the reason.
        """
        text = self.checkName(name)
        directory = self.path
        try:
            dirStat = os.stat(directory)
        except OSError as e:
            raise CommandRefused(
                "no-such-command",
                f"no such command {text!r}: command directory {directory}: "
                f"{e.strerror}",
            ) from None
        if not stat.S_ISDIR(dirStat.st_mode):
            raise CommandRefused(
                "no-such-command",
                f"no such command {text!r}: {directory} is not a directory",
            )
        problem = _writable(dirStat.st_mode)
        if problem:
            raise CommandRefused(
                "insecure",
                f"command {text!r} is insecure: command directory {directory} "
                f"is {problem} (mode {stat.S_IMODE(dirStat.st_mode):04o})",
            )
        checked: Set[str] = set()
        problem = _untrusted(directory, checked)
        if problem:
            raise CommandRefused(
                "insecure",
                f"command {text!r} is insecure: command directory {directory}: "
                f"{problem}",
            )

        path = os.path.join(directory, text)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise CommandRefused(
                "no-such-command", f"no such command {text!r} in {directory}"
            ) from None
        except OSError as e:
            raise CommandRefused(
                "no-such-command", f"command {text!r}: {path}: {e.strerror}"
            ) from None

        target = path
        what = path
        if stat.S_ISLNK(st.st_mode):
            target = os.path.realpath(path)
            what = f"symlink target {target}"
            try:
                st = os.stat(target)
            except FileNotFoundError:
                raise CommandRefused(
                    "no-such-command",
                    f"no such command {text!r}: {path} is a dangling symlink",
                ) from None
            except OSError as e:
                raise CommandRefused(
                    "no-such-command",
                    f"command {text!r}: symlink {path}: {e.strerror}",
                ) from None
            targetDir = os.path.dirname(target)
            try:
                targetDirMode = os.stat(targetDir).st_mode
            except OSError as e:  # pragma: no cover - the target was stat'ed
                raise CommandRefused(
                    "no-such-command", f"command {text!r}: {targetDir}: {e.strerror}"
                ) from None
            if targetDirMode & stat.S_IWOTH:
                raise CommandRefused(
                    "insecure",
                    f"command {text!r} is insecure: the directory {targetDir} of "
                    f"its symlink target is world-writable "
                    f"(mode {stat.S_IMODE(targetDirMode):04o})",
                )

        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode):
            raise CommandRefused(
                "not-executable",
                f"command {text!r} is not executable: {what} is not a regular file",
            )
        if not (mode & 0o111) or not os.access(target, os.X_OK):
            raise CommandRefused(
                "not-executable",
                f"command {text!r} is not executable: {what} (mode {mode:04o})",
            )
        problem = _writable(st.st_mode)
        if problem:
            raise CommandRefused(
                "insecure",
                f"command {text!r} is insecure: {what} is {problem} "
                f"(mode {mode:04o})",
            )
        problem = _untrusted(path, checked)
        if problem:
            raise CommandRefused("insecure", f"command {text!r} is insecure: {problem}")
        return target

    def listing(self, limit: int = LIST_LIMIT) -> Dict[str, Any]:
        """
        The commands an exec would run: the names in the directory that
        pass L{resolve} (the name rule, a regular executable file, the
        StrictModes checks), sorted, each with its L{describe}d
        description, at most C{limit} of them.

        @return: C{{"commands": [{"name": N, "description": D}, ...],
            "truncated": bool}} (the body of a C{list} stream).
        """
        try:
            names = sorted(os.listdir(self.path))
        except OSError:
            names = []
        commands: List[Dict[str, Any]] = []
        truncated = False
        for name in names:
            try:
                target = self.resolve(name)
            except CommandRefused:
                continue
            if len(commands) >= limit:
                truncated = True
                break
            commands.append({"name": name, "description": describe(target)})
        return {"commands": commands, "truncated": truncated}
