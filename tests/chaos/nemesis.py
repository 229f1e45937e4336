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
- slow: delay (and lose some of) the Raft traffic of one node.
The last three need a network that can inject them (not "loopback").

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

NEMESIS_FILE = "nemesis.jsonl"


class FaultKind(StrEnum):
    KILL = "kill"
    PAUSE = "pause"
    KILL_ALL = "kill_all"
    ISOLATE = "isolate"
    SPLIT = "split"
    SLOW = "slow"


PROCESS_FAULTS = (FaultKind.KILL, FaultKind.PAUSE, FaultKind.KILL_ALL)
NETWORK_FAULTS = (FaultKind.ISOLATE, FaultKind.SPLIT, FaultKind.SLOW)
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


def plan(seed: int, duration_s: float, kinds: Sequence[FaultKind],
         shape: ScheduleShape = ScheduleShape()) -> list[PlannedFault]:
    """The faults of a run: rounds in which every kind comes once, in a shuffled order."""
    assert kinds, "a schedule needs at least one fault kind"
    rng = random.Random(seed)
    faults: list[PlannedFault] = []
    at_s = shape.first_s
    round_kinds: list[FaultKind] = []
    while True:
        if not round_kinds:
            round_kinds = list(kinds)
            rng.shuffle(round_kinds)
        kind = round_kinds.pop()
        length_s = rng.uniform(*shape.fault_s)
        fault = PlannedFault(kind, round(at_s, 3), round(length_s, 3),
                             prefer_leader=rng.random() < LEADER_PREFERENCE, pick=rng.random(),
                             delay_ms=rng.randint(*SLOW_DELAY_MS_RANGE),
                             drop_rate=round(rng.uniform(0, SLOW_DROP_RATE_MAX), 4))
        if at_s + length_s > duration_s - shape.tail_s:
            return faults
        faults.append(fault)
        at_s += length_s + rng.uniform(*shape.gap_s)


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


class Target(Protocol):
    """What the nemesis acts on: the runner's node processes and network."""

    node_ids: tuple[str, ...]

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
        self._undo: Callable[[], None] | None = None

    def run(self, started_mono_s: float, stop: threading.Event) -> None:
        with JsonlWriter(self._log) as log:
            for fault in self.schedule:
                if stop.wait(max(0.0, started_mono_s + fault.at_s - time.monotonic())):
                    return
                start_s, start_ms = now()
                nodes, detail, led = self._inject(fault)
                self.echo(f"nemesis: +{start_s - started_mono_s:6.1f}s {fault.kind} "
                          f"{','.join(nodes)} {detail}".rstrip())
                stop.wait(fault.duration_s)
                self.heal()
                end_s, end_ms = now()
                self.echo(f"nemesis: +{end_s - started_mono_s:6.1f}s healed {fault.kind}")
                record = FaultRecord(str(fault.kind), nodes, detail, led, start_s, start_ms,
                                     end_s, end_ms)
                self.injected.append(record)
                log.write(record)
                if stop.is_set():
                    return

    def heal(self) -> None:
        """Undo the fault in progress, if any (idempotent)."""
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()

    def _victim(self, fault: PlannedFault) -> str:
        leaders = self.target.leaders()
        leading = sorted(set(leaders.values()))
        if fault.prefer_leader and leading:
            return _choose(leading, fault.pick)
        return _choose(self.target.node_ids, fault.pick)

    def _led_by(self, nodes: Sequence[str]) -> tuple[int, ...]:
        return tuple(sorted(p for p, n in self.target.leaders().items() if n in nodes))

    def _inject(self, fault: PlannedFault) -> tuple[tuple[str, ...], str, tuple[int, ...]]:
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
        victim = self._victim(fault)
        led = self._led_by((victim,))
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
