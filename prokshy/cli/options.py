"""
Command-line options of the C{prokshy} command.

The flags are the original C{cli.py}'s: C{--command NAME}, one of
C{--from-string S} / C{--from-file F}, C{--socket-path PATH}, C{--timeout
SECONDS} and C{--version}. Differences: C{-h}/C{--help} exist, C{--timeout}
must be a positive number, and the command name is checked against the
guest's rule (C{^[a-zA-Z0-9_.-]+$}, not C{.} or C{..}) so that a bad name is
a usage error instead of a request the guest silently ignores.

L{parseArgs} returns an C{argparse.Namespace} with, besides the flags'
values, C{data}: the request's input as L{bytes}, cut to its first line.

Forwarding (L{prokshy.cli.forwards}) adds four modes, which need neither
C{--command} nor an input:

  - C{--forward SPEC} and C{--reverse SPEC} (repeatable, may be mixed): in
    C{forward_specs}, a list of L{ForwardRequest} in command-line order.
    Each SPEC is parsed here (L{prokshy.forward.spec.parseSpec}), before
    anything connects: a malformed one is a usage error of exactly one line,
    C{prokshy: error: --forward SPEC: why}, exit 2;
  - C{--forwards}: list the daemon's forwards;
  - C{--unforward ID} (repeatable): remove forwards.

The flags of the other modes and their checks (C{--ping}, C{--list},
C{-t}, C{ARG...}, C{--push}/C{--pull}, progress, C{--json-stream},
C{--reserved-exit-codes}) and C{options.mode} are L{prokshy.cli.modes}'.

C{forward_mode} says which: C{"add"}, C{"list"}, C{"remove"}, or L{None}.
They exclude C{--command}, C{--status}, C{--info} (and the command's
input) and each other (C{--forwards} and C{--unforward} exclude
C{--forward}/C{--reverse}); they need the framed protocol; C{--vm NAME} (at
most one) is the VM for a SPEC without C{VM=}, and with C{--forwards} shows
only those VMs' forwards.
"""

import argparse
import math
import os
import re

import attrs

from prokshy._version import __version__
from prokshy.cli.modes import addModeFlags, checkModes, modeOf, reservedUsage
from prokshy.forward.spec import SpecError, checkDirection, parseSpec

DEFAULT_TIMEOUT = 1.0

#: C{--fallback-after} by default in auto mode on a unix socket.
AUTO_FALLBACK = 1.0
#: C{--fallback-after} by default with C{--protocol framed} or
#: C{--connect}, where there is nothing to fall back to.
FRAMED_WAIT = 5.0

_COMMAND_NAME = re.compile(r"[a-zA-Z0-9_.-]+")


def positiveSeconds(text):
    """
    An C{argparse} type: a finite number of seconds greater than zero.

    @raise argparse.ArgumentTypeError: for anything else.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds greater than 0: {text!r}"
        )
    return value


def commandName(text):
    """
    An C{argparse} type: a command name the guest accepts.

    @raise argparse.ArgumentTypeError: if the guest would ignore the name.
    """
    if not _COMMAND_NAME.fullmatch(text) or text in (".", ".."):
        raise argparse.ArgumentTypeError(
            f"invalid command name {text!r} (allowed: letters, digits, "
            f"'_', '.', '-'; not '.' or '..')"
        )
    return text


def firstLine(data):
    """
    The first line of C{data}, without its line end.

    Only the first line of the input is sent (the legacy request has one
    line of data). A line ends at C{LF}, C{CR} or C{CR LF}: the line ends
    that a guest's tty treats as such. Empty input gives empty data.

    @type data: L{bytes}
    @rtype: L{bytes}
    """
    lines = data.splitlines()
    return lines[0] if lines else b""


@attrs.frozen
class ForwardRequest:
    """
    One C{--forward} or C{--reverse} of the command line.

    @ivar direction: C{"forward"} (C{--forward}, ssh's C{-L}) or
        C{"reverse"} (C{--reverse}, ssh's C{-R}).
    @ivar text: the SPEC as given (what a daemon is sent).
    @ivar spec: the parsed L{prokshy.forward.spec.ForwardSpec}, or L{None}
        until L{parseArgs} has checked it.
    """

    direction: str
    text: str
    spec: object = None

    @property
    def flag(self):
        return "--" + self.direction


class _ForwardAction(argparse.Action):
    """
    C{--forward} and C{--reverse} append to one list, so their order on the
    command line is kept.
    """

    def __call__(self, parser, namespace, values, option_string=None):
        direction = "reverse" if option_string == "--reverse" else "forward"
        specs = list(getattr(namespace, self.dest, None) or [])
        specs.append(ForwardRequest(direction, values))
        setattr(namespace, self.dest, specs)


def buildParser():
    """
    Build the C{prokshy} argument parser.

    @rtype: L{argparse.ArgumentParser}
    """
    parser = argparse.ArgumentParser(
        prog="prokshy",
        description=(
            "Run a command of a bhyve/QEMU guest's prokshy agent, through the "
            "VM's virtio-console unix socket or a prokshy-host daemon, and "
            "print its output. Exits with the command's exit status."
        ),
        epilog=(
            "exit codes (docs/cli.md; default, then with --reserved-exit-codes): the "
            "remote command's status (128+N for signal N) either way; usage 2/200; "
            "connect-failed 1/201; no-answer 255/202 (no framed hello, no line-protocol "
            "byte); transport 255/203 (session lost); vm-unavailable 255/204; refused "
            "126/205 (bad name, not executable, insecure, not-allowed, not-a-file); "
            "not-found 127/206 (no such command or file); busy 255/207; rejected "
            "255/208 (other refusals); unsupported 1/209 (an older agent); local-file "
            "1/210; output 1/211 (cannot write stdout); stdout-closed 141/212 (| head: "
            "the remote command is cancelled); interrupted 130/213; checksum-mismatch "
            "255/214; too-big 1/215 (--json keeps 16 MiB per VM: use --json-stream); "
            "timed-out 124/216 (the guest's timeout); truncated 125/217 (the guest's "
            "--max-output); some-vms-failed: the largest status/218; file-error 1/219; "
            "internal 255/220. The reserved range is 200-220; --json's failure is null "
            "when the command ran. Several VMs: the largest status, and a line 'N of M "
            "VMs failed: ...' when prokshy failed on some. The line protocol exits 0 "
            "once the output ended. Forwarding with a daemon exits 0 once done, 1 when "
            "the daemon or the guest refused (one line: prokshy: forward SPEC: CODE: "
            "MESSAGE), 2 for a malformed SPEC (checked before connecting); on a VM's "
            "own socket --forward and --reverse are served in the foreground until "
            "Ctrl-C or SIGTERM: 130."
        ),
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"prokshy {__version__}",
    )
    parser.add_argument(
        "--timeout",
        type=positiveSeconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=(
            "line protocol only: stop after this many seconds without output "
            f"(default: {DEFAULT_TIMEOUT:g}). The framed protocol knows when "
            "the output ends; see --exec-timeout"
        ),
    )
    parser.add_argument(
        "--command",
        type=commandName,
        metavar="NAME",
        help="the command to run (a file in the guest's command.d)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--from-string",
        metavar="STRING",
        help="the command's input (the line protocol sends only its first line)",
    )
    source.add_argument(
        "--from-file",
        metavar="FILE",
        help="read the command's input from FILE (the line protocol sends only its first line)",
    )
    source.add_argument(
        "--stdin",
        action="store_true",
        help="stream this program's stdin to the command (framed protocol)",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--socket-path",
        metavar="PATH",
        help="a unix socket: a VM's virtio-console socket or a prokshy-host daemon's (auto-detected)",
    )
    target.add_argument(
        "--connect",
        metavar="ENDPOINT",
        help="a prokshy-host daemon, as a client endpoint string "
        "(tcp:host=127.0.0.1:port=7000, unix:path=..., ssl:...)",
    )
    parser.add_argument(
        "--vm",
        action="append",
        metavar="NAME",
        help="with a daemon: run on this VM (repeatable; default: the daemon's first VM); "
        "with --status: show only these VMs",
    )
    parser.add_argument(
        "--all-vms", action="store_true", help="with a daemon: run on every VM"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one machine-readable JSON result per VM instead of the raw output",
    )
    parser.add_argument(
        "--auth-token-file",
        metavar="FILE",
        help="the token a daemon's non-loopback listener requires",
    )
    parser.add_argument(
        "--exec-timeout",
        type=positiveSeconds,
        metavar="SECONDS",
        help="framed protocol: the guest kills the command after this long "
        "(default: the agent's --timeout)",
    )
    parser.add_argument(
        "--protocol",
        choices=("auto", "framed", "legacy"),
        default="auto",
        help="auto (default): framed, falling back to the line protocol of the "
        "original agent if no framed hello answers; framed; legacy",
    )
    parser.add_argument(
        "--fallback-after",
        type=positiveSeconds,
        default=None,
        metavar="SECONDS",
        help="how long to wait for a framed hello answer before falling back "
        "to the line protocol (auto) or giving up (--protocol framed, --connect) "
        f"(default: {AUTO_FALLBACK:g} in auto mode on a socket, {FRAMED_WAIT:g} otherwise)",
    )
    parser.add_argument(
        "--status",
        action="store_true",
        help="show the daemon's VMs (or, on a VM socket, the agent's info) and exit",
    )
    parser.add_argument(
        "--info",
        action="store_true",
        help="show the agent's version, features, OS and uptime and exit",
    )
    addModeFlags(parser)
    forwarding = parser.add_argument_group(
        "forwarding",
        "SPEC is ssh's: [VM=][BIND:]PORT:HOST:HOSTPORT, the listening side first; "
        "either side may be a unix socket path (/run/h.sock:127.0.0.1:80, "
        "8080:/run/app.sock); IPv6 addresses in brackets; BIND defaults to "
        "127.0.0.1. With a prokshy-host daemon a forward is added there (its id "
        "is printed) and lives until --unforward or the daemon stops; on a VM's "
        "own console socket the forwards are served by this command in the "
        "foreground, reconnecting when the VM goes away, until Ctrl-C (ssh -N). "
        "The guest agent's --allow-connect and --allow-listen decide what may "
        "be reached.",
    )
    forwarding.add_argument(
        "--forward",
        action=_ForwardAction,
        dest="forward_specs",
        metavar="SPEC",
        help="listen on the host; each connection reaches HOST:HOSTPORT inside "
        "the guest (ssh -L; repeatable)",
    )
    forwarding.add_argument(
        "--reverse",
        action=_ForwardAction,
        dest="forward_specs",
        metavar="SPEC",
        help="listen on BIND:PORT inside the guest; each connection reaches "
        "HOST:HOSTPORT on the host (ssh -R; repeatable)",
    )
    forwarding.add_argument(
        "--forwards",
        action="store_true",
        dest="list_forwards",
        help="list the daemon's forwards: state, connections, bytes each way",
    )
    forwarding.add_argument(
        "--unforward",
        action="append",
        metavar="ID",
        help="remove the daemon's forward ID: its listener closes at once, its "
        "open connections go on until they end (repeatable)",
    )
    return parser


def _readAll(parser, path):
    """
    Read the file at C{path}; an unreadable file is a usage error.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        parser.error(f"cannot read {path}: {e.strerror or e}")


def _forwardMode(parser, options):
    """
    Check the forwarding flags against the others, and parse each SPEC.

    @return: C{"add"}, C{"list"}, C{"remove"} or L{None}.
    """
    specs = options.forward_specs
    modes = []
    if specs:
        modes.append(("add", specs[0].flag))
    if options.list_forwards:
        modes.append(("list", "--forwards"))
    if options.unforward:
        modes.append(("remove", "--unforward"))
    if not modes:
        return None
    if len(modes) > 1:
        parser.error("%s cannot be used with %s" % (modes[0][1], modes[1][1]))
    mode, flag = modes[0]
    for other, given in (
        ("--command", options.command is not None),
        ("--status", options.status),
        ("--info", options.info),
        ("--from-string", options.from_string is not None),
        ("--from-file", options.from_file is not None),
        ("--stdin", options.stdin),
        ("--all-vms", options.all_vms),
    ):
        if given:
            parser.error("%s cannot be used with %s" % (flag, other))
    if options.protocol == "legacy":
        parser.error("%s needs the framed protocol" % (flag,))
    if options.vm and mode == "remove":
        parser.error("--unforward takes a forward id, not --vm")
    if options.vm and mode == "add" and len(options.vm) > 1:
        parser.error("%s takes at most one --vm (or VM= in each SPEC)" % (flag,))
    if mode == "add":
        options.forward_specs = [_parsed(parser, request) for request in specs]
    return mode


def _parsed(parser, request):
    """
    The request with its SPEC parsed; a malformed SPEC ends the program
    with exactly one line (no usage text) and exit code 2.
    """
    try:
        spec = checkDirection(parseSpec(request.text), request.direction)
    except SpecError as e:
        message = str(e)
        if _names(request.text, message):
            where = request.flag
        else:
            where = "%s %s" % (request.flag, request.text)
        parser.exit(2, "%s: error: %s: %s\n" % (parser.prog, where, message))
    return attrs.evolve(request, spec=spec)


def _names(text, message):
    """
    Whether C{message} already quotes the SPEC C{text} (or what follows its
    C{VM=}).
    """
    rest = text.partition("=")[2]
    return repr(text) in message or bool(rest) and repr(rest) in message


def parseArgs(argv=None):
    """
    Parse the command line.

    @param argv: the arguments, without the program name; L{None} for
        C{sys.argv[1:]}.
    @return: the options, with C{data} set to the input's first line as
        L{bytes}.
    @raise SystemExit: with code 2 on a usage error, 0 for C{--help} and
        C{--version}.
    """
    parser = buildParser()
    reservedUsage(parser, argv)
    options = parser.parse_args(argv)
    if options.socket_path is None and options.connect is None:
        parser.error("one of the arguments --socket-path --connect is required")
    if options.connect is not None and options.protocol == "legacy":
        parser.error("--connect talks to a daemon, which needs the framed protocol")
    options.forward_specs = list(options.forward_specs or [])
    options.unforward = list(options.unforward or [])
    options.forward_mode = _forwardMode(parser, options)
    options.mode = modeOf(parser, options)
    checkModes(parser, options)
    query = options.mode != "exec"
    if not query:
        if options.command is None:
            parser.error("the following arguments are required: --command")
        # (-t reads the terminal; ARGs alone run with empty stdin.)
        if (options.from_file is None and options.from_string is None and not options.stdin
                and not options.tty and not options.args):
            parser.error(
                "one of the arguments --from-string --from-file --stdin is required"
            )
    if options.stdin and options.protocol == "legacy":
        parser.error("--stdin needs the framed protocol")
    if options.all_vms and options.vm:
        parser.error("use --vm or --all-vms, not both")
    if options.fallback_after is None:
        auto = options.protocol == "auto" and options.connect is None
        options.fallback_after = AUTO_FALLBACK if auto else FRAMED_WAIT
    options.fullData = b""
    options.data = b""
    if options.from_file is not None:
        options.fullData = _readAll(parser, options.from_file)
        options.data = firstLine(options.fullData)
    elif options.from_string is not None:
        options.fullData = os.fsencode(options.from_string)
        options.data = firstLine(options.fullData)
    options.token = None
    if options.auth_token_file is not None:
        try:
            with open(options.auth_token_file) as f:
                options.token = f.read().strip()
        except OSError as e:
            parser.error(f"cannot read {options.auth_token_file}: {e.strerror or e}")
    return options


__all__ = [
    "AUTO_FALLBACK",
    "DEFAULT_TIMEOUT",
    "FRAMED_WAIT",
    "ForwardRequest",
    "buildParser",
    "commandName",
    "firstLine",
    "parseArgs",
    "positiveSeconds",
]
