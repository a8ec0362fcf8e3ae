"""
A framed host that goes away without GOODBYE (a daemon on SIGTERM, a killed
CLI) must not poison the next client of the VM socket (issue 7, section 3),
on both of the guest's device transports, with the real agent, real
commands and real sockets:

  - the tty (FreeBSD C{/dev/vtcon/NAME} under bhyve): the real agent on a
    L{prokshy.sim.vmsim.VMSim} pty, in bhyve mode, which never tells the
    guest that the host left;
  - the non-tty L{DeviceTransport} (Linux C{/dev/virtio-ports/NAME} under
    QEMU): the real agent's protocol on a L{DeviceTransport} over a
    socketpair, behind L{VirtioPortModel}, which models the port's host
    presence (a read returns 0 while no host client is attached, as
    C{host_connected} is false, and the departure wakes the guest as the
    kernel's C{POLLHUP} does).

In each, a line-protocol client (C{nc}) that comes after the framed host
gets exactly its answer, and no byte of a frame.
"""

import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from prokshy.guest.agent import GuestProtocol
from prokshy.guest.execs import GuestStreams
from prokshy.guest.runner import CommandRunner
from prokshy.host.client import HOST_PAYLOAD, HOST_WINDOW, HostProtocol
from prokshy.link.session import LinkConfig, SessionEnded
from prokshy.transport.device import DeviceTransport
from tests.harness import (
    STANDARD_COMMANDS,
    RawClient,
    Rig,
    groupAlive,
    shortTempDir,
    waitFor,
    withTimeout,
    writeCommand,
)

#: Prints its pid, then streams a line every 50 ms until killed.
TICKER = "echo $$; while :; do echo tick; sleep 0.05; done"


def hostConfig(pingInterval=1.0):
    """
    A host's link settings; a long C{pingInterval} keeps the host (and a
    guest with the same) from sending anything of its own during a test.
    """
    return LinkConfig(
        window=HOST_WINDOW,
        maxPayload=HOST_PAYLOAD,
        pingInterval=pingInterval,
        deadAfter=max(8.0, 2 * pingInterval),
        rehelloAfter=max(1.5, pingInterval + 1),
    )


class StaleSessionMixin:
    timeout = 60

    @inlineCallbacks
    def startTicker(self, session):
        """
        @return: a Deferred firing with (running, pid) once the ticker
            streams.
        """
        out = bytearray()
        running = yield session.execStream("ticker", out.extend, lambda data: None)
        running.result.addErrback(lambda f: f.trap(SessionEnded))
        yield waitFor(lambda: out.count(b"tick") >= 3, "the ticker to stream")
        return running, int(bytes(out).split(b"\n", 1)[0])

    @inlineCallbacks
    def twoRequests(self, client):
        """
        As C{nc}: two line-protocol requests on one connection; the second
        shows that nothing came between the answers either.

        @return: a Deferred firing with everything received.
        """
        client.transport.write(b"cat\nhello\n")
        yield waitFor(lambda: b"hello" in client.received, "the first answer", timeout=10)
        client.transport.write(b"cat again\n")
        yield waitFor(lambda: b"again" in client.received, "the second answer", timeout=10)
        return bytes(client.received)


class TTYTests(StaleSessionMixin, TestCase):
    """
    The agent on a tty (bhyve): nothing tells it that the host left.
    """

    def rig(self):
        rig = Rig(self)
        rig.addCommand("ticker", TICKER)
        rig.startSim()
        return rig

    @inlineCallbacks
    def lineClient(self, rig):
        client = RawClient()
        yield connectProtocol(UNIXClientEndpoint(reactor, rig.socketPath), client)
        self.addCleanup(lambda: client.isLost or client.transport.abortConnection())
        return client

    @inlineCallbacks
    def test_lineClientAfterQuiet(self):
        """
        A framed host is killed while a command streams (its frames are
        unacknowledged, so the guest would retransmit them).  After three
        of the host's ping intervals the guest goes quiet, well before
        --dead-after (60 s here); a line client that connects then gets
        exactly its answers, and its request ends the dead session at once
        (its command is killed).
        """
        rig = self.rig()
        agent = yield rig.startAgent("--ping-interval", "0.2", "--dead-after", "60")
        host = yield rig.connectHost(hostConfig(pingInterval=0.2))
        running, pid = yield self.startTicker(host.session)
        link = agent.protocol.link
        host.protocol.transport.abortConnection()
        yield host.lost
        yield waitFor(lambda: link.quiet, "the guest to go quiet")
        self.assertEqual(link.state, "UP")
        client = yield self.lineClient(rig)
        received = yield self.twoRequests(client)
        self.assertEqual(received, b"helloagain")
        self.assertEqual(link.state, "IDLE")
        yield waitFor(lambda: not groupAlive(pid), "the dead session's command to be killed")

    @inlineCallbacks
    def test_lineClientAtOnce(self):
        """
        A line client that connects as soon as the framed host is gone,
        while the guest still holds the dead session (nothing is in
        flight, and neither side pings during the test), gets exactly its
        answers: its request ends the session, rather than being taken for
        garbage in framed mode.
        """
        rig = self.rig()
        agent = yield rig.startAgent("--ping-interval", "30", "--dead-after", "60")
        host = yield rig.connectHost(hostConfig(pingInterval=30))
        result = yield host.session.exec("cat", stdin=b"framed")
        self.assertEqual(result.stdout, b"framed")
        link = agent.protocol.link
        yield waitFor(
            lambda: not link.sender.unacked and not host.link.sender.unacked,
            "both sides to have everything acknowledged",
        )
        host.protocol.transport.abortConnection()
        yield host.lost
        yield waitFor(lambda: not rig.sim.hostConnected, "the simulator to see the host go")
        self.assertEqual(link.state, "UP")
        client = yield self.lineClient(rig)
        received = yield self.twoRequests(client)
        self.assertEqual(received, b"helloagain")
        self.assertEqual(link.state, "IDLE")


class VirtioPortModel:
    """
    A Linux virtio-serial port under QEMU, as the guest agent sees it: the
    agent's protocol on a real L{DeviceTransport} over one end of a
    socketpair; the other end is QEMU's chardev, read here, with at most
    one host client attached at a time (clients are in-process protocols).

    While no client is attached the guest's reads return 0 bytes (Linux's
    C{host_connected} is false), and a departure wakes the guest's
    transport as the kernel's C{POLLHUP} would.  Guest output that reaches
    the port while no client is attached is kept in C{unclaimed}: Linux
    would have blocked that write.

    @ivar guest: the L{GuestProtocol}.
    @ivar device: its L{DeviceTransport}.
    @ivar client: the attached host client's protocol, or None.
    """

    def __init__(self, testCase, commandDir, pingInterval, deadAfter):
        self.client = None
        self.unclaimed = bytearray()
        self.runner = CommandRunner(reactor, commandDir, killGrace=0.5)
        testCase.addCleanup(self.runner.cancelAll)
        self.guest = GuestProtocol(
            self.runner,
            reactor,
            GuestStreams(self.runner),
            pingInterval=pingInterval,
            deadAfter=deadAfter,
        )
        guestEnd, portEnd = socket.socketpair()
        self.port = _PortSide(self)
        factory = Factory.forProtocol(lambda: self.port)
        reactor.adoptStreamConnection(portEnd.fileno(), socket.AF_UNIX, factory)
        portEnd.close()
        self.device = DeviceTransport(self.guest, guestEnd.detach(), "/dev/virtio-ports/prokshy")
        self.device._read = self._guestRead
        testCase.addCleanup(self.close)

    def _guestRead(self, fd, size):
        if self.client is None:
            return b""
        return os.read(fd, size)

    def attach(self, protocol):
        """
        A host client connects to the VM socket.
        """
        assert self.client is None
        self.client = protocol
        protocol.makeConnection(_ClientTransport(self, protocol))

    def detach(self, wake=True):
        """
        The host client goes away without a word.  With C{wake}, the guest
        learns it at once (Linux); without, it has not looked yet.
        """
        client, self.client = self.client, None
        if client is not None:
            client.connectionLost(Failure(ConnectionDone("host client killed")))
        if wake and not self.device.disconnected:
            self.device.doRead()

    def _fromGuest(self, data):
        if self.client is None:
            self.unclaimed += data
        else:
            self.client.dataReceived(data)

    def close(self):
        self.detach(wake=False)
        if self.device.connected:
            self.device.abortConnection()
        if self.port.transport is not None:
            self.port.transport.abortConnection()


class _PortSide(Protocol):
    def __init__(self, model):
        self.model = model

    def dataReceived(self, data):
        self.model._fromGuest(data)


class _ClientTransport:
    """
    A host client's transport: its writes go to the guest while attached.
    """

    disconnecting = False

    def __init__(self, model, protocol):
        self.model = model
        self.protocol = protocol

    def write(self, data):
        if self.model.client is self.protocol:
            self.model.port.transport.write(data)

    def writeSequence(self, seq):
        self.write(b"".join(seq))

    def loseConnection(self):
        if self.model.client is self.protocol:
            self.model.detach()

    abortConnection = loseConnection

    def registerProducer(self, producer, streaming):
        pass  # the guest takes everything at once: never paused

    def unregisterProducer(self):
        pass

    def getPeer(self):
        return None

    getHost = getPeer


class LineRecorder(Protocol):
    def __init__(self):
        self.received = bytearray()

    def dataReceived(self, data):
        self.received += data


class DeviceTransportTests(StaleSessionMixin, TestCase):
    """
    The agent on a non-tty device (Linux), which reports the host away and
    back.
    """

    def model(self, pingInterval=1.0, deadAfter=60.0):
        commandDir = os.path.join(shortTempDir(self), "command.d")
        os.mkdir(commandDir)
        os.chmod(commandDir, 0o755)
        for name, body in dict(STANDARD_COMMANDS, ticker=TICKER).items():
            writeCommand(commandDir, name, body)
        return VirtioPortModel(self, commandDir, pingInterval, deadAfter)

    @inlineCallbacks
    def framedHost(self, model, config):
        host = HostProtocol(reactor, config)
        model.attach(host)
        session = yield withTimeout(host.whenSession(), 10, "a framed session")
        return host, session

    def lineClient(self, model):
        client = LineRecorder()
        model.attach(client)
        return client

    @inlineCallbacks
    def test_hostAwayEndsSession(self):
        """
        A framed host is killed while a command streams: the device reports
        the host away, so the guest ends the session at once (the command
        is killed, long before --dead-after) and writes nothing while no
        host is there.  The line client that connects next is a new host:
        it gets exactly its answers.
        """
        model = self.model(pingInterval=0.2)
        host, session = yield self.framedHost(model, hostConfig(pingInterval=0.2))
        running, pid = yield self.startTicker(session)
        link = model.guest.link
        model.detach()
        self.assertFalse(model.device.hostConnected)
        self.assertEqual(link.state, "IDLE")
        self.assertTrue(model.guest.line_mode)
        yield waitFor(lambda: not groupAlive(pid), "the dead session's command to be killed")
        client = self.lineClient(model)
        received = yield self.twoRequests(client)
        self.assertEqual(received, b"helloagain")
        self.assertTrue(model.device.hostConnected)
        self.assertEqual(bytes(model.unclaimed), b"")

    @inlineCallbacks
    def test_unnoticedDepartureThenLineClient(self):
        """
        A framed host is replaced by a line client before the guest looked
        at the device (it never saw the host away): the request, arriving
        in framed mode, ends the dead session, and the client gets exactly
        its answers (nothing is in flight, and nobody pings during the
        test).
        """
        model = self.model(pingInterval=30.0)
        host, session = yield self.framedHost(model, hostConfig(pingInterval=30.0))
        result = yield session.exec("cat", stdin=b"framed")
        self.assertEqual(result.stdout, b"framed")
        link = model.guest.link
        yield waitFor(
            lambda: not link.sender.unacked and not host.link.sender.unacked,
            "both sides to have everything acknowledged",
        )
        model.detach(wake=False)
        client = self.lineClient(model)
        self.assertEqual(link.state, "UP")
        received = yield self.twoRequests(client)
        self.assertEqual(received, b"helloagain")
        self.assertEqual(link.state, "IDLE")
