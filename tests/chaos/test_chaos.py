"""The short seeded chaos runs of `make test`: real nodes, the bank workload, faults.

Two runs of one to two minutes on a loaded 2-core machine. Process and storage
faults: a leader killed with kill -9, a node paused with SIGSTOP, every node killed at
once, a stopped node's data dir damaged (it must refuse, then is replaced by the runbook
under a new id, and the checker judges the new membership), a node's disk filled (it
must stop, then catch up), hostile bytes on Raft ports. Network faults: a node isolated,
a minority split off, a node's Raft links slowed and lossy. Large batches run
throughout. The `replace` fault (a lost disk) runs the same runbook as `damage`; it is
left to `make chaos`, and tests/test_membership.py replaces a node whose disk was lost.
Each fault is healed before the next; the checker's verdict must be a pass. Long runs
with every kind mixed are `make chaos` (`python -m tests.chaos.runner`, see
docs/reliability.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.history import FINAL_FILE, read_final
from tests.chaos.nemesis import FaultKind, ScheduleShape
from tests.chaos.runner import RunOptions, run

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""

SEED = 20_240_611
"""Fixed, so that `make test` runs the same schedule every time."""

SHORT = ScheduleShape(gap_s=(2.0, 4.0), fault_s=(3.0, 6.0), first_s=2.0, tail_s=4.0)
"""At least three faults (one of each kind) always fit in 36 s: 2 + 3 x 6 + 2 x 4 + 4 = 32."""

def test_a_short_seeded_chaos_run_with_network_faults_passes_the_checker(
    tmp_path: Path,
) -> None:
    """netns when this machine allows it (root), else the TCP proxy: both cut and slow
    the Raft links (network.py)."""
    faults = (FaultKind.ISOLATE, FaultKind.SPLIT, FaultKind.SLOW)
    options = RunOptions(duration_s=36.0, seed=SEED + 1, network="auto", nodes=3, partitions=2,
                         out=tmp_path / "chaos", faults=faults, workers=3, recovery_s=4.0,
                         shape=SHORT)
    report = run(options, say=lambda line: print(line, flush=True))
    assert report.ok, [f"[{v.check}] {v.detail}" for v in report.violations[:10]]
    injected = report.summary["faults"]
    assert isinstance(injected, dict) and all(injected.get(kind, 0) >= 1 for kind in faults)


PROCESS_AND_STORAGE = ScheduleShape(gap_s=(1.0, 3.0), fault_s=(2.0, 4.0), first_s=2.0,
                                    tail_s=4.0, replace_runbook_s=20.0, replaces_max=1,
                                    runbook_last=True)
"""Six kinds, one of them (damage) with its runbook, fit in 68 s: 2 + 6 x 4 + 20 + 5 x 3 +
4 = 65. The damage comes last: a slower runbook (a loaded machine: 60 s seen) runs to its
end after the run's duration without pushing another kind out of the run."""


def test_a_short_seeded_chaos_run_with_process_and_storage_faults_passes_the_checker(
    tmp_path: Path,
) -> None:
    """Process faults: a leader killed with kill -9, a node paused with SIGSTOP, every node
    killed at once. Storage faults: a stopped node loses part of its data dir and must
    refuse to start, then is replaced by the runbook; a node's disk fills up and it must
    end itself (status 74), then catch up. Hostile bytes: a client without the secret
    streams junk at a node's Raft ports. Large batches run throughout. Each node's data
    dir is a tmpfs of its own (needs root)."""
    faults = (FaultKind.KILL, FaultKind.PAUSE, FaultKind.KILL_ALL, FaultKind.DAMAGE,
              FaultKind.DISK_FULL, FaultKind.HOSTILE)
    options = RunOptions(duration_s=68.0, seed=SEED + 3, network="loopback", nodes=3,
                         partitions=2, out=tmp_path / "chaos", faults=faults, workers=3,
                         recovery_s=4.0, shape=PROCESS_AND_STORAGE)
    report = run(options, say=lambda line: print(line, flush=True))
    assert report.ok, [f"[{v.check}] {v.detail}" for v in report.violations[:10]]
    ops = report.summary["ops"]
    assert isinstance(ops, dict) and ops.get("transfer:ok", 0) >= 100, ops
    fault_log = report.summary["fault_log"]
    assert isinstance(fault_log, list)
    details = {str(f["kind"]): str(f["detail"]) for f in fault_log}
    assert set(details) == {str(kind) for kind in faults}, fault_log
    assert "refused (status 3)" in details["damage"] and "-> n4" in details["damage"]
    # The damaged node was replaced by the runbook: the settle step and the checker
    # judged the new membership (the new node's replicas and replay included).
    final = read_final(tmp_path / "chaos" / FINAL_FILE)
    damaged = next(f["nodes"] for f in fault_log if f["kind"] == "damage")
    assert isinstance(damaged, list) and len(damaged) == 1, fault_log
    assert damaged[0] not in final.node_ids and "n4" in final.node_ids
    assert {v.node_id for v in final.verify} == set(final.node_ids)
    assert "status 74" in details["disk_full"] or "still running" in details["disk_full"]
    assert "closed by the node" in details["hostile"]
    assert (tmp_path / "chaos" / "history.jsonl").stat().st_size > 0
