# -*- test-case-name: tests.unit.test_cli_forward_options,tests.system.test_cli_forwards -*-
"""
The CLI's forwarding modes (C{--forward}, C{--reverse}, C{--forwards},
C{--unforward}; see L{prokshy.cli.options}), once a framed session is up.

With a prokshy-host daemon (the peer's hello says C{"server":
"prokshy-host"}), L{DaemonForwards} uses the daemon's control streams
(docs/protocol.md §12.9):

  - C{--forward}/C{--reverse}: C{forward-add} for each, in command-line
    order; each new forward's id on its own line of stdout (with C{--json},
    one record, L{prokshy.cli.records}, whose C{forwards} lists the rows
    added); exit 0.  A refusal (a bad SPEC, no such VM,
    the host cannot listen, the guest's allowlist, ...) is one line on
    stderr, C{prokshy: forward SPEC: CODE: MESSAGE} (C{reverse SPEC} for a
    C{--reverse}), and exit 1; the forwards before it stay added, the ones
    after it are not tried.
  - C{--forwards}: L{formatForwards}' table (C{no forwards} when there is
    none), or with C{--json} one record whose C{forwards} lists the rows.
  - C{--unforward ID}: C{forward-remove}; prints nothing; exit 0, or 1 with
    the daemon's message (C{prokshy: unforward ID: no-such-forward: ...}).

On a VM's own console socket (no daemon), L{Foreground} serves the
forwards in this process until Ctrl-C, as C{ssh -N -L} does: a
L{prokshy.host.vm.VMConnection} (the VM is called C{default}; a SPEC's
C{VM=} is ignored: the socket names the VM) that reconnects whenever the VM
goes away, and a L{prokshy.forward.hostside.ForwardTable} holding the
forwards as configuration.  Each event the table reports (a forward set up,
a connection the guest refused and why, a failure, waiting for the VM) is
one line on stderr (with C{--json}, a JSON line on stdout: C{{"event":
"forward", "vm": "default", "forward": ROW, "message": TEXT}}).  SIGINT or SIGTERM stops it: the listeners close,
the session says GOODBYE, and the CLI exits 130.  C{--forwards} and
C{--unforward} need a daemon: on a VM's socket they are usage errors.
"""

import attrs
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.python.failure import Failure

from prokshy.cli import records
from prokshy.cli.format import (
    EXIT_TRANSPORT,
    EXIT_USAGE,
    CLIError,
    exitStatus,
    failureOf,
    jsonLine,
    messageLine,
)
from prokshy.forward.hostside import ForwardTable
from prokshy.host.vm import VMConnection
from prokshy.link.session import NotConnected
from prokshy.streams.stream import StreamRefused

EXIT_OK = 0
#: A refusal by the daemon or the guest.
EXIT_REFUSED = 1

#: The name of the one VM of the foreground mode.
VM_NAME = "default"
#: Seconds an interrupted foreground run waits for its listeners to close
#: and its GOODBYE to be written.
STOP_WAIT = 2.0

_COLUMNS = ("ID", "VM", "DIR", "LISTEN", "TARGET", "STATE", "CONNS", "TO-TARGET", "FROM-TARGET")


def size(n):
    """
    A byte count in the table: C{512B}, C{1.5kB}, C{64.0MB} (powers of
    1000).
    """
    n = n or 0
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            break
        n /= 1000.0
    return ("%d%s" if unit == "B" else "%.1f%s") % (n, unit)


def _text(value, default="-"):
    return default if value is None else str(value)


def formatForwards(rows):
    """
    The C{--forwards} table: one line per forward (bytes in kB/MB), then,
    under a forward that is not C{active}, an indented line with its
    reason, and under one with a C{last_error}, an indented line with it.

    @param rows: the daemon's rows (dicts, docs/protocol.md §12.9).
    @return: the text (L{str}), C{"no forwards\\n"} when there are none.
    """
    if not rows:
        return "no forwards\n"
    table = [_COLUMNS]
    for row in rows:
        table.append(
            (
                _text(row.get("id"), "?"),
                _text(row.get("vm")),
                _text(row.get("direction"), "?"),
                _text(row.get("listen"), "?"),
                _text(row.get("target"), "?"),
                _text(row.get("state"), "?"),
                _text(row.get("connections"), "0"),
                size(row.get("bytes_to_target")),
                size(row.get("bytes_from_target")),
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(table[0], widths)).rstrip()]
    for row, line in zip(rows, table[1:]):
        lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
        if row.get("state") != "active" and row.get("reason"):
            lines.append("    %s" % (_oneLine(row["reason"]),))
        if row.get("last_error"):
            lines.append("    last error: %s" % (_oneLine(row["last_error"]),))
    return "\n".join(lines) + "\n"


def _oneLine(text):
    return " ".join(str(text).split())


def describe(row):
    """
    A forward in a message: C{forward 127.0.0.1:8080 -> 127.0.0.1:80}.
    """
    return "%s %s -> %s" % (row.get("direction", "?"), row.get("listen", "?"), row.get("target", "?"))


def refusalLine(what, error):
    """
    The one line for a refused forward control stream: C{WHAT: CODE:
    MESSAGE}.
    """
    if error.message:
        return "%s: %s: %s" % (what, error.code, _oneLine(error.message))
    return "%s: %s" % (what, error.code)


class DaemonForwards:
    """
    The forwarding modes against a prokshy-host daemon.

    @param session: the L{prokshy.host.client.Session} with the daemon.
    @param hello: the daemon's hello (a dict).
    @param stdout: an L{prokshy.cli.output.IOutput}.
    @param stderr: the same, for the messages.
    """

    def __init__(self, session, hello, options, stdout, stderr):
        self.session = session
        self.hello = hello
        self.options = options
        self.stdout = stdout
        self.stderr = stderr

    def say(self, message):
        self.stderr.write(messageLine(message))

    def _checkFeature(self):
        features = self.hello.get("features") or ()
        if "forward" not in features:
            raise CLIError(
                "this prokshy-host daemon (%s) predates forwarding" % (self.hello.get("agent", "?"),),
                EXIT_REFUSED,
            )

    def run(self):
        """
        @return: a Deferred firing with the exit code; failing with
            L{CLIError} for a daemon that cannot forward.
        """
        return ensureDeferred(self._run())

    async def _run(self):
        self._checkFeature()
        mode = self.options.forward_mode
        if mode == "add":
            return await self._add()
        if mode == "list":
            return await self._list()
        return await self._remove()

    @property
    def reserved(self):
        return bool(getattr(self.options, "reserved_exit_codes", False))

    def _record(self, rows):
        """
        The mode's one C{--json} record (L{records}): C{forwards} holds the
        rows listed, added or removed (before a failure, on a failure).
        """
        vm = self.options.vm[0] if self.options.vm and len(self.options.vm) == 1 else None
        return records.record("forwards", vm, ok=True, forwards=list(rows))

    def _finish(self, record, code):
        if self.options.json:
            self.stdout.write(records.line(record))
        return code

    async def _refusable(self, what, d, record):
        """
        Wait for a control stream's answer.

        @return: C{(answer, None)}, or C{(None, exit code)} after saying why
            it failed (with C{--json}, in C{record} instead).
        """
        try:
            return await d, None
        except StreamRefused as e:
            failure, message, code = e.code, refusalLine(what, e), EXIT_REFUSED
        except NotConnected as e:
            failure, message, code = "transport", "%s: the session ended: %s" % (what, e), EXIT_TRANSPORT
        except Exception as e:
            known = failureOf(Failure(e))
            if known is None:
                raise
            failure, message = known
            message = "%s: %s" % (what, message)
            code = exitStatus(failure)
        if self.reserved:
            code = exitStatus(failure, True)
        records.failed(record, code, failure, message)
        if not self.options.json:
            self.say(message)
        return None, code

    async def _add(self):
        opts = self.options
        vm = opts.vm[0] if opts.vm else None
        added = []
        record = self._record(added)
        for request in opts.forward_specs:
            what = "%s %s" % (request.direction, request.text)
            row, code = await self._refusable(
                what, self.session.forwardAdd(request.direction, request.text, vm=vm), record
            )
            if code is not None:
                return self._finish(record, code)
            record["forwards"].append(row)
            if not opts.json:
                self.stdout.write(("%s\n" % (row.get("id"),)).encode("utf-8"))
        return self._finish(record, EXIT_OK)

    async def _list(self):
        record = self._record([])
        rows, code = await self._refusable("forwards", self.session.forwardList(), record)
        if code is not None:
            return self._finish(record, code)
        wanted = self.options.vm
        if wanted:
            rows = [row for row in rows if row.get("vm") in wanted]
        record["forwards"] = list(rows)
        if not self.options.json:
            self.stdout.write(formatForwards(rows).encode("utf-8"))
        return self._finish(record, EXIT_OK)

    async def _remove(self):
        record = self._record([])
        for fid in self.options.unforward:
            row, code = await self._refusable("unforward %s" % (fid,), self.session.forwardRemove(fid), record)
            if code is not None:
                return self._finish(record, code)
            record["forwards"].append(row)
        return self._finish(record, EXIT_OK)


class Foreground:
    """
    The forwards served in the foreground on a VM's own console socket,
    until L{stop}.

    @param endpoint: the client endpoint of the VM's socket (connected to
        again whenever the connection is lost).
    @param target: the socket, as the user named it (for messages).
    @ivar vm: the L{VMConnection}, once started.
    @ivar table: the L{prokshy.forward.hostside.ForwardTable}, once started.
    """

    def __init__(self, reactor, endpoint, target, options, stdout, stderr):
        self.reactor = reactor
        self.endpoint = endpoint
        self.target = target
        self.options = options
        self.stdout = stdout
        self.stderr = stderr
        self.vm = None
        self.table = None
        self._stopping = None

    def _event(self, row, message):
        if self.options.json:
            # An event of the foreground mode (docs/cli.md): not a record.
            self.stdout.write(jsonLine({"event": "forward", "vm": VM_NAME, "forward": row, "message": message}))
        else:
            self.stderr.write(messageLine("%s: %s" % (describe(row), _oneLine(message))))

    def start(self):
        """
        Set up every forward and connect to the VM.
        """
        self.vm = VMConnection(self.reactor, VM_NAME, self.target, endpoint=self.endpoint)
        self.table = ForwardTable(self.reactor, {VM_NAME: self.vm})
        self.table.observe(self._event)
        for request in self.options.forward_specs:
            self.table.addConfigured(request.direction, attrs.evolve(request.spec, vm=None))
        self.vm.service.startService()

    def stop(self):
        """
        Close every listener and end the session with GOODBYE.

        @return: a Deferred firing once done (within about L{STOP_WAIT}
            seconds; it never fails).
        """
        if self._stopping is None:
            self._stopping = ensureDeferred(self._stop())
        return self._stopping

    async def _stop(self):
        for stopping in (
            (lambda: self.table.stop()) if self.table is not None else None,
            (lambda: self.vm.service.stopService()) if self.vm is not None else None,
        ):
            if stopping is None:
                continue
            try:
                d = stopping()
                if isinstance(d, Deferred):
                    await d.addTimeout(STOP_WAIT, self.reactor)
            except Exception:
                pass


class ForwardRun:
    """
    What the CLI does for a forwarding mode once a framed session is up:
    L{DaemonForwards} with a daemon; L{Foreground} on a VM's socket, after
    ending the session that told which (a VM's socket serves one client).

    @param host: the L{prokshy.host.client.HostProtocol} with the session.
    @param channel: the L{prokshy.cli.fallback.AutoChannel} it runs on.
    @param endpoint: the endpoint the channel was connected through.
    """

    def __init__(self, reactor, host, channel, endpoint, options, stdout, stderr, target):
        self.reactor = reactor
        self.host = host
        self.channel = channel
        self.endpoint = endpoint
        self.options = options
        self.stdout = stdout
        self.stderr = stderr
        self.target = target
        self.hello = host.mux.info.peerHello if host.mux.info else {}
        self.foreground = None

    @property
    def isDaemon(self):
        return self.hello.get("server") == "prokshy-host"

    def run(self):
        """
        @return: a Deferred firing with the exit code (never, in the
            foreground mode: it runs until interrupted); failing with
            L{CLIError}.
        """
        return ensureDeferred(self._run())

    async def _run(self):
        opts = self.options
        if self.isDaemon:
            return await DaemonForwards(self.host.session, self.hello, opts, self.stdout, self.stderr).run()
        if opts.forward_mode != "add":
            flag = "--forwards" if opts.forward_mode == "list" else "--unforward"
            raise CLIError("%s needs a prokshy-host daemon (%s is a VM's console socket)" % (flag, self.target),
                           EXIT_USAGE)
        if opts.vm:
            raise CLIError("--vm needs a prokshy-host daemon (%s is a VM's console socket)" % (self.target,),
                           EXIT_USAGE)
        if self.host.link is not None:
            self.host.link.goodbye("serving forwards")
        await self.channel.close()
        self.foreground = Foreground(self.reactor, self.endpoint, self.target, opts, self.stdout, self.stderr)
        self.foreground.start()
        # Until Ctrl-C (see L{interrupt}).
        return await Deferred()

    def interrupt(self, channel):
        """
        Ctrl-C or SIGTERM.

        @return: a Deferred firing once the listeners are closed and the
            session ended (at most a few seconds later).
        """
        if self.foreground is not None:
            return self.foreground.stop()
        if self.host.link is not None:
            self.host.link.goodbye("client interrupted")
        if channel.closed.called:
            return succeed(None)
        return channel.close(timeout=1.0)


__all__ = ["DaemonForwards", "Foreground", "ForwardRun", "VM_NAME", "describe", "formatForwards", "refusalLine", "size"]
