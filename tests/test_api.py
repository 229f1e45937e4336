"""API-edge validation that needs no cluster: ids, their age, and status mapping."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

from ledger.results import Code
from node import api
from node.api import ApiError


def uuid7_at(unix_ms: int) -> bytes:
    raw = bytearray(uuid.uuid4().bytes)
    raw[:6] = unix_ms.to_bytes(6, "big")
    raw[6] = 0x70 | (raw[6] & 0x0F)
    return bytes(raw)


def test_a_canonical_uuid_parses_to_its_bytes() -> None:
    text = "0f8fad5b-d9cb-469f-a165-70867728950e"
    assert api.parse_uuid(text, "transaction_id") == uuid.UUID(text).bytes


@pytest.mark.parametrize("text", ["", "0f8fad5bd9cb469fa16570867728950e",
                                  "{0f8fad5b-d9cb-469f-a165-70867728950e}",
                                  "urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e",
                                  "0f8fad5b-d9cb-469f-a165-70867728950", "x" * 10_000,
                                  "0f8fad5b-d9cb-469f-a165-7086772895\u0660e"])
def test_anything_but_a_canonical_uuid_is_invalid_argument(text: str) -> None:
    with pytest.raises(ApiError) as excinfo:
        api.parse_uuid(text, "transaction_id")
    assert excinfo.value.status == grpc.StatusCode.INVALID_ARGUMENT
    assert "transaction_id" in excinfo.value.message


def test_uuid7_time_is_read_from_its_first_48_bits() -> None:
    assert api.uuid_time_ms(uuid7_at(1_700_000_000_123)) == 1_700_000_000_123


def test_uuid1_time_is_read_from_its_timestamp_fields() -> None:
    made = uuid.uuid1()
    assert abs((api.uuid_time_ms(made.bytes) or 0) - time.time() * 1000) < 60_000


def test_random_uuids_carry_no_time() -> None:
    assert api.uuid_time_ms(uuid.uuid4().bytes) is None


def test_an_id_older_than_the_dedup_window_is_refused() -> None:
    now_ms = 1_800_000_000_000
    old = uuid7_at(now_ms - api.DEDUP_WINDOW_S * 1000 - 1)
    with pytest.raises(ApiError) as excinfo:
        api.check_not_expired(old, now_ms)
    assert excinfo.value.reason == "TRANSACTION_ID_EXPIRED"


def test_an_id_inside_the_window_is_accepted() -> None:
    now_ms = 1_800_000_000_000
    api.check_not_expired(uuid7_at(now_ms - 1000), now_ms)


@pytest.mark.parametrize(("code", "status"), [
    (Code.ACCOUNT_NOT_FOUND, grpc.StatusCode.NOT_FOUND),
    (Code.INSUFFICIENT_FUNDS, grpc.StatusCode.FAILED_PRECONDITION),
    (Code.CURRENCY_MISMATCH, grpc.StatusCode.FAILED_PRECONDITION),
    (Code.SAME_ACCOUNT, grpc.StatusCode.FAILED_PRECONDITION),
    (Code.ID_CONFLICT, grpc.StatusCode.ALREADY_EXISTS),
    (Code.INVALID_AMOUNT, grpc.StatusCode.INVALID_ARGUMENT),
])
def test_ledger_refusals_map_to_precise_statuses(code: Code, status: grpc.StatusCode) -> None:
    assert api.status_of(code) == status


def test_an_id_from_the_far_future_is_refused() -> None:
    now_ms = 1_800_000_000_000
    with pytest.raises(ApiError) as excinfo:
        api.check_not_expired(uuid7_at(now_ms + api.CLOCK_SKEW_S_MAX * 1000 + 1), now_ms)
    assert excinfo.value.reason == "TRANSACTION_ID_IN_FUTURE"


def test_the_nil_uuid_is_refused_as_a_new_id_with_a_precise_reason() -> None:
    with pytest.raises(ApiError) as excinfo:
        api.parse_uuid("00000000-0000-0000-0000-000000000000", "transaction_id")
    assert excinfo.value.status == grpc.StatusCode.INVALID_ARGUMENT
    assert excinfo.value.reason == "INVALID_TRANSACTION_ID"
    assert excinfo.value.message.startswith("transaction_id: the nil UUID")


def test_the_nil_uuid_is_accepted_where_an_existing_id_is_looked_up() -> None:
    nil = "00000000-0000-0000-0000-000000000000"
    assert api.parse_uuid(nil, "transaction_id", nil_allowed=True) == bytes(16)
