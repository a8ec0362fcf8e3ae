"""
The guest's file-put and file-get handlers (L{prokshy.guest.files}) on a
fake stream, with a L{task.Clock}: the commit in either order, the target
unchanged and the temporary file removed on every abnormal end
(mismatch, reset, write failure, a second commit), file-get's flow
control (a chunk at a time, paused with the stream); and the host's end
(L{prokshy.host.files}) against a guest that lies in its EXIT.
"""

import hashlib
import os
import shutil
import tempfile

from twisted.internet import task
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from prokshy import _machines
from prokshy.files import wire
from prokshy.files.rules import FileRules
from prokshy.guest import files as guestfiles
from prokshy.guest.files import FileGetProtocol, FilePutProtocol, GuestFiles
from prokshy.host import files as hostfiles
from prokshy.streams.interfaces import IExecStreamProtocol, ISignalStreamProtocol, IStreamProtocol
from prokshy.streams.stream import StreamRefused, StreamReset
from prokshy.wire import frames


class FakeStream:
    """
    A stream transport that records what the protocol does.
    """

    def __init__(self, kind="file-put", args=None):
        self.kind = kind
        self.args = args or {}
        self.data = []
        self.eof = False
        self.controls = []
        self.aborted = None
        self.closed = False
        self.producer = None
        self.paused = False
        self.ended = False
        self.protocol = None

    def write(self, data):
        self.data.append(bytes(data))

    def writeEof(self):
        self.eof = True

    def sendControl(self, ftype, obj):
        self.controls.append((ftype, obj))

    def loseConnection(self):
        self.closed = True

    def abort(self, code="aborted", message=""):
        self.aborted = (code, message)
        if not self.ended:
            self.ended = True
            self.protocol.connectionLost(Failure(StreamReset(code, message)))

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def connect(self, protocol):
        self.protocol = protocol
        protocol.makeConnection(self)
        return protocol

    def end(self, reason=None):
        if not self.ended:
            self.ended = True
            self.protocol.connectionLost(reason or Failure(ConnectionDone()))


class Dirs:
    def setUp(self):
        self.allow = tempfile.mkdtemp(prefix="pkguest-")
        os.chmod(self.allow, 0o755)
        self.addCleanup(shutil.rmtree, self.allow, True)
        self.clock = task.Clock()
        self.files = GuestFiles(self.clock, FileRules([self.allow]), umask=0o022)
        self.target = os.path.join(self.allow, "t.bin")
        with open(self.target, "wb") as f:
            f.write(b"old contents")
        os.chmod(self.target, 0o644)

    def listing(self):
        return sorted(os.listdir(self.allow))

    def contents(self):
        with open(self.target, "rb") as f:
            return f.read()


class PutTests(Dirs, TestCase):
    def put(self, **args):
        stream = FakeStream("file-put", dict({"path": self.target}, **args))
        proto = self.files.open(stream)
        stream.connect(proto)
        return stream, proto

    def commit(self, proto, data):
        proto.signalReceived(wire.commitSignal(len(data), hashlib.sha256(data).hexdigest()))

    def test_interfaces(self):
        stream, proto = self.put()
        verifyObject(IStreamProtocol, proto)
        verifyObject(ISignalStreamProtocol, proto)

    def test_machine(self):
        self.assertEqual(_machines.undeclared(FilePutProtocol._machine), set())
        self.assertIn(_machines.table(FilePutProtocol._machine), guestfiles.__doc__)

    def test_tempFileWhileReceiving(self):
        stream, proto = self.put()
        temps = [n for n in self.listing() if wire.isTempName(n)]
        self.assertEqual(len(temps), 1)
        self.assertTrue(temps[0].startswith(".t.bin.prokshy-"))
        proto.dataReceived(b"abc")
        self.assertEqual(self.contents(), b"old contents")

    def test_commitAfterEof(self):
        data = os.urandom(200000)
        stream, proto = self.put(mode=0o600, mtime=1234.0)
        for i in range(0, len(data), 32768):
            proto.dataReceived(data[i:i + 32768])
        proto.eofReceived()
        self.assertEqual(self.contents(), b"old contents")
        self.commit(proto, data)
        self.assertEqual(self.contents(), data)
        st = os.stat(self.target)
        self.assertEqual((st.st_mode & 0o777, st.st_mtime), (0o600, 1234.0))
        self.assertEqual(self.listing(), ["t.bin"])
        self.assertTrue(stream.eof and stream.closed)
        self.assertEqual(stream.controls, [(frames.EXIT, wire.exitDocument(len(data),
                                                                            hashlib.sha256(data).hexdigest()))])
        self.assertIsNone(stream.aborted)

    def test_commitBeforeEof(self):
        """
        The SIGNAL can overtake data (it is delivered on arrival): the put
        commits once it also has the rest and the EOF.
        """
        data = b"x" * 1000
        stream, proto = self.put()
        proto.dataReceived(data[:10])
        self.commit(proto, data)
        self.assertEqual(self.contents(), b"old contents")
        proto.dataReceived(data[10:])
        self.assertFalse(stream.closed)
        proto.eofReceived()
        self.assertEqual(self.contents(), data)
        self.assertEqual(os.stat(self.target).st_mode & 0o777, 0o644)  # the default, 0o644 less the umask

    def test_mismatch(self):
        """
        A commit whose digest differs from what was received: RESET
        checksum-mismatch, the target unchanged, no temporary file.
        """
        stream, proto = self.put()
        proto.dataReceived(b"what arrived")
        proto.eofReceived()
        self.commit(proto, b"what was sent")
        self.assertEqual(stream.aborted[0], "checksum-mismatch")
        self.assertIn(self.target, stream.aborted[1])
        self.assertEqual(self.contents(), b"old contents")
        self.assertEqual(self.listing(), ["t.bin"])
        self.assertEqual(stream.controls, [])

    def test_sizeMismatch(self):
        stream, proto = self.put()
        proto.dataReceived(b"abc")
        proto.eofReceived()
        proto.signalReceived(wire.commitSignal(4, hashlib.sha256(b"abc").hexdigest()))
        self.assertEqual(stream.aborted[0], "checksum-mismatch")
        self.assertEqual(self.listing(), ["t.bin"])

    def test_resetMidway(self):
        """
        A stream that ends any other way (RESET, the session's end) removes
        the temporary file and leaves the target.
        """
        for reason in (Failure(StreamReset("cancelled", "")), Failure(ConnectionDone())):
            stream, proto = self.put()
            proto.dataReceived(b"partial")
            stream.end(reason)
            self.assertEqual(self.contents(), b"old contents")
            self.assertEqual(self.listing(), ["t.bin"])

    def test_resetAfterCommitSignal(self):
        stream, proto = self.put()
        proto.dataReceived(b"partial")
        self.commit(proto, b"partial and more")
        stream.end(Failure(StreamReset("cancelled", "")))
        self.assertEqual(self.listing(), ["t.bin"])

    def test_writeFailure(self):
        """
        A write that fails: RESET file-error with the reason, the temporary
        file removed.
        """
        stream, proto = self.put()
        os.close(proto.fd)
        proto.fd = os.open(os.devnull, os.O_RDONLY)
        proto.dataReceived(b"abc")
        self.assertEqual(stream.aborted[0], "file-error")
        self.assertIn("Bad file descriptor", stream.aborted[1])
        self.assertEqual(self.listing(), ["t.bin"])

    def test_renameFailure(self):
        """
        The target became a directory: the rename fails, file-error.
        """
        stream, proto = self.put()
        os.unlink(self.target)
        os.mkdir(self.target)
        os.mkdir(os.path.join(self.target, "x"))
        proto.dataReceived(b"abc")
        proto.eofReceived()
        self.commit(proto, b"abc")
        self.assertEqual(stream.aborted[0], "file-error")
        self.assertEqual(self.listing(), ["t.bin"])

    def test_badSignal(self):
        stream, proto = self.put()
        proto.signalReceived({"signal": "commit", "size": "x"})
        self.assertEqual(stream.aborted[0], "protocol-error")
        self.assertEqual(self.listing(), ["t.bin"])

    def test_secondCommit(self):
        stream, proto = self.put()
        self.commit(proto, b"")
        self.commit(proto, b"")
        self.assertEqual(stream.aborted[0], "protocol-error")
        self.assertEqual(self.listing(), ["t.bin"])

    def test_refusedOpen(self):
        for args, code in (({"path": "/etc/passwd"}, "not-allowed"),
                           ({"path": self.allow + "/no/x"}, "no-such-file"),
                           ({"path": self.target, "mode": "x"}, "bad-open")):
            e = self.assertRaises(StreamRefused, self.files.open, FakeStream("file-put", args))
            self.assertEqual(e.code, code)
        self.assertEqual(self.listing(), ["t.bin"])


class GetTests(Dirs, TestCase):
    def get(self):
        stream = FakeStream("file-get", {"path": self.target})
        proto = self.files.open(stream)
        stream.connect(proto)
        return stream, proto

    def test_flowControl(self):
        """
        The file goes a chunk at a time, never more than CHUNKS_PER_TURN a
        turn, and nothing while the stream has paused it.
        """
        data = os.urandom(wire.CHUNK * 40 + 5)
        with open(self.target, "wb") as f:
            f.write(data)
        stream, proto = self.get()
        self.assertIs(stream.producer, proto.source)
        self.assertEqual(len(stream.data), 1)  # the header line
        header = wire.HeaderReader()
        self.assertEqual(header.feed(stream.data[0]), b"")
        self.assertEqual(header.header["size"], len(data))
        step(self.clock)
        self.assertEqual(len(stream.data), 1 + guestfiles.CHUNKS_PER_TURN)
        self.assertTrue(all(len(d) == wire.CHUNK for d in stream.data[1:]))
        self.assertEqual(len(self.clock.calls), 1)  # the next turn
        stream.producer.pauseProducing()
        self.clock.advance(1)
        self.assertEqual(len(stream.data), 1 + guestfiles.CHUNKS_PER_TURN)
        self.assertEqual(self.clock.calls, [])
        stream.producer.resumeProducing()
        self.clock.advance(0)
        self.assertEqual(b"".join(stream.data[1:]), data)
        self.assertTrue(stream.eof and stream.closed)
        self.assertEqual(stream.controls, [(frames.EXIT, wire.exitDocument(len(data),
                                                                            hashlib.sha256(data).hexdigest()))])
        self.assertIsNone(stream.producer)
        self.assertIsNone(proto.fd)

    def test_growingFile(self):
        """
        A file that grows while read ends one chunk past its announced
        size: the EXIT's size says so.
        """
        with open(self.target, "wb") as f:
            f.write(b"a" * 10)
        stream, proto = self.get()
        with open(self.target, "ab") as f:
            f.write(b"b" * (3 * wire.CHUNK))
        for _ in range(3):
            self.clock.advance(0)
        size = stream.controls[0][1]["size"]
        self.assertGreater(size, 10)
        self.assertLessEqual(size, 10 + wire.CHUNK)

    def test_resetCloses(self):
        stream, proto = self.get()
        fd = proto.fd
        stream.end(Failure(StreamReset("cancelled", "")))
        self.assertIsNone(proto.fd)
        self.assertRaises(OSError, os.fstat, fd)
        self.clock.advance(0)
        self.assertEqual(len(stream.data), 1)


def step(clock):
    """
    Run the first call a L{task.Clock} has waiting, and only it (a reactor
    turn: C{advance(0)} would also run what that call schedules).
    """
    call = clock.calls.pop(0)
    call.called = 1
    call.func(*call.args, **call.kw)


class FakeMux:
    def __init__(self):
        self.opened = []

    def openStream(self, kind, args, protocol, data=b"", eof=False):
        from twisted.internet.defer import succeed

        stream = FakeStream(kind, args)
        stream.connect(protocol)
        self.opened.append((stream, protocol))
        return succeed(stream)


class FakeSession:
    def __init__(self):
        self.mux = FakeMux()


class HostEndTests(TestCase):
    """
    The host's end against a guest that lies: nothing is replaced.
    """

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="pkhost-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.local = os.path.join(self.dir, "local")
        with open(self.local, "wb") as f:
            f.write(b"local before")

    def pull(self, exitFor):
        session = FakeSession()
        sink = hostfiles.LocalFile(self.local).open()
        d = hostfiles.startPull(task.Clock(), session, "/g/f", sink)
        transfers = []
        d.addCallback(transfers.append)
        stream, client = session.mux.opened[0]
        verifyObject(IExecStreamProtocol, client)
        data = b"the file"
        client.dataReceived(wire.encodeHeader(len(data), 0o600, 5.0) + data[:3])
        client.dataReceived(data[3:])
        client.eofReceived()
        client.exitReceived(exitFor(data))
        stream.end()
        return transfers[0].result

    def test_pullLyingExit(self):
        f = self.failureResultOf(self.pull(lambda d: wire.exitDocument(len(d), hashlib.sha256(b"other").hexdigest())))
        self.assertEqual(f.value.code, "checksum-mismatch")
        with open(self.local, "rb") as fh:
            self.assertEqual(fh.read(), b"local before")
        self.assertEqual(os.listdir(self.dir), ["local"])

    def test_pullChanged(self):
        f = self.failureResultOf(self.pull(lambda d: wire.exitDocument(len(d) + 1, hashlib.sha256(d + b"!").hexdigest())))
        self.assertIn(f.value.code, ("checksum-mismatch", "file-changed"))
        self.assertEqual(os.listdir(self.dir), ["local"])

    def test_pullOk(self):
        r = self.successResultOf(self.pull(lambda d: wire.exitDocument(len(d), hashlib.sha256(d).hexdigest())))
        self.assertEqual(r.size, 8)
        with open(self.local, "rb") as fh:
            self.assertEqual(fh.read(), b"the file")
        self.assertEqual(os.stat(self.local).st_mode & 0o777, 0o600)
        self.assertEqual(os.listdir(self.dir), ["local"])

    def test_pullResetRemovesTemp(self):
        session = FakeSession()
        sink = hostfiles.LocalFile(self.local).open()
        transfers = []
        hostfiles.startPull(task.Clock(), session, "/g/f", sink).addCallback(transfers.append)
        stream, client = session.mux.opened[0]
        client.dataReceived(wire.encodeHeader(100, 0o600, 5.0) + b"part")
        self.assertEqual(len(os.listdir(self.dir)), 2)
        stream.end(Failure(StreamReset("file-error", "/g/f: Input/output error")))
        f = self.failureResultOf(transfers[0].result)
        self.assertEqual(f.value.code, "file-error")
        self.assertEqual(os.listdir(self.dir), ["local"])

    def test_pushLyingExit(self):
        """
        A guest whose EXIT does not match what the host sent: the push
        fails checksum-mismatch.
        """
        clock = task.Clock()
        session = FakeSession()
        fd = os.open(self.local, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        transfers = []
        hostfiles.startPush(clock, session, "/g/f", fd).addCallback(transfers.append)
        stream, client = session.mux.opened[0]
        clock.advance(0)
        clock.advance(0)
        self.assertEqual(b"".join(stream.data), b"local before")
        self.assertTrue(stream.eof)
        (ftype, commit), = stream.controls
        self.assertEqual(ftype, frames.SIGNAL)
        self.assertEqual(wire.parseCommit(commit), (12, hashlib.sha256(b"local before").hexdigest()))
        client.exitReceived(wire.exitDocument(12, "0" * 64))
        stream.end()
        f = self.failureResultOf(transfers[0].result)
        self.assertEqual(f.value.code, "checksum-mismatch")
