# -*- test-case-name: tests.system.test_runner,tests.system.test_guest_framed -*-
"""
L{ExitStatus}: how a command ended, on both sides of the link.

The guest's L{prokshy.guest.runner.Execution} ends with one; the guest
sends it as the payload of the exec stream's EXIT frame (L{toExit}); the
host reads it back (L{fromExit}).  The host's
L{prokshy.host.client.ExecResult} is an C{ExitStatus} with the collected
output.
"""

from __future__ import annotations

import signal as _signal
from typing import Any, Dict, Optional

import attrs

__all__ = ["ExitStatus", "signalName"]


def signalName(number: int) -> str:
    """
    @return: e.g. C{"SIGTERM"}, or C{"signal 99"} for an unknown number.
    """
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@attrs.frozen
class ExitStatus:
    """
    How a command ended.

    @ivar code: the exit code, or C{None} if a signal killed it.
    @ivar signal: the signal number that killed it, or C{None}.
    @ivar timedOut: the wall-clock timeout expired.
    @ivar truncated: the output cap was reached; output was cut there.
    """

    code: Optional[int]
    signal: Optional[int]
    timedOut: bool = False
    truncated: bool = False

    @property
    def success(self) -> bool:
        return self.code == 0 and not (self.timedOut or self.truncated)

    @property
    def exitStatus(self) -> int:
        """
        A shell-style status: the code, or 128+N for signal N (255 if
        neither is known).
        """
        if self.code is not None:
            return self.code
        if self.signal is not None:
            return 128 + self.signal
        return 255

    def describe(self) -> str:
        """
        @return: e.g. C{"exited 0"}, C{"killed by SIGTERM"}, or
            C{"exited 1, timed out"}.
        """
        if self.signal is not None:
            text = f"killed by {signalName(self.signal)}"
        else:
            text = f"exited {self.code}"
        if self.timedOut:
            text += ", timed out"
        if self.truncated:
            text += ", output truncated"
        return text

    def toExit(self) -> Dict[str, Any]:
        """
        @return: the EXIT frame's payload (docs/protocol.md).
        """
        return {
            "code": self.code,
            "signal": self.signal,
            "timed_out": self.timedOut,
            "truncated": self.truncated,
        }

    @classmethod
    def fromExit(cls, obj: Dict[str, Any], **fields: Any) -> "ExitStatus":
        """
        Read an EXIT frame's payload; a field of the wrong type counts as
        absent.

        @param fields: further fields of C{cls} (a subclass's).
        """
        code = obj.get("code")
        sig = obj.get("signal")
        return cls(
            code=code if isinstance(code, int) else None,
            signal=sig if isinstance(sig, int) else None,
            timedOut=bool(obj.get("timed_out")),
            truncated=bool(obj.get("truncated")),
            **fields,
        )
