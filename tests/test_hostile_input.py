"""Hostile input against a real 3-node cluster: every refusal is precise and changes nothing.

Each WalletService method (and AdminService's inputs) is fuzzed with hypothesis
with malformed and extreme values: bad amounts ("1e5", " 1", "٣", 30 decimals,
beyond int64), exotic Unicode and 10 KB ids, unknown currencies, the same
account on both sides, reused ids with other content, garbage page tokens,
bytes that are not a protobuf message at all. Every example must get one of the
statuses its input class calls for (never UNKNOWN, which is an unhandled
exception), a message that is not a stack trace, and leave the ledger as it was.

"Changes nothing" is checked on the ledger's *content*: `content_hash()` is the
state hash without position and clock. The live `state_hash` cannot be
compared alone, because it covers the position, and linearizable reads append a
`Barrier` entry to the log (and leaders append `LeaderStart`), which moves the
position and the clock but nothing else. So when a partition's position moved,
the test replays n1's event archive (the same entries, bit for bit) to both
positions, checks that the replay reaches the live state hashes (so the replay
is the live state), and compares the content hashes. The one documented
exception: `INSUFFICIENT_FUNDS` is *recorded* for its transaction id (a retry
with the same id gets the same answer even after money arrives; docs/ledger.md,
"Validation, dedup and idempotency"). For those, the only change allowed is the
new dedup record of that key, itself with the code INSUFFICIENT_FUNDS.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import canonical
from ledger.codec import decode_entry
from ledger.money import AMOUNT_MAX_MINOR, AMOUNT_TEXT_MAX_CHARS
from ledger.results import Code
from ledger.routing import partition_of
from ledger.saga import CREDITS_PER_BATCH_MAX
from ledger.state import ACCOUNT_ID_RE, StateMachine, _dedup_record
from node import api
from node.archive.event_archive import read_archive
from node.archive.replay_cli import archive_dir
from node.host import REQUEST_BYTES_MAX
from node.services.wallet_service import TRANSFERS_PER_BATCH_MAX
from proto.wallet.v1 import wallet_pb2 as pb
from tests.cluster_harness import LocalCluster, running_cluster, wait_until

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""

PARTITIONS = 2
NODE = "n1"
"""Every call goes to n1, which hosts every partition: it executes each request itself,
so its own state (and archive) shows a request's effect by the time the answer arrives."""
EXAMPLES_PER_TEST = 40
CALL_TIMEOUT_S = 15.0

FUZZ = settings(max_examples=EXAMPLES_PER_TEST, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXISTS = grpc.StatusCode.ALREADY_EXISTS

Refusal = tuple[grpc.StatusCode, str]
"""A status and the `raftwallet-reason` it carries ("" for OK)."""
ANSWERED: Refusal = (OK, "")


def accounts_on(partition: int, count: int, prefix: str) -> list[str]:
    found: list[str] = []
    i = 0
    while len(found) < count:
        name = f"{prefix}-{i}"
        if partition_of(name, PARTITIONS) == partition:
            found.append(name)
        i += 1
    return found


RICH, POOR = accounts_on(0, 2, "hostile-usd")
"""USD accounts on partition 0: RICH holds 100.00, POOR 1.00."""
(YEN,) = accounts_on(0, 1, "hostile-jpy")
"""A JPY account on partition 0 holding 500."""
(FAR,) = accounts_on(1, 1, "hostile-far")
"""A USD account on partition 1, holding 0."""
(GHOST,) = accounts_on(0, 1, "hostile-ghost")
"""Never created; on partition 0, so that a transfer to it never starts a saga."""
RICH_REQUEST_ID = "3b0e7a35-6a4c-4a51-9b0e-6f6f0a1b2c3d"
DEPOSIT_ID = "8d3c1f0e-2b4a-4c6d-8e9f-0a1b2c3d4e5f"
"""RICH's deposit of 101.00 USD."""
TRANSFER_ID = "5f4e3d2c-1b0a-4968-8776-655443322110"
"""RICH -> POOR, 1.00 USD, succeeded."""
SEED_DEPOSIT = ("101.00", "USD")
SEED_TRANSFER = (RICH, POOR, "1.00", "USD")
RICH_BALANCE_MINOR = 10_000
SEEDED_ACCOUNTS = {RICH: ("USD", RICH_REQUEST_ID), POOR: ("USD", ""), YEN: ("JPY", ""),
                   FAR: ("USD", "")}
"""Account -> (currency, request id) it was created with."""


# -- the cluster ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("hostile"), nodes=3,
                         partitions=PARTITIONS) as running:
        seed(running)
        yield running


def seed(cluster: LocalCluster) -> None:
    wallet = cluster.wallet(NODE)
    for account, (currency, request_id) in SEEDED_ACCOUNTS.items():
        wallet.CreateAccount(pb.CreateAccountRequest(account_id=account, currency=currency,
                                                     request_id=request_id),
                             timeout=CALL_TIMEOUT_S)
    wallet.Deposit(pb.DepositRequest(account_id=RICH, amount=SEED_DEPOSIT[0],
                                     currency=SEED_DEPOSIT[1], transaction_id=DEPOSIT_ID),
                   timeout=CALL_TIMEOUT_S)
    wallet.Deposit(pb.DepositRequest(account_id=YEN, amount="500", currency="JPY",
                                     transaction_id=str(uuid.uuid4())), timeout=CALL_TIMEOUT_S)
    answer = wallet.Transfer(pb.TransferRequest(
        from_account=RICH, to_account=POOR, amount="1.00", currency="USD",
        transaction_id=TRANSFER_ID), timeout=CALL_TIMEOUT_S)
    assert answer.status == pb.SUCCEEDED


# -- "changes nothing" --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mark:
    position: int
    state_hash: str


def marks(cluster: LocalCluster) -> dict[int, Mark]:
    status = cluster.admin(NODE).ClusterStatus(pb.ClusterStatusRequest(local_only=True),
                                               timeout=CALL_TIMEOUT_S)
    found = {p.partition: Mark(p.applied_position, p.state_hash) for p in status.partitions}
    assert sorted(found) == list(range(PARTITIONS)), "n1 hosts every partition"
    return found


@dataclass
class ArchiveReplay:
    """One partition replayed from n1's archive, moved forward on demand."""

    directory: str
    state: StateMachine

    def advance_to(self, position: int) -> StateMachine:
        assert position >= self.state.position, "replays only go forward"

        def reached() -> bool:
            for record in read_archive(self.directory, self.state.partition):
                if record.position > position:
                    break
                if record.position > self.state.position:
                    self.state.apply_entry(decode_entry(record.entry_blob), record.log_index)
            return self.state.position == position

        wait_until(reached, f"n1's archive of partition {self.state.partition} to reach "
                            f"position {position}")
        return self.state


@dataclass
class Ledger:
    cluster: LocalCluster
    replays: dict[int, ArchiveReplay] = field(default_factory=dict)

    def replay(self, partition: int) -> ArchiveReplay:
        if partition not in self.replays:
            directory = archive_dir(str(self.cluster.node_dir(NODE)), partition)
            self.replays[partition] = ArchiveReplay(directory, StateMachine(partition))
        return self.replays[partition]

    def assert_unchanged(self, before: dict[int, Mark], after: dict[int, Mark],
                         recorded: frozenset[tuple[str, bytes]] = frozenset()) -> None:
        """Nothing changed between the marks but, at most, INSUFFICIENT_FUNDS records
        of the keys in `recorded` (the documented exception)."""
        for partition, was in before.items():
            now = after[partition]
            if now.position == was.position:
                assert now.state_hash == was.state_hash, f"partition {partition} changed"
                continue
            replay = self.replay(partition)
            if replay.state.position > was.position:  # an earlier check went past it
                replay.state = StateMachine(partition)
            state = replay.advance_to(was.position)
            assert state.state_hash() == was.state_hash, "the replay is not the live state"
            content_before = state.content_hash()
            dedup_before = dict(state.dedup)
            state = replay.advance_to(now.position)
            assert state.state_hash() == now.state_hash, "the replay is not the live state"
            added = {key: record for key, record in state.dedup.items()
                     if key not in dedup_before}
            assert set(added) <= recorded, f"partition {partition}: new dedup records {added}"
            assert all(record[4] == Code.INSUFFICIENT_FUNDS for record in added.values())
            content_now = (state.content_hash() - sum(
                canonical.digest(_dedup_record(key, record)) for key, record in added.items()))
            assert content_now % canonical.HASH_MODULUS == content_before, (
                f"partition {partition}: a refused request changed the ledger "
                f"(positions {was.position} -> {now.position})")


@pytest.fixture(scope="module")
def ledger(cluster: LocalCluster) -> Ledger:
    return Ledger(cluster)


def test_a_read_moves_the_position_and_the_state_hash_but_not_the_content(
    cluster: LocalCluster, ledger: Ledger,
) -> None:
    """Why the check compares content: a linearizable read appends a Barrier entry."""
    before = marks(cluster)
    cluster.wallet(NODE).GetBalance(pb.GetBalanceRequest(account_id=RICH),
                                    timeout=CALL_TIMEOUT_S)
    after = marks(cluster)
    partition = partition_of(RICH, PARTITIONS)
    assert after[partition].position > before[partition].position
    assert after[partition].state_hash != before[partition].state_hash
    ledger.assert_unchanged(before, after)


def test_the_check_catches_a_request_that_changed_the_ledger(
    cluster: LocalCluster, ledger: Ledger,
) -> None:
    before = marks(cluster)
    cluster.wallet(NODE).CreateAccount(pb.CreateAccountRequest(
        account_id="hostile-canary", currency="EUR"), timeout=CALL_TIMEOUT_S)
    with pytest.raises(AssertionError, match="changed the ledger"):
        ledger.assert_unchanged(before, marks(cluster))


def test_the_check_allows_only_the_recorded_key_of_an_overdraft(
    cluster: LocalCluster, ledger: Ledger,
) -> None:
    transaction_id = str(uuid.uuid4())
    before = marks(cluster)
    answer = call(cluster, "Withdraw", pb.WithdrawRequest(
        account_id=RICH, amount="100.01", currency="USD", transaction_id=transaction_id))
    assert (answer.status, answer.reason) == (PRECONDITION, "INSUFFICIENT_FUNDS")
    after = marks(cluster)
    with pytest.raises(AssertionError, match="new dedup records"):
        ledger.assert_unchanged(before, after)
    ledger.assert_unchanged(before, after, frozenset({(RICH, raw_id(transaction_id))}))


# -- calling and judging ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    status: grpc.StatusCode
    reason: str
    details: str
    response: Any


def call(cluster: LocalCluster, method: str, request: Message,
         service: str = "wallet", timeout_s: float = CALL_TIMEOUT_S) -> Answer:
    stub = cluster.wallet(NODE) if service == "wallet" else cluster.admin(NODE)
    try:
        response, _ = getattr(stub, method).with_call(request, timeout=timeout_s)
    except grpc.RpcError as exc:
        trailers = dict(exc.trailing_metadata() or ())
        return Answer(exc.code(), str(trailers.get(api.REASON_METADATA_KEY, "")),
                      exc.details() or "", None)
    return Answer(OK, "", "", response)


def assert_sane(answer: Answer) -> None:
    assert answer.status != grpc.StatusCode.UNKNOWN, f"an unhandled exception: {answer}"
    assert "Traceback" not in answer.details and 'File "' not in answer.details, answer
    assert len(answer.details) < 2_000, "a message quotes bad input only in part"


@dataclass(frozen=True, slots=True)
class Expect:
    """What an input class may get: statuses with their reasons, and the keys whose
    INSUFFICIENT_FUNDS outcome it may record."""

    allowed: frozenset[Refusal]
    recorded: frozenset[tuple[str, bytes]] = frozenset()


def check(cluster: LocalCluster, ledger: Ledger, method: str, request: Message,
          expect: Expect, service: str = "wallet") -> Answer:
    before = marks(cluster)
    answer = call(cluster, method, request, service)
    assert_sane(answer)
    assert (answer.status, answer.reason) in expect.allowed, (
        f"{method}: got {answer.status.name} {answer.reason!r} ({answer.details[:200]!r}), "
        f"expected one of {sorted((s.name, r) for s, r in expect.allowed)}")
    ledger.assert_unchanged(before, marks(cluster), expect.recorded)
    return answer


# -- hostile values ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Value:
    """A field's text and the refusal it earns on its own (None: well-formed)."""

    text: str
    refusal: Refusal | None = None


BAD_ACCOUNT_ID: Refusal = (INVALID, "INVALID_ACCOUNT_ID")
BAD_CURRENCY: Refusal = (INVALID, "INVALID_CURRENCY")
BAD_AMOUNT: Refusal = (INVALID, "INVALID_AMOUNT")
BAD_ID: Refusal = (INVALID, "INVALID_TRANSACTION_ID")
FUTURE_ID: Refusal = (INVALID, "TRANSACTION_ID_IN_FUTURE")
EXPIRED_ID: Refusal = (PRECONDITION, "TRANSACTION_ID_EXPIRED")

ten_kb = "a" * 10_240
_USD_AMOUNT = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]{1,2})?", re.ASCII)


def is_usd_amount(text: str) -> bool:
    """The rule of docs/http-api.md, written independently of ledger.money: plain ASCII
    decimals, at most 2 decimals for USD, from 0.01 to 10^18 minor units."""
    if _USD_AMOUNT.fullmatch(text) is None:
        return False
    whole, _, fraction = text.partition(".")
    amount_minor = int(whole) * 100 + int(fraction.ljust(2, "0"))
    return 0 < amount_minor <= AMOUNT_MAX_MINOR


bad_account_ids = st.one_of(
    st.sampled_from([
        "", ten_kb, "a" * 65, "-alice", ".alice", "ali ce", "alice\n", "alice\x00",
        "alice\u200f", "\u202ealice", "\u0301", "a\u0301", "😀", "\uff41lice", "٣", "alice/..",
        "alice;DROP TABLE", "%00", "\ufeffalice",
    ]),
    st.text(max_size=80).filter(lambda text: ACCOUNT_ID_RE.fullmatch(text) is None),
).map(lambda text: Value(text, BAD_ACCOUNT_ID))

bad_currencies = st.one_of(
    st.sampled_from(["", "usd", "Usd", "US", "USDD", "XYZ", "XAU", "XXX", "XDR",
                     "\uff35\uff33\uff24", "US\x00", " USD", "USD ", "€", ten_kb]),
    st.text(max_size=6).filter(lambda text: len(text) != 3 or not text.isupper()),
).map(lambda text: Value(text, BAD_CURRENCY))

bad_usd_amounts = st.one_of(
    st.sampled_from([
        "", "0", "0.00", "-1", "-1.00", "-0.01", "+1", "1e5", "1E2", " 1", "1 ", "1.", ".5",
        "01", "٣", "\uff11", "1,000", "1_000", "0x10", "NaN", "nan", "inf", "-inf", "Infinity",
        "1.001", "0." + "0" * 29 + "1", "1." + "1" * 30, str(2**63), str(2**64),
        str(AMOUNT_MAX_MINOR // 100 + 1), "9" * 19, "9" * (AMOUNT_TEXT_MAX_CHARS + 1),
        ten_kb, "1\x00", "1\u200f",
    ]),
    st.integers(max_value=0).map(str),
    st.integers(min_value=AMOUNT_MAX_MINOR // 100 + 1).map(str),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.floats().map(str),
    st.text(max_size=45),
).filter(lambda text: not is_usd_amount(text)).map(lambda text: Value(text, BAD_AMOUNT))


def uuid7_at(unix_ms: int) -> str:
    raw = bytearray(uuid.uuid4().bytes)
    raw[:6] = unix_ms.to_bytes(6, "big")
    raw[6] = 0x70 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    return str(uuid.UUID(bytes=bytes(raw)))


def _now_ms() -> int:
    return int(time.time() * 1000)


malformed_ids = st.one_of(
    st.sampled_from([
        "", "not-a-uuid", "0f8fad5bd9cb469fa16570867728950e",
        "{0f8fad5b-d9cb-469f-a165-70867728950e}",
        "urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e",
        "0f8fad5b-d9cb-469f-a165-70867728950e\n", " 0f8fad5b-d9cb-469f-a165-70867728950e",
        "0f8fad5b-d9cb-469f-a165-7086772895٣e", "0f8fad5b-d9cb-469f-a165-70867728950g",
        "0f8fad5b_d9cb_469f_a165_70867728950e", ten_kb, "😀" * 36,
    ]),
    st.text(max_size=40).filter(lambda text: len(text) != 36),
).map(lambda text: Value(text, BAD_ID))
future_ids = st.integers(min_value=10 * 60_000, max_value=10 * 365 * 86_400_000).map(
    lambda ahead_ms: Value(uuid7_at(_now_ms() + ahead_ms), FUTURE_ID))
expired_ids = st.integers(min_value=8 * 86_400_000, max_value=_now_ms()).map(
    lambda ago_ms: Value(uuid7_at(_now_ms() - ago_ms), EXPIRED_ID))
bad_ids = st.one_of(malformed_ids, future_ids, expired_ids)
fresh_ids = st.builds(uuid.uuid4).map(str)
"""Never used before, in this run or an earlier example: hypothesis's own uuids repeat
across examples, and a repeated id is (rightly) a replay or an ID_CONFLICT."""


def raw_id(text: str) -> bytes:
    return uuid.UUID(text).bytes


def refusals_of(values: list[Value]) -> frozenset[Refusal]:
    """The refusals of every malformed field the server judges: any one of them is right
    (which field it reports first is its choice, not the contract)."""
    found = frozenset(v.refusal for v in values if v.refusal is not None)
    assert found, "a malformed request has at least one malformed field"
    return found


# -- request strategies ------------------------------------------------------------------------


@st.composite
def malformed_money(draw: st.DrawFn, kind: type[pb.DepositRequest] | type[pb.WithdrawRequest]
                    ) -> tuple[Message, Expect]:
    """A deposit or withdrawal with at least one malformed field."""
    bad = draw(st.sets(st.sampled_from(["account", "currency", "amount", "id"]), min_size=1))
    account = draw(bad_account_ids) if "account" in bad else Value(RICH)
    currency = draw(bad_currencies) if "currency" in bad else Value("USD")
    amount = draw(bad_usd_amounts) if "amount" in bad else Value("1.00")
    transaction_id = draw(bad_ids) if "id" in bad else Value(draw(fresh_ids))
    request = kind(account_id=account.text, currency=currency.text, amount=amount.text,
                   transaction_id=transaction_id.text)
    judged = [account, currency, transaction_id]
    if currency.refusal is None:  # an amount is only judged in a known currency
        judged.append(amount)
    return request, Expect(refusals_of(judged))


@st.composite
def impossible_deposits(draw: st.DrawFn) -> tuple[Message, Expect]:
    """Well-formed deposits that the ledger refuses without recording anything, and a
    retry of the seeded one, which is answered from the dedup table."""
    case = draw(st.sampled_from(["ghost", "mismatch", "conflict", "conflict-kind", "retry"]))
    amount_minor = draw(st.integers(1, AMOUNT_MAX_MINOR))
    amount = f"{amount_minor // 100}.{amount_minor % 100:02d}"
    if case == "ghost":
        return pb.DepositRequest(account_id=GHOST, amount=amount, currency="USD",
                                 transaction_id=draw(fresh_ids)), Expect(frozenset({
                                     (NOT_FOUND, "ACCOUNT_NOT_FOUND")}))
    if case == "mismatch":
        return pb.DepositRequest(account_id=draw(st.sampled_from([RICH, YEN])), amount=amount,
                                 currency=draw(st.sampled_from(["EUR", "GBP", "BHD"])),
                                 transaction_id=draw(fresh_ids)), Expect(frozenset({
                                     (PRECONDITION, "CURRENCY_MISMATCH")}))
    if case == "conflict":
        other = amount if amount != SEED_DEPOSIT[0] else "7.00"
        return pb.DepositRequest(account_id=RICH, amount=other, currency="USD",
                                 transaction_id=DEPOSIT_ID), Expect(frozenset({
                                     (EXISTS, "ID_CONFLICT")}))
    if case == "conflict-kind":
        return pb.WithdrawRequest(account_id=RICH, amount=SEED_DEPOSIT[0], currency="USD",
                                  transaction_id=DEPOSIT_ID), Expect(frozenset({
                                      (EXISTS, "ID_CONFLICT")}))
    return pb.DepositRequest(account_id=RICH, amount=SEED_DEPOSIT[0], currency="USD",
                             transaction_id=DEPOSIT_ID), Expect(frozenset({ANSWERED}))


@st.composite
def overdrawing_withdrawals(draw: st.DrawFn) -> tuple[Message, Expect]:
    amount_minor = draw(st.integers(RICH_BALANCE_MINOR + 1, AMOUNT_MAX_MINOR))
    transaction_id = draw(fresh_ids)
    request = pb.WithdrawRequest(account_id=RICH, currency="USD", transaction_id=transaction_id,
                                 amount=f"{amount_minor // 100}.{amount_minor % 100:02d}")
    return request, Expect(frozenset({(PRECONDITION, "INSUFFICIENT_FUNDS")}),
                           frozenset({(RICH, raw_id(transaction_id))}))


@st.composite
def malformed_transfers(draw: st.DrawFn) -> tuple[pb.TransferRequest, Expect]:
    fields_bad = draw(st.sets(st.sampled_from(["from", "to", "currency", "amount", "id"]),
                              min_size=1))
    source = draw(bad_account_ids) if "from" in fields_bad else Value(RICH)
    target = (draw(bad_account_ids) if "to" in fields_bad
              else Value(draw(st.sampled_from([POOR, FAR]))))
    currency = draw(bad_currencies) if "currency" in fields_bad else Value("USD")
    amount = draw(bad_usd_amounts) if "amount" in fields_bad else Value("1.00")
    transaction_id = draw(bad_ids) if "id" in fields_bad else Value(draw(fresh_ids))
    request = pb.TransferRequest(from_account=source.text, to_account=target.text,
                                 currency=currency.text, amount=amount.text,
                                 transaction_id=transaction_id.text)
    judged = [source, target, currency, transaction_id]
    if currency.refusal is None:
        judged.append(amount)
    return request, Expect(refusals_of(judged))


@st.composite
def impossible_transfers(draw: st.DrawFn) -> tuple[pb.TransferRequest, Expect]:
    """Well-formed transfers the ledger refuses; only INSUFFICIENT_FUNDS is recorded."""
    case = draw(st.sampled_from(["same", "ghost-from", "ghost-to", "mismatch", "overdraw",
                                 "conflict", "retry"]))
    transaction_id = draw(fresh_ids)
    amount_minor = draw(st.integers(1, RICH_BALANCE_MINOR))
    amount = f"{amount_minor // 100}.{amount_minor % 100:02d}"

    def transfer(source: str, target: str, money: str = amount, currency: str = "USD",
                 key: str = transaction_id) -> pb.TransferRequest:
        return pb.TransferRequest(from_account=source, to_account=target, amount=money,
                                  currency=currency, transaction_id=key)

    if case == "same":
        account = draw(st.sampled_from([RICH, POOR, FAR, GHOST]))
        return transfer(account, account), Expect(frozenset({(PRECONDITION, "SAME_ACCOUNT")}))
    if case == "ghost-from":
        return (transfer(GHOST, draw(st.sampled_from([RICH, FAR]))),
                Expect(frozenset({(NOT_FOUND, "ACCOUNT_NOT_FOUND")})))
    if case == "ghost-to":
        return transfer(RICH, GHOST), Expect(frozenset({(NOT_FOUND, "ACCOUNT_NOT_FOUND")}))
    if case == "mismatch":
        target, currency = draw(st.sampled_from([(POOR, "EUR"), (YEN, "USD"), (FAR, "EUR")]))
        money = amount if currency != "JPY" else str(amount_minor)
        return (transfer(RICH, target, money, currency),
                Expect(frozenset({(PRECONDITION, "CURRENCY_MISMATCH")})))
    if case == "overdraw":
        over_minor = draw(st.integers(RICH_BALANCE_MINOR + 1, AMOUNT_MAX_MINOR))
        money = f"{over_minor // 100}.{over_minor % 100:02d}"
        return (transfer(RICH, draw(st.sampled_from([POOR, FAR])), money),
                Expect(frozenset({(PRECONDITION, "INSUFFICIENT_FUNDS")}),
                       frozenset({(RICH, raw_id(transaction_id))})))
    if case == "conflict":
        other = draw(st.sampled_from([(FAR, "1.00", "USD"), (POOR, "2.00", "USD"),
                                      (YEN, "1", "JPY"), (POOR, "1.00", "EUR")]))
        return (transfer(RICH, other[0], other[1], other[2], TRANSFER_ID),
                Expect(frozenset({(EXISTS, "ID_CONFLICT")})))
    source, target, money, currency = SEED_TRANSFER
    return transfer(source, target, money, currency, TRANSFER_ID), Expect(frozenset({ANSWERED}))


hostile_transfers = st.one_of(malformed_transfers(), impossible_transfers())


# -- WalletService ---------------------------------------------------------------------------


@FUZZ
@given(case=st.one_of(malformed_money(pb.DepositRequest), impossible_deposits()))
def test_hostile_deposits_are_refused_precisely_and_change_nothing(
    cluster: LocalCluster, ledger: Ledger, case: tuple[Message, Expect],
) -> None:
    request, expect = case
    method = "Withdraw" if isinstance(request, pb.WithdrawRequest) else "Deposit"
    check(cluster, ledger, method, request, expect)


@FUZZ
@given(case=st.one_of(malformed_money(pb.WithdrawRequest), overdrawing_withdrawals()))
def test_hostile_withdrawals_are_refused_precisely_and_change_nothing(
    cluster: LocalCluster, ledger: Ledger, case: tuple[Message, Expect],
) -> None:
    request, expect = case
    check(cluster, ledger, "Withdraw", request, expect)


@FUZZ
@given(case=hostile_transfers)
def test_hostile_transfers_are_refused_precisely_and_change_nothing(
    cluster: LocalCluster, ledger: Ledger, case: tuple[pb.TransferRequest, Expect],
) -> None:
    request, expect = case
    check(cluster, ledger, "Transfer", request, expect)


@FUZZ
@given(cases=st.lists(hostile_transfers, max_size=12), duplicates=st.integers(0, 3))
def test_hostile_batches_fail_item_by_item_and_change_nothing(
    cluster: LocalCluster, ledger: Ledger, cases: list[tuple[pb.TransferRequest, Expect]],
    duplicates: int,
) -> None:
    items = cases + cases[:duplicates]  # the same items again, in the same batch
    request = pb.TransferBatchRequest(transfers=[item for item, _ in items])
    recorded = frozenset(key for _, expect in items for key in expect.recorded)
    answer = check(cluster, ledger, "TransferBatch", request,
                   Expect(frozenset({ANSWERED}), recorded))
    response: pb.TransferBatchResponse = answer.response
    assert len(response.statuses) == len(items)
    for index, (_, expect) in enumerate(items):
        if expect.allowed == {ANSWERED}:
            assert response.statuses[index] == pb.SUCCEEDED  # a retry of the seeded one
            continue
        assert response.statuses[index] == pb.FAILED
        assert response.reasons[index] in {reason for _, reason in expect.allowed}
    assert response.failed == sum(1 for s in response.statuses if s == pb.FAILED)


def test_an_empty_batch_is_answered_with_nothing(cluster: LocalCluster, ledger: Ledger) -> None:
    answer = check(cluster, ledger, "TransferBatch", pb.TransferBatchRequest(),
                   Expect(frozenset({ANSWERED})))
    assert list(answer.response.statuses) == []


def test_a_batch_over_the_limit_is_refused_whole(cluster: LocalCluster, ledger: Ledger) -> None:
    item = pb.TransferRequest(from_account=RICH, to_account=POOR, amount="0.01",
                              currency="USD", transaction_id=str(uuid.uuid4()))
    request = pb.TransferBatchRequest(transfers=[item] * (TRANSFERS_PER_BATCH_MAX + 1))
    answer = check(cluster, ledger, "TransferBatch", request,
                   Expect(frozenset({(INVALID, "INVALID_ARGUMENT")})))
    assert f"at most {TRANSFERS_PER_BATCH_MAX}" in answer.details


@st.composite
def hostile_account_creations(draw: st.DrawFn) -> tuple[Message, Expect]:
    if draw(st.booleans()):  # malformed
        bad = draw(st.sets(st.sampled_from(["account", "currency", "request"]), min_size=1))
        account = draw(bad_account_ids) if "account" in bad else Value(GHOST)
        currency = draw(bad_currencies) if "currency" in bad else Value("USD")
        request_id = draw(malformed_ids.filter(lambda v: v.text != "")) if "request" in bad \
            else Value(draw(fresh_ids))
        request = pb.CreateAccountRequest(account_id=account.text, currency=currency.text,
                                          request_id=request_id.text)
        return request, Expect(refusals_of([account, currency, request_id]))
    existing = draw(st.sampled_from(sorted(SEEDED_ACCOUNTS)))
    key = draw(st.sampled_from(["", RICH_REQUEST_ID, draw(fresh_ids)]))
    code = draw(st.sampled_from(["USD", "JPY", "EUR"]))
    replay = SEEDED_ACCOUNTS[existing] == (code, key)  # the same creation again
    return (pb.CreateAccountRequest(account_id=existing, currency=code, request_id=key),
            Expect(frozenset({ANSWERED if replay else (EXISTS, "ACCOUNT_EXISTS")})))


@FUZZ
@given(case=hostile_account_creations())
def test_hostile_account_creations_are_refused_and_change_nothing(
    cluster: LocalCluster, ledger: Ledger, case: tuple[Message, Expect],
) -> None:
    request, expect = case
    check(cluster, ledger, "CreateAccount", request, expect)


some_accounts = st.one_of(bad_account_ids, st.sampled_from([RICH, YEN, FAR, GHOST]).map(Value))


@FUZZ
@given(account=some_accounts, consistency=st.integers(0, 2**31 - 1),
       min_position=st.sampled_from([0, 1]))
def test_hostile_balance_reads_are_answered_precisely_and_change_nothing(
    cluster: LocalCluster, ledger: Ledger, account: Value, consistency: int, min_position: int,
) -> None:
    request = pb.GetBalanceRequest(account_id=account.text, consistency=consistency,  # type: ignore[arg-type]
                                   min_position=min_position)
    allowed = ({account.refusal} if account.refusal is not None
               else {(NOT_FOUND, "ACCOUNT_NOT_FOUND")} if account.text == GHOST else {ANSWERED})
    check(cluster, ledger, "GetBalance", request, Expect(frozenset(allowed)))


def test_a_read_past_the_end_of_the_log_waits_only_until_its_deadline(
    cluster: LocalCluster, ledger: Ledger,
) -> None:
    request = pb.GetBalanceRequest(account_id=RICH, consistency=pb.STALE,
                                   min_position=2**64 - 1)
    started = time.monotonic()
    answer = call(cluster, "GetBalance", request, timeout_s=1.0)
    assert answer.status in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    assert time.monotonic() - started < 5.0


@FUZZ
@given(source=some_accounts,
       transaction_id=st.one_of(bad_ids, st.sampled_from([TRANSFER_ID, DEPOSIT_ID]).map(Value),
                                fresh_ids.map(Value)),
       consistency=st.integers(0, 2**31 - 1))
def test_hostile_transfer_lookups_are_answered_precisely_and_change_nothing(
    cluster: LocalCluster, ledger: Ledger, source: Value, transaction_id: Value,
    consistency: int,
) -> None:
    request = pb.GetTransferRequest(from_account=source.text, consistency=consistency,  # type: ignore[arg-type]
                                    transaction_id=transaction_id.text)
    malformed = [v.refusal for v in (source, transaction_id)
                 if v.refusal is not None and v.refusal != EXPIRED_ID
                 and v.refusal != FUTURE_ID]
    if malformed:
        allowed = set(malformed)
    elif source.text == RICH and transaction_id.text in (TRANSFER_ID, DEPOSIT_ID):
        allowed = {ANSWERED}
    else:  # lookups do not judge an id's age: an old id is simply not found
        allowed = {(NOT_FOUND, "TRANSFER_NOT_FOUND")}
    check(cluster, ledger, "GetTransfer", request, Expect(frozenset(allowed)))


garbage_page_tokens = st.one_of(
    st.sampled_from(["-1", "1.5", "1e3", " 1", "٣", "²", "0x10", "1\x00", ten_kb,
                     "9" * 5_000, "9" * 10_240, "abc"]),
    st.text(min_size=1, max_size=30).filter(lambda t: not (t.isascii() and t.isdigit())),
)


@FUZZ
@given(account=some_accounts,
       page_token=st.one_of(st.just(""), st.integers(0, 2**70).map(str), garbage_page_tokens),
       limit=st.integers(0, 2**32 - 1), order=st.integers(0, 2**31 - 1))
def test_hostile_history_pages_are_answered_precisely_and_change_nothing(
    cluster: LocalCluster, ledger: Ledger, account: Value, page_token: str, limit: int,
    order: int,
) -> None:
    request = pb.ListTransfersRequest(account_id=account.text, page_token=page_token,
                                      limit=limit, order=order)  # type: ignore[arg-type]
    token_ok = page_token == "" or (page_token.isascii() and page_token.isdigit()
                                    and len(page_token) <= api.PAGE_TOKEN_CHARS_MAX)
    allowed: set[Refusal] = set()
    if account.refusal is not None:
        allowed.add(account.refusal)
    if not token_ok:
        allowed.add((INVALID, "INVALID_ARGUMENT"))
    answer = check(cluster, ledger, "ListTransfers", request,
                   Expect(frozenset(allowed or {ANSWERED})))
    if answer.status == OK:
        assert len(answer.response.transfers) <= 1_000


@FUZZ
@given(account=some_accounts,
       at=st.one_of(st.none(), st.integers(0, 2**64 - 1).map(lambda p: ("position", p)),
                    st.integers(-(2**63), 2**63 - 1).map(lambda t: ("time_ms", t))))
def test_hostile_point_in_time_reads_are_answered_precisely_and_change_nothing(
    cluster: LocalCluster, ledger: Ledger, account: Value, at: tuple[str, int] | None,
) -> None:
    request = pb.GetBalanceAtRequest(account_id=account.text)
    if at is not None:
        setattr(request, at[0], at[1])
    if account.refusal is not None:
        allowed = {account.refusal} | ({(INVALID, "INVALID_ARGUMENT")} if at is None else set())
    elif at is None:
        allowed = {(INVALID, "INVALID_ARGUMENT")}
    elif account.text == GHOST:
        allowed = {(NOT_FOUND, "ACCOUNT_NOT_FOUND")}
    else:  # before the account existed it is not found; after, its balance then
        allowed = {ANSWERED, (NOT_FOUND, "ACCOUNT_NOT_FOUND")}
    check(cluster, ledger, "GetBalanceAt", request, Expect(frozenset(allowed)))


@FUZZ
@given(source=some_accounts, transaction_id=st.one_of(bad_ids, st.just(Value(TRANSFER_ID)),
                                                      fresh_ids.map(Value)))
def test_hostile_aborts_are_refused_precisely_and_change_nothing(
    cluster: LocalCluster, ledger: Ledger, source: Value, transaction_id: Value,
) -> None:
    malformed = {v.refusal for v in (source, transaction_id) if v.refusal is not None}
    applied = (source.text, transaction_id.text) == (RICH, TRANSFER_ID)
    if not malformed and not applied:
        source = Value(GHOST)  # aborting a new id of a real account is a valid write
    request = pb.AbortTransferRequest(from_account=source.text,
                                      transaction_id=transaction_id.text)
    if malformed:
        allowed = malformed
    elif applied:
        allowed = {ANSWERED}  # the transfer was applied: its outcome stands
    else:
        allowed = {(NOT_FOUND, "ACCOUNT_NOT_FOUND")}
    answer = check(cluster, ledger, "AbortTransfer", request, Expect(frozenset(allowed)))
    if answer.status == OK:
        assert answer.response.status == pb.SUCCEEDED


# -- AdminService's inputs ---------------------------------------------------------------------


@FUZZ
@given(source=some_accounts, transaction_id=st.one_of(bad_ids, fresh_ids.map(Value),
                                                      st.just(Value(TRANSFER_ID))))
def test_hostile_force_fails_are_refused_precisely_and_change_nothing(
    cluster: LocalCluster, ledger: Ledger, source: Value, transaction_id: Value,
) -> None:
    request = pb.ForceFailTransferRequest(from_account=source.text,
                                          transaction_id=transaction_id.text)
    malformed = {v.refusal for v in (source, transaction_id)
                 if v.refusal is not None and v.refusal not in (EXPIRED_ID, FUTURE_ID)}
    allowed = malformed or {(PRECONDITION, "NOT_IN_FLIGHT")}
    check(cluster, ledger, "ForceFailTransfer", request, Expect(frozenset(allowed)), "admin")


NODE_ID = re.compile(r"[a-z0-9-]{1,32}", re.ASCII)
bad_node_ids = st.one_of(
    st.sampled_from(["", "N1", "n1\x00", "n1 ", "a" * 33, "\u0301", "😀", ten_kb]),
    st.text(max_size=40).filter(lambda text: NODE_ID.fullmatch(text) is None))


@FUZZ
@given(partition=st.integers(PARTITIONS, 2**32 - 1))
def test_snapshots_of_partitions_not_hosted_are_not_found_and_change_nothing(
    cluster: LocalCluster, ledger: Ledger, partition: int,
) -> None:
    check(cluster, ledger, "Snapshot", pb.SnapshotRequest(partition=partition),
          Expect(frozenset({(NOT_FOUND, "PARTITION_NOT_HOSTED")})), "admin")


@FUZZ
@given(method=st.sampled_from(["AddReplica", "RemoveReplica"]),
       partition=st.integers(0, 2**32 - 1), node_id=bad_node_ids)
def test_membership_changes_naming_malformed_nodes_are_refused_and_change_nothing(
    cluster: LocalCluster, ledger: Ledger, method: str, partition: int, node_id: str,
) -> None:
    """Only malformed node ids: a well-formed change would (rightly) change the cluster."""
    kind = pb.AddReplicaRequest if method == "AddReplica" else pb.RemoveReplicaRequest
    answer = check(cluster, ledger, method, kind(partition=partition, node_id=node_id),
                   Expect(frozenset({(INVALID, "INVALID_ARGUMENT")})), "admin")
    assert "node_id" in answer.details


# -- bytes that are not the method's message -------------------------------------------------

WALLET_REQUESTS: dict[str, type[Message]] = {
    "CreateAccount": pb.CreateAccountRequest, "Deposit": pb.DepositRequest,
    "Withdraw": pb.WithdrawRequest, "Transfer": pb.TransferRequest,
    "TransferBatch": pb.TransferBatchRequest, "GetBalance": pb.GetBalanceRequest,
    "GetTransfer": pb.GetTransferRequest, "ListTransfers": pb.ListTransfersRequest,
    "GetBalanceAt": pb.GetBalanceAtRequest, "AbortTransfer": pb.AbortTransferRequest,
}
OTHER_MESSAGES: list[Message] = [
    pb.GetBalanceAtRequest(account_id=RICH, position=3),
    pb.ClusterStatusRequest(local_only=True),
    pb.ListTransfersRequest(account_id=RICH, limit=7, order=pb.NEWEST_FIRST),
    pb.TransferBatchRequest(transfers=[pb.TransferRequest(from_account=RICH)]),
    pb.SnapshotRequest(partition=3),
    pb.Credit(sequence=1, amount_minor=-5, transaction_id=b"\xff" * 16),
    pb.TransferStep(name="x", at_ms=-(2**63)),
]
# Hand-made wire data: a string field sent as a varint, a truncated length, a length
# past the end, a group tag, a field number 0, a 10-byte varint that overflows.
WIRE_SCRAPS = [b"\x08\x05", b"\x0a\x05ab", b"\x0a\xff\xff\xff\xff\x0f", b"\x0b\x0c",
               b"\x00\x01", b"\x18" + b"\xff" * 10 + b"\x01", b"\x12\x03\xff\xfe\xfd",
               b"\x0a\x02\xc3\x28"]


@FUZZ
@given(method=st.sampled_from(sorted(WALLET_REQUESTS)),
       payload=st.one_of(st.binary(max_size=300), st.sampled_from(WIRE_SCRAPS),
                         st.sampled_from(OTHER_MESSAGES).map(lambda m: m.SerializeToString())))
def test_bytes_that_are_not_the_message_never_crash_the_node(
    cluster: LocalCluster, ledger: Ledger, method: str, payload: bytes,
) -> None:
    try:
        WALLET_REQUESTS[method].FromString(payload)
        parses = True
    except DecodeError:
        parses = False
    before = marks(cluster)
    rpc = cluster.channel(NODE).unary_unary(f"/raftwallet.wallet.v1.WalletService/{method}")
    try:
        rpc(payload, timeout=CALL_TIMEOUT_S)
        answer = Answer(OK, "", "", None)
    except grpc.RpcError as exc:
        trailers = dict(exc.trailing_metadata() or ())
        answer = Answer(exc.code(), str(trailers.get(api.REASON_METADATA_KEY, "")),
                        exc.details() or "", None)
    assert_sane(answer)
    if not parses:  # node.services.request_guard refuses it before the servicer sees it
        assert (answer.status, answer.reason) == (INVALID, "MALFORMED_REQUEST"), answer
        assert "Error" not in answer.details and "<class" not in answer.details
    else:  # it decodes to some request: refused like any other (or an answer to a read)
        assert answer.status in {OK, INVALID, NOT_FOUND, PRECONDITION, EXISTS}, answer
    ledger.assert_unchanged(before, marks(cluster))
    assert call(cluster, "GetBalance", pb.GetBalanceRequest(account_id=RICH)).status == OK


# -- the bugs this fuzz found, one example each ----------------------------------------------


def test_a_page_token_of_thousands_of_digits_is_invalid_argument(
    cluster: LocalCluster, ledger: Ledger,
) -> None:
    """It was INTERNAL: int() refuses strings of more than 4300 digits."""
    check(cluster, ledger, "ListTransfers",
          pb.ListTransfersRequest(account_id=RICH, page_token="9" * 5_000),
          Expect(frozenset({(INVALID, "INVALID_ARGUMENT")})))


def test_bytes_that_do_not_decode_are_invalid_argument_and_name_no_internals(
    cluster: LocalCluster,
) -> None:
    """They were UNKNOWN, with the decoder's exception class in the message."""
    rpc = cluster.channel(NODE).unary_unary("/raftwallet.wallet.v1.WalletService/Transfer")
    with pytest.raises(grpc.RpcError) as excinfo:
        rpc(b"\x0a\xff\xff\xff\xff\x0f", timeout=CALL_TIMEOUT_S)
    error: Any = excinfo.value
    assert error.code() == INVALID
    assert dict(error.trailing_metadata())[api.REASON_METADATA_KEY] == "MALFORMED_REQUEST"
    assert "DecodeError" not in error.details()


def test_a_10_kb_currency_is_quoted_only_in_part(cluster: LocalCluster, ledger: Ledger) -> None:
    """The whole 10 KB used to come back in the message."""
    answer = check(cluster, ledger, "CreateAccount",
                   pb.CreateAccountRequest(account_id=GHOST, currency=ten_kb),
                   Expect(frozenset({BAD_CURRENCY})))
    assert len(answer.details) < 200


# -- message size limits ---------------------------------------------------------------------


def test_the_request_limit_holds_the_largest_batch_of_longest_fields() -> None:
    longest = pb.TransferRequest(from_account="a" * 64, to_account="b" * 64,
                                 amount="9" * AMOUNT_TEXT_MAX_CHARS, currency="USD",
                                 transaction_id=str(uuid.uuid4()))
    batch = pb.TransferBatchRequest(transfers=[longest] * TRANSFERS_PER_BATCH_MAX)
    assert batch.ByteSize() <= REQUEST_BYTES_MAX
    assert REQUEST_BYTES_MAX < 5 * 2**20


def test_the_request_limit_holds_the_largest_credit_batch_between_nodes() -> None:
    longest = pb.Credit(sequence=2**64 - 1, from_account="a" * 64, to_account="b" * 64,
                        amount_minor=-(2**63), currency="USD", transaction_id=b"\xff" * 16)
    request = pb.ApplyCreditsRequest(source_partition=2**32 - 1,
                                     destination_partition=2**32 - 1,
                                     source_resolved_through=2**64 - 1,
                                     credits=[longest] * CREDITS_PER_BATCH_MAX)
    assert request.ByteSize() <= REQUEST_BYTES_MAX


@pytest.mark.parametrize("size_bytes", [5 * 2**20, 20 * 2**20])
def test_an_oversized_request_is_refused_and_the_node_keeps_serving(
    cluster: LocalCluster, ledger: Ledger, size_bytes: int,
) -> None:
    item = pb.TransferRequest(from_account=RICH, to_account=POOR, amount="0.01",
                              currency="USD", transaction_id=str(uuid.uuid4()))
    count = size_bytes // item.ByteSize() + 1
    request = pb.TransferBatchRequest(transfers=[item] * count)
    assert request.ByteSize() > size_bytes
    answer = check(cluster, ledger, "TransferBatch", request,
                   Expect(frozenset({(grpc.StatusCode.RESOURCE_EXHAUSTED, "")})))
    assert "larger than max" in answer.details
    assert call(cluster, "GetBalance", pb.GetBalanceRequest(account_id=RICH)).status == OK


def test_an_oversized_single_field_is_refused_and_the_node_keeps_serving(
    cluster: LocalCluster, ledger: Ledger,
) -> None:
    request = pb.DepositRequest(account_id="a" * (6 * 2**20), amount="1.00", currency="USD",
                                transaction_id=str(uuid.uuid4()))
    check(cluster, ledger, "Deposit", request,
          Expect(frozenset({(grpc.StatusCode.RESOURCE_EXHAUSTED, "")})))
    assert call(cluster, "GetBalance", pb.GetBalanceRequest(account_id=RICH)).status == OK


def test_the_seeded_books_are_intact_after_all_of_it(cluster: LocalCluster) -> None:
    """Run last in the module: whatever came before, the seeded balances stand."""
    for account, expected in ((RICH, "100.00"), (POOR, "1.00"), (YEN, "500"), (FAR, "0.00")):
        response = cluster.wallet(NODE).GetBalance(pb.GetBalanceRequest(account_id=account),
                                                   timeout=CALL_TIMEOUT_S)
        assert response.balance == expected
