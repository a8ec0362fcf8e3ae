# -*- test-case-name: tests.system.test_transport_device,tests.system.test_transport_service -*-
"""
The interfaces between the guest's device transports and what runs on them.

Light on purpose (zope.interface and Twisted's interfaces only), so that the
guest can import it without the transports.
"""

from zope.interface import Attribute, Interface

from twisted.internet.interfaces import IStreamClientEndpoint, ITransport

__all__ = ["IDeviceEndpoint", "IDeviceTransport", "IHostPresence"]


class IHostPresence(Interface):
    """
    A protocol that wants to hear when the host leaves the device and when a
    host is there again.  Only a non-tty device (Linux virtio-ports) can
    tell; see L{prokshy.transport.device.DeviceTransport}.
    """

    def hostAway() -> None:
        """
        The host has gone: no host is connected to the port.  Writes are
        kept until a host is back, then discarded (they were for this one).
        """

    def hostReturned() -> None:
        """
        A host is connected again: a new client.  The writes buffered for
        the one that left are gone already; what is written from here on is
        sent to the new one.
        """


class IDeviceTransport(ITransport):
    """
    A transport on the guest's console device.
    """

    def discardBuffered() -> int:
        """
        Drop the writes not sent yet (a framed session that ended must not
        reach a later client).

        @return: how many bytes were dropped from the transport's buffer.
        """

    def abortConnection() -> None:
        """
        Close at once, discarding unwritten data.
        """

    def whenLost(callback) -> None:
        """
        Call C{callback(reason)} (a L{twisted.python.failure.Failure}) once
        the connection is lost, after the protocol's C{connectionLost}; at
        once if it is lost already.
        """


class IDeviceEndpoint(IStreamClientEndpoint):
    """
    A client endpoint on a console device.
    """

    path = Attribute("The device path (str), for log lines.")
