# -*- test-case-name: tests.system.test_cli_framed,tests.system.test_cli_json,tests.system.test_exit_codes,tests.system.test_exec_args -*-
"""
The CLI's framed run: once a framed session is up (L{prokshy.cli.fallback}
decided it), L{FramedRun.run} does what C{options.mode} asks for over it.
The query modes (C{--status}, C{--info}, C{--ping}, C{--list}) are
L{prokshy.cli.queries}'; this module is the exec run: the command on one VM
or several, with its input (L{prokshy.cli.input}) and its output printed
(L{prokshy.cli.format}).  What every mode shares (its target VMs, its
records reported and combined) is L{prokshy.cli.reports}'.

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
from twisted.python.failure import Failure

from prokshy.cli import records
from prokshy.cli.arguments import checkFeatures, checkFits
from prokshy.cli.format import (
    EXIT_TRANSPORT, CLIError, Labeller, execRecord, failureOf, finishRecord, prefixed, resultStatus,
)
from prokshy.cli.input import CommandInput
from prokshy.cli.legacy import OutputError
from prokshy.cli.output import EXIT_PIPE, FlowGate
from prokshy.cli.progressrun import ExecProgress
from prokshy.cli.queries import Queries


class FramedRun(Queries):
    """
    What the CLI does once a framed session is up: the exec run, and the
    query modes of its L{Queries} mixin.

    @param stdout: the output for the commands' stdout (an
        L{prokshy.cli.output.IOutput}).
    @param stderr: the same for their stderr and the CLI's messages.

    If stdout is lost (its reader went away), every remote command is
    cancelled, the session ends, and L{run} fails with L{OutputError}.
    """

    #: --json's per-VM limit (L{records.JSON_OUTPUT_LIMIT}).
    jsonLimit = records.JSON_OUTPUT_LIMIT

    def __init__(self, reactor, host, options, stdout, stderr, stdinFD=0):
        Queries.__init__(self, reactor, host, options, stdout, stderr)
        #: Ctrl-C or SIGTERM cancelled the run (L{interrupt}).
        self.interrupted = False
        self.input = CommandInput(reactor, options, stdinFD)
        self.progress = None
        stdout.whenLost(self._stdoutLost)

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
            if self.interrupted:
                # Its record still says so, with the output kept so far.
                records.failed(record, self.status("interrupted"), "interrupted",
                               prefixed(prefix, "interrupted: the remote command was cancelled"))
                if self.json:
                    self.emit(record, *(kept if kept is not None else ((), ())))
                return record
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
        self.interrupted = True
        self._cancelAll()
        if self.host.link is not None:
            self.host.link.goodbye("client interrupted")
        # What was written (the cancelled commands' records) goes out too,
        # within the same second: a reader that stopped reading holds no one.
        flushed = self.stdout.close()
        flushed.addTimeout(1.0, self.reactor)
        flushed.addErrback(lambda _: self.stdout.abort())
        return DeferredList([channel.close(timeout=1.0), flushed])


__all__ = ["FramedRun"]
