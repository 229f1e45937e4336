"""The metadata Raft group: the cluster map, replicated on a few nodes (3, or 5).

The role the source design gives ZooKeeper. The first entry of a new cluster
is a `bootstrap` command carrying version 1 of the map (built from the cluster
file by the first leader); every later entry is a `node.cluster_map` command.
The map is small and changes rarely, so the group never compacts its log: a
restart replays the whole journal (our durable journal, fsynced before any
Raft message leaves, like the partitions'). That avoids pysyncobj's dump
loader altogether; 10,000 map changes would still replay in well under a second.

Nodes that do not vote on the map, and voters while this group has no leader,
route from their cached copy (`MapCache`, node/membership/reconciler.py): transfers never
wait for it.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from pysyncobj import SyncObjConsumer, replicated

from node.cluster_map import META, ClusterMap, MapChangeRefused, apply_command, decode_map
from node.fail_stop import halt
from node.raft import replica_guard
from node.raft.journal import DurableJournal
from node.raft.log_matching import LogMatchingSyncObj, LogMatchingViolated
from node.raft.prevote import PreVoteSyncObj
from node.raft.replica import RaftSettings, _SyncingTransport, hold_elections, raft_conf

log = logging.getLogger(__name__)

NEVER_COMPACT = 2**62
"""logCompactionMinEntries / MinTime: the map's log is kept whole (see module docstring)."""

MapResult = tuple[bool, str, str, int]
"""(applied, refusal kind, refusal message, map version after the entry)."""

MapCallback = Callable[[MapResult | None, int], None]


class _MetadataSyncObj(PreVoteSyncObj, LogMatchingSyncObj):
    """Followers truncate only from a conflict (node.raft.log_matching); every election is
    preceded by a pre-vote (node.raft.prevote)."""


class _MapConsumer(SyncObjConsumer):  # type: ignore[misc]
    def __init__(self, group: MetadataGroup) -> None:
        super().__init__()
        self._group = group

    @replicated  # type: ignore[untyped-decorator]
    def apply_map_command(self, blob: bytes) -> MapResult:
        return self._group._apply(blob)


class MetadataGroup:
    """One voter's replica of the cluster map. `propose` from any thread; callbacks run on
    the group's tick thread with (result, pysyncobj FAIL_REASON)."""

    def __init__(self, self_address: str, peer_addresses: list[str], bind_address: str,
                 data_dir: str, secret: str | None, settings: RaftSettings,
                 on_changed: Callable[[ClusterMap], None] | None = None) -> None:
        os.makedirs(data_dir, exist_ok=True)
        self.data_dir = data_dir
        self.address = self_address
        self.settings = settings
        self.lock = threading.Lock()
        self.map: ClusterMap | None = None
        self.joining = False
        """True while this voter was added to the group and has not heard a leader yet:
        it must not call elections (see PartitionReplica.joining)."""
        self._on_changed = on_changed
        conf = raft_conf(settings, secret, bind_address, os.path.join(data_dir, "journal"),
                         logCompactionMinEntries=NEVER_COMPACT,
                         logCompactionMinTime=NEVER_COMPACT)
        self._consumer = _MapConsumer(self)
        self.syncobj = _MetadataSyncObj(self_address, peer_addresses, conf,
                                        consumers=[self._consumer],
                                        transportClass=_SyncingTransport)
        journal = self.syncobj._SyncObj__raftLog
        if not isinstance(journal, DurableJournal):
            raise RuntimeError("node.raft.journal.install() must run before the metadata group")
        self.journal: DurableJournal = journal
        try:  # never compacted: the journal must still start at index 1
            replica_guard.check_log_covers(data_dir, META, int(journal[0][1]),
                                           int(journal[-1][1]), None, 0,
                                           journal.getRaftCommitIndex())
        except replica_guard.ReplicaStateMissing:
            self.syncobj.destroy()
            raise
        self.syncobj._SyncObj__transport.before_send = journal.sync
        self.syncobj.addOnTickCallback(journal.sync)
        self._stopping = threading.Event()
        self._on_tick_calls: collections.deque[Callable[[], None]] = collections.deque()
        self._tick_thread = threading.Thread(target=self._tick_loop, name="raft-meta",
                                             daemon=True)

    def start(self) -> None:
        self._tick_thread.start()

    def _tick_loop(self) -> None:
        period_s = self.settings.tick_period_s
        while not self._stopping.is_set():
            try:
                while self._on_tick_calls:
                    self._on_tick_calls.popleft()()
                if self.joining:
                    hold_elections(self.syncobj, self.settings)
                    if self.syncobj._getLeader() is not None:
                        self.joining = False
                self.syncobj.doTick(period_s)
            except LogMatchingViolated as exc:
                halt(f"metadata group: {exc}")
            except Exception:
                log.exception("metadata tick failed")
                self._stopping.wait(period_s)

    def _apply(self, blob: bytes) -> MapResult:
        """Tick thread. Refusals are results (the same on every replica), never errors."""
        try:
            command = json.loads(blob)
            with self.lock:
                current = self.map
                if command.get("op") == "bootstrap":
                    if current is not None:
                        return (False, "already_exists", "the cluster map is already bootstrapped",
                                current.version)
                    changed = decode_map(command["map"].encode())
                elif current is None:
                    return False, "unavailable", "the cluster map is not bootstrapped yet", 0
                else:
                    try:
                        changed = apply_command(current, command)
                    except MapChangeRefused as exc:
                        return False, exc.kind, str(exc), current.version
                    except (KeyError, TypeError, ValueError) as exc:
                        return (False, "invalid_argument",
                                f"malformed cluster map command: {exc!r}", current.version)
                self.map = changed
        except BaseException as exc:  # fail-stop, as for the partitions
            halt(f"metadata group: {type(exc).__name__}: {exc}")
            raise
        log.info("cluster map changed", extra={"version": changed.version,
                                               "op": command.get("op")})
        if self._on_changed is not None:
            try:
                self._on_changed(changed)
            except Exception:
                log.exception("cluster map listener failed")
        return True, "", "", changed.version

    # -- any thread ---------------------------------------------------------------

    def propose(self, blob: bytes, callback: MapCallback) -> None:
        self._consumer.apply_map_command(blob, callback=callback)

    def current(self) -> ClusterMap | None:
        with self.lock:
            return self.map

    def is_leader(self) -> bool:
        return bool(self.syncobj._isLeader())

    def leader_address(self) -> str | None:
        leader = self.syncobj._getLeader()
        return None if leader is None else str(leader.id)

    def status(self) -> dict[str, Any]:
        return dict(self.syncobj.getStatus())

    def call_on_tick(self, call: Callable[[], None]) -> None:
        self._on_tick_calls.append(call)

    def destroy(self) -> None:
        self._stopping.set()
        if self._tick_thread.is_alive():
            self._tick_thread.join(timeout=5)
        self.syncobj.destroy()

