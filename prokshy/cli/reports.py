# -*- test-case-name: tests.system.test_cli_framed,tests.system.test_cli_json,tests.system.test_exit_codes -*-
"""
What every mode of a framed run shares (L{Reports}, a base of
L{prokshy.cli.queries.Queries} and so of L{prokshy.cli.framed.FramedRun}):
the VMs it targets (C{--vm}, C{--all-vms}), and each VM's record
(L{prokshy.cli.records}) reported, as a JSON line with C{--json} or its
message on stderr, and combined into the run's exit status
(L{prokshy.cli.format.combine}).
"""

from prokshy.cli import records
from prokshy.cli.format import EXIT_USAGE, CLIError, combine, exitStatus, messageLine


class Reports:
    """
    A framed run's targets and records.

    @param host: the L{prokshy.host.client.HostProtocol} whose session is up.
    @param stdout: the output for records and the commands' stdout (an
        L{prokshy.cli.output.IOutput}); C{stderr}: for messages.
    """

    def __init__(self, reactor, host, options, stdout, stderr):
        self.reactor = reactor
        self.host = host
        self.session = host.session
        self.options = options
        self.stdout = stdout
        self.stderr = stderr
        self.hello = host.mux.info.peerHello if host.mux.info else {}
        self.running = []
        self.outputError = None
        self.reserved = bool(getattr(options, "reserved_exit_codes", False))
        self.streaming = bool(getattr(options, "json_stream", False))
        self.json = bool(options.json) or self.streaming

    @property
    def isDaemon(self):
        return self.hello.get("server") == "prokshy-host"

    def say(self, message):
        self.stderr.write(messageLine(message))

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

    def _prefix(self, vm):
        return "vm %s: " % (vm,) if vm is not None else ""


__all__ = ["Reports"]
