"""Compact, versioned binary encoding of the results of one log entry (for the event archive).

Layout: one version byte (`RESULTS_VERSION` = 1), then one byte per result, in
command order: the low 7 bits are the `Code` number (stable, see
`ledger.results`), the high bit is the `replayed` flag. An entry of 1,000
commands costs 1,001 bytes.

Guarantees: pure (no I/O, no state); `decode_results(encode_results(r)) == r`
for every tuple of results; decoding refuses (with `ResultsDecodeError`) an
unknown version and any byte that is not a known code, instead of guessing.
Codes of 128 and above do not fit this version: `encode_results` refuses them,
and a future version byte will carry them.
"""

from __future__ import annotations

from typing import Final, cast

from ledger.results import Code, Result, result

RESULTS_VERSION: Final = 1
"""Encoding version this code writes and reads."""

_REPLAYED_BIT: Final = 0x80
_CODE_MASK: Final = 0x7F

# byte -> shared Result instance (None for bytes that are not a valid result).
_RESULT_OF_BYTE: Final[tuple[Result | None, ...]] = tuple(
    result(Code(byte & _CODE_MASK), bool(byte & _REPLAYED_BIT))
    if (byte & _CODE_MASK) in Code._value2member_map_
    else None
    for byte in range(256)
)


class ResultsDecodeError(ValueError):
    """Bytes that are not results encoded by this code (unknown version or code)."""


def encode_results(results: tuple[Result, ...]) -> bytes:
    """Encode the results of one entry; raises ValueError for a code that does not fit."""
    out = bytearray((RESULTS_VERSION,))
    for one in results:
        code = int(one.code)
        if not 0 < code <= _CODE_MASK:
            raise ValueError(f"result code {code} does not fit results encoding version 1")
        out.append(code | _REPLAYED_BIT if one.replayed else code)
    return bytes(out)


def decode_results(blob: bytes) -> tuple[Result, ...]:
    """Decode `encode_results` output; raises ResultsDecodeError when it is not such bytes."""
    if not blob:
        raise ResultsDecodeError("empty results blob (no version byte)")
    if blob[0] != RESULTS_VERSION:
        raise ResultsDecodeError(
            f"results encoding version {blob[0]}; this code reads version {RESULTS_VERSION}"
        )
    table = _RESULT_OF_BYTE
    decoded = [table[byte] for byte in blob[1:]]
    if None in decoded:
        index = decoded.index(None)
        raise ResultsDecodeError(
            f"result {index} has unknown code byte 0x{blob[1 + index]:02x}"
        )
    return cast("tuple[Result, ...]", tuple(decoded))  # no None left: checked above
