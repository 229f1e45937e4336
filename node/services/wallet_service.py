"""WalletService: the public API, a thin shell over the ledger's commands.

RPC handler -> validate -> route to the account's partition -> group commit ->
apply -> answer. Requests for a partition this node does not host are
forwarded to a node that hosts it. Every refusal is an ApiError (node.api).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from typing import Any, cast

import grpc

from ledger import commands as c
from ledger.money import format_amount
from ledger.results import Code
from ledger.routing import partition_of
from ledger.state import DedupRecord, RecordKind, StateMachine
from node import api
from node.api import ApiError
from node.archive.history import History, HistoryUnavailable, TransferRef
from node.cluster_map import encode_map
from node.host import NodeHost, deadline_of
from node.metrics import TransferOutcomes
from node.proposer import Applied
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc

TRANSFERS_PER_BATCH_MAX = 10_000
"""Most transfers accepted in one TransferBatch call."""

PARTITION_CACHE_SIZE = 1 << 16
WAITING_TRANSFERS_MAX = 50_000
"""Cross-partition transfers whose callers may wait for the final outcome at once;
beyond it, calls answer PENDING at once and the client asks GetTransfer later."""

async def forward(host: NodeHost, partition: int, method: str, request: Any,
                  deadline: float) -> Any:  # the response type of `method`
    """Send `request` to a node hosting `partition`; its status becomes ours."""
    last: grpc.aio.AioRpcError | None = None
    for stub in host.wallet_stub_for(partition):
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            break
        try:
            return await getattr(stub, method)(request, timeout=remaining_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED):
                reason = dict(exc.trailing_metadata() or ()).get(api.REASON_METADATA_KEY, "")
                raise ApiError(exc.code(), str(reason), exc.details() or "") from None
            last = exc
    detail = last.details() if last is not None else "no node reachable"
    raise ApiError(grpc.StatusCode.UNAVAILABLE, "NO_REPLICA_REACHABLE",
                   f"no node hosting partition {partition} answered: {detail}")


class WalletService(wallet_pb2_grpc.WalletServiceServicer):  # type: ignore[misc]
    def __init__(self, host: NodeHost, transfer_outcomes: TransferOutcomes | None = None) -> None:
        self.host = host
        self.transfer_outcomes = transfer_outcomes or TransferOutcomes(registry=None)
        """Counts the transfers answered here (an unregistered counter when not given)."""
        self.partition_count = host.config.partition_count
        self.waiting = 0
        count = self.partition_count
        # Routing hashes each account id; hot accounts recur, so remember the answer.
        self._partition_cached = functools.lru_cache(maxsize=PARTITION_CACHE_SIZE)(
            lambda account_id: partition_of(account_id, count))

    def _partition(self, account_id: str) -> int:
        return int(self._partition_cached(account_id))

    async def _one(self, partition: int, command: c.Command, deadline: float) -> Applied:
        (outcome,) = await self.host.execute(partition, [command], deadline)
        if isinstance(outcome, ApiError):
            raise outcome
        return outcome

    # -- accounts and money in/out -------------------------------------------------

    @api.rpc_handler
    async def CreateAccount(self, request: pb.CreateAccountRequest,
                            context: grpc.aio.ServicerContext) -> pb.CreateAccountResponse:
        account_id = api.check_account_id(request.account_id, "account_id")
        cur = api.check_currency(request.currency)
        # Without a request id, a retry must still be recognised: derive one from the
        # account and currency (a second creation of the same account is then answered
        # as a replay, which is what an idempotent create means).
        request_id = (api.parse_uuid(request.request_id, "request_id") if request.request_id
                      else hashlib.blake2b(f"{account_id}\0{cur.code}".encode(),
                                           digest_size=16).digest())
        partition = self._partition(account_id)
        deadline = deadline_of(context)
        if not self.host.hosts(partition):
            return cast("pb.CreateAccountResponse",
                        await forward(self.host, partition, "CreateAccount", request, deadline))
        applied = await self._one(partition, c.CreateAccount(account_id, cur.code, cur.exponent,
                                                             request_id), deadline)
        if applied.result.code is not Code.OK:
            raise api.ledger_error(applied.result.code, _account_message(
                applied.result.code, account_id, cur.code))
        position = applied.position
        if applied.result.replayed:  # a retry: the position of the creation it repeats
            replica = self.host.replicas[partition]
            with replica.lock:
                account = replica.state.accounts.get(account_id)
            position = account.created_position if account is not None else position
        return pb.CreateAccountResponse(account_id=account_id, currency=cur.code,
                                        position=position)

    async def _money(self, request: pb.DepositRequest | pb.WithdrawRequest,
                     context: grpc.aio.ServicerContext, withdraw: bool) -> pb.MoneyMovementResponse:
        account_id = api.check_account_id(request.account_id, "account_id")
        cur = api.check_currency(request.currency)
        amount_minor = api.check_amount(request.amount, cur)
        transaction_id = api.parse_uuid(request.transaction_id, "transaction_id")
        api.check_not_expired(transaction_id, int(time.time() * 1000))
        partition = self._partition(account_id)
        deadline = deadline_of(context)
        if not self.host.hosts(partition):
            method = "Withdraw" if withdraw else "Deposit"
            return cast("pb.MoneyMovementResponse",
                        await forward(self.host, partition, method, request, deadline))
        kind = c.Withdraw if withdraw else c.Deposit
        applied = await self._one(partition, kind(account_id, amount_minor, cur.code,
                                                  transaction_id), deadline)
        code = applied.result.code
        if code is not Code.OK:
            raise api.ledger_error(code, _money_message(code, account_id, cur.code,
                                                        request.transaction_id))
        balance = self._local_balance(partition, account_id)
        return pb.MoneyMovementResponse(
            transaction_id=request.transaction_id, status=pb.SUCCEEDED,
            balance=format_amount(balance, cur.exponent) if balance is not None else "",
            position=self._decided_at(partition, applied, (account_id, transaction_id)))

    @api.rpc_handler
    async def Deposit(self, request: pb.DepositRequest,
                      context: grpc.aio.ServicerContext) -> pb.MoneyMovementResponse:
        return await self._money(request, context, withdraw=False)

    @api.rpc_handler
    async def Withdraw(self, request: pb.WithdrawRequest,
                       context: grpc.aio.ServicerContext) -> pb.MoneyMovementResponse:
        return await self._money(request, context, withdraw=True)

    def _local_balance(self, partition: int, account_id: str) -> int | None:
        replica = self.host.replicas[partition]
        with replica.lock:
            found = replica.state.balance(account_id)
        return None if found is None else found.balance_minor

    def _local_currency(self, partition: int, account_id: str) -> str | None:
        replica = self.host.replicas[partition]
        with replica.lock:
            found = replica.state.balance(account_id)
        return None if found is None else found.currency

    # -- transfers -------------------------------------------------------------------

    def _transfer_command(
        self, request: pb.TransferRequest, now_ms: int,
    ) -> tuple[int, c.Transfer | c.DebitForTransfer]:
        """Validate one transfer request; (source partition, the ledger command).

        A transfer within one partition is one atomic `Transfer`; across partitions
        it starts the saga with `DebitForTransfer` on the source partition.
        """
        from_account = api.check_account_id(request.from_account, "from_account")
        to_account = api.check_account_id(request.to_account, "to_account")
        cur = api.check_currency(request.currency)
        amount_minor = api.check_amount(request.amount, cur)
        transaction_id = api.parse_uuid(request.transaction_id, "transaction_id")
        api.check_not_expired(transaction_id, now_ms)
        if from_account == to_account:
            raise api.ledger_error(Code.SAME_ACCOUNT,
                                   "to_account: must differ from from_account")
        source, destination = self._partition(from_account), self._partition(to_account)
        if source != destination:
            return source, c.DebitForTransfer(from_account, to_account, amount_minor, cur.code,
                                              transaction_id, destination)
        return source, c.Transfer(from_account, to_account, amount_minor, cur.code,
                                  transaction_id)

    async def _final_codes(self, partition: int, keys: list[tuple[str, bytes]],
                           deadline: float) -> list[Code]:
        """Wait until each cross-partition transfer is final, or the deadline; PENDING stays."""
        replica = self.host.replicas[partition]
        self.waiting += len(keys)
        try:
            while True:
                with replica.lock:
                    records = [replica.state.transfer_record(*key) for key in keys]
                    position = replica.state.position
                codes = [Code.PENDING if r is None else r.code for r in records]
                if (Code.PENDING not in codes or self.waiting > WAITING_TRANSFERS_MAX
                        or time.monotonic() >= deadline):
                    return codes
                try:
                    await self.host.wait_for_position(partition, position + 1, deadline)
                except ApiError:
                    return codes
        finally:
            self.waiting -= len(keys)

    @api.rpc_handler
    async def Transfer(self, request: pb.TransferRequest,
                       context: grpc.aio.ServicerContext) -> pb.TransferResponse:
        partition, command = self._transfer_command(request, int(time.time() * 1000))
        deadline = deadline_of(context)
        if not self.host.hosts(partition):
            return cast("pb.TransferResponse",
                        await forward(self.host, partition, "Transfer", request, deadline))
        cross = isinstance(command, c.DebitForTransfer)
        try:
            applied = await self._one(partition, command, deadline)
        except ApiError as error:
            self.transfer_outcomes.record_error(error.reason, cross)
            raise
        code = applied.result.code
        if code is Code.PENDING:
            key = (command.from_account, command.transaction_id)
            (code,) = await self._final_codes(partition, [key], deadline)
        self.transfer_outcomes.record(code, cross)
        if code is not Code.PENDING and code is not Code.OK:
            raise api.ledger_error(code, self._transfer_message(partition, command, code))
        position = self._decided_at(partition, applied,
                                    (command.from_account, command.transaction_id))
        status = pb.PENDING if code is Code.PENDING else pb.SUCCEEDED
        return pb.TransferResponse(status=status, transaction_id=request.transaction_id,
                                   position=position)

    def _decided_at(self, partition: int, applied: Applied, key: tuple[str, bytes]) -> int:
        """The log position a write's answer reports: where its id was first applied.

        A retry of an applied id is a new log entry that only finds the id's dedup
        record (`replayed`); the record keeps the position of the entry that applied
        it (a cross-partition transfer's debit), so the retry answers the same position
        as the first answer. Without a record (pruned after the dedup window) the
        entry's own position is all there is.
        """
        if not applied.result.replayed:
            return applied.position
        replica = self.host.replicas[partition]
        with replica.lock:
            record = replica.state.transfer_record(*key)
        return applied.position if record is None else record.position

    def _transfer_message(self, partition: int, command: c.Transfer | c.DebitForTransfer,
                          code: Code) -> str:
        """The refusal's message, naming exactly the account that caused it.

        Across partitions, to_account lives on the destination, so this partition can say
        nothing about it. A refusal there is recorded: the dedup record of the debit ends
        compensated (a resolved position and the destination's reason). Any other refusal
        came from the debit, which looked at from_account only.
        """
        if isinstance(command, c.DebitForTransfer):
            if self._credit_refused(partition, command, code):
                return (f"to_account {command.to_account!r} on partition "
                        f"{command.destination_partition} refused the credit ({code.name}); "
                        "the debit was compensated, the transfer is FAILED and nothing moved")
            debit_refusals = {
                Code.ACCOUNT_NOT_FOUND: f"from_account {command.from_account!r} does not exist",
                Code.CURRENCY_MISMATCH: self._currency_message(
                    partition, command, ("from_account",)),
                Code.ACCOUNT_CLOSED: f"from_account {command.from_account!r} is closed",
            }
            if code in debit_refusals:
                return debit_refusals[code]
        elif code is Code.CURRENCY_MISMATCH:
            return self._currency_message(partition, command, ("from_account", "to_account"))
        elif code is Code.ACCOUNT_NOT_FOUND:
            missing = [f"{field} {name!r}" for field, name in
                       (("from_account", command.from_account),
                        ("to_account", command.to_account))
                       if self._local_balance(partition, name) is None]
            if not missing:
                return "from_account or to_account does not exist"
            return f"{' and '.join(missing)} {'do' if len(missing) > 1 else 'does'} not exist"
        messages = {
            Code.INSUFFICIENT_FUNDS: f"from_account {command.from_account!r} has insufficient "
                                     "funds (this outcome is recorded for the transaction_id)",
            Code.ACCOUNT_CLOSED: "from_account or to_account is closed",
            Code.ID_CONFLICT: "transaction_id was already used by from_account with other "
                              "content (to_account, amount or currency)",
            Code.ABORTED: "transaction_id was aborted earlier; use a new transaction_id",
        }
        return messages.get(code, code.name)

    def _currency_message(self, partition: int, command: c.Transfer | c.DebitForTransfer,
                          fields: tuple[str, ...]) -> str:
        """A CURRENCY_MISMATCH refused by this partition: which of `fields` (accounts it
        holds) is in which currency. The ledger refused the command before moving any
        money and recorded nothing (the transfer stays unknown under its id)."""
        wrong = []
        for field in fields:
            account_id = getattr(command, field)
            currency = self._local_currency(partition, account_id)
            if currency is not None and currency != command.currency:
                wrong.append(f"{field} {account_id!r} is in currency {currency}")
        if not wrong:
            return (f"currency {command.currency} does not match the currency of "
                    f"{' or '.join(fields)}; nothing moved")
        return f"{' and '.join(wrong)}, not {command.currency}; nothing moved"

    def _credit_refused(self, partition: int, command: c.DebitForTransfer, code: Code) -> bool:
        """Whether `code` is the destination's refusal of this transfer's credit."""
        replica = self.host.replicas[partition]
        with replica.lock:
            record = replica.state.transfer_record(command.from_account,
                                                   command.transaction_id)
        return (record is not None and record.kind is RecordKind.CROSS_TRANSFER
                and record.resolved_position != 0 and record.code is code
                and code is not Code.OK)

    @api.rpc_handler
    async def TransferBatch(self, request: pb.TransferBatchRequest,
                            context: grpc.aio.ServicerContext) -> pb.TransferBatchResponse:
        transfers = request.transfers
        if len(transfers) > TRANSFERS_PER_BATCH_MAX:
            raise api.invalid("transfers", f"at most {TRANSFERS_PER_BATCH_MAX} per batch")
        deadline = deadline_of(context)
        statuses = [pb.TRANSFER_STATUS_UNSPECIFIED] * len(transfers)
        reasons: dict[int, str] = {}
        local: dict[int, list[tuple[int, c.Transfer | c.DebitForTransfer]]] = {}
        remote: dict[int, list[int]] = {}
        now_ms = int(time.time() * 1000)
        for index, item in enumerate(transfers):
            try:
                partition, command = self._transfer_command(item, now_ms)
            except ApiError as error:
                statuses[index] = pb.FAILED
                reasons[index] = error.reason
                continue
            if self.host.hosts(partition):
                local.setdefault(partition, []).append((index, command))
            else:
                remote.setdefault(partition, []).append(index)
        # Partitions go concurrently: a batch of random pairs touches all of them, and
        # their sagas then overlap instead of running one after the other.
        await asyncio.gather(*(self._batch_partition(partition, items, deadline, statuses,
                                                     reasons)
                               for partition, items in local.items()))
        for partition, indexes in remote.items():
            sub = pb.TransferBatchRequest(transfers=[transfers[i] for i in indexes])
            try:
                answer = await forward(self.host, partition, "TransferBatch", sub, deadline)
            except ApiError as error:
                for index in indexes:
                    reasons[index] = error.reason
                continue
            for position, index in enumerate(indexes):
                statuses[index] = answer.statuses[position]
                if position in answer.reasons:
                    reasons[index] = answer.reasons[position]
        return pb.TransferBatchResponse(
            statuses=statuses, reasons=reasons,
            succeeded=sum(1 for s in statuses if s == pb.SUCCEEDED),
            failed=sum(1 for s in statuses if s == pb.FAILED),
            pending=sum(1 for s in statuses if s == pb.PENDING))

    async def _batch_partition(
        self, partition: int, items: list[tuple[int, c.Transfer | c.DebitForTransfer]],
        deadline: float, statuses: list[pb.TransferStatus], reasons: dict[int, str],
    ) -> None:
        """One partition's share of a TransferBatch: propose, then wait for saga finals."""
        outcomes = await self.host.execute(partition, [cmd for _, cmd in items], deadline)
        pending: list[tuple[int, tuple[str, bytes]]] = []
        answered: list[tuple[Code | str, bool]] = []  # (code or error reason, cross)
        for (index, command), outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, ApiError):
                reasons[index] = outcome.reason
                answered.append((outcome.reason, isinstance(command, c.DebitForTransfer)))
            elif outcome.result.code is Code.PENDING:
                pending.append((index, (command.from_account, command.transaction_id)))
            else:
                self._set_outcome(statuses, reasons, index, outcome.result.code)
                answered.append((outcome.result.code, isinstance(command, c.DebitForTransfer)))
        if pending:
            finals = await self._final_codes(partition, [key for _, key in pending], deadline)
            for (index, _), code in zip(pending, finals, strict=True):
                self._set_outcome(statuses, reasons, index, code)
                answered.append((code, True))  # only a saga's debit is ever PENDING
        self.transfer_outcomes.record_many(answered)

    @staticmethod
    def _set_outcome(statuses: list[pb.TransferStatus], reasons: dict[int, str], index: int,
                     code: Code) -> None:
        if code is Code.OK:
            statuses[index] = pb.SUCCEEDED
        elif code is Code.PENDING:
            statuses[index] = pb.PENDING
        else:
            statuses[index] = pb.FAILED
            reasons[index] = code.name

    # -- reads -------------------------------------------------------------------------

    async def _read_barrier(self, partition: int, consistency: int, min_position: int,
                            deadline: float) -> bool:
        """Order a read: through the log when linearizable; returns whether it is stale."""
        if consistency == pb.STALE:
            if min_position:
                await self.host.wait_for_position(partition, min_position, deadline)
            return True
        await self._one(partition, c.Barrier(), deadline)
        if min_position:
            await self.host.wait_for_position(partition, min_position, deadline)
        return False

    @api.rpc_handler
    async def GetBalance(self, request: pb.GetBalanceRequest,
                         context: grpc.aio.ServicerContext) -> pb.GetBalanceResponse:
        account_id = api.check_account_id(request.account_id, "account_id")
        partition = self._partition(account_id)
        deadline = deadline_of(context)
        if not self.host.hosts(partition):
            return cast("pb.GetBalanceResponse",
                        await forward(self.host, partition, "GetBalance", request, deadline))
        stale = await self._read_barrier(partition, request.consistency, request.min_position,
                                         deadline)
        replica = self.host.replicas[partition]
        with replica.lock:
            found = replica.state.balance(account_id)
            position = replica.state.position
        if found is None:
            raise api.ledger_error(Code.ACCOUNT_NOT_FOUND,
                                   f"account_id {account_id!r} does not exist")
        return pb.GetBalanceResponse(account_id=account_id, currency=found.currency,
                                     balance=format_amount(found.balance_minor, found.exponent),
                                     position=position, stale=stale)

    @api.rpc_handler
    async def GetTransfer(self, request: pb.GetTransferRequest,
                          context: grpc.aio.ServicerContext) -> pb.GetTransferResponse:
        from_account = api.check_account_id(request.from_account, "from_account")
        transaction_id = api.parse_uuid(request.transaction_id, "transaction_id",
                                        nil_allowed=True)
        partition = self._partition(from_account)
        deadline = deadline_of(context)
        if not self.host.hosts(partition):
            return cast("pb.GetTransferResponse",
                        await forward(self.host, partition, "GetTransfer", request, deadline))
        stale = await self._read_barrier(partition, request.consistency, 0, deadline)
        replica = self.host.replicas[partition]
        with replica.lock:
            record = replica.state.transfer_record(from_account, transaction_id)
            account = replica.state.accounts.get(from_account)
            exponent = account.exponent if account is not None else 2
        if record is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND, "TRANSFER_NOT_FOUND",
                           f"no transfer {request.transaction_id} from {from_account!r} has been "
                           "applied. This is not final while the request may still be in flight:"
                           " retry the transfer with the same transaction_id to settle it")
        return _transfer_view(request.transaction_id, from_account, record, exponent, partition,
                              stale)

    @api.rpc_handler
    async def AbortTransfer(self, request: pb.AbortTransferRequest,
                            context: grpc.aio.ServicerContext) -> pb.GetTransferResponse:
        from_account = api.check_account_id(request.from_account, "from_account")
        transaction_id = api.parse_uuid(request.transaction_id, "transaction_id",
                                        nil_allowed=True)
        # An expired id's outcome may be forgotten: aborting it could hide a transfer
        # that happened. Its history is still in the archive (ListTransfers).
        api.check_not_expired(transaction_id, int(time.time() * 1000))
        partition = self._partition(from_account)
        deadline = deadline_of(context)
        if not self.host.hosts(partition):
            return cast("pb.GetTransferResponse",
                        await forward(self.host, partition, "AbortTransfer", request, deadline))
        applied = await self._one(partition, c.Abort(from_account, transaction_id), deadline)
        if applied.result.code not in (Code.ABORTED, Code.OK, Code.PENDING) and (
                not applied.result.replayed):
            raise api.ledger_error(applied.result.code,
                                   f"from_account {from_account!r} does not exist")
        replica = self.host.replicas[partition]
        with replica.lock:
            record = replica.state.transfer_record(from_account, transaction_id)
            account = replica.state.accounts.get(from_account)
            exponent = account.exponent if account is not None else 2
        assert record is not None, "an applied abort leaves a record"
        return _transfer_view(request.transaction_id, from_account, record, exponent, partition,
                              stale=False)

    @api.rpc_handler
    async def GetClusterMap(self, request: pb.GetClusterMapRequest,
                            context: grpc.aio.ServicerContext) -> pb.GetClusterMapResponse:
        membership = self.host.membership
        if membership is None:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, "STARTING", "the node is starting")
        current = membership.map
        return pb.GetClusterMapResponse(
            version=current.version, map_json=encode_map(current).decode(),
            metadata_leader_node_id=membership.metadata_leader() or "")

    async def _history(self, partition: int) -> History:
        """This node's history of `partition`, caught up with everything applied so far."""
        replica = self.host.replicas[partition]
        if replica.archive_lagging:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, "HISTORY_UNAVAILABLE",
                           f"this node's archive of partition {partition} is incomplete "
                           "(it was restored from a snapshot); ask another node")
        history = self.host.histories.get(partition)
        if history is None:
            history = self.host.histories[partition] = History(replica.archive, partition)
        try:
            await asyncio.to_thread(history.catch_up)
        except HistoryUnavailable as exc:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, "HISTORY_UNAVAILABLE", str(exc)) from None
        return history

    @api.rpc_handler
    async def ListTransfers(self, request: pb.ListTransfersRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListTransfersResponse:
        account_id = api.check_account_id(request.account_id, "account_id")
        start: int | None = None
        if request.page_token:
            if (not request.page_token.isascii() or not request.page_token.isdigit()
                    or len(request.page_token) > api.PAGE_TOKEN_CHARS_MAX):
                raise api.invalid("page_token", "not a token from a previous page")
            start = int(request.page_token)
        partition = self._partition(account_id)
        deadline = deadline_of(context)
        if not self.host.hosts(partition):
            return cast("pb.ListTransfersResponse",
                        await forward(self.host, partition, "ListTransfers", request, deadline))
        await self._read_barrier(partition, pb.LINEARIZABLE, 0, deadline)
        history = await self._history(partition)
        refs, following = history.transfers(account_id, start, request.limit,
                                            request.order == pb.NEWEST_FIRST)
        replica = self.host.replicas[partition]
        with replica.lock:
            views = [self._ref_view(replica.state, partition, ref) for ref in refs]
        return pb.ListTransfersResponse(
            transfers=views, next_page_token="" if following is None else str(following))

    @staticmethod
    def _ref_view(state: StateMachine, partition: int, ref: TransferRef) -> pb.GetTransferResponse:
        account = state.accounts.get(ref.to_account if not ref.sent else ref.from_account)
        exponent = account.exponent if account is not None else 2
        transaction_id = api.format_uuid(ref.transaction_id)
        if ref.source_partition == partition:
            record = state.transfer_record(ref.from_account, ref.transaction_id)
            if record is not None:
                view = _transfer_view(transaction_id, ref.from_account, record, exponent,
                                      partition, stale=False)
                return view
        # A credit received from another partition, or a transfer whose dedup record
        # was pruned: the outcome this partition's log decided, kept by the history.
        if ref.final_code is None:
            status, reason = pb.TRANSFER_STATUS_UNSPECIFIED, "OUTCOME_NOT_IN_HISTORY"
        else:
            code = Code(ref.final_code)
            status = pb.SUCCEEDED if code is Code.OK else pb.FAILED
            reason = "" if code is Code.OK else code.name
        step = ("sent" if ref.sent else
                "credited" if status == pb.SUCCEEDED else "credit refused")
        return pb.GetTransferResponse(
            transaction_id=transaction_id, from_account=ref.from_account,
            to_account=ref.to_account, amount=format_amount(ref.amount_minor, exponent),
            currency=ref.currency, status=status, reason=reason,
            steps=[pb.TransferStep(name=step, at_ms=ref.stamp_ms, position=ref.position,
                                   partition=partition)])

    @api.rpc_handler
    async def GetBalanceAt(self, request: pb.GetBalanceAtRequest,
                           context: grpc.aio.ServicerContext) -> pb.GetBalanceResponse:
        account_id = api.check_account_id(request.account_id, "account_id")
        which = request.WhichOneof("at")
        if which is None:
            raise api.invalid("at", "give a position or a time_ms")
        partition = self._partition(account_id)
        deadline = deadline_of(context)
        if not self.host.hosts(partition):
            return cast("pb.GetBalanceResponse",
                        await forward(self.host, partition, "GetBalanceAt", request, deadline))
        await self._read_barrier(partition, pb.LINEARIZABLE, 0, deadline)
        history = await self._history(partition)
        found = (history.balance_at(account_id, position=request.position)
                 if which == "position" else history.balance_at(account_id,
                                                                time_ms=request.time_ms))
        if found is None:
            raise api.ledger_error(Code.ACCOUNT_NOT_FOUND,
                                   f"account_id {account_id!r} did not exist at that point")
        balance, position = found
        return pb.GetBalanceResponse(account_id=account_id, currency=balance.currency,
                                     balance=format_amount(balance.balance_minor,
                                                           balance.exponent),
                                     position=position, stale=False)


def _transfer_view(transaction_id: str, from_account: str, record: DedupRecord, exponent: int,
                   partition: int, stale: bool) -> pb.GetTransferResponse:
    if record.code is Code.PENDING:
        status = pb.PENDING
    elif record.code is Code.OK:
        status = pb.SUCCEEDED
    else:
        status = pb.FAILED
    kind = {RecordKind.DEPOSIT: "deposit", RecordKind.WITHDRAW: "withdraw",
            RecordKind.TRANSFER: "transfer", RecordKind.CROSS_TRANSFER: "debited",
            RecordKind.ABORT: "aborted"}[record.kind]
    steps = [pb.TransferStep(name=kind, at_ms=record.stamp_ms, position=record.position,
                             partition=partition)]
    if record.resolved_position:
        steps.append(pb.TransferStep(
            name="settled" if record.code is Code.OK else "compensated",
            at_ms=record.resolved_stamp_ms, position=record.resolved_position,
            partition=partition))
    return pb.GetTransferResponse(
        transaction_id=transaction_id, from_account=from_account,
        to_account=record.counterparty,
        amount=format_amount(record.amount_minor, exponent) if record.amount_minor else "",
        currency=record.currency, status=status,
        reason="" if record.code in (Code.OK, Code.PENDING) else record.code.name,
        steps=steps, stale=stale)


def _account_message(code: Code, account_id: str, currency: str) -> str:
    if code is Code.ACCOUNT_EXISTS:
        return f"account_id {account_id!r} already exists"
    return f"account_id {account_id!r}: {code.name}"


def _money_message(code: Code, account_id: str, currency: str, transaction_id: str) -> str:
    return {
        Code.ACCOUNT_NOT_FOUND: f"account_id {account_id!r} does not exist",
        Code.CURRENCY_MISMATCH: f"currency {currency} does not match account {account_id!r}",
        Code.INSUFFICIENT_FUNDS: f"account_id {account_id!r} has insufficient funds (recorded "
                                 f"for transaction_id {transaction_id})",
        Code.BALANCE_LIMIT: "amount: would push the partition's total past the int64 bound",
        Code.ACCOUNT_CLOSED: f"account_id {account_id!r} is closed",
        Code.ID_CONFLICT: f"transaction_id {transaction_id} was already used for "
                          f"{account_id!r} with other content",
        Code.ABORTED: f"transaction_id {transaction_id} was aborted; use a new one",
    }.get(code, code.name)
