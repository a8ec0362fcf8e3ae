"""
The stream's lifecycle machine, its owner interface and the stream
protocol interfaces (issue 8 §1 and §2).

Most tests drive a L{Stream} alone, owned by L{StrictOwner}: an object with
nothing but L{IStreamOwner}, so a stream that reached for anything else of
its owner would fail here.  Frames are fed in by hand and the frames the
stream sends are read back.
"""

import ast
import inspect
import struct

from automat._core import Automaton
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IProtocol, IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

import prokshy.streams.mux
import prokshy.streams.stream
from prokshy import _machines
from prokshy.link.session import SessionEnded
from prokshy.streams.credit import MAX_CREDIT
from prokshy.streams.interfaces import (
    IExecStreamProtocol,
    IOwnedStream,
    ISignalStreamProtocol,
    IStreamOwner,
    IStreamProtocol,
)
from prokshy.streams.mux import Mux
from prokshy.streams.stream import Stream, StreamError, StreamReset, decodeJSON, encodeJSON
from prokshy.wire import frames
from prokshy.wire.frames import Frame
from tests.unit.test_streams import Collector, StreamTestCase

_U32 = struct.Struct(">I")
SID = 1


@implementer(IStreamOwner)
class StrictOwner:
    """
    An L{IStreamOwner} and nothing else (no instance dict to grow into).
    """

    __slots__ = ("writable", "maxPayload", "sent", "blockedStreams", "forgotten")

    def __init__(self, maxPayload=1000):
        self.writable = True
        self.maxPayload = maxPayload
        self.sent = []
        self.blockedStreams = []
        self.forgotten = []

    def send(self, ftype, sid, payload):
        self.sent.append((frames.NAMES[ftype], payload))

    def blocked(self, stream):
        self.blockedStreams.append(stream)

    def forget(self, stream):
        self.forgotten.append(stream)

    def take(self):
        sent, self.sent = self.sent, []
        return sent


class Plain(Protocol):
    """
    A protocol that has every stream method but declares none of the
    stream interfaces: it must get DATA and the end, nothing else.
    """

    def __init__(self):
        self.events = []

    def dataReceived(self, data):
        self.events.append(("data", data))

    def stderrReceived(self, data):
        self.events.append(("stderr", data))

    def eofReceived(self):
        self.events.append(("eof",))

    def exitReceived(self, status):
        self.events.append(("exit", status))

    def signalReceived(self, request):
        self.events.append(("signal", request))

    def connectionLost(self, reason):
        self.events.append(("lost", reason.type))


def frame(ftype, payload=b""):
    return Frame(ftype, SID, payload)


def window(n):
    return frame(frames.WINDOW, _U32.pack(n))


class MachineTests(SynchronousTestCase):
    """
    The lifecycle is an Automat machine: every (state, input) pair is
    declared, and the module docstring carries the table.
    """

    def test_everyPairDeclared(self):
        self.assertEqual(_machines.undeclared(Stream._machine), set())

    def test_states(self):
        self.assertEqual(
            _machines.states(Stream._machine),
            [
                "closed",
                "closing",
                "closingAfterEof",
                "flushing",
                "halfClosedBoth",
                "halfClosedLocal",
                "halfClosedRemote",
                "open",
                "opening",
                "reset",
            ],
        )

    def test_docstringCarriesTable(self):
        self.assertIn(_machines.table(Stream._machine), prokshy.streams.stream.__doc__)

    def test_endedStatesIgnoreEverything(self):
        """
        Once closed or reset, every input is ignored (a second accept is a
        programming error, and the ended query says yes).
        """
        for old, inp, new, outputs in _machines.transitions(Stream._machine):
            if old in ("closed", "reset"):
                self.assertEqual(new, old)
                expected = {"accept": ("_alreadyAccepted",), "endedQueried": ("_yes",)}.get(inp, ())
                self.assertEqual(outputs, expected, (old, inp))

    def test_noTimers(self):
        """
        A stream has no timers (the link has them): no output arms or
        cancels one.
        """
        outputs = {o for row in _machines.transitions(Stream._machine) for o in row[3]}
        self.assertEqual({o for o in outputs if "arm" in o.lower() or "cancel" in o.lower()}, set())

    def test_indexedLookupIsAutomats(self):
        """
        L{_machines.fast} looks transitions up in a dict: for every pair it
        finds what Automat's own scan finds.
        """
        automaton = Stream._machine._automaton
        for state in automaton.states():
            for inp in automaton.inputAlphabet():
                self.assertEqual(
                    automaton.outputForInput(state, inp),
                    Automaton.outputForInput(automaton, state, inp),
                )


class OwnerInterfaceTests(SynchronousTestCase):
    """
    The stream calls only L{IStreamOwner} of its owner.
    """

    def setUp(self):
        self.owner = StrictOwner()
        self.stream = Stream(self.owner, SID, "exec", {"name": "x"}, 4000)
        self.protocol = Collector()

    def test_verify(self):
        verifyObject(IStreamOwner, self.owner)
        verifyObject(IStreamOwner, Mux("host"))
        for iface in (IOwnedStream, ITransport, IPushProducer, IConsumer):
            verifyObject(iface, self.stream)

    def test_ownerMustProvideTheInterface(self):
        self.assertRaises(TypeError, Stream, object(), SID, "exec", {}, 4000)

    def test_lifecycle(self):
        """
        A whole stream through an owner that has nothing but the interface:
        accept, data beyond the credit, a WINDOW, the peer's data, EOF and
        CLOSE both ways.
        """
        stream, owner = self.stream, self.owner
        stream.accept(self.protocol, 1500)
        self.assertTrue(self.protocol.made)
        stream.write(b"a" * 2000)
        self.assertEqual(owner.take(), [("DATA", b"a" * 1000), ("DATA", b"a" * 500)])
        stream.frameReceived(window(700))
        self.assertEqual(owner.take(), [("DATA", b"a" * 500)])
        self.assertEqual(stream.bytesOut, 2000)
        stream.frameReceived(frame(frames.DATA, b"b" * 1000))
        self.assertEqual(owner.take(), [("WINDOW", _U32.pack(1000))])
        self.assertEqual(stream.bytesIn, 1000)
        stream.writeEof()
        stream.frameReceived(frame(frames.EOF))
        stream.loseConnection()
        self.assertEqual(owner.take(), [("EOF", b""), ("CLOSE", b"")])
        self.assertFalse(stream.ended)
        stream.frameReceived(frame(frames.CLOSE))
        self.assertTrue(stream.ended)
        self.assertEqual(owner.take(), [])
        self.assertEqual(owner.forgotten, [stream])
        self.assertEqual(self.protocol.events, [("data", b"b" * 1000), ("eof",)])
        self.protocol.reason.trap(ConnectionDone)

    def test_blocked(self):
        """
        Data the session cannot take now waits; the owner is told, and the
        stream sends when it is resumed.
        """
        self.stream.accept(self.protocol, 4000)
        self.owner.writable = False
        self.stream.write(b"x" * 10)
        self.stream.sendControl(frames.EXIT, {"code": 0})
        self.assertEqual(self.owner.take(), [])
        self.assertEqual(set(self.owner.blockedStreams), {self.stream})
        self.owner.writable = True
        self.stream.resumeSending()
        self.assertEqual(self.owner.take(), [("DATA", b"x" * 10), ("EXIT", encodeJSON({"code": 0}))])

    def test_forgottenOnceOnReset(self):
        self.stream.accept(self.protocol, 4000)
        self.stream.abort("cancelled", "by the test")
        self.stream.abort("again")
        self.stream.frameReceived(frame(frames.RESET, encodeJSON({"code": "x"})))
        self.assertEqual(self.owner.forgotten, [self.stream])
        self.assertEqual(
            self.owner.take(), [("RESET", encodeJSON({"code": "cancelled", "message": "by the test"}))]
        )
        self.protocol.reason.trap(StreamReset)

    def test_sessionEnded(self):
        self.stream.accept(self.protocol, 4000)
        self.stream.sessionEnded(_failure(SessionEnded("gone")))
        self.protocol.reason.trap(SessionEnded)
        self.assertEqual((self.owner.take(), self.owner.forgotten), ([], [self.stream]))


def _failure(exc):
    from twisted.python.failure import Failure

    return Failure(exc)


class LifecycleTests(SynchronousTestCase):
    """
    Transitions the machine made explicit.
    """

    def setUp(self):
        self.owner = StrictOwner()
        self.stream = Stream(self.owner, SID, "exec", {}, 4000)
        self.protocol = Collector()

    def test_notAcceptedYet(self):
        """
        Before it is accepted the stream is nobody's transport: writing to
        it is an error; the peer's frames other than RESET are ignored; an
        abort resets it.
        """
        stream = self.stream
        for call in (
            lambda: stream.write(b"x"),
            lambda: stream.writeStderr(b"x"),
            lambda: stream.sendControl(frames.EXIT, {}),
            stream.writeEof,
            stream.loseConnection,
        ):
            e = self.assertRaises(StreamError, call)
            self.assertEqual(e.code, "not-accepted")
        for f in (frame(frames.DATA, b"x"), window(10), frame(frames.SIGNAL, b"{}"), frame(frames.CLOSE)):
            stream.frameReceived(f)
        self.assertEqual((self.owner.take(), stream.bytesIn), ([], 0))
        self.assertFalse(stream.ended)
        stream.abort("cancelled", "before accept")
        self.assertTrue(stream.ended)
        self.assertEqual(self.owner.take(), [("RESET", encodeJSON({"code": "cancelled", "message": "before accept"}))])
        self.assertEqual(self.owner.forgotten, [stream])

    def test_acceptedTwice(self):
        self.stream.accept(self.protocol, 4000)
        e = self.assertRaises(StreamError, self.stream.accept, Collector(), 4000)
        self.assertEqual(e.code, "already-accepted")

    def _afterEof(self, ftype):
        self.stream.accept(self.protocol, 4000)
        self.stream.frameReceived(frame(frames.EOF))
        self.stream.frameReceived(frame(ftype, b"late"))
        self.assertTrue(self.stream.ended)
        self.protocol.reason.trap(StreamReset)
        self.assertEqual(self.protocol.reason.value.code, "protocol-error")
        [(name, payload)] = self.owner.take()
        self.assertEqual(name, "RESET")
        self.assertEqual(decodeJSON(payload)["code"], "protocol-error")
        self.assertEqual(self.protocol.events, [("eof",)])

    def test_dataAfterEof(self):
        """
        EOF ends the peer's direction: DATA after it resets the stream
        C{protocol-error}, and is not delivered.
        """
        self._afterEof(frames.DATA)

    def test_stderrAfterEof(self):
        self._afterEof(frames.STDERR)

    def test_exitAndSignalAfterEof(self):
        """
        EXIT and SIGNAL are not data: they still come after EOF.
        """
        self.stream.accept(self.protocol, 4000)
        self.stream.frameReceived(frame(frames.EOF))
        self.stream.frameReceived(frame(frames.SIGNAL, encodeJSON({"signal": 15})))
        self.stream.frameReceived(frame(frames.EXIT, encodeJSON({"code": 1})))
        self.assertEqual(
            self.protocol.events, [("eof",), ("signal", {"signal": 15}), ("exit", {"code": 1})]
        )
        self.assertFalse(self.stream.ended)

    def test_closeAnsweredWithQueuedEof(self):
        """
        The peer's CLOSE arrives while our EOF still waits behind data with
        no credit: the data is dropped, but the EOF still goes before our
        CLOSE.
        """
        self.stream.accept(self.protocol, 100)
        self.stream.write(b"x" * 150)
        self.stream.writeEof()
        self.assertEqual(self.owner.take(), [("DATA", b"x" * 100)])
        self.stream.frameReceived(frame(frames.CLOSE))
        self.assertEqual(self.owner.take(), [("EOF", b""), ("CLOSE", b"")])
        self.protocol.reason.trap(ConnectionDone)

    def test_closeAnsweredFromOpen(self):
        self.stream.accept(self.protocol, 100)
        self.stream.write(b"x" * 150)
        self.owner.take()
        self.stream.frameReceived(frame(frames.CLOSE))
        self.assertEqual(self.owner.take(), [("EOF", b""), ("CLOSE", b"")])
        self.stream.write(b"more")
        self.assertEqual(self.owner.take(), [])

    def test_flushing(self):
        """
        Our CLOSE was queued (behind data waiting for credit) before the
        peer's came: the data still goes with the credit the peer grants,
        and the stream is closed when the last of it has gone.
        """
        self.stream.accept(self.protocol, 100)
        self.stream.write(b"x" * 250)
        self.stream.loseConnection()
        self.stream.frameReceived(frame(frames.EOF))
        self.stream.frameReceived(frame(frames.CLOSE))
        self.assertEqual(self.owner.take(), [("DATA", b"x" * 100)])
        self.assertFalse(self.stream.ended)
        self.stream.frameReceived(frame(frames.DATA, b"after the peer's CLOSE"))
        self.stream.frameReceived(window(100))
        self.assertEqual(self.owner.take(), [("DATA", b"x" * 100)])
        self.assertFalse(self.stream.ended)
        self.stream.frameReceived(window(100))
        self.assertEqual(self.owner.take(), [("DATA", b"x" * 50), ("EOF", b""), ("CLOSE", b"")])
        self.assertTrue(self.stream.ended)
        self.assertEqual(self.protocol.events, [("eof",)])
        self.protocol.reason.trap(ConnectionDone)

    def test_creditOverflow(self):
        """
        A WINDOW that would take the credit we hold above L{MAX_CREDIT}
        resets the stream C{flow-control}.
        """
        self.stream.accept(self.protocol, 1000)
        self.stream.frameReceived(window(MAX_CREDIT - 1000))
        self.assertFalse(self.stream.ended)
        self.stream.frameReceived(window(1))
        self.assertTrue(self.stream.ended)
        self.protocol.reason.trap(StreamReset)
        self.assertEqual(self.protocol.reason.value.code, "flow-control")
        [(name, payload)] = self.owner.take()
        self.assertEqual((name, decodeJSON(payload)["code"]), ("RESET", "flow-control"))
        self.assertIn("credit overflow", decodeJSON(payload)["message"])

    def test_signalWhilePaused(self):
        """
        SIGNAL is delivered on arrival; EXIT waits behind the held data.
        """
        self.stream.accept(self.protocol, 4000)
        self.stream.pauseProducing()
        self.stream.frameReceived(frame(frames.DATA, b"held"))
        self.stream.frameReceived(frame(frames.EXIT, encodeJSON({"code": 0})))
        self.stream.frameReceived(frame(frames.SIGNAL, encodeJSON({"signal": 2})))
        self.assertEqual(self.protocol.events, [("signal", {"signal": 2})])
        self.stream.resumeProducing()
        self.assertEqual(
            self.protocol.events,
            [("signal", {"signal": 2}), ("data", b"held"), ("exit", {"code": 0})],
        )

    def test_pausedGrantsNothing(self):
        self.stream.accept(self.protocol, 4000)
        self.stream.pauseProducing()
        self.stream.frameReceived(frame(frames.DATA, b"x" * 3000))
        self.assertEqual(self.owner.take(), [])
        self.stream.resumeProducing()
        self.assertEqual(self.owner.take(), [("WINDOW", _U32.pack(3000))])


class ProtocolInterfaceTests(SynchronousTestCase):
    """
    A stream hands a protocol only the frames of the interfaces it
    declares; nothing is found by name.
    """

    def _feed(self, protocol):
        owner = StrictOwner()
        stream = Stream(owner, SID, "exec", {}, 4000)
        stream.accept(protocol, 4000)
        stream.frameReceived(frame(frames.SIGNAL, encodeJSON({"signal": 9})))
        stream.frameReceived(frame(frames.DATA, b"out"))
        stream.frameReceived(frame(frames.STDERR, b"err"))
        stream.frameReceived(frame(frames.EXIT, encodeJSON({"code": 0})))
        stream.frameReceived(frame(frames.EOF))
        stream.frameReceived(frame(frames.CLOSE))
        return stream

    def test_undeclaredGetsDataOnly(self):
        """
        A protocol with stderrReceived, exitReceived, eofReceived and
        signalReceived methods but none of the interfaces gets DATA and the
        end only; STDERR still spends (and frees) credit.
        """
        p = Plain()
        stream = self._feed(p)
        self.assertEqual(p.events, [("data", b"out"), ("lost", ConnectionDone)])
        self.assertEqual(stream.bytesIn, 6)

    def test_eachInterfaceAlone(self):
        expected = {
            IStreamProtocol: [("eof",)],
            IExecStreamProtocol: [("stderr", b"err"), ("exit", {"code": 0})],
            ISignalStreamProtocol: [("signal", {"signal": 9})],
        }
        for iface, events in expected.items():
            p = implementer(iface)(type("P", (Plain,), {}))()
            verifyObject(iface, p)
            self._feed(p)
            self.assertEqual(
                [e for e in p.events if e[0] not in ("data", "lost")], events, iface
            )

    def test_callSites(self):
        """
        The protocols bound to streams elsewhere declare what they handle.
        """
        from prokshy.guest.execs import ExecStreamProtocol
        from prokshy.host.client import _ExecClient
        from prokshy.host.queue import _Tracked
        from prokshy.host.relay import _Side

        side = _Side(fromVM=True)
        for iface in (IStreamProtocol, IExecStreamProtocol, ISignalStreamProtocol):
            verifyObject(iface, side)
        client = _ExecClient(lambda d: None, lambda d: None)
        verifyObject(IExecStreamProtocol, client)
        self.assertFalse(IStreamProtocol.providedBy(client))
        guest = ExecStreamProtocol.__new__(ExecStreamProtocol)
        verifyObject(IStreamProtocol, guest)
        verifyObject(ISignalStreamProtocol, guest)
        # The guest's end never hears STDERR or EXIT: its stderrReceived is
        # the command's output sink, not a stream input.
        self.assertFalse(IExecStreamProtocol.providedBy(guest))
        tracked = _Tracked(client, lambda: None)
        verifyObject(IExecStreamProtocol, tracked)
        self.assertTrue(IProtocol.providedBy(tracked))
        self.assertFalse(IStreamProtocol.providedBy(tracked))


def _attributesOf(module, isTarget):
    """
    The attribute names C{module}'s code reads on expressions C{isTarget}
    accepts.
    """
    tree = ast.parse(inspect.getsource(module))
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isTarget(node.value)
    }


def _isName(*names):
    return lambda node: isinstance(node, ast.Name) and node.id in names


class BoundaryTests(SynchronousTestCase):
    """
    L{Stream} and L{Mux} use only each other's interfaces.
    """

    def test_muxUsesOnlyTheStreamInterface(self):
        used = _attributesOf(prokshy.streams.mux, _isName("stream"))
        self.assertLessEqual(used, set(IOwnedStream.names()))

    def test_muxReadsNoPrivateAttributeOfOthers(self):
        tree = ast.parse(inspect.getsource(prokshy.streams.mux))
        private = [
            ast.unparse(node)
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not _isName("self")(node.value)
        ]
        self.assertEqual(private, [])

    def test_streamUsesOnlyTheOwnerInterface(self):
        def isOwner(node):
            return _isName("owner")(node) or (
                isinstance(node, ast.Attribute) and node.attr == "_owner"
            )

        used = _attributesOf(prokshy.streams.stream, isOwner)
        self.assertEqual(used, set(IStreamOwner.names()))

    def test_noProbing(self):
        """
        The stream layer finds no method by name.
        """
        import prokshy.streams.buffers
        import prokshy.streams.credit

        for module in (
            prokshy.streams.stream,
            prokshy.streams.mux,
            prokshy.streams.buffers,
            prokshy.streams.credit,
        ):
            tree = ast.parse(inspect.getsource(module))
            probes = [
                node.func.id
                for node in ast.walk(tree)
                if isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
            ]
            self.assertEqual(probes, [], module.__name__)


class OverTheLinkTests(StreamTestCase):
    """
    The new rules end to end, between two L{Mux}es.
    """

    def _guestStream(self):
        guestSide = []
        self.connect(lambda s: guestSide.append(Collector()) or guestSide[-1])
        p = Collector()
        stream = self.open(self.hostMux, "x", {}, p)
        self.runUntil(lambda: guestSide)
        return stream, p, guestSide[0]

    def test_dataAfterEof(self):
        stream, host, guest = self._guestStream()
        self.pair.host.send(frames.EOF, stream.id, b"")
        self.pair.host.send(frames.DATA, stream.id, b"late")
        self.runUntil(lambda: host.done and guest.done)
        for proto in (host, guest):
            proto.reason.trap(StreamReset)
            self.assertEqual(proto.reason.value.code, "protocol-error")
        self.assertEqual(guest.events, [("eof",)])
        self.assertEqual((self.hostMux.streams, self.guestMux.streams), ({}, {}))

    def test_creditOverflow(self):
        stream, host, guest = self._guestStream()
        self.pair.guest.send(frames.WINDOW, stream.id, _U32.pack(0xFFFFFFFF))
        self.runUntil(lambda: host.done and guest.done)
        for proto in (host, guest):
            proto.reason.trap(StreamReset)
            self.assertEqual(proto.reason.value.code, "flow-control")

