"""The load generator of `bench.tps`: worker processes, each a lean asyncio client on grpc.aio.

Each worker is a process of its own, started with the "spawn" method (a fresh
interpreter: it inherits no gRPC state from the parent), owning its own
channels, one per node. The parent drives it over a pipe with the jobs below;
a worker exits on `Stop` or when the pipe closes (the parent died).

The hot path is kept lean (see ../shared/notes/grpc-python.md): requests are
serialized by hand from templates built before the clock starts (from, to,
amount and currency already encoded; only the 36-character transaction id is
appended per transfer), sent as raw bytes (no protobuf object per call), and
unary answers are not parsed (a SUCCEEDED answer begins with the bytes 08 01).
Each worker reports the CPU time it used, so the parent can tell whether the
load generator, rather than the cluster, is the limit. A worker presents the
credentials it was started with (tokens, TLS: a running cluster's, in the
harness's target mode) on every channel; without any, its channels are plain
insecure ones with no interceptor on the hot path.

HTTP workloads (`RunJob.http_targets` set) send the same unary transfers as
`POST /v1/wallet/balance_transfer` JSON requests to the HTTP gateway instead, with
one httpx.AsyncClient per worker (HTTP/1.1 keep-alive, a connection pool as large as
the worker's callers). Bodies are pre-built bytes too (only the transaction id is
spliced in); answers are judged by their status alone: 200 succeeded, anything else
a failure counted by status and error code (the body is parsed only then).

Three mixes of transfers (`RunJob.mix`):

    intra     from and to on the same partition (an atomic Transfer command)
    uniform   from and to uniformly random over all accounts: with P partitions
              about 1 - 1/P of them cross partitions and run as a saga
    zipf      from and to drawn from a Zipf law over all accounts (`RunJob.zipf_s`):
              a few hot accounts take most transfers; mostly cross-partition too

Two ways of offering load (`RunJob.rate_per_s`):

    closed loop   `callers` callers, each sending its next call when the last ended
    open loop     (unary only) transfers arrive at a fixed offered rate, Poisson or
                  evenly spaced, scheduled from the run's start whatever the answers;
                  latency runs from each transfer's INTENDED send time, so a slow
                  cluster (or a late load generator) cannot hide queueing delay
                  (no coordinated omission)

A call is over when every transfer in it is final (SUCCEEDED or FAILED). A node
that reached the call's deadline answers PENDING for cross-partition transfers
still in flight; the worker then asks GetTransfer (same from_account and
transaction_id, STALE reads from the source partition's target, every
`FOLLOW_UP_PAUSE_S`) until each is final, and the call's latency runs until then.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import itertools
import json
import os
import random
import secrets
import signal
import time
import traceback
import uuid
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import grpc
import grpc.aio
import httpx

from client.auth import NO_CREDENTIALS, Credentials, open_aio_channel
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc

SERVICE = "/raftwallet.wallet.v1.WalletService"
REASON_METADATA_KEY = "raftwallet-reason"
RECORDED_REASONS = frozenset({"INSUFFICIENT_FUNDS", "BALANCE_LIMIT"})
"""Refusals that are executed and recorded under the transaction id: committed outcomes."""
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                       grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED})
SUCCEEDED_PREFIX = bytes([0x08, pb.SUCCEEDED])
"""A serialized TransferResponse whose first field is `status = SUCCEEDED`."""
PENDING_PREFIX = bytes([0x08, pb.PENDING])
"""... and `status = PENDING`: a cross-partition transfer not final by the call's deadline."""
MIXES = ("intra", "uniform", "zipf")
ZIPF_S_DEFAULT = 1.1
"""Exponent of the zipf mix: the k-th hottest account is chosen with weight 1 / k**s."""
ARRIVALS = ("poisson", "fixed")
"""Open loop: exponential gaps between arrivals (a Poisson process) or evenly spaced."""
OPEN_LOOP_IN_FLIGHT_MAX = 20_000
"""Open loop, per worker: transfers in flight at most. At the bound the next arrival waits,
and its latency still runs from its intended time, so the wait is measured, not hidden."""
FOLLOW_UP_PAUSE_S = 0.01
"""Between two GetTransfer calls about a transfer answered PENDING."""
FOLLOW_UP_MAX_S = 120.0
"""A transfer not final this long after its call began counts as failed (NOT_FINAL)."""
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", 64 * 2**20),
    ("grpc.max_receive_message_length", 64 * 2**20),
)
TEMPLATES_PER_PARTITION = 4096
SETUP_RETRY_S = 60.0
ERROR_PAUSE_S = 0.01
"""A caller whose call failed waits this long, so a refusing node is not hammered in a loop."""
HTTP_TRANSFER_PATH = "/v1/wallet/balance_transfer"
JSON_HEADERS = {"Content-Type": "application/json"}
JSON_SUFFIX = b'"}'


def tally_one_transfer(stats: RunStats, latencies: array[float], failures: Counter[str],
                       began: float, ended: float, measured: bool, reason: str,
                       failure_key: str, cross: bool, followed_up: int,
                       count_recorded: bool) -> None:
    """Count one unary transfer's outcome (in the window only if `measured`)."""
    stats.calls_total += 1
    stats.transfers_total += 1
    if not measured:
        return
    stats.calls += 1
    stats.transfers += 1
    stats.cross += cross
    stats.followed_up += followed_up
    latencies.append(ended - began)
    if not reason:
        stats.succeeded += 1
        stats.committed += 1
    else:
        failures[failure_key] += 1
        if count_recorded and reason in RECORDED_REASONS:
            stats.committed += 1


# --- jobs and answers (picklable: they cross the pipe) ----------------------------------------


@dataclass(frozen=True, slots=True)
class SetupJob:
    """Create `accounts` and deposit `deposit` into each (ids fixed, so retries are safe)."""

    accounts: list[str]
    partition_of: list[int]
    leaders: list[str]
    currency: str
    deposit: str
    concurrency: int


@dataclass(frozen=True, slots=True)
class BalancesJob:
    """Read the balances of `accounts` (linearizable reads, from each partition's leader)."""

    accounts: list[str]
    partition_of: list[int]
    leaders: list[str]
    concurrency: int


@dataclass(frozen=True, slots=True)
class RunJob:
    """Prepare one workload; the worker answers Ready, then runs on Go."""

    workload: str
    batch_size: int
    """1 for unary Transfer calls, else the transfers per TransferBatch call."""
    callers: int
    accounts_by_partition: list[list[str]]
    targets: list[str]
    """The address each partition's calls go to (its leader, or a node to spread over)."""
    currency: str
    seed: int
    timeout_s: float
    mix: str = "intra"
    """"intra": from and to on one partition; "uniform": both uniformly random; "zipf":
    both from a Zipf law over the accounts (see MIXES)."""
    http_targets: tuple[str, ...] = ()
    """If set (unary only): per partition, the base URL of the HTTP gateway its calls go
    to (`http://host:port`); the transfers are then sent as HTTP requests, not gRPC."""
    zipf_s: float = ZIPF_S_DEFAULT
    """Exponent of the zipf mix (ignored by the others)."""
    rate_per_s: float = 0.0
    """0: closed loop (`callers` callers). Above 0 (gRPC unary only): open loop, this
    worker offering `rate_per_s` transfers/s; `callers` is then unused."""
    arrivals: str = "poisson"
    """Open loop: "poisson" or "fixed" gaps between intended send times (see ARRIVALS)."""
    plaintext: bool = False
    """True: plain channels without tokens, whatever the worker's credentials (for the
    harness's local no-op server, which speaks neither TLS nor tokens)."""


@dataclass(frozen=True, slots=True)
class Go:
    start_at: float
    """time.monotonic() (CLOCK_MONOTONIC: the same clock in every process) to start at."""
    measure_from: float
    end_at: float


@dataclass(frozen=True, slots=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True)
class Ready:
    prepare_s: float


@dataclass(frozen=True, slots=True)
class WorkerFailed:
    message: str


@dataclass(frozen=True, slots=True)
class SetupDone:
    created: int
    deposited: int
    errors: dict[str, int]


@dataclass(frozen=True, slots=True)
class BalancesDone:
    total_minor: int
    found: int
    missing: list[str]
    errors: dict[str, int]
    negative: list[str] = field(default_factory=list)
    """Accounts read with a balance below zero (none, if the ledger keeps its invariant)."""


@dataclass(slots=True)
class RunStats:
    """One worker's figures for one run; transfers are counted by the call's completion time."""

    calls: int = 0
    """Calls completed (every transfer in them final) inside the measured window."""
    transfers: int = 0
    """The transfers of those calls."""
    cross: int = 0
    """Of those, the ones whose accounts are on different partitions (run as a saga)."""
    committed: int = 0
    """Transfers with a committed final outcome in the window: SUCCEEDED, and for the intra
    mix also refusals recorded under their id; for the uniform mix SUCCEEDED only."""
    succeeded: int = 0
    followed_up: int = 0
    """Transfers in the window answered PENDING, whose outcome came from GetTransfer."""
    follow_up_calls: int = 0
    """GetTransfer calls made (since Go)."""
    failures: dict[str, int] = field(default_factory=dict)
    """Transfers that did not succeed in the window, by reason (recorded ones included)."""
    latencies_s: array[float] = field(default_factory=lambda: array("d"))
    """One latency per call completed in the window (open loop: per arrival intended in
    the window, from its intended send time to its final outcome)."""
    calls_total: int = 0
    """Every call completed since Go, warm-up and stragglers included (for CPU per call)."""
    transfers_total: int = 0
    cpu_s: float = 0.0
    """CPU time of this worker process (all threads) from Go until its last call ended."""
    offered: int = 0
    """Open loop: arrivals whose intended send time fell inside the measured window."""
    dispatch_lag_max_s: float = 0.0
    """Open loop: the longest a transfer was sent after its intended time (the load
    generator's own lateness, or the in-flight bound). Large: the generator was the limit."""
    wall_s: float = 0.0
    prepare_s: float = 0.0


# --- encoding ---------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _string_field(number: int, text: str) -> bytes:
    raw = text.encode("utf-8")
    return _varint(number << 3 | 2) + _varint(len(raw)) + raw


UUID_CHARS = 36
TRANSACTION_ID_KEY = _varint(5 << 3 | 2) + _varint(UUID_CHARS)


def transfer_prefix(from_account: str, to_account: str, amount: str, currency: str) -> bytes:
    """A serialized TransferRequest without its transaction id, ending with that field's key.

    Appending the 36 ASCII characters of a UUID makes it a complete message.
    """
    return (_string_field(1, from_account) + _string_field(2, to_account)
            + _string_field(3, amount) + _string_field(4, currency) + TRANSACTION_ID_KEY)


def json_prefix(from_account: str, to_account: str, amount: str, currency: str) -> bytes:
    """A balance_transfer JSON body up to the opening quote of its transaction id.

    Appending the 36 ASCII characters of a UUID and JSON_SUFFIX makes it complete.
    """
    head = json.dumps({"from_account": from_account, "to_account": to_account,
                       "amount": amount, "currency": currency}, separators=(",", ":"))
    return (head[:-1] + ',"transaction_id":"').encode("utf-8")


def json_prefix_of(prefix: bytes) -> bytes:
    """json_prefix(...) of the transfer a transfer_prefix(...) encodes."""
    request = pb.TransferRequest.FromString(prefix + b"0" * UUID_CHARS)
    return json_prefix(request.from_account, request.to_account, request.amount,
                       request.currency)


def batch_item_prefix(prefix: bytes) -> bytes:
    """`transfers` (field 1 of TransferBatchRequest) holding the transfer of `prefix` + an id."""
    return _varint(1 << 3 | 2) + _varint(len(prefix) + UUID_CHARS) + prefix


class IdSource:
    """Unique UUID-shaped ids (version 4 layout): a random 72-bit prefix, then a counter.

    Random enough to never repeat across workers, runs and invocations; one format
    call per id instead of ~1-2 us for uuid.uuid4().
    """

    def __init__(self) -> None:
        r = secrets.token_hex(9)
        variant = "89ab"[secrets.randbelow(4)]
        self.prefix = f"{r[:8]}-{r[8:12]}-4{r[12:15]}-{variant}{r[15:18]}-"
        self._counter = itertools.count()

    def next(self) -> bytes:
        return f"{self.prefix}{next(self._counter):012x}".encode("ascii")


def _amounts(rng: random.Random, count: int) -> list[str]:
    return [f"{rng.randint(0, 9)}.{rng.randint(1, 99):02d}" for _ in range(count)]


@dataclass(frozen=True, slots=True)
class Template:
    """One transfer before its id: where it goes and its pre-encoded request prefix."""

    source: int
    """The partition of from_account: the call (and any GetTransfer) goes to its target."""
    from_account: str
    prefix: bytes
    """transfer_prefix(...): append the 36 characters of a transaction id."""
    cross: bool
    """from and to are on different partitions: the transfer runs as a saga."""


class ZipfSampler:
    """Ranks 0..n-1, rank k drawn with probability proportional to 1 / (k + 1)**s.

    A cumulative weight table searched with bisect: O(n) to build, O(log n) per draw,
    and deterministic for a seeded random.Random (no numpy needed).
    """

    def __init__(self, n: int, s: float) -> None:
        if n < 1 or not s > 0:
            raise ValueError(f"a Zipf law needs n >= 1 and s > 0 (got n={n}, s={s})")
        cumulative: list[float] = []
        total = 0.0
        for rank in range(1, n + 1):
            total += rank ** -s
            cumulative.append(total)
        self._cumulative = cumulative
        self._total = total

    def __len__(self) -> int:
        return len(self._cumulative)

    def probability(self, rank: int) -> float:
        below = self._cumulative[rank - 1] if rank else 0.0
        return (self._cumulative[rank] - below) / self._total

    def sample(self, rng: random.Random) -> int:
        rank = bisect.bisect_right(self._cumulative, rng.random() * self._total)
        return min(rank, len(self._cumulative) - 1)  # guards a rounding at the very top


def zipf_rank_key(account: str) -> bytes:
    """Orders accounts for the zipf mix: the hottest first (a stable, unsalted hash)."""
    return hashlib.blake2b(account.encode("utf-8"), digest_size=8).digest()


def build_templates(accounts_by_partition: Sequence[Sequence[str]], currency: str,
                    seed: int, mix: str = "intra",
                    per_partition: int = TEMPLATES_PER_PARTITION,
                    zipf_s: float = ZIPF_S_DEFAULT) -> list[Template]:
    """`per_partition` transfers per partition (with two accounts or more), interleaved.

    intra: between two accounts of the same partition, partitions taking turns.
    uniform: from and to drawn uniformly from all accounts (distinct), so a transfer
    crosses partitions with probability 1 - sum((n_p / n)^2), about 3/4 for 4 partitions.
    zipf: from and to drawn independently (until distinct) from a Zipf law with exponent
    `zipf_s` over all accounts, ranked by zipf_rank_key (a stable hash of the id): the hot
    accounts are the same in every worker and every run (whatever `seed`), and unrelated
    to how ids are named or which partition holds them.
    """
    rng = random.Random(seed)
    amounts = _amounts(rng, 64)
    eligible = [p for p, accounts in enumerate(accounts_by_partition) if len(accounts) >= 2]
    templates: list[Template] = []
    if mix == "intra":
        for _ in range(per_partition):
            for p in eligible:
                a, b = rng.sample(accounts_by_partition[p], 2)
                templates.append(Template(p, a, transfer_prefix(a, b, rng.choice(amounts),
                                                                currency), False))
        return templates
    if mix not in MIXES:
        raise ValueError(f"unknown mix {mix!r}; choose from {', '.join(MIXES)}")
    everyone = sorted((account, p) for p, accounts in enumerate(accounts_by_partition)
                      for account in accounts)
    if len(everyone) < 2:
        return templates
    zipf = None
    if mix == "zipf":
        everyone.sort(key=lambda pair: zipf_rank_key(pair[0]))
        zipf = ZipfSampler(len(everyone), zipf_s)
    for _ in range(per_partition * len(eligible)):
        if zipf is None:
            (a, source), (b, destination) = rng.sample(everyone, 2)
        else:
            i = zipf.sample(rng)
            j = zipf.sample(rng)
            while j == i:
                j = zipf.sample(rng)
            (a, source), (b, destination) = everyone[i], everyone[j]
        templates.append(Template(source, a, transfer_prefix(a, b, rng.choice(amounts),
                                                             currency), source != destination))
    return templates


@dataclass(frozen=True, slots=True)
class Pool:
    """Pre-encoded TransferBatch items that batch callers walk through, wrapping around."""

    items: list[bytes]
    """batch_item_prefix(template.prefix): append a transaction id."""
    sources: list[int]
    from_accounts: list[str]
    cross_before: list[int]
    """cross_before[i]: how many of items[:i] cross partitions (len(items) + 1 entries)."""

    @classmethod
    def of(cls, templates: Sequence[Template]) -> Pool:
        cross_before = [0]
        for t in templates:
            cross_before.append(cross_before[-1] + t.cross)
        return cls([batch_item_prefix(t.prefix) for t in templates],
                   [t.source for t in templates], [t.from_account for t in templates],
                   cross_before)

    def cross_in(self, offset: int, count: int) -> int:
        """Cross-partition items among the `count` items from `offset` on (wrapping)."""
        n = len(self.items)
        whole, rest = divmod(count, n)
        total = whole * self.cross_before[n]
        end = offset + rest
        if end <= n:
            return total + self.cross_before[end] - self.cross_before[offset]
        return (total + self.cross_before[n] - self.cross_before[offset]
                + self.cross_before[end - n])


def check_encoding() -> None:
    """The hand-made bytes parse back into the intended messages (run once per worker)."""
    ids = IdSource()
    transaction_id = ids.next()
    prefix = transfer_prefix("alice", "bob", "1.05", "USD")
    parsed = pb.TransferRequest.FromString(prefix + transaction_id)
    expected = pb.TransferRequest(from_account="alice", to_account="bob", amount="1.05",
                                  currency="USD", transaction_id=transaction_id.decode())
    if parsed != expected or expected.SerializeToString() != prefix + transaction_id:
        raise AssertionError("hand-encoded TransferRequest differs from protobuf's")
    uuid.UUID(transaction_id.decode())
    item = batch_item_prefix(prefix) + transaction_id
    batch = pb.TransferBatchRequest.FromString(item + item)
    if list(batch.transfers) != [expected, expected]:
        raise AssertionError("hand-encoded TransferBatchRequest differs from protobuf's")
    body = json.loads(json_prefix_of(prefix) + transaction_id + JSON_SUFFIX)
    if body != {"from_account": "alice", "to_account": "bob", "amount": "1.05",
                "currency": "USD", "transaction_id": transaction_id.decode()}:
        raise AssertionError(f"hand-made balance_transfer JSON body is wrong: {body}")
    if pb.TransferResponse(status=pb.SUCCEEDED, position=7).SerializeToString()[:2] != (
            SUCCEEDED_PREFIX):
        raise AssertionError("a SUCCEEDED TransferResponse does not start with 08 01")
    if pb.TransferResponse(status=pb.PENDING, transaction_id=expected.transaction_id,
                           position=7).SerializeToString()[:2] != PENDING_PREFIX:
        raise AssertionError("a PENDING TransferResponse does not start with 08 03")


def minor_units(balance: str, exponent: int = 2) -> int:
    """'1234.05' -> 123405 (a balance as the API formats it: exactly `exponent` decimals)."""
    whole, _, fraction = balance.partition(".")
    if len(fraction) > exponent:
        raise ValueError(f"balance {balance!r} has more than {exponent} decimals")
    sign = -1 if whole.startswith("-") else 1
    scale = int("1" + "0" * exponent)
    return sign * (abs(int(whole)) * scale + int(fraction.ljust(exponent, "0") or "0"))


def http_error_code(response: httpx.Response) -> str:
    """The gateway's `error.code` of an error answer (HTTP_<status> if there is none)."""
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP_{response.status_code}"
    return str(code)


def reason_of(error: grpc.aio.AioRpcError) -> str:
    for key, value in error.trailing_metadata() or ():
        if str(key).lower() == REASON_METADATA_KEY:
            return str(value)
    return str(error.code().name)


# --- the worker -------------------------------------------------------------------------------


def worker_main(conn: Connection, index: int, progress: Any,
                credentials: Credentials = NO_CREDENTIALS) -> None:
    """Entry point of a worker process (multiprocessing "spawn" target).

    `credentials` (tokens, TLS) are presented on every channel: those of the cluster
    under test (a running cluster's file in target mode; none for the harness's own).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    try:
        asyncio.run(_Worker(conn, index, progress, credentials).serve())
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the parent went away


class _Worker:
    def __init__(self, conn: Connection, index: int, progress: Any,
                 credentials: Credentials = NO_CREDENTIALS) -> None:
        self.conn = conn
        self.index = index
        self.progress = progress
        self.credentials = credentials
        self.channels: dict[tuple[str, bool], grpc.aio.Channel] = {}

    def channel(self, address: str, plaintext: bool = False) -> grpc.aio.Channel:
        """One channel per address; a token interceptor only when there are tokens to send
        (NO_CREDENTIALS, or `plaintext`: a plain insecure channel, the leanest hot path)."""
        found = self.channels.get((address, plaintext))
        if found is None:
            credentials = NO_CREDENTIALS if plaintext else self.credentials
            found = self.channels[(address, plaintext)] = open_aio_channel(
                address, credentials, CHANNEL_OPTIONS)
        return found

    async def receive(self) -> object:
        return await asyncio.get_running_loop().run_in_executor(None, self.conn.recv)

    async def serve(self) -> None:
        check_encoding()
        try:
            while True:
                job = await self.receive()
                if isinstance(job, Stop):
                    return
                try:
                    answer = await self.handle(job)
                except Exception:
                    answer = WorkerFailed(f"worker {self.index}: {traceback.format_exc()}")
                self.conn.send(answer)
        finally:
            for channel in self.channels.values():
                await channel.close()

    async def handle(self, job: object) -> object:
        if isinstance(job, SetupJob):
            return await self.setup(job)
        if isinstance(job, BalancesJob):
            return await self.balances(job)
        if isinstance(job, RunJob):
            return await self.run(job)
        raise TypeError(f"unknown job {job!r}")

    # -- setup and balances ------------------------------------------------------------------

    async def _retrying(self, call: Callable[[], Awaitable[Any]], errors: Counter[str],
                        done_if: Callable[[grpc.aio.AioRpcError], bool] | None = None,
                        ) -> bool:
        """Call until it succeeds; True if it did. Retryable statuses are retried, same ids."""
        deadline = time.monotonic() + SETUP_RETRY_S
        while True:
            try:
                await call()
                return True
            except grpc.aio.AioRpcError as error:
                if done_if is not None and done_if(error):
                    return True
                errors[reason_of(error)] += 1
                if error.code() not in RETRYABLE or time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.05)

    async def setup(self, job: SetupJob) -> SetupDone:
        errors: Counter[str] = Counter()
        created = deposited = 0
        semaphore = asyncio.Semaphore(job.concurrency)

        async def one(account: str, partition: int) -> None:
            nonlocal created, deposited
            stub = wallet_pb2_grpc.WalletServiceStub(self.channel(job.leaders[partition]))
            create = pb.CreateAccountRequest(account_id=account, currency=job.currency,
                                             request_id=str(uuid.uuid4()))
            deposit = pb.DepositRequest(account_id=account, amount=job.deposit,
                                        currency=job.currency, transaction_id=str(uuid.uuid4()))
            async with semaphore:
                if not await self._retrying(lambda: stub.CreateAccount(create, timeout=10),
                                            errors):
                    return
                created += 1
                if await self._retrying(lambda: stub.Deposit(deposit, timeout=10), errors):
                    deposited += 1

        await asyncio.gather(*(one(a, p) for a, p in zip(job.accounts, job.partition_of,
                                                          strict=True)))
        return SetupDone(created, deposited, dict(errors))

    async def balances(self, job: BalancesJob) -> BalancesDone:
        errors: Counter[str] = Counter()
        total = 0
        found = 0
        missing: list[str] = []
        negative: list[str] = []
        semaphore = asyncio.Semaphore(job.concurrency)

        async def one(account: str, partition: int) -> None:
            nonlocal total, found
            stub = wallet_pb2_grpc.WalletServiceStub(self.channel(job.leaders[partition]))
            request = pb.GetBalanceRequest(account_id=account, consistency=pb.LINEARIZABLE)
            answers: list[pb.GetBalanceResponse] = []

            async def read() -> None:
                answers.append(await stub.GetBalance(request, timeout=10))

            async with semaphore:
                if await self._retrying(read, errors):
                    balance_minor = minor_units(answers[-1].balance)
                    total += balance_minor
                    found += 1
                    if balance_minor < 0:
                        negative.append(account)
                else:
                    missing.append(account)

        await asyncio.gather(*(one(a, p) for a, p in zip(job.accounts, job.partition_of,
                                                          strict=True)))
        return BalancesDone(total, found, missing, dict(errors), negative)

    # -- the measured workloads --------------------------------------------------------------

    async def run(self, job: RunJob) -> RunStats | WorkerFailed:
        started = time.monotonic()
        templates = build_templates(job.accounts_by_partition, job.currency,
                                    job.seed * 1009 + self.index, job.mix,
                                    zipf_s=job.zipf_s)
        if not templates:
            return WorkerFailed("no two accounts to transfer between")
        path = f"{SERVICE}/{'Transfer' if job.batch_size == 1 else 'TransferBatch'}"
        calls = [self.channel(address, job.plaintext).unary_unary(path)
                 for address in job.targets]
        get_calls = [self.channel(address, job.plaintext).unary_unary(f"{SERVICE}/GetTransfer")
                     for address in job.targets]
        # Unary: one list of (call, GetTransfer call, prefix, from_account, cross).
        # Batches: pools of batch items and the calls taking turns to send them, each with
        # its pool: intra, one pool per partition, sent to that partition's target; uniform,
        # one pool of random pairs, sent to the partitions' targets in turn.
        flat = [(calls[t.source], get_calls[t.source], t.prefix, t.from_account, t.cross)
                for t in templates]
        partitions = sorted({t.source for t in templates})
        sends: list[tuple[Any, int]]
        if job.mix == "intra":
            pools = [Pool.of([t for t in templates if t.source == p]) for p in partitions]
            sends = [(calls[p], k) for k, p in enumerate(partitions)]
        else:
            pools = [Pool.of(templates)]
            sends = [(call, 0) for call in calls]
        rng = random.Random(job.seed * 7919 + self.index)
        stats = RunStats(prepare_s=time.monotonic() - started)
        self.conn.send(Ready(stats.prepare_s))
        go = await self.receive()
        if not isinstance(go, Go):
            return WorkerFailed(f"expected Go, got {go!r}")
        await asyncio.sleep(max(0.0, go.start_at - time.monotonic()))
        cpu_started = time.process_time()
        wall_started = time.monotonic()
        ids = IdSource()
        failures: Counter[str] = Counter()
        count_recorded = job.mix == "intra"
        ticker = asyncio.create_task(self._report_progress(stats))
        try:
            if job.http_targets:
                http_flat = [(f"{job.http_targets[t.source]}{HTTP_TRANSFER_PATH}",
                              get_calls[t.source], json_prefix_of(t.prefix), t.from_account,
                              t.cross) for t in templates]
                limits = httpx.Limits(max_connections=job.callers,
                                      max_keepalive_connections=job.callers)
                async with httpx.AsyncClient(limits=limits, timeout=job.timeout_s,
                                             trust_env=False) as client:
                    await asyncio.gather(*(
                        self._http_unary_caller(client, http_flat, rng.randrange(1 << 30), ids,
                                                go, stats, failures, job.timeout_s,
                                                count_recorded)
                        for _ in range(job.callers)))
            elif job.rate_per_s > 0:
                if job.batch_size != 1:
                    return WorkerFailed("the open loop sends unary Transfer calls only")
                await self._open_loop_unary(flat, rng, ids, go, stats, failures, job.timeout_s,
                                            count_recorded, job.rate_per_s, job.arrivals)
            elif job.batch_size == 1:
                await asyncio.gather(*(
                    self._unary_caller(flat, rng.randrange(1 << 30), ids, go, stats, failures,
                                       job.timeout_s, count_recorded)
                    for _ in range(job.callers)))
            else:
                await asyncio.gather(*(
                    self._batch_caller(sends, pools, get_calls, rng.randrange(1 << 30),
                                       job.batch_size, ids, go, stats, failures, job.timeout_s,
                                       count_recorded)
                    for _ in range(job.callers)))
        finally:
            ticker.cancel()
        stats.cpu_s = time.process_time() - cpu_started
        stats.wall_s = time.monotonic() - wall_started
        stats.failures = dict(failures)
        self.progress[self.index] = stats.transfers_total
        return stats

    async def _report_progress(self, stats: RunStats) -> None:
        while True:
            self.progress[self.index] = stats.transfers_total
            await asyncio.sleep(0.2)

    @staticmethod
    async def _unary_caller(flat: list[tuple[Any, Any, bytes, str, bool]], start: int,
                            ids: IdSource, go: Go, stats: RunStats, failures: Counter[str],
                            timeout_s: float, count_recorded: bool) -> None:
        n = len(flat)
        position = start % n
        monotonic = time.monotonic
        latencies = stats.latencies_s
        measure_from, end_at = go.measure_from, go.end_at
        while True:
            began = monotonic()
            if began >= end_at:
                return
            call, get_call, prefix, from_account, cross = flat[position]
            position += 1
            if position == n:
                position = 0
            reason, followed_up = await _unary_once(call, get_call, prefix, from_account,
                                                    ids.next(), timeout_s, began, stats)
            ended = monotonic()
            tally_one_transfer(stats, latencies, failures, began, ended,
                               measure_from <= ended <= end_at, reason, reason, cross,
                               followed_up, count_recorded)
            if reason and reason not in RECORDED_REASONS:
                await asyncio.sleep(ERROR_PAUSE_S)

    @staticmethod
    async def _open_loop_unary(flat: list[tuple[Any, Any, bytes, str, bool]],
                               rng: random.Random, ids: IdSource, go: Go, stats: RunStats,
                               failures: Counter[str], timeout_s: float, count_recorded: bool,
                               rate_per_s: float, arrivals: str,
                               in_flight_max: int = OPEN_LOOP_IN_FLIGHT_MAX) -> None:
        """Offer `rate_per_s` unary transfers/s from go.start_at to go.end_at, open loop.

        Intended send times are drawn up front of each arrival from the schedule alone
        (never from answers). Each transfer's latency runs from its intended time to its
        final outcome and is kept if that time is inside the measured window; its outcome
        counts (like the closed loop's) if it completed inside the window, so transfers/s
        is the rate achieved. Every transfer sent is awaited before returning.
        """
        if arrivals not in ARRIVALS:
            raise ValueError(f"unknown arrivals {arrivals!r}; choose from {ARRIVALS}")
        assert rate_per_s > 0 and in_flight_max >= 1
        n = len(flat)
        position = rng.randrange(n)
        monotonic = time.monotonic
        latencies = stats.latencies_s
        measure_from, end_at = go.measure_from, go.end_at
        gap_s = 1.0 / rate_per_s
        poisson = arrivals == "poisson"
        slots = asyncio.Semaphore(in_flight_max)
        in_flight: set[asyncio.Task[None]] = set()

        async def one(call: Any, get_call: Any, prefix: bytes, from_account: str, cross: bool,
                      intended: float) -> None:
            try:
                reason, followed_up = await _unary_once(call, get_call, prefix, from_account,
                                                        ids.next(), timeout_s, intended, stats)
            finally:
                slots.release()
            ended = monotonic()
            stats.calls_total += 1
            stats.transfers_total += 1
            if measure_from <= intended:
                latencies.append(ended - intended)
            if measure_from <= ended <= end_at:
                stats.calls += 1
                stats.transfers += 1
                stats.cross += cross
                stats.followed_up += followed_up
                if not reason:
                    stats.succeeded += 1
                    stats.committed += 1
                else:
                    failures[reason] += 1
                    if count_recorded and reason in RECORDED_REASONS:
                        stats.committed += 1

        intended = go.start_at
        while True:
            intended += rng.expovariate(rate_per_s) if poisson else gap_s
            if intended >= end_at:
                break
            wait_s = intended - monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            await slots.acquire()
            stats.dispatch_lag_max_s = max(stats.dispatch_lag_max_s, monotonic() - intended)
            if intended >= measure_from:
                stats.offered += 1
            call, get_call, prefix, from_account, cross = flat[position]
            position += 1
            if position == n:
                position = 0
            task = asyncio.create_task(one(call, get_call, prefix, from_account, cross,
                                           intended))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.gather(*in_flight)

    @staticmethod
    async def _http_unary_caller(client: httpx.AsyncClient,
                                 flat: list[tuple[str, Any, bytes, str, bool]], start: int,
                                 ids: IdSource, go: Go, stats: RunStats,
                                 failures: Counter[str], timeout_s: float,
                                 count_recorded: bool) -> None:
        """Like _unary_caller, over HTTP: 200 succeeded; 202 (pending) is followed up with
        GetTransfer; any other answer is a failure, counted as "<status> <error code>"."""
        n = len(flat)
        position = start % n
        monotonic = time.monotonic
        latencies = stats.latencies_s
        measure_from, end_at = go.measure_from, go.end_at
        post = client.post
        while True:
            began = monotonic()
            if began >= end_at:
                return
            url, get_call, prefix, from_account, cross = flat[position]
            position += 1
            if position == n:
                position = 0
            reason = ""
            key = ""
            followed_up = False
            transaction_id = ids.next()
            try:
                response = await post(url, content=prefix + transaction_id + JSON_SUFFIX,
                                      headers=JSON_HEADERS)
                status = response.status_code
                if status == 202:
                    followed_up = True
                    reason, asked = await follow_up(get_call, from_account, transaction_id,
                                                    timeout_s, began + FOLLOW_UP_MAX_S)
                    stats.follow_up_calls += asked
                    key = reason
                elif status != 200:
                    reason = http_error_code(response)
                    key = f"{status} {reason}"
            except httpx.HTTPError as error:
                reason = key = type(error).__name__
            ended = monotonic()
            tally_one_transfer(stats, latencies, failures, began, ended,
                               measure_from <= ended <= end_at, reason, key, cross,
                               followed_up, count_recorded)
            if reason and reason not in RECORDED_REASONS:
                await asyncio.sleep(ERROR_PAUSE_S)

    @staticmethod
    async def _batch_caller(sends: list[tuple[Any, int]], pools: list[Pool], get_calls: list[Any],
                            start: int, batch_size: int, ids: IdSource, go: Go, stats: RunStats,
                            failures: Counter[str], timeout_s: float,
                            count_recorded: bool) -> None:
        turn = start % len(sends)
        offsets = [start % len(pool.items) for pool in pools]
        monotonic = time.monotonic
        latencies = stats.latencies_s
        measure_from, end_at = go.measure_from, go.end_at
        while True:
            began = monotonic()
            if began >= end_at:
                return
            call, which = sends[turn]
            turn = (turn + 1) % len(sends)
            pool = pools[which]
            items = pool.items
            n = len(items)
            offset = offsets[which]
            parts: list[bytes] = []
            for k in range(batch_size):
                parts.append(items[(offset + k) % n])
                parts.append(ids.next())
            offsets[which] = (offset + batch_size) % n
            failed: Counter[str] = Counter()
            succeeded = 0
            followed_up = 0
            try:
                raw = await call(b"".join(parts), timeout=timeout_s)
                answer = pb.TransferBatchResponse.FromString(raw)
                succeeded = answer.succeeded
                for reason in answer.reasons.values():
                    failed[reason] += 1
                if answer.pending:
                    pending = [k for k, status in enumerate(answer.statuses)
                               if status == pb.PENDING]
                    followed_up = len(pending)
                    slots = [(offset + k) % n for k in pending]
                    finals = await asyncio.gather(*(
                        follow_up(get_calls[pool.sources[slot]], pool.from_accounts[slot],
                                  parts[2 * k + 1], timeout_s, began + FOLLOW_UP_MAX_S)
                        for k, slot in zip(pending, slots, strict=True)))
                    for reason, asked in finals:
                        stats.follow_up_calls += asked
                        if reason:
                            failed[reason] += 1
                        else:
                            succeeded += 1
                unexplained = batch_size - succeeded - sum(failed.values())
                if unexplained:
                    failed["NO_STATUS"] += unexplained
            except grpc.aio.AioRpcError as error:
                failed[reason_of(error)] += batch_size
            ended = monotonic()
            stats.calls_total += 1
            stats.transfers_total += batch_size
            if measure_from <= ended <= end_at:
                stats.calls += 1
                stats.transfers += batch_size
                stats.cross += pool.cross_in(offset, batch_size)
                stats.followed_up += followed_up
                latencies.append(ended - began)
                stats.succeeded += succeeded
                stats.committed += succeeded
                if count_recorded:
                    stats.committed += sum(count for reason, count in failed.items()
                                           if reason in RECORDED_REASONS)
                failures.update(failed)
            if any(reason not in RECORDED_REASONS for reason in failed):
                await asyncio.sleep(ERROR_PAUSE_S)


async def _unary_once(call: Any, get_call: Any, prefix: bytes, from_account: str,
                      transaction_id: bytes, timeout_s: float, began: float,
                      stats: RunStats) -> tuple[str, bool]:
    """One Transfer call until its outcome is final: (reason, '' if SUCCEEDED; followed up).

    A PENDING answer is followed up with GetTransfer (counted in `stats`) until final,
    giving up FOLLOW_UP_MAX_S after `began`.
    """
    try:
        answer = await call(prefix + transaction_id, timeout=timeout_s)
        if answer[:2] == SUCCEEDED_PREFIX:
            return "", False
        if answer[:2] != PENDING_PREFIX:
            return "UNEXPECTED_ANSWER", False
        reason, asked = await follow_up(get_call, from_account, transaction_id, timeout_s,
                                        began + FOLLOW_UP_MAX_S)
        stats.follow_up_calls += asked
        return reason, True
    except grpc.aio.AioRpcError as error:
        return reason_of(error), False


async def follow_up(get_call: Any, from_account: str, transaction_id: bytes, timeout_s: float,
                    give_up_at: float) -> tuple[str, int]:
    """Ask GetTransfer until the transfer is final: (reason, '' if SUCCEEDED; calls made).

    STALE reads: a replica's applied state is committed state, so a final status it
    shows is final; one lagging behind (or not having the transfer yet: NOT_FOUND)
    only makes us ask again. No read barrier, so following up adds no Raft entries.
    """
    request = pb.GetTransferRequest(from_account=from_account,
                                    transaction_id=transaction_id.decode("ascii"),
                                    consistency=pb.STALE).SerializeToString()
    asked = 0
    while True:
        asked += 1
        try:
            view = pb.GetTransferResponse.FromString(await get_call(request, timeout=timeout_s))
            if view.status == pb.SUCCEEDED:
                return "", asked
            if view.status == pb.FAILED:
                return view.reason or "FAILED", asked
        except grpc.aio.AioRpcError as error:
            reason = reason_of(error)
            if error.code() not in RETRYABLE and reason != "TRANSFER_NOT_FOUND":
                return reason, asked
        if time.monotonic() >= give_up_at:
            return "NOT_FINAL", asked
        await asyncio.sleep(FOLLOW_UP_PAUSE_S)


def default_procs() -> int:
    """Load generator processes: one per core, at most 2 (the cluster shares the machine)."""
    return max(1, min(2, os.cpu_count() or 1))
