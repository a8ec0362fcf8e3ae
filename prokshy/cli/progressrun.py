# -*- test-case-name: tests.unit.test_progress,tests.system.test_cli_progress,tests.system.test_files_cli -*-
"""
The CLI's progress lines: which runs get one, when each shows, and the
outputs that keep them from garbling anything else written.

The line itself (its text, its timer, its machine) is
L{prokshy.cli.progress.Progress}; this module wires it into the CLI's runs:

  - L{ExecProgress}: the lines of an exec run (C{--stdin} and large
    output), and the rule of when each shows;
  - L{FileProgress} and its L{FileTransfer}s: the one line of a C{--push}
    or C{--pull} run, for every VM together;
  - L{ProgressOutput}: an output over the CLI's stderr (and its stdout when
    that is the same terminal) that erases the lines before each write;
  - L{LineState}: what was last written to that terminal, so that a line is
    drawn only at the start of a line and when stdout is quiet.

With no line to show, a run's outputs are left as they are: nothing is on
their path.
"""

import os
import stat

from zope.interface import implementer

from prokshy.cli.output import IOutput, OutputPort
from prokshy.cli.progress import Progress, _printable, isTerminal, progressWanted, terminalWidth


def sameTerminal(fd1, fd2):
    """
    Whether C{fd1} and C{fd2} are the same terminal device.
    """
    if not (isTerminal(fd1) and isTerminal(fd2)):
        return False
    try:
        s1, s2 = os.fstat(fd1), os.fstat(fd2)
    except OSError:
        return False
    return (s1.st_rdev, s1.st_dev) == (s2.st_rdev, s2.st_dev)


def outputFD(output):
    """
    The descriptor behind one of the CLI's outputs (an L{OutputPort}: a
    terminal, pipe or socket), or L{None} (a regular file, a file-like
    object, a collector: never a terminal).
    """
    if isinstance(output, ProgressOutput):
        output = output.inner
    if isinstance(output, OutputPort):
        return output.fd
    return None


def remainingSize(fd):
    """
    What is left to read on C{fd} when it is a regular file (its size less
    the current position), else L{None} (a pipe, a terminal: unknown).
    """
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return max(0, st.st_size - os.lseek(fd, 0, os.SEEK_CUR))
    except OSError:
        return None


class LineState:
    """
    What was last written to the terminal the progress line is drawn on,
    through the L{ProgressOutput}s over it: the line may be drawn only when
    the cursor is at the start of a line (nothing written yet, or a line end
    last), so a partial line (a prompt, the command's own C{\\r} status) is
    never erased, and, when stdout is the same terminal, only once stdout
    wrote nothing for a whole tick and is not backed up (its writes and the
    line's go through different buffers).
    """

    def __init__(self):
        self.atLineStart = True
        self.recent = False
        self.busy = None

    def wrote(self, data):
        self.atLineStart = data[-1:] == b"\n"

    def idle(self):
        """
        Whether the progress line may be drawn now (resets L{recent}).
        """
        recent, self.recent = self.recent, False
        if recent or (self.busy is not None and self.busy()):
            return False
        return self.atLineStart


@implementer(IOutput)
class ProgressOutput:
    """
    An L{IOutput} over another one (the CLI's stderr, or its stdout when that
    is the same terminal) that erases the progress lines before each write,
    so that nothing written is garbled by them.

    @ivar progresses: the L{Progress} lines to erase (a list the caller
        adds to); the erasing goes through the inner output's C{write}, so
        it stays in order with the data.
    @ivar state: the L{LineState} of the terminal, shared by the lines and
        every L{ProgressOutput} over that terminal.
    @param stdout: this is stdout over the same terminal as stderr: its
        writes also hold the next draw back (L{LineState.idle}).
    """

    def __init__(self, inner, state=None, stdout=False):
        self.inner = inner
        self.state = state if state is not None else LineState()
        self.progresses = []
        self._stdout = stdout

    name = property(lambda self: self.inner.name)
    lost = property(lambda self: self.inner.lost)
    error = property(lambda self: self.inner.error)
    bytesWritten = property(lambda self: self.inner.bytesWritten)

    def write(self, data):
        if not data:
            return
        for progress in self.progresses:
            if progress.shown:
                progress.clear(self.inner.write)
        self.inner.write(data)
        state = self.state
        state.wrote(data)
        if self._stdout:
            state.recent = True

    def flush(self):
        pass

    def attach(self, gate):
        self.inner.attach(gate)

    def detach(self, gate):
        self.inner.detach(gate)

    def whenLost(self, callback):
        self.inner.whenLost(callback)

    def close(self):
        return self.inner.close()

    def abort(self):
        self.inner.abort()

    def restore(self):
        self.inner.restore()


class _Upload:
    """
    What the stdin reader counts into: the upload's line; when it is done,
    the output's line may be drawn.
    """

    def __init__(self, progress, after):
        self.progress = progress
        self.advance = progress.advance
        self._after = after

    def finish(self):
        self.progress.finish()
        if self._after is not None:
            self._after.held = False


def _wrapped(state, stdout, stderr, outFD, errFD):
    """
    The CLI's outputs while a line may show: stderr erases the line before
    every other write, and so does stdout when it is the same terminal (the
    line is then drawn only in a turn in which stdout wrote nothing and is
    not backed up).

    @return: C{(stdout, stderr)}.
    """
    stderr = ProgressOutput(stderr, state)
    if sameTerminal(outFD, errFD):
        inner = stdout
        stdout = ProgressOutput(inner, state, stdout=True)
        if isinstance(inner, OutputPort):
            state.busy = lambda: inner.paused
    return stdout, stderr


class ExecProgress:
    """
    The progress lines of one exec run (one VM or several), and the rule of
    when each shows:

      - nothing without L{progressWanted} (C{--progress}, or stderr a
        terminal and no C{--no-progress});
      - C{stdin}: the bytes of C{--stdin} read and sent (once, for every
        VM), with the percentage and ETA when stdin is a regular file (its
        size less its position); in auto mode not when stdin is a terminal
        (the user is typing on it);
      - C{output}: the stdout and stderr bytes received from every VM
        together, once at least L{outputThreshold} bytes have come; in auto
        mode only when stdout is not a terminal (output on the terminal
        shows itself); while the C{stdin} line is going, it waits;
      - one line at a time, for all the VMs together (totals);
      - the line is erased before anything else is written to stderr, and
        to stdout when that is the same terminal; it is drawn only when the
        terminal's cursor is at the start of a line, and (stdout the same
        terminal) when stdout wrote nothing for a whole tick;
      - a summary line ends each line that was drawn.

    @ivar stdout: the output to write the commands' stdout to (a
        L{ProgressOutput} when it is the terminal of the line).
    @ivar stderr: the same for stderr and the CLI's messages.
    """

    #: The output line shows only past this many bytes (an ordinary
    #: command's output never gets one).
    outputThreshold = 1000000

    def __init__(self, clock, options, stdout, stderr, stdinFD=0):
        self.clock = clock
        errFD = outputFD(stderr)
        outFD = outputFD(stdout)
        forced = options.progress is True
        wanted = progressWanted(options, errFD)
        self.state = LineState()
        self.stdout = stdout
        self.stderr = stderr
        self._write = stderr.write
        self._errFD = errFD
        self.upload = None
        self.output = None
        self.uploadWanted = bool(wanted and options.stdin and (forced or not isTerminal(stdinFD)))
        self.outputWanted = bool(wanted and (forced or not isTerminal(outFD)))
        if not (self.uploadWanted or self.outputWanted):
            # No line: the outputs as they are, nothing on their path.
            return
        self.stdout, self.stderr = _wrapped(self.state, stdout, stderr, outFD, errFD)
        if self.outputWanted:
            self.output = self._line("output", None, self.outputThreshold)
            self.output.held = self.uploadWanted

    def _width(self):
        return terminalWidth(self._errFD) if self._errFD is not None else 80

    def _line(self, label, total, threshold):
        progress = Progress(self.clock, self._write, label, total, self._width, threshold, self.state)
        for output in (self.stdout, self.stderr):
            if isinstance(output, ProgressOutput):
                output.progresses.append(progress)
        return progress

    def startUpload(self, fd):
        """
        Stdin (C{fd}) is about to be streamed: the line to count it in
        (C{advance}, C{finish}), or L{None}.
        """
        if not self.uploadWanted or self.upload is not None:
            return None
        self.upload = self._line("stdin", remainingSize(fd), 0)
        return _Upload(self.upload, self.output)

    def counted(self, onStdout, onStderr):
        """
        The sinks of one command, counting into the output line.
        """
        output = self.output
        if output is None:
            return onStdout, onStderr

        def countedOut(data):
            output.done += len(data)
            onStdout(data)

        def countedErr(data):
            output.done += len(data)
            onStderr(data)

        return countedOut, countedErr

    def finish(self, quiet=False):
        """
        The run is over: end every line (a summary for those drawn, or,
        C{quiet}, only erased: stdout's reader went away).
        """
        for progress in (self.upload, self.output):
            if progress is not None:
                if quiet:
                    progress.cancel()
                else:
                    progress.finish()


class FileProgress:
    """
    The progress line of a C{--push} or C{--pull} run: one line for every
    VM together (bytes moved in all, the sizes summed when all are known),
    labelled with the remote path, C{PATH (N VMs)} among several.

    When it shows: as L{progressWanted} says, except that in auto mode a
    C{--pull} to stdout (C{-}) that is a terminal gets none (the file is on
    the terminal).  Use L{stdout} and L{stderr} instead of the run's own
    outputs, so that every other write erases the line first.

    @param remote: the remote path, the line's label.
    @param toStdout: the file goes to stdout (C{--pull REMOTE -}).
    """

    def __init__(self, clock, options, stdout, stderr, remote, toStdout=False):
        self.clock = clock
        self.remote = remote
        errFD = outputFD(stderr)
        outFD = outputFD(stdout)
        self._errFD = errFD
        self._write = stderr.write
        forced = options.progress is True
        self.wanted = bool(
            progressWanted(options, errFD) and (forced or not (toStdout and isTerminal(outFD)))
        )
        self.state = LineState()
        self.stdout = stdout
        self.stderr = stderr
        self.progress = None
        self.count = 0
        self._totals = []
        if not self.wanted:
            return
        self.stdout, self.stderr = _wrapped(self.state, stdout, stderr, outFD, errFD)

    def add(self, total=None):
        """
        One more transfer (one VM's), of C{total} bytes if known (a pull
        learns it from the header: L{FileTransfer.setTotal}).

        @return: a L{FileTransfer}: pass its C{advance} (L{None} when no
            line shows) as the transfer's C{onProgress}.
        """
        if not self.wanted:
            return FileTransfer(None, None, None)
        if self.progress is None:
            # The line (and its timer) from the first transfer on.
            errFD = self._errFD
            self.progress = Progress(
                self.clock,
                self._write,
                self.remote,
                None,
                lambda: terminalWidth(errFD) if errFD is not None else 80,
                0,
                self.state,
            )
            for output in (self.stdout, self.stderr):
                if isinstance(output, ProgressOutput):
                    output.progresses.append(self.progress)
        index = len(self._totals)
        self._totals.append(total)
        self.count += 1
        if self.count > 1:
            self.progress.label = _printable("%s (%d VMs)" % (self.remote, self.count))
        self._sum()
        return FileTransfer(self, index, self.progress.advance)

    def _sum(self):
        self.progress.total = None if None in self._totals else sum(self._totals)

    def finish(self, quiet=False):
        """
        The run is over (every VM's transfer ended): the summary, if a line
        was drawn (or, C{quiet}, the line only erased: stdout's reader went
        away).
        """
        if self.progress is not None:
            if quiet:
                self.progress.cancel()
            else:
                self.progress.finish()


class FileTransfer:
    """
    One VM's transfer on a L{FileProgress} line.

    @ivar advance: C{advance(n)}, the C{onProgress} to give the transfer, or
        L{None} when no line shows.
    """

    def __init__(self, line, index, advance):
        self._line = line
        self._index = index
        self.advance = advance

    def setTotal(self, total):
        """
        The transfer's size became known (a pull's header).
        """
        if self._line is not None:
            self._line._totals[self._index] = total
            self._line._sum()


__all__ = [
    "ExecProgress",
    "FileProgress",
    "FileTransfer",
    "LineState",
    "ProgressOutput",
    "outputFD",
    "remainingSize",
    "sameTerminal",
]
