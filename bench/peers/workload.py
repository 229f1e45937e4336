"""The transfer workload both sides of the peer benchmark run: same accounts, same pairs.

The RaftWallet side is `bench.tps` itself. For PostgreSQL this module derives
the very same transfers from the same code: accounts are named as bench.tps
names them; worker `i` of run `r` builds its transfers with
`bench.loadgen.build_templates` from the seed bench.tps gives its worker `i`
(`(seed * 1000 + r) * 1009 + i`), decoded back from their pre-encoded request
bytes; and each caller walks them from the start position and in the order a
bench.loadgen caller would (`caller_starts`, `UnaryFeed`, `BatchFeed`).
What differs is only the transport: SQL over libpq instead of gRPC.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from bench import loadgen
from ledger.money import parse_amount
from ledger.routing import partition_of
from proto.wallet.v1 import wallet_pb2 as pb

CURRENCY = "USD"
DEPOSIT_MINOR = 100_000_000
"""Per account, as bench.tps deposits (1,000,000.00): no run nears INSUFFICIENT_FUNDS."""
ACCOUNTS_DEFAULT = 2_000
PARTITIONS_DEFAULT = 4
SEED_DEFAULT = 1


@dataclass(frozen=True, slots=True)
class Transfer:
    """One transfer before its transaction id."""

    from_account: str
    to_account: str
    amount_minor: int
    currency: str
    source: int
    """The partition of from_account (RaftWallet routes by it; PostgreSQL ignores it)."""


def account_ids(count: int) -> list[str]:
    """The account ids bench.tps creates: bench-000000, bench-000001, ..."""
    return [f"bench-{i:06d}" for i in range(count)]


def accounts_by_partition(accounts: Sequence[str], partitions: int) -> list[list[str]]:
    grouped: list[list[str]] = [[] for _ in range(partitions)]
    for account in accounts:
        grouped[partition_of(account, partitions)].append(account)
    return grouped


def worker_seed(seed: int, run: int, worker_index: int) -> int:
    """The template seed bench.tps/bench.loadgen use for load generator `worker_index`."""
    return (seed * 1000 + run) * 1009 + worker_index


def caller_seed(seed: int, run: int, worker_index: int) -> int:
    """The seed of the random start positions of a load generator's callers."""
    return (seed * 1000 + run) * 7919 + worker_index


def shares(total: int, parts: int) -> list[int]:
    """How bench.tps splits `total` callers over `parts` load generator processes."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def worker_transfers(accounts: Sequence[str], partitions: int, seed: int, run: int,
                     worker_index: int, mix: str) -> list[Transfer]:
    """The transfers load generator `worker_index` of run `run` cycles through."""
    templates = loadgen.build_templates(accounts_by_partition(accounts, partitions), CURRENCY,
                                        worker_seed(seed, run, worker_index), mix)
    transfers = []
    for template in templates:
        request = pb.TransferRequest.FromString(template.prefix + b"0" * loadgen.UUID_CHARS)
        assert request.from_account == template.from_account
        transfers.append(Transfer(request.from_account, request.to_account,
                                  parse_amount(request.amount, request.currency),
                                  request.currency, template.source))
    return transfers


class UnaryFeed:
    """The transfers one unary caller sends, in order: from its start, wrapping around."""

    def __init__(self, transfers: Sequence[Transfer], start: int) -> None:
        assert transfers
        self._transfers = transfers
        self._position = start % len(transfers)

    def next(self) -> Transfer:
        transfer = self._transfers[self._position]
        self._position = (self._position + 1) % len(self._transfers)
        return transfer


class BatchFeed:
    """The batches one TransferBatch caller sends, in order, as bench.loadgen composes them.

    intra: one pool per partition (its transfers, in template order), the
    partitions taking turns; uniform: a single pool of every transfer. Each pool
    is walked from the caller's start, `batch_size` items at a time, wrapping.
    """

    def __init__(self, transfers: Sequence[Transfer], start: int, batch_size: int,
                 mix: str) -> None:
        assert transfers and batch_size >= 1
        self._batch_size = batch_size
        if mix == "intra":
            sources = sorted({t.source for t in transfers})
            self._pools = [[t for t in transfers if t.source == p] for p in sources]
            self._turns = list(range(len(sources)))
        else:
            self._pools = [list(transfers)]
            self._turns = [0] * len({t.source for t in transfers})
        self._turn = start % len(self._turns)
        self._offsets = [start % len(pool) for pool in self._pools]

    def next(self) -> list[Transfer]:
        which = self._turns[self._turn]
        self._turn = (self._turn + 1) % len(self._turns)
        pool = self._pools[which]
        offset = self._offsets[which]
        n = len(pool)
        batch = [pool[(offset + k) % n] for k in range(self._batch_size)]
        self._offsets[which] = (offset + self._batch_size) % n
        return batch


def caller_starts(seed: int, run: int, worker_index: int, callers: int) -> list[int]:
    """Each caller's start position, drawn as a bench.loadgen worker draws them."""
    rng = random.Random(caller_seed(seed, run, worker_index))
    return [rng.randrange(1 << 30) for _ in range(callers)]
