# -*- test-case-name: tests.system.test_transport_service -*-
"""
Tests for L{prokshy.transport.service.DeviceService}: retries with backoff on
a L{Clock}, one log line per change of state, a clean stop.
"""

from __future__ import annotations

import os
import termios

from twisted.internet import reactor
from twisted.internet.defer import fail, inlineCallbacks, succeed
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from prokshy.transport.device import DeviceAddress
from prokshy.transport.endpoints import DeviceBusy, DeviceError, DeviceMissing, VtconClientEndpoint
from prokshy.transport.interfaces import IDeviceEndpoint, IDeviceTransport, IHostPresence
from prokshy.transport.service import DeviceService
from tests.system.test_transport import RecordingProtocol, makeCooked, waitFor

PATH = "/dev/vtcon/prokshy"


@implementer(IDeviceTransport)
class FakeTransport(StringTransport):
    """
    A device transport whose C{loseConnection} ends the connection on the
    next clock tick (or never, if C{closes} is false).  C{connectionLost}
    is what a real one does when the device goes: it tells the protocol,
    then the C{whenLost} callbacks.
    """

    def __init__(self, clock, closes=True):
        StringTransport.__init__(self, hostAddress=DeviceAddress(PATH), peerAddress=DeviceAddress(PATH))
        self.clock = clock
        self.closes = closes
        self.aborted = False
        self.lostReason = None
        self._whenLost = []

    def loseConnection(self):
        StringTransport.loseConnection(self)
        if self.closes:
            self.clock.callLater(0, self.connectionLost, Failure(ConnectionDone()))

    def abortConnection(self):
        self.aborted = True
        self.connectionLost(Failure(ConnectionAborted()))

    def discardBuffered(self):
        dropped = len(self.value())
        self.clear()
        return dropped

    def whenLost(self, callback):
        if self.lostReason is not None:
            callback(self.lostReason)
        else:
            self._whenLost.append(callback)

    def connectionLost(self, reason):
        if self.lostReason is not None:
            return
        self.lostReason = reason
        self.protocol.connectionLost(reason)
        for callback in self._whenLost:
            callback(reason)


@implementer(IDeviceEndpoint)
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
        self.endpoint.protocols[0].transport.connectionLost(Failure(ConnectionLost("EIO")))
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
            self.endpoint.protocols[-1].transport.connectionLost(Failure(ConnectionDone()))
            self.clock.advance(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds())
        self.assertEqual(self.delays(), [0.2, 0.4, 0.8, 1.6, 3.2, 5.0])
        self.assertIn("device /dev/vtcon/prokshy closed; reopening", self.messages())
        self.stop(service)

    def test_optionalMethodsReachProtocol(self):
        """
        The transport sees L{ClientService}'s stand-in, which passes
        attribute lookups (C{hostAway} and friends) and the interfaces the
        protocol provides (L{IHostPresence}) to the real protocol.
        """
        service = self.service("ok")
        service.startService()
        wrapper = self.endpoint.protocols[0]
        self.assertIsNot(wrapper, service.protocol)
        self.assertTrue(IHostPresence.providedBy(wrapper))
        self.assertTrue(verifyObject(IHostPresence, wrapper))
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


class ClientServiceTests(TestCase):
    """
    L{DeviceService} is Twisted's L{ClientService} with a retry policy and
    C{prepareConnection}, not a copy of it.
    """

    def setUp(self):
        self.clock = Clock()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_isClientService(self):
        from twisted.application.internet import ClientService

        service = DeviceService(self.clock, FakeEndpoint(self.clock, "ok"), Factory.forProtocol(RecordingProtocol))
        self.assertIsInstance(service, ClientService)

    def test_noLinePerAttempt(self):
        """
        L{ClientService}'s "Scheduling retry" line for each attempt does not
        reach the log: 30 s of retrying a missing device is one line.
        """
        endpoint = FakeEndpoint(self.clock, MISSING)
        service = DeviceService(self.clock, endpoint, Factory.forProtocol(RecordingProtocol))
        service.startService()
        self.clock.pump([1.0] * 30)
        self.assertGreater(len(endpoint.attempts), 5)
        self.assertEqual([e for e in self.events if "Scheduling retry" in e.get("log_format", "")], [])
        self.assertEqual(
            [formatEvent(e) for e in self.events], ["device /dev/vtcon/prokshy missing; retrying"]
        )
        service.stopService()

    def test_quietLogger(self):
        """
        The shared filter (L{prokshy._retrylog}, used by the host daemon's
        VM services too) drops only the per-attempt lines.
        """
        from prokshy._retrylog import quietLogger

        log = quietLogger("prokshy.transport.service.test")
        log.info("Scheduling retry {attempt} to connect {endpoint} in {delay} seconds.",
                 attempt=1, endpoint="x", delay=1)
        log.warn("Duplicate ClientService.startService {log_source}")
        self.assertEqual([e["log_format"] for e in self.events],
                         ["Duplicate ClientService.startService {log_source}"])

    def test_backoffPolicy(self):
        """
        The policy: Twisted's backoff from 0.2 s doubling to 5 s, whose count
        carries on over an open that did not hold for 5 s, and restarts
        after one that did.
        """
        from prokshy.transport.service import DeviceBackoff

        policy = DeviceBackoff(self.clock, 0.2, 5.0)
        self.assertEqual([policy(n) for n in (1, 2, 3)], [0.2, 0.4, 0.8])
        policy.opened()
        self.clock.advance(4.9)
        self.assertEqual(policy(1), 1.6)
        policy.opened()
        self.clock.advance(5.0)
        self.assertEqual(policy(1), 0.2)
        policy.restart()
        self.assertEqual(policy(1), 0.2)

    def test_restartWhileStopping(self):
        """
        Started again before the stopping transport has closed, the service
        opens the device again as soon as it has, and keeps the new
        protocol (the old connection's end does not clear it).
        """
        endpoint = FakeEndpoint(self.clock, "ok")
        service = DeviceService(self.clock, endpoint, Factory.forProtocol(RecordingProtocol))
        service.startService()
        first = service.protocol
        stopped = service.stopService()
        service.startService()
        self.clock.advance(0)
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(len(endpoint.attempts), 2)
        self.assertIsNot(service.protocol, first)
        self.assertEqual(service.protocol.events, ["made"])
        self.assertEqual(first.events, ["made", "lost"])
        d = service.stopService()
        self.clock.advance(0)
        self.assertIsNone(self.successResultOf(d))
        self.assertIsNone(service.protocol)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopWaitsForBookkeeping(self):
        """
        When the Deferred from C{stopService} fires, the service has
        forgotten the protocol.
        """
        service = DeviceService(self.clock, FakeEndpoint(self.clock, "ok"), Factory.forProtocol(RecordingProtocol))
        service.startService()
        seen = []
        service.stopService().addCallback(lambda _: seen.append(service.protocol))
        self.clock.advance(0)
        self.assertEqual(seen, [None])

    def test_notADeviceTransport(self):
        """
        A transport that is not an L{IDeviceTransport} is refused with one
        clear log line, and retried.
        """
        class PlainEndpoint(FakeEndpoint):
            def connect(self, factory):
                self.attempts.append(self.clock.seconds())
                protocol = factory.buildProtocol(DeviceAddress(PATH))
                protocol.makeConnection(StringTransport())
                return succeed(protocol)

        endpoint = PlainEndpoint(self.clock, "ok")
        service = DeviceService(self.clock, endpoint, Factory.forProtocol(RecordingProtocol))
        service.startService()
        self.clock.pump([0.2, 0.4])
        self.assertEqual(len(endpoint.attempts), 3)
        self.assertIsNone(service.protocol)
        [message] = [formatEvent(e) for e in self.events]
        self.assertIn("needs an IDeviceTransport", message)
        self.flushLoggedErrors(TypeError)
        service.stopService()


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

    @inlineCallbacks
    def test_reopenReappliesRawMode(self):
        """
        Each time the service reopens a tty, it is made raw again (FreeBSD
        resets a vtcon tty to cooked on each first open).
        """
        master, slave = os.openpty()
        self.addCleanup(os.close, master)
        self.addCleanup(os.close, slave)
        path = os.ttyname(slave)
        clock = Clock()
        service = DeviceService(
            clock, VtconClientEndpoint(reactor, path), Factory.forProtocol(RecordingProtocol)
        )
        service.startService()
        first = service.protocol
        self.assertFalse(termios.tcgetattr(slave)[3] & termios.ECHO)
        makeCooked(slave)
        self.assertTrue(termios.tcgetattr(slave)[3] & termios.ECHO)
        first.transport.loseConnection()
        yield waitFor(lambda: service.protocol is None)
        clock.advance(0.2)
        self.assertIsNot(service.protocol, first)
        self.assertIsInstance(service.protocol, RecordingProtocol)
        self.assertFalse(termios.tcgetattr(slave)[3] & termios.ECHO)
        self.assertFalse(termios.tcgetattr(slave)[3] & termios.ICANON)
        yield service.stopService()
