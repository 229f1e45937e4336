"""The HTTP gateway (node.gateway.app) in front of a real 3-node cluster on 127.0.0.1.

The gateway app is served by uvicorn on a free loopback port in a thread (and once
as `walletctl gateway` in a subprocess); every server and process a test starts is
stopped by the test. Accounts are placed on partitions with `partition_of`. The
fuzz tests (schemathesis from the served OpenAPI document, and hypothesis
mutations of a valid transfer) check that no malformed input gets a 5xx and that
rejected requests change no balance.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ledger.money import MoneyError, parse_amount
from ledger.routing import partition_of
from ledger.state import ACCOUNT_ID_RE
from node.gateway.app import (
    MAX_BODY_BYTES,
    create_app,
    duplicate_key_of,
    parse_listen,
)
from node.security.auth import node_client_credentials
from proto.wallet.v1 import wallet_pb2 as pb
from tests.cluster_harness import WAIT_S, LocalCluster, allocate_ports, running_cluster, wait_until
from tests.fake_wallet_server import FakeWalletServer, running_fake
from tests.gateway_support import assert_documented, assert_problem, post, serving

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""

PARTITIONS = 2
REPO = Path(__file__).resolve().parent.parent
TRANSFER = "/v1/wallet/balance_transfer"
FUZZ_EXAMPLES = 25
"""Per endpoint and generation mode (positive, negative): 50 requests per endpoint."""
MUTATION_EXAMPLES = 60


def new_id() -> str:
    return str(uuid.uuid4())


def accounts_on(partition: int, count: int, prefix: str) -> list[str]:
    found: list[str] = []
    i = 0
    while len(found) < count:
        name = f"{prefix}-{i}"
        if partition_of(name, PARTITIONS) == partition:
            found.append(name)
        i += 1
    return found


# --- fixtures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Accounts:
    alice: str
    """Partition 0, USD, funded with 100.00."""
    bob: str
    """Partition 0, USD."""
    yen: str
    """Partition 0, JPY."""
    far: str
    """Partition 1, USD."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("gateway-cluster"), nodes=3,
                         partitions=PARTITIONS) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(cluster: LocalCluster) -> Iterator[str]:
    # The cluster's tokens, as a gateway started with --config has them (/readyz needs the
    # admin token).
    with serving(create_app([n.grpc_address for n in cluster.config.nodes],
                            credentials=node_client_credentials(cluster.config))) as url:
        yield url


@pytest.fixture(scope="module")
def http(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=WAIT_S) as client:
        yield client


def create(http: httpx.Client, account: str, currency: str) -> None:
    response = post(http, "/v1/wallet/accounts",
                    {"account_id": account, "currency": currency, "request_id": new_id()})
    assert response.status_code == 201, response.text


def deposit(http: httpx.Client, account: str, amount: str, currency: str = "USD") -> None:
    response = post(http, "/v1/wallet/deposit", {"account_id": account, "amount": amount,
                                                  "currency": currency,
                                                  "transaction_id": new_id()})
    assert response.status_code == 200, response.text


def balance(http: httpx.Client, account: str) -> Decimal:
    response = http.get(f"/v1/wallet/accounts/{account}/balance")
    assert response.status_code == 200, response.text
    return Decimal(response.json()["balance"])


@pytest.fixture(scope="module")
def accounts(http: httpx.Client) -> Accounts:
    alice, bob = accounts_on(0, 2, "http-funded")
    (yen,) = accounts_on(0, 1, "http-yen")
    (far,) = accounts_on(1, 1, "http-far")
    for account, currency in ((alice, "USD"), (bob, "USD"), (yen, "JPY"), (far, "USD")):
        create(http, account, currency)
    deposit(http, alice, "100.00")
    return Accounts(alice, bob, yen, far)


def transfer_body(from_account: str, to_account: str, amount: str = "1.00",
                  currency: str = "USD", transaction_id: str | None = None) -> dict[str, Any]:
    return {"from_account": from_account, "to_account": to_account, "amount": amount,
            "currency": currency, "transaction_id": transaction_id or new_id()}


# --- the balance transfer ---------------------------------------------------------------


def test_balance_transfer_succeeds_and_moves_the_money(
    http: httpx.Client, accounts: Accounts,
) -> None:
    before = balance(http, accounts.alice), balance(http, accounts.bob)
    body = transfer_body(accounts.alice, accounts.bob, "2.50")
    response = post(http, TRANSFER, body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer == {"status": "success", "transaction_id": body["transaction_id"],
                      "position": answer["position"]}
    assert isinstance(answer["position"], int) and answer["position"] > 0
    after = balance(http, accounts.alice), balance(http, accounts.bob)
    assert after == (before[0] - Decimal("2.50"), before[1] + Decimal("2.50"))


def test_a_retried_transfer_returns_the_same_answer_and_moves_the_money_once(
    http: httpx.Client, accounts: Accounts,
) -> None:
    before = balance(http, accounts.bob)
    body = transfer_body(accounts.alice, accounts.bob, "1.00")
    answers = [post(http, TRANSFER, body) for _ in range(3)]
    assert {a.status_code for a in answers} == {200}
    assert [a.json() for a in answers] == [answers[0].json()] * 3
    assert balance(http, accounts.bob) == before + Decimal("1.00")


def test_a_retried_refusal_returns_the_same_answer_even_after_funds_arrive(
    http: httpx.Client, accounts: Accounts,
) -> None:
    (poor,) = accounts_on(0, 1, "http-poor")
    create(http, poor, "USD")
    deposit(http, poor, "1.00")
    body = transfer_body(poor, accounts.bob, "5.00")
    first = post(http, TRANSFER, body)
    assert_problem(first, 422, "INSUFFICIENT_FUNDS", "from_account")
    assert first.json()["transaction_id"] == body["transaction_id"]
    deposit(http, poor, "10.00")
    again = post(http, TRANSFER, body)
    assert (again.status_code, again.json()) == (422, first.json())
    assert balance(http, poor) == Decimal("11.00")


@pytest.mark.parametrize(("changes", "code", "field"), [
    ({"amount": "1.001"}, "INVALID_AMOUNT", "amount"),
    ({"amount": "-1.00"}, "INVALID_AMOUNT", "amount"),
    ({"amount": "1e3"}, "INVALID_AMOUNT", "amount"),
    ({"amount": "0"}, "INVALID_AMOUNT", "amount"),
    ({"amount": 12.34}, "INVALID_ARGUMENT", "amount"),
    ({"amount": 12}, "INVALID_ARGUMENT", "amount"),
    ({"amount": None}, "INVALID_ARGUMENT", "amount"),
    ({"currency": "usd"}, "INVALID_CURRENCY", "currency"),
    ({"currency": "XYZ"}, "INVALID_CURRENCY", "currency"),
    ({"transaction_id": "not-a-uuid"}, "INVALID_TRANSACTION_ID", "transaction_id"),
    ({"transaction_id": ""}, "INVALID_TRANSACTION_ID", "transaction_id"),
    ({"transaction_id": 7}, "INVALID_ARGUMENT", "transaction_id"),
    ({"memo": "thanks"}, "INVALID_ARGUMENT", "memo"),
    ({"to_account": "no such"}, "INVALID_ACCOUNT_ID", "to_account"),
    ({"from_account": "x" * 65}, "INVALID_ARGUMENT", "from_account"),
    ({"from_account": "\ud800"}, "INVALID_ARGUMENT", "from_account"),
    ({"from_account": ["alice"]}, "INVALID_ARGUMENT", "from_account"),
])
def test_invalid_input_is_400_with_a_code_and_a_message_naming_the_field(
    http: httpx.Client, accounts: Accounts, changes: dict[str, Any], code: str, field: str,
) -> None:
    watched = [accounts.alice, accounts.bob]
    before = [balance(http, a) for a in watched]
    body = transfer_body(accounts.alice, accounts.bob) | changes
    response = post(http, TRANSFER, body)
    assert_problem(response, 400, code, field)
    if isinstance(body["transaction_id"], str):
        assert response.json()["transaction_id"] == body["transaction_id"]
    assert [balance(http, a) for a in watched] == before


def test_a_number_amount_is_refused_because_money_is_never_a_float(
    http: httpx.Client, accounts: Accounts,
) -> None:
    response = post(http, TRANSFER, transfer_body(accounts.alice, accounts.bob) | {"amount": 12.34})
    assert_problem(response, 400, "INVALID_ARGUMENT", "amount", "string", "12.34", "float")


@pytest.mark.parametrize("content", [b"{", b"", b"[1]", b"\"x\"", b"null", b"\xff\xfe"])
def test_malformed_or_non_object_bodies_are_400(http: httpx.Client, content: bytes) -> None:
    response = http.post(TRANSFER, content=content, headers={"content-type": "application/json"})
    assert_problem(response, 400, "INVALID_ARGUMENT", "body")


def test_a_missing_field_is_400_naming_it(http: httpx.Client, accounts: Accounts) -> None:
    body = transfer_body(accounts.alice, accounts.bob)
    del body["currency"]
    assert_problem(post(http, TRANSFER, body), 400, "INVALID_ARGUMENT", "currency", "required")


def test_a_transfer_to_an_unknown_account_is_404(http: httpx.Client, accounts: Accounts) -> None:
    (ghost,) = accounts_on(0, 1, "http-ghost")
    before = balance(http, accounts.alice)
    body = transfer_body(accounts.alice, ghost)
    response = post(http, TRANSFER, body)
    assert_problem(response, 404, "ACCOUNT_NOT_FOUND", "to_account")
    assert response.json()["transaction_id"] == body["transaction_id"]
    assert balance(http, accounts.alice) == before


def test_a_transfer_to_an_unknown_account_on_another_partition_is_404_and_compensated(
    http: httpx.Client, accounts: Accounts,
) -> None:
    (ghost,) = accounts_on(1, 1, "http-far-ghost")
    before = balance(http, accounts.alice)
    response = post(http, TRANSFER, transfer_body(accounts.alice, ghost, "3.00"))
    assert_problem(response, 404, "ACCOUNT_NOT_FOUND", "to_account", "compensated")
    assert balance(http, accounts.alice) == before


def test_a_transfer_from_an_unknown_account_is_404(http: httpx.Client, accounts: Accounts) -> None:
    (ghost,) = accounts_on(0, 1, "http-nobody")
    assert_problem(post(http, TRANSFER, transfer_body(ghost, accounts.bob)), 404,
                 "ACCOUNT_NOT_FOUND", "from_account")


def test_reusing_a_transaction_id_with_other_content_is_409(
    http: httpx.Client, accounts: Accounts,
) -> None:
    transaction_id = new_id()
    first = post(http, TRANSFER, transfer_body(accounts.alice, accounts.bob, "0.01",
                                               transaction_id=transaction_id))
    assert first.status_code == 200, first.text
    before = balance(http, accounts.bob)
    other = post(http, TRANSFER, transfer_body(accounts.alice, accounts.bob, "0.02",
                                               transaction_id=transaction_id))
    assert_problem(other, 409, "ID_CONFLICT", "transaction_id")
    assert other.json()["transaction_id"] == transaction_id
    assert balance(http, accounts.bob) == before


@pytest.mark.parametrize(("case", "code", "field"), [
    ("insufficient", "INSUFFICIENT_FUNDS", "from_account"),
    ("currency", "CURRENCY_MISMATCH", "currency"),
    ("same", "SAME_ACCOUNT", "to_account"),
])
def test_refusals_of_the_ledger_are_422(
    http: httpx.Client, accounts: Accounts, case: str, code: str, field: str,
) -> None:
    body = {
        "insufficient": transfer_body(accounts.bob, accounts.alice, "99999.00"),
        "currency": transfer_body(accounts.alice, accounts.yen, "1"),
        "same": transfer_body(accounts.alice, accounts.alice),
    }[case]
    watched = [accounts.alice, accounts.bob, accounts.yen]
    before = [balance(http, a) for a in watched]
    response = post(http, TRANSFER, body)
    assert_problem(response, 422, code, field)
    assert response.json()["transaction_id"] == body["transaction_id"]
    assert [balance(http, a) for a in watched] == before


def test_a_transfer_across_partitions_succeeds_and_its_status_shows_the_steps(
    http: httpx.Client, accounts: Accounts,
) -> None:
    before = balance(http, accounts.far)
    body = transfer_body(accounts.alice, accounts.far, "4.00")
    response = post(http, TRANSFER, body)
    assert response.status_code in (200, 202), response.text
    assert response.json()["transaction_id"] == body["transaction_id"]
    url = f"/v1/wallet/transfers/{accounts.alice}/{body['transaction_id']}"
    if response.status_code == 202:
        assert response.headers["location"] == url
    found: list[dict[str, Any]] = []

    def final() -> bool:
        answer = http.get(url)
        assert answer.status_code == 200, answer.text
        found.append(answer.json())
        return bool(answer.json()["status"] != "pending")

    wait_until(final, "the transfer to be final")
    record = found[-1]
    assert (record["status"], record["to_account"], record["amount"], record["currency"]) == (
        "success", accounts.far, "4.00", "USD")
    assert [step["name"] for step in record["steps"]] == ["debited", "settled"]
    assert balance(http, accounts.far) == before + Decimal("4.00")


def test_the_status_of_an_unknown_transfer_is_404(http: httpx.Client, accounts: Accounts) -> None:
    response = http.get(f"/v1/wallet/transfers/{accounts.alice}/{new_id()}")
    assert_problem(response, 404, "TRANSFER_NOT_FOUND")
    response = http.get(f"/v1/wallet/transfers/{accounts.alice}/not-a-uuid")
    assert_problem(response, 400, "INVALID_TRANSACTION_ID", "transaction_id")


# --- accounts, deposits, withdrawals, balances ------------------------------------------


def test_creating_an_account_is_idempotent_by_request_id_and_409_otherwise(
    http: httpx.Client,
) -> None:
    (account,) = accounts_on(1, 1, "http-new")
    body = {"account_id": account, "currency": "EUR", "request_id": new_id()}
    first, again = post(http, "/v1/wallet/accounts", body), post(http, "/v1/wallet/accounts", body)
    assert (first.status_code, again.status_code) == (201, 201), again.text
    assert first.json() == again.json() == body
    other = post(http, "/v1/wallet/accounts", body | {"request_id": new_id()})
    assert_problem(other, 409, "ACCOUNT_EXISTS", "account_id")
    assert_problem(post(http, "/v1/wallet/accounts", {"account_id": account, "currency": "usd"}),
                 400, "INVALID_CURRENCY", "currency")


def test_deposit_and_withdraw_report_the_balance_and_refuse_what_they_cannot_do(
    http: httpx.Client,
) -> None:
    (account,) = accounts_on(1, 1, "http-movements")
    create(http, account, "JPY")
    transaction_id = new_id()
    body = {"account_id": account, "amount": "500", "currency": "JPY",
            "transaction_id": transaction_id}
    response = post(http, "/v1/wallet/deposit", body)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "success", "transaction_id": transaction_id,
                               "account_id": account, "amount": "500", "currency": "JPY",
                               "balance": "500", "position": response.json()["position"]}
    assert post(http, "/v1/wallet/deposit", body).json() == response.json()
    withdrawn = post(http, "/v1/wallet/withdraw", body | {"amount": "200",
                                                          "transaction_id": new_id()})
    assert (withdrawn.status_code, withdrawn.json()["balance"]) == (200, "300")
    assert_problem(post(http, "/v1/wallet/withdraw", body | {"amount": "301",
                                                           "transaction_id": new_id()}),
                 422, "INSUFFICIENT_FUNDS", "account_id")
    assert_problem(post(http, "/v1/wallet/deposit", body | {"currency": "USD", "amount": "1.00",
                                                          "transaction_id": new_id()}),
                 422, "CURRENCY_MISMATCH", "currency")
    assert_problem(post(http, "/v1/wallet/deposit", body | {"amount": "1.5",
                                                          "transaction_id": new_id()}),
                 400, "INVALID_AMOUNT", "amount")
    (ghost,) = accounts_on(1, 1, "http-no-account")
    assert_problem(post(http, "/v1/wallet/deposit", body | {"account_id": ghost,
                                                          "transaction_id": new_id()}),
                 404, "ACCOUNT_NOT_FOUND", "account_id")
    assert balance(http, account) == Decimal("300")


def test_balance_reads_linearizable_and_stale(http: httpx.Client, accounts: Accounts) -> None:
    strong = http.get(f"/v1/wallet/accounts/{accounts.alice}/balance")
    stale = http.get(f"/v1/wallet/accounts/{accounts.alice}/balance",
                     params={"consistency": "stale"})
    assert (strong.status_code, stale.status_code) == (200, 200)
    assert (strong.json()["stale"], stale.json()["stale"]) == (False, True)
    assert strong.json()["currency"] == "USD"
    assert_problem(http.get(f"/v1/wallet/accounts/{accounts.alice}/balance",
                          params={"consistency": "eventual"}), 400, "INVALID_ARGUMENT",
                 "consistency")
    (ghost,) = accounts_on(0, 1, "http-balance-ghost")
    assert_problem(http.get(f"/v1/wallet/accounts/{ghost}/balance"), 404, "ACCOUNT_NOT_FOUND")
    assert_problem(http.get(f"/v1/wallet/accounts/{'a' * 65}/balance"), 400, "INVALID_ARGUMENT",
                 "account_id")


def test_the_history_pages_an_accounts_transfers(http: httpx.Client, accounts: Accounts) -> None:
    for amount in ("0.04", "0.05", "0.06"):  # enough for two pages, whatever ran before
        assert post(http, TRANSFER, transfer_body(accounts.alice, accounts.bob, amount)
                    ).status_code == 200
    body = transfer_body(accounts.alice, accounts.bob, "0.07")
    assert post(http, TRANSFER, body).status_code == 200
    url = f"/v1/wallet/accounts/{accounts.alice}/transfers"
    seen: list[dict[str, Any]] = []
    token = ""
    for _ in range(1_000):
        page = http.get(url, params={"limit": 2, "page_token": token, "order": "newest_first"})
        assert page.status_code == 200, page.text
        assert len(page.json()["transfers"]) <= 2
        seen += page.json()["transfers"]
        token = page.json()["next_page_token"]
        if not token:
            break
    ids = [record["transaction_id"] for record in seen]
    assert len(ids) == len(set(ids)) > 2
    newest = seen[0]
    assert (newest["transaction_id"], newest["to_account"], newest["amount"],
            newest["status"]) == (body["transaction_id"], accounts.bob, "0.07", "success")
    assert_problem(http.get(url, params={"limit": 0}), 400, "INVALID_ARGUMENT", "limit")
    assert_problem(http.get(url, params={"page_token": "next"}), 400, "INVALID_ARGUMENT",
                 "page_token")


# --- issue #13: the smaller defects -----------------------------------------------------


def test_a_transfer_from_an_unknown_account_to_one_on_another_partition_names_only_the_unknown(
    http: httpx.Client, accounts: Accounts,
) -> None:
    (ghost,) = accounts_on(0, 1, "http-nobody-cross")
    before = balance(http, accounts.far)
    response = post(http, TRANSFER, transfer_body(ghost, accounts.far))
    assert_problem(response, 404, "ACCOUNT_NOT_FOUND")
    assert response.json()["error"]["message"] == f"from_account {ghost!r} does not exist"
    assert balance(http, accounts.far) == before


def test_a_body_with_a_duplicate_key_is_refused_and_moves_nothing(
    http: httpx.Client, accounts: Accounts,
) -> None:
    before = balance(http, accounts.alice), balance(http, accounts.bob)
    transaction_id = new_id()
    content = (f'{{"from_account": "{accounts.alice}", "to_account": "{accounts.bob}", '
               f'"amount": "1.00", "currency": "USD", "transaction_id": "{transaction_id}", '
               '"amount": "99.00"}').encode()
    response = http.post(TRANSFER, content=content, headers={"content-type": "application/json"})
    assert_problem(response, 400, "INVALID_ARGUMENT", "amount", "more than once")
    assert response.json()["transaction_id"] == transaction_id
    assert (balance(http, accounts.alice), balance(http, accounts.bob)) == before
    status = http.get(f"/v1/wallet/transfers/{accounts.alice}/{transaction_id}")
    assert_problem(status, 404, "TRANSFER_NOT_FOUND")


def test_the_nil_uuid_is_refused_as_an_id_and_moves_nothing(
    http: httpx.Client, accounts: Accounts,
) -> None:
    nil = "00000000-0000-0000-0000-000000000000"
    before = balance(http, accounts.alice), balance(http, accounts.bob)
    response = post(http, TRANSFER, transfer_body(accounts.alice, accounts.bob,
                                                  transaction_id=nil))
    assert_problem(response, 400, "INVALID_TRANSACTION_ID", "transaction_id", "nil UUID")
    assert response.json()["transaction_id"] == nil
    assert_problem(post(http, "/v1/wallet/deposit", {
        "account_id": accounts.alice, "amount": "1.00", "currency": "USD",
        "transaction_id": nil}), 400, "INVALID_TRANSACTION_ID", "nil UUID")
    assert_problem(post(http, "/v1/wallet/accounts", {
        "account_id": "http-nil-request", "currency": "USD", "request_id": nil}),
        400, "INVALID_TRANSACTION_ID", "request_id", "nil UUID")
    assert (balance(http, accounts.alice), balance(http, accounts.bob)) == before


# --- issue #14: one error contract ----------------------------------------------------


def test_a_refused_transfer_is_a_problem_naming_the_ledger_reason_and_the_transfer(
    http: httpx.Client, accounts: Accounts,
) -> None:
    (poor,) = accounts_on(0, 1, "http-problem-poor")
    create(http, poor, "USD")
    body = transfer_body(poor, accounts.bob, "5.00")
    response = post(http, TRANSFER, body)
    problem = assert_problem(response, 422, "INSUFFICIENT_FUNDS", "insufficient funds")
    assert problem["transaction_id"] == body["transaction_id"]
    assert problem["instance"] == f"/v1/wallet/transfers/{poor}/{body['transaction_id']}"
    recorded = http.get(problem["instance"])  # the refusal is recorded under the id
    assert (recorded.status_code, recorded.json()["status"], recorded.json()["reason"]) == (
        200, "failed", "INSUFFICIENT_FUNDS")
    assert_documented("refused-transfer", response, {
        poor: "alice", accounts.bob: "bob",
        body["transaction_id"]: "7c9e2b14-5a3d-4f6e-9b1a-2d3c4e5f6004"})


def test_a_validation_error_is_a_problem_naming_the_field(
    http: httpx.Client, accounts: Accounts,
) -> None:
    body = transfer_body(accounts.alice, accounts.bob) | {"amount": 12.34}
    response = post(http, TRANSFER, body)
    problem = assert_problem(response, 400, "INVALID_ARGUMENT", "amount", "never a float")
    assert problem["transaction_id"] == body["transaction_id"]
    assert "instance" not in problem  # nothing reached the ledger
    assert_documented("validation-error", response, {
        body["transaction_id"]: "7c9e2b14-5a3d-4f6e-9b1a-2d3c4e5f6006"})


def test_a_transfer_keyed_by_the_idempotency_key_header_moves_the_money_once(
    http: httpx.Client, accounts: Accounts,
) -> None:
    before = balance(http, accounts.bob)
    key = new_id()
    body = transfer_body(accounts.alice, accounts.bob, "0.05")
    del body["transaction_id"]
    answers = [post(http, TRANSFER, body, {"Idempotency-Key": key}) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200], answers[-1].text
    assert answers[0].json() == answers[1].json()
    assert answers[0].json()["transaction_id"] == key
    assert balance(http, accounts.bob) == before + Decimal("0.05")
    assert http.get(f"/v1/wallet/transfers/{accounts.alice}/{key}").json()["status"] == "success"
    other = post(http, TRANSFER, body | {"amount": "0.06"}, {"Idempotency-Key": key})
    assert_problem(other, 409, "ID_CONFLICT", "transaction_id")


def test_the_balance_at_a_time_is_the_balance_then(http: httpx.Client) -> None:
    (account,) = accounts_on(1, 1, "http-at")
    create(http, account, "USD")
    url = f"/v1/wallet/accounts/{account}/balance"
    deposit(http, account, "5.00")
    then = http.get(url).json()
    at = datetime.now(tz=UTC).isoformat()  # after the first deposit's leader time stamp
    time.sleep(0.05)  # the second deposit is stamped later
    deposit(http, account, "7.00")

    past = http.get(url, params={"at": at})

    assert past.status_code == 200, past.text
    assert (past.json()["balance"], past.json()["stale"]) == ("5.00", False)
    assert past.json()["position"] <= then["position"]
    assert http.get(url).json()["balance"] == "12.00"
    assert_problem(http.get(url, params={"at": "2000-01-01T00:00:00Z"}), 404, "ACCOUNT_NOT_FOUND")
    assert_problem(http.get(url, params={"at": "2026-11-25T18:00:00"}), 400, "INVALID_ARGUMENT",
                 "at", "time zone")
    assert_problem(http.get(url, params={"at": "yesterday"}), 400, "INVALID_ARGUMENT", "at")
    assert_problem(http.get(url, params={"at": at, "consistency": "stale"}), 400,
                 "INVALID_ARGUMENT", "consistency")


@pytest.mark.parametrize(("body", "duplicate"), [
    (b'{"a": 1, "b": 2}', None), (b'{"a": 1, "a": 1}', "a"), (b'{"x": {"b": 1, "b": 2}}', "b"),
    (b'[{"c": 1}, {"c": 2}]', None), (b'{"a": ', None), (b"\xff", None), (b"", None),
])
def test_duplicate_keys_are_found_at_any_depth(body: bytes, duplicate: str | None) -> None:
    assert duplicate_key_of(body) == duplicate


@pytest.mark.parametrize("query", ["?as_of=2026-11-25T18:00:00Z", "?consistency=stale&x=1",
                                   "?consistency=stale&consistency=linearizable"])
def test_unknown_or_repeated_query_parameters_of_the_balance_are_400(
    http: httpx.Client, accounts: Accounts, query: str,
) -> None:
    response = http.get(f"/v1/wallet/accounts/{accounts.alice}/balance{query}")
    assert_problem(response, 400, "INVALID_ARGUMENT")
    assert response.json()["error"]["message"].split(":")[0] in query


@pytest.mark.parametrize("partition", [0, 1])
def test_a_retried_transfer_answers_the_position_of_its_first_answer(
    http: httpx.Client, accounts: Accounts, partition: int,
) -> None:
    to_account = accounts.bob if partition == 0 else accounts.far
    body = transfer_body(accounts.alice, to_account, "0.03")
    first = post(http, TRANSFER, body)
    deposit(http, accounts.alice, "0.01")  # the partition's log moves on in between
    again = post(http, TRANSFER, body)
    assert (first.status_code, again.status_code) == (200, 200), again.text
    assert again.json() == first.json()
    assert first.json()["position"] > 0


# --- health, documents, limits ----------------------------------------------------------


def test_healthz_and_readyz(http: httpx.Client) -> None:
    live = http.get("/healthz")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    ready = http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"
    assert ready.json()["partition_count"] == PARTITIONS
    assert all(p["leader_node_id"] in {"n1", "n2", "n3"} for p in ready.json()["partitions"])


def test_the_openapi_document_declares_every_route_and_its_errors(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    transfer = spec["paths"][TRANSFER]["post"]
    assert set(transfer["responses"]) == {"200", "202", "400", "404", "409", "413", "422",
                                          "429", "500", "503", "504"}
    for status in ("400", "404", "409", "413", "422", "429", "500", "503", "504"):
        content = transfer["responses"][status]["content"]
        assert set(content) == {"application/problem+json"}, status
        assert content["application/problem+json"]["schema"]["$ref"].endswith("/Problem")
        example = content["application/problem+json"]["example"]
        assert example["status"] == int(status) and example["type"].startswith("/problems/")
    for status in ("429", "503", "504"):
        assert "Retry-After" in transfer["responses"][status]["headers"]
    problem = spec["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail", "error",
                                        "transaction_id"}
    assert "instance" in problem["properties"]
    (key,) = [p for p in transfer["parameters"] if p["in"] == "header"]
    assert (key["name"], key["required"], key["schema"]["format"]) == (
        "Idempotency-Key", False, "uuid")
    assert "transaction_id" not in spec["components"]["schemas"]["TransferRequest"].get(
        "required", [])
    assert transfer["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/TransferRequest")
    request_schema = spec["components"]["schemas"]["TransferRequest"]
    assert request_schema["additionalProperties"] is False
    assert request_schema["properties"]["amount"]["type"] == "string"
    assert request_schema["examples"]
    assert set(spec["paths"]) == {
        TRANSFER, "/v1/wallet/accounts", "/v1/wallet/deposit", "/v1/wallet/withdraw",
        "/v1/wallet/accounts/{account_id}/balance",
        "/v1/wallet/transfers/{from_account}/{transaction_id}",
        "/v1/wallet/accounts/{account_id}/transfers", "/healthz", "/readyz"}
    assert "501" in spec["paths"]["/v1/wallet/accounts/{account_id}/transfers"]["get"][
        "responses"]
    assert "HTTPValidationError" not in json.dumps(spec)
    docs = http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_oversized_bodies_are_413(http: httpx.Client, accounts: Accounts) -> None:
    body = transfer_body(accounts.alice, accounts.bob) | {"memo": "x" * MAX_BODY_BYTES}
    assert_problem(post(http, TRANSFER, body), 413, "PAYLOAD_TOO_LARGE")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"memo": "'
        for _ in range(10):
            yield b"x" * 10_000
        yield b'"}'

    response = http.post(TRANSFER, content=chunks(), headers={"content-type": "application/json"})
    assert_problem(response, 413, "PAYLOAD_TOO_LARGE")
    assert http.get("/healthz").status_code == 200


def test_unknown_routes_and_methods_answer_json_errors(http: httpx.Client) -> None:
    assert_problem(http.get("/v1/wallet/nothing"), 404, "NOT_FOUND")
    response = http.get(TRANSFER)
    assert_problem(response, 405, "METHOD_NOT_ALLOWED")
    assert response.headers["allow"] == "POST"


# --- parsing --listen -------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:80", ("::1", 80)),
    ("localhost:65535", ("localhost", 65535)),
])
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8080", ":8080", "host:", "host:0", "host:70000",
                                  "h:\uff18\uff10"])
def test_parse_listen_refuses_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError, match="--listen"):
        parse_listen(text)


# --- an unreachable cluster, and answers the real cluster cannot be made to give -------


def test_an_unreachable_cluster_is_503_with_retry_after() -> None:
    nowhere = f"127.0.0.1:{allocate_ports(1)}"  # nothing listens there
    with serving(create_app([nowhere], timeout_s=0.5, retry_deadline_s=0.5)) as url, \
            httpx.Client(base_url=url, timeout=WAIT_S) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
        assert ready.headers["retry-after"] == "1"
        body = transfer_body("alice", "bob")
        response = post(client, TRANSFER, body)
        assert_problem(response, 503, "OUTCOME_UNKNOWN", body["transaction_id"], "same")
        assert response.json()["transaction_id"] == body["transaction_id"]
        assert response.headers["retry-after"] == "1"
        read = client.get("/v1/wallet/accounts/alice/balance")
        assert_problem(read, 503, "UNAVAILABLE", "unavailable")
        assert "127.0.0.1" not in read.text
        assert client.get("/healthz").status_code == 200


@pytest.fixture
def fake() -> Iterator[FakeWalletServer]:
    with running_fake(partition_count=PARTITIONS) as server:
        server.add_account("alice", "USD", "10.00")
        server.add_account("bob", "USD")
        yield server


def test_a_transfer_not_final_by_the_deadline_is_202_with_its_status_url(
    fake: FakeWalletServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def pending(request: pb.TransferRequest) -> pb.TransferResponse:
        return pb.TransferResponse(status=pb.PENDING, transaction_id=request.transaction_id)

    monkeypatch.setattr(fake, "do_transfer", pending)
    with serving(create_app([fake.address])) as url, \
            httpx.Client(base_url=url, timeout=WAIT_S) as client:
        body = transfer_body("alice", "bob")
        response = post(client, TRANSFER, body)
        assert response.status_code == 202, response.text
        assert response.json() == {"status": "pending", "transaction_id": body["transaction_id"],
                                   "position": 0}
        assert response.headers["location"] == (
            f"/v1/wallet/transfers/alice/{body['transaction_id']}")


def test_a_cluster_without_the_history_answers_501(fake: FakeWalletServer) -> None:
    fake.fail("ListTransfers", grpc.StatusCode.UNIMPLEMENTED, times=None,
              reason="UNIMPLEMENTED", details="ListTransfers arrives with the event archive")
    with serving(create_app([fake.address])) as url, \
            httpx.Client(base_url=url, timeout=WAIT_S) as client:
        response = client.get("/v1/wallet/accounts/alice/transfers")
        assert_problem(response, 501, "UNIMPLEMENTED", "not implemented by the cluster yet",
                     "ListTransfers")


def test_readyz_is_503_while_a_partition_has_no_leader(fake: FakeWalletServer) -> None:
    fake.node_id = ""  # the fake then reports no leader for any partition
    with serving(create_app([fake.address])) as url, \
            httpx.Client(base_url=url, timeout=WAIT_S) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert ready.json()["status"] == "not_ready"
        assert "no leader for partition(s) 0, 1" in ready.json()["message"]
        assert ready.headers["retry-after"] == "1"


def test_a_cluster_failure_is_500_without_its_internals(fake: FakeWalletServer) -> None:
    fake.fail("GetBalance", grpc.StatusCode.INTERNAL, times=None,
              details="Traceback: KeyError in /srv/node/secret.py")
    fake.fail("Deposit", grpc.StatusCode.PERMISSION_DENIED, times=None, details="secret token")
    with serving(create_app([fake.address])) as url, \
            httpx.Client(base_url=url, timeout=WAIT_S) as client:
        read = client.get("/v1/wallet/accounts/alice/balance")
        assert_problem(read, 500, "INTERNAL")
        written = post(client, "/v1/wallet/deposit", {"account_id": "alice", "amount": "1.00",
                                                      "currency": "USD",
                                                      "transaction_id": new_id()})
        assert_problem(written, 500, "PERMISSION_DENIED")
        assert "secret" not in read.text + written.text


# --- walletctl gateway ------------------------------------------------------------------


def test_walletctl_gateway_serves_the_cluster_file_and_stops_cleanly_on_sigterm(
    cluster: LocalCluster, tmp_path: Path,
) -> None:
    port = allocate_ports(1)
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "node.cli.walletctl", "gateway", "--config",
             str(cluster.config_path), "--listen", f"127.0.0.1:{port}"],
            cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        def healthy() -> bool:
            if process.poll() is not None:
                raise AssertionError("walletctl gateway exited:\n" + log_path.read_text())
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, "walletctl gateway to answer /healthz")
        ready = httpx.get(f"{url}/readyz", timeout=WAIT_S)
        assert ready.status_code == 200, ready.text
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT_S) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=WAIT_S)


def test_walletctl_gateway_refuses_a_bad_listen_address(cluster: LocalCluster) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "node.cli.walletctl", "gateway", "--config",
         str(cluster.config_path), "--listen", "nowhere"],
        cwd=REPO, capture_output=True, timeout=WAIT_S, check=False)
    assert done.returncode == 2
    assert b"--listen" in done.stderr


# --- fuzzing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Watched:
    """Accounts no fuzz request may change: all USD, on both partitions, the first funded."""

    names: tuple[str, ...]
    deposit_id: str
    """The transaction id of the first account's deposit: a transfer reusing it is 409."""

    def balances(self, http: httpx.Client) -> list[Decimal]:
        return [balance(http, name) for name in self.names]


@pytest.fixture(scope="module")
def watched(http: httpx.Client) -> Watched:
    names = (*accounts_on(0, 2, "http-watched"), *accounts_on(1, 1, "http-watched"))
    for name in names:
        create(http, name, "USD")
    deposit_id = new_id()
    response = post(http, "/v1/wallet/deposit", {"account_id": names[0], "amount": "50.00",
                                                  "currency": "USD",
                                                  "transaction_id": deposit_id})
    assert response.status_code == 200, response.text
    return Watched(names, deposit_id)


@pytest.fixture(scope="module")
def served_schema(gateway: str) -> Any:
    return schemathesis.openapi.from_url(f"{gateway}/openapi.json")


_FUZZED = [
    "POST /v1/wallet/balance_transfer", "POST /v1/wallet/accounts", "POST /v1/wallet/deposit",
    "POST /v1/wallet/withdraw", "GET /v1/wallet/accounts/{account_id}/balance",
    "GET /v1/wallet/transfers/{from_account}/{transaction_id}",
    "GET /v1/wallet/accounts/{account_id}/transfers",
]


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE,
                                  schemathesis.GenerationMode.NEGATIVE],
                         ids=["positive", "negative"])
@pytest.mark.parametrize("label", _FUZZED)
def test_fuzzed_requests_never_get_a_5xx_and_conform_to_the_schema(
    served_schema: Any, gateway: str, http: httpx.Client, watched: Watched, label: str,
    mode: schemathesis.GenerationMode,
) -> None:
    operation = served_schema.find_operation_by_label(label)
    assert operation is not None, label
    before = watched.balances(http)

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case[Any]) -> None:
        response = case.call(base_url=gateway, timeout=WAIT_S)
        assert response.status_code < 500, f"{response.status_code} {response.content[:500]!r}"
        case.validate_response(response, checks=[
            status_code_conformance, content_type_conformance, response_schema_conformance,
            response_headers_conformance, negative_data_rejection])

    run()
    assert watched.balances(http) == before


_FIELDS = ("from_account", "to_account", "amount", "currency", "transaction_id")
_json_scalars = (st.none() | st.booleans() | st.integers() | st.floats()
                 | st.text(max_size=12))
_json_values = st.recursive(
    _json_scalars, lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
_texts = (st.text(max_size=70) | st.just("\ud800") | st.just("") | st.just(" USD")
          | st.sampled_from(["EUR", "usd", "1.001", "-1", "1e2", "0.00", "NaN", "\uff11",
                             "00000000-0000-0000-0000-00000000000g", "alice/../bob"]))


def _might_apply(body: object, watched: Watched) -> bool:
    """Could the ledger accept this body (and so change a watched balance)?"""
    if not isinstance(body, dict) or set(body) != set(_FIELDS):
        return False
    if not all(isinstance(body[f], str) for f in _FIELDS):
        return False
    funded, *unfunded = watched.names
    source, destination = body["from_account"], body["to_account"]
    if source != funded or body["transaction_id"] == watched.deposit_id:
        return False  # from an empty or unknown account, or a used id: refused
    try:
        uuid.UUID(body["transaction_id"])
        parse_amount(body["amount"], body["currency"])
    except (ValueError, MoneyError):
        return False
    if ACCOUNT_ID_RE.fullmatch(destination) and partition_of(destination, PARTITIONS) != 0:
        return True  # across partitions: debited before a refusal, so not a pure rejection
    return destination in unfunded and body["currency"] == "USD"


@st.composite
def _refused_transfers(draw: st.DrawFn, watched: Watched) -> object:
    """A valid transfer between watched accounts with one thing wrong with it."""
    funded, *unfunded = watched.names
    (unknown,) = accounts_on(0, 1, "http-unknown")
    body: dict[str, Any] = transfer_body(funded, draw(st.sampled_from(unfunded)), "1.00",
                                         transaction_id=str(draw(st.uuids(version=4))))
    kind = draw(st.sampled_from(["ledger"] * 3 + ["text"] * 3
                                + ["type", "extra", "missing", "not_object", "raw"]))
    field = draw(st.sampled_from(_FIELDS))
    if kind == "ledger":  # well formed, refused by the ledger: 404, 409 or 422
        body |= draw(st.sampled_from([
            {"amount": "99999.00"}, {"currency": "EUR"}, {"currency": "JPY", "amount": "1"},
            {"to_account": funded}, {"to_account": unknown}, {"from_account": unknown},
            {"from_account": unfunded[0]}, {"from_account": unfunded[1]},
            {"transaction_id": watched.deposit_id}]))
    elif kind == "text":
        body[field] = draw(_texts)
    elif kind == "type":
        body[field] = draw(_json_values.filter(lambda v: not isinstance(v, str)))
    elif kind == "extra":
        body[draw(st.text(max_size=10).filter(lambda k: k not in _FIELDS))] = draw(_json_values)
    elif kind == "missing":
        del body[field]
    elif kind == "not_object":
        return draw(_json_values.filter(lambda v: not isinstance(v, dict)))
    else:
        return draw(st.binary(max_size=200))
    return body


def test_malformed_transfers_touching_watched_accounts_are_refused_and_change_nothing(
    http: httpx.Client, watched: Watched,
) -> None:
    before = watched.balances(http)

    @settings(max_examples=MUTATION_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=_refused_transfers(watched))
    def run(body: object) -> None:
        assume(not _might_apply(body, watched))
        if isinstance(body, bytes):
            response = http.post(TRANSFER, content=body,
                                 headers={"content-type": "application/json"})
        else:
            response = post(http, TRANSFER, body)
        assert response.status_code in (400, 404, 409, 422), response.text
        assert response.json()["error"]["code"]
        assert watched.balances(http) == before, body

    run()
