"""The nemesis' schedule and its replacement fault, against a fake target (no processes),
and the map reading that decides which node may be replaced."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

from node.cluster_map import JOINING, ClusterMap, Slot
from node.config import NodeConfig
from tests.chaos.nemesis import (
    ALL_FAULTS,
    FaultFailed,
    FaultKind,
    Nemesis,
    PlannedFault,
    ScheduleShape,
    plan,
    read_faults,
)
from tests.chaos.runbook import replaceable
from tests.chaos.storage import DAMAGES, pick_damage

QUICK = ScheduleShape(gap_s=(0.0, 0.0), fault_s=(0.01, 0.02), first_s=0.0, tail_s=0.0,
                      replace_runbook_s=5.0)


def test_a_schedule_replaces_at_most_replaces_max_nodes() -> None:
    schedule = plan(5, 3_600.0, ALL_FAULTS, ScheduleShape(replaces_max=2))
    kinds = [f.kind for f in schedule]
    # A damaged node is replaced by the runbook too: both count against the cap.
    assert kinds.count(FaultKind.REPLACE) + kinds.count(FaultKind.DAMAGE) == 2
    assert kinds.count(FaultKind.KILL) > 10  # the other kinds go on after the cap


def test_a_schedule_of_replacements_only_ends_at_the_cap() -> None:
    schedule = plan(5, 3_600.0, [FaultKind.REPLACE], ScheduleShape(replaces_max=2))
    assert [f.kind for f in schedule] == [FaultKind.REPLACE] * 2


def test_a_replacement_is_planned_with_room_for_its_runbook() -> None:
    shape = ScheduleShape(gap_s=(1.0, 1.0), fault_s=(2.0, 2.0), first_s=0.0,
                          replace_runbook_s=30.0)
    first, second = plan(1, 1_000.0, [FaultKind.REPLACE, FaultKind.KILL], shape)[:2]
    room_s = 2.0 + 1.0 + (30.0 if first.kind is FaultKind.REPLACE else 0.0)
    assert second.at_s - first.at_s == room_s


def test_the_same_seed_gives_the_same_schedule() -> None:
    assert plan(9, 600.0, ALL_FAULTS) == plan(9, 600.0, ALL_FAULTS)


class FakeTarget:
    """Records what the nemesis does; `replace` swaps the id like the runner's nodes."""

    def __init__(self, candidates: Sequence[str] = ("n1", "n2", "n3"),
                 refuse: bool = False) -> None:
        self.node_ids: tuple[str, ...] = ("n1", "n2", "n3")
        self.candidates, self.refuse = tuple(candidates), refuse
        self.actions: list[str] = []

    def leaders(self) -> dict[int, str]:
        return {0: "n2"}

    def kill(self, node_id: str) -> None:
        self.actions.append(f"kill {node_id}")

    def restart(self, node_id: str) -> None:
        self.actions.append(f"restart {node_id}")

    def pause(self, node_id: str) -> None:
        self.actions.append(f"pause {node_id}")

    def resume(self, node_id: str) -> None:
        self.actions.append(f"resume {node_id}")

    def isolate(self, node_id: str) -> None:
        self.actions.append(f"isolate {node_id}")

    def split(self, side_a: Sequence[str], side_b: Sequence[str]) -> None:
        self.actions.append(f"split {side_a} {side_b}")

    def slow(self, node_id: str, delay_ms: int, drop_rate: float) -> None:
        self.actions.append(f"slow {node_id}")

    def heal_network(self) -> None:
        self.actions.append("heal")

    def replaceable(self) -> tuple[str, ...]:
        return self.candidates

    def wipe(self, node_id: str) -> None:
        self.actions.append(f"wipe {node_id}")

    def replace(self, node_id: str) -> str:
        self.actions.append(f"replace {node_id}")
        if self.refuse:
            raise FaultFailed("replica add refused")
        self.node_ids = (*[n for n in self.node_ids if n != node_id], "n4")
        return "-> n4"

    def damage(self, node_id: str, what: str, pick: float) -> str:
        self.actions.append(f"damage {node_id} {what}")
        return f"{what} lost; refused (status 3)"

    def fill_disk(self, node_id: str) -> str:
        self.actions.append(f"fill {node_id}")
        return "disk full"

    def free_disk(self, node_id: str, led_partitions: Sequence[int]) -> str:
        self.actions.append(f"free {node_id} led {list(led_partitions)}")
        return "space freed"

    def hostile(self, node_id: str, duration_s: float) -> str:
        self.actions.append(f"hostile {node_id} {duration_s:g} s")
        return "on 3 Raft ports"

    def end_hostile(self, node_id: str) -> str:
        self.actions.append(f"end hostile {node_id}")
        return "2 connections, 2 closed by the node"


def replace_at(at_s: float, prefer_leader: bool = True) -> PlannedFault:
    return PlannedFault(FaultKind.REPLACE, at_s, 0.01, prefer_leader=prefer_leader, pick=0.0)


def run_nemesis(target: FakeTarget, schedule: Sequence[PlannedFault], log: Path) -> None:
    Nemesis(target, schedule, log, lambda line: None).run(time.monotonic(), threading.Event())


def test_a_replacement_kills_wipes_then_replaces_the_leader(tmp_path: Path) -> None:
    target = FakeTarget()
    run_nemesis(target, [replace_at(0.0)], tmp_path / "nemesis.jsonl")
    assert target.actions == ["kill n2", "wipe n2", "replace n2"]
    (record,) = read_faults(tmp_path / "nemesis.jsonl")
    assert record.nodes == ("n2",) and record.led_partitions == (0,)
    assert record.detail == "disk lost -> n4"


def test_only_a_node_the_map_allows_is_replaced(tmp_path: Path) -> None:
    target = FakeTarget(candidates=("n3",))
    run_nemesis(target, [replace_at(0.0)], tmp_path / "nemesis.jsonl")
    assert target.actions == ["kill n3", "wipe n3", "replace n3"]


def test_no_replaceable_node_skips_the_fault(tmp_path: Path) -> None:
    target = FakeTarget(candidates=())
    run_nemesis(target, [replace_at(0.0)], tmp_path / "nemesis.jsonl")
    assert target.actions == []
    (record,) = read_faults(tmp_path / "nemesis.jsonl")
    assert record.nodes == () and record.detail.startswith("skipped")


def test_after_a_replacement_the_new_node_can_be_hit(tmp_path: Path) -> None:
    target = FakeTarget()
    kill_last = PlannedFault(FaultKind.KILL, 0.0, 0.01, prefer_leader=False, pick=0.99)
    run_nemesis(target, [replace_at(0.0), kill_last], tmp_path / "nemesis.jsonl")
    assert target.actions[-2:] == ["kill n4", "restart n4"]


def test_a_failed_replacement_is_recorded_and_ends_the_schedule(tmp_path: Path) -> None:
    target = FakeTarget(refuse=True)
    kill = PlannedFault(FaultKind.KILL, 0.0, 0.01, prefer_leader=False, pick=0.0)
    run_nemesis(target, [replace_at(0.0), kill], tmp_path / "nemesis.jsonl")
    assert target.actions == ["kill n2", "wipe n2", "replace n2"]
    (record,) = read_faults(tmp_path / "nemesis.jsonl")
    assert "FAILED: replica add refused" in record.detail


def three_node_map(**changes: object) -> ClusterMap:
    nodes = tuple(NodeConfig(f"n{i}", "127.0.0.1", 7000 + i, 7100 + 10 * i) for i in (1, 2, 3))
    everyone = tuple(Slot(n.id) for n in nodes)
    fields: dict[str, object] = {
        "version": 5, "name": "chaos", "partition_count": 2, "nodes": nodes,
        "groups": (everyone, everyone, everyone),
        "incarnations": tuple((n.id, f"inc-{n.id}") for n in nodes)}
    fields.update(changes)
    return ClusterMap(**fields)  # type: ignore[arg-type]


def test_every_node_of_a_settled_three_replica_map_is_replaceable() -> None:
    assert replaceable(three_node_map()) == ("n1", "n2", "n3")


def test_nothing_is_replaceable_while_a_membership_change_is_in_progress() -> None:
    cluster_map = three_node_map()
    joining = (*cluster_map.groups[0][:2], Slot("n3", JOINING))
    assert replaceable(three_node_map(groups=(joining, *cluster_map.groups[1:]))) == ()


def test_a_node_whose_start_was_never_recorded_is_not_replaceable() -> None:
    recorded = (("n1", "a"), ("n2", "b"))
    assert replaceable(three_node_map(incarnations=recorded)) == ("n1", "n2")


def test_the_only_replica_of_a_group_is_not_replaceable() -> None:
    cluster_map = three_node_map()
    alone = (Slot("n1"),)
    assert replaceable(three_node_map(groups=(alone, *cluster_map.groups[1:]))) == ("n2", "n3")


def test_a_damage_stops_breaks_and_restarts_a_node_then_the_runbook_replaces_it(
    tmp_path: Path,
) -> None:
    target = FakeTarget()
    fault = PlannedFault(FaultKind.DAMAGE, 0.0, 0.01, prefer_leader=True, pick=0.3)
    run_nemesis(target, [fault], tmp_path / "nemesis.jsonl")
    what = pick_damage(0.3)
    assert what in DAMAGES
    assert target.actions == [f"damage n2 {what}", "replace n2"]
    (record,) = read_faults(tmp_path / "nemesis.jsonl")
    assert record.detail == f"{what} lost; refused (status 3) -> n4"


def test_a_full_disk_is_freed_when_the_fault_ends_knowing_what_the_node_led(
    tmp_path: Path,
) -> None:
    target = FakeTarget()
    fault = PlannedFault(FaultKind.DISK_FULL, 0.0, 0.01, prefer_leader=True, pick=0.0)
    run_nemesis(target, [fault], tmp_path / "nemesis.jsonl")
    assert target.actions == ["fill n2", "free n2 led [0]"]


def test_damage_and_replace_share_the_replacement_budget() -> None:
    shape = ScheduleShape(replaces_max=2)
    schedule = plan(5, 3600.0, [FaultKind.DAMAGE, FaultKind.REPLACE, FaultKind.KILL], shape)
    assert sum(f.kind in (FaultKind.DAMAGE, FaultKind.REPLACE) for f in schedule) == 2


def test_with_runbook_last_every_other_kind_of_a_round_comes_before_the_runbook() -> None:
    kinds = [FaultKind.DAMAGE, FaultKind.KILL, FaultKind.PAUSE, FaultKind.KILL_ALL,
             FaultKind.DISK_FULL, FaultKind.HOSTILE]
    for seed in range(20):
        schedule = plan(seed, 68.0, kinds, ScheduleShape(
            gap_s=(1.0, 3.0), fault_s=(2.0, 4.0), first_s=2.0, tail_s=4.0,
            replace_runbook_s=20.0, replaces_max=1, runbook_last=True))
        order = [f.kind for f in schedule]
        assert set(order) == set(kinds), seed
        assert all(order.index(kind) < order.index(FaultKind.DAMAGE) for kind in kinds
                   if kind != FaultKind.DAMAGE), (seed, order)


def test_hostile_bytes_last_as_long_as_the_fault(tmp_path: Path) -> None:
    target = FakeTarget()
    fault = PlannedFault(FaultKind.HOSTILE, 0.0, 0.02, prefer_leader=True, pick=0.0)
    run_nemesis(target, [fault], tmp_path / "nemesis.jsonl")
    assert target.actions == ["hostile n2 0.02 s", "end hostile n2"]
    (record,) = read_faults(tmp_path / "nemesis.jsonl")
    assert record.detail == "on 3 Raft ports 2 connections, 2 closed by the node"
