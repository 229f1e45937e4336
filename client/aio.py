"""`AsyncWalletClient`: the SDK's methods as coroutines, on grpc.aio.

Same answers (the dataclasses of `client.sdk`), same exceptions
(`client.errors`), same ids, deadlines, retry policy, node health and routing as
`WalletClient`: both drive the decisions of `client.sdk` (`_Attempts`,
`_Discovery`, `_ClientBase`), each with its own transport.

    async with AsyncWalletClient("127.0.0.1:50051") as wallet:
        result = await wallet.transfer("alice", "bob", "12.34", "USD")

Create and use it inside one running event loop (grpc.aio channels belong to
the loop that created them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from client.auth import TlsOptions
from client.errors import WalletError, from_rpc_error
from client.sdk import (
    CHANNEL_OPTIONS,
    DEFAULT_PROBE_TIMEOUT_S,
    DEFAULT_RETRY_DEADLINE_S,
    DEFAULT_TIMEOUT_S,
    DISCOVERY_TIMEOUT_S,
    PROBE_PATH,
    ROUTE_LOOKUP_TIMEOUT_S_MAX,
    Account,
    Balance,
    BatchResult,
    ClusterMapView,
    ClusterStatus,
    Consistency,
    MovementResult,
    Route,
    TransferPage,
    TransferRecord,
    TransferResult,
    TransferSpec,
    _Attempts,
    _ClientBase,
    _cluster_status,
    _Discovery,
    _Op,
    _op_abort_transfer,
    _op_balance,
    _op_balance_at,
    _op_cluster_map,
    _op_cluster_status,
    _op_create_account,
    _op_get_transfer,
    _op_list_transfers,
    _op_movement,
    _op_transfer,
    _op_transfer_batch,
    _probe_refusal,
    _Retry,
    _serialize,
    route_of,
)

__all__ = ["AsyncWalletClient"]

T = TypeVar("T")


class AsyncWalletClient(_ClientBase):
    """An asyncio RaftWallet client; one grpc.aio channel per node address, kept for the
    client's life.

    `timeout_s`, `retry_deadline_s`, `probe_timeout_s`, `learn_routes`, `token`,
    `admin_token` and `tls` as for `client.sdk.WalletClient`.
    """

    def __init__(
        self,
        targets: str | Sequence[str],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S,
        *,
        probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S,
        learn_routes: bool = True,
        token: str = "",
        admin_token: str = "",
        tls: TlsOptions | None = None,
    ) -> None:
        super().__init__(targets, timeout_s, retry_deadline_s,
                         probe_timeout_s=probe_timeout_s, learn_routes=learn_routes,
                         token=token, admin_token=admin_token, tls=tls)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._callables: dict[tuple[str, str], Any] = {}
        self._background: set[asyncio.Task[None]] = set()
        """Discovery calls still running after their round ended (each within its deadline)."""

    async def create_account(
        self, account_id: str, currency: str, request_id: str | None = None
    ) -> Account:
        return await self._run(_op_create_account(account_id, currency, request_id))

    async def deposit(
        self, account_id: str, amount: str, currency: str, transaction_id: str | None = None
    ) -> MovementResult:
        return await self._run(
            _op_movement("Deposit", account_id, amount, currency, transaction_id)
        )

    async def withdraw(
        self, account_id: str, amount: str, currency: str, transaction_id: str | None = None
    ) -> MovementResult:
        return await self._run(
            _op_movement("Withdraw", account_id, amount, currency, transaction_id)
        )

    async def transfer(
        self,
        from_account: str,
        to_account: str,
        amount: str,
        currency: str,
        transaction_id: str | None = None,
    ) -> TransferResult:
        spec = TransferSpec(from_account, to_account, amount, currency, transaction_id)
        return await self._run(_op_transfer(spec))

    async def transfer_batch(self, transfers: Sequence[TransferSpec]) -> BatchResult:
        return await self._run(_op_transfer_batch(transfers))

    async def balance(
        self, account_id: str, consistency: Consistency = "linearizable", min_position: int = 0
    ) -> Balance:
        return await self._run(_op_balance(account_id, consistency, min_position))

    async def balance_at(self, account_id: str, position: int | None = None,
                         time_ms: int | None = None) -> Balance:
        """As `WalletClient.balance_at`: the balance after a log position, or at a time."""
        if (position is None) == (time_ms is None):
            raise ValueError("give exactly one of position and time_ms")
        return await self._run(_op_balance_at(account_id, position, time_ms))

    async def get_transfer(
        self, from_account: str, transaction_id: str, consistency: Consistency = "linearizable"
    ) -> TransferRecord:
        return await self._run(_op_get_transfer(from_account, transaction_id, consistency))

    async def abort_transfer(self, from_account: str, transaction_id: str) -> TransferRecord:
        return await self._run(_op_abort_transfer(from_account, transaction_id))

    async def list_transfers(
        self, account_id: str, page_token: str = "", limit: int = 100, newest_first: bool = False
    ) -> TransferPage:
        return await self._run(_op_list_transfers(account_id, page_token, limit, newest_first))

    async def cluster_status(self) -> ClusterStatus:
        response = await self._run(_op_cluster_status())
        self._routes.update(response)
        return _cluster_status(response)

    async def cluster_map(self) -> ClusterMapView:
        """The cluster map as the answering node knows it (also refreshes routing)."""
        view = await self._run(_op_cluster_map())
        self._routes.update_map(view)
        return view

    async def route(self, account_id: str) -> Route:
        return route_of(await self.cluster_status(), account_id)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._background):
            task.cancel()
        channels = list(self._channels.values())
        self._channels.clear()
        self._callables.clear()
        for channel in channels:
            await channel.close()

    async def __aenter__(self) -> AsyncWalletClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _has_channel(self, address: str) -> bool:
        return address in self._channels

    def _channel_count(self) -> int:
        return len(self._channels)

    def _callable(self, address: str, path: str, response_type: type[Message] | None) -> Any:
        """The cached callable of `path` at `address` (None: raw bytes in and out)."""
        self._check_open()
        method = self._callables.get((address, path))
        if method is None:
            channel = self._channels.get(address)
            if channel is None:
                tls = self._credentials.tls
                channel = (
                    grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) if tls is None
                    else grpc.aio.secure_channel(
                        address, tls.channel_credentials(), options=CHANNEL_OPTIONS)
                )
                self._channels[address] = channel
            method = channel.unary_unary(
                path,
                request_serializer=None if response_type is None else _serialize,
                response_deserializer=None if response_type is None
                else response_type.FromString,
            )
            self._callables[(address, path)] = method
        return method

    async def _send(self, address: str, op: _Op[Any], clock: _Retry, limit_s: float,
                    probe_s: float | None) -> Any:
        """`WalletClient._send` on grpc.aio."""
        call = self._callable(address, op.path, op.response_type)
        if probe_s is not None:
            probe = self._callable(address, PROBE_PATH, None)
            try:
                await probe(b"", timeout=probe_s)
            except grpc.RpcError as rpc_error:
                refusal = _probe_refusal(address, from_rpc_error(rpc_error), probe_s)
                if refusal is not None:
                    raise refusal from rpc_error
        try:
            return await call(op.request, timeout=clock.slice(limit_s),
                              metadata=self._credentials.metadata_for(op.path))
        except grpc.RpcError as rpc_error:
            raise from_rpc_error(rpc_error) from rpc_error

    async def _discover(self, discovery: _Discovery, timeout_s: float) -> None:
        """`WalletClient._discover` on grpc.aio: one task per node asked."""
        op = _op_cluster_map()
        over = asyncio.Event()

        async def ask(address: str) -> None:
            try:
                call = self._callable(address, op.path, op.response_type)
                response = await call(op.request, timeout=timeout_s,
                                      metadata=self._credentials.metadata_for(op.path))
            except (grpc.RpcError, RuntimeError) as error:  # RuntimeError: client closed
                done = discovery.failed(address, error)
            else:
                done = discovery.answered(address, response)
            if done:
                over.set()

        for address in discovery.addresses:
            task = asyncio.get_running_loop().create_task(ask(address))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        try:
            await asyncio.wait_for(over.wait(), timeout_s)
        except TimeoutError:
            pass  # every node asked is silent: route by what is known

    async def _refresh_routes(self, clock: _Retry) -> None:
        if not self._routes.claim_refresh():
            return
        discovery = self._new_discovery()
        await self._discover(discovery, clock.slice(DISCOVERY_TIMEOUT_S))
        if not self._routes.wants_status:
            return
        address = self._status_address(discovery)
        try:
            response = await self._send(address, _op_cluster_status(), clock,
                                        ROUTE_LOOKUP_TIMEOUT_S_MAX,
                                        self._probe_s(address, clock))
        except WalletError as error:
            self._status_failed(address, error)
            return
        self._status_answered(address, response)

    async def _run(self, op: _Op[T]) -> T:
        attempts = _Attempts(self, op)
        while True:
            if op.account is not None:
                await self._refresh_routes(attempts.clock)
            address = attempts.next()
            try:
                response = await self._send(address, op, attempts.clock, self.timeout_s,
                                            attempts.probe_s())
            except WalletError as error:
                await asyncio.sleep(attempts.failed(error))
                continue
            attempts.answered()
            return op.convert(response)

