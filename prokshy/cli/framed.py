# -*- test-case-name: tests.system.test_cli_framed,tests.system.test_cli_json,tests.system.test_cli_list,tests.system.test_exit_codes -*-
"""
The CLI's framed run: once a framed session is up (L{prokshy.cli.fallback}
decided it), run what the options ask for over it: C{--status}, C{--info},
C{--list}, or the command on one VM or several, with its input
(L{prokshy.cli.input}) and its output printed (L{prokshy.cli.format}).

Every mode makes one record per VM (L{prokshy.cli.records}): its status and,
for prokshy's own failures, its C{failure} code.  With C{--json} the
records are printed, one JSON line each; with C{--json-stream} an exec's
output comes first as C{stdout}/C{stderr} events, and each record carries
C{"event": "result"}.  The exit status of several VMs is
L{prokshy.cli.format.combine}'s, with its summary line on stderr when
prokshy failed on some of them.

Memory: C{--json} keeps at most L{records.JSON_OUTPUT_LIMIT} bytes of one
VM's output; past it the command is cancelled and its record fails with
C{too-big} (pointing at C{--json-stream}, which keeps nothing: each chunk
is written as an event as it comes, under the output's flow control).
"""

import collections

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from prokshy.cli import records
from prokshy.cli.arguments import checkFeatures, checkFits
from prokshy.cli.format import (
    EXIT_TRANSPORT,
    EXIT_USAGE,
    CLIError,
    Labeller,
    combine,
    execRecord,
    exitStatus,
    failureOf,
    finishRecord,
    formatCommands,
    formatStatus,
    jsonLine,
    messageLine,
    prefixed,
    resultStatus,
)
from prokshy.cli.input import CommandInput
from prokshy.cli.legacy import OutputError
from prokshy.cli.output import EXIT_PIPE, FlowGate
from prokshy.cli.progress import ExecProgress
from prokshy.streams.stream import StreamRefused, decodeJSON

#: The largest answer of a C{list} stream the CLI reads (the guest's is at
#: most 4096 entries of a name and 200 characters).
LIST_ANSWER_LIMIT = 8 * 1024 * 1024


class _TooBig(Exception):
    """
    A document stream's answer passed its limit.
    """


class _Document(Protocol):
    """
    Reads one JSON document from a stream (C{info}, C{list}), at most
    C{limit} bytes of it.
    """

    def __init__(self, limit):
        self.limit = limit
        self.chunks = []
        self.size = 0
        self.done = Deferred()

    def dataReceived(self, data):
        self.size += len(data)
        if self.size > self.limit:
            self.chunks = []
            if not self.done.called:
                self.done.errback(_TooBig("the answer passed %d bytes" % (self.limit,)))
            self.transport.abort("too-big", "the answer is too big")
            return
        self.chunks.append(data)

    def connectionLost(self, reason):
        if self.done.called:
            return
        if reason.check(ConnectionDone):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


class FramedRun:
    """
    What the CLI does once a framed session is up.

    @param stdout: the output for the commands' stdout (an
        L{prokshy.cli.output.IOutput}).
    @param stderr: the same for their stderr and the CLI's messages.

    If stdout is lost (its reader went away), every remote command is
    cancelled, the session ends, and L{run} fails with L{OutputError}.
    """

    #: --json's per-VM limit (L{records.JSON_OUTPUT_LIMIT}).
    jsonLimit = records.JSON_OUTPUT_LIMIT

    def __init__(self, reactor, host, options, stdout, stderr, stdinFD=0):
        self.reactor = reactor
        self.host = host
        self.session = host.session
        self.options = options
        self.stdout = stdout
        self.stderr = stderr
        self.hello = host.mux.info.peerHello if host.mux.info else {}
        self.running = []
        self.outputError = None
        self.input = CommandInput(reactor, options, stdinFD)
        self.progress = None
        self.reserved = bool(getattr(options, "reserved_exit_codes", False))
        self.streaming = bool(getattr(options, "json_stream", False))
        self.json = bool(options.json) or self.streaming
        stdout.whenLost(self._stdoutLost)

    @property
    def isDaemon(self):
        return self.hello.get("server") == "prokshy-host"

    def say(self, message):
        self.stderr.write(messageLine(message))

    def _stdoutLost(self, error):
        if self.outputError is not None:
            return
        self.outputError = error
        self._cancelAll()
        if self.host.link is not None:
            self.host.link.goodbye("the output was closed")

    def _cancelAll(self):
        self.input.stop()
        for running in self.running:
            try:
                running.cancel()
            except Exception:
                pass

    def status(self, failure):
        """
        The exit status of prokshy's own failure C{failure} (the table of
        docs/cli.md, reserved with C{--reserved-exit-codes}).
        """
        return exitStatus(failure, self.reserved)

    def emit(self, record, stdout=(), stderr=()):
        """
        Print a record (C{--json}, C{--json-stream}), with the command's
        output as its C{stdout} and C{stderr}.
        """
        if self.json:
            records.writeLine(self.stdout.write, record, stdout, stderr)

    def _fail(self, record, failure, message):
        """
        Mark C{record} failed (prokshy's own failure, or a refusal) and
        report it: its JSON line, or the message on stderr.
        """
        records.failed(record, self.status(failure), failure, message)
        if self.json:
            self.emit(record)
        else:
            self.say(message)
        return record

    def combined(self, recs):
        """
        The exit status of the run's records (L{combine}), saying its
        summary line when prokshy failed on some of several VMs.
        """
        status, summary = combine(((r["vm"], r["status"], r["failure"]) for r in recs), self.reserved)
        if summary is not None:
            self.say(summary)
        return status

    async def targets(self):
        opts = self.options
        if (opts.vm or opts.all_vms) and not self.isDaemon:
            raise CLIError("--vm and --all-vms need a prokshy-host daemon", EXIT_USAGE)
        if opts.all_vms:
            if "vms" in self.hello:
                return list(self.hello["vms"] or [])
            # A daemon with too many VMs to list in its hello.
            status = await self.session.status()
            return [vm.get("name") for vm in status.get("vms") or []]
        return list(opts.vm or [None])

    async def run(self):
        mode = getattr(self.options, "mode", None)
        if mode == "status" or (mode is None and self.options.status):
            code = await self._status()
        elif mode == "info" or (mode is None and self.options.info):
            code = await self._queries(self._infoOne)
        elif mode == "ping":
            code = await self._queries(self._pingOne)
        elif mode == "list":
            code = await self._queries(self._listOne)
        else:
            code = await self._exec()
        if self.outputError is not None:
            raise OutputError(self.outputError)
        return code

    # -- --status ---------------------------------------------------------------

    async def _status(self):
        if not self.isDaemon:
            # A VM's own socket: the agent's info.
            return await self._queries(self._infoOne)
        status = await self.session.status()
        code = 0
        wanted = self.options.vm
        vms = list(status.get("vms") or [])
        names = [vm.get("name") for vm in vms]
        missing = []
        if wanted:
            for name in wanted:
                if name not in names:
                    missing.append(name)
                    code = max(code, self.status("no-such-vm"))
            vms = [vm for vm in vms if vm.get("name") in wanted]
        if self.json:
            daemon = status.get("daemon")
            for vm in vms:
                r = records.record("status", vm.get("name"), daemon={"daemon": daemon, "vm": vm})
                up = vm.get("state") == "up"
                r.update(ok=up, error=None if up else "vm %s: %s" % (vm.get("name"), vm.get("reason")))
                self.emit(r)
            for name in missing:
                r = records.record("status", name)
                records.failed(r, self.status("no-such-vm"), "no-such-vm", self._noSuchVM(name, names))
                self.emit(r)
            return code
        for name in missing:
            self.say(self._noSuchVM(name, names))
        if vms or not wanted:
            self.stdout.write(formatStatus(dict(status, vms=vms)).encode("utf-8"))
        return code

    @staticmethod
    def _noSuchVM(name, names):
        return "no vm named %r (the daemon has: %s)" % (name, ", ".join(map(str, names)))

    # -- --info and --list --------------------------------------------------------

    async def _queries(self, one):
        """
        Ask each target VM in turn (C{one(vm, labelled)} -> its record).
        """
        vms = await self.targets()
        labelled = len(vms) > 1
        recs = []
        for vm in vms:
            recs.append(await one(vm, labelled))
        return self.combined(recs)

    def _prefix(self, vm):
        return "vm %s: " % (vm,) if vm is not None else ""

    def _failed(self, record, vm, e):
        known = failureOf(Failure(e))
        if known is None:
            raise e
        return self._fail(record, known[0], prefixed(self._prefix(vm), known[1]))

    async def _infoOne(self, vm, labelled):
        r = records.record("info", vm)
        try:
            info = await self.session.info(vm=vm)
        except Exception as e:
            return self._failed(r, vm, e)
        r.update(ok=True, info=info)
        if self.json:
            self.emit(r)
        else:
            self.stdout.write(jsonLine(info if vm is None else dict(info, vm=vm)))
        return r

    async def _pingOne(self, vm, labelled):
        """
        C{--ping}: open a C{ping} stream (C{info}'s alias) and time its
        answer, the round trip to the agent (through the daemon, if any).
        """
        r = records.record("ping", vm)
        started = self.reactor.seconds()
        try:
            info = await self.session.ping(vm=vm)
        except Exception as e:
            return self._failed(r, vm, e)
        rtt = (self.reactor.seconds() - started) * 1000.0
        agent = "%s/%s" % (info.get("agent", "?"), info.get("version", "?"))
        r.update(ok=True, ping={"agent": agent, "rtt_ms": round(rtt, 3)})
        if self.json:
            self.emit(r)
        else:
            self.stdout.write(("%s%s answered in %.2f ms\n" % (self._prefix(vm), agent, rtt)).encode("utf-8"))
        return r

    async def _agentName(self, vm):
        """
        The guest's agent, for a message: C{prokshy/VERSION}.
        """
        if not self.isDaemon:
            return str(self.hello.get("agent", "?"))
        try:
            info = await self.session.info(vm=vm)
        except Exception:
            return "?"
        return "%s/%s" % (info.get("agent", "?"), info.get("version", "?"))

    async def _unsupported(self, r, vm):
        agent = await self._agentName(vm)
        return self._fail(
            r, "unsupported",
            "%sthe guest's agent (%s) cannot list its commands: it has no 'list' feature "
            "(upgrade prokshy-guest)" % (self._prefix(vm), agent),
        )

    async def _listOne(self, vm, labelled):
        r = records.record("list", vm)
        if not self.isDaemon and "list" not in (self.hello.get("features") or ()):
            return await self._unsupported(r, vm)
        reader = _Document(LIST_ANSWER_LIMIT)
        try:
            await self.session.mux.openStream("list", {} if vm is None else {"vm": vm}, reader)
            answer = decodeJSON(await reader.done)
        except StreamRefused as e:
            if e.code == "unknown-kind":
                return await self._unsupported(r, vm)
            return self._failed(r, vm, e)
        except _TooBig as e:
            return self._fail(r, "transport", "%sthe guest's command list: %s" % (self._prefix(vm), e))
        except ValueError as e:
            return self._fail(r, "transport", "%sthe guest's command list is not JSON: %s" % (self._prefix(vm), e))
        except Exception as e:
            return self._failed(r, vm, e)
        commands = answer.get("commands") if isinstance(answer, dict) else None
        if not isinstance(commands, list) or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str)
            and (c.get("description") is None or isinstance(c.get("description"), str))
            for c in commands
        ):
            return self._fail(r, "transport", "%sthe guest's command list is malformed" % (self._prefix(vm),))
        commands = [{"name": c["name"], "description": c.get("description")} for c in commands]
        truncated = bool(answer.get("truncated"))
        r.update(ok=True, commands=commands, truncated=truncated)
        if self.json:
            self.emit(r)
            return r
        text = formatCommands(commands).encode("utf-8", "replace")
        if labelled:
            label = Labeller(vm if vm is not None else "default", self.stdout.write)
            label(text)
            label.flush()
        else:
            self.stdout.write(text)
        if truncated:
            self.say("%sthe guest listed only its first %d commands" % (self._prefix(vm), len(commands)))
        return r

    # -- exec -----------------------------------------------------------------

    async def _exec(self):
        # Progress lines (prokshy.cli.progress): stderr (and stdout when
        # it is the same terminal) erase them before each write.
        self.progress = ExecProgress(self.reactor, self.options, self.stdout, self.stderr, self.input.fd)
        self.stdout, self.stderr = self.progress.stdout, self.progress.stderr
        self.input.progress = self.progress
        try:
            return await self._execAll()
        finally:
            # Stdout's reader gone (| head): quietly, as the CLI exits.
            self.progress.finish(quiet=self.outputError is not None)

    async def _execAll(self):
        vms = await self.targets()
        if not vms:
            raise CLIError("the daemon has no VMs", EXIT_TRANSPORT)
        if self.options.args:
            # ARG... (prokshy.cli.arguments): every guest takes them, and
            # the OPEN fits one frame, or nothing runs.
            await checkFeatures(self, vms)
            checkFits(self, vms)
        labelled = len(vms) > 1 and not self.json
        opened = [Deferred() for vm in vms]
        runs = [ensureDeferred(self._one(vm, labelled, ready)) for vm, ready in zip(vms, opened)]
        if self.input.streamed:
            # Stdin is read once and streamed to every VM, once every
            # command was started (or refused).
            started = await DeferredList(opened)
            if self.outputError is None:
                self.input.allStarted([running for ok, running in started if running is not None])
        try:
            results = await DeferredList(runs, consumeErrors=True)
        finally:
            self.input.stop()
        recs = []
        for ok, value in results:
            if not ok:
                value.raiseException()
            recs.append(value)
        if self.outputError is not None:
            return EXIT_PIPE
        return self.combined(recs)

    def _sinks(self, vm, labelled, state):
        """
        Where one command's stdout and stderr go: kept for its C{--json}
        record (at most L{jsonLimit} bytes together), written as
        C{--json-stream} events, labelled C{[vm] } among several VMs, or
        written as they are.

        @return: C{(onStdout, onStderr, kept)}; C{kept} is L{None}, or the
            two deques the output is kept in.
        """
        if self.streaming:
            write = self.stdout.write
            return (lambda data: write(records.event(vm, "stdout", data)),
                    lambda data: write(records.event(vm, "stderr", data)), None)
        if self.json:
            out, err = collections.deque(), collections.deque()

            def keeper(into):
                def keep(data):
                    if state["tooBig"]:
                        return
                    state["kept"] += len(data)
                    if state["kept"] > self.jsonLimit:
                        # Past the limit: drop what was kept, cancel.
                        state["tooBig"] = True
                        out.clear()
                        err.clear()
                        if state["running"] is not None:
                            state["running"].cancel()
                        return
                    into.append(data)
                return keep

            return keeper(out), keeper(err), (out, err)
        if labelled:
            label = vm if vm is not None else "default"
            return Labeller(label, self.stdout.write), Labeller(label, self.stderr.write), None
        return self.stdout.write, self.stderr.write, None

    def _tooBigMessage(self, prefix):
        return (
            "%sthe output passed --json's limit of %d MiB (stdout and stderr together): the command "
            "was cancelled; use --json-stream for output of any size"
            % (prefix, self.jsonLimit // (1024 * 1024))
        )

    async def _one(self, vm, labelled, opened):
        opts = self.options
        state = {"kept": 0, "tooBig": False, "running": None}
        onOut, onErr, kept = self._sinks(vm, labelled, state)
        record = execRecord(vm, opts.command)
        # A daemon names the VM in its messages only when we did not name
        # it; an older daemon always did (L{prefixed} does not repeat it).
        prefix = self._prefix(vm)
        gate = None
        # The whole input (not --stdin) goes with the OPEN, with its EOF.
        early = None if self.input.streamed else (self.input.data or b"")
        try:
            try:
                counted = self.progress.counted(onOut, onErr) if self.progress is not None else (onOut, onErr)
                running = await self.session.execStream(
                    opts.command, *counted, timeout=opts.exec_timeout, vm=vm, stdin=early,
                    args=opts.args or None,
                )
            except BaseException:
                opened.callback(None)
                raise
            self.running.append(running)
            state["running"] = running
            if self.outputError is not None or state["tooBig"]:
                running.cancel()
            if kept is None:
                gate = FlowGate(running.stream).attach(self.stdout, self.stderr)
            opened.callback(running)
            if early is None:
                self.input.started(running)
            result = await running.result
        except Exception as e:
            if self.outputError is not None:
                records.failed(record, self.status("stdout-closed"), "stdout-closed", "stdout was closed")
                return record
            if state["tooBig"]:
                return self._fail(record, "too-big", self._tooBigMessage(prefix))
            known = failureOf(Failure(e))
            if known is None:
                raise
            records.failed(record, self.status(known[0]), known[0], prefixed(prefix, known[1]))
            if kept is not None:
                self.emit(record, kept[0], kept[1])
            elif self.json:
                self.emit(record)
            else:
                self.say(record["error"])
            return record
        finally:
            if gate is not None:
                gate.close()
            for f in (onOut, onErr):
                if isinstance(f, Labeller):
                    f.flush()
        if state["tooBig"]:
            # It ended before the cancel took: still too big.
            return self._fail(record, "too-big", self._tooBigMessage(prefix))
        status, notes = resultStatus(opts.command, result, self.reserved)
        finishRecord(record, status, result)
        if self.json:
            self.emit(record, *(kept if kept is not None else ((), ())))
        else:
            for note in notes:
                self.say(prefix + note)
        return record

    def interrupt(self, channel):
        """
        Ctrl-C: cancel remote commands and end the session cleanly.

        @return: a Deferred firing once the connection is closed (at most
            a second later), so the RESETs and GOODBYE leave before exit.
        """
        self._cancelAll()
        if self.host.link is not None:
            self.host.link.goodbye("client interrupted")
        return channel.close(timeout=1.0)


__all__ = ["FramedRun", "LIST_ANSWER_LIMIT"]
