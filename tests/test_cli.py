"""walletctl (node.cli.walletctl.main) against the in-process fake node."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ledger.routing import partition_of
from node.cli.walletctl import main
from proto.wallet.v1 import wallet_pb2 as pb
from tests.fake_wallet_server import FakeWalletServer, running_fake, silent_node

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""


@pytest.fixture
def fake() -> Iterator[FakeWalletServer]:
    with running_fake() as server:
        server.add_account("alice", "USD", "100.00")
        server.add_account("bob", "USD")
        yield server


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(list(argv))
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 1, out  # exactly one JSON object
    obj = json.loads(lines[0])
    assert isinstance(obj, dict)
    return code, obj


def test_balance_json(fake: FakeWalletServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, obj = run_json(capsys, "--target", fake.address, "--json", "balance", "alice")

    assert code == 0
    assert obj["account"] == "alice"
    assert obj["balance"] == "100.00"
    assert obj["currency"] == "USD"
    assert obj["stale"] is False
    assert isinstance(obj["position"], int)


def test_json_may_follow_the_command(
    fake: FakeWalletServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, obj = run_json(capsys, "balance", "alice", "--stale", "--target", fake.address, "--json")

    assert (code, obj["balance"], obj["stale"]) == (0, "100.00", True)


def test_transfer_json(fake: FakeWalletServer, capsys: pytest.CaptureFixture[str]) -> None:
    tid = "0f8fad5b-d9cb-469f-a165-70867728950e"
    code, obj = run_json(
        capsys, "--target", fake.address, "--json",
        "transfer", "alice", "bob", "12.34", "--currency", "USD", "--id", tid,
    )

    assert code == 0
    assert obj["transaction_id"] == tid
    assert obj["status"] == "SUCCEEDED"
    assert "reason" not in obj
    assert (obj["amount"], obj["currency"]) == ("12.34", "USD")
    assert [r.transaction_id for r in fake.requests_of("Transfer")] == [tid]


def test_account_create_json(fake: FakeWalletServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, obj = run_json(
        capsys, "--target", fake.address, "--json", "account", "create", "carol",
        "--currency", "EUR",
    )

    assert code == 0
    assert (obj["account"], obj["currency"]) == ("carol", "EUR")
    assert isinstance(obj["position"], int)
    assert obj["request_id"] == fake.requests_of("CreateAccount")[0].request_id


def test_refused_request_prints_the_status_on_stderr_and_exits_1(
    fake: FakeWalletServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--target", fake.address, "balance", "nobody"])

    captured = capsys.readouterr()
    assert code == 1
    assert "NOT_FOUND" in captured.err
    assert "ACCOUNT_NOT_FOUND" in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_refused_request_with_json_prints_an_error_object(
    fake: FakeWalletServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, obj = run_json(
        capsys, "--target", fake.address, "--json",
        "withdraw", "bob", "5.00", "--currency", "USD",
    )

    assert code == 1
    assert obj["error"]["status"] == "FAILED_PRECONDITION"
    assert obj["error"]["reason"] == "INSUFFICIENT_FUNDS"


def test_unreachable_cluster_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as closed:  # bound, not listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
        code = main(["--target", address, "--timeout", "0.3", "balance", "alice"])

    captured = capsys.readouterr()
    assert code == 2
    assert "UNAVAILABLE" in captured.err
    assert "Traceback" not in captured.err


def test_config_file_gives_the_targets(
    fake: FakeWalletServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text(
        '[cluster]\nname = "t"\npartitions = 4\n\n'
        f'[[nodes]]\nid = "n1"\nhost = "127.0.0.1"\ngrpc_port = {fake.port}\n'
    )

    code, obj = run_json(capsys, "--config", str(config), "--json", "balance", "alice")

    assert (code, obj["balance"]) == (0, "100.00")
    assert len(fake.requests_of("GetBalance")) == 1


def test_missing_config_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--config", str(tmp_path / "missing.toml"), "balance", "alice"])

    assert code == 2
    assert "missing.toml" in capsys.readouterr().err


def test_no_target_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["balance", "alice"]) == 2
    assert "--target" in capsys.readouterr().err


def test_route_json_uses_partition_of(
    fake: FakeWalletServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, obj = run_json(capsys, "--target", fake.address, "--json", "route", "alice")

    assert code == 0
    assert obj["partition"] == partition_of("alice", fake.partition_count)
    assert obj["leader_address"] == fake.address


def test_cluster_status_table(fake: FakeWalletServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--target", fake.address, "cluster", "status"])

    out = capsys.readouterr().out
    assert code == 0
    assert "fake-1" in out
    assert "00" * 6 in out  # state hash prefix
    # Two numbers of one log, labelled and explained: not a lagging apply.
    assert "raft commit" in out and "ledger position" in out
    assert "so it runs ahead of ledger position" in " ".join(out.split())


def test_a_linearizable_balance_says_what_its_position_is(
    fake: FakeWalletServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--target", fake.address, "balance", "alice"]) == 0
    assert "(as of position " in capsys.readouterr().out
    assert main(["--target", fake.address, "balance", "alice"]) == 0
    assert ": this read's own barrier entry in the log)" in capsys.readouterr().out
    assert main(["--target", fake.address, "balance", "alice", "--stale"]) == 0
    assert "of this replica, stale)" in capsys.readouterr().out


def test_cluster_status_json(fake: FakeWalletServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, obj = run_json(capsys, "--target", fake.address, "cluster", "status", "--json")

    assert code == 0
    assert obj["partition_count"] == 4
    assert [p["partition"] for p in obj["partitions"]] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "command",
    [
        [], ["account", "create"], ["deposit"], ["withdraw"], ["transfer"], ["balance"],
        ["get-transfer"], ["history"], ["route"], ["cluster", "status"], ["cluster", "up"],
        ["cluster", "down"], ["node", "start"], ["verify"], ["abort-transfer"],
        ["cluster", "map"], ["gateway"], ["node", "add"], ["replica", "add"], ["replay"],
    ],
)
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    assert "usage: walletctl" in capsys.readouterr().out


def _leaf_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
                   ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subcommands:
        yield path, parser
    for action in subcommands:
        for name, child in action.choices.items():
            yield from _leaf_commands(child, (*path, name))


GLOBAL_OPTIONS = ("--target", "--config", "--json", "--timeout", "--attempt-timeout",
                  "--token", "--admin-token", "--tls-ca", "--tls-cert", "--tls-key")


def test_every_command_takes_the_global_options_after_it_too() -> None:
    from node.cli.walletctl import build_parser

    leaves = dict(_leaf_commands(build_parser()))
    assert ("cluster", "down") in leaves and ("replay",) in leaves
    for path, command in leaves.items():
        if path == ("replay",):
            # node.archive.replay_cli parses its line; tests/test_replay_cli.py covers --json
            continue
        taken = {flag for action in command._actions for flag in action.option_strings}
        assert set(GLOBAL_OPTIONS) <= taken, (path, set(GLOBAL_OPTIONS) - taken)


def test_cluster_down_takes_config_after_the_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[dict[str, Any]] = []

    def cluster_down(**kwargs: Any) -> int:
        calls.append(kwargs)
        return 0

    launcher = types.ModuleType("node.cli.launcher")
    launcher.cluster_down = cluster_down  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "node.cli.launcher", launcher)

    code = main(["cluster", "down", "--data-dir", str(tmp_path), "--config",
                 str(REPO / "cluster-configs" / "local-3node.toml")])

    assert (code, calls) == (0, [{"data_dir": tmp_path, "as_json": False}])


@pytest.mark.parametrize("command", [["cluster", "up"], ["node", "start"]])
def test_commands_that_need_config_show_it_as_required(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--help"]) == 0
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert " --config FILE " in usage and "[--config FILE]" not in usage, usage


def test_node_commands_report_a_missing_node_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "node.cli.launcher", None)  # import fails

    code = main(["cluster", "up", "--config", "c.toml", "--data-dir", str(tmp_path)])

    assert code == 2
    assert "node.cli.launcher" in capsys.readouterr().err


def test_node_commands_dispatch_to_the_node_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[dict[str, Any]] = []

    def cluster_down(**kwargs: Any) -> int:
        calls.append(kwargs)
        return 0

    launcher = types.ModuleType("node.cli.launcher")
    launcher.cluster_down = cluster_down  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "node.cli.launcher", launcher)

    code = main(["cluster", "down", "--data-dir", str(tmp_path), "--json"])

    assert code == 0
    assert calls == [{"data_dir": tmp_path, "as_json": True}]


def test_injected_unavailable_is_retried_by_the_cli(
    fake: FakeWalletServer, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.fail("Deposit", grpc.StatusCode.UNAVAILABLE, times=1)

    code, obj = run_json(
        capsys, "--target", fake.address, "--json", "deposit", "bob", "3.00", "--currency", "USD"
    )

    assert (code, obj["status"], obj["balance"], obj["currency"]) == (0, "SUCCEEDED", "3.00", "USD")
    assert len({r.transaction_id for r in fake.requests_of("Deposit")}) == 1


# -- verify: each replica against its peers -------------------------------------------


def _verdicts(*partitions: tuple[int, int, str, str]) -> pb.VerifyResponse:
    return pb.VerifyResponse(ok=True, partitions=[
        pb.PartitionVerdict(partition=p, position=position, state_hash=state, chain_hash=chain,
                            replay_matches=True) for p, position, state, chain in partitions])


def test_verify_finds_a_replica_behind_its_peers_even_when_its_own_replay_matches() -> None:
    from client.cli import _replicas_behind

    answers = {"n1": _verdicts((0, 57, "s57", "c57")), "n2": _verdicts((0, 0, "s0", "")),
               "n3": _verdicts((0, 57, "s57", "c57"))}
    assert _replicas_behind(answers, {0: 57}) == [("n2", 0, 0)]


def test_verify_finds_replicas_whose_histories_or_states_differ() -> None:
    from client.cli import _disagreements

    same = {"n1": _verdicts((0, 9, "s", "c")), "n2": _verdicts((0, 9, "s", "c"))}
    assert _disagreements(same, {0: 9}) == []
    forked = {"n1": _verdicts((1, 9, "s", "c")), "n2": _verdicts((1, 9, "t", "d"))}
    (history, state) = _disagreements(forked, {1: 9})
    assert history[0] == 1 and "DISAGREE on the history to position 9" in history[1]
    assert state[0] == 1 and "DISAGREE on the state" in state[1]


# --- a cluster file the nodes would refuse is refused at once ------------------------------

REPO = Path(__file__).resolve().parent.parent


def file_naming_a_removed_node(tmp_path: Path) -> Path:
    """local-3node.toml with n3 replaced by n4 in [[nodes]] but still in [[partitions]]: the
    file the runbook's node replacement left before it said to delete those tables."""
    text = (REPO / "cluster-configs" / "local-3node.toml").read_text(encoding="utf-8")
    start = text.index('[[nodes]]\nid = "n3"')
    end = text.index("[[", start + 1)
    path = tmp_path / "cluster.toml"
    n4 = ('[[nodes]]\nid = "n4"\nhost = "127.0.0.1"\ngrpc_port = 7104\n'
          'raft_port_base = 7230\n\n')
    path.write_text(text[:start] + n4 + text[end:], encoding="utf-8")
    return path


def test_walletctl_refuses_a_cluster_file_whose_partitions_name_an_unknown_node(
    tmp_path: Path,
) -> None:
    from node.config import ConfigError, load_cluster_config

    path = file_naming_a_removed_node(tmp_path)
    with pytest.raises(ConfigError) as refused_by_the_node:
        load_cluster_config(path)

    done = subprocess.run(
        [sys.executable, "-m", "node.cli.walletctl", "--config", str(path), "cluster", "map"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)})

    assert done.returncode == 2, done.stderr
    assert done.stderr == f"walletctl: error: {refused_by_the_node.value}\n"
    assert "partitions[0].replicas[2]: unknown node 'n3' (nodes: n1, n2, n4)" in done.stderr


@pytest.mark.parametrize("command", [
    ["balance", "alice"], ["transfer", "alice", "bob", "1.00", "--currency", "USD"],
    ["cluster", "status"], ["cluster", "map"], ["verify"], ["node", "drain", "n1"],
    ["replica", "add", "--partition", "0", "--node", "n1"],
    ["node", "snapshot", "--partition", "0", "--target", "127.0.0.1:1"],
    ["gateway", "--target", "127.0.0.1:1", "--listen", "127.0.0.1:0"],  # would not serve
])
def test_every_command_given_an_invalid_cluster_file_refuses_it_before_any_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str],
) -> None:
    path = file_naming_a_removed_node(tmp_path)

    code = main([*command, "--config", str(path), "--timeout", "0.1"])

    assert code == 2
    assert "partitions[0].replicas[2]: unknown node 'n3'" in capsys.readouterr().err


def test_a_valid_cluster_file_with_a_placement_gives_its_targets() -> None:
    from client.cli import targets_from_config

    assert targets_from_config(REPO / "cluster-configs" / "local-3node.toml") == (
        "127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103")


@pytest.mark.parametrize(("given", "words"), [
    ("00000000-0000-0000-0000-000000000000", "nil UUID"),
    ("not-a-uuid", "is not a UUID"),
    ("{0f8fad5b-d9cb-469f-a165-70867728950e}", "is not a UUID"),
])
def test_a_nil_or_malformed_id_is_a_usage_error_before_any_call(
    fake: FakeWalletServer, capsys: pytest.CaptureFixture[str], given: str, words: str,
) -> None:
    code = main(["--target", fake.address, "transfer", "alice", "bob", "1.00",
                 "--currency", "USD", "--id", given])

    assert code == 2
    assert words in capsys.readouterr().err
    assert fake.requests_of("Transfer") == []


def test_a_silent_first_node_of_the_cluster_file_costs_one_health_check(
    fake: FakeWalletServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "cluster.toml"
    with silent_node() as paused:
        config.write_text(
            '[cluster]\nname = "t"\npartitions = 4\n\n'
            f'[[nodes]]\nid = "n1"\nhost = "127.0.0.1"\ngrpc_port = {paused.rpartition(":")[2]}\n'
            f'[[nodes]]\nid = "n2"\nhost = "127.0.0.1"\ngrpc_port = {fake.port}\n'
        )
        started = time.monotonic()
        code, obj = run_json(capsys, "--config", str(config), "--json", "transfer", "alice",
                             "bob", "1.00", "--currency", "USD")
        elapsed_s = time.monotonic() - started

    assert (code, obj["status"]) == (0, "SUCCEEDED")
    assert elapsed_s < 2.0, f"took {elapsed_s:.2f} s: the silent node held the whole --timeout"


def test_a_node_that_holds_an_attempt_is_passed_over_after_the_attempt_timeout(
    fake: FakeWalletServer, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.stall("Transfer", seconds=2.0)

    started = time.monotonic()
    code, obj = run_json(capsys, "--target", f"{fake.address},{fake.second_address}", "--json",
                         "--attempt-timeout", "0.5", "transfer", "alice", "bob", "1.00",
                         "--currency", "USD")
    elapsed_s = time.monotonic() - started

    assert (code, obj["status"]) == (0, "SUCCEEDED")
    assert elapsed_s < 1.5, f"took {elapsed_s:.2f} s"
    assert len({r.transaction_id for r in fake.requests_of("Transfer")}) == 1
