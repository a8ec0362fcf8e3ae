"""
Packaging: an installed (non-editable) prokshy exposes its twistd plugins,
its console scripts and its sample commands.  Run under tox, which installs
the wheel; run from a bare checkout, these tests fail and say so.
"""

import os
import subprocess
import sys
import tempfile
from importlib import metadata

from twisted.trial import unittest

_PROBE = r"""
import json, sys
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor
import prokshy
names = sorted(p.tapname for p in getPlugins(IServiceMaker))
parsers = sorted(p.prefix for p in getPlugins(IStreamClientEndpointStringParserWithReactor))
print(json.dumps({"taps": names, "parsers": parsers, "prokshy": prokshy.__file__}))
"""


CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _distribution():
    """
    The installed prokshy distribution: not the C{prokshy.egg-info} that a
    build leaves in the checkout (on C{sys.path} when tests run from it),
    whose file list is the checkout's, not the installation's.
    """
    checkout = os.path.realpath(CHECKOUT)
    path = [p for p in sys.path if p and os.path.realpath(p) != checkout]
    found = [d for d in metadata.distributions(path=path) if d.metadata["Name"] == "prokshy"]
    return found[0] if found else None


class InstalledPackageTests(unittest.TestCase):
    def setUp(self):
        self.dist = _distribution()
        if self.dist is None:
            self.fail("prokshy is not installed: run the tests with tox (see README)")

    def files(self):
        return {str(f).replace(os.sep, "/") for f in (self.dist.files or [])}

    def test_pluginFileInstalled(self):
        """
        The wheel ships twisted/plugins/prokshy_plugins.py, and no
        twisted/plugins/__init__.py that would hide Twisted's own plugins.
        """
        files = self.files()
        self.assertIn("twisted/plugins/prokshy_plugins.py", files)
        self.assertNotIn("twisted/plugins/__init__.py", files)

    def test_notEditable(self):
        """
        The installation is a real copy, not a link back to the checkout.
        """
        import json

        direct = json.loads(self.dist.read_text("direct_url.json") or "{}")
        self.assertFalse(direct.get("dir_info", {}).get("editable", False), direct)

    def test_pluginsFoundFromInstallation(self):
        """
        In a fresh interpreter, outside the checkout and with no PYTHONPATH,
        twistd finds prokshy-guest and prokshy-host and the vtcon: parser,
        and prokshy is imported from the installation.
        """
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        cwd = tempfile.mkdtemp(prefix="prokshy-pkg-")
        self.addCleanup(os.rmdir, cwd)
        out = subprocess.run(
            [sys.executable, "-c", _PROBE], cwd=cwd, env=env, capture_output=True, timeout=60
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        import json

        found = json.loads(out.stdout.decode().strip().splitlines()[-1])
        self.assertIn("prokshy-guest", found["taps"])
        self.assertIn("prokshy-host", found["taps"])
        self.assertIn("vtcon", found["parsers"])
        checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        source = os.path.join(checkout, "prokshy") + os.sep
        self.assertFalse(found["prokshy"].startswith(source), found["prokshy"])

    def test_everyModuleInstalled(self):
        """
        Every module of the checkout's C{prokshy/} package is in the
        installation (a package missing from setup.cfg's list would be
        importable from the checkout only).
        """
        checkout = CHECKOUT
        files = self.files()
        missing = []
        for directory, dirs, names in os.walk(os.path.join(checkout, "prokshy")):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
            for name in names:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(directory, name), checkout).replace(os.sep, "/")
                    if rel not in files:
                        missing.append(rel)
        self.assertEqual(missing, [])

    def test_consoleScripts(self):
        """
        The console scripts are declared.
        """
        names = {ep.name for ep in self.dist.entry_points if ep.group == "console_scripts"}
        wanted = {"prokshy", "prokshy-vmsim", "prokshy-demo", "prokshy-guest-setup"}
        self.assertEqual(wanted, names & wanted)

    def test_sampleCommands(self):
        """
        The sample commands travel with the package (the demo uses them).
        """
        files = self.files()
        for name in ("sysinfo", "statgrab", "fileio"):
            self.assertIn("prokshy/examples/command.d/" + name, files)

    def test_serviceTemplates(self):
        """
        The rc.d script and the systemd unit travel with the package:
        C{prokshy-guest-setup} fills them in from there.
        """
        files = self.files()
        self.assertIn("prokshy/examples/rc.d/prokshy", files)
        self.assertIn("prokshy/examples/systemd/prokshy-guest.service", files)
