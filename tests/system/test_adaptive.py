"""Adaptive releases (issue 12): a PrivTree partition over the H3 hierarchy, then counts
on its leaves — one table of mixed resolutions, every cell public, the budget split once."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import h3
import numpy as np
import polars as pl
import pytest

import privmob as pm
from privmob.backends import get_backend
from privmob.errors import ConfigError
from privmob.release.manifest import ManifestView
from privmob.stages.pseudonymise import Pseudonymiser
from tests.conftest import PERIOD, SAMPLES, TEST_KEY
from tests.system.test_release_leaks import exact_leaks, folder_fields, pings_d, square_boundary

BOUNDARY = SAMPLES / "beijing_boundary.geojson"
PINGS = SAMPLES / "beijing_pings.parquet"


def adaptive_job(boundary: Path = BOUNDARY, **adaptive: object) -> pm.JobConfig:
    return pm.JobConfig.from_dict({
        "job": {"operator": "tester", "period": PERIOD.isoformat(), "dataset": "adaptive-test"},
        "grid": {"boundary": str(boundary), "window": "1d"},
        "privacy": {"mechanism": "laplace", "epsilon": 1.0},
        "adaptive": dict(adaptive),
    })


@pytest.fixture(scope="module")
def sample_release(tmp_path_factory: pytest.TempPathFactory) -> pm.ReleasedTable:
    tmp = tmp_path_factory.mktemp("adaptive")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVMOB_PSEUDONYM_KEY", TEST_KEY)
        mp.setenv("PRIVMOB_LEDGER", str(tmp / "ledger.sqlite"))
        return pm.plan(adaptive_job()).release(PINGS, write_to=tmp / "release")


def test_one_table_of_mixed_resolutions_whose_cells_are_the_partitions_leaves(
        sample_release: pm.ReleasedTable) -> None:
    table, m = sample_release.table, sample_release.manifest
    assert m["resolution"] == "adaptive"
    assert table["resolution"].n_unique() >= 2  # dense areas finer than sparse ones
    cells = table["cell"].to_list()
    assert table["resolution"].to_list() == [h3.get_resolution(c) for c in cells]
    leaves = set(m["adaptive"]["leaf_cells"])
    assert set(cells) <= leaves
    assert m["adaptive"]["leaves"] == len(leaves) == m["n_keys"]  # × 1 window
    # a partition: no leaf lies under another
    for leaf in leaves:
        r = h3.get_resolution(leaf)
        coarser = range(m["adaptive"]["min_resolution"], r)
        assert not any(h3.cell_to_parent(leaf, q) in leaves for q in coarser)
    assert 4 <= min(m["resolutions"]) <= max(m["resolutions"]) <= 8
    assert (table["count"] >= m["release_threshold"]).all()
    # the bound readers see is the per-period cap, not the fixed path's per-window one
    view = ManifestView.of(m)
    assert (view.max_pairs, view.max_cells_per_window, view.max_windows) == (6, None, None)
    assert view.adaptive


def test_the_budget_is_split_once_between_partition_and_counts(sample_release: pm.ReleasedTable) -> None:
    m = sample_release.manifest
    split = m["budget_split"]
    assert set(split) == {"occupancy", "partition"}
    assert split["partition"]["epsilon"] == pytest.approx(0.15)
    assert split["occupancy"]["epsilon"] == pytest.approx(0.85)
    assert m["epsilon"] == pytest.approx(1.0)
    assert m["adaptive"]["epsilon"] == pytest.approx(0.15)
    # the threshold is set for the drawn key set: ≤ 1 expected spurious cell among them,
    # and a key of min_count - 1 persons published at most max_below_min_rate of the time
    b, n, t = m["noise_scale"], m["n_keys"], m["release_threshold"]

    def tail(x: int) -> float:  # P(Z ≥ x) of the discrete Laplace of scale b, x ≥ 1
        return float(np.exp(-x / b) / (1 + np.exp(-1 / b)))

    below, rate = m["min_count"] - 1, m["max_below_min_rate"]
    assert n * tail(t) <= 1.0
    assert tail(t - below) <= rate
    # and no lower threshold would do
    assert t == m["min_count"] or n * tail(t - 1) > 1.0 or tail(t - 1 - below) > rate


def test_explain_says_how_the_partition_is_drawn() -> None:
    text = pm.plan(adaptive_job()).explain()
    assert "adaptive H3" in text
    assert "PrivTree" in text
    assert "ε = 0.15 (15% of ε)" in text
    assert "≤ 6 (cell, window) pair(s) per person" in text
    assert "partition:privtree" in text


@pytest.mark.parametrize(("data", "message"), [
    ({"grid": {"window": "1d"}}, r"needs \[grid\] boundary"),
    ({"grid": {"boundary": str(BOUNDARY), "resolution": 4}}, "must be coarser"),
    ({"grid": {"boundary": str(BOUNDARY), "parent_resolutions": [6]}}, "parent_resolutions"),
    ({"grid": {"boundary": str(BOUNDARY)}, "adaptive_extra": {"tree_share": 1.0}}, "tree_share"),
    ({"grid": {"boundary": str(BOUNDARY)}, "adaptive_extra": {"max_pairs": 0}}, "max_pairs"),
])
def test_adaptive_jobs_are_checked_before_any_data(data: dict[str, object], message: str) -> None:
    extra = data.pop("adaptive_extra", {})
    assert isinstance(extra, dict)
    doc = {"job": {"operator": "t", "period": PERIOD.isoformat()}, "adaptive": extra, **data}
    with pytest.raises(ConfigError, match=message):
        pm.JobConfig.from_dict(doc)  # no data, no ledger: refused while reading the job


def test_the_spark_engine_runs_an_adaptive_release_as_polars_counts_it(tmp_path: Path) -> None:
    """A release through Spark draws its partition from Spark's tree counts, and its exact
    figures are those the Polars engine counts on the same (public) leaves."""
    sql = pytest.importorskip("pyspark.sql")
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        pytest.skip("the Spark engine needs a Java runtime (17+)")
    cfg = adaptive_job()
    running = sql.SparkSession.getActiveSession()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PRIVMOB_PSEUDONYM_KEY", TEST_KEY)
            mp.setenv("PRIVMOB_LEDGER", str(tmp_path / "ledger.sqlite"))
            released = pm.plan(cfg).release(PINGS, backend="spark")
    finally:  # the local session the engine started: not left to later tests' own settings
        started = sql.SparkSession.getActiveSession()
        if running is None and started is not None:
            started.stop()
    m, record = released.manifest, released.operator_record
    assert m["resolution"] == "adaptive" and m["adaptive"]["leaves"] == m["n_keys"] >= 2
    leaves = np.array(sorted(int(c, 16) for c in m["adaptive"]["leaf_cells"]), dtype=np.uint64)
    plan = pm.plan(cfg)
    exact = get_backend("polars").exact_cells(
        pm.read_pings(PINGS), cfg, Pseudonymiser(TEST_KEY.encode(), plan.linkage_label),
        plan.key_cells, partition=lambda counts: leaves)
    assert record["bounding"] == exact.bounding.as_dict()
    assert record["bounding"]["person_cell_windows_kept"] > 0


def test_removing_one_person_moves_the_leaf_counts_by_at_most_max_pairs() -> None:
    """Given a partition (public), the exact leaf counts of D and D minus one person differ
    in at most ``max_pairs`` keys, by one each: the sensitivity the noise is calibrated for."""
    cfg = adaptive_job(max_pairs=3)
    frame = pl.read_parquet(PINGS)
    leaves_seen: list[np.ndarray] = []

    def fixed(counts: pl.DataFrame) -> np.ndarray:  # a fixed partition: all res-6 cells seen
        cells = counts.filter((pl.col("cell") // (1 << 52) % 16) == 6)["cell"].to_numpy()
        leaves_seen.append(cells)
        return np.sort(cells).astype(np.uint64)

    pseud = Pseudonymiser(TEST_KEY.encode(), PERIOD.isoformat())
    engine = get_backend("polars")
    plan = pm.plan(cfg)
    movers = (frame.group_by("person_id").agg(pl.col("lat").std()).sort("lat", descending=True)
              ["person_id"].head(3).to_list())
    full = engine.exact_cells(pm.read_pings(frame), cfg, pseud, plan.key_cells, partition=fixed).counts
    for person in movers:
        less = engine.exact_cells(pm.read_pings(frame.filter(pl.col("person_id") != person)), cfg, pseud,
                                  plan.key_cells, partition=lambda c, f=leaves_seen[0]: np.sort(f))
        diff = full.join(less.counts, on=["cell", "window"], how="full", coalesce=True, suffix="_less")
        delta = (diff["count"].fill_null(0) - diff["count_less"].fill_null(0)).abs()
        assert delta.max() <= 1
        assert 1 <= delta.sum() <= 3


def test_an_adaptive_release_with_and_without_one_person_differs_only_by_noise(tmp_path: Path) -> None:
    """The issue-11 differencing check on an adaptive release: no field of the folder
    (partition included) is a function of the exact data."""
    boundary = square_boundary(tmp_path / "area.geojson")
    d = pings_d()
    inputs = {"D": d, "D-minus-P000": d.filter(pl.col("person_id") != "P000")}
    runs: dict[str, list[dict[str, str]]]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVMOB_PSEUDONYM_KEY", TEST_KEY)
        runs = {name: [] for name in inputs}
        # D and D' interleaved, a round per second: the manifest's created_at (seconds) then
        # differs between runs of one input, as it would between any two real releases.
        for run in range(3):
            if run:
                time.sleep(1.05)
            for name, frame in inputs.items():
                home = tmp_path / f"{name}-{run}"
                mp.setenv("PRIVMOB_LEDGER", str(home / "ledger.sqlite"))
                # A partition that is all but certain (ε_tree = 9: an empty cell splits with
                # p ≈ 2e-4), so its few discrete outcomes cannot line up by chance with D or
                # D'; the partition's own privacy is audited in tests/statistical/test_tree_dp.py.
                cfg = adaptive_job(boundary, tree_share=0.9).with_overrides(
                    job__reports=False, privacy__epsilon=10.0,
                    budget__ledger=str(home / "ledger.sqlite"), budget__epsilon_per_day=20.0)
                pm.plan(cfg).release(pm.read_pings(frame), write_to=home / "release")
                runs[name].append(folder_fields(home / "release"))
    manifest = json.loads((tmp_path / "D-0" / "release" / "manifest.json").read_text())
    assert manifest["adaptive"]["leaves"] >= 1
    assert exact_leaks(runs["D"], runs["D-minus-P000"]) == {}
