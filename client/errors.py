"""The SDK's exceptions, and the one place that turns a gRPC status into one of them.

Every failure the server reports is a gRPC status; the node also puts the
ledger's machine-readable reason (a `ledger.results.Code` name such as
`INSUFFICIENT_FUNDS`) in the trailing metadata key `raftwallet-reason`.

    WalletError                  any failure; .status, .reason, .message
    ├── InvalidArgument          INVALID_ARGUMENT: malformed input, never retried
    ├── NotFound                 NOT_FOUND: unknown account or transfer
    ├── FailedPrecondition       FAILED_PRECONDITION: insufficient funds, currency
    │                            mismatch, same account, closed account...
    ├── AlreadyExists            ALREADY_EXISTS: id reused with other content,
    │                            account exists
    ├── Unauthenticated          UNAUTHENTICATED: no (or a malformed) token was sent
    ├── PermissionDenied         PERMISSION_DENIED: the token is not accepted
    ├── Unavailable              UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED,
    │                            RESOURCE_EXHAUSTED: transient (a read gave up)
    └── OutcomeUnknown           a write whose retries ran out on a transient
                                 failure: it may or may not have happened;
                                 retry it with .transaction_id

Other statuses (UNIMPLEMENTED, INTERNAL...) are a plain `WalletError`.
Authentication failures are never retried: the same credentials would fail again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

REASON_METADATA_KEY = "raftwallet-reason"
"""Trailing metadata key holding the ledger reason (a `ledger.results.Code` name)."""

RETRYABLE_STATUSES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
"""Statuses after which the SDK resends the same request (same ids); never others."""


def is_retryable(error: WalletError) -> bool:
    """Worth sending again: a transient status, but not a request over the size limit
    (RESOURCE_EXHAUSTED too, and the same bytes would be refused every time)."""
    return error.status in RETRYABLE_STATUSES and not (
        error.status == grpc.StatusCode.RESOURCE_EXHAUSTED
        and "larger than max" in error.message)


class WalletError(Exception):
    """A request failed. `status` is the gRPC status code, `reason` the ledger reason or ""."""

    def __init__(self, status: grpc.StatusCode, message: str = "", reason: str = "") -> None:
        self.status: grpc.StatusCode = status
        self.message = message
        self.reason = reason
        super().__init__(self._text())

    @property
    def status_name(self) -> str:
        """The status as its gRPC name, e.g. "NOT_FOUND"."""
        return str(self.status.name)

    def _text(self) -> str:
        text = f"{self.status_name}: {self.message}" if self.message else self.status_name
        return f"{text} (reason: {self.reason})" if self.reason else text


class InvalidArgument(WalletError):
    """Malformed input (INVALID_ARGUMENT); the message names the field."""


class NotFound(WalletError):
    """Unknown account or transfer (NOT_FOUND)."""


class FailedPrecondition(WalletError):
    """The ledger refused the request as it stands (FAILED_PRECONDITION); see `reason`."""


class AlreadyExists(WalletError):
    """The id was used with other content, or the account exists (ALREADY_EXISTS)."""


class Unauthenticated(WalletError):
    """UNAUTHENTICATED: the call carried no credentials, or malformed ones (give a token)."""


class PermissionDenied(WalletError):
    """PERMISSION_DENIED: the credentials are well-formed but not accepted (wrong token)."""


class Unavailable(WalletError):
    """A transient failure that outlived the retries (the status says which)."""


class OutcomeUnknown(WalletError):
    """A write whose retries ran out on a transient failure: it may or may not have happened.

    Retrying it with the same `transaction_id` (or request id) is always safe: the
    ledger deduplicates by id. `transaction_ids` lists every id of a batch.
    """

    def __init__(
        self,
        status: grpc.StatusCode,
        message: str,
        transaction_id: str,
        transaction_ids: tuple[str, ...] = (),
        reason: str = "",
    ) -> None:
        self.transaction_id = transaction_id
        self.transaction_ids = transaction_ids or (transaction_id,)
        super().__init__(status, message, reason)

    def _text(self) -> str:
        return (
            f"outcome unknown for id {self.transaction_id} after {super()._text()}; "
            "retry with the same id"
        )


_CLASS_OF_STATUS: dict[grpc.StatusCode, type[WalletError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    **{status: Unavailable for status in RETRYABLE_STATUSES},
}


def _reason_of(metadata: Iterable[Any] | None) -> str:
    for item in metadata or ():
        key, value = item[0], item[1]
        if str(key).lower() == REASON_METADATA_KEY:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return ""


def status_of(error: grpc.RpcError) -> grpc.StatusCode:
    """The status code of an RpcError (sync or asyncio); UNKNOWN when it has none."""
    code = getattr(error, "code", None)
    status = code() if callable(code) else None
    return status if isinstance(status, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def from_rpc_error(error: grpc.RpcError) -> WalletError:
    """Map a failed call (grpc or grpc.aio) to the WalletError subclass of its status."""
    status = status_of(error)
    details = getattr(error, "details", None)
    message = (details() if callable(details) else None) or ""
    trailing = getattr(error, "trailing_metadata", None)
    try:
        reason = _reason_of(trailing() if callable(trailing) else None)
    except Exception:  # a call that failed before any metadata arrived
        reason = ""
    cls = _CLASS_OF_STATUS.get(status, WalletError)
    return cls(status, str(message), reason)
