"""The event archive: its file format, the read model (history), the offline replay, and the
seeding of a replica's archive from its peers.

Below the Raft layer: a replica appends to its archive; nothing here imports node.raft.
"""
