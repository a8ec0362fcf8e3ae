"""
L{CodedError}: an exception with a short machine-readable C{code} (a
refusal or reset code of docs/protocol.md, or a C{--json} C{failure}) and a
one-line C{message} for people.
"""


class CodedError(Exception):
    """
    @ivar code: a short lowercase reason, e.g. C{not-allowed}.
    @ivar message: one line naming what failed and why.
    """

    def __init__(self, code, message):
        Exception.__init__(self, code, message)
        self.code = code
        self.message = message

    def __str__(self):
        return "%s: %s" % (self.code, self.message)


__all__ = ["CodedError"]
