"""
The CLI's forwarding modes, without processes or sockets: the options
(L{prokshy.cli.options}: C{--forward}, C{--reverse}, C{--forwards},
C{--unforward} and every usage error), the C{--forwards} table and the
C{--json} lines (L{prokshy.cli.forwards}), and the client's control streams
(L{prokshy.host.client.Session.forwardAdd} and friends) against an
in-memory daemon over a L{prokshy.testing.LinkPair}.
"""

import io
import json
import sys

from twisted.trial.unittest import SynchronousTestCase

from prokshy.cli import forwards
from prokshy.cli.format import CLIError
from prokshy.cli.forwards import DaemonForwards, describe, formatForwards, refusalLine, size
from prokshy.cli.options import ForwardRequest, buildParser, parseArgs
from prokshy.cli.output import FileOutput
from prokshy.forward.spec import ForwardSpec, Tcp, Unix
from prokshy.host.client import Session
from prokshy.link.session import LinkConfig
from prokshy.streams.mux import Mux
from prokshy.streams.stream import StreamRefused, encodeJSON
from prokshy.testing import LinkPair, deterministicNonces


class _Stderr:
    """
    Patch C{sys.stderr} (argparse's messages) and C{sys.stdout}.
    """

    def patchOutputs(self):
        self.stderr = io.StringIO()
        self.stdout = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.patch(sys, "stdout", self.stdout)


class ForwardOptionTests(_Stderr, SynchronousTestCase):
    """
    L{parseArgs} for the forwarding modes.
    """

    def setUp(self):
        self.patchOutputs()

    def parse(self, *args):
        return parseArgs(["--socket-path", "/d.sock"] + list(args))

    def usageError(self, *args):
        """
        Parsing C{args} (after C{--socket-path}) exits 2.

        @return: what was written on stderr.
        """
        self.stderr.seek(0)
        self.stderr.truncate()
        exc = self.assertRaises(SystemExit, parseArgs, ["--socket-path", "/d.sock"] + list(args))
        self.assertEqual(exc.code, 2, args)
        text = self.stderr.getvalue()
        self.assertIn("prokshy: error: ", text)
        return text

    def test_forwardNeedsNoCommand(self):
        """
        C{--forward SPEC} alone is a whole command line: no C{--command}, no
        input; the SPEC is parsed.
        """
        options = self.parse("--forward", "8080:127.0.0.1:80")
        self.assertEqual(options.forward_mode, "add")
        self.assertIsNone(options.command)
        self.assertEqual(
            options.forward_specs,
            [
                ForwardRequest(
                    "forward", "8080:127.0.0.1:80", ForwardSpec(Tcp("127.0.0.1", 8080), Tcp("127.0.0.1", 80))
                )
            ],
        )

    def test_mixedInOrder(self):
        """
        C{--forward} and C{--reverse} are repeatable and may be mixed; their
        order on the command line is kept.
        """
        options = self.parse(
            "--reverse", "vm1=9000:/run/app.sock", "--forward", "[::1]:8080:[::1]:80",
            "--forward", "/tmp/h.sock:127.0.0.1:22", "--json",
        )
        self.assertEqual(
            [(r.direction, r.text) for r in options.forward_specs],
            [("reverse", "vm1=9000:/run/app.sock"), ("forward", "[::1]:8080:[::1]:80"),
             ("forward", "/tmp/h.sock:127.0.0.1:22")],
        )
        self.assertEqual(options.forward_specs[0].spec, ForwardSpec(Tcp("127.0.0.1", 9000), Unix("/run/app.sock"), "vm1"))
        self.assertEqual(options.forward_specs[1].spec.listen, Tcp("::1", 8080))
        self.assertEqual(options.forward_specs[2].spec.listen, Unix("/tmp/h.sock"))
        self.assertTrue(options.json)

    def test_listAndRemove(self):
        """
        C{--forwards} lists; C{--unforward ID} (repeatable) removes.
        """
        options = self.parse("--forwards", "--json")
        self.assertEqual((options.forward_mode, options.forward_specs, options.unforward), ("list", [], []))
        options = self.parse("--unforward", "3", "--unforward", "7")
        self.assertEqual((options.forward_mode, options.unforward), ("remove", ["3", "7"]))

    def test_connectEndpoint(self):
        """
        C{--connect ENDPOINT} works as C{--socket-path} does.
        """
        options = parseArgs(["--connect", "tcp:host=127.0.0.1:port=7000", "--forwards"])
        self.assertEqual(options.forward_mode, "list")

    def test_otherModesUnchanged(self):
        """
        Without the forwarding flags nothing changes: C{--command} is still
        required, and C{forward_mode} is None.
        """
        options = self.parse("--command", "cat", "--from-string", "x")
        self.assertEqual((options.forward_mode, options.forward_specs, options.unforward), (None, [], []))
        self.assertIn("--command", self.usageError())

    def test_malformedSpecOneLine(self):
        """
        A malformed SPEC is a usage error of exactly one line (no usage
        text), naming the flag and saying what is wrong; exit 2.
        """
        for args, fragments in [
            (["--forward", "8080"], ["--forward", "8080"]),
            (["--forward", "x:y"], ["--forward", "'x:y'"]),
            (["--reverse", "vm1=99999:127.0.0.1:80"], ["--reverse vm1=99999:127.0.0.1:80", "out of range"]),
            (["--forward", "8080:::1:80"], ["--forward", "brackets"]),
            (["--forward", "8080:127.0.0.1:0"], ["target port 0"]),
            (["--forward", ""], ["empty forward specification"]),
            (["--forward", "8080:127.0.0.1:80", "--reverse", "nope"], ["--reverse", "'nope'"]),
            (["--reverse", "0:127.0.0.1:80"], ["--reverse 0:127.0.0.1:80", "needs a listening port (not 0)"]),
        ]:
            text = self.usageError(*args)
            self.assertEqual(text.count("\n"), 1, text)
            self.assertTrue(text.startswith("prokshy: error: --"), text)
            self.assertNotIn("usage:", text)
            for fragment in fragments:
                self.assertIn(fragment, text)

    def test_quotedOnce(self):
        """
        The SPEC is not repeated when the parser's message quotes it.
        """
        text = self.usageError("--forward", "vm1=bad")
        self.assertEqual(text.count("bad"), 1, text)

    def test_modesExcludeEachOther(self):
        """
        C{--forwards} and C{--unforward} exclude C{--forward}/C{--reverse}
        and each other.
        """
        for args, message in [
            (["--forward", "1:a:2", "--forwards"], "--forward cannot be used with --forwards"),
            (["--reverse", "1:a:2", "--unforward", "1"], "--reverse cannot be used with --unforward"),
            (["--forwards", "--unforward", "1"], "--forwards cannot be used with --unforward"),
        ]:
            self.assertIn(message, self.usageError(*args))

    def test_excludeCommandModes(self):
        """
        The forwarding modes exclude C{--command}, C{--status}, C{--info},
        the command's input and C{--all-vms}.
        """
        for mode in (["--forward", "1:a:2"], ["--reverse", "1:a:2"], ["--forwards"], ["--unforward", "1"]):
            for other in (["--command", "cat"], ["--status"], ["--info"], ["--from-string", "x"],
                          ["--stdin"], ["--all-vms"]):
                text = self.usageError(*(mode + other))
                self.assertIn("%s cannot be used with %s" % (mode[0], other[0]), text)

    def test_needsFramed(self):
        self.assertIn("--forward needs the framed protocol", self.usageError("--forward", "1:a:2", "--protocol", "legacy"))

    def test_needsTarget(self):
        exc = self.assertRaises(SystemExit, parseArgs, ["--forwards"])
        self.assertEqual(exc.code, 2)
        self.assertIn("--socket-path --connect", self.stderr.getvalue())

    def test_vm(self):
        """
        One C{--vm} names the VM of SPECs without C{VM=}; more is an error,
        and C{--unforward} takes none.
        """
        self.assertEqual(self.parse("--vm", "a", "--forward", "1:a:2").vm, ["a"])
        self.assertEqual(self.parse("--vm", "a", "--vm", "b", "--forwards").vm, ["a", "b"])
        self.assertIn("at most one --vm", self.usageError("--vm", "a", "--vm", "b", "--forward", "1:a:2"))
        self.assertIn("--unforward takes a forward id", self.usageError("--vm", "a", "--unforward", "1"))

    def test_help(self):
        """
        The help names the flags, SPEC's syntax and the exit codes: 1 for a
        refusal, 2 for a malformed SPEC, 130 for the foreground mode.
        """
        text = " ".join(buildParser().format_help().split())
        for fragment in (
            "--forward SPEC", "--reverse SPEC", "--forwards", "--unforward ID",
            "[VM=][BIND:]PORT:HOST:HOSTPORT", "ssh -L", "ssh -R",
            "1 when the daemon or the guest refused", "2 for a malformed SPEC",
            "until Ctrl-C or SIGTERM: 130",
        ):
            self.assertIn(fragment, text)


# -- the table and the JSON lines ------------------------------------------------


def row(**kw):
    base = {
        "id": "1", "vm": "default", "direction": "forward", "listen": "127.0.0.1:8080",
        "target": "127.0.0.1:80", "state": "active", "reason": "listening", "last_error": None,
        "connections": 0, "total_connections": 0, "bytes_to_target": 0, "bytes_from_target": 0,
        "origin": "client",
    }
    base.update(kw)
    return base


class FormatTests(SynchronousTestCase):
    def test_table(self):
        """
        One line per forward under the header, aligned; bytes readable; a
        forward that is not active gets its reason, one with a last error
        gets it, each on an indented line below.
        """
        text = formatForwards(
            [
                row(connections=2, bytes_to_target=1234, bytes_from_target=99),
                row(id="2", vm="web", direction="reverse", listen="127.0.0.1:9000", target="/run/app.sock",
                    state="waiting", reason="waiting for the VM: not connected"),
                row(id="10", listen="127.0.0.1:8081", state="failed",
                    reason="127.0.0.1:8081: address already in use",
                    last_error="connection from 127.0.0.1:5000 refused by the guest: not-allowed: no"),
                row(id="11", last_error="connection from 127.0.0.1:5001 refused by the guest:\nreset"),
            ]
        )
        lines = text.split("\n")
        self.assertEqual(lines[-1], "")
        self.assertEqual(lines[0].split(), ["ID", "VM", "DIR", "LISTEN", "TARGET", "STATE", "CONNS", "TO-TARGET", "FROM-TARGET"])
        self.assertEqual(lines[1].split(), ["1", "default", "forward", "127.0.0.1:8080", "127.0.0.1:80", "active", "2", "1.2kB", "99B"])
        self.assertEqual(lines[2].split(), ["2", "web", "reverse", "127.0.0.1:9000", "/run/app.sock", "waiting", "0", "0B", "0B"])
        self.assertEqual(lines[3], "    waiting for the VM: not connected")
        self.assertEqual(lines[4].split()[:6], ["10", "default", "forward", "127.0.0.1:8081", "127.0.0.1:80", "failed"])
        self.assertEqual(lines[5], "    127.0.0.1:8081: address already in use")
        self.assertEqual(lines[6], "    last error: connection from 127.0.0.1:5000 refused by the guest: not-allowed: no")
        self.assertEqual(lines[7].split()[0], "11")
        self.assertEqual(lines[8], "    last error: connection from 127.0.0.1:5001 refused by the guest: reset")
        self.assertEqual(len(lines), 10)
        # the columns line up
        header = lines[0]
        for line, target in ((lines[1], "127.0.0.1:80 "), (lines[2], "/run/app.sock "), (lines[4], "127.0.0.1:80 ")):
            self.assertTrue(line[header.index("TARGET"):].startswith(target), (header, line))
        # nothing below an active forward without an error
        self.assertFalse(lines[2].startswith(" "))

    def test_empty(self):
        self.assertEqual(formatForwards([]), "no forwards\n")

    def test_size(self):
        self.assertEqual([size(n) for n in (None, 0, 999, 1000, 1500, 64 * 10 ** 6, 5 * 10 ** 12)],
                         ["0B", "0B", "999B", "1.0kB", "1.5kB", "64.0MB", "5.0TB"])

    def test_describe(self):
        self.assertEqual(describe(row(direction="reverse", listen="[::1]:9", target="/x")), "reverse [::1]:9 -> /x")

    def test_refusalLine(self):
        self.assertEqual(refusalLine("forward 1:a:2", StreamRefused("no-such-vm", "no vm named 'x'\n(a, b)")),
                         "forward 1:a:2: no-such-vm: no vm named 'x' (a, b)")
        self.assertEqual(refusalLine("unforward 3", StreamRefused("no-such-forward")), "unforward 3: no-such-forward")


# -- against an in-memory daemon ------------------------------------------------


class _Answer:
    """
    A control stream's answer: one JSON document, then the end.
    """

    def __init__(self, document):
        self.document = document

    def makeConnection(self, transport):
        self.transport = transport
        transport.write(encodeJSON(self.document))
        transport.loseConnection()

    def dataReceived(self, data):
        pass

    def connectionLost(self, reason):
        pass


class FakeDaemon:
    """
    The daemon's forward control kinds, in memory: C{forward-add} keeps a
    row (or refuses as C{refusals} says, by SPEC text), C{forward-list}
    lists them, C{forward-remove} removes one.

    @ivar opens: C{(kind, args)} of every open, in order.
    """

    def __init__(self):
        self.opens = []
        self.rows = []
        self.refusals = {}
        #: A Deferred to answer every open with (it stays pending), or None.
        self.hang = None
        self._next = 1

    def __call__(self, stream):
        args = dict(stream.args)
        self.opens.append((stream.kind, args))
        if self.hang is not None:
            return self.hang
        if stream.kind == "forward-add":
            if args["spec"] in self.refusals:
                raise StreamRefused(*self.refusals[args["spec"]])
            spec = args["spec"].partition("=")[2] if "=" in args["spec"] else args["spec"]
            listen, _, target = spec.partition(":127.0.0.1:")
            new = row(id=str(self._next), vm=args.get("vm", "default"), direction=args["direction"],
                      listen="127.0.0.1:" + listen, target="127.0.0.1:" + target)
            self._next += 1
            self.rows.append(new)
            return _Answer(new)
        if stream.kind == "forward-list":
            return _Answer({"forwards": list(self.rows)})
        if stream.kind == "forward-remove":
            for old in self.rows:
                if old["id"] == args["id"]:
                    self.rows.remove(old)
                    return _Answer(old)
            raise StreamRefused("no-such-forward", "no forward %s" % (args["id"],))
        raise StreamRefused("unknown-kind", stream.kind)


class DaemonTestMixin:
    def connectDaemon(self, features=("exec", "info", "status", "vm", "forward")):
        deterministicNonces(self)
        self.daemon = FakeDaemon()
        self.hostMux = Mux("host")
        self.pair = LinkPair(
            self.hostMux,
            Mux("guest", openHandler=self.daemon),
            guestConfig=LinkConfig(features=features, extra={"server": "prokshy-host"}),
        )
        self.pair.connect()
        self.addCleanup(self.pair.stop)
        self.session = Session(self.hostMux)
        self.hello = self.hostMux.info.peerHello

    def wait(self, d):
        results = []
        d.addBoth(results.append)
        self.pair.run(until=lambda: results, duration=10)
        self.assertEqual(len(results), 1, "no answer")
        return results[0]


class SessionForwardTests(DaemonTestMixin, SynchronousTestCase):
    """
    L{Session.forwardAdd}, L{Session.forwardList}, L{Session.forwardRemove}.
    """

    def setUp(self):
        self.connectDaemon()

    def test_add(self):
        """
        C{forward-add} carries the direction, the SPEC text and C{vm} only
        when given; the answer is the row.
        """
        first = self.wait(self.session.forwardAdd("forward", "8080:127.0.0.1:80"))
        second = self.wait(self.session.forwardAdd("reverse", "9000:127.0.0.1:90", vm="web"))
        self.assertEqual(
            self.daemon.opens,
            [("forward-add", {"direction": "forward", "spec": "8080:127.0.0.1:80"}),
             ("forward-add", {"direction": "reverse", "spec": "9000:127.0.0.1:90", "vm": "web"})],
        )
        self.assertEqual((first["id"], first["listen"], first["direction"]), ("1", "127.0.0.1:8080", "forward"))
        self.assertEqual((second["id"], second["vm"], second["direction"]), ("2", "web", "reverse"))

    def test_addRefused(self):
        self.daemon.refusals["bad"] = ("bad-spec", "no good")
        failure = self.wait(self.session.forwardAdd("forward", "bad"))
        failure.trap(StreamRefused)
        self.assertEqual((failure.value.code, failure.value.message), ("bad-spec", "no good"))

    def test_listAndRemove(self):
        """
        C{forward-list} gives the rows; C{forward-remove} sends the id as a
        string and gives the final row, or fails C{no-such-forward}.
        """
        self.assertEqual(self.wait(self.session.forwardList()), [])
        self.wait(self.session.forwardAdd("forward", "8080:127.0.0.1:80"))
        self.wait(self.session.forwardAdd("forward", "8081:127.0.0.1:81"))
        self.assertEqual([r["id"] for r in self.wait(self.session.forwardList())], ["1", "2"])
        removed = self.wait(self.session.forwardRemove(1))
        self.assertEqual(removed["id"], "1")
        self.assertEqual(self.daemon.opens[-1], ("forward-remove", {"id": "1"}))
        self.assertEqual([r["id"] for r in self.wait(self.session.forwardList())], ["2"])
        failure = self.wait(self.session.forwardRemove("1"))
        failure.trap(StreamRefused)
        self.assertEqual(failure.value.code, "no-such-forward")


class DaemonForwardsTests(_Stderr, DaemonTestMixin, SynchronousTestCase):
    """
    L{DaemonForwards}: what the CLI prints and exits with, with a daemon.
    """

    def setUp(self):
        self.patchOutputs()
        self.connectDaemon()

    def runCLI(self, *args, features=None):
        options = parseArgs(["--socket-path", "/d.sock"] + list(args))
        out, err = io.BytesIO(), io.BytesIO()
        hello = self.hello
        if features is not None:
            hello = dict(hello, features=features)
        runner = DaemonForwards(self.session, hello, options, FileOutput(out, "stdout"), FileOutput(err, "stderr"))
        result = self.wait(runner.run())
        return out.getvalue().decode(), err.getvalue().decode(), result

    def test_addPrintsIds(self):
        """
        Each forward is added in order; each id on its own line; exit 0.
        """
        out, err, code = self.runCLI("--forward", "8080:127.0.0.1:80", "--reverse", "9000:127.0.0.1:90")
        self.assertEqual((out, err, code), ("1\n2\n", "", 0))
        self.assertEqual([(k, a["direction"]) for k, a in self.daemon.opens],
                         [("forward-add", "forward"), ("forward-add", "reverse")])

    def test_addJSON(self):
        """
        With C{--json}, one record (issue 11: every mode's records have
        one shape) whose C{forwards} lists the new rows, in order.
        """
        out, err, code = self.runCLI("--json", "--forward", "8080:127.0.0.1:80", "--forward", "8081:127.0.0.1:81")
        lines = out.splitlines()
        self.assertEqual(len(lines), 1)
        record = json.loads(lines[0])
        self.assertEqual((record["mode"], record["ok"], record["failure"]), ("forwards", True, None))
        self.assertEqual(record["forwards"], self.daemon.rows)
        self.assertEqual(code, 0)

    def test_addVM(self):
        self.runCLI("--vm", "web", "--forward", "8080:127.0.0.1:80")
        self.assertEqual(self.daemon.opens[0][1]["vm"], "web")

    def test_refused(self):
        """
        A refusal is one line, C{prokshy: DIRECTION SPEC: CODE: MESSAGE},
        and exit 1; the ones before it were added (their ids printed), the
        ones after it are not tried.
        """
        self.daemon.refusals["9000:127.0.0.1:90"] = ("not-allowed", "127.0.0.1:9000 is not allowed by --allow-listen")
        out, err, code = self.runCLI("--forward", "8080:127.0.0.1:80", "--reverse", "9000:127.0.0.1:90",
                                  "--forward", "8082:127.0.0.1:82")
        self.assertEqual(out, "1\n")
        self.assertEqual(err, "prokshy: reverse 9000:127.0.0.1:90: not-allowed: "
                              "127.0.0.1:9000 is not allowed by --allow-listen\n")
        self.assertEqual(code, 1)
        self.assertEqual(len(self.daemon.opens), 2)

    def test_list(self):
        self.runCLI("--forward", "8080:127.0.0.1:80")
        out, err, code = self.runCLI("--forwards")
        self.assertEqual((out, err, code), (formatForwards(self.daemon.rows), "", 0))
        self.assertTrue(out.startswith("ID "))

    def test_listJSON(self):
        """
        C{--forwards --json}: one record whose C{forwards} lists every
        forward; none: an empty list (the table says C{no forwards}).
        """
        out, err, code = self.runCLI("--forwards", "--json")
        self.assertEqual((json.loads(out)["forwards"], err, code), ([], "", 0))
        self.assertEqual(self.runCLI("--forwards"), ("no forwards\n", "", 0))
        self.runCLI("--forward", "8080:127.0.0.1:80", "--vm", "a")
        self.runCLI("--forward", "8081:127.0.0.1:81", "--vm", "b")
        out, err, code = self.runCLI("--forwards", "--json")
        self.assertEqual(json.loads(out)["forwards"], self.daemon.rows)
        out, err, code = self.runCLI("--forwards", "--json", "--vm", "b")
        self.assertEqual([row["id"] for row in json.loads(out)["forwards"]], ["2"])

    def test_remove(self):
        """
        C{--unforward ID} prints nothing and exits 0; an unknown id exits 1
        with the daemon's message.
        """
        self.runCLI("--forward", "8080:127.0.0.1:80")
        self.assertEqual(self.runCLI("--unforward", "1"), ("", "", 0))
        self.assertEqual(self.daemon.rows, [])
        self.assertEqual(self.runCLI("--unforward", "1"),
                         ("", "prokshy: unforward 1: no-such-forward: no forward 1\n", 1))

    def test_oldDaemon(self):
        """
        A daemon whose hello lacks the C{forward} feature is not asked: one
        clear line, exit 1.
        """
        failure = self.wait(DaemonForwards(
            self.session, {"agent": "prokshy/0.1", "features": ["exec"]},
            parseArgs(["--socket-path", "/d", "--forwards"]), None, None).run())
        failure.trap(CLIError)
        self.assertEqual(failure.value.code, 1)
        self.assertIn("predates forwarding", failure.value.message)
        self.assertEqual(self.daemon.opens, [])

    def test_sessionEnded(self):
        """
        The daemon going away while a request waits for its answer is a
        transport failure: 255, in one line.
        """
        from twisted.internet.defer import Deferred

        self.daemon.hang = Deferred()
        options = parseArgs(["--socket-path", "/d.sock", "--forwards"])
        out, err = io.BytesIO(), io.BytesIO()
        runner = DaemonForwards(self.session, self.hello, options, FileOutput(out, "stdout"), FileOutput(err, "stderr"))
        results = []
        runner.run().addBoth(results.append)
        self.pair.run(until=lambda: self.daemon.opens, duration=5)
        self.assertEqual(results, [])
        self.pair.host.goodbye("test")
        self.pair.run(until=lambda: results, duration=5)
        self.assertEqual(results, [255])
        text = err.getvalue().decode()
        self.assertEqual(text.count("\n"), 1, text)
        self.assertTrue(text.startswith("prokshy: forwards: "), text)
        self.assertEqual(out.getvalue(), b"")

    def test_noSession(self):
        """
        No session to send on at all: 255, in one line.
        """
        self.pair.host.goodbye("test")
        out, err, code = self.runCLI("--forwards")
        self.assertEqual(code, 255)
        self.assertEqual(err, "prokshy: forwards: the session ended: no session\n")


class ModuleTests(SynchronousTestCase):
    def test_vmName(self):
        self.assertEqual(forwards.VM_NAME, "default")
