"""
The progress line on real terminals and descriptors (ptys, pipes, files,
the reactor's non-blocking outputs): the terminal's width, auto mode on a
terminal, which outputs are the same terminal, which lines an exec run and
a pull get, and stdin counted while it is streamed.  The line's logic
itself is tested on a clock in L{tests.unit.test_progress}.
"""

import os
import pty
import tempfile

from twisted.internet import task
from twisted.trial.unittest import TestCase

from prokshy.cli import progress as P
from prokshy.cli import progressrun as R
from prokshy.cli.input import StdinFanout
from prokshy.cli.output import Collector, FileOutput
from tests.unit.test_progress import _Options


class TerminalWidthTests(TestCase):
    def test_terminalWidth(self):
        """
        TIOCGWINSZ on a pty; 80 on anything else.
        """
        import fcntl
        import struct
        import termios

        master, slave = pty.openpty()
        self.addCleanup(os.close, master)
        self.addCleanup(os.close, slave)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 132, 0, 0))
        self.assertEqual(P.terminalWidth(slave), 132)
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        self.assertEqual(P.terminalWidth(w), 80)
        self.assertEqual(P.terminalWidth(9999), 80)


class WantedOnTerminalTests(TestCase):
    def test_auto(self):
        """
        Auto: a terminal yes, a pipe, a file or no descriptor no; forced
        either way by the flags.
        """
        master, slave = pty.openpty()
        self.addCleanup(os.close, master)
        self.addCleanup(os.close, slave)
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.unlink, path)
        self.addCleanup(os.close, fd)
        auto, on, off = _Options(None), _Options(True), _Options(False)
        self.assertEqual([P.progressWanted(auto, x) for x in (slave, w, fd, None)], [True, False, False, False])
        self.assertEqual([P.progressWanted(on, x) for x in (slave, w, fd, None)], [True] * 4)
        self.assertEqual([P.progressWanted(off, x) for x in (slave, w, fd, None)], [False] * 4)

    def test_sameTerminal(self):
        master, slave = pty.openpty()
        self.addCleanup(os.close, master)
        self.addCleanup(os.close, slave)
        other = os.open(os.ttyname(slave), os.O_RDWR | os.O_NOCTTY)
        self.addCleanup(os.close, other)
        m2, s2 = pty.openpty()
        self.addCleanup(os.close, m2)
        self.addCleanup(os.close, s2)
        self.assertTrue(R.sameTerminal(slave, other))
        self.assertFalse(R.sameTerminal(slave, s2))
        self.assertFalse(R.sameTerminal(slave, None))


class ExecProgressTests(TestCase):
    """
    Which lines an exec run gets.
    """

    def ports(self):
        from twisted.internet import reactor

        from prokshy.cli.output import OutputPort

        master, slave = pty.openpty()
        self.addCleanup(os.close, master)
        self.addCleanup(os.close, slave)
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.unlink, path)
        self.addCleanup(os.close, fd)
        ports = []

        def port(fd, name):
            p = OutputPort(reactor, fd, name)
            ports.append(p)
            return p

        def cleanup():
            for p in ports:
                p.abort()
                p.restore()

        self.addCleanup(cleanup)
        return slave, fd, port

    def test_policy(self):
        slave, fileFD, port = self.ports()
        clock = task.Clock()
        tty = port(slave, "stderr")
        fileOut = FileOutput(open(os.devnull, "wb"), "stdout")
        self.addCleanup(fileOut.file.close)
        ttyOut = port(os.dup(slave), "stdout")
        self.addCleanup(os.close, ttyOut.fd)
        # stderr a terminal, stdout a file: output line; stdin (a file): upload line first
        run = R.ExecProgress(clock, _Options(None, stdin=True), fileOut, tty, fileFD)
        self.assertEqual((run.uploadWanted, run.outputWanted), (True, True))
        self.assertIs(run.stdout, fileOut)
        self.assertIsInstance(run.stderr, R.ProgressOutput)
        self.assertTrue(run.output.held)
        upload = run.startUpload(fileFD)
        self.assertEqual(upload.progress.total, 0)
        upload.finish()
        self.assertFalse(run.output.held)
        run.finish()
        # stdout the same terminal: no output line, stdout wrapped too
        run = R.ExecProgress(clock, _Options(None, stdin=True), ttyOut, tty, fileFD)
        self.assertEqual((run.uploadWanted, run.outputWanted), (True, False))
        self.assertIsInstance(run.stdout, R.ProgressOutput)
        run.finish()
        # ... and without --stdin no line at all: nothing wrapped
        run = R.ExecProgress(clock, _Options(None), ttyOut, tty, fileFD)
        self.assertEqual((run.uploadWanted, run.outputWanted), (False, False))
        self.assertEqual((run.stdout, run.stderr), (ttyOut, tty))
        run.finish()
        # stdin a terminal: no upload line (the user types on it)
        run = R.ExecProgress(clock, _Options(None, stdin=True), fileOut, tty, slave)
        self.assertFalse(run.uploadWanted)
        self.assertFalse(run.output.held)
        run.finish()
        # stderr not a terminal: nothing, nothing wrapped
        run = R.ExecProgress(clock, _Options(None, stdin=True), fileOut, fileOut, fileFD)
        self.assertEqual((run.uploadWanted, run.outputWanted, run.output), (False, False, None))
        self.assertIs(run.stderr, fileOut)
        self.assertEqual(run.counted(len, len), (len, len))
        # --progress: everything, even a terminal's stdout
        run = R.ExecProgress(clock, _Options(True, stdin=True), ttyOut, fileOut, slave)
        self.assertEqual((run.uploadWanted, run.outputWanted), (True, True))
        run.finish()
        # --no-progress: nothing
        run = R.ExecProgress(clock, _Options(False, stdin=True), fileOut, tty, fileFD)
        self.assertEqual((run.uploadWanted, run.outputWanted), (False, False))
        self.assertIs(run.stderr, tty)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_counted(self):
        """
        The sinks count every byte of both streams into one line, for every
        VM together.
        """
        clock = task.Clock()
        err = Collector()
        run = R.ExecProgress(clock, _Options(True), Collector(), err, 0)
        got = []
        a = run.counted(got.append, got.append)
        b = run.counted(got.append, got.append)
        a[0](b"x" * 10)
        a[1](b"y" * 5)
        b[0](b"z" * 7)
        self.assertEqual(run.output.done, 22)
        self.assertEqual(got, [b"x" * 10, b"y" * 5, b"z" * 7])
        run.finish()


class FanoutCountTests(TestCase):
    def test_stdinCounted(self):
        """
        The stdin fanout counts what it reads (once, whatever the number of
        commands) and finishes the line at the end.
        """
        from twisted.internet import reactor

        fd, path = tempfile.mkstemp()
        self.addCleanup(os.unlink, path)
        os.write(fd, b"a" * 200000)
        os.close(fd)
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)

        class Running:
            def __init__(self):
                self.data = []
                self.closed = False

            def registerProducer(self, p, s):
                pass

            def unregisterProducer(self):
                pass

            def write(self, data):
                self.data.append(data)

            def closeStdin(self):
                self.closed = True

        class Counter:
            done = 0
            finished = 0

            def advance(self, n):
                self.done += n

            def finish(self):
                self.finished += 1

        counter = Counter()
        runnings = [Running(), Running()]
        fanout = StdinFanout(reactor, fd, runnings, counter)
        fanout.start()
        from tests.harness import waitFor

        d = waitFor(lambda: runnings[0].closed, "the end of stdin")

        def check(_):
            self.assertEqual(counter.done, 200000)
            self.assertEqual(counter.finished, 1)
            self.assertEqual(sum(map(len, runnings[1].data)), 200000)

        return d.addCallback(check)


class PullToTerminalTests(TestCase):
    def test_pullToTerminal(self):
        """
        Auto mode: a pull to stdout that is a terminal gets no line; a pull
        to a file does, with stderr a terminal.
        """
        from twisted.internet import reactor

        from prokshy.cli.output import OutputPort

        master, slave = pty.openpty()
        self.addCleanup(os.close, master)
        self.addCleanup(os.close, slave)
        other = os.dup(slave)
        self.addCleanup(os.close, other)
        err, out = OutputPort(reactor, slave, "stderr"), OutputPort(reactor, other, "stdout")
        for p in (err, out):
            self.addCleanup(p.restore)
            self.addCleanup(p.abort)
        clock = task.Clock()
        self.assertFalse(R.FileProgress(clock, _Options(None), out, err, "/x", toStdout=True).wanted)
        self.assertTrue(R.FileProgress(clock, _Options(True), out, err, "/x", toStdout=True).wanted)
        run = R.FileProgress(clock, _Options(None), out, err, "/x")
        self.assertTrue(run.wanted)
        self.assertIsInstance(run.stdout, R.ProgressOutput)
        run.finish()
        run = R.FileProgress(clock, _Options(True), out, err, "/x", toStdout=True)
        run.add(None).advance(2000)
        clock.advance(0.25)
        run.finish(quiet=True)
        self.assertEqual(clock.getDelayedCalls(), [])
