"""
The exec vocabulary shared by the guest and the host, one layer below both:
the command-name rule (L{prokshy.execs.names}), the refusal codes
(L{prokshy.execs.refusals}), the exit record (L{prokshy.execs.status}), and
the interfaces of a command runner and its executions
(L{prokshy.execs.interfaces}).

It imports only from L{prokshy.wire}, L{prokshy.link} and
L{prokshy.streams} (in fact from none of them).
"""
