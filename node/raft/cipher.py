"""AES-256-GCM on the Raft ports: one AEAD call per message (pysyncobj 0.3.17).

pysyncobj encrypts every Raft message with Fernet (AES-128-CBC, then HMAC-SHA256,
then base64) and, on receipt, verifies the HMAC twice (`extract_timestamp`, then
`decrypt`). Measured on this machine (bench/RESULTS.md): 160 µs to send and
receive a 200-byte heartbeat, 10 ms for a 175 KB batch entry, against 5 µs and
0.12 ms with AES-256-GCM. `RaftCipher` keeps pysyncobj's encryptor interface
(`encrypt_at_time`, `extract_timestamp`, `decrypt`) and replaces what it does:

- **One AEAD call per message and direction.** A message is
  `version (1 byte) | timestamp (u64) | nonce (12 bytes) | AES-256-GCM(plaintext) | tag (16 bytes)`,
  with version and timestamp as associated data: 37 bytes of overhead, no base64.
  `extract_timestamp` only reads the clear header (the library compares it with
  the connection's previous one before it calls `decrypt`); `decrypt` then
  authenticates header and body together, so a changed timestamp fails there
  and the library closes the connection.
- **Nonces never repeat under one key.** Each cipher draws a random 8-byte
  prefix and counts the last 4 bytes; after 2^32 messages it draws a new prefix.
  A repeat needs two draws of the same 64-bit prefix among all the nodes'
  ciphers over the key's life (birthday bound: 10^6 draws give 3 * 10^-8), not
  two equal random 96-bit nonces among all messages (NIST's 2^32 messages).
- **The key** is PBKDF2-HMAC-SHA256 of the cluster secret (100,000 iterations,
  as pysyncobj's, with a salt of our own), derived once per process and secret
  and shared by every group of the node.
- **The secret stays required** (node.config), and rotating it is the same
  rolling restart as before (docs/operations.md): a node speaks one key.

Nodes that run pysyncobj's Fernet cannot talk with nodes that run this cipher:
upgrade one node at a time (a majority of one kind keeps every group going;
docs/operations.md, "Upgrading").

`install()` makes pysyncobj create a `RaftCipher` for a group's password; it is
pinned to pysyncobj 0.3.17, whose SyncObj looks `getEncryptor` up in its module.
"""

from __future__ import annotations

import functools
import itertools
import os
import struct
import threading
from typing import Final

import pysyncobj.syncobj
import pysyncobj.version
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

SUPPORTED_PYSYNCOBJ_VERSION: Final = "0.3.17"
"""The pysyncobj release whose encryptor calls this module was checked against."""

FORMAT_VERSION: Final = 1
"""First byte of every message. Fernet tokens start with b"g" (base64 of 0x80)."""

KEY_SALT: Final = b"raftwallet raft aes-256-gcm v1"
KEY_ITERATIONS: Final = 100_000
KEY_BYTES: Final = 32

_HEADER = struct.Struct("<BQ")  # format version, timestamp
NONCE_PREFIX_BYTES: Final = 8
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
OVERHEAD_BYTES: Final = _HEADER.size + NONCE_BYTES + TAG_BYTES
_COUNTER_LIMIT: Final = 1 << 32
_U64_MAX: Final = (1 << 64) - 1


class InvalidMessage(ValueError):
    """Not a message of this cipher, or one that fails authentication."""


class RaftCipher:
    """pysyncobj's encryptor interface over AES-256-GCM (see the module docstring).

    Thread-safe: pysyncobj calls it from its tick thread, a test or a proxy may call
    it from others.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self._lock = threading.Lock()
        self._nonce_prefix = os.urandom(NONCE_PREFIX_BYTES)
        self._counter = itertools.count()

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        """Encrypt `data`; `current_time` (whole seconds) travels in the clear, authenticated."""
        if not 0 <= current_time <= _U64_MAX:
            raise ValueError(f"timestamp {current_time} is not a u64")
        header = _HEADER.pack(FORMAT_VERSION, current_time)
        nonce = self._next_nonce()
        return header + nonce + self._aead.encrypt(nonce, bytes(data), header)

    def extract_timestamp(self, token: bytes) -> int:
        """The message's timestamp, read from its clear header (authenticated by `decrypt`)."""
        return self._header(token)[1]

    def decrypt(self, token: bytes) -> bytes:
        """The plaintext; InvalidMessage when the message was changed or made with another key."""
        self._header(token)
        nonce = token[_HEADER.size:_HEADER.size + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, token[_HEADER.size + NONCE_BYTES:],
                                      token[:_HEADER.size])
        except InvalidTag:
            raise InvalidMessage("authentication failed: changed, or another key") from None

    def _header(self, token: bytes) -> tuple[int, int]:
        if len(token) < OVERHEAD_BYTES:
            raise InvalidMessage(f"{len(token)} bytes: shorter than a message's "
                                 f"{OVERHEAD_BYTES} bytes of overhead")
        version, timestamp = _HEADER.unpack_from(token)
        if version != FORMAT_VERSION:
            raise InvalidMessage(f"format version {version}, expected {FORMAT_VERSION}")
        return version, timestamp

    def _next_nonce(self) -> bytes:
        with self._lock:
            count = next(self._counter)
            if count >= _COUNTER_LIMIT:
                self._nonce_prefix = os.urandom(NONCE_PREFIX_BYTES)
                self._counter = itertools.count(1)
                count = 0
            return self._nonce_prefix + count.to_bytes(NONCE_BYTES - NONCE_PREFIX_BYTES, "big")


@functools.lru_cache(maxsize=8)
def derive_key(secret: str | bytes) -> bytes:
    """The AES-256 key of a cluster secret (PBKDF2, derived once per process and secret)."""
    password = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=KEY_SALT,
                     iterations=KEY_ITERATIONS)
    return kdf.derive(password)


def cipher_for_secret(secret: str | bytes) -> RaftCipher:
    """A cipher for the cluster secret: what a node's Raft groups use (and tests, proxies)."""
    return RaftCipher(derive_key(secret))


def pysyncobj_version_supported() -> bool:
    return str(pysyncobj.version.VERSION) == SUPPORTED_PYSYNCOBJ_VERSION


def install() -> None:
    """Make every SyncObj created from now on encrypt with a `RaftCipher`. Idempotent.

    Patches `pysyncobj.syncobj.getEncryptor` (SyncObj's constructor calls it with
    the group's password). Raises RuntimeError for any pysyncobj other than 0.3.17.
    """
    if not pysyncobj_version_supported():
        raise RuntimeError(
            f"node.raft.cipher.install() supports pysyncobj {SUPPORTED_PYSYNCOBJ_VERSION} only, "
            f"found {pysyncobj.version.VERSION}: re-read how syncobj.py creates and "
            "tcp_connection.py calls its encryptor, then update this module and its tests")
    if not hasattr(pysyncobj.syncobj, "getEncryptor"):
        raise RuntimeError("pysyncobj.syncobj has no getEncryptor: node.raft.cipher cannot "
                           "replace Fernet")
    pysyncobj.syncobj.getEncryptor = cipher_for_secret
