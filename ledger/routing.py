"""Routing: which partition owns an account.

`partition_of` must give the same answer in every process and every release:
it hashes the account id with BLAKE2b (Python's `hash()` is salted per
process), and the partition count is fixed when a cluster is created.
"""

from __future__ import annotations

import hashlib


def partition_of(account_id: str, partition_count: int) -> int:
    if partition_count < 1:
        raise ValueError("partition_count must be at least 1")
    digest = hashlib.blake2b(account_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partition_count
