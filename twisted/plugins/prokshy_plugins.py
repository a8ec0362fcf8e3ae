# Twisted plugins for prokshy. Keep this file tiny: every plugin scan imports it.
# This directory must NOT contain an __init__.py.
from twisted.application.service import ServiceMaker

from prokshy.transport.plugin import vtconEndpointParser  # noqa: F401

prokshyGuest = ServiceMaker(
    "prokshy guest agent",
    "prokshy.tap.guest",
    "Serve command.d commands and streams over a virtio-console port.",
    "prokshy-guest",
)
prokshyHost = ServiceMaker(
    "prokshy host daemon",
    "prokshy.tap.host",
    "Hold each VM's console socket and fan it out to many clients.",
    "prokshy-host",
)
