"""
The line-protocol machinery used by both sides: the guest agent's line mode
and the daemon's line clients.

  - L{prokshy.lines.protocol}: L{GuestLineProtocol<prokshy.lines.protocol.GuestLineProtocol>},
    the LF-line splitter (over-long lines discarded, stale partial lines
    dropped, C{0xFF} hello lines set apart);
  - L{prokshy.lines.legacy}: L{LegacyHandler<prokshy.lines.legacy.LegacyHandler>},
    the original protocol's requests run through an
    L{ICommandRunner<prokshy.execs.interfaces.ICommandRunner>}
    (its log is rate-limited by L{prokshy._loglimit}).

It sits below L{prokshy.guest} and L{prokshy.host}, on L{prokshy.execs}.
"""
