# -*- test-case-name: tests.system.test_exec_args -*-
"""
What the CLI checks before it sends an exec with arguments (C{ARG...}) or
a tty (C{-t}), once a framed session is up:

  - the guest serves them (its features list C{args}, C{tty}): an older
    guest would ignore them and run the command without them, so the
    command is not run at all (L{checkFeatures});
  - the OPEN fits one control frame of the peer's (L{checkFits}): control
    frames are not split, so an OPEN above the C{max_payload} of the hello
    we got (the guest's, or the daemon's) cannot be sent; this is a usage
    error naming the limit, before anything is sent.

The count and size limits of the arguments themselves are checked when
the command line is parsed (L{prokshy.execs.request.argsProblem}).
"""

from twisted.python.failure import Failure

from prokshy.cli.format import CLIError, exitFor, exitStatus
from prokshy.host.client import _execArgs
from prokshy.streams.stream import encodeJSON

__all__ = ["checkFeatures", "checkFits", "openSize", "wantedFeatures"]


def wantedFeatures(options):
    """
    The guest features an exec of C{options} needs: C{args} for ARGs,
    C{tty} for C{-t}.
    """
    wanted = []
    if options.args:
        wanted.append(("args", "arguments (ARG...)"))
    if options.tty:
        wanted.append(("tty", "a terminal (-t)"))
    return wanted


def _agent(info):
    agent = info.get("agent") or "?"
    version = info.get("version")
    return "%s %s" % (agent, version) if version else str(agent)


async def checkFeatures(run, vms):
    """
    Refuse (L{CLIError}, exit 1: C{unsupported}) an exec that a target guest
    cannot run as asked.  Directly on a VM the guest's hello says; through
    a daemon (whose hello lists its own features) each VM's C{info} does.
    A VM whose C{info} fails is left to its exec, which fails the same way.

    @param run: the L{prokshy.cli.framed.FramedRun}.
    @param vms: the target VMs (L{None} for the only one).
    """
    wanted = wantedFeatures(run.options)
    if not wanted:
        return
    for vm in vms:
        if run.isDaemon:
            try:
                info = await run.session.info(vm=vm)
            except Exception as e:
                if exitFor(Failure(e)) is None:
                    raise
                continue
        else:
            info = run.hello
        features = info.get("features")
        features = features if isinstance(features, list) else []
        for feature, what in wanted:
            if feature not in features:
                where = "vm %s: " % (vm,) if vm is not None else ""
                raise CLIError(
                    "%sthe guest's agent (%s) cannot take %s: it has no %r feature; "
                    "the command was not run (upgrade prokshy-guest)"
                    % (where, _agent(info), what, feature),
                    exitStatus("unsupported"),
                    "unsupported",
                )


def openSize(run, vm, tty=None):
    """
    The bytes of the exec OPEN that C{run} would send for C{vm}, as the
    host's L{prokshy.streams.mux.Mux} encodes it.
    """
    opts = run.options
    body = _execArgs(opts.command, opts.exec_timeout, vm, opts.args, tty)
    body["kind"] = "exec"
    body["window"] = run.host.mux.window
    return len(encodeJSON(body))


def checkFits(run, vms, tty=None):
    """
    Refuse (L{CLIError}, exit 2: C{usage}) arguments whose OPEN would not fit
    one frame of the peer's C{max_payload}.
    """
    if not run.options.args:
        return
    info = run.host.link.info if run.host.link is not None else None
    if info is None:
        return
    allowed = info.sendPayload
    for vm in vms:
        size = openSize(run, vm, tty)
        if size > allowed:
            peer = "the daemon" if run.isDaemon else "the guest"
            raise CLIError(
                "the arguments do not fit in one request: it would take %d bytes, and %s "
                "takes at most %d (its max_payload); send big data on stdin instead"
                % (size, peer, allowed),
                exitStatus("usage"),
                "usage",
            )
