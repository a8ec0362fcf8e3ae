# -*- test-case-name: tests.system.test_vmsim -*-
"""
The C{prokshy-vmsim} command line::

    prokshy-vmsim --socket PATH --device-link PATH [--mode bhyve|qemu]
                  [--guest-buffer BYTES] [fault options]

It runs one L{prokshy.sim.vmsim.VMSim} until SIGINT or SIGTERM.  The console
script's entry point is C{prokshy.sim.vmsim:main}, which is L{main}; so is
C{python -m prokshy.sim.vmsim}.

This module imports the simulator only when L{main} runs, so that
L{prokshy.sim.vmsim} can offer L{main} and L{makeParser} as its own.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from prokshy.sim.faults import BOTH, DIRECTIONS, FAULT_HELP, Faults
from prokshy.sim.policy import BHYVE, DEFAULT_GUEST_BUFFER, MODES

__all__ = ["faultsFromArgs", "main", "makeParser"]


def _positiveInt(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _nonNegativeInt(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def makeParser() -> argparse.ArgumentParser:
    """
    @return: the C{prokshy-vmsim} argument parser.
    """
    parser = argparse.ArgumentParser(
        prog="prokshy-vmsim",
        description=(
            "Simulate one bhyve (or QEMU) virtio-console port: a unix socket\n"
            "for the host and a pty, linked at --device-link, for the guest.\n"
            "The pty is left cooked. Serves until SIGINT or SIGTERM."
        ),
        epilog=FAULT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--socket", required=True, metavar="PATH", help="the host's unix socket to create")
    add(
        "--device-link",
        required=True,
        metavar="PATH",
        help="symlink to create to the pty slave (the guest's device)",
    )
    add("--mode", choices=MODES, default=BHYVE, help="channel semantics (default: %(default)s)")
    add(
        "--guest-buffer",
        type=_positiveInt,
        default=DEFAULT_GUEST_BUFFER,
        metavar="BYTES",
        help="bhyve: the guest's input queue; host data beyond it is discarded. "
        "qemu: host bytes that may wait for the guest (default: %(default)s)",
    )
    faults = parser.add_argument_group("fault injection (see below)")
    add = faults.add_argument
    add("--seed", type=_int, default=0, metavar="N", help="random seed (default: %(default)s)")
    add("--drop-rate", type=_rate, default=0.0, metavar="R", help="probability a chunk is dropped")
    add(
        "--corrupt-rate",
        type=_rate,
        default=0.0,
        metavar="R",
        help="probability a byte gets a bit flipped",
    )
    add(
        "--dup-rate",
        type=_rate,
        default=0.0,
        metavar="R",
        help="probability a chunk is sent twice",
    )
    add(
        "--cut-every",
        type=_nonNegativeInt,
        default=0,
        metavar="N",
        help="close the host connection every N bytes (0: never)",
    )
    add(
        "--fault-chunk",
        type=_positiveInt,
        default=512,
        metavar="BYTES",
        help="chunk size for drops and duplicates (default: %(default)s)",
    )
    add(
        "--fault-direction",
        choices=DIRECTIONS,
        default=BOTH,
        help="direction of drops, duplicates and corruption (default: %(default)s)",
    )
    return parser


def faultsFromArgs(args: argparse.Namespace) -> Faults:
    """
    @param args: parsed by L{makeParser}.
    @return: the L{Faults} they ask for.
    """
    return Faults(
        seed=args.seed,
        dropRate=args.drop_rate,
        corruptRate=args.corrupt_rate,
        dupRate=args.dup_rate,
        cutEvery=args.cut_every,
        chunk=args.fault_chunk,
        direction=args.fault_direction,
    )


def main(argv: Optional[List[str]] = None) -> int:
    """
    Run C{prokshy-vmsim} until SIGINT or SIGTERM.

    @param argv: the arguments, without the program name; C{sys.argv[1:]}
        if L{None}.
    @return: 0 after a clean shutdown, 1 if the simulator could not start.
        Usage errors exit with status 2 (C{SystemExit}).
    """
    args = makeParser().parse_args(argv)
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from prokshy.sim.vmsim import SimError, VMSim

    sim = VMSim(
        reactor,
        args.socket,
        args.device_link,
        mode=args.mode,
        guestBuffer=args.guest_buffer,
        faults=faultsFromArgs(args),
    )
    try:
        sim.start()
    except SimError as e:
        print(f"prokshy-vmsim: error: {e}", file=sys.stderr)
        return 1
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stderr)], redirectStandardIO=False
    )
    reactor.addSystemEventTrigger("before", "shutdown", sim.stop)
    reactor.run()
    return 0
