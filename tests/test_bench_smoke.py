"""`python -m bench.tps` end to end with tiny settings: it runs, reports, balances its books.

A smoke test only: it asserts the shape of the results and that money was
conserved, never a speed (this machine is shared and small); the one run covers
the closed and the open loop, the three mixes and the load generator's ceiling
against the no-op server. The load generator's accounting (transfers answered
PENDING, the open loop's intended send times), the Zipf sampler, the no-op
server's batch counting, the plots and the cluster plan are checked without a
cluster, against fake calls. Target mode (--config: an already running cluster,
here a tests.cluster_harness.LocalCluster) and --profile (py-spy flame graphs)
run against one small cluster shared by their tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import math
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import httpx
import pytest
from rich.console import Console

from bench import loadgen, noop_server, plot, profiler, running_cluster, tps
from ledger.state import ACCOUNT_ID_RE
from node.config import local_cluster_config
from proto.wallet.v1 import wallet_pb2 as pb
from tests.cluster_harness import LocalCluster, allocate_ports, call_until_done

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""

REPO = Path(__file__).resolve().parent.parent
RECORD_KEYS = {"workload", "partitions", "transfers_per_s", "p50_ms", "p99_ms", "p999_ms",
               "runs", "environment", "conservation_passed", "failures_total", "mix",
               "cross_share", "loop", "nodes_cpu_us_per_transfer", "client_cpu_us_per_transfer"}
OPEN_LOOP_RATE_PER_S = 40


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


def in_window(record: dict[str, object]) -> bool:
    """Some call of this workload completed inside its measured window."""
    runs = record["raw"]
    assert isinstance(runs, list)
    return any(run["latency_samples"] for run in runs)


def test_tps_harness_runs_and_conserves_money(tmp_path: Path) -> None:
    output = tmp_path / "tps.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.tps", "--quick", "--duration-s", "1", "--warmup-s",
         "0.2", "--runs", "1", "--accounts", "50", "--workloads",
         "unary,http-unary,batch100,cross-batch1000,zipf-unary,open-unary",
         "--rate", str(OPEN_LOOP_RATE_PER_S), "--zipf-s", "1.2",
         "--callers", "8", "--batch-callers", "2", "--client-processes", "1",
         "--leader-wait-s", "0", "--output", str(output), "--data-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(output.read_text(encoding="utf-8"))

    assert report["conservation_passed"] is True
    records = {r["workload"]: r for r in report["records"]}
    assert list(records) == ["unary", "http-unary", "batch100", "cross-batch1000",
                             "zipf-unary", "open-unary"]
    for record in report["records"]:
        assert record.keys() >= RECORD_KEYS, record.keys()
        assert record["partitions"] == 4
        assert record["runs"] == 1
        # Correctness, not a rate: a loaded machine may complete no call of a workload in
        # its 1 s window (the HTTP one first), but every call made is answered with an
        # outcome and the books balance.
        assert record["p999_ms"] >= record["p99_ms"] >= record["p50_ms"] >= 0
        assert record["conservation_passed"] is True
        for run in record["raw"]:
            assert run["calls_total"] > 0, record["workload"]
            assert set(run["failures"]) <= loadgen.RECORDED_REASONS, run["failures"]
            assert run["books"]["passed"]
            # The books were read only once nothing was in flight any more.
            assert len(run["books"]["in_flight_at_end"]) == 4
            assert run["books"]["outbox_drain_s"] >= 0
    assert records["unary"]["mix"] == records["batch100"]["mix"] == "intra"
    assert records["unary"]["cross_share"] == records["batch100"]["cross_share"] == 0
    http = records["http-unary"]
    assert http["mix"] == "intra" and http["cross_share"] == 0
    assert http["protocol"] == "http" and records["unary"]["protocol"] == "grpc"
    assert http["rpc"] == "POST /v1/wallet/balance_transfer"
    assert http["client_cpu_us_per_call"] > 0  # of every call, warm-up included
    cross = records["cross-batch1000"]
    assert cross["mix"] == "uniform"
    assert cross["rpc"] == "TransferBatch" and cross["transfers_per_call"] == 1000
    # 50 accounts hashed into 4 partitions: roughly 3 in 4 random pairs cross partitions
    # (of the calls that completed in the window, if any did).
    assert 0.5 < cross["cross_share"] < 0.95 or not in_window(cross), cross["cross_share"]
    assert report["environment"].keys() >= {"cpus", "commit", "date"}

    zipf = records["zipf-unary"]
    assert zipf["mix"] == "zipf" and zipf["zipf_s"] == 1.2 and zipf["loop"] == "closed"
    assert zipf["cross_share"] > 0 or not in_window(zipf)
    opened = records["open-unary"]
    assert opened["loop"] == "open" and opened["rpc"] == "Transfer"
    assert opened["offered_per_s"] == OPEN_LOOP_RATE_PER_S
    assert opened["offered_measured_per_s"] > 0 and opened["achieved_per_s"] >= 0
    assert opened["offered_fraction_of_closed_max"] is None  # --rate, not a sweep
    assert opened["arrivals"] == "poisson"

    # The load generator's ceiling: the same workloads' batch sizes, against the no-op server.
    ceilings = {c["workload"]: c for c in report["loadgen_ceiling"]}
    assert list(ceilings) == ["ceiling-unary", "ceiling-batch100", "ceiling-batch1000"]
    for ceiling in ceilings.values():
        assert not ceiling["failures_total"]
    assert records["unary"]["loadgen_ceiling_per_s"] == ceilings["ceiling-unary"][
        "transfers_per_s"]
    assert records["batch100"]["of_ceiling"] >= 0
    assert "of_ceiling" not in http  # the no-op server speaks gRPC only
    assert "loadgen ceiling: " in done.stdout
    # The open loop's latency plot; no scaling curve with --quick.
    assert (tmp_path / "tps-latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "tps-scaling.png").exists()

    # Nothing left behind: no node, no load generator, no cluster directory.
    pids = [*report["processes"]["nodes"].values(), *report["processes"]["load_generators"],
            *report["processes"]["noop_server"]]
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if _alive(pid)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("raftwallet-bench-")]


# --- the load generator's accounting, without a cluster -----------------------------------------


def _error(code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(),
                                grpc.aio.Metadata((loadgen.REASON_METADATA_KEY, reason)), reason)


class FakeNode:
    """TransferBatch answers every other transfer PENDING; GetTransfer then tells the rest.

    Per transfer answered PENDING, GetTransfer first says NOT_FOUND (a replica that has
    not applied it yet), then PENDING, then the final status: FAILED for transfers from
    "poor", else SUCCEEDED.
    """

    def __init__(self) -> None:
        self.asked: Counter[tuple[str, str]] = Counter()
        self.batches = 0

    async def transfer_batch(self, request: bytes, timeout: float) -> bytes:
        self.batches += 1
        transfers = pb.TransferBatchRequest.FromString(request).transfers
        statuses = [pb.SUCCEEDED if i % 2 == 0 else pb.PENDING for i in range(len(transfers))]
        return pb.TransferBatchResponse(
            statuses=statuses, succeeded=statuses.count(pb.SUCCEEDED),
            pending=statuses.count(pb.PENDING)).SerializeToString()

    async def get_transfer(self, request: bytes, timeout: float) -> bytes:
        ask = pb.GetTransferRequest.FromString(request)
        assert ask.consistency == pb.STALE
        key = (ask.from_account, ask.transaction_id)
        self.asked[key] += 1
        if self.asked[key] == 1:
            raise _error(grpc.StatusCode.NOT_FOUND, "TRANSFER_NOT_FOUND")
        if self.asked[key] == 2:
            return pb.GetTransferResponse(status=pb.PENDING).SerializeToString()
        if ask.from_account == "poor":
            return pb.GetTransferResponse(status=pb.FAILED,
                                          reason="INSUFFICIENT_FUNDS").SerializeToString()
        return pb.GetTransferResponse(status=pb.SUCCEEDED).SerializeToString()


def test_batch_caller_follows_pending_transfers_up_until_final() -> None:
    templates = [loadgen.Template(p % 2, account, loadgen.transfer_prefix(account, "to", "1.00",
                                                                           "USD"), p % 2 == 1)
                 for p, account in enumerate(["rich", "poor", "rich", "rich"])]
    pool = loadgen.Pool.of(templates)
    node = FakeNode()
    stats = loadgen.RunStats()
    failures: Counter[str] = Counter()
    now = time.monotonic()
    go = loadgen.Go(now, now, now + 0.05)

    asyncio.run(loadgen._Worker._batch_caller(
        [(node.transfer_batch, 0)], [pool], [node.get_transfer, node.get_transfer], start=0,
        batch_size=4, ids=loadgen.IdSource(), go=go, stats=stats, failures=failures,
        timeout_s=5, count_recorded=False))

    # Every call began before the end; those that ended after it are not counted.
    assert stats.calls_total == node.batches >= stats.calls >= 1
    calls = stats.calls
    assert stats.transfers == 4 * calls and stats.cross == 2 * calls
    # Items 1 ("poor") and 3 ("rich") of each batch were answered PENDING.
    assert stats.followed_up == 2 * calls
    assert stats.follow_up_calls == 3 * 2 * node.batches == sum(node.asked.values())
    assert stats.succeeded == stats.committed == 3 * calls
    assert failures == Counter({"INSUFFICIENT_FUNDS": calls})
    # Latency runs to the final outcome: two pauses between three GetTransfer calls.
    assert len(stats.latencies_s) == calls
    assert min(stats.latencies_s) >= 1.9 * loadgen.FOLLOW_UP_PAUSE_S


def test_follow_up_stops_on_a_final_error_or_when_giving_up() -> None:
    async def refuses(request: bytes, timeout: float) -> bytes:
        raise _error(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TRANSACTION_ID")

    async def never_final(request: bytes, timeout: float) -> bytes:
        return pb.GetTransferResponse(status=pb.PENDING).SerializeToString()

    tx = loadgen.IdSource().next()
    assert asyncio.run(loadgen.follow_up(refuses, "a", tx, 1, time.monotonic() + 5)) == (
        "INVALID_TRANSACTION_ID", 1)
    reason, asked = asyncio.run(loadgen.follow_up(never_final, "a", tx, 1,
                                                  time.monotonic() + 0.03))
    assert reason == "NOT_FINAL" and asked >= 2


def test_http_bodies_are_the_transfers_of_the_grpc_templates() -> None:
    prefix = loadgen.transfer_prefix("a\"b", "c", "0.05", "USD")
    tx = loadgen.IdSource().next()
    body = json.loads(loadgen.json_prefix_of(prefix) + tx + loadgen.JSON_SUFFIX)
    assert body == {"from_account": 'a"b', "to_account": "c", "amount": "0.05",
                    "currency": "USD", "transaction_id": tx.decode()}


def test_http_caller_counts_200_as_succeeded_and_other_statuses_by_code() -> None:
    answers = iter([200, 422, 200, 503] * 1000)

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert request.url.path == "/v1/wallet/balance_transfer" and body["amount"] == "1.00"
        status = next(answers)
        if status == 200:
            return httpx.Response(200, json={"status": "success",
                                             "transaction_id": body["transaction_id"]})
        code = "INSUFFICIENT_FUNDS" if status == 422 else "OUTCOME_UNKNOWN"
        return httpx.Response(status, json={"error": {"code": code, "message": "no"},
                                            "transaction_id": body["transaction_id"]})

    prefix = loadgen.json_prefix_of(loadgen.transfer_prefix("a", "b", "1.00", "USD"))
    flat = [("http://gw/v1/wallet/balance_transfer", None, prefix, "a", False)]
    stats = loadgen.RunStats()
    failures: Counter[str] = Counter()
    now = time.monotonic()
    go = loadgen.Go(now, now, now + 0.1)

    async def run() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            await loadgen._Worker._http_unary_caller(client, flat, 0, loadgen.IdSource(), go,
                                                     stats, failures, 5, True)

    asyncio.run(run())
    assert stats.calls >= 4 and stats.calls_total >= stats.calls
    assert stats.succeeded + sum(failures.values()) == stats.calls
    assert set(failures) == {"422 INSUFFICIENT_FUNDS", "503 OUTCOME_UNKNOWN"}
    # A recorded refusal (INSUFFICIENT_FUNDS) is a committed outcome of the intra mix.
    assert stats.committed == stats.succeeded + failures["422 INSUFFICIENT_FUNDS"]


def test_uniform_templates_cross_partitions_and_pools_count_them() -> None:
    by_partition = [[f"p{p}-{i}" for i in range(10)] for p in range(4)]
    uniform = loadgen.build_templates(by_partition, "USD", seed=3, mix="uniform",
                                      per_partition=500)
    assert len(uniform) == 2000
    share = sum(t.cross for t in uniform) / len(uniform)
    assert 0.68 < share < 0.82, share  # 1 - 1/4, less a little: from != to
    assert all(t.from_account.startswith(f"p{t.source}-") for t in uniform)
    intra = loadgen.build_templates(by_partition, "USD", seed=3, mix="intra", per_partition=5)
    assert len(intra) == 20 and not any(t.cross for t in intra)
    assert [t.source for t in intra[:4]] == [0, 1, 2, 3]  # partitions take turns

    pool = loadgen.Pool.of(uniform[:7])
    flags = [t.cross for t in uniform[:7]]
    for offset in range(7):
        for count in (0, 1, 5, 7, 9, 20):
            expected = sum(flags[(offset + k) % 7] for k in range(count))
            assert pool.cross_in(offset, count) == expected, (offset, count)


# --- the open loop, without a cluster -----------------------------------------------------------


def _open_loop(call: object, rate_per_s: float, duration_s: float, arrivals: str,
               in_flight_max: int = loadgen.OPEN_LOOP_IN_FLIGHT_MAX,
               ) -> tuple[loadgen.RunStats, Counter[str]]:
    flat = [(call, None, loadgen.transfer_prefix("a", "b", "1.00", "USD"), "a", False)]
    stats = loadgen.RunStats()
    failures: Counter[str] = Counter()

    async def run() -> None:
        now = time.monotonic()
        go = loadgen.Go(now, now, now + duration_s)
        await loadgen._Worker._open_loop_unary(flat, random.Random(7), loadgen.IdSource(), go,
                                               stats, failures, 5, True, rate_per_s, arrivals,
                                               in_flight_max)

    asyncio.run(run())
    return stats, failures


def test_open_loop_offers_its_rate_whatever_the_answers_and_awaits_every_transfer() -> None:
    async def refuses_every_other(request: bytes, timeout: float) -> bytes:
        if int(request[-1:], 16) % 2:  # the transaction id's last hex digit
            raise _error(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
        return pb.TransferResponse(status=pb.SUCCEEDED).SerializeToString()

    rate_per_s, duration_s = 400.0, 0.5
    stats, failures = _open_loop(refuses_every_other, rate_per_s, duration_s, "poisson")

    # The schedule comes from a seeded generator, not from answers or clocks: the count
    # is that of a Poisson process, and every arrival was sent and awaited.
    expected = rate_per_s * duration_s
    assert abs(stats.offered - expected) < 4 * math.sqrt(expected), stats.offered
    assert stats.calls_total == stats.offered == len(stats.latencies_s)
    assert stats.succeeded + sum(failures.values()) == stats.calls
    assert set(failures) == {"INSUFFICIENT_FUNDS"}
    assert stats.committed == stats.calls  # recorded refusals are committed outcomes


def test_open_loop_latency_runs_from_the_intended_send_time() -> None:
    """A server slower than the offered rate: the queue it builds is in the latencies.

    One transfer in flight at most (the bound), 30 ms per call, an arrival every 10 ms:
    the k-th arrival cannot start before k calls ended, so its latency from its
    intended time is at least (k + 1) * 20 ms, though each call takes only ~30 ms.
    """
    call_s, gap_s = 0.03, 0.01

    async def slow(request: bytes, timeout: float) -> bytes:
        await asyncio.sleep(call_s)
        return pb.TransferResponse(status=pb.SUCCEEDED).SerializeToString()

    stats, _ = _open_loop(slow, 1 / gap_s, 0.2, "fixed", in_flight_max=1)

    arrivals = stats.calls_total
    assert arrivals == len(stats.latencies_s) >= 19  # every 10 ms over 0.2 s
    for k, latency_s in enumerate(stats.latencies_s):
        assert latency_s >= (k + 1) * (call_s - gap_s) * 0.99, (k, latency_s)
    assert stats.dispatch_lag_max_s >= (arrivals - 1) * (call_s - gap_s) * 0.99


# --- mixes, the no-op server, plots, the plan ---------------------------------------------------


def test_zipf_sampler_follows_its_law_and_is_deterministic() -> None:
    zipf = loadgen.ZipfSampler(100, 1.1)
    probabilities = [zipf.probability(k) for k in range(100)]
    assert math.isclose(sum(probabilities), 1.0)
    assert all(a > b for a, b in itertools.pairwise(probabilities))
    assert math.isclose(probabilities[0] / probabilities[1], 2 ** 1.1)
    draws = [zipf.sample(random.Random(5)) for _ in range(3)]
    assert len(set(draws)) == 1  # the same seed, the same draw
    rng = random.Random(11)
    counts = Counter(zipf.sample(rng) for _ in range(20_000))
    assert set(counts) <= set(range(100))
    assert abs(counts[0] / 20_000 - probabilities[0]) < 0.02
    with pytest.raises(ValueError):
        loadgen.ZipfSampler(0, 1.1)


def test_zipf_templates_share_their_hot_accounts_across_workers() -> None:
    by_partition = [[f"acct-{p}-{i:02d}" for i in range(25)] for p in range(4)]
    hottest = []
    for seed in (1, 2):
        templates = loadgen.build_templates(by_partition, "USD", seed=seed, mix="zipf",
                                            per_partition=500, zipf_s=1.1)
        assert len(templates) == 2000
        assert all(t.from_account.startswith(f"acct-{t.source}-") for t in templates)
        assert 0.5 < sum(t.cross for t in templates) / len(templates) < 0.95
        hottest.append(Counter(t.from_account for t in templates).most_common(1)[0][0])
    # Ranked by a stable hash of the id, whatever the seed: the same hot account everywhere.
    first = min((a for accounts in by_partition for a in accounts), key=loadgen.zipf_rank_key)
    assert hottest == [first, first]
    again = loadgen.build_templates(by_partition, "USD", seed=1, mix="zipf", per_partition=500)
    assert [t.prefix for t in again] == [t.prefix for t in loadgen.build_templates(
        by_partition, "USD", seed=1, mix="zipf", per_partition=500)]


def test_noop_server_counts_a_batch_without_parsing_it() -> None:
    transfers = [pb.TransferRequest(from_account="a", to_account="b", amount="1.00",
                                    currency="USD", transaction_id=f"{i:036d}")
                 for i in range(300)]
    request = pb.TransferBatchRequest(transfers=transfers).SerializeToString()
    assert noop_server.count_transfers(request) == 300
    assert noop_server.count_transfers(b"") == 0
    with pytest.raises(ValueError):
        noop_server.count_transfers(request[:-1])
    with pytest.raises(ValueError):
        noop_server.count_transfers(pb.TransferRequest(to_account="b").SerializeToString())


def test_plots_draw_the_scaling_curve_and_latency_against_offered_load(tmp_path: Path) -> None:
    records = [
        {"workload": "unary", "partitions": p, "transfers_per_s": 1000 * p} for p in (1, 2, 4)
    ] + [
        {"workload": "batch1000", "partitions": 4, "transfers_per_s": 40_000},  # one point
        {"workload": "open-unary", "mix": "intra", "partitions": 4, "offered_per_s": 500,
         "transfers_per_s": 500, "p50_ms": 3.0, "p99_ms": 9.0},
        {"workload": "open-unary", "mix": "intra", "partitions": 4, "offered_per_s": 250,
         "transfers_per_s": 250, "p50_ms": 2.0, "p99_ms": 5.0},
    ]
    assert plot.scaling_series(records) == {"unary": [(1, 1000.0), (2, 2000.0), (4, 4000.0)]}
    assert plot.latency_series(records) == {
        "open-unary (intra, 4 p)": [(250.0, 2.0, 5.0), (500.0, 3.0, 9.0)]}
    scaling_png, latency_png = plot.plot_paths(tmp_path / "tps.json")
    assert (scaling_png.name, latency_png.name) == ("tps-scaling.png", "tps-latency.png")
    for written in (plot.scaling_plot(records, scaling_png),
                    plot.latency_plot(records, latency_png)):
        assert written is not None and written.read_bytes()[:4] == b"\x89PNG"
    assert plot.latency_plot(records[:3], tmp_path / "none.png") is None


def test_scaling_plan_reuses_the_main_cluster_and_adds_one_per_partition_count() -> None:
    args = tps.parse_args(["--workloads", "unary,open-unary", "--partitions", "4", "--scaling",
                           "--scaling-workloads", "unary,batch1000",
                           "--scaling-partitions", "8,1,4"])
    assert tps.cluster_plan(args) == [(4, ["unary", "open-unary", "batch1000"]),
                                      (1, ["unary", "batch1000"]), (8, ["unary", "batch1000"])]
    quick = tps.parse_args(["--quick"])
    assert quick.scaling is False and quick.sweep_fractions == [0.5, 1.0]
    assert tps.cluster_plan(quick) == [(4, quick.workload_list)]
    # The scaling curve is part of the full run only, unless asked for.
    assert tps.parse_args([]).scaling is True
    assert tps.parse_args(["--workloads", "batch1000"]).scaling is False
    assert tps.ceiling_batch_sizes(["http-unary", "unary", "batch1000", "cross-unary"]) == [
        1, 1000]


# --- target mode and --profile, against a running cluster ---------------------------------------

TARGET_ACCOUNTS = 20
SHORT_RUN = ["--duration-s", "1", "--warmup-s", "0.2", "--runs", "1", "--callers", "4",
             "--client-processes", "1", "--no-ceiling", "--leader-wait-s", "0"]


WALLET_TOKEN = "bench-smoke-wallet-token-5f3a9c1e"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-node, 2-partition cluster started by the test, not by the harness.

    Its WalletService wants a wallet token: the harness must take it from the file.
    """
    config = dataclasses.replace(
        local_cluster_config("bench", 3, 2, allocate_ports, replication_factor=3),
        wallet_token=WALLET_TOKEN)
    cluster = LocalCluster(tmp_path_factory.mktemp("running-cluster"), config=config)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.stop_all()


def _bench(args: list[str], tmp_path: Path) -> dict[str, object]:
    output = tmp_path / "tps.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.tps", *SHORT_RUN, "--output", str(output),
         "--data-dir", str(tmp_path), *args],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, object] = json.loads(output.read_text(encoding="utf-8"))
    return report


def test_target_mode_measures_a_running_cluster_on_its_own_accounts(
        running: LocalCluster, tmp_path: Path) -> None:
    report = _bench(["--config", str(running.config_path), "--workloads", "unary",
                     "--accounts", str(TARGET_ACCOUNTS)], tmp_path)

    assert report["mode"] == "target"
    target = report["target"]
    assert isinstance(target, dict)
    assert target["partitions"] == 2 and target["config"] == str(running.config_path)
    assert set(target["local_node_pids"]) == {"n1", "n2", "n3"}
    records = report["records"]
    assert isinstance(records, list) and len(records) == 1
    record = records[0]
    assert record["mode"] == "target" and record["workload"] == "unary"
    assert record["partitions"] == 2 and record["nodes"] == 3
    assert record["conservation_passed"] is True
    for run in record["raw"]:
        assert run["calls_total"] > 0 and set(run["failures"]) <= loadgen.RECORDED_REASONS
    assert record["conservation_scope"].startswith(f"this run's {TARGET_ACCOUNTS} accounts")
    # The nodes are this machine's processes, found by their listening ports: CPU measured.
    assert record["nodes_cpu_us_per_transfer"] is not None
    processes = report["processes"]
    assert isinstance(processes, dict) and processes["nodes"] == {}  # none started
    # Nothing stopped: the cluster's own processes still run.
    assert all(process.poll() is None for process in running.processes.values())
    # Read from the other side: the run's own accounts hold exactly what it deposited.
    prefix = target["run_prefix"]
    total_minor = 0
    for i in range(TARGET_ACCOUNTS):
        answer = call_until_done(running, "GetBalance", pb.GetBalanceRequest(
            account_id=f"{prefix}-{i:06d}", consistency=pb.LINEARIZABLE))
        assert isinstance(answer, pb.GetBalanceResponse)
        total_minor += loadgen.minor_units(answer.balance)
    assert total_minor == TARGET_ACCOUNTS * tps.DEPOSIT_MINOR


@pytest.mark.skipif(profiler.py_spy_path() is None, reason="py-spy is not installed")
def test_profile_writes_a_flame_graph_per_node_and_load_generator(
        running: LocalCluster, tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    report = _bench(["--config", str(running.config_path), "--workloads", "batch100",
                     "--accounts", "10", "--batch-callers", "1", "--duration-s", "2",
                     "--profile", str(profiles)], tmp_path)

    records = report["records"]
    assert isinstance(records, list)
    written, failed = records[0]["profiles"], records[0].get("profile_errors", {})
    # py-spy samples busy threads only: a process idle throughout gets a reason, no graph.
    # The leaders applying the batches are busy, so some graph is always written.
    assert written, failed
    assert set(written) | set(failed) == {"n1", "n2", "n3", "loadgen0"}
    for name, path in written.items():
        svg = profiles / f"batch100-{name}.svg"
        assert path == str(svg)
        assert b"<svg" in svg.read_bytes()[:2000]
    assert sorted(profiles.glob("*.svg")) == sorted(Path(p) for p in written.values())


def test_profile_reports_a_process_py_spy_cannot_attach_to_and_goes_on(
        tmp_path: Path) -> None:
    py_spy = profiler.py_spy_path()
    if py_spy is None:
        pytest.skip("py-spy is not installed")
    not_python = subprocess.Popen(["sleep", "60"])
    try:
        graphs = profiler.FlameGraphs(tmp_path, "unary", {"sleeper": not_python.pid}, 1,
                                      py_spy)
        graphs.start()
        written, failed = graphs.finish()
    finally:
        not_python.kill()
        not_python.wait(timeout=10)
    assert written == {}
    assert failed["sleeper"].startswith("py-spy exited ") and str(not_python.pid) in failed[
        "sleeper"]
    assert "Error:" in failed["sleeper"]  # py-spy's own reason
    assert not (tmp_path / "unary-sleeper.svg").exists()


def test_profile_of_a_process_idle_throughout_says_so_and_writes_no_graph(
        tmp_path: Path) -> None:
    py_spy = profiler.py_spy_path()
    if py_spy is None:
        pytest.skip("py-spy is not installed")
    with subprocess.Popen(
            [sys.executable, "-c", "import time; print('sleeping', flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE, text=True) as idle:
        try:
            assert idle.stdout is not None and idle.stdout.readline() == "sleeping\n"
            graphs = profiler.FlameGraphs(tmp_path, "unary", {"idle": idle.pid}, 1, py_spy)
            graphs.start()
            written, failed = graphs.finish()
        finally:
            idle.kill()
    assert written == {}
    assert failed["idle"].endswith("(the process was idle throughout the recording)")
    assert list(tmp_path.glob("*.svg")) == []  # no empty graph left behind


def test_a_listening_port_of_this_machine_leads_to_its_process() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert running_cluster.find_listening_pid("127.0.0.1", port) == os.getpid()
        assert running_cluster.find_listening_pid("localhost", port) == os.getpid()
    assert running_cluster.find_listening_pid("127.0.0.1", port) is None  # closed
    # An address of another machine (TEST-NET-1): never a local process.
    assert running_cluster.find_listening_pid("192.0.2.1", port) is None


def test_target_mode_refuses_what_needs_a_cluster_of_its_own() -> None:
    config = str(REPO / "cluster-configs" / "local-3node.toml")
    args = tps.parse_args(["--config", config])
    assert args.target_mode and args.scaling is False
    assert args.target_addresses == ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]
    assert args.credentials.admin_token  # from the cluster file
    assert "http-unary" not in args.workload_list and "unary" in args.workload_list
    only = tps.parse_args(["--config", config, "--target", "127.0.0.1:7102"])
    assert only.target_addresses == ["127.0.0.1:7102"]
    for refused in (["--scaling"], ["--workloads", "unary,http-unary"], ["--partitions", "4"]):
        with pytest.raises(SystemExit):
            tps.parse_args(["--config", config, *refused])
    with pytest.raises(SystemExit):
        tps.parse_args(["--target", "no-port"])
    assert tps.parse_args([]).target_mode is False


def test_run_prefixes_are_unique_and_make_valid_account_ids() -> None:
    prefixes = {tps.new_run_prefix() for _ in range(50)}
    assert len(prefixes) == 50
    for prefix in prefixes:
        assert ACCOUNT_ID_RE.fullmatch(f"{prefix}-999999"), prefix


def test_nodes_cpu_not_measured_is_n_a_in_the_record_and_the_table() -> None:
    """Target mode with a node not on this machine: its CPU is unknown, never a false 0."""
    stats = loadgen.RunStats(calls=10, transfers=10, committed=10, succeeded=10,
                             calls_total=10, transfers_total=10, cpu_s=0.01, wall_s=1.0)
    stats.latencies_s.extend([0.002] * 10)
    window = tps.Window(stats=[stats], window_s=1.0, server_cpu_s=0.0, machine_busy_cores=0.5,
                        machine_busy_pct=25.0, harness_s=0.0, raft_entries=0)
    run = tps.window_record(window, 1.0, "intra")
    del run["server_cpu_cores"], run["server_cpu_us_per_transfer"]
    run.update(nodes_cpu_cores=None, nodes_cpu_us_per_transfer=None, raft_entries_per_s=0.0,
               transfers_per_entry=0.0, books={"passed": True, "scope": "this run's accounts"})
    args = tps.parse_args(["--target", "127.0.0.1:7101", "--workloads", "unary"])
    shape = tps.ClusterShape("target", nodes=5, replicas_per_partition=3, durable_journal=None,
                             nodes_cpu_measured=False)

    record = tps.summarize("unary", [run], args, {}, 4, shape=shape)

    assert record["mode"] == "target" and record["nodes"] == 5
    assert record["nodes_cpu_measured"] is False
    assert record["nodes_cpu_us_per_transfer"] is None and record["nodes_cpu_cores"] is None
    assert record["transfers_per_s"] == 10
    console = Console(record=True, width=tps.TABLE_WIDTH_MIN)
    tps.print_table([record], {}, console)
    cpu_row = next(line for line in console.export_text().splitlines()
                   if line.strip().startswith("unary") and "closed" in line and "n/a" in line)
    assert cpu_row.split().count("n/a") == 2  # node us/transfer and nodes cores
