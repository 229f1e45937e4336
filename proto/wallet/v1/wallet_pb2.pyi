from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TransferStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSFER_STATUS_UNSPECIFIED: _ClassVar[TransferStatus]
    SUCCEEDED: _ClassVar[TransferStatus]
    FAILED: _ClassVar[TransferStatus]
    PENDING: _ClassVar[TransferStatus]

class Consistency(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LINEARIZABLE: _ClassVar[Consistency]
    STALE: _ClassVar[Consistency]

class Order(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OLDEST_FIRST: _ClassVar[Order]
    NEWEST_FIRST: _ClassVar[Order]
TRANSFER_STATUS_UNSPECIFIED: TransferStatus
SUCCEEDED: TransferStatus
FAILED: TransferStatus
PENDING: TransferStatus
LINEARIZABLE: Consistency
STALE: Consistency
OLDEST_FIRST: Order
NEWEST_FIRST: Order

class CreateAccountRequest(_message.Message):
    __slots__ = ("account_id", "currency", "request_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    currency: str
    request_id: str
    def __init__(self, account_id: _Optional[str] = ..., currency: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateAccountResponse(_message.Message):
    __slots__ = ("account_id", "currency", "position")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    currency: str
    position: int
    def __init__(self, account_id: _Optional[str] = ..., currency: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class DepositRequest(_message.Message):
    __slots__ = ("account_id", "amount", "currency", "transaction_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    amount: str
    currency: str
    transaction_id: str
    def __init__(self, account_id: _Optional[str] = ..., amount: _Optional[str] = ..., currency: _Optional[str] = ..., transaction_id: _Optional[str] = ...) -> None: ...

class WithdrawRequest(_message.Message):
    __slots__ = ("account_id", "amount", "currency", "transaction_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    amount: str
    currency: str
    transaction_id: str
    def __init__(self, account_id: _Optional[str] = ..., amount: _Optional[str] = ..., currency: _Optional[str] = ..., transaction_id: _Optional[str] = ...) -> None: ...

class MoneyMovementResponse(_message.Message):
    __slots__ = ("transaction_id", "status", "reason", "balance", "position")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    status: TransferStatus
    reason: str
    balance: str
    position: int
    def __init__(self, transaction_id: _Optional[str] = ..., status: _Optional[_Union[TransferStatus, str]] = ..., reason: _Optional[str] = ..., balance: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class TransferRequest(_message.Message):
    __slots__ = ("from_account", "to_account", "amount", "currency", "transaction_id")
    FROM_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    TO_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    from_account: str
    to_account: str
    amount: str
    currency: str
    transaction_id: str
    def __init__(self, from_account: _Optional[str] = ..., to_account: _Optional[str] = ..., amount: _Optional[str] = ..., currency: _Optional[str] = ..., transaction_id: _Optional[str] = ...) -> None: ...

class TransferResponse(_message.Message):
    __slots__ = ("status", "transaction_id", "reason", "message", "position")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    status: TransferStatus
    transaction_id: str
    reason: str
    message: str
    position: int
    def __init__(self, status: _Optional[_Union[TransferStatus, str]] = ..., transaction_id: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class TransferBatchRequest(_message.Message):
    __slots__ = ("transfers",)
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    transfers: _containers.RepeatedCompositeFieldContainer[TransferRequest]
    def __init__(self, transfers: _Optional[_Iterable[_Union[TransferRequest, _Mapping]]] = ...) -> None: ...

class TransferBatchResponse(_message.Message):
    __slots__ = ("statuses", "reasons", "succeeded", "failed", "pending")
    class ReasonsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedScalarFieldContainer[TransferStatus]
    reasons: _containers.ScalarMap[int, str]
    succeeded: int
    failed: int
    pending: int
    def __init__(self, statuses: _Optional[_Iterable[_Union[TransferStatus, str]]] = ..., reasons: _Optional[_Mapping[int, str]] = ..., succeeded: _Optional[int] = ..., failed: _Optional[int] = ..., pending: _Optional[int] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("account_id", "consistency", "min_position")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    MIN_POSITION_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    consistency: Consistency
    min_position: int
    def __init__(self, account_id: _Optional[str] = ..., consistency: _Optional[_Union[Consistency, str]] = ..., min_position: _Optional[int] = ...) -> None: ...

class GetBalanceResponse(_message.Message):
    __slots__ = ("account_id", "balance", "currency", "position", "stale")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    balance: str
    currency: str
    position: int
    stale: bool
    def __init__(self, account_id: _Optional[str] = ..., balance: _Optional[str] = ..., currency: _Optional[str] = ..., position: _Optional[int] = ..., stale: _Optional[bool] = ...) -> None: ...

class GetTransferRequest(_message.Message):
    __slots__ = ("from_account", "transaction_id", "consistency")
    FROM_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    from_account: str
    transaction_id: str
    consistency: Consistency
    def __init__(self, from_account: _Optional[str] = ..., transaction_id: _Optional[str] = ..., consistency: _Optional[_Union[Consistency, str]] = ...) -> None: ...

class TransferStep(_message.Message):
    __slots__ = ("name", "at_ms", "position", "partition")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    name: str
    at_ms: int
    position: int
    partition: int
    def __init__(self, name: _Optional[str] = ..., at_ms: _Optional[int] = ..., position: _Optional[int] = ..., partition: _Optional[int] = ...) -> None: ...

class AbortTransferRequest(_message.Message):
    __slots__ = ("from_account", "transaction_id")
    FROM_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    from_account: str
    transaction_id: str
    def __init__(self, from_account: _Optional[str] = ..., transaction_id: _Optional[str] = ...) -> None: ...

class GetTransferResponse(_message.Message):
    __slots__ = ("transaction_id", "from_account", "to_account", "amount", "currency", "status", "reason", "steps", "stale")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    TO_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    from_account: str
    to_account: str
    amount: str
    currency: str
    status: TransferStatus
    reason: str
    steps: _containers.RepeatedCompositeFieldContainer[TransferStep]
    stale: bool
    def __init__(self, transaction_id: _Optional[str] = ..., from_account: _Optional[str] = ..., to_account: _Optional[str] = ..., amount: _Optional[str] = ..., currency: _Optional[str] = ..., status: _Optional[_Union[TransferStatus, str]] = ..., reason: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[TransferStep, _Mapping]]] = ..., stale: _Optional[bool] = ...) -> None: ...

class ListTransfersRequest(_message.Message):
    __slots__ = ("account_id", "page_token", "limit", "order")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    page_token: str
    limit: int
    order: Order
    def __init__(self, account_id: _Optional[str] = ..., page_token: _Optional[str] = ..., limit: _Optional[int] = ..., order: _Optional[_Union[Order, str]] = ...) -> None: ...

class ListTransfersResponse(_message.Message):
    __slots__ = ("transfers", "next_page_token")
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    transfers: _containers.RepeatedCompositeFieldContainer[GetTransferResponse]
    next_page_token: str
    def __init__(self, transfers: _Optional[_Iterable[_Union[GetTransferResponse, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetBalanceAtRequest(_message.Message):
    __slots__ = ("account_id", "position", "time_ms")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    position: int
    time_ms: int
    def __init__(self, account_id: _Optional[str] = ..., position: _Optional[int] = ..., time_ms: _Optional[int] = ...) -> None: ...

class ClusterStatusRequest(_message.Message):
    __slots__ = ("local_only",)
    LOCAL_ONLY_FIELD_NUMBER: _ClassVar[int]
    local_only: bool
    def __init__(self, local_only: _Optional[bool] = ...) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("node_id", "match_index", "lag")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    match_index: int
    lag: int
    def __init__(self, node_id: _Optional[str] = ..., match_index: _Optional[int] = ..., lag: _Optional[int] = ...) -> None: ...

class PartitionStatus(_message.Message):
    __slots__ = ("partition", "reported_by", "reporter_is_leader", "totals", "settled_to", "credited_from", "leader_node_id", "leader_address", "term", "commit_index", "applied_position", "replicas", "money_in_flight", "outbox_depth", "last_snapshot_position", "state_hash")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    REPORTED_BY_FIELD_NUMBER: _ClassVar[int]
    REPORTER_IS_LEADER_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    SETTLED_TO_FIELD_NUMBER: _ClassVar[int]
    CREDITED_FROM_FIELD_NUMBER: _ClassVar[int]
    LEADER_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_POSITION_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MONEY_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    LAST_SNAPSHOT_POSITION_FIELD_NUMBER: _ClassVar[int]
    STATE_HASH_FIELD_NUMBER: _ClassVar[int]
    partition: int
    reported_by: str
    reporter_is_leader: bool
    totals: _containers.RepeatedCompositeFieldContainer[CurrencyTotals]
    settled_to: _containers.RepeatedCompositeFieldContainer[PairTotal]
    credited_from: _containers.RepeatedCompositeFieldContainer[PairTotal]
    leader_node_id: str
    leader_address: str
    term: int
    commit_index: int
    applied_position: int
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    money_in_flight: str
    outbox_depth: int
    last_snapshot_position: int
    state_hash: str
    def __init__(self, partition: _Optional[int] = ..., reported_by: _Optional[str] = ..., reporter_is_leader: _Optional[bool] = ..., totals: _Optional[_Iterable[_Union[CurrencyTotals, _Mapping]]] = ..., settled_to: _Optional[_Iterable[_Union[PairTotal, _Mapping]]] = ..., credited_from: _Optional[_Iterable[_Union[PairTotal, _Mapping]]] = ..., leader_node_id: _Optional[str] = ..., leader_address: _Optional[str] = ..., term: _Optional[int] = ..., commit_index: _Optional[int] = ..., applied_position: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ..., money_in_flight: _Optional[str] = ..., outbox_depth: _Optional[int] = ..., last_snapshot_position: _Optional[int] = ..., state_hash: _Optional[str] = ...) -> None: ...

class CurrencyTotals(_message.Message):
    __slots__ = ("currency", "balance_minor", "in_flight_minor", "deposited_minor", "withdrawn_minor", "credited_in_minor", "settled_out_minor")
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    BALANCE_MINOR_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_MINOR_FIELD_NUMBER: _ClassVar[int]
    DEPOSITED_MINOR_FIELD_NUMBER: _ClassVar[int]
    WITHDRAWN_MINOR_FIELD_NUMBER: _ClassVar[int]
    CREDITED_IN_MINOR_FIELD_NUMBER: _ClassVar[int]
    SETTLED_OUT_MINOR_FIELD_NUMBER: _ClassVar[int]
    currency: str
    balance_minor: str
    in_flight_minor: str
    deposited_minor: str
    withdrawn_minor: str
    credited_in_minor: str
    settled_out_minor: str
    def __init__(self, currency: _Optional[str] = ..., balance_minor: _Optional[str] = ..., in_flight_minor: _Optional[str] = ..., deposited_minor: _Optional[str] = ..., withdrawn_minor: _Optional[str] = ..., credited_in_minor: _Optional[str] = ..., settled_out_minor: _Optional[str] = ...) -> None: ...

class PairTotal(_message.Message):
    __slots__ = ("partition", "currency", "amount_minor")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    partition: int
    currency: str
    amount_minor: str
    def __init__(self, partition: _Optional[int] = ..., currency: _Optional[str] = ..., amount_minor: _Optional[str] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_id", "address", "up", "partitions", "leader_of")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    LEADER_OF_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    up: bool
    partitions: _containers.RepeatedScalarFieldContainer[int]
    leader_of: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., up: _Optional[bool] = ..., partitions: _Optional[_Iterable[int]] = ..., leader_of: _Optional[_Iterable[int]] = ...) -> None: ...

class ClusterStatusResponse(_message.Message):
    __slots__ = ("partition_count", "partitions", "nodes", "map_version", "membership_differences")
    PARTITION_COUNT_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_DIFFERENCES_FIELD_NUMBER: _ClassVar[int]
    partition_count: int
    partitions: _containers.RepeatedCompositeFieldContainer[PartitionStatus]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    map_version: int
    membership_differences: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, partition_count: _Optional[int] = ..., partitions: _Optional[_Iterable[_Union[PartitionStatus, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., map_version: _Optional[int] = ..., membership_differences: _Optional[_Iterable[str]] = ...) -> None: ...

class AddReplicaRequest(_message.Message):
    __slots__ = ("partition", "node_id", "metadata_group")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_GROUP_FIELD_NUMBER: _ClassVar[int]
    partition: int
    node_id: str
    metadata_group: bool
    def __init__(self, partition: _Optional[int] = ..., node_id: _Optional[str] = ..., metadata_group: _Optional[bool] = ...) -> None: ...

class AddReplicaResponse(_message.Message):
    __slots__ = ("map_version",)
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    map_version: int
    def __init__(self, map_version: _Optional[int] = ...) -> None: ...

class GetClusterMapRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetClusterMapResponse(_message.Message):
    __slots__ = ("version", "map_json", "metadata_leader_node_id")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MAP_JSON_FIELD_NUMBER: _ClassVar[int]
    METADATA_LEADER_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    version: int
    map_json: str
    metadata_leader_node_id: str
    def __init__(self, version: _Optional[int] = ..., map_json: _Optional[str] = ..., metadata_leader_node_id: _Optional[str] = ...) -> None: ...

class AddNodeRequest(_message.Message):
    __slots__ = ("node_id", "host", "grpc_port", "raft_port_base", "metrics_port")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    GRPC_PORT_FIELD_NUMBER: _ClassVar[int]
    RAFT_PORT_BASE_FIELD_NUMBER: _ClassVar[int]
    METRICS_PORT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    host: str
    grpc_port: int
    raft_port_base: int
    metrics_port: int
    def __init__(self, node_id: _Optional[str] = ..., host: _Optional[str] = ..., grpc_port: _Optional[int] = ..., raft_port_base: _Optional[int] = ..., metrics_port: _Optional[int] = ...) -> None: ...

class RemoveNodeRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class RebalanceLeadersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChangeClusterMapResponse(_message.Message):
    __slots__ = ("map_version", "detail")
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    map_version: int
    detail: str
    def __init__(self, map_version: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class ProposeMapChangeRequest(_message.Message):
    __slots__ = ("command_json",)
    COMMAND_JSON_FIELD_NUMBER: _ClassVar[int]
    command_json: str
    def __init__(self, command_json: _Optional[str] = ...) -> None: ...

class RemoveReplicaRequest(_message.Message):
    __slots__ = ("partition", "node_id", "metadata_group")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_GROUP_FIELD_NUMBER: _ClassVar[int]
    partition: int
    node_id: str
    metadata_group: bool
    def __init__(self, partition: _Optional[int] = ..., node_id: _Optional[str] = ..., metadata_group: _Optional[bool] = ...) -> None: ...

class RemoveReplicaResponse(_message.Message):
    __slots__ = ("map_version",)
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    map_version: int
    def __init__(self, map_version: _Optional[int] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("partition",)
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    partition: int
    def __init__(self, partition: _Optional[int] = ...) -> None: ...

class SnapshotResponse(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: int
    def __init__(self, position: _Optional[int] = ...) -> None: ...

class ForceFailTransferRequest(_message.Message):
    __slots__ = ("from_account", "transaction_id")
    FROM_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    from_account: str
    transaction_id: str
    def __init__(self, from_account: _Optional[str] = ..., transaction_id: _Optional[str] = ...) -> None: ...

class ForceFailTransferResponse(_message.Message):
    __slots__ = ("destination_outcome", "destination_partition", "sequence")
    DESTINATION_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PARTITION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    destination_outcome: str
    destination_partition: int
    sequence: int
    def __init__(self, destination_outcome: _Optional[str] = ..., destination_partition: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("skip_replay", "chain_hash_at")
    class ChainHashAtEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    SKIP_REPLAY_FIELD_NUMBER: _ClassVar[int]
    CHAIN_HASH_AT_FIELD_NUMBER: _ClassVar[int]
    skip_replay: bool
    chain_hash_at: _containers.ScalarMap[int, int]
    def __init__(self, skip_replay: _Optional[bool] = ..., chain_hash_at: _Optional[_Mapping[int, int]] = ...) -> None: ...

class PartitionVerdict(_message.Message):
    __slots__ = ("partition", "replicas_agree", "replay_matches", "detail", "position", "state_hash", "chain_position", "chain_hash")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_AGREE_FIELD_NUMBER: _ClassVar[int]
    REPLAY_MATCHES_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    STATE_HASH_FIELD_NUMBER: _ClassVar[int]
    CHAIN_POSITION_FIELD_NUMBER: _ClassVar[int]
    CHAIN_HASH_FIELD_NUMBER: _ClassVar[int]
    partition: int
    replicas_agree: bool
    replay_matches: bool
    detail: str
    position: int
    state_hash: str
    chain_position: int
    chain_hash: str
    def __init__(self, partition: _Optional[int] = ..., replicas_agree: _Optional[bool] = ..., replay_matches: _Optional[bool] = ..., detail: _Optional[str] = ..., position: _Optional[int] = ..., state_hash: _Optional[str] = ..., chain_position: _Optional[int] = ..., chain_hash: _Optional[str] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("ok", "partitions")
    OK_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    partitions: _containers.RepeatedCompositeFieldContainer[PartitionVerdict]
    def __init__(self, ok: _Optional[bool] = ..., partitions: _Optional[_Iterable[_Union[PartitionVerdict, _Mapping]]] = ...) -> None: ...

class FetchSnapshotRequest(_message.Message):
    __slots__ = ("partition",)
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    partition: int
    def __init__(self, partition: _Optional[int] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("data", "offset", "total_bytes")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    total_bytes: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class FetchArchiveRequest(_message.Message):
    __slots__ = ("partition", "from_position", "max_records")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    FROM_POSITION_FIELD_NUMBER: _ClassVar[int]
    MAX_RECORDS_FIELD_NUMBER: _ClassVar[int]
    partition: int
    from_position: int
    max_records: int
    def __init__(self, partition: _Optional[int] = ..., from_position: _Optional[int] = ..., max_records: _Optional[int] = ...) -> None: ...

class ArchivedRecord(_message.Message):
    __slots__ = ("position", "log_index", "term", "stamp_ms", "entry_blob", "results_blob", "prev_hash", "hash")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    STAMP_MS_FIELD_NUMBER: _ClassVar[int]
    ENTRY_BLOB_FIELD_NUMBER: _ClassVar[int]
    RESULTS_BLOB_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    position: int
    log_index: int
    term: int
    stamp_ms: int
    entry_blob: bytes
    results_blob: bytes
    prev_hash: bytes
    hash: bytes
    def __init__(self, position: _Optional[int] = ..., log_index: _Optional[int] = ..., term: _Optional[int] = ..., stamp_ms: _Optional[int] = ..., entry_blob: _Optional[bytes] = ..., results_blob: _Optional[bytes] = ..., prev_hash: _Optional[bytes] = ..., hash: _Optional[bytes] = ...) -> None: ...

class FetchArchiveResponse(_message.Message):
    __slots__ = ("records", "last_position")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    LAST_POSITION_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[ArchivedRecord]
    last_position: int
    def __init__(self, records: _Optional[_Iterable[_Union[ArchivedRecord, _Mapping]]] = ..., last_position: _Optional[int] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("sequence", "from_account", "to_account", "amount_minor", "currency", "transaction_id")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FROM_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    TO_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    from_account: str
    to_account: str
    amount_minor: int
    currency: str
    transaction_id: bytes
    def __init__(self, sequence: _Optional[int] = ..., from_account: _Optional[str] = ..., to_account: _Optional[str] = ..., amount_minor: _Optional[int] = ..., currency: _Optional[str] = ..., transaction_id: _Optional[bytes] = ...) -> None: ...

class ApplyCreditsRequest(_message.Message):
    __slots__ = ("source_partition", "destination_partition", "source_resolved_through", "credits")
    SOURCE_PARTITION_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PARTITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_RESOLVED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    source_partition: int
    destination_partition: int
    source_resolved_through: int
    credits: _containers.RepeatedCompositeFieldContainer[Credit]
    def __init__(self, source_partition: _Optional[int] = ..., destination_partition: _Optional[int] = ..., source_resolved_through: _Optional[int] = ..., credits: _Optional[_Iterable[_Union[Credit, _Mapping]]] = ...) -> None: ...

class ApplyCreditsResponse(_message.Message):
    __slots__ = ("codes",)
    CODES_FIELD_NUMBER: _ClassVar[int]
    codes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, codes: _Optional[_Iterable[int]] = ...) -> None: ...
