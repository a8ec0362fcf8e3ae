# -*- test-case-name: tests.unit.test_files_wire -*-
"""
What the C{file-put} and C{file-get} streams carry (docs/protocol.md),
with no I/O:

  - the OPEN arguments: C{file-put} C{{"path", "mode"?, "mtime"?,
    "size"?}}, C{file-get} C{{"path"}} (L{parsePutArgs},
    L{parseGetArgs}; anything malformed is refused C{bad-open});
  - C{file-get}'s first DATA: one header line, JSON and LF, at most
    L{HEADER_MAX} bytes, C{{"size", "mode", "mtime"}} (L{encodeHeader},
    L{HeaderReader});
  - C{file-put}'s SIGNAL C{{"signal": "commit", "size", "sha256"}}, the
    host's count and digest of what it sent (L{commitSignal},
    L{parseCommit});
  - both kinds' EXIT C{{"size", "sha256"}}: what the guest wrote or sent
    (L{exitDocument}, L{parseExit});
  - the temporary file's name, C{.NAME.prokshy-RANDOM} (L{tempName});
  - the running byte count and sha256 (L{Digest}).
"""

import binascii
import hashlib
import json
import math
import os
import re

#: Bytes read from a file at a time.
CHUNK = 65536
#: The longest header line of a file-get, LF included.
HEADER_MAX = 4096
#: The signal name of file-put's commit.
COMMIT = "commit"
#: The largest mtime accepted (seconds from the epoch; year 5138).
MTIME_MAX = 1e11
#: Bytes of a file name (NAME_MAX) and of the random part of a temporary name.
NAME_MAX = 255
_RANDOM_BYTES = 6
_SUFFIX = ".prokshy-"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _refused(message):
    from prokshy.files.rules import BAD_OPEN, FileRefused

    return FileRefused(BAD_OPEN, message)


def _isInt(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _isNumber(value):
    return (_isInt(value) or isinstance(value, float)) and math.isfinite(value)


class PutRequest:
    """
    A C{file-put} OPEN's arguments.

    @ivar path: the guest path.
    @ivar mode: permission bits (0..0o777), or None (0o644 less the umask).
    @ivar mtime: seconds from the epoch, or None (now).
    @ivar size: the size the host announced, or None.
    """

    def __init__(self, path, mode=None, mtime=None, size=None):
        self.path, self.mode, self.mtime, self.size = path, mode, mtime, size

    def __repr__(self):
        return "PutRequest(%r, mode=%r, mtime=%r, size=%r)" % (self.path, self.mode, self.mtime, self.size)


def _path(args):
    path = args.get("path")
    if not isinstance(path, str) or not path:
        raise _refused("a file stream needs a path (a non-empty string)")
    return path


def parsePutArgs(args):
    """
    @return: a L{PutRequest}.
    @raise FileRefused: C{bad-open}.
    """
    path = _path(args)
    mode = args.get("mode")
    if mode is not None and not (_isInt(mode) and 0 <= mode <= 0o777):
        raise _refused("mode must be an integer from 0 to 0o777 (511)")
    mtime = args.get("mtime")
    if mtime is not None and not (_isNumber(mtime) and abs(mtime) <= MTIME_MAX):
        raise _refused("mtime must be a finite number of seconds from the epoch")
    size = args.get("size")
    if size is not None and not (_isInt(size) and size >= 0):
        raise _refused("size must be an integer of 0 or more")
    return PutRequest(path, mode, mtime, size)


def parseGetArgs(args):
    """
    @return: the path.
    @raise FileRefused: C{bad-open}.
    """
    return _path(args)


def encodeHeader(size, mode, mtime):
    """
    The header line of a file-get, as bytes (JSON + LF).
    """
    line = json.dumps({"size": size, "mode": mode, "mtime": mtime}, separators=(",", ":"), sort_keys=True)
    return line.encode("ascii") + b"\n"


class HeaderError(ValueError):
    """
    A file-get's header line is too long or malformed.
    """


class HeaderReader:
    """
    Reads a file-get's header line from the first DATA.

    @ivar header: the header (a dict with C{size}, C{mode}, C{mtime}) once
        read, else None.
    """

    def __init__(self):
        self.header = None
        self._buffer = b""

    def feed(self, data):
        """
        @return: the bytes after the header (the file's first bytes), or
            C{b""} while the header is still incomplete.
        @raise HeaderError: longer than L{HEADER_MAX} without LF, or not
            the expected JSON.
        """
        if self.header is not None:
            return data
        buffer = self._buffer + data
        end = buffer.find(b"\n", 0, HEADER_MAX)
        if end < 0:
            if len(buffer) >= HEADER_MAX:
                raise HeaderError("no header line in the first %d bytes" % (HEADER_MAX,))
            self._buffer = buffer
            return b""
        self._buffer = b""
        try:
            header = json.loads(buffer[:end].decode("utf-8"))
        except ValueError:
            raise HeaderError("the header line is not JSON")
        if not isinstance(header, dict):
            raise HeaderError("the header line is not a JSON object")
        size, mode, mtime = header.get("size"), header.get("mode"), header.get("mtime")
        if not (_isInt(size) and size >= 0):
            raise HeaderError("the header's size is not a count of bytes")
        if not (_isInt(mode) and 0 <= mode <= 0o7777):
            raise HeaderError("the header's mode is not a file mode")
        if not _isNumber(mtime):
            raise HeaderError("the header's mtime is not a number")
        self.header = {"size": size, "mode": mode, "mtime": mtime}
        return buffer[end + 1:]


def commitSignal(size, sha256):
    """
    file-put's SIGNAL: what the host sent.
    """
    return {"signal": COMMIT, "size": size, "sha256": sha256}


def _sizeAndDigest(obj, what):
    if not isinstance(obj, dict):
        raise ValueError("%s is not a JSON object" % (what,))
    size, digest = obj.get("size"), obj.get("sha256")
    if not (_isInt(size) and size >= 0):
        raise ValueError("%s has no size" % (what,))
    if not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
        raise ValueError("%s has no sha256 (64 lower-case hex digits)" % (what,))
    return size, digest


def parseCommit(obj):
    """
    @return: (size, sha256) of a commit SIGNAL.
    @raise ValueError: not a commit SIGNAL, or malformed.
    """
    if not isinstance(obj, dict) or obj.get("signal") != COMMIT:
        raise ValueError("not a commit signal")
    return _sizeAndDigest(obj, "the commit signal")


def exitDocument(size, sha256):
    """
    The EXIT of a file stream: what the guest wrote (file-put) or sent
    (file-get).
    """
    return {"size": size, "sha256": sha256}


def parseExit(obj):
    """
    @return: (size, sha256) of a file stream's EXIT.
    @raise ValueError: malformed.
    """
    return _sizeAndDigest(obj, "the EXIT")


def tempName(name, token=None):
    """
    The temporary file's name for a file named C{name}:
    C{.NAME.prokshy-RANDOM} (12 hex digits), NAME cut so that the whole
    fits L{NAME_MAX} bytes.

    @param token: the random part (tests), else from C{os.urandom}.
    """
    token = binascii.hexlify(os.urandom(_RANDOM_BYTES)).decode("ascii") if token is None else token
    room = NAME_MAX - 1 - len(_SUFFIX) - len(token)
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > room:
        raw = raw[:room]
        name = raw.decode("utf-8", "ignore")
        # (an ignored partial character leaves a name that is shorter still)
    return "." + name + _SUFFIX + token


def isTempName(name):
    """
    Whether C{name} is one of L{tempName}'s.
    """
    return name.startswith(".") and re.search(re.escape(_SUFFIX) + r"[0-9a-f]+$", name) is not None


class Digest:
    """
    A running byte count and sha256.

    @ivar size: the bytes fed so far.
    """

    def __init__(self):
        self.size = 0
        self._hash = hashlib.sha256()

    def update(self, data):
        self.size += len(data)
        self._hash.update(data)

    def hexdigest(self):
        return self._hash.hexdigest()


__all__ = [
    "CHUNK",
    "COMMIT",
    "Digest",
    "HEADER_MAX",
    "HeaderError",
    "HeaderReader",
    "PutRequest",
    "commitSignal",
    "encodeHeader",
    "exitDocument",
    "isTempName",
    "parseCommit",
    "parseExit",
    "parseGetArgs",
    "parsePutArgs",
    "tempName",
]
