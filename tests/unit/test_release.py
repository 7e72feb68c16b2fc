"""Behaviour of the public table and of writing a release (privmob.release.table)."""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import h3
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from privmob.config import DEFAULT_MARKING
from privmob.errors import InputError, ReleaseExistsError, ReleaseWriteError
from privmob.privacy.accountant import PrivacyCost
from privmob.privacy.intervals import selection_interval
from privmob.privacy.mechanism import NoiseModel, Sensitivity
from privmob.release import table as release
from privmob.release.table import RELEASE_FILES, ReleasedTable, build_table, suppress
from tests.conftest import PERIOD_START

SHANGHAI = dt.timezone(dt.timedelta(hours=8))
START = dt.datetime(2026, 11, 26, tzinfo=SHANGHAI)
CELLS = [h3.str_to_int(h3.latlng_to_cell(lat, 116.4, 8)) for lat in (39.90, 39.95, 40.00)]
MANIFEST = {"release_id": "rel-0001", "marking": DEFAULT_MARKING, "epsilon": 1.0,
            "mechanism": "laplace", "cells_suppressed": 7}


#: Discrete Laplace b = 2: 95% half-width 6; released at a threshold of 3.
NOISE = NoiseModel("laplace", 2.0, Sensitivity(1, 1), PrivacyCost(Fraction(1, 2)))
THRESHOLD = 3


def _table(noise: NoiseModel = NOISE, threshold: int = THRESHOLD) -> pl.DataFrame:
    cells = np.array([CELLS[2], CELLS[0], CELLS[1], CELLS[0]], dtype=np.uint64)
    windows = np.array([0, 3, 0, 0], dtype=np.int32)
    noisy = np.array([12, 40, 3, 25], dtype=np.int64)
    return build_table(cells, windows, noisy, period_start=START, window_seconds=3600,
                       noise=noise, threshold=threshold)


def _released() -> ReleasedTable:
    return ReleasedTable(table=_table(), manifest=dict(MANIFEST))


def _partials(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".partial-" in p.name]


# --- suppress ---------------------------------------------------------------------------------


def test_suppress_keeps_noisy_counts_at_or_above_threshold() -> None:
    noisy = np.array([-3, 0, 9, 10, 11, 500], dtype=np.int64)
    assert suppress(noisy, 10).tolist() == [False, False, False, True, True, True]


# --- build_table --------------------------------------------------------------------------------


def test_build_table_schema() -> None:
    t = _table()
    assert t.schema == pl.Schema({
        "cell": pl.String,
        "window_start": pl.Datetime("us", "UTC"),
        "count": pl.Int64,
        "ci_low": pl.Int64,
        "ci_high": pl.Int64,
        "near_threshold": pl.Boolean,
    })


def test_build_table_values() -> None:
    t = _table()
    rows = {(r["cell"], r["window_start"]): r for r in t.iter_rows(named=True)}
    local_midnight_utc = dt.datetime(2026, 11, 25, 16, tzinfo=dt.UTC)
    r = rows[(h3.int_to_str(CELLS[0]), local_midnight_utc + dt.timedelta(hours=3))]
    # far above the threshold: the usual count ± 6
    assert (r["count"], r["ci_low"], r["ci_high"], r["near_threshold"]) == (40, 34, 46, False)
    r = rows[(h3.int_to_str(CELLS[1]), local_midnight_utc)]
    # at the threshold: any count up to it looks the same once published (Laplace tails are
    # memoryless), so the interval reaches down to 0 and not up to 3 + 6
    assert (r["count"], r["ci_low"], r["ci_high"], r["near_threshold"]) == (3, 0, 7, True)
    assert len(rows) == 4


def test_build_table_window_start_is_period_start_plus_windows() -> None:
    t = _table()
    starts = set(t["window_start"].to_list())
    assert starts == {START.astimezone(dt.UTC), (START + dt.timedelta(hours=3)).astimezone(dt.UTC)}
    first = t["window_start"].min()
    assert isinstance(first, dt.datetime)
    assert int(first.timestamp()) == PERIOD_START


def test_build_table_intervals_are_the_selection_aware_ones() -> None:
    wide = NoiseModel("laplace", 10.0, Sensitivity(1, 1), PrivacyCost(Fraction(1, 10)))
    t = _table(wide, threshold=3)
    low, high = selection_interval(wide, 3, t["count"].to_numpy())
    assert t["ci_low"].to_list() == low.tolist() and t["ci_high"].to_list() == high.tolist()
    assert (t["ci_low"] >= 0).all()
    half = wide.ci_halfwidth(0.95)
    # the old interval count ± h is gone where the threshold matters
    assert (t["ci_high"] < t["count"] + half).any()


def test_build_table_near_threshold_is_exactly_count_below_threshold_plus_halfwidth() -> None:
    half = NOISE.ci_halfwidth(0.95)
    noisy = np.arange(THRESHOLD, THRESHOLD + 3 * half, dtype=np.int64)
    t = build_table(np.full(noisy.size, CELLS[0], dtype=np.uint64),
                    np.arange(noisy.size, dtype=np.int32), noisy, period_start=START,
                    window_seconds=3600, noise=NOISE, threshold=THRESHOLD)
    assert t["near_threshold"].to_list() == [int(v) < THRESHOLD + half for v in noisy]
    assert t["near_threshold"].sum() == half


def test_build_table_refuses_counts_below_the_threshold() -> None:
    with pytest.raises(InputError, match="position"):
        _table(threshold=4)


def test_build_table_cells_are_h3_strings() -> None:
    t = _table()
    assert set(t["cell"]) == {h3.int_to_str(c) for c in CELLS}
    assert all(h3.is_valid_cell(c) for c in t["cell"])


def test_build_table_is_sorted_by_window_then_cell() -> None:
    t = _table()
    assert t.equals(t.sort("window_start", "cell"))


def test_build_table_with_other_window_lengths() -> None:
    t = build_table(np.array([CELLS[0]] * 2, dtype=np.uint64), np.array([0, 95], dtype=np.int32),
                    np.array([3, 4], dtype=np.int64), period_start=START, window_seconds=900,
                    noise=NOISE, threshold=THRESHOLD)
    last = t["window_start"].max()
    assert isinstance(last, dt.datetime)
    assert last - START == dt.timedelta(minutes=15 * 95)


def test_build_table_empty() -> None:
    t = build_table(np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int32),
                    np.zeros(0, dtype=np.int64), period_start=START, window_seconds=3600,
                    noise=NOISE, threshold=THRESHOLD)
    assert t.height == 0
    assert t.columns == ["cell", "window_start", "count", "ci_low", "ci_high", "near_threshold"]
    assert t.schema["window_start"] == pl.Datetime("us", "UTC")


def test_released_table_repr_shows_no_rows() -> None:
    text = repr(_released())
    assert "4 cells released" in text
    assert h3.int_to_str(CELLS[0]) not in text


# --- write: content -------------------------------------------------------------------------------


def test_write_creates_exactly_the_release_files(tmp_path: Path) -> None:
    target = tmp_path / "out" / "release"
    assert _released().write(target) == target
    assert sorted(os.listdir(target)) == sorted(RELEASE_FILES)
    assert set(RELEASE_FILES) == {"release.parquet", "release.csv", "release.geojson", "manifest.json"}
    assert _partials(target.parent) == []


def test_write_accepts_a_string_path(tmp_path: Path) -> None:
    target = tmp_path / "r"
    assert _released().write(str(target)) == target
    assert (target / "manifest.json").is_file()


def test_manifest_files_digests_match_the_bytes(tmp_path: Path) -> None:
    target = _released().write(tmp_path / "r")
    manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    files = manifest["files"]
    assert set(files) == set(RELEASE_FILES) - {"manifest.json"}
    for name, digest in files.items():
        assert hashlib.sha256((target / name).read_bytes()).hexdigest() == digest


def test_manifest_keeps_the_given_fields(tmp_path: Path) -> None:
    rel = _released()
    target = rel.write(tmp_path / "r")
    manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    for key, value in MANIFEST.items():
        assert manifest[key] == value
    assert "files" not in rel.manifest  # the in-memory manifest is not mutated


def test_parquet_round_trips_and_carries_the_marking(tmp_path: Path) -> None:
    rel = _released()
    target = rel.write(tmp_path / "r")
    assert pl.read_parquet(target / "release.parquet").equals(rel.table)
    meta = pq.read_schema(target / "release.parquet").metadata
    assert meta[b"privmob.marking"].decode() == DEFAULT_MARKING
    assert meta[b"privmob.release_id"] == b"rel-0001"


def test_csv_has_the_rows_with_offset_times(tmp_path: Path) -> None:
    rel = _released()
    target = rel.write(tmp_path / "r")
    lines = (target / "release.csv").read_text(encoding="utf-8").splitlines()
    # First line: the marking as a comment, then a plain CSV.
    assert lines[0].startswith("# ") and rel.manifest["marking"] in lines[0]
    assert lines[1] == "cell,window_start,count,ci_low,ci_high,near_threshold"
    assert len(lines) == 2 + rel.table.height
    assert lines[2].split(",")[1] == "2026-11-25T16:00:00+00:00"  # no zone in the manifest: UTC
    back = pl.read_csv(target / "release.csv", schema_overrides={"cell": pl.String},
                       comment_prefix="#")
    assert back["count"].to_list() == rel.table["count"].to_list()


def test_geojson_has_one_hexagon_per_row_with_the_marking(tmp_path: Path) -> None:
    rel = _released()
    target = rel.write(tmp_path / "r")
    gj = json.loads((target / "release.geojson").read_text(encoding="utf-8"))
    assert gj["type"] == "FeatureCollection"
    assert len(gj["features"]) == rel.table.height
    assert gj["privmob"]["marking"] == DEFAULT_MARKING
    feat = gj["features"][0]
    ring = feat["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1]
    assert len(ring) == 7  # a hexagon, closed
    lat, lng = h3.cell_to_latlng(feat["properties"]["cell"])
    lngs, lats = [p[0] for p in ring], [p[1] for p in ring]
    assert min(lngs) < lng < max(lngs) and min(lats) < lat < max(lats)  # lng/lat order
    assert feat["properties"]["marking"] == DEFAULT_MARKING
    near = [f["properties"]["near_threshold"] for f in gj["features"]]
    assert near == rel.table["near_threshold"].to_list()


def test_write_empty_table(tmp_path: Path) -> None:
    empty = build_table(np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int32),
                        np.zeros(0, dtype=np.int64), period_start=START, window_seconds=3600,
                        noise=NOISE, threshold=THRESHOLD)
    target = ReleasedTable(table=empty, manifest=dict(MANIFEST)).write(tmp_path / "r")
    assert sorted(os.listdir(target)) == sorted(RELEASE_FILES)
    assert pl.read_parquet(target / "release.parquet").height == 0


# --- write: existing targets -------------------------------------------------------------------------


def test_refuses_a_non_empty_directory_and_leaves_it_untouched(tmp_path: Path) -> None:
    target = tmp_path / "r"
    target.mkdir()
    (target / "old.txt").write_text("previous release")
    (target / "sub").mkdir()
    before = sorted(p.relative_to(target).as_posix() for p in target.rglob("*"))
    with pytest.raises(ReleaseExistsError, match="not empty"):
        _released().write(target)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == before
    assert (target / "old.txt").read_text() == "previous release"
    assert _partials(tmp_path) == []


def test_refuses_a_previous_release(tmp_path: Path) -> None:
    target = _released().write(tmp_path / "r")
    digest = hashlib.sha256((target / "manifest.json").read_bytes()).hexdigest()
    with pytest.raises(ReleaseExistsError):
        ReleasedTable(table=_table(threshold=2),
                      manifest={**MANIFEST, "release_id": "rel-0002"}).write(target)
    assert hashlib.sha256((target / "manifest.json").read_bytes()).hexdigest() == digest


def test_refuses_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "r"
    target.write_text("not a folder")
    with pytest.raises(ReleaseExistsError):
        _released().write(target)
    assert target.read_text() == "not a folder"


def test_release_errors_subclass_the_builtins() -> None:
    assert issubclass(ReleaseExistsError, FileExistsError)
    assert issubclass(ReleaseWriteError, OSError)


def test_an_empty_existing_directory_is_fine(tmp_path: Path) -> None:
    target = tmp_path / "r"
    target.mkdir()
    assert _released().write(target) == target
    assert sorted(os.listdir(target)) == sorted(RELEASE_FILES)
    assert _partials(tmp_path) == []


# --- write: failures leave nothing behind -------------------------------------------------------------


def _fail(*_: Any, **__: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_failure_while_writing_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(release, "write_marked_parquet", _fail)
    target = tmp_path / "r"
    with pytest.raises(ReleaseWriteError, match="nothing was published"):
        _released().write(target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_failure_after_some_files_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync
    calls = {"n": 0}

    def flaky_fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    monkeypatch.setattr(release.os, "fsync", flaky_fsync)
    target = tmp_path / "r"
    with pytest.raises(ReleaseWriteError):
        _released().write(target)
    assert calls["n"] >= 3
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_failure_at_rename_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(release.os, "rename", _fail)
    target = tmp_path / "r"
    with pytest.raises(ReleaseWriteError):
        _released().write(target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_concurrent_release_at_rename_is_reported_as_existing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def taken(*_: Any) -> None:
        raise OSError(errno.ENOTEMPTY, "Directory not empty")

    monkeypatch.setattr(release.os, "rename", taken)
    with pytest.raises(ReleaseExistsError, match="another run"):
        _released().write(tmp_path / "r")
    assert _partials(tmp_path) == []


def test_non_os_failure_also_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: ReleasedTable) -> dict[str, Any]:
        raise RuntimeError("bug in geojson")

    monkeypatch.setattr(ReleasedTable, "to_geojson", boom)
    target = tmp_path / "r"
    with pytest.raises(RuntimeError, match="bug in geojson"):
        _released().write(target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_failure_into_an_empty_existing_directory_keeps_it_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "r"
    target.mkdir()
    monkeypatch.setattr(release, "write_marked_parquet", _fail)
    with pytest.raises(ReleaseWriteError):
        _released().write(target)
    assert list(target.iterdir()) == []
    assert _partials(tmp_path) == []


def test_read_only_parent_is_a_write_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, for whom chmod does not restrict: simulate the refusal instead.
    def denied(*_: Any, **__: Any) -> str:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    target = tmp_path / "r"
    with pytest.raises(ReleaseWriteError, match="nothing was published"):
        _released().write(target)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_parent_path_is_a_write_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ReleaseWriteError):
        _released().write(blocker / "r")
    assert blocker.read_text() == "x"


def test_read_round_trips_a_written_release(tmp_path: Path) -> None:
    rel = _released()
    target = rel.write(tmp_path / "r")
    back = ReleasedTable.read(target)
    assert back.table.equals(rel.table)
    assert back.manifest["release_id"] == rel.manifest["release_id"]
    assert back.flows is None and dict(back.levels) == {}
    with pytest.raises(InputError, match="not a release folder"):
        ReleasedTable.read(tmp_path)
