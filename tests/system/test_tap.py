"""
Tests for the twistd plugins' C{Options} and C{makeService}:
L{prokshy.tap.guest} (C{twistd prokshy-guest}) and L{prokshy.tap.host}
(C{twistd prokshy-host}).
"""

import os

from twisted.application.service import IServiceMaker
from twisted.internet import task
from twisted.internet.interfaces import IReactorProcess
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from prokshy.tap import guest, host
from tests.harness import shortTempDir

DEVICES = ("/dev/vtcon/prokshy", "/dev/virtio-ports/prokshy")


class DefaultDeviceTests(SynchronousTestCase):
    """
    L{guest.defaultDevice}: the first candidate that exists, else this OS's
    usual port.
    """

    def test_firstThatExists(self):
        self.assertEqual(
            guest.defaultDevice(DEVICES, exists=lambda p: True, platform="linux"),
            "/dev/vtcon/prokshy",
        )
        self.assertEqual(
            guest.defaultDevice(
                DEVICES, exists=lambda p: p == "/dev/virtio-ports/prokshy", platform="freebsd14"
            ),
            "/dev/virtio-ports/prokshy",
        )
        self.assertEqual(
            guest.defaultDevice(
                DEVICES, exists=lambda p: p == "/dev/vtcon/prokshy", platform="linux"
            ),
            "/dev/vtcon/prokshy",
        )

    def test_noneExists(self):
        nothing = lambda p: False
        self.assertEqual(
            guest.defaultDevice(DEVICES, exists=nothing, platform="linux"),
            "/dev/virtio-ports/prokshy",
        )
        self.assertEqual(
            guest.defaultDevice(DEVICES, exists=nothing, platform="freebsd14"),
            "/dev/vtcon/prokshy",
        )

    def test_defaults(self):
        self.assertEqual(guest.DEFAULT_DEVICES, DEVICES)
        checked = []

        def exists(path):
            checked.append(path)
            return False

        guest.defaultDevice(exists=exists, platform="linux")
        self.assertEqual(checked, list(DEVICES))

    def test_optionsUseIt(self):
        """
        Without C{--device}, the options pick L{guest.defaultDevice}().
        """
        self.patch(guest, "defaultDevice", lambda: "/dev/picked")
        options = guest.Options()
        options.parseOptions([])
        self.assertEqual(options["device"], "/dev/picked")
        options = guest.Options()
        options.parseOptions(["--device", "/dev/given"])
        self.assertEqual(options["device"], "/dev/given")


class GuestOptionsTests(SynchronousTestCase):
    def parse(self, *args):
        options = guest.Options()
        options.parseOptions(["--device", "/dev/x"] + list(args))
        return options

    def test_defaults(self):
        options = self.parse()
        self.assertEqual(options["device"], "/dev/x")
        self.assertEqual(options["command-dir"], "/usr/local/etc/prokshy/command.d")
        # Framed execs: no timeout and no output cap unless asked for; the
        # line protocol, whose client cannot cancel, keeps its limits.
        self.assertEqual(options["timeout"], 0.0)
        self.assertEqual(options["max-output"], 0)
        self.assertEqual(options["line-timeout"], 60.0)
        self.assertEqual(options["line-max-output"], 16 * 1024 * 1024)
        self.assertEqual(options["max-line"], 65536)
        # Derived from the CPUs (issue 10; tests/system/test_guest_concurrency.py).
        self.assertEqual(options["max-concurrency"], guest.defaultConcurrency())
        self.assertEqual(options["max-queue"], guest.defaultQueue(options["max-concurrency"]))
        self.assertEqual(options["kill-grace"], 2.0)
        self.assertEqual(options["window"], 0)
        self.assertEqual(options["ping-interval"], 1.0)
        self.assertEqual(options["dead-after"], 8.0)

    def test_values(self):
        options = self.parse(
            "-c", "/cmd", "-t", "2.5", "--max-output", "0", "--max-line", "100",
            "--max-concurrency", "3", "--max-queue", "0", "--kill-grace", "0.5",
            "--window", "4096", "--ping-interval", "0.2", "--dead-after", "1.5",
        )
        self.assertEqual(options["command-dir"], "/cmd")
        self.assertEqual(options["timeout"], 2.5)
        self.assertEqual(options["max-output"], 0)
        self.assertEqual(options["max-line"], 100)
        self.assertEqual(options["max-concurrency"], 3)
        self.assertEqual(options["max-queue"], 0)
        self.assertEqual(options["kill-grace"], 0.5)
        self.assertEqual(options["window"], 4096)
        self.assertEqual(options["ping-interval"], 0.2)
        self.assertEqual(options["dead-after"], 1.5)
        self.assertIsInstance(options["max-concurrency"], int)
        self.assertIsInstance(options["timeout"], float)

    def test_badNumbers(self):
        """
        Non-numbers, negative numbers, and zero where zero makes no sense
        are usage errors.
        """
        bad = [
            ("--timeout", "soon"),
            ("--timeout", "-1"),
            ("--max-output", "1.5"),
            ("--max-output", "-1"),
            ("--max-line", "0"),
            ("--max-line", "lots"),
            ("--max-concurrency", "0"),
            ("--max-concurrency", "-2"),
            ("--max-concurrency", "two"),
            ("--max-queue", "-1"),
            ("--kill-grace", "0"),
            ("--kill-grace", "x"),
            ("--window", "-1"),
            ("--ping-interval", "0"),
            ("--dead-after", "0"),
            ("--dead-after", "never"),
        ]
        for option, value in bad:
            self.assertRaises(usage.UsageError, self.parse, option, value)

    def test_zeroAllowed(self):
        options = self.parse("--timeout", "0", "--max-output", "0", "--max-queue", "0", "--window", "0")
        self.assertEqual(
            (options["timeout"], options["max-output"], options["max-queue"], options["window"]),
            (0.0, 0, 0, 0),
        )

    def test_deadAfterMustExceedPingInterval(self):
        self.assertRaises(usage.UsageError, self.parse, "--dead-after", "1")
        self.assertRaises(usage.UsageError, self.parse, "--dead-after", "0.5")
        self.assertRaises(
            usage.UsageError, self.parse, "--ping-interval", "3", "--dead-after", "2"
        )
        options = self.parse("--ping-interval", "3", "--dead-after", "3.5")
        self.assertEqual(options["dead-after"], 3.5)

    def test_unknownOption(self):
        self.assertRaises(usage.UsageError, self.parse, "--no-such-option")

    def test_makeService(self):
        """
        makeService builds the agent without opening anything: a cleanup
        service and a device service on the given device.
        """
        from prokshy.transport.service import DeviceService

        directory = shortTempDir(self)
        options = self.parse("--command-dir", directory, "--max-concurrency", "3")
        clock = _FakeReactor()
        top = guest.makeService(options, clock)
        devices = [s for s in top if isinstance(s, DeviceService)]
        self.assertEqual(len(devices), 1)
        self.assertEqual(devices[0].path, "/dev/x")
        # The working directory, the process reaper, the command cleanup,
        # the device, and the goodbye on stop.
        self.assertEqual(len(list(top)), 5)
        self.assertFalse(top.running)

    def test_worksInRoot(self):
        """
        Started, the agent works in C{/} (so that commands, which run in
        C{/}, take Twisted's posix_spawn path wherever the agent was
        started), and the device and command directory given relative to
        where it was started keep meaning what they meant there.
        """
        here = os.getcwd()
        options = self.parse("--command-dir", "cmd.d", "--device", "dev/vm")
        self.assertEqual(options["command-dir"], os.path.join(here, "cmd.d"))
        self.assertEqual(options["device"], os.path.join(here, "dev/vm"))
        calls = []
        top = guest.makeService(options, _FakeReactor(), chdir=calls.append)
        first = list(top)[0]
        self.assertEqual(calls, [])  # not at build time (twistd opens its log after)
        first.startService()
        self.assertEqual(calls, ["/"])


@implementer(IReactorProcess)
class _FakeReactor(task.Clock):
    """
    Enough of a reactor for makeService, which must not spawn anything.
    """

    def spawnProcess(self, *a, **kw):
        raise AssertionError("makeService must not spawn")


class HostOptionsTests(SynchronousTestCase):
    def parse(self, *args):
        options = host.Options()
        options.parseOptions(list(args))
        return options

    def tokenFile(self, token):
        path = os.path.join(shortTempDir(self), "token")
        with open(path, "w") as f:
            f.write(token)
        os.chmod(path, 0o600)
        return path

    def test_listenRequired(self):
        self.assertRaises(usage.UsageError, self.parse, "--socket-path", "/vm.sock")

    def test_listenRepeatable(self):
        options = self.parse(
            "--listen", "tcp:7000:interface=127.0.0.1",
            "--listen", "unix:/run/p.sock",
            "--socket-path", "/vm.sock",
        )
        self.assertEqual(
            options["listen"], ["tcp:7000:interface=127.0.0.1", "unix:/run/p.sock"]
        )
        self.assertEqual(len(options["policies"]), 2)

    def test_vmRepeatable(self):
        options = self.parse(
            "--listen", "unix:/p", "--vm", "web=/vm/web.sock", "--vm", "db.1=/vm/db=x.sock"
        )
        self.assertEqual(options["vms"], {"web": "/vm/web.sock", "db.1": "/vm/db=x.sock"})

    def test_vmValidated(self):
        for spec in ("web", "web=", "=/x", "we b=/x", "a/b=/x", "\xe9=/x"):
            self.assertRaises(
                usage.UsageError, self.parse, "--listen", "unix:/p", "--vm", spec
            )
        self.assertRaises(
            usage.UsageError, self.parse,
            "--listen", "unix:/p", "--vm", "web=/a", "--vm", "web=/b",
        )

    def test_socketPath(self):
        options = self.parse("--listen", "unix:/p", "--socket-path", "/vm.sock")
        self.assertEqual(options["vms"], {"default": "/vm.sock"})
        options = self.parse("--listen", "unix:/p", "-s", "/vm2.sock")
        self.assertEqual(options["vms"], {"default": "/vm2.sock"})

    def test_vmOrSocketPath(self):
        self.assertRaises(usage.UsageError, self.parse, "--listen", "unix:/p")
        self.assertRaises(
            usage.UsageError, self.parse,
            "--listen", "unix:/p", "--vm", "a=/a", "--socket-path", "/b",
        )

    def test_forwardsListenPrivileged(self):
        """
        Configured forwards listen in privilegedStartService, as --listen
        does (before twistd drops root with --uid), and only once.
        """
        from twisted.internet.testing import MemoryReactorClock

        options = self.parse(
            "--listen", "unix:/p", "--socket-path", "/vm.sock",
            "--forward", "127.0.0.1:80:127.0.0.1:8080",
        )
        reactor = MemoryReactorClock()
        top = host.makeService(options, reactor)
        top.privilegedStartService()
        self.assertEqual([(p, i) for p, f, b, i in reactor.tcpServers], [(80, "127.0.0.1")])
        top.startService()
        self.assertEqual(len(reactor.tcpServers), 1)
        top.stopService()

    def test_legacyVM(self):
        options = self.parse(
            "--listen", "unix:/p", "--legacy-vm", "db",
            "--listen", "tcp:7000:interface=127.0.0.1",
            "--vm", "web=/w", "--vm", "db=/d",
        )
        self.assertEqual(options["legacy-vm"], [(0, "db")])  # (index of its --listen, vm)

    def test_legacyVMAppliesToItsListenerOnly(self):
        """
        C{--legacy-vm} applies to the C{--listen} it follows, not to every
        listener whose description starts with the same text.

        (Bug: makeService matches listeners by prefix, so
        C{--listen unix:/run/a --legacy-vm db --listen unix:/run/ab} sends
        the line-protocol clients of both listeners to db.)
        """
        options = self.parse(
            "--listen", "unix:/run/a", "--legacy-vm", "db",
            "--listen", "unix:/run/ab",
            "--listen", "tcp:700:interface=127.0.0.1", "--legacy-vm", "db",
            "--listen", "tcp:7000:interface=127.0.0.1",
            "--vm", "web=/w", "--vm", "db=/d",
        )
        top = host.makeService(options, _FakeReactor())
        self.assertEqual(
            top.daemon.legacyVMs,
            {
                "unix:/run/a:backlog=1024:mode=600:lockfile=1": "db",
                "tcp:700:interface=127.0.0.1:backlog=1024": "db",
            },
        )

    def test_legacyVMMustFollowListen(self):
        self.assertRaises(
            usage.UsageError, self.parse,
            "--legacy-vm", "web", "--listen", "unix:/p", "--vm", "web=/w",
        )

    def test_legacyVMMustExist(self):
        self.assertRaises(
            usage.UsageError, self.parse,
            "--listen", "unix:/p", "--legacy-vm", "nope", "--vm", "web=/w",
        )

    def test_nonLoopbackNeedsToken(self):
        for listen in (
            "tcp:7000",
            "tcp:7000:interface=0.0.0.0",
            "tcp:7000:interface=192.168.1.5",
            "tcp6:7000:interface=\\:\\:",
        ):
            self.assertRaises(
                usage.UsageError, self.parse, "--listen", listen, "--socket-path", "/v"
            )
        token = self.tokenFile("0123456789abcdef-long-enough\n")
        options = self.parse(
            "--listen", "tcp:7000", "--socket-path", "/v", "--auth-token-file", token
        )
        self.assertEqual(options["token"], "0123456789abcdef-long-enough")
        [policy] = options["policies"]
        self.assertTrue(policy.requireToken)
        self.assertFalse(policy.legacy)

    def test_loopbackNeedsNoToken(self):
        for listen in (
            "tcp:7000:interface=127.0.0.1",
            "tcp:7000:interface=localhost",
            "tcp6:7000:interface=\\:\\:1",
        ):
            options = self.parse("--listen", listen, "--socket-path", "/v")
            [policy] = options["policies"]
            self.assertFalse(policy.requireToken, listen)
            self.assertTrue(policy.legacy, listen)
            self.assertIsNone(options["token"])

    def test_tokenTooShort(self):
        token = self.tokenFile("short\n")
        self.assertRaises(
            usage.UsageError, self.parse,
            "--listen", "unix:/p", "--socket-path", "/v", "--auth-token-file", token,
        )
        token = self.tokenFile("  0123456789abcde  \n")
        self.assertRaises(
            usage.UsageError, self.parse,
            "--listen", "unix:/p", "--socket-path", "/v", "--auth-token-file", token,
        )

    def test_tokenFileMissing(self):
        missing = os.path.join(shortTempDir(self), "none")
        error = self.assertRaises(
            usage.UsageError, self.parse,
            "--listen", "unix:/p", "--socket-path", "/v", "--auth-token-file", missing,
        )
        self.assertIn(missing, str(error))

    def test_unixDefaults(self):
        """
        Unix listeners get C{backlog=1024}, C{mode=600} and C{lockfile=1}
        unless they say otherwise.
        """
        options = self.parse(
            "--listen", "unix:/run/a.sock",
            "--listen", "unix:/run/b.sock:mode=660",
            "--listen", "unix:/run/c.sock:lockfile=0",
            "--socket-path", "/v",
        )
        descriptions = [p.description for p in options["policies"]]
        self.assertEqual(
            descriptions,
            [
                "unix:/run/a.sock:backlog=1024:mode=600:lockfile=1",
                "unix:/run/b.sock:mode=660:backlog=1024:lockfile=1",
                "unix:/run/c.sock:lockfile=0:backlog=1024:mode=600",
            ],
        )
        for policy in options["policies"]:
            self.assertTrue(policy.local)
            self.assertTrue(policy.legacy)
            self.assertFalse(policy.requireToken)

    def test_legacyLinger(self):
        self.assertEqual(self.parse("--listen", "unix:/p", "-s", "/v")["legacy-linger"], 1.5)
        options = self.parse("--listen", "unix:/p", "-s", "/v", "--legacy-linger", "0.25")
        self.assertEqual(options["legacy-linger"], 0.25)


class PluginTests(SynchronousTestCase):
    def test_plugins(self):
        """
        Both twistd plugins are found, and point at these modules.
        """
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIn("prokshy-guest", makers)
        self.assertIn("prokshy-host", makers)
        self.assertIs(makers["prokshy-guest"].options, guest.Options)
        self.assertIs(makers["prokshy-host"].options, host.Options)


class HostKeepaliveOptionsTests(SynchronousTestCase):
    """
    The daemon's keepalive settings reach every VM's link.
    """

    def test_keepaliveReachesVMLinks(self):
        options = host.Options()
        options.parseOptions([
            "--listen", "unix:/p", "--vm", "web=/w", "--vm", "db=/d",
            "--ping-interval", "0.5", "--dead-after", "3",
        ])
        top = host.makeService(options, _FakeReactor())
        for vm in top.daemon.vms.values():
            self.assertEqual((vm.linkConfig.pingInterval, vm.linkConfig.deadAfter), (0.5, 3.0))
            self.assertEqual(vm.linkConfig.rehelloAfter, 1.5)

    def test_defaults(self):
        options = host.Options()
        options.parseOptions(["--listen", "unix:/p", "--socket-path", "/v"])
        self.assertEqual((options["ping-interval"], options["dead-after"]), (1.0, 8.0))

    def test_deadAfterMustExceedPingInterval(self):
        for args in (["--ping-interval", "2", "--dead-after", "2"], ["--ping-interval", "0"]):
            options = host.Options()
            self.assertRaises(
                usage.UsageError, options.parseOptions,
                ["--listen", "unix:/p", "--socket-path", "/v"] + args,
            )
