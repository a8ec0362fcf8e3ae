"""
The full-size load test of the host daemon: 500 framed clients, all
connected at once, x 20 commands each (10,000 real spawns through two
simulated VMs), every output and exit status checked byte for byte.

The test suite runs the same test at a smaller size (see
C{tests/system/test_load.py}); this runs it at full size and prints what it
measured (time, execs/s, daemon RSS growth):

    python bench/load.py [--clients 500] [--commands 20]
"""

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--commands", type=int, default=20)
    args = parser.parse_args(argv)
    env = dict(os.environ, PROKSHY_LOAD_CLIENTS=str(args.clients), PROKSHY_LOAD_COMMANDS=str(args.commands))
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    return subprocess.call(
        [sys.executable, "-m", "twisted.trial", "tests.system.test_load"], cwd=ROOT, env=env
    )


if __name__ == "__main__":
    sys.exit(main())
