"""The PII scan at ingest (privmob.stages.pii): what it finds, what it lets pass, what it says.

Every resident ID number here is made up in the test (area 110105, invented birth dates
and sequences) with its check character computed by :func:`_with_check`; none is a
real person's.
"""

from __future__ import annotations

import doctest
import re
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privmob.stages import pii
from privmob.stages.ingest import REQUIRED_COLUMNS
from privmob.stages.pii import (
    IDENTIFIER_NAMES,
    KINDS,
    any_pii,
    counts_from_row,
    describe,
    email,
    identifier_by_name,
    mobile,
    resident_id,
    scan_exprs,
)

WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)

# --- a plain-Python reference for GB 11643-1999 ----------------------------------------


def _check_char(body: str) -> str:
    """ISO 7064 MOD 11-2 check character of a 17-digit body, computed the slow, obvious way."""
    assert len(body) == 17 and body.isdigit()
    value = (12 - sum(int(d) * w for d, w in zip(body, WEIGHTS, strict=True)) % 11) % 11
    return "X" if value == 10 else str(value)


def _with_check(body: str) -> str:
    return body + _check_char(body)


_REF_SHAPE = re.compile(
    r"[1-8][0-9]{5}(?:19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])[0-9]{3}[0-9Xx]"
)


def _ref_resident_id(text: str | None) -> bool:
    """Reference: some maximal digit run (an X may close it) is a valid 18-char ID."""
    if text is None:
        return False
    for run in re.findall(r"[0-9]+[Xx]?", text):
        if len(run) == 18 and _REF_SHAPE.fullmatch(run) and run[17].upper() == _check_char(run[:17]):
            return True
    return False


VALID_ID = _with_check("11010519900307123")  # area 110105, born 1990-03-07, sequence 123
#: A body whose check character is X (the first sequence number that gives one).
X_BODY = next(b for s in range(1000) if _check_char(b := f"11010519850612{s:03d}") == "X")
OTHER_IDS = [
    _with_check("31010420010229045"),  # 2001-02-29: day 01-31 is all the scan asks of a date
    _with_check("44030519761231888"),
    _with_check("81000020990101001"),  # area starting 8, year 2099
    _with_check("51010219000131000"),  # year 1900
]


def _flags(
    fn: Any, values: list[Any], dtype: pl.DataType | type[pl.DataType] | None = None
) -> list[bool]:
    frame = pl.DataFrame({"v": pl.Series("v", values, dtype=dtype)})
    return frame.select(fn(pl.col("v"))).to_series().to_list()


# --- resident ID numbers ---------------------------------------------------------------


def test_valid_ids_match() -> None:
    assert VALID_ID == "110105199003071239"
    assert _flags(resident_id, [VALID_ID, *OTHER_IDS]) == [True] * 5


def test_x_check_character_in_either_case() -> None:
    upper, lower = X_BODY + "X", X_BODY + "x"
    assert _flags(resident_id, [upper, lower]) == [True, True]
    # the same body with any digit in place of X fails
    assert not any(_flags(resident_id, [X_BODY + d for d in "0123456789"]))


def test_every_wrong_check_character_is_rejected() -> None:
    wrong = [VALID_ID[:17] + c for c in "0123456789X" if c != VALID_ID[17]]
    assert len(wrong) == 10
    assert _flags(resident_id, wrong) == [False] * 10


@pytest.mark.parametrize(
    "body",
    [
        "11010518990307123",  # year 1899
        "11010521000307123",  # year 2100
        "11010519900007123",  # month 00
        "11010519901307123",  # month 13
        "11010519900300123",  # day 00
        "11010519900332123",  # day 32
        "01010519900307123",  # area code starting 0
        "91010519900307123",  # area code starting 9
    ],
)
def test_implausible_area_or_date_is_rejected_even_with_a_valid_check(body: str) -> None:
    assert _flags(resident_id, [_with_check(body)]) == [False]


def test_17_or_19_characters_are_rejected() -> None:
    values = [
        VALID_ID[:17],  # 17 digits
        VALID_ID + "5",  # 19 digits
        "5" + VALID_ID,  # 19 digits, the ID at the end
        "2" + VALID_ID + "3",  # 20 digits
        VALID_ID[:17] + "0X",  # 18 digits then X: 19 characters
    ]
    assert _flags(resident_id, values) == [False] * len(values)


def test_ids_are_found_inside_free_text() -> None:
    values = [
        f"ID:{VALID_ID} ok",
        f"身份证{VALID_ID}号",
        f"  {VALID_ID}\n",
        f"name Zhang, id {X_BODY}x, ward 3",
        f"{VALID_ID[:17]}0 {VALID_ID}",  # a bad candidate first, a good one after one space
        f"A{VALID_ID}B",  # letters are boundaries too
        f"{X_BODY}X5",  # an X check character closes the number
    ]
    assert _flags(resident_id, values) == [True] * len(values)


def test_full_width_digits_are_folded() -> None:
    full = VALID_ID.translate({ord(c): 0xFF10 + int(c) for c in "0123456789"})
    assert _flags(resident_id, [f"身份证：{full}", "Ｘ" + X_BODY]) == [True, False]
    full_x = X_BODY.translate({ord(c): 0xFF10 + int(c) for c in "0123456789"}) + "Ｘ"
    assert _flags(resident_id, [full_x]) == [True]


def test_ids_stored_as_integers_and_nulls() -> None:
    values = [int(VALID_ID), int(VALID_ID[:17] + "0"), None]
    assert _flags(resident_id, values, pl.Int64) == [True, False, False]
    assert _flags(resident_id, [None, "", "confirmed"], pl.String) == [False, False, False]


def test_random_18_digit_strings_mostly_pass() -> None:
    """Random digits: the shape alone passes ~0.06% of them, the check digit ~1/11 of those."""
    rng = np.random.default_rng(20261126)
    digits = rng.integers(0, 10, size=(10_000, 18))
    values = ["".join(map(str, row)) for row in digits]
    got = _flags(resident_id, values)
    assert got == [_ref_resident_id(v) for v in values]
    # P(area 1-8) · P(year 19xx/20xx) · P(month) · P(day) · P(check digit right)
    expected_rate = 0.8 * 0.02 * 0.12 * 0.31 * (1 / 11)
    assert expected_rate < 1e-4
    # Poisson with mean 0.54: 6 or more happens with probability < 1e-5
    assert sum(got) <= 6


def test_check_digit_rejects_about_ten_in_eleven_plausible_numbers() -> None:
    """Plausible area and date, random sequence and check digit: ~1/11 pass, as designed."""
    rng = np.random.default_rng(7)
    n = 10_000
    years = rng.integers(1930, 2025, n)
    months = rng.integers(1, 13, n)
    days = rng.integers(1, 29, n)
    tails = rng.integers(0, 10_000, n)  # 3-digit sequence + a random check digit 0-9
    values = [
        f"{rng.integers(1, 9)}10105{y}{m:02d}{d:02d}{t:04d}"
        for y, m, d, t in zip(years, months, days, tails, strict=True)
    ]
    got = _flags(resident_id, values)
    assert got == [_ref_resident_id(v) for v in values]
    # the last digit is right with probability 1/10 unless the check character is X (≈ 1/11)
    expected_rate = (1 / 10) * (10 / 11)
    sd = (expected_rate * (1 - expected_rate) / n) ** 0.5
    rate = sum(got) / n
    assert 0 < rate < 0.10
    assert abs(rate - expected_rate) < 5 * sd


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="0123456789Xx -a号", max_size=30), min_size=1, max_size=20))
def test_resident_id_agrees_with_the_reference(values: list[str]) -> None:
    # Seed some valid IDs into the generated text so positives are exercised too.
    values = [*values, *(f"{v[:3]}{VALID_ID}{v[3:]}" for v in values)]
    assert _flags(resident_id, values) == [_ref_resident_id(v) for v in values]


# --- mobile numbers --------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "13812345678",
        "+86 138-1234-5678",
        "0086 13812345678",
        "8613812345678",
        "+8613812345678",
        "+86-13812345678",
        "138 1234 5678",
        "19912345678",
        "tel:13812345678;",
        "联系电话13812345678，谢谢",
        "１３８１２３４５６７８",
    ],
)
def test_mobile_positives(value: str) -> None:
    assert _flags(mobile, [value]) == [True]


@pytest.mark.parametrize(
    "value",
    [
        "12812345678",  # second digit 2
        "11012345678",  # second digit 1
        "1381234567",  # 10 digits
        "138123456789",  # 12 digits
        "213812345678",  # inside a longer run
        "138-1234-56789",
        "010-12345678",  # a landline
        "2026-11-26 08:00:00",
        "10086",
        "confirmed",
        "",
    ],
)
def test_mobile_negatives(value: str) -> None:
    assert _flags(mobile, [value]) == [False]


def test_mobiles_stored_as_integers() -> None:
    values = [13812345678, 12812345678, 1381234567, 138123456789, 8613812345678, None]
    assert _flags(mobile, values, pl.Int64) == [True, False, False, False, True, False]


# --- e-mail addresses ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["a@example.com", "zhang.san+ward3@hospital.example.cn", "联系 LI_SI@Mail.Example.ORG 谢谢", "x@a-b.io"],
)
def test_email_positives(value: str) -> None:
    assert _flags(email, [value]) == [True]


@pytest.mark.parametrize(
    "value",
    ["a@b", "@example.com", "user@.com", "user@example", "user@@example.com", "close_contact", "a @ b.com"],
)
def test_email_negatives(value: str) -> None:
    assert _flags(email, [value]) == [False]


def test_any_pii_is_the_union() -> None:
    values = [VALID_ID, "13812345678", "a@example.com", "confirmed", None]
    assert _flags(any_pii, values) == [True, True, True, False, False]


# --- the scan in one pass --------------------------------------------------------------

SCAN_FRAME = pl.DataFrame(
    {
        "group": [
            "confirmed",
            f"confirmed {VALID_ID}",
            X_BODY + "X",
            "call +86 138-1234-5678 or z@example.com",
            None,
            "suspected",
        ],
        "ward:bed": [13812345678, None, 30303, 13912345678, 70707, int(VALID_ID)],  # Int64, ':' in name
        "note": ["a@example.com", "b@example.org", None, "", "harmless note", "another note"],
        "clean": ["alpha", "bravo", None, "charlie", "delta", "echo"],
    }
)


def test_scan_exprs_counts_every_column_and_kind_in_one_streaming_pass() -> None:
    lf = SCAN_FRAME.lazy()
    cols = ["group", "ward:bed", "note", "clean"]
    out = lf.select(pl.len().alias("rows"), *scan_exprs(cols)).collect(engine="streaming")
    assert out.height == 1
    row = out.row(0, named=True)
    assert row["rows"] == SCAN_FRAME.height
    assert {k for k in row if k.startswith("pii:")} == {f"pii:{c}:{k}" for c in cols for k in KINDS}
    assert counts_from_row(row) == {
        "group": {"resident_id": 2, "mobile": 1, "email": 1},
        "ward:bed": {"resident_id": 1, "mobile": 2},
        "note": {"email": 2},
    }


def test_scan_of_a_clean_frame_finds_nothing() -> None:
    lf = pl.LazyFrame({"group": ["confirmed", "suspected", "close_contact", None]})
    row = lf.select(scan_exprs(["group"])).collect(engine="streaming").row(0, named=True)
    assert counts_from_row(row) == {}
    assert scan_exprs([]) == []


def test_counts_from_row_ignores_other_aggregates_and_zeros() -> None:
    row = {"rows": 10, "pii:g:mobile": 0, "pii:g:email": 2, "pii:a:b:resident_id": 1, "pii:g:other": 5}
    assert counts_from_row(row) == {"g": {"email": 2}, "a:b": {"resident_id": 1}}


def test_expressions_are_native_polars_only() -> None:
    udf = pl.col("v").map_elements(lambda v: v, return_dtype=pl.String)
    assert "python_udf" in str(udf)  # the check below would see one
    exprs = [*scan_exprs(["group", "ward"]), *(f(pl.col("v")) for f in (resident_id, mobile, email, any_pii))]
    for expr in exprs:
        text = str(expr)
        assert "python_udf" not in text
        assert "map_" not in text


# --- what the scan says ----------------------------------------------------------------


def test_describe_wording() -> None:
    text = describe({"group": {"resident_id": 3, "mobile": 1}})
    assert text == "column 'group': 3 values look like resident ID numbers, 1 like a mobile number"
    assert describe({"a": {"email": 1}, "b": {"mobile": 2, "email": 2}}) == (
        "column 'a': 1 value looks like an e-mail address; "
        "column 'b': 2 values look like mobile numbers, 2 like e-mail addresses"
    )
    assert describe({}) == ""
    assert describe({"a": {"email": 0}}) == ""


def test_describe_never_contains_a_value() -> None:
    row = SCAN_FRAME.lazy().select(scan_exprs(SCAN_FRAME.columns)).collect().row(0, named=True)
    text = describe(counts_from_row(row))
    assert "column 'group'" in text and "column 'ward:bed'" in text
    values = [v for col in SCAN_FRAME.iter_columns() for v in col.to_list() if v not in (None, "")]
    assert len(values) == 19
    for value in values:
        assert str(value) not in text
    for fragment in (VALID_ID, X_BODY, "13812345678", "138-1234-5678", "example.com", "@"):
        assert fragment not in text


# --- identifiers by name ---------------------------------------------------------------


def test_identifier_names_cover_the_governance_list() -> None:
    required = {
        "name", "full_name", "id_number", "id_card", "idcard", "citizen_id", "phone", "mobile", "tel",
        "telephone", "email", "address", "home_address", "addr", "age", "birthday", "date_of_birth",
        "dob", "姓名", "身份证", "身份证号", "手机", "手机号", "电话", "住址", "地址", "年龄", "出生日期",
    }
    assert required <= IDENTIFIER_NAMES
    assert not set(REQUIRED_COLUMNS) & IDENTIFIER_NAMES


def test_identifier_by_name_ignores_case_and_separators() -> None:
    columns = [
        "person_id", "ts", "lat", "lng", "group",
        "NAME", "Full Name", "fullName", "E-Mail", "Phone_Number", "ID.Card", " dob ",
        "身份证号", "手机号码", "家庭住址",
        "group_name", "home_cell", "ward", "名称",
    ]
    assert identifier_by_name(columns) == [
        "NAME", "Full Name", "fullName", "E-Mail", "Phone_Number", "ID.Card", " dob ",
        "身份证号", "手机号码", "家庭住址",
    ]
    assert identifier_by_name(iter(["Age", "x"])) == ["Age"]
    assert identifier_by_name([]) == []


def test_module_doctests() -> None:
    result = doctest.testmod(pii)
    assert result.attempted >= 3
    assert result.failed == 0
