"""Storage faults that are not a flipped byte: lost files, shortened logs, a full disk.

A replica must start as a voter only with state that covers everything it
acknowledged (node/raft/replica_guard.py, node/raft/journal.py); otherwise one more
ordinary fault elects a leader without acknowledged transfers. A replica that
cannot write must end its process (node/fail_stop.py), so that a leader with a
full disk hands over within the election timeout.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.cli.launcher import start_node
from node.fail_stop import STORAGE_FAILED_EXIT_CODE
from node.raft.journal import DurableJournal
from node.server import EXIT_REFUSED, IDENTITY_FILE
from proto.wallet.v1 import wallet_pb2 as pb
from tests.cluster_harness import (
    WAIT_S,
    LocalCluster,
    call_until_done,
    converged,
    running_cluster,
    wait_until,
)
from tests.test_cluster_faults import assert_each_applied_once, open_funded_pair

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""

PARTITIONS = 2


def transfer_many(cluster: LocalCluster, payer: str, payee: str, count: int) -> list[str]:
    acknowledged = []
    for _ in range(count):
        transaction_id = str(uuid.uuid4())
        response = call_until_done(cluster, "Transfer", pb.TransferRequest(
            from_account=payer, to_account=payee, amount="1.00", currency="USD",
            transaction_id=transaction_id))
        assert response.status == pb.SUCCEEDED  # type: ignore[attr-defined]
        acknowledged.append(transaction_id)
    return acknowledged


def start_refused(cluster: LocalCluster, node_id: str, bootstrap: bool = False) -> str:
    """Start `node_id`, expect the refusal exit status; the log lines of this start."""
    log_before = len(cluster.log(node_id))
    process = cluster.start(node_id, bootstrap=bootstrap)
    assert process.wait(timeout=WAIT_S) == EXIT_REFUSED, cluster.log(node_id)[log_before:]
    cluster.killed.add(node_id)
    return cluster.log(node_id)[log_before:]


def journal_offsets(journal_path: Path) -> tuple[list[int], int, int]:
    """(byte offset of each record, first log index, commit index) of a healthy journal."""
    copy = journal_path.parent / "inspect" / "journal"
    copy.parent.mkdir()
    shutil.copy(journal_path, copy)
    shutil.copy(str(journal_path) + ".meta", str(copy) + ".meta")
    journal = DurableJournal(str(copy))
    try:
        return list(journal._record_offsets_bytes), int(journal[0][1]), journal.getRaftCommitIndex()
    finally:
        journal._destroy()
        shutil.rmtree(copy.parent)


def keep_only(directory: Path, names: set[str]) -> None:
    for path in directory.iterdir():
        if path.name not in names:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


Damage = Callable[[Path], None]


def remove(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).unlink()


def truncate_journal(partition_dir: Path, records_kept_from_end: int, mid_record: bool) -> None:
    journal = partition_dir / "journal"
    offsets, _, commit_index = journal_offsets(journal)
    assert commit_index >= len(offsets) - records_kept_from_end
    cut = offsets[-records_kept_from_end] + (7 if mid_record else 0)
    with open(journal, "r+b") as file:
        file.truncate(cut)


DAMAGES: dict[str, tuple[Damage, str]] = {
    "partition dir deleted": (
        lambda node: shutil.rmtree(node / "partition-0"),
        "lists this node as a voter of partition 0, but the directory holds no replica state"),
    "journal and meta deleted": (
        lambda node: remove(node / "partition-0", "journal", "journal.meta"),
        "its journal"),
    "meta deleted": (
        lambda node: (node / "partition-0" / "journal.meta").unlink(),
        "journal.meta is missing"),
    "all but identity and map deleted": (
        lambda node: keep_only(node, {IDENTITY_FILE, "cluster-map.json"}),
        "voter of"),
    "journal cut on a record boundary": (
        lambda node: truncate_journal(node / "partition-0", 2, mid_record=False),
        "the file was shortened"),
    "journal cut mid-record": (
        lambda node: truncate_journal(node / "partition-0", 2, mid_record=True),
        "the file was shortened"),
    "snapshot deleted": (
        lambda node: (node / "partition-1" / "snapshot").unlink(),
        "the snapshot of partition 1 is missing"),
}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path, nodes=3, partitions=PARTITIONS) as running:
        yield running


def test_a_second_process_on_a_live_data_dir_is_refused_before_it_opens_anything(
    cluster: LocalCluster,
) -> None:
    node_dir = cluster.node_dir("n1")
    journal = node_dir / "partition-0" / "journal"
    inode_before = journal.stat().st_ino
    second = start_node(cluster.config_path, "n1", node_dir, env=dict(cluster.env))
    try:
        assert second.wait(timeout=WAIT_S) == EXIT_REFUSED
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(timeout=WAIT_S)
    output = cluster.log("n1")
    assert "is in use by another process" in output
    assert "Traceback" not in output
    assert journal.stat().st_ino == inode_before
    assert cluster.processes["n1"].poll() is None  # the live node serves on


def test_a_replica_missing_acknowledged_state_refuses_to_start_whatever_was_lost(
    cluster: LocalCluster,
) -> None:
    payer, payee = open_funded_pair(cluster, 0, "lost")
    payer_1, payee_1 = open_funded_pair(cluster, 1, "snap")
    acknowledged = transfer_many(cluster, payer, payee, 20)
    transfer_many(cluster, payer_1, payee_1, 5)
    wait_until(lambda: converged(cluster), "replicas to agree")
    cluster.admin("n2").Snapshot(pb.SnapshotRequest(partition=1), timeout=30)
    snapshot = cluster.node_dir("n2") / "partition-1" / "snapshot"
    wait_until(snapshot.exists, "n2's snapshot of partition 1")
    time.sleep(1.5)  # the snapshot's journal trim and the meta's commit index (lazy, 1 s)
    for node in cluster.config.nodes:
        cluster.kill(node.id, signal.SIGTERM)
    _, first_index, _ = journal_offsets(cluster.node_dir("n2") / "partition-1" / "journal")
    assert first_index > 1, "the forced snapshot compacted n2's journal"

    pristine = cluster.root / "pristine-n2"
    shutil.copytree(cluster.node_dir("n2"), pristine)
    for what, (damage, message) in DAMAGES.items():
        shutil.rmtree(cluster.node_dir("n2"))
        shutil.copytree(pristine, cluster.node_dir("n2"))
        damage(cluster.node_dir("n2"))
        output = start_refused(cluster, "n2")
        assert message in output, f"{what}: {output[-2000:]}"
        assert "docs/operations.md" in output and "NEW id" in output, what

    # Nor does --bootstrap make a node that lost its replicas start them afresh.
    shutil.rmtree(cluster.node_dir("n2"))
    shutil.copytree(pristine, cluster.node_dir("n2"))
    keep_only(cluster.node_dir("n2"), {IDENTITY_FILE, "cluster-map.json"})
    output = start_refused(cluster, "n2", bootstrap=True)
    assert "already belongs to a node" in output, output[-2000:]

    shutil.rmtree(cluster.node_dir("n2"))
    shutil.copytree(pristine, cluster.node_dir("n2"))
    cluster.start_all(bootstrap=False)
    wait_until(lambda: converged(cluster), "the intact replicas to agree")
    assert_each_applied_once(cluster, payer, payee, acknowledged)


def _mount_tmpfs(directory: Path, size_mib: int) -> bool:
    directory.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs",
                              str(directory)], capture_output=True, check=False)
    return mounted.returncode == 0


def _fill(directory: Path) -> None:
    """Write a file until the filesystem is full (unbuffered: nothing left to flush later)."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for chunk_bytes in (1 << 20, 4096, 512, 1):
            chunk = bytes(chunk_bytes)
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def test_a_leader_whose_disk_fills_up_stops_and_the_partition_elects_another(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster(tmp_path, nodes=3, partitions=PARTITIONS)
    node_dirs = [cluster.node_dir(node.id) for node in cluster.config.nodes]
    try:
        for node_dir in node_dirs:  # a small filesystem of its own for every node's data dir
            if not _mount_tmpfs(node_dir, 64):
                pytest.fail("this test needs `mount -t tmpfs` (root): a size-limited "
                            "filesystem for each node's data dir")
        cluster.start_all()
        payer, payee = open_funded_pair(cluster, 0, "full")
        acknowledged = transfer_many(cluster, payer, payee, 5)
        leader = cluster.leader_of(0)
        _fill(cluster.node_dir(leader))
        started_s = time.monotonic()
        acknowledged += transfer_many(cluster, payer, payee, 5)
        assert cluster.processes[leader].wait(timeout=WAIT_S) == STORAGE_FAILED_EXIT_CODE
        cluster.killed.add(leader)
        assert "storage failed" in cluster.log(leader)
        wait_until(lambda: cluster.leader_of(0) != leader, "another leader of partition 0")
        failover_s = time.monotonic() - started_s
        assert failover_s < 20, f"partition 0 had no successful write for {failover_s:.1f} s"
        (cluster.node_dir(leader) / "filler").unlink()
        cluster.start(leader)
        wait_until(lambda: converged(cluster), f"{leader} to restart and catch up")
        assert_each_applied_once(cluster, payer, payee, acknowledged)
    finally:
        cluster.stop_all()
        for node_dir in node_dirs:
            subprocess.run(["umount", "-l", str(node_dir)], capture_output=True, check=False)
