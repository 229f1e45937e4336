"""The nemesis: a seeded schedule of faults, injected one at a time and healed in full.

The schedule is a pure function of (seed, duration, fault kinds): the same seed gives the
same kinds, times, durations and target picks, so a failure can be replayed. Which node a
pick lands on is decided when the fault starts ("the leader" is whoever leads then), so a
replay hits the same roles, not always the same node ids.

Kinds (each starts, lasts `duration_s`, then is undone before the next begins):
- kill: SIGKILL one node (a leader, mostly), restart it when the fault ends;
- pause: SIGSTOP one node (a leader, mostly: a GC-pause-like stall), SIGCONT at the end;
- kill_all: SIGKILL every node, restart them all at the end;
- isolate: cut one node (a leader, mostly) off the network;
- split: the cluster in a minority (holding a leader, mostly) and a majority;
- slow: delay (and lose some of) the Raft traffic of one node;
- replace: a node loses its disk (SIGKILL, data dir wiped) and stays down for the
  fault's length; then the operator's runbook replaces it under a NEW id (node add,
  start with --join, each of its replicas added on the new node and removed from the
  old, node remove) and checks that the old id is refused when it comes back with an
  empty disk. From then on the new node is a member like the others. Slow (tens of
  seconds), so at most `ScheduleShape.replaces_max` per run, each planned with
  `replace_runbook_s` of room.
- damage: a node is stopped and part of its data dir destroyed (a partition directory,
  a journal, a meta file, a snapshot its journal needs, the journal's committed tail cut
  on a record boundary or mid-record, or everything but the identity and map files; see
  storage.py). Started again, it must refuse (status 3), never rejoin as a voter with
  forgotten state; then the runbook replaces it, as for `replace` (and counts against
  the same `replaces_max`).
- disk_full: the filesystem of one node (a leader, mostly) fills up. The node must end
  itself (status 74) at its first failed write, so that its partitions elect other
  leaders; at the end the space is freed and the node restarted (each node's data dir is
  a small tmpfs of its own in runs with this fault: needs root).
- hostile: for the fault's length, a client without the secret keeps a connection to
  every Raft port of one node (a leader, mostly), announces a 2 GiB message and streams
  junk (hostile.py). The node must close such connections and keep its partitions
  writing (the checker's availability figures show any stall).
isolate, split and slow need a network that can inject them (not "loopback").

Every fault is printed when it starts and ends and written to `nemesis.jsonl` with both
times (monotonic and wall), the nodes it hit and the partitions they led when it started.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from tests.chaos.history import JsonlWriter, now, read_lines
from tests.chaos.storage import pick_damage

NEMESIS_FILE = "nemesis.jsonl"


class FaultKind(StrEnum):
    KILL = "kill"
    PAUSE = "pause"
    KILL_ALL = "kill_all"
    ISOLATE = "isolate"
    SPLIT = "split"
    SLOW = "slow"
    REPLACE = "replace"
    DAMAGE = "damage"
    DISK_FULL = "disk_full"
    HOSTILE = "hostile"


PROCESS_FAULTS = (FaultKind.KILL, FaultKind.PAUSE, FaultKind.KILL_ALL)
NETWORK_FAULTS = (FaultKind.ISOLATE, FaultKind.SPLIT, FaultKind.SLOW)
MEMBERSHIP_FAULTS = (FaultKind.REPLACE,)
STORAGE_FAULTS = (FaultKind.DAMAGE, FaultKind.DISK_FULL)
INPUT_FAULTS = (FaultKind.HOSTILE,)
ALL_FAULTS = (*PROCESS_FAULTS, *NETWORK_FAULTS, *MEMBERSHIP_FAULTS, *STORAGE_FAULTS,
              *INPUT_FAULTS)
RUNBOOK_FAULTS = (FaultKind.REPLACE, FaultKind.DAMAGE)
"""Faults healed by the replacement runbook: slow, and at most `replaces_max` a run."""
LEADER_PREFERENCE = 0.75
"""Share of single-node faults aimed at a leader rather than at any node."""
SLOW_DELAY_MS_RANGE = (50, 250)
SLOW_DROP_RATE_MAX = 0.02


@dataclass(frozen=True, slots=True)
class PlannedFault:
    kind: FaultKind
    at_s: float
    """Start, in seconds from the beginning of the schedule."""
    duration_s: float
    prefer_leader: bool
    pick: float
    """Uniform in [0, 1): chooses among the candidate nodes when the fault starts."""
    delay_ms: int = 0
    drop_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class ScheduleShape:
    """Bounds of the random gaps and fault lengths (seconds)."""

    gap_s: tuple[float, float] = (3.0, 8.0)
    fault_s: tuple[float, float] = (4.0, 10.0)
    first_s: float = 2.0
    """Quiet time before the first fault."""
    tail_s: float = 5.0
    """Quiet time after the last fault, before the schedule ends."""
    replace_runbook_s: float = 45.0
    """Room planned for a replacement's runbook after the node's down time (measured:
    15-40 s on a loaded 2-core machine); if it takes longer, later faults start late."""
    replaces_max: int = 2
    """Replacements per run, at most: each is slow, and a `--join` needs a node of the
    original cluster file alive (of 3, two replacements leave at least one)."""
    runbook_last: bool = False
    """Within each round, the runbook faults come after every other kind: a runbook slower
    than `replace_runbook_s` (a loaded machine) then delays no other kind past the run's
    end (a short run that must see every kind once)."""


def plan(seed: int, duration_s: float, kinds: Sequence[FaultKind],
         shape: ScheduleShape = ScheduleShape()) -> list[PlannedFault]:
    """The faults of a run: rounds in which every kind comes once, in a shuffled order."""
    assert kinds, "a schedule needs at least one fault kind"
    rng = random.Random(seed)
    faults: list[PlannedFault] = []
    at_s = shape.first_s
    round_kinds: list[FaultKind] = []
    replaces = 0
    while True:
        if not round_kinds:
            round_kinds = [k for k in kinds
                           if k not in RUNBOOK_FAULTS or replaces < shape.replaces_max]
            if not round_kinds:
                return faults
            rng.shuffle(round_kinds)
            if shape.runbook_last:  # popped from the end: runbook kinds go to the front
                round_kinds.sort(key=lambda k: k not in RUNBOOK_FAULTS)
        kind = round_kinds.pop()
        if kind in RUNBOOK_FAULTS and replaces >= shape.replaces_max:
            continue
        length_s = rng.uniform(*shape.fault_s)
        fault = PlannedFault(kind, round(at_s, 3), round(length_s, 3),
                             prefer_leader=rng.random() < LEADER_PREFERENCE, pick=rng.random(),
                             delay_ms=rng.randint(*SLOW_DELAY_MS_RANGE),
                             drop_rate=round(rng.uniform(0, SLOW_DROP_RATE_MAX), 4))
        slot_s = length_s + (shape.replace_runbook_s if kind in RUNBOOK_FAULTS else 0.0)
        if at_s + slot_s > duration_s - shape.tail_s:
            return faults
        faults.append(fault)
        replaces += kind in RUNBOOK_FAULTS
        at_s += slot_s + rng.uniform(*shape.gap_s)


@dataclass(frozen=True, slots=True)
class FaultRecord:
    kind: str
    nodes: tuple[str, ...]
    detail: str
    led_partitions: tuple[int, ...]
    """Partitions the hit nodes led (as last sampled) when the fault started."""
    start_mono_s: float
    start_wall_ms: int
    end_mono_s: float
    end_wall_ms: int


def read_faults(path: Path) -> list[FaultRecord]:
    records = []
    for line in read_lines(path):
        data = json.loads(line)
        data["nodes"] = tuple(data.get("nodes", ()))
        data["led_partitions"] = tuple(data.get("led_partitions", ()))
        records.append(FaultRecord(**data))
    return records


class FaultFailed(Exception):
    """A fault could not be carried out as planned (e.g. a replacement's runbook step was
    refused): the nemesis records it and ends its schedule; the target reports it."""


class Target(Protocol):
    """What the nemesis acts on: the runner's node processes and network."""

    node_ids: tuple[str, ...]
    """The current members (a replacement swaps the old id for the new one)."""

    def leaders(self) -> dict[int, str]:
        """partition -> node id of its leader, as last observed (may be stale or partial)."""
        ...

    def kill(self, node_id: str) -> None: ...
    def restart(self, node_id: str) -> None: ...
    def pause(self, node_id: str) -> None: ...
    def resume(self, node_id: str) -> None: ...
    def isolate(self, node_id: str) -> None: ...
    def split(self, side_a: Sequence[str], side_b: Sequence[str]) -> None: ...
    def slow(self, node_id: str, delay_ms: int, drop_rate: float) -> None: ...
    def heal_network(self) -> None: ...

    def replaceable(self) -> tuple[str, ...]:
        """Nodes whose loss the cluster survives while it is replaced, as the cluster map
        says now (membership settled, the node's incarnation recorded, every group it is
        in keeps a majority without it); empty when the map cannot be read."""
        ...

    def wipe(self, node_id: str) -> None:
        """Delete a (killed) node's data dir: its disk is lost."""
        ...

    def replace(self, node_id: str) -> str:
        """The runbook: replace the wiped node under a new id and check that the old id is
        refused; returns what happened (the new id, each step's time). Raises FaultFailed."""
        ...

    def damage(self, node_id: str, what: str, pick: float) -> str:
        """Stop the node, destroy `what` of one of its replicas (storage.DAMAGES), start it
        and check that it refuses; says what happened (a start that is not refused is one
        of the run's problems)."""
        ...

    def fill_disk(self, node_id: str) -> str:
        """Fill the node's filesystem: it is expected to end itself (status 74)."""
        ...

    def free_disk(self, node_id: str, led_partitions: Sequence[int]) -> str:
        """Free the space, check how the node ended (74, or still running if it never had to
        write), and restart it."""
        ...

    def hostile(self, node_id: str, duration_s: float) -> str:
        """Hostile bytes on every Raft port of the node for `duration_s`."""
        ...

    def end_hostile(self, node_id: str) -> str:
        """Wait for the hostile client to end; what it saw (a node that never closed a
        hostile connection is one of the run's problems)."""
        ...


def _choose(candidates: Sequence[str], pick: float) -> str:
    assert candidates and 0.0 <= pick < 1.0
    return sorted(candidates)[int(pick * len(candidates))]


class Nemesis:
    """Runs a schedule against a target; `stop` ends it early (the current fault is healed)."""

    def __init__(self, target: Target, schedule: Sequence[PlannedFault], log_path: Path,
                 echo: Callable[[str], None]) -> None:
        self.target, self.schedule, self.echo = target, list(schedule), echo
        self._log = log_path
        self.injected: list[FaultRecord] = []
        self._undo: Callable[[], str | None] | None = None

    def run(self, started_mono_s: float, stop: threading.Event) -> None:
        with JsonlWriter(self._log) as log:
            for fault in self.schedule:
                if stop.wait(max(0.0, started_mono_s + fault.at_s - time.monotonic())):
                    return
                # Asked before the clock starts: the fault's time is the fault's, not the
                # map read's (a write in between still reaches the victim).
                candidates = (self.target.replaceable() if fault.kind in RUNBOOK_FAULTS
                              else None)
                start_s, start_ms = now()
                nodes, detail, led = self._inject(fault, candidates)
                self.echo(f"nemesis: +{start_s - started_mono_s:6.1f}s {fault.kind} "
                          f"{','.join(nodes)} {detail}".rstrip())
                stop.wait(fault.duration_s)
                failed = None
                try:
                    healed = self.heal()
                except FaultFailed as error:
                    healed = failed = f"FAILED: {error}"
                end_s, end_ms = now()
                self.echo(f"nemesis: +{end_s - started_mono_s:6.1f}s healed {fault.kind} "
                          f"{healed or ''}".rstrip())
                if healed:
                    detail = f"{detail} {healed}".strip()
                record = FaultRecord(str(fault.kind), nodes, detail, led, start_s, start_ms,
                                     end_s, end_ms)
                self.injected.append(record)
                log.write(record)
                if stop.is_set() or failed:
                    return

    def heal(self) -> str | None:
        """Undo the fault in progress, if any (idempotent); what the undoing did, if it
        says (a replacement's new node and step times). Raises FaultFailed."""
        undo, self._undo = self._undo, None
        return undo() if undo is not None else None

    def _victim(self, fault: PlannedFault, candidates: Sequence[str] | None = None) -> str:
        among = self.target.node_ids if candidates is None else candidates
        leaders = self.target.leaders()
        leading = sorted(set(leaders.values()) & set(among))
        if fault.prefer_leader and leading:
            return _choose(leading, fault.pick)
        return _choose(among, fault.pick)

    def _led_by(self, nodes: Sequence[str]) -> tuple[int, ...]:
        return tuple(sorted(p for p, n in self.target.leaders().items() if n in nodes))

    def _inject(self, fault: PlannedFault, candidates: tuple[str, ...] | None = None
                ) -> tuple[tuple[str, ...], str, tuple[int, ...]]:
        target = self.target
        if fault.kind is FaultKind.KILL_ALL:
            nodes = tuple(target.node_ids)
            led = self._led_by(nodes)
            for node_id in nodes:
                target.kill(node_id)

            def restart_all() -> None:
                for node_id in nodes:
                    target.restart(node_id)

            self._undo = restart_all
            return nodes, "", led
        if fault.kind is FaultKind.SPLIT:
            victim = self._victim(fault)
            others = [n for n in target.node_ids if n != victim]
            random.Random(fault.pick).shuffle(others)
            minority_size = (len(target.node_ids) - 1) // 2
            minority = (victim, *sorted(others[:minority_size - 1]))
            majority = tuple(sorted(others[minority_size - 1:]))
            led = self._led_by(minority)
            target.split(minority, majority)
            self._undo = target.heal_network
            return minority, f"| {','.join(majority)}", led
        if fault.kind is FaultKind.REPLACE:
            assert candidates is not None, "replaceable() is asked before a replacement"
            if not candidates:
                return (), "skipped: no node can be replaced now (see the cluster map)", ()
            victim = self._victim(fault, candidates)
            led = self._led_by((victim,))
            target.kill(victim)
            target.wipe(victim)
            self._undo = lambda: target.replace(victim)
            return (victim,), "disk lost", led
        if fault.kind is FaultKind.DAMAGE:
            assert candidates is not None, "replaceable() is asked before a damage"
            if not candidates:
                return (), "skipped: no node can be replaced now (see the cluster map)", ()
            victim = self._victim(fault, candidates)
            led = self._led_by((victim,))
            detail = target.damage(victim, pick_damage(fault.pick), fault.pick)
            self._undo = lambda: target.replace(victim)
            return (victim,), detail, led
        victim = self._victim(fault)
        led = self._led_by((victim,))
        if fault.kind is FaultKind.DISK_FULL:
            detail = target.fill_disk(victim)
            self._undo = lambda: target.free_disk(victim, led)
            return (victim,), detail, led
        if fault.kind is FaultKind.HOSTILE:
            detail = target.hostile(victim, fault.duration_s)
            self._undo = lambda: target.end_hostile(victim)
            return (victim,), detail, led
        if fault.kind is FaultKind.KILL:
            target.kill(victim)
            self._undo = lambda: target.restart(victim)
            return (victim,), "", led
        if fault.kind is FaultKind.PAUSE:
            target.pause(victim)
            self._undo = lambda: target.resume(victim)
            return (victim,), "", led
        if fault.kind is FaultKind.ISOLATE:
            target.isolate(victim)
            self._undo = target.heal_network
            return (victim,), "", led
        assert fault.kind is FaultKind.SLOW, fault.kind
        target.slow(victim, fault.delay_ms, fault.drop_rate)
        self._undo = target.heal_network
        return (victim,), f"delay {fault.delay_ms} ms drop {fault.drop_rate:.2%}", led
