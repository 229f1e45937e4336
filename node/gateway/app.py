"""The HTTP/JSON gateway: the source design's HTTP API in front of a RaftWallet cluster.

    walletctl gateway --config cluster-configs/local-3node.toml --listen 127.0.0.1:8080

A FastAPI (ASGI) application served by uvicorn. It talks to the cluster only
through the asyncio client SDK (`client.aio.AsyncWalletClient`), so requests
are routed to the partition leader and transient failures are retried with the
same transaction id; the ledger deduplicates by that id, so a retried HTTP
request gets the first answer again.

Every failure is an RFC 9457 problem (`application/problem+json`, node.gateway.problems),
and every gRPC status becomes an HTTP status through one table there, `HTTP_OF_GRPC`.
Request bodies are strict (node.gateway.models) and limited to 64 KiB. A write's
idempotency key may come as the `Idempotency-Key` header instead of the body's field.
The OpenAPI document is served at /openapi.json and its interactive page at /docs;
/healthz and /readyz are for load balancers. docs/http-api.md is the reference.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

import grpc
import uvicorn
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import WithJsonSchema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from client.aio import AsyncWalletClient
from client.auth import (
    NO_CREDENTIALS,
    Credentials,
    CredentialsError,
    credentials_from_cluster_file,
    credentials_from_environment,
)
from client.errors import OutcomeUnknown, WalletError
from client.sdk import (
    MovementResult,
    TransferRecord,
    TransferResult,
    TransferStatus,
    normalize_targets,
)
from ledger.results import Code
from node import api as node_api
from node.gateway.models import (
    ACCOUNT_ID_MAX_CHARS,
    ACCOUNT_ID_PATTERN,
    EXAMPLE_TRANSACTION_ID,
    ID_MAX_CHARS,
    IDEMPOTENCY_KEY_HEADER,
    IDEMPOTENCY_KEY_MAX_CHARS,
    PAGE_TOKEN_MAX_CHARS,
    AccountCreated,
    BalanceAnswer,
    CreateAccountRequest,
    HealthAnswer,
    MovementDone,
    MovementRequest,
    OutcomeStatus,
    PartitionLeader,
    Problem,
    ReadinessAnswer,
    TransferDone,
    TransferPageAnswer,
    TransferPending,
    TransferRequest,
    TransferStatusAnswer,
    TransferStepAnswer,
)
from node.gateway.problems import (
    HTTP_OF_GRPC,
    PROBLEM_MEDIA_TYPE,
    RETRY_AFTER_S,
    GatewayError,
    HttpError,
    http_error_of,
    problem_of,
    problem_response,
)

log = logging.getLogger(__name__)

__all__ = ["GatewayError", "HttpError", "create_app", "http_error_of", "idempotency_key",
           "parse_listen", "run_gateway"]

MAX_BODY_BYTES = 64 * 1024
"""Largest request body accepted; more is 413 PAYLOAD_TOO_LARGE."""
DRAIN_MAX_BYTES = 1024 * 1024
"""An oversized body up to this size is read (and dropped) before the 413 goes out, so the
client receives the answer instead of a connection reset; beyond it the gateway just closes."""
DEFAULT_TIMEOUT_S = 3.0
"""Deadline of one attempt of one cluster call at one node (a cross-partition transfer not
final by then is answered 202 pending); a node that holds an attempt longer (paused, cut
off) is passed over and the SDK tries the next one with the same transaction id."""
DEFAULT_RETRY_DEADLINE_S = 10.0
"""How long one HTTP request keeps retrying transient cluster failures (`--timeout`)."""
READY_TIMEOUT_S = 2.5
"""Deadline of one /readyz ClusterStatus: more than the 1 s a node waits for its peers'
views (node.services.admin_service.PEER_STATUS_TIMEOUT_S), so that paused peers do not fail it."""
READY_RETRY_DEADLINE_S = 4.0
"""/readyz asks ClusterStatus, trying the next node on a failure, for at most this long."""
SHUTDOWN_GRACE_S = 15
"""On SIGTERM, requests in flight get this long to finish."""
AT_MAX_CHARS = 64
"""`?at=` of the balance: an ISO 8601 time is about 32 characters."""
HISTORY_LIMIT_MAX = 1_000
"""Most transfers per history page (the node's node.archive.history.PAGE_LIMIT_MAX)."""
EXIT_OK = 0
EXIT_USAGE = 2

T = TypeVar("T")


def _outcome_error(status: TransferStatus, reason: str) -> WalletError:
    """A FAILED (or status-less) outcome answered without an error status, as an SDK error."""
    if status is TransferStatus.FAILED:
        try:
            grpc_status = node_api.status_of(Code[reason])
        except KeyError:
            grpc_status = grpc.StatusCode.FAILED_PRECONDITION
        return WalletError(grpc_status, f"the ledger refused it ({reason or 'no reason'})", reason)
    return WalletError(grpc.StatusCode.INTERNAL, "the cluster answered without a status")


def _safe_text(text: str, limit: int = 200) -> str:
    """Text from a client, fit to be echoed: valid UTF-8, bounded."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "..."


def _echo_id(value: object) -> str | None:
    """A client's transaction id, echoed in an error answer when it is a short string."""
    if isinstance(value, str) and len(value) <= ID_MAX_CHARS:
        return _safe_text(value)
    return None


def _unquote(value: str) -> str:
    """An Idempotency-Key as a structured-field string (`"..."`, as the IETF draft writes
    it) or bare (as most clients send it): the key itself."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _echo_request_id(request: Request, body: object) -> str | None:
    """The request's idempotency key for an error answer: the body's transaction_id or
    request_id, else the Idempotency-Key header (when it is given once)."""
    if isinstance(body, dict):
        for field in ("transaction_id", "request_id"):
            if isinstance(body.get(field), str):
                return _echo_id(body[field])
    keys = request.headers.getlist(IDEMPOTENCY_KEY_HEADER)
    return _echo_id(_unquote(keys[0])) if len(keys) == 1 else None


async def _idempotency_keys(
    request: Request,
    idempotency_key: Annotated[str | None, WithJsonSchema({
        "type": "string", "format": "uuid", "maxLength": IDEMPOTENCY_KEY_MAX_CHARS,
        "examples": [EXAMPLE_TRANSACTION_ID]}), Header(
        alias=IDEMPOTENCY_KEY_HEADER, max_length=IDEMPOTENCY_KEY_MAX_CHARS,
        description="The write's idempotency key, instead of (or equal to) the body's "
        "`transaction_id` / `request_id`: a UUID in canonical form, bare or in double quotes "
        "(a structured-field string). Given with the body's field, the two must be equal "
        "(else 400 IDEMPOTENCY_KEY_MISMATCH).")] = None,
) -> tuple[str, ...]:
    """Every Idempotency-Key header of the request (declared here for the OpenAPI document)."""
    if idempotency_key is None:
        return ()
    return tuple(request.headers.getlist(IDEMPOTENCY_KEY_HEADER))


IdempotencyKeys = Annotated[tuple[str, ...], Depends(_idempotency_keys)]


def idempotency_key(headers: Sequence[str], body_value: str | None, field: str, *,
                    required: bool = True) -> str | None:
    """A write's idempotency key: the body's `field`, or the Idempotency-Key header.

    The header follows the rules of the field (a UUID in canonical form, not the nil
    UUID: node.api.parse_uuid, as the node checks the field). Each of these is a 400
    GatewayError naming the header: a header given twice, one that is not such a UUID
    (INVALID_TRANSACTION_ID), one that differs from the body's field
    (IDEMPOTENCY_KEY_MISMATCH); and neither given when the key is `required`.
    """
    echo = _echo_id(body_value)
    if not headers:
        if body_value is None and required:
            raise GatewayError(HttpError(
                400, "INVALID_ARGUMENT", f"{field}: is required (in the body, or as the "
                f"{IDEMPOTENCY_KEY_HEADER} header)"))
        return body_value
    if len(headers) > 1:
        raise GatewayError(HttpError(400, "INVALID_ARGUMENT", f"{IDEMPOTENCY_KEY_HEADER}: is "
                                     "given more than once"), echo)
    key = _unquote(headers[0])
    try:
        node_api.parse_uuid(key, IDEMPOTENCY_KEY_HEADER)
    except node_api.ApiError as error:
        raise GatewayError(HttpError(400, error.reason, error.message),
                           echo or _echo_id(key)) from None
    if body_value is None:
        return key
    if body_value.lower() != key.lower():  # the same UUID, whatever the case of its digits
        raise GatewayError(HttpError(
            400, "IDEMPOTENCY_KEY_MISMATCH", f"{IDEMPOTENCY_KEY_HEADER}: {key!r} differs from "
            f"the body's {field} {_safe_text(repr(body_value), 80)}; send the key once, or "
            "the same in both"), echo)
    return body_value


async def _call(call: Awaitable[T], transaction_id: str | None = None,
                instance: str | None = None) -> T:
    """Await one SDK call; its failure becomes a GatewayError (never a stack trace).
    `instance`, the status URL of a write, is shown unless the request was invalid."""
    try:
        return await call
    except WalletError as error:
        mapped = http_error_of(error)
        raise GatewayError(mapped, transaction_id,
                           instance if mapped.status != 400 else None) from None
    except Exception:
        log.exception("gateway call failed")
        raise GatewayError(HttpError(500, "INTERNAL", "the gateway failed to process the "
                                     "request; its log has the details"), transaction_id) from None


# --- validation errors: FastAPI's 422 becomes our 400 ----------------------------------


def _field_of(loc: Sequence[Any]) -> str:
    names = [part if part else '""' for part in loc[1:] if isinstance(part, str)]
    return _safe_text(".".join(names), 80) if names else "body"


def describe_validation_error(error: dict[str, Any]) -> str:
    """One pydantic error as `field: what is wrong`."""
    loc: Sequence[Any] = error.get("loc") or ()
    kind = str(error.get("type", ""))
    ctx: dict[str, Any] = error.get("ctx") or {}
    value = error.get("input")
    field = _field_of(loc)
    if kind == "json_invalid":
        return f"body: is not valid JSON ({ctx.get('error', 'decode error')})"
    if kind == "missing":
        return "body: a JSON object is required" if field == "body" else f"{field}: is required"
    if kind == "extra_forbidden":
        return f"{field}: is not a field of this request (unknown fields are refused)"
    if field == "body" and kind in ("model_type", "model_attributes_type", "dict_type"):
        return "body: must be a JSON object"
    if kind == "string_type":
        if (field.rsplit(".", 1)[-1] == "amount" and isinstance(value, int | float)
                and not isinstance(value, bool)):
            shown = _safe_text(repr(value), 40)
            return (f"{field}: must be a JSON string holding a decimal such as \"12.34\", not "
                    f"the JSON number {shown}: money is never a float")
        return f"{field}: must be a string"
    if kind == "string_too_long":
        return f"{field}: must be at most {ctx.get('max_length')} characters"
    if kind == "literal_error":
        return f"{field}: must be {ctx.get('expected')}"
    message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
    return f"{field}: {message[:1].lower()}{message[1:]}"


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    messages = list(dict.fromkeys(describe_validation_error(dict(e)) for e in exc.errors()))
    return problem_response(HttpError(400, "INVALID_ARGUMENT", "; ".join(messages)),
                            _echo_request_id(request, exc.body))


_CODE_OF_HTTP = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
                 413: "PAYLOAD_TOO_LARGE"}


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _CODE_OF_HTTP.get(exc.status_code, f"HTTP_{exc.status_code}")
    if exc.status_code == 404:
        message = "no such endpoint; see /docs"
    elif exc.status_code == 413:
        message = f"the request body is larger than {MAX_BODY_BYTES} bytes"
    elif exc.status_code == 400:
        message = "body: could not be read; send a JSON object with Content-Type: application/json"
    else:
        message = str(exc.detail)
    return problem_response(HttpError(exc.status_code, code, message), None,
                            dict(exc.headers or {}))


async def _on_gateway_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GatewayError)
    return problem_response(exc.error, exc.transaction_id, instance=exc.instance)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected gateway failure", exc_info=exc)
    return problem_response(HttpError(500, "INTERNAL", "the gateway failed to process the "
                                      "request; its log has the details"))


# --- the body size limit ----------------------------------------------------------------


class BodySizeLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413 PAYLOAD_TOO_LARGE.

    A declared Content-Length is checked before the app runs; a body without one is
    counted as it arrives. Up to DRAIN_MAX_BYTES of an oversized body is read before
    answering, so the client (still sending) gets the 413 instead of a reset.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            if declared <= DRAIN_MAX_BYTES:
                await _drain(receive, DRAIN_MAX_BYTES)
            await self._too_large()(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body", False):
                        await _drain(receive, DRAIN_MAX_BYTES - received)
                    raise StarletteHTTPException(413)
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self) -> JSONResponse:
        return problem_response(HttpError(413, "PAYLOAD_TOO_LARGE", "the request body is "
                                          f"larger than {self.max_bytes} bytes"))


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _drain(receive: Receive, budget: int) -> None:
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


# --- strict requests: no duplicate JSON keys, no unknown or repeated query parameters -----


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def duplicate_key_of(body: bytes) -> str | None:
    """The first key that a JSON object of `body` holds twice; None if there is none (or
    `body` is not JSON at all: FastAPI's own parsing then says what is wrong with it).

    Python's json keeps the last of two equal keys, so `{"amount": "1.00", "amount":
    "99.00"}` would move 99.00 while a reviewer, a log line or a proxy in front of us
    may read 1.00. Which value counts is ambiguous, so such a body is refused.
    """
    try:
        json.loads(body, object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as duplicate:
        return duplicate.key
    except (ValueError, RecursionError):
        return None
    return None


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its list of (key, value) pairs, duplicates kept."""


def _echo_top_level_id(request: Request, body: bytes) -> str | None:
    """The idempotency key for the error: the body's transaction_id or request_id when
    it appears once at the top level, else the Idempotency-Key header."""
    try:
        document = json.loads(body, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        document = None
    ids: dict[str, object] = {}
    if isinstance(document, _Pairs):
        for field in ("transaction_id", "request_id"):
            values = [value for key, value in document if key == field]
            if len(values) == 1:
                ids[field] = values[0]
    return _echo_request_id(request, ids)


class StrictRoute(APIRoute):
    """A route that refuses what FastAPI would silently resolve: a JSON body with a key
    given twice (json keeps the last), a query parameter it does not declare (ignored:
    `?at=` on a route without `at` answered the current balance), or one given twice
    (the last wins). Each is 400 INVALID_ARGUMENT naming the key; nothing is called."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        declared = tuple(param.alias for param in self.dependant.query_params)

        async def strict_handler(request: Request) -> Response:
            given: set[str] = set()
            for name, _ in request.query_params.multi_items():
                if name not in declared:
                    known = ", ".join(declared) if declared else "none"
                    return problem_response(HttpError(
                        400, "INVALID_ARGUMENT",
                        f"{_safe_text(name, 80)}: is not a query parameter of this route "
                        f"(unknown parameters are refused; it has: {known})"))
                if name in given:
                    return problem_response(HttpError(
                        400, "INVALID_ARGUMENT", f"{name}: is given more than once"))
                given.add(name)
            if self.body_field is not None:
                body = await request.body()
                duplicate = duplicate_key_of(body)
                if duplicate is not None:
                    return problem_response(HttpError(
                        400, "INVALID_ARGUMENT",
                        f"{_safe_text(duplicate, 80)}: the key appears more than once in the "
                        "JSON object (duplicate keys are refused: which value counts would be "
                        "ambiguous)"), _echo_top_level_id(request, body))
            return await handler(request)

        return strict_handler


# --- OpenAPI: the error answers of each route -------------------------------------------

_EXAMPLE_INSTANCE = f"/v1/wallet/transfers/alice/{EXAMPLE_TRANSACTION_ID}"
_RETRY_AFTER_HEADER = {"Retry-After": {
    "description": "Seconds to wait before retrying the same request.",
    "schema": {"type": "integer"}}}

_ERROR_DESCRIPTIONS: dict[int, tuple[str, HttpError, str | None]] = {
    400: ("Invalid input: malformed JSON or a missing, unknown or mistyped field "
          "(INVALID_ARGUMENT), an Idempotency-Key that differs from the body's id "
          "(IDEMPOTENCY_KEY_MISMATCH), or a value the ledger refuses (INVALID_AMOUNT, "
          "INVALID_CURRENCY, INVALID_ACCOUNT_ID, INVALID_TRANSACTION_ID).",
          HttpError(400, "INVALID_ARGUMENT", "amount: must be a JSON string holding a decimal "
                    "such as \"12.34\", not the JSON number 12.34: money is never a float"),
          None),
    404: ("Unknown account (ACCOUNT_NOT_FOUND) or transfer (TRANSFER_NOT_FOUND).",
          HttpError(404, "ACCOUNT_NOT_FOUND", "to_account 'bob' does not exist"),
          _EXAMPLE_INSTANCE),
    409: ("The id was used before with other content (ID_CONFLICT), or the account already "
          "exists (ACCOUNT_EXISTS).",
          HttpError(409, "ID_CONFLICT", "transaction_id was already used by from_account with "
                    "other content (to_account, amount or currency)"), _EXAMPLE_INSTANCE),
    413: (f"The request body is larger than {MAX_BODY_BYTES} bytes (PAYLOAD_TOO_LARGE).",
          HttpError(413, "PAYLOAD_TOO_LARGE",
                    f"the request body is larger than {MAX_BODY_BYTES} bytes"), None),
    422: ("The ledger refuses it as things stand: INSUFFICIENT_FUNDS, CURRENCY_MISMATCH, "
          "SAME_ACCOUNT, ACCOUNT_CLOSED, BALANCE_LIMIT, ABORTED, TRANSACTION_ID_EXPIRED. "
          "INSUFFICIENT_FUNDS and BALANCE_LIMIT are recorded for the transaction_id: a retry "
          "answers the same.",
          HttpError(422, "INSUFFICIENT_FUNDS", "from_account 'alice' has insufficient funds "
                    "(this outcome is recorded for the transaction_id)"), _EXAMPLE_INSTANCE),
    429: ("The cluster is overloaded (RESOURCE_EXHAUSTED; OVERLOADED), or a write's outcome "
          "is unknown after it (OUTCOME_UNKNOWN). Retry the same request after Retry-After.",
          http_error_of(WalletError(grpc.StatusCode.RESOURCE_EXHAUSTED, "", "OVERLOADED")),
          None),
    500: ("The cluster or the gateway failed unexpectedly; no internals are disclosed.",
          HttpError(500, "INTERNAL", HTTP_OF_GRPC[grpc.StatusCode.INTERNAL].detail.format(
              status="INTERNAL")), None),
    501: ("The cluster does not implement this yet (UNIMPLEMENTED).",
          HttpError(501, "UNIMPLEMENTED", "not implemented by the cluster yet: ListTransfers "
                    "arrives with the event archive (history) feature"), None),
    503: ("No leader or the cluster is unavailable (UNAVAILABLE, CANCELLED), or a write's "
          "outcome is unknown (OUTCOME_UNKNOWN: retry the same request with the same "
          "transaction_id). Retry-After says when to retry.",
          http_error_of(OutcomeUnknown(grpc.StatusCode.UNAVAILABLE, "",
                                       EXAMPLE_TRANSACTION_ID)), _EXAMPLE_INSTANCE),
    504: ("The cluster did not answer in time (DEADLINE_EXCEEDED), or a write's outcome is "
          "unknown after that (OUTCOME_UNKNOWN: retry the same request with the same "
          "transaction_id). Retry-After says when to retry.",
          http_error_of(OutcomeUnknown(grpc.StatusCode.DEADLINE_EXCEEDED, "",
                                       EXAMPLE_TRANSACTION_ID)), _EXAMPLE_INSTANCE),
}
"""Per error status: its description in the OpenAPI document, an example error (built
by the same code as the answers) and the example's `instance`."""

CLUSTER_ERRORS = (429, 500, 503, 504)
"""What any route that calls the cluster may answer besides its own errors."""


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route's error statuses: problem+json bodies (the openapi()
    of the app files their schema under that media type)."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, error, instance = _ERROR_DESCRIPTIONS[status]
        example = problem_of(error, EXAMPLE_TRANSACTION_ID, instance)
        response: dict[str, Any] = {
            "model": Problem,
            "description": description,
            "content": {PROBLEM_MEDIA_TYPE: {"example": example}},
        }
        if error.retry_after_s is not None:
            response["headers"] = _RETRY_AFTER_HEADER
        responses[status] = response
    return responses


class _GatewayApp(FastAPI):
    def openapi(self) -> dict[str, Any]:
        """FastAPI's document, without its default 422 answer (validation errors are 400),
        and with every error answer's schema under application/problem+json only."""
        if self.openapi_schema is not None:
            return self.openapi_schema
        schema = super().openapi()
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                responses = operation.get("responses", {})
                answer = responses.get("422")
                if answer is not None and "HTTPValidationError" in str(answer):
                    del responses["422"]
                for response in responses.values():
                    content = response.get("content", {})
                    plain = content.get("application/json", {})
                    if plain.get("schema", {}).get("$ref", "").endswith("/Problem"):
                        moved = content.pop("application/json")
                        content.setdefault(PROBLEM_MEDIA_TYPE, {}).update(moved)
        components = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        return schema


# --- the clients ------------------------------------------------------------------------


class _Clients:
    """The SDK clients of one app; created on the serving event loop, closed at shutdown."""

    def __init__(self, targets: tuple[str, ...], timeout_s: float,
                 retry_deadline_s: float, credentials: Credentials = NO_CREDENTIALS) -> None:
        self.targets = targets
        self.timeout_s = timeout_s
        self.retry_deadline_s = retry_deadline_s
        self.credentials = credentials
        self._wallet: AsyncWalletClient | None = None
        self._ready: AsyncWalletClient | None = None

    def wallet(self) -> AsyncWalletClient:
        if self._wallet is None:
            self._wallet = AsyncWalletClient(self.targets, timeout_s=self.timeout_s,
                                             retry_deadline_s=self.retry_deadline_s,
                                             token=self.credentials.wallet_token,
                                             admin_token=self.credentials.admin_token,
                                             tls=self.credentials.tls)
        return self._wallet

    def readiness(self) -> AsyncWalletClient:
        if self._ready is None:
            self._ready = AsyncWalletClient(
                self.targets, timeout_s=min(READY_TIMEOUT_S, self.timeout_s),
                retry_deadline_s=READY_RETRY_DEADLINE_S, learn_routes=False,
                token=self.credentials.wallet_token, admin_token=self.credentials.admin_token,
                tls=self.credentials.tls)
        return self._ready

    async def close(self) -> None:
        for client in (self._wallet, self._ready):
            if client is not None:
                await client.close()
        self._wallet = self._ready = None


# --- answers ----------------------------------------------------------------------------


def _json(model: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status, headers=headers)


def _outcome_status(status: TransferStatus) -> OutcomeStatus:
    if status is TransferStatus.SUCCEEDED:
        return "success"
    if status is TransferStatus.PENDING:
        return "pending"
    return "failed"


def _transfer_url(from_account: str, transaction_id: str) -> str:
    return (f"/v1/wallet/transfers/{quote(from_account, safe='')}/"
            f"{quote(transaction_id, safe='')}")


def _required(key: str | None) -> str:
    """The idempotency key of a route that requires one (`idempotency_key` ensured it)."""
    assert key is not None
    return key


def _transfer_answer(result: TransferResult, transaction_id: str) -> JSONResponse:
    if result.status is TransferStatus.SUCCEEDED:
        return _json(TransferDone(status="success", transaction_id=transaction_id,
                                  position=result.position))
    if result.status is TransferStatus.PENDING:
        return _json(TransferPending(status="pending", transaction_id=transaction_id,
                                     position=result.position), 202,
                     {"Location": _transfer_url(result.from_account, transaction_id)})
    raise GatewayError(http_error_of(_outcome_error(result.status, result.reason)),
                       transaction_id, _transfer_url(result.from_account, transaction_id))


def _movement_answer(result: MovementResult, transaction_id: str) -> JSONResponse:
    if result.status is not TransferStatus.SUCCEEDED:
        raise GatewayError(http_error_of(_outcome_error(result.status, result.reason)),
                           transaction_id, _transfer_url(result.account_id, transaction_id))
    return _json(MovementDone(status="success", transaction_id=transaction_id,
                              account_id=result.account_id, amount=result.amount,
                              currency=result.currency, balance=result.balance,
                              position=result.position))


def _record_answer(record: TransferRecord) -> TransferStatusAnswer:
    return TransferStatusAnswer(
        transaction_id=record.transaction_id, from_account=record.from_account,
        to_account=record.to_account, amount=record.amount, currency=record.currency,
        status=_outcome_status(record.status), reason=record.reason,
        steps=[TransferStepAnswer(name=s.name, at_ms=s.at_ms, position=s.position,
                                  partition=s.partition) for s in record.steps],
        stale=record.stale)


# --- the application --------------------------------------------------------------------

AccountPath = Annotated[str, PathParam(
    max_length=ACCOUNT_ID_MAX_CHARS, description="The account id.", examples=["alice"],
    json_schema_extra={"pattern": ACCOUNT_ID_PATTERN})]
Consistency = Annotated[Literal["linearizable", "stale"], Query(
    description="`linearizable` (default) sees every acknowledged write; `stale` answers "
    "from any replica, faster, labelled stale.")]

_DESCRIPTION = """\
The RaftWallet HTTP/JSON API: the source design's balance transfer, accounts, deposits,
withdrawals, balances and transfer status, in front of a Raft-replicated cluster.

* Amounts are **decimal strings** in the currency's major unit (`"12.34"` USD, `"500"` JPY);
  a JSON number is refused. Currencies are ISO 4217 codes, upper case.
* Every write carries an idempotency key (`transaction_id`, or `request_id` for an account):
  retrying the same request returns the same answer, and it is applied at most once.
* A write's idempotency key may be sent as the `Idempotency-Key` header instead of the
  body's field (equal to it if both are given).
* Every error is an RFC 9457 problem (`application/problem+json`): `type`
  (`/problems/<reason>`), `title`, `status`, `detail`, `instance` for a write, and the
  extension members `error` (`code`, `message`) and `transaction_id`. 429, 503 and 504
  answers carry `Retry-After`.
"""


def create_app(targets: Sequence[str], *, timeout_s: float = DEFAULT_TIMEOUT_S,
               retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S,
               credentials: Credentials = NO_CREDENTIALS) -> FastAPI:
    """The gateway application for a cluster reachable at `targets` (node gRPC addresses).

    It calls the cluster with `credentials` (the wallet token; the admin token for
    /readyz's ClusterStatus). `timeout_s` is the deadline of one attempt at one node,
    `retry_deadline_s` how long one HTTP request keeps trying the nodes (client.sdk,
    "Deadlines"). The HTTP side has no authentication of its own: bind it where only
    trusted callers reach it."""
    clients = _Clients(normalize_targets(list(targets)), timeout_s, retry_deadline_s,
                       credentials)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        clients.wallet()  # grpc.aio channels belong to the serving event loop
        try:
            yield
        finally:
            await clients.close()

    app = _GatewayApp(
        title="RaftWallet HTTP API",
        version="1.0.0",
        description=_DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "transfers", "description": "Moving money between accounts."},
            {"name": "accounts", "description": "Accounts, deposits, withdrawals, balances."},
            {"name": "health", "description": "For load balancers."},
        ],
    )
    app.router.route_class = StrictRoute
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(GatewayError, _on_gateway_error)
    app.add_exception_handler(Exception, _on_unexpected)

    @app.post(
        "/v1/wallet/balance_transfer", tags=["transfers"], operation_id="balanceTransfer",
        summary="Transfer money from one account to another, exactly once per transaction_id",
        description="Moves `amount` of `currency` from `from_account` to `to_account`. 200 "
        "when committed; 202 when accepted but not final by the deadline (a transfer across "
        "partitions whose credit is still in flight: follow `Location`). A retry with the "
        "same body returns the same answer; the same transaction_id with other content is "
        "409 ID_CONFLICT. The transaction_id may be sent as the `Idempotency-Key` header "
        "instead. Errors are RFC 9457 problems (application/problem+json).",
        response_model=TransferDone,
        responses={202: {"model": TransferPending,
                         "description": "Accepted, not final yet: ask the transfer's status.",
                         "headers": {"Location": {
                             "description": "The transfer's status URL.",
                             "schema": {"type": "string"}}}},
                   **_errors(400, 404, 409, 413, 422, *CLUSTER_ERRORS)},
    )
    async def balance_transfer(body: TransferRequest, keys: IdempotencyKeys) -> Response:
        transaction_id = _required(idempotency_key(keys, body.transaction_id, "transaction_id"))
        result = await _call(clients.wallet().transfer(
            body.from_account, body.to_account, body.amount, body.currency,
            transaction_id), transaction_id, _transfer_url(body.from_account, transaction_id))
        return _transfer_answer(result, transaction_id)

    @app.post(
        "/v1/wallet/accounts", tags=["accounts"], operation_id="createAccount",
        summary="Open an account holding one currency", status_code=201,
        description="A retry with the same request_id returns the same answer; another "
        "request for an existing account is 409 ACCOUNT_EXISTS. The request_id may be sent "
        "as the `Idempotency-Key` header instead.",
        response_model=AccountCreated, responses=_errors(400, 409, 413, *CLUSTER_ERRORS),
    )
    async def create_account(body: CreateAccountRequest, keys: IdempotencyKeys) -> Response:
        request_id = idempotency_key(keys, body.request_id, "request_id", required=False)
        account = await _call(clients.wallet().create_account(
            body.account_id, body.currency, request_id), request_id)
        return _json(AccountCreated(account_id=account.account_id, currency=account.currency,
                                    request_id=account.request_id), 201)

    @app.post(
        "/v1/wallet/deposit", tags=["accounts"], operation_id="deposit",
        summary="Money in from the outside world, exactly once per transaction_id",
        description="The transaction_id may be sent as the `Idempotency-Key` header instead.",
        response_model=MovementDone,
        responses=_errors(400, 404, 409, 413, 422, *CLUSTER_ERRORS),
    )
    async def deposit(body: MovementRequest, keys: IdempotencyKeys) -> Response:
        transaction_id = _required(idempotency_key(keys, body.transaction_id, "transaction_id"))
        result = await _call(clients.wallet().deposit(
            body.account_id, body.amount, body.currency, transaction_id),
            transaction_id, _transfer_url(body.account_id, transaction_id))
        return _movement_answer(result, transaction_id)

    @app.post(
        "/v1/wallet/withdraw", tags=["accounts"], operation_id="withdraw",
        summary="Money out to the outside world, exactly once per transaction_id",
        description="The transaction_id may be sent as the `Idempotency-Key` header instead.",
        response_model=MovementDone,
        responses=_errors(400, 404, 409, 413, 422, *CLUSTER_ERRORS),
    )
    async def withdraw(body: MovementRequest, keys: IdempotencyKeys) -> Response:
        transaction_id = _required(idempotency_key(keys, body.transaction_id, "transaction_id"))
        result = await _call(clients.wallet().withdraw(
            body.account_id, body.amount, body.currency, transaction_id),
            transaction_id, _transfer_url(body.account_id, transaction_id))
        return _movement_answer(result, transaction_id)

    @app.get(
        "/v1/wallet/accounts/{account_id}/balance", tags=["accounts"],
        operation_id="getBalance", summary="An account's balance",
        response_model=BalanceAnswer, responses=_errors(400, 404, *CLUSTER_ERRORS),
    )
    async def get_balance(
        account_id: AccountPath,
        consistency: Consistency = "linearizable",
        at: Annotated[str | None, Query(
            max_length=AT_MAX_CHARS, examples=["2026-11-25T18:00:00Z"],
            description="The balance as it was at this time (ISO 8601 with a time zone, "
            "e.g. `2026-11-25T18:00:00Z`), rebuilt from the event archive; `position` is "
            "then where that balance was set. Reads through the log: not with "
            "`consistency=stale`.")] = None,
    ) -> Response:
        if at is not None:
            if consistency == "stale":
                raise GatewayError(HttpError(
                    400, "INVALID_ARGUMENT", "consistency: `stale` does not apply to a "
                    "balance `at` a time (it is rebuilt from the archive after a "
                    "linearizable read)"))
            found = await _call(clients.wallet().balance_at(account_id,
                                                            time_ms=parse_at_ms(at)))
        else:
            found = await _call(clients.wallet().balance(account_id, consistency))
        return _json(BalanceAnswer(account_id=found.account_id, balance=found.balance,
                                   currency=found.currency, position=found.position,
                                   stale=found.stale))

    @app.get(
        "/v1/wallet/transfers/{from_account}/{transaction_id}", tags=["transfers"],
        operation_id="getTransfer", summary="A transfer's status and steps",
        description="Transfers (and deposits and withdrawals) are keyed by the debited "
        "account and the transaction id. 404 TRANSFER_NOT_FOUND is not final while the "
        "request may still be in flight: retry the request itself to settle it.",
        response_model=TransferStatusAnswer, responses=_errors(400, 404, *CLUSTER_ERRORS),
    )
    async def get_transfer(
        from_account: AccountPath,
        transaction_id: Annotated[str, PathParam(
            max_length=ID_MAX_CHARS, description="The transfer's transaction id (UUID).",
            examples=[EXAMPLE_TRANSACTION_ID], json_schema_extra={"format": "uuid"})],
        consistency: Consistency = "linearizable",
    ) -> Response:
        record = await _call(clients.wallet().get_transfer(from_account, transaction_id,
                                                           consistency))
        return _json(_record_answer(record))

    @app.get(
        "/v1/wallet/accounts/{account_id}/transfers", tags=["transfers"],
        operation_id="listTransfers", summary="An account's transfers, a page at a time",
        description="The transfers the account sent and received (deposits and withdrawals "
        "too), rebuilt from the cluster's event archive, including in-flight and compensated "
        "ones. Pass `next_page_token` back as `page_token` for the next page; \"\" means "
        "the last page. A cluster without the history answers 501 UNIMPLEMENTED.",
        response_model=TransferPageAnswer, responses=_errors(400, 404, 501, *CLUSTER_ERRORS),
    )
    async def list_transfers(
        account_id: AccountPath,
        limit: Annotated[int, Query(ge=1, le=HISTORY_LIMIT_MAX,
                                    description="Transfers per page.")] = 100,
        page_token: Annotated[str, Query(max_length=PAGE_TOKEN_MAX_CHARS,
                                         description="From the previous page.")] = "",
        order: Annotated[Literal["oldest_first", "newest_first"], Query()] = "oldest_first",
    ) -> Response:
        page = await _call(clients.wallet().list_transfers(
            account_id, page_token, limit, newest_first=order == "newest_first"))
        return _json(TransferPageAnswer(
            transfers=[_record_answer(r) for r in page.transfers],
            next_page_token=page.next_page_token))

    @app.get("/healthz", tags=["health"], operation_id="healthz",
             summary="Liveness: the gateway process is up", response_model=HealthAnswer)
    async def healthz() -> Response:
        return _json(HealthAnswer(status="ok"))

    @app.get(
        "/readyz", tags=["health"], operation_id="readyz",
        summary="Readiness: the cluster names a leader for every partition",
        response_model=ReadinessAnswer,
        responses={503: {"model": ReadinessAnswer, "description": "Not ready; see message.",
                         "headers": {"Retry-After": {"schema": {"type": "integer"}}}}},
    )
    async def readyz() -> Response:
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        try:
            status = await clients.readiness().cluster_status()
        except WalletError as error:
            return _json(ReadinessAnswer(
                status="not_ready", partition_count=0, partitions=[],
                message=f"no cluster node answered ClusterStatus ({error.status_name})"),
                503, retry)
        leaders = {p.partition: p.leader_node_id for p in status.partitions}
        partitions = [PartitionLeader(partition=p, leader_node_id=leaders.get(p, ""))
                      for p in range(status.partition_count)]
        missing = [p.partition for p in partitions if not p.leader_node_id]
        if status.partition_count < 1 or missing:
            message = (f"no leader for partition(s) {', '.join(map(str, missing))}" if missing
                       else "the cluster reports no partitions")
            return _json(ReadinessAnswer(status="not_ready", message=message,
                                         partition_count=status.partition_count,
                                         partitions=partitions), 503, retry)
        return _json(ReadinessAnswer(status="ready", message="every partition has a leader",
                                     partition_count=status.partition_count,
                                     partitions=partitions))

    return app


def parse_at_ms(text: str) -> int:
    """`?at=`: an ISO 8601 time with a time zone, as Unix milliseconds (GatewayError 400)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        problem = "is not an ISO 8601 time" if moment is None else "has no time zone"
        raise GatewayError(HttpError(
            400, "INVALID_ARGUMENT", f"at: {_safe_text(repr(text), 80)} {problem}; give one "
            "like 2026-11-25T18:00:00Z or 2026-11-25T19:00:00+01:00"))
    return int(moment.timestamp() * 1000)


# --- serving ----------------------------------------------------------------------------

_PORT_RE = re.compile(r"[0-9]{1,5}", re.ASCII)


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:8080' or '[::1]:8080' -> (host, port)."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or _PORT_RE.fullmatch(port_text) is None or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT with a port 1-65535, "
                         "e.g. 127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"--listen {text!r}: the host is missing, e.g. 127.0.0.1:8080")
    return host, int(port_text)


class _GatewayServer(uvicorn.Server):
    """uvicorn, except that SIGTERM/SIGINT end `run()` normally (exit status 0).

    uvicorn's own handlers re-raise the signal after the graceful shutdown, so the
    process would die of it; here the shutdown is the end of the story.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self._on_signal)
                     for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: object) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting for requests in flight
        self.should_exit = True


class EmbeddedGateway(uvicorn.Server):
    """The gateway inside a node process: the node owns the signals and the loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def embedded_gateway(targets: Sequence[str], listen: str,
                     credentials: Credentials = NO_CREDENTIALS) -> EmbeddedGateway:
    """A gateway to run as a task of a node's event loop (`await server.serve()`);
    set `should_exit` to stop it."""
    host, port = parse_listen(listen)
    app = create_app(list(targets), credentials=credentials)
    config = uvicorn.Config(app, host=host, port=port, loop="none", lifespan="on",
                            log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
                            server_header=False, log_config=None)
    return EmbeddedGateway(config)


def _resolve_targets(config_path: Path | None, targets: Sequence[str]) -> tuple[str, ...]:
    if targets:
        return normalize_targets(list(targets))
    if config_path is None:
        raise ValueError("no cluster to talk to: pass --target HOST:PORT or --config FILE")
    from client.cli import UsageError, targets_from_config

    try:
        return targets_from_config(config_path)
    except UsageError as error:
        raise ValueError(str(error)) from None


def run_gateway(config_path: Path | None, targets: list[str], listen: str, *,
                timeout_s: float = DEFAULT_RETRY_DEADLINE_S,
                attempt_timeout_s: float = DEFAULT_TIMEOUT_S) -> int:
    """Serve the gateway on `listen` until SIGTERM/SIGINT; returns the exit status.

    The cluster is `targets` (node gRPC addresses), else every node of the cluster file.
    `timeout_s` bounds the cluster calls of one HTTP request, retries included;
    `attempt_timeout_s` (at most `timeout_s`) one attempt at one node.
    """
    try:
        host, port = parse_listen(listen)
        resolved = _resolve_targets(config_path, targets)
        # The cluster file's tokens and TLS, else RAFTWALLET_TOKEN / RAFTWALLET_ADMIN_TOKEN.
        credentials = credentials_from_environment()
        if config_path is not None:
            credentials = credentials_from_cluster_file(config_path).with_defaults(credentials)
    except (ValueError, CredentialsError) as error:
        print(f"walletctl gateway: {error}", file=sys.stderr)
        return EXIT_USAGE
    app = create_app(resolved, timeout_s=min(attempt_timeout_s, timeout_s),
                     retry_deadline_s=timeout_s, credentials=credentials)
    config = uvicorn.Config(app, host=host, port=port, loop="asyncio", lifespan="on",
                            log_level="info", timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
                            server_header=False)
    server = _GatewayServer(config)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:    %(name)s: %(message)s")
    print(f"walletctl gateway: http://{listen} -> cluster {', '.join(resolved)}",
          file=sys.stderr, flush=True)
    try:
        server.run()
    except SystemExit:  # uvicorn exits this way when it cannot bind the address
        return EXIT_USAGE
    return EXIT_OK if server.started else EXIT_USAGE
