"""`walletctl replay`: rebuild partitions' state offline from their event archives alone.

    walletctl replay --data-dir DIR [--partition P] [--until-position N | --until-time ISO8601]
                     [--account ID] [--json] [--compare-with-hash H]

DIR is a node's data dir (`DIR/partition-<p>/archive/`, as the node writes
it); without --partition every partition found there is replayed. Nothing but
the archive is read, and nothing is written: it is safe on a live node.

For each partition, a fresh `StateMachine(P)` applies the archived entries
from position 1 (`ledger.codec.parse_entry`, `StateMachine.apply_wire_entry`
with the archived log index: the same state, bit for bit, as `decode_entry`
and `apply_entry`, without building one object per command), in order,
checking the archive's checksums and hash chain as it reads
(`node.archive.event_archive.read_archive`), that every entry lands at its archived
position, and that the replayed results equal the archived ones (a
difference is reported on stderr and counted in the JSON). It stops after
position N (`--until-position`), or before the first entry stamped later than
the given time (`--until-time`: the longest prefix of the log whose entries'
`stamp_ms` are all at or before it; a time zone is required). Then it prints
the position, the `state_hash()` and the balances of all accounts as of that
point. With `--account ID` it prints that one balance instead, with the
partition holding the account and the position it is as of (JSON: one object
with `account`, `balance`, `currency`, `partition`, `position`, `log_index`,
`stamp_ms`, `state_hash`; `"balance": null` when no replayed partition holds it).

`--compare-with-hash H` is the one-liner that checks that new code replays old
traffic to the same state: exit 0 when the replayed state hash is H, 1 (with a
message saying both hashes) when not.

Exit status: 0 done (and the hash matches); 1 the hash differs, or --account
exists in none of the replayed partitions; 2 usage problem, missing or damaged
archive, or an entry that cannot be replayed. A progress bar goes to stderr
when stderr is a terminal or the archives are long.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TextIO

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from ledger.codec import UnsupportedEntry, parse_entry
from ledger.money import format_amount
from ledger.results import EntryResult, Result
from ledger.results_codec import ResultsDecodeError, decode_results
from ledger.state import Balance, LedgerHalted, StateMachine
from node.archive.event_archive import GENESIS_HASH, ArchiveCorrupt, ArchiveRecord, read_archive

PROG: Final = "walletctl replay"
EXIT_OK: Final = 0
EXIT_DIFFERENT: Final = 1
EXIT_USAGE: Final = 2
LONG_ARCHIVE_BYTES: Final = 8 * 2**20
"""Archives at least this large get a progress bar even when stderr is not a terminal."""
RECORD_OVERHEAD_BYTES: Final = 76
"""Bytes of a record besides its two blobs (prefix and fixed fields), for the progress bar."""

_PARTITION_DIR_RE: Final = re.compile(r"partition-(\d+)")
_HASH_RE: Final = re.compile(r"[0-9a-f]{64}")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class ReplayError(Exception):
    """The replay cannot go on or cannot answer (exit 2); the message says why."""


@dataclass(frozen=True, slots=True)
class Bound:
    """Where to stop: after `position`, or before the first entry stamped after `stamp_ms`."""

    position: int | None = None
    stamp_ms: int | None = None

    def stops_before(self, record: ArchiveRecord) -> bool:
        if self.position is not None and record.position > self.position:
            return True
        return self.stamp_ms is not None and record.stamp_ms > self.stamp_ms


@dataclass(frozen=True, slots=True)
class Replayed:
    """The state of one partition as of the bound, and how the replay went."""

    partition: int
    state: StateMachine
    chain_head: str
    results_mismatches: int
    first_mismatch_position: int | None


# -- finding archives ----------------------------------------------------------------------


def archive_dir(data_dir: str, partition: int) -> str:
    """Where a node keeps the archive of `partition`: DIR/partition-P/archive."""
    return os.path.join(data_dir, f"partition-{partition}", "archive")


def find_partitions(data_dir: str, partition: int | None) -> list[int]:
    """The partitions to replay: `partition`, or every DIR/partition-P with an archive."""
    if not os.path.isdir(data_dir):
        raise ReplayError(f"--data-dir {data_dir} is not a directory")
    if partition is not None:
        if not os.path.isdir(archive_dir(data_dir, partition)):
            raise ReplayError(f"no archive for partition {partition}: "
                              f"{archive_dir(data_dir, partition)} does not exist")
        return [partition]
    found = sorted(
        int(match.group(1))
        for name in os.listdir(data_dir)
        if (match := _PARTITION_DIR_RE.fullmatch(name)) is not None
        and os.path.isdir(archive_dir(data_dir, int(match.group(1))))
    )
    if not found:
        raise ReplayError(f"no archive under {data_dir} (expected partition-<P>/archive/; "
                          "--data-dir is a node's data dir)")
    return found


def archive_bytes(directory: str) -> int:
    """Total size of the files of an archive, for the progress bar."""
    return sum(entry.stat().st_size for entry in os.scandir(directory) if entry.is_file())


# -- replaying -------------------------------------------------------------------------------


@contextlib.contextmanager
def paused_cyclic_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector inside the block (restored on exit).

    A replay builds millions of long-lived objects (dedup records) and no
    reference cycles; the collector would rescan that growing heap again and
    again (about a fifth of the replay time). Reference counting still frees
    everything else at once.

    On exit, the objects made inside the block go straight to the oldest
    generation (`gc.freeze()` then `gc.unfreeze()`, two list splices), as
    they would after surviving two collections: otherwise the first young
    collection after the block traverses every one of them at once (about a
    tenth of a replay's time). They stay collectable; a full collection
    scans them as usual. Skipped when the process keeps objects frozen
    (`gc.get_freeze_count()`), which unfreezing would release.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        if was_enabled:
            gc.enable()


def replay_partition(directory: str, partition: int, bound: Bound,
                     progress: Progress | None = None) -> Replayed:
    """Rebuild `partition` from its archive in `directory` up to `bound`.

    Raises ArchiveCorrupt for a damaged archive and ReplayError when an entry
    does not replay to its archived position (or does not decode or apply).
    """
    with paused_cyclic_gc():
        return _replay_partition(directory, partition, bound, progress)


def _replay_partition(directory: str, partition: int, bound: Bound,
                      progress: Progress | None) -> Replayed:
    state = StateMachine(partition)
    head, mismatches, first_mismatch = GENESIS_HASH, 0, None
    task = None
    if progress is not None:
        task = progress.add_task(f"partition {partition}", total=archive_bytes(directory))
    for record in read_archive(directory, partition):
        if bound.stops_before(record):
            break
        results = _apply(state, record)
        if _results_differ(results.results, record.results_blob):
            mismatches += 1
            first_mismatch = first_mismatch or record.position
        head = record.hash
        if progress is not None and task is not None:
            progress.advance(task, RECORD_OVERHEAD_BYTES + len(record.entry_blob)
                             + len(record.results_blob))
    if bound.position is not None and state.position < bound.position:
        raise ReplayError(f"the archive of partition {partition} ends at position "
                          f"{state.position}, before --until-position {bound.position}")
    return Replayed(partition, state, head.hex(), mismatches, first_mismatch)


def _results_differ(results: tuple[Result, ...], results_blob: bytes) -> bool:
    """Whether `results` are not the archived ones: `encode_results(results) != results_blob`.

    Decoding the archived blob is equivalent (each valid byte stands for one
    result, and decoding gives the very instances the ledger returns, so the
    comparison is by identity) and cheaper; a blob that does not decode differs.
    """
    try:
        return decode_results(results_blob) != results
    except ResultsDecodeError:
        return True


def _apply(state: StateMachine, record: ArchiveRecord) -> EntryResult:
    try:
        outcome = state.apply_wire_entry(parse_entry(record.entry_blob), record.log_index)
    except (UnsupportedEntry, LedgerHalted) as exc:
        raise ReplayError(f"partition {state.partition}: replay stopped at position "
                          f"{record.position} (log index {record.log_index}): {exc}") from None
    if outcome is None or outcome.position != record.position:
        raise ReplayError(
            f"partition {state.partition}: the entry archived at position {record.position} "
            f"(log index {record.log_index}) replayed to position "
            f"{state.position if outcome is None else outcome.position}"
        )
    return outcome


# -- output ------------------------------------------------------------------------------


def balances_of(state: StateMachine, account: str | None) -> list[Balance]:
    """All balances sorted by account id, or the one of `account` (none if it does not exist)."""
    ids = sorted(state.accounts) if account is None else [account]
    return [b for b in (state.balance(account_id) for account_id in ids) if b is not None]


def balance_json(balance: Balance) -> dict[str, str]:
    return {"account": balance.account_id,
            "balance": format_amount(balance.balance_minor, balance.exponent),
            "currency": balance.currency}


def partition_json(replayed: Replayed) -> dict[str, Any]:
    state = replayed.state
    return {
        "partition": replayed.partition,
        "position": state.position,
        "log_index": state.last_log_index,
        "stamp_ms": state.last_stamp_ms,
        "state_hash": state.state_hash(),
        "chain_head": replayed.chain_head,
        "results_mismatches": replayed.results_mismatches,
        "balances": [balance_json(b) for b in balances_of(state, None)],
    }


def account_json(replayed: list[Replayed], account: str) -> dict[str, Any]:
    """The one balance of `account`, with where (partition) and when (position) it is from."""
    for one in replayed:
        for balance in balances_of(one.state, account):
            state = one.state
            return {**balance_json(balance), "partition": one.partition,
                    "position": state.position, "log_index": state.last_log_index,
                    "stamp_ms": state.last_stamp_ms, "state_hash": state.state_hash()}
    return {"account": account, "balance": None,
            "partitions": [{"partition": one.partition, "position": one.state.position}
                           for one in replayed]}


def account_line(replayed: list[Replayed], account: str) -> str | None:
    """`ACCOUNT: BALANCE CUR (partition P, position N, ...)`, or None when none holds it."""
    for one in replayed:
        for b in balances_of(one.state, account):
            state = one.state
            return (f"{b.account_id}: {format_amount(b.balance_minor, b.exponent)} {b.currency} "
                    f"(partition {one.partition}, position {state.position}, log index "
                    f"{state.last_log_index}, {_time_text(state.last_stamp_ms)})")
    return None


def _time_text(stamp_ms: int) -> str:
    if stamp_ms <= 0:
        return "no entry stamped yet"
    moment = _EPOCH + timedelta(milliseconds=stamp_ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def partition_lines(replayed: Replayed) -> Iterator[str]:
    state = replayed.state
    yield (f"partition {replayed.partition}: position {state.position} (log index "
           f"{state.last_log_index}, {_time_text(state.last_stamp_ms)})")
    yield f"  state hash  {state.state_hash()}"
    yield f"  chain head  {replayed.chain_head}"
    balances = balances_of(state, None)
    width = max((len(b.account_id) for b in balances), default=0)
    for b in balances:
        amount = format_amount(b.balance_minor, b.exponent)
        yield f"  {b.account_id:<{width}}  {amount} {b.currency}"


# -- the command line ------------------------------------------------------------------------


def parse_time_ms(text: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 time that names its time zone."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no time zone; write e.g. 2026-01-31T12:00:00Z or +01:00")
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _position(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a position") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a position is 0 or more")
    return value


def _partition(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a partition number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a partition number is 0 or more")
    return value


def _state_hash(text: str) -> str:
    value = text.strip().lower()
    if _HASH_RE.fullmatch(value) is None:
        raise argparse.ArgumentTypeError("a state hash is 64 hex digits (the full hash)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Rebuild partitions' state offline from their event archives alone and "
        "print balances, position and state hash as of a position or a time.",
        epilog="exit status: 0 done (and the hash matches); 1 the state hash differs from "
        "--compare-with-hash, or --account exists in no replayed partition; 2 usage problem, "
        "missing or damaged archive, or an entry that does not replay.",
    )
    parser.add_argument("--data-dir", required=True, metavar="DIR",
                        help="a node's data dir (holding partition-<P>/archive/)")
    parser.add_argument("--partition", type=_partition, metavar="P",
                        help="replay this partition only (default: every one found)")
    until = parser.add_mutually_exclusive_group()
    until.add_argument("--until-position", type=_position, metavar="N",
                       help="stop after the entry at position N")
    until.add_argument("--until-time", type=parse_time_ms, metavar="ISO8601",
                       help="stop before the first entry stamped after this time "
                       "(with a time zone, e.g. 2026-01-31T12:00:00Z)")
    parser.add_argument("--account", metavar="ID", help="print this account's balance only")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object")
    parser.add_argument("--compare-with-hash", type=_state_hash, metavar="H",
                        help="exit 0 if the replayed state hash is H, else 1")
    return parser


def _show_progress(err: TextIO, directories: list[str]) -> bool:
    if err.isatty():
        return True
    return sum(archive_bytes(directory) for directory in directories) >= LONG_ARCHIVE_BYTES


def _replay_all(args: argparse.Namespace, partitions: list[int], err: TextIO) -> list[Replayed]:
    bound = Bound(args.until_position, args.until_time)
    directories = [archive_dir(args.data_dir, p) for p in partitions]
    if not _show_progress(err, directories):
        return [replay_partition(d, p, bound) for d, p in zip(directories, partitions,
                                                                 strict=True)]
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(file=err), transient=True) as progress:
        return [replay_partition(d, p, bound, progress)
                for d, p in zip(directories, partitions, strict=True)]


def _report(args: argparse.Namespace, replayed: list[Replayed], out: TextIO,
            err: TextIO) -> int:
    """Print the result; returns the exit status."""
    status = EXIT_OK
    for one in replayed:
        if one.results_mismatches:
            err.write(f"{PROG}: warning: partition {one.partition}: the replayed results of "
                      f"{one.results_mismatches} entries differ from the archived ones (first "
                      f"at position {one.first_mismatch_position})\n")
    if args.account is not None and not any(
            balances_of(one.state, args.account) for one in replayed):
        err.write(f"{PROG}: account {args.account} does not exist as of the replayed point\n")
        status = EXIT_DIFFERENT
    matches = None
    if args.compare_with_hash is not None:
        replayed_hash = replayed[0].state.state_hash()
        matches = replayed_hash == args.compare_with_hash
        if not matches:
            err.write(f"{PROG}: state hash MISMATCH for partition {replayed[0].partition} at "
                      f"position {replayed[0].state.position}: replayed {replayed_hash}, "
                      f"expected {args.compare_with_hash}\n")
            status = EXIT_DIFFERENT
    if args.json:
        document: dict[str, Any] = (
            account_json(replayed, args.account) if args.account is not None else
            {"partitions": [partition_json(one) for one in replayed]})
        if matches is not None:
            document["compare_with_hash"] = args.compare_with_hash
            document["matches"] = matches
        out.write(json.dumps(document, sort_keys=True) + "\n")
    else:
        if args.account is None:
            for one in replayed:
                out.write("\n".join(partition_lines(one)) + "\n")
        elif (line := account_line(replayed, args.account)) is not None:
            out.write(line + "\n")
        if matches:
            out.write(f"state hash matches {args.compare_with_hash}\n")
    return status


def main(argv: list[str] | None = None) -> int:
    """Run `walletctl replay` with `argv` (a leading "replay" is accepted); the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["replay"]:
        arguments = arguments[1:]
    parser = build_parser()
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exit_:  # --help, or a usage error argparse already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    out, err = sys.stdout, sys.stderr
    try:
        partitions = find_partitions(args.data_dir, args.partition)
        if args.compare_with_hash is not None and len(partitions) != 1:
            raise ReplayError(f"--compare-with-hash compares one partition's state; found "
                              f"{len(partitions)} partitions, choose one with --partition")
        replayed = _replay_all(args, partitions, err)
    except (ReplayError, ArchiveCorrupt, OSError) as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted\n")
        return 130
    return _report(args, replayed, out, err)


if __name__ == "__main__":
    raise SystemExit(main())
