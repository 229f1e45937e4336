"""Amount parsing: strict decimal strings to integer minor units, per currency exponent."""

from __future__ import annotations

import pytest

from ledger.money import (
    AMOUNT_MAX_MINOR,
    AMOUNT_TEXT_MAX_CHARS,
    MoneyError,
    currency,
    format_amount,
    parse_amount,
)


@pytest.mark.parametrize(
    ("text", "code", "minor"),
    [
        ("12.34", "USD", 1234),
        ("12.3", "USD", 1230),
        ("12", "USD", 1200),
        ("0.01", "USD", 1),
        ("0.5", "USD", 50),
        ("500", "JPY", 500),
        ("1", "JPY", 1),
        ("1.234", "BHD", 1234),
        ("0.001", "BHD", 1),
        ("7.5", "BHD", 7500),
        ("10000000000000000", "USD", 10**18),
    ],
)
def test_parses_valid_amounts_into_minor_units(text: str, code: str, minor: int) -> None:
    assert parse_amount(text, code) == minor


@pytest.mark.parametrize(
    ("text", "code", "why"),
    [
        ("-1", "USD", "negative"),
        ("-0.01", "USD", "negative"),
        ("0", "USD", "zero"),
        ("0.00", "USD", "zero"),
        ("0", "JPY", "zero"),
        ("1.234", "USD", "too many decimals"),
        ("1.5", "JPY", "JPY has no decimals"),
        ("1.0", "JPY", "JPY has no decimals, even zero ones"),
        ("1.2345", "BHD", "too many decimals"),
        ("1e3", "USD", "exponent"),
        ("1E3", "USD", "exponent"),
        ("NaN", "USD", "nan"),
        ("nan", "USD", "nan"),
        ("inf", "USD", "infinity"),
        ("Infinity", "USD", "infinity"),
        (" 1", "USD", "leading space"),
        ("1 ", "USD", "trailing space"),
        ("1\n", "USD", "trailing newline"),
        ("\t1", "USD", "tab"),
        ("1\u00a0000", "USD", "no-break space"),
        ("1_000", "USD", "underscore separator"),
        ("1,00", "USD", "comma"),
        ("+1", "USD", "explicit sign"),
        ("01", "USD", "leading zero"),
        ("00.5", "USD", "leading zeros"),
        ("1.", "USD", "trailing dot"),
        (".5", "USD", "no whole part"),
        ("", "USD", "empty"),
        ("1.2.3", "USD", "two dots"),
        ("\u0661\u0662", "USD", "Arabic-Indic digits"),
        ("\uff11\uff12", "USD", "full-width digits"),
        ("\uff11.00", "USD", "full-width digit one"),
        ("0x10", "USD", "hex"),
        ("10000000000000000.01", "USD", "above the maximum amount"),
        ("9" * (AMOUNT_TEXT_MAX_CHARS + 1), "JPY", "absurdly long"),
    ],
)
def test_rejects_malformed_amounts(text: str, code: str, why: str) -> None:
    with pytest.raises(MoneyError) as excinfo:
        parse_amount(text, code)
    assert excinfo.value.field == "amount", why


@pytest.mark.parametrize(
    "code",
    ["usd", "Usd", "US", "USDD", "ABC", "XAU", "XXX", "XDR", "XTS", "", "U$D", "usd ",
     "\uff35\uff33\uff24"],
)
def test_rejects_unknown_ambiguous_or_unitless_currencies(code: str) -> None:
    with pytest.raises(MoneyError) as excinfo:
        parse_amount("1", code)
    assert excinfo.value.field == "currency"


def test_currency_exponents_come_from_the_iso_table() -> None:
    assert (currency("USD").exponent, currency("JPY").exponent, currency("BHD").exponent) == (
        2,
        0,
        3,
    )


def test_rejects_non_string_amounts() -> None:
    with pytest.raises(MoneyError):
        parse_amount(12.34, "USD")  # type: ignore[arg-type]


def test_maximum_amount_is_accepted_and_one_more_unit_is_not() -> None:
    assert parse_amount(format_amount(AMOUNT_MAX_MINOR, 2), "USD") == AMOUNT_MAX_MINOR
    with pytest.raises(MoneyError):
        parse_amount(format_amount(AMOUNT_MAX_MINOR + 1, 2), "USD")


@pytest.mark.parametrize(
    ("minor", "exponent", "text"),
    [(1234, 2, "12.34"), (5, 2, "0.05"), (500, 0, "500"), (1, 3, "0.001"), (0, 2, "0.00"),
     (-150, 2, "-1.50")],
)
def test_formats_minor_units_with_the_currency_decimals(minor: int, exponent: int,
                                                        text: str) -> None:
    assert format_amount(minor, exponent) == text


@pytest.mark.parametrize("code", ["USD", "JPY", "BHD", "EUR", "KWD", "CLF"])
def test_format_then_parse_round_trips(code: str) -> None:
    exponent = currency(code).exponent
    for minor in (1, 7, 10**exponent, 123456789):
        assert parse_amount(format_amount(minor, exponent), code) == minor
