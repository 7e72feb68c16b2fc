"""Utility metrics on hand-made cases with known answers (privmob.analysis.evaluate)."""

from __future__ import annotations

import datetime as dt
import math

import h3
import polars as pl
import pytest

from privmob.analysis.evaluate import evaluate, haversine_km, jensen_shannon, truth_counts
from privmob.errors import InputError
from privmob.release.table import ReleasedTable
from tests.conftest import PERIOD_START, config, pings

T0 = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(hours=1)
# Cells at resolution 7 in Beijing, about 10 km apart north-south.
A = h3.latlng_to_cell(39.90, 116.40, 7)
B = h3.latlng_to_cell(39.99, 116.40, 7)
C = h3.latlng_to_cell(39.90, 116.50, 7)
D = h3.latlng_to_cell(39.80, 116.30, 7)


def frame(rows: list[tuple[str, dt.datetime, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"cell": pl.String, "window_start": pl.Datetime("us", "UTC"),
                                      "count": pl.Int64}, orient="row")


def centroid_km(a: str, b: str) -> float:
    return float(h3.great_circle_distance(h3.cell_to_latlng(a), h3.cell_to_latlng(b), unit="km"))


def test_identical_release_scores_perfectly() -> None:
    truth = frame([(A, T0, 100), (B, T0, 40), (C, T0, 25), (A, T1, 70), (D, T1, 30)])
    m = evaluate(truth, truth, k=3, min_count=10)
    assert m["emd_km"] == pytest.approx(0.0, abs=1e-9)
    assert m["jsd"] == pytest.approx(0.0, abs=1e-12)
    assert m["topk_recall"] == 1.0
    assert m["median_relative_error"] == 0.0
    assert m["suppressed_mass_share"] == 0.0
    assert m["spurious_rate"] == 0.0
    assert m["mass_ratio"] == 1.0
    assert m["emd_mass_share"] == 1.0
    assert m["released"] == 5 and m["true_keys"] == 5


def test_moved_mass_costs_the_distance_between_centroids() -> None:
    truth = frame([(A, T0, 100)])
    moved = frame([(B, T0, 100)])
    m = evaluate(moved, truth, min_count=10)
    assert m["emd_km"] == pytest.approx(centroid_km(A, B), rel=1e-3)
    assert 9 < m["emd_km"] < 11
    assert m["jsd"] == pytest.approx(1.0)  # disjoint supports
    assert m["topk_recall"] == 0.0
    assert m["suppressed_mass_share"] == 1.0
    assert m["spurious_rate"] == 1.0  # the released cell's truth is 0 < min_count


def test_half_the_mass_moved_costs_half_the_distance() -> None:
    truth = frame([(A, T0, 100)])
    release = frame([(A, T0, 50), (B, T0, 50)])
    m = evaluate(release, truth, min_count=10)
    assert m["emd_km"] == pytest.approx(centroid_km(A, B) / 2, rel=1e-3)
    # Scale does not matter: the heatmaps are normalised before transport.
    doubled = frame([(A, T0, 100), (B, T0, 100)])
    assert evaluate(doubled, truth, min_count=10)["emd_km"] == pytest.approx(m["emd_km"])


def test_emd_is_a_true_mass_weighted_average_over_windows() -> None:
    truth = frame([(A, T0, 100), (A, T1, 300)])
    release = frame([(A, T0, 100), (B, T1, 300)])
    m = evaluate(release, truth, min_count=10)
    assert m["emd_km"] == pytest.approx(0.75 * centroid_km(A, B), rel=1e-3)
    assert m["jsd"] == pytest.approx(0.75)


def test_window_with_nothing_released_has_no_emd_but_full_jsd() -> None:
    truth = frame([(A, T0, 100), (A, T1, 100)])
    release = frame([(A, T0, 100)])
    m = evaluate(release, truth, min_count=10)
    assert m["emd_km"] == pytest.approx(0.0, abs=1e-9)
    assert m["emd_mass_share"] == pytest.approx(0.5)
    assert m["jsd"] == pytest.approx(0.5)
    assert m["suppressed_mass_share"] == pytest.approx(0.5)


def test_spurious_rate_counts_released_cells_whose_truth_is_below_min_count() -> None:
    truth = frame([(A, T0, 100), (B, T0, 9), (C, T0, 10)])
    release = frame([(A, T0, 95), (B, T0, 55), (C, T0, 60), (D, T0, 54)])
    m = evaluate(release, truth, min_count=10)
    assert m["spurious_rate"] == pytest.approx(2 / 4)  # B (9) and D (absent: 0)
    assert evaluate(release, truth, min_count=9)["spurious_rate"] == pytest.approx(1 / 4)


def test_suppressed_mass_share_is_true_mass_of_unreleased_keys() -> None:
    truth = frame([(A, T0, 60), (B, T0, 30), (C, T0, 10)])
    release = frame([(A, T0, 64)])
    m = evaluate(release, truth, min_count=10)
    assert m["suppressed_mass_share"] == pytest.approx(0.4)
    assert m["mass_ratio"] == pytest.approx(0.64)
    assert m["released"] == 1


def test_median_relative_error_and_mae_over_released_rows() -> None:
    truth = frame([(A, T0, 100), (B, T0, 50), (C, T0, 20)])
    release = frame([(A, T0, 110), (B, T0, 45), (C, T0, 30), (D, T0, 3)])
    m = evaluate(release, truth, min_count=1)
    # relative errors 0.1, 0.1, 0.5 and 3 / max(0, 1) = 3 → median 0.3
    assert m["median_relative_error"] == pytest.approx(0.3)
    assert m["mae_released"] == pytest.approx((10 + 5 + 10 + 3) / 4)


def test_topk_recall_per_window() -> None:
    truth = frame([(A, T0, 100), (B, T0, 80), (C, T0, 60), (D, T0, 5),
                   (A, T1, 50), (B, T1, 40)])
    # Window 0: the release ranks C above B → of the true top 2 {A, B} only A is found.
    # Window 1: both found.
    release = frame([(A, T0, 101), (C, T0, 90), (B, T0, 70), (A, T1, 52), (B, T1, 39)])
    m = evaluate(release, truth, k=2, min_count=1)
    assert m["topk_recall"] == pytest.approx((0.5 + 1.0) / 2)
    assert evaluate(release, truth, k=3, min_count=1)["topk_recall"] == pytest.approx((1.0 + 1.0) / 2)


def test_od_flows_get_jsd_and_no_emd() -> None:
    schema = pl.Schema({"origin": pl.String(), "destination": pl.String(),
                        "window_start": pl.Datetime("us", "UTC"), "count": pl.Int64()})
    truth = pl.DataFrame([(A, B, T0, 30), (B, A, T0, 10)], schema=schema, orient="row")
    same = evaluate(truth, truth, min_count=1)
    assert same["jsd"] == pytest.approx(0.0, abs=1e-12)
    assert "emd_km" not in same
    swapped = pl.DataFrame([(C, D, T0, 30)], schema=schema, orient="row")
    assert evaluate(swapped, truth, min_count=1)["jsd"] == pytest.approx(1.0)


def test_jensen_shannon_known_values() -> None:
    assert jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
    assert jensen_shannon([2, 2], [1, 1]) == pytest.approx(0.0, abs=1e-12)
    # p = (1, 0), q = (1/2, 1/2): JSD = 1/2 [log2(4/3)] + 1/2 [1/2 log2(2/3) + 1/2 log2(2)]
    expected = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(2 / 3) + 0.5)
    assert jensen_shannon([1, 0], [1, 1]) == pytest.approx(expected)


def test_haversine_matches_h3() -> None:
    (la, lo), (lb, lob) = h3.cell_to_latlng(A), h3.cell_to_latlng(C)
    assert float(haversine_km(la, lo, lb, lob)) == pytest.approx(centroid_km(A, C), rel=1e-4)


def test_min_count_comes_from_the_manifest() -> None:
    truth = frame([(A, T0, 100), (B, T0, 5)])
    release = ReleasedTable(truth, {"min_count": 6})
    assert evaluate(release, truth)["spurious_rate"] == pytest.approx(0.5)
    with pytest.raises(InputError, match="min_count"):
        evaluate(truth, truth)


def test_bad_inputs_are_refused() -> None:
    truth = frame([(A, T0, 100)])
    with pytest.raises(InputError, match="cell"):
        evaluate(truth, truth.rename({"cell": "hex"}), min_count=1)
    with pytest.raises(InputError, match="more than once"):
        evaluate(pl.concat([truth, truth]), truth, min_count=1)
    with pytest.raises(InputError, match="k ="):
        evaluate(truth, truth, k=0, min_count=1)


def test_truth_counts_bounded_and_unbounded(key_env: str) -> None:
    t = PERIOD_START + 600  # 00:10 local, window 0
    lat_a, lng_a = h3.cell_to_latlng(A)
    lat_b, lng_b = h3.cell_to_latlng(B)
    rows = [
        # p1 is in A and B in the same hour: unbounded counts both, bounded (1 cell) one.
        ("p1", t, lat_a, lng_a, "confirmed"), ("p1", t + 60, lat_a, lng_a, "confirmed"),
        ("p1", t + 600, lat_b, lng_b, "confirmed"),
        ("p2", t, lat_a, lng_a, "suspected"),
        ("p3", t + 3600, lat_b, lng_b, "close_contact"),  # window 1
        ("p4", t, lat_a, lng_a, "general"),  # out of scope
    ]
    cfg = config(grid={"resolution": 7}, privacy={"max_cells_per_window": 1})
    unbounded = truth_counts(pings(rows), cfg, bounded=False)
    bounded = truth_counts(pings(rows), cfg, bounded=True)
    start = dt.datetime.fromtimestamp(PERIOD_START, dt.UTC)
    as_set = {(c, w, n) for c, w, n in unbounded.iter_rows()}
    assert as_set == {(A, start, 2), (B, start, 1), (B, start + dt.timedelta(hours=1), 1)}
    assert {(c, w, n) for c, w, n in bounded.iter_rows()} == {
        (A, start, 2), (B, start + dt.timedelta(hours=1), 1)}  # p1 keeps A: more dwell minutes
    assert bounded.schema["window_start"] == pl.Datetime("us", "UTC")
    assert evaluate(bounded, bounded, min_count=1)["jsd"] == 0.0
