"""The replay fast path (`parse_entry` + `StateMachine.apply_wire_entry`) is the plain path.

The fast path applies an entry straight from its protobuf form, skipping the
`ledger.commands` objects. It must be indistinguishable from decoding with
`decode_entry` and applying with `apply_entry`: the same state hash after
every entry, the same results, the same errors. The workload below touches
every command kind and every refusal the ledger knows, and a golden trace
pins the bytes the code before the optimisation produced (commit 198bb9c).
"""

from __future__ import annotations

import gc
import hashlib
import random
import struct
import weakref

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import canonical
from ledger import commands as c
from ledger.codec import UnsupportedEntry, decode_entry, encode_entry, parse_entry
from ledger.results import Code
from ledger.results_codec import encode_results
from ledger.state import LedgerHalted, RawRecord, StateMachine, _dedup_record
from node.archive.event_archive import EventArchive, read_archive
from node.archive.replay_cli import Bound, paused_cyclic_gc, replay_partition
from proto.ledger.v1 import ledger_pb2 as pb

PARTITION = 1
GOLDEN_TRACE = "8840e07dde70b8374c33f5829a62697ffdbdf9009e51e1e2d48f3f7c0a9a5aa8"
"""`trace_digest(recorded_log())` as the code of commit 198bb9c (before the fast path) gave it."""


def _commands(rng: random.Random, state: StateMachine, names: list[str],
              ids: list[bytes]) -> list[c.Command]:
    """A random batch: every command kind, valid, replayed, conflicting and refused ones."""
    commands: list[c.Command] = []
    for _ in range(rng.randint(1, 30)):
        a, b = rng.sample(names, 2)
        amount = rng.randint(1, 60_000) if rng.random() < 0.9 else rng.choice((0, -5, 10**18))
        transaction_id = rng.choice(ids)
        roll = rng.random()
        if roll < 0.40:
            commands.append(c.Transfer(a, b, amount, rng.choice(("USD", "USD", "EUR")),
                                       transaction_id))
        elif roll < 0.44:
            commands.append(c.Transfer(a, rng.choice((a, "nobody", "bad id!")), amount, "USD",
                                       rng.choice((transaction_id, b"short"))))
        elif roll < 0.52:
            commands.append(c.Withdraw(a, amount, "USD", transaction_id))
        elif roll < 0.60:
            commands.append(c.Deposit(a, amount, rng.choice(("USD", "EUR")), transaction_id))
        elif roll < 0.72:
            commands.append(c.DebitForTransfer(a, rng.choice((f"far-{b}", a, "bad id!")), amount,
                                               "USD", transaction_id,
                                               rng.choice((2, 2, 2, 2, 0, PARTITION, 5000))))
        elif roll < 0.82:
            commands.append(c.CreditForTransfer(rng.choice((0, 2, PARTITION)),
                                                rng.randint(0, 80), "far", b, amount,
                                                rng.choice(("USD", "usd")), transaction_id,
                                                rng.randint(0, 40)))
        elif roll < 0.86:
            commands.append(c.Abort(rng.choice((a, "nobody")), rng.choice((transaction_id,
                                                                          rng.randbytes(16)))))
        elif roll < 0.89:
            commands.append(c.AbortCredit(rng.choice((0, 2, PARTITION)), rng.randint(0, 80)))
        elif roll < 0.93:
            commands.append(c.CreateAccount(rng.choice((f"new-{rng.randint(0, 20)}", "bad id!",
                                                        "é")),
                                            rng.choice(("EUR", "eur")), rng.choice((2, 9)),
                                            rng.choice((rng.randbytes(16), b""))))
        elif roll < 0.96:
            commands.append(c.CloseAccount(rng.choice((f"new-{rng.randint(0, 20)}", a)),
                                           rng.randbytes(16)))
        elif roll < 0.98:
            commands.append(c.LeaderStart(rng.randint(1, 9), "node-b"))
        else:
            commands.append(c.Barrier())
    for key in list(state.outbox)[: rng.randint(0, 5)]:
        credited = rng.random() < 0.6
        commands.append(c.ResolveTransfer(key[0], key[1], credited,
                                          rng.choice((int(Code.ACCOUNT_NOT_FOUND), 1))))
    if rng.random() < 0.03:
        commands.append(c.ResolveTransfer(a, rng.randbytes(16), True, 0))
    if rng.random() < 0.05:
        commands.append(c.PruneDedup(state.last_stamp_ms - rng.choice((0, 5_000, 60_000))))
    return commands


def recorded_log(seed: int = 5, entries: int = 300) -> list[tuple[int, bytes, bytes, str]]:
    """Entries applied live: (log index, entry blob, encoded results, state hash after)."""
    rng = random.Random(seed)
    state = StateMachine(PARTITION)
    names = [f"acct-{i:02d}" for i in range(15)]
    ids = [rng.randbytes(16) for _ in range(250)]
    setup: list[list[c.Command]] = [
        [c.CreateAccount(n, "USD", 2, rng.randbytes(16)) for n in names],
        [c.Deposit(n, rng.randint(1, 2_000_000), "USD", rng.randbytes(16)) for n in names],
    ]
    log: list[tuple[int, bytes, bytes, str]] = []
    log_index, stamp_ms = 0, 1_767_225_600_000
    for number in range(entries):
        commands = setup[number] if number < len(setup) else _commands(rng, state, names, ids)
        log_index += rng.choice((1, 1, 2))
        stamp_ms += rng.choice((0, 700, 3_000, -400))
        entry = c.Entry(stamp_ms, tuple(commands))
        outcome = state.apply_entry(entry, log_index)
        assert outcome is not None
        log.append((log_index, encode_entry(entry), encode_results(outcome.results),
                    state.state_hash()))
    state.check_invariants()
    return log


def trace_digest(log: list[tuple[int, bytes, bytes, str]]) -> str:
    """One hash over every entry, its results and the state hash after it."""
    trace = hashlib.blake2b(digest_size=32)
    for log_index, blob, results, state_hash in log:
        trace.update(canonical.u32(log_index) + canonical.u32(len(blob)) + blob
                     + canonical.u32(len(results)) + results + state_hash.encode())
    return trace.hexdigest()


@pytest.fixture(scope="module")
def log() -> list[tuple[int, bytes, bytes, str]]:
    return recorded_log()


@pytest.fixture(scope="module")
def archive_dir(tmp_path_factory: pytest.TempPathFactory,
                log: list[tuple[int, bytes, bytes, str]]) -> str:
    """The recorded log as a replica archives it."""
    directory = str(tmp_path_factory.mktemp("archive"))
    with EventArchive(directory, PARTITION, fsync=False, segment_bytes_max=16_384) as archive:
        for position, (log_index, blob, results, _) in enumerate(log, start=1):
            stamp_ms = decode_entry(blob).stamp_ms
            assert archive.append(position, log_index, 1, stamp_ms, blob, results)
    return directory


def test_the_recorded_workload_is_byte_for_byte_what_the_code_before_gave(
        log: list[tuple[int, bytes, bytes, str]]) -> None:
    assert trace_digest(log) == GOLDEN_TRACE


def test_the_fast_path_reaches_the_plain_paths_state_after_every_archived_entry(
        archive_dir: str, log: list[tuple[int, bytes, bytes, str]]) -> None:
    plain, fast = StateMachine(PARTITION), StateMachine(PARTITION)
    records = list(read_archive(archive_dir, PARTITION))
    assert len(records) == len(log)
    for record, (_, _, _, live_hash) in zip(records, log, strict=True):
        expected = plain.apply_entry(decode_entry(record.entry_blob), record.log_index)
        replayed = fast.apply_wire_entry(parse_entry(record.entry_blob), record.log_index)
        assert replayed == expected
        assert replayed is not None and replayed.position == record.position
        assert encode_results(replayed.results) == record.results_blob
        assert fast.state_hash() == plain.state_hash() == live_hash
    fast.check_invariants()
    assert fast.snapshot() == plain.snapshot()


def test_walletctl_replay_reaches_the_live_state_with_the_archived_results(
        archive_dir: str, log: list[tuple[int, bytes, bytes, str]]) -> None:
    replayed = replay_partition(archive_dir, PARTITION, Bound())
    assert replayed.results_mismatches == 0
    assert replayed.state.state_hash() == log[-1][3]
    middle = len(log) // 2
    halfway = replay_partition(archive_dir, PARTITION, Bound(position=middle))
    assert halfway.state.state_hash() == log[middle - 1][3]


def test_an_entry_applied_already_is_skipped_by_the_fast_path_too(
        log: list[tuple[int, bytes, bytes, str]]) -> None:
    state = StateMachine(PARTITION)
    log_index, blob, _, _ = log[0]
    assert state.apply_wire_entry(parse_entry(blob), log_index) is not None
    before = state.state_hash()
    assert state.apply_wire_entry(parse_entry(blob), log_index) is None
    assert state.state_hash() == before


def _blob(*commands: pb.Command, version: int = c.ENTRY_VERSION) -> bytes:
    entry = pb.Entry(version=version, stamp_ms=5)
    entry.commands.extend(commands)
    return entry.SerializeToString()


def _transfer_message() -> pb.Command:
    message = pb.Command()
    message.transfer.from_account, message.transfer.to_account = "a", "b"
    message.transfer.amount_minor, message.transfer.currency = 1, "USD"
    message.transfer.transaction_id = bytes(16)
    return message


@pytest.mark.parametrize("blob", [
    b"\xff\xff\xff",
    _blob(_transfer_message(), version=c.ENTRY_VERSION + 1),
    _blob(_transfer_message(), pb.Command(), _transfer_message()),  # a kind of newer code
], ids=["bad bytes", "newer version", "unknown command kind"])
def test_parse_entry_refuses_what_decode_entry_refuses_before_anything_is_applied(
        blob: bytes) -> None:
    with pytest.raises(UnsupportedEntry) as plain:
        decode_entry(blob)
    with pytest.raises(UnsupportedEntry) as fast:
        parse_entry(blob)
    assert str(fast.value) == str(plain.value)


def test_a_fault_inside_the_fast_path_halts_the_state_machine(
        monkeypatch: pytest.MonkeyPatch) -> None:
    state = StateMachine(PARTITION)

    def explode(command: c.Barrier) -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setitem(state._handlers, c.Barrier, explode)
    barrier = pb.Command()
    barrier.barrier.SetInParent()
    with pytest.raises(LedgerHalted, match="injected fault"):
        state.apply_wire_entry(parse_entry(_blob(_transfer_message(), barrier)), 1)
    with pytest.raises(LedgerHalted, match="halted"):
        state.apply_wire_entry(parse_entry(_blob(_transfer_message())), 2)


def _canonical_dedup_record(key: tuple[str, bytes], d: RawRecord) -> bytes:
    """The dedup record as commit 198bb9c composed it, field by field."""
    kind, counterparty, amount, currency, code, position, stamp, resolved, resolved_stamp = d
    return (
        b"D" + canonical.text(key[0]) + canonical.blob(key[1]) + bytes((kind,))
        + canonical.text(counterparty) + canonical.text(currency)
        + struct.pack(">qBQqQq", amount, code, position, stamp, resolved, resolved_stamp)
    )


_texts = st.text(max_size=70)
_u64 = st.integers(0, 2**64 - 1)
_i64 = st.integers(-(2**63), 2**63 - 1)


@given(account=_texts, transaction_id=st.binary(max_size=40),
       record=st.tuples(st.integers(0, 255), _texts, _i64, _texts, st.integers(0, 255), _u64,
                        _i64, _u64, _i64))
def test_a_dedup_record_packs_to_its_canonical_bytes(account: str, transaction_id: bytes,
                                                     record: RawRecord) -> None:
    key = (account, transaction_id)
    assert _dedup_record(key, record) == _canonical_dedup_record(key, record)


def test_a_dedup_field_too_long_for_its_length_prefix_is_refused() -> None:
    record: RawRecord = (3, "b", 1, "USD", 1, 1, 1, 0, 0)
    with pytest.raises(struct.error):
        _dedup_record(("a" * 65_536, bytes(16)), record)


class _Node:
    """A reference cycle made inside `paused_cyclic_gc`."""

    def __init__(self) -> None:
        self.me = self


def test_objects_made_while_the_gc_is_paused_are_still_collected_afterwards() -> None:
    assert gc.isenabled()
    with paused_cyclic_gc():
        assert not gc.isenabled()
        cycle = _Node()
        alive = weakref.ref(cycle)
        del cycle
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert alive() is not None  # only the cyclic collector frees a cycle
    gc.collect()
    assert alive() is None


if __name__ == "__main__":
    print(trace_digest(recorded_log()))
