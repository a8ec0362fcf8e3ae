"""
The raw channel, with the agent stopped: what the virtio-serial port itself
carries in this boot, for the throughput rows' baselines.

    python3 raw.py N

Opens /dev/virtio-ports/prokshy (retrying while the old agent still holds
it), drops whatever input was left over, then:
  guest->host: writes "\\nRAWSTART N\\n" and N zero bytes (32 KiB writes, the
  most a virtio port takes per write);
  host->guest: writes "\\nRAWREADY\\n", reads N bytes (64 KiB reads), and
  writes "\\nRAWDONE <count>\\n".
Bounded: gives up after 120 s.
"""

import os
import sys
import time

from port import openPort, writeAll

n = int(sys.argv[1])
deadline = time.monotonic() + 120

fd = openPort(deadline)


writeAll(fd, b"\nRAWSTART %d\n" % n)
block = bytes(32768)
left = n
while left:
    left -= os.write(fd, block[: min(left, len(block))])
writeAll(fd, b"\nRAWREADY\n")
got = 0
while got < n and time.monotonic() < deadline:
    data = os.read(fd, 65536)
    if not data:
        time.sleep(0.01)  # the host is not connected
        continue
    got += len(data)
writeAll(fd, b"\nRAWDONE %d\n" % got)
os.close(fd)
