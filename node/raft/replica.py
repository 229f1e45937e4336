"""One replica of one partition: a pysyncobj Raft group wrapping a ledger StateMachine.

How the library is used (see ../shared/notes/pysyncobj.md and docs/cluster.md):
- ONE replicated entry point, `apply_entry(blob)`, whose argument is an encoded
  `ledger.commands.Entry`: pysyncobj numbers replicated methods by sorted name,
  so adding a second one would renumber the first in old journals.
- The journal is our `node.raft.journal.DurableJournal` (checksums, fsync, crash-safe
  compaction), fsynced in groups: before any Raft message leaves this replica,
  pending journal records are made durable, so nothing is acknowledged (by a
  follower's reply, or by the leader's own commit) before it is on disk.
- Snapshots use our checksummed format (`node.raft.snapshot_file`) through the
  library's custom serializer hook; `_PartitionSyncObj` replaces the library's
  dump loader, which cleared the journal (losing committed entries) after a
  crash between writing a snapshot and trimming the journal, and silently ran
  with empty state when the dump was damaged.
- Apply is fail-stop: an exception inside apply ends the process (the library
  would otherwise log it and re-run the entry on the next tick).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pysyncobj import SERIALIZER_STATE, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.node import TCPNode

from ledger.codec import decode_entry
from ledger.results import EntryResult
from ledger.results_codec import encode_results
from ledger.state import StateMachine
from node import failpoints
from node.archive.event_archive import EventArchive
from node.fail_stop import halt
from node.raft import replica_guard, snapshot_file, wire
from node.raft.journal import DurableJournal
from node.raft.log_matching import LogMatchingSyncObj, LogMatchingViolated
from node.raft.prevote import PreVoteSyncObj

log = logging.getLogger(__name__)

ARCHIVE_SYNC_PERIOD_S = 1.0
"""How often archive appends are fsynced (they are always synced before a snapshot)."""


@dataclass(frozen=True, slots=True)
class RaftSettings:
    """pysyncobj tuning; see docs/cluster.md for why each value is what it is."""

    election_timeout_min_s: float = 1.0
    election_timeout_max_s: float = 2.5
    heartbeat_period_s: float = 0.1
    tick_period_s: float = 0.005
    leader_fallback_timeout_s: float = 5.0
    connection_timeout_s: float = 3.5
    connection_retry_s: float = 0.5
    log_compaction_min_entries: int = 20_000
    log_compaction_min_time_s: float = 600.0
    fsync: bool = True
    queue_size: int = 10_000
    bind_retries: int = 50
    archive: bool = True
    """False only to measure what the event archive costs (history is then unavailable)."""


def raft_conf(settings: RaftSettings, secret: str | None, bind_address: str, journal_path: str,
              **extra: Any) -> SyncObjConf:
    """pysyncobj settings shared by every Raft group of a node (partitions, metadata)."""
    return SyncObjConf(
        password=secret or None,
        bindAddress=bind_address,
        # Our own tick thread (see PartitionReplica.start), so that the first tick
        # (which loads the snapshot) always runs before any journal entry is applied.
        autoTick=False,
        bindRetryTime=0.2,
        maxBindRetries=settings.bind_retries,
        appendEntriesUseBatch=False,
        appendEntriesPeriod=settings.heartbeat_period_s,
        raftMinTimeout=settings.election_timeout_min_s,
        raftMaxTimeout=settings.election_timeout_max_s,
        leaderFallbackTimeout=settings.leader_fallback_timeout_s,
        connectionTimeout=settings.connection_timeout_s,
        connectionRetryTime=settings.connection_retry_s,
        commandsWaitLeader=False,
        journalFile=journal_path,
        dynamicMembershipChange=True,
        useFork=False,
        # Above every command: no entry is split into unchecked parts (node/raft/wire.py).
        appendEntriesBatchSizeBytes=wire.APPEND_ENTRIES_BATCH_BYTES,
        **extra,
    )


def hold_elections(syncobj: Any, settings: RaftSettings) -> None:
    """Keep a joining replica from calling an election until it hears from a leader.

    Pre-vote (node.raft.prevote) already refuses its election (its log is behind, and
    its peers hear the leader). Holding spares those rounds, and keeps it quiet
    among peers still on code without pre-vote, where a round nobody answers
    would let it call a real election and depose a healthy leader. Pushes its
    election deadline forward until a leader's AppendEntries arrives. Tick
    thread only.
    """
    syncobj._SyncObj__raftElectionDeadline = time.monotonic() + settings.election_timeout_max_s


class _SyncingTransport(wire.BoundedTransport):
    """Makes pending journal records durable before any message leaves (group commit)."""

    before_send: Callable[[], None] | None = None

    def send(self, node: Any, message: Any) -> bool:
        if self.before_send is not None:
            self.before_send()
        return bool(super().send(node, message))


class _PartitionSyncObj(PreVoteSyncObj, LogMatchingSyncObj):
    """SyncObj with a dump loader that keeps committed entries and fails loudly,
    followers that truncate only from a conflicting entry (node.raft.log_matching), and a
    pre-vote before every election (node.raft.prevote)."""

    installing_snapshot = False
    """True while loading a snapshot just received from the leader (not our own)."""

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:
        self.installing_snapshot = clearJournal
        try:
            data = self._SyncObj__serializer.deserialize()
        except Exception as exc:  # a damaged snapshot must stop the node, never be skipped
            halt(f"cannot load snapshot: {exc}")
            return
        finally:
            self.installing_snapshot = False
        last_entry, prev_entry, members = data[1], data[2], data[3]
        journal = self._SyncObj__raftLog
        keep_from = None if clearJournal else _position_of(journal, prev_entry, last_entry)
        if keep_from is None:
            # The journal does not continue from the snapshot (a snapshot received from
            # the leader, or a journal behind it): restart the journal at the snapshot.
            # The stored commit index and term must cover the new journal at every
            # instant (node/raft/journal.py refuses to open a log shorter than its commit
            # index, or with entries of a later term than its meta file): lower the
            # one and raise the other durably BEFORE the journal changes.
            if journal.getRaftCommitIndex() > last_entry[1]:
                journal.setRaftCommitIndex(last_entry[1])
                journal.onOneSecondTimer()
            if journal.getCurrentTerm() < last_entry[2]:
                journal.setCurrentTerm(last_entry[2], None)
                self._SyncObj__raftCurrentTerm = last_entry[2]
                self._SyncObj__votedForNodeId = None
            journal.clear()
            journal.add(*prev_entry)
            journal.add(*last_entry)
        elif keep_from > 0:
            # Crash between writing the snapshot and trimming the journal: trim now,
            # keeping every entry after the snapshot (the library cleared them all).
            journal.deleteEntriesTo(keep_from)
        self._SyncObj__raftLastApplied = last_entry[1]
        current = self._SyncObj__getCurrentLogIndex()
        if getattr(self, "_SyncObj__raftCommitIndex") > current:  # noqa: B009
            self._SyncObj__raftCommitIndex = current
            journal.setRaftCommitIndex(current)
        if self._SyncObj__conf.dynamicMembershipChange:
            self_node = self._SyncObj__selfNode
            self._SyncObj__updateClusterConfiguration(
                [node for node in members if node != self_node]
            )
        self._SyncObj__onSetCodeVersion(0)


def _position_of(journal: Any, prev_entry: Any, last_entry: Any) -> int | None:
    """List position of `prev_entry` in the journal when `last_entry` follows it, else None."""
    for position in range(len(journal) - 1):
        entry = journal[position]
        if entry[1] == prev_entry[1]:
            following = journal[position + 1]
            same = tuple(entry[1:]) == tuple(prev_entry[1:]) and tuple(following[1:]) == tuple(
                last_entry[1:]
            )
            return position if same else None
    return None


class _LedgerConsumer(SyncObjConsumer):  # type: ignore[misc]
    def __init__(self, replica: PartitionReplica) -> None:
        super().__init__()
        self._replica = replica

    @replicated  # type: ignore[untyped-decorator]
    def apply_entry(self, blob: bytes) -> EntryResult | None:
        return self._replica._apply(blob)


ProposeCallback = Callable[[EntryResult | None, int], None]


class PartitionReplica:
    """A partition's state machine, replicated through its own pysyncobj group.

    `propose(blob, callback)` may be called from any thread; the callback runs
    on the group's tick thread with (result, pysyncobj FAIL_REASON). Reads of
    `state` from other threads must hold `lock` (apply holds it per entry).
    """

    def __init__(
        self,
        partition: int,
        self_address: str,
        peer_addresses: list[str],
        bind_address: str,
        data_dir: str,
        secret: str | None,
        settings: RaftSettings,
        on_applied: Callable[[PartitionReplica, EntryResult], None] | None = None,
    ) -> None:
        self.partition = partition
        self.address = self_address
        self.data_dir = data_dir
        self.settings = settings
        self.lock = threading.Lock()
        self.state = StateMachine(partition)
        self.last_snapshot_position = 0
        self._snapshot_outcome: int = SERIALIZER_STATE.NOT_SERIALIZING
        self._snapshot_writer: threading.Thread | None = None
        self._on_applied = on_applied
        os.makedirs(data_dir, exist_ok=True)
        self.journal_path = os.path.join(data_dir, "journal")
        self.snapshot_path = os.path.join(data_dir, "snapshot")
        snapshot_meta: snapshot_file.RaftMeta | None = None
        if os.path.exists(self.snapshot_path):
            # Refuses to start on a damaged file.
            snapshot_meta, _ = snapshot_file.read(self.snapshot_path)
        self.archive = EventArchive(os.path.join(data_dir, "archive"), partition,
                                    fsync=settings.fsync)
        self.archive_lagging = False
        """True when this replica's state moved past its archive (a snapshot installed
        from the leader): history is then served by other replicas until re-seeded."""
        self.joining = False
        """Set by the node for a replica just added to its group: no elections until a
        leader has been heard from (`hold_elections`)."""
        self._archive_synced_at = time.monotonic()
        conf = raft_conf(
            settings, secret, bind_address, self.journal_path,
            commandsQueueSize=settings.queue_size,
            fullDumpFile=self.snapshot_path,
            serializer=self._save_snapshot,
            deserializer=self._load_snapshot,
            serializeChecker=self._snapshot_state,
            logCompactionMinEntries=settings.log_compaction_min_entries,
            logCompactionMinTime=settings.log_compaction_min_time_s,
        )
        self._consumer = _LedgerConsumer(self)
        self.syncobj = _PartitionSyncObj(
            self_address, peer_addresses, conf, consumers=[self._consumer],
            transportClass=_SyncingTransport,
        )
        journal = self.syncobj._SyncObj__raftLog
        if not isinstance(journal, DurableJournal):
            raise RuntimeError("node.raft.journal.install() must run before replicas are created")
        self.journal: DurableJournal = journal
        try:
            replica_guard.check_log_covers(
                data_dir, partition, int(journal[0][1]), int(journal[-1][1]), snapshot_meta,
                self.archive.last_log_index, journal.getRaftCommitIndex())
        except replica_guard.ReplicaStateMissing:
            self.syncobj.destroy()
            self.archive.close()
            raise
        transport = self.syncobj._SyncObj__transport
        transport.before_send = self.sync_durable
        self.syncobj.addOnTickCallback(self.sync_durable)
        self._stopping = threading.Event()
        self._on_tick_calls: collections.deque[Callable[[], None]] = collections.deque()
        self._tick_thread = threading.Thread(
            target=self._tick_loop, name=f"raft-p{partition}", daemon=True
        )

    def start(self) -> None:
        self._tick_thread.start()

    def _tick_loop(self) -> None:
        syncobj = self.syncobj
        period_s = self.settings.tick_period_s
        while not self._stopping.is_set():
            try:
                while self._on_tick_calls:
                    self._on_tick_calls.popleft()()
                if self.joining:
                    hold_elections(syncobj, self.settings)
                    if syncobj._getLeader() is not None:
                        self.joining = False
                syncobj.doTick(period_s)
            except LogMatchingViolated as exc:
                halt(f"partition {self.partition}: {exc}")
            except Exception:
                # The library's own tick thread logs and goes on; so do we. Apply
                # errors never get here: they halt the process in _apply.
                log.exception("tick failed", extra={"partition": self.partition})
                self._stopping.wait(period_s)

    # -- the tick thread ---------------------------------------------------------

    def _apply(self, blob: bytes) -> EntryResult | None:
        try:
            log_index = self.syncobj.raftLastApplied + 1
            entry = decode_entry(blob)
            with self.lock:
                failpoints.hit("apply.before", self.state.position + 1)
                result = self.state.apply_entry(entry, log_index)
            if result is not None:
                self._archive(result, log_index, blob)
        except BaseException as exc:  # fail-stop: never let the library re-run the entry
            halt(f"partition {self.partition}: {type(exc).__name__}: {exc}")
            raise
        if result is not None and self._on_applied is not None:
            try:
                self._on_applied(self, result)
            except Exception:
                log.exception("on_applied hook failed", extra={"partition": self.partition})
        return result

    def _check_archive_against(self, meta: snapshot_file.RaftMeta) -> None:
        """The archive must still hold the history the snapshot saw (same chain head)."""
        position = meta.archive_position
        if position == 0:
            return
        if self.archive.last_position < position:
            raise ValueError(
                f"the event archive of partition {self.partition} ends at position "
                f"{self.archive.last_position} but the snapshot saw it at {position}: "
                "archive records were lost; restore the archive from a backup or a peer")
        (record,) = list(self.archive.records(from_position=position, until_position=position))
        if record.hash != meta.archive_chain_head:
            raise ValueError(
                f"the event archive of partition {self.partition} differs from the one the "
                f"snapshot saw at position {position} (chain head mismatch): refusing to start")

    def _archive(self, result: EntryResult, log_index: int, blob: bytes) -> None:
        """Append the applied entry to the event archive (skipped if already there)."""
        if not self.settings.archive:
            self.archive_lagging = True
            return
        archive = self.archive
        if self.archive_lagging:
            return  # the archive seeder (node/archive/seeding.py) owns the archive until caught up
        if result.position > archive.last_position + 1:
            if not self.archive_lagging:
                self.archive_lagging = True
                log.warning("archive behind the state (snapshot installed from the leader): "
                            "history of this replica stops here until it is re-seeded",
                            extra={"partition": self.partition,
                                   "archived": archive.last_position,
                                   "position": result.position})
            return
        journal = self.journal
        term = int(journal[log_index - journal[0][1]][2])
        archive.append(result.position, log_index, term, result.stamp_ms, blob,
                       encode_results(result.results))

    def sync_durable(self) -> None:
        """Group commit: make pending journal records durable (before any message leaves).

        The archive is not on this path: until a snapshot lets the journal drop an
        entry, the journal itself holds it, and after a crash the entries after the
        snapshot are applied (and archived) again. So the archive is fsynced once a
        second and always before a snapshot, which is all its durability needs.
        """
        self.journal.sync()
        now = time.monotonic()
        if now - self._archive_synced_at >= ARCHIVE_SYNC_PERIOD_S:
            self._archive_synced_at = now
            self.archive.sync()

    def _save_snapshot(self, path: str, raft_data: Any) -> None:
        """Library hook (tick thread): freeze the state, write it in a background thread.

        Encoding millions of records takes seconds; on the tick thread that would
        stop heartbeats and cause elections. Here the tick thread only takes a
        frozen copy (shallow copies of immutable records) and returns; the writer
        thread encodes it, writes `snapshot.writing`, fsyncs, renames it over
        `snapshot` and fsyncs the directory. pysyncobj learns the outcome from
        `_snapshot_state` (its `serializeChecker`) and trims the journal only
        after SUCCESS. The library renames `path` into place after this hook
        returns; we leave no file at `path`, so that rename fails harmlessly
        and can never put a half-written snapshot in place.
        """
        # Compaction must never drop an entry the archive has not made durable.
        self.archive.sync()
        if os.path.exists(path):
            os.remove(path)
        last_entry, prev_entry, members = raft_data
        with self.lock:
            frozen = self.state.frozen_copy()
        archive_position = 0 if self.archive_lagging else self.archive.last_position
        meta = snapshot_file.RaftMeta(
            tuple(last_entry), tuple(prev_entry),
            tuple(sorted(str(m.id) for m in members)),
            archive_position, bytes.fromhex(self.archive.chain_head)
            if archive_position else bytes(32),
        )
        self._snapshot_outcome = SERIALIZER_STATE.SERIALIZING
        self._snapshot_writer = threading.Thread(
            target=self._write_snapshot, args=(frozen, meta), name=f"snapshot-p{self.partition}",
            daemon=True)
        self._snapshot_writer.start()

    def _write_snapshot(self, frozen: StateMachine, meta: snapshot_file.RaftMeta) -> None:
        writing = self.snapshot_path + ".writing"
        try:
            snapshot_file.write(writing, meta, frozen.snapshot(), fsync=self.settings.fsync)
            os.replace(writing, self.snapshot_path)
            if self.settings.fsync:
                snapshot_file.fsync_directory(self.data_dir)
        except Exception:
            log.exception("snapshot write failed", extra={"partition": self.partition})
            self._snapshot_outcome = SERIALIZER_STATE.FAILED
            return
        self.last_snapshot_position = frozen.position
        log.info("snapshot written",
                 extra={"partition": self.partition, "position": frozen.position})
        self._snapshot_outcome = SERIALIZER_STATE.SUCCESS

    def _snapshot_state(self) -> int:
        """pysyncobj's serializeChecker: SUCCESS or FAILED is reported once."""
        outcome = self._snapshot_outcome
        if outcome in (SERIALIZER_STATE.SUCCESS, SERIALIZER_STATE.FAILED):
            self._snapshot_outcome = SERIALIZER_STATE.NOT_SERIALIZING
        return outcome

    def _load_snapshot(self, path: str) -> tuple[Any, Any, list[TCPNode]]:
        meta, ledger_snapshot = snapshot_file.read(path)
        if getattr(self.syncobj, "installing_snapshot", False):
            # The leader's snapshot: its archive facts are not ours. Our archive stops
            # short of this state (history is served by other replicas until it is
            # re-seeded); keep the file but without the leader's archive position, so
            # that a restart does not mistake the gap for lost records.
            meta = snapshot_file.RaftMeta(meta.last_entry, meta.prev_entry, meta.members)
            local = path + ".local"
            snapshot_file.write(local, meta, ledger_snapshot, fsync=self.settings.fsync)
            os.replace(local, path)
            if self.settings.fsync:
                snapshot_file.fsync_directory(self.data_dir)
        else:
            self._check_archive_against(meta)
        restored = StateMachine.restore(ledger_snapshot)
        if restored.partition != self.partition:
            raise ValueError(f"snapshot of partition {restored.partition}, not {self.partition}")
        with self.lock:
            self.state = restored
        if self.archive.last_position < restored.position:
            self.archive_lagging = True
        self.last_snapshot_position = restored.position
        log.info("snapshot loaded",
                 extra={"partition": self.partition, "position": restored.position})
        return meta.last_entry, meta.prev_entry, [TCPNode(m) for m in meta.members]

    # -- any thread ----------------------------------------------------------------

    def propose(self, blob: bytes, callback: ProposeCallback) -> None:
        self._consumer.apply_entry(blob, callback=callback)

    def is_leader(self) -> bool:
        return bool(self.syncobj._isLeader())

    def leader_address(self) -> str | None:
        leader = self.syncobj._getLeader()
        return None if leader is None else str(leader.id)

    def status(self) -> dict[str, Any]:
        return dict(self.syncobj.getStatus())

    def call_on_tick(self, call: Callable[[], None]) -> None:
        """Run `call` on the tick thread: pysyncobj's internals are not thread-safe."""
        self._on_tick_calls.append(call)

    def transfer_leadership(self, to_address: str) -> None:
        """Ask the group to elect `to_address` (denied unless it is fully caught up)."""
        self.call_on_tick(lambda: self.syncobj.transferLeadership(to_address))

    def force_snapshot(self) -> None:
        self.syncobj.forceLogCompaction()

    def destroy(self) -> None:
        """Stop ticking, close the Raft connections, the journal and the archive."""
        self._stopping.set()
        if self._tick_thread.is_alive():
            self._tick_thread.join(timeout=5)
        if self._snapshot_writer is not None:
            self._snapshot_writer.join(timeout=60)
        self.syncobj.destroy()
        self.archive.sync()
        self.archive.close()
