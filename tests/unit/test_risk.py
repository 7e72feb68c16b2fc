"""Unicity (privmob.analysis.risk): how few (cell, hour) points single a person out."""

from __future__ import annotations

import time

import h3
import polars as pl
import pytest

from privmob.analysis.risk import unicity
from privmob.errors import ConfigError, InputError, SchemaError
from tests.conftest import PERIOD_START, SAMPLES, shared_data

CELLS = [h3.cell_to_latlng(h3.latlng_to_cell(39.90 + 0.02 * i, 116.40, 8)) for i in range(8)]


def _trace(person: str, points: list[tuple[int, int]]) -> list[tuple[object, ...]]:
    """Pings at (cell index, hour) points, two pings per point (a trace, not a point list)."""
    return [(person, PERIOD_START + hour * 3600 + s, *CELLS[cell], "confirmed")
            for cell, hour in points for s in (60, 1200)]


def _frame(rows: list[tuple[object, ...]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["person_id", "ts", "lat", "lng", "group"], orient="row")


TWINS = [(0, 8), (1, 9), (2, 12), (3, 18), (0, 20)]


def test_two_persons_sharing_every_point_are_never_unique() -> None:
    """a and b share every point, c shares none: exactly one person in three is unique."""
    frame = _frame(_trace("a", TWINS) + _trace("b", TWINS)
                   + _trace("c", [(4, 8), (5, 9), (6, 12), (7, 18), (4, 21)]))
    table = unicity(frame, trials=7, seed=3)
    assert table["points"].to_list() == [1, 2, 3, 4]
    assert table["persons"].to_list() == [3] * 4
    assert table["draws"].to_list() == [21] * 4
    assert table["unicity"].to_list() == pytest.approx([1 / 3] * 4)


def test_a_shared_point_identifies_nobody_but_a_second_one_does() -> None:
    """Everyone shares the home cell at night; each has a workplace of their own. One known
    point is a work point with probability 1/2, so unicity is ~0.5 at p = 1 and 1 at p = 2."""
    rows = []
    for i, person in enumerate("abcd"):
        rows += _trace(person, [(0, 2), (1 + i, 10)])
    table = unicity(_frame(rows), points=[1, 2], trials=400, seed=0)
    p1, p2 = table["unicity"].to_list()
    assert 0.4 < p1 < 0.6
    assert p2 == 1.0


def test_short_traces_are_tested_on_all_their_points() -> None:
    rows = _trace("a", [(0, 1)]) + _trace("b", [(0, 1), (1, 2)]) + _trace("c", [(0, 1), (1, 2), (2, 3)])
    table = unicity(_frame(rows), points=[1, 3], trials=5)
    assert table["short_traces"].to_list() == [0, 2]
    # At p = 3: a knows only (0, 1), shared by all → not unique; b's two points are in c's
    # trace too → not unique; c is the only one with (2, 3) → unique.
    assert table.filter(pl.col("points") == 3)["unicity"].item() == pytest.approx(1 / 3)


def test_input_without_group_raw_strings_and_bad_rows() -> None:
    """Pseudonymised input has no group column; bad rows are left out, not fatal."""
    frame = pl.DataFrame({
        "person_id": ["x", "x", "y", "", "z"],
        "ts": ["2026-11-26T08:05:00+08:00", "2026-11-26T09:05:00+08:00", "2026-11-26T08:10:00",
               "2026-11-26T08:10:00", "not-a-time"],
        "lat": ["39.9", "39.95", "39.9", "39.9", "39.9"],
        "lng": ["116.4", "116.4", "116.4", "116.4", "116.4"],
    })
    table = unicity(frame, points=[1, 2], trials=50, seed=1)
    assert table["persons"].to_list() == [2, 2]
    # y has one point, shared with x; x's second point is x's alone.
    assert table["unicity"][1] == pytest.approx(0.5)


def test_windows_align_to_local_midnight() -> None:
    """23:30 and 00:10 local are different 1h windows and, with window = '1d', different days."""
    t0 = PERIOD_START - 1800  # 23:30 the day before, local
    rows = [("a", t0, *CELLS[0], "c"), ("b", t0 + 2400, *CELLS[0], "c")]
    daily = unicity(_frame(rows), points=[1], window="1d", trials=3)
    assert daily["unicity"].item() == 1.0
    rows = [("a", PERIOD_START + 60, *CELLS[0], "c"), ("b", PERIOD_START + 80_000, *CELLS[0], "c")]
    assert unicity(_frame(rows), points=[1], window="1d", trials=3)["unicity"].item() == 0.0


def test_rejects_bad_arguments() -> None:
    frame = _frame(_trace("a", [(0, 1)]))
    with pytest.raises(ConfigError, match="points"):
        unicity(frame, points=[0, 1])
    with pytest.raises(ConfigError, match="points"):
        unicity(frame, points=[])
    with pytest.raises(ConfigError, match="trials"):
        unicity(frame, trials=0)
    with pytest.raises(ConfigError, match="resolution"):
        unicity(frame, resolution=16)
    with pytest.raises(ConfigError, match="window"):
        unicity(frame, window="7m")
    with pytest.raises(SchemaError, match="lat"):
        unicity(frame.drop("lat"))
    with pytest.raises(InputError, match="no valid ping"):
        unicity(frame.with_columns(pl.lit(400.0).alias("lat")))


@pytest.fixture(scope="module")
def sample_table() -> pl.DataFrame:
    tick = time.perf_counter()
    table = unicity(SAMPLES / "beijing_pings.parquet", trials=5, seed=0)
    print(f"\n[unicity] synthetic sample, res 8 × 1h, 5 draws per person "
          f"({time.perf_counter() - tick:.1f} s):\n{table}")
    return table


def test_unicity_grows_with_known_points_on_the_sample(sample_table: pl.DataFrame) -> None:
    share = sample_table["unicity"].to_list()
    assert share == sorted(share)
    assert share[0] < 0.5 < share[-1]  # one point rarely, four points usually, single one out
    assert sample_table["persons"].to_list() == [4000] * 4


def test_unicity_is_deterministic_with_its_seed(sample_table: pl.DataFrame) -> None:
    again = unicity(SAMPLES / "beijing_pings.parquet", trials=5, seed=0)
    assert again.equals(sample_table)
    other = unicity(SAMPLES / "beijing_pings.parquet", trials=5, seed=1)
    assert not other.equals(sample_table)


@pytest.mark.slow
@pytest.mark.shared_data
def test_unicity_of_real_geolife_traces() -> None:
    """28 real GeoLife users: measure (and print) how identifying their traces are."""
    path = shared_data("geolife", "traces.csv.gz")
    tick = time.perf_counter()
    traces = pl.read_csv(path, schema_overrides={"person_id": pl.String, "ts": pl.String}).with_columns(
        pl.col("ts").str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC"))
    table = unicity(traces, trials=50, seed=0)
    print(f"\n[unicity] GeoLife, res 8 × 1h, 50 draws per person "
          f"({time.perf_counter() - tick:.1f} s):\n{table}")
    share = table["unicity"].to_list()
    assert share == sorted(share)
    assert share[-1] > 0.9  # four points single out practically everyone
