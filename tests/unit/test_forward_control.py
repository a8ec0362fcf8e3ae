"""
L{prokshy.host.forwards}: the daemon's forward control kinds
(docs/protocol.md §12.9): C{forward-add}, C{forward-list} and
C{forward-remove}, answered with one JSON document (L{DocumentProtocol}),
or refused.

Served over a real Mux/Link pair (a framed client and the daemon's side),
on a L{ForwardTable} whose VMs are fakes.
"""

import errno
import json

from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from prokshy.forward.hostside import ForwardTable
from prokshy.host.forwards import CONTROL_KINDS, DocumentProtocol, ForwardControl
from prokshy.streams.stream import StreamRefused, encodeJSON
from prokshy.wire import frames

from tests.unit.test_forward_bridge import PairMixin, Peer, Reactor
from tests.unit.test_forward_host import WHY, FakeVM, HostWorld


class DocumentProtocolTests(SynchronousTestCase):
    def test_oneDocument(self):
        """
        It writes its document as JSON and closes the stream.
        """
        proto = DocumentProtocol({"forwards": [{"id": "1"}]})
        transport = StringTransport()
        proto.makeConnection(transport)
        self.assertEqual(json.loads(transport.value()), {"forwards": [{"id": "1"}]})
        self.assertEqual(transport.value(), encodeJSON({"forwards": [{"id": "1"}]}))
        self.assertTrue(transport.disconnecting)


class ControlWorld(PairMixin):
    """
    A framed client's Mux and the daemon's, whose open handler is
    L{ForwardControl} on a table of fake VMs.
    """

    def control(self, names=("default",)):
        self.reactor = Reactor()
        self.vms = {name: FakeVM(name) for name in names}
        self.table = ForwardTable(self.reactor, self.vms)
        self.forwardControl = ForwardControl(self.table)

        def daemon(stream):
            if stream.kind not in CONTROL_KINDS:
                raise StreamRefused("unknown-kind", stream.kind)
            return self.forwardControl.open(stream.kind, stream.args)

        self.connectMuxes(daemon)

    def ask(self, kind, **args):
        """
        Open C{kind} from the client: the parsed answer, or the Failure of
        a refusal.
        """
        peer = Peer()
        result = self.answer(self.hostMux.openStream(kind, args, peer))
        if isinstance(result, Failure):
            result.trap(StreamRefused)
            return result
        self.runUntil(lambda: peer.reason is not None)
        self.assertTrue(peer.eof)
        peer.reason.trap(ConnectionDone)
        return json.loads(peer.data)

    def refused(self, kind, **args):
        result = self.ask(kind, **args)
        self.assertIsInstance(result, Failure)
        return result.value.code, result.value.message


class ListTests(ControlWorld, SynchronousTestCase):
    def test_empty(self):
        self.control()
        self.assertEqual(self.ask("forward-list"), {"forwards": []})

    def test_rowsInOrder(self):
        self.control()
        self.ask("forward-add", direction="forward", spec="8080:127.0.0.1:80")
        self.ask("forward-add", direction="reverse", spec="9090:127.0.0.1:90")
        answer = self.ask("forward-list", vm="ignored")
        self.assertEqual([(r["id"], r["direction"], r["state"]) for r in answer["forwards"]],
                         [("1", "forward", "waiting"), ("2", "reverse", "waiting")])
        self.assertEqual(answer["forwards"], self.table.rows())

    def test_answerFrames(self):
        """
        The answer is ACCEPT, the JSON object in DATA, EOF and CLOSE.
        """
        self.control()
        self.ask("forward-list")
        sid = 1
        types = [f.type for f in self.hostTap.frames if f.stream == sid]
        self.assertEqual(types[0], frames.ACCEPT)
        self.assertIn(frames.DATA, types)
        self.assertLess(types.index(frames.DATA), types.index(frames.EOF))
        self.assertLess(types.index(frames.EOF), types.index(frames.CLOSE))


class AddTests(ControlWorld, SynchronousTestCase):
    def test_forward(self):
        """
        forward-add answers the new forward's row.
        """
        self.control()
        answer = self.ask("forward-add", direction="forward", spec="8080:127.0.0.1:80")
        self.assertEqual(
            answer,
            {
                "id": "1",
                "vm": "default",
                "direction": "forward",
                "listen": "127.0.0.1:8080",
                "target": "127.0.0.1:80",
                "state": "waiting",
                "reason": answer["reason"],
                "last_error": None,
                "connections": 0,
                "total_connections": 0,
                "bytes_to_target": 0,
                "bytes_from_target": 0,
                "origin": "client",
            },
        )
        self.assertIn("waiting for the VM (%s)" % (WHY,), answer["reason"])
        self.assertEqual(self.reactor.tcpServers[0][0::3], (8080, "127.0.0.1"))

    def test_badSpec(self):
        """
        A SPEC that is absent, not a string or malformed is refused
        C{bad-spec} with SpecError's one-line message.
        """
        self.control()
        for spec, text in [
            ("8080", "is not [BIND:]PORT:HOST:HOSTPORT"),
            ("99999:h:1", "out of range"),
            ("", "empty forward specification"),
            (5, "a forward specification is a string"),
            (None, "a forward specification is a string"),
        ]:
            args = {"direction": "forward"}
            if spec is not None:
                args["spec"] = spec
            code, message = self.refused("forward-add", **args)
            self.assertEqual(code, "bad-spec", spec)
            self.assertIn(text, message)
            self.assertNotIn("\n", message)
        self.assertEqual((self.table.rows(), self.reactor.tcpServers), ([], []))

    def test_direction(self):
        self.control()
        for direction in (None, "both", "Forward", 1, True):
            args = {"spec": "8080:127.0.0.1:80"}
            if direction is not None:
                args["direction"] = direction
            self.assertEqual(
                self.refused("forward-add", **args), ("bad-spec", "direction must be 'forward' or 'reverse'")
            )
        self.assertEqual(self.table.rows(), [])

    def test_reversePortZero(self):
        self.control()
        code, message = self.refused("forward-add", direction="reverse", spec="0:127.0.0.1:80")
        self.assertEqual(code, "bad-spec")
        self.assertIn("port", message)

    def test_listenFailed(self):
        self.control()
        self.reactor.listenErrors.append(
            CannotListenError("127.0.0.1", 8080, OSError(errno.EADDRINUSE, "Address already in use"))
        )
        self.assertEqual(
            self.refused("forward-add", direction="forward", spec="8080:127.0.0.1:80"),
            ("listen-failed", "cannot listen on 127.0.0.1:8080: address already in use"),
        )
        self.assertEqual(self.ask("forward-list"), {"forwards": []})


class VMChoiceTests(ControlWorld, SynchronousTestCase):
    def test_specWins(self):
        """
        The SPEC's VM= wins over the C{vm} argument.
        """
        self.control(("web", "db"))
        self.assertEqual(self.ask("forward-add", direction="forward", spec="web=8080:127.0.0.1:80", vm="db")["vm"], "web")

    def test_vmArgument(self):
        self.control(("web", "db"))
        self.assertEqual(self.ask("forward-add", direction="forward", spec="8080:127.0.0.1:80", vm="db")["vm"], "db")

    def test_vmIgnoredWhenSpecNames(self):
        """
        A C{vm} of any type is ignored when the SPEC names the VM.
        """
        self.control(("web", "db"))
        self.assertEqual(self.ask("forward-add", direction="forward", spec="web=8080:127.0.0.1:80", vm=5)["vm"], "web")

    def test_severalVMs(self):
        """
        Several VMs and none named: C{no-such-vm}, saying to name one (no
        fall back to the first).
        """
        self.control(("web", "db"))
        for args in ({}, {"vm": None}):
            code, message = self.refused("forward-add", direction="forward", spec="8080:127.0.0.1:80", **args)
            self.assertEqual(code, "no-such-vm")
            self.assertIn("several VMs", message)
            self.assertIn("VM=", message)
        self.assertEqual(self.table.rows(), [])

    def test_unknownVM(self):
        self.control(("web", "db"))
        for args in ({"vm": "nope"}, {"spec": "nope=8080:127.0.0.1:80"}):
            args.setdefault("spec", "8080:127.0.0.1:80")
            code, message = self.refused("forward-add", direction="forward", **args)
            self.assertEqual(code, "no-such-vm")
            self.assertIn("'nope'", message)
            self.assertIn("web, db", message)

    def test_vmNotAString(self):
        self.control(("web", "db"))
        code, message = self.refused("forward-add", direction="forward", spec="8080:127.0.0.1:80", vm=5)
        self.assertEqual(code, "no-such-vm")

    def test_vmNotAStringListsVMs(self):
        """
        docs/protocol.md §12.9: "a C{vm} that is neither absent, null nor a
        string, is refused C{no-such-vm} (the message lists the VM names)".
        """
        self.control(("web", "db"))
        code, message = self.refused("forward-add", direction="forward", spec="8080:127.0.0.1:80", vm=5)
        self.assertIn("web, db", message)

    def test_onlyVM(self):
        self.control()
        self.assertEqual(self.ask("forward-add", direction="forward", spec="8080:127.0.0.1:80")["vm"], "default")
        answer = self.ask("forward-add", direction="forward", spec="8081:127.0.0.1:80", vm="default")
        self.assertEqual(answer["vm"], "default")
        code, _ = self.refused("forward-add", direction="forward", spec="8082:127.0.0.1:80", vm="other")
        self.assertEqual(code, "no-such-vm")


class RemoveTests(ControlWorld, SynchronousTestCase):
    def test_remove(self):
        """
        forward-remove answers the final row; the forward is gone and its
        listener closed.
        """
        self.control()
        added = self.ask("forward-add", direction="forward", spec="8080:127.0.0.1:80")
        removed = self.ask("forward-remove", id="1")
        self.assertEqual(removed, added)
        self.assertEqual(self.reactor.ports[0].stopped, 1)
        self.assertEqual(self.ask("forward-list"), {"forwards": []})
        code, message = self.refused("forward-remove", id="1")
        self.assertEqual(code, "no-such-forward")
        self.assertIn("'1'", message)

    def test_noSuchForward(self):
        self.control()
        self.ask("forward-add", direction="forward", spec="8080:127.0.0.1:80")
        for args in ({"id": "2"}, {"id": 1}, {}, {"id": None}, {"id": ["1"]}):
            self.assertEqual(self.refused("forward-remove", **args)[0], "no-such-forward", args)
        self.assertEqual(len(self.ask("forward-list")["forwards"]), 1)

    def test_idsNeverReused(self):
        self.control()
        self.ask("forward-add", direction="forward", spec="8080:127.0.0.1:80")
        self.ask("forward-remove", id="1")
        self.assertEqual(self.ask("forward-add", direction="forward", spec="8080:127.0.0.1:80")["id"], "2")


class ReverseControlTests(HostWorld, SynchronousTestCase):
    """
    forward-add of a reverse forward on a VM that is up: answered once the
    guest has answered.
    """

    def setUp(self):
        self.world()
        self.forwardControl = ForwardControl(self.table)

    def add(self, spec):
        return self.forwardControl.open("forward-add", {"direction": "reverse", "spec": spec})

    def test_answeredOnceListening(self):
        d = self.add("8080:127.0.0.1:80")
        self.assertNoResult(d)
        box = []
        d.addBoth(box.append)
        self.runUntil(lambda: box)
        self.assertIsInstance(box[0], DocumentProtocol)
        self.assertEqual(box[0].document["state"], "active")
        self.assertEqual(box[0].document["direction"], "reverse")

    def test_guestRefusal(self):
        d = self.add("80:127.0.0.1:80")
        box = []
        d.addBoth(box.append)
        self.runUntil(lambda: box)
        box[0].trap(StreamRefused)
        self.assertEqual(box[0].value.code, "not-allowed")
        self.assertEqual(self.table.rows(), [])

    def test_withdrawnAddIsKept(self):
        """
        docs/protocol.md §12.9: "Once opened, a forward-add is carried
        through: a client that withdraws it (RESET) or goes away before the
        answer does not undo it".  The stream table cancels the Deferred an
        open handler returned when its stream is reset or its session ends
        (L{prokshy.streams.mux.Mux.forget}); that must not undo the add.
        """
        d = self.add("8080:127.0.0.1:80")
        d.addErrback(lambda f: None)
        d.cancel()  # what Mux.forget does when the client withdraws
        self.runUntil(lambda: self.guestReactor.ports)
        self.settle()
        self.assertEqual([(r["id"], r["state"]) for r in self.table.rows()], [("1", "active")])
        self.assertEqual(self.guestReactor.ports[0].stopped, 0)
