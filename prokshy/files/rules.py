# -*- test-case-name: tests.unit.test_files_rules -*-
"""
Which guest paths the agent's C{--allow-files DIR} directories make
reachable, and the refusals (docs/protocol.md, the C{file-put} and
C{file-get} kinds).  No reactor: system calls only.

A path is reachable only if, after resolution with no escape, it is inside
some DIR:

  - it is absolute, holds no NUL and no C{..} component (C{.} and empty
    components are dropped);
  - the longest DIR that is a prefix of it (component by component) is
    the base; nothing but what follows DIR is resolved, one component at a
    time, each directory opened relative to its parent's descriptor with
    C{O_NOFOLLOW} (an C{openat} walk), after an C{lstat} that refuses a
    symbolic link: so no symbolic link anywhere below DIR is ever
    followed, and what was checked is what is opened (a component swapped
    for a link between the check and the open fails the open);
  - DIR itself is not a symbolic link (checked at start-up by
    L{checkAllowDir} and again, with C{O_NOFOLLOW}, at each open), and DIR
    and every directory below it on the way are owned by root or the
    agent's user and are neither group- nor world-writable (a sticky bit
    does not make one acceptable);
  - the file itself, if it exists, is a regular file (not a symbolic link,
    a directory, a fifo, a socket or a device) and is neither group- nor
    world-writable.

The refusal codes (L{FileRefused}; each message names the path and the
reason, in one line):

    code           when
    -------------  ----------------------------------------------------------
    not-allowed    no --allow-files directory, outside every one, a ..
                   component, a symbolic link on the way or at the end,
                   group- or world-writable, not owned by root or the agent
    no-such-file   file-get: the file does not exist; both: a directory on
                   the way does not exist (or is not a directory)
    not-a-file     the path names a directory, a fifo, a socket or a device
    file-error     any other OSError (the message says strerror and the path)
    bad-open       the OPEN's arguments are malformed (L{prokshy.files.wire})
"""

import errno
import os
import posixpath
import stat

from prokshy._coded import CodedError
from prokshy.files.wire import tempName

FILE_KINDS = ("file-put", "file-get")

NOT_ALLOWED = "not-allowed"
NO_SUCH_FILE = "no-such-file"
NOT_A_FILE = "not-a-file"
FILE_ERROR = "file-error"
CHECKSUM_MISMATCH = "checksum-mismatch"
BAD_OPEN = "bad-open"

#: The longest path accepted, in bytes of UTF-8 (PATH_MAX).
PATH_MAX = 4096

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_DIR_FLAGS = os.O_RDONLY | _O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC
#: errnos of an open with O_NOFOLLOW that met a symbolic link (FreeBSD
#: says EMLINK, Linux ELOOP; O_DIRECTORY on a non-directory: ENOTDIR).
_LINK_ERRNOS = (errno.ELOOP, errno.EMLINK, errno.ENOTDIR)
_TEMP_ATTEMPTS = 8


class FileRefused(CodedError):
    """
    A file stream refused (before ACCEPT: REFUSE) or failed (after: RESET).

    @ivar code: one of the codes of the module docstring.
    @ivar message: one line naming the path and the reason.
    """


def _kind(mode):
    """
    What a non-regular file is, for a message.
    """
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a fifo"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _components(path, what="path"):
    """
    The components of an absolute path, without empty or C{.} ones.

    @raise FileRefused: C{bad-open} (not a string, NUL, too long) or
        C{not-allowed} (relative, C{..}).
    """
    if not isinstance(path, str) or not path:
        raise FileRefused(BAD_OPEN, "the %s must be a non-empty string" % (what,))
    if "\0" in path:
        raise FileRefused(BAD_OPEN, "%r: a path cannot hold NUL" % (path,))
    try:
        size = len(path.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        raise FileRefused(BAD_OPEN, "%r: not a valid path" % (path,))
    if size > PATH_MAX:
        raise FileRefused(BAD_OPEN, "a path of %d bytes (the limit is %d)" % (size, PATH_MAX))
    if not path.startswith("/"):
        raise FileRefused(NOT_ALLOWED, "%s: not an absolute path" % (path,))
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if ".." in parts:
        raise FileRefused(NOT_ALLOWED, "%s: a '..' component is not allowed" % (path,))
    return parts


def _join(parts):
    return "/" + "/".join(parts)


def checkAllowDir(path, uid=None):
    """
    Check one C{--allow-files DIR} at start-up: an absolute path of an
    existing directory that is not a symbolic link, owned by root or
    C{uid}, neither group- nor world-writable.

    @return: the path, normalised (no trailing C{/}, no C{.} or empty
        components).
    @raise ValueError: with a one-line message, for anything else.
    """
    uid = os.geteuid() if uid is None else uid
    try:
        parts = _components(path, "directory")
    except FileRefused as e:
        raise ValueError("--allow-files %s" % (e.message,))
    norm = _join(parts)
    try:
        st = os.lstat(norm)
    except FileNotFoundError:
        raise ValueError("--allow-files %s: no such directory" % (norm,))
    except OSError as e:
        raise ValueError("--allow-files %s: %s" % (norm, e.strerror or e))
    if stat.S_ISLNK(st.st_mode):
        raise ValueError(
            "--allow-files %s is a symbolic link: give the directory itself (%s)"
            % (norm, os.path.realpath(norm))
        )
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError("--allow-files %s: not a directory (%s)" % (norm, _kind(st.st_mode)))
    problem = _unsafe(st, uid)
    if problem:
        raise ValueError("--allow-files %s %s" % (norm, problem))
    return norm


def _unsafe(st, uid):
    """
    Why a directory (or a file) on the way is not acceptable, or None.
    """
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "is group- or world-writable (mode %04o)" % (stat.S_IMODE(st.st_mode),)
    if stat.S_ISDIR(st.st_mode) and st.st_uid not in (0, uid):
        return "is owned by uid %d, not by root or the agent's user (uid %d)" % (st.st_uid, uid)
    return None


class PutTarget:
    """
    Where a C{file-put} writes: the open directory that holds the file,
    and the file's name in it.  The temporary file, its rename over the
    target and its removal all work relative to that directory's
    descriptor, so nothing is resolved again.

    @ivar path: the target's path (as asked).
    @ivar name: its last component.
    @ivar exists: whether a file of that name was there when checked.
    """

    def __init__(self, dirFd, name, path, exists):
        self.dirFd = dirFd
        self.name = name
        self.path = path
        self.exists = exists
        self.tempName = None

    def createTemp(self, token=None):
        """
        Create the temporary file beside the target (C{O_EXCL}, mode 0600,
        named L{prokshy.files.wire.tempName}).

        @return: its descriptor (open for writing).
        @raise FileRefused: C{file-error}.
        """
        for _ in range(_TEMP_ATTEMPTS):
            name = tempName(self.name, token)
            try:
                fd = os.open(
                    name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _O_CLOEXEC,
                    0o600,
                    dir_fd=self.dirFd,
                )
            except FileExistsError:
                if token is not None:
                    break
                continue
            except OSError as e:
                raise _fileError(self.path, e, "cannot create a temporary file beside it")
            self.tempName = name
            return fd
        raise FileRefused(FILE_ERROR, "%s: cannot create a temporary file beside it" % (self.path,))

    def commit(self, fd, mode, mtime):
        """
        Finish the temporary file (its descriptor C{fd}, closed here):
        C{mode}, C{mtime} (or None), fsync, then rename it over the target
        (atomic) and fsync the directory.

        @raise FileRefused: C{file-error} (the temporary file is then
            still there: call L{discard}).
        """
        try:
            try:
                os.fchmod(fd, mode)
                if mtime is not None:
                    os.utime(fd, (mtime, mtime))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(self.tempName, self.name, src_dir_fd=self.dirFd, dst_dir_fd=self.dirFd)
        except OSError as e:
            raise _fileError(self.path, e)
        self.tempName = None
        try:
            os.fsync(self.dirFd)
        except OSError:
            pass  # some file systems cannot sync a directory; the rename stands

    def discard(self):
        """
        Remove the temporary file, if any (idempotent).
        """
        name, self.tempName = self.tempName, None
        if name is not None:
            try:
                os.unlink(name, dir_fd=self.dirFd)
            except OSError:
                pass

    def close(self):
        """
        Remove the temporary file if it is still there, and close the
        directory.
        """
        self.discard()
        fd, self.dirFd = self.dirFd, None
        if fd is not None:
            os.close(fd)


def _fileError(path, e, what=None):
    reason = e.strerror or str(e)
    if what:
        reason = "%s: %s" % (what, reason)
    return FileRefused(FILE_ERROR, "%s: %s" % (path, reason))


class FileRules:
    """
    The agent's C{--allow-files} directories and the walk of the module
    docstring.

    @ivar dirs: the directories (normalised by L{checkAllowDir}).
    @ivar uid: the agent's user (directories may be owned by it or root).
    """

    def __init__(self, dirs=(), uid=None):
        self.uid = os.geteuid() if uid is None else uid
        self.dirs = tuple(_join(_components(d, "directory")) for d in dirs)
        # Longest first: the deepest DIR containing a path is its base.
        self._bases = sorted(
            ((d, _components(d)) for d in self.dirs), key=lambda b: len(b[1]), reverse=True
        )

    def _base(self, path):
        """
        @return: (the base DIR, the components below it).
        """
        parts = _components(path)
        if not self._bases:
            raise FileRefused(NOT_ALLOWED, "%s: no --allow-files directory on the guest" % (path,))
        for base, baseParts in self._bases:
            if parts[: len(baseParts)] == baseParts:
                rest = parts[len(baseParts):]
                if not rest:
                    raise FileRefused(
                        NOT_A_FILE, "%s: is an --allow-files directory, not a file" % (path,)
                    )
                return base, rest
        raise FileRefused(
            NOT_ALLOWED,
            "%s: not inside an --allow-files directory (%s)" % (path, ", ".join(self.dirs)),
        )

    def _openDir(self, dirFd, name, where, path):
        """
        Open the directory C{name} (relative to C{dirFd}, or absolute when
        C{dirFd} is None) without following a link, and check it.

        @param where: its path, for messages.
        """
        try:
            st = os.stat(name, dir_fd=dirFd, follow_symlinks=False)
        except FileNotFoundError:
            raise FileRefused(NO_SUCH_FILE, "%s: no such directory %s" % (path, where))
        except OSError as e:
            raise _fileError(path, e)
        if stat.S_ISLNK(st.st_mode):
            raise FileRefused(NOT_ALLOWED, "%s: %s is a symbolic link" % (path, where))
        if not stat.S_ISDIR(st.st_mode):
            raise FileRefused(NO_SUCH_FILE, "%s: %s is not a directory" % (path, where))
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=dirFd)
        except OSError as e:
            if e.errno in _LINK_ERRNOS:
                raise FileRefused(NOT_ALLOWED, "%s: %s is a symbolic link" % (path, where))
            raise _fileError(path, e)
        try:
            st = os.fstat(fd)
            problem = None if stat.S_ISDIR(st.st_mode) else "is not a directory"
            problem = problem or _unsafe(st, self.uid)
        except BaseException:
            os.close(fd)
            raise
        if problem:
            os.close(fd)
            raise FileRefused(NOT_ALLOWED, "%s: %s %s" % (path, where, problem))
        return fd

    def _walk(self, path):
        """
        Open the directory holding C{path}'s file, checking each step.

        @return: (its descriptor, the file's name in it).
        """
        base, rest = self._base(path)
        fd = self._openDir(None, base, base, path)
        where = base
        try:
            for part in rest[:-1]:
                where = posixpath.join(where, part)
                child = self._openDir(fd, part, where, path)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd, rest[-1]

    def _checkFile(self, dirFd, name, path, mustExist):
        """
        The file's C{lstat}, checked; None when it does not exist and need
        not.
        """
        try:
            st = os.stat(name, dir_fd=dirFd, follow_symlinks=False)
        except FileNotFoundError:
            if mustExist:
                raise FileRefused(NO_SUCH_FILE, "%s: no such file" % (path,))
            return None
        except OSError as e:
            raise _fileError(path, e)
        if stat.S_ISLNK(st.st_mode):
            raise FileRefused(NOT_ALLOWED, "%s: is a symbolic link" % (path,))
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(NOT_A_FILE, "%s: is %s, not a regular file" % (path, _kind(st.st_mode)))
        problem = _unsafe(st, self.uid)
        if problem:
            raise FileRefused(NOT_ALLOWED, "%s: %s" % (path, problem))
        return st

    def openForRead(self, path):
        """
        Open the file C{path} for a C{file-get}.

        @return: (its descriptor, its C{fstat}).
        @raise FileRefused: see the module docstring.
        """
        dirFd, name = self._walk(path)
        try:
            self._checkFile(dirFd, name, path, True)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _O_CLOEXEC, dir_fd=dirFd)
            except OSError as e:
                if e.errno in _LINK_ERRNOS:
                    raise FileRefused(NOT_ALLOWED, "%s: is a symbolic link" % (path,))
                raise _fileError(path, e)
        finally:
            os.close(dirFd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FileRefused(NOT_A_FILE, "%s: is %s, not a regular file" % (path, _kind(st.st_mode)))
            problem = _unsafe(st, self.uid)
            if problem:
                raise FileRefused(NOT_ALLOWED, "%s: %s" % (path, problem))
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def openForWrite(self, path):
        """
        Check C{path} for a C{file-put}: its directory exists and is
        reachable, and the file, if there, may be replaced.

        @return: a L{PutTarget} (close it when done).
        @raise FileRefused: see the module docstring.
        """
        dirFd, name = self._walk(path)
        try:
            st = self._checkFile(dirFd, name, path, False)
        except BaseException:
            os.close(dirFd)
            raise
        return PutTarget(dirFd, name, path, st is not None)


__all__ = [
    "BAD_OPEN",
    "CHECKSUM_MISMATCH",
    "FILE_ERROR",
    "FILE_KINDS",
    "FileRefused",
    "FileRules",
    "NOT_ALLOWED",
    "NOT_A_FILE",
    "NO_SUCH_FILE",
    "PATH_MAX",
    "PutTarget",
    "checkAllowDir",
]
