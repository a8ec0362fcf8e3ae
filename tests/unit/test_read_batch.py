"""
L{prokshy.transport._base.readBatch}: consecutive reads gathered into one
chunk for the protocol, ending on EAGAIN, end of file, an error or the limit.
"""

import errno

from twisted.trial.unittest import SynchronousTestCase

from prokshy.transport._base import BATCH_LIMIT, READ_SIZE, readBatch


class Reads:
    """
    A scripted C{read(fd, size)}: bytes, or an errno to raise.
    """

    def __init__(self, *script):
        self.script = list(script)
        self.sizes = []

    def __call__(self, fd, size):
        self.sizes.append(size)
        result = self.script.pop(0)
        if isinstance(result, int):
            raise OSError(result, "scripted")
        return result


class ReadBatchTests(SynchronousTestCase):
    def test_gathersUntilEagain(self):
        reads = Reads(b"a" * 4096, b"b" * 4096, b"c" * 10, errno.EAGAIN, b"never")
        data, end = readBatch(3, reads)
        self.assertEqual(data, b"a" * 4096 + b"b" * 4096 + b"c" * 10)
        self.assertIsNone(end)
        self.assertEqual(reads.sizes, [READ_SIZE] * 4)
        self.assertEqual(reads.script, [b"never"])

    def test_nothingThere(self):
        self.assertEqual(readBatch(3, Reads(errno.EAGAIN)), (b"", None))

    def test_eintrRetried(self):
        self.assertEqual(readBatch(3, Reads(errno.EINTR, b"x", errno.EAGAIN)), (b"x", None))

    def test_endOfFileAfterData(self):
        """
        Bytes read before a 0-byte read are kept, and the end is reported.
        """
        self.assertEqual(readBatch(3, Reads(b"last", b"")), (b"last", b""))

    def test_errorAfterData(self):
        data, end = readBatch(3, Reads(b"last", errno.EIO))
        self.assertEqual(data, b"last")
        self.assertIsInstance(end, OSError)
        self.assertEqual(end.errno, errno.EIO)

    def test_limit(self):
        """
        At most about C{limit} bytes: the batch stops once it has them, and
        what is left waits for the next call.
        """
        chunk = b"z" * 4096
        reads = Reads(*([chunk] * 40))
        data, end = readBatch(3, reads, limit=BATCH_LIMIT)
        self.assertEqual(len(data), BATCH_LIMIT)
        self.assertIsNone(end)
        self.assertEqual(len(reads.script), 40 - BATCH_LIMIT // 4096)
