"""
The floor of "Python (+ Twisted) on this port", with the agent stopped: how
much guest CPU a plain reader or writer spends per byte on the
virtio-serial port, for comparison with the agent's (vmtest/profile).

    python3 floor.py MODE N

MODE is one of
  osread   blocking os.read(fd, 65536) loop, N bytes host->guest;
  twread   Twisted (the default reactor) with prokshy's DeviceTransport and
           a protocol that counts and discards, N bytes host->guest;
  oswrite  blocking os.write of 32 KiB blocks, N bytes guest->host;
  twwrite  Twisted with DeviceTransport and a streaming producer writing
           64 KiB blocks (transport.write), N bytes guest->host.

Protocol on the port (markers written with blocking writes on a dup of the
fd): "\\nFLOORSTART MODE N\\n"; for the write modes the N bytes follow at
once; for the read modes the host sends N bytes after the marker; then
"\\nFLOORDONE {json}\\n" with the process's user and system CPU seconds
(os.times) and the wall seconds of the transfer, the number of reads and
their size histogram (read modes). Bounded: gives up after 300 s.
"""

import collections
import json
import os
import sys
import time

from port import PORT, openPort, writeAll

mode, n = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 300

if mode.startswith("tw"):
    from twisted.internet import reactor
    from twisted.internet.protocol import Protocol
    from prokshy.transport.device import DeviceTransport

fd = openPort(deadline)
marker = os.dup(fd)


sizes = collections.Counter()
reads = [0]
result = {"mode": mode, "n": n}

writeAll(marker, b"\nFLOORSTART %s %d\n" % (mode.encode(), n))
c0, t0 = os.times(), time.monotonic()

if mode == "osread":
    got = 0
    while got < n and time.monotonic() < deadline:
        data = os.read(fd, 65536)
        if not data:
            time.sleep(0.01)
            continue
        reads[0] += 1
        sizes[len(data)] += 1
        got += len(data)
    result["got"] = got
elif mode == "oswrite":
    block = bytes(32768)
    left = n
    while left:
        left -= os.write(fd, block[: min(left, len(block))])
elif mode == "twread":
    got = [0]
    batches = collections.Counter()

    def countingRead(f, size):
        data = os.read(f, size)
        reads[0] += 1
        sizes[len(data)] += 1
        return data

    class Discard(Protocol):
        def dataReceived(self, data):
            batches[len(data) >> 12 << 12] += 1
            got[0] += len(data)
            if got[0] >= n:
                reactor.stop()

    t = DeviceTransport(Discard(), fd, PORT, reactor)
    t._read = countingRead
    reactor.callLater(deadline - time.monotonic(), reactor.stop)
    reactor.run()
    result["got"] = got[0]
    result["dataReceived_by_4KiB"] = sorted(batches.items())
elif mode == "twwrite":
    sent = [0]
    block = bytes(65536)

    class Writer(Protocol):
        def connectionMade(self):
            self.paused = False
            self.transport.registerProducer(self, True)
            self.resumeProducing()

        def pauseProducing(self):
            self.paused = True

        def stopProducing(self):
            self.paused = True

        def resumeProducing(self):
            self.paused = False
            while not self.paused and sent[0] < n:
                piece = block[: n - sent[0]]
                self.transport.write(piece)
                sent[0] += len(piece)
            if sent[0] >= n:
                self.transport.unregisterProducer()
                self.transport.loseConnection()

        def connectionLost(self, reason):
            reactor.stop()

    t = DeviceTransport(Writer(), fd, PORT, reactor)
    reactor.callLater(deadline - time.monotonic(), reactor.stop)
    reactor.run()
    result["sent"] = sent[0]
else:
    raise SystemExit("floor.py: unknown mode %r" % (mode,))

c1, t1 = os.times(), time.monotonic()
result.update(user=round(c1.user - c0.user, 3), sys=round(c1.system - c0.system, 3), wall=round(t1 - t0, 3),
              reads=reads[0], read_sizes=sorted(sizes.items(), key=lambda kv: -kv[1])[:8])
writeAll(marker, b"\nFLOORDONE " + json.dumps(result).encode() + b"\n")
os.close(marker)
try:
    os.close(fd)
except OSError:
    pass
