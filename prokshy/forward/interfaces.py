# -*- test-case-name: tests.unit.test_forward_host -*-
"""
What the host's forwards need of a VM (L{prokshy.host.vm.VMConnection}
provides it; tests use a fake).
"""

from zope.interface import Attribute, Interface


class IForwardVM(Interface):
    """
    A VM whose sessions come and go.
    """

    name = Attribute("The VM's name.")

    def session():
        """
        The current session's stream table (a L{prokshy.streams.mux.Mux}),
        or None while there is no session.
        """

    def unavailable():
        """
        Why there is no session now: one line, without the VM's name.
        """

    def whenUp(callback):
        """
        Call C{callback(mux)} whenever a session comes up.
        """

    def whenDown(callback):
        """
        Call C{callback(reason)} whenever a session ends.
        """

    def serveGuestOpens(kind, handler):
        """
        Streams of C{kind} that the guest opens go to C{handler(stream)}, a
        L{prokshy.streams.mux.Mux} open handler (it returns a protocol or a
        Deferred of one, or raises L{prokshy.streams.stream.StreamRefused}).
        """


__all__ = ["IForwardVM"]
