"""
L{plainOptionHelp}: an C{opt_*} method's docstring as one paragraph in
C{--help}.  Twisted's L{twisted.python.usage.Options} wraps a handler's
docstring as it is, so its line ends and indentation show as runs of
blanks in the middle of the text.
"""


def plainOptionHelp(cls):
    """
    A class decorator for an L{twisted.python.usage.Options} subclass: the
    docstrings of the C{opt_*} methods it defines itself, reflowed into one
    line each (Twisted wraps them to the terminal).

    @return: C{cls}.
    """
    for name, method in vars(cls).items():
        if name.startswith("opt_") and getattr(method, "__doc__", None):
            method.__doc__ = " ".join(method.__doc__.split())
    return cls


__all__ = ["plainOptionHelp"]
