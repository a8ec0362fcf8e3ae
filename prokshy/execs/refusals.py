"""
The refusal codes of an exec open (the C{code} of its REFUSE, or of the
RESET of a command that could not start), and L{CommandRefused}, the
exception that carries one.

The guest refuses with the command codes (L{COMMAND_CODES}) and with
L{BAD_OPEN} and L{INTERNAL_ERROR}; a prokshy-host daemon adds
L{NO_SUCH_VM}, L{VM_UNAVAILABLE} and L{TOO_BIG}, and says L{BUSY} for a VM
whose queue is full.
"""

from __future__ import annotations

__all__ = [
    "BAD_NAME",
    "BAD_OPEN",
    "BUSY",
    "COMMAND_CODES",
    "CommandRefused",
    "INSECURE",
    "INTERNAL_ERROR",
    "NOT_EXECUTABLE",
    "NO_SUCH_COMMAND",
    "NO_SUCH_VM",
    "TOO_BIG",
    "VM_UNAVAILABLE",
]

#: The name breaks the rule of L{prokshy.execs.names}.
BAD_NAME = "bad-name"
#: No such file in C{command.d} (or no C{command.d}).
NO_SUCH_COMMAND = "no-such-command"
#: Not a regular executable file, or it could not be executed.
NOT_EXECUTABLE = "not-executable"
#: A file or directory it depends on is writable or owned by someone else.
INSECURE = "insecure"
#: As many commands running and waiting as allowed.
BUSY = "busy"

#: The codes a command name can be refused with.
COMMAND_CODES = (BAD_NAME, NO_SUCH_COMMAND, NOT_EXECUTABLE, INSECURE, BUSY)

#: The OPEN's arguments are wrong (e.g. a timeout that is not a number).
BAD_OPEN = "bad-open"
#: The command was accepted but could not be started (the stream is reset).
INTERNAL_ERROR = "internal-error"
#: (daemon) No VM of that name.
NO_SUCH_VM = "no-such-vm"
#: (daemon) The VM has no session now.
VM_UNAVAILABLE = "vm-unavailable"
#: (daemon) The open does not fit the VM's queue.
TOO_BIG = "too-big"


class CommandRefused(Exception):
    """
    A command was not started.

    @ivar code: one of L{COMMAND_CODES}.
    @ivar message: a human sentence saying why, for the log.
    """

    codes = COMMAND_CODES

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message
