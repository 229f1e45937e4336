"""`make run` (node.cli.demo) on a small scale: the traffic succeeds, and the summary shows
each guarantee at work (issue #19): refusals, compensations and retries answered once."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from node.cli.demo import run_demo
from node.cli.launcher import cluster_down
from node.config import dump_cluster_config, local_cluster_config
from tests.cluster_harness import allocate_ports

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""

CASES = 3


def test_the_demo_shows_a_refusal_a_compensation_and_a_retry_of_each_kind(
    tmp_path: Path,
) -> None:
    config_path = tmp_path / "cluster.toml"
    config_path.write_text(dump_cluster_config(local_cluster_config(
        "demo", 3, 2, allocate_ports, replication_factor=3)), encoding="utf-8")
    data_dir = tmp_path / "data"
    out = io.StringIO()
    try:
        summary = run_demo(config_path, data_dir, wallets=12, transfers=40, callers=4,
                           console=Console(file=out, width=200), cases=CASES)
    finally:
        if (data_dir / "cluster.json").exists():
            cluster_down(data_dir)
    printed = out.getvalue()
    assert summary is not None, printed
    assert summary.outcomes.get("SUCCEEDED", 0) > 0, printed
    assert (summary.refused, summary.compensated, summary.retried_once) == (CASES,) * 3, printed
    assert summary.conserved and summary.replicas_agree and summary.ok, printed
    for line in (f"refused, insufficient funds (more than all the money; nothing moved): "
                 f"{CASES} of {CASES}",
                 f"the debit given back): {CASES} of {CASES}",
                 f"no money moved again): {CASES} of {CASES}",
                 "conservation: sum of balances 12000.00 == deposits 12000.00: OK"):
        assert line in printed, printed
