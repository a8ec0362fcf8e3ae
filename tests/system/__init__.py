"""
System tests: real processes, ptys and sockets (the agent, the daemon, the CLI,
the simulator), on loopback and unix sockets only.
"""
