"""
L{prokshy.testing}: the public test doubles work as documented, so code
written against the client API can be tested with no VM.
"""

from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from prokshy.execs.interfaces import ICommandRunner
from prokshy.sim.faults import FaultInjector
from prokshy.streams.stream import StreamRefused
from prokshy.testing import LossyChannel, MemoryRunner, MemoryVM, deterministicNonces


def _greet(stdin):
    return 0, b"hello " + stdin, b""


def _fail(stdin):
    return 3, b"", b"bad input\n"


def _boom(stdin):
    raise RuntimeError("exploded")


COMMANDS = {"greet": _greet, "fail": _fail, "boom": _boom, "big": lambda stdin: (0, b"x" * (1 << 20), b"")}


class MemoryVMTests(TestCase):
    def setUp(self):
        deterministicNonces(self)

    def vm(self, **options):
        vm = MemoryVM(COMMANDS, **options)
        self.addCleanup(vm.stop)
        return vm

    def test_docstringExample(self):
        vm = self.vm()
        session = vm.connect()
        result = vm.wait(session.exec("greet", stdin=b"world"))
        self.assertEqual((result.code, result.stdout, result.stderr), (0, b"hello world", b""))

    def test_statusAndStderr(self):
        vm = self.vm()
        session = vm.connect()
        result = vm.wait(session.exec("fail"))
        self.assertEqual((result.code, result.stderr, result.exitStatus), (3, b"bad input\n", 3))

    def test_exceptionIsExitOne(self):
        vm = self.vm()
        result = vm.wait(vm.connect().exec("boom"))
        self.assertEqual(result.code, 1)
        self.assertIn(b"RuntimeError: exploded", result.stderr)

    def test_noSuchCommand(self):
        vm = self.vm()
        session = vm.connect()
        error = self.assertRaises(StreamRefused, vm.wait, session.exec("nosuch"))
        self.assertEqual(error.code, "no-such-command")

    def test_lossyChannelStillExact(self):
        """
        Through a channel that drops, duplicates and corrupts, a 1 MiB
        output arrives exactly, and the faults really happened.
        """
        vm = self.vm(seed=7, dropChunkRate=0.02, dupChunkRate=0.02, corruptByteRate=0.0005)
        session = vm.connect()
        results = [vm.wait(session.exec("big")) for _ in range(2)]
        for result in results:
            self.assertEqual(result.stdout, b"x" * (1 << 20))
        guest = vm.channel.guest
        self.assertGreater(guest.droppedChunks, 0)
        self.assertGreater(guest.duplicatedChunks, 0)
        self.assertGreater(guest.corruptedBytes, 0)

    def test_info(self):
        vm = self.vm()
        info = vm.wait(vm.connect().info())
        self.assertIn("agent", info)

    def test_runnerInterface(self):
        verifyObject(ICommandRunner, MemoryRunner(None, {}))


class LossyChannelTests(TestCase):
    def test_oneFaultModel(self):
        """
        The channel's faults are the simulator's L{FaultInjector}: the same
        seed and writes give the same deliveries, and changing a rate at
        run time takes effect.
        """
        self.assertIsInstance(LossyChannel().host._injector, FaultInjector)
        outputs = []
        for _ in range(2):
            channel = LossyChannel(seed=3, dropChunkRate=0.3, chunkSize=10)
            got = []
            channel.guest.receiver = type("R", (), {"dataReceived": lambda self, d: got.append(d)})()
            channel.host.write(bytes(range(200)))
            channel.flush()
            outputs.append((got, channel.host.droppedChunks))
        self.assertEqual(outputs[0], outputs[1])
        self.assertGreater(outputs[0][1], 0)
        channel.setFaults(dropChunkRate=1.0)
        channel.host.write(b"y" * 100)
        self.assertEqual(channel.host.pending, 0)
        self.assertRaises(TypeError, channel.setFaults, colour=1)
