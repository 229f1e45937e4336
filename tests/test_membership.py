"""Live membership changes on real node processes (docs/operations.md).

A fourth node joins a running cluster, takes a replica of every group, the
replicas of an old node are removed and the old node leaves: transfers keep
flowing throughout, nothing acknowledged is lost, and every node ends with the
same cluster map.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest

from client.sdk import WalletClient
from node.config import NodeConfig, dump_cluster_config
from proto.wallet.v1 import wallet_pb2 as pb
from tests.cluster_harness import (
    WAIT_S,
    LocalCluster,
    allocate_ports,
    call_until_done,
    converged,
    wait_until,
)
from tests.test_cluster_faults import (
    PARTITIONS,
    TransferStream,
    assert_each_applied_once,
    open_funded_pair,
)

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""

MOVE_WAIT_S = 180.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    running = LocalCluster(tmp_path, nodes=3, partitions=PARTITIONS)
    try:
        running.start_all()
        yield running
    finally:
        running.stop_all()


def cluster_map(cluster: LocalCluster, node_id: str) -> dict[str, object]:
    response = cluster.wallet(node_id).GetClusterMap(pb.GetClusterMapRequest(), timeout=5)
    document: dict[str, object] = json.loads(response.map_json)
    return document


def walletctl(cluster: LocalCluster, *args: str, target: str = "n2",
              timeout_s: float = MOVE_WAIT_S + 60) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "node.cli.walletctl", *args,
               "--config", str(cluster.config_path),
               "--target", cluster.config.node(target).grpc_address, "--timeout", "20"]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                          check=False)


def register_node(cluster: LocalCluster, node_id: str) -> NodeConfig:
    """`walletctl node add`, and the test's own view of the new node's addresses."""
    node = NodeConfig(node_id, "127.0.0.1", allocate_ports(1), allocate_ports(PARTITIONS + 1))
    added = walletctl(cluster, "node", "add", "--id", node_id, "--host", node.host,
                      "--grpc-port", str(node.grpc_port),
                      "--raft-port-base", str(node.raft_port_base))
    assert added.returncode == 0, added.stderr
    cluster.config = dataclasses.replace(cluster.config, nodes=(*cluster.config.nodes, node))
    return node


def slots(document: dict[str, object], group_index: int) -> list[list[str]]:
    groups = document["groups"]
    assert isinstance(groups, list)
    found: list[list[str]] = groups[group_index]
    return found


def test_a_new_node_takes_over_an_old_one_while_transfers_flow(cluster: LocalCluster) -> None:
    payer, payee = open_funded_pair(cluster, 0, "move")
    register_node(cluster, "n4")
    cluster.start("n4", extra_args=("--join",))
    cluster.wait_serving("n4")
    with TransferStream(cluster, payer, payee) as stream:
        stream.wait_for(5)
        for partition in range(PARTITIONS):
            moved = walletctl(cluster, "replica", "add", "--partition", str(partition),
                              "--node", "n4")
            assert moved.returncode == 0, moved.stdout + moved.stderr
        drained = walletctl(cluster, "node", "drain", "n1")
        assert drained.returncode == 0, drained.stdout + drained.stderr
        # n1 left the metadata group, so no longer receives its log: it must still learn
        # the newer maps (by polling), or tools asking it would wait forever.
        wait_until(lambda: not any(node == "n1" for node, _ in slots(
            cluster_map(cluster, "n1"), PARTITIONS)), "n1 to see itself out of the map's voters")
        removed = walletctl(cluster, "node", "remove", "n1")
        assert removed.returncode == 0, removed.stdout + removed.stderr
        before = len(stream.acknowledged)
        stream.wait_for(before + 5)
    cluster.kill("n1", signal.SIGTERM)
    assert_each_applied_once(cluster, payer, payee, stream.acknowledged)
    balances: list[pb.GetBalanceResponse] = [
        call_until_done(cluster, "GetBalance", pb.GetBalanceRequest(account_id=a))  # type: ignore[misc]
        for a in (payer, payee)]
    total = sum((Decimal(b.balance) for b in balances), Decimal(0))
    assert total == Decimal("1000000.00"), "money was created or lost"
    survivors = ("n2", "n3", "n4")
    wait_until(lambda: len({cluster_map(cluster, n)["version"] for n in survivors}) == 1,
               "every node to hold the same cluster map")
    final = cluster_map(cluster, "n2")
    with WalletClient(cluster.config.node("n3").grpc_address,
                      admin_token=cluster.config.admin_token) as client:
        sdk_view = client.cluster_map()
    assert sdk_view.version == final["version"]
    assert sorted(sdk_view.node_addresses) == list(survivors)

    def status_agrees() -> bool:
        status = cluster.admin("n2").ClusterStatus(pb.ClusterStatusRequest(), timeout=10)
        return (status.map_version == final["version"]
                and not list(status.membership_differences))

    wait_until(status_agrees, "the Raft groups to match the map, as ClusterStatus reports")
    assert [n["id"] for n in final["nodes"]] == list(survivors)  # type: ignore[attr-defined]
    for group_index in range(PARTITIONS + 1):
        members = sorted(node for node, state in slots(final, group_index))
        assert "n1" not in members and "n4" in members
        assert all(state == "voter" for _, state in slots(final, group_index))


def test_cluster_map_lists_a_node_without_replicas_and_a_removed_node_says_so_and_stops(
        cluster: LocalCluster) -> None:
    register_node(cluster, "n4")
    n4 = cluster.start("n4", extra_args=("--join",))
    wait_until(lambda: "n4" in dict(cluster.local_views()), "n4 to serve")

    shown = walletctl(cluster, "cluster", "map")
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[1]: line for line in shown.stdout.splitlines()
            if line.startswith("│ n")}
    assert set(rows) == {"n1", "n2", "n3", "n4"}, shown.stdout
    assert " none " in rows["n4"] and " none " not in rows["n1"], shown.stdout

    removed = walletctl(cluster, "node", "remove", "n4")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert n4.wait(timeout=WAIT_S) == 0
    cluster.killed.add("n4")
    log = cluster.log("n4")
    assert "removed from the cluster map: stopping" in log
    assert "recording this node's start failed" not in log


def test_a_client_given_one_address_finds_the_other_nodes_in_the_map(
    cluster: LocalCluster,
) -> None:
    payer, payee = open_funded_pair(cluster, 0, "discover")
    with WalletClient(cluster.config.node("n1").grpc_address, retry_deadline_s=WAIT_S) as client:
        client.balance(payer)  # learns the map from n1
        cluster.kill("n1")
        result = client.transfer(payer, payee, "1.00", "USD")
    assert result.status.name == "SUCCEEDED"


def test_one_membership_change_per_group_at_a_time(cluster: LocalCluster) -> None:
    register_node(cluster, "n4")
    first = walletctl(cluster, "replica", "add", "--partition", "0", "--node", "n4",
                      "--no-wait")
    assert first.returncode == 0, first.stderr
    second = walletctl(cluster, "replica", "remove", "--partition", "0", "--node", "n1",
                       "--no-wait")
    assert second.returncode == 1
    assert "membership change in progress" in second.stderr


def test_a_node_that_still_hosts_replicas_cannot_be_removed(cluster: LocalCluster) -> None:
    refused = walletctl(cluster, "node", "remove", "n1")
    assert refused.returncode == 1
    assert "still hosts replicas" in refused.stderr and "node drain n1" in refused.stderr


def test_a_wiped_node_restarted_under_its_old_id_with_bootstrap_is_refused(
    cluster: LocalCluster,
) -> None:
    wait_until(lambda: len(cluster_map(cluster, "n2")["incarnations"]) == 3,  # type: ignore[arg-type]
               "every node's first start to be recorded in the map")
    cluster.kill("n3")
    shutil.rmtree(cluster.node_dir("n3"))
    process = cluster.start("n3", bootstrap=True)
    assert process.wait(timeout=WAIT_S) == 3
    assert "must not come back under its old id" in cluster.log("n3")


def test_transfers_flow_from_cached_maps_while_the_metadata_group_has_no_quorum(
    tmp_path: Path,
) -> None:
    # Five nodes, all voting on the map; every partition lives on n3..n5. With n1..n3
    # down the map has no quorum while every partition keeps two of its three replicas.
    running = LocalCluster(tmp_path, nodes=5, partitions=PARTITIONS)
    placement = tuple(("n3", "n4", "n5") for _ in range(PARTITIONS))
    running.config = dataclasses.replace(running.config, placement=placement)
    running.config_path.write_text(dump_cluster_config(running.config), encoding="utf-8")
    try:
        running.start_all()
        payer, payee = open_funded_pair(running, 0, "nometa")
        for node_id in ("n1", "n2", "n3"):
            running.kill(node_id)
        for _ in range(5):
            response = call_until_done(running, "Transfer", pb.TransferRequest(
                from_account=payer, to_account=payee, amount="1.00", currency="USD",
                transaction_id=str(uuid.uuid4())))
            assert response.status == pb.SUCCEEDED  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as refused:
            running.admin("n4").AddNode(pb.AddNodeRequest(
                node_id="n6", host="127.0.0.1", grpc_port=allocate_ports(1),
                raft_port_base=allocate_ports(PARTITIONS + 1)), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop_all()


def test_replicas_agree_after_a_replica_moves(cluster: LocalCluster) -> None:
    payer, payee = open_funded_pair(cluster, 1, "agree")
    register_node(cluster, "n4")
    cluster.start("n4", extra_args=("--join",))
    cluster.wait_serving("n4")
    for _ in range(3):
        call_until_done(cluster, "Transfer", pb.TransferRequest(
            from_account=payer, to_account=payee, amount="1.00", currency="USD",
            transaction_id=str(uuid.uuid4())))
    moved = walletctl(cluster, "replica", "add", "--partition", "1", "--node", "n4")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    wait_until(lambda: converged(cluster), "every replica at the same position and hash")


def test_a_node_whose_disk_was_lost_is_replaced_under_a_new_id(cluster: LocalCluster) -> None:
    payer, payee = open_funded_pair(cluster, 0, "replace")
    call_until_done(cluster, "Transfer", pb.TransferRequest(
        from_account=payer, to_account=payee, amount="1.00", currency="USD",
        transaction_id=str(uuid.uuid4())))
    wait_until(lambda: len(cluster_map(cluster, "n2")["incarnations"]) == 3,  # type: ignore[arg-type]
               "every node's first start to be recorded in the map")
    cluster.kill("n3")
    shutil.rmtree(cluster.node_dir("n3"))
    # The runbook: a new id for the new disk, its replicas added, the lost ones removed.
    register_node(cluster, "n5")
    cluster.start("n5", extra_args=("--join",))
    cluster.wait_serving("n5")
    for partition in range(PARTITIONS):
        for args in (("add", "--partition", str(partition), "--node", "n5"),
                     ("remove", "--partition", str(partition), "--node", "n3")):
            changed = walletctl(cluster, "replica", *args)
            assert changed.returncode == 0, changed.stdout + changed.stderr
    for verb in ("add", "remove"):
        node_id = "n5" if verb == "add" else "n3"
        changed = walletctl(cluster, "replica", verb, "--metadata", "--node", node_id)
        assert changed.returncode == 0, changed.stdout + changed.stderr
    removed = walletctl(cluster, "node", "remove", "n3")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    cluster.config = dataclasses.replace(
        cluster.config, nodes=tuple(n for n in cluster.config.nodes if n.id != "n3"))
    call_until_done(cluster, "Transfer", pb.TransferRequest(
        from_account=payer, to_account=payee, amount="1.00", currency="USD",
        transaction_id=str(uuid.uuid4())))
    wait_until(lambda: converged(cluster), "n5's replicas to agree with the others")
    # The old id is refused, with a new empty disk as with --bootstrap.
    process = cluster.start("n3", bootstrap=True)
    assert process.wait(timeout=WAIT_S) == 3


def test_node_snapshot_compacts_the_named_partitions_of_one_node(cluster: LocalCluster) -> None:
    open_funded_pair(cluster, 0, "snap")  # something to compact
    taken = walletctl(cluster, "--json", "node", "snapshot", "--partition", "0",
                      "--partition", "1")
    assert taken.returncode == 0, taken.stderr
    answer = json.loads(taken.stdout)
    assert answer["positions"]["0"] >= 1 and set(answer["positions"]) == {"0", "1"}
    wait_until(lambda: any(
        p.partition == 0 and p.last_snapshot_position >= answer["positions"]["0"]
        for p in cluster.admin("n2").ClusterStatus(
            pb.ClusterStatusRequest(local_only=True), timeout=5).partitions),
        "n2's snapshot of partition 0 to be written")
