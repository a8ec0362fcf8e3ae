# -*- test-case-name: tests.unit.test_streams -*-
"""
A stream's two queues: L{Outbox}, the frames we have not sent yet (and the
local producer that fills it), and L{Inbox}, the frames the peer sent that
our protocol has not been handed yet.
"""

from collections import deque

from prokshy.wire import frames

#: The frame types whose payload spends credit.
DATA_TYPES = (frames.DATA, frames.STDERR)


class Outbox:
    """
    Frames waiting to go out, in order: DATA and STDERR wait for credit and
    for the session to be writable, control frames wait behind them.

    It also regulates the local producer (the stream's L{IConsumer} side):
    a push producer is paused while more than C{highWater} data bytes wait
    and resumed at half of it; a pull producer is asked for more while no
    more than half of it waits.

    @ivar dataBytes: DATA and STDERR bytes waiting.
    """

    def __init__(self, highWater):
        self.highWater = highWater
        self._frames = deque()
        self.dataBytes = 0
        #: Data bytes ever queued: a pull producer's progress.
        self._queued = 0
        self._producer = None
        self._streaming = True
        self._producerPaused = False
        self._pulling = False

    def __len__(self):
        return len(self._frames)

    # -- the queue ----------------------------------------------------------

    def appendData(self, ftype, data):
        self._frames.append((ftype, memoryview(data)))
        self.dataBytes += len(data)
        self._queued += len(data)

    def appendControl(self, ftype, payload):
        self._frames.append((ftype, payload))

    def head(self):
        """
        The next frame, as (type, payload); the payload of DATA and STDERR
        is a memoryview.
        """
        return self._frames[0]

    def popControl(self):
        ftype, payload = self._frames.popleft()
        return payload

    def takeData(self, n):
        """
        Take at most C{n} bytes of the data frame at the head.
        """
        ftype, payload = self._frames[0]
        if len(payload) > n:
            chunk = payload[:n]
            self._frames[0] = (ftype, payload[n:])
        else:
            chunk = payload
            self._frames.popleft()
        self.dataBytes -= len(chunk)
        return chunk.tobytes()

    def clear(self):
        """
        Drop everything waiting.

        @return: the types of the frames dropped.
        """
        dropped = [ftype for ftype, _ in self._frames]
        self._frames.clear()
        self.dataBytes = 0
        return dropped

    # -- the local producer -------------------------------------------------

    def registerProducer(self, producer, streaming):
        self._producer = producer
        self._streaming = streaming
        self._producerPaused = False
        if not streaming:
            self._pull()
        elif self.dataBytes > self.highWater:
            self._pause()

    def unregisterProducer(self):
        self._producer = None

    def detachProducer(self):
        """
        Forget the producer and return it (or None).
        """
        producer, self._producer = self._producer, None
        return producer

    def regulate(self):
        """
        Pause or resume the producer for what waits now.
        """
        if self.dataBytes > self.highWater:
            self._pause()
        elif self.dataBytes <= self.highWater // 2:
            self._resume()
            self._pull()

    def _pause(self):
        if self._producer is not None and self._streaming and not self._producerPaused:
            self._producerPaused = True
            self._producer.pauseProducing()

    def _resume(self):
        if self._producer is not None and self._producerPaused:
            self._producerPaused = False
            self._producer.resumeProducing()

    def _pull(self):
        """
        Ask a pull producer for more while there is room, and while it gives
        some.
        """
        if self._pulling:
            return
        self._pulling = True
        try:
            while (
                self._producer is not None
                and not self._streaming
                and self.dataBytes <= self.highWater // 2
            ):
                before = self._queued
                self._producer.resumeProducing()
                if self._queued == before:
                    break
        finally:
            self._pulling = False


class Inbox:
    """
    Frames from the peer not yet handed to the protocol (DATA, STDERR, EOF,
    EXIT, CLOSE), and whether the protocol has paused us.
    """

    def __init__(self):
        self._frames = deque()
        self.paused = False

    def __len__(self):
        return len(self._frames)

    def append(self, frame):
        self._frames.append(frame)

    def next(self):
        """
        The next frame to deliver, or None (empty, or paused).
        """
        if self.paused or not self._frames:
            return None
        return self._frames.popleft()

    def clear(self):
        self._frames.clear()
