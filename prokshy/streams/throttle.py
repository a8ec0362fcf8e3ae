# -*- test-case-name: tests.unit.test_streams -*-
"""
A producer that lets one party pause and resume a stream (or a link), but
not stop it.
"""

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

__all__ = ["Throttle"]


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
