"""
L{prokshy.cli.progress}: the progress line's text, rate, ETA, throttling,
erasing and redrawing, width, and when it shows; L{prokshy.cli.progressrun}:
the CLI's wiring of it (which runs get a line, the erasing outputs); on a
L{task.Clock} with a fake write.
"""

import os
import tempfile

from twisted.internet import task
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from prokshy import _machines
from prokshy.cli import progress as P
from prokshy.cli import progressrun as R
from prokshy.cli.options import parseArgs
from prokshy.cli.output import Collector, IOutput


class _Options:
    def __init__(self, progress=None, stdin=False):
        self.progress = progress
        self.stdin = stdin


def _line(clock, total=None, columns=80, label="stdin", **kw):
    written = []
    progress = P.Progress(clock, written.append, label, total, width=lambda: columns, **kw)
    return progress, written


class FormatTests(TestCase):
    def test_bytes(self):
        """
        Decimal units, one decimal past bytes.
        """
        self.assertEqual(
            [P.formatBytes(n) for n in (0, 999, 1000, 12345, 999949, 999950, 12_300_000, 4_500_000_000, 7e12)],
            ["0 B", "999 B", "1.0 kB", "12.3 kB", "999.9 kB", "1.0 MB", "12.3 MB", "4.5 GB", "7.0 TB"],
        )

    def test_duration(self):
        self.assertEqual(
            [P.formatDuration(s) for s in (0, 3.4, 59.4, 60, 185, 3599, 3600, 7620, 400000)],
            ["0s", "3s", "59s", "1m00s", "3m05s", "59m59s", "1h00m", "2h07m", ">99h"],
        )


class ProgressTests(TestCase):
    def test_machine(self):
        """
        Every (state, input) pair is declared, and the module's docstring
        carries the table.
        """
        self.assertEqual(_machines.undeclared(P.Progress._machine), set())
        self.assertIn(_machines.table(P.Progress._machine), P.__doc__)

    def test_nothingBeforeTheFirstTick(self):
        """
        A transfer that ends within the first interval leaves nothing: no
        line, no summary, no timer.
        """
        clock = task.Clock()
        progress, written = _line(clock)
        progress.advance(5000)
        clock.advance(0.2)
        progress.finish()
        self.assertEqual(written, [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_throttled(self):
        """
        At most one draw every 0.25 s however many advances; each draw is
        C{\\r}, the text, erase to the end of the line.
        """
        clock = task.Clock()
        progress, written = _line(clock)
        for i in range(1000):
            progress.advance(1000)
            clock.advance(0.001)
        # 1 s: 4 ticks
        self.assertEqual(len(written), 4)
        for w in written:
            self.assertTrue(w.startswith(b"\r") and w.endswith(b"\x1b[K"), w)
        self.assertEqual(written[-1], b"\rstdin  1.0 MB  1.0 MB/s\x1b[K")

    def test_noTotal(self):
        """
        Without a total: bytes and rate, no percentage, no ETA.
        """
        clock = task.Clock()
        progress, written = _line(clock, label="output")
        progress.advance(12_300_000)
        clock.advance(0.25)
        self.assertEqual(written, [b"\routput  12.3 MB  49.2 MB/s\x1b[K"])

    def test_totalPercentETA(self):
        """
        With a total: C{done / total}, the percentage and the ETA at the
        current rate.
        """
        clock = task.Clock()
        progress, written = _line(clock, total=10_000_000)
        for i in range(8):
            progress.advance(250_000)
            clock.advance(0.25)
        # 2 MB in 2 s: 1 MB/s, 8 MB left: 8 s
        self.assertEqual(written[-1], b"\rstdin  2.0 MB / 10.0 MB  20%  1.0 MB/s  ETA 8s\x1b[K")

    def test_stalledAndDone(self):
        """
        Nothing moving for a whole window: the rate is 0 and the ETA says
        C{stalled}; past the total, no ETA and 100%.
        """
        clock = task.Clock()
        progress, written = _line(clock, total=1000)
        progress.advance(500)
        clock.advance(0.25)
        for i in range(int(P.Progress.window / 0.25) + 2):
            clock.advance(0.25)
        self.assertEqual(written[-1], b"\rstdin  500 B / 1.0 kB  50%  0 B/s  stalled\x1b[K")
        progress.advance(700)
        clock.advance(0.25)
        self.assertTrue(written[-1].startswith(b"\rstdin  1.2 kB / 1.0 kB  100%  "), written[-1])
        self.assertNotIn(b"ETA", written[-1])

    def test_recentRate(self):
        """
        The rate is over the last few seconds, not since the start: after
        10 s at 10 MB/s then 10 s at 1 MB/s it says 1 MB/s.
        """
        clock = task.Clock()
        progress, written = _line(clock, label="output")
        for rate in (10_000_000, 1_000_000):
            for i in range(40):
                progress.advance(rate // 4)
                clock.advance(0.25)
        self.assertEqual(written[-1], b"\routput  110.0 MB  1.0 MB/s\x1b[K")
        # the history it keeps is bounded by the window
        self.assertLessEqual(len(progress._samples), P.Progress.window / P.Progress.interval + 2)
        progress.finish()
        self.assertEqual(written[-1], b"\routput  110.0 MB in 20s, 5.5 MB/s\x1b[K\n")

    def test_rateBeforeWindow(self):
        """
        Before a whole window has passed, the rate is since the start.
        """
        clock = task.Clock()
        progress, written = _line(clock)
        progress.advance(3_000_000)
        clock.advance(0.25)
        clock.advance(0.25)
        clock.advance(0.5)
        self.assertEqual(progress.rate(), 3_000_000)

    def test_clearAndRedraw(self):
        """
        L{Progress.clear} erases the line (through the write given, or its
        own) once; the next tick draws it again.
        """
        clock = task.Clock()
        progress, written = _line(clock)
        progress.advance(1)
        clock.advance(0.25)
        self.assertTrue(progress.shown)
        progress.clear()
        progress.clear()
        self.assertEqual(written[1:], [P.ERASE])
        self.assertFalse(progress.shown)
        other = []
        clock.advance(0.25)
        progress.clear(other.append)
        self.assertEqual(other, [P.ERASE])
        self.assertEqual(len(written), 3)
        clock.advance(0.25)
        self.assertEqual(len(written), 4)
        self.assertTrue(progress.shown)

    def test_finishSummary(self):
        """
        L{Progress.finish}: the summary (bytes, time, average rate) over the
        line, a line end, no timer left; finishing again does nothing.
        """
        clock = task.Clock()
        progress, written = _line(clock, total=4_000_000)
        for i in range(8):
            progress.advance(500_000)
            clock.advance(0.25)
        progress.finish()
        self.assertEqual(written[-1], b"\rstdin  4.0 MB in 2.0s, 2.0 MB/s\x1b[K\n")
        n = len(written)
        progress.finish()
        progress.clear()
        clock.advance(10)
        self.assertEqual(len(written), n)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_finishAfterClear(self):
        """
        A line drawn then erased still gets its summary.
        """
        clock = task.Clock()
        progress, written = _line(clock)
        progress.advance(10)
        clock.advance(0.25)
        progress.clear()
        progress.finish()
        self.assertEqual(written[-1], b"\rstdin  10 B in 0.2s, 40 B/s\x1b[K\n")

    def test_threshold(self):
        """
        Under the threshold nothing is drawn (nor summarized).
        """
        clock = task.Clock()
        progress, written = _line(clock, threshold=1000)
        progress.advance(999)
        clock.advance(5)
        self.assertEqual(written, [])
        progress.advance(1)
        clock.advance(0.25)
        self.assertEqual(len(written), 1)

    def test_held(self):
        """
        A held line is not drawn until released.
        """
        clock = task.Clock()
        progress, written = _line(clock)
        progress.held = True
        progress.advance(10)
        clock.advance(1)
        self.assertEqual(written, [])
        progress.held = False
        clock.advance(0.25)
        self.assertEqual(len(written), 1)

    def test_width(self):
        """
        The line is fit to the width less one column: the label shortened
        first, then the ETA, percentage and rate dropped, then cut.
        """
        clock = task.Clock()
        progress, written = _line(clock, total=10_000_000, label="a-rather-long-file-name.tar.gz")
        progress.advance(2_000_000)
        clock.advance(1)
        full = "a-rather-long-file-name.tar.gz  2.0 MB / 10.0 MB  20%  2.0 MB/s  ETA 4s"
        self.assertEqual(progress.line(100), full)
        self.assertEqual(progress.line(len(full) + 1), full)
        self.assertEqual(progress.line(len(full)), "a-rather-long-file-name.ta...  2.0 MB / 10.0 MB  20%  2.0 MB/s  ETA 4s")
        self.assertEqual(progress.line(40), "a-rather...  2.0 MB / 10.0 MB  2.0 MB/s")
        self.assertEqual(progress.line(20), "2.0 MB / 10.0 MB")
        self.assertEqual(progress.line(10), "2.0 MB / ")
        for columns in range(1, 120):
            self.assertLessEqual(len(progress.line(columns)), max(1, columns - 1))
            self.assertLessEqual(len(progress.summary(columns)), max(1, columns - 1))
        self.assertEqual(progress.summary(100), "a-rather-long-file-name.tar.gz  2.0 MB in 1.0s, 2.0 MB/s")
        self.assertEqual(progress.summary(40), "a-rather-l...  2.0 MB in 1.0s, 2.0 MB/s")
        self.assertEqual(progress.summary(30), "2.0 MB in 1.0s, 2.0 MB/s")
        self.assertEqual(progress.summary(12), "2.0 MB in 1")
        # the terminal's width is asked at each draw
        columns = [30]
        progress.width = lambda: columns[0]
        clock.advance(0.25)
        self.assertLessEqual(len(written[-1]) - len(b"\r\x1b[K"), 29)
        columns[0] = 200
        clock.advance(0.25)
        self.assertIn(b"a-rather-long-file-name.tar.gz  ", written[-1])

    def test_labelPrintable(self):
        """
        A label's control characters cannot move the cursor.
        """
        clock = task.Clock()
        progress, written = _line(clock, label="a\rb\x1b[2Jc")
        progress.advance(1)
        clock.advance(0.25)
        self.assertEqual(written[-1], b"\ra?b?[2Jc  1 B  4 B/s\x1b[K")


class WantedTests(TestCase):
    def test_flags(self):
        """
        --progress and --no-progress parse to True and False, the default
        to None (auto).
        """
        self.assertIs(parseArgs(["--socket-path", "s", "--from-string", "", "--command", "x", "--progress"]).progress, True)
        self.assertIs(parseArgs(["--socket-path", "s", "--from-string", "", "--command", "x", "--no-progress"]).progress, False)
        self.assertIs(parseArgs(["--socket-path", "s", "--from-string", "", "--command", "x"]).progress, None)


    def test_remainingSize(self):
        """
        A regular file: its size less the position; a pipe: unknown.
        """
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.unlink, path)
        self.addCleanup(os.close, fd)
        os.write(fd, b"x" * 1000)
        os.lseek(fd, 300, os.SEEK_SET)
        self.assertEqual(R.remainingSize(fd), 700)
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        self.assertIsNone(R.remainingSize(r))


class ProgressOutputTests(TestCase):
    def test_interface(self):
        self.assertTrue(verifyObject(IOutput, R.ProgressOutput(Collector())))

    def test_erasedBeforeWrite(self):
        """
        A write through the decorator erases a shown line first, through
        the same output (so in order); the next tick draws it again.
        """
        clock = task.Clock()
        inner = Collector()
        out = R.ProgressOutput(inner)
        progress = P.Progress(clock, inner.write, "output", width=lambda: 80, state=out.state)
        out.progresses.append(progress)
        progress.advance(1000)
        clock.advance(0.25)
        out.write(b"prokshy: a message\n")
        clock.advance(0.25)
        self.assertEqual(
            inner.chunks,
            [b"\routput  1.0 kB  4.0 kB/s\x1b[K", P.ERASE, b"prokshy: a message\n", b"\routput  1.0 kB  2.0 kB/s\x1b[K"],
        )
        self.assertEqual(out.bytesWritten, inner.bytesWritten)

    def test_partialLine(self):
        """
        After a partial line (a prompt, the command's own status), the line
        is not drawn, so never erases it; the summary goes after it on a
        line of its own.
        """
        clock = task.Clock()
        inner = Collector()
        out = R.ProgressOutput(inner)
        progress = P.Progress(clock, inner.write, "output", width=lambda: 80, state=out.state)
        out.progresses.append(progress)
        progress.advance(1000)
        clock.advance(0.25)
        out.write(b"Password: ")
        clock.advance(1)
        self.assertEqual(inner.chunks[1:], [P.ERASE, b"Password: "])
        progress.finish()
        self.assertEqual(inner.chunks[-1], b"\noutput  1.0 kB in 1.2s, 800 B/s\x1b[K\n")

    def test_stdoutQuiet(self):
        """
        With stdout on the same terminal: no draw in a tick in which stdout
        wrote, nor while it is backed up; its writes erase the line through
        stdout's own output.
        """
        clock = task.Clock()
        err, outInner = Collector(), Collector()
        errOut = R.ProgressOutput(err)
        stdout = R.ProgressOutput(outInner, errOut.state, stdout=True)
        busy = [False]
        errOut.state.busy = lambda: busy[0]
        progress = P.Progress(clock, err.write, "stdin", width=lambda: 80, state=errOut.state)
        errOut.progresses.append(progress)
        stdout.progresses.append(progress)
        progress.advance(10)
        stdout.write(b"line\n")
        clock.advance(0.25)
        self.assertEqual(err.chunks, [])
        busy[0] = True
        clock.advance(0.25)
        self.assertEqual(err.chunks, [])
        busy[0] = False
        clock.advance(0.25)
        self.assertEqual(len(err.chunks), 1)
        stdout.write(b"more\n")
        self.assertEqual(outInner.chunks, [b"line\n", P.ERASE, b"more\n"])
        self.assertEqual(len(err.chunks), 1)


class FileProgressTests(TestCase):
    """
    The line of a --push or --pull run.
    """

    def test_oneLineForAll(self):
        """
        One line for every VM: bytes summed, totals summed, the label says
        how many VMs.
        """
        clock = task.Clock()
        err = Collector()
        run = R.FileProgress(clock, _Options(True), Collector(), err, "/srv/x.img")
        self.assertIsInstance(run.stderr, R.ProgressOutput)
        a = run.add(1_000_000)
        self.assertEqual((run.progress.label, run.progress.total), ("/srv/x.img", 1_000_000))
        b = run.add(None)
        self.assertEqual((run.progress.label, run.progress.total), ("/srv/x.img (2 VMs)", None))
        b.setTotal(1_000_000)
        self.assertEqual(run.progress.total, 2_000_000)
        a.advance(500_000)
        b.advance(500_000)
        clock.advance(0.25)
        self.assertEqual(err.chunks[-1], b"\r/srv/x.img (2 VMs)  1.0 MB / 2.0 MB  50%  4.0 MB/s  ETA 0s\x1b[K")
        run.stderr.write(b"prokshy: vm b: refused\n")
        self.assertEqual(err.chunks[-2:], [P.ERASE, b"prokshy: vm b: refused\n"])
        run.add(None)
        self.assertIsNone(run.progress.total)
        run.finish()
        self.assertTrue(err.chunks[-1].endswith(b"\n"))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_notWanted(self):
        """
        Not wanted: no line, outputs as they are, C{add} gives None.
        """
        clock = task.Clock()
        err, out = Collector(), Collector()
        run = R.FileProgress(clock, _Options(False), out, err, "/x")
        transfer = run.add(10)
        self.assertEqual((transfer.advance, run.stdout, run.stderr), (None, out, err))
        transfer.setTotal(20)
        run.finish()
        run = R.FileProgress(clock, _Options(None), out, err, "/x")
        self.assertIsNone(run.add(10).advance)
        self.assertEqual(clock.getDelayedCalls(), [])


class CancelTests(TestCase):
    def test_cancel(self):
        """
        L{Progress.cancel}: the line erased, no summary, no timer; then
        nothing more.
        """
        clock = task.Clock()
        progress, written = _line(clock)
        progress.advance(10)
        clock.advance(0.25)
        progress.cancel()
        self.assertEqual(written[1:], [P.ERASE])
        progress.finish()
        progress.cancel()
        clock.advance(1)
        self.assertEqual(written[1:], [P.ERASE])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_execQuiet(self):
        """
        L{ExecProgress.finish} with C{quiet}: every line cancelled.
        """
        clock = task.Clock()
        err = Collector()
        run = R.ExecProgress(clock, _Options(True), Collector(), err, 0)
        out, _ = run.counted(len, len)
        out(b"x" * 2_000_000)
        clock.advance(0.25)
        self.assertEqual(len(err.chunks), 1)
        run.finish(quiet=True)
        self.assertEqual(err.chunks[1:], [P.ERASE])
        self.assertEqual(clock.getDelayedCalls(), [])
