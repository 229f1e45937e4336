from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResultCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESULT_CODE_UNSPECIFIED: _ClassVar[ResultCode]
    OK: _ClassVar[ResultCode]
    PENDING: _ClassVar[ResultCode]
    ACCOUNT_NOT_FOUND: _ClassVar[ResultCode]
    ACCOUNT_EXISTS: _ClassVar[ResultCode]
    CURRENCY_MISMATCH: _ClassVar[ResultCode]
    INSUFFICIENT_FUNDS: _ClassVar[ResultCode]
    SAME_ACCOUNT: _ClassVar[ResultCode]
    ACCOUNT_CLOSED: _ClassVar[ResultCode]
    ID_CONFLICT: _ClassVar[ResultCode]
    BALANCE_LIMIT: _ClassVar[ResultCode]
    INVALID_AMOUNT: _ClassVar[ResultCode]
    INVALID_ACCOUNT_ID: _ClassVar[ResultCode]
    INVALID_CURRENCY: _ClassVar[ResultCode]
    INVALID_TRANSACTION_ID: _ClassVar[ResultCode]
    ABORTED: _ClassVar[ResultCode]
    ACCOUNT_NOT_EMPTY: _ClassVar[ResultCode]
    TRANSFER_IN_FLIGHT: _ClassVar[ResultCode]
    UNKNOWN_TRANSFER: _ClassVar[ResultCode]
    STALE_CREDIT: _ClassVar[ResultCode]
    INVALID_PARTITION: _ClassVar[ResultCode]
    INVALID_COMMAND: _ClassVar[ResultCode]
RESULT_CODE_UNSPECIFIED: ResultCode
OK: ResultCode
PENDING: ResultCode
ACCOUNT_NOT_FOUND: ResultCode
ACCOUNT_EXISTS: ResultCode
CURRENCY_MISMATCH: ResultCode
INSUFFICIENT_FUNDS: ResultCode
SAME_ACCOUNT: ResultCode
ACCOUNT_CLOSED: ResultCode
ID_CONFLICT: ResultCode
BALANCE_LIMIT: ResultCode
INVALID_AMOUNT: ResultCode
INVALID_ACCOUNT_ID: ResultCode
INVALID_CURRENCY: ResultCode
INVALID_TRANSACTION_ID: ResultCode
ABORTED: ResultCode
ACCOUNT_NOT_EMPTY: ResultCode
TRANSFER_IN_FLIGHT: ResultCode
UNKNOWN_TRANSFER: ResultCode
STALE_CREDIT: ResultCode
INVALID_PARTITION: ResultCode
INVALID_COMMAND: ResultCode

class Entry(_message.Message):
    __slots__ = ("version", "stamp_ms", "commands")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STAMP_MS_FIELD_NUMBER: _ClassVar[int]
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    version: int
    stamp_ms: int
    commands: _containers.RepeatedCompositeFieldContainer[Command]
    def __init__(self, version: _Optional[int] = ..., stamp_ms: _Optional[int] = ..., commands: _Optional[_Iterable[_Union[Command, _Mapping]]] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("create_account", "deposit", "withdraw", "transfer", "debit_for_transfer", "credit_for_transfer", "resolve_transfer", "abort", "abort_credit", "leader_start", "close_account", "prune_dedup", "barrier")
    CREATE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    DEPOSIT_FIELD_NUMBER: _ClassVar[int]
    WITHDRAW_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    DEBIT_FOR_TRANSFER_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FOR_TRANSFER_FIELD_NUMBER: _ClassVar[int]
    RESOLVE_TRANSFER_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    ABORT_CREDIT_FIELD_NUMBER: _ClassVar[int]
    LEADER_START_FIELD_NUMBER: _ClassVar[int]
    CLOSE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    PRUNE_DEDUP_FIELD_NUMBER: _ClassVar[int]
    BARRIER_FIELD_NUMBER: _ClassVar[int]
    create_account: CreateAccount
    deposit: Deposit
    withdraw: Withdraw
    transfer: Transfer
    debit_for_transfer: DebitForTransfer
    credit_for_transfer: CreditForTransfer
    resolve_transfer: ResolveTransfer
    abort: Abort
    abort_credit: AbortCredit
    leader_start: LeaderStart
    close_account: CloseAccount
    prune_dedup: PruneDedup
    barrier: Barrier
    def __init__(self, create_account: _Optional[_Union[CreateAccount, _Mapping]] = ..., deposit: _Optional[_Union[Deposit, _Mapping]] = ..., withdraw: _Optional[_Union[Withdraw, _Mapping]] = ..., transfer: _Optional[_Union[Transfer, _Mapping]] = ..., debit_for_transfer: _Optional[_Union[DebitForTransfer, _Mapping]] = ..., credit_for_transfer: _Optional[_Union[CreditForTransfer, _Mapping]] = ..., resolve_transfer: _Optional[_Union[ResolveTransfer, _Mapping]] = ..., abort: _Optional[_Union[Abort, _Mapping]] = ..., abort_credit: _Optional[_Union[AbortCredit, _Mapping]] = ..., leader_start: _Optional[_Union[LeaderStart, _Mapping]] = ..., close_account: _Optional[_Union[CloseAccount, _Mapping]] = ..., prune_dedup: _Optional[_Union[PruneDedup, _Mapping]] = ..., barrier: _Optional[_Union[Barrier, _Mapping]] = ...) -> None: ...

class CreateAccount(_message.Message):
    __slots__ = ("account_id", "currency", "exponent", "request_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    EXPONENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    currency: str
    exponent: int
    request_id: bytes
    def __init__(self, account_id: _Optional[str] = ..., currency: _Optional[str] = ..., exponent: _Optional[int] = ..., request_id: _Optional[bytes] = ...) -> None: ...

class Deposit(_message.Message):
    __slots__ = ("account_id", "amount_minor", "currency", "transaction_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    amount_minor: int
    currency: str
    transaction_id: bytes
    def __init__(self, account_id: _Optional[str] = ..., amount_minor: _Optional[int] = ..., currency: _Optional[str] = ..., transaction_id: _Optional[bytes] = ...) -> None: ...

class Withdraw(_message.Message):
    __slots__ = ("account_id", "amount_minor", "currency", "transaction_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    amount_minor: int
    currency: str
    transaction_id: bytes
    def __init__(self, account_id: _Optional[str] = ..., amount_minor: _Optional[int] = ..., currency: _Optional[str] = ..., transaction_id: _Optional[bytes] = ...) -> None: ...

class Transfer(_message.Message):
    __slots__ = ("from_account", "to_account", "amount_minor", "currency", "transaction_id")
    FROM_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    TO_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    from_account: str
    to_account: str
    amount_minor: int
    currency: str
    transaction_id: bytes
    def __init__(self, from_account: _Optional[str] = ..., to_account: _Optional[str] = ..., amount_minor: _Optional[int] = ..., currency: _Optional[str] = ..., transaction_id: _Optional[bytes] = ...) -> None: ...

class DebitForTransfer(_message.Message):
    __slots__ = ("from_account", "to_account", "amount_minor", "currency", "transaction_id", "destination_partition")
    FROM_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    TO_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PARTITION_FIELD_NUMBER: _ClassVar[int]
    from_account: str
    to_account: str
    amount_minor: int
    currency: str
    transaction_id: bytes
    destination_partition: int
    def __init__(self, from_account: _Optional[str] = ..., to_account: _Optional[str] = ..., amount_minor: _Optional[int] = ..., currency: _Optional[str] = ..., transaction_id: _Optional[bytes] = ..., destination_partition: _Optional[int] = ...) -> None: ...

class CreditForTransfer(_message.Message):
    __slots__ = ("source_partition", "sequence", "from_account", "to_account", "amount_minor", "currency", "transaction_id", "source_resolved_through")
    SOURCE_PARTITION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FROM_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    TO_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_RESOLVED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    source_partition: int
    sequence: int
    from_account: str
    to_account: str
    amount_minor: int
    currency: str
    transaction_id: bytes
    source_resolved_through: int
    def __init__(self, source_partition: _Optional[int] = ..., sequence: _Optional[int] = ..., from_account: _Optional[str] = ..., to_account: _Optional[str] = ..., amount_minor: _Optional[int] = ..., currency: _Optional[str] = ..., transaction_id: _Optional[bytes] = ..., source_resolved_through: _Optional[int] = ...) -> None: ...

class ResolveTransfer(_message.Message):
    __slots__ = ("from_account", "transaction_id", "credited", "reason")
    FROM_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    CREDITED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    from_account: str
    transaction_id: bytes
    credited: bool
    reason: int
    def __init__(self, from_account: _Optional[str] = ..., transaction_id: _Optional[bytes] = ..., credited: _Optional[bool] = ..., reason: _Optional[int] = ...) -> None: ...

class Abort(_message.Message):
    __slots__ = ("account_id", "transaction_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    transaction_id: bytes
    def __init__(self, account_id: _Optional[str] = ..., transaction_id: _Optional[bytes] = ...) -> None: ...

class AbortCredit(_message.Message):
    __slots__ = ("source_partition", "sequence")
    SOURCE_PARTITION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    source_partition: int
    sequence: int
    def __init__(self, source_partition: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class LeaderStart(_message.Message):
    __slots__ = ("term", "node_id")
    TERM_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    term: int
    node_id: str
    def __init__(self, term: _Optional[int] = ..., node_id: _Optional[str] = ...) -> None: ...

class CloseAccount(_message.Message):
    __slots__ = ("account_id", "request_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    request_id: bytes
    def __init__(self, account_id: _Optional[str] = ..., request_id: _Optional[bytes] = ...) -> None: ...

class PruneDedup(_message.Message):
    __slots__ = ("before_stamp_ms",)
    BEFORE_STAMP_MS_FIELD_NUMBER: _ClassVar[int]
    before_stamp_ms: int
    def __init__(self, before_stamp_ms: _Optional[int] = ...) -> None: ...

class Barrier(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
