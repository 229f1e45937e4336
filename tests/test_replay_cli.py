"""`walletctl replay` (node.archive.replay_cli) over archives in a fake node data dir."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from ledger.money import format_amount
from node.archive.event_archive import EventArchive
from node.archive.replay_cli import main
from tests.test_archive import Live, archived_workload

ENTRIES = 120


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, list[Live]]]:
    """A node data dir with the archives of partitions 0 and 2, and their live histories."""
    data_dir = tmp_path_factory.mktemp("node")
    histories = {}
    for partition, seed in ((0, 21), (2, 22)):
        directory = data_dir / f"partition-{partition}" / "archive"
        with EventArchive(str(directory), partition, fsync=False,
                          segment_bytes_max=8_192) as archive:
            histories[partition] = archived_workload(archive, seed, ENTRIES)
    (data_dir / "partition-1").mkdir()  # a partition dir without an archive is not replayed
    return data_dir, histories


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    status, out, _ = _run(capsys, *argv, "--json")
    return status, json.loads(out)


def _expected_balances(live: Live) -> list[dict[str, str]]:
    return [
        {"account": account, "balance": format_amount(minor, exponent), "currency": currency}
        for account, (minor, exponent, currency) in sorted(live.balances.items())
    ]


def _iso(stamp_ms: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=stamp_ms)).isoformat()


def test_json_gives_the_balances_the_live_state_had_at_a_past_position(
        node_dir: tuple[Path, dict[int, list[Live]]], capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, histories = node_dir
    for position in (0, 1, 2, 57, ENTRIES):
        status, document = _json(capsys, "--data-dir", str(data_dir), "--partition", "0",
                                 "--until-position", str(position))
        assert status == 0
        [partition] = document["partitions"]
        live = histories[0][position]
        assert partition["partition"] == 0
        assert partition["position"] == position
        assert partition["state_hash"] == live.state_hash
        assert partition["balances"] == _expected_balances(live)
        assert partition["results_mismatches"] == 0


def test_without_partition_every_archived_partition_is_replayed(
        node_dir: tuple[Path, dict[int, list[Live]]], capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, histories = node_dir
    status, document = _json(capsys, "replay", "--data-dir", str(data_dir))
    assert status == 0
    assert [p["partition"] for p in document["partitions"]] == [0, 2]
    for partition in document["partitions"]:
        live = histories[partition["partition"]][-1]
        assert (partition["position"], partition["state_hash"]) == (ENTRIES, live.state_hash)


def test_account_prints_that_account_only(
        node_dir: tuple[Path, dict[int, list[Live]]], capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, histories = node_dir
    live = histories[0][40]
    status, document = _json(capsys, "--data-dir", str(data_dir),
                             "--until-position", "40", "--account", "acct-03")
    assert status == 0
    minor, exponent, currency = live.balances["acct-03"]
    assert document == {
        "account": "acct-03", "balance": format_amount(minor, exponent), "currency": currency,
        "partition": 0, "position": 40, "log_index": document["log_index"],
        "stamp_ms": document["stamp_ms"], "state_hash": live.state_hash}

    status, out, _ = _run(capsys, "--data-dir", str(data_dir),
                          "--until-position", "40", "--account", "acct-03")
    assert status == 0
    [line] = out.splitlines()  # the balance asked for, no partition's hashes around it
    assert line.startswith(f"acct-03: {format_amount(minor, exponent)} USD (partition 0, "
                           "position 40, log index "), line


def test_walletctl_lists_replay_and_takes_json_before_or_after_it(
        node_dir: tuple[Path, dict[int, list[Live]]], capsys: pytest.CaptureFixture[str]) -> None:
    from node.cli.walletctl import main as walletctl

    data_dir, histories = node_dir
    assert walletctl(["--help"]) == 0
    assert re.search(r"^ +replay +rebuild balances offline", capsys.readouterr().out,
                     re.MULTILINE)
    outputs = []
    for argv in (["--json", "replay", "--data-dir", str(data_dir), "--partition", "2"],
                 ["replay", "--data-dir", str(data_dir), "--partition", "2", "--json"]):
        assert walletctl(argv) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1]
    assert outputs[0]["partitions"][0]["state_hash"] == histories[2][-1].state_hash
    assert walletctl(["--config", "cluster.toml", "replay", "--data-dir", str(data_dir)]) == 2
    assert "--config does not apply" in capsys.readouterr().err


def test_an_account_that_did_not_exist_then_exits_1(
        node_dir: tuple[Path, dict[int, list[Live]]], capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, _ = node_dir
    status, _, err = _run(capsys, "--data-dir", str(data_dir), "--until-position", "0",
                          "--account", "acct-03")
    assert status == 1
    assert "acct-03 does not exist" in err


def test_until_time_stops_before_the_first_entry_stamped_later(
        node_dir: tuple[Path, dict[int, list[Live]]], capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, histories = node_dir
    history = histories[0]
    target = history[70]
    later = next(h for h in history[71:] if h.stamp_ms > target.stamp_ms)
    expected = history[later.position - 1]  # the last entry stamped at or before the time
    for moment in (_iso(target.stamp_ms), _iso(later.stamp_ms - 1)):
        status, document = _json(capsys, "--data-dir", str(data_dir), "--partition", "0",
                                 "--until-time", moment)
        assert status == 0
        partition = document["partitions"][0]
        assert partition["position"] == expected.position
        assert partition["state_hash"] == expected.state_hash
        assert partition["stamp_ms"] == expected.stamp_ms
        assert partition["balances"] == _expected_balances(expected)


def test_until_time_in_another_time_zone_means_the_same_instant(
        node_dir: tuple[Path, dict[int, list[Live]]], capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, histories = node_dir
    stamp_ms = histories[0][30].stamp_ms
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=stamp_ms)
    in_utc = moment.isoformat().replace("+00:00", "Z")
    in_tokyo = moment.astimezone(timezone(timedelta(hours=9))).isoformat()
    results = [_json(capsys, "--data-dir", str(data_dir), "--partition", "0", "--until-time",
                     text)[1] for text in (in_utc, in_tokyo)]
    assert results[0] == results[1]


def test_until_time_without_a_time_zone_is_refused(
        node_dir: tuple[Path, dict[int, list[Live]]], capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, _ = node_dir
    status, _, err = _run(capsys, "--data-dir", str(data_dir), "--until-time",
                          "2026-01-01T00:00:00")
    assert status == 2
    assert "no time zone" in err


def test_compare_with_hash_exits_0_when_equal_and_1_when_not(
        node_dir: tuple[Path, dict[int, list[Live]]], capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, histories = node_dir
    live = histories[2][-1]
    status, out, _ = _run(capsys, "--data-dir", str(data_dir), "--partition", "2",
                          "--compare-with-hash", live.state_hash.upper())
    assert status == 0
    assert f"state hash matches {live.state_hash}" in out

    past = histories[2][99].state_hash
    status, out, err = _run(capsys, "--data-dir", str(data_dir), "--partition", "2",
                            "--compare-with-hash", past)
    assert status == 1
    assert "MISMATCH" in err and past in err and live.state_hash in err

    status, document = _json(capsys, "--data-dir", str(data_dir), "--partition", "2",
                             "--until-position", "99", "--compare-with-hash", past)
    assert status == 0 and document["matches"] is True


def test_compare_with_hash_needs_one_partition_and_a_full_hash(
        node_dir: tuple[Path, dict[int, list[Live]]], capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, histories = node_dir
    full = histories[0][-1].state_hash
    status, _, err = _run(capsys, "--data-dir", str(data_dir), "--compare-with-hash", full)
    assert status == 2 and "choose one with --partition" in err
    status, _, err = _run(capsys, "--data-dir", str(data_dir), "--partition", "0",
                          "--compare-with-hash", full[:12])
    assert status == 2 and "64 hex digits" in err


def test_text_output_names_position_and_state_hash(
        node_dir: tuple[Path, dict[int, list[Live]]], capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, histories = node_dir
    status, out, err = _run(capsys, "--data-dir", str(data_dir), "--partition", "0")
    assert status == 0 and err == ""
    assert f"partition 0: position {ENTRIES} " in out
    assert f"state hash  {histories[0][-1].state_hash}" in out
    for account, (minor, exponent, currency) in histories[0][-1].balances.items():
        line = rf"^  {re.escape(account)} +{re.escape(format_amount(minor, exponent))} {currency}$"
        assert re.search(line, out, re.MULTILINE), account


def test_a_position_past_the_end_of_the_archive_is_an_error(
        node_dir: tuple[Path, dict[int, list[Live]]], capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, _ = node_dir
    status, _, err = _run(capsys, "--data-dir", str(data_dir), "--partition", "0",
                          "--until-position", str(ENTRIES + 1))
    assert status == 2
    assert f"ends at position {ENTRIES}" in err


def test_missing_archives_are_usage_errors(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _run(capsys, "--data-dir", str(tmp_path))
    assert status == 2 and "no archive under" in err
    status, _, err = _run(capsys, "--data-dir", str(tmp_path), "--partition", "5")
    assert status == 2 and "partition-5" in err
    status, _, err = _run(capsys, "--data-dir", str(tmp_path / "nowhere"))
    assert status == 2 and "not a directory" in err


def test_a_damaged_archive_is_reported_with_its_file_and_offset(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "partition-0" / "archive"
    with EventArchive(str(directory), 0, fsync=False) as archive:
        archived_workload(archive, seed=3, entries=10)
        path = archive.segment_paths[0]
    with open(path, "r+b") as segment:
        segment.seek(200)
        byte = segment.read(1)
        segment.seek(200)
        segment.write(bytes((byte[0] ^ 1,)))
    status, _, err = _run(capsys, "--data-dir", str(tmp_path))
    assert status == 2
    assert path in err and "byte offset" in err


def test_a_results_difference_is_reported(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "partition-0" / "archive"
    with EventArchive(str(directory), 0, fsync=False) as archive:
        history = archived_workload(archive, seed=4, entries=5)
    lying = tmp_path / "lying" / "partition-0" / "archive"
    with EventArchive(str(lying), 0, fsync=False) as copy, \
            EventArchive(str(directory), 0, fsync=False) as original:
        for record in original.records():
            results = record.results_blob
            if record.position == 3:
                results = results[:-1] + bytes((results[-1] ^ 0x80,))  # flip a replayed flag
            copy.append(record.position, record.log_index, record.term, record.stamp_ms,
                        record.entry_blob, results)
    status, out, err = _run(capsys, "--data-dir", str(tmp_path / "lying"), "--json")
    assert status == 0
    partition = json.loads(out)["partitions"][0]
    assert partition["results_mismatches"] == 1
    assert partition["state_hash"] == history[-1].state_hash
    assert "differ from the archived ones (first at position 3)" in err


def test_the_replay_is_read_only(node_dir: tuple[Path, dict[int, list[Live]]],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, _ = node_dir
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in data_dir.rglob("*")}
    assert _run(capsys, "--data-dir", str(data_dir))[0] == 0
    assert {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in data_dir.rglob("*")} == before
    assert os.listdir(data_dir / "partition-1") == []


def test_a_long_archive_gets_a_progress_bar_on_stderr_only(
        node_dir: tuple[Path, dict[int, list[Live]]], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir, histories = node_dir
    monkeypatch.setattr("node.archive.replay_cli.LONG_ARCHIVE_BYTES", 1)
    status, out, _ = _run(capsys, "--data-dir", str(data_dir), "--json")
    assert status == 0
    document = json.loads(out)  # stdout holds the JSON object and nothing else
    assert [p["state_hash"] for p in document["partitions"]] == [
        histories[0][-1].state_hash, histories[2][-1].state_hash]
