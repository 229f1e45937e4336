"""The HTTP gateway's error contract (issue #14): RFC 9457 problems, the one table from
gRPC statuses to HTTP, and the Idempotency-Key header.

The gateway is served by uvicorn on a loopback port in front of the in-process fake node
(tests/fake_wallet_server.py), which can answer any gRPC status cheaply; the same
rules against a real cluster are in tests/test_http_gateway.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from client.errors import OutcomeUnknown, WalletError
from ledger.results import Code
from node.gateway.app import create_app, http_error_of
from node.gateway.problems import HTTP_OF_GRPC, TITLES, problem_type, title_of
from tests.cluster_harness import WAIT_S
from tests.fake_wallet_server import FakeWalletServer, running_fake
from tests.gateway_support import assert_documented, assert_problem, post, serving

TRANSFER = "/v1/wallet/balance_transfer"
SECRET = "node detail /var/lib/secret"


def new_id() -> str:
    return str(uuid.uuid4())


def transfer_body(transaction_id: str | None = None, amount: str = "1.00") -> dict[str, Any]:
    body: dict[str, Any] = {"from_account": "alice", "to_account": "bob", "amount": amount,
                            "currency": "USD"}
    if transaction_id is not None:
        body["transaction_id"] = transaction_id
    return body


# --- the status table -------------------------------------------------------------------

EXPECTED: dict[grpc.StatusCode, tuple[int, bool]] = {
    # gRPC status: (HTTP status, answered with Retry-After)
    grpc.StatusCode.OK: (500, False),
    grpc.StatusCode.CANCELLED: (503, True),
    grpc.StatusCode.UNKNOWN: (500, False),
    grpc.StatusCode.INVALID_ARGUMENT: (400, False),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, True),
    grpc.StatusCode.NOT_FOUND: (404, False),
    grpc.StatusCode.ALREADY_EXISTS: (409, False),
    grpc.StatusCode.PERMISSION_DENIED: (500, False),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, True),
    grpc.StatusCode.FAILED_PRECONDITION: (422, False),
    grpc.StatusCode.ABORTED: (500, False),
    grpc.StatusCode.OUT_OF_RANGE: (500, False),
    grpc.StatusCode.UNIMPLEMENTED: (501, False),
    grpc.StatusCode.INTERNAL: (500, False),
    grpc.StatusCode.UNAVAILABLE: (503, True),
    grpc.StatusCode.DATA_LOSS: (500, False),
    grpc.StatusCode.UNAUTHENTICATED: (500, False),
}
"""The specification of HTTP_OF_GRPC, one row per gRPC status."""


def test_the_table_has_one_row_for_every_grpc_status() -> None:
    assert set(HTTP_OF_GRPC) == set(grpc.StatusCode) == set(EXPECTED)


@pytest.mark.parametrize("status", list(grpc.StatusCode), ids=lambda s: str(s.name))
def test_every_grpc_status_maps_to_its_http_status(status: grpc.StatusCode) -> None:
    mapped = http_error_of(WalletError(status, SECRET, "SOME_REASON"))
    http_status, transient = EXPECTED[status]
    assert mapped.status == http_status
    assert mapped.retry_after_s == (1 if transient else None)
    if http_status == 500:  # the status name only: the cluster's words stay in the log
        assert mapped.code == status.name and "secret" not in mapped.message
    else:
        assert mapped.code == "SOME_REASON"
    if transient:  # the cluster's words are not the client's business either
        assert "secret" not in mapped.message and status.name in mapped.message


@pytest.mark.parametrize("status", [s for s, (_, transient) in EXPECTED.items() if transient],
                         ids=lambda s: str(s.name))
def test_an_unknown_outcome_has_the_http_status_of_the_failure_that_ended_the_retries(
    status: grpc.StatusCode,
) -> None:
    transaction_id = new_id()
    mapped = http_error_of(OutcomeUnknown(status, SECRET, transaction_id))
    assert (mapped.status, mapped.code, mapped.retry_after_s) == (
        EXPECTED[status][0], "OUTCOME_UNKNOWN", 1)
    assert transaction_id in mapped.message and "same id" in mapped.message


# --- problem types ----------------------------------------------------------------------


def test_a_problem_type_is_the_reason_as_a_relative_uri() -> None:
    assert problem_type("INSUFFICIENT_FUNDS") == "/problems/insufficient-funds"
    assert problem_type("ACCOUNT_NOT_FOUND") == "/problems/account-not-found"
    assert problem_type("INVALID_ARGUMENT") == "/problems/invalid-argument"


def test_every_ledger_refusal_has_a_title_of_its_own() -> None:
    refusals = {code.name for code in Code} - {"OK", "PENDING"}
    assert refusals <= set(TITLES)
    assert title_of("INSUFFICIENT_FUNDS") == "Insufficient funds"
    assert title_of("SOMETHING_NEWER") == "Something newer"  # from a newer node: still stable
    assert title_of("HTTP_415") == "Unsupported Media Type"


# --- answers of the fake node -----------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeWalletServer]:
    with running_fake(partition_count=2) as server:
        server.add_account("alice", "USD", "10.00")
        server.add_account("bob", "USD")
        yield server


@pytest.fixture
def http(fake: FakeWalletServer) -> Iterator[httpx.Client]:
    # Retrying a transient failure for a quarter of a second is enough to show the answer.
    app = create_app([fake.address], timeout_s=0.25, retry_deadline_s=0.25)
    with serving(app) as url, httpx.Client(base_url=url, timeout=WAIT_S) as client:
        yield client


@pytest.mark.parametrize(("status", "reason", "http_status"), [
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED", 429),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "", 504),
    (grpc.StatusCode.UNAVAILABLE, "NO_LEADER", 503),
], ids=["429", "504", "503"])
def test_a_read_the_cluster_cannot_answer_now_is_a_transient_problem_with_retry_after(
    fake: FakeWalletServer, http: httpx.Client, status: grpc.StatusCode, reason: str,
    http_status: int,
) -> None:
    fake.fail("GetBalance", status, times=None, reason=reason, details=SECRET)
    response = http.get("/v1/wallet/accounts/alice/balance")
    problem = assert_problem(response, http_status, reason or status.name, status.name,
                             "Retry-After")
    assert response.headers["retry-after"] == "1"
    assert "instance" not in problem and problem["transaction_id"] is None
    assert "secret" not in response.text


def test_an_overloaded_cluster_answers_429_as_documented(
    fake: FakeWalletServer, http: httpx.Client,
) -> None:
    fake.fail("GetBalance", grpc.StatusCode.RESOURCE_EXHAUSTED, times=None,
              reason="OVERLOADED", details="partition 0: 4096 requests queued")
    assert_documented("overloaded", http.get("/v1/wallet/accounts/alice/balance"))


@pytest.mark.parametrize(("status", "http_status"), [
    (grpc.StatusCode.DEADLINE_EXCEEDED, 504), (grpc.StatusCode.UNAVAILABLE, 503),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
], ids=["504", "503", "429"])
def test_a_write_whose_outcome_is_unknown_says_where_to_find_it_and_to_retry(
    fake: FakeWalletServer, http: httpx.Client, status: grpc.StatusCode, http_status: int,
) -> None:
    fake.fail("Transfer", status, times=None)
    transaction_id = new_id()
    response = post(http, TRANSFER, transfer_body(transaction_id))
    problem = assert_problem(response, http_status, "OUTCOME_UNKNOWN", transaction_id,
                             "same id")
    assert response.headers["retry-after"] == "1"
    assert problem["transaction_id"] == transaction_id
    assert problem["instance"] == f"/v1/wallet/transfers/alice/{transaction_id}"


def test_a_write_that_timed_out_answers_504_as_documented(
    fake: FakeWalletServer, http: httpx.Client,
) -> None:
    fake.fail("Transfer", grpc.StatusCode.DEADLINE_EXCEEDED, times=None)
    transaction_id = new_id()
    response = post(http, TRANSFER, transfer_body(transaction_id))
    assert_documented("outcome-unknown", response,
                      {transaction_id: "7c9e2b14-5a3d-4f6e-9b1a-2d3c4e5f6005"})


# --- Idempotency-Key --------------------------------------------------------------------


def sent_ids(fake: FakeWalletServer, method: str = "Transfer") -> list[str]:
    return [request.transaction_id for request in fake.requests_of(method)]


@pytest.mark.parametrize("form", ["bare", "quoted"])
def test_the_idempotency_key_header_is_the_transaction_id_when_the_body_has_none(
    fake: FakeWalletServer, http: httpx.Client, form: str,
) -> None:
    key = new_id()
    header = key if form == "bare" else f'"{key}"'  # the IETF draft's structured-field string
    first = post(http, TRANSFER, transfer_body(), {"Idempotency-Key": header})
    again = post(http, TRANSFER, transfer_body(), {"Idempotency-Key": header})
    assert first.status_code == 200, first.text
    assert first.json()["transaction_id"] == key
    assert again.json() == first.json()
    assert sent_ids(fake) == [key, key]
    assert fake.accounts["bob"].balance_minor == 100  # moved once


def test_the_idempotency_key_and_the_bodys_id_may_both_be_given_when_equal(
    fake: FakeWalletServer, http: httpx.Client,
) -> None:
    key = new_id()
    response = post(http, TRANSFER, transfer_body(key), {"Idempotency-Key": key.upper()})
    assert response.status_code == 200, response.text
    assert sent_ids(fake) == [key]


def test_an_idempotency_key_that_differs_from_the_bodys_id_is_refused_and_sends_nothing(
    fake: FakeWalletServer, http: httpx.Client,
) -> None:
    body_id, header_id = new_id(), new_id()
    response = post(http, TRANSFER, transfer_body(body_id), {"Idempotency-Key": header_id})
    problem = assert_problem(response, 400, "IDEMPOTENCY_KEY_MISMATCH", "Idempotency-Key",
                             header_id, body_id)
    assert problem["transaction_id"] == body_id
    assert sent_ids(fake) == []
    assert_documented("idempotency-key-mismatch", response, {
        body_id: "7c9e2b14-5a3d-4f6e-9b1a-2d3c4e5f6007",
        header_id: "0b4c6d8e-1f2a-4b3c-8d4e-5f6a7b8c9d0e"})


@pytest.mark.parametrize(("header", "words"), [
    ("not-a-uuid", ["'not-a-uuid' is not a UUID"]),
    ("00000000-0000-0000-0000-000000000000", ["nil UUID"]),
    ("9b2e4f6a1c3d4e5f8a7b6c5d4e3f2a10", ["is not a UUID"]),  # not the canonical form
    ("", ["is required"]),
])
def test_a_malformed_idempotency_key_is_refused_by_the_rules_of_the_bodys_id(
    fake: FakeWalletServer, http: httpx.Client, header: str, words: list[str],
) -> None:
    response = post(http, TRANSFER, transfer_body(), {"Idempotency-Key": header})
    assert_problem(response, 400, "INVALID_TRANSACTION_ID", "Idempotency-Key", *words)
    assert sent_ids(fake) == []


def test_an_idempotency_key_longer_than_a_quoted_uuid_is_refused(
    fake: FakeWalletServer, http: httpx.Client,
) -> None:
    response = post(http, TRANSFER, transfer_body(), {"Idempotency-Key": "x" * 39})
    assert_problem(response, 400, "INVALID_ARGUMENT", "Idempotency-Key", "at most 38")
    assert sent_ids(fake) == []


def test_an_idempotency_key_given_twice_is_refused(
    fake: FakeWalletServer, http: httpx.Client,
) -> None:
    key = new_id()
    response = http.post(TRANSFER, json=transfer_body(), headers=[
        ("Idempotency-Key", key), ("Idempotency-Key", key)])
    assert_problem(response, 400, "INVALID_ARGUMENT", "Idempotency-Key", "more than once")
    assert sent_ids(fake) == []


def test_without_a_transaction_id_nor_an_idempotency_key_a_transfer_is_refused(
    fake: FakeWalletServer, http: httpx.Client,
) -> None:
    response = post(http, TRANSFER, transfer_body())
    problem = assert_problem(response, 400, "INVALID_ARGUMENT", "transaction_id",
                             "is required", "Idempotency-Key")
    assert problem["transaction_id"] is None
    assert sent_ids(fake) == []


def test_deposits_withdrawals_and_new_accounts_take_the_idempotency_key_too(
    fake: FakeWalletServer, http: httpx.Client,
) -> None:
    movement = {"account_id": "alice", "amount": "1.00", "currency": "USD"}
    deposit_key, withdraw_key, account_key = new_id(), new_id(), new_id()
    deposited = post(http, "/v1/wallet/deposit", movement, {"Idempotency-Key": deposit_key})
    withdrawn = post(http, "/v1/wallet/withdraw", movement, {"Idempotency-Key": withdraw_key})
    created = post(http, "/v1/wallet/accounts", {"account_id": "carol", "currency": "USD"},
                   {"Idempotency-Key": account_key})
    assert (deposited.status_code, withdrawn.status_code, created.status_code) == (
        200, 200, 201), created.text
    assert deposited.json()["transaction_id"] == deposit_key
    assert withdrawn.json()["transaction_id"] == withdraw_key
    assert created.json()["request_id"] == account_key
    assert sent_ids(fake, "Deposit") == [deposit_key]
    assert sent_ids(fake, "Withdraw") == [withdraw_key]
    assert [r.request_id for r in fake.requests_of("CreateAccount")] == [account_key]
    conflict = post(http, "/v1/wallet/accounts", {"account_id": "dave", "currency": "USD",
                                                  "request_id": new_id()},
                    {"Idempotency-Key": account_key})
    assert_problem(conflict, 400, "IDEMPOTENCY_KEY_MISMATCH", "request_id")
