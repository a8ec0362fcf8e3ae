# -*- test-case-name: tests.unit.test_forward_spec -*-
"""
Forward specifications, in ssh's C{-L}/C{-R} syntax: pure parsing, no I/O.

    [VM=][BIND:]PORT:HOST:HOSTPORT      TCP to TCP
    [VM=]/LISTEN/PATH:HOST:HOSTPORT     a unix socket to TCP
    [VM=][BIND:]PORT:/CONNECT/PATH      TCP to a unix socket
    [VM=]/LISTEN/PATH:/CONNECT/PATH     unix to unix

The listening side comes first, the connecting side second.  BIND defaults
to C{127.0.0.1}, as in ssh; C{*} (or an empty BIND, as in C{:8080:...})
means every interface.  IPv6 addresses go in brackets
(C{[::1]:8080:[fe80::1]:80}).  A side that starts with C{/} is a unix
socket path (which cannot hold a colon).  C{VM=} names the VM; without it the daemon's only VM (or the
VM socket talked to directly) is meant.

L{parseSpec} turns a string into a L{ForwardSpec} or raises L{SpecError}
with a one-line message; L{Tcp.serverEndpoint} and friends give the Twisted
endpoint strings for each side.
"""

from __future__ import annotations

import ipaddress
import re
from typing import List, Optional, Union

import attr

from prokshy._endpointstrings import quote

__all__ = [
    "ForwardSpec", "SpecError", "Tcp", "Unix", "checkDirection", "parseHost", "parseSpec", "sideArgs", "sideFromArgs", "splitFields",
]

_VM_NAME = re.compile(r"[a-zA-Z0-9_.-]+\Z")
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*\Z")
DEFAULT_BIND = "127.0.0.1"
#: The longest unix socket path (sun_path is 104 bytes on FreeBSD, 108 on
#: Linux, with its NUL).
MAX_UNIX_PATH = 103


class SpecError(ValueError):
    """
    A forward specification that does not parse; the message is one line.
    """


@attr.s(frozen=True, slots=True)
class Tcp:
    """
    A TCP side: C{host} is an IP address (IPv6 without brackets), a host
    name, or C{""} for every interface (listening sides only).
    """

    host: str = attr.ib()
    port: int = attr.ib()

    @property
    def ipv6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        host = "*" if self.host == "" else ("[%s]" % (self.host,) if self.ipv6 else self.host)
        return "%s:%d" % (host, self.port)

    def serverEndpoint(self) -> str:
        """
        The Twisted server endpoint string that listens here.
        """
        kind = "tcp6" if self.ipv6 else "tcp"
        return "%s:%d:interface=%s" % (kind, self.port, quote(self.host))

    def clientEndpoint(self, timeout: Optional[float] = None) -> str:
        """
        The Twisted client endpoint string that connects here (giving up
        after C{timeout} seconds, if given).
        """
        # (Twisted has no tcp6 client endpoint string: tcp: takes IPv6.)
        return "tcp:host=%s:port=%d" % (quote(self.host), self.port) + _timeout(timeout)


@attr.s(frozen=True, slots=True)
class Unix:
    """
    A unix socket side.
    """

    path: str = attr.ib()

    def __str__(self) -> str:
        return self.path

    def serverEndpoint(self) -> str:
        """
        Listens with mode 0600 (ssh's StreamLocalBindMask), and a lock file
        (Twisted's), so a stale socket is replaced and a live one never is.
        """
        return "unix:%s:mode=600" % (quote(self.path),)

    def clientEndpoint(self, timeout: Optional[float] = None) -> str:
        return "unix:path=%s" % (quote(self.path),) + _timeout(timeout)


def _timeout(timeout: Optional[float]) -> str:
    return "" if timeout is None else ":timeout=%g" % (timeout,)


Side = Union[Tcp, Unix]


@attr.s(frozen=True, slots=True)
class ForwardSpec:
    """
    One forward: where it listens, and where each connection goes.

    @ivar vm: the VM named by C{VM=}, or None.
    """

    listen: Side = attr.ib()
    connect: Side = attr.ib()
    vm: Optional[str] = attr.ib(default=None)

    def __str__(self) -> str:
        text = "%s:%s" % (self.listen, self.connect)
        return text if self.vm is None else "%s=%s" % (self.vm, text)


def splitFields(text: str) -> List[str]:
    """
    Split on the colons that are outside brackets.
    """
    parts, current, depth = [], [], 0
    for ch in text:
        if ch == "[":
            if depth:
                raise SpecError("nested '[' in %r" % (text,))
            depth = 1
        elif ch == "]":
            if not depth:
                raise SpecError("']' without '[' in %r" % (text,))
            depth = 0
        if ch == ":" and not depth:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise SpecError("'[' without ']' in %r" % (text,))
    parts.append("".join(current))
    return parts


def _port(text: str, what: str, listening: bool) -> int:
    if not text.isdigit():
        raise SpecError("%s %r is not a port number" % (what, text))
    port = int(text)
    low = 0 if listening else 1
    if not low <= port <= 65535:
        raise SpecError("%s %d is out of range (%d-65535)" % (what, port, low))
    return port


def parseHost(text: str, what: str, listening: bool) -> str:
    if text.startswith("["):
        inner = text[1:-1] if text.endswith("]") else None
        try:
            if inner is None:
                raise ValueError
            return str(ipaddress.IPv6Address(inner))
        except ValueError:
            raise SpecError("%s %r is not an IPv6 address in brackets" % (what, text)) from None
    if listening and text in ("", "*"):
        return ""
    if ":" in text:
        raise SpecError("%s %r: put an IPv6 address in brackets, as [%s]" % (what, text, text))
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        pass
    if not _HOSTNAME.match(text) or text.rsplit(".", 1)[-1].isdigit():
        # (A name whose last label is all digits, as 127.1 or 2130706433, is
        # an address in a form the resolver reads, never a host name.)
        raise SpecError("%s %r is neither an address nor a host name" % (what, text))
    return text.lower()


def _unix(text: str, what: str) -> Unix:
    if "\0" in text:
        raise SpecError("%s holds a NUL byte" % (what,))
    if len(text.encode("utf-8")) > MAX_UNIX_PATH:
        raise SpecError("%s %r is longer than %d bytes" % (what, text, MAX_UNIX_PATH))
    return Unix(text)


def parseSpec(text: str, requireVM: bool = False) -> ForwardSpec:
    """
    Parse a forward specification (see the module docstring).

    @param requireVM: whether C{VM=} must be given.
    @raise SpecError: with a one-line message saying what is wrong.
    """
    if not isinstance(text, str):
        raise SpecError("a forward specification is a string")
    if not text:
        raise SpecError("empty forward specification")
    vm = None
    head, eq, rest = text.partition("=")
    if eq and _VM_NAME.match(head):
        vm, text = head, rest
    elif requireVM:
        raise SpecError("%r: say which VM, as VM=%s" % (text, text))
    if not text:
        raise SpecError("nothing after %s=" % (vm,))
    parts = splitFields(text)
    if "" in parts[1:]:
        raise SpecError("%r has an empty field: put IPv6 addresses in brackets, as [::1]" % (text,))
    if parts[0].startswith("/"):
        listen: Optional[Side] = _unix(parts[0], "listening path")
        target = parts[1:]
    else:
        listen = None
        target = parts[-1:] if parts[-1].startswith("/") else parts[-2:]
        bindAndPort = parts[: len(parts) - len(target)]
        if len(bindAndPort) == 1:
            listen = Tcp(DEFAULT_BIND, _port(bindAndPort[0], "listening port", True))
        elif len(bindAndPort) == 2:
            port = _port(bindAndPort[1], "listening port", True)
            listen = Tcp(parseHost(bindAndPort[0], "listening address", True), port)
        else:
            raise SpecError(
                "%r is not [BIND:]PORT:HOST:HOSTPORT (either side may be a unix path)" % (text,)
            )
    if len(target) == 1 and target[0].startswith("/"):
        connect: Side = _unix(target[0], "target path")
    elif len(target) == 2:
        connect = Tcp(parseHost(target[0], "target host", False), _port(target[1], "target port", False))
    else:
        raise SpecError("%r: after the listening side comes HOST:HOSTPORT or a unix path" % (text,))
    return ForwardSpec(listen, connect, vm)


def sideArgs(side: Side) -> dict:
    """
    The OPEN arguments naming C{side} (docs/protocol.md §10.3):
    C{{"host": H, "port": P}} or C{{"path": P}}.
    """
    if isinstance(side, Unix):
        return {"path": side.path}
    return {"host": side.host, "port": side.port}


def sideFromArgs(args: dict, listening: bool = False) -> Side:
    """
    The side that OPEN arguments name; C{localhost} is taken as
    C{127.0.0.1}.

    @raise SpecError: unless exactly one of the two forms is given, well
        formed.
    """
    path, host, port = args.get("path"), args.get("host"), args.get("port")
    if path is not None:
        if host is not None or port is not None:
            raise SpecError("give either host and port or path, not both")
        if not isinstance(path, str) or not path.startswith("/"):
            raise SpecError("path must be an absolute unix socket path")
        return _unix(path, "path")
    if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
        raise SpecError("host (a string) and port (an integer) are required")
    if not 1 <= port <= 65535:
        raise SpecError("port %d is out of range (1-65535)" % (port,))
    if host.lower() == "localhost":
        host = DEFAULT_BIND
    if ":" in host:
        host = "[%s]" % (host,)
    if listening and host == "":
        return Tcp("", port)
    return Tcp(parseHost(host, "host", listening), port)


def checkDirection(spec: ForwardSpec, direction: str) -> ForwardSpec:
    """
    @raise SpecError: for what C{direction} cannot do with C{spec}: a
        reverse forward names the port the guest binds (not 0).
    @return: C{spec}.
    """
    if direction == "reverse" and isinstance(spec.listen, Tcp) and spec.listen.port == 0:
        raise SpecError("a reverse forward needs a listening port (not 0)")
    return spec
