"""`make run`: a real local cluster moving money, then a summary that proves the books.

Starts the nodes of a cluster file (default cluster-configs/local-3node.toml)
in a temporary data dir, opens wallets, deposits, runs a few thousand
transfers through the client SDK from concurrent callers, prints a summary
(transfers by outcome, throughput, the leader of each partition, conservation,
replicas agreeing), and stops every node it started.

Transfers pick two random wallets, so most of them cross partitions and run as
a saga (debit on the source partition, credit on the destination, settle).
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
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from client.auth import open_channel
from client.errors import WalletError
from client.sdk import WalletClient
from ledger.routing import partition_of
from node.auth import node_client_credentials
from node.config import ClusterConfig, load_cluster_config
from node.launcher import cluster_down, cluster_up
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "cluster-configs" / "local-3node.toml"
DEPOSIT = "1000.00"


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


def run_demo(config_path: Path, data_dir: Path, wallets: int, transfers: int, callers: int,
             console: Console) -> bool:
    config = load_cluster_config(config_path)
    console.print(f"[bold]Starting {len(config.nodes)} nodes[/] of {config_path.name} "
                  f"({config.partition_count} partitions, {config.replication_factor} replicas "
                  f"each) in {data_dir}")
    if cluster_up(config_path, data_dir) != 0:
        return False
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

        def one(pair: tuple[str, str, str]) -> str:
            try:
                return client.transfer(pair[0], pair[1], pair[2], "USD").status.value
            except WalletError as exc:
                return exc.reason or exc.status_name

        started = time.perf_counter()
        columns = (TextColumn("transfers"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=console) as progress, ThreadPoolExecutor(callers) as pool:
            task = progress.add_task("transfers", total=transfers)
            for outcome in pool.map(one, pairs):
                outcomes[outcome] += 1
                progress.advance(task)
        elapsed_s = time.perf_counter() - started
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
    console.print(f"conservation: sum of balances {total} == deposits {expected}: "
                  + ("[green]OK[/]" if conserved else "[red]BROKEN[/]"))
    console.print("replicas agree (same position and state hash on every node): "
                  + ("[green]yes[/]" if agree else "[red]NO[/]"))
    return conserved and agree and outcomes["SUCCEEDED"] > 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--wallets", type=int, default=200)
    parser.add_argument("--transfers", type=int, default=3_000)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--keep-data", action="store_true",
                        help="keep the temporary data dir (its path is printed)")
    args = parser.parse_args(argv)
    console = Console()
    data_dir = Path(tempfile.mkdtemp(prefix="raftwallet-demo-"))
    ok = False
    try:
        ok = run_demo(args.config, data_dir, args.wallets, args.transfers, args.callers, console)
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
