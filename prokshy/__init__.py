"""
prokshy: a host-to-guest agent for bhyve and QEMU virtual machines.

Layers, bottom up (each package imports only from the ones above it in this list):

- L{prokshy.wire}: the pure frame codec (no I/O).
- L{prokshy.link}: the session over one byte channel: hello, nonces, keepalive,
  sequence numbers, acknowledgements and retransmission.
- L{prokshy.streams}: multiplexed streams with credit-based flow control.
- L{prokshy.transport}: device transports and the C{vtcon:} endpoint.
- L{prokshy.guest} / L{prokshy.host}: the guest agent and the host side.
- L{prokshy.sim}, L{prokshy.cli}, L{prokshy.tap}: simulator, CLI, twistd glue.
"""
from prokshy._version import __version__

__all__ = ["__version__"]
