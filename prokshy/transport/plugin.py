# -*- test-case-name: tests.test_transport_plugin -*-
"""
The C{vtcon:} endpoint string parser, for C{clientFromString}::

    vtcon:/dev/vtcon/prokshy
    vtcon:/dev/ttyS1:9600
    vtcon:path=/dev/virtio-ports/org.prokshy.0
    vtcon:path=/dev/vtcon/prokshy:baudrate=115200

Twisted's endpoint-parser plugin pattern (as C{tcp6:} does it in
C{twisted.internet.endpoints}): Twisted's tokeniser splits the string
(C{\\:} escapes a colon) into positional and C{key=value} arguments, and the
signature of L{_VtconParser._parseClient} is the schema: its parameters are
the option names, in positional order, with their defaults.  Arguments that
do not fit the signature (an unknown option, too many, one given twice) are
a L{ValueError} with a one-line message naming the option.

Every Twisted plugin scan imports this module (through
C{twisted/plugins/prokshy_plugins.py}), so it imports nothing heavy: the
endpoint, pyserial and termios are imported only when a string is parsed.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Tuple

from zope.interface import implementer

from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor
from twisted.plugin import IPlugin

__all__ = ["bindArguments", "vtconEndpointParser"]


def bindArguments(
    prefix: str, parse: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]
) -> inspect.BoundArguments:
    """
    Bind the arguments Twisted's tokeniser made of a C{prefix:} endpoint
    string to C{parse}, whose signature is the schema.

    @param parse: a parser function (or bound method) that takes the reactor
        first, then the options.
    @param args: the positional arguments, the reactor first.
    @raise ValueError: with a one-line message, if the arguments do not fit
        the signature.
    """
    signature = inspect.signature(parse)
    parameters = list(signature.parameters.values())
    positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    options = [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)][1:]
    unknown = sorted(set(kwargs) - set(options))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in parameters):
        raise ValueError(
            "%s: unknown option(s): %s (known: %s)"
            % (prefix, ", ".join(unknown), ", ".join(options))
        )
    if len(args) > len(positional):
        raise ValueError(
            "%s: too many arguments: %r (at most %d: %s)"
            % (prefix, args[1:], len(positional) - 1, ", ".join(positional[1:]))
        )
    for name in positional[1 : len(args)]:
        if name in kwargs:
            raise ValueError("%s: %s given twice" % (prefix, name))
    try:
        return signature.bind(*args, **kwargs)
    except TypeError as e:
        raise ValueError("%s: %s" % (prefix, e)) from None


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class _VtconParser:
    """
    Parse C{vtcon:} client endpoint strings into
    L{prokshy.transport.endpoints.VtconClientEndpoint}s.
    """

    prefix = "vtcon"

    def _parseClient(self, reactor, path: str = "", baudrate: str = "115200"):
        """
        The schema of a C{vtcon:} string, and its conversion.

        @param path: the device path (required).
        @param baudrate: the tty speed, a positive integer (ignored for
            non-tty devices).
        """
        from prokshy.transport.endpoints import VtconClientEndpoint

        if not path:
            raise ValueError("vtcon: a device path is required (vtcon:path=/dev/...)")
        try:
            speed = int(baudrate)
        except (TypeError, ValueError):
            raise ValueError("vtcon: baudrate must be an integer, not %r" % (baudrate,)) from None
        if speed <= 0:
            raise ValueError("vtcon: baudrate must be positive, not %d" % (speed,))
        return VtconClientEndpoint(reactor, path, speed)

    def parseStreamClient(self, reactor, *args, **kwargs):
        # Twisted's own parsers redirect the same way (see _TCP6ServerParser):
        # the interface's *args/**kwargs signature, our schema's binding.
        bound = bindArguments(self.prefix, self._parseClient, (reactor,) + args, kwargs)
        return self._parseClient(*bound.args, **bound.kwargs)


vtconEndpointParser = _VtconParser()
