# -*- test-case-name: tests.system.test_cli_framed -*-
"""
The CLI's framed run: once a framed session is up (L{prokshy.cli.fallback}
decided it), run what the options ask for over it: C{--status}, C{--info},
or the command on one VM or several, with its input (L{prokshy.cli.input})
and its output printed (L{prokshy.cli.format}).
"""

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.python.failure import Failure

from prokshy.cli.format import (
    EXIT_TRANSPORT,
    EXIT_USAGE,
    CLIError,
    Labeller,
    exitFor,
    finishRecord,
    formatStatus,
    framedRecord,
    jsonLine,
    messageLine,
    prefixed,
    resultStatus,
    withOutput,
)
from prokshy.cli.input import CommandInput
from prokshy.cli.legacy import OutputError
from prokshy.cli.output import EXIT_PIPE, FlowGate
from prokshy.cli.progress import ExecProgress


class FramedRun:
    """
    What the CLI does once a framed session is up.

    @param stdout: the output for the commands' stdout (an
        L{prokshy.cli.output.IOutput}).
    @param stderr: the same for their stderr and the CLI's messages.

    If stdout is lost (its reader went away), every remote command is
    cancelled, the session ends, and L{run} fails with L{OutputError}.
    """

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
        opts = self.options
        if opts.status:
            code = await self._status()
        elif opts.info:
            code = await self._info()
        else:
            code = await self._exec()
        if self.outputError is not None:
            raise OutputError(self.outputError)
        return code

    async def _status(self):
        if not self.isDaemon:
            return await self._info()
        status = await self.session.status()
        code = 0
        wanted = self.options.vm
        if wanted:
            vms = list(status.get("vms") or [])
            names = [vm.get("name") for vm in vms]
            for name in wanted:
                if name not in names:
                    self.say("no vm named %r (the daemon has: %s)" % (name, ", ".join(map(str, names))))
                    code = EXIT_TRANSPORT
            status = dict(status, vms=[vm for vm in vms if vm.get("name") in wanted])
        if self.options.json:
            self.stdout.write(jsonLine(status, indent=2))
        elif status.get("vms") or not wanted:
            self.stdout.write(formatStatus(status).encode("utf-8"))
        return code

    async def _info(self):
        worst = 0
        for vm in await self.targets():
            try:
                info = await self.session.info(vm=vm)
            except Exception as e:
                code = exitFor(Failure(e))
                if code is None:
                    raise
                self.say(prefixed("vm %s: " % vm if vm else "", code[1]))
                worst = max(worst, code[0])
                continue
            if vm is not None:
                info = dict(info, vm=vm)
            self.stdout.write(jsonLine(info))
        return worst

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
        labelled = len(vms) > 1 and not self.options.json
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
        codes = []
        for ok, value in results:
            if not ok:
                value.raiseException()
            codes.append(value)
        return max(codes) if codes else 0

    def _sinks(self, vm, labelled):
        """
        Where one command's stdout and stderr go: kept for its C{--json}
        record, labelled C{[vm] } among several VMs, or written as they are.

        @return: C{(onStdout, onStderr, kept)}; C{kept} is L{None}, or the
            two lists the output is kept in.
        """
        if self.options.json:
            out, err = [], []
            return out.append, err.append, (out, err)
        if labelled:
            label = vm if vm is not None else "default"
            return Labeller(label, self.stdout.write), Labeller(label, self.stderr.write), None
        return self.stdout.write, self.stderr.write, None

    async def _one(self, vm, labelled, opened):
        opts = self.options
        onOut, onErr, kept = self._sinks(vm, labelled)
        record = framedRecord(vm, opts.command)
        # A daemon names the VM in its messages only when we did not name
        # it; an older daemon always did (L{prefixed} does not repeat it).
        prefix = "vm %s: " % (vm,) if vm is not None else ""
        gate = None
        # The whole input (not --stdin) goes with the OPEN, with its EOF.
        early = None if self.input.streamed else (self.input.data or b"")
        try:
            try:
                counted = self.progress.counted(onOut, onErr) if self.progress is not None else (onOut, onErr)
                running = await self.session.execStream(
                    opts.command, *counted, timeout=opts.exec_timeout, vm=vm, stdin=early
                )
            except BaseException:
                opened.callback(None)
                raise
            self.running.append(running)
            if self.outputError is not None:
                running.cancel()
            if kept is None:
                gate = FlowGate(running.stream).attach(self.stdout, self.stderr)
            opened.callback(running)
            if early is None:
                self.input.started(running)
            result = await running.result
        except Exception as e:
            if self.outputError is not None:
                return EXIT_PIPE
            code = exitFor(Failure(e))
            if code is None:
                raise
            record.update(status=code[0], error=prefixed(prefix, code[1]))
            if kept is not None:
                self.stdout.write(jsonLine(withOutput(record, b"".join(kept[0]), b"".join(kept[1]))))
            else:
                self.say(record["error"])
            return code[0]
        finally:
            if gate is not None:
                gate.close()
            for f in (onOut, onErr):
                if isinstance(f, Labeller):
                    f.flush()
        status, notes = resultStatus(opts.command, result)
        finishRecord(record, status, result)
        if kept is not None:
            self.stdout.write(jsonLine(withOutput(record, b"".join(kept[0]), b"".join(kept[1]))))
        else:
            for note in notes:
                self.say(prefix + note)
        return status

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


__all__ = ["FramedRun"]
