"""The records of a chaos run, as JSON lines: what the clients did, what the cluster reported,
and the state it settled in.

Three files, each written by one process and read by the checker:

- `history.jsonl`: one `Event` per line. Every operation writes an `invoke` event before
  it is sent and exactly one completion after: `ok` (it happened, as answered), `fail` (it
  definitely did not happen) or `unknown` (it may have happened). Both carry the same
  `op_id`, a monotonic time (`time.monotonic()`, comparable between processes of one
  machine) and a wall time. An invoke with no completion (the client died) is unknown.
- `samples.jsonl`: one `Sample` per line: every node's own view of its replicas
  (leader?, term, position, money totals), taken periodically during the run.
- `final.json`: the `FinalState` after healing and quiescence.

Lines are flushed one by one, so a client killed mid-run leaves a readable prefix; only
the last line may be torn, and readers drop a torn last line (and nothing else).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

HISTORY_FILE = "history.jsonl"
SAMPLES_FILE = "samples.jsonl"
FINAL_FILE = "final.json"
SETUP_FILE = "setup.json"


class EventType(StrEnum):
    INVOKE = "invoke"
    OK = "ok"
    FAIL = "fail"
    UNKNOWN = "unknown"


class OpKind(StrEnum):
    CREATE = "create"
    DEPOSIT = "deposit"
    TRANSFER = "transfer"
    READ = "read"


@dataclass(frozen=True, slots=True)
class Event:
    """One line of the history. Fields that do not apply to the op are None."""

    op_id: str
    type: EventType
    f: OpKind
    worker: int
    mono_s: float
    wall_ms: int
    account: str
    """The account the op is keyed by: the source of a transfer, the target of the rest."""
    to_account: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    transaction_id: str | None = None
    balance_minor: int | None = None
    """A read's answer (ok reads only)."""
    status: str | None = None
    """A write's answered status (SUCCEEDED, PENDING, FAILED) on `ok`/`fail`."""
    error: str | None = None
    """Why a completion is `fail` or `unknown` (a gRPC status and message)."""


@dataclass(frozen=True, slots=True)
class CurrencyTotals:
    currency: str
    balance_minor: int
    in_flight_minor: int
    deposited_minor: int
    withdrawn_minor: int
    credited_in_minor: int
    settled_out_minor: int

    def balanced(self) -> bool:
        """The partition's own equation: money held = money that came in - money that left."""
        held = self.balance_minor + self.in_flight_minor
        return held == (self.deposited_minor - self.withdrawn_minor
                        + self.credited_in_minor - self.settled_out_minor)


@dataclass(frozen=True, slots=True)
class PairTotal:
    partition: int
    currency: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """One replica of one partition as its own node reports it (ClusterStatus local_only)."""

    node_id: str
    partition: int
    is_leader: bool
    term: int
    applied_position: int
    state_hash: str
    outbox_depth: int
    totals: tuple[CurrencyTotals, ...] = ()
    settled_to: tuple[PairTotal, ...] = ()
    credited_from: tuple[PairTotal, ...] = ()


@dataclass(frozen=True, slots=True)
class Sample:
    """Every answering node's view at one moment; `nodes_answered` lists who answered."""

    mono_s: float
    wall_ms: int
    nodes_answered: tuple[str, ...]
    views: tuple[ReplicaView, ...]

    def leader_of(self, partition: int) -> str | None:
        """The node that claims leadership of `partition` with the highest term, if any."""
        claims = [v for v in self.views if v.partition == partition and v.is_leader]
        return max(claims, key=lambda v: v.term).node_id if claims else None


@dataclass(frozen=True, slots=True)
class Resolution:
    """What the ledger says, after quiescence, about one write of the history."""

    account: str
    transaction_id: str
    outcome: str
    """SUCCEEDED (applied), FAILED (final, nothing moved) or NOT_APPLIED (aborted/absent)."""


@dataclass(frozen=True, slots=True)
class NodeVerify:
    node_id: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class FinalState:
    """The cluster after healing: resolved writes, balances, every replica, replay checks."""

    mono_s: float
    quiescent: bool
    """Every replica answered, outboxes empty, replicas of each partition agree."""
    resolutions: tuple[Resolution, ...]
    balances_minor: dict[str, int]
    views: tuple[ReplicaView, ...]
    verify: tuple[NodeVerify, ...]
    problems: tuple[str, ...] = ()
    """What the settle step could not do (e.g. a node that never answered)."""
    node_ids: tuple[str, ...] = ()
    """The nodes of the cluster map at the end (a replaced node is not among them, its
    replacement is); empty in records from before the map existed."""
    map_version: int = 0


@dataclass(frozen=True, slots=True)
class Setup:
    """What the workload runs against: the accounts, their currency, the partition count."""

    partition_count: int
    replication_factor: int
    currency: str
    accounts: tuple[str, ...]
    node_ids: tuple[str, ...]
    seed: int
    workers: int
    run_start_mono_s: float = 0.0
    run_end_mono_s: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)


# --- encoding ----------------------------------------------------------------------------

T = TypeVar("T")


def to_json(record: object) -> str:
    """One compact JSON line; None fields are left out (they are the defaults)."""
    assert dataclasses.is_dataclass(record) and not isinstance(record, type)
    return json.dumps(_strip_none(dataclasses.asdict(record)), separators=(",", ":"),
                      sort_keys=True)


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_strip_none(v) for v in value]
    return value


def _build(cls: type[T], data: dict[str, Any]) -> T:
    """A dataclass from its asdict() form, nested records and enums included."""
    kwargs: dict[str, Any] = {}
    hints = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for name, value in data.items():
        if name not in hints:
            raise ValueError(f"{cls.__name__}: unknown field {name!r}")
        kwargs[name] = _convert(cls, name, value)
    return cls(**kwargs)


_NESTED: dict[tuple[str, str], type[Any]] = {
    ("ReplicaView", "totals"): CurrencyTotals,
    ("ReplicaView", "settled_to"): PairTotal,
    ("ReplicaView", "credited_from"): PairTotal,
    ("Sample", "views"): ReplicaView,
    ("FinalState", "resolutions"): Resolution,
    ("FinalState", "views"): ReplicaView,
    ("FinalState", "verify"): NodeVerify,
}


def _convert(cls: type[Any], name: str, value: Any) -> Any:
    nested = _NESTED.get((cls.__name__, name))
    if nested is not None:
        return tuple(_build(nested, item) for item in value)
    if cls is Event and name == "type":
        return EventType(value)
    if cls is Event and name == "f":
        return OpKind(value)
    if isinstance(value, list):
        return tuple(value)
    return value


def event_from_json(line: str) -> Event:
    return _build(Event, json.loads(line))


def sample_from_json(line: str) -> Sample:
    return _build(Sample, json.loads(line))


def write_json(path: Path, record: object) -> None:
    """Write one record as a whole file, atomically (temp file, then rename)."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(to_json(record) + "\n", encoding="utf-8")
    temporary.replace(path)


def read_final(path: Path) -> FinalState:
    return _build(FinalState, json.loads(path.read_text(encoding="utf-8")))


def read_setup(path: Path) -> Setup:
    return _build(Setup, json.loads(path.read_text(encoding="utf-8")))


def read_lines(path: Path) -> Iterator[str]:
    """The lines of a JSONL file, without a torn last line (a writer killed mid-line)."""
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    complete, last = lines[:-1], lines[-1]
    yield from (line for line in complete if line)
    if last:
        try:
            json.loads(last)
        except json.JSONDecodeError:
            return  # torn: never flushed whole, so never part of the record
        yield last


def read_history(path: Path) -> list[Event]:
    return [event_from_json(line) for line in read_lines(path)]


def read_samples(path: Path) -> list[Sample]:
    return [sample_from_json(line) for line in read_lines(path)]


def now() -> tuple[float, int]:
    """(monotonic seconds, wall milliseconds): the two clocks every record carries."""
    return time.monotonic(), time.time_ns() // 1_000_000


class JsonlWriter:
    """Appends records as JSON lines, one flush per line; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)

    def write(self, record: object) -> None:
        line = to_json(record) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
