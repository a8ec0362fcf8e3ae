"""
The interfaces of a command runner, its executions and their output sinks.

The guest's L{prokshy.guest.runner.CommandRunner} runs commands from
C{command.d}; the daemon's line protocol runs them through exec streams on a
VM (L{prokshy.host.legacy}).  The line protocol (L{prokshy.lines}) drives
either through these interfaces.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface
from twisted.internet.interfaces import IPushProducer

__all__ = [
    "ICommandNames",
    "ICommandRunner",
    "ICommandSink",
    "IExecution",
    "IOutputFinished",
    "ISpawnCounts",
]


class ICommandNames(Interface):
    """
    Decides whether a command name may be run.
    """

    def resolve(name):
        """
        @param name: C{str} or ASCII C{bytes}.
        @return: what the name runs (a path on the guest).
        @raise prokshy.execs.refusals.CommandRefused: with the reason.
        """


class ICommandSink(Interface):
    """
    Receives a command's output.
    """

    def stdoutReceived(data):
        "Bytes of stdout."

    def stderrReceived(data):
        "Bytes of stderr."


class IOutputFinished(ICommandSink):
    """
    A sink that wants to know when the output has ended.
    """

    def outputFinished():
        """
        Called once, just before the execution's C{done} fires: no output
        follows it.
        """


class IExecution(IPushProducer):
    """
    One command, started by an L{ICommandRunner}.  As an L{IPushProducer}
    it produces the command's output (pausing it stops reading it).
    """

    name = Attribute("The command name (str).")
    finished = Attribute("Whether done has fired.")
    done = Attribute(
        "A Deferred firing once with an ExitStatus when the command has ended; it never fails."
    )

    def writeStdin(data):
        "Write to the command's stdin."

    def closeStdin():
        "Close its stdin once what was written is flushed."

    def cancel():
        "Terminate the command (TERM, then KILL after a grace period)."


class ICommandRunner(Interface):
    """
    Starts commands.
    """

    directory = Attribute("The L{ICommandNames} that checks names.")
    def start(name, sink, timeout=None, line=False):
        """
        Start a command.

        @param sink: an L{ICommandSink} (also told L{IOutputFinished} if it
            provides it).
        @param timeout: the caller's timeout in seconds (None: none).
        @param line: a line-protocol command, whose client cannot cancel it.
        @return: an L{IExecution}.
        @raise prokshy.execs.refusals.CommandRefused: it was not started.
        """


class ISpawnCounts(Interface):
    """
    A runner that spawns real processes, and says how (the guest's C{info}
    stream reports it).
    """

    spawns = Attribute(
        "Commands started so far, by the path Twisted spawned them on: "
        "C{{\"posix_spawn\": N, \"fork\": M}} (the fork path is about 5x slower)."
    )
