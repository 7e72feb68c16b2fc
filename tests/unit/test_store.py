"""The working store: encrypted at rest, private modes, bound to its name, purged on time."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import polars as pl
import pytest

from privmob.backends import get_backend
from privmob.errors import ConfigError, InputError
from privmob.governance.store import WorkingStore
from privmob.stages.pseudonymise import Pseudonymiser
from tests.conftest import PERIOD_START, SAMPLES, TEST_KEY, config

KEY = b"s" * 32
FRAME = pl.DataFrame({"person_id": ["ab" * 32, "cd" * 32], "ts": [1, 2], "lat": [39.9, 39.8],
                      "lng": [116.4, 116.3], "group": ["confirmed", "suspected"]})


def test_round_trip_modes_and_no_plaintext(tmp_path: Path) -> None:
    store = WorkingStore(tmp_path / "store", KEY)
    path = store.put("beijing", "2026-11-26", FRAME)
    assert store.get("beijing", "2026-11-26").equals(FRAME)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    blob = path.read_bytes()
    assert b"ab" * 32 not in blob and b"confirmed" not in blob and b"PAR1" not in blob


def test_wrong_key_renamed_or_altered_file_is_refused(tmp_path: Path) -> None:
    store = WorkingStore(tmp_path / "s", KEY)
    path = store.put("beijing", "2026-11-26", FRAME)
    with pytest.raises(InputError, match="cannot be decrypted"):
        WorkingStore(tmp_path / "s", b"t" * 32).get("beijing", "2026-11-26")
    path.rename(path.with_name("beijing__2026-11-27.pmws"))  # moved to another period
    with pytest.raises(InputError, match="cannot be decrypted"):
        store.get("beijing", "2026-11-27")
    store.put("beijing", "2026-11-26", FRAME)
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="altered"):
        store.get("beijing", "2026-11-26")
    with pytest.raises(InputError, match="no data"):
        store.get("beijing", "2025-01-01")


def test_purge_deletes_only_what_is_older_than_retention(tmp_path: Path) -> None:
    store = WorkingStore(tmp_path / "s", KEY, retention_days=14)
    for day in ("2026-11-01", "2026-11-12", "2026-11-13", "2026-11-26"):
        store.put("beijing", day, FRAME)
    gone = store.purge(dt.date(2026, 11, 27))
    assert sorted(e.period for e in gone) == ["2026-11-01", "2026-11-12"]
    assert sorted(e.period for e in store.entries()) == ["2026-11-13", "2026-11-26"]


def test_store_needs_a_budget_section() -> None:
    with pytest.raises(ConfigError, match=r"\[store\] needs a \[budget\]"):
        config(store={"path": "s", "key_file": "k"})


def test_stored_positions_reproduce_the_exact_aggregate() -> None:
    """Starting from the store gives the same exact counts as the raw input (bounds not binding)."""
    cfg = config(grid={"resolution": 7, "window": "3h"},
                 privacy={"max_cells_per_window": 64, "max_windows": 8})
    backend = get_backend("polars")
    pseudo = Pseudonymiser(TEST_KEY.encode(), "2026-11-26")
    raw = pl.read_parquet(SAMPLES / "beijing_pings.parquet")
    stored = backend.positions(raw, cfg, pseudo)
    assert set(stored.columns) == {"person_id", "ts", "lat", "lng", "group"}
    assert stored["person_id"].str.len_chars().min() == 64
    assert not set(stored["person_id"]) & set(raw["person_id"])
    assert (stored["ts"] >= PERIOD_START).all()
    a = backend.exact_cells(raw, cfg, pseudo, None)
    b = backend.exact_cells(stored, cfg, pseudo, None)
    assert a.counts.equals(b.counts)
    assert a.persons == b.persons
    assert a.bounding.dwell_minutes == b.bounding.dwell_minutes
