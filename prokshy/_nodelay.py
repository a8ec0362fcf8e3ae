"""
L{noDelay}: no Nagle on prokshy's TCP connections.

Every TCP connection prokshy makes or accepts (the daemon's listeners, the
CLI's C{--connect tcp:...}, forwarded connections) carries small
request/answer exchanges (hellos, OPEN/ACCEPT, EXIT, a key typed into a
forwarded ssh) whose latency Nagle's algorithm and the peer's delayed ACK
would stretch to tens of milliseconds.
"""

from twisted.internet.interfaces import ITCPTransport

__all__ = ["noDelay"]


def noDelay(transport):
    """
    Set C{TCP_NODELAY} on C{transport} if it is a TCP connection (a TLS
    connection over TCP provides L{ITCPTransport} too); other transports
    are left alone.

    @return: whether it was set.
    """
    if ITCPTransport.providedBy(transport):
        transport.setTcpNoDelay(True)
        return True
    return False
