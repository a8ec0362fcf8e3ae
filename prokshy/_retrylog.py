"""
Logging for users of Twisted's L{ClientService}: one line per change of
state, not one per connection attempt.

L{ClientService} logs "Scheduling retry N to connect ENDPOINT in D seconds."
before every attempt; a service retrying a missing device or a VM that is
down would log that once a second for ever.  Give the service a
L{quietLogger} as its C{_log}: everything else it says still reaches the
global log.  The service says what changed itself, from the failures that
L{ReportingEndpoint} reports to it.

Used by L{prokshy.host.vm} and L{prokshy.transport.service}, which is why
it lives below both.
"""

from typing import Any, Callable, Dict

from zope.interface import implementer

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure

__all__ = ["ReportingEndpoint", "quietLogger", "quietRetries"]

_RETRY_FORMAT = "Scheduling retry"


def quietRetries(event: Dict[str, Any]) -> None:
    """
    A log observer for L{ClientService}: everything but its per-attempt
    "Scheduling retry" lines goes on to the global log.
    """
    if str(event.get("log_format", "")).startswith(_RETRY_FORMAT):
        return
    globalLogPublisher(event)


def quietLogger(namespace: str) -> Logger:
    """
    A L{Logger} for a L{ClientService}'s C{_log}, in C{namespace}, that
    drops the per-attempt "Scheduling retry" lines.
    """
    return Logger(namespace=namespace, observer=quietRetries)


@implementer(IStreamClientEndpoint)
class ReportingEndpoint:
    """
    An endpoint that reports every failed connect to C{onFailure(failure)}
    (before L{ClientService} schedules its retry), then passes the failure
    on.

    @ivar endpoint: the wrapped endpoint.
    """

    def __init__(
        self, endpoint: IStreamClientEndpoint, onFailure: Callable[[Failure], None], name: str
    ) -> None:
        self.endpoint = endpoint
        self._onFailure = onFailure
        self._name = name

    def connect(self, protocolFactory) -> Deferred:
        d = self.endpoint.connect(protocolFactory)
        d.addErrback(self._failed)
        return d

    def _failed(self, failure: Failure) -> Failure:
        self._onFailure(failure)
        return failure

    def __repr__(self) -> str:
        return self._name
