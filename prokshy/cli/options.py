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
"""

import argparse
import math
import os
import re

from prokshy._version import __version__

DEFAULT_TIMEOUT = 1.0

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


def buildParser():
    """
    Build the C{prokshy} argument parser.

    @rtype: L{argparse.ArgumentParser}
    """
    parser = argparse.ArgumentParser(
        prog="prokshy",
        description=(
            "Run a command of a bhyve/QEMU guest's prokshy agent through "
            "the VM's virtio-console unix socket and print its output."
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
            "stop after this many seconds without output "
            f"(default: {DEFAULT_TIMEOUT:g})"
        ),
    )
    parser.add_argument(
        "--command",
        required=True,
        type=commandName,
        metavar="NAME",
        help="the command to run (a file in the guest's command.d)",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from-string",
        metavar="STRING",
        help="the command's input (only the first line is sent)",
    )
    source.add_argument(
        "--from-file",
        metavar="FILE",
        help="read the command's input from FILE (only the first line is sent)",
    )
    parser.add_argument(
        "--socket-path",
        required=True,
        metavar="PATH",
        help="the VM's virtio-console unix socket",
    )
    return parser


def _readFirstLine(parser, path):
    """
    Read the first line of the file at C{path}; an unreadable file is a
    usage error.
    """
    try:
        with open(path, "rb") as f:
            return firstLine(f.readline())
    except OSError as e:
        parser.error(f"cannot read {path}: {e.strerror or e}")


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
    options = parser.parse_args(argv)
    if options.from_file is not None:
        options.data = _readFirstLine(parser, options.from_file)
    else:
        options.data = firstLine(os.fsencode(options.from_string))
    return options


__all__ = [
    "DEFAULT_TIMEOUT",
    "buildParser",
    "commandName",
    "firstLine",
    "parseArgs",
    "positiveSeconds",
]
