"""
File push and pull (the C{file-put} and C{file-get} stream kinds, feature
C{files}): what both ends share, with no reactor.

  - L{prokshy.files.rules}: which guest paths the agent's C{--allow-files}
    directories make reachable, resolved component by component with no
    escape, and the refusals (codes and one-line messages);
  - L{prokshy.files.wire}: the OPEN arguments, the header line of
    C{file-get}, the C{commit} SIGNAL of C{file-put}, the EXIT, the
    temporary file names and the running sha256 (L{Digest}).
"""

from prokshy.files.rules import (
    BAD_OPEN,
    CHECKSUM_MISMATCH,
    FILE_ERROR,
    FILE_KINDS,
    NO_SUCH_FILE,
    NOT_A_FILE,
    NOT_ALLOWED,
    FileRefused,
    FileRules,
    checkAllowDir,
)
from prokshy.files.wire import (
    CHUNK,
    HEADER_MAX,
    Digest,
    HeaderReader,
    commitSignal,
    encodeHeader,
    exitDocument,
    parseCommit,
    parseExit,
    parseGetArgs,
    parsePutArgs,
    tempName,
)

__all__ = [
    "BAD_OPEN",
    "CHECKSUM_MISMATCH",
    "CHUNK",
    "Digest",
    "FILE_ERROR",
    "FILE_KINDS",
    "FileRefused",
    "FileRules",
    "HEADER_MAX",
    "HeaderReader",
    "NOT_ALLOWED",
    "NOT_A_FILE",
    "NO_SUCH_FILE",
    "checkAllowDir",
    "commitSignal",
    "encodeHeader",
    "exitDocument",
    "parseCommit",
    "parseExit",
    "parseGetArgs",
    "parsePutArgs",
    "tempName",
]
