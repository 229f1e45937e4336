"""Client credentials: bearer tokens in gRPC metadata, and TLS for the channel.

A RaftWallet node authenticates each call by its service (node/security/auth.py):

    AdminService   `authorization: Bearer <admin_token>`, always (unless the cluster
                   is an insecure dev cluster without an admin token)
    WalletService  `authorization: Bearer <wallet_token>` when the cluster sets one
    PeerService    the nodes' own token, derived from the cluster secret

`Credentials` holds what one client presents and attaches the right token to
each call by the method's service, so a client given both tokens never sends
the admin token to WalletService. Tokens travel in the clear on a plaintext
channel: beyond loopback, use TLS (`TlsOptions`).

This module talks only the public API: it never imports `node`, and reads the
few keys of a cluster file it needs itself (`credentials_from_cluster_file`).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

__all__ = [
    "ADMIN_SERVICE_PREFIX",
    "AUTHORIZATION_METADATA_KEY",
    "ENV_ADMIN_TOKEN",
    "ENV_TOKEN",
    "NO_CREDENTIALS",
    "PEER_SERVICE_PREFIX",
    "WALLET_SERVICE_PREFIX",
    "Credentials",
    "CredentialsError",
    "TlsOptions",
    "bearer",
    "credentials_from_cluster_file",
    "credentials_from_environment",
    "open_aio_channel",
    "open_channel",
]

AUTHORIZATION_METADATA_KEY = "authorization"
"""gRPC metadata keys are lower case; the value is `Bearer <token>`."""

WALLET_SERVICE_PREFIX = "/raftwallet.wallet.v1.WalletService/"
ADMIN_SERVICE_PREFIX = "/raftwallet.wallet.v1.AdminService/"
PEER_SERVICE_PREFIX = "/raftwallet.wallet.v1.PeerService/"

ENV_ADMIN_TOKEN = "RAFTWALLET_ADMIN_TOKEN"
ENV_TOKEN = "RAFTWALLET_TOKEN"

_TOKEN = re.compile(r"[\x21-\x7e]+")
"""What a token may hold: printable ASCII without spaces (it goes into a header)."""


class CredentialsError(ValueError):
    """Credentials that cannot be used (a malformed token, an unreadable certificate file).

    Messages never contain a token.
    """


def _check_token(token: str, what: str) -> str:
    if token and not _TOKEN.fullmatch(token):
        raise CredentialsError(f"{what}: a token may only hold printable ASCII, without spaces")
    return token


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata presenting `token`."""
    return ((AUTHORIZATION_METADATA_KEY, f"Bearer {token}"),)


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """TLS of a client channel: the roots the server is verified with (None: the system's),
    and, for mTLS, the client's own certificate chain and private key (PEM bytes)."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise CredentialsError("a client certificate needs both its chain and its key")

    @classmethod
    def from_files(
        cls,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
    ) -> TlsOptions:
        return cls(_read(ca_file), _read(cert_file), _read(key_file))

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


def _read(path: str | os.PathLike[str] | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise CredentialsError(f"{os.fspath(path)}: {error.strerror or error}") from None


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client presents: a token per service, and TLS (None: a plaintext channel).

    Empty tokens are not sent. Tokens stay out of the repr.
    """

    wallet_token: str = field(default="", repr=False)
    admin_token: str = field(default="", repr=False)
    tls: TlsOptions | None = None

    def __post_init__(self) -> None:
        _check_token(self.wallet_token, "the wallet token")
        _check_token(self.admin_token, "the admin token")

    @property
    def sends_tokens(self) -> bool:
        return bool(self.wallet_token or self.admin_token)

    def metadata_for(self, method: str) -> tuple[tuple[str, str], ...] | None:
        """The metadata of a call of `method` (`/package.Service/Method`), or None."""
        if method.startswith(WALLET_SERVICE_PREFIX):
            token = self.wallet_token
        elif method.startswith(ADMIN_SERVICE_PREFIX):
            token = self.admin_token
        else:
            return None
        return bearer(token) if token else None

    def with_defaults(self, other: Credentials) -> Credentials:
        """These credentials, each part not set here taken from `other`."""
        return Credentials(
            wallet_token=self.wallet_token or other.wallet_token,
            admin_token=self.admin_token or other.admin_token,
            tls=self.tls if self.tls is not None else other.tls,
        )


NO_CREDENTIALS = Credentials()


def credentials_from_environment(environ: Mapping[str, str] | None = None) -> Credentials:
    """Tokens from RAFTWALLET_TOKEN (WalletService) and RAFTWALLET_ADMIN_TOKEN."""
    env = os.environ if environ is None else environ
    return Credentials(
        wallet_token=env.get(ENV_TOKEN, "").strip(),
        admin_token=env.get(ENV_ADMIN_TOKEN, "").strip(),
    )


def credentials_from_cluster_file(path: str | os.PathLike[str]) -> Credentials:
    """The tokens (`[cluster] admin_token`, `wallet_token`) and TLS (`[tls]`) of a cluster file.

    Clients of the operator's cluster file use the CA to verify the nodes and,
    when the nodes require client certificates, the nodes' own certificate.
    Only these keys are read; the node validates the whole file.
    """
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        raise CredentialsError(f"{os.fspath(path)}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise CredentialsError(f"{os.fspath(path)}: {error}") from None
    cluster = document.get("cluster")
    cluster = cluster if isinstance(cluster, dict) else {}
    tokens = {key: cluster.get(key, "") for key in ("wallet_token", "admin_token")}
    for key, value in tokens.items():
        if not isinstance(value, str):
            raise CredentialsError(f"{os.fspath(path)}: cluster.{key}: expected a string")
    tls_table = document.get("tls")
    tls = None
    if isinstance(tls_table, dict):
        base = Path(path).resolve().parent

        def file_of(key: str) -> Path | None:
            value = tls_table.get(key)
            if value is None:
                return None
            if not isinstance(value, str):
                raise CredentialsError(f"{os.fspath(path)}: tls.{key}: expected a path string")
            return base / value

        mutual = tls_table.get("require_client_cert") is True
        tls = TlsOptions.from_files(
            file_of("ca_file"),
            file_of("cert_file") if mutual else None,
            file_of("key_file") if mutual else None,
        )
    return Credentials(tokens["wallet_token"], tokens["admin_token"], tls)


# --- channels -------------------------------------------------------------------------------


class _CallDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    """A call's details with other metadata (grpc's own class cannot be copied)."""

    def __init__(self, base: Any, metadata: Sequence[tuple[str, str]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


def _merged(base: Any, extra: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """The call's own metadata, minus any `authorization` of its own, plus ours."""
    own = [
        (str(key), value) for key, value in (base or ())
        if str(key).lower() != AUTHORIZATION_METADATA_KEY
    ]
    return [*own, *extra]


def _method_name(method: str | bytes) -> str:
    return method.decode("ascii") if isinstance(method, bytes) else method


class _SyncTokenInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        extra = self._credentials.metadata_for(_method_name(client_call_details.method))
        if extra is not None:
            client_call_details = _CallDetails(
                client_call_details, _merged(client_call_details.metadata, extra)
            )
        return continuation(client_call_details, request)


class _AioTokenInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        extra = self._credentials.metadata_for(_method_name(client_call_details.method))
        if extra is not None:
            metadata = grpc.aio.Metadata(*_merged(client_call_details.metadata, extra))
            client_call_details = grpc.aio.ClientCallDetails(
                client_call_details.method,
                client_call_details.timeout,
                metadata,
                client_call_details.credentials,
                client_call_details.wait_for_ready,
            )
        return await continuation(client_call_details, request)


def open_channel(
    address: str,
    credentials: Credentials = NO_CREDENTIALS,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to `address` that presents `credentials` on every unary call.

    For code built on generated stubs (tools, tests); the SDK attaches its
    metadata per call instead, which costs less.
    """
    if credentials.tls is not None:
        channel = grpc.secure_channel(
            address, credentials.tls.channel_credentials(), options=options
        )
    else:
        channel = grpc.insecure_channel(address, options=options)
    if credentials.sends_tokens:
        channel = grpc.intercept_channel(channel, _SyncTokenInterceptor(credentials))
    return channel


def open_aio_channel(
    address: str,
    credentials: Credentials = NO_CREDENTIALS,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """The grpc.aio version of `open_channel`."""
    interceptors = [_AioTokenInterceptor(credentials)] if credentials.sends_tokens else None
    if credentials.tls is not None:
        return grpc.aio.secure_channel(
            address, credentials.tls.channel_credentials(), options=options,
            interceptors=interceptors,
        )
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
