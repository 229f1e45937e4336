"""A benchmark run leaves the checkout clean: bench/results/ is the committed record,
written only when asked (--record, `make bench-... RECORD=1`); otherwise results go
to bench/results/local/, which git ignores (issue #19)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import core_apply, outputs, plot, replay, tps
from bench.peers import run as peers_run

REPO = Path(__file__).resolve().parent.parent
LOCAL = outputs.LOCAL_RESULTS_DIR
RECORD = outputs.RESULTS_DIR


@pytest.mark.parametrize(("argv", "expected"), [
    ([], LOCAL / "tps.json"),
    (["--quick"], LOCAL / "tps-quick.json"),
    (["--record"], RECORD / "tps.json"),
    (["--quick", "--record"], RECORD / "tps-quick.json"),
    (["--output", "/tmp/elsewhere.json"], Path("/tmp/elsewhere.json")),
])
def test_tps_writes_the_record_only_when_asked(argv: list[str], expected: Path) -> None:
    assert tps.parse_args(argv).output == expected


def test_the_quick_run_plots_next_to_its_local_results() -> None:
    scaling, latency = plot.plot_paths(tps.parse_args(["--quick"]).output)
    assert (scaling.parent, latency.name) == (LOCAL, "tps-quick-latency.png")


@pytest.mark.parametrize(("argv", "expected"), [
    (["--quick"], LOCAL / "peers-quick.json"),
    ([], LOCAL / "peers.json"),
    (["--record"], RECORD / "peers.json"),
])
def test_peers_writes_the_record_only_when_asked(argv: list[str], expected: Path) -> None:
    assert peers_run.parse_args(argv).output == expected


def test_output_and_record_together_are_refused() -> None:
    with pytest.raises(SystemExit):
        tps.parse_args(["--record", "--output", "/tmp/x.json"])


@pytest.fixture
def result_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The record and the local directory, moved under tmp_path for the test."""
    record, local = tmp_path / "results", tmp_path / "results" / "local"
    monkeypatch.setattr(outputs, "RESULTS_DIR", record)
    monkeypatch.setattr(outputs, "LOCAL_RESULTS_DIR", local)
    return record, local


def test_bench_core_writes_locally_unless_recording(result_dirs: tuple[Path, Path]) -> None:
    record, local = result_dirs
    tiny = ["--runs", "1", "--accounts", "10", "--single-transfers", "20",
            "--batch-transfers", "40", "--batch-size", "10"]
    assert core_apply.main(tiny) == 0
    assert json.loads((local / "core_apply.json").read_text())["benchmark"] == "core_apply"
    assert not (record / "core_apply.json").exists()
    assert core_apply.main([*tiny, "--record"]) == 0
    assert (record / "core_apply.json").exists()


def test_bench_replay_writes_locally_by_default(result_dirs: tuple[Path, Path]) -> None:
    record, local = result_dirs
    assert replay.main(["--transfers", "200", "--batch-size", "50", "--accounts", "10",
                        "--runs", "1"]) == 0
    assert (local / "replay.json").exists() and not (record / "replay.json").exists()


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                    reason="needs the git checkout")
def test_git_ignores_local_results_and_tracks_the_record() -> None:
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO,
                              check=False).returncode == 0

    assert ignored("bench/results/local/tps-quick.json")
    assert ignored("bench/results/local/tps-quick-latency.png")
    assert not ignored("bench/results/core_apply.json")
