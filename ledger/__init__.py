"""The pure, deterministic core of RaftWallet: money, commands, the state machine, replay.

Nothing in this package does I/O, starts a thread, reads a clock, or knows
about Raft or gRPC. The node wires it to the world.
"""
