"""Seeding a replica's event archive from its peers, after it installed a snapshot.

A replica that receives its leader's snapshot (a replica added later, or a
follower that fell behind a log compaction) has applied positions that its
event archive never saw: `archive_lagging` is set, nothing more is archived,
and history, point-in-time balances and `Verify` refuse on that replica. The
seeder copies the missing records from another replica of the partition
(`PeerService.FetchArchive`), then hands the archive back to live archiving.

Guarantees:

- A record is appended only after it passed every check: positions dense
  from the local archive's end (a gap of records 1..k then nothing continues
  at k + 1; a new replica starts at 1); its `prev_hash` is the local chain
  head; its `hash` is the hash of its content (`node.archive.event_archive.record_hash`);
  and replayed on a shadow state machine (built from the local archive's own
  records) its entry applies to exactly its position with exactly its
  archived results. A record failing a check is refused with everything after
  it in its batch, and the next peer is asked.
- Records are byte-identical to the peer's: the same fields appended after
  the same head give the same payload (checked after each append: the chain
  head equals the record's hash), so replicas' archives keep agreeing.
- Hand-over is atomic. Every append runs on the replica's tick thread (the
  archive's only writer, through `call_on_tick`), between two applies, under
  `replica.lock`. The call that appends the record at the replica's applied
  position compares the shadow's state hash there with the live state hash
  and only then clears `archive_lagging`: the next applied entry is archived
  live, right after the seeded ones. A mismatch (the seeded archive does not
  replay to the live state) appends nothing of that batch, leaves the archive
  lagging, logs CRITICAL and stops seeding that partition until the node
  restarts.
- Bounded: a fetch asks for at most `SEED_BATCH_RECORDS_MAX` records with a
  timeout; at most `SEED_PENDING_RECORDS_MAX` checked records wait in memory
  for the replica to apply their positions; each tick-thread call appends at
  most one batch; peers are tried in turn (the partition's leader first) and
  rounds without progress back off exponentially up to `SEED_BACKOFF_S_MAX`.
- Crash safety: seeded records are fsynced like live ones (once a second and
  before any snapshot). A restart that finds the archive short of the state
  marks it lagging again and seeding resumes from its end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

import grpc

from ledger.codec import UnsupportedEntry, decode_entry
from ledger.results_codec import encode_results
from ledger.state import LedgerHalted, StateMachine
from node.archive.event_archive import ArchiveCorrupt, ArchiveRecord, EventArchive, record_hash
from node.config import ClusterConfig
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc

log = logging.getLogger(__name__)

SEED_BATCH_RECORDS_MAX: Final = 256
"""Most records asked for in one fetch, and appended in one tick-thread call."""
SEED_PENDING_RECORDS_MAX: Final = 1024
"""Most checked records held in memory, waiting for the replica to apply their positions."""
FETCH_RECORDS_MAX: Final = 1024
"""Most records a node returns in one FetchArchive answer."""
FETCH_BYTES_MAX: Final = 4 * 2**20
"""Most entry and results bytes in one FetchArchive answer (one larger record still goes)."""
FETCH_TIMEOUT_S: Final = 10.0
TICK_CALL_TIMEOUT_S: Final = 30.0
"""Longest wait for the tick thread to run an append call (it is stopped, or stuck)."""
SEED_POLL_S: Final = 1.0
"""How often the node looks for lagging archives."""
SEED_BACKOFF_S_MIN: Final = 0.2
SEED_BACKOFF_S_MAX: Final = 10.0
PROGRESS_LOG_PERIOD_S: Final = 5.0
HASH_BYTES: Final = 32

_T = TypeVar("_T")


class RecordRefused(Exception):
    """A record received from a peer failed a check; it was not appended."""


class SeedMismatch(Exception):
    """The seeded archive does not replay to the live state: seeding that partition stops."""


class SeedInterrupted(Exception):
    """The replica did not run an append call in time (stopping?): start over from its archive."""


class ArchiveUnavailable(Exception):
    """This node's archive of the partition cannot serve the position asked for."""


class SeedTarget(Protocol):
    """What the seeder needs of a replica (`node.raft.replica.PartitionReplica` has it)."""

    partition: int
    archive: EventArchive
    state: StateMachine
    lock: threading.Lock
    archive_lagging: bool

    def call_on_tick(self, call: Callable[[], None]) -> None: ...


class _ArchiveSetting(Protocol):
    @property
    def archive(self) -> bool: ...


class HostedReplica(SeedTarget, Protocol):
    """What the node's seeder also reads of a hosted replica (`PartitionReplica` has it)."""

    @property
    def settings(self) -> _ArchiveSetting: ...

    def leader_address(self) -> str | None: ...


class SeedingHost(Protocol):
    """What the node's seeder needs of the node (`node.host.NodeHost` has it)."""

    @property
    def node_id(self) -> str: ...

    @property
    def config(self) -> ClusterConfig: ...

    @property
    def replicas(self) -> Mapping[int, HostedReplica]: ...

    def channel(self, address: str) -> grpc.aio.Channel: ...


@dataclass(frozen=True, slots=True)
class FetchedBatch:
    records: tuple[ArchiveRecord, ...]
    last_position: int
    """The serving archive's last position when it answered."""


class RecordSource(Protocol):
    """Where records come from: a peer node (`PeerArchiveSource`), or a test's fake."""

    name: str

    async def fetch(self, partition: int, from_position: int,
                    max_records: int) -> FetchedBatch: ...


# -- the wire ------------------------------------------------------------------------------


def record_message(record: ArchiveRecord) -> pb.ArchivedRecord:
    return pb.ArchivedRecord(
        position=record.position, log_index=record.log_index, term=record.term,
        stamp_ms=record.stamp_ms, entry_blob=record.entry_blob,
        results_blob=record.results_blob, prev_hash=record.prev_hash, hash=record.hash)


def record_of_message(message: pb.ArchivedRecord) -> ArchiveRecord:
    return ArchiveRecord(message.position, message.log_index, message.term, message.stamp_ms,
                         bytes(message.entry_blob), bytes(message.results_blob),
                         bytes(message.prev_hash), bytes(message.hash))


def fetch_archive_response(archive: EventArchive, lagging: bool, from_position: int,
                           max_records: int) -> pb.FetchArchiveResponse:
    """The serving side of FetchArchive: consecutive records from `from_position`.

    At most `max_records` (0: `FETCH_RECORDS_MAX`, capped to it) and about
    `FETCH_BYTES_MAX` bytes, at least one record when any is available. Raises
    `ArchiveUnavailable` when the archive lags its state (`lagging`) and does
    not hold `from_position`: its records stop at a gap. Reads files: call it
    off the event loop.
    """
    assert from_position >= 1
    last_position = archive.last_position
    if lagging and from_position > last_position:
        raise ArchiveUnavailable(
            f"this node's archive of partition {archive.partition} ends at position "
            f"{last_position} and lags its state (it installed a snapshot): it cannot serve "
            f"position {from_position}; ask another replica")
    count_max = FETCH_RECORDS_MAX if max_records == 0 else min(max_records, FETCH_RECORDS_MAX)
    until = min(last_position, from_position + count_max - 1)
    records: list[pb.ArchivedRecord] = []
    size_bytes = 0
    for record in archive.records(from_position, until):
        size_bytes += len(record.entry_blob) + len(record.results_blob)
        if records and size_bytes > FETCH_BYTES_MAX:
            break
        records.append(record_message(record))
    return pb.FetchArchiveResponse(records=records, last_position=last_position)


class PeerArchiveSource:
    """Another node's archive, through `PeerService.FetchArchive` (with the peer token)."""

    def __init__(self, name: str, channel: grpc.aio.Channel,
                 metadata: tuple[tuple[str, str], ...]) -> None:
        self.name = name
        self._stub = wallet_pb2_grpc.PeerServiceStub(channel)
        self._metadata = metadata

    async def fetch(self, partition: int, from_position: int,
                    max_records: int) -> FetchedBatch:
        response: pb.FetchArchiveResponse = await self._stub.FetchArchive(
            pb.FetchArchiveRequest(partition=partition, from_position=from_position,
                                   max_records=max_records),
            timeout=FETCH_TIMEOUT_S, metadata=self._metadata)
        return FetchedBatch(tuple(record_of_message(m) for m in response.records),
                            response.last_position)


# -- checking ------------------------------------------------------------------------------


def check_link(record: ArchiveRecord, position: int, head: bytes, log_index: int) -> None:
    """`record` must be the one at `position`, after `head`, with content matching its hash."""
    if record.position != position:
        raise RecordRefused(f"position {record.position} where {position} was expected")
    if len(record.prev_hash) != HASH_BYTES or len(record.hash) != HASH_BYTES:
        raise RecordRefused(f"position {position}: hashes must be {HASH_BYTES} bytes")
    if record.prev_hash != head:
        raise RecordRefused(f"position {position}: does not follow the local chain head "
                            f"{head.hex()[:16]} (it follows {record.prev_hash.hex()[:16]})")
    if record.log_index <= log_index:
        raise RecordRefused(f"position {position}: log index {record.log_index} is not above "
                            f"{log_index}")
    if record_hash(record) != record.hash:
        raise RecordRefused(f"position {position}: content does not match its hash "
                            "(damaged in transit or at the peer)")


def replay_record(shadow: StateMachine, record: ArchiveRecord) -> None:
    """Apply `record` to `shadow`; it must reach its position with its archived results."""
    try:
        applied = shadow.apply_entry(decode_entry(record.entry_blob), record.log_index)
    except (UnsupportedEntry, LedgerHalted) as exc:
        raise RecordRefused(f"position {record.position}: entry does not replay ({exc})") from None
    except Exception as exc:  # a peer's record must never stop the seeder, whatever it holds
        raise RecordRefused(f"position {record.position}: entry does not replay "
                            f"({type(exc).__name__}: {exc})") from None
    if applied is None or applied.position != record.position:
        raise RecordRefused(f"position {record.position}: entry replays to another position")
    if encode_results(applied.results) != record.results_blob:
        raise RecordRefused(f"position {record.position}: archived results differ from "
                            "the replay's")


# -- one partition -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Checked:
    record: ArchiveRecord
    state_hash: str
    """The shadow's state hash right after this record."""


@dataclass(frozen=True, slots=True)
class _Appended:
    count: int
    done: bool
    mismatch: str | None


class PartitionSeeder:
    """Seeds one replica's archive; `step()` is called until it returns True.

    One asyncio task at a time drives it. Its shadow state follows the records
    checked so far; `pending` holds checked records not yet appended because
    the replica has not applied their positions yet.
    """

    def __init__(self, target: SeedTarget) -> None:
        self.target = target
        self.partition = target.partition
        self.appended = 0
        self.refused_batches = 0
        self.failed: str | None = None
        self._shadow: StateMachine | None = None
        self._shadow_head = b""
        self._archived_state_hash = ""
        """The shadow's state hash at the archive's last position."""
        self._pending: deque[_Checked] = deque()
        self._refusals: dict[str, int] = {}
        """Peer name -> how many of its batches had a refused record: asked last."""
        self._logged_at = 0.0

    async def step(self, sources: Sequence[RecordSource]) -> bool:
        """One round: fetch and check a batch if there is room, append what the replica
        has applied. True once the archive is live again (nothing left to do).

        Raises SeedMismatch (stop seeding this partition) and SeedInterrupted
        (the replica did not run the append: drop this seeder, start over).
        """
        target = self.target
        if not target.archive_lagging:
            return True
        if self._shadow is None:
            await asyncio.to_thread(self._build_shadow)
        shadow = self._shadow
        assert shadow is not None
        with target.lock:
            applied_position = target.state.position
        room = SEED_PENDING_RECORDS_MAX - len(self._pending)
        if shadow.position < applied_position and room > 0:
            await self._fetch(sources, min(room, SEED_BATCH_RECORDS_MAX))
        shadow = self._shadow
        if shadow is None or (not self._pending and shadow.position < applied_position):
            return False  # nothing to append yet (or starting over after a refused replay)
        outcome = await self._append_batch()
        if outcome.mismatch is not None:
            self.failed = outcome.mismatch
            raise SeedMismatch(outcome.mismatch)
        self._log_progress(outcome.done)
        return outcome.done

    @property
    def archived_position(self) -> int:
        return self.target.archive.last_position

    def _build_shadow(self) -> None:
        """Replay the local archive (records 1..k kept before the snapshot) into the shadow."""
        archive = self.target.archive
        shadow = StateMachine(self.partition)
        head = bytes(HASH_BYTES)
        for record in archive.records():
            try:
                replay_record(shadow, record)
            except RecordRefused as exc:
                self.failed = (f"partition {self.partition}: this node's own archive does not "
                               f"replay: {exc}")
                raise SeedMismatch(self.failed) from None
            head = record.hash
        assert shadow.position == archive.last_position
        self._shadow, self._shadow_head = shadow, head
        self._archived_state_hash = shadow.state_hash()
        log.info("archive seeding started", extra={
            "partition": self.partition, "archived": shadow.position})

    async def _fetch(self, sources: Sequence[RecordSource], count_max: int) -> None:
        """Ask each source in turn until one gives at least one record that checks."""
        # Peers that sent refused records are asked last (stable otherwise).
        ordered = sorted(sources, key=lambda source: self._refusals.get(source.name, 0))
        for source in ordered:
            shadow = self._shadow
            assert shadow is not None
            from_position = shadow.position + 1
            try:
                batch = await source.fetch(self.partition, from_position, count_max)
            except (grpc.aio.AioRpcError, TimeoutError) as exc:
                status = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "TIMEOUT"
                log.info("archive seeding: peer did not answer", extra={
                    "partition": self.partition, "peer": source.name, "status": status,
                    "from_position": from_position})
                continue
            records = batch.records[:count_max]
            if not records:
                continue
            accepted, refusal = await asyncio.to_thread(self._check, records)
            if refusal is not None:
                self.refused_batches += 1
                self._refusals[source.name] = self._refusals.get(source.name, 0) + 1
                log.warning("archive seeding: refused a record from a peer", extra={
                    "partition": self.partition, "peer": source.name, "reason": refusal,
                    "accepted": accepted})
            if accepted or self._shadow is None:
                return

    def _check(self, records: Sequence[ArchiveRecord]) -> tuple[int, str | None]:
        """Check and replay records in order; (how many were accepted, why the next was not)."""
        shadow = self._shadow
        assert shadow is not None
        accepted = 0
        for record in records:
            try:
                check_link(record, shadow.position + 1, self._shadow_head, shadow.last_log_index)
            except RecordRefused as exc:
                return accepted, str(exc)
            try:
                replay_record(shadow, record)
            except RecordRefused as exc:
                # The failed entry may have changed (or halted) the shadow: start over
                # from the local archive; the records checked so far are fetched again.
                self._shadow = None
                self._pending.clear()
                return 0, str(exc)
            self._shadow_head = record.hash
            self._pending.append(_Checked(record, shadow.state_hash()))
            accepted += 1
        return accepted, None

    async def _append_batch(self) -> _Appended:
        batch = tuple(self._pending)[:SEED_BATCH_RECORDS_MAX]
        base_state_hash = self._archived_state_hash
        outcome = await self._on_tick(lambda: append_on_tick(self.target, batch, base_state_hash))
        for _ in range(outcome.count):
            self._archived_state_hash = self._pending.popleft().state_hash
        self.appended += outcome.count
        return outcome

    async def _on_tick(self, call: Callable[[], _T]) -> _T:
        """Run `call` on the replica's tick thread; its result, or SeedInterrupted."""
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(call())
            except BaseException as exc:  # handed to the seeder, never to the tick loop
                future.set_exception(exc)

        self.target.call_on_tick(run)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), TICK_CALL_TIMEOUT_S)
        except TimeoutError:
            raise SeedInterrupted(f"partition {self.partition}: the replica did not run the "
                                  f"append within {TICK_CALL_TIMEOUT_S:.0f} s") from None

    def _log_progress(self, done: bool) -> None:
        now = time.monotonic()
        if done:
            log.info("archive seeded: archiving live entries again", extra={
                "partition": self.partition, "archived": self.archived_position,
                "seeded_records": self.appended, "chain_head": self.target.archive.chain_head})
        elif now - self._logged_at >= PROGRESS_LOG_PERIOD_S:
            self._logged_at = now
            with self.target.lock:
                applied_position = self.target.state.position
            log.info("archive seeding", extra={
                "partition": self.partition, "archived": self.archived_position,
                "applied": applied_position, "seeded_records": self.appended})


def append_on_tick(target: SeedTarget, batch: Sequence[_Checked],
                   base_state_hash: str) -> _Appended:
    """Tick thread: append checked records up to the applied position; hand over when there.

    Runs between two applies, so the state cannot move meanwhile; the lock
    makes the hand-over atomic for readers too. `base_state_hash` is the
    shadow's hash at the archive's current last position.
    """
    with target.lock:
        if not target.archive_lagging:
            return _Appended(0, True, None)
        archive = target.archive
        applied_position = target.state.position
        assert not batch or batch[0].record.position == archive.last_position + 1, (
            "a batch starts right after the archive's end")
        count = sum(1 for checked in batch if checked.record.position <= applied_position)
        if archive.last_position + count == applied_position:
            # This call would hand over: check the state first, so that a seeded archive
            # that does not replay to the live state gets none of this batch.
            expected = batch[count - 1].state_hash if count else base_state_hash
            live = target.state.state_hash()
            if live != expected:
                log.critical("archive seeding: the seeded archive does not replay to the "
                             "live state", extra={"partition": target.partition,
                                                  "position": applied_position,
                                                  "live_hash": live, "replay_hash": expected})
                return _Appended(0, False,
                                 f"partition {target.partition}: at position {applied_position} "
                                 f"the live state hash is {live[:16]} but the seeded archive "
                                 f"replays to {expected[:16]}")
        for checked in batch[:count]:
            record = checked.record
            if record.prev_hash.hex() != archive.chain_head:
                raise AssertionError(f"partition {target.partition}: record {record.position} "
                                     "was checked against another chain head")
            archive.append(record.position, record.log_index, record.term, record.stamp_ms,
                           record.entry_blob, record.results_blob)
            if archive.chain_head != record.hash.hex():
                raise AssertionError(f"partition {target.partition}: record {record.position} "
                                     "was not written byte for byte")
        if archive.last_position != applied_position:
            return _Appended(count, False, None)
        target.archive_lagging = False
        return _Appended(count, True, None)


# -- the node's background task ------------------------------------------------------------


class ArchiveSeeder:
    """Finds this node's lagging archives and seeds them from peers, in the background."""

    def __init__(self, host: SeedingHost, peer_metadata: tuple[tuple[str, str], ...]) -> None:
        self.host = host
        self._metadata = peer_metadata
        self._seeders: dict[int, PartitionSeeder] = {}
        self._retry_at: dict[int, float] = {}
        self._backoff_s: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="archive-seeder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            try:
                busy = await self.seed_once()
            except Exception:
                log.exception("archive seeding round failed")
                busy = False
            if not busy:
                await asyncio.sleep(SEED_POLL_S)

    async def seed_once(self) -> bool:
        """One round over every lagging replica here; True if a batch was appended."""
        busy = False
        now = time.monotonic()
        for partition, replica in list(self.host.replicas.items()):
            seeder = self._seeders.get(partition)
            if seeder is not None and seeder.target is not replica:
                seeder = None  # the replica was removed and added again
            if not replica.archive_lagging or not replica.settings.archive:
                self._seeders.pop(partition, None)
                continue
            if seeder is not None and seeder.failed is not None:
                continue  # SeedMismatch: logged CRITICAL, needs an operator
            if self._retry_at.get(partition, 0.0) > now:
                continue
            if seeder is None:
                seeder = self._seeders[partition] = PartitionSeeder(replica)
            before = seeder.appended
            try:
                done = await seeder.step(self.sources(replica))
            except SeedMismatch as exc:
                log.critical("archive seeding stopped", extra={"partition": partition,
                                                               "reason": str(exc)})
                continue
            except (SeedInterrupted, ArchiveCorrupt) as exc:
                log.warning("archive seeding restarts", extra={"partition": partition,
                                                               "reason": str(exc)})
                self._seeders.pop(partition, None)
                self._back_off(partition)
                continue
            if done:
                self._seeders.pop(partition, None)
            if seeder.appended > before or done:
                busy = True
                self._backoff_s.pop(partition, None)
                self._retry_at.pop(partition, None)
            else:
                self._back_off(partition)
        return busy

    def sources(self, replica: HostedReplica) -> list[PeerArchiveSource]:
        """The partition's other replicas, its current leader first."""
        config = self.host.config
        peers = [n for n in config.replicas_of(replica.partition) if n != self.host.node_id]
        leader_address = replica.leader_address()
        if leader_address is not None:
            try:
                leader = config.node_by_raft_address(leader_address).id
            except KeyError:
                leader = None
            if leader in peers:
                peers.remove(leader)
                peers.insert(0, leader)
        return [PeerArchiveSource(n, self.host.channel(config.node(n).grpc_address),
                                  self._metadata) for n in peers]

    def _back_off(self, partition: int) -> None:
        delay_s = min(SEED_BACKOFF_S_MAX,
                      self._backoff_s.get(partition, SEED_BACKOFF_S_MIN / 2) * 2)
        self._backoff_s[partition] = delay_s
        self._retry_at[partition] = time.monotonic() + delay_s
