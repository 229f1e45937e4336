"""The gateway's one error contract: RFC 9457 problem details, and THE table from gRPC to HTTP.

Every error answer of the gateway is `Content-Type: application/problem+json`:

    {"type": "/problems/insufficient-funds", "title": "Insufficient funds", "status": 422,
     "detail": "from_account 'alice' has insufficient funds (...)",
     "instance": "/v1/wallet/transfers/alice/7c9e2b14-...",
     "error": {"code": "INSUFFICIENT_FUNDS", "message": "from_account 'alice' has ..."},
     "transaction_id": "7c9e2b14-..."}

`type` is `/problems/` followed by the reason in lower case with `-` for `_`: a URI
reference relative to the gateway that identifies the problem type (an identifier, not a
page the gateway serves: docs/http-api.md lists the types). `title` is fixed per type,
`detail` names the offending field. `error` and `transaction_id` are the gateway's answer
from before problem details, kept as extension members so that clients reading them work
unchanged. `instance` is there only for a write that the cluster refused or left
undecided: the status URL of that write (`/v1/wallet/transfers/{account}/{transaction_id}`).

A cluster failure (an SDK error, i.e. a gRPC status) becomes HTTP through one table,
`HTTP_OF_GRPC`, which lists every gRPC status; docs/http-api.md shows it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from types import MappingProxyType
from typing import Any

import grpc
from fastapi.responses import JSONResponse

from client.errors import OutcomeUnknown, WalletError
from node.gateway.models import ErrorDetail, Problem

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "/problems/"
"""`type` of a problem: this, then the reason as a slug (INSUFFICIENT_FUNDS: insufficient-funds)."""
RETRY_AFTER_S = 1
"""Retry-After of every transient answer (429, 503, 504). The SDK has already retried
with backoff for the request's whole deadline by then, and the nodes give no hint of
their own, so this is the pause before a client's next try, not a promise."""


class Kind(Enum):
    """What an error status means to the HTTP client, and so what its answer shows."""

    REFUSAL = "refusal"
    """The request as sent is refused: the cluster's reason and message are shown."""
    TRANSIENT = "transient"
    """The cluster could not answer now: the same request may succeed later (Retry-After)."""
    UNIMPLEMENTED = "unimplemented"
    """The cluster does not offer this yet: its message is shown."""
    INTERNAL = "internal"
    """Unexpected: only the status name is shown; the details go to the gateway's log."""


@dataclass(frozen=True, slots=True)
class StatusRule:
    http_status: int
    kind: Kind
    detail: str = ""
    """For TRANSIENT and INTERNAL: the detail shown instead of the cluster's message
    (`{status}` is the gRPC status name)."""


_UNEXPECTED = StatusRule(500, Kind.INTERNAL, "the cluster failed to process the request "
                         "({status}); the gateway's log has the details")

HTTP_OF_GRPC: MappingProxyType[grpc.StatusCode, StatusRule] = MappingProxyType({
    grpc.StatusCode.INVALID_ARGUMENT: StatusRule(400, Kind.REFUSAL),
    grpc.StatusCode.NOT_FOUND: StatusRule(404, Kind.REFUSAL),
    grpc.StatusCode.ALREADY_EXISTS: StatusRule(409, Kind.REFUSAL),
    grpc.StatusCode.FAILED_PRECONDITION: StatusRule(422, Kind.REFUSAL),
    grpc.StatusCode.RESOURCE_EXHAUSTED: StatusRule(
        429, Kind.TRANSIENT, "the cluster is overloaded ({status}): it sheds load; retry "
        "after Retry-After seconds"),
    grpc.StatusCode.UNIMPLEMENTED: StatusRule(501, Kind.UNIMPLEMENTED),
    grpc.StatusCode.UNAVAILABLE: StatusRule(
        503, Kind.TRANSIENT, "the cluster is unavailable ({status}): no partition leader "
        "answered in time; retry after Retry-After seconds"),
    grpc.StatusCode.CANCELLED: StatusRule(
        503, Kind.TRANSIENT, "the cluster call was cancelled ({status}) before an answer; "
        "retry after Retry-After seconds"),
    grpc.StatusCode.DEADLINE_EXCEEDED: StatusRule(
        504, Kind.TRANSIENT, "the cluster did not answer in time ({status}); retry after "
        "Retry-After seconds"),
    # The gateway's own credentials or the cluster itself: nothing the HTTP client can fix.
    grpc.StatusCode.UNAUTHENTICATED: _UNEXPECTED,
    grpc.StatusCode.PERMISSION_DENIED: _UNEXPECTED,
    # Statuses the nodes never send (OK is not an error): a bug somewhere.
    grpc.StatusCode.OK: _UNEXPECTED,
    grpc.StatusCode.UNKNOWN: _UNEXPECTED,
    grpc.StatusCode.ABORTED: _UNEXPECTED,
    grpc.StatusCode.OUT_OF_RANGE: _UNEXPECTED,
    grpc.StatusCode.INTERNAL: _UNEXPECTED,
    grpc.StatusCode.DATA_LOSS: _UNEXPECTED,
})
"""THE mapping of a cluster failure's gRPC status to its HTTP status; every status is listed."""


# --- problem types ---------------------------------------------------------------------

TITLES: MappingProxyType[str, str] = MappingProxyType({
    # The ledger's reasons (ledger.results.Code), as the nodes send them.
    "ACCOUNT_NOT_FOUND": "Account not found",
    "ACCOUNT_EXISTS": "Account already exists",
    "CURRENCY_MISMATCH": "Currency mismatch",
    "INSUFFICIENT_FUNDS": "Insufficient funds",
    "SAME_ACCOUNT": "Same account on both sides",
    "ACCOUNT_CLOSED": "Account closed",
    "ID_CONFLICT": "Id already used with other content",
    "BALANCE_LIMIT": "Balance limit reached",
    "INVALID_AMOUNT": "Invalid amount",
    "INVALID_ACCOUNT_ID": "Invalid account id",
    "INVALID_CURRENCY": "Invalid currency",
    "INVALID_TRANSACTION_ID": "Invalid transaction id",
    "ABORTED": "Transfer aborted",
    "ACCOUNT_NOT_EMPTY": "Account not empty",
    "TRANSFER_IN_FLIGHT": "Transfer in flight",
    "UNKNOWN_TRANSFER": "Unknown transfer",
    "STALE_CREDIT": "Stale credit",
    "INVALID_PARTITION": "Invalid partition",
    "INVALID_COMMAND": "Invalid command",
    # The nodes' API reasons (node.api, node.host, the services).
    "TRANSFER_NOT_FOUND": "Transfer not found",
    "TRANSACTION_ID_EXPIRED": "Transaction id expired",
    "TRANSACTION_ID_IN_FUTURE": "Transaction id from the future",
    "OVERLOADED": "Cluster overloaded",
    "NO_LEADER": "No partition leader",
    "HISTORY_UNAVAILABLE": "History unavailable",
    # The gateway's own reasons.
    "INVALID_ARGUMENT": "Invalid request",
    "IDEMPOTENCY_KEY_MISMATCH": "Idempotency-Key differs from the body's id",
    "NOT_FOUND": "No such endpoint",
    "METHOD_NOT_ALLOWED": "Method not allowed",
    "PAYLOAD_TOO_LARGE": "Request body too large",
    "OUTCOME_UNKNOWN": "Outcome unknown",
    "INTERNAL": "Internal error",
    # gRPC status names, the reason when the node sent none.
    "UNAVAILABLE": "Cluster unavailable",
    "DEADLINE_EXCEEDED": "Cluster deadline exceeded",
    "RESOURCE_EXHAUSTED": "Cluster overloaded",
    "CANCELLED": "Cluster call cancelled",
    "UNIMPLEMENTED": "Not implemented by the cluster",
})
"""The title of each known problem type. A reason not listed (from a newer node) gets one
made from its name, just as stable."""


def problem_type(reason: str) -> str:
    """The problem type URI of a reason: INSUFFICIENT_FUNDS -> /problems/insufficient-funds."""
    return PROBLEM_TYPE_PREFIX + reason.lower().replace("_", "-")


def title_of(reason: str) -> str:
    """The problem type's title: the same for every answer of that type."""
    title = TITLES.get(reason)
    if title is not None:
        return title
    if reason.startswith("HTTP_") and reason[5:].isdigit():
        try:
            return HTTPStatus(int(reason[5:])).phrase
        except ValueError:
            pass
    return reason.replace("_", " ").capitalize()


# --- errors and their answers -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpError:
    """An HTTP error answer: status, machine-readable reason, detail for people, and
    the Retry-After of a transient one."""

    status: int
    code: str
    message: str
    retry_after_s: int | None = None


def http_error_of(error: WalletError) -> HttpError:
    """A cluster failure (an SDK error) as HTTP, by the one table HTTP_OF_GRPC.

    The reason is the one the node sent (INSUFFICIENT_FUNDS...), else the status name;
    a write whose outcome is unknown is OUTCOME_UNKNOWN, with the HTTP status of the
    failure that ended its retries. Internals (a 500's message) are never shown.
    """
    rule = HTTP_OF_GRPC[error.status]
    retry_after = RETRY_AFTER_S if rule.kind is Kind.TRANSIENT else None
    if isinstance(error, OutcomeUnknown):
        return HttpError(
            rule.http_status, "OUTCOME_UNKNOWN",
            f"the cluster did not answer in time ({error.status_name}): the request may or may "
            "not have been applied. Retry the same request with the same id "
            f"({error.transaction_id}); it is applied at most once", RETRY_AFTER_S)
    if rule.kind is Kind.INTERNAL:
        log.error("cluster call failed: %s", error)
        return HttpError(rule.http_status, error.status_name,
                         rule.detail.format(status=error.status_name))
    code = error.reason or error.status_name
    if rule.kind is Kind.TRANSIENT:
        return HttpError(rule.http_status, code, rule.detail.format(status=error.status_name),
                         retry_after)
    if rule.kind is Kind.UNIMPLEMENTED:
        return HttpError(rule.http_status, code, "not implemented by the cluster yet: "
                         f"{error.message or error.status_name}")
    return HttpError(rule.http_status, code, error.message or code)


class GatewayError(Exception):
    """Raised by a route; rendered as a problem by the app's handler. `instance` is the
    status URL of the write concerned, if any."""

    def __init__(self, error: HttpError, transaction_id: str | None = None,
                 instance: str | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.transaction_id = transaction_id
        self.instance = instance


def problem_of(error: HttpError, transaction_id: str | None = None,
               instance: str | None = None) -> dict[str, Any]:
    """The problem details body of an error answer (`instance` left out when None)."""
    body = Problem(type=problem_type(error.code), title=title_of(error.code),
                   status=error.status, detail=error.message, instance=instance,
                   error=ErrorDetail(code=error.code, message=error.message),
                   transaction_id=transaction_id).model_dump(mode="json")
    if instance is None:
        del body["instance"]
    return body


def problem_response(error: HttpError, transaction_id: str | None = None,
                     headers: dict[str, str] | None = None,
                     instance: str | None = None) -> JSONResponse:
    """The error answer: a problem+json body, with Retry-After if the error is transient."""
    all_headers = dict(headers or {})
    if error.retry_after_s is not None:
        all_headers["Retry-After"] = str(error.retry_after_s)
    return JSONResponse(problem_of(error, transaction_id, instance), status_code=error.status,
                        headers=all_headers or None, media_type=PROBLEM_MEDIA_TYPE)
