"""
The README's two commands: one runs the demo, one runs the tests.  Both must
work when pasted into a fresh shell on a PEP 668 system (Debian 12's
/usr/bin/python3 refuses a system-wide C{pip install}), so every pip they run
belongs to a virtual environment they create inside the checkout, and neither
writes to a fixed path in a world-writable directory.  CI runs the README's
test command itself (C{.ci/run}), so the two cannot drift apart.
"""

import importlib.util
import os
import re

from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _readmeCommand():
    spec = importlib.util.spec_from_file_location("readme_command", os.path.join(ROOT, ".ci", "readme_command.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.command


class ReadmeCommandTests(TestCase):
    def setUp(self):
        self.readme = os.path.join(ROOT, "README.md")
        if not os.path.exists(self.readme) or not os.path.exists(os.path.join(ROOT, ".ci", "readme_command.py")):
            raise self.skipTest("not run from a checkout")
        self.command = _readmeCommand()

    def test_exactlyTwoCommands(self):
        """
        The README has exactly two pasteable C{sh} blocks, each one line (the
        other examples there are plain blocks: they name paths of your own).
        """
        text = open(self.readme, encoding="utf-8").read()
        blocks = re.findall(r"```sh\n(.*?)\n```", text, re.S)
        self.assertEqual(blocks, [self.command(self.readme, "demo"), self.command(self.readme, "test")])

    def _venvs(self, cmd):
        return [v[2:] if v.startswith("./") else v for v in re.findall(r"python3 -m venv (\S+)", cmd)]

    def test_noSystemWidePip(self):
        """
        Every pip or tox a command runs comes from a venv the same command
        creates: nothing is installed with the system's interpreter.
        """
        for which in ("demo", "test"):
            cmd = self.command(self.readme, which)
            venvs = self._venvs(cmd)
            self.assertTrue(venvs, cmd)
            self.assertNotRegex(cmd, r"python3 -m pip\b")
            for tool in re.findall(r"(\S*)\b(?:pip|tox|prokshy-demo)\b(?= )", cmd + " "):
                self.assertIn(tool.rstrip("/").rsplit("/bin", 1)[0], venvs, (which, cmd))

    def test_noFixedWorldWritablePath(self):
        """
        Neither command writes to a fixed path under /tmp or /var/tmp: the
        venvs live in the checkout (relative paths), and are git-ignored.
        """
        ignored = open(os.path.join(ROOT, ".gitignore")).read().split()
        for which in ("demo", "test"):
            cmd = self.command(self.readme, which)
            self.assertNotRegex(cmd, r"(^|\s)/(tmp|var/tmp|dev/shm)/")
            for venv in self._venvs(cmd):
                self.assertFalse(os.path.isabs(venv), venv)
                self.assertIn("/%s/" % (venv,), ignored)

    def test_ciRunsTheReadmeTestCommand(self):
        """
        C{.ci/run} takes its test command from the README.
        """
        run = open(os.path.join(ROOT, ".ci", "run")).read()
        self.assertIn("readme_command.py test", run)
        self.assertNotRegex(run, r"python3 -m pip install")

    def test_pathHint(self):
        """
        The README says what to add to PATH to use prokshy from another terminal.
        """
        text = open(self.readme, encoding="utf-8").read()
        venv = self._venvs(self.command(self.readme, "demo"))[0]
        self.assertIn('export PATH="$PWD/%s/bin:$PATH"' % (venv,), text)
