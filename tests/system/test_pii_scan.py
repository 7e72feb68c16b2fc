"""The PII scan at ingest, end to end: kept columns refuse identifiers, dropped ones are named."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import privmob as pm
from tests.conftest import PERIOD_START, TEST_KEY, config


def resident_id(area: str, birth: str, seq: str) -> str:
    """A syntactically valid (made-up) resident ID: computes the ISO 7064 MOD 11-2 check."""
    body = area + birth + seq
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    check = (12 - sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11) % 11
    return body + ("X" if check == 10 else str(check))


def frame(n: int = 40, **extra: list[object]) -> pl.DataFrame:
    base = pl.DataFrame({
        "person_id": [f"P{i % 10:03d}" for i in range(n)],
        "ts": [PERIOD_START + 600 * i for i in range(n)],
        "lat": [39.90 + 0.001 * (i % 5) for i in range(n)],
        "lng": [116.40 + 0.001 * (i % 7) for i in range(n)],
        "group": ["close_contact"] * n,
    })
    return base.with_columns(**{k: pl.Series(v) for k, v in extra.items()})


def test_identifier_in_a_kept_column_fails_without_echoing_it(key_env: str, tmp_path: Path) -> None:
    phone = "13812345678"
    groups = ["close_contact"] * 38 + [f"close_contact {phone}", "suspected"]
    df = frame().with_columns(pl.Series("group", groups))
    with pytest.raises(pm.InputError) as info:
        pm.plan(config()).release(df, write_to=tmp_path / "out")
    message = str(info.value)
    assert "column 'group'" in message and "1 value" in message and "mobile" in message
    assert phone not in message
    assert not (tmp_path / "out").exists()


def test_dropped_identifier_columns_are_listed_by_position_for_the_operator(key_env: str) -> None:
    ids = [resident_id("110105", "19900307", f"{i:03d}") for i in range(40)]
    df = frame(
        姓名=[f"某{i}" for i in range(40)],          # an identifier by its name
        note=[f"x{i}@example.com" if i % 4 == 0 else "ok" for i in range(40)],  # by its values
        card=ids,                                       # by its values (valid check digits)
        shoe_size=[str(40 + i % 5) for i in range(40)],  # neither
    )
    release = pm.plan(config(grid={"resolution": 7})).release(df)
    # Columns 6–8 (1-based); the header text is never kept, a header can be data.
    assert release.operator_record["identifier_columns_dropped"] == [
        {"position": 6, "kind": "name", "found_by": "header"},
        {"position": 7, "kind": "email", "found_by": "values", "rows": 10},
        {"position": 8, "kind": "resident_id", "found_by": "values", "rows": 40},
    ]
    assert "identifier_columns_dropped" not in release.manifest
    text = repr(release.manifest) + repr(dict(release.operator_record))
    assert "example.com" not in text and ids[0] not in text
    assert "姓名" not in text and "'card'" not in text and "example" not in text
    assert "pii-scan" in release.manifest["stages"]


def test_clean_input_names_nothing(key_env: str) -> None:
    release = pm.plan(config(grid={"resolution": 7})).release(frame(extra_col=["a"] * 40))
    assert release.operator_record["identifier_columns_dropped"] == []
    assert TEST_KEY not in repr(release.manifest) + repr(dict(release.operator_record))
