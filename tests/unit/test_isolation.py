"""
The unit tests stay unit tests: no module in C{tests/unit} touches the
real reactor, a process, a socket or a pty, or the system-test harnesses.
(Parsed with L{ast}, so lazy imports inside functions count too.)  They
run on L{twisted.internet.task.Clock}, L{twisted.internet.testing} and
L{prokshy.testing} alone.
"""

import ast
import os

from twisted.trial.unittest import TestCase

HERE = os.path.dirname(os.path.abspath(__file__))

#: Modules a unit test may not import (or import from).
FORBIDDEN_MODULES = {"subprocess", "socket", "pty", "tests.harness", "tests.hostharness", "twisted.internet.reactor"}
#: Names a unit test may not import from anywhere.
FORBIDDEN_NAMES = {"reactor"}
#: Calls that start real I/O.
FORBIDDEN_CALLS = {"spawnProcess", "fork", "openpty", "posix_spawn", "listenTCP", "listenUNIX", "connectTCP", "connectUNIX"}


def violations(source, filename="<test>"):
    """
    What in C{source} a unit test may not do, as one line each.
    """
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in FORBIDDEN_MODULES or alias.name.split(".")[0] in FORBIDDEN_MODULES:
                    found.append("line %d: import %s" % (node.lineno, alias.name))
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            for alias in node.names:
                if module in FORBIDDEN_MODULES or module.split(".")[0] in FORBIDDEN_MODULES or alias.name in FORBIDDEN_NAMES:
                    found.append("line %d: from %s import %s" % (node.lineno, module, alias.name))
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_CALLS:
            found.append("line %d: .%s" % (node.lineno, node.attr))
    return found


class IsolationTests(TestCase):
    def test_unitModules(self):
        problems = []
        names = sorted(n for n in os.listdir(HERE) if n.startswith("test_") and n.endswith(".py"))
        self.assertGreater(len(names), 10)
        for name in names:
            if name == "test_isolation.py":
                continue
            with open(os.path.join(HERE, name), encoding="utf-8") as f:
                problems += ["%s %s" % (name, v) for v in violations(f.read(), name)]
        self.assertEqual(problems, [])

    def test_checker(self):
        """
        The checker catches each kind of escape.
        """
        self.assertEqual(
            violations(
                "from twisted.internet import reactor\n"
                "import subprocess\n"
                "from tests.hostharness import HostHarness\n"
                "def f(r):\n"
                "    r.spawnProcess(None, 'x')\n"
            ),
            [
                "line 1: from twisted.internet import reactor",
                "line 2: import subprocess",
                "line 3: from tests.hostharness import HostHarness",
                "line 5: .spawnProcess",
            ],
        )
        self.assertEqual(violations("from twisted.internet.task import Clock\n"), [])
