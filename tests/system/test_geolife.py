"""The release path on real, dense GPS traces (GeoLife, ../shared/data; skipped without it)."""

from __future__ import annotations

import polars as pl
import pytest

import privmob as pm
from privmob.backends import get_backend
from privmob.stages.pseudonymise import Pseudonymiser
from tests.conftest import TEST_KEY, shared_data

GEOLIFE_ROWS = 4_493_359


@pytest.fixture(scope="module")
def traces() -> pl.DataFrame:
    path = shared_data("geolife", "traces.csv.gz")
    return pl.read_csv(path, schema_overrides={"person_id": pl.String, "ts": pl.String})


def geolife_config(**privacy: object) -> pm.JobConfig:
    return pm.JobConfig.from_dict({
        "job": {"operator": "tester", "period": "2008-10-25", "dataset": "geolife"},
        "scope": {"assume_group": "close_contact"},  # GeoLife has no group column
        "grid": {"resolution": 8, "window": "1h"},
        "privacy": {"max_cells_per_window": 1, "max_windows": 24, **privacy},
    })


@pytest.mark.shared_data
def test_release_on_geolife_keeps_invariants(traces: pl.DataFrame, key_env: str) -> None:
    cfg = geolife_config()
    release = pm.plan(cfg).release(traces)
    m, op = release.manifest, release.operator_record
    assert op["rows_in"] == GEOLIFE_ROWS
    assert op["rows_bad"] == {}  # the source dropped the lat 400.17 fix already
    assert op["rows_out_of_scope"] == 0
    assert 5 <= op["persons"] <= 28
    assert m["keys"] == "threshold" and m["threshold"]["delta"] <= cfg.privacy.delta
    assert release.table.is_empty() or release.table["count"].min() >= m["release_threshold"]
    # Dense GPS: a person touches several res-8 cells an hour, so bounding to one cell per
    # window drops most person-cell-windows; keeping the cell of longest dwell keeps far more
    # of the time spent than a random one-cell-per-hour choice would.
    b = op["bounding"]
    assert b["person_cell_windows_dropped_share"] > 0.5
    assert b["dwell_minutes_kept_share"] > 1.2 * random_choice_share(traces, cfg)


def random_choice_share(traces: pl.DataFrame, cfg: pm.JobConfig) -> float:
    """Expected share of dwell minutes kept by a uniformly random cell per person-hour."""
    import polars_h3 as plh3

    start, end = int(cfg.period_start.timestamp()), int(cfg.period_end.timestamp())
    t = pl.col("ts").str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC").dt.epoch("s")
    minutes = (
        traces.with_columns(t=t)
        .filter((pl.col("t") >= start) & (pl.col("t") < end))
        .with_columns(cell=plh3.latlng_to_cell("lat", "lng", 8), w=pl.col("t") // 3600,
                      minute=pl.col("t") // 60)
        .unique(["person_id", "w", "cell", "minute"])
    )
    per_cell = minutes.group_by("person_id", "w", "cell").len()
    per_window = per_cell.group_by("person_id", "w").agg(total=pl.col("len").sum(), cells=pl.len())
    return float((per_window["total"] / per_window["cells"]).sum() / per_window["total"].sum())


@pytest.mark.shared_data
def test_bounding_on_geolife_limits_every_person(traces: pl.DataFrame) -> None:
    cfg = geolife_config(max_cells_per_window=2, max_windows=5)
    exact = get_backend("polars").exact_cells(
        traces, cfg, Pseudonymiser(TEST_KEY.encode(), "2008-10-25"), None
    )
    counts = exact.counts
    # Each person adds at most k cells to a window and appears in at most w windows.
    per_window = counts.group_by("window").agg(pl.col("count").sum())
    assert (per_window["count"] <= 2 * exact.persons).all()
    assert counts["count"].sum() <= exact.persons * 2 * 5
    assert counts["window"].n_unique() <= 24
    assert exact.bounding.person_cell_windows_kept <= exact.persons * 2 * 5
