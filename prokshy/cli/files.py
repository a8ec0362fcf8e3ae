# -*- test-case-name: tests.system.test_files_cli -*-
"""
The CLI's file runs: C{prokshy --push LOCAL REMOTE} (to one VM, or to each
of several: C{--all-vms}, repeated C{--vm}) and C{prokshy --pull REMOTE
LOCAL} (from one VM), over the VM's socket or through a daemon
(L{prokshy.host.files}; the guest's end is L{prokshy.guest.files}).

  - the sha256 is checked end to end; the guest writes a temporary file
    beside REMOTE and renames it over REMOTE once it matches, and a pull
    does the same beside LOCAL (a LOCAL that is a directory gets REMOTE's
    name in it);
  - the mode is kept (the local file's permission bits for a push, the
    guest file's for a pull); C{--preserve} keeps the modification time;
  - LOCAL C{-}: stdin for a push (one VM only), stdout for a pull (the
    digest is still checked: on a mismatch the exit status says so, the
    bytes are already written);
  - nothing is printed on success unless C{--json} (one record per VM,
    L{prokshy.cli.records}, mode C{"push"} or C{"pull"}, payload C{file}:
    C{local}, C{remote}, C{size}, C{sha256}, C{mode}, C{mtime}: the
    source's mode and modification time).

Exit codes: docs/cli.md's table (L{prokshy.cli.format.CAUSES}, with
C{--reserved-exit-codes} too), per VM; several VMs combine as for exec
(L{prokshy.cli.format.combine}), messages prefixed C{vm NAME: }:

    0    moved and verified
    1    a local file cannot be read or written (C{local-file}), the
         guest could not read or write its file (C{file-error}), the
         guest's file changed while it was read (C{file-changed}), or a
         guest whose agent does not serve files (C{unsupported})
    2    usage (checked before connecting)
    126  refused: C{not-allowed} (no --allow-files on the guest, outside
         it, a symbolic link, a .. component, group- or world-writable),
         C{not-a-file} (a directory, a fifo, a device)
    127  C{no-such-file}: the remote file (pull) or the remote directory
         (push) does not exist
    255  C{checksum-mismatch} (the bytes differ end to end: nothing was
         replaced), or a transport failure (the session or stream ended)
"""

import os
import stat

from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.python.failure import Failure

from prokshy.cli import records
from prokshy.cli.format import EXIT_TRANSPORT, CLIError, exitFor, prefixed
from prokshy.cli.output import EXIT_PIPE, FlowGate
from prokshy.cli.progressrun import FileProgress
from prokshy.cli.reports import Reports
from prokshy.files.rules import (
    CHECKSUM_MISMATCH,
    FILE_ERROR,
    NO_SUCH_FILE,
    NOT_A_FILE,
    NOT_ALLOWED,
)
from prokshy.cli.input import StdinSource
from prokshy.host.files import FILE_CHANGED, FileFailed, FileSource, LocalFile, startPull, startPush
from prokshy.streams.stream import StreamError

#: The failure codes of a file run itself (their exit codes are the
#: table's: L{prokshy.cli.format.exitStatus}).
FAILURES = (NOT_ALLOWED, NOT_A_FILE, "unsupported", "bad-open", NO_SUCH_FILE, FILE_ERROR, FILE_CHANGED,
            "local-file", CHECKSUM_MISMATCH)

FEATURE = "files"


class _Failed(Exception):
    """
    One VM's transfer failed: its C{failure} code and message.
    """

    def __init__(self, failure, message):
        Exception.__init__(self, message)
        self.failure, self.message = failure, message


def checkFileOptions(parser, options):
    """
    parseArgs' checks of C{--push}, C{--pull} and C{--preserve} (a usage
    error ends the program with exit 2, before anything connects).
    """
    mode = options.mode
    if options.preserve and mode not in ("push", "pull"):
        parser.error("--preserve needs --push or --pull")
    if mode not in ("push", "pull"):
        return
    flag = "--" + mode
    for other, given in (
        ("--from-string", options.from_string is not None),
        ("--from-file", options.from_file is not None),
        ("--stdin", options.stdin),
        ("--tty", getattr(options, "tty", False)),
        ("ARG", bool(getattr(options, "args", None))),
    ):
        if given:
            parser.error("%s cannot be used with %s" % (flag, other))
    if options.protocol == "legacy":
        parser.error("%s needs the framed protocol" % (flag,))
    local, remote = (options.push if mode == "push" else reversed(options.pull))
    if not remote.startswith("/"):
        parser.error("%s: the guest path must be absolute: %r" % (flag, remote))
    if "\0" in remote or not local:
        parser.error("%s: a path cannot be empty or hold NUL" % (flag,))
    several = options.all_vms or len(options.vm or ()) > 1
    if mode == "pull" and several:
        parser.error("--pull takes one VM (one --vm)")
    if local == "-" and several:
        parser.error("--push - (stdin) takes one VM: stdin can be read only once")
    if mode == "pull" and local == "-" and options.json:
        parser.error("--pull REMOTE - writes the file to stdout: it cannot be used with --json")


class _StdoutSink:
    """
    A pull's sink for LOCAL C{-}: the CLI's stdout (commit and discard do
    nothing: the bytes are out).
    """

    path = "stdout"

    def __init__(self, stdout):
        self.stdout = stdout

    def header(self, header):
        pass

    def write(self, data):
        self.stdout.write(data)

    def commit(self, mode, mtime):
        pass

    def discard(self):
        pass


def _localSource(reactor, fd, write, onEnd, onError):
    """
    The producer reading a push's LOCAL: the host's L{FileSource} for a
    regular file; for stdin that is a pipe or a terminal, the CLI's
    non-blocking reader (L{StdinSource}).
    """
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return FileSource(reactor, fd, write, onEnd, onError)
    return StdinSource(reactor, fd, write, onEnd)


class _Announced:
    """
    A pull's sink that also gives the progress line the file's size once
    the guest's header says it.
    """

    def __init__(self, sink, line):
        self._sink = sink
        self._line = line

    def header(self, header):
        self._sink.header(header)
        size = header.get("size")
        if isinstance(size, int):
            self._line.setTotal(size)

    def write(self, data):
        self._sink.write(data)

    def commit(self, mode, mtime):
        return self._sink.commit(mode, mtime)

    def discard(self):
        self._sink.discard()


class FileRun(Reports):
    """
    What the CLI does for C{--push} or C{--pull} once a framed session is
    up.
    """

    def __init__(self, reactor, host, options, stdout, stderr, stdinFD=0):
        Reports.__init__(self, reactor, host, options, stdout, stderr)
        self.stdinFD = stdinFD
        stdout.whenLost(self._stdoutLost)

    def _stdoutLost(self, error):
        if self.outputError is None:
            self.outputError = error
            self._cancelAll()

    def _cancelAll(self):
        for transfer in self.running:
            try:
                transfer.cancel()
            except Exception:
                pass

    async def run(self):
        from prokshy.cli.legacy import OutputError

        vms = await self.targets()
        if not vms:
            raise CLIError("the daemon has no VMs", EXIT_TRANSPORT)
        mode = self.options.mode
        one = self._push if mode == "push" else self._pull
        remote = self.options.push[1] if mode == "push" else self.options.pull[0]
        toStdout = mode == "pull" and self.options.pull[1] == "-"
        self.progress = FileProgress(self.reactor, self.options, self.stdout, self.stderr, remote, toStdout=toStdout)
        self.stdout, self.stderr = self.progress.stdout, self.progress.stderr
        try:
            results = await DeferredList([ensureDeferred(self._one(one, vm)) for vm in vms], consumeErrors=True)
        finally:
            self.progress.finish(quiet=self.outputError is not None)
        recs = []
        for ok, value in results:
            if not ok:
                value.raiseException()
            recs.append(value)
        if self.outputError is not None:
            raise OutputError(self.outputError)
        return self.combined(recs)

    async def _one(self, one, vm):
        mode = self.options.mode
        local, remote = self.options.push if mode == "push" else tuple(reversed(self.options.pull))
        record = records.record(mode, vm)
        try:
            await self._checkFeature(vm)
            result, local = await one(vm, local, remote)
        except Exception as e:
            if self.outputError is not None:
                return records.failed(record, EXIT_PIPE, "stdout-closed", "stdout was closed")
            failed = _failure(Failure(e))
            if failed is None:
                raise
            return self._fail(record, failed.failure, prefixed(self._prefix(vm), failed.message))
        record.update(ok=True, status=0, file={
            "local": local, "remote": remote, "size": result.size, "sha256": result.sha256,
            "mode": result.mode, "mtime": result.mtime,
        })
        self.emit(record)
        return record

    async def _checkFeature(self, vm):
        """
        @raise _Failed: C{unsupported}, when the guest's agent serves no
            files.
        """
        if self.isDaemon:
            info = await self.session.info(vm=vm)
            features = info.get("features") or ()
            agent = "prokshy/%s" % (info.get("version", "?"),)
        else:
            features = self.hello.get("features") or ()
            agent = self.hello.get("agent", "?")
        if FEATURE not in features:
            raise _Failed(
                "unsupported", "the guest's agent (%s) does not support files" % (agent,)
            )

    async def _push(self, vm, local, remote):
        opts = self.options
        if local == "-":
            fd, owned, mode, mtime, size = self.stdinFD, False, None, None, None
            try:
                st = os.fstat(fd)
            except OSError as e:
                raise _Failed("local-file", "cannot read stdin: %s" % (e.strerror or e,))
            if stat.S_ISREG(st.st_mode):
                mode, size = stat.S_IMODE(st.st_mode) & 0o777, st.st_size - os.lseek(fd, 0, os.SEEK_CUR)
        else:
            try:
                fd = os.open(local, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as e:
                raise _Failed("local-file", "cannot read %s: %s" % (local, e.strerror or e))
            owned = True
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                raise _Failed("local-file", "cannot push %s: not a regular file" % (local,))
            mode, mtime, size = stat.S_IMODE(st.st_mode) & 0o777, st.st_mtime, st.st_size
        sourceMtime = mtime
        transfer = self.progress.add(size)
        try:
            transfer = await startPush(
                self.reactor, self.session, remote, fd, mode=mode,
                mtime=mtime if opts.preserve else None, size=size, vm=vm, onProgress=transfer.advance,
                makeSource=_localSource,
            )
            self.running.append(transfer)
            result = await transfer.result
        finally:
            if owned:
                os.close(fd)
        if sourceMtime is not None:
            result = type(result)(result.size, result.sha256, mode, sourceMtime)
        return result, local

    async def _pull(self, vm, local, remote):
        opts = self.options
        gate = None
        if local == "-":
            sink = _StdoutSink(self.stdout)
        else:
            if os.path.isdir(local):
                local = os.path.join(local, os.path.basename(remote.rstrip("/")) or "file")
            sink = LocalFile(local)
            try:
                sink.open()
            except OSError as e:
                raise _Failed("local-file", "cannot write %s: %s" % (local, e.strerror or e))
        line = self.progress.add(None)
        try:
            transfer = await startPull(
                self.reactor, self.session, remote, _Announced(sink, line), vm=vm, preserve=opts.preserve,
                onProgress=line.advance,
            )
            self.running.append(transfer)
            if local == "-":
                gate = FlowGate(transfer.stream).attach(self.stdout)
            result = await transfer.result
        finally:
            if gate is not None:
                gate.close()
            sink.discard()
        return result, local

    def interrupt(self, channel):
        """
        Ctrl-C: cancel the transfers (the temporary files go) and end the
        session cleanly.
        """
        self._cancelAll()
        if self.host.link is not None:
            self.host.link.goodbye("client interrupted")
        return channel.close(timeout=1.0)


def _failure(failure):
    """
    A transfer's failure as a L{_Failed}, or None for an unexpected one.
    """
    e = failure.value
    if isinstance(e, _Failed):
        return e
    if isinstance(e, FileFailed):
        return _Failed(e.code if e.code in FAILURES else "transport", e.message)
    if isinstance(e, StreamError) and e.code in FAILURES:
        return _Failed(e.code, e.message or e.code)
    if isinstance(e, StreamError) and e.code == "unknown-kind":
        return _Failed("unsupported", "the guest's agent does not support files (%s)" % (e.message,))
    code = exitFor(failure)
    if code is None:
        return None
    failureCode = e.code if isinstance(e, StreamError) and e.code else "transport"
    return _Failed(failureCode, code[1])


__all__ = ["FAILURES", "FileRun", "checkFileOptions"]
