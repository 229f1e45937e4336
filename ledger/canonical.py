"""A canonical byte encoding for the ledger's state records.

Protobuf serialization is not canonical (field order, default values, map
order may differ between versions), so state hashes and snapshots use this
small fixed format instead: big-endian integers of fixed width, strings and
bytes prefixed with their length, unbounded integers as length + two's
complement. The same value always encodes to the same bytes.
"""

from __future__ import annotations

import hashlib
import struct

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class CanonicalError(ValueError):
    """Bytes that are not a valid canonical encoding."""


def text(value: str) -> bytes:
    raw = value.encode("utf-8")
    return _U16.pack(len(raw)) + raw


def blob(value: bytes) -> bytes:
    return _U16.pack(len(value)) + value


def bigint(value: int) -> bytes:
    size = (value.bit_length() + 8) // 8
    return bytes((size,)) + value.to_bytes(size, "big", signed=True)


def digest(record: bytes) -> int:
    """The record's contribution to a state hash (summed modulo 2**256)."""
    return int.from_bytes(hashlib.blake2b(record, digest_size=32).digest(), "big")


HASH_MODULUS = 2**256


class Reader:
    """Reads back what the functions above wrote; raises CanonicalError on malformed input."""

    __slots__ = ("_data", "_offset")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    @property
    def done(self) -> bool:
        return self._offset == len(self._data)

    def take(self, size: int) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise CanonicalError(f"truncated at offset {self._offset}")
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def unpack(self, fmt: struct.Struct) -> tuple[int, ...]:
        return fmt.unpack(self.take(fmt.size))

    def text(self) -> str:
        (size,) = _U16.unpack(self.take(2))
        try:
            return self.take(size).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CanonicalError(f"bad utf-8: {exc}") from None

    def blob(self) -> bytes:
        (size,) = _U16.unpack(self.take(2))
        return self.take(size)

    def bigint(self) -> int:
        size = self.take(1)[0]
        return int.from_bytes(self.take(size), "big", signed=True)

    def u32(self) -> int:
        (value,) = _U32.unpack(self.take(4))
        return int(value)

    def expect_done(self) -> None:
        if not self.done:
            raise CanonicalError(f"{len(self._data) - self._offset} trailing bytes")


def u32(value: int) -> bytes:
    return _U32.pack(value)
