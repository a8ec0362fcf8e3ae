# -*- test-case-name: tests.system.test_cli_framed,tests.system.test_cli_json,tests.system.test_cli_list,tests.system.test_cli_ping -*-
"""
The CLI's query modes over a framed session: C{--status}, C{--info},
C{--ping} and C{--list}, mixed into L{prokshy.cli.framed.FramedRun} (whose
C{run} dispatches to them by C{options.mode}) as L{Queries}.

Each asks every target VM in turn and makes one record per VM
(L{prokshy.cli.records}, reported by L{prokshy.cli.reports}): printed as a
JSON line with C{--json}, else as text on stdout, with prokshy's own
failures on stderr.  C{--list} reads the guest's answer as one JSON
document of at most L{LIST_ANSWER_LIMIT} bytes (past it the stream is
aborted and the record fails with C{transport}).
"""

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from prokshy.cli import records
from prokshy.cli.format import Labeller, failureOf, formatCommands, formatStatus, jsonLine, prefixed
from prokshy.cli.reports import Reports
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


class Queries(Reports):
    """
    The query modes of a framed run, a base of
    L{prokshy.cli.framed.FramedRun} (which supplies C{reactor}, C{session},
    C{hello} and the rest L{Reports} asks for).
    """

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


__all__ = ["LIST_ANSWER_LIMIT", "Queries"]
