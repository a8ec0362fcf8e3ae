"""
The twistd plugins' C{--help}: each C{opt_*} method's text is one
paragraph (Twisted wraps a handler's docstring as it is, so its line ends
and indentation would show as runs of blanks mid-sentence).
"""

from twisted.trial.unittest import SynchronousTestCase

from prokshy.tap import guest, host
from prokshy.tap._help import plainOptionHelp


class OptionHelpTests(SynchronousTestCase):
    def test_handlersReflowed(self):
        """
        The guest's and the daemon's handlers (C{--allow-files},
        C{--allow-connect}, C{--vm}, ...) have one-line help.
        """
        for options in (guest.Options, host.Options):
            handlers = [name for name in vars(options) if name.startswith("opt_")]
            self.assertTrue(handlers, options)
            for name in handlers:
                doc = getattr(options, name).__doc__
                self.assertNotIn("\n", doc, name)
                self.assertNotIn("  ", doc, name)

    def test_helpText(self):
        """
        In the help itself a handler's text reads on without gaps.
        """
        text = str(guest.Options())
        self.assertIn("(PORT a number, LOW-HIGH or *; IPv6 in brackets), a unix path glob, or none",
                      " ".join(text.split()))
        self.assertNotRegex(text, r"guest: HOST:PORT {2,}\(PORT")

    def test_ownHandlersOnly(self):
        """
        Only the class's own handlers are touched, not those it inherits
        (Twisted's C{--help}, C{--version}).
        """
        from twisted.python import usage

        class Base(usage.Options):
            def opt_base(self):
                """
                Base's
                own.
                """

        @plainOptionHelp
        class Derived(Base):
            def opt_mine(self):
                """
                Derived's
                own.
                """

        self.assertEqual(Derived.opt_mine.__doc__, "Derived's own.")
        self.assertIn("\n", Base.opt_base.__doc__)
