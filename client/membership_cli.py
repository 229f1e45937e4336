"""`walletctl` membership commands: node add/remove/drain, replica add/remove, cluster map,
cluster rebalance-leaders (docs/operations.md).

Each command calls AdminService on the first node that answers; the node changes the
cluster map through the metadata group, and every node's reconciler then makes the
Raft groups converge to it. `replica add/remove` and `node drain` wait (with
progress lines) until the Raft groups have converged, unless --no-wait.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from client.auth import Credentials, open_channel
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc

META = -1
POLL_PERIOD_S = 0.5
DEFAULT_WAIT_S = 300.0
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class MembershipError(Exception):
    """A refused or failed membership command; the message is for the operator."""


@dataclass(frozen=True)
class MapView:
    """The parts of the cluster map (node.cluster_map's JSON) the commands need."""

    version: int
    nodes: tuple[str, ...]
    groups: dict[int, list[tuple[str, str]]]
    """group id (META = -1) -> [(node id, slot state)]"""
    raw: dict[str, Any]

    @classmethod
    def parse(cls, map_json: str) -> MapView:
        document = json.loads(map_json)
        partition_count = int(document["partition_count"])
        groups: dict[int, list[tuple[str, str]]] = {}
        for index, slots in enumerate(document["groups"]):
            group = META if index == partition_count else index
            groups[group] = [(str(n), str(s)) for n, s in slots]
        return cls(int(document["version"]), tuple(n["id"] for n in document["nodes"]),
                   groups, document)

    def groups_of(self, node_id: str) -> list[int]:
        return [g for g, slots in sorted(self.groups.items(), key=lambda kv: (kv[0] < 0, kv[0]))
                if any(n == node_id for n, _ in slots)]

    def state_of(self, group: int, node_id: str) -> str | None:
        for n, state in self.groups[group]:
            if n == node_id:
                return state
        return None


def group_name(group: int) -> str:
    return "the metadata group" if group == META else f"partition {group}"


class AdminClient:
    """AdminService / GetClusterMap on the first of `targets` that answers."""

    def __init__(self, targets: tuple[str, ...], credentials: Credentials,
                 timeout_s: float) -> None:
        self.targets = targets
        self.credentials = credentials
        self.timeout_s = timeout_s

    def _call(self, service: str, method: str, request: Any) -> Any:
        last: grpc.RpcError | None = None
        for target in self.targets:
            channel = open_channel(target, self.credentials)
            try:
                stub: Any = (wallet_pb2_grpc.AdminServiceStub(channel) if service == "admin"
                             else wallet_pb2_grpc.WalletServiceStub(channel))
                return getattr(stub, method)(request, timeout=self.timeout_s)
            except grpc.RpcError as exc:
                last = exc
                if exc.code() not in _RETRYABLE:
                    raise MembershipError(f"{exc.code().name}: {exc.details()}") from None
            finally:
                channel.close()
        detail = f"{last.code().name}: {last.details()}" if last is not None else "no target"
        raise MembershipError(f"no node answered ({detail})")

    def admin(self, method: str, request: Any) -> Any:
        return self._call("admin", method, request)

    def cluster_map(self) -> MapView:
        response = self._call("wallet", "GetClusterMap", pb.GetClusterMapRequest())
        return MapView.parse(response.map_json)


def wait_for(client: AdminClient, done: Callable[[MapView], bool], what: str,
             wait_s: float, say: Callable[[str], None]) -> MapView:
    """Poll the map until `done`; progress every few seconds; MembershipError on timeout."""
    deadline = time.monotonic() + wait_s
    said_at = time.monotonic()
    while True:
        try:
            view = client.cluster_map()
            if done(view):
                return view
        except MembershipError:
            pass  # a node restarting or a leader changing: keep polling
        if time.monotonic() > deadline:
            raise MembershipError(f"timed out after {wait_s:.0f} s waiting for {what}; the "
                                  "change goes on in the background: see `walletctl cluster "
                                  "map`")
        if time.monotonic() - said_at > 5.0:
            said_at = time.monotonic()
            say(f"  ... still waiting for {what}")
        time.sleep(POLL_PERIOD_S)


def add_replica(client: AdminClient, group: int, node_id: str, wait: bool, wait_s: float,
                say: Callable[[str], None]) -> int:
    response = client.admin("AddReplica", pb.AddReplicaRequest(
        partition=max(group, 0), node_id=node_id, metadata_group=group == META))
    say(f"{group_name(group)}: {node_id} joining (map v{response.map_version})")
    if not wait:
        return int(response.map_version)
    view = wait_for(client, lambda v: v.state_of(group, node_id) == "voter",
                    f"{node_id} to be pre-seeded from a snapshot (joining -> seeded) and "
                    f"catch up on {group_name(group)}", wait_s, say)
    say(f"{group_name(group)}: {node_id} is a caught-up voter (map v{view.version})")
    return view.version


def remove_replica(client: AdminClient, group: int, node_id: str, wait: bool, wait_s: float,
                   say: Callable[[str], None]) -> int:
    response = client.admin("RemoveReplica", pb.RemoveReplicaRequest(
        partition=max(group, 0), node_id=node_id, metadata_group=group == META))
    say(f"{group_name(group)}: {node_id} leaving (map v{response.map_version})")
    if not wait:
        return int(response.map_version)
    view = wait_for(client, lambda v: v.state_of(group, node_id) is None,
                    f"{node_id} to leave {group_name(group)}", wait_s, say)
    say(f"{group_name(group)}: {node_id} removed (map v{view.version})")
    return view.version


def drain_targets(view: MapView, node_id: str) -> list[tuple[int, str | None]]:
    """For each group of `node_id`: the node to move it to (fewest replicas first, not
    already in that group, never `node_id`), or None when every other node already has
    one (the replica is then only removed: the group shrinks by one).
    """
    load = {n: len(view.groups_of(n)) for n in view.nodes if n != node_id}
    moves: list[tuple[int, str | None]] = []
    for group in view.groups_of(node_id):
        members = {n for n, _ in view.groups[group]}
        candidates = sorted((count, n) for n, count in load.items() if n not in members)
        if not candidates:
            moves.append((group, None))
            continue
        target = candidates[0][1]
        load[target] += 1
        moves.append((group, target))
    return moves


def drain(client: AdminClient, node_id: str, wait_s: float, say: Callable[[str], None]) -> int:
    """Move every replica of `node_id` elsewhere: add the new one, then remove the old."""
    view = client.cluster_map()
    if node_id not in view.nodes:
        raise MembershipError(f"no node {node_id!r} in the cluster map")
    moves = drain_targets(view, node_id)
    if not moves:
        say(f"{node_id} hosts no replica: nothing to drain")
        return view.version
    say(f"draining {node_id}: {len(moves)} replica(s) to move")
    version = view.version
    for index, (group, target) in enumerate(moves, 1):
        if target is None:
            say(f"[{index}/{len(moves)}] {group_name(group)}: every other node has a replica; "
                f"removing {node_id}'s")
        else:
            say(f"[{index}/{len(moves)}] {group_name(group)}: {node_id} -> {target}")
            add_replica(client, group, target, True, wait_s, say)
        version = remove_replica(client, group, node_id, True, wait_s, say)
    say(f"{node_id} drained; remove it with `walletctl node remove {node_id}`")
    return version


def map_rows(view: MapView) -> list[tuple[str, str]]:
    rows = []
    for group in sorted(view.groups, key=lambda g: (g < 0, g)):
        slots = " ".join(n if s == "voter" else f"{n}({s})" for n, s in view.groups[group])
        rows.append((group_name(group), slots))
    return rows


def node_rows(view: MapView) -> list[tuple[str, str, str]]:
    """(node id, host:grpc_port, its groups or `none`) of every node of the map, in map order:
    a node that holds no replica (one just added, or drained) is listed too."""
    rows = []
    for node in view.raw["nodes"]:
        node_id, host, port = str(node["id"]), str(node["host"]), int(node["grpc_port"])
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        groups = view.groups_of(node_id)
        partitions = [str(g) for g in groups if g != META]
        held = ([f"partitions {','.join(partitions)}"] if partitions else []) + (
            ["metadata"] if META in groups else [])
        rows.append((node_id, address, " + ".join(held) or "none"))
    return rows


def add_arguments_for_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-wait", action="store_true",
                        help="return once the map has changed, without waiting for the Raft "
                             "groups to converge")
    parser.add_argument("--wait-s", type=float, default=DEFAULT_WAIT_S, metavar="SECONDS",
                        help=f"how long to wait for convergence (default {DEFAULT_WAIT_S:g})")
