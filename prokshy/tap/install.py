# -*- test-case-name: tests.system.test_guest_setup -*-
"""
C{prokshy-guest-setup}: install the guest agent's service in a guest.

    prokshy-guest-setup --init rc.d|systemd [--prefix DIR] [--command-dir DIR]

It writes the service file (FreeBSD's C{rc.d} script or a systemd unit, the
ones shipped in C{etc/}) pointing at the C{twistd} that is actually
installed beside this Python (a venv's, Debian's, a port's), creates the
command directory with the sample commands (owned by root when run as
root, mode 755: the agent refuses a directory or command that others may
write), prints what it did, and the one command that starts the service.

A command that is already in the directory is kept as it is: the
administrator's commands are never overwritten.  The service file is
rewritten each time.  C{--prefix} writes everything below DIR (a guest
image being built, or a test) while the paths written into the files stay
the ones the guest will see.
"""

import os
import re
import shutil
import stat
import sys

from twisted.python import usage

import prokshy

__all__ = ["INIT_SYSTEMS", "Options", "SetupError", "checkPlainPath", "findTwistd", "install", "main", "serviceText"]

#: The package data: C{prokshy/examples}, whose entries link to C{etc/}.
_EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(prokshy.__file__)), "examples")

#: Per init system: where the service file goes, the template (in
#: C{prokshy/examples}, which links to C{etc/}), the default command
#: directory, its mode, the start command, and the text of the template
#: that names twistd and the command directory.
INIT_SYSTEMS = {
    "rc.d": {
        "service": "usr/local/etc/rc.d/prokshy",
        "template": "rc.d/prokshy",
        "mode": 0o555,
        "commandDir": "/usr/local/etc/prokshy/command.d",
        "start": "sysrc prokshy_enable=YES && service prokshy start",
        "twistd": ': ${prokshy_twistd:="%s"}',
        "commands": ': ${prokshy_command_dir:="%s"}',
    },
    "systemd": {
        "service": "etc/systemd/system/prokshy-guest.service",
        "template": "systemd/prokshy-guest.service",
        "mode": 0o644,
        "commandDir": "/etc/prokshy/command.d",
        "start": "systemctl daemon-reload && systemctl enable --now prokshy-guest",
        "twistd": "ExecStart=%s ",
        "commands": "--command-dir %s\n",
    },
}

#: What the shipped templates name, replaced by what is installed.
_SHIPPED_TWISTD = "/usr/local/bin/twistd"
_SHIPPED_COMMANDS = "/usr/local/etc/prokshy/command.d"


class SetupError(Exception):
    """
    Setup cannot go on; the message says why, in one line.
    """


#: The characters a path written into a service file may have: neither
#: the rc.d script's unquoted C{command_args} nor systemd's C{ExecStart=}
#: (which splits at white space and expands C{%} and C{$}) would keep a
#: path with others as one argument.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9._/+@:,=-]*\Z")


def checkPlainPath(path, what):
    """
    Refuse a path that a service file cannot carry as it is.

    @raise SetupError: naming C{what}, the path and the characters allowed.
    """
    if not _PLAIN_PATH.match(path):
        raise SetupError(
            "%s %r has a character a service file cannot carry unquoted (white space, quotes, "
            "%%, $, \\, ...): use a path of letters, digits and . _ / + @ : , = -" % (what, path)
        )
    return path


class Options(usage.Options):
    synopsis = "--init rc.d|systemd [--prefix DIR] [--command-dir DIR]"
    longdesc = (
        "Install the prokshy guest agent's service: the rc.d script (FreeBSD) or the "
        "systemd unit (Linux), pointing at the twistd installed beside this Python, "
        "and the command directory with the sample commands."
    )
    optParameters = [
        ["init", None, None, "The init system: rc.d or systemd."],
        ["prefix", None, "/", "Write below this directory (the paths in the files stay as the guest sees them)."],
        ["command-dir", None, None,
         "The command directory (default: /usr/local/etc/prokshy/command.d for rc.d, "
         "/etc/prokshy/command.d for systemd)."],
    ]

    def postOptions(self):
        if self["init"] not in INIT_SYSTEMS:
            raise usage.UsageError("--init must be rc.d or systemd, not %r" % (self["init"],))
        if self["command-dir"] is not None and not os.path.isabs(self["command-dir"]):
            raise usage.UsageError("--command-dir must be an absolute path")
        if self["command-dir"] is None:
            self["command-dir"] = INIT_SYSTEMS[self["init"]]["commandDir"]


def findTwistd(executable=sys.executable):
    """
    The C{twistd} installed with this Python: beside it (a venv, Debian's
    C{/usr/bin}, a FreeBSD port's C{/usr/local/bin}), else on C{PATH}.

    @raise SetupError: if there is none.
    """
    beside = os.path.join(os.path.dirname(os.path.abspath(executable)), "twistd")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("twistd")
    if found:
        return os.path.abspath(found)
    raise SetupError("no twistd beside %s or on PATH: install Twisted for this Python first" % (executable,))


def _below(prefix, path):
    return os.path.join(prefix, path.lstrip("/"))


def _replaceOnce(text, old, new, what):
    if text.count(old) != 1:
        raise SetupError("the shipped %s no longer names %r once; cannot fill it in" % (what, old))
    return text.replace(old, new)


def serviceText(init, twistd, commandDir):
    """
    The service file for C{init}, naming C{twistd} and C{commandDir}.
    """
    spec = INIT_SYSTEMS[init]
    with open(os.path.join(_EXAMPLES, spec["template"])) as f:
        text = f.read()
    text = _replaceOnce(text, spec["twistd"] % (_SHIPPED_TWISTD,), spec["twistd"] % (twistd,), spec["template"])
    return _replaceOnce(
        text, spec["commands"] % (_SHIPPED_COMMANDS,), spec["commands"] % (commandDir,), spec["template"]
    )


def _makeDirs(path, say):
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        os.mkdir(directory, 0o755)
        os.chmod(directory, 0o755)
        if os.geteuid() == 0:
            os.chown(directory, 0, 0)
        say("created %s" % (directory,))


def install(init, prefix, commandDir, twistd, say=print):
    """
    Write the service file and the command directory below C{prefix}.

    @param say: called with one line per thing done.
    @return: the command that starts the service.
    @raise SetupError: (or C{OSError}) if that cannot be done.
    """
    spec = INIT_SYSTEMS[init]
    checkPlainPath(twistd, "twistd")
    checkPlainPath(commandDir, "the command directory")
    text = serviceText(init, twistd, commandDir)
    service = _below(prefix, spec["service"])
    _makeDirs(os.path.dirname(service), say)
    existed = os.path.exists(service)
    temporary = service + ".new"
    with open(temporary, "w") as f:
        f.write(text)
    os.chmod(temporary, spec["mode"])
    os.replace(temporary, service)
    say("%s %s (twistd: %s)" % ("replaced" if existed else "wrote", service, twistd))

    commands = _below(prefix, commandDir)
    _makeDirs(commands, say)
    # A directory that was there keeps its owner and mode (the
    # administrator's choice), but one the agent would refuse is said.
    mode = stat.S_IMODE(os.stat(commands).st_mode)
    if mode & 0o022:
        say("warning: %s is group- or world-writable (mode %04o): the agent refuses its commands "
            "until it is not (chmod go-w %s)" % (commands, mode, commands))
    samples = os.path.join(_EXAMPLES, "command.d")
    for name in sorted(os.listdir(samples)):
        source, target = os.path.join(samples, name), os.path.join(commands, name)
        if not stat.S_ISREG(os.stat(source).st_mode):
            continue
        if os.path.lexists(target):
            say("kept %s (already there)" % (target,))
            continue
        shutil.copyfile(source, target)
        os.chmod(target, 0o755)
        if os.geteuid() == 0:
            os.chown(target, 0, 0)
        say("installed %s" % (target,))
    return spec["start"]


def main(argv=None):
    """
    The C{prokshy-guest-setup} console script.  Exit status: 0 done, 1 it
    could not be done (one line on stderr), 2 a usage error.
    """
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        sys.stderr.write("prokshy-guest-setup: %s\n" % (e,))
        return 2
    try:
        start = install(options["init"], options["prefix"], options["command-dir"], findTwistd())
    except (SetupError, OSError) as e:
        sys.stderr.write("prokshy-guest-setup: %s\n" % (e,))
        return 1
    print("start it with: %s" % (start,))
    return 0


if __name__ == "__main__":
    sys.exit(main())
