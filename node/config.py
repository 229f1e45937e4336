"""The cluster file: which nodes exist, where they listen, and which partitions each one hosts.

Every node process and every client of a cluster reads the same file, so it is
checked completely and strictly before anything starts. A typo that silently
fell back to a default, or two Raft groups sharing a port, would otherwise show
up much later as a partition that never elects a leader. Every problem raises
`ConfigError`, whose message names the file, the TOML path of the field
(`nodes[2].grpc_port`, indices counted from 0 in file order) and, for syntax
errors, the line and column reported by `tomllib`.

The format is described in `cluster-configs/README.md`:

    [cluster]       name, partitions, replication_factor, secret, insecure_dev_mode,
                    admin_token, previous_admin_tokens, wallet_token, previous_wallet_tokens
    [tls]           cert_file, key_file, ca_file, require_client_cert   (optional)
    [[nodes]]       id, host, grpc_port, raft_port_base, metrics_port (optional)
    [[partitions]]  id, replicas                (optional: explicit placement)

Secrets (the Raft secret and the API tokens) never appear in a repr or an error
message: errors name the field and the rule, not the value.

Partition p of a node listens for Raft traffic on `raft_port_base + p`, and the
metadata group (the cluster map) on `raft_port_base + partitions`: each
pysyncobj group owns its own TCP server, so each needs its own port.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import secrets
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

__all__ = [
    "MAX_PARTITIONS",
    "MIN_SECRET_CHARS",
    "MIN_TOKEN_CHARS",
    "ClusterConfig",
    "ConfigError",
    "NodeConfig",
    "PortAllocator",
    "TlsConfig",
    "dump_cluster_config",
    "load_cluster_config",
    "local_cluster_config",
    "parse_cluster_config",
]

MAX_PARTITIONS = 4096
MIN_SECRET_CHARS = 16
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 256
MAX_PREVIOUS_TOKENS = 8
"""Tokens still accepted during a rotation (`previous_*_tokens`): a short list, by design."""
MAX_PORT = 65535
LOOPBACK_HOST = "127.0.0.1"

PortAllocator = Callable[[int], int]
"""`allocate(count)` returns the first of `count` consecutive free TCP ports.

Consecutive because a node's Raft ports are `raft_port_base + partition`.
"""

_GENERATE_SECRET_HINT = (
    'generate one with `python -c "import secrets; print(secrets.token_urlsafe(32))"`'
)

NODE_ID = re.compile(r"[a-z0-9-]{1,32}")
# Cluster names end up in paths and metric labels: no separators, no leading dot.
_CLUSTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Host names and IPv4 addresses. IPv6 literals are refused: gRPC wants "[::1]:port"
# while pysyncobj wants "::1:port", and one address format for both keeps this simple.
HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# A bearer token travels in gRPC metadata: printable ASCII without spaces.
_TOKEN = re.compile(r"[\x21-\x7e]+")
_TOML_LINE = re.compile(r"\bat line (\d+)")
_PORT_TEXT = re.compile(r"[0-9]{1,5}")

_ROOT_KEYS = ("cluster", "tls", "nodes", "partitions")
_CLUSTER_KEYS = (
    "name",
    "partitions",
    "replication_factor",
    "secret",
    "insecure_dev_mode",
    "admin_token",
    "previous_admin_tokens",
    "wallet_token",
    "previous_wallet_tokens",
)
_TLS_KEYS = ("cert_file", "key_file", "ca_file", "require_client_cert")
_NODE_KEYS = ("id", "host", "grpc_port", "raft_port_base", "metrics_port")
_PARTITION_KEYS = ("id", "replicas")


class ConfigError(ValueError):
    """A cluster file that cannot be used. The message says which file, which field and why."""

    def __init__(
        self, source: str, field: str | None, problem: str, line: int | None = None
    ) -> None:
        where = source if field is None else f"{source}: {field}"
        super().__init__(f"{where}: {problem}")
        self.source = source
        self.field = field
        self.problem = problem
        self.line = line


@dataclasses.dataclass(frozen=True, slots=True)
class NodeConfig:
    """One node process: where clients reach it (gRPC) and where its Raft replicas listen."""

    id: str
    host: str
    grpc_port: int
    raft_port_base: int
    metrics_port: int | None = None

    @property
    def grpc_address(self) -> str:
        """`host:port` of the node's gRPC server, as grpc channels expect it."""
        return f"{self.host}:{self.grpc_port}"

    def raft_address(self, partition: int) -> str:
        """`host:port` of this node's replica of `partition`, as pysyncobj expects it."""
        if partition < 0:
            raise ValueError(f"partition must not be negative, got {partition}")
        return f"{self.host}:{self.raft_port_base + partition}"


@dataclasses.dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS of the gRPC port (`[tls]`); paths are absolute (resolved against the cluster file).

    `cert_file`/`key_file` are the nodes' certificate chain and private key (one
    certificate whose subjectAltNames cover every node's host). `ca_file` is the
    CA that clients verify the nodes with and, with `require_client_cert`, that
    the nodes verify client certificates with; without it clients use the
    system's roots. Nodes present `cert_file` as their client certificate to
    each other.
    """

    cert_file: Path
    key_file: Path
    ca_file: Path | None
    require_client_cert: bool


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterConfig:
    """A validated cluster file. Build it with the functions below, which check every rule.

    `placement[p]` is the tuple of node ids hosting partition p, its preferred
    leader first. `secret` and the tokens are left out of the repr so that
    logging a config, or a failing assertion printing one, does not leak them.

    `admin_token` is what AdminService callers present and `wallet_token` what
    WalletService callers present (empty: WalletService needs no token); the
    `previous_*` tokens are still accepted, so that a token can be rotated
    with a rolling restart (docs/cluster.md, "Security").
    """

    name: str
    partition_count: int
    replication_factor: int
    secret: str = dataclasses.field(repr=False)
    insecure_dev_mode: bool
    nodes: tuple[NodeConfig, ...]
    placement: tuple[tuple[str, ...], ...]
    admin_token: str = dataclasses.field(default="", repr=False)
    previous_admin_tokens: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    wallet_token: str = dataclasses.field(default="", repr=False)
    previous_wallet_tokens: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    tls: TlsConfig | None = None

    @property
    def accepted_admin_tokens(self) -> tuple[str, ...]:
        """Tokens AdminService accepts, the current one first; empty: AdminService is open
        (only possible in insecure dev mode)."""
        return _accepted(self.admin_token, self.previous_admin_tokens)

    @property
    def accepted_wallet_tokens(self) -> tuple[str, ...]:
        """Tokens WalletService accepts, the current one first; empty: no token needed."""
        return _accepted(self.wallet_token, self.previous_wallet_tokens)

    @property
    def raft_password(self) -> str | None:
        """pysyncobj's `password`: None turns encryption off.

        pysyncobj encrypts whenever the password is not None, even with an empty
        one, which would only look secure; an insecure dev cluster's empty
        secret therefore becomes None.
        """
        return self.secret or None

    def node(self, node_id: str) -> NodeConfig:
        """The node with this id; KeyError naming the known ids when there is none."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        known = ", ".join(node.id for node in self.nodes)
        raise KeyError(f"no node {node_id!r} in cluster {self.name!r} (its nodes: {known})")

    def replicas_of(self, partition: int) -> tuple[str, ...]:
        """Node ids hosting `partition`, preferred leader first."""
        if not 0 <= partition < self.partition_count:
            raise ValueError(
                f"partition {partition} is out of range 0..{self.partition_count - 1} "
                f"in cluster {self.name!r}"
            )
        return self.placement[partition]

    def partitions_of(self, node_id: str) -> tuple[int, ...]:
        """The partitions `node_id` hosts a replica of, ascending; KeyError for unknown ids.

        An unknown id is an error rather than an empty answer, so that a node
        started with a mistyped id fails instead of idling with no partitions.
        """
        self.node(node_id)
        return tuple(p for p, replicas in enumerate(self.placement) if node_id in replicas)

    def node_by_raft_address(self, address: str) -> NodeConfig:
        """The node listening on Raft address `host:port`, e.g. to turn a Raft leader into a
        gRPC address. Any port of the node's Raft range matches; KeyError when none does."""
        host, _, port_text = address.rpartition(":")
        if _PORT_TEXT.fullmatch(port_text):
            port = int(port_text)
            for node in self.nodes:
                first = node.raft_port_base
                if node.host == host and first <= port < first + self.partition_count:
                    return node
        raise KeyError(f"no node of cluster {self.name!r} has Raft address {address!r}")


def _accepted(current: str, previous: tuple[str, ...]) -> tuple[str, ...]:
    if not current:
        assert not previous, "previous tokens without a current one"
        return ()
    return (current, *previous)


# --- reading -------------------------------------------------------------------------------


def load_cluster_config(path: str | os.PathLike[str]) -> ClusterConfig:
    """Read and validate a cluster file; every problem, unreadable file included, is a
    ConfigError naming `path`."""
    source = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, None, f"not UTF-8 text (byte {exc.start})") from exc
    return parse_cluster_config(text, source, base_dir=Path(path).resolve().parent)


def parse_cluster_config(
    text: str, source: str = "<string>", base_dir: Path | None = None
) -> ClusterConfig:
    """Parse and validate the TOML text of a cluster file; `source` names it in errors.

    Relative `[tls]` paths are resolved against `base_dir` (the cluster file's
    directory when loaded from a file; the working directory by default).
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends in "(at line L, column C)": keep it whole.
        match = _TOML_LINE.search(str(exc))
        line = int(match.group(1)) if match else None
        raise ConfigError(source, None, f"invalid TOML: {exc}", line=line) from exc
    return _build(document, source, base_dir or Path.cwd())


class _Table:
    """One TOML table being read, with its path, so every error can name the field."""

    def __init__(self, values: Mapping[str, object], path: str, source: str) -> None:
        self.values = values
        self.path = path
        self.source = source

    def path_of(self, key: str, index: int | None = None) -> str:
        name = key if _BARE_KEY.fullmatch(key) else _toml_string(key)
        full = f"{self.path}.{name}" if self.path else name
        return full if index is None else f"{full}[{index}]"

    def error(self, key: str, problem: str, index: int | None = None) -> ConfigError:
        return ConfigError(self.source, self.path_of(key, index), problem)

    def reject_unknown_keys(self, allowed: Sequence[str]) -> None:
        """Unknown keys are errors, not ignored: a typo must not fall back to a default."""
        for key in self.values:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                expected = ", ".join(allowed)
                raise self.error(key, f"unknown key {key!r} (expected one of: {expected}){hint}")

    def required(self, key: str, what: str = "key") -> object:
        if key not in self.values:
            raise self.error(key, f"missing required {what} {key!r}")
        return self.values[key]

    def integer(self, key: str, low: int, high: int) -> int:
        return self._check_integer(key, self.required(key), low, high)

    def optional_integer(self, key: str, low: int, high: int) -> int | None:
        value = self.values.get(key)  # TOML has no null: None means absent
        return None if value is None else self._check_integer(key, value, low, high)

    def _check_integer(self, key: str, value: object, low: int, high: int) -> int:
        # bool is a subclass of int in Python, but `grpc_port = true` is a mistake.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {_describe(value)}")
        if not low <= value <= high:
            raise self.error(key, f"{value} is out of range {low}..{high}")
        return value

    def string(self, key: str) -> str:
        value = self.required(key)
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {_describe(value)}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.values.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_describe(value)}")
        return value

    def table(self, key: str) -> _Table:
        value = self.required(key, "table")
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table ([{key}]), got {_describe(value)}")
        return _Table(value, self.path_of(key), self.source)

    def tables(self, key: str) -> list[_Table]:
        value = self.required(key, "array of tables")
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            got = _describe(value)
            raise self.error(key, f"expected an array of tables ([[{key}]]), got {got}")
        return [_Table(item, self.path_of(key, i), self.source) for i, item in enumerate(value)]

    def array(self, key: str) -> list[object]:
        value = self.required(key)
        if not isinstance(value, list):
            raise self.error(key, f"expected an array, got {_describe(value)}")
        return value

    def optional_table(self, key: str) -> _Table | None:
        return self.table(key) if key in self.values else None


def _describe(value: object) -> str:
    """A value's TOML type, and the value itself when short, for 'expected X, got Y'."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({_toml_string(shown)})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


@dataclasses.dataclass(frozen=True, slots=True)
class _ClusterSection:
    name: str
    partition_count: int
    replication_factor: int
    secret: str
    insecure_dev_mode: bool
    admin_token: str
    previous_admin_tokens: tuple[str, ...]
    wallet_token: str
    previous_wallet_tokens: tuple[str, ...]


def _build(document: Mapping[str, object], source: str, base_dir: Path) -> ClusterConfig:
    """Validate a parsed document, section by section, in file order."""
    root = _Table(document, "", source)
    root.reject_unknown_keys(_ROOT_KEYS)
    cluster_table = root.table("cluster")
    cluster = _read_cluster(cluster_table)
    tls_table = root.optional_table("tls")
    tls = None if tls_table is None else _read_tls(tls_table, base_dir)
    node_tables = root.tables("nodes")
    if not node_tables:
        raise root.error("nodes", "a cluster needs at least one [[nodes]] table")
    nodes = [_read_node(table, cluster.partition_count) for table in node_tables]
    _check_unique_node_ids(node_tables, nodes)
    _check_ports_distinct(node_tables, nodes, cluster.partition_count)
    if cluster.replication_factor > len(nodes):
        raise cluster_table.error(
            "replication_factor",
            f"{cluster.replication_factor} is more than the {len(nodes)} nodes of the cluster: "
            "each replica of a partition needs its own node",
        )
    _check_wallet_protected(cluster_table, cluster, tls, nodes)
    node_ids = tuple(node.id for node in nodes)
    if "partitions" in root.values:
        placement = _read_placement(root, cluster, node_ids)
    else:
        placement = _round_robin_placement(
            node_ids, cluster.partition_count, cluster.replication_factor
        )
    return ClusterConfig(
        name=cluster.name,
        partition_count=cluster.partition_count,
        replication_factor=cluster.replication_factor,
        secret=cluster.secret,
        insecure_dev_mode=cluster.insecure_dev_mode,
        nodes=tuple(nodes),
        placement=placement,
        admin_token=cluster.admin_token,
        previous_admin_tokens=cluster.previous_admin_tokens,
        wallet_token=cluster.wallet_token,
        previous_wallet_tokens=cluster.previous_wallet_tokens,
        tls=tls,
    )


def _read_cluster(table: _Table) -> _ClusterSection:
    table.reject_unknown_keys(_CLUSTER_KEYS)
    name = table.string("name")
    if not _CLUSTER_NAME.fullmatch(name):
        raise table.error(
            "name",
            f"{_toml_string(name)} is not a valid cluster name: use 1 to 64 characters from "
            "A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
        )
    partition_count = table.integer("partitions", 1, MAX_PARTITIONS)
    # The upper bound (the number of nodes) is checked once the nodes are read.
    replication_factor = table.integer("replication_factor", 1, MAX_PARTITIONS)
    insecure = table.boolean("insecure_dev_mode", default=False)
    secret = _read_secret(table, insecure)
    admin_token = _read_token(table, "admin_token", required=not insecure)
    wallet_token = _read_token(table, "wallet_token", required=False)
    return _ClusterSection(
        name=name,
        partition_count=partition_count,
        replication_factor=replication_factor,
        secret=secret,
        insecure_dev_mode=insecure,
        admin_token=admin_token,
        previous_admin_tokens=_read_previous_tokens(table, "previous_admin_tokens",
                                                    "admin_token", admin_token),
        wallet_token=wallet_token,
        previous_wallet_tokens=_read_previous_tokens(table, "previous_wallet_tokens",
                                                     "wallet_token", wallet_token),
    )


def _check_token(table: _Table, key: str, token: object, index: int | None = None) -> str:
    """One bearer token: a string of printable ASCII, no spaces, 16..256 characters.

    Messages give the rule and the length, never the value.
    """
    if not isinstance(token, str):
        kind = "a string" if index is None else "an array of strings"
        raise table.error(key, f"expected {kind}, got {_describe_secret(token)}", index)
    if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS:
        raise table.error(
            key,
            f"{len(token)} characters: a token needs {MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS}; "
            f"{_GENERATE_SECRET_HINT}",
            index,
        )
    if not _TOKEN.fullmatch(token):
        raise table.error(
            key, "a token may only hold printable ASCII characters, without spaces", index
        )
    return token


def _describe_secret(value: object) -> str:
    """Like `_describe`, without showing a string's value: it may be a secret."""
    return "a string" if isinstance(value, str) else _describe(value)


def _read_token(table: _Table, key: str, required: bool) -> str:
    if key not in table.values:
        if required:
            raise table.error(
                key,
                f"missing: AdminService needs a token; {_GENERATE_SECRET_HINT} "
                "(or set insecure_dev_mode = true, for a loopback development cluster only)",
            )
        return ""
    return _check_token(table, key, table.values[key])


def _read_previous_tokens(
    table: _Table, key: str, current_key: str, current: str
) -> tuple[str, ...]:
    """Tokens still accepted during a rotation; they need a current token next to them."""
    if key not in table.values:
        return ()
    values = table.values[key]
    if not isinstance(values, list):
        raise table.error(key, f"expected an array of strings, got {_describe_secret(values)}")
    if values and not current:
        raise table.error(key, f"previous tokens need a current {current_key}")
    if len(values) > MAX_PREVIOUS_TOKENS:
        raise table.error(key, f"{len(values)} tokens: at most {MAX_PREVIOUS_TOKENS}")
    tokens: list[str] = []
    for index, value in enumerate(values):
        token = _check_token(table, key, value, index)
        if token == current or token in tokens:
            raise table.error(key, "a token is listed twice (or equals the current one)", index)
        tokens.append(token)
    return tuple(tokens)


def _read_tls(table: _Table, base_dir: Path) -> TlsConfig:
    table.reject_unknown_keys(_TLS_KEYS)
    cert_file = _read_path(table, "cert_file", base_dir)
    key_file = _read_path(table, "key_file", base_dir)
    ca_file = _read_path(table, "ca_file", base_dir) if "ca_file" in table.values else None
    require_client_cert = table.boolean("require_client_cert", default=False)
    if require_client_cert and ca_file is None:
        raise table.error(
            "require_client_cert",
            "needs ca_file: the CA that client certificates are verified with",
        )
    return TlsConfig(cert_file, key_file, ca_file, require_client_cert)


def _read_path(table: _Table, key: str, base_dir: Path) -> Path:
    """A readable file; relative paths are relative to the cluster file's directory."""
    text = table.string(key)
    if not text:
        raise table.error(key, "an empty path")
    path = Path(text)
    resolved = path if path.is_absolute() else (base_dir / path).resolve()
    if not resolved.is_file() or not os.access(resolved, os.R_OK):
        raise table.error(key, f"{resolved} is not a readable file")
    return resolved


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_wallet_protected(
    table: _Table,
    cluster: _ClusterSection,
    tls: TlsConfig | None,
    nodes: Sequence[NodeConfig],
) -> None:
    """WalletService served plain AND without a token is refused beyond loopback.

    Anyone on the network could move money; on 127.0.0.1 only local processes
    can reach it, and insecure_dev_mode says so explicitly.
    """
    if cluster.insecure_dev_mode or cluster.wallet_token or tls is not None:
        return
    exposed = [node.id for node in nodes if not _is_loopback(node.host)]
    if exposed:
        raise table.error(
            "wallet_token",
            f"missing: nodes {', '.join(exposed)} would serve WalletService over the network "
            "in plaintext to anyone; set wallet_token and/or a [tls] table "
            "(or insecure_dev_mode = true, for a development cluster only)",
        )


def _read_secret(table: _Table, insecure: bool) -> str:
    """The Raft password: required and long enough unless the cluster is an insecure dev one.

    The secret's value never appears in an error message.
    """
    if "secret" not in table.values:
        if insecure:
            return ""
        raise table.error(
            "secret",
            f"missing: the password for Raft traffic is required; {_GENERATE_SECRET_HINT} "
            "(or set insecure_dev_mode = true, for a loopback development cluster only)",
        )
    secret = table.string("secret")
    if not insecure and len(secret) < MIN_SECRET_CHARS:
        raise table.error(
            "secret",
            f"too short: {len(secret)} characters, at least {MIN_SECRET_CHARS} are required; "
            f"{_GENERATE_SECRET_HINT}",
        )
    return secret


def _read_node(table: _Table, partition_count: int) -> NodeConfig:
    table.reject_unknown_keys(_NODE_KEYS)
    node_id = table.string("id")
    if not NODE_ID.fullmatch(node_id):
        raise table.error(
            "id",
            f"{_toml_string(node_id)} is not a valid node id: "
            "use 1 to 32 characters from a-z, 0-9 and '-'",
        )
    host = table.string("host")
    if not HOST.fullmatch(host):
        raise table.error(
            "host",
            f"{_toml_string(host)} is not a host name or IPv4 address "
            "(IPv6 literals are not supported: give the host a name)",
        )
    grpc_port = table.integer("grpc_port", 1, MAX_PORT)
    raft_port_base = table.integer("raft_port_base", 1, MAX_PORT)
    last_raft_port = raft_port_base + partition_count  # the metadata group's port
    if last_raft_port > MAX_PORT:
        raise table.error(
            "raft_port_base",
            f"the metadata group would listen on port {last_raft_port}: "
            f"raft_port_base + partitions must be at most {MAX_PORT}",
        )
    metrics_port = table.optional_integer("metrics_port", 1, MAX_PORT)
    return NodeConfig(node_id, host, grpc_port, raft_port_base, metrics_port)


def _check_unique_node_ids(tables: Sequence[_Table], nodes: Sequence[NodeConfig]) -> None:
    first_seen: dict[str, str] = {}
    for table, node in zip(tables, nodes, strict=True):
        earlier = first_seen.setdefault(node.id, table.path_of("id"))
        if earlier != table.path_of("id"):
            raise table.error("id", f"duplicate node id {node.id!r} (already used by {earlier})")


def _ports_of(node: NodeConfig, partition_count: int) -> Iterator[tuple[str, int, str]]:
    """(key, port, what it is for) of every port the node listens on."""
    yield "grpc_port", node.grpc_port, "gRPC"
    if node.metrics_port is not None:
        yield "metrics_port", node.metrics_port, "metrics"
    for partition in range(partition_count):
        yield "raft_port_base", node.raft_port_base + partition, f"Raft of partition {partition}"
    yield "raft_port_base", node.raft_port_base + partition_count, "Raft of the metadata group"


def _check_ports_distinct(
    tables: Sequence[_Table], nodes: Sequence[NodeConfig], partition_count: int
) -> None:
    """No two listeners on one port of one host, whether of one node or of two.

    Hosts are compared as written: "localhost" and "127.0.0.1" count as two hosts.
    """
    owners: dict[tuple[str, int], str] = {}
    for table, node in zip(tables, nodes, strict=True):
        for key, port, purpose in _ports_of(node, partition_count):
            owner = f"{table.path_of(key)} ({purpose})"
            earlier = owners.setdefault((node.host, port), owner)
            if earlier != owner:
                raise table.error(
                    key,
                    f"port {port} ({purpose}) on host {node.host} is already used by {earlier}",
                )


def _read_placement(
    root: _Table, cluster: _ClusterSection, node_ids: Sequence[str]
) -> tuple[tuple[str, ...], ...]:
    """Explicit placement: every partition exactly once, each with its full set of replicas."""
    last = cluster.partition_count - 1
    placed: dict[int, tuple[str, ...]] = {}
    placed_by: dict[int, str] = {}
    for table in root.tables("partitions"):
        table.reject_unknown_keys(_PARTITION_KEYS)
        partition = table.integer("id", 0, last)  # out of range: no such partition
        if partition in placed:
            raise table.error(
                "id", f"partition {partition} is already placed by {placed_by[partition]}"
            )
        placed[partition] = _read_replicas(table, node_ids, cluster.replication_factor)
        placed_by[partition] = table.path
    missing = [p for p in range(cluster.partition_count) if p not in placed]
    if missing:
        raise root.error(
            "partitions",
            f"{_summarize(missing)} not placed: an explicit placement must list "
            f"every partition 0..{last} exactly once",
        )
    return tuple(placed[p] for p in range(cluster.partition_count))


def _read_replicas(
    table: _Table, node_ids: Sequence[str], replication_factor: int
) -> tuple[str, ...]:
    replicas: list[str] = []
    for index, value in enumerate(table.array("replicas")):
        if not isinstance(value, str):
            raise table.error(
                "replicas", f"expected a node id string, got {_describe(value)}", index
            )
        if value not in node_ids:
            known = ", ".join(node_ids)
            raise table.error("replicas", f"unknown node {value!r} (nodes: {known})", index)
        if value in replicas:
            raise table.error("replicas", f"node {value!r} is listed twice", index)
        replicas.append(value)
    if len(replicas) != replication_factor:
        raise table.error(
            "replicas",
            f"{len(replicas)} replicas listed, cluster.replication_factor "
            f"requires exactly {replication_factor}",
        )
    return tuple(replicas)


def _summarize(partitions: Sequence[int]) -> str:
    shown = ", ".join(str(p) for p in partitions[:8])
    more = f" and {len(partitions) - 8} more" if len(partitions) > 8 else ""
    return f"partition{'s' if len(partitions) > 1 else ''} {shown}{more}"


def _round_robin_placement(
    node_ids: Sequence[str], partition_count: int, replication_factor: int
) -> tuple[tuple[str, ...], ...]:
    """Partition p on `replication_factor` consecutive nodes starting at node p % n.

    Starting each partition one node further spreads the preferred leaders (and
    so the write load) evenly: node counts of led partitions differ by at most one.
    """
    n = len(node_ids)
    return tuple(
        tuple(node_ids[(p + k) % n] for k in range(replication_factor))
        for p in range(partition_count)
    )


# --- writing -------------------------------------------------------------------------------


def dump_cluster_config(config: ClusterConfig) -> str:
    """TOML text that `parse_cluster_config` turns back into an equal config.

    The placement is always written out explicitly, so the file keeps meaning the
    same cluster even if the computed default placement ever changes.
    """
    lines = [
        "# RaftWallet cluster file",
        "[cluster]",
        f"name = {_toml_string(config.name)}",
        f"partitions = {config.partition_count}",
        f"replication_factor = {config.replication_factor}",
        f"secret = {_toml_string(config.secret)}",
        f"insecure_dev_mode = {'true' if config.insecure_dev_mode else 'false'}",
    ]
    for key, token, previous in (
        ("admin", config.admin_token, config.previous_admin_tokens),
        ("wallet", config.wallet_token, config.previous_wallet_tokens),
    ):
        if token:
            lines.append(f"{key}_token = {_toml_string(token)}")
        if previous:
            listed = ", ".join(_toml_string(t) for t in previous)
            lines.append(f"previous_{key}_tokens = [{listed}]")
    if config.tls is not None:
        tls = config.tls
        lines += [
            "",
            "[tls]",
            f"cert_file = {_toml_string(str(tls.cert_file))}",
            f"key_file = {_toml_string(str(tls.key_file))}",
        ]
        if tls.ca_file is not None:
            lines.append(f"ca_file = {_toml_string(str(tls.ca_file))}")
        lines.append(f"require_client_cert = {'true' if tls.require_client_cert else 'false'}")
    for node in config.nodes:
        lines += [
            "",
            "[[nodes]]",
            f"id = {_toml_string(node.id)}",
            f"host = {_toml_string(node.host)}",
            f"grpc_port = {node.grpc_port}",
            f"raft_port_base = {node.raft_port_base}",
        ]
        if node.metrics_port is not None:
            lines.append(f"metrics_port = {node.metrics_port}")
    for partition, replicas in enumerate(config.placement):
        listed = ", ".join(_toml_string(node_id) for node_id in replicas)
        lines += ["", "[[partitions]]", f"id = {partition}", f"replicas = [{listed}]"]
    return "\n".join(lines) + "\n"


_TOML_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_string(text: str) -> str:
    """A TOML basic string. Control characters must be escaped; everything else is literal."""
    out = []
    for char in text:
        if char in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


# --- local clusters ------------------------------------------------------------------------


def local_cluster_config(
    name: str,
    node_count: int,
    partition_count: int,
    ports: Sequence[int] | PortAllocator,
    secret: str | None = None,
    replication_factor: int = 3,
    admin_token: str | None = None,
) -> ClusterConfig:
    """A cluster of `node_count` nodes on 127.0.0.1, for tests and `cluster up`.

    Each node takes, in this order, a gRPC port, a metrics port and
    `partition_count + 1` consecutive Raft ports (the partitions, then the
    metadata group). `ports` is either a list of free
    ports used in that order (at least `node_count * (partition_count + 3)` of
    them, each node's Raft ports consecutive) or a `PortAllocator`. The secret
    and the admin token default to fresh random ones (no wallet token, no TLS:
    loopback only). Placement is the computed round-robin one.
    The result goes through the same validation as a file, so it is valid or
    this raises ConfigError.
    """
    if node_count < 1 or not 1 <= partition_count <= MAX_PARTITIONS:
        raise ValueError(
            f"need at least 1 node and 1..{MAX_PARTITIONS} partitions, "
            f"got {node_count} nodes and {partition_count} partitions"
        )
    if callable(ports):
        allocate = ports
    else:
        needed = node_count * (partition_count + 3)
        if len(ports) < needed:
            raise ValueError(
                f"{len(ports)} ports given; {node_count} nodes with {partition_count} "
                f"partitions need {needed} (per node: gRPC, metrics, one per partition + metadata)"
            )
        allocate = _allocator_from_list(ports)
    nodes: list[dict[str, object]] = []
    for number in range(1, node_count + 1):
        grpc_port = allocate(1)
        metrics_port = allocate(1)
        raft_port_base = allocate(partition_count + 1)  # + the metadata group
        nodes.append(
            {
                "id": f"n{number}",
                "host": LOOPBACK_HOST,
                "grpc_port": grpc_port,
                "raft_port_base": raft_port_base,
                "metrics_port": metrics_port,
            }
        )
    document: dict[str, object] = {
        "cluster": {
            "name": name,
            "partitions": partition_count,
            "replication_factor": replication_factor,
            "secret": secrets.token_urlsafe(32) if secret is None else secret,
            "admin_token": secrets.token_urlsafe(32) if admin_token is None else admin_token,
        },
        "nodes": nodes,
    }
    return _build(document, "<local_cluster_config>", Path.cwd())


def _allocator_from_list(ports: Sequence[int]) -> PortAllocator:
    """Hands out `ports` in order; a block of several must be consecutive numbers."""
    position = 0

    def allocate(count: int) -> int:
        nonlocal position
        block = list(ports[position : position + count])
        if block != list(range(block[0], block[0] + count)):
            raise ValueError(
                f"ports {block} are for one node's Raft groups (raft_port_base + partition) "
                "and must be consecutive"
            )
        position += count
        return block[0]

    return allocate
