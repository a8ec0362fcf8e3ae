# -*- test-case-name: tests.test_transport_service -*-
"""
Tests for L{prokshy.transport.service.DeviceService}: retries with backoff on
a L{Clock}, one log line per change of state, a clean stop.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from prokshy.transport.device import DeviceAddress
from prokshy.transport.endpoints import DeviceBusy, DeviceError, DeviceMissing, VtconClientEndpoint
from prokshy.transport.service import DeviceService
from tests.test_transport import RecordingProtocol

PATH = "/dev/vtcon/prokshy"


class FakeTransport(StringTransport):
    """
    A transport whose C{loseConnection} ends the connection on the next
    clock tick (or never, if C{closes} is false).
    """

    def __init__(self, clock, closes=True):
        StringTransport.__init__(self, hostAddress=DeviceAddress(PATH), peerAddress=DeviceAddress(PATH))
        self.clock = clock
        self.closes = closes
        self.aborted = False

    def loseConnection(self):
        StringTransport.loseConnection(self)
        if self.closes:
            self.clock.callLater(0, self.protocol.connectionLost, Failure(ConnectionDone()))

    def abortConnection(self):
        self.aborted = True
        self.protocol.connectionLost(Failure(ConnectionAborted()))


class FakeEndpoint:
    """
    Answers C{connect} from a script: an exception fails it, C{"ok"}
    connects the protocol to a L{FakeTransport}.  After the script, the last
    entry repeats.
    """

    path = PATH

    def __init__(self, clock, *script, closes=True):
        self.clock = clock
        self.script = list(script)
        self.closes = closes
        self.attempts = []
        self.protocols = []

    def connect(self, factory):
        self.attempts.append(self.clock.seconds())
        result = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(result, Exception):
            return fail(result)
        protocol = factory.buildProtocol(DeviceAddress(PATH))
        transport = FakeTransport(self.clock, self.closes)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.protocols.append(protocol)
        return succeed(protocol)


MISSING = DeviceMissing(PATH, 2)
BUSY = DeviceBusy(PATH, 16)


class DeviceServiceTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def service(self, *script, **kwargs):
        self.endpoint = FakeEndpoint(self.clock, *script, closes=kwargs.pop("closes", True))
        service = DeviceService(self.clock, self.endpoint, Factory.forProtocol(RecordingProtocol), **kwargs)
        return service

    def messages(self):
        return [
            formatEvent(e)
            for e in self.events
            if e.get("log_namespace", "").startswith("prokshy.transport.service")
        ]

    def runFor(self, seconds):
        """
        Advance the clock C{seconds}, stopping at each timer exactly.
        """
        end = self.clock.seconds() + seconds
        while True:
            calls = [c.getTime() for c in self.clock.getDelayedCalls()]
            if not calls or min(calls) > end:
                break
            self.clock.advance(max(0, min(calls) - self.clock.seconds()))
        self.clock.advance(end - self.clock.seconds())

    def stop(self, service):
        d = service.stopService()
        self.clock.advance(0)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def delays(self):
        a = self.endpoint.attempts
        return [round(b - a, 6) for a, b in zip(a, a[1:])]

    def test_missingRetriesWithBackoffAndLogsOnce(self):
        """
        A missing device is retried 0.2 s later, doubling to 5 s, and logged
        once, however many retries.
        """
        service = self.service(MISSING)
        service.startService()
        self.runFor(25)
        self.assertEqual(self.delays()[:7], [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
        self.assertGreater(len(self.endpoint.attempts), 8)
        self.assertEqual(self.messages(), ["device /dev/vtcon/prokshy missing; retrying"])
        self.assertTrue(service.running)
        self.stop(service)

    def test_stateChangesLoggedOnce(self):
        """
        Each change of state is logged once: missing, busy, opened.
        """
        service = self.service(MISSING, MISSING, BUSY, BUSY, "ok")
        service.startService()
        self.runFor(10)
        self.assertEqual(
            self.messages(),
            [
                "device /dev/vtcon/prokshy missing; retrying",
                "device /dev/vtcon/prokshy busy: another agent holds it; retrying",
                "device /dev/vtcon/prokshy opened",
            ],
        )
        self.assertEqual(len(self.endpoint.attempts), 5)
        self.assertIsInstance(service.protocol, RecordingProtocol)
        self.assertEqual(service.protocol.events, ["made"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.stop(service)

    def test_unexpectedErrorRetried(self):
        """
        Any other failure is logged (once, as one line, no traceback) and
        retried too.
        """
        service = self.service(RuntimeError("boom"), DeviceError(PATH, 13, "Permission denied"), "ok")
        service.startService()
        self.runFor(1)
        messages = self.messages()
        self.assertEqual(
            messages,
            [
                "device /dev/vtcon/prokshy: boom; retrying",
                "cannot open device /dev/vtcon/prokshy: Permission denied (EACCES); retrying",
                "device /dev/vtcon/prokshy opened",
            ],
        )
        self.assertFalse([e for e in self.events if "log_failure" in e])
        self.stop(service)

    def test_reopensAfterLoss(self):
        """
        When the connection is lost the device is reopened; the backoff
        starts again because the connection had held.
        """
        service = self.service(MISSING, MISSING, MISSING, "ok")
        service.startService()
        self.runFor(3)
        first = service.protocol
        self.clock.advance(60)
        self.endpoint.protocols[0].connectionLost(Failure(ConnectionLost("EIO")))
        self.assertEqual(first.events, ["made", "lost"])
        self.assertIsNone(service.protocol)
        self.clock.advance(0.2)
        self.assertIsNot(service.protocol, first)
        self.assertEqual(service.protocol.events, ["made"])
        self.assertEqual(
            self.messages()[1:],
            [
                "device /dev/vtcon/prokshy opened",
                "device /dev/vtcon/prokshy lost, reopening:"
                " Connection to the other side was lost in a non-clean fashion: EIO.",
                "device /dev/vtcon/prokshy opened",
            ],
        )
        self.stop(service)

    def test_flappingBacksOff(self):
        """
        A device that opens and drops at once is reopened with a growing
        delay, not five times a second.
        """
        service = self.service("ok")
        service.startService()
        for i in range(6):
            self.endpoint.protocols[-1].connectionLost(Failure(ConnectionDone()))
            self.clock.advance(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds())
        self.assertEqual(self.delays(), [0.2, 0.4, 0.8, 1.6, 3.2, 5.0])
        self.assertIn("device /dev/vtcon/prokshy closed; reopening", self.messages())
        self.stop(service)

    def test_optionalMethodsReachProtocol(self):
        """
        The transport sees the service's stand-in, which passes attribute
        lookups (C{hostAway} and friends) to the real protocol.
        """
        service = self.service("ok")
        service.startService()
        wrapper = self.endpoint.protocols[0]
        self.assertEqual(wrapper.hostAway, service.protocol.hostAway)
        self.assertIsNone(getattr(wrapper, "noSuchMethod", None))
        wrapper.dataReceived(b"x")
        self.assertEqual(service.protocol.data, b"x")
        self.stop(service)

    def test_stopWhileRetrying(self):
        service = self.service(MISSING)
        service.startService()
        d = service.stopService()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(service.running)

    def test_stopClosesTransport(self):
        """
        Stopping closes the transport; the Deferred fires once it is closed,
        and nothing is reopened.
        """
        service = self.service("ok")
        service.startService()
        protocol = service.protocol
        d = service.stopService()
        self.assertNoResult(d)
        self.assertTrue(self.endpoint.protocols[0].transport.disconnecting)
        self.clock.advance(0)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(protocol.events, ["made", "lost"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.assertEqual(self.messages()[-1], "device /dev/vtcon/prokshy closed")

    def test_stopAbortsStuckTransport(self):
        """
        A transport that does not close within C{stopTimeout} is aborted.
        """
        service = self.service("ok", closes=False, stopTimeout=2.0)
        service.startService()
        d = service.stopService()
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertIsNone(self.successResultOf(d))
        self.assertTrue(self.endpoint.protocols[0].transport.aborted)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_restart(self):
        service = self.service("ok")
        service.startService()
        self.clock.advance(0)
        service.stopService()
        self.clock.advance(0)
        service.startService()
        self.assertEqual(len(self.endpoint.attempts), 2)
        self.assertEqual(self.messages()[-1], "device /dev/vtcon/prokshy opened")
        service.stopService()
        self.clock.advance(0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RealDeviceServiceTests(TestCase):
    """
    The service around a real L{VtconClientEndpoint}, timed by a L{Clock}.
    """

    def test_waitsForDevice(self):
        """
        The service keeps retrying a device that does not exist yet and
        opens it when it appears.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        clock = Clock()
        path = self.mktemp()
        service = DeviceService(
            clock, VtconClientEndpoint(reactor, path), Factory.forProtocol(RecordingProtocol)
        )
        service.startService()
        clock.pump([0.2, 0.4, 0.8])
        self.assertIsNone(service.protocol)
        os.mkfifo(path)
        clock.advance(1.6)
        protocol = service.protocol
        self.assertIsInstance(protocol, RecordingProtocol)
        self.assertEqual(
            [formatEvent(e) for e in events if "prokshy.transport.service" in e.get("log_namespace", "")],
            ["device %s missing; retrying" % (path,), "device %s opened" % (path,)],
        )
        d = service.stopService()
        d.addCallback(lambda _: self.assertEqual(protocol.events, ["made", "lost"]))
        return d
