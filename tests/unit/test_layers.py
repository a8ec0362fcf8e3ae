"""
The layer order of prokshy's packages, checked from the imports of every
module (parsed with L{ast}, so lazy imports inside functions count too).

    1 wire < 2 link < 3 streams < 4 execs < 5 {lines, forward, files} < 6 transport
      < 7 {guest, host} < 8 {sim, cli, tap, demo, testing, plugins}

A module imports only from lower layers and from its own package.  The
transport (the guest's device) sits below the guest agent that runs on it.
The packages of layer 7 do not import each other (L{SIDEWAYS} would list a
declared exception; there is none).  The top layer may import within itself (the demo runs the
taps).  C{prokshy/_*.py} helpers (C{_version}, C{_machines}, ...) may be
imported from anywhere and import no package of prokshy themselves.
"""

from __future__ import annotations

import ast
import os
from typing import Dict, Iterable, List, Set, Tuple

from twisted.trial import unittest

import prokshy

#: The layer of each package (a top-level module such as C{demo.py} counts
#: as a package of its own).
LAYERS: Dict[str, int] = {
    "wire": 1,
    "link": 2,
    "streams": 3,
    "execs": 4,
    "lines": 5,
    "forward": 5,
    "files": 5,
    "transport": 6,
    "guest": 7,
    "host": 7,
    "sim": 8,
    "cli": 8,
    "tap": 8,
    "demo": 8,
    "testing": 8,
    "plugins": 8,
}

#: Declared imports between packages of the same layer 7: none.
SIDEWAYS: Set[Tuple[str, str]] = set()

_HERE = os.path.dirname(os.path.abspath(prokshy.__file__))
_ROOT = os.path.dirname(_HERE)
_PLUGIN = os.path.join(_ROOT, "twisted", "plugins", "prokshy_plugins.py")


def moduleFiles() -> Dict[str, str]:
    """
    @return: {dotted module name: path} for every module of prokshy, and
        the twistd plugin file (as C{prokshy.plugins}).
    """
    found = {}
    for directory, dirs, files in os.walk(_HERE):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            parts = os.path.relpath(path, _ROOT)[: -len(".py")].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    if os.path.exists(_PLUGIN):
        found["prokshy.plugins.prokshy_plugins"] = _PLUGIN
    return found


def importsOf(module: str, path: str) -> Set[str]:
    """
    The prokshy modules (or packages) C{module} imports, anywhere in it.
    """
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    isPackage = os.path.basename(path) == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not isPackage:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # "from prokshy import x" imports the module prokshy.x if there is one.
            names = [prefix] + ["%s.%s" % (prefix, alias.name) for alias in node.names]
        else:
            continue
        found.update(n for n in names if n == "prokshy" or n.startswith("prokshy."))
    return found


def packageOf(module: str) -> str:
    """
    C{prokshy.guest.runner} -> C{guest}; C{prokshy.demo} -> C{demo};
    C{prokshy._version} -> C{_version}; C{prokshy} -> C{prokshy}.
    """
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def isHelper(package: str) -> bool:
    return package.startswith("_") or package == "prokshy"


def violations(graph: Dict[str, Iterable[str]], known: Iterable[str]) -> List[str]:
    """
    @param graph: {module: the prokshy names it imports}.
    @param known: the names that are modules (so that C{from prokshy.x
        import name} counts as an import of C{prokshy.x} only).
    @return: one line per import that breaks the layer order.
    """
    known = set(known)
    problems = []
    for module, imported in sorted(graph.items()):
        package = packageOf(module)
        if not isHelper(package) and package not in LAYERS:
            problems.append("%s: package %r has no layer (add it to LAYERS)" % (module, package))
            continue
        for name in sorted(set(imported)):
            if name not in known:
                continue
            target = packageOf(name)
            if isHelper(package):
                if not isHelper(target):
                    problems.append("%s (a helper) imports %s" % (module, name))
                continue
            if isHelper(target):
                continue
            if target == package:
                continue
            if target not in LAYERS:
                problems.append("%s imports %s, whose package has no layer" % (module, name))
                continue
            mine, theirs = LAYERS[package], LAYERS[target]
            if theirs > mine:
                problems.append(
                    "%s (layer %d) imports %s (layer %d, above it)" % (module, mine, name, theirs)
                )
            elif theirs == mine and mine != max(LAYERS.values()) and (module, name) not in SIDEWAYS:
                problems.append(
                    "%s imports %s: %s and %s are both layer %d" % (module, name, package, target, mine)
                )
    return problems


def importGraph() -> Tuple[Dict[str, Set[str]], Set[str]]:
    files = moduleFiles()
    return {module: importsOf(module, path) for module, path in files.items()}, set(files)


class LayerTests(unittest.TestCase):
    def test_layerOrder(self):
        """
        Every import of every module keeps the layer order.
        """
        graph, known = importGraph()
        self.assertEqual(violations(graph, known), [])

    def test_hostImportsNothingOfTheGuest(self):
        graph, known = importGraph()
        offending = sorted(
            (module, name)
            for module, names in graph.items()
            if packageOf(module) == "host"
            for name in names
            if packageOf(name) == "guest"
        )
        self.assertEqual(offending, [])

    def test_everyModuleSeen(self):
        """
        The walk finds the modules of every layer, lazy imports included.
        """
        graph, known = importGraph()
        packages = {packageOf(m) for m in known}
        for package in ("wire", "link", "streams", "execs", "lines", "transport", "guest", "host"):
            self.assertIn(package, packages)
        # makeService imports the agent inside the function.
        self.assertIn("prokshy.guest.agent", graph["prokshy.tap.guest"])

    def test_sidewaysStillNeeded(self):
        """
        The declared exceptions are real imports (a stale one is removed).
        """
        graph, known = importGraph()
        for module, name in SIDEWAYS:
            self.assertIn(name, graph.get(module, ()), (module, name))


class CheckerTests(unittest.TestCase):
    """
    The checker itself catches each kind of violation.
    """

    known = {
        "prokshy",
        "prokshy._version",
        "prokshy.wire.frames",
        "prokshy.link.session",
        "prokshy.execs.status",
        "prokshy.lines.protocol",
        "prokshy.guest.runner",
        "prokshy.host.legacy",
        "prokshy.transport.device",
        "prokshy.tap.guest",
        "prokshy.demo",
    }

    def check(self, graph):
        return violations(graph, self.known | set(graph))

    def test_fine(self):
        self.assertEqual(
            self.check(
                {
                    "prokshy.link.session": {"prokshy._version", "prokshy.wire.frames", "prokshy.wire"},
                    "prokshy.host.legacy": {"prokshy.lines.protocol", "prokshy.execs.status"},
                    "prokshy.demo": {"prokshy.tap.guest", "prokshy"},
                    "prokshy": {"prokshy._version"},
                }
            ),
            [],
        )

    def test_upward(self):
        self.assertEqual(
            self.check({"prokshy.wire.frames": {"prokshy.link.session"}}),
            ["prokshy.wire.frames (layer 1) imports prokshy.link.session (layer 2, above it)"],
        )

    def test_sideways(self):
        self.assertEqual(
            self.check({"prokshy.host.legacy": {"prokshy.guest.runner"}}),
            ["prokshy.host.legacy imports prokshy.guest.runner: host and guest are both layer 7"],
        )

    def test_linesBelowGuest(self):
        self.assertEqual(
            self.check({"prokshy.lines.protocol": {"prokshy.guest.runner"}}),
            ["prokshy.lines.protocol (layer 5) imports prokshy.guest.runner (layer 7, above it)"],
        )

    def test_helperImportsNothing(self):
        self.assertEqual(
            self.check({"prokshy._version": {"prokshy.wire.frames"}}),
            ["prokshy._version (a helper) imports prokshy.wire.frames"],
        )

    def test_unknownPackage(self):
        self.assertEqual(
            self.check({"prokshy.newthing.x": set()}),
            ["prokshy.newthing.x: package 'newthing' has no layer (add it to LAYERS)"],
        )

    def test_relativeImports(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("from . import frames\nfrom ..link import session\n")
        self.assertEqual(
            importsOf("prokshy.wire.x", path),
            {"prokshy.wire", "prokshy.wire.frames", "prokshy.link", "prokshy.link.session"},
        )
