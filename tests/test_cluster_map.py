"""The cluster map's rules (node.cluster_map), without any process."""

from __future__ import annotations

import pytest

from node.cluster_map import (
    JOINING,
    LEAVING,
    META,
    SEEDED,
    VOTER,
    ClusterMap,
    MapChangeRefused,
    Slot,
    apply_command,
    bootstrap_map,
    decode_map,
    encode_map,
    node_command,
)
from node.config import ClusterConfig, NodeConfig, local_cluster_config
from node.services.admin_service import balanced_leaders


def config_for(partitions: int) -> ClusterConfig:
    """Three nodes on made-up ports (nothing listens: no process in these tests)."""
    ports = iter(range(20_000, 30_000))

    def allocate(count: int) -> int:
        first = next(ports)
        for _ in range(count - 1):
            next(ports)
        return first

    return local_cluster_config("unit", 3, partitions, allocate)


def three_nodes(partitions: int = 2) -> ClusterMap:
    return bootstrap_map(config_for(partitions))


def n4() -> NodeConfig:
    return NodeConfig("n4", "127.0.0.1", 31_000, 31_100)


def test_the_bootstrap_map_follows_the_cluster_file() -> None:
    cluster_map = three_nodes()
    assert cluster_map.version == 1
    assert [s.node_id for s in cluster_map.slots(0)] == ["n1", "n2", "n3"]
    assert [s.node_id for s in cluster_map.slots(META)] == ["n1", "n2", "n3"]
    assert all(s.state == VOTER for g in cluster_map.group_ids() for s in cluster_map.slots(g))


def test_the_metadata_group_has_five_voters_from_five_nodes_on() -> None:
    ports = iter(range(40_000, 50_000, 10))
    config = local_cluster_config("big", 7, 2, lambda count: next(ports))
    assert len(bootstrap_map(config).slots(META)) == 5


def test_every_command_bumps_the_version_and_keeps_the_old_map() -> None:
    before = three_nodes()
    after = apply_command(before, node_command("add_node", node=n4()))
    assert (before.version, after.version) == (1, 2)
    assert not before.has_node("n4") and after.has_node("n4")


def test_an_added_replica_joins_is_seeded_then_votes_once_caught_up() -> None:
    cluster_map = apply_command(three_nodes(), node_command("add_node", node=n4()))
    cluster_map = apply_command(cluster_map, {"op": "add_replica", "group": 0, "node_id": "n4"})
    assert cluster_map.slot_of(0, "n4") is not None
    assert cluster_map.slot_of(0, "n4").state == JOINING  # type: ignore[union-attr]
    cluster_map = apply_command(cluster_map, {"op": "replica_seeded", "group": 0,
                                              "node_id": "n4"})
    assert cluster_map.slot_of(0, "n4").state == SEEDED  # type: ignore[union-attr]
    cluster_map = apply_command(cluster_map, {"op": "replica_caught_up", "group": 0,
                                              "node_id": "n4"})
    assert cluster_map.slot_of(0, "n4").state == VOTER  # type: ignore[union-attr]


def test_only_a_joining_replica_can_be_marked_seeded() -> None:
    cluster_map = apply_command(three_nodes(), node_command("add_node", node=n4()))
    with pytest.raises(MapChangeRefused, match="not joining"):
        apply_command(cluster_map, {"op": "replica_seeded", "group": 0, "node_id": "n1"})
    cluster_map = apply_command(cluster_map, {"op": "add_replica", "group": 0, "node_id": "n4"})
    cluster_map = apply_command(cluster_map, {"op": "replica_seeded", "group": 0,
                                              "node_id": "n4"})
    with pytest.raises(MapChangeRefused, match="not joining"):  # repeating it is refused
        apply_command(cluster_map, {"op": "replica_seeded", "group": 0, "node_id": "n4"})


def test_a_seeded_replica_is_still_a_change_in_progress_and_is_never_preferred() -> None:
    cluster_map = apply_command(three_nodes(), node_command("add_node", node=n4()))
    cluster_map = apply_command(cluster_map, {"op": "add_replica", "group": 0, "node_id": "n4"})
    cluster_map = apply_command(cluster_map, {"op": "replica_seeded", "group": 0,
                                              "node_id": "n4"})
    assert cluster_map.change_in_progress(0) == Slot("n4", SEEDED)
    assert cluster_map.as_config(config_for(2)).replicas_of(0)[-1] == "n4"
    with pytest.raises(MapChangeRefused, match="membership change in progress"):
        apply_command(cluster_map, {"op": "remove_replica", "group": 0, "node_id": "n1"})
    cancelled = apply_command(cluster_map, {"op": "remove_replica", "group": 0,
                                            "node_id": "n4"})
    assert cancelled.slot_of(0, "n4").state == LEAVING  # type: ignore[union-attr]


def test_a_second_change_to_a_group_is_refused_while_one_is_in_progress() -> None:
    cluster_map = apply_command(three_nodes(), node_command("add_node", node=n4()))
    cluster_map = apply_command(cluster_map, {"op": "add_replica", "group": 0, "node_id": "n4"})
    with pytest.raises(MapChangeRefused, match="membership change in progress"):
        apply_command(cluster_map, {"op": "remove_replica", "group": 0, "node_id": "n1"})
    # Another group is free to change.
    apply_command(cluster_map, {"op": "add_replica", "group": 1, "node_id": "n4"})


def test_removing_a_joining_replica_cancels_its_addition() -> None:
    cluster_map = apply_command(three_nodes(), node_command("add_node", node=n4()))
    cluster_map = apply_command(cluster_map, {"op": "add_replica", "group": 0, "node_id": "n4"})
    with pytest.raises(MapChangeRefused, match="membership change in progress"):
        apply_command(cluster_map, {"op": "remove_replica", "group": 0, "node_id": "n1"})
    cancelled = apply_command(cluster_map, {"op": "remove_replica", "group": 0,
                                            "node_id": "n4"})
    assert cancelled.slot_of(0, "n4").state == LEAVING  # type: ignore[union-attr]


def test_a_removed_replica_leaves_then_disappears() -> None:
    cluster_map = apply_command(three_nodes(), {"op": "remove_replica", "group": 1,
                                                "node_id": "n2"})
    assert cluster_map.slot_of(1, "n2").state == LEAVING  # type: ignore[union-attr]
    assert cluster_map.as_config(config_for(2)).replicas_of(1)[-1] == "n2"  # never preferred
    cluster_map = apply_command(cluster_map, {"op": "replica_removed", "group": 1,
                                              "node_id": "n2"})
    assert cluster_map.slot_of(1, "n2") is None


def test_the_last_replica_of_a_group_cannot_be_removed() -> None:
    cluster_map = three_nodes()
    for node_id in ("n1", "n2"):
        cluster_map = apply_command(cluster_map, {"op": "remove_replica", "group": 0,
                                                  "node_id": node_id})
        cluster_map = apply_command(cluster_map, {"op": "replica_removed", "group": 0,
                                                  "node_id": node_id})
    with pytest.raises(MapChangeRefused, match="last replica"):
        apply_command(cluster_map, {"op": "remove_replica", "group": 0, "node_id": "n3"})


def test_a_node_hosting_replicas_cannot_be_removed() -> None:
    with pytest.raises(MapChangeRefused, match="still hosts replicas") as refused:
        apply_command(three_nodes(), {"op": "remove_node", "node_id": "n1"})
    assert refused.value.kind == "failed_precondition"


def test_a_new_node_cannot_take_ports_another_node_uses() -> None:
    taken = three_nodes().nodes[0]
    clash = NodeConfig("n4", taken.host, 31_000, taken.raft_port_base + 1)
    with pytest.raises(MapChangeRefused, match="already used by node 'n1'"):
        apply_command(three_nodes(), node_command("add_node", node=clash))


def test_unknown_nodes_and_partitions_are_not_found() -> None:
    with pytest.raises(MapChangeRefused) as unknown_node:
        apply_command(three_nodes(), {"op": "add_replica", "group": 0, "node_id": "n9"})
    assert unknown_node.value.kind == "not_found"
    with pytest.raises(MapChangeRefused) as unknown_partition:
        apply_command(three_nodes(), {"op": "add_replica", "group": 7, "node_id": "n1"})
    assert unknown_partition.value.kind == "not_found"


def test_a_node_started_again_with_another_data_dir_is_refused() -> None:
    cluster_map = apply_command(three_nodes(), {"op": "node_started", "node_id": "n1",
                                                "incarnation": "a"})
    assert cluster_map.incarnation_of("n1") == "a"
    with pytest.raises(MapChangeRefused, match="must not come back under its old id"):
        apply_command(cluster_map, {"op": "node_started", "node_id": "n1", "incarnation": "b"})


def test_the_encoding_round_trips_and_is_canonical() -> None:
    cluster_map = apply_command(three_nodes(), node_command("add_node", node=n4()))
    cluster_map = apply_command(cluster_map, {"op": "add_replica", "group": META,
                                              "node_id": "n4"})
    assert decode_map(encode_map(cluster_map)) == cluster_map
    assert encode_map(decode_map(encode_map(cluster_map))) == encode_map(cluster_map)


def test_rebalancing_spreads_leaders_evenly() -> None:
    cluster_map = three_nodes(partitions=6)
    # Make n1 everybody's preferred leader first.
    cluster_map = apply_command(cluster_map, {"op": "set_preferred_leaders",
                                              "leaders": {str(p): "n1" for p in range(6)}})
    leaders = balanced_leaders(cluster_map)
    counts = {n: list(leaders.values()).count(n) for n in ("n1", "n2", "n3")}
    assert counts == {"n1": 2, "n2": 2, "n3": 2}
    rebalanced = apply_command(cluster_map, {"op": "set_preferred_leaders",
                                             "leaders": {str(p): n for p, n in leaders.items()}})
    config = rebalanced.as_config(config_for(6))
    assert [config.replicas_of(p)[0] for p in range(6)] == [leaders[p] for p in range(6)]

