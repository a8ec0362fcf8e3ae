"""
Unit tests: protocol logic on a clock and in memory only (no processes, sockets,
ptys or real reactor); the whole set runs in seconds.  tests/unit/test_isolation.py
checks that they stay that way.
"""
