# -*- test-case-name: tests.unit.test_forward_allow -*-
"""
The guest's allowlists: what host-requested connections may reach inside
the guest (C{--allow-connect}) and what reverse forwards may bind there
(C{--allow-listen}).  Pure logic, no I/O.

A pattern is one of:

    HOST:PORT      a TCP address; HOST an IPv4 address, [IPv6], a host name
                   or *; PORT a number, LOW-HIGH, or * (any)
    /PATH/GLOB     unix sockets whose normalised absolute path matches,
                   component by component (* and ? never cross a /)
    none           nothing (turns the direction off; alone only)

Unix paths are allowed only when a pattern names them.  A path with a
C{..} component is never allowed, whatever the patterns.  The defaults:
connections to C{127.0.0.1:*} and C{[::1]:*}; listening on the same
addresses on ports 1024 and up.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from typing import Iterable, Optional, Tuple, Union

import attr

from prokshy.forward.spec import DEFAULT_BIND, SpecError, Tcp, Unix, parseHost, splitFields

__all__ = ["AllowList", "DEFAULT_CONNECT", "DEFAULT_LISTEN", "PatternError", "parsePatterns", "resolvedPath"]

DEFAULT_CONNECT = ("127.0.0.1:*", "[::1]:*")
DEFAULT_LISTEN = ("127.0.0.1:1024-65535", "[::1]:1024-65535")


class PatternError(ValueError):
    """
    An allowlist pattern that does not parse; the message is one line.
    """


@attr.s(frozen=True, slots=True)
class TcpPattern:
    host: Optional[str] = attr.ib()  # None: any host
    low: int = attr.ib()
    high: int = attr.ib()

    def matches(self, target: Union[Tcp, Unix]) -> bool:
        return (
            isinstance(target, Tcp)
            and (self.host is None or self.host == target.host)
            and self.low <= target.port <= self.high
        )


@attr.s(frozen=True, slots=True)
class UnixPattern:
    parts: Tuple[str, ...] = attr.ib()

    def matches(self, target: Union[Tcp, Unix]) -> bool:
        if not isinstance(target, Unix):
            return False
        parts = _components(target.path)
        return (
            parts is not None
            and len(parts) == len(self.parts)
            and all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, self.parts))
        )


def _components(path: str) -> Optional[Tuple[str, ...]]:
    """
    The components of an absolute path, or None for one that is relative or
    names C{..}.
    """
    if not path.startswith("/") or ".." in path.split("/"):
        return None
    return tuple(p for p in posixpath.normpath(path).split("/") if p)


def _ports(text: str, pattern: str) -> Tuple[int, int]:
    if text == "*":
        return 1, 65535
    low, dash, high = text.partition("-")
    if not low.isdigit() or (dash and not high.isdigit()):
        raise PatternError("%r: the port must be a number, LOW-HIGH or *" % (pattern,))
    low_, high_ = int(low), int(high) if dash else int(low)
    if not 1 <= low_ <= high_ <= 65535:
        raise PatternError("%r: ports are 1-65535, low before high" % (pattern,))
    return low_, high_


def _pattern(text: str):
    if text.startswith("/"):
        parts = _components(text)
        if parts is None:
            raise PatternError("%r: a unix pattern is an absolute path without '..'" % (text,))
        return UnixPattern(parts)
    try:
        fields = splitFields(text)
    except SpecError as e:
        raise PatternError(str(e)) from None
    if len(fields) != 2:
        raise PatternError("%r is not HOST:PORT (IPv6 in brackets), a unix path, or none" % (text,))
    host, port = fields
    if host == "*":
        hostValue = None
    else:
        try:
            hostValue = parseHost(host, "host", False)
        except SpecError as e:
            raise PatternError("%r: %s" % (text, e)) from None
        if hostValue == "localhost":
            hostValue = DEFAULT_BIND  # as targets are (sideFromArgs)
    low, high = _ports(port, text)
    return TcpPattern(hostValue, low, high)


def parsePatterns(texts: Iterable[str], default: Iterable[str]) -> "AllowList":
    """
    Build an L{AllowList} from the patterns given (repeatable options), or
    C{default} when none are given.

    @raise PatternError: for a pattern that does not parse, or C{none}
        given with other patterns.
    """
    texts = list(texts) or list(default)
    if "none" in texts:
        if len(texts) > 1:
            raise PatternError("'none' turns the direction off: give it alone")
        return AllowList(())
    return AllowList(tuple(_pattern(t) for t in texts), tuple(texts))


@attr.s(frozen=True)
class AllowList:
    """
    The patterns of one direction, and the texts they came from.
    """

    patterns: tuple = attr.ib()
    texts: Tuple[str, ...] = attr.ib(default=())

    @property
    def off(self) -> bool:
        return not self.patterns

    def allows(self, target: Union[Tcp, Unix]) -> bool:
        return any(p.matches(target) for p in self.patterns)

    def coversPorts(self, host: str, low: int, high: int) -> bool:
        """
        Whether every port from C{low} to C{high} on C{host} is allowed (a
        listening port 0: whichever the kernel picks).
        """
        ranges = sorted(
            (p.low, p.high)
            for p in self.patterns
            if isinstance(p, TcpPattern) and (p.host is None or p.host == host)
        )
        reached = low - 1
        for start, end in ranges:
            if start > reached + 1:
                break
            reached = max(reached, end)
        return reached >= high

    def refusal(
        self, target: Union[Tcp, Unix], option: str, who: str = "the guest", resolve=None
    ) -> Optional[str]:
        """
        None if C{target} is allowed; else the one-line reason (C{who}
        refuses: the guest, or the daemon).

        @param resolve: for a unix path, C{resolve(path)} gives the path it
            really names (symlinks followed), which must be allowed too;
            None: the path as given only.
        """
        if isinstance(target, Unix) and resolve is not None and self.allows(target):
            real = Unix(resolve(target.path))
            if real != target and not self.allows(real):
                return "%s (really %s) is not allowed by %s (%s %s)" % (
                    target, real, who, option, " ".join(self.texts))
            return None
        if isinstance(target, Tcp) and target.port == 0:
            if self.coversPorts(target.host, 1024, 65535):
                return None
        elif self.allows(target):
            return None
        if self.off:
            return "%s is not allowed: %s turned this direction off (%s none)" % (target, who, option)
        return "%s is not allowed by %s (%s %s)" % (target, who, option, " ".join(self.texts))


def resolvedPath(path: str) -> str:
    """
    The path a unix socket path really names: symlinks followed in its
    directory (the socket itself may not exist yet, for a listener).
    """
    directory, name = posixpath.split(path)
    return posixpath.join(os.path.realpath(directory or "/"), name) if name else os.path.realpath(path)
