# -*- test-case-name: tests.test_transport_plugin -*-
"""
The C{vtcon:} endpoint string parser, for C{clientFromString}::

    vtcon:/dev/vtcon/prokshy
    vtcon:/dev/ttyS1:9600
    vtcon:path=/dev/virtio-ports/org.prokshy.0
    vtcon:path=/dev/vtcon/prokshy:baudrate=115200

Every Twisted plugin scan imports this module (through
C{twisted/plugins/prokshy_plugins.py}), so it imports nothing heavy: the
endpoint, pyserial and termios are imported only when a string is parsed.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from zope.interface import implementer

from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor
from twisted.plugin import IPlugin

__all__ = ["vtconEndpointParser"]


def _parseArguments(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Tuple[str, int]:
    """
    Turn C{vtcon:} arguments into C{(path, baudrate)}.

    @raise ValueError: on a missing path, a bad speed or an unknown option.
    """
    options = dict(kwargs)
    unknown = sorted(set(options) - {"path", "baudrate"})
    if unknown:
        raise ValueError("vtcon: unknown option(s): %s" % (", ".join(unknown),))
    if len(args) > 2:
        raise ValueError("vtcon: too many arguments: %r" % (args,))
    for name, value in zip(("path", "baudrate"), args):
        if name in options:
            raise ValueError("vtcon: %s given twice" % (name,))
        options[name] = value
    path = options.get("path")
    if not path:
        raise ValueError("vtcon: a device path is required (vtcon:path=/dev/...)")
    baudrate = options.get("baudrate", 115200)
    try:
        baudrate = int(baudrate)
    except (TypeError, ValueError):
        raise ValueError("vtcon: baudrate must be an integer, not %r" % (baudrate,))
    if baudrate <= 0:
        raise ValueError("vtcon: baudrate must be positive, not %d" % (baudrate,))
    return path, baudrate


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class _VtconParser:
    """
    Parse C{vtcon:} client endpoint strings into
    L{prokshy.transport.endpoints.VtconClientEndpoint}s.
    """

    prefix = "vtcon"

    def parseStreamClient(self, reactor, *args, **kwargs):
        from prokshy.transport.endpoints import VtconClientEndpoint

        path, baudrate = _parseArguments(args, kwargs)
        return VtconClientEndpoint(reactor, path, baudrate)


vtconEndpointParser = _VtconParser()
