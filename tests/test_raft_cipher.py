"""The Raft ports' cipher (node.raft.cipher): AES-256-GCM behind pysyncobj's encryptor calls."""

from __future__ import annotations

import struct

import pysyncobj.syncobj
import pytest
from pysyncobj import SyncObj, SyncObjConf

from node.raft import cipher as raft_cipher
from node.raft.cipher import (
    FORMAT_VERSION,
    NONCE_BYTES,
    OVERHEAD_BYTES,
    InvalidMessage,
    RaftCipher,
    cipher_for_secret,
    derive_key,
)

SECRET = "a-cluster-secret-of-some-length"


def test_a_message_round_trips_with_its_timestamp() -> None:
    sender, receiver = cipher_for_secret(SECRET), cipher_for_secret(SECRET)
    token = sender.encrypt_at_time(b"append_entries", 1234)
    assert receiver.extract_timestamp(token) == 1234
    assert receiver.decrypt(token) == b"append_entries"
    assert len(token) == len(b"append_entries") + OVERHEAD_BYTES


def test_the_format_is_version_timestamp_nonce_then_ciphertext_and_tag() -> None:
    token = cipher_for_secret(SECRET).encrypt_at_time(b"x" * 10, 7)
    assert struct.unpack_from("<BQ", token) == (FORMAT_VERSION, 7)
    assert not token.startswith(b"g")  # never mistaken for a Fernet token
    assert b"x" * 10 not in token


def test_any_changed_byte_fails_authentication() -> None:
    cipher = cipher_for_secret(SECRET)
    token = cipher.encrypt_at_time(b"vote for me", 99)
    for offset in range(1, len(token)):  # byte 0 is the version: refused as such
        changed = bytearray(token)
        changed[offset] ^= 0x01
        with pytest.raises(InvalidMessage):
            cipher.decrypt(bytes(changed))


def test_a_changed_timestamp_is_read_but_fails_decryption() -> None:
    """pysyncobj compares the timestamp before it decrypts; the decryption then fails,
    and the library closes the connection."""
    cipher = cipher_for_secret(SECRET)
    token = bytearray(cipher.encrypt_at_time(b"heartbeat", 5))
    struct.pack_into("<Q", token, 1, 6)
    assert cipher.extract_timestamp(bytes(token)) == 6
    with pytest.raises(InvalidMessage, match="authentication failed"):
        cipher.decrypt(bytes(token))


def test_another_secret_cannot_read_or_forge() -> None:
    token = cipher_for_secret(SECRET).encrypt_at_time(b"secret", 1)
    with pytest.raises(InvalidMessage, match="another key"):
        cipher_for_secret("a-different-secret-entirely").decrypt(token)


@pytest.mark.parametrize("token", [b"", b"\x01" * (OVERHEAD_BYTES - 1),
                                   b"gAAAAABfernet-token-looks-like-this" + b"=" * 40])
def test_short_or_foreign_messages_are_refused_before_any_decryption(token: bytes) -> None:
    cipher = cipher_for_secret(SECRET)
    with pytest.raises(InvalidMessage):
        cipher.extract_timestamp(token)
    with pytest.raises(InvalidMessage):
        cipher.decrypt(token)


def test_nonces_never_repeat_and_a_new_prefix_follows_the_counters_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cipher = cipher_for_secret(SECRET)
    nonces = {cipher.encrypt_at_time(b"", 0)[9:9 + NONCE_BYTES] for _ in range(1000)}
    assert len(nonces) == 1000
    prefix = cipher._nonce_prefix
    monkeypatch.setattr(raft_cipher, "_COUNTER_LIMIT", 3)
    after = [cipher.encrypt_at_time(b"", 0)[9:9 + NONCE_BYTES] for _ in range(4)]
    assert cipher._nonce_prefix != prefix
    assert after[-1] == cipher._nonce_prefix + bytes(4)
    assert len(set(after) | nonces) == 1004


def test_two_ciphers_of_one_secret_draw_different_nonce_prefixes() -> None:
    assert cipher_for_secret(SECRET)._nonce_prefix != cipher_for_secret(SECRET)._nonce_prefix


def test_the_key_is_derived_once_per_secret() -> None:
    derive_key.cache_clear()
    first = derive_key(SECRET)
    assert derive_key(SECRET) is first
    assert derive_key.cache_info().hits == 1
    assert derive_key("another-secret-value") != first


def test_a_key_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        RaftCipher(b"short")


def test_install_makes_syncobj_encrypt_with_the_cipher() -> None:
    raft_cipher.install()
    assert pysyncobj.syncobj.getEncryptor is cipher_for_secret
    group = SyncObj("127.0.0.1:0", [], conf=SyncObjConf(password=SECRET, autoTick=False))
    try:
        assert isinstance(group.encryptor, RaftCipher)
    finally:
        group.destroy()


def test_install_refuses_an_unchecked_pysyncobj_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pysyncobj.version, "VERSION", "0.3.18")
    with pytest.raises(RuntimeError, match=r"supports pysyncobj 0\.3\.17 only"):
        raft_cipher.install()
