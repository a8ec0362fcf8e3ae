"""
Tests for L{prokshy.lines.protocol.GuestLineProtocol}.
"""

from __future__ import annotations

import os
import signal

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from prokshy.guest._process import spawnWithReactor
from prokshy.lines.protocol import GuestLineProtocol
from prokshy.guest.runner import CommandRunner

from tests.fakes import SH, LogCapture, MemoryProcessReactor, makeCommandDir


class LineTestCase(unittest.TestCase, LogCapture):
    maxLine = 100

    def setUp(self):
        self.captureLogs()
        self.path = makeCommandDir({"echo": SH, "statgrab": SH})
        self.reactor = MemoryProcessReactor()
        self.runner = CommandRunner(
            self.reactor, self.path, timeout=60, killGrace=2, spawn=spawnWithReactor
        )
        self.protocol = self.buildProtocol()
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def buildProtocol(self):
        return GuestLineProtocol(self.runner, self.reactor, maxLine=self.maxLine)

    def spawned(self):
        """
        @return: C{(name, stdin)} for every command spawned so far; all of
            them are ended, so each later one can start.
        """
        result = []
        for child in self.reactor.processes:
            result.append((os.path.basename(child.args[0]), child.stdin))
        return result

    def endAll(self):
        for child in list(self.reactor.processes):
            if not child.ended:
                child.end(0)

    def runAll(self):
        """
        End every command, including those started by ending another.
        """
        count = -1
        while count != len(self.reactor.processes):
            count = len(self.reactor.processes)
            self.endAll()
        self.reactor.advance(1)
        if count != len(self.reactor.processes):
            self.runAll()


class BasicTests(LineTestCase):
    def test_maxLine(self):
        self.assertEqual(self.protocol.MAX_LENGTH, 100)
        self.assertEqual(
            GuestLineProtocol(self.runner, self.reactor).MAX_LENGTH, 64 * 1024
        )

    def test_bothForms(self):
        self.protocol.dataReceived(b"echo hi\nstatgrab\nignored arg\n")
        self.runAll()
        self.assertEqual(
            self.spawned(), [("echo", b"hi"), ("statgrab", b"ignored arg")]
        )

    def test_splitChunks(self):
        for byte in b"echo a b\r\n":
            self.protocol.dataReceived(bytes([byte]))
        self.assertEqual(self.spawned(), [("echo", b"a b")])

    def test_outputToTransport(self):
        self.protocol.dataReceived(b"echo x\n")
        self.reactor.processes[-1].feedStdout(b"raw\x00out\r\n")
        self.assertEqual(self.transport.value(), b"raw\x00out\r\n")

    def test_transportThrottlesCommand(self):
        self.protocol.dataReceived(b"echo x\n")
        child = self.reactor.processes[-1]
        self.assertIsNotNone(self.transport.producer)
        self.transport.producer.pauseProducing()
        self.assertTrue(child.paused)

    def test_binaryGarbage(self):
        self.protocol.dataReceived(b"\x00\x00\x80\xfe garbage\n\x1b\x7f\necho x\n")
        self.assertEqual(self.spawned(), [("echo", b"x")])
        self.assertLogged("ignored command line", "bad name", "\\x00\\x00")
        self.assertFalse(self.transport.disconnecting)


class LongLineTests(LineTestCase):
    """
    Over-long lines are discarded up to their LF, with one log line, and
    the lines after them are processed.
    """

    def test_sameChunk(self):
        self.protocol.dataReceived(b"x" * 150 + b"\necho after\n")
        self.assertEqual(self.spawned(), [("echo", b"after")])
        self.assertFalse(self.transport.disconnecting)
        self.assertLogged("discarded over-long line (150 bytes, limit 100)")

    def test_manyInOneChunk(self):
        data = b"".join(
            [b"y" * 200 + b"\n", b"echo 1\n", b"z" * 101 + b"\n", b"echo 2\n"]
        )
        self.protocol.dataReceived(data)
        self.runAll()
        self.assertEqual(self.spawned(), [("echo", b"1"), ("echo", b"2")])

    def test_splitAcrossChunks(self):
        self.protocol.dataReceived(b"x" * 60)
        self.protocol.dataReceived(b"x" * 60)
        self.assertEqual(self.logged(), [])
        self.protocol.dataReceived(b"x" * 1000)
        self.protocol.dataReceived(b"x" * 30 + b"\nech")
        self.protocol.dataReceived(b"o later\n")
        self.assertEqual(self.spawned(), [("echo", b"later")])
        self.assertLogged("discarded over-long line (1150 bytes, limit 100)")
        self.assertEqual(
            len([m for m in self.logged() if "over-long" in m]), 1
        )

    def test_lfAloneInNextChunk(self):
        self.protocol.dataReceived(b"x" * 150)
        self.protocol.dataReceived(b"\n")
        self.protocol.dataReceived(b"echo y\n")
        self.assertEqual(self.spawned(), [("echo", b"y")])

    def test_exactlyMaxLength(self):
        """
        A line of exactly C{MAX_LENGTH} bytes is a line.
        """
        line = b"echo " + b"d" * 95
        self.protocol.dataReceived(line[:50])
        self.protocol.dataReceived(line[50:] + b"\n")
        self.assertEqual(self.spawned(), [("echo", b"d" * 95)])

    def test_oneOverMaxLength(self):
        self.protocol.dataReceived(b"echo " + b"d" * 96 + b"\necho ok\n")
        self.assertEqual(self.spawned(), [("echo", b"ok")])

    def test_longArgumentCancelsCommand(self):
        """
        If the argument line of a bare NAME is too long, the command is not
        run (rather than run with the wrong data).
        """
        self.protocol.dataReceived(b"echo\n" + b"a" * 500 + b"\nstatgrab x\n")
        self.reactor.advance(5)
        self.runAll()
        self.assertEqual(self.spawned(), [("statgrab", b"x")])
        self.assertLogged("'echo' not run", "too long")

    def test_floodRateLimited(self):
        for i in range(100):
            self.protocol.dataReceived(b"x" * 300 + b"\n")
        self.assertEqual(len([m for m in self.logged() if "over-long" in m]), 1)
        self.reactor.advance(1)
        self.protocol.dataReceived(b"x" * 300 + b"\n")
        self.assertLogged("over-long", "99 similar")

    def test_connectionLostWhileDiscarding(self):
        self.protocol.dataReceived(b"x" * 300)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertLogged("discarded over-long line (300 bytes")


class HelloTests(LineTestCase):
    def test_defaultIgnores(self):
        self.protocol.dataReceived(b"\xffPROKSHY hello\necho x\n")
        self.assertEqual(self.spawned(), [("echo", b"x")])
        self.assertLogged("ignored framed-protocol hello line")

    def test_hookCalled(self):
        calls = []
        self.protocol.helloLineReceived = calls.append
        self.protocol.dataReceived(b"echo a\n\xff\x01\x02\n")
        self.assertEqual(calls, [b"\xff\x01\x02"])

    def test_hookQueuedCommandsNotConfused(self):
        """
        The hello hook is called at once, even while a command runs.
        """
        calls = []
        self.protocol.helloLineReceived = calls.append
        self.protocol.dataReceived(b"echo a\necho b\n\xffhi\n")
        self.assertEqual(calls, [b"\xffhi"])
        self.assertEqual(len(self.reactor.processes), 1)


class Upgrading(GuestLineProtocol):
    """
    A subclass that switches to raw mode on hello, as the framed layer will.
    """

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.hellos = []
        self.raw = []

    def helloLineReceived(self, line):
        self.hellos.append(line)
        self.handler.reset()
        self.setRawMode()

    def rawDataReceived(self, data):
        raw, end, rest = data.partition(b"\x00END\n")
        self.raw.append(raw)
        if end:
            self.setLineMode(rest)


class UpgradeTests(LineTestCase):
    def buildProtocol(self):
        return Upgrading(self.runner, self.reactor, maxLine=self.maxLine)

    def test_restOfBufferIsRaw(self):
        self.protocol.dataReceived(b"echo a\n\xffhello\nframe\x00\nbytes")
        self.protocol.dataReceived(b"more\n")
        self.assertEqual(self.protocol.hellos, [b"\xffhello"])
        self.assertEqual(b"".join(self.protocol.raw), b"frame\x00\nbytesmore\n")
        self.assertEqual(self.spawned(), [("echo", b"a")])

    def test_afterLongLine(self):
        self.protocol.dataReceived(b"x" * 200 + b"\n\xffhello\nraw\n")
        self.assertEqual(self.protocol.hellos, [b"\xffhello"])
        self.assertEqual(b"".join(self.protocol.raw), b"raw\n")

    def test_backToLineModeThenLongLine(self):
        """
        Back in line mode within the same chunk, an over-long line is still
        skipped without losing the lines after it.
        """
        self.protocol.dataReceived(b"\xffhello\n")
        self.protocol.dataReceived(
            b"raw\x00END\n" + b"x" * 200 + b"\necho after\n"
        )
        self.assertEqual(b"".join(self.protocol.raw), b"raw")
        self.assertEqual(self.spawned(), [("echo", b"after")])
        self.assertLogged("discarded over-long line (200 bytes")

    def test_longLinesNotCutInRawMode(self):
        self.protocol.dataReceived(b"\xffhello\n")
        self.protocol.dataReceived(b"r" * 1000)
        self.assertEqual(b"".join(self.protocol.raw), b"r" * 1000)


class VanishedHostTests(LineTestCase):
    """
    A host that leaves mid-line: its partial line never reaches a command.
    """

    def test_stalePartialLineDropped(self):
        """
        A partial line left for longer than C{staleLine} is dropped (with a
        log line) when the next host's bytes arrive, instead of being glued
        to the front of its request.
        """
        self.protocol.dataReceived(b"stat")
        self.reactor.advance(self.protocol.staleLine + 1)
        self.protocol.dataReceived(b"echo hi\n")
        self.runAll()
        self.assertEqual(self.spawned(), [("echo", b"hi")])
        self.assertLogged("discarded a partial line (4 bytes)")

    def test_slowPiecesKept(self):
        """
        A line arriving in pieces closer together than C{staleLine} is one
        line.
        """
        self.protocol.dataReceived(b"ec")
        self.reactor.advance(self.protocol.staleLine - 1)
        self.protocol.dataReceived(b"ho hi\n")
        self.runAll()
        self.assertEqual(self.spawned(), [("echo", b"hi")])

    def test_hostAwayDropsPartialLineAndPendingName(self):
        """
        When the device reports the host away, a partial line and a name
        waiting for its argument line are both forgotten.
        """
        self.protocol.dataReceived(b"echo\npartial")
        self.protocol.hostAway()
        self.protocol.dataReceived(b"statgrab x\n")
        self.runAll()
        self.assertEqual(self.spawned(), [("statgrab", b"x")])
        self.assertLogged("discarded a partial line (7 bytes): the host went away")
        self.assertLogged("command 'echo' not run: the host went away")


class ConnectionLostTests(LineTestCase):
    def test_runningCommandSurvives(self):
        self.protocol.dataReceived(b"echo x\n")
        child = self.reactor.processes[-1]
        child.feedStdout(b"before")
        self.protocol.connectionLost(Failure(ConnectionDone()))
        child.feedStdout(b"after")
        child.feedStdout(b"after2")
        self.assertEqual(self.transport.value(), b"before")
        self.assertEqual(child.signals, [])
        self.assertIsNone(self.transport.producer)
        self.assertEqual(
            len([m for m in self.logged() if "dropped" in m]), 1, self.logged()
        )
        child.end(0)
        self.assertLogged("command 'echo' exited 0")

    def test_pendingStateForgotten(self):
        self.protocol.dataReceived(b"echo\npartial line")
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.reactor.advance(5)
        self.assertEqual(self.spawned(), [])

    def test_writeAfterLost(self):
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.protocol._writeOutput(b"x")
        self.protocol._writeOutput(b"y")
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(len([m for m in self.logged() if "dropped" in m]), 1)


class RealProcessLineTests(unittest.TestCase, LogCapture):
    """
    The protocol with real scripts.
    """

    def setUp(self):
        self.captureLogs()
        self.path = makeCommandDir(
            {
                "cat": SH + "exec cat\n",
                "slow": SH + "trap 'exit 9' TERM\nsleep 0.2\necho late\n",
            }
        )
        self.runner = CommandRunner(reactor, self.path, timeout=5, killGrace=0.3)
        self.protocol = GuestLineProtocol(self.runner, reactor)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    @defer.inlineCallbacks
    def waitIdle(self):
        while self.runner.running:
            yield defer.gatherResults([e.done for e in self.runner.running])

    @defer.inlineCallbacks
    def test_roundTrip(self):
        self.protocol.dataReceived(b"cat first\ncat\nsecond line\r\n")
        yield self.waitIdle()
        self.assertEqual(self.transport.value(), b"firstsecond line")

    @defer.inlineCallbacks
    def test_lostDuringCommand(self):
        self.protocol.dataReceived(b"slow x\n")
        (execution,) = self.runner.running
        self.protocol.connectionLost(Failure(ConnectionDone()))
        status = yield execution.done
        self.assertEqual(status.code, 0)
        self.assertEqual(self.transport.value(), b"")
        self.assertLogged("'slow' is still running")
        self.assertNotEqual(status.signal, signal.SIGTERM)
