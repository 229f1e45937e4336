"""`AsyncWalletClient`: the SDK's methods as coroutines, on grpc.aio.

Same answers (the dataclasses of `client.sdk`), same exceptions
(`client.errors`), same ids, retry policy and routing as `WalletClient`:

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
from client.errors import from_rpc_error, is_retryable
from client.sdk import (
    CHANNEL_OPTIONS,
    DEFAULT_RETRY_DEADLINE_S,
    DEFAULT_TIMEOUT_S,
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
    _ClientBase,
    _cluster_status,
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
    _Retry,
    _serialize,
    route_of,
)

__all__ = ["AsyncWalletClient"]

T = TypeVar("T")


class AsyncWalletClient(_ClientBase):
    """An asyncio RaftWallet client; one grpc.aio channel per node address.

    `token`, `admin_token` and `tls` as for `client.sdk.WalletClient`.
    """

    def __init__(
        self,
        targets: str | Sequence[str],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S,
        *,
        learn_routes: bool = True,
        token: str = "",
        admin_token: str = "",
        tls: TlsOptions | None = None,
    ) -> None:
        super().__init__(targets, timeout_s, retry_deadline_s, learn_routes=learn_routes,
                         token=token, admin_token=admin_token, tls=tls)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._callables: dict[tuple[str, str], Any] = {}

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

    def _callable(self, address: str, path: str, response_type: type[Message]) -> Any:
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
                path, request_serializer=_serialize, response_deserializer=response_type.FromString
            )
            self._callables[(address, path)] = method
        return method

    async def _refresh_routes(self, retry: _Retry) -> None:
        if not self._routes.claim_refresh():
            return
        address = self._address(None, retry.attempt)
        map_op = _op_cluster_map()
        try:
            map_call = self._callable(address, map_op.path, map_op.response_type)
            self._routes.update_map(map_op.convert(await map_call(
                map_op.request, timeout=self._lookup_timeout(retry),
                metadata=self._credentials.metadata_for(map_op.path))))
        except grpc.RpcError:
            pass  # an old server without the map, or this node is down: keep what we know
        if not self._routes.wants_status:
            return
        op = _op_cluster_status()
        try:
            call = self._callable(address, op.path, op.response_type)
            response = await call(op.request, timeout=self._lookup_timeout(retry),
                                  metadata=self._credentials.metadata_for(op.path))
        except grpc.RpcError as error:
            self._routes.lookup_failed(error)
            return
        self._routes.update(response)

    async def _run(self, op: _Op[T]) -> T:
        retry = _Retry(self.timeout_s, self.retry_deadline_s)
        while True:
            if op.account is not None:
                await self._refresh_routes(retry)
            address = self._address(op.account, retry.attempt)
            try:
                call = self._callable(address, op.path, op.response_type)
                response = await call(op.request, timeout=retry.attempt_timeout(),
                                      metadata=self._credentials.metadata_for(op.path))
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
                if not is_retryable(error):
                    raise error from rpc_error
                self._routes.invalidate()  # the leader may have moved: look again
                delay = retry.backoff()
                if delay is None:
                    raise op.exhausted(error) from rpc_error
                await asyncio.sleep(delay)
                continue
            return op.convert(response)
