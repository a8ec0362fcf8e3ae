# -*- test-case-name: tests.unit.test_streams -*-
"""
A producer that lets one party pause and resume a stream (or a link), but
not stop it.
"""

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

__all__ = ["Throttle", "throttleEachOther"]


@implementer(IPushProducer)
class Throttle:
    """
    Registered with a consumer in place of a stream, it passes pause and
    resume on and ignores stop: consumers "stop" their producer when they
    close (a command's stdin pipe) or when they end (a relayed stream, which
    then tells its protocol the real reason), and neither should end the
    stream itself.
    """

    def __init__(self, stream):
        self.stream = stream

    def pauseProducing(self):
        self.stream.pauseProducing()

    def resumeProducing(self):
        self.stream.resumeProducing()

    def stopProducing(self):
        pass


def throttleEachOther(a, b):
    """
    Join two consumers that feed each other (two streams of a relay, a
    socket and its stream): each is the other's producer, through a
    L{Throttle}, so a full one pauses the other and neither stops it.
    """
    a.registerProducer(Throttle(b), True)
    b.registerProducer(Throttle(a), True)
