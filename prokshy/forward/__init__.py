"""
Port forwarding's vocabulary, shared by the guest and the host: forward
specifications (ssh's syntax) and the guest's allowlists.
"""
