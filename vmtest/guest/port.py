"""
What the guest's measuring scripts (raw.py, floor.py) share: opening the
virtio-serial port once the agent has let go of it, with the input left
over from before dropped, and writing all of a buffer to it.
"""

import errno
import os
import time

PORT = "/dev/virtio-ports/prokshy"


def openPort(deadline):
    """
    Open L{PORT}, retrying while another program (the old agent) still
    holds it (EBUSY) until C{deadline} (C{time.monotonic()}); drop the
    input waiting on it.

    @return: the blocking file descriptor.
    """
    while True:
        try:
            fd = os.open(PORT, os.O_RDWR)
            break
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    os.set_blocking(fd, False)
    while True:
        try:
            if not os.read(fd, 65536):
                break
        except BlockingIOError:
            break
    os.set_blocking(fd, True)
    return fd


def writeAll(fd, data):
    """
    Write all of C{data} to C{fd}, 32 KiB at a time (the most a virtio
    port takes per write).
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:32768]):]
