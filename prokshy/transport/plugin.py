# -*- test-case-name: tests.system.test_transport_plugin -*-
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
a L{ValueError} with a one-line message naming the option
(L{prokshy._endpointstrings.bind}, which the daemon's listener strings use
too).

Every Twisted plugin scan imports this module (through
C{twisted/plugins/prokshy_plugins.py}), so it imports nothing heavy: the
endpoint, pyserial and termios are imported only when a string is parsed.
"""

from __future__ import annotations

from zope.interface import implementer

from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor
from twisted.plugin import IPlugin

__all__ = ["vtconEndpointParser"]


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
        # the interface's *args/**kwargs signature, our schema's binding,
        # with the same binding rules as the daemon's listener strings.
        from prokshy._endpointstrings import EndpointString, EndpointStringError, bind

        try:
            bound = bind(
                self._parseClient,
                EndpointString(self.prefix, args, kwargs),
                leading=1,
                label="the vtcon: endpoint",
            )
        except EndpointStringError as e:
            raise ValueError("%s: %s" % (self.prefix, e)) from None
        return self._parseClient(reactor, **bound)


vtconEndpointParser = _VtconParser()
