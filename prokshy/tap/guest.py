# -*- test-case-name: tests.system.test_tap -*-
"""
C{twistd -n prokshy-guest}: Options and makeService for the guest agent.
"""

import os
import sys

from twisted.application import service
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python import usage

from prokshy.guest.record import defaultRunDir
from prokshy.guest.runner import LINE_MAX_OUTPUT, LINE_TIMEOUT
from prokshy.tap._help import plainOptionHelp

DEFAULT_DEVICES = ("/dev/vtcon/prokshy", "/dev/virtio-ports/prokshy")
DEFAULT_COMMAND_DIR = "/usr/local/etc/prokshy/command.d"

_log = Logger()

#: The exec streams (running and waiting) a session takes at most by
#: default: three quarters of a session's 1024 streams, the rest left for
#: info and forwarded connections.
EXEC_STREAMS = 768
#: Memory an exec takes in the agent at most, besides its command's own
#: pipes (kernel buffers): measured (tests/system/test_guest_concurrency.py)
#: about 10 KiB of state per exec, and it holds at most its stream's window
#: of stdin (256 KiB) while it waits or its command does not read, and at
#: most the stream's high-water mark of output (64 KiB) while the host does
#: not read.  So: waiting, at most 266 KiB (an exec of the API or the CLI
#: sends at most 16 KiB before it runs: 26 KiB); running, at most 330 KiB.
QUEUED_EXEC_BYTES = (256 + 10) * 1024
RUNNING_EXEC_BYTES = (256 + 64 + 10) * 1024


def cpuCount():
    """
    The CPUs this agent may run on (its affinity mask where the OS has
    one, else every CPU).
    """
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def defaultConcurrency(cpus=None):
    """
    C{--max-concurrency}'s default: 4 commands per CPU (commands mostly
    wait: on I/O, on a pipe, on the host), at least 8 and at most 64.
    """
    cpus = cpuCount() if cpus is None else cpus
    return min(max(4 * cpus, 8), 64)


def defaultQueue(concurrency):
    """
    C{--max-queue}'s default: the rest of L{EXEC_STREAMS} (at least 64),
    so that hundreds of clients' execs wait, in order, rather than being
    refused C{busy}.  Memory bound: C{concurrency} x L{RUNNING_EXEC_BYTES}
    + the queue x L{QUEUED_EXEC_BYTES}, at most about 200 MiB if every
    exec holds a full window of stdin, about 20 MiB for small execs.
    """
    return max(EXEC_STREAMS - concurrency, 64)


def defaultDevice(candidates=DEFAULT_DEVICES, exists=os.path.exists, platform=sys.platform):
    """
    The first candidate that exists; otherwise this OS's usual port.
    """
    for path in candidates:
        if exists(path):
            return path
    return candidates[1] if platform.startswith("linux") else candidates[0]


def _positive(kind, allowZero=False):
    def convert(value):
        try:
            number = kind(value)
        except ValueError:
            raise usage.UsageError("%r is not a number" % (value,))
        if number < 0 or (number == 0 and not allowZero):
            raise usage.UsageError("%r must be %s" % (value, "0 or more" if allowZero else "positive"))
        return number

    return convert


@plainOptionHelp
class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve command.d commands (and, over the framed protocol, exec and info "
        "streams) on a virtio-console port. The original line protocol works "
        "unchanged; a host that says a framed hello gets the framed protocol. "
        "Limits: framed execs have no timeout and no output cap unless the "
        "host asks for a timeout or --timeout/--max-output are set (a framed "
        "host can cancel); line-protocol commands, whose client cannot, are "
        "also bound by --line-timeout (60 s) and --line-max-output (16 MiB)."
    )
    optParameters = [
        ["device", "d", None, "The port device (default: the first that exists of %s)."
         % (", ".join(DEFAULT_DEVICES),)],
        ["command-dir", "c", DEFAULT_COMMAND_DIR, "Directory of executable commands."],
        ["timeout", "t", 0.0,
         "Seconds any command may run, in either protocol (0: no limit, the default). "
         "A framed exec may ask for a shorter timeout, never a longer one.",
         _positive(float, True)],
        ["max-output", None, 0,
         "Bytes of output any command may produce before it is cut and killed "
         "(0: no limit, the default).",
         _positive(int, True)],
        ["line-timeout", None, LINE_TIMEOUT,
         "Seconds a line-protocol command may run (0: no limit). A line client "
         "cannot cancel a command; a framed host can, so framed execs are not "
         "bound by this.",
         _positive(float, True)],
        ["line-max-output", None, LINE_MAX_OUTPUT,
         "Bytes of output a line-protocol command may produce (0: no limit).",
         _positive(int, True)],
        ["max-line", None, 65536, "Longest request line accepted, in bytes.", _positive(int)],
        ["max-concurrency", None, None,
         "Commands run at once (framed protocol) (default: 4 per CPU, at least 8 and at most 64: "
         "%d here)." % (defaultConcurrency(),), _positive(int)],
        ["max-queue", None, None,
         "Commands that may wait for a slot before opens are refused (default: %d minus "
         "--max-concurrency, at least 64; each waiting exec holds at most 266 KiB)." % (EXEC_STREAMS,),
         _positive(int, True)],
        ["kill-grace", None, 2.0, "Seconds between SIGTERM and SIGKILL.", _positive(float)],
        ["window", None, 0,
         "Bytes in flight toward the guest (0: 20480 on a tty, 262144 otherwise).",
         _positive(int, True)],
        ["ping-interval", None, 1.0, "Seconds between keepalive pings.", _positive(float)],
        ["dead-after", None, 8.0, "Seconds of silence after which the host is gone.",
         _positive(float)],
        ["run-dir", None, None,
         "Directory for the record of running commands, from which an agent "
         "restarted after being killed kills what its predecessor left "
         "(default: /var/run/prokshy as root, else $XDG_RUNTIME_DIR/prokshy; "
         "'' for none)."],
    ]
    compData = usage.Completions(
        optActions={
            "device": usage.CompleteFiles(),
            "command-dir": usage.CompleteDirs(),
            "run-dir": usage.CompleteDirs(),
        }
    )

    def __init__(self):
        usage.Options.__init__(self)
        self["allow-connect"] = []
        self["allow-listen"] = []
        self["allow-files"] = []

    def opt_allow_connect(self, pattern):
        """
        What the host's forwards may connect to inside the guest: HOST:PORT
        (PORT a number, LOW-HIGH or *; IPv6 in brackets), a unix path glob,
        or none (repeatable; default: 127.0.0.1:* and [::1]:*).
        """
        self["allow-connect"].append(pattern)

    def opt_allow_listen(self, pattern):
        """
        What the host's reverse forwards may listen on inside the guest
        (repeatable; default: 127.0.0.1:1024-65535 and [::1]:1024-65535;
        none turns reverse forwards off).
        """
        self["allow-listen"].append(pattern)

    def opt_allow_files(self, directory):
        """
        A directory whose files the host may push and pull (--push, --pull):
        an absolute path of an existing directory, not a symbolic link,
        owned by root or the agent's user and neither group- nor
        world-writable (repeatable; default: none, so every file transfer
        is refused). Below it no '..', no symbolic link and nothing group-
        or world-writable is ever followed or written.
        """
        self["allow-files"].append(directory)

    def _checkAllowFiles(self):
        from prokshy.files.rules import checkAllowDir

        checked = []
        for directory in self["allow-files"]:
            try:
                checked.append(checkAllowDir(directory))
            except ValueError as e:
                raise usage.UsageError(str(e))
        self["allow-files"] = checked

    def postOptions(self):
        self._checkAllowFiles()
        from prokshy.forward.allow import DEFAULT_CONNECT, DEFAULT_LISTEN, PatternError, parsePatterns

        try:
            self["allow-connect"] = parsePatterns(self["allow-connect"], DEFAULT_CONNECT)
            self["allow-listen"] = parsePatterns(self["allow-listen"], DEFAULT_LISTEN)
        except PatternError as e:
            raise usage.UsageError(str(e))
        if self["device"] is None:
            self["device"] = defaultDevice()
        # The agent works in / (see _WorkInRoot): paths given relative to
        # where it was started mean what they meant there.
        self["device"] = os.path.abspath(self["device"])
        self["command-dir"] = os.path.abspath(self["command-dir"])
        if self["run-dir"] is None:
            self["run-dir"] = defaultRunDir()
        elif self["run-dir"] and not os.path.isabs(self["run-dir"]):
            raise usage.UsageError("--run-dir must be an absolute path (or '' for none)")
        if self["max-concurrency"] is None:
            self["max-concurrency"] = defaultConcurrency()
        if self["max-queue"] is None:
            self["max-queue"] = defaultQueue(self["max-concurrency"])
        if self["dead-after"] <= self["ping-interval"]:
            raise usage.UsageError("--dead-after must be longer than --ping-interval")


class _WorkInRoot(service.Service):
    """
    Makes C{/} the agent's working directory when it starts (after twistd
    has opened its log file), as daemons do.  Commands run in C{/}, and
    Twisted spawns them with C{posix_spawn} only when that is the agent's
    own directory: from anywhere else every command took the fork path,
    about five times slower (../shared/notes/performance-facts.md).
    """

    def __init__(self, chdir=os.chdir):
        self._chdir = chdir

    def startService(self):
        service.Service.startService(self)
        self._chdir("/")


class _Goodbye(service.Service):
    """
    Says goodbye to the host when the agent stops, so that it starts a new
    session with the next agent at once instead of waiting for silence.
    Stopped before the device closes (it is added after the device).
    """

    def __init__(self, device):
        self.device = device

    def stopService(self):
        service.Service.stopService(self)
        proto = self.device.protocol
        link = getattr(proto, "link", None)
        if link is not None and link.state == "UP":
            link.goodbye("agent stopping")


class _Cleanup(service.Service):
    """
    Cancels running commands when the agent stops.
    """

    def __init__(self, runner):
        self.runner = runner

    def stopService(self):
        service.Service.stopService(self)
        return self.runner.cancelAll()


def makeService(options, reactor=None, chdir=os.chdir):
    """
    Build the guest agent service.

    @param chdir: changes the working directory when the service starts
        (to C{/}); tests pass a recorder.
    """
    if reactor is None:
        from twisted.internet import reactor
    from prokshy.guest.agent import GuestProtocol
    from prokshy.forward.guestside import GuestForwards
    from prokshy.guest.execs import GuestStreams
    from prokshy.guest.reaper import ProcessReaper
    from prokshy.guest.record import recordName
    from prokshy.guest.commands import CommandDirectory
    from prokshy.guest.runner import CommandRunner
    from prokshy.transport.endpoints import VtconClientEndpoint
    from prokshy.transport.service import DeviceService

    directory = CommandDirectory(options["command-dir"])
    if not os.path.isdir(directory.path):
        _log.warn("command directory {path} does not exist (yet)", path=directory.path)
    runner = CommandRunner(
        reactor,
        directory,
        timeout=options["timeout"],
        maxOutput=options["max-output"],
        killGrace=options["kill-grace"],
        lineTimeout=options["line-timeout"],
        lineMaxOutput=options["line-max-output"],
    )
    forwards = GuestForwards(reactor, options["allow-connect"], options["allow-listen"])
    from prokshy.files.rules import FileRules
    from prokshy.guest.files import GuestFiles

    files = GuestFiles(reactor, FileRules(options.get("allow-files") or ()))
    streams = GuestStreams(
        runner, options["max-concurrency"], options["max-queue"], forwards=forwards, files=files
    )

    def buildProtocol():
        return GuestProtocol(
            runner,
            reactor,
            streams,
            maxLine=options["max-line"],
            window=options["window"],
            pingInterval=options["ping-interval"],
            deadAfter=options["dead-after"],
        )

    top = service.MultiService()
    _WorkInRoot(chdir).setServiceParent(top)  # first: before the device opens
    # Stopped last (services stop in reverse order): after _Cleanup has
    # cancelled the commands, it waits for them, then removes the record.
    recordPath = (
        os.path.join(options["run-dir"], recordName(options["device"]))
        if options["run-dir"]
        else None
    )
    ProcessReaper(reactor, runner, recordPath).setServiceParent(top)
    _Cleanup(runner).setServiceParent(top)
    device = DeviceService(
        reactor, VtconClientEndpoint(reactor, options["device"]), Factory.forProtocol(buildProtocol)
    )
    device.setServiceParent(top)
    _Goodbye(device).setServiceParent(top)
    _log.info(
        "prokshy guest agent on {device}, commands from {dir}; forwards may connect to {connect}"
        " and listen on {listen}",
        device=options["device"],
        dir=directory.path,
        connect=" ".join(options["allow-connect"].texts) or "nothing",
        listen=" ".join(options["allow-listen"].texts) or "nothing",
    )
    _log.info(
        "files may be pushed and pulled under {dirs}",
        dirs=" ".join(files.rules.dirs) or "nothing (no --allow-files)",
    )
    return top
