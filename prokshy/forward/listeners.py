# -*- test-case-name: tests.unit.test_forward_listeners -*-
"""
L{Listeners}: the forwards' listening sockets, one per address at a time.

Twisted closes a listening socket (and removes a unix socket's file and
lock) a reactor turn after C{stopListening}.  A forward removed and added
again for the same address in one turn (C{forward-remove} and
C{forward-add} in one client's write, or a listen stream's CLOSE and the
next OPEN in one read) would find the address still in use: so a listen
on an address that is closing waits for the close first.
"""

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError

__all__ = ["ListenFailed", "Listeners"]


class ListenFailed(Exception):
    """
    Listening failed; the message is C{ADDRESS: error}, one line.
    """


class Listeners:
    def __init__(self, reactor):
        self.reactor = reactor
        self._closing = {}

    def listen(self, side, factory):
        """
        Listen on C{side} (a L{prokshy.forward.spec.Tcp} or C{Unix}).

        @return: a Deferred firing with the listening port, or failing with
            L{ListenFailed}.  Cancelling it gives up (a port that came up
            meanwhile is closed).
        """
        closing = self._closing.get(str(side), succeed(None))
        attempts = []
        result = Deferred(lambda _: attempts and attempts[-1].cancel())

        def start(_):
            if result.called:
                return
            attempt = serverFromString(self.reactor, side.serverEndpoint()).listen(factory)
            attempts.append(attempt)
            attempt.addCallbacks(listening, failed)

        def listening(port):
            if result.called:
                self.stop(side, port)  # withdrawn meanwhile
            else:
                result.callback(port)

        def failed(failure):
            if not result.called:
                result.errback(ListenFailed("%s: %s" % (side, _why(failure))))

        closing.addBoth(start)
        return result

    def stop(self, side, port):
        """
        Stop listening on C{port} (listening on C{side}); a new listen on
        the same address waits until it is closed.

        @return: a Deferred firing once closed.
        """
        key = str(side)
        closed = maybeDeferred(port.stopListening)
        done = Deferred()
        self._closing[key] = done

        def finished(result):
            if self._closing.get(key) is done:
                del self._closing[key]
            done.callback(None)
            return None

        closed.addBoth(finished)
        return done


def _why(failure):
    exc = failure.value
    if isinstance(exc, CannotListenError):
        error = exc.socketError
        if isinstance(error, OSError) and error.strerror:
            return error.strerror.lower()
        if "lock" in str(error).lower():
            # Twisted's unix lock file is held: a live listener has it.
            return "address already in use"
    return failure.getErrorMessage()
