# -*- test-case-name: tests.unit.test_progress,tests.system.test_cli_progress -*-
"""
Progress of long transfers: one status line on stderr, redrawn in place.

A L{Progress} counts the bytes of one transfer (L{Progress.advance}: an
integer add, nothing else) and, on a timer of the reactor's clock, redraws
one line (C{\\r}, the text, erase to the end of the line) at most every
L{Progress.interval} seconds::

    stdin  12.3 MB / 200.0 MB  6%%  4.5 MB/s  ETA 42s
    output  48.0 MB  12.1 MB/s

Sizes are decimal (kB, MB, GB, as in the C{--status} table); the rate is
over the last L{Progress.window} seconds (since the start until then); the
percentage and the ETA only when the total is known.  The line is cut to the
terminal's width (C{TIOCGWINSZ} on stderr at each draw, else 80 columns,
less one so that it never wraps): the label is shortened first, then the
percentage, the ETA and the rate are dropped.
L{Progress.clear} erases the line before anything else is written to the
terminal (L{prokshy.cli.progressrun.ProgressOutput} does it for the CLI's
stderr, and for its stdout when that is the same terminal); the next tick
draws it again.
L{Progress.finish} replaces it by a summary (bytes, time, average rate) and
a line end, if a line was ever drawn: a transfer that ends within the first
interval leaves nothing on the terminal.

When it shows (L{progressWanted}): C{--progress} always, C{--no-progress}
never, else only when stderr is a terminal (a pipe or a file never gets it).
What gets a line (the CLI's wiring, in L{prokshy.cli.progressrun}): an
exec run's C{--stdin} and large output (L{prokshy.cli.progressrun.ExecProgress},
which says when each shows), and a C{--push} or C{--pull} run
(L{prokshy.cli.progressrun.FileProgress}); several VMs share one line, with
the totals.
Counting costs an integer add per chunk, and only when a line may show;
the drawing is on the timer.

Its states (the timer runs in every state but C{finished}):

%s
"""

import fcntl
import os
import struct
import termios
from collections import deque

from automat import MethodicalMachine

from prokshy import _machines

#: Erase the progress line: to its start, then to the end of the line.
ERASE = b"\r\x1b[K"

_UNITS = ("B", "kB", "MB", "GB", "TB")


def formatBytes(n):
    """
    A byte count in decimal units: C{"999 B"}, C{"1.0 kB"}, C{"12.3 MB"}.
    """
    n = float(n)
    for unit in _UNITS:
        if n < 999.95 or unit == _UNITS[-1]:
            return ("%d %s" if unit == "B" else "%.1f %s") % (n, unit)
        n /= 1000.0


def formatDuration(seconds):
    """
    A duration for an ETA or a summary: C{"42s"}, C{"3m05s"}, C{"2h07m"}.
    """
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return "%ds" % (seconds,)
    if seconds < 3600:
        return "%dm%02ds" % divmod(seconds, 60)
    hours, rest = divmod(seconds, 3600)
    if hours > 99:
        return ">99h"
    return "%dh%02dm" % (hours, rest // 60)


def _elapsed(seconds):
    if seconds < 10:
        return "%.1fs" % (seconds,)
    return formatDuration(seconds)


def terminalWidth(fd=2, default=80):
    """
    The number of columns of the terminal on C{fd} (C{TIOCGWINSZ}), else
    C{default}.
    """
    try:
        rows, cols, _x, _y = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except (OSError, ValueError, TypeError):
        return default
    return cols or default


def isTerminal(fd):
    """
    Whether C{fd} (a number, or L{None}) is a terminal.
    """
    if fd is None:
        return False
    try:
        return os.isatty(fd)
    except (OSError, ValueError, TypeError):
        return False


def progressWanted(options, stderrFD=2):
    """
    Whether to show progress: C{--progress} (C{options.progress} true)
    always, C{--no-progress} (false) never, else (L{None}) only when
    C{stderrFD} is a terminal.

    @param stderrFD: the descriptor progress would be drawn on, or L{None}
        when stderr is not a descriptor (then only C{--progress} shows it).
    """
    wanted = options.progress
    if wanted is not None:
        return bool(wanted)
    return isTerminal(stderrFD)


def _printable(label):
    return "".join(c if c.isprintable() else "?" for c in str(label))


class Progress:
    """
    The progress line of one transfer.

    @param clock: an L{twisted.internet.interfaces.IReactorTime} (the
        reactor; a L{twisted.internet.task.Clock} in tests).
    @param write: where the line goes (bytes; the CLI's stderr output's
        C{write}, not a L{prokshy.cli.progressrun.ProgressOutput}'s, which
        would erase it).
    @param label: what moves (C{"stdin"}, C{"output"}, a file name).
    @param total: the size when known (bytes), for the percentage and ETA.
    @param width: a function giving the terminal's columns (L{None}: those
        of descriptor 2, else 80).
    @param threshold: draw only once this many bytes have moved (so a short
        output never shows a line).
    @param state: L{None}, or the L{prokshy.cli.progressrun.LineState} of
        the terminal shared with other writers (through
        L{prokshy.cli.progressrun.ProgressOutput}s): the line is drawn only
        when its C{idle()} says so, and the summary goes on a line of its own
        after a partial line (its C{atLineStart} false).

    @ivar done: the bytes moved so far.
    @ivar shown: whether the line is on the terminal now.
    @ivar drawn: whether a line was ever drawn.
    """

    _machine = MethodicalMachine()

    #: Seconds between redraws.
    interval = 0.25
    #: Seconds of history the rate is computed over.
    window = 5.0

    def __init__(self, clock, write, label, total=None, width=None, threshold=0, state=None):
        self.clock = clock
        self.write = write
        self.label = _printable(label)
        self.total = total
        self.width = width if width is not None else terminalWidth
        self.threshold = threshold
        self.state = state
        self.done = 0
        #: While true the line is not drawn (another line goes first).
        self.held = False
        self.shown = False
        self.drawn = False
        self.started = clock.seconds()
        self._samples = deque([(self.started, 0)])
        # The initial state's timer (Automat has no entry outputs).
        self._call = self.clock.callLater(self.interval, self._tick)

    # -- the hot path -----------------------------------------------------------

    def advance(self, n):
        """
        C{n} more bytes moved.
        """
        self.done += n

    # -- the states -------------------------------------------------------------

    @_machine.state(initial=True)
    def quiet(self):
        "Nothing drawn yet."

    @_machine.state()
    def visible(self):
        "The line is on the terminal."

    @_machine.state()
    def hidden(self):
        "The line was drawn, then erased (something else was written)."

    @_machine.state()
    def finished(self):
        "Done: the summary was written, if a line was ever drawn; no timer."

    @_machine.input()
    def redraw(self):
        "The timer fired and the line may be drawn."

    @_machine.input()
    def wait(self):
        "The timer fired and the line may not be drawn now."

    @_machine.input()
    def clear(self, write=None):
        """
        Erase the line (through C{write}, by default the line's own): it is
        drawn again at the next tick.
        """

    @_machine.input()
    def finish(self):
        """
        The transfer is over: the summary line and a line end, if a line was
        ever drawn.  Idempotent.
        """

    @_machine.input()
    def cancel(self):
        """
        The transfer is over, quietly: the line is erased, no summary
        (stdout's reader went away: the CLI exits without a word).
        Idempotent.
        """

    @_machine.output()
    def _armTick(self):
        self._call = self.clock.callLater(self.interval, self._tick)

    @_machine.output()
    def _cancelTick(self):
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    @_machine.output()
    def _draw(self):
        self.write(b"\r" + self.line().encode("utf-8", "replace") + b"\x1b[K")
        self.shown = self.drawn = True

    @_machine.output()
    def _erase(self, write=None):
        (write or self.write)(ERASE)
        self.shown = False

    @_machine.output()
    def _eraseOwn(self):
        self.write(ERASE)
        self.shown = False

    @_machine.output()
    def _summarize(self):
        # Over the line if it is shown, else on a line of its own.
        lead = b"\r" if self.shown or self.state is None or self.state.atLineStart else b"\n"
        self.write(lead + self.summary().encode("utf-8", "replace") + b"\x1b[K\n")
        self.shown = False

    @_machine.output()
    def _ignore(self, write=None):
        pass

    quiet.upon(redraw, enter=visible, outputs=[_draw, _armTick])
    quiet.upon(wait, enter=quiet, outputs=[_armTick])
    quiet.upon(clear, enter=quiet, outputs=[_ignore])
    quiet.upon(finish, enter=finished, outputs=[_cancelTick])
    quiet.upon(cancel, enter=finished, outputs=[_cancelTick])
    visible.upon(redraw, enter=visible, outputs=[_draw, _armTick])
    visible.upon(wait, enter=visible, outputs=[_armTick])
    visible.upon(clear, enter=hidden, outputs=[_erase])
    visible.upon(finish, enter=finished, outputs=[_cancelTick, _summarize])
    visible.upon(cancel, enter=finished, outputs=[_cancelTick, _eraseOwn])
    hidden.upon(redraw, enter=visible, outputs=[_draw, _armTick])
    hidden.upon(wait, enter=hidden, outputs=[_armTick])
    hidden.upon(clear, enter=hidden, outputs=[_ignore])
    hidden.upon(finish, enter=finished, outputs=[_cancelTick, _summarize])
    hidden.upon(cancel, enter=finished, outputs=[_cancelTick])
    # A tick cannot come once finished (its timer was cancelled): ignored.
    finished.upon(redraw, enter=finished, outputs=[])
    finished.upon(wait, enter=finished, outputs=[])
    finished.upon(clear, enter=finished, outputs=[_ignore])
    finished.upon(finish, enter=finished, outputs=[])
    finished.upon(cancel, enter=finished, outputs=[])

    # -- the timer ----------------------------------------------------------------

    def _tick(self):
        self._call = None
        now = self.clock.seconds()
        samples = self._samples
        samples.append((now, self.done))
        # Keep one sample at or before the start of the window.
        while len(samples) > 2 and samples[1][0] <= now - self.window:
            samples.popleft()
        if not self.held and self.done >= self.threshold and (self.state is None or self.state.idle()):
            self.redraw()
        else:
            self.wait()

    # -- the text -------------------------------------------------------------------

    def rate(self):
        """
        Bytes per second over the last L{window} seconds (or since the
        start), up to now.
        """
        now = self.clock.seconds()
        t0, n0 = self._samples[0]
        if now - t0 <= 0:
            return 0.0
        return (self.done - n0) / (now - t0)

    def fields(self):
        """
        The line's parts, most important first: C{[(name, text)]}.
        """
        rate = self.rate()
        parts = []
        if self.total is not None:
            parts.append(("bytes", "%s / %s" % (formatBytes(self.done), formatBytes(self.total))))
            if self.total > 0:
                parts.append(("percent", "%d%%" % (min(100, self.done * 100 // self.total),)))
        else:
            parts.append(("bytes", formatBytes(self.done)))
        parts.append(("rate", "%s/s" % (formatBytes(rate),)))
        if self.total is not None and self.done < self.total:
            if rate > 0:
                parts.append(("eta", "ETA %s" % (formatDuration((self.total - self.done) / rate),)))
            else:
                parts.append(("eta", "stalled"))
        return parts

    def line(self, columns=None):
        """
        The status line, fit to C{columns} (by default the terminal's) less
        one, so that it never wraps.
        """
        if columns is None:
            columns = self.width()
        room = max(1, columns - 1)
        parts = self.fields()
        order = {"bytes": 0, "rate": 1, "eta": 2, "percent": 3}
        while True:
            stats = "  ".join(text for _name, text in parts)
            label = self.label
            free = room - len(stats) - 2
            if len(label) <= free:
                return (label + "  " + stats) if label else stats
            if free >= 8:
                return label[: free - 3] + "...  " + stats
            if len(parts) > 1:
                # Drop the least important part, then try again.
                worst = max(parts, key=lambda p: order[p[0]])
                parts.remove(worst)
                continue
            return stats[:room]

    def summary(self, columns=None):
        """
        The final line: bytes, time taken, average rate; fit to C{columns}
        as L{line} is (the label shortened or dropped, then the rate).
        """
        if columns is None:
            columns = self.width()
        room = max(1, columns - 1)
        took = self.clock.seconds() - self.started
        average = self.done / took if took > 0 else 0.0
        text = "%s in %s" % (formatBytes(self.done), _elapsed(took))
        rate = ", %s/s" % (formatBytes(average),)
        label = self.label
        free = room - len(text + rate) - 2
        if len(label) <= free:
            return (label + "  " + text + rate) if label else text + rate
        if free >= 8:
            return label[: free - 3] + "...  " + text + rate
        if len(text + rate) <= room:
            return text + rate
        return text[:room]


__doc__ = __doc__ % (_machines.table(Progress._machine),)


__all__ = [
    "ERASE",
    "Progress",
    "formatBytes",
    "formatDuration",
    "isTerminal",
    "progressWanted",
    "terminalWidth",
]
