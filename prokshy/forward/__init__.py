"""
Port forwarding (docs/protocol.md §10.3-§10.5, §12.9): forward
specifications in ssh's syntax (L{spec}), the guest's allowlists
(L{allow}), the splice of a socket connection onto a stream (L{bridge}),
the guest's C{connect} and C{listen} handlers (L{guestside}) and the host's
forwards and their table (L{hostside}).  The reactor is passed in; nothing
here runs one.
"""
