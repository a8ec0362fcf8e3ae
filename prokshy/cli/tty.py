# -*- test-case-name: tests.system.test_tty,tests.unit.test_tty_cli -*-
"""
C{prokshy -t --command NAME [--] [ARG...]}: a command on a terminal in the
guest, as C{ssh -t} or C{incus exec -t} run one.

  - The guest runs the command on a new pty (its session leader, the pty
    its controlling terminal, C{TERM} set), of this terminal's size
    (C{TIOCGWINSZ} of stdin; without a terminal C{LINES} and C{COLUMNS},
    else 24 x 80), sent in the exec's OPEN (C{tty}, docs/protocol.md).
  - This terminal goes into raw mode once the guest accepted (L{RawTerminal}),
    and is always put back as it was: at the end, on an error, on SIGINT,
    SIGTERM and SIGHUP (which end the run, exit 130), around a SIGTSTP
    (raw again on SIGCONT), and at interpreter exit (C{atexit}).
  - Every byte typed goes to the remote pty as DATA, Ctrl-C (0x03) and
    Ctrl-Z (0x1a) included: locally, in raw mode, they are just bytes, and
    the remote pty's line discipline signals the remote program.  Stdin is
    read without blocking, and paused while the stream has no credit.
  - Every SIGWINCH sends the new size (a SIGNAL C{WINCH} with C{rows} and
    C{cols}); the guest sets the pty's size, and its kernel signals the
    remote program.
  - The remote output (one stream: a pty has no separate stderr) goes to
    stdout; the exit status is the remote command's (128+N for signal N).

With stdin not a terminal (a pipe, a file) the command still gets a pty,
with no raw mode here; the end of stdin is the pty's VEOF (^D) remotely.

L{checkTTYOptions} is L{prokshy.cli.options.parseArgs}' block for C{-t}
and C{ARG...}: the usage errors, each one line, exit 2, before anything
connects.
"""

import atexit
import fcntl
import os
import signal
import struct
import termios
import tty as _tty

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from prokshy.cli.arguments import checkFeatures, checkFits
from prokshy.cli.format import CLIError, exitFor, exitStatus, prefixed, resultStatus
from prokshy.cli.framed import FramedRun
from prokshy.cli.input import StdinFanout
from prokshy.cli.output import EXIT_PIPE, FlowGate
from prokshy.execs.request import DEFAULT_TERM, MAX_SIZE, TERM_RULE, TTYRequest, argsProblem

__all__ = [
    "RawTerminal",
    "TTYRun",
    "checkTTYOptions",
    "initialSize",
    "terminalSize",
]

#: The size of a pty when nothing says better (stdin is no terminal and
#: C{LINES}/C{COLUMNS} are not set), as a VT100's.
DEFAULT_ROWS, DEFAULT_COLS = 24, 80

#: How long the end of a run waits for stdout to drain before it puts the
#: terminal back anyway (a stopped terminal never drains).
DRAIN_WAIT = 5.0


# -- the command line ------------------------------------------------------


def _usage(parser, message):
    """
    A usage error of exactly one line, exit 2 (as a malformed SPEC's).
    """
    parser.exit(2, "%s: error: %s\n" % (parser.prog, message))


_MODE_FLAGS = {
    "status": "--status",
    "info": "--info",
    "ping": "--ping",
    "list": "--list",
    "push": "--push",
    "pull": "--pull",
    "forwards": "--forward",
}


def checkTTYOptions(parser, options):
    """
    C{parseArgs}' checks of C{-t}/C{--tty} and the command's C{ARG...}.

    ARGs: only after C{--command NAME}; the framed protocol (the original
    agent takes none); at most L{prokshy.execs.request.MAX_ARGS} of them,
    no NUL, valid UTF-8, L{prokshy.execs.request.MAX_ARGS_BYTES} bytes in
    all.  C{-t}: one command on one VM, its input the terminal: not with
    C{--from-string}, C{--from-file}, C{--stdin}, C{--json},
    C{--json-stream}, C{--all-vms} or several C{--vm}; the framed protocol.
    """
    options.args = list(options.args or [])
    args, mode = options.args, options.mode
    if args:
        if mode != "exec":
            _usage(parser, "ARG... (%r) are arguments of --command NAME, not of %s"
                   % (args[0], _MODE_FLAGS.get(mode, mode)))
        if options.protocol == "legacy":
            _usage(parser, "ARG... need the framed protocol: the original agent's line "
                   "protocol takes no arguments")
        problem = argsProblem(args)
        if problem is not None:
            _usage(parser, "ARG...: %s" % (problem,))
    if not options.tty:
        return
    if mode != "exec":
        _usage(parser, "-t runs --command NAME on a terminal: it cannot be used with %s"
               % (_MODE_FLAGS.get(mode, mode),))
    for flag, given in (
        ("--from-string", options.from_string is not None),
        ("--from-file", options.from_file is not None),
        ("--stdin", options.stdin),
        ("--json", options.json),
        ("--json-stream", getattr(options, "json_stream", False)),
    ):
        if given:
            _usage(parser, "-t cannot be used with %s: the command's input is this terminal "
                   "(or stdin), its output goes to stdout" % (flag,))
    if options.all_vms or len(options.vm or ()) > 1:
        _usage(parser, "-t runs one command on one VM: give at most one --vm, not --all-vms")
    if options.protocol == "legacy":
        _usage(parser, "-t needs the framed protocol: the original agent has no terminals")


# -- the local terminal ------------------------------------------------------


def _clamp(value):
    return max(1, min(MAX_SIZE, value))


def terminalSize(fd):
    """
    The C{(rows, cols)} of the terminal C{fd} (C{TIOCGWINSZ}), or L{None}
    (no terminal, or a size of 0).
    """
    try:
        packed = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except (OSError, ValueError):
        return None
    rows, cols = struct.unpack("HHHH", packed)[:2]
    if not rows or not cols:
        return None
    return _clamp(rows), _clamp(cols)


def _environSize(environ):
    try:
        rows, cols = int(environ.get("LINES", "")), int(environ.get("COLUMNS", ""))
    except ValueError:
        return None
    if rows > 0 and cols > 0:
        return _clamp(rows), _clamp(cols)
    return None


def initialSize(fd, environ):
    """
    The remote pty's first size: the terminal C{fd}'s; else C{LINES} and
    C{COLUMNS} from C{environ}; else 24 x 80.
    """
    return (
        (terminalSize(fd) if os.isatty(fd) else None)
        or _environSize(environ)
        or (DEFAULT_ROWS, DEFAULT_COLS)
    )


def terminalType(environ):
    """
    The remote C{TERM}: ours, if the guest can take it, else C{xterm}.
    """
    term = environ.get("TERM", "")
    return term if TERM_RULE.fullmatch(term) else DEFAULT_TERM


class RawTerminal:
    """
    A terminal in raw mode, put back exactly as it was (its termios
    attributes, saved on L{enter}) by L{restore}: at the end, and at
    interpreter exit should nothing else have.

    Raw mode (C{tty.setraw}): no echo, no line editing, no signal keys
    (C{ISIG} off: Ctrl-C and Ctrl-Z are bytes), no output processing
    (the remote pty does its own).  Both changes apply at once
    (C{TCSANOW}): they never wait for output to drain, so a signal handler
    or an exit with a stuck terminal cannot hang on them.
    """

    def __init__(self, fd):
        self.fd = fd
        self.saved = None
        #: Raw mode is wanted (L{suspend} leaves it off only for a while).
        self.active = False
        self._registered = False

    def enter(self):
        """
        Save the attributes and go raw.

        @raise termios.error: not a terminal.
        """
        if self.active:
            return
        self.saved = termios.tcgetattr(self.fd)
        if not self._registered:
            self._registered = True
            atexit.register(self.restore)
        self.active = True
        _tty.setraw(self.fd, termios.TCSANOW)

    def suspend(self):
        """
        Put the attributes back for a while (this process is being
        stopped); L{resume} goes raw again.
        """
        if self.active and self.saved is not None:
            self._put(self.saved)

    def resume(self):
        """
        Raw again after L{suspend} (SIGCONT).
        """
        if self.active:
            try:
                _tty.setraw(self.fd, termios.TCSANOW)
            except termios.error:
                pass

    def restore(self):
        """
        Put the saved attributes back (once; later calls do nothing).
        """
        self.active = False
        saved, self.saved = self.saved, None
        if saved is not None:
            self._put(saved)

    def _put(self, attributes):
        try:
            termios.tcsetattr(self.fd, termios.TCSANOW, attributes)
        except (termios.error, OSError):
            pass


class _Signals:
    """
    Python signal handlers, each put back as it was by L{restore}.
    """

    def __init__(self):
        self._previous = {}

    def install(self, number, handler):
        if number in self._previous:
            signal.signal(number, handler)
            return
        self._previous[number] = signal.signal(number, handler)

    def restore(self):
        previous, self._previous = self._previous, {}
        for number, handler in previous.items():
            try:
                signal.signal(number, handler if handler is not None else signal.SIG_DFL)
            except (ValueError, OSError):
                pass


# -- the run -------------------------------------------------------------------


class TTYRun(FramedRun):
    """
    What C{prokshy -t} does once a framed session is up (see the module
    docstring).

    @param stdinFD: the local input (the terminal put in raw mode when it
        is one).
    @param environ: where C{TERM}, C{LINES} and C{COLUMNS} come from.
    """

    def __init__(self, reactor, host, options, stdout, stderr, stdinFD=0, environ=None):
        FramedRun.__init__(self, reactor, host, options, stdout, stderr, stdinFD)
        self.stdinFD = stdinFD
        self.environ = os.environ if environ is None else environ
        self.terminal = RawTerminal(stdinFD) if os.isatty(stdinFD) else None
        self.size = None
        self._signals = _Signals()
        self._fanout = None
        #: The remote command's L{prokshy.host.client.RunningExec}.
        self._remote = None

    async def run(self):
        vms = await self.targets()
        if not vms:
            raise CLIError("the daemon has no VMs", exitStatus("transport"), "transport")
        if len(vms) != 1:
            raise CLIError("-t runs one command on one VM", exitStatus("usage"), "usage")
        vm = vms[0]
        await checkFeatures(self, vms)
        self.size = initialSize(self.stdinFD, self.environ)
        request = TTYRequest(self.size[0], self.size[1], terminalType(self.environ))
        checkFits(self, vms, request)
        try:
            return await self._run(vm, request)
        finally:
            self._leave()

    async def _run(self, vm, request):
        opts = self.options
        prefix = "vm %s: " % (vm,) if vm is not None else ""
        try:
            running = await self.session.execStream(
                opts.command,
                self.stdout.write,
                self.stdout.write,
                timeout=opts.exec_timeout,
                vm=vm,
                args=opts.args or None,
                tty=request,
            )
        except Exception as e:
            code = exitFor(Failure(e), self.reserved)
            if code is None:
                raise
            self.say(prefixed(prefix, code[1]))
            return code[0]
        self._remote = running
        self.running.append(running)
        if self.outputError is not None:
            running.cancel()
        gate = FlowGate(running.stream).attach(self.stdout, self.stderr)
        try:
            self._enter(running)
            try:
                result = await running.result
            except Exception as e:
                if self.outputError is not None:
                    return EXIT_PIPE
                code = exitFor(Failure(e), self.reserved)
                if code is None:
                    raise
                await self._drained()
                self._leave()
                self.say(prefixed(prefix, code[1]))
                return code[0]
        finally:
            gate.close()
            self._stopInput()
        if self.outputError is not None:
            return EXIT_PIPE
        await self._drained()
        self._leave()
        status, notes = resultStatus(opts.command, result, self.reserved)
        for note in notes:
            self.say(prefix + note)
        return status

    # -- the terminal and the signals -------------------------------------

    def _enter(self, running):
        """
        The guest accepted: raw mode, the signal handlers, stdin streamed.
        """
        signals, call = self._signals, self.reactor.callFromThread
        if self.terminal is not None:
            self.terminal.enter()
            signals.install(signal.SIGWINCH, lambda n, f: call(self._windowChanged))
            signals.install(signal.SIGTSTP, self._stopped)
            signals.install(signal.SIGCONT, lambda n, f: call(self._continued))
        # SIGINT and SIGTERM stop the reactor (Twisted's handlers): the
        # interrupt puts the terminal back.  SIGHUP, which would kill us
        # where we stand, does the same.
        signals.install(signal.SIGHUP, self._hungUp)
        self._fanout = StdinFanout(self.reactor, self.stdinFD, [running])
        self._fanout.start()

    def _leave(self):
        """
        Put the terminal and the signal handlers back (once is enough;
        later calls do nothing).
        """
        self._signals.restore()
        if self.terminal is not None:
            self.terminal.restore()

    def _stopInput(self):
        fanout, self._fanout = self._fanout, None
        if fanout is not None:
            fanout.stop()

    async def _drained(self):
        """
        Wait (at most L{DRAIN_WAIT} seconds) until stdout took all the
        remote output, so that it is written in raw mode, as it came.
        """
        done = Deferred()

        def fire(_=None):
            if not done.called:
                done.callback(None)

        self.stdout.close().addBoth(fire)
        call = self.reactor.callLater(DRAIN_WAIT, fire)
        await done
        if call.active():
            call.cancel()

    def _windowChanged(self):
        if self.terminal is None or self._remote is None:
            return
        size = terminalSize(self.stdinFD)
        if size is None or size == self.size:
            return
        self.size = size
        try:
            self._remote.resize(*size)
        except Exception:
            # The session is going away: its end says so.
            pass

    def _stopped(self, number, frame):
        # SIGTSTP from outside (the terminal's own Ctrl-Z is a byte for the
        # remote program): stop with the terminal as it was; SIGCONT
        # brings raw mode back.
        if self.terminal is not None:
            self.terminal.suspend()
        os.kill(os.getpid(), signal.SIGSTOP)

    def _continued(self):
        if self.terminal is not None:
            self.terminal.resume()
        self._windowChanged()

    def _hungUp(self, number, frame):
        self._leave()
        self.reactor.callFromThread(self.reactor.stop)

    def interrupt(self, channel):
        """
        SIGINT, SIGTERM, SIGHUP: the terminal first, then cancel the remote
        command and end the session (L{FramedRun.interrupt}).
        """
        self._leave()
        self._stopInput()
        return FramedRun.interrupt(self, channel)
