# -*- test-case-name: tests.system.test_forward_daemon -*-
"""
The daemon's forward control kinds (docs/protocol.md §12.9), for its framed
clients:

    kind            arguments                        answer (one JSON document)
    --------------  -------------------------------  --------------------------
    forward-add     direction, spec, vm (optional)   the new forward's row
    forward-list    -                                {"forwards": [row, ...]}
    forward-remove  id                               the removed forward's row

Errors are refusals: C{bad-spec}, C{no-such-vm}, C{listen-failed}, the
guest's refusal of a reverse forward's listener (C{not-allowed},
C{listen-failed}, C{unsupported}), C{no-such-forward}.
"""

import attr
from twisted.internet.protocol import Protocol

from prokshy.forward.hostside import ForwardError
from prokshy.forward.spec import SpecError, parseSpec
from prokshy.streams.stream import StreamRefused, encodeJSON

__all__ = ["CONTROL_KINDS", "DocumentProtocol", "ForwardControl"]

CONTROL_KINDS = ("forward-add", "forward-list", "forward-remove")


class DocumentProtocol(Protocol):
    """
    Sends one JSON document on its stream, then closes it.
    """

    def __init__(self, document):
        self.document = document

    def connectionMade(self):
        self.transport.write(encodeJSON(self.document))
        self.transport.loseConnection()


def _refused(error):
    return StreamRefused(error.code, error.message)


class ForwardControl:
    """
    Serves the control kinds on a L{prokshy.forward.hostside.ForwardTable}.
    """

    def __init__(self, table):
        self.table = table

    def open(self, kind, args):
        """
        @return: a protocol, or a Deferred of one.
        @raise StreamRefused: for a bad request.
        """
        if kind == "forward-list":
            return DocumentProtocol({"forwards": self.table.rows()})
        if kind == "forward-remove":
            try:
                return DocumentProtocol(self.table.remove(args.get("id")))
            except ForwardError as e:
                raise _refused(e)
        return self._add(args)

    def _add(self, args):
        direction, text, vm = args.get("direction"), args.get("spec"), args.get("vm")
        if direction not in ("forward", "reverse"):
            raise StreamRefused("bad-spec", "direction must be 'forward' or 'reverse'")
        try:
            spec = parseSpec(text)
        except SpecError as e:
            raise StreamRefused("bad-spec", str(e))
        if spec.vm is None and vm is not None:
            if not isinstance(vm, str):
                raise StreamRefused(
                    "no-such-vm", "vm must be a string naming a VM (have: %s)" % (", ".join(self.table.vms),)
                )
            spec = attr.evolve(spec, vm=vm)

        def failed(failure):
            failure.trap(ForwardError)
            raise _refused(failure.value)

        return self.table.add(direction, spec).addCallbacks(DocumentProtocol, failed)
