"""Invariants that must hold for every input (hypothesis-generated)."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import privmob as pm
from privmob.backends import get_backend
from privmob.stages import bound
from privmob.stages.pseudonymise import Pseudonymiser
from tests.conftest import PERIOD_START, TEST_KEY, config, fresh_ledger

# A small area (central Beijing) so that persons share cells at resolution 7.
LAT = st.floats(39.85, 39.98, allow_nan=False)
LNG = st.floats(116.30, 116.50, allow_nan=False)
GROUP = st.sampled_from(["confirmed", "suspected", "close_contact", "general"])
PING = st.tuples(
    st.integers(0, 15).map(lambda i: f"P{i:03d}"),
    st.integers(PERIOD_START - 3600, PERIOD_START + 86400 + 3600),
    LAT,
    LNG,
    GROUP,
)
FRAMES = st.lists(PING, min_size=1, max_size=300).map(
    lambda rows: pl.DataFrame(rows, schema=["person_id", "ts", "lat", "lng", "group"], orient="row")
)

DWELL = st.lists(
    st.tuples(st.integers(-5, 5), st.integers(0, 23), st.integers(1, 40), st.integers(1, 60)),
    min_size=1, max_size=400,
).map(lambda rows: pl.DataFrame(
    rows, schema={"pid": pl.Int64, "window": pl.Int32, "cell": pl.UInt64, "minutes": pl.Int64},
    orient="row",
).unique(["pid", "window", "cell"]))

PSEUDO = Pseudonymiser(TEST_KEY.encode(), "2026-11-26")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(DWELL, st.integers(1, 3), st.integers(1, 6))
def test_no_person_exceeds_its_bounds(frame: pl.DataFrame, k: int, w: int) -> None:
    kept = bound.bound(frame, k, w)
    per_window = kept.group_by("pid", "window").len()
    assert per_window.is_empty() or per_window["len"].max() <= k  # type: ignore[operator]
    per_person = kept.group_by("pid").agg(pl.col("window").n_unique())
    assert per_person.is_empty() or per_person["window"].max() <= w  # type: ignore[operator]
    # Bounding only removes: every kept row was in the input, unchanged.
    assert kept.join(frame, on=["pid", "window", "cell", "minutes"], how="anti").is_empty()
    # And it keeps as much as the bounds allow.
    expected = frame.group_by("pid").agg(pl.col("window").n_unique().clip(upper_bound=w)).height
    assert kept["pid"].n_unique() == expected


@FAST
@given(FRAMES, st.randoms(use_true_random=False))
def test_exact_aggregate_does_not_depend_on_row_order(frame: pl.DataFrame, rnd: object) -> None:
    cfg = config(grid={"resolution": 7}, privacy={"max_cells_per_window": 2, "max_windows": 3})
    backend = get_backend("polars")
    a = backend.exact_cells(frame, cfg, PSEUDO, None)
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=rnd.randint(0, 2**31))  # type: ignore[attr-defined]
    b = backend.exact_cells(shuffled, cfg, PSEUDO, None)
    assert a.counts.equals(b.counts)
    assert a.rows_by_status == b.rows_by_status
    assert a.bounding == b.bounding


@FAST
@given(FRAMES, st.integers(1, 40))
def test_no_released_count_below_min_count(frame: pl.DataFrame, min_count: int) -> None:
    cfg = config(grid={"resolution": 7}, job={"allow_empty": True},  # frames may hold no usable row
                 privacy={"min_count": min_count, "max_spurious_rate": 0.5, "epsilon": 5.0,
                          "max_windows": 2})
    p = pm.plan(cfg)
    with pytest.MonkeyPatch.context() as mp, fresh_ledger(epsilon_per_day=100):  # own budget
        mp.setenv("PRIVMOB_PSEUDONYM_KEY", TEST_KEY)
        release = p.release(frame)
    assert release.table.is_empty() or release.table["count"].min() >= min_count  # type: ignore[operator]
    assert release.manifest["release_threshold"] >= min_count
    assert (release.table["ci_low"] <= release.table["count"]).all()
    assert (release.table["ci_low"] <= release.table["ci_high"]).all()  # selection-aware: may lie below count
