"""The short seeded chaos runs of `make test`: real nodes, the bank workload, faults.

Two runs of about a minute each on a loaded 2-core machine. Process faults: a leader
killed with kill -9, a node paused with SIGSTOP, every node killed at once. Network
faults: a node isolated, a minority split off, a node's Raft links slowed and lossy.
Each fault is healed before the next; the checker's verdict must be a pass. Long runs
with every kind mixed are `make chaos` (`python -m tests.chaos.runner`, see
docs/reliability.md).
"""

from __future__ import annotations

from pathlib import Path

from tests.chaos.nemesis import FaultKind, ScheduleShape
from tests.chaos.runner import RunOptions, run

SEED = 20_240_611
"""Fixed, so that `make test` runs the same schedule every time."""

SHORT = ScheduleShape(gap_s=(2.0, 4.0), fault_s=(3.0, 6.0), first_s=2.0, tail_s=4.0)
"""At least three faults (one of each kind) always fit in 36 s: 2 + 3 x 6 + 2 x 4 + 4 = 32."""


def test_a_short_seeded_chaos_run_with_process_faults_passes_the_checker(
    tmp_path: Path,
) -> None:
    faults = (FaultKind.KILL, FaultKind.PAUSE, FaultKind.KILL_ALL)
    options = RunOptions(duration_s=36.0, seed=SEED, network="loopback", nodes=3, partitions=2,
                         out=tmp_path / "chaos", faults=faults, workers=3, recovery_s=4.0,
                         shape=SHORT)
    report = run(options, say=lambda line: print(line, flush=True))
    assert report.ok, [f"[{v.check}] {v.detail}" for v in report.violations[:10]]
    injected = report.summary["faults"]
    assert isinstance(injected, dict) and all(injected.get(kind, 0) >= 1 for kind in faults)
    ops = report.summary["ops"]
    assert isinstance(ops, dict) and ops.get("transfer:ok", 0) >= 100, ops
    assert (tmp_path / "chaos" / "history.jsonl").stat().st_size > 0


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
