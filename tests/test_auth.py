"""Access control: tokens and TLS on the gRPC port, and the cluster secret on the Raft ports.

Three kinds of tests: the token check and the cluster-file rules alone (no
process), a default loopback cluster (admin token only), and a secured cluster
(wallet token and mutual TLS, with a throwaway CA made here), plus hostile
clients of the Raft ports (issue #8).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pysyncobj import SyncObj, SyncObjConf

from client.auth import Credentials, TlsOptions, bearer, open_channel
from client.errors import PermissionDenied, Unauthenticated
from client.sdk import TransferStatus, WalletClient
from ledger.routing import partition_of
from node.cli.walletctl import main as walletctl
from node.config import (
    ClusterConfig,
    ConfigError,
    PortAllocator,
    TlsConfig,
    dump_cluster_config,
    local_cluster_config,
    parse_cluster_config,
)
from node.raft import cipher as raft_cipher
from node.raft import wire as raft_wire
from node.security.auth import PEER_TOKEN_METADATA_KEY, AccessPolicy, check_call
from proto.wallet.v1 import wallet_pb2 as pb
from proto.wallet.v1 import wallet_pb2_grpc
from tests.cluster_harness import LocalCluster, allocate_ports, wait_until

pytestmark = pytest.mark.cluster
"""Starts real node processes or Raft groups: `make test-fast` leaves these out."""

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
OLD_ADMIN_TOKEN = "old-admin-token-0123456789abcdef"
WALLET_TOKEN = "test-wallet-token-0123456789abcdef"
SECRET = "a-test-secret-of-32-characters.."
CALL_TIMEOUT_S = 10.0


# --- the token check, alone ---------------------------------------------------------------


def refusal_of(metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode | None:
    policy = AccessPolicy(admin_tokens=(ADMIN_TOKEN, OLD_ADMIN_TOKEN))
    refusal = check_call(policy.rules()[0], metadata)
    return None if refusal is None else refusal.code


def test_a_call_without_a_token_is_unauthenticated() -> None:
    assert refusal_of(()) is grpc.StatusCode.UNAUTHENTICATED


def test_a_token_that_is_not_a_bearer_token_is_unauthenticated() -> None:
    assert refusal_of((("authorization", f"Basic {ADMIN_TOKEN}"),)) is (
        grpc.StatusCode.UNAUTHENTICATED)
    assert refusal_of((("authorization", "Bearer "),)) is grpc.StatusCode.UNAUTHENTICATED


def test_two_tokens_in_one_call_are_unauthenticated() -> None:
    assert refusal_of((*bearer(ADMIN_TOKEN), *bearer(ADMIN_TOKEN))) is (
        grpc.StatusCode.UNAUTHENTICATED)


def test_a_wrong_token_is_permission_denied() -> None:
    assert refusal_of(bearer("x" * 32)) is grpc.StatusCode.PERMISSION_DENIED
    assert refusal_of(bearer(ADMIN_TOKEN[:-1])) is grpc.StatusCode.PERMISSION_DENIED


def test_the_current_and_the_previous_token_are_both_accepted_during_a_rotation() -> None:
    assert refusal_of(bearer(ADMIN_TOKEN)) is None
    assert refusal_of(bearer(OLD_ADMIN_TOKEN)) is None
    assert refusal_of((("authorization", f"bearer {ADMIN_TOKEN}"),)) is None


def test_peer_service_accepts_its_token_in_the_older_header_too() -> None:
    policy = AccessPolicy(peer_tokens=("p" * 64,))
    peer_rule = policy.rules()[2]
    assert check_call(peer_rule, ((PEER_TOKEN_METADATA_KEY, "p" * 64),)) is None
    assert check_call(peer_rule, bearer("p" * 64)) is None
    refusal = check_call(peer_rule, ((PEER_TOKEN_METADATA_KEY, "q" * 64),))
    assert refusal is not None and refusal.code is grpc.StatusCode.PERMISSION_DENIED


def test_a_refusal_message_never_contains_the_tokens() -> None:
    policy = AccessPolicy(admin_tokens=(ADMIN_TOKEN,))
    for metadata in ((), bearer("wrong-token-value-123456"), (("authorization", "Basic z"),)):
        refusal = check_call(policy.rules()[0], metadata)
        assert refusal is not None
        assert ADMIN_TOKEN not in refusal.message
        assert "wrong-token-value" not in refusal.message


def test_client_credentials_send_each_service_only_its_own_token() -> None:
    credentials = Credentials(wallet_token=WALLET_TOKEN, admin_token=ADMIN_TOKEN)
    assert credentials.metadata_for("/raftwallet.wallet.v1.WalletService/Deposit") == bearer(
        WALLET_TOKEN)
    assert credentials.metadata_for("/raftwallet.wallet.v1.AdminService/Verify") == bearer(
        ADMIN_TOKEN)
    assert credentials.metadata_for("/grpc.health.v1.Health/Check") is None
    assert ADMIN_TOKEN not in repr(credentials) and WALLET_TOKEN not in repr(credentials)


def counting_ports(first: int = 30000) -> PortAllocator:
    """Ports handed out in order (never bound here: these configs are not started)."""
    next_port = first

    def allocate(count: int) -> int:
        nonlocal next_port
        next_port += count
        return next_port - count

    return allocate


# --- the cluster file -----------------------------------------------------------------------

BASE = f"""\
[cluster]
name = "auth"
partitions = 1
replication_factor = 1
secret = "{SECRET}"
admin_token = "{ADMIN_TOKEN}"

[[nodes]]
id = "n1"
host = "127.0.0.1"
grpc_port = 7101
raft_port_base = 7200
"""


def config_error(text: str, base_dir: Path | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_cluster_config(text, "cluster.toml", base_dir)
    return str(caught.value)


def test_the_admin_token_is_required_unless_insecure_dev_mode() -> None:
    text = BASE.replace(f'admin_token = "{ADMIN_TOKEN}"\n', "")
    assert "cluster.admin_token: missing" in config_error(text)
    dev = text.replace("[cluster]", "[cluster]\ninsecure_dev_mode = true")
    insecure = parse_cluster_config(dev)
    assert insecure.accepted_admin_tokens == ()


def test_a_short_admin_token_is_refused_without_showing_it() -> None:
    message = config_error(BASE.replace(ADMIN_TOKEN, "short-token"))
    assert "cluster.admin_token: 11 characters" in message
    assert "short-token" not in message


def test_a_token_with_spaces_is_refused() -> None:
    message = config_error(BASE.replace(ADMIN_TOKEN, "a token with spaces in it"))
    assert "printable ASCII characters, without spaces" in message


def test_previous_tokens_are_accepted_next_to_the_current_one() -> None:
    text = BASE.replace("[[nodes]]", f'previous_admin_tokens = ["{OLD_ADMIN_TOKEN}"]\n\n[[nodes]]')
    config = parse_cluster_config(text)
    assert config.accepted_admin_tokens == (ADMIN_TOKEN, OLD_ADMIN_TOKEN)


def test_previous_wallet_tokens_need_a_current_wallet_token() -> None:
    text = BASE.replace("[[nodes]]", f'previous_wallet_tokens = ["{WALLET_TOKEN}"]\n\n[[nodes]]')
    assert "cluster.previous_wallet_tokens: previous tokens need a current wallet_token" in (
        config_error(text))


def test_a_cluster_beyond_loopback_needs_a_wallet_token_or_tls() -> None:
    text = BASE.replace('host = "127.0.0.1"', 'host = "wallet-1.example.com"')
    assert "cluster.wallet_token: missing: nodes n1 would serve WalletService" in (
        config_error(text))
    with_token = text.replace("[[nodes]]", f'wallet_token = "{WALLET_TOKEN}"\n\n[[nodes]]')
    assert parse_cluster_config(with_token).accepted_wallet_tokens == (WALLET_TOKEN,)


def test_tls_paths_are_relative_to_the_cluster_file_and_must_exist(tmp_path: Path) -> None:
    (tmp_path / "node.crt").write_text("pem", encoding="utf-8")
    (tmp_path / "node.key").write_text("pem", encoding="utf-8")
    text = BASE + '\n[tls]\ncert_file = "node.crt"\nkey_file = "node.key"\n'
    config = parse_cluster_config(text, "cluster.toml", tmp_path)
    assert config.tls == TlsConfig(tmp_path / "node.crt", tmp_path / "node.key", None, False)
    missing = text.replace('"node.key"', '"nowhere.key"')
    assert "tls.key_file: " in config_error(missing, tmp_path)
    assert "is not a readable file" in config_error(missing, tmp_path)


def test_client_certificates_need_a_ca_file(tmp_path: Path) -> None:
    (tmp_path / "node.crt").write_text("pem", encoding="utf-8")
    (tmp_path / "node.key").write_text("pem", encoding="utf-8")
    text = (BASE + '\n[tls]\ncert_file = "node.crt"\nkey_file = "node.key"\n'
            "require_client_cert = true\n")
    assert "tls.require_client_cert: needs ca_file" in config_error(text, tmp_path)


def test_unknown_tls_keys_are_refused(tmp_path: Path) -> None:
    text = BASE + '\n[tls]\ncert_fil = "node.crt"\n'
    assert "tls.cert_fil: unknown key 'cert_fil'" in config_error(text, tmp_path)


def test_tokens_stay_out_of_the_repr_and_round_trip_through_dump(tmp_path: Path) -> None:
    ca, cert, key = make_tls_files(tmp_path)
    config = dataclasses.replace(
        local_cluster_config("rt", 1, 1, counting_ports(), replication_factor=1),
        wallet_token=WALLET_TOKEN, previous_admin_tokens=(OLD_ADMIN_TOKEN,),
        tls=TlsConfig(cert, key, ca, True))
    assert WALLET_TOKEN not in repr(config) and config.admin_token not in repr(config)
    assert parse_cluster_config(dump_cluster_config(config)) == config


def test_local_cluster_config_generates_a_fresh_admin_token() -> None:
    first = local_cluster_config("a", 1, 1, counting_ports(), replication_factor=1)
    second = local_cluster_config("a", 1, 1, counting_ports(), replication_factor=1)
    assert len(first.admin_token) >= 16 and first.admin_token != second.admin_token


# --- a default loopback cluster: the admin token ----------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("auth"), nodes=3, partitions=1)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.stop_all()


def plain_admin(cluster: LocalCluster) -> tuple[grpc.Channel, wallet_pb2_grpc.AdminServiceStub]:
    channel = grpc.insecure_channel(cluster.config.node("n1").grpc_address)
    return channel, wallet_pb2_grpc.AdminServiceStub(channel)


def test_admin_call_without_a_token_is_unauthenticated(cluster: LocalCluster) -> None:
    channel, admin = plain_admin(cluster)
    with channel, pytest.raises(grpc.RpcError) as caught:
        admin.ClusterStatus(pb.ClusterStatusRequest(), timeout=CALL_TIMEOUT_S)
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "AdminService needs a token" in caught.value.details()


def test_admin_call_with_a_wrong_token_is_permission_denied(cluster: LocalCluster) -> None:
    channel, admin = plain_admin(cluster)
    with channel, pytest.raises(grpc.RpcError) as caught:
        admin.Verify(pb.VerifyRequest(), timeout=CALL_TIMEOUT_S, metadata=bearer("w" * 40))
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == "the token is not accepted by AdminService"


def test_admin_call_with_the_cluster_admin_token_works(cluster: LocalCluster) -> None:
    channel, admin = plain_admin(cluster)
    with channel:
        status = admin.ClusterStatus(pb.ClusterStatusRequest(), timeout=CALL_TIMEOUT_S,
                                     metadata=bearer(cluster.config.admin_token))
    assert status.partition_count == 1


def test_health_checking_stays_open(cluster: LocalCluster) -> None:
    with grpc.insecure_channel(cluster.config.node("n1").grpc_address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S)
    assert answer.status in (health_pb2.HealthCheckResponse.SERVING,
                             health_pb2.HealthCheckResponse.NOT_SERVING)


def test_without_a_wallet_token_a_loopback_wallet_service_is_open(cluster: LocalCluster) -> None:
    with WalletClient(cluster.config.node("n1").grpc_address) as wallet:
        assert wallet.create_account("open-alice", "USD").account_id == "open-alice"


def test_sdk_raises_permission_denied_for_a_wrong_admin_token(cluster: LocalCluster) -> None:
    address = cluster.config.node("n1").grpc_address
    with WalletClient(address, admin_token="w" * 40) as wallet, pytest.raises(PermissionDenied):
        wallet.cluster_status()
    with WalletClient(address) as wallet, pytest.raises(Unauthenticated):
        wallet.cluster_status()


def test_walletctl_takes_the_admin_token_from_the_environment(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = cluster.config.node("n2").grpc_address
    monkeypatch.delenv("RAFTWALLET_ADMIN_TOKEN", raising=False)
    assert walletctl(["--target", target, "--json", "cluster", "status"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    monkeypatch.setenv("RAFTWALLET_ADMIN_TOKEN", cluster.config.admin_token)
    assert walletctl(["--target", target, "--json", "cluster", "status"]) == 0
    assert '"partition_count": 1' in capsys.readouterr().out


def test_walletctl_takes_the_admin_token_from_the_cluster_file(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAFTWALLET_ADMIN_TOKEN", raising=False)
    assert walletctl(["--config", str(cluster.config_path), "--json", "cluster", "status"]) == 0
    capsys.readouterr()


# --- issue #8: the Raft ports need the cluster secret ---------------------------------------


def raft_frame(message: object) -> bytes:
    """A message framed as a node frames it without a secret: length, pickle."""
    data = raft_wire.encode_payload(message, None, 0)
    return struct.pack("i", len(data)) + data


class TouchWhenUnpickled:
    """A pickle that creates a file if anyone unpickles it: proof of code execution."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.path,))


def partition_view(cluster: LocalCluster) -> pb.PartitionStatus:
    status = cluster.admin("n1").ClusterStatus(pb.ClusterStatusRequest(local_only=True),
                                              timeout=CALL_TIMEOUT_S)
    view: pb.PartitionStatus = status.partitions[0]
    return view


def test_a_raft_port_drops_unencrypted_pickles_without_unpickling_them(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    before = partition_view(cluster)
    host, _, port = cluster.config.node("n1").raft_address(0).rpartition(":")
    with socket.create_connection((host, int(port)), timeout=CALL_TIMEOUT_S) as raw:
        raw.settimeout(CALL_TIMEOUT_S)
        raw.sendall(raft_frame(TouchWhenUnpickled(marker)))
        raw.sendall(raft_frame(["add", "127.0.0.1:1"]))  # a membership change, in the clear
        wait_for_close(raw)
    assert not marker.exists()
    after = partition_view(cluster)
    assert [r.node_id for r in after.replicas] == [r.node_id for r in before.replicas]
    assert len(after.replicas) == cluster.config.replication_factor


def wait_for_close(raw: socket.socket) -> None:
    """Until the node closes the connection (recv sees the end of stream or a reset)."""
    raw.settimeout(CALL_TIMEOUT_S)
    while True:
        try:
            if raw.recv(4096) == b"":
                return
        except ConnectionResetError:
            return


def test_a_raft_port_drops_a_handshake_encrypted_with_a_wrong_password(
    cluster: LocalCluster,
) -> None:
    wrong = raft_cipher.cipher_for_secret("not-the-cluster-secret-at-all")
    # The first message of a peer: its random key.
    data = raft_wire.encode_payload(os.urandom(32), wrong, int(time.monotonic()))
    host, _, port = cluster.config.node("n1").raft_address(0).rpartition(":")
    with socket.create_connection((host, int(port)), timeout=CALL_TIMEOUT_S) as raw:
        raw.sendall(struct.pack("i", len(data)) + data)
        wait_for_close(raw)


def test_a_raft_peer_with_a_wrong_password_is_dropped_and_never_campaigns(
    cluster: LocalCluster,
) -> None:
    before = partition_view(cluster)
    # pysyncobj dials only peers whose address sorts below its own: 127.0.0.2 > 127.0.0.1.
    intruder = SyncObj(f"127.0.0.2:{allocate_ports(1)}",
                       [cluster.config.node("n1").raft_address(0)],
                       conf=SyncObjConf(password="not-the-cluster-secret-at-all", autoTick=True,
                                        connectionRetryTime=0.2, dynamicMembershipChange=True))
    transport = intruder._SyncObj__transport  # the library's own connection bookkeeping
    attempts: set[float] = set()
    try:
        def dropped_three_times() -> bool:
            status = intruder.getStatus()
            assert all(value == 0 for key, value in status.items()
                       if str(key).startswith("partner_node_status_server_")), status
            attempts.update(transport._lastConnectAttempt.values())
            # It dials again only once its last connection is closed.
            return len(attempts) >= 3

        wait_until(dropped_three_times, "the node to drop the intruder's connections",
                   period_s=0.02)
        # Never connected, so it never even started an election: nothing reached the group.
        assert intruder.raftCurrentTerm == 0
        assert intruder.getStatus()["leader"] is None
    finally:
        intruder.destroy()
    after = partition_view(cluster)
    assert [r.node_id for r in after.replicas] == [r.node_id for r in before.replicas]


# --- a secured cluster: wallet token and mutual TLS ---------------------------------------


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a node certificate for 127.0.0.1 (server and client use)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "raftwallet test CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    node_key = ec.generate_private_key(ec.SECP256R1())
    node_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "raftwallet node")]))
        .issuer_name(ca_name).public_key(node_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file = directory / "ca.crt", directory / "node.crt"
    key_file = directory / "node.key"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(node_cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(node_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return ca_file, cert_file, key_file


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Two nodes, one partition each (calls and credits cross nodes), wallet token, mTLS."""
    root = tmp_path_factory.mktemp("secured")
    ca, cert, key = make_tls_files(root)
    config: ClusterConfig = dataclasses.replace(
        local_cluster_config("secured", 2, 2, allocate_ports, replication_factor=1),
        wallet_token=WALLET_TOKEN, tls=TlsConfig(cert, key, ca, require_client_cert=True))
    cluster = LocalCluster(root, config=config)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.stop_all()


def tls_of(cluster: LocalCluster, client_cert: bool = True) -> TlsOptions:
    tls = cluster.config.tls
    assert tls is not None
    if client_cert:
        return TlsOptions.from_files(tls.ca_file, tls.cert_file, tls.key_file)
    return TlsOptions.from_files(tls.ca_file)


def test_wallet_call_without_the_wallet_token_is_unauthenticated(secured: LocalCluster) -> None:
    address = secured.config.node("n1").grpc_address
    with WalletClient(address, tls=tls_of(secured), retry_deadline_s=0) as wallet, \
            pytest.raises(Unauthenticated, match="WalletService needs a token"):
        wallet.create_account("no-token", "USD")


def test_the_admin_token_does_not_open_wallet_service(secured: LocalCluster) -> None:
    address = secured.config.node("n1").grpc_address
    with open_channel(address, Credentials(tls=tls_of(secured))) as channel, \
            pytest.raises(grpc.RpcError) as caught:
        wallet_pb2_grpc.WalletServiceStub(channel).GetBalance(
            pb.GetBalanceRequest(account_id="x"), timeout=CALL_TIMEOUT_S,
            metadata=bearer(secured.config.admin_token))
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_with_the_wallet_token_money_moves_across_nodes_and_partitions(
    secured: LocalCluster,
) -> None:
    names = [f"acct-{i}" for i in range(50)]
    alice = next(n for n in names if partition_of(n, 2) == 0)
    bob = next(n for n in names if partition_of(n, 2) == 1)
    # Only n1 is a target: calls for bob's partition are forwarded to n2, and the
    # transfer's credit goes from one node's saga driver to the other's PeerService.
    with WalletClient(secured.config.node("n1").grpc_address, token=WALLET_TOKEN,
                      tls=tls_of(secured), learn_routes=False) as wallet:
        wallet.create_account(alice, "USD")
        wallet.create_account(bob, "USD")
        wallet.deposit(alice, "10.00", "USD")
        assert wallet.transfer(alice, bob, "2.50", "USD").status in (
            TransferStatus.SUCCEEDED, TransferStatus.PENDING)
        wait_until(lambda: wallet.balance(bob).balance == "2.50", "the credit to arrive")
        assert wallet.balance(alice).balance == "7.50"


def test_a_tls_cluster_refuses_plaintext(secured: LocalCluster) -> None:
    address = secured.config.node("n1").grpc_address
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as caught:
        wallet_pb2_grpc.AdminServiceStub(channel).ClusterStatus(
            pb.ClusterStatusRequest(), timeout=CALL_TIMEOUT_S,
            metadata=bearer(secured.config.admin_token))
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_a_client_without_a_certificate(secured: LocalCluster) -> None:
    address = secured.config.node("n1").grpc_address
    credentials = Credentials(admin_token=secured.config.admin_token,
                              tls=tls_of(secured, client_cert=False))
    with open_channel(address, credentials) as channel, pytest.raises(grpc.RpcError) as caught:
        wallet_pb2_grpc.AdminServiceStub(channel).ClusterStatus(
            pb.ClusterStatusRequest(), timeout=CALL_TIMEOUT_S)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


def test_walletctl_reads_tokens_and_tls_from_the_cluster_file(
    secured: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(secured.config_path)
    assert walletctl(["--config", config, "--json", "cluster", "status"]) == 0
    assert walletctl(["--config", config, "account", "create", "cli-carol",
                      "--currency", "USD"]) == 0
    capsys.readouterr()
