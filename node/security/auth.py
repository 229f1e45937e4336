"""Who may call what on a node's gRPC port: the token check, TLS, and the node's own credentials.

Each call is checked by its service, before its handler runs:

    AdminService   `authorization: Bearer <token>`, a token of `accepted_admin_tokens`
    WalletService  the same with `accepted_wallet_tokens`, when the cluster sets any
    PeerService    the nodes' own token (a keyed hash of the cluster secret), as
                   `authorization: Bearer <token>` or the older `raftwallet-peer-token`
    anything else  open: gRPC health checking and server reflection

No credentials, or credentials that are not a bearer token, are refused with
UNAUTHENTICATED; a well-formed token that is not accepted with
PERMISSION_DENIED. Tokens are compared in constant time (`hmac.compare_digest`)
against every accepted token, so timing shows neither the token nor which one
matched. A service with no accepted token is open: AdminService only in an
insecure dev cluster (the cluster file requires its token otherwise), PeerService
only without a cluster secret. With `[tls] require_client_cert`, the TLS
handshake has already refused clients without a certificate of the cluster's
CA; the tokens are checked on top (mTLS and a token, not either).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from client.auth import (
    ADMIN_SERVICE_PREFIX,
    AUTHORIZATION_METADATA_KEY,
    PEER_SERVICE_PREFIX,
    WALLET_SERVICE_PREFIX,
    Credentials,
    TlsOptions,
)
from node.config import ClusterConfig

__all__ = [
    "PEER_TOKEN_METADATA_KEY",
    "AccessPolicy",
    "AuthInterceptor",
    "node_client_credentials",
    "peer_token",
    "server_credentials",
]

log = logging.getLogger(__name__)

PEER_TOKEN_METADATA_KEY = "raftwallet-peer-token"
"""PeerService's older header: its whole value is the peer token (see `peer_token`)."""

_BEARER = "bearer "
"""The scheme, compared case-insensitively (RFC 6750 uses "Bearer")."""


def peer_token(secret: str) -> str:
    """What nodes show each other on PeerService calls: a keyed hash of the cluster secret."""
    key = hashlib.blake2b(secret.encode("utf-8"), digest_size=32).digest()
    return hashlib.blake2b(b"raftwallet peer rpc v1", key=key, digest_size=32).hexdigest()


@dataclass(frozen=True, slots=True)
class _ServiceRule:
    prefix: str
    service: str
    tokens: tuple[bytes, ...] = field(repr=False)
    legacy_key: str | None = None
    """Another metadata key whose whole value is the token (PeerService's older header)."""
    hint: str = ""


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """The accepted tokens of each service; an empty tuple leaves a service open."""

    admin_tokens: tuple[str, ...] = field(default=(), repr=False)
    wallet_tokens: tuple[str, ...] = field(default=(), repr=False)
    peer_tokens: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def from_config(cls, config: ClusterConfig) -> AccessPolicy:
        policy = cls(
            admin_tokens=config.accepted_admin_tokens,
            wallet_tokens=config.accepted_wallet_tokens,
            peer_tokens=(peer_token(config.secret),) if config.secret else (),
        )
        assert policy.admin_tokens or config.insecure_dev_mode, "AdminService left open"
        return policy

    def rules(self) -> tuple[_ServiceRule, ...]:
        def encoded(tokens: Sequence[str]) -> tuple[bytes, ...]:
            return tuple(token.encode("utf-8") for token in tokens)

        return (
            _ServiceRule(ADMIN_SERVICE_PREFIX, "AdminService", encoded(self.admin_tokens),
                         hint="the cluster file's admin_token; walletctl: --config, "
                              "--admin-token or RAFTWALLET_ADMIN_TOKEN"),
            _ServiceRule(WALLET_SERVICE_PREFIX, "WalletService", encoded(self.wallet_tokens),
                         hint="the cluster file's wallet_token; walletctl: --config, "
                              "--token or RAFTWALLET_TOKEN"),
            _ServiceRule(PEER_SERVICE_PREFIX, "PeerService", encoded(self.peer_tokens),
                         legacy_key=PEER_TOKEN_METADATA_KEY,
                         hint="PeerService is for the cluster's own nodes"),
        )


@dataclass(frozen=True, slots=True)
class _Refusal:
    code: grpc.StatusCode
    message: str


def _matches(presented: bytes, accepted: tuple[bytes, ...]) -> bool:
    """Constant time in the token's content: every accepted token is compared, always."""
    found = False
    for token in accepted:
        found |= hmac.compare_digest(presented, token)
    return found


def check_call(rule: _ServiceRule, metadata: Sequence[tuple[str, Any]]) -> _Refusal | None:
    """None when the call may go on, else why not."""
    bearer_values: list[str] = []
    legacy_values: list[str] = []
    for key, value in metadata:
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        if key == AUTHORIZATION_METADATA_KEY:
            bearer_values.append(text)
        elif rule.legacy_key is not None and key == rule.legacy_key:
            legacy_values.append(text)
    if not bearer_values and not legacy_values:
        return _Refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            f"{rule.service} needs a token: send `authorization: Bearer <token>` metadata "
            f"({rule.hint})",
        )
    if len(bearer_values) + len(legacy_values) > 1:
        return _Refusal(grpc.StatusCode.UNAUTHENTICATED,
                        "more than one token was sent: send exactly one")
    if bearer_values:
        value = bearer_values[0]
        if value[: len(_BEARER)].lower() != _BEARER or not value[len(_BEARER):].strip():
            return _Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                "malformed authorization metadata: expected `Bearer <token>`",
            )
        presented = value[len(_BEARER):].strip()
    else:
        presented = legacy_values[0]
    if not _matches(presented.encode("utf-8", "replace"), rule.tokens):
        return _Refusal(grpc.StatusCode.PERMISSION_DENIED,
                        f"the token is not accepted by {rule.service}")
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls without an accepted token before their handler runs."""

    def __init__(self, policy: AccessPolicy) -> None:
        self._rules = tuple(rule for rule in policy.rules() if rule.tokens)

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        method = handler_call_details.method
        method = method.decode("ascii") if isinstance(method, bytes) else str(method)
        for rule in self._rules:
            if method.startswith(rule.prefix):
                refusal = check_call(rule, tuple(handler_call_details.invocation_metadata or ()))
                if refusal is None:
                    break
                log.info("call refused", extra={"method": method, "status": refusal.code.name})
                handler = await continuation(handler_call_details)
                return None if handler is None else _refusing_handler(handler, refusal)
        return await continuation(handler_call_details)


def _refusing_handler(handler: Any, refusal: _Refusal) -> Any:
    """A handler of the same kind as `handler` that only aborts with `refusal`."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(refusal.code, refusal.message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


# --- TLS and the node's own credentials ---------------------------------------------------


def server_credentials(config: ClusterConfig) -> grpc.ServerCredentials | None:
    """The gRPC port's TLS credentials from `[tls]`, or None for a plaintext port."""
    tls = config.tls
    if tls is None:
        return None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=tls.ca_file.read_bytes() if tls.ca_file is not None else None,
        require_client_auth=tls.require_client_cert,
    )


def node_client_credentials(config: ClusterConfig) -> Credentials:
    """What a node presents to other nodes (forwarded calls, status, credits) and what
    node-side tools (cluster status, the embedded gateway) present: the current tokens,
    the cluster's CA, and the node certificate as client certificate under mTLS."""
    tls = config.tls
    options = None
    if tls is not None:
        options = TlsOptions.from_files(
            tls.ca_file,
            tls.cert_file if tls.require_client_cert else None,
            tls.key_file if tls.require_client_cert else None,
        )
    return Credentials(config.wallet_token, config.admin_token, options)
