"""Request validation and the single mapping from ledger outcomes to gRPC statuses.

Every refusal leaves the API as an `ApiError`: a gRPC status, a machine-readable
reason (a ledger result code name, or one of the API's own reasons below), and
a message that names the offending field. Servicers raise it; `abort_with`
turns it into the call's status plus the `raftwallet-reason` trailing metadata,
and `rpc_handler` does that for every method of a service it decorates.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from ledger.money import Currency, MoneyError, currency, parse_amount
from ledger.results import Code
from ledger.state import ACCOUNT_ID_RE

REASON_METADATA_KEY = "raftwallet-reason"
_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", re.ASCII
)


@dataclass(frozen=True, slots=True)
class ApiError(Exception):
    status: grpc.StatusCode
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.status.name} {self.reason}: {self.message}"


def invalid(field: str, message: str, reason: str = "INVALID_ARGUMENT") -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, reason, f"{field}: {message}")


NIL_UUID = "00000000-0000-0000-0000-000000000000"


def parse_uuid(text: str, field: str, *, nil_allowed: bool = False) -> bytes:
    """A UUID in its canonical 8-4-4-4-12 hex form, as its 16 bytes.

    The nil UUID is refused unless `nil_allowed`: as the idempotency key of a new
    write it is what an unset field or a zeroed buffer sends, so every such client
    would share one key and see each other's first answer instead of moving money.
    Reads of an existing id (GetTransfer, AbortTransfer) allow it: ids applied before
    it was refused stay reachable.
    """
    if not text:
        raise invalid(field, "is required (a UUID)", Code.INVALID_TRANSACTION_ID.name)
    if len(text) != 36 or _UUID_RE.fullmatch(text) is None:
        raise invalid(field, f"{_show(text)} is not a UUID like "
                      "'0f8fad5b-d9cb-469f-a165-70867728950e'", Code.INVALID_TRANSACTION_ID.name)
    raw = bytes.fromhex(text.replace("-", ""))
    if not nil_allowed and not any(raw):
        raise invalid(field, f"the nil UUID {NIL_UUID} is not a usable id: send a fresh UUID "
                      "per request (UUIDv7 recommended)", Code.INVALID_TRANSACTION_ID.name)
    return raw


PAGE_TOKEN_CHARS_MAX = 20
"""A page token is a list index in decimal (below 2**64). Longer ones are refused before
int() sees them: CPython raises on more than 4300 digits, and long ones cost quadratic time."""

DEDUP_WINDOW_S = 7 * 24 * 3600
"""How long a transaction id is remembered; see docs/ledger.md, "Retention"."""

CLOCK_SKEW_S_MAX = 300
"""Time-bearing ids may run this far ahead of the node's clock, no more: a far-future id
would outlive the dedup window and could be applied twice."""

_UUID_V1_EPOCH_OFFSET_100NS = 0x01B21DD213814000  # from 1582-10-15 to 1970-01-01


def uuid_time_ms(raw: bytes) -> int | None:
    """Creation time of a time-bearing UUID (v1, v6, v7) in Unix ms, else None."""
    version = raw[6] >> 4
    if version == 7:
        return int.from_bytes(raw[:6], "big")
    if version in (1, 6):
        if version == 1:
            ticks = ((int.from_bytes(raw[6:8], "big") & 0x0FFF) << 48
                     | int.from_bytes(raw[4:6], "big") << 32 | int.from_bytes(raw[0:4], "big"))
        else:
            ticks = (int.from_bytes(raw[0:6], "big") << 12
                     | (int.from_bytes(raw[6:8], "big") & 0x0FFF))
        return (ticks - _UUID_V1_EPOCH_OFFSET_100NS) // 10_000
    return None


def check_not_expired(raw: bytes, now_ms: int, field: str = "transaction_id",
                      window_s: int = DEDUP_WINDOW_S) -> None:
    """Refuse time-bearing ids older than the dedup window: their outcome may be forgotten."""
    created_ms = uuid_time_ms(raw)
    if created_ms is not None and created_ms > now_ms + CLOCK_SKEW_S_MAX * 1000:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "TRANSACTION_ID_IN_FUTURE",
                       f"{field}: its time is more than {CLOCK_SKEW_S_MAX // 60} minutes ahead of "
                       "the cluster's clock; check the client's clock")
    if created_ms is not None and created_ms < now_ms - window_s * 1000:
        raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "TRANSACTION_ID_EXPIRED",
                       f"{field}: created more than {window_s // 86400} days ago, beyond the "
                       "deduplication window; its outcome is in the history, use a new id")


def format_uuid(raw: bytes) -> str:
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def check_account_id(text: str, field: str) -> str:
    if not text:
        raise invalid(field, "is required", Code.INVALID_ACCOUNT_ID.name)
    if ACCOUNT_ID_RE.fullmatch(text) is None:
        raise invalid(field, f"{_show(text)} is not an account id (1-64 ASCII letters, digits "
                      "and ._:@-, starting with a letter or digit)", Code.INVALID_ACCOUNT_ID.name)
    return text


def check_currency(code: str, field: str = "currency") -> Currency:
    if len(code) != 3:  # refused here, so that the message quotes a long code only in part
        raise invalid(field, f"{_show(code)} is not a three-letter upper-case ISO 4217 code",
                      Code.INVALID_CURRENCY.name)
    try:
        return currency(code)
    except MoneyError as exc:
        raise invalid(field, exc.message, Code.INVALID_CURRENCY.name) from None


def check_amount(text: str, cur: Currency, field: str = "amount") -> int:
    try:
        return parse_amount(text, cur.code)
    except MoneyError as exc:
        raise invalid(field, exc.message, Code.INVALID_AMOUNT.name) from None


def _show(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


_STATUS_BY_CODE = {
    Code.ACCOUNT_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.ACCOUNT_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Code.ID_CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
    Code.CURRENCY_MISMATCH: grpc.StatusCode.FAILED_PRECONDITION,
    Code.INSUFFICIENT_FUNDS: grpc.StatusCode.FAILED_PRECONDITION,
    Code.SAME_ACCOUNT: grpc.StatusCode.FAILED_PRECONDITION,
    Code.ACCOUNT_CLOSED: grpc.StatusCode.FAILED_PRECONDITION,
    Code.BALANCE_LIMIT: grpc.StatusCode.FAILED_PRECONDITION,
    Code.ABORTED: grpc.StatusCode.FAILED_PRECONDITION,
    Code.ACCOUNT_NOT_EMPTY: grpc.StatusCode.FAILED_PRECONDITION,
    Code.TRANSFER_IN_FLIGHT: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_of(code: Code) -> grpc.StatusCode:
    """The gRPC status for a ledger refusal (INVALID_* codes are bad input)."""
    return _STATUS_BY_CODE.get(code, grpc.StatusCode.INVALID_ARGUMENT)


def ledger_error(code: Code, message: str) -> ApiError:
    return ApiError(status_of(code), code.name, message)


async def abort_with(context: grpc.aio.ServicerContext, error: ApiError) -> None:
    context.set_trailing_metadata(((REASON_METADATA_KEY, error.reason),))
    await context.abort(error.status, error.message)


Request = TypeVar("Request")
Response = TypeVar("Response")


def rpc_handler(
    method: Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]],
) -> Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]]:
    """Turns ApiError into a status and any other exception into INTERNAL (no stack trace).

    The INTERNAL case is logged with the traceback by the logger of the method's module.
    """
    log = logging.getLogger(method.__module__)

    async def wrapper(self: Any, request: Request, context: grpc.aio.ServicerContext) -> Response:
        try:
            return await method(self, request, context)
        except ApiError as error:
            await abort_with(context, error)
            raise AssertionError("unreachable") from None
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("request failed", extra={"method": method.__name__})
            await abort_with(context, ApiError(grpc.StatusCode.INTERNAL, "INTERNAL",
                                               "internal error; see the node's log"))
            raise AssertionError("unreachable") from None

    wrapper.__name__ = method.__name__
    return wrapper
