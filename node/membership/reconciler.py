"""Membership at run time: the cached cluster map, map changes, and the reconciler.

Every node keeps the newest cluster map it has seen (`MapCache`, also on disk,
so a restart routes by the map, not by the bootstrap file). Metadata voters
read it from their replica of the metadata group; the other nodes poll a
voter. Routing, forwarding and the saga driver read `host.config`, which is
the cached map laid over the local cluster file: they keep working while the
metadata group has no leader.

The reconciler (`Membership.tick`, every half second on the node's loop) makes
reality converge to the map, one step at a time, and each step is safe to
repeat after a crash:
- a slot of this node without a local replica: start it (a `joining` slot holds
  its elections until it hears a leader, see `replica.hold_elections`); a
  `joining` partition slot without local data is first pre-seeded from a peer's
  snapshot (node/membership/preseed.py);
- a `joining` slot of this node whose replica has loaded its snapshot (the
  metadata group: once started): mark it `seeded` in the map;
- a local replica without a slot (it was removed from its group): stop it and
  move its data dir aside, never delete it;
- on the leader of a group: add a `seeded` slot's node to the Raft group (never a
  `joining` one: it would be shipped the whole snapshot), mark it a voter in the
  map once it has caught up; hand leadership away from a `leaving`
  slot, remove that node from the Raft group, then drop the slot from the map;
  report Raft members that the map does not know (and remove them once the
  difference has lasted long enough to rule out a stale map).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc

from client.auth import NO_CREDENTIALS, Credentials, open_channel
from node.api import ApiError
from node.cluster_map import (
    ADDING,
    JOINING,
    LEAVING,
    META,
    SEEDED,
    VOTER,
    ClusterMap,
    decode_map,
    encode_map,
    group_name,
)
from node.config import ClusterConfig
from node.membership.preseed import NoPeerAnswered, Preseeder
from node.raft import outcomes, snapshot_file
from node.raft.metadata_group import MapResult, MetadataGroup
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc

log = logging.getLogger(__name__)

MAP_FILE = "cluster-map.json"
MAP_POLL_PERIOD_S = 1.0
VOTER_POLL_PERIOD_S = 5.0
RECONCILE_PERIOD_S = 0.5
PROPOSE_TIMEOUT_S = 10.0
CAUGHT_UP_ENTRIES_MAX = 50
"""A joining replica counts as caught up once its match index is this close to the commit."""
RAFT_CHANGE_TIMEOUT_S = 15.0
TRANSFER_RETRY_S = 3.0
STRAY_MEMBER_GRACE_S = 20.0
"""A Raft member the map does not know is removed only after this long (a stale map
on a new leader must not undo a change another node just made)."""
PROPOSAL_HOLD_S = 1.0
"""Proposals paused on a group while its leadership is handed over (pysyncobj
refuses a transfer unless the target has every entry)."""

_STATUS_BY_KIND = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
}


def status_of_refusal(kind: str) -> grpc.StatusCode:
    """The gRPC status of a map refusal's `kind` (cluster_map.MapChangeRefused.kind)."""
    return _STATUS_BY_KIND.get(kind, grpc.StatusCode.FAILED_PRECONDITION)


class MapFileCorrupt(Exception):
    """The cached cluster map cannot be read: the node must not guess its membership."""


class MapCache:
    """The newest map this node has seen; versions only move forward; kept on disk."""

    def __init__(self, path: Path, initial: ClusterMap) -> None:
        self.path = path
        self.current = initial
        self.listeners: list[Callable[[ClusterMap], None]] = []

    @staticmethod
    def load(path: Path) -> ClusterMap | None:
        if not path.exists():
            return None
        try:
            return decode_map(path.read_bytes())
        except (ValueError, KeyError, TypeError) as exc:
            raise MapFileCorrupt(
                f"{path}: cannot read the cached cluster map ({exc}); restore it from another "
                "node's data dir, or remove it to fetch the map from the other nodes") from exc

    def offer(self, candidate: ClusterMap) -> bool:
        """Keep `candidate` if it is newer; True when it was."""
        if candidate.version <= self.current.version:
            return False
        assert candidate.name == self.current.name, "a map of another cluster"
        self.current = candidate
        self.save()
        for listener in self.listeners:
            listener(candidate)
        return True

    def save(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "wb") as file:
            file.write(encode_map(self.current))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
        snapshot_file.fsync_directory(str(self.path.parent))


@dataclass(frozen=True)
class FetchedMap:
    """What asking the seeds for the map gave: the newest map, and whether some seed
    was there but did not answer in time (a paused or overloaded node, not one down)."""

    cluster_map: ClusterMap | None
    some_seed_silent: bool


def fetch_map_once(addresses: list[str], credentials: Credentials = NO_CREDENTIALS,
                   timeout_s: float = 2.0) -> FetchedMap:
    """The newest map any of `addresses` serves (blocking; used before the node starts)."""
    best: ClusterMap | None = None
    silent = False
    for address in addresses:
        channel = open_channel(address, credentials)
        try:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            response = stub.GetClusterMap(pb.GetClusterMapRequest(), timeout=timeout_s)
            candidate = decode_map(response.map_json.encode())
            if best is None or candidate.version > best.version:
                best = candidate
        except grpc.RpcError as exc:
            # UNAVAILABLE: nothing listens there (down, or not started yet); anything
            # else (a deadline, a node starting up) means a node that may hold the map.
            silent = silent or exc.code() != grpc.StatusCode.UNAVAILABLE
        finally:
            channel.close()
    return FetchedMap(best, silent)


def fetch_map(addresses: list[str], credentials: Credentials = NO_CREDENTIALS,
              must_answer_s: float = 0.0, silent_wait_s: float = 0.0,
              timeout_s: float = 1.0) -> ClusterMap | None:
    """Ask the seeds until one answers: for up to `must_answer_s` whatever happens (a
    joining node needs the map), and for up to `silent_wait_s` while some seed is there
    but silent (a bootstrapping node must not mistake a paused cluster for none)."""
    started = time.monotonic()
    backoff_s = 0.2
    while True:
        fetched = fetch_map_once(addresses, credentials, timeout_s)
        if fetched.cluster_map is not None:
            return fetched.cluster_map
        waited_s = time.monotonic() - started
        if waited_s >= must_answer_s and not (fetched.some_seed_silent
                                              and waited_s < silent_wait_s):
            return None
        log.info("no node answered with the cluster map yet; asking again",
                 extra={"waited_s": round(waited_s, 1)})
        time.sleep(backoff_s)
        backoff_s = min(backoff_s * 2, 2.0)


class RaftGroup(Protocol):
    """What the reconciler needs of a partition replica or of the metadata group."""

    address: str

    def is_leader(self) -> bool: ...
    def status(self) -> dict[str, Any]: ...
    def call_on_tick(self, call: Callable[[], None]) -> None: ...


class HostLike(Protocol):
    config: ClusterConfig
    node_id: str

    def group(self, group: int) -> RaftGroup | None: ...
    async def start_group(self, group: int, cluster_map: ClusterMap, joining: bool) -> None: ...
    async def stop_group(self, group: int, map_version: int) -> None: ...
    def hold_proposals(self, group: int, duration_s: float) -> None: ...
    def channel(self, address: str) -> grpc.aio.Channel: ...


@dataclass
class _GroupProgress:
    """Leader-side bookkeeping of one group's membership change."""

    raft_change_since: float | None = None
    transfer_at: float = 0.0
    stray_since: dict[str, float] = field(default_factory=dict)
    map_proposal_at: float = 0.0


class Membership:
    def __init__(self, host: HostLike, base_config: ClusterConfig, cache: MapCache,
                 meta: Callable[[], MetadataGroup | None], incarnation: str,
                 peer_metadata: tuple[tuple[str, str], ...]) -> None:
        self.host = host
        self.base_config = base_config
        self.cache = cache
        self._meta = meta
        self.incarnation = incarnation
        self._peer_metadata = peer_metadata
        self._progress: dict[int, _GroupProgress] = {}
        self._polled_at = 0.0
        self._bootstrap_at = 0.0
        self._started_at = 0.0
        self.refused: str | None = None
        """Set when the map says this node must not run (another incarnation): stop."""
        self.removed: str | None = None
        """Set when the map no longer lists this node (`walletctl node remove`): stop.
        Node ids are never reused and a node starts only with a map that lists it, so a
        newer map without it means it was removed."""
        self.differences: list[str] = []
        """What the reconciler found different between the map and the Raft groups (of the
        groups this node leads), as of its last pass."""
        self._found: list[str] = []
        self._preseeding: dict[int, asyncio.Task[bool]] = {}
        self.preseeder: Preseeder | None = None
        """Pre-seeds joining partition replicas (set by the server; None: start them empty)."""

    # -- the map ----------------------------------------------------------------------

    @property
    def map(self) -> ClusterMap:
        return self.cache.current

    def offer(self, candidate: ClusterMap) -> None:
        if self.cache.offer(candidate):
            self.host.config = candidate.as_config(self.base_config)
            log.info("cluster map updated", extra={"version": candidate.version})

    def metadata_leader(self) -> str | None:
        meta = self._meta()
        if meta is None:
            return None
        leader = meta.leader_address()
        if leader is None:
            return None
        for node in self.map.nodes:
            if self.map.raft_address(META, node.id) == leader:
                return node.id
        return None

    async def _refresh(self) -> None:
        """Take the newest map: from this node's metadata replica, and by polling voters
        (every MAP_POLL_PERIOD_S, or VOTER_POLL_PERIOD_S on a voter). Voters poll too: a
        voter just removed from the metadata group no longer receives its log (and still
        believes in its last leader), so only polling shows it the map without itself."""
        meta = self._meta()
        period_s = MAP_POLL_PERIOD_S
        if meta is not None:
            current = meta.current()
            if current is not None:
                self.offer(current)
            period_s = VOTER_POLL_PERIOD_S
        if time.monotonic() - self._polled_at < period_s:
            return
        self._polled_at = time.monotonic()
        voters = [s.node_id for s in self.map.slots(META) if s.node_id != self.host.node_id]
        for node_id in voters:
            stub = wallet_pb2_grpc.WalletServiceStub(
                self.host.channel(self.map.node(node_id).grpc_address))
            try:
                response = await stub.GetClusterMap(pb.GetClusterMapRequest(), timeout=2.0)
            except grpc.aio.AioRpcError:
                continue
            self.offer(decode_map(response.map_json.encode()))
            return

    # -- proposing ------------------------------------------------------------------

    async def propose(self, command: dict[str, Any], timeout_s: float = PROPOSE_TIMEOUT_S
                      ) -> int:
        """Apply a map command through the metadata group; the map version after it.

        Raises ApiError: the map's refusal with its status, or UNAVAILABLE when no
        metadata leader answered in time (the command may still apply: map commands
        are written so that repeating one is refused, never applied twice).
        """
        deadline = time.monotonic() + timeout_s
        blob = json.dumps(command, sort_keys=True).encode()
        while True:
            meta = self._meta()
            if meta is not None and meta.is_leader():
                result = await self._propose_locally(meta, blob, deadline)
            else:
                result = await self._forward(blob, deadline)
            if result is not None:
                applied, kind, message, version = result
                if applied:
                    await self._wait_for_version(version, deadline)
                    return version
                if kind != "unavailable":  # e.g. a new cluster's map not bootstrapped yet
                    raise ApiError(status_of_refusal(kind), "MAP_CHANGE_REFUSED", message)
            if time.monotonic() + 0.2 >= deadline:
                raise ApiError(grpc.StatusCode.UNAVAILABLE, "NO_METADATA_LEADER",
                               "the metadata group (cluster map) has no reachable leader; "
                               "the change may or may not apply: check `walletctl cluster "
                               "map` and retry")
            await asyncio.sleep(0.2)

    async def propose_local_or_fail(self, blob: bytes) -> MapResult | None:
        """For PeerService.ProposeMapChange: only this node's own metadata leader."""
        meta = self._meta()
        if meta is None or not meta.is_leader():
            return None
        return await self._propose_locally(meta, blob, time.monotonic() + PROPOSE_TIMEOUT_S)

    async def _propose_locally(self, meta: MetadataGroup, blob: bytes, deadline: float
                               ) -> MapResult | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[MapResult | None, int]] = loop.create_future()

        def done(result: MapResult | None, error: int) -> None:
            def settle() -> None:
                if not future.done():
                    future.set_result((result, error))
            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:
                pass

        meta.propose(blob, done)
        try:
            result, error = await asyncio.wait_for(
                future, timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            return None
        if not outcomes.succeeded(error) or result is None:
            return None
        current = meta.current()
        if current is not None:
            self.offer(current)
        return result

    async def _forward(self, blob: bytes, deadline: float) -> MapResult | None:
        leader = self.metadata_leader()
        voters = [s.node_id for s in self.map.slots(META)]
        order = ([leader] if leader else []) + [v for v in voters if v != leader]
        request = pb.ProposeMapChangeRequest(command_json=blob.decode())
        for node_id in order:
            if node_id == self.host.node_id:
                continue
            stub = wallet_pb2_grpc.PeerServiceStub(
                self.host.channel(self.map.node(node_id).grpc_address))
            try:
                response = await stub.ProposeMapChange(
                    request, timeout=max(0.1, min(PROPOSE_TIMEOUT_S, deadline - time.monotonic())),
                    metadata=self._peer_metadata)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.DEADLINE_EXCEEDED):
                    continue
                kind = {grpc.StatusCode.NOT_FOUND: "not_found",
                        grpc.StatusCode.ALREADY_EXISTS: "already_exists",
                        grpc.StatusCode.INVALID_ARGUMENT: "invalid_argument"}.get(
                            exc.code(), "failed_precondition")
                return False, kind, exc.details() or "", 0
            return True, "", response.detail, int(response.map_version)
        return None

    async def _wait_for_version(self, version: int, deadline: float) -> None:
        while self.map.version < version and time.monotonic() < deadline:
            self._polled_at = 0.0
            await self._refresh()
            if self.map.version < version:
                await asyncio.sleep(0.1)

    # -- the reconciler ----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile every RECONCILE_PERIOD_S until `stop`; sets `stop` when refused or
        removed from the map."""
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("membership reconciliation failed; retrying")
            if self.refused is not None or self.removed is not None:
                stop.set()
                return
            try:
                await asyncio.wait_for(stop.wait(), timeout=RECONCILE_PERIOD_S)
            except TimeoutError:
                pass

    async def tick(self) -> None:
        """One pass: refresh the map, then take every step that is due (none blocks long)."""
        await self._refresh()
        if not self.map.has_node(self.host.node_id):
            self.removed = (f"this node was removed from the cluster map (version "
                            f"{self.map.version}): it stops, and will not start again under "
                            "this id")
            return
        self._bootstrap_if_needed()
        await self._record_start()
        await self._host_assigned_groups()
        self._found = []
        for group in [*range(self.map.partition_count), META]:
            replica = self.host.group(group)
            if replica is not None and replica.is_leader():
                await self._lead_membership(group, replica)
        self.differences = self._found

    def _bootstrap_if_needed(self) -> None:
        """The first metadata leader of a new cluster writes version 1 of the map."""
        meta = self._meta()
        if (meta is None or not meta.is_leader() or meta.current() is not None
                or time.monotonic() - self._bootstrap_at < 2.0):
            return
        self._bootstrap_at = time.monotonic()
        command = {"op": "bootstrap", "map": encode_map(self.map).decode()}
        meta.propose(json.dumps(command, sort_keys=True).encode(), lambda result, error: None)

    async def _record_start(self) -> None:
        known = self.map.incarnation_of(self.host.node_id)
        if known == self.incarnation:
            return
        if known is not None:
            self.refused = (
                f"the cluster map says node {self.host.node_id!r} runs with another data dir "
                f"(incarnation {known}, this one is {self.incarnation}): a node whose disk "
                "was lost must not come back under its old id; remove it and add a node "
                "under a new id (docs/operations.md)")
            return
        if time.monotonic() - self._started_at < 3.0:
            return
        self._started_at = time.monotonic()
        try:
            await self.propose({"op": "node_started", "node_id": self.host.node_id,
                                "incarnation": self.incarnation}, timeout_s=2.0)
        except ApiError as exc:
            if exc.status == grpc.StatusCode.FAILED_PRECONDITION and "incarnation" in exc.message:
                self.refused = exc.message
            elif exc.status not in (grpc.StatusCode.UNAVAILABLE,):
                log.info("recording this node's start failed", extra={"reason": exc.message})

    async def _host_assigned_groups(self) -> None:
        me = self.host.node_id
        current = self.map
        if not current.has_node(me):
            return
        assigned = set(current.groups_of(me))
        for group in current.group_ids():
            hosted = self.host.group(group) is not None
            slot = current.slot_of(group, me)
            if group in assigned and not hosted and slot is not None:
                if slot.state == JOINING and not self._preseeded(group, current):
                    continue  # fetching a snapshot in the background, or retrying later
                log.info("starting a replica the cluster map assigns to this node",
                         extra={"group": group_name(group), "state": slot.state,
                                "version": current.version})
                await self.host.start_group(group, current, joining=slot.state in ADDING)
                hosted = True
            if hosted and slot is not None and slot.state == JOINING:
                await self._report_seeded(group)
            elif group not in assigned and hosted:
                log.info("stopping a replica the cluster map no longer assigns to this node",
                         extra={"group": group_name(group), "version": current.version})
                await self.host.stop_group(group, current.version)

    def _preseeded(self, group: int, current: ClusterMap) -> bool:
        """True once the joining replica may start. The download runs as its own task,
        so that a slow peer never holds up the reconciler's other steps."""
        task = self._preseeding.get(group)
        if task is None:
            self._preseeding[group] = asyncio.get_running_loop().create_task(
                self._preseed(group, current), name=f"preseed-{group}")
            return False
        if not task.done():
            return False
        del self._preseeding[group]
        if task.cancelled():
            return False
        error = task.exception()
        if error is not None:
            log.warning("pre-seeding failed; retrying", extra={
                "group": group_name(group), "reason": f"{type(error).__name__}: {error}"})
            return False
        return task.result()

    async def _preseed(self, group: int, current: ClusterMap) -> bool:
        """True once the joining replica may start (pre-seeded, or nothing to seed)."""
        if group == META or self.preseeder is None:
            return True  # the metadata log is never compacted (and tiny): no snapshot
        try:
            await self.preseeder.prepare(group, current)
        except NoPeerAnswered as exc:
            log.info("pre-seeding postponed", extra={"group": group_name(group),
                                                     "reason": str(exc)})
            return False
        return True

    async def _report_seeded(self, group: int) -> None:
        """Mark this node's joining slot seeded once its replica has loaded its snapshot."""
        replica = self.host.group(group)
        syncobj = getattr(replica, "syncobj", None)
        if syncobj is None or getattr(syncobj, "_SyncObj__needLoadDumpFile", False):
            return  # first tick (which loads the snapshot) not run yet
        await self._propose_once(self._progress.setdefault(group, _GroupProgress()), {
            "op": "replica_seeded", "group": group, "node_id": self.host.node_id})

    async def _lead_membership(self, group: int, replica: RaftGroup) -> None:
        current = self.map
        progress = self._progress.setdefault(group, _GroupProgress())
        now = time.monotonic()
        status = replica.status()
        members = {key.removeprefix("partner_node_status_server_")
                   for key in status if key.startswith("partner_node_status_server_")}
        members.add(replica.address)
        commit_index = int(status.get("commit_idx", 0))
        slots = current.slots(group)
        address_of = {s.node_id: current.raft_address(group, s.node_id) for s in slots}
        if progress.raft_change_since is not None:
            if now - progress.raft_change_since < RAFT_CHANGE_TIMEOUT_S:
                return  # a Raft membership change is in flight: one at a time
            progress.raft_change_since = None
        for slot in slots:
            address = address_of[slot.node_id]
            if slot.state in ADDING:
                if address not in members:
                    if slot.state == SEEDED:  # a joining one is still fetching its snapshot
                        self._change_raft(group, replica, progress, "add", address)
                    return
                match = int(status.get(f"match_idx_server_{address}", 0))
                if match > 0 and match + CAUGHT_UP_ENTRIES_MAX >= commit_index:
                    await self._propose_once(progress, {"op": "replica_caught_up",
                                                        "group": group,
                                                        "node_id": slot.node_id})
                return
            if slot.state == LEAVING:
                if address == replica.address:
                    self._hand_over_leadership(group, replica, progress, slots, status,
                                               address_of)
                    return
                if address in members:
                    self._change_raft(group, replica, progress, "remove", address)
                    return
                await self._propose_once(progress, {"op": "replica_removed", "group": group,
                                                    "node_id": slot.node_id})
                return
        known = set(address_of.values())
        for missing in sorted(known - members):
            self._found.append(f"{group_name(group)}: voter {missing} of the cluster map "
                               f"v{current.version} is not a Raft member")
        for stray in sorted(members - known):
            first_seen = progress.stray_since.setdefault(stray, now)
            self._found.append(
                f"{group_name(group)}: Raft member {stray} is not in the cluster map "
                f"v{current.version}")
            if now - first_seen > STRAY_MEMBER_GRACE_S:
                self._change_raft(group, replica, progress, "remove", stray)
                progress.stray_since.pop(stray, None)
                return
        for gone in [a for a in progress.stray_since if a not in members]:
            progress.stray_since.pop(gone, None)

    def _change_raft(self, group: int, replica: RaftGroup, progress: _GroupProgress,
                     change: str, address: str) -> None:
        progress.raft_change_since = time.monotonic()
        log.info("changing Raft membership", extra={"group": group_name(group),
                                                    "change": change, "member": address})

        def done(result: Any, error: int) -> None:  # tick thread
            log.info("Raft membership change finished", extra={
                "group": group_name(group), "change": change, "member": address,
                "error": error})
            progress.raft_change_since = None

        syncobj = replica.syncobj  # type: ignore[attr-defined]
        if change == "add":
            replica.call_on_tick(lambda: syncobj.addNodeToCluster(address, callback=done))
        else:
            replica.call_on_tick(lambda: syncobj.removeNodeFromCluster(address, callback=done))

    def _hand_over_leadership(self, group: int, replica: RaftGroup, progress: _GroupProgress,
                              slots: Any, status: dict[str, Any],
                              address_of: dict[str, str]) -> None:
        now = time.monotonic()
        if now - progress.transfer_at < TRANSFER_RETRY_S:
            return
        progress.transfer_at = now
        voters = [address_of[s.node_id] for s in slots if s.state == VOTER]
        if not voters:
            return
        target = max(voters, key=lambda a: int(status.get(f"match_idx_server_{a}", 0)))
        log.info("handing leadership away from a leaving replica",
                 extra={"group": group_name(group), "to": target})
        self.host.hold_proposals(group, PROPOSAL_HOLD_S)
        syncobj = replica.syncobj  # type: ignore[attr-defined]
        replica.call_on_tick(lambda: syncobj.transferLeadership(target))

    async def _propose_once(self, progress: _GroupProgress, command: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - progress.map_proposal_at < 1.0:
            return
        progress.map_proposal_at = now
        try:
            await self.propose(command, timeout_s=3.0)
        except ApiError as exc:
            log.info("map change by the reconciler not applied",
                     extra={"op": command["op"], "reason": exc.message})
