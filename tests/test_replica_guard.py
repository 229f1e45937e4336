"""A replica starts only with state that covers what it acknowledged.

node/raft/replica_guard.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.cluster_map import LEAVING, SEEDED, VOTER, ClusterMap, Slot, SlotState
from node.config import NodeConfig, local_cluster_config
from node.raft.replica import RaftSettings
from node.raft.replica_guard import (
    MARKER_FILE,
    ReplicaStateMissing,
    check_log_covers,
    check_marker,
)
from node.raft.snapshot_file import RaftMeta
from node.server import NodeGroupFactory, StartRefused, check_identity, mark_initialised
from tests.cluster_harness import allocate_ports


def snapshot_at(index: int) -> RaftMeta:
    return RaftMeta(last_entry=(b"", index, 2), prev_entry=(b"", index - 1, 2), members=())


# -- the marker ---------------------------------------------------------------------


def test_a_bootstrapping_node_marks_its_new_replica_directory(tmp_path: Path) -> None:
    check_marker(tmp_path / "partition-0", 0, "n1", member=True, initialising=True)
    marker = json.loads((tmp_path / "partition-0" / MARKER_FILE).read_text())
    assert (marker["group"], marker["node_id"]) == (0, "n1")


def test_a_replica_being_added_marks_its_directory(tmp_path: Path) -> None:
    check_marker(tmp_path / "partition-3", 3, "n4", member=False, initialising=False)
    assert (tmp_path / "partition-3" / MARKER_FILE).exists()


def test_a_voter_whose_directory_is_gone_refuses(tmp_path: Path) -> None:
    with pytest.raises(ReplicaStateMissing, match="voter of partition 0, but the directory "
                                                  "holds no replica state"):
        check_marker(tmp_path / "partition-0", 0, "n1", member=True, initialising=False)
    assert not (tmp_path / "partition-0" / MARKER_FILE).exists()


def test_a_voter_whose_journal_is_gone_refuses(tmp_path: Path) -> None:
    directory = tmp_path / "partition-0"
    check_marker(directory, 0, "n1", member=True, initialising=True)
    with pytest.raises(ReplicaStateMissing, match=r"its journal .* is missing"):
        check_marker(directory, 0, "n1", member=True, initialising=False)


def test_a_directory_from_before_markers_is_marked_when_its_journal_exists(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "partition-1"
    directory.mkdir()
    (directory / "journal").write_bytes(b"...")
    check_marker(directory, 1, "n2", member=True, initialising=False)
    assert (directory / MARKER_FILE).exists()


def test_a_directory_copied_from_another_replica_refuses(tmp_path: Path) -> None:
    directory = tmp_path / "partition-0"
    check_marker(directory, 0, "n1", member=True, initialising=True)
    (directory / "journal").write_bytes(b"...")
    with pytest.raises(ReplicaStateMissing, match="copied from another replica"):
        check_marker(directory, 0, "n2", member=True, initialising=False)


def test_refusals_point_to_the_runbook_never_to_a_wipe(tmp_path: Path) -> None:
    with pytest.raises(ReplicaStateMissing) as refused:
        check_marker(tmp_path / "p", 0, "n1", member=True, initialising=False)
    assert "docs/operations.md" in str(refused.value) and "NEW id" in str(refused.value)
    assert "do not wipe the data dir" in str(refused.value)


# -- journal, snapshot and archive together ----------------------------------------


def test_a_whole_journal_needs_no_snapshot() -> None:
    check_log_covers("d", 0, journal_first_index=1, journal_last_index=50, snapshot=None,
                     archived_log_index=50)


def test_a_compacted_journal_without_its_snapshot_refuses() -> None:
    with pytest.raises(ReplicaStateMissing, match="snapshot of partition 0 is missing"):
        check_log_covers("d", 0, 40, 50, None, 45)


def test_a_snapshot_older_than_the_journal_start_refuses() -> None:
    with pytest.raises(ReplicaStateMissing, match="do not join up"):
        check_log_covers("d", 0, 40, 50, snapshot_at(30), 45)


def test_a_journal_starting_at_the_snapshots_last_entry_refuses_its_loader_needs_the_one_before(
) -> None:
    with pytest.raises(ReplicaStateMissing, match="do not join up"):
        check_log_covers("d", 0, 40, 50, snapshot_at(40), 45)


def test_a_snapshot_that_meets_the_compacted_journal_is_accepted() -> None:
    check_log_covers("d", 0, 39, 50, snapshot_at(40), 50)


def test_a_journal_behind_the_snapshot_is_accepted_the_snapshot_covers_it() -> None:
    check_log_covers("d", 0, 1, 20, snapshot_at(60), 60)


def test_an_archive_past_the_journal_and_snapshot_means_the_journal_was_shortened() -> None:
    with pytest.raises(ReplicaStateMissing, match=r"up to log index 70.*reach only 50"):
        check_log_covers("d", 2, 39, 50, snapshot_at(40), archived_log_index=70)


def test_the_metadata_group_is_named_in_messages() -> None:
    with pytest.raises(ReplicaStateMissing, match="snapshot of metadata is missing"):
        check_log_covers("d", -1, 5, 9, None, 0)


def test_an_emptied_journal_below_its_stored_commit_index_refuses() -> None:
    with pytest.raises(ReplicaStateMissing, match="records commit index 30"):
        check_log_covers("d", 0, 1, 1, None, 0, commit_index=30)


def test_an_emptied_journal_whose_snapshot_covers_the_commit_index_is_accepted() -> None:
    check_log_covers("d", 0, 1, 1, snapshot_at(40), 0, commit_index=30)


# -- which slots of the cluster map are members ------------------------------------


def one_group_map(state: SlotState) -> ClusterMap:
    nodes = tuple(NodeConfig(f"n{i}", "127.0.0.1", 7000 + i, 8000 + 10 * i) for i in (1, 2))
    slots = (Slot("n1", state), Slot("n2"))
    return ClusterMap(version=3, name="t", partition_count=1, nodes=nodes,
                      groups=(slots, (Slot("n2"),)))


def factory(tmp_path: Path) -> NodeGroupFactory:
    return NodeGroupFactory("n1", tmp_path, None, RaftSettings())


@pytest.mark.parametrize("state", [SEEDED, VOTER])
def test_a_seeded_or_voter_slot_whose_directory_is_gone_refuses(
    tmp_path: Path, state: SlotState,
) -> None:
    """A SEEDED replica was added to its Raft group: it votes and acknowledges."""
    with pytest.raises(ReplicaStateMissing, match="voter of partition 0"):
        factory(tmp_path).create(0, one_group_map(state), joining=state == SEEDED)


def test_a_leaving_slot_without_replica_state_is_not_hosted(tmp_path: Path) -> None:
    """An addition cancelled before its replica ever started leaves a LEAVING slot; one
    whose state was lost is not started either: it would vote with nothing, and it is
    on its way out of the group."""
    assert factory(tmp_path).create(0, one_group_map(LEAVING), joining=False) is None
    assert not (tmp_path / "partition-0").exists()


# -- the node's first start --------------------------------------------------------


def test_a_first_start_cut_short_may_be_retried_and_a_completed_one_refuses_bootstrap(
    tmp_path: Path,
) -> None:
    config = local_cluster_config("t", 3, 2, allocate_ports)
    data_dir = tmp_path / "n1"
    incarnation, first_start_open = check_identity(data_dir, config, "n1", bootstrap=True)
    assert first_start_open
    # A crash before the replicas were created: the same start may run again, with the flag.
    assert check_identity(data_dir, config, "n1", bootstrap=True) == (incarnation, True)
    assert check_identity(data_dir, config, "n1", bootstrap=False) == (incarnation, True)
    mark_initialised(data_dir)
    assert check_identity(data_dir, config, "n1", bootstrap=False) == (incarnation, False)
    with pytest.raises(StartRefused, match="already belongs to a node that has started"):
        check_identity(data_dir, config, "n1", bootstrap=True)
