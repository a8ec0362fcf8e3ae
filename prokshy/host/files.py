# -*- test-case-name: tests.system.test_files,tests.unit.test_files_host -*-
"""
The host's end of the C{file-put} and C{file-get} streams (feature
C{files}; docs/protocol.md; the guest's end is L{prokshy.guest.files}).

    handle = yield startPush(reactor, session, "/srv/in/a.bin", fd, mode=0o644)
    result = yield handle.result          # a FileResult, verified end to end

    target = LocalFile("/tmp/a.bin")      # a temporary file beside it, renamed at the end
    handle = yield startPull(reactor, session, "/srv/out/a.bin", target)
    result = yield handle.result

A push reads its descriptor a chunk at a time while the stream has room,
hashing what it sends; after EOF it sends the C{commit} SIGNAL (its count
and sha256), and the guest's EXIT must say the same.  A pull reads the
header line, then writes the file's bytes to its sink as they come
(flow control: a sink that pauses the stream holds the guest back), and
on EXIT compares the guest's count and sha256 with its own.  Any
difference fails the transfer with L{FileFailed} (C{checksum-mismatch},
or C{file-changed} when the guest read a size other than it announced)
and leaves the target as it was.
"""

import os
import stat

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from prokshy._coded import CodedError
from prokshy.files.rules import CHECKSUM_MISMATCH
from prokshy.files.source import FileSource
from prokshy.files.wire import (
    Digest,
    HeaderError,
    HeaderReader,
    commitSignal,
    parseExit,
    tempName,
)
from prokshy.streams.interfaces import IExecStreamProtocol, IStreamProtocol
from prokshy.wire import frames

#: The code of a pull whose file changed size while the guest read it.
FILE_CHANGED = "file-changed"


class FileFailed(CodedError):
    """
    A transfer the host found wrong (the guest's own failures come as
    L{prokshy.streams.stream.StreamReset} with its code).

    @ivar code: C{checksum-mismatch}, C{file-changed}, C{protocol-error},
        C{transport} or C{local-file}.
    @ivar message: one line.
    """

    def __str__(self):
        return self.message


@attrs.frozen
class FileResult:
    """
    A file moved and verified.

    @ivar size: its bytes.
    @ivar sha256: their sha256 (hex).
    @ivar mode: the source's permission bits (a pull: the guest file's).
    @ivar mtime: the source's modification time (seconds).
    """

    size: int
    sha256: str
    mode: int = None
    mtime: float = None


@implementer(IExecStreamProtocol, IStreamProtocol)
class _Client(Protocol):
    """
    The opener's protocol of a file stream: hands DATA to C{onData}, keeps
    the EXIT, and fires C{ended} with it (or fails with why the stream
    ended otherwise).
    """

    def __init__(self, onData=None):
        self.onData = onData
        self.exit = None
        self.eof = False
        self.ended = Deferred()

    def dataReceived(self, data):
        if self.onData is not None:
            self.onData(data)

    def stderrReceived(self, data):
        pass

    def eofReceived(self):
        self.eof = True

    def exitReceived(self, obj):
        self.exit = obj

    def connectionLost(self, reason):
        if reason.check(ConnectionDone):
            if self.exit is None:
                self.ended.errback(FileFailed("transport", "the stream closed without a result"))
            else:
                self.ended.callback(self.exit)
        else:
            self.ended.errback(reason)


class Transfer:
    """
    A push or pull under way.

    @ivar stream: its stream.
    @ivar result: a Deferred firing with a L{FileResult}, or failing with
        L{FileFailed}, L{prokshy.streams.stream.StreamReset} (the guest's
        C{file-error}, C{checksum-mismatch}, ...) or
        L{prokshy.link.session.SessionEnded}.
    """

    def __init__(self, stream, result, onCancel=None):
        self.stream = stream
        self.result = result
        self._onCancel = onCancel

    def cancel(self):
        """
        Abort the transfer: the guest removes its temporary file (a pull's
        local one is removed too).
        """
        if not self.stream.ended:
            self.stream.abort("cancelled", "cancelled by the client")
        if self._onCancel is not None:
            self._onCancel()


@implementer(IPushProducer)
def _source(reactor, fd, write, onEnd, onError):
    """
    The producer reading C{fd}, a regular file: L{FileSource}.

    @raise ValueError: C{fd} is not a regular file (a pipe, a terminal:
        the caller gives C{startPush} a C{makeSource} for those).
    """
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise ValueError("not a regular file: give startPush a makeSource for a pipe or a terminal")
    return FileSource(reactor, fd, write, onEnd, onError)


def _checked(exit, digest, what):
    """
    The EXIT's (size, sha256), compared with ours.

    @raise FileFailed: malformed or different.
    """
    try:
        size, sha256 = parseExit(exit)
    except ValueError as e:
        raise FileFailed("protocol-error", "the guest's %s: %s" % (what, e))
    if (size, sha256) != (digest.size, digest.hexdigest()):
        raise FileFailed(
            CHECKSUM_MISMATCH,
            "checksum mismatch: the guest %s %d bytes with sha256 %s, the host %s %d bytes with sha256 %s"
            % (what, size, sha256, "sent" if what == "wrote" else "received", digest.size, digest.hexdigest()),
        )
    return size, sha256


def startPush(reactor, session, remote, fd, mode=None, mtime=None, size=None, vm=None, onProgress=None,
              makeSource=_source):
    """
    Push the file open on C{fd} to the guest's C{remote}.

    @param mode: permission bits for the new file (None: the guest's
        default, 0o644 less its umask).
    @param mtime: the modification time to give it (None: now).
    @param size: the size, if known (the guest may check its space).
    @param vm: with a daemon, the VM.
    @param onProgress: called with each chunk's length as it is sent.
    @param makeSource: C{makeSource(reactor, fd, write, onEnd, onError)}
        -> the push producer reading C{fd} (default: L{FileSource}, for a
        regular file).
    @return: a Deferred firing with a L{Transfer} once the guest accepted
        (failing with L{prokshy.streams.stream.StreamRefused}); the file is
        read from then on.
    """
    args = {"path": remote}
    for key, value in (("mode", mode), ("mtime", mtime), ("size", size), ("vm", vm)):
        if value is not None:
            args[key] = value
    client = _Client()
    digest = Digest()
    result = Deferred()
    failure = []

    def accepted(stream):
        def write(data):
            digest.update(data)
            stream.write(data)
            if onProgress is not None:
                onProgress(len(data))

        def end():
            stream.unregisterProducer()
            stream.writeEof()
            stream.sendControl(frames.SIGNAL, commitSignal(digest.size, digest.hexdigest()))

        def error(e):
            failure.append(FileFailed("local-file", "cannot read the local file: %s" % (e.strerror or e,)))
            stream.unregisterProducer()
            stream.abort("cancelled", "the host could not read its file")

        source = makeSource(reactor, fd, write, end, error)
        stream.registerProducer(source, True)
        source.start()
        return Transfer(stream, result, source.stopProducing)

    def ended(exit):
        size, sha256 = _checked(exit, digest, "wrote")
        return FileResult(size, sha256, mode, mtime)

    def lost(f):
        if failure:
            return failure[0]
        return f

    client.ended.addCallbacks(ended, lost).chainDeferred(result)
    d = session.mux.openStream("file-put", args, client)
    d.addCallback(accepted)
    return d


class LocalFile:
    """
    A pull's local target: a temporary file beside C{path}
    (C{.NAME.prokshy-RANDOM}, C{O_EXCL}, mode 0600), renamed over it once
    the transfer is verified; removed otherwise.

    @ivar path: the target.
    """

    def __init__(self, path):
        self.path = path
        self.fd = None
        self.tempPath = None

    def open(self):
        """
        Create the temporary file.

        @raise OSError: the directory is missing or not writable.
        """
        directory, name = os.path.split(os.path.abspath(self.path))
        for _ in range(8):
            temp = os.path.join(directory, tempName(name))
            try:
                self.fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                  | getattr(os, "O_CLOEXEC", 0), 0o600)
            except FileExistsError:
                continue
            self.tempPath = temp
            return self
        raise FileExistsError("cannot create a temporary file in %s" % (directory,))

    def header(self, header):
        pass

    def write(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def commit(self, mode, mtime):
        """
        Give the file C{mode} (and C{mtime} unless None), fsync, rename.
        """
        fd, self.fd = self.fd, None
        try:
            os.fchmod(fd, mode & 0o777)
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(self.tempPath, self.path)
        self.tempPath = None
        try:
            dirFd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:
                os.fsync(dirFd)
            finally:
                os.close(dirFd)
        except OSError:
            pass

    def discard(self):
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
        temp, self.tempPath = self.tempPath, None
        if temp is not None:
            try:
                os.unlink(temp)
            except OSError:
                pass


def startPull(reactor, session, remote, sink, vm=None, preserve=False, onProgress=None):
    """
    Pull the guest's C{remote} into C{sink}.

    @param sink: a L{LocalFile} (opened), or any object with C{header(h)},
        C{write(data)}, C{commit(mode, mtime)} and C{discard()} (stdout:
        commit and discard do nothing).
    @param preserve: give the local file the remote one's mtime.
    @return: a Deferred firing with a L{Transfer} once the guest accepted
        (failing with L{prokshy.streams.stream.StreamRefused}).
    """
    args = {"path": remote}
    if vm is not None:
        args["vm"] = vm
    reader = HeaderReader()
    digest = Digest()
    failure = []
    streams = []

    def fail(e):
        if not failure:
            failure.append(e)
            sink.discard()
            if streams and not streams[0].ended:
                streams[0].abort("cancelled", e.message)

    def onData(data):
        if failure:
            return
        if reader.header is None:
            try:
                data = reader.feed(data)
            except HeaderError as e:
                fail(FileFailed("protocol-error", "the guest's header: %s" % (e,)))
                return
            if reader.header is None:
                return
            sink.header(reader.header)
        if data:
            digest.update(data)
            try:
                sink.write(data)
            except OSError as e:
                fail(FileFailed("local-file", "cannot write %s: %s" % (getattr(sink, "path", "the output"),
                                                                         e.strerror or e)))
                return
            if onProgress is not None:
                onProgress(len(data))

    client = _Client(onData)
    result = Deferred()

    def ended(exit):
        if failure:
            raise failure[0]
        header = reader.header
        if header is None:
            sink.discard()
            raise FileFailed("protocol-error", "the guest sent no header line")
        try:
            size, sha256 = _checked(exit, digest, "sent")
        except FileFailed:
            sink.discard()
            raise
        if size != header["size"]:
            sink.discard()
            raise FileFailed(
                FILE_CHANGED,
                "%s: the file changed while it was read (%d bytes announced, %d read): run it again"
                % (remote, header["size"], size),
            )
        try:
            sink.commit(header["mode"], header["mtime"] if preserve else None)
        except OSError as e:
            sink.discard()
            raise FileFailed("local-file", "cannot write %s: %s" % (getattr(sink, "path", "the output"),
                                                                      e.strerror or e))
        return FileResult(size, sha256, header["mode"] & 0o7777, header["mtime"])

    def lost(f):
        sink.discard()
        if failure:
            return failure[0]
        return f

    client.ended.addCallbacks(ended, lost).chainDeferred(result)

    def accepted(stream):
        streams.append(stream)
        return Transfer(stream, result, sink.discard)

    def refused(f):
        sink.discard()
        return f

    d = session.mux.openStream("file-get", args, client)
    d.addCallbacks(accepted, refused)
    return d


__all__ = ["FILE_CHANGED", "FileFailed", "FileResult", "FileSource", "LocalFile", "Transfer", "startPull",
           "startPush"]
