"""Money: ISO 4217 currencies and strict amount parsing into integer minor units.

Amounts are integers counting the currency's minor unit (cents for USD, yen for
JPY, fils for BHD). Decimal strings are parsed here, once, at the edge; the
state machine never sees a float or a Decimal.

Bounds (documented in docs/money.md):
- an amount is 1 .. AMOUNT_MAX_MINOR minor units;
- a balance, and a partition's per-currency total (balances plus money in
  flight), never exceeds BALANCE_MAX_MINOR = 2**63 - 1 (int64).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import iso4217

BALANCE_MAX_MINOR = 2**63 - 1
"""Largest balance or per-currency partition total, in minor units (int64)."""

AMOUNT_MAX_MINOR = 10**18
"""Largest amount of one deposit, withdrawal or transfer, in minor units."""

AMOUNT_TEXT_MAX_CHARS = 40
"""Longest amount string accepted before any parsing is attempted."""

_AMOUNT_RE = re.compile(r"(0|[1-9][0-9]*)(?:\.([0-9]+))?", re.ASCII)
_CURRENCY_RE = re.compile(r"[A-Z]{3}", re.ASCII)


class MoneyError(ValueError):
    """An amount or currency that the ledger refuses; `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Currency:
    """An ISO 4217 currency that has minor units (funds and metals do not)."""

    code: str
    exponent: int
    name: str


@lru_cache(maxsize=512)
def currency(code: str) -> Currency:
    """Look up an ISO 4217 alphabetic code, exactly as written (upper case).

    Lower-case codes are refused rather than folded: "usd" is probably USD,
    but a ledger does not guess. Codes without a minor-unit exponent (XAU,
    XDR, XXX...) are refused because they are not amounts of money here.
    """
    if not isinstance(code, str) or _CURRENCY_RE.fullmatch(code) is None:
        raise MoneyError("currency", f"{code!r} is not a three-letter upper-case ISO 4217 code")
    try:
        entry = iso4217.Currency(code)
    except ValueError:
        raise MoneyError("currency", f"{code} is not an ISO 4217 currency") from None
    if entry.exponent is None:
        raise MoneyError("currency", f"{code} has no minor unit and cannot hold balances")
    return Currency(code=code, exponent=int(entry.exponent), name=str(entry.currency_name))


def parse_amount(text: str, currency_code: str) -> int:
    """Parse a positive decimal string into minor units of `currency_code`.

    Accepts plain ASCII decimals only: no sign, exponent, spaces, separators,
    leading zeros, trailing dot, or more decimals than the currency has.
    `parse_amount("12.34", "USD") == 1234`, `parse_amount("500", "JPY") == 500`.
    """
    cur = currency(currency_code)
    if not isinstance(text, str):
        raise MoneyError("amount", "must be a decimal string")
    if len(text) > AMOUNT_TEXT_MAX_CHARS:
        raise MoneyError("amount", f"longer than {AMOUNT_TEXT_MAX_CHARS} characters")
    match = _AMOUNT_RE.fullmatch(text)
    if match is None:
        raise MoneyError(
            "amount", f"{text!r} is not a plain decimal number like '12.34' (digits 0-9, one dot)"
        )
    whole, fraction = match.group(1), match.group(2) or ""
    if len(fraction) > cur.exponent:
        raise MoneyError(
            "amount",
            f"{text!r} has {len(fraction)} decimals; {cur.code} allows {cur.exponent}",
        )
    amount_minor = int(whole + fraction.ljust(cur.exponent, "0"))
    if amount_minor <= 0:
        raise MoneyError("amount", "must be greater than zero")
    if amount_minor > AMOUNT_MAX_MINOR:
        raise MoneyError(
            "amount", f"exceeds the maximum of {format_amount(AMOUNT_MAX_MINOR, cur.exponent)}"
        )
    return amount_minor


def format_amount(amount_minor: int, exponent: int) -> str:
    """Format minor units as a decimal string with exactly `exponent` decimals."""
    if exponent == 0:
        return str(amount_minor)
    sign = "-" if amount_minor < 0 else ""
    whole, fraction = divmod(abs(amount_minor), 10**exponent)
    return f"{sign}{whole}.{fraction:0{exponent}d}"
