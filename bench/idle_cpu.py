#!/usr/bin/env python3
"""
Measure what an idle guest agent costs while no host is connected.

A L{DeviceTransport} runs on a "host away" fd for N seconds: a socketpair
whose peer is closed, which like a Linux virtio port with no host answers
read() == 0 and polls POLLIN|POLLHUP for ever.  Prints the CPU seconds used
per wall-clock second (getrusage, user + system) and how often the fd was
read.  C{--no-backoff} probes every reactor turn instead, for comparison.

Usage: python bench/idle_cpu.py [SECONDS] [--no-backoff]
"""

import argparse
import os
import resource
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import reactor  # noqa: E402
from twisted.internet.protocol import Protocol  # noqa: E402

from prokshy.transport.device import DeviceTransport  # noqa: E402


def cpuSeconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("seconds", nargs="?", type=float, default=5.0)
    parser.add_argument("--no-backoff", action="store_true",
                        help="probe with no delay (what a spinning agent costs)")
    options = parser.parse_args(argv)

    ours, peer = socket.socketpair()
    peer.close()
    reads = [0]

    class Counting(DeviceTransport):
        def _read(self, fd, size):
            reads[0] += 1
            return os.read(fd, size)

    if options.no_backoff:
        Counting.awayInitialDelay = Counting.awayMaxDelay = 0
    protocol = Protocol()
    transport = Counting(protocol, ours.detach(), "host-away-socketpair", reactor)

    result = {}

    def start():
        result["wall"], result["cpu"] = time.monotonic(), cpuSeconds()
        reactor.callLater(options.seconds, stop)

    def stop():
        result["wall"] = time.monotonic() - result["wall"]
        result["cpu"] = cpuSeconds() - result["cpu"]
        result["reads"] = reads[0]
        transport.abortConnection()
        reactor.stop()

    reactor.callWhenRunning(start)
    reactor.run()
    print("%.1f s host away%s: %d reads, %.4f CPU s in %.2f s = %.5f CPU s/s (%.3f%% of a core)" % (
        options.seconds,
        " (no backoff)" if options.no_backoff else "",
        result["reads"],
        result["cpu"],
        result["wall"],
        result["cpu"] / result["wall"],
        100 * result["cpu"] / result["wall"],
    ))


if __name__ == "__main__":
    main()
