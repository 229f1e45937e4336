"""`make run`: a real local cluster moving money, then a summary that proves the books.

Starts the nodes of a cluster file (default cluster-configs/local-3node.toml)
in a temporary data dir, opens wallets, deposits, runs a few thousand
transfers through the client SDK from concurrent callers, prints a summary
(transfers by outcome, throughput, the leader of each partition, conservation,
replicas agreeing), and stops every node it started.

Transfers pick two random wallets, so most of them cross partitions and run as
a saga (debit on the source partition, credit on the destination, settle).

Then a few of each guarantee at work, counted in the summary: a transfer of
more money than exists is refused (INSUFFICIENT_FUNDS, nothing moves); a
transfer to a missing account on another partition is debited, its credit
refused, and the debit compensated (FAILED, the money back); a transfer sent
again with the same transaction_id is answered with its first outcome and
moves no money again. Conservation and replica agreement are checked after all.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from client.auth import open_channel
from client.errors import WalletError
from client.sdk import TransferRecord, TransferResult, TransferStatus, WalletClient, new_id
from ledger.routing import partition_of
from node.cli.launcher import cluster_down, cluster_up
from node.config import ClusterConfig, load_cluster_config
from node.security.auth import node_client_credentials
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "cluster-configs" / "local-3node.toml"
DEPOSIT = "1000.00"
CASES_DEFAULT = 5
"""Of each guarantee shown after the traffic: refusals, compensations, retries."""
FINAL_WAIT_S = 30.0
"""How long a compensation may take to become final before the demo gives up on it."""


@dataclass(frozen=True, slots=True)
class DemoSummary:
    outcomes: dict[str, int]
    """The random traffic's transfers by outcome."""
    cases: int
    """How many of each guarantee were tried."""
    refused: int
    """Transfers of more than all the money: refused with INSUFFICIENT_FUNDS."""
    compensated: int
    """Transfers to a missing account on another partition: FAILED, debit compensated."""
    retried_once: int
    """Transfers sent again with their transaction_id: first outcome, no money moved."""
    conserved: bool
    replicas_agree: bool

    @property
    def ok(self) -> bool:
        return (self.conserved and self.replicas_agree and self.outcomes.get("SUCCEEDED", 0) > 0
                and self.refused == self.compensated == self.retried_once == self.cases)


def replica_views(config: ClusterConfig) -> dict[str, pb.ClusterStatusResponse]:
    views = {}
    for node in config.nodes:
        with open_channel(node.grpc_address, node_client_credentials(config)) as channel:
            views[node.id] = wallet_pb2_grpc.AdminServiceStub(channel).ClusterStatus(
                pb.ClusterStatusRequest(local_only=True), timeout=10)
    return views


def replicas_agree(config: ClusterConfig, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        views = replica_views(config)
        agree = all(
            len({(p.applied_position, p.state_hash) for v in views.values()
                 for p in v.partitions if p.partition == partition}) == 1
            for partition in range(config.partition_count))
        if agree:
            return True
        time.sleep(0.2)
    return False


def final_record(client: WalletClient, from_account: str, transaction_id: str
                 ) -> TransferRecord | None:
    """The transfer once final (not PENDING), at most FINAL_WAIT_S; None if unknown by then."""
    deadline = time.monotonic() + FINAL_WAIT_S
    while True:
        try:
            record = client.get_transfer(from_account, transaction_id)
            if record.status is not TransferStatus.PENDING:
                return record
        except WalletError:
            pass  # not applied yet
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def show_refusals(client: WalletClient, names: list[str], rng: random.Random,
                  cases: int) -> int:
    """Transfers of more money than exists: each refused, INSUFFICIENT_FUNDS."""
    too_much = f"{Decimal(DEPOSIT) * len(names) + 1:.2f}"
    refused = 0
    for _ in range(cases):
        source, target = rng.sample(names, 2)
        try:
            client.transfer(source, target, too_much, "USD")
        except WalletError as exc:
            refused += exc.reason == "INSUFFICIENT_FUNDS"
    return refused


def show_compensations(client: WalletClient, names: list[str], partitions: int,
                       rng: random.Random, cases: int) -> int:
    """Transfers to accounts that do not exist, on another partition than the source: the
    debit commits, the destination refuses the credit, the debit is compensated."""
    compensated = 0
    for case in range(cases):
        source = rng.choice(names)
        missing = next(name for name in (f"missing-{case}-{i}" for i in range(1000))
                       if partition_of(name, partitions) != partition_of(source, partitions))
        transaction_id = new_id()
        try:
            client.transfer(source, missing, "1.00", "USD", transaction_id=transaction_id)
        except WalletError:
            pass  # the refusal expected (NOT_FOUND: the credit was refused)
        record = final_record(client, source, transaction_id)
        compensated += (record is not None and record.status is TransferStatus.FAILED
                        and any(step.name == "compensated" for step in record.steps))
    return compensated


def show_retries(client: WalletClient, done: list[TransferResult], cases: int) -> int:
    """Succeeded transfers sent again with their transaction_id: answered SUCCEEDED at the
    same log position, and neither balance changes."""
    answered_once = 0
    for first in done[:cases]:
        accounts = (first.from_account, first.to_account)
        before = [client.balance(a).balance for a in accounts]
        again = client.transfer(first.from_account, first.to_account, first.amount,
                                first.currency, transaction_id=first.transaction_id)
        after = [client.balance(a).balance for a in accounts]
        answered_once += (again.status is TransferStatus.SUCCEEDED
                          and again.position == first.position and before == after)
    return answered_once


def run_demo(config_path: Path, data_dir: Path, wallets: int, transfers: int, callers: int,
             console: Console, cases: int = CASES_DEFAULT) -> DemoSummary | None:
    """Run the demo on a cluster it starts (the caller stops it: `cluster_down`); None if
    the cluster did not start."""
    config = load_cluster_config(config_path)
    console.print(f"[bold]Starting {len(config.nodes)} nodes[/] of {config_path.name} "
                  f"({config.partition_count} partitions, {config.replication_factor} replicas "
                  f"each) in {data_dir}")
    if cluster_up(config_path, data_dir) != 0:
        return None
    targets = [node.grpc_address for node in config.nodes]
    rng = random.Random(7)
    names = [f"wallet-{i:04d}" for i in range(wallets)]
    outcomes: Counter[str] = Counter()
    credentials = node_client_credentials(config)
    with WalletClient(targets, token=credentials.wallet_token,
                      admin_token=credentials.admin_token, tls=credentials.tls) as client:
        with ThreadPoolExecutor(callers) as pool:
            list(pool.map(lambda n: client.create_account(n, "USD"), names))
            list(pool.map(lambda n: client.deposit(n, DEPOSIT, "USD"), names))
        console.print(f"opened {wallets} wallets with {DEPOSIT} USD each")
        pairs = []
        cross = 0
        for _ in range(transfers):
            source, target = rng.sample(names, 2)
            cross += partition_of(source, config.partition_count) != partition_of(
                target, config.partition_count)
            pairs.append((source, target, f"{rng.randint(1, 500) / 100:.2f}"))

        succeeded: list[TransferResult] = []

        def one(pair: tuple[str, str, str]) -> str:
            try:
                done = client.transfer(pair[0], pair[1], pair[2], "USD")
            except WalletError as exc:
                return exc.reason or exc.status_name
            if done.status is TransferStatus.SUCCEEDED:
                succeeded.append(done)
            return done.status.value

        started = time.perf_counter()
        columns = (TextColumn("transfers"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=console) as progress, ThreadPoolExecutor(callers) as pool:
            task = progress.add_task("transfers", total=transfers)
            for outcome in pool.map(one, pairs):
                outcomes[outcome] += 1
                progress.advance(task)
        elapsed_s = time.perf_counter() - started
        refused = show_refusals(client, names, rng, cases)
        compensated = (show_compensations(client, names, config.partition_count, rng, cases)
                       if config.partition_count > 1 else 0)
        retried_once = show_retries(client, succeeded, cases)
        status = client.cluster_status()
        balances = [Decimal(client.balance(name).balance) for name in names]
    agree = replicas_agree(config)
    table = Table(title="partitions")
    for column in ("partition", "leader", "term", "applied position", "outbox", "state hash"):
        table.add_column(column)
    for partition in status.partitions:
        table.add_row(str(partition.partition), partition.leader_node_id, str(partition.term),
                      str(partition.applied_position), str(partition.outbox_depth),
                      partition.state_hash[:16])
    console.print(table)
    total, expected = sum(balances), Decimal(DEPOSIT) * wallets
    conserved = total == expected
    console.print(f"transfers: {transfers} in {elapsed_s:.1f} s = "
                  f"{transfers / elapsed_s:,.0f} transfers/s ({callers} concurrent callers, "
                  "unary calls, all replicas on this machine)")
    console.print(f"{cross} of them crossed partitions (saga), {transfers - cross} stayed "
                  "within one")
    console.print("outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())))
    console.print("the guarantees at work:")
    console.print(f"  refused, insufficient funds (more than all the money; nothing moved): "
                  f"{refused} of {cases}")
    console.print(f"  compensated (credit to a missing account on another partition refused, "
                  f"the debit given back): {compensated} of {cases}")
    console.print(f"  retried with the same transaction_id (first outcome answered, no money "
                  f"moved again): {retried_once} of {cases}")
    console.print(f"conservation: sum of balances {total} == deposits {expected}: "
                  + ("[green]OK[/]" if conserved else "[red]BROKEN[/]"))
    console.print("replicas agree (same position and state hash on every node): "
                  + ("[green]yes[/]" if agree else "[red]NO[/]"))
    return DemoSummary(dict(outcomes), cases, refused, compensated, retried_once, conserved,
                       agree)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--wallets", type=int, default=200)
    parser.add_argument("--transfers", type=int, default=3_000)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--cases", type=int, default=CASES_DEFAULT,
                        help="refusals, compensations and retries shown (of each)")
    parser.add_argument("--keep-data", action="store_true",
                        help="keep the temporary data dir (its path is printed)")
    args = parser.parse_args(argv)
    console = Console()
    data_dir = Path(tempfile.mkdtemp(prefix="raftwallet-demo-"))
    ok = False
    try:
        summary = run_demo(args.config, data_dir, args.wallets, args.transfers, args.callers,
                           console, args.cases)
        ok = summary is not None and summary.ok
    except KeyboardInterrupt:
        console.print("interrupted")
    finally:
        if (data_dir / "cluster.json").exists():
            cluster_down(data_dir)
        if args.keep_data or not ok:
            console.print(f"data and node logs kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    console.print("[bold green]books balance[/]" if ok else "[bold red]demo failed[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
