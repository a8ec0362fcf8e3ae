"""
The distribution a packager gets: an sdist and a wheel built from the
checkout pass C{twine check}, carry the licence, and the sdist holds
everything its tests need, so the unit suite runs from the unpacked sdist
(the prokshy it imports is the sdist's own).

Real builds (C{python -m build --no-isolation}, with the test extras'
setuptools, wheel, build and twine); a few tens of seconds.
"""

import glob
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

from twisted.trial import unittest

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: What the sdist must carry beyond the packages (issue 11, section 8).
SDIST_MUST_HAVE = [
    "LICENSE",
    "README.md",
    "tox.ini",
    "setup.cfg",
    "pyproject.toml",
    "tests/__init__.py",
    "tests/harness.py",
    "tests/fakes.py",
    "tests/hostharness.py",
    "tests/unit/__init__.py",
    "tests/system/__init__.py",
    "etc/rc.d/prokshy",
    "docs/protocol.md",
    "docs/architecture.md",
    "docs/performance.md",
    "bench/run.py",
    "vmtest/run",
    "prokshy/examples/command.d/sysinfo",
    "twisted/plugins/prokshy_plugins.py",
]


def _run(argv, **kwargs):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


_BUILT = []


def _build():
    """
    Build the sdist and the wheel once per test process (trial has no
    class fixtures): (the output directory, the build's result).
    """
    if not _BUILT:
        out = tempfile.mkdtemp(prefix="prokshy-dist-")
        result = _run(
            [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", out, CHECKOUT],
            cwd=out,
            timeout=600,
        )
        _BUILT.append((out, result))
    return _BUILT[0]


class DistributionTests(unittest.TestCase):
    timeout = 900

    def built(self, pattern):
        out, result = _build()
        self.assertEqual(result.returncode, 0, result.stdout[-3000:])
        [path] = glob.glob(os.path.join(out, pattern))
        return path

    def test_twineCheck(self):
        """
        C{twine check} passes both files (metadata, the README as the long
        description).
        """
        files = [self.built("*.tar.gz"), self.built("*.whl")]
        check = _run([sys.executable, "-m", "twine", "check"] + files, timeout=120)
        self.assertEqual(check.returncode, 0, check.stdout)
        self.assertEqual(check.stdout.count("PASSED"), 2, check.stdout)

    def test_sdistContents(self):
        """
        The sdist holds the licence, the test helpers, C{etc/}, the docs,
        the bench, the real-VM test and C{tox.ini}, and no build debris.
        """
        with tarfile.open(self.built("*.tar.gz")) as tar:
            top = tar.getnames()[0].split("/")[0]
            names = {n[len(top) + 1:] for n in tar.getnames()}
        missing = [n for n in SDIST_MUST_HAVE if n not in names]
        self.assertEqual(missing, [])
        debris = [n for n in names if "__pycache__" in n or n.startswith("_trial_temp") or n.endswith(".pyc")]
        self.assertEqual(debris, [])

    def test_wheelLicenseAndMetadata(self):
        """
        The wheel carries the licence and says which Pythons it supports.
        """
        with zipfile.ZipFile(self.built("*.whl")) as whl:
            names = whl.namelist()
            [meta] = [n for n in names if n.endswith(".dist-info/METADATA")]
            metadata = whl.read(meta).decode()
        self.assertTrue([n for n in names if n.endswith("/LICENSE")], names)
        self.assertIn("License: BSD-2-Clause", metadata.replace("License-Expression:", "License:"))
        for version in ("3.9", "3.10", "3.11", "3.12", "3.13"):
            self.assertIn("Programming Language :: Python :: " + version, metadata)
        self.assertIn("Requires-Python: >=3.9", metadata)

    def test_unitTestsFromSdist(self):
        """
        The unit suite runs from the unpacked sdist, importing the sdist's
        own prokshy (not the installed one).
        """
        unpacked = tempfile.mkdtemp(prefix="prokshy-sdist-")
        with tarfile.open(self.built("*.tar.gz")) as tar:
            top = tar.getnames()[0].split("/")[0]
            tar.extractall(unpacked)
        root = os.path.join(unpacked, top)
        env = dict(os.environ, PYTHONPATH=root, PYTHONDONTWRITEBYTECODE="1")
        where = _run([sys.executable, "-c", "import prokshy; print(prokshy.__file__)"], cwd=root, env=env, timeout=60)
        self.assertTrue(where.stdout.strip().startswith(root), where.stdout)
        trial = _run(
            [sys.executable, "-m", "twisted.trial", "--temp-directory", os.path.join(unpacked, "_trial_temp"),
             "tests.unit"],
            cwd=root,
            env=env,
            timeout=600,
        )
        self.assertEqual(trial.returncode, 0, trial.stdout[-3000:])
        self.assertIn("PASSED", trial.stdout.splitlines()[-1])
