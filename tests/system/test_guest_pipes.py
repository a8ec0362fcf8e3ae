"""
A command's output pipes are read a whole pipe buffer at a time
(L{prokshy.guest._process.PIPE_READ_SIZE}), not Twisted's 8 KiB: a command
that writes fast costs the agent one read, and one round of framing, per
64 KiB.  Real children and the real reactor; counts, never times.
"""

from __future__ import annotations

import sys

from twisted.internet import defer, reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.trial import unittest

from prokshy.guest import _process


class _Chunks(ProcessProtocol):
    def __init__(self):
        self.chunks = {1: [], 2: []}
        self.ended = defer.Deferred()

    def childDataReceived(self, fd, data):
        self.chunks[fd].append(data)

    def processEnded(self, reason):
        self.ended.callback(None)


class PipeReadTests(unittest.TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def _spawn(self, code):
        proto = _Chunks()
        _process.spawnProcessGroup(reactor, proto, sys.executable, [sys.executable, "-c", code], {}, None)
        yield proto.ended
        return proto.chunks

    @defer.inlineCallbacks
    def test_wholePipeInOneRead(self):
        """
        60000 bytes written in one write() to an empty pipe come out in one
        read, on stdout and on stderr alike (Twisted's reader would take 8).
        """
        chunks = yield self._spawn(
            "import os, time\n"
            "os.write(1, b'o' * 60000)\n"
            "os.write(2, b'e' * 60000)\n"
        )
        self.assertEqual(b"".join(chunks[1]), b"o" * 60000)
        self.assertEqual(b"".join(chunks[2]), b"e" * 60000)
        self.assertGreater(max(map(len, chunks[1])), 8192)
        self.assertGreater(max(map(len, chunks[2])), 8192)

    @defer.inlineCallbacks
    def test_largeOutputIntact(self):
        """
        Output larger than a pipe buffer arrives whole and in order, and each
        read is at most L{_process.PIPE_READ_SIZE}.
        """
        chunks = yield self._spawn(
            "import sys\n"
            "data = bytes(range(256)) * 4096\n"
            "sys.stdout.buffer.write(data)\n"
        )
        self.assertEqual(b"".join(chunks[1]), bytes(range(256)) * 4096)
        self.assertLessEqual(max(map(len, chunks[1])), _process.PIPE_READ_SIZE)
