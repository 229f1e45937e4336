"""The TPS harness's two plots, drawn with matplotlib (Agg backend: no display needed).

    scaling_plot   committed transfers/s against partitions, one line per workload
                   (the workloads measured at two partition counts or more)
    latency_plot   time to final outcome p50 and p99 against offered load, from the
                   open-loop records (one pair of lines per mix and partition count)

Both take the records of bench/results/tps.json (dicts with at least `workload`,
`partitions`, `transfers_per_s`, and for the open loop `offered_per_s`, `p50_ms`,
`p99_ms`) and the PNG to write (`plot_paths`: bench/results/tps-scaling.png and
tps-latency.png next to tps.json), and return it, or None when there is nothing to draw.
Also runnable on a saved result: `python -m bench.plot bench/results/tps.json`.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window

import matplotlib.pyplot as plt

DPI = 120
LOG_SCALE_SPREAD = 20
"""Throughputs spreading over more than this factor are drawn on a log scale."""


def plot_paths(results_json: Path) -> tuple[Path, Path]:
    """Where the plots of a results file go: tps.json -> tps-scaling.png, tps-latency.png."""
    return (results_json.with_name(f"{results_json.stem}-scaling.png"),
            results_json.with_name(f"{results_json.stem}-latency.png"))


def scaling_series(records: Sequence[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Per closed-loop workload, (partitions, transfers/s) sorted by partitions, for the
    workloads measured at two partition counts or more."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for record in records:
        if "offered_per_s" in record:
            continue
        series[str(record["workload"])][int(record["partitions"])] = float(
            record["transfers_per_s"])
    return {workload: sorted(points.items()) for workload, points in series.items()
            if len(points) >= 2}


def latency_series(records: Sequence[dict[str, Any]],
                   ) -> dict[str, list[tuple[float, float, float]]]:
    """Per open-loop workload and partition count, (offered/s, p50 ms, p99 ms) by offered."""
    series: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for record in records:
        if "offered_per_s" not in record:
            continue
        label = f"{record['workload']} ({record.get('mix', '?')}, {record['partitions']} p)"
        series[label].append((float(record["offered_per_s"]), float(record["p50_ms"]),
                              float(record["p99_ms"])))
    return {label: sorted(points) for label, points in series.items()}


def scaling_plot(records: Sequence[dict[str, Any]], path: Path) -> Path | None:
    series = scaling_series(records)
    if not series:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for workload, points in sorted(series.items()):
        axes.plot([p for p, _ in points], [tps for _, tps in points], marker="o",
                  label=workload)
    partitions = sorted({p for points in series.values() for p, _ in points})
    axes.set_xscale("log", base=2)
    axes.set_xticks(partitions, [str(p) for p in partitions])
    axes.set_xlabel("partitions (3 nodes, 3 replicas each, one machine)")
    axes.set_ylabel("committed transfers/s")
    axes.set_title("Throughput against partitions")
    rates = [tps for points in series.values() for _, tps in points if tps > 0]
    if rates and max(rates) > LOG_SCALE_SPREAD * min(rates):
        axes.set_yscale("log")  # unary and batch workloads differ by orders of magnitude
    else:
        axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend()
    return _save(figure, path)


def latency_plot(records: Sequence[dict[str, Any]], path: Path) -> Path | None:
    series = latency_series(records)
    if not series:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, points in sorted(series.items()):
        offered = [o for o, _, _ in points]
        line = axes.plot(offered, [p50 for _, p50, _ in points], marker="o",
                         label=f"{label} p50")[0]
        axes.plot(offered, [p99 for _, _, p99 in points], marker="s", linestyle="--",
                  color=line.get_color(), label=f"{label} p99")
    axes.set_xlabel("offered transfers/s (open loop)")
    axes.set_ylabel("time to final outcome, ms (from intended send time)")
    axes.set_yscale("log")
    axes.set_title("Latency against offered load")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    return _save(figure, path)


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) != 1:
        print("usage: python -m bench.plot RESULTS.json  (writes the PNGs next to it)",
              file=sys.stderr)
        return 2
    source = Path(arguments[0])
    report = json.loads(source.read_text(encoding="utf-8"))
    records = report["records"]
    scaling_png, latency_png = plot_paths(source)
    for written in (scaling_plot(records, scaling_png), latency_plot(records, latency_png)):
        if written is not None:
            print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
