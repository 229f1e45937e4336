"""The bank workload of the chaos suite, and the settle step that follows it.

Runs as its own process (`python -m tests.chaos.workload run|settle ...`) because in a
network-namespace run only a process inside the client namespace can reach the nodes.

`run`: opens `accounts` wallets spread over every partition, funds them, then `workers`
threads do random transfers among them (intra- and cross-partition), deposits and
linearizable reads until the file `OUT/stop` appears (or `max_duration_s` passes). Every
call is recorded in `OUT/history.jsonl` (see `history.py`). A sampler thread records every
node's own view of its replicas in `OUT/samples.jsonl` every `sample_period_s`. The
moment the accounts are ready, `OUT/setup.json` is written: the runner waits for it
before injecting faults.

`settle` (after the faults are healed): waits until the cluster is quiescent, closes every
write whose outcome the history does not prove (AbortTransfer: after it, the write can
never happen), confirms every acknowledged one (GetTransfer), reads the final balances,
every replica's view and every node's replay verdict, and writes `OUT/final.json`. It
judges nothing: `checker.py` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from functools import partial
from pathlib import Path

import grpc

from client.auth import open_channel
from client.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutcomeUnknown,
    WalletError,
)
from client.sdk import TransferSpec, TransferStatus, WalletClient, new_id
from ledger.money import currency as currency_of
from ledger.money import format_amount, parse_amount
from ledger.routing import partition_of
from node.cluster_map import VOTER, ClusterMap, decode_map
from node.config import ClusterConfig, load_cluster_config
from node.security.auth import node_client_credentials
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc
from tests.chaos.history import (
    FINAL_FILE,
    HISTORY_FILE,
    SAMPLES_FILE,
    SETUP_FILE,
    CurrencyTotals,
    Event,
    EventType,
    FinalState,
    JsonlWriter,
    NodeVerify,
    OpKind,
    PairTotal,
    ReplicaView,
    Resolution,
    Sample,
    Setup,
    now,
    read_history,
    read_setup,
    write_json,
)

STOP_FILE = "stop"
CURRENCY = "USD"
INITIAL_DEPOSIT_MINOR = 20_000
"""Each account starts with 200.00: tight enough that some transfers fail for want of funds
(definite failures are part of what the checker checks)."""
TRANSFER_MINOR_MAX = 5_000
"""Transfers move 0.01 to 50.00: large enough that some fail for want of funds."""
DEPOSIT_MINOR_MAX = 2_000
CALL_TIMEOUT_S = 5.0
"""Deadline of one attempt of one call."""
RETRY_DEADLINE_S = 10.0
"""How long the SDK retries one call before it reports its outcome unknown."""
STATUS_TIMEOUT_S = 1.0
"""Deadline of one node's ClusterStatus in a sample (a paused node must not stall it)."""
MAP_REFRESH_PERIOD_S = 1.0
"""How often the sampler asks for the cluster map (who the nodes are: see NodeViews)."""
SETTLE_CALL_WORKERS = 8
"""Calls in flight at once while resolving the history."""
READY_TIMEOUT_S = 90.0
STOP_POLL_S = 0.2
MIX = ((OpKind.TRANSFER, 0.65), (OpKind.DEPOSIT, 0.10), (OpKind.READ, 0.25))
"""The share of each op among the workers' calls."""
BATCH_ITEMS = 1_000
"""Transfers of one TransferBatch (one Raft entry of ~175 KB on its partitions: above the
64 KiB at which pysyncobj used to split an entry into parts)."""
BATCH_PERIOD_S = 10.0
BATCH_ITEM_MINOR_MAX = 10
"""Small amounts: most items of a batch succeed (the sources are not drained at once)."""
"""Worker 0 sends a batch this often, between its single ops."""


def accounts_for(partition_count: int, per_partition: int) -> tuple[str, ...]:
    """`per_partition` account ids on each partition, so that every partition and every
    pair of partitions sees traffic."""
    chosen: list[str] = []
    for partition in range(partition_count):
        names = (f"acct-{i}" for i in range(100_000))
        on_partition = (n for n in names if partition_of(n, partition_count) == partition)
        chosen.extend(next(on_partition) for _ in range(per_partition))
    return tuple(chosen)


def balance_minor(text: str, currency_code: str) -> int:
    """A balance in minor units: an amount, or zero (which parse_amount refuses as an amount)."""
    return 0 if Decimal(text) == 0 else parse_amount(text, currency_code)


def _minor_to_text(amount_minor: int) -> str:
    return format_amount(amount_minor, currency_of(CURRENCY).exponent)


def _error_text(error: BaseException) -> str:
    if isinstance(error, WalletError):
        return f"{error.status_name}: {error.message}"[:300]
    return f"{type(error).__name__}: {error}"[:300]


DEFINITE_FAILURES = (InvalidArgument, NotFound, FailedPrecondition, AlreadyExists)
"""Errors after which a write certainly did not happen (the ledger refused it)."""


class Recorder:
    """Writes the invoke and the completion of each op, with one op id for both."""

    def __init__(self, writer: JsonlWriter, worker: int) -> None:
        self.writer, self.worker = writer, worker
        self._count = 0

    def invoke(self, f: OpKind, account: str, **fields: object) -> Callable[..., None]:
        self._count += 1
        op_id = f"{self.worker}:{self._count}"
        mono_s, wall_ms = now()
        base: dict[str, object] = {"op_id": op_id, "f": f, "worker": self.worker,
                                   "account": account}
        self.writer.write(Event(type=EventType.INVOKE, mono_s=mono_s, wall_ms=wall_ms,
                                **base, **fields))  # type: ignore[arg-type]

        def complete(kind: EventType, **more: object) -> None:
            done_s, done_ms = now()
            self.writer.write(Event(type=kind, mono_s=done_s, wall_ms=done_ms,
                                    **base, **{**fields, **more}))  # type: ignore[arg-type]
        return complete


def do_transfer(client: WalletClient, recorder: Recorder, source: str, target: str,
                amount_minor: int) -> None:
    transaction_id = new_id()
    complete = recorder.invoke(OpKind.TRANSFER, source, to_account=target,
                               amount_minor=amount_minor, currency=CURRENCY,
                               transaction_id=transaction_id)
    try:
        result = client.transfer(source, target, _minor_to_text(amount_minor), CURRENCY,
                                 transaction_id)
    except DEFINITE_FAILURES as error:
        complete(EventType.FAIL, error=_error_text(error))
    except Exception as error:  # unknown: OutcomeUnknown, INTERNAL, anything unexpected
        complete(EventType.UNKNOWN, error=_error_text(error))
    else:
        if result.status == TransferStatus.FAILED:
            complete(EventType.FAIL, status=str(result.status), error=result.reason)
        elif result.status in (TransferStatus.SUCCEEDED, TransferStatus.PENDING):
            complete(EventType.OK, status=str(result.status))
        else:
            complete(EventType.UNKNOWN, status=str(result.status))


def do_batch(client: WalletClient, recorder: Recorder, rng: random.Random,
             accounts: Sequence[str], partition_count: int, items: int) -> None:
    """One TransferBatch of `items` transfers, every source on one partition (so that the
    batch is ONE large Raft entry there) under faults: each item is recorded as its own
    transfer, with the outcome the batch answered for it."""
    partition = rng.randrange(partition_count)
    sources = [a for a in accounts if partition_of(a, partition_count) == partition]
    specs = []
    completions = []
    for _ in range(items):
        source = rng.choice(sources)
        target = rng.choice([a for a in accounts if a != source])
        amount_minor = rng.randint(1, BATCH_ITEM_MINOR_MAX)
        transaction_id = new_id()
        completions.append(recorder.invoke(OpKind.TRANSFER, source, to_account=target,
                                           amount_minor=amount_minor, currency=CURRENCY,
                                           transaction_id=transaction_id))
        specs.append(TransferSpec(source, target, _minor_to_text(amount_minor), CURRENCY,
                                  transaction_id))
    try:
        answer = client.transfer_batch(specs)
    except Exception as error:  # a batch refused as a whole, or no answer: unknown each
        for complete in completions:
            complete(EventType.UNKNOWN, error=_error_text(error))
        return
    for complete, result in zip(completions, answer.results, strict=True):
        if result.status == TransferStatus.FAILED:
            complete(EventType.FAIL, status=str(result.status), error=result.reason)
        elif result.status in (TransferStatus.SUCCEEDED, TransferStatus.PENDING):
            complete(EventType.OK, status=str(result.status))
        else:
            complete(EventType.UNKNOWN, status=str(result.status))


def do_deposit(client: WalletClient, recorder: Recorder, account: str,
               amount_minor: int) -> None:
    transaction_id = new_id()
    complete = recorder.invoke(OpKind.DEPOSIT, account, amount_minor=amount_minor,
                               currency=CURRENCY, transaction_id=transaction_id)
    try:
        result = client.deposit(account, _minor_to_text(amount_minor), CURRENCY, transaction_id)
    except DEFINITE_FAILURES as error:
        complete(EventType.FAIL, error=_error_text(error))
    except Exception as error:
        complete(EventType.UNKNOWN, error=_error_text(error))
    else:
        if result.status == TransferStatus.SUCCEEDED:
            complete(EventType.OK, status=str(result.status))
        elif result.status == TransferStatus.FAILED:
            complete(EventType.FAIL, status=str(result.status), error=result.reason)
        else:
            complete(EventType.UNKNOWN, status=str(result.status))


def do_read(client: WalletClient, recorder: Recorder, account: str) -> None:
    complete = recorder.invoke(OpKind.READ, account, currency=CURRENCY)
    try:
        balance = client.balance(account)
    except Exception as error:  # a read changes nothing: not answered is a failure
        complete(EventType.FAIL, error=_error_text(error))
    else:
        complete(EventType.OK, balance_minor=balance_minor(balance.balance, balance.currency))


def worker_loop(client: WalletClient, writer: JsonlWriter, accounts: Sequence[str],
                worker: int, seed: int, stop: threading.Event, partition_count: int) -> None:
    rng = random.Random(seed * 1_000 + worker)
    recorder = Recorder(writer, worker)
    kinds = [kind for kind, _ in MIX]
    weights = [weight for _, weight in MIX]
    next_batch_s = time.monotonic() + rng.uniform(0, BATCH_PERIOD_S)
    while not stop.is_set():
        if worker == 0 and time.monotonic() >= next_batch_s:
            do_batch(client, recorder, rng, accounts, partition_count, BATCH_ITEMS)
            next_batch_s = time.monotonic() + BATCH_PERIOD_S
            continue
        kind = rng.choices(kinds, weights)[0]
        if kind is OpKind.TRANSFER:
            source, target = rng.sample(list(accounts), 2)
            do_transfer(client, recorder, source, target, rng.randint(1, TRANSFER_MINOR_MAX))
        elif kind is OpKind.DEPOSIT:
            do_deposit(client, recorder, rng.choice(accounts), rng.randint(1, DEPOSIT_MINOR_MAX))
        else:
            do_read(client, recorder, rng.choice(accounts))


def wallet_client(config: ClusterConfig) -> WalletClient:
    """An SDK client of every node, holding the cluster's tokens like an operator."""
    credentials = node_client_credentials(config)
    return WalletClient([n.grpc_address for n in config.nodes], CALL_TIMEOUT_S,
                        RETRY_DEADLINE_S, token=credentials.wallet_token,
                        admin_token=credentials.admin_token, tls=credentials.tls)


# --- cluster views ------------------------------------------------------------------------


def replica_view(status: pb.PartitionStatus, node_id: str) -> ReplicaView:
    return ReplicaView(
        node_id=node_id, partition=status.partition, is_leader=status.reporter_is_leader,
        term=status.term, applied_position=status.applied_position,
        state_hash=status.state_hash, outbox_depth=status.outbox_depth,
        totals=tuple(CurrencyTotals(
            t.currency, int(t.balance_minor), int(t.in_flight_minor), int(t.deposited_minor),
            int(t.withdrawn_minor), int(t.credited_in_minor), int(t.settled_out_minor))
            for t in status.totals),
        settled_to=tuple(PairTotal(s.partition, s.currency, int(s.amount_minor))
                         for s in status.settled_to),
        credited_from=tuple(PairTotal(c.partition, c.currency, int(c.amount_minor))
                            for c in status.credited_from))


class NodeViews:
    """Each node's own view of its replicas, asked of every node at once.

    Which nodes there are comes from the cluster map (`refresh_map`: GetClusterMap of every
    node known, the newest version wins), not from the cluster file: a node that replaced a
    lost one (the nemesis' `replace`) is asked from the moment a map names it, and a removed
    node no longer is. Until a map is known, the cluster file's nodes are asked.
    """

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self._credentials = node_client_credentials(config)
        self.cluster_map: ClusterMap | None = None
        self._addresses: dict[str, str] = {}
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, wallet_pb2_grpc.AdminServiceStub] = {}
        self._set_nodes({n.id: n.grpc_address for n in config.nodes})

    def _set_nodes(self, addresses: dict[str, str]) -> None:
        for node_id in [n for n in self._channels if self._addresses[n] != addresses.get(n)]:
            self._channels.pop(node_id).close()
            self._stubs.pop(node_id)
        for node_id, address in addresses.items():
            if node_id not in self._channels:
                self._channels[node_id] = open_channel(address, self._credentials)
                self._stubs[node_id] = wallet_pb2_grpc.AdminServiceStub(self._channels[node_id])
        self._addresses = dict(addresses)

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(self._addresses)

    def refresh_map(self, timeout_s: float = STATUS_TIMEOUT_S) -> ClusterMap | None:
        """Ask every node known for its cluster map; keep the newest; ask its nodes from
        now on. Returns the newest map known (None while no node ever answered)."""
        futures = [wallet_pb2_grpc.WalletServiceStub(channel).GetClusterMap.future(
            pb.GetClusterMapRequest(), timeout=timeout_s) for channel in self._channels.values()]
        for future in futures:
            try:
                candidate = decode_map(future.result().map_json.encode())
            except grpc.RpcError:
                continue
            if self.cluster_map is None or candidate.version > self.cluster_map.version:
                self.cluster_map = candidate
        if self.cluster_map is not None:
            self._set_nodes({n.id: n.grpc_address for n in self.cluster_map.nodes})
        return self.cluster_map

    def sample(self, timeout_s: float = STATUS_TIMEOUT_S) -> Sample:
        mono_s, wall_ms = now()
        futures = {node_id: stub.ClusterStatus.future(pb.ClusterStatusRequest(local_only=True),
                                                      timeout=timeout_s)
                   for node_id, stub in self._stubs.items()}
        answered: list[str] = []
        views: list[ReplicaView] = []
        for node_id, future in futures.items():
            try:
                response = future.result()
            except grpc.RpcError:
                continue
            answered.append(node_id)
            views.extend(replica_view(p, node_id) for p in response.partitions)
        return Sample(mono_s, wall_ms, tuple(answered), tuple(views))

    def verify(self, timeout_s: float) -> list[NodeVerify]:
        verdicts = []
        for node_id, stub in self._stubs.items():
            try:
                answer = stub.Verify(pb.VerifyRequest(), timeout=timeout_s)
            except grpc.RpcError as error:
                verdicts.append(NodeVerify(node_id, False, f"Verify failed: {error.code()}"))
                continue
            detail = "; ".join(f"p{v.partition}: {v.detail}" for v in answer.partitions
                               if not (v.replay_matches and v.replicas_agree))
            verdicts.append(NodeVerify(node_id, bool(answer.ok), detail))
        return verdicts

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


def quiescent(sample: Sample, cluster_map: ClusterMap | None) -> bool:
    """The map's membership is settled (every slot a voter) and every node of the map
    answered; no outbox holds a transfer; each partition's replicas are exactly its
    slots, at one position with one state hash."""
    if cluster_map is None:
        return False
    if set(sample.nodes_answered) != {n.id for n in cluster_map.nodes}:
        return False
    if any(v.outbox_depth for v in sample.views):
        return False
    for group in cluster_map.group_ids():
        if any(slot.state != VOTER for slot in cluster_map.slots(group)):
            return False
    for partition in range(cluster_map.partition_count):
        views = [v for v in sample.views if v.partition == partition]
        if sorted(v.node_id for v in views) != sorted(
                s.node_id for s in cluster_map.slots(partition)):
            return False
        if len({(v.applied_position, v.state_hash) for v in views}) != 1:
            return False
    return True


def sampler_loop(views: NodeViews, writer: JsonlWriter, period_s: float,
                 stop: threading.Event) -> None:
    map_asked_s = float("-inf")
    while not stop.is_set():
        started = time.monotonic()
        if started - map_asked_s >= MAP_REFRESH_PERIOD_S:
            views.refresh_map()
            map_asked_s = started
        writer.write(views.sample())
        stop.wait(max(0.0, period_s - (time.monotonic() - started)))


# --- run ----------------------------------------------------------------------------------


def _until_done(what: str, call: Callable[[], object], deadline_s: float) -> None:
    """Retry a setup call (same ids each time) until it is answered or the deadline passes."""
    while True:
        try:
            call()
            return
        except (OutcomeUnknown, WalletError) as error:
            if isinstance(error, DEFINITE_FAILURES) or time.monotonic() > deadline_s:
                raise RuntimeError(f"setup: {what}: {error}") from error
            time.sleep(0.2)


def open_accounts(client: WalletClient, writer: JsonlWriter, accounts: Sequence[str]) -> None:
    """Create and fund every account; both are recorded in the history (worker -1)."""
    deadline_s = time.monotonic() + READY_TIMEOUT_S
    recorder = Recorder(writer, -1)
    for account in accounts:
        request_id = new_id()
        complete = recorder.invoke(OpKind.CREATE, account, currency=CURRENCY,
                                   transaction_id=request_id)
        _until_done(f"create {account}",
                    partial(client.create_account, account, CURRENCY, request_id), deadline_s)
        complete(EventType.OK)
        transaction_id = new_id()
        complete = recorder.invoke(OpKind.DEPOSIT, account, amount_minor=INITIAL_DEPOSIT_MINOR,
                                   currency=CURRENCY, transaction_id=transaction_id)
        _until_done(f"fund {account}", partial(
            client.deposit, account, _minor_to_text(INITIAL_DEPOSIT_MINOR), CURRENCY,
            transaction_id), deadline_s)
        complete(EventType.OK, status=str(TransferStatus.SUCCEEDED))


def wait_for_leaders(views: NodeViews, partition_count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sample = views.sample()
        if all(sample.leader_of(p) for p in range(partition_count)):
            return
        time.sleep(0.2)
    raise RuntimeError(f"not every partition had a leader within {timeout_s:.0f} s")


def run(config_path: Path, out: Path, seed: int, workers: int, per_partition: int,
        max_duration_s: float, sample_period_s: float) -> int:
    config = load_cluster_config(config_path)
    accounts = accounts_for(config.partition_count, per_partition)
    views = NodeViews(config)
    stop = threading.Event()
    with JsonlWriter(out / HISTORY_FILE) as history, JsonlWriter(out / SAMPLES_FILE) as samples, \
            wallet_client(config) as client:
        wait_for_leaders(views, config.partition_count, READY_TIMEOUT_S)
        sampler = threading.Thread(target=sampler_loop, daemon=True,
                                   args=(views, samples, sample_period_s, stop))
        sampler.start()
        open_accounts(client, history, accounts)
        started_s = time.monotonic()
        setup = Setup(config.partition_count, config.replication_factor, CURRENCY, accounts,
                      tuple(n.id for n in config.nodes), seed, workers, started_s)
        write_json(out / SETUP_FILE, setup)
        threads = [threading.Thread(target=worker_loop, daemon=True,
                                    args=(client, history, accounts, w, seed, stop,
                                          config.partition_count))
                   for w in range(workers)]
        for thread in threads:
            thread.start()
        deadline_s = started_s + max_duration_s
        while not (out / STOP_FILE).exists() and time.monotonic() < deadline_s:
            time.sleep(STOP_POLL_S)
        stop.set()
        for thread in threads:
            thread.join(timeout=CALL_TIMEOUT_S + RETRY_DEADLINE_S + 5)
        ended_s = time.monotonic()
        sampler.join(timeout=10)
    write_json(out / SETUP_FILE, dataclasses.replace(setup, run_end_mono_s=ended_s))
    views.close()
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        print(f"workload: workers {stuck} did not stop", file=sys.stderr)
        return 1
    return 0


# --- settle -------------------------------------------------------------------------------


def _outcome(record_status: TransferStatus, reason: str) -> str:
    if record_status == TransferStatus.SUCCEEDED:
        return "SUCCEEDED"
    if record_status == TransferStatus.FAILED:
        return "NOT_APPLIED" if reason == "ABORTED" else "FAILED"
    return str(record_status)  # PENDING after quiescence: the checker flags it


def resolve(client: WalletClient, account: str, transaction_id: str, acknowledged: bool) -> str:
    """The ledger's final word on one write. An acknowledged write is only looked up (it
    must be there); any other is aborted, which makes "not applied" final."""
    deadline_s = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            if acknowledged:
                record = client.get_transfer(account, transaction_id)
            else:
                record = client.abort_transfer(account, transaction_id)
            return _outcome(record.status, record.reason)
        except NotFound:
            return "NOT_APPLIED"
        except (OutcomeUnknown, WalletError) as error:
            if isinstance(error, DEFINITE_FAILURES) or time.monotonic() > deadline_s:
                return f"UNRESOLVED ({_error_text(error)})"
            time.sleep(0.2)


def settle(config_path: Path, out: Path, timeout_s: float) -> int:
    config = load_cluster_config(config_path)
    setup = read_setup(out / SETUP_FILE)
    events = read_history(out / HISTORY_FILE)
    views = NodeViews(config)
    problems: list[str] = []
    deadline_s = time.monotonic() + timeout_s

    def wait_quiescent(stage: str) -> Sample:
        views.refresh_map()
        sample = views.sample()
        while not quiescent(sample, views.cluster_map):
            if time.monotonic() > deadline_s:
                problems.append(f"not quiescent {stage} after {timeout_s:.0f} s")
                return sample
            time.sleep(0.5)
            views.refresh_map()
            sample = views.sample()
        return sample

    wait_quiescent("before resolving")
    last: dict[str, Event] = {}
    for event in events:
        if event.f in (OpKind.DEPOSIT, OpKind.TRANSFER):
            last[event.op_id] = event  # the completion, or the invoke if there is none
    with wallet_client(config) as client, \
            ThreadPoolExecutor(SETTLE_CALL_WORKERS) as pool:
        keyed = [(e.account, e.transaction_id or "",
                  e.type is EventType.OK and e.status == "SUCCEEDED") for e in last.values()]
        outcomes = list(pool.map(lambda k: resolve(client, *k), keyed))
        resolutions = tuple(Resolution(account, transaction_id, outcome)
                            for (account, transaction_id, _), outcome
                            in zip(keyed, outcomes, strict=True))
        final_sample = wait_quiescent("after resolving")
        balances: dict[str, int] = {}
        for account in setup.accounts:
            try:
                answer = client.balance(account)
                balances[account] = balance_minor(answer.balance, answer.currency)
            except WalletError as error:
                problems.append(f"balance of {account}: {_error_text(error)}")
    verdicts = views.verify(timeout_s=max(60.0, deadline_s - time.monotonic()))
    views.close()
    final_map = views.cluster_map
    final = FinalState(time.monotonic(), quiescent(final_sample, final_map), resolutions,
                       balances, final_sample.views, tuple(verdicts), tuple(problems),
                       node_ids=views.node_ids,
                       map_version=final_map.version if final_map is not None else 0)
    write_json(out / FINAL_FILE, final)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.workload",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="the workload, until OUT/stop appears")
    settle_parser = commands.add_parser("settle", help="after healing: write OUT/final.json")
    for sub in (run_parser, settle_parser):
        sub.add_argument("--config", type=Path, required=True)
        sub.add_argument("--out", type=Path, required=True)
    run_parser.add_argument("--seed", type=int, required=True)
    run_parser.add_argument("--workers", type=int, default=4)
    run_parser.add_argument("--accounts-per-partition", type=int, default=2)
    run_parser.add_argument("--max-duration-s", type=float, default=3600.0)
    run_parser.add_argument("--sample-period-s", type=float, default=0.25)
    settle_parser.add_argument("--timeout-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args.config, args.out, args.seed, args.workers, args.accounts_per_partition,
                   args.max_duration_s, args.sample_period_s)
    return settle(args.config, args.out, args.timeout_s)


if __name__ == "__main__":
    raise SystemExit(main())
