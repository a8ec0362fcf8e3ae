# -*- test-case-name: tests.test_host -*-
"""
C{twistd prokshy-host}: Options and makeService for the host daemon.

    twistd [-n] prokshy-host --listen ENDPOINT [--listen ENDPOINT ...]
                             (--vm NAME=SOCKET_PATH [--vm ...] | --socket-path SOCKET_PATH)
                             [--tls-ca FILE]
"""

import re

from twisted.python import usage

_VM_NAME = re.compile(r"[a-zA-Z0-9_.-]+\Z")


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
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["listen"] = []
        self["vms"] = {}
        self["legacy-vm"] = []

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
        if self["socket-path"] and self["vms"]:
            raise usage.UsageError("use either --vm or --socket-path, not both")
        if self["socket-path"]:
            self["vms"] = {"default": self["socket-path"]}
        if not self["vms"]:
            raise usage.UsageError("no VM: give --vm NAME=SOCKET_PATH or --socket-path PATH")
        for _, name in self["legacy-vm"]:
            if name not in self["vms"]:
                raise usage.UsageError("--legacy-vm %r: no such vm" % (name,))
        self["token"] = None
        if self["auth-token-file"]:
            try:
                with open(self["auth-token-file"]) as f:
                    token = f.read().strip()
            except OSError as e:
                raise usage.UsageError("cannot read %s: %s" % (self["auth-token-file"], e.strerror))
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
    """
    if reactor is None:
        from twisted.internet import reactor
    from twisted.application import service, strports
    from twisted.application.internet import StreamServerEndpointService
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
            probeAfter=min(1.5, options["dead-after"] / 2),
        )
        vm = VMConnection(reactor, name, path, linkConfig=config)
        vm.service.setServiceParent(top)
        vms[name] = vm
    legacy = {}
    for index, name in options["legacy-vm"]:
        legacy[options["policies"][index].description] = name
    daemon = Daemon(reactor, vms, token=options["token"], legacyVMs=legacy, linger=options["legacy-linger"])
    top.daemon = daemon
    tlsListeners = options.get("tls", {})
    for index, policy in enumerate(options["policies"]):
        factory = ClientFactory(daemon, policy)
        if index in tlsListeners:
            # ssl: with --tls-ca: TLS requiring client certificates over a
            # plain TCP listener (Twisted's ssl: string cannot verify them).
            from twisted.protocols.tls import TLSMemoryBIOFactory

            from prokshy.host.tls import tcpDescription

            params, contextFactory = tlsListeners[index]
            svc = StreamServerEndpointService(
                serverFromString(reactor, tcpDescription(params)),
                TLSMemoryBIOFactory(contextFactory, False, factory),
            )
            svc._raiseSynchronously = True  # as strports.service does
        else:
            svc = strports.service(policy.description, factory, reactor=reactor)
        svc.setServiceParent(top)
    return top
