"""Where a benchmark writes its results.

bench/results/ is the record: files committed together with the commit and the
machine they were measured on, quoted by bench/RESULTS.md and the README. A run
writes there only when asked to record (`--record`; `make bench-... RECORD=1`).
Otherwise it writes the same file names into bench/results/local/, which git
ignores: running a benchmark never dirties the checkout nor overwrites the
record. `--output PATH` writes anywhere else (not with `--record`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""The committed record."""
LOCAL_RESULTS_DIR = RESULTS_DIR / "local"
"""A local run's results (ignored by git)."""


def add_output_options(parser: argparse.ArgumentParser, default_name: str) -> None:
    """`--output PATH` or `--record`; `resolve_output` then gives the path to write."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--output", type=Path, default=None, metavar="PATH",
                       help=f"results file (default bench/results/local/{default_name}, "
                            "ignored by git)")
    where.add_argument("--record", action="store_true",
                       help=f"write the committed record, bench/results/{default_name}")


def results_path(name: str, record: bool) -> Path:
    """The default path of results file `name`: the record or the local directory."""
    return (RESULTS_DIR if record else LOCAL_RESULTS_DIR) / name


def resolve_output(args: argparse.Namespace, name: str) -> Path:
    """`args.output` if given, else `name` in the record (--record) or the local directory."""
    output: Path | None = args.output
    return output if output is not None else results_path(name, args.record)
