# -*- test-case-name: tests.system.test_host -*-
"""
C{twistd prokshy-host}: Options and makeService for the host daemon.

    twistd [-n] prokshy-host --listen ENDPOINT [--listen ENDPOINT ...]
                             (--vm NAME=SOCKET_PATH [--vm ...] | --socket-path SOCKET_PATH)
                             [--tls-ca FILE] [--auth-token-file FILE]
                             [--max-connections N] [--handshake-timeout SECONDS]
                             [--max-streams-per-client N] [--max-waiting N]
                             [--forward [VM=]SPEC ...] [--reverse [VM=]SPEC ...]
                             [--client-allow-listen PATTERN ...] [--client-allow-connect PATTERN ...]

SPEC is ssh's C{[BIND:]PORT:HOST:HOSTPORT} (either side may be a unix
path; see L{prokshy.forward.spec}).  A malformed one, or one naming no VM,
ends the start with one line and exit status 2; a forward whose address is
in use is listed as failed, and the daemon serves on.

The token file must be readable by its owner only (mode 0600 or 0400): a
file that others may read or write is refused at start.
"""

import os
import re
import stat
import sys

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from prokshy.tap._help import plainOptionHelp

_VM_NAME = re.compile(r"[a-zA-Z0-9_.-]+\Z")


@plainOptionHelp
class Options(usage.Options):
    synopsis = "--listen ENDPOINT [...] (--vm NAME=SOCKET_PATH [...] | --socket-path PATH)"
    longdesc = (
        "Hold one persistent connection to each VM's console socket and share "
        "it among many clients: the prokshy CLI (framed protocol), the original "
        "CLI and nc (line protocol). --listen takes Twisted endpoint strings "
        "(tcp:7000:interface=127.0.0.1, unix:/var/run/prokshy.sock:mode=660, "
        "ssl:...). A listener that is not loopback or unix needs --auth-token-file, "
        "or, for ssl: listeners, --tls-ca (client certificates)."
    )
    optParameters = [
        ["socket-path", "s", None, "A single VM's console socket (the VM is named 'default')."],
        ["auth-token-file", None, None,
         "File holding the token framed clients must present on non-loopback listeners."],
        ["tls-ca", None, None,
         ("PEM file of CA certificates: every ssl: listener then requires a client "
          "certificate signed by one of them (and needs no token).")],
        ["legacy-linger", None, 1.5,
         "Seconds after a legacy command's output ends before the connection is closed.", float],
        ["ping-interval", None, 1.0, "Seconds between keepalive pings on each VM's session.", float],
        ["dead-after", None, 8.0,
         "Seconds of silence after which a VM's agent is taken as gone.", float],
        ["max-connections", None, 1024,
         ("Connections open at once per listener; a connection beyond it gets one "
          "line and is closed. 0: no limit."), int],
        ["handshake-timeout", None, 10.0,
         ("Seconds a new connection has to finish its hello (framed) or send its "
          "first request line (line protocol) before it is closed. 0: no limit."), float],
        ["max-streams-per-client", None, 64,
         ("Streams a framed client may have open at once; its further opens are "
          "refused (too-many-streams)."), int],
        ["max-waiting", None, 4096,
         ("Commands that may wait per VM while its guest is busy (beyond them, a "
          "command is refused as busy)."), int],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["listen"] = []
        self["vms"] = {}
        self["legacy-vm"] = []
        self["forwards"] = []
        self["client-allow-listen"] = []
        self["client-allow-connect"] = []

    def opt_client_allow_listen(self, pattern):
        """
        Where forwards that clients add at run time may make the daemon
        listen: HOST:PORT (PORT a number, LOW-HIGH or *), a unix path glob,
        or none (repeatable; default: 127.0.0.1:1024-65535 and
        [::1]:1024-65535).  --forward options are not checked.
        """
        self["client-allow-listen"].append(pattern)

    def opt_client_allow_connect(self, pattern):
        """
        Where reverse forwards that clients add at run time may make the
        daemon connect (repeatable; default: 127.0.0.1:* and [::1]:*; unix
        paths only when a pattern names them).  --reverse options are not
        checked.
        """
        self["client-allow-connect"].append(pattern)

    def opt_forward(self, spec):
        """
        [VM=][BIND:]PORT:HOST:HOSTPORT (either side may be a unix path): the
        host listens; each connection reaches HOST:HOSTPORT inside the VM
        (repeatable; VM= may be left out with one VM).
        """
        self["forwards"].append(("forward", spec))

    def opt_reverse(self, spec):
        """
        [VM=][BIND:]PORT:HOST:HOSTPORT: the guest listens on BIND:PORT inside
        the VM; each connection there reaches HOST:HOSTPORT on the host
        (repeatable).
        """
        self["forwards"].append(("reverse", spec))

    def opt_listen(self, description):
        """
        A server endpoint string to listen on (repeatable).
        """
        self["listen"].append(description)

    def opt_vm(self, spec):
        """
        NAME=SOCKET_PATH of a VM (repeatable).
        """
        name, sep, path = spec.partition("=")
        if not sep or not path or not _VM_NAME.match(name):
            raise usage.UsageError("--vm wants NAME=SOCKET_PATH, got %r" % (spec,))
        if name in self["vms"]:
            raise usage.UsageError("vm %r given twice" % (name,))
        self["vms"][name] = path

    def opt_legacy_vm(self, name):
        """
        The VM that line-protocol clients of the preceding --listen reach
        (default: the first VM).
        """
        if not self["listen"]:
            raise usage.UsageError("--legacy-vm must follow the --listen it applies to")
        self["legacy-vm"].append((len(self["listen"]) - 1, name))

    def postOptions(self):
        if not self["listen"]:
            raise usage.UsageError("at least one --listen is required")
        if self["ping-interval"] <= 0 or self["dead-after"] <= self["ping-interval"]:
            raise usage.UsageError(
                "--ping-interval must be positive and --dead-after longer than it"
            )
        for name in ("max-connections", "max-streams-per-client", "max-waiting"):
            if self[name] < 0 or (self[name] == 0 and name != "max-connections"):
                raise usage.UsageError("--%s must be a positive number" % (name,))
        if self["handshake-timeout"] < 0:
            raise usage.UsageError("--handshake-timeout must not be negative")
        if self["socket-path"] and self["vms"]:
            raise usage.UsageError("use either --vm or --socket-path, not both")
        if self["socket-path"]:
            self["vms"] = {"default": self["socket-path"]}
        if not self["vms"]:
            raise usage.UsageError("no VM: give --vm NAME=SOCKET_PATH or --socket-path PATH")
        for _, name in self["legacy-vm"]:
            if name not in self["vms"]:
                raise usage.UsageError("--legacy-vm %r: no such vm" % (name,))
        self["forwards"] = [self._forwardSpec(d, text) for d, text in self["forwards"]]
        from prokshy.forward.allow import DEFAULT_CONNECT, DEFAULT_LISTEN, PatternError, parsePatterns

        try:
            self["client-allow-listen"] = parsePatterns(self["client-allow-listen"], DEFAULT_LISTEN)
            self["client-allow-connect"] = parsePatterns(self["client-allow-connect"], DEFAULT_CONNECT)
        except PatternError as e:
            raise usage.UsageError(str(e))
        self["token"] = None
        if self["auth-token-file"]:
            path = self["auth-token-file"]
            try:
                with open(path) as f:
                    mode = os.fstat(f.fileno()).st_mode
                    token = f.read().strip()
            except OSError as e:
                raise usage.UsageError("cannot read %s: %s" % (path, e.strerror))
            if mode & 0o066:
                raise usage.UsageError(
                    "the auth token file %s may be read or written by other users (mode %04o): "
                    "chmod 600 it" % (path, stat.S_IMODE(mode))
                )
            if len(token) < 16:
                raise usage.UsageError("the auth token must be at least 16 characters")
            self["token"] = token
        from prokshy.host.policy import PolicyError, listenerPolicy

        haveCA = self["tls-ca"] is not None
        self["policies"] = []
        for description in self["listen"]:
            try:
                self["policies"].append(listenerPolicy(description, self["token"] is not None, haveCA))
            except PolicyError as e:
                raise usage.UsageError(str(e))
        self["tls"] = self._clientCertificateListeners() if haveCA else {}

    def _forwardSpec(self, direction, text):
        """
        Parse one --forward/--reverse.  A bad one ends the start with one
        line on stderr and exit status 2 (not twistd's usage text).
        """
        import attr

        from prokshy.forward.spec import SpecError, checkDirection, parseSpec

        try:
            spec = parseSpec(text)
        except SpecError as e:
            badForward(direction, text, str(e))
        if spec.vm is None:
            if len(self["vms"]) > 1:
                badForward(direction, text, "several VMs (%s): say which, as VM=%s" % (", ".join(self["vms"]), text))
            spec = attr.evolve(spec, vm=next(iter(self["vms"])))
        elif spec.vm not in self["vms"]:
            badForward(direction, text, "no vm named %r (have: %s)" % (spec.vm, ", ".join(self["vms"])))
        try:
            checkDirection(spec, direction)
        except SpecError as e:
            badForward(direction, text, str(e))
        return direction, spec

    def _clientCertificateListeners(self):
        """
        With --tls-ca: for every ssl: listener, its parsed description and
        a context factory requiring client certificates.

        @return: listener index to C{(params, contextFactory)}.
        """
        from prokshy.host import tls

        try:
            tls.loadCertificates(self["tls-ca"], "--tls-ca file")
            result = {}
            for index, policy in enumerate(self["policies"]):
                if policy.description.split(":", 1)[0].lower() != "ssl":
                    continue
                params = tls.parseSSLDescription(policy.description)
                contextFactory = tls.serverContextFactory(
                    params["privateKey"],
                    params["certKey"],
                    self["tls-ca"],
                    extraCertChain=params["extraCertChain"],
                    dhParameters=params["dhParameters"],
                )
                result[index] = (params, contextFactory)
        except tls.TLSConfigError as e:
            raise usage.UsageError(str(e))
        return result


def makeService(options, reactor=None):
    """
    Build the daemon: one ClientService per VM, one listener per --listen.

    A listener that cannot listen (a busy port, a bad path) stops the start
    with one line on stderr and exit status 1, not a traceback.
    """
    if reactor is None:
        from twisted.internet import reactor
    from twisted.application import service
    from twisted.internet.endpoints import serverFromString

    from prokshy.host.server import ClientFactory, Daemon
    from prokshy.host.vm import VMConnection

    from prokshy.host.client import HOST_PAYLOAD, HOST_WINDOW
    from prokshy.link.session import LinkConfig

    top = service.MultiService()
    vms = {}
    for name, path in options["vms"].items():
        config = LinkConfig(
            window=HOST_WINDOW,
            maxPayload=HOST_PAYLOAD,
            pingInterval=options["ping-interval"],
            deadAfter=options["dead-after"],
            rehelloAfter=min(1.5, options["dead-after"] / 2),
        )
        vm = VMConnection(reactor, name, path, linkConfig=config, maxWaiting=options["max-waiting"])
        vm.service.setServiceParent(top)
        vms[name] = vm
    legacy = {}
    for index, name in options["legacy-vm"]:
        legacy[options["policies"][index].description] = name
    daemon = Daemon(
        reactor,
        vms,
        token=options["token"],
        legacyVMs=legacy,
        linger=options["legacy-linger"],
        maxConnections=options["max-connections"],
        handshakeTimeout=options["handshake-timeout"],
        maxStreamsPerClient=options["max-streams-per-client"],
        clientListen=options["client-allow-listen"],
        clientConnect=options["client-allow-connect"],
    )
    top.daemon = daemon
    _Forwards(daemon.forwards, options["forwards"]).setServiceParent(top)
    tlsListeners = options.get("tls", {})
    for index, policy in enumerate(options["policies"]):
        factory = ClientFactory(daemon, policy)
        if index in tlsListeners:
            # ssl: with --tls-ca: TLS requiring client certificates over a
            # plain TCP listener (Twisted's ssl: string cannot verify them).
            from twisted.protocols.tls import TLSMemoryBIOFactory

            from prokshy.host.tls import tcpDescription

            params, contextFactory = tlsListeners[index]
            svc = ListenerService(
                options["listen"][index],
                serverFromString(reactor, tcpDescription(params)),
                TLSMemoryBIOFactory(contextFactory, False, factory),
            )
        else:
            svc = ListenerService(options["listen"][index], serverFromString(reactor, policy.description), factory)
        svc.setServiceParent(top)
    return top


_log = Logger()


class _Forwards(Service):
    """
    Starts the configured forwards with the daemon, and closes every
    forward's listener when it stops.  They listen in
    C{privilegedStartService}, as C{--listen} does: before twistd gives up
    root with C{--uid}, so a configured port below 1024 works.
    """

    def __init__(self, table, forwards):
        self.table = table
        self.configured = forwards
        self._added = False

    def privilegedStartService(self):
        Service.privilegedStartService(self)
        if not self._added:
            self._added = True
            for direction, spec in self.configured:
                self.table.addConfigured(direction, spec)

    def startService(self):
        Service.startService(self)
        self.privilegedStartService()  # (a start without the privileged step)

    def stopService(self):
        Service.stopService(self)
        return self.table.stop()


class ListenerService(StreamServerEndpointService):
    """
    A listener (as C{strports.service} makes) whose failure to listen ends
    the start with one line.
    """

    _raiseSynchronously = True

    def __init__(self, description, endpoint, factory):
        StreamServerEndpointService.__init__(self, endpoint, factory)
        self.description = description

    def privilegedStartService(self):
        try:
            StreamServerEndpointService.privilegedStartService(self)
        except CannotListenError as e:
            cannotListen(self.description, e)


def _say(message):
    stream = sys.__stderr__
    if stream is not None:
        stream.write(message + "\n")
        stream.flush()


def badForward(direction, text, why):
    """
    Say in one line that a --forward or --reverse is wrong, and exit with
    status 2.
    """
    _say("prokshy-host: --%s %s: %s" % (direction, text, why))
    raise SystemExit(2)


def cannotListen(description, error):
    """
    Say in one line that C{description} cannot listen, and exit with
    status 1 (twistd would print a traceback for an exception).
    """
    why = error.socketError
    if isinstance(why, OSError) and why.strerror:
        why = why.strerror
    message = "prokshy-host: cannot listen on %s: %s" % (description, why)
    _log.error("{message}", message=message)
    _say(message)
    raise SystemExit(1)
