"""The HTTP gateway's JSON bodies (pydantic models), shared by the routes and the OpenAPI document.

Request bodies are strict: unknown fields are refused, every field must have its
JSON type (an amount is a string, never a JSON number), ids have a maximum
length. The ledger's own rules (the account id alphabet, ISO 4217 codes, the
amount grammar and decimals, the UUID form) are enforced by the cluster, which
answers with a precise reason (INVALID_AMOUNT, INVALID_CURRENCY...); they appear
in the schema as `pattern`/`format` so that clients and fuzzers know them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

ACCOUNT_ID_MAX_CHARS = 64
"""The ledger's account id limit (ledger.state.ACCOUNT_ID_RE)."""
ID_MAX_CHARS = 36
"""A canonical UUID: 8-4-4-4-12 hex digits."""
AMOUNT_MAX_CHARS = 40
"""ledger.money.AMOUNT_TEXT_MAX_CHARS."""
CURRENCY_MAX_CHARS = 16
PAGE_TOKEN_MAX_CHARS = 1024

ACCOUNT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$"
CURRENCY_PATTERN = r"^[A-Z]{3}$"
AMOUNT_PATTERN = r"^(0|[1-9][0-9]*)(\.[0-9]+)?$"

EXAMPLE_TRANSACTION_ID = "9b2e4f6a-1c3d-4e5f-8a7b-6c5d4e3f2a10"
EXAMPLE_REQUEST_ID = "6f1c2d3e-4b5a-4c7d-9e8f-0a1b2c3d4e5f"


def _unicode_text(value: str) -> str:
    """Refuse lone surrogates (JSON allows "\\ud800"): they cannot be sent as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogate escapes)") from None
    return value


AccountId = Annotated[
    str,
    Field(
        max_length=ACCOUNT_ID_MAX_CHARS,
        description="1-64 ASCII letters, digits and `._:@-`, starting with a letter or digit.",
        examples=["alice", "bob"],
        json_schema_extra={"pattern": ACCOUNT_ID_PATTERN},
    ),
    AfterValidator(_unicode_text),
]
CurrencyCode = Annotated[
    str,
    Field(
        max_length=CURRENCY_MAX_CHARS,
        description="ISO 4217 alphabetic code, upper case (USD, EUR, JPY...); lower case is "
        "refused, not folded.",
        examples=["USD", "EUR", "JPY"],
        json_schema_extra={"pattern": CURRENCY_PATTERN},
    ),
    AfterValidator(_unicode_text),
]
Amount = Annotated[
    str,
    Field(
        max_length=AMOUNT_MAX_CHARS,
        description="A positive decimal STRING in the currency's major unit (\"12.34\" USD, "
        "\"500\" JPY): no sign, exponent, spaces or separators, at most the currency's "
        "decimals. A JSON number is refused: money is never a float.",
        examples=["12.34", "100.00", "500"],
        json_schema_extra={"pattern": AMOUNT_PATTERN},
    ),
    AfterValidator(_unicode_text),
]
TransactionId = Annotated[
    str,
    Field(
        max_length=ID_MAX_CHARS,
        description="The idempotency key: a UUID in canonical 8-4-4-4-12 form (UUIDv7 "
        "recommended). Retrying with the same id and the same content returns the first "
        "answer; other content under the same id is refused (409).",
        examples=[EXAMPLE_TRANSACTION_ID],
        json_schema_extra={"format": "uuid"},
    ),
    AfterValidator(_unicode_text),
]


BodyTransactionId = Annotated[
    TransactionId | None,
    Field(
        description="The idempotency key: a UUID in canonical 8-4-4-4-12 form (UUIDv7 "
        "recommended), here or as the `Idempotency-Key` header (one of the two is required; "
        "given both, they must be equal). Retrying with the same id and the same content "
        "returns the first answer; other content under the same id is refused (409)."
    ),
]
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_MAX_CHARS = ID_MAX_CHARS + 2
"""A UUID, bare or as a structured-field string (in double quotes)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# --- requests -------------------------------------------------------------------------


class TransferRequest(_Strict):
    """The source design's balance transfer."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "from_account": "alice",
                    "to_account": "bob",
                    "amount": "12.34",
                    "currency": "USD",
                    "transaction_id": EXAMPLE_TRANSACTION_ID,
                }
            ]
        }
    )

    from_account: AccountId
    to_account: AccountId
    amount: Amount
    currency: CurrencyCode
    transaction_id: BodyTransactionId = None


class CreateAccountRequest(_Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"account_id": "alice", "currency": "USD", "request_id": EXAMPLE_REQUEST_ID}
            ]
        }
    )

    account_id: AccountId
    currency: CurrencyCode
    request_id: Annotated[
        TransactionId | None,
        Field(
            description="Idempotency key (UUID), or send it as the `Idempotency-Key` header. "
            "Send one to retry safely: without it a retry of a creation that did happen "
            "answers 409 ACCOUNT_EXISTS."
        ),
    ] = None


class MovementRequest(_Strict):
    """A deposit (money in from the outside world) or a withdrawal (money out)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "account_id": "alice",
                    "amount": "100.00",
                    "currency": "USD",
                    "transaction_id": EXAMPLE_TRANSACTION_ID,
                }
            ]
        }
    )

    account_id: AccountId
    amount: Amount
    currency: CurrencyCode
    transaction_id: BodyTransactionId = None


# --- answers --------------------------------------------------------------------------

OutcomeStatus = Literal["success", "pending", "failed"]


class TransferDone(BaseModel):
    """HTTP 200: the transfer is committed and final."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"status": "success", "transaction_id": EXAMPLE_TRANSACTION_ID,
                          "position": 41}]
        }
    )

    status: Literal["success"]
    transaction_id: str
    position: int = Field(description="Log position of the source partition where the "
                          "transfer was decided (across partitions: its debit). A retry with "
                          "the same transaction_id answers the same position.")


class TransferPending(BaseModel):
    """HTTP 202: accepted (debited) but not final by the deadline; ask the transfer's status."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"status": "pending", "transaction_id": EXAMPLE_TRANSACTION_ID,
                          "position": 41}]
        }
    )

    status: Literal["pending"]
    transaction_id: str
    position: int = Field(description="Log position of the source partition where the "
                          "transfer was decided (across partitions: its debit). A retry with "
                          "the same transaction_id answers the same position.")


class AccountCreated(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"account_id": "alice", "currency": "USD", "request_id": EXAMPLE_REQUEST_ID}
            ]
        }
    )

    account_id: str
    currency: str
    request_id: str = Field(
        description="The idempotency key used: the one sent, or the one the gateway generated."
    )


class MovementDone(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "success",
                    "transaction_id": EXAMPLE_TRANSACTION_ID,
                    "account_id": "alice",
                    "amount": "100.00",
                    "currency": "USD",
                    "balance": "100.00",
                    "position": 7,
                }
            ]
        }
    )

    status: Literal["success"]
    transaction_id: str
    account_id: str
    amount: str
    currency: str
    balance: str = Field(description="The balance right after the movement (\"\" if unknown).")
    position: int = Field(description="Log position of the account's partition where the "
                          "movement was applied; a retry with the same transaction_id answers "
                          "the same position.")


class BalanceAnswer(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "account_id": "alice",
                    "balance": "87.66",
                    "currency": "USD",
                    "position": 42,
                    "stale": False,
                }
            ]
        }
    )

    account_id: str
    balance: str
    currency: str
    position: int = Field(description="Log position of the account's partition read; with "
                          "`at`, the position where that balance was set.")
    stale: bool = Field(description="True for a `consistency=stale` read (may lag).")


class TransferStepAnswer(BaseModel):
    name: str = Field(description="transfer (within one partition), debited then settled or "
                      "compensated (across partitions), credited or credit refused (as the "
                      "receiving account saw it), deposit, withdraw, aborted.")
    at_ms: int = Field(description="The leader's clock when the step was committed (Unix ms).")
    position: int
    partition: int


class TransferStatusAnswer(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "transaction_id": EXAMPLE_TRANSACTION_ID,
                    "from_account": "alice",
                    "to_account": "carol",
                    "amount": "12.34",
                    "currency": "USD",
                    "status": "success",
                    "reason": "",
                    "steps": [
                        {"name": "debited", "at_ms": 1720000000000, "position": 41,
                         "partition": 0},
                        {"name": "settled", "at_ms": 1720000000020, "position": 44,
                         "partition": 0},
                    ],
                    "stale": False,
                }
            ]
        }
    )

    transaction_id: str
    from_account: str
    to_account: str
    amount: str
    currency: str
    status: OutcomeStatus
    reason: str = Field(description="The ledger reason when failed (e.g. INSUFFICIENT_FUNDS).")
    steps: list[TransferStepAnswer]
    stale: bool


class TransferPageAnswer(BaseModel):
    transfers: list[TransferStatusAnswer]
    next_page_token: str = Field(description="Pass it back as page_token; \"\" on the last page.")


class ErrorDetail(BaseModel):
    code: str = Field(
        description="Machine-readable reason: the ledger's (INSUFFICIENT_FUNDS, ID_CONFLICT, "
        "ACCOUNT_NOT_FOUND, INVALID_AMOUNT...) or the gateway's (INVALID_ARGUMENT, "
        "OUTCOME_UNKNOWN, PAYLOAD_TOO_LARGE...)."
    )
    message: str = Field(description="For people; names the offending field.")


class Problem(BaseModel):
    """Every error answer: RFC 9457 problem details (`application/problem+json`).

    `error` and `transaction_id` are extension members: the gateway's error answer from
    before problem details, kept so that clients reading them work unchanged."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "/problems/insufficient-funds",
                    "title": "Insufficient funds",
                    "status": 422,
                    "detail": "from_account 'alice' has insufficient funds (this outcome is "
                    "recorded for the transaction_id)",
                    "instance": f"/v1/wallet/transfers/alice/{EXAMPLE_TRANSACTION_ID}",
                    "error": {
                        "code": "INSUFFICIENT_FUNDS",
                        "message": "from_account 'alice' has insufficient funds (this outcome "
                        "is recorded for the transaction_id)",
                    },
                    "transaction_id": EXAMPLE_TRANSACTION_ID,
                }
            ]
        }
    )

    type: str = Field(description="The problem type: `/problems/` and the reason in lower "
                      "case with `-` for `_` (a URI reference relative to the gateway; an "
                      "identifier, not a page), e.g. `/problems/insufficient-funds`.")
    title: str = Field(description="The problem type's summary, the same for every "
                       "occurrence of that type.")
    status: int = Field(description="The HTTP status of this answer.")
    detail: str = Field(description="This occurrence, for people; names the offending field.")
    instance: str | None = Field(
        default=None, description="Only for a write that the cluster refused or left "
        "undecided: its status URL (`/v1/wallet/transfers/{account}/{transaction_id}`), "
        "where GET tells what the ledger recorded under the id (404 TRANSFER_NOT_FOUND if "
        "nothing). Absent otherwise.")
    error: ErrorDetail = Field(description="Extension member: `code` is the reason (as in "
                               "`type`), `message` equals `detail`.")
    transaction_id: str | None = Field(
        description="Extension member: the request's idempotency key (its transaction_id, "
        "or an account's request_id; from the body or the Idempotency-Key header), null "
        "when it had none.")


class HealthAnswer(BaseModel):
    status: Literal["ok"]


class PartitionLeader(BaseModel):
    partition: int
    leader_node_id: str = Field(description="\"\" while the partition has no leader.")


class ReadinessAnswer(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "message": "every partition has a leader",
                    "partition_count": 2,
                    "partitions": [
                        {"partition": 0, "leader_node_id": "n1"},
                        {"partition": 1, "leader_node_id": "n2"},
                    ],
                }
            ]
        }
    )

    status: Literal["ready", "not_ready"]
    message: str
    partition_count: int
    partitions: list[PartitionLeader]
