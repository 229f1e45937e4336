"""`python -m bench.tps` end to end with tiny settings: it runs, reports, balances its books.

A smoke test only: it asserts the shape of the results and that money was
conserved, never a speed (this machine is shared and small). The load
generator's accounting of transfers answered PENDING (followed up with
GetTransfer until final) is checked without a cluster, against fake calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import grpc.aio
import httpx

from bench import loadgen
from proto.wallet.v1 import wallet_pb2 as pb

REPO = Path(__file__).resolve().parent.parent
RECORD_KEYS = {"workload", "partitions", "transfers_per_s", "p50_ms", "p99_ms", "runs",
               "environment", "conservation_passed", "failures_total", "mix", "cross_share"}


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
        [sys.executable, "-m", "bench.tps", "--quick", "--duration-s", "1.5", "--warmup-s",
         "0.2", "--runs", "1", "--accounts", "50", "--workloads",
         "unary,http-unary,batch100,cross-batch1000",
         "--callers", "8", "--batch-callers", "2", "--procs", "1", "--leader-wait-s", "0",
         "--output", str(output), "--data-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(output.read_text(encoding="utf-8"))

    assert report["conservation_passed"] is True
    records = {r["workload"]: r for r in report["records"]}
    assert list(records) == ["unary", "http-unary", "batch100", "cross-batch1000"]
    for record in report["records"]:
        assert record.keys() >= RECORD_KEYS, record.keys()
        assert record["partitions"] == 4
        assert record["runs"] == 1
        assert record["transfers_per_s"] > 0
        assert record["p99_ms"] >= record["p50_ms"] > 0
        assert record["conservation_passed"] is True
        for run in record["raw"]:
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
    assert http["client_cpu_us_per_call"] > 0
    cross = records["cross-batch1000"]
    assert cross["mix"] == "uniform"
    assert cross["rpc"] == "TransferBatch" and cross["transfers_per_call"] == 1000
    # 50 accounts hashed into 4 partitions: roughly 3 in 4 random pairs cross partitions.
    assert 0.5 < cross["cross_share"] < 0.95, cross["cross_share"]
    assert report["environment"].keys() >= {"cpus", "commit", "date"}

    # Nothing left behind: no node, no load generator, no cluster directory.
    pids = [*report["processes"]["nodes"].values(), *report["processes"]["load_generators"]]
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
