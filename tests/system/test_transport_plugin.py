# -*- test-case-name: tests.system.test_transport_plugin -*-
"""
Tests for the C{vtcon:} endpoint string parser plugin.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from prokshy.transport.endpoints import VtconClientEndpoint
from prokshy.transport.plugin import vtconEndpointParser

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ParserTests(TestCase):
    def parse(self, description):
        endpoint = clientFromString(reactor, description)
        self.assertIsInstance(endpoint, VtconClientEndpoint)
        return endpoint.path, endpoint.baudrate

    def test_interfaces(self):
        self.assertTrue(verifyObject(IPlugin, vtconEndpointParser))
        self.assertTrue(
            verifyObject(IStreamClientEndpointStringParserWithReactor, vtconEndpointParser)
        )
        self.assertEqual(vtconEndpointParser.prefix, "vtcon")

    def test_found(self):
        """
        Twisted's plugin scan finds the parser (through
        C{twisted/plugins/prokshy_plugins.py}).
        """
        prefixes = [p.prefix for p in getPlugins(IStreamClientEndpointStringParserWithReactor)]
        self.assertIn("vtcon", prefixes)

    def test_pathKeyword(self):
        self.assertEqual(self.parse("vtcon:path=/dev/x"), ("/dev/x", 115200))

    def test_pathPositional(self):
        self.assertEqual(self.parse("vtcon:/dev/vtcon/prokshy"), ("/dev/vtcon/prokshy", 115200))

    def test_baudrate(self):
        self.assertEqual(self.parse("vtcon:/dev/ttyu1:baudrate=9600"), ("/dev/ttyu1", 9600))
        self.assertEqual(self.parse("vtcon:path=/dev/ttyu1:baudrate=9600"), ("/dev/ttyu1", 9600))
        self.assertEqual(self.parse("vtcon:/dev/ttyu1:57600"), ("/dev/ttyu1", 57600))

    def test_escapedColon(self):
        self.assertEqual(
            self.parse(r"vtcon:path=/dev/virtio-ports/org.prokshy\:0"),
            ("/dev/virtio-ports/org.prokshy:0", 115200),
        )

    def test_errors(self):
        for description, message in [
            ("vtcon:", "a device path is required"),
            ("vtcon:baudrate=9600", "a device path is required"),
            ("vtcon:/dev/x:baudrate=fast", "baudrate must be an integer"),
            ("vtcon:/dev/x:baudrate=0", "baudrate must be positive"),
            ("vtcon:/dev/x:speed=9600", "unsupported key 'speed'"),
            ("vtcon:/dev/x:path=/dev/y", "path given twice"),
            ("vtcon:/dev/x:9600:1", "3 value(s) without a key=, but the vtcon: endpoint takes only path, baudrate"),
        ]:
            error = self.assertRaises(ValueError, clientFromString, reactor, description)
            self.assertIn(message, str(error), description)

    def test_errorsAreOneLine(self):
        """
        Every error is one line that starts with the prefix.
        """
        for description in ("vtcon:", "vtcon:/dev/x:speed=1", "vtcon:a:b:c:d", "vtcon:/x:baudrate=x"):
            error = self.assertRaises(ValueError, clientFromString, reactor, description)
            self.assertTrue(str(error).startswith("vtcon: "), str(error))
            self.assertNotIn("\n", str(error))

    def test_unknownOptionNamesTheKnownOnes(self):
        """
        The error for an unknown option lists the options the schema knows.
        """
        error = self.assertRaises(
            ValueError, clientFromString, reactor, "vtcon:/dev/x:speed=9600:parity=none"
        )
        self.assertEqual(
            str(error), "vtcon: unsupported key 'speed'; the vtcon: endpoint takes path, baudrate"
        )

    def test_schemaIsTheSignature(self):
        """
        The parser's C{_parseClient} signature is the schema: its parameters
        after the reactor are the options, in positional order, with their
        defaults (as Twisted's C{tcp6:} server parser does it).
        """
        import inspect

        parameters = inspect.signature(vtconEndpointParser._parseClient).parameters
        self.assertEqual(list(parameters), ["reactor", "path", "baudrate"])
        self.assertEqual(parameters["baudrate"].default, "115200")
        endpoint = vtconEndpointParser.parseStreamClient(reactor, "/dev/y", baudrate="57600")
        self.assertEqual((endpoint.path, endpoint.baudrate), ("/dev/y", 57600))

    def test_cheapImport(self):
        """
        Importing the plugin module (done by every plugin scan) does not
        import the endpoint, pyserial or a reactor.
        """
        code = (
            "import sys, prokshy.transport.plugin\n"
            "heavy = ['prokshy.transport.endpoints', 'prokshy.transport.device',"
            " 'serial', 'termios', 'twisted.internet.reactor']\n"
            "print([m for m in heavy if m in sys.modules])\n"
        )
        env = dict(os.environ, PYTHONPATH=REPO)
        output = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, check=True
        ).stdout
        self.assertEqual(output.strip(), b"[]")
