"""`python -m bench.tps` end to end with tiny settings: it runs, reports, balances its books.

A smoke test only: it asserts the shape of the results and that money was
conserved, never a speed (this machine is shared and small).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECORD_KEYS = {"workload", "partitions", "transfers_per_s", "p50_ms", "p99_ms", "runs",
               "environment", "conservation_passed", "failures_total"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_tps_harness_runs_and_conserves_money(tmp_path: Path) -> None:
    output = tmp_path / "tps.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.tps", "--quick", "--duration-s", "1", "--warmup-s", "0.2",
         "--runs", "1", "--accounts", "50", "--workloads", "unary,batch100", "--callers", "8",
         "--batch-callers", "2", "--procs", "1", "--leader-wait-s", "0", "--output", str(output),
         "--data-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(output.read_text(encoding="utf-8"))

    assert report["conservation_passed"] is True
    assert [r["workload"] for r in report["records"]] == ["unary", "batch100"]
    for record in report["records"]:
        assert record.keys() >= RECORD_KEYS, record.keys()
        assert record["partitions"] == 4
        assert record["runs"] == 1
        assert record["transfers_per_s"] > 0
        assert record["p99_ms"] >= record["p50_ms"] > 0
        assert record["conservation_passed"] is True
        assert all(run["books"]["passed"] for run in record["raw"])
    assert report["environment"].keys() >= {"cpus", "commit", "date"}

    # Nothing left behind: no node, no load generator, no cluster directory.
    pids = [*report["processes"]["nodes"].values(), *report["processes"]["load_generators"]]
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if _alive(pid)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("raftwallet-bench-")]
