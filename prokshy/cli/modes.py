# -*- test-case-name: tests.unit.test_tty_cli,tests.system.test_cli_ping -*-
"""
The CLI's modes and the flags of issue 11, for L{prokshy.cli.options}:
C{--ping}, C{--list}, C{-t}/C{--tty}, the command's C{ARG...}, C{--push},
C{--pull} and C{--preserve}, C{--progress}/C{--no-progress},
C{--json-stream} and C{--reserved-exit-codes}; which mode a command line
asks for (L{modeOf}: the C{mode} of its C{--json} records), the checks of
those flags (L{checkModes}, each feature's own in its module), and usage
errors in the reserved range (L{reservedUsage}).
"""


def addModeFlags(parser):
    """
    Add the flags above to the C{prokshy} parser.
    """
    parser.add_argument(
        "--ping",
        action="store_true",
        help="check that the guest's agent answers, and how fast (one line per VM)",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        dest="list_commands",
        help="list the commands the guest offers (its command.d), with their descriptions",
    )
    parser.add_argument(
        "-t",
        "--tty",
        action="store_true",
        help="run the command on a terminal in the guest, this terminal in raw mode "
        "(an interactive program: a shell, an editor); framed protocol, one VM",
    )
    parser.add_argument(
        "args",
        nargs="*",
        metavar="ARG",
        help="arguments for the command (its argv; after --command NAME, best after --); "
        "framed protocol",
    )
    files = parser.add_argument_group(
        "files",
        "Copy files to and from the guest, verified end to end (sha256), written "
        "atomically (a temporary file, then rename), keeping the mode. The guest "
        "agent's --allow-files DIR decides what may be reached. LOCAL may be - "
        "(stdin for --push, stdout for --pull).",
    )
    files.add_argument(
        "--push",
        nargs=2,
        metavar=("LOCAL", "REMOTE"),
        help="copy LOCAL to REMOTE in the guest (with --all-vms or several --vm: to each)",
    )
    files.add_argument(
        "--pull",
        nargs=2,
        metavar=("REMOTE", "LOCAL"),
        help="copy the guest's REMOTE to LOCAL",
    )
    files.add_argument(
        "--preserve",
        action="store_true",
        help="with --push or --pull: keep the modification time too",
    )
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="show bytes, rate and ETA of long transfers on stderr (default: when stderr is a terminal)",
    )
    progress.add_argument(
        "--no-progress",
        action="store_false",
        dest="progress",
        help="never show progress",
    )
    parser.add_argument(
        "--json-stream",
        action="store_true",
        help="print JSON Lines events as they happen (output in base64 chunks), "
        "ending with each VM's --json record: memory stays bounded",
    )
    parser.add_argument(
        "--reserved-exit-codes",
        action="store_true",
        help="exit with prokshy's own failures in a reserved range (docs/cli.md), "
        "so they cannot be taken for the command's status",
    )


def modeOf(parser, options):
    """
    What the command line asks for: C{"exec"}, C{"status"}, C{"info"}, C{"ping"},
    C{"list"}, C{"forwards"}, C{"push"} or C{"pull"} (the C{mode} of its
    C{--json} records, L{prokshy.cli.records}).  Two of them are a usage
    error.
    """
    given = [
        (mode, flag)
        for mode, flag, on in (
            ("status", "--status", options.status),
            ("info", "--info", options.info),
            ("ping", "--ping", options.ping),
            ("list", "--list", options.list_commands),
            ("push", "--push", options.push is not None),
            ("pull", "--pull", options.pull is not None),
            ("forwards", "--forward", options.forward_mode is not None),
        )
        if on
    ]
    if len(given) > 1:
        parser.error("%s cannot be used with %s" % (given[0][1], given[1][1]))
    if given and given[0][0] != "forwards" and options.command is not None:
        parser.error("%s cannot be used with --command" % (given[0][1],))
    return given[0][0] if given else "exec"


def reservedUsage(parser, argv):
    """
    With C{--reserved-exit-codes} on the command line (or a prefix of it
    that argparse takes for it), a usage error exits with the reserved
    usage code (docs/cli.md) instead of 2: it is found before the options
    are parsed, so that their own errors are mapped too.
    """
    import sys

    from prokshy.cli.format import EXIT_USAGE, reservedFor

    flag = "--reserved-exit-codes"
    args = sys.argv[1:] if argv is None else list(argv)
    if "--" in args:
        args = args[: args.index("--")]
    if not any(a.startswith("--res") and flag.startswith(a) for a in args):
        return
    exit = parser.exit

    def reservedExit(status=0, message=None):
        exit(reservedFor("usage") if status == EXIT_USAGE else status, message)

    parser.exit = reservedExit


def checkModes(parser, options):
    """
    The checks of the flags above, once L{modeOf} set C{options.mode}: a
    usage error ends the program (exit 2, or the reserved usage code).
    """
    from prokshy.cli.files import checkFileOptions
    from prokshy.cli.tty import checkTTYOptions

    checkFileOptions(parser, options)
    checkTTYOptions(parser, options)
    if options.json_stream:
        # --json-stream prints the --json records too, as its last events.
        options.json = True
    if options.mode == "list" and options.protocol == "legacy":
        parser.error("--list needs the framed protocol (the original agent cannot list its commands)")


__all__ = ["addModeFlags", "checkModes", "modeOf", "reservedUsage"]
