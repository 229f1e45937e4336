"""Peer baselines: the transfer workload of bench.tps run against other systems.

`python -m bench.peers.run` (`make bench-peers`) runs it against a throwaway
PostgreSQL instance (`postgres`, `schema.sql`, `pg_load`) and against a local
RaftWallet cluster (`raftwallet`, reusing bench.tps), and prints the ratios.
"""
