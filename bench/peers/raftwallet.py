"""The RaftWallet side of the peer benchmark: bench.tps's cluster, accounts and load generator.

Nothing is re-implemented here: the cluster is `bench.tps.BenchCluster` (3 nodes
on 127.0.0.1, every partition replicated on all three, durable journal with
fsync), accounts are created and funded by `bench.tps.Bench.setup_accounts`,
each run is `bench.tps.Bench.one_run` (which ends with the conservation check:
every balance read back, their sum equal to the deposits, every replica at the
same state hash), and its figures are `bench.tps.summarize`'s. This module only
varies the caller count between runs and closes everything on exit.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from bench import tps
from ledger.routing import partition_of


class RaftWalletSide:
    """A started, funded local cluster for the life of a `with` block; every process stopped.

    `tps_args` are bench.tps options (parsed by bench.tps.parse_args); the
    accounts are bench.tps's (`bench-000000`, ...), so they are the ones the
    PostgreSQL side uses.
    """

    def __init__(self, tps_args: argparse.Namespace, progress: tps.Progress,
                 parent_dir: Path | None = None) -> None:
        self.args = tps_args
        self.progress = progress
        self.parent_dir = parent_dir
        self.root: Path | None = None
        self.workers: tps.Workers | None = None
        self.cluster: tps.BenchCluster | None = None
        self.bench: tps.Bench | None = None
        self._failed = False

    def __enter__(self) -> RaftWalletSide:
        try:
            self._start()
        except BaseException:
            self._failed = True
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._failed = self._failed or kind is not None
        self.close()

    def _start(self) -> None:
        args = self.args
        self.root = Path(tempfile.mkdtemp(prefix="raftwallet-peers-", dir=self.parent_dir))
        self.workers = tps.Workers(args.procs)  # spawned before any gRPC object exists here
        self.cluster = tps.BenchCluster(self.root, args.partitions, args.uvloop)
        self.cluster.start()
        self.cluster.wait_for_leaders()
        if args.leader_wait_s > 0:
            self.cluster.wait_for_preferred_leaders(args.leader_wait_s)
        accounts = [f"bench-{i:06d}" for i in range(args.accounts)]
        self.bench = tps.Bench(args, self.cluster, self.workers, accounts,
                               [partition_of(a, args.partitions) for a in accounts],
                               self.progress, partitions=args.partitions)
        self.bench.setup_accounts()
        self.bench.check_books()

    def run(self, workload: str, callers: int, run: int) -> dict[str, Any]:
        """One measured run of a bench.tps workload with `callers` callers (books checked)."""
        assert self.bench is not None
        if tps.WORKLOADS[workload].batch_size == 1:
            self.args.callers = callers
        else:
            self.args.batch_callers = callers
        return self.bench.one_run(workload, run)

    def summarize(self, workload: str, callers: int, runs: list[dict[str, Any]],
                  environment: dict[str, Any]) -> dict[str, Any]:
        if tps.WORKLOADS[workload].batch_size == 1:
            self.args.callers = callers
        else:
            self.args.batch_callers = callers
        return tps.summarize(workload, runs, self.args, environment, self.args.partitions)

    def close(self) -> None:
        try:
            if self.workers is not None:
                self.workers.close(hurry=self._failed)
            if self.cluster is not None:
                self.cluster.stop()
        finally:
            self.workers = self.cluster = self.bench = None
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None
