"""Make tests/fixtures/data-dir-v1/: the data dirs of a stopped 3-node cluster.

    python -m tests.make_data_dir_fixture tests/fixtures/data-dir-v1

A fixture made ONCE by the code of its day and committed: tests/test_data_dir_fixture.py
checks that the code of every later day still loads it (journals, their meta files,
snapshots, archives, the metadata group's journal and the cluster map) and replays each
archive to the state hashes recorded here. Making it again replaces that evidence with
the current code's own output: do it only for a new format, in a new directory.

What it runs: a 3-node cluster of 2 partitions on fixed loopback ports (61400-61414, above
both `cluster_harness.allocate_ports`' range and Linux's ephemeral ports), with
deposits, transfers inside a partition and across the two (a saga), a refused transfer
and a cross-partition credit refused (its debit compensated); a snapshot of partition 0
on every node, then more transfers after it; then every node is stopped with SIGTERM.
It writes `cluster.toml`, `data.tar.gz` (the three data dirs, without the node logs) and
`expected.json` (per partition: position and state hash; every account's balance).
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import uuid
from pathlib import Path

import grpc

from ledger.routing import partition_of
from node.config import dump_cluster_config, local_cluster_config
from proto.wallet.v1 import wallet_pb2 as pb
from tests.cluster_harness import LocalCluster, converged, wait_until
from tests.test_cluster import PARTITIONS, accounts_on

FIRST_PORT = 61400
"""15 ports from here: per node gRPC, metrics and 3 Raft ports (2 partitions + metadata)."""
SECRET = "data-dir-fixture-secret-loopback-tests-only"
ADMIN_TOKEN = "data-dir-fixture-admin-token-loopback-tests-only"
SNAPSHOT_PARTITION = 0
FIXED_STAMP = 0
"""The tar members' mtime: they carry no time, owner or group of the machine that made them."""


def _id() -> str:
    return str(uuid.uuid4())


def _transfer(cluster: LocalCluster, node_id: str, source: str, destination: str,
              amount: str) -> int:
    """The transfer's final status (SUCCEEDED or FAILED), after its saga if any."""
    transaction_id = _id()
    try:
        status = int(cluster.wallet(node_id).Transfer(pb.TransferRequest(
            from_account=source, to_account=destination, amount=amount, currency="USD",
            transaction_id=transaction_id), timeout=30).status)
    except grpc.RpcError as exc:
        if exc.code() not in (grpc.StatusCode.FAILED_PRECONDITION,  # INSUFFICIENT_FUNDS
                              grpc.StatusCode.NOT_FOUND):  # a credit refused, compensated
            raise
        return int(pb.FAILED)
    if status != pb.PENDING:
        return status
    final: list[int] = []

    def settled() -> bool:
        found = cluster.wallet(node_id).GetTransfer(pb.GetTransferRequest(
            from_account=source, transaction_id=transaction_id), timeout=10)
        if found.status == pb.PENDING:
            return False
        final.append(int(found.status))
        return True

    wait_until(settled, f"transfer {source} -> {destination} to settle")
    return final[-1]


def map_settled(cluster: LocalCluster) -> bool:
    """The metadata group bootstrapped the map and recorded every node's start (version 4),
    and every node has that version."""
    versions = {view.map_version for view in cluster.local_views().values()}
    return len(versions) == 1 and min(versions) >= 1 + len(cluster.config.nodes)


def run_workload(cluster: LocalCluster) -> list[str]:
    """The fixture's traffic; returns the accounts it opened."""
    wait_until(lambda: map_settled(cluster), "the cluster map to be bootstrapped")
    alice, bob = accounts_on(0, 2, "alice")
    carol, dave = accounts_on(1, 2, "carol")
    (ghost,) = accounts_on(1, 1, "ghost")  # never opened: its credit is refused
    accounts = [alice, bob, carol, dave]
    wallet = cluster.wallet("n1")
    for account in accounts:
        wallet.CreateAccount(pb.CreateAccountRequest(
            account_id=account, currency="USD", request_id=_id()), timeout=30)
    wallet.Deposit(pb.DepositRequest(account_id=alice, amount="100.00", currency="USD",
                                     transaction_id=_id()), timeout=30)
    cluster.wallet("n2").Deposit(pb.DepositRequest(account_id=carol, amount="50.00",
                                                   currency="USD", transaction_id=_id()),
                                 timeout=30)
    outcomes = [
        _transfer(cluster, "n1", alice, bob, "12.34"),      # same partition (0)
        _transfer(cluster, "n2", carol, dave, "1.00"),      # same partition (1)
        _transfer(cluster, "n3", alice, carol, "5.00"),     # across: 0 -> 1
        _transfer(cluster, "n1", dave, bob, "0.50"),        # across: 1 -> 0
        _transfer(cluster, "n2", bob, alice, "999.00"),     # refused: insufficient funds
        _transfer(cluster, "n3", alice, ghost, "2.00"),     # across, credit refused
    ]
    expected = [pb.SUCCEEDED] * 4 + [pb.FAILED, pb.FAILED]
    assert outcomes == expected, outcomes
    wait_until(lambda: converged(cluster), "replicas to converge")
    for node in cluster.config.nodes:
        cluster.admin(node.id).Snapshot(pb.SnapshotRequest(partition=SNAPSHOT_PARTITION),
                                        timeout=30)
    for node in cluster.config.nodes:
        path = cluster.node_dir(node.id) / f"partition-{SNAPSHOT_PARTITION}" / "snapshot"
        wait_until(path.exists, f"the snapshot of {node.id}")
    after = [
        _transfer(cluster, "n1", alice, bob, "1.11"),       # same partition, after it
        _transfer(cluster, "n2", bob, dave, "2.22"),        # across, after it
    ]
    assert after == [pb.SUCCEEDED, pb.SUCCEEDED], after
    wait_until(lambda: converged(cluster), "replicas to converge")
    return accounts


def record(cluster: LocalCluster, accounts: list[str]) -> dict[str, object]:
    """Balances first: a linearizable read appends a barrier entry to its partition's log,
    so positions and state hashes are read after the last read, once every replica has it."""
    balances = {}
    for account in accounts:
        response = cluster.wallet("n1").GetBalance(pb.GetBalanceRequest(account_id=account),
                                                    timeout=30)
        balances[account] = {"balance": response.balance, "currency": response.currency,
                             "partition": partition_of(account, PARTITIONS)}
    wait_until(lambda: converged(cluster), "replicas to converge")
    views = cluster.local_views()
    partitions = {}
    for partition in range(PARTITIONS):
        [(position, state_hash)] = {(p.applied_position, p.state_hash)
                                    for view in views.values() for p in view.partitions
                                    if p.partition == partition}
        partitions[str(partition)] = {"position": position, "state_hash": state_hash}
    return {"partitions": partitions, "balances": balances,
            "snapshot_partition": SNAPSHOT_PARTITION,
            "nodes": [n.id for n in cluster.config.nodes]}


def pack(data_root: Path, out: Path) -> None:
    """The node data dirs (not the logs beside them) as a gzipped tar of fixed metadata."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=9) as tar:
        for path in sorted(data_root.rglob("*")):
            relative = path.relative_to(data_root)
            if len(relative.parts) == 1 and path.is_file():
                continue  # n1.log etc.
            info = tar.gettarinfo(str(path), str(relative))
            info.mtime, info.uid, info.gid, info.uname, info.gname = FIXED_STAMP, 0, 0, "", ""
            if path.is_file():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    out.write_bytes(buffer.getvalue())


def make(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    config = local_cluster_config("fixture", 3, PARTITIONS,
                                  list(range(FIRST_PORT, FIRST_PORT + 15)), secret=SECRET,
                                  admin_token=ADMIN_TOKEN)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        cluster = LocalCluster(root, config=config)
        try:
            cluster.start_all()
            accounts = run_workload(cluster)
            expected = record(cluster, accounts)
        finally:
            cluster.stop_all()
        for node_id, process in cluster.processes.items():
            assert process.returncode == 0, (f"{node_id} exited with {process.returncode}:\n"
                                             + cluster.log(node_id)[-3000:])
        pack(root / "data", out_dir / "data.tar.gz")
    (out_dir / "cluster.toml").write_text(dump_cluster_config(config), encoding="utf-8")
    (out_dir / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True)
                                           + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    make(parser.parse_args().out_dir)


if __name__ == "__main__":
    main()
