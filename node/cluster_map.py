"""The cluster map: which nodes exist and which replicas each Raft group has, versioned.

The map is the truth about membership once a cluster runs (the cluster file only
bootstraps it). It lives in the metadata Raft group (`node.raft.metadata_group`) and
every node keeps a cached copy, so routing keeps working while that group has
no leader. This module is pure: a map, the commands that change it, and a
deterministic `apply` that every metadata replica runs in log order.

Groups are the partitions 0..P-1 and the metadata group itself (`META`). Each
group has slots, one per replica, in preference order (the first voter is the
preferred leader). A slot is a `voter`, `joining` (added to the map; its node
pre-seeds the replica from a peer's snapshot, node/membership/preseed.py), `seeded` (the
replica holds that snapshot: the group's leader adds it to the Raft group and
it catches up on the log tail) or `leaving` (being removed from the Raft
group). A group with a joining, seeded or leaving slot has a membership change
in progress, and a second one is refused: pysyncobj changes one server at a time.

Secrets never enter the map: it is served to clients and written to disk.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from node.config import ClusterConfig, NodeConfig

__all__ = [
    "ADDING",
    "JOINING",
    "LEAVING",
    "META",
    "SEEDED",
    "VOTER",
    "ClusterMap",
    "MapChangeRefused",
    "Slot",
    "apply_command",
    "bootstrap_map",
    "decode_map",
    "encode_map",
    "group_name",
    "meta_voter_count",
]

META = -1
"""Group id of the metadata group; partitions are 0..P-1."""

VOTER: Literal["voter"] = "voter"
JOINING: Literal["joining"] = "joining"
LEAVING: Literal["leaving"] = "leaving"
SEEDED: Literal["seeded"] = "seeded"
SlotState = Literal["voter", "joining", "seeded", "leaving"]
_STATES = (VOTER, JOINING, SEEDED, LEAVING)
ADDING = (JOINING, SEEDED)
"""The states of a slot on its way in (not yet a voter in the map)."""

META_VOTERS_SMALL = 3
META_VOTERS_LARGE = 5
"""The metadata group has 3 voters, or 5 once the bootstrap file has 5 nodes or more."""


class MapChangeRefused(ValueError):
    """A map command that cannot be applied; the message says why and what to do.

    `kind` names the gRPC status it maps to: "not_found", "already_exists" or
    "failed_precondition" (the default).
    """

    def __init__(self, message: str, kind: str = "failed_precondition") -> None:
        super().__init__(message)
        self.kind = kind


def group_name(group: int) -> str:
    return "the metadata group" if group == META else f"partition {group}"


def meta_voter_count(node_count: int) -> int:
    return min(node_count, META_VOTERS_LARGE if node_count >= META_VOTERS_LARGE
               else META_VOTERS_SMALL)


@dataclasses.dataclass(frozen=True, slots=True)
class Slot:
    node_id: str
    state: SlotState = VOTER


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterMap:
    """A version of the cluster's membership. Immutable: commands return a new map."""

    version: int
    name: str
    partition_count: int
    nodes: tuple[NodeConfig, ...]
    groups: tuple[tuple[Slot, ...], ...]
    """groups[p] for partition p; groups[partition_count] is the metadata group."""
    incarnations: tuple[tuple[str, str], ...] = ()
    """(node id, incarnation) of every node that has started once, sorted by id."""

    def __post_init__(self) -> None:
        assert self.version >= 1, "map versions start at 1"
        assert len(self.groups) == self.partition_count + 1, "one slot list per group"
        ids = [n.id for n in self.nodes]
        assert len(set(ids)) == len(ids), "node ids are unique"
        for slots in self.groups:
            members = [s.node_id for s in slots]
            assert len(set(members)) == len(members), "a node is in a group once"
            assert all(m in ids for m in members), "slots name known nodes"
            assert all(s.state in _STATES for s in slots)

    # -- reading ---------------------------------------------------------------------

    def slots(self, group: int) -> tuple[Slot, ...]:
        if group == META:
            return self.groups[self.partition_count]
        if not 0 <= group < self.partition_count:
            raise MapChangeRefused(
                f"partition {group} does not exist (partitions 0..{self.partition_count - 1})",
                "not_found")
        return self.groups[group]

    def group_ids(self) -> Iterator[int]:
        yield from range(self.partition_count)
        yield META

    def node(self, node_id: str) -> NodeConfig:
        for node in self.nodes:
            if node.id == node_id:
                return node
        known = ", ".join(n.id for n in self.nodes)
        raise MapChangeRefused(f"no node {node_id!r} in the cluster map (nodes: {known})",
                               "not_found")

    def has_node(self, node_id: str) -> bool:
        return any(n.id == node_id for n in self.nodes)

    def groups_of(self, node_id: str) -> tuple[int, ...]:
        """Groups with a slot for `node_id`, partitions ascending, META last."""
        return tuple(g for g in self.group_ids()
                     if any(s.node_id == node_id for s in self.slots(g)))

    def slot_of(self, group: int, node_id: str) -> Slot | None:
        for slot in self.slots(group):
            if slot.node_id == node_id:
                return slot
        return None

    def raft_address(self, group: int, node_id: str) -> str:
        node = self.node(node_id)
        port = node.raft_port_base + (self.partition_count if group == META else group)
        return f"{node.host}:{port}"

    def incarnation_of(self, node_id: str) -> str | None:
        return dict(self.incarnations).get(node_id)

    def change_in_progress(self, group: int) -> Slot | None:
        for slot in self.slots(group):
            if slot.state != VOTER:
                return slot
        return None

    def as_config(self, base: ClusterConfig) -> ClusterConfig:
        """`base` (secrets and settings from the local cluster file) with this map's nodes
        and placement: what routing, forwarding and status read.

        Placement lists voters first (preferred leader first), then joining and seeded
        slots;
        leaving slots come last, so nobody prefers a replica on its way out.
        """
        placement = []
        for p in range(self.partition_count):
            slots = self.slots(p)
            ordered = ([s.node_id for s in slots if s.state == VOTER]
                       + [s.node_id for s in slots if s.state in ADDING]
                       + [s.node_id for s in slots if s.state == LEAVING])
            placement.append(tuple(ordered))
        return dataclasses.replace(base, nodes=self.nodes, placement=tuple(placement))


def bootstrap_map(config: ClusterConfig) -> ClusterMap:
    """Version 1: the cluster file's nodes and placement; the first nodes vote on the map."""
    voters = [n.id for n in config.nodes][:meta_voter_count(len(config.nodes))]
    groups = [tuple(Slot(n) for n in config.replicas_of(p))
              for p in range(config.partition_count)]
    groups.append(tuple(Slot(n) for n in voters))
    return ClusterMap(1, config.name, config.partition_count, config.nodes, tuple(groups))


# -- commands ---------------------------------------------------------------------------


def apply_command(current: ClusterMap, command: Mapping[str, Any]) -> ClusterMap:
    """The map after `command`, version + 1; MapChangeRefused leaves `current` as it is.

    Deterministic: the same map and command give the same result on every replica.
    """
    kind = command.get("op")
    handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
    if handler is None:
        raise MapChangeRefused(f"unknown cluster map command {kind!r}", "invalid_argument")
    changed = handler(current, command)
    return dataclasses.replace(changed, version=current.version + 1)


def _set_slots(current: ClusterMap, group: int, slots: tuple[Slot, ...]) -> ClusterMap:
    index = current.partition_count if group == META else group
    groups = list(current.groups)
    groups[index] = slots
    return dataclasses.replace(current, groups=tuple(groups))


def _add_node(current: ClusterMap, command: Mapping[str, Any]) -> ClusterMap:
    node = _node_from_json(command["node"])
    if current.has_node(node.id):
        raise MapChangeRefused(f"node {node.id!r} already exists in the cluster map",
                               "already_exists")
    mine = _ports(node, current.partition_count)
    for other in current.nodes:
        if other.host != node.host:
            continue
        clash = mine & _ports(other, current.partition_count)
        if clash:
            raise MapChangeRefused(
                f"node {node.id!r} would listen on port {min(clash)} of {node.host}, "
                f"already used by node {other.id!r}")
    return dataclasses.replace(current, nodes=(*current.nodes, node))


def _ports(node: NodeConfig, partition_count: int) -> set[int]:
    ports = {node.grpc_port, *range(node.raft_port_base,
                                    node.raft_port_base + partition_count + 1)}
    if node.metrics_port is not None:
        ports.add(node.metrics_port)
    return ports


def _remove_node(current: ClusterMap, command: Mapping[str, Any]) -> ClusterMap:
    node_id = str(command["node_id"])
    current.node(node_id)
    hosted = current.groups_of(node_id)
    if hosted:
        names = ", ".join(group_name(g) for g in hosted)
        raise MapChangeRefused(
            f"node {node_id!r} still hosts replicas ({names}): move them first with "
            f"`walletctl node drain {node_id}`")
    return dataclasses.replace(
        current, nodes=tuple(n for n in current.nodes if n.id != node_id),
        incarnations=tuple(i for i in current.incarnations if i[0] != node_id))


def _add_replica(current: ClusterMap, command: Mapping[str, Any]) -> ClusterMap:
    group, node_id = int(command["group"]), str(command["node_id"])
    slots = current.slots(group)
    current.node(node_id)
    busy = current.change_in_progress(group)
    if busy is not None:
        raise MapChangeRefused(
            f"{group_name(group)} already has a membership change in progress "
            f"({busy.node_id} is {busy.state}); one change per group at a time: wait for it")
    if current.slot_of(group, node_id) is not None:
        raise MapChangeRefused(f"node {node_id!r} already hosts {group_name(group)}",
                               "already_exists")
    return _set_slots(current, group, (*slots, Slot(node_id, JOINING)))


def _remove_replica(current: ClusterMap, command: Mapping[str, Any]) -> ClusterMap:
    group, node_id = int(command["group"]), str(command["node_id"])
    slots = current.slots(group)
    slot = current.slot_of(group, node_id)
    if slot is None:
        raise MapChangeRefused(f"node {node_id!r} does not host {group_name(group)}",
                               "not_found")
    busy = current.change_in_progress(group)
    cancelling = busy is not None and busy.node_id == node_id and busy.state in ADDING
    if busy is not None and not cancelling:
        raise MapChangeRefused(
            f"{group_name(group)} already has a membership change in progress "
            f"({busy.node_id} is {busy.state}); one change per group at a time: wait for it")
    # Removing a joining replica cancels its addition (e.g. its node was lost meanwhile):
    # it leaves like any other replica, from the Raft group if it got there.
    voters = [s for s in slots if s.state == VOTER and s.node_id != node_id]
    if not voters:
        raise MapChangeRefused(
            f"node {node_id!r} holds the last replica of {group_name(group)}: add a replica "
            "elsewhere first")
    return _set_slots(current, group, tuple(
        Slot(s.node_id, LEAVING) if s.node_id == node_id else s for s in slots))


def _replica_seeded(current: ClusterMap, command: Mapping[str, Any]) -> ClusterMap:
    """The joining node: its replica holds a peer's snapshot (or, for the metadata group
    and partitions nobody has snapshotted yet, needs none): the leader may add it."""
    group, node_id = int(command["group"]), str(command["node_id"])
    slot = current.slot_of(group, node_id)
    if slot is None or slot.state != JOINING:
        raise MapChangeRefused(f"node {node_id!r} is not joining {group_name(group)}")
    return _set_slots(current, group, tuple(
        Slot(s.node_id, SEEDED) if s.node_id == node_id else s for s in current.slots(group)))


def _replica_caught_up(current: ClusterMap, command: Mapping[str, Any]) -> ClusterMap:
    """Reconciler: a seeded replica is a member of its Raft group and caught up.

    A `joining` slot is accepted too: one added to its Raft group before pre-seeding
    existed (the leader adds only seeded slots now).
    """
    group, node_id = int(command["group"]), str(command["node_id"])
    slot = current.slot_of(group, node_id)
    if slot is None or slot.state not in ADDING:
        raise MapChangeRefused(f"node {node_id!r} is not joining {group_name(group)}")
    return _set_slots(current, group, tuple(
        Slot(s.node_id, VOTER) if s.node_id == node_id else s for s in current.slots(group)))


def _replica_removed(current: ClusterMap, command: Mapping[str, Any]) -> ClusterMap:
    """Reconciler: a leaving replica is no longer a member of its Raft group."""
    group, node_id = int(command["group"]), str(command["node_id"])
    slot = current.slot_of(group, node_id)
    if slot is None or slot.state != LEAVING:
        raise MapChangeRefused(f"node {node_id!r} is not leaving {group_name(group)}")
    return _set_slots(current, group, tuple(
        s for s in current.slots(group) if s.node_id != node_id))


def _node_started(current: ClusterMap, command: Mapping[str, Any]) -> ClusterMap:
    """A node's first start records its incarnation; another incarnation is refused.

    A node whose data dir was lost comes back with a new incarnation (a new
    identity file): under its old id it would have forgotten its log and votes.
    """
    node_id, incarnation = str(command["node_id"]), str(command["incarnation"])
    current.node(node_id)
    known = current.incarnation_of(node_id)
    if known == incarnation:
        raise MapChangeRefused("already recorded")
    if known is not None:
        raise MapChangeRefused(
            f"node {node_id!r} already started with another data dir (incarnation {known}); "
            "a node whose disk was lost must not come back under its old id: remove it and "
            "add a node under a new id (docs/operations.md)")
    return dataclasses.replace(
        current, incarnations=tuple(sorted((*current.incarnations, (node_id, incarnation)))))


def _set_preferred_leaders(current: ClusterMap, command: Mapping[str, Any]) -> ClusterMap:
    """Reorder each named partition's voters so that the given node comes first."""
    changed = current
    for group_text, node_id in sorted(dict(command["leaders"]).items()):
        group = int(group_text)
        slots = changed.slots(group)
        if changed.slot_of(group, node_id) is None:
            raise MapChangeRefused(f"node {node_id!r} does not host {group_name(group)}")
        first = [s for s in slots if s.node_id == node_id]
        changed = _set_slots(changed, group, (*first, *(s for s in slots
                                                         if s.node_id != node_id)))
    return changed


_HANDLERS = {
    "add_node": _add_node,
    "remove_node": _remove_node,
    "add_replica": _add_replica,
    "remove_replica": _remove_replica,
    "replica_seeded": _replica_seeded,
    "replica_caught_up": _replica_caught_up,
    "replica_removed": _replica_removed,
    "node_started": _node_started,
    "set_preferred_leaders": _set_preferred_leaders,
}


# -- encoding -------------------------------------------------------------------------


def _node_to_json(node: NodeConfig) -> dict[str, Any]:
    return {"id": node.id, "host": node.host, "grpc_port": node.grpc_port,
            "raft_port_base": node.raft_port_base, "metrics_port": node.metrics_port}


def _node_from_json(data: Mapping[str, Any]) -> NodeConfig:
    metrics = data.get("metrics_port")
    return NodeConfig(str(data["id"]), str(data["host"]), int(data["grpc_port"]),
                      int(data["raft_port_base"]), None if metrics is None else int(metrics))


def encode_map(cluster_map: ClusterMap) -> bytes:
    """Canonical JSON (sorted keys): equal maps give equal bytes."""
    document = {
        "version": cluster_map.version,
        "name": cluster_map.name,
        "partition_count": cluster_map.partition_count,
        "nodes": [_node_to_json(n) for n in cluster_map.nodes],
        "groups": [[[s.node_id, s.state] for s in slots] for slots in cluster_map.groups],
        "incarnations": [list(i) for i in cluster_map.incarnations],
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def decode_map(data: bytes) -> ClusterMap:
    document = json.loads(data)
    return ClusterMap(
        version=int(document["version"]),
        name=str(document["name"]),
        partition_count=int(document["partition_count"]),
        nodes=tuple(_node_from_json(n) for n in document["nodes"]),
        groups=tuple(tuple(Slot(str(n), s) for n, s in slots) for slots in document["groups"]),
        incarnations=tuple((str(a), str(b)) for a, b in document["incarnations"]),
    )


def node_command(op: str, **fields: Any) -> dict[str, Any]:
    """A command as a JSON-able dict (NodeConfig values are converted)."""
    return {"op": op, **{k: _node_to_json(v) if isinstance(v, NodeConfig) else v
                         for k, v in fields.items()}}
