# -*- test-case-name: tests.unit.test_files_guest,tests.system.test_files -*-
"""
The guest's C{file-put} and C{file-get} stream handlers (feature C{files};
docs/protocol.md), under the rules of L{prokshy.files.rules} (the agent's
C{--allow-files} directories).

A file-get stream::

    host -> guest   OPEN {"kind": "file-get", "path": P}
    guest -> host   REFUSE {"code": not-allowed | no-such-file | not-a-file |
                    file-error | bad-open, "message": ...}, or ACCEPT (the
                    file is opened before: the check and the open see the
                    same file)
    guest -> host   DATA: {"size": N, "mode": M, "mtime": T} LF, then the
                    file's bytes (read CHUNK bytes at a time, paused with the
                    stream), EOF, EXIT {"size": N2, "sha256": HEX}, CLOSE

A file-put stream::

    host -> guest   OPEN {"kind": "file-put", "path": P, "mode"?, "mtime"?, "size"?}
    guest -> host   REFUSE (as file-get; no-such-file: the directory is
                    missing), or ACCEPT once the temporary file
                    .NAME.prokshy-RANDOM (O_EXCL, 0600) exists beside P
    host -> guest   DATA ... EOF, SIGNAL {"signal": "commit", "size": N, "sha256": HEX}
    guest -> host   (all data written and the commit in) fsync, compare; a
                    match: chmod, utime, rename over P, EOF,
                    EXIT {"size": N, "sha256": HEX}, CLOSE; a mismatch:
                    RESET checksum-mismatch; a write or rename failure:
                    RESET file-error.  A stream that ends any other way
                    (RESET, session end) removes the temporary file.

The SIGNAL is delivered on arrival, even while earlier DATA waits (a
relaying daemon can pass it ahead), so a put commits once it has both its
EOF and the commit, in either order.  L{FilePutProtocol} is an Automat
state machine: C{receiving} (data is written to the temporary file as it
comes), C{drained} (EOF in, waiting for the commit), C{committing} (the
commit in, waiting for the rest of the data and EOF) and C{done}.  There
are no timers (a host that goes away ends the stream, which removes the
file).  Every (state, input) pair is declared; an empty output list
ignores the input on purpose (it is too late, or cannot come there)::

    committing  commitArrived  -> done        _duplicateCommit
    committing  dataArrived    -> committing  _write
    committing  eofArrived     -> done        _finishHeld
    committing  failed         -> done        _fail
    committing  lost           -> done        _discard
    done        commitArrived  -> done
    done        dataArrived    -> done
    done        eofArrived     -> done
    done        failed         -> done
    done        lost           -> done
    drained     commitArrived  -> done        _finishNow
    drained     dataArrived    -> drained
    drained     eofArrived     -> drained
    drained     failed         -> done        _fail
    drained     lost           -> done        _discard
    receiving   commitArrived  -> committing  _holdCommit
    receiving   dataArrived    -> receiving   _write
    receiving   eofArrived     -> drained
    receiving   failed         -> done        _fail
    receiving   lost           -> done        _discard
"""

import os

from automat import MethodicalMachine
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from prokshy import _machines
from prokshy.files.rules import (
    CHECKSUM_MISMATCH,
    FILE_ERROR,
    FILE_KINDS,
    FileRefused,
    FileRules,
)
from prokshy.files.source import CHUNKS_PER_TURN, FileSource
from prokshy.files.wire import (
    Digest,
    encodeHeader,
    exitDocument,
    parseCommit,
    parseGetArgs,
    parsePutArgs,
)
from prokshy.streams.interfaces import ISignalStreamProtocol, IStreamProtocol
from prokshy.streams.stream import StreamRefused
from prokshy.wire import frames

#: The feature the guest's hello lists for these kinds.
FILES_FEATURE = "files"

_log = Logger()


def currentUmask():
    """
    The agent's umask (read and put back).
    """
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@_machines.fast
@implementer(IStreamProtocol, ISignalStreamProtocol)
class FilePutProtocol(Protocol):
    """
    Receives one file into its temporary file and commits it (the machine
    in the module docstring).

    @ivar target: the L{prokshy.files.rules.PutTarget}.
    @ivar request: the L{prokshy.files.wire.PutRequest}.
    """

    log = _log
    _machine = MethodicalMachine()

    def __init__(self, target, request, fd, defaultMode):
        self.target = target
        self.request = request
        self.fd = fd
        self.mode = request.mode if request.mode is not None else defaultMode
        self.digest = Digest()
        self._commit = None

    # -- states -----------------------------------------------------------

    @_machine.state(initial=True)
    def receiving(self):
        "Data is written to the temporary file as it comes."

    @_machine.state()
    def drained(self):
        "The host's EOF came: waiting for its commit."

    @_machine.state()
    def committing(self):
        "The commit came: waiting for the rest of the data and the EOF."

    @_machine.state()
    def done(self):
        "Committed, or failed (the temporary file removed)."

    # -- inputs -----------------------------------------------------------

    @_machine.input()
    def dataArrived(self, data):
        "DATA from the host."

    @_machine.input()
    def eofArrived(self):
        "EOF from the host: no more data."

    @_machine.input()
    def commitArrived(self, size, sha256):
        "The host's commit SIGNAL: what it sent."

    @_machine.input()
    def failed(self, code, message):
        "Writing failed, or the host broke the protocol."

    @_machine.input()
    def lost(self, reason):
        "The stream ended (closed, reset, or its session ended)."

    # -- outputs ----------------------------------------------------------

    @_machine.output()
    def _write(self, data):
        self.digest.update(data)
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError as e:
            self.failed(FILE_ERROR, "%s: %s" % (self.request.path, e.strerror or e))

    @_machine.output()
    def _holdCommit(self, size, sha256):
        self._commit = (size, sha256)

    @_machine.output()
    def _finishHeld(self):
        self._finish(*self._commit)

    @_machine.output()
    def _finishNow(self, size, sha256):
        self._finish(size, sha256)

    def _finish(self, size, sha256):
        ours = (self.digest.size, self.digest.hexdigest())
        if ours != (size, sha256):
            self._closeFd()
            self._end(
                CHECKSUM_MISMATCH,
                "%s: the host sent %d bytes with sha256 %s, the guest received %d bytes with "
                "sha256 %s: nothing was written" % (self.request.path, size, sha256, ours[0], ours[1]),
            )
            return
        fd, self.fd = self.fd, None
        try:
            self.target.commit(fd, self.mode, self.request.mtime)
        except FileRefused as e:
            self._end(e.code, e.message)
            return
        self.target.close()
        self.log.info(
            "file-put {path}: {size} bytes, sha256 {sha256}: ok",
            path=self.request.path, size=ours[0], sha256=ours[1],
        )
        transport = self.transport
        transport.writeEof()
        transport.sendControl(frames.EXIT, exitDocument(*ours))
        transport.loseConnection()

    @_machine.output()
    def _fail(self, code, message):
        self._closeFd()
        self._end(code, message)

    @_machine.output()
    def _duplicateCommit(self, size, sha256):
        self._closeFd()
        self._end("protocol-error", "%s: a second commit signal" % (self.request.path,))

    @_machine.output()
    def _discard(self, reason):
        self._closeFd()
        self.target.close()
        self.log.info(
            "file-put {path}: {size} bytes received, failed: the stream ended ({why}); "
            "the temporary file is removed",
            path=self.request.path, size=self.digest.size, why=reason.getErrorMessage(),
        )

    def _closeFd(self):
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def _end(self, code, message):
        self.target.close()
        self.log.info(
            "file-put {path}: {size} bytes received, failed: {code}: {why}",
            path=self.request.path, size=self.digest.size, code=code, why=message,
        )
        self.transport.abort(code, message)

    # -- the table --------------------------------------------------------

    receiving.upon(dataArrived, enter=receiving, outputs=[_write])
    receiving.upon(eofArrived, enter=drained, outputs=[])
    receiving.upon(commitArrived, enter=committing, outputs=[_holdCommit])
    receiving.upon(failed, enter=done, outputs=[_fail])
    receiving.upon(lost, enter=done, outputs=[_discard])

    # (the stream resets DATA after EOF itself)
    drained.upon(dataArrived, enter=drained, outputs=[])
    drained.upon(eofArrived, enter=drained, outputs=[])
    drained.upon(commitArrived, enter=done, outputs=[_finishNow])
    drained.upon(failed, enter=done, outputs=[_fail])
    drained.upon(lost, enter=done, outputs=[_discard])

    committing.upon(dataArrived, enter=committing, outputs=[_write])
    committing.upon(eofArrived, enter=done, outputs=[_finishHeld])
    committing.upon(commitArrived, enter=done, outputs=[_duplicateCommit])
    committing.upon(failed, enter=done, outputs=[_fail])
    committing.upon(lost, enter=done, outputs=[_discard])

    for _input in (dataArrived, eofArrived, commitArrived, failed, lost):
        done.upon(_input, enter=done, outputs=[])
    del _input

    # -- the stream's protocol ----------------------------------------------

    def dataReceived(self, data):
        self.dataArrived(data)

    def eofReceived(self):
        self.eofArrived()

    def signalReceived(self, request):
        try:
            size, sha256 = parseCommit(request)
        except ValueError as e:
            self.failed("protocol-error", "%s: %s" % (self.request.path, e))
            return
        self.commitArrived(size, sha256)

    def connectionLost(self, reason):
        self.lost(reason)


class FileGetProtocol(Protocol):
    """
    Sends one open file: the header line, its bytes (a
    L{prokshy.files.source.FileSource}, the stream's producer: at most
    C{CHUNKS_PER_TURN} chunks per reactor turn, paused while the stream is
    full), EOF, EXIT.

    It reads until the end of the file, or one chunk past the size it
    announced (a file that grows ends there: the EXIT's size then differs
    from the header's, which the host reports).
    """

    log = _log

    def __init__(self, clock, path, fd, st):
        self.clock = clock
        self.path = path
        self.fd = fd
        self.size = st.st_size
        self.header = encodeHeader(st.st_size, st.st_mode & 0o7777, st.st_mtime)
        self.digest = Digest()
        self._done = False
        self.source = FileSource(clock, fd, self._send, self._finish, self._readFailed, limit=self.size)

    def connectionMade(self):
        self.transport.write(self.header)
        self.transport.registerProducer(self.source, True)
        self.source.start()

    def _send(self, chunk):
        self.digest.update(chunk)
        self.transport.write(chunk)

    def _finish(self):
        self._done = True
        self._close()
        transport = self.transport
        transport.unregisterProducer()
        transport.writeEof()
        transport.sendControl(frames.EXIT, exitDocument(self.digest.size, self.digest.hexdigest()))
        transport.loseConnection()
        changed = "" if self.digest.size == self.size else " (it changed while read: %d bytes announced)" % (
            self.size,)
        self.log.info(
            "file-get {path}: {size} bytes, sha256 {sha256}: sent{changed}",
            path=self.path, size=self.digest.size, sha256=self.digest.hexdigest(), changed=changed,
        )

    def _readFailed(self, e):
        message = "%s: %s" % (self.path, e.strerror or e)
        self._done = True
        self._close()
        self.log.info("file-get {path}: failed: {why}", path=self.path, why=message)
        self.transport.abort(FILE_ERROR, message)

    def _close(self):
        self.source.stopProducing()
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def connectionLost(self, reason):
        if not self._done:
            self._done = True
            self._close()
            self.log.info(
                "file-get {path}: {size} bytes sent, failed: the stream ended ({why})",
                path=self.path, size=self.digest.size, why=reason.getErrorMessage(),
            )


class GuestFiles:
    """
    The guest's file streams: checks a C{file-put} or C{file-get} OPEN
    against L{FileRules} and builds its protocol, or refuses it.

    @ivar rules: the L{FileRules} (the agent's C{--allow-files}).
    """

    log = _log

    def __init__(self, clock, rules=None, umask=None):
        self.clock = clock
        self.rules = rules if rules is not None else FileRules(())
        self.defaultMode = 0o644 & ~(currentUmask() if umask is None else umask)

    def open(self, stream):
        """
        @return: the protocol for C{stream} (of a kind in L{FILE_KINDS}).
        @raise StreamRefused: the refusal (logged).
        """
        kind = stream.kind
        args = stream.args if isinstance(stream.args, dict) else {}
        try:
            if kind == "file-get":
                path = parseGetArgs(args)
                fd, st = self.rules.openForRead(path)
                return FileGetProtocol(self.clock, path, fd, st)
            request = parsePutArgs(args)
            target = self.rules.openForWrite(request.path)
            try:
                fd = target.createTemp()
            except BaseException:
                target.close()
                raise
            return FilePutProtocol(target, request, fd, self.defaultMode)
        except FileRefused as e:
            self.log.info("{kind} refused: {code}: {why}", kind=kind, code=e.code, why=e.message)
            raise StreamRefused(e.code, e.message)


__all__ = ["CHUNKS_PER_TURN", "FILES_FEATURE", "FILE_KINDS", "FileGetProtocol", "FilePutProtocol", "GuestFiles"]
