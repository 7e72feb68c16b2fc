"""Adaptive releases with coarser totals (issue 12): parent = sum of its leaves in the release.

With ``[grid] parent_resolutions`` (each at or above ``[adaptive] min_resolution``), an
adaptive release also publishes, per parent cell and window, the kept (person, leaf,
window) pairs under it — the sum of its leaves' counts. Every key of the leaves and the
levels is noised, the values are made consistent across the hierarchy (Hay et al. 2010
least squares, then non-negative and whole), and only then suppressed with the usual
threshold rule: what a reader adds up matches what the release shows.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import h3
import numpy as np
import polars as pl
import pytest

import privmob as pm
from privmob.backends import get_backend
from privmob.errors import ConfigError
from privmob.privacy import noising
from privmob.privacy.accountant import compose
from privmob.privacy.mechanism import Sensitivity, calibrate, rho_to_epsilon
from privmob.privacy.tablespec import PairSensitivity, PublicKeys, TableSpec, parent_cells, with_leaves
from privmob.stages.pseudonymise import Pseudonymiser
from tests.conftest import PERIOD, PERIOD_START, SAMPLES, TEST_KEY

BEIJING = SAMPLES / "beijing_boundary.geojson"
#: A res-5 cell in Beijing: the small test area is its hexagon.
AREA = h3.latlng_to_cell(39.91, 116.40, 5)


def job(boundary: Path, *, parent_resolutions: list[int], resolution: int = 8, window: str = "1d",
        mechanism: str = "laplace", epsilon: float = 1.0, **adaptive: object) -> pm.JobConfig:
    return pm.JobConfig.from_dict({
        "job": {"operator": "tester", "period": PERIOD.isoformat(), "dataset": "consistency-test",
                "reports": False},
        "grid": {"boundary": str(boundary), "resolution": resolution, "window": window,
                 "parent_resolutions": parent_resolutions},
        "privacy": {"mechanism": mechanism, "epsilon": epsilon, "delta": 1e-6},
        "adaptive": dict(adaptive),
    })


def hexagon(path: Path, cell: str = AREA) -> Path:
    ring = [[lng, lat] for lat, lng in h3.cell_to_boundary(cell)]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"name": "area"},
        "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}}]}), encoding="utf-8")
    return path


def stays(cells: list[int], persons: int, hours: list[int], prefix: str) -> list[tuple[object, ...]]:
    """``persons`` persons per cell, each staying 50 minutes at its centre from each hour
    of ``hours`` (cell i's persons move to cell i + k at the k-th hour)."""
    rows: list[tuple[object, ...]] = []
    for i in range(len(cells)):
        for p in range(persons):
            pid = f"{prefix}{i}-{p}"
            for k, hour in enumerate(hours):
                lat, lng = h3.cell_to_latlng(h3.int_to_str(cells[(i + k) % len(cells)]))
                rows += [(pid, PERIOD_START + hour * 3600 + 600 * m, lat, lng, "confirmed")
                         for m in range(6)]
    return rows


def _parent(cell: int, resolution: int) -> int:
    return int(h3.str_to_int(h3.cell_to_parent(h3.int_to_str(cell), resolution)))


def frame(rows: list[tuple[object, ...]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["person_id", "ts", "lat", "lng", "group"], orient="row")


# -- the job is checked before any data ------------------------------------------------------

@pytest.mark.parametrize("parents", [[4], [3, 4], [2]])
def test_parent_resolutions_at_or_above_the_roots_are_accepted(parents: list[int]) -> None:
    cfg = job(BEIJING, parent_resolutions=parents, min_resolution=4)
    assert cfg.grid.parent_resolutions == tuple(sorted(parents, reverse=True))
    assert cfg.adaptive is not None


@pytest.mark.parametrize("parents", [[5], [4, 6], [7]])
def test_parent_resolutions_finer_than_the_roots_are_refused_with_what_to_do(parents: list[int]) -> None:
    with pytest.raises(ConfigError, match=r"finer than \[adaptive\] min_resolution = 4") as err:
        job(BEIJING, parent_resolutions=parents, min_resolution=4)
    finer = sorted(r for r in parents if r > 4)
    assert str(finer) in str(err.value) and "lower min_resolution" in str(err.value)


# -- the budget split -----------------------------------------------------------------------

@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_the_split_lists_the_levels_with_the_adaptive_bound_and_composes(mechanism: str) -> None:
    cfg = job(BEIJING, parent_resolutions=[4, 3], mechanism=mechanism, max_pairs=4).with_overrides(
        grid__parent_epsilon=0.25)
    plan = pm.plan(cfg)
    specs = plan.specs
    assert [t.name for t in specs.tables] == ["partition", "occupancy", "occupancy_res4", "occupancy_res3"]
    assert plan.cost == compose([t.cost for t in specs.tables], rho_to_epsilon) == specs.cost
    assert plan.cost.epsilon_basic == sum((t.cost.epsilon for t in specs.tables), Fraction(0))
    key_cells = plan.key_cells
    assert key_cells is not None
    privacy = pm.JobConfig.from_dict({"job": {"operator": "t", "period": PERIOD.isoformat()},
                                      "privacy": {"mechanism": mechanism, "epsilon": 0.25,
                                                  "delta": 1e-6}}).privacy
    for res, level in specs.levels.items():
        assert float(level.cost.epsilon) == 0.25 and level.cost.rho_delta == 0  # public keys
        assert level.noise.mechanism == specs.occupancy.noise.mechanism == mechanism
        # pairs, not distinct persons: L1 = max_pairs, and one key can take them all (L2 too)
        assert isinstance(level.sensitivity, PairSensitivity)
        assert (level.sensitivity.l1, level.sensitivity.l2) == (4, 4.0)
        assert level.noise.scale == calibrate(privacy, PairSensitivity(4, 1)).scale
        keys = level.keys
        assert isinstance(keys, PublicKeys)
        assert np.array_equal(keys.axes[0][1], parent_cells(key_cells, res))
        # ≤ max_spurious_cells expected spurious keys among the level's keys, like the leaves
        assert level.threshold >= cfg.privacy.min_count
        assert keys.n_keys * level.noise.tail(level.threshold) <= 1.0
    if mechanism == "gaussian":  # L2 = max_pairs, not √max_pairs: twice the noise at 4 pairs
        assert specs.levels[4].noise.scale == pytest.approx(
            2 * calibrate(privacy, Sensitivity(4, 1)).scale)


# -- the engine: levels count pairs --------------------------------------------------------

def test_an_adaptive_level_counts_kept_pairs_the_sum_of_its_leaves(tmp_path: Path) -> None:
    """A person with two leaves under one parent in one window counts twice there."""
    children = sorted(h3.str_to_int(c) for c in h3.cell_to_children(AREA, 6))
    cfg = job(hexagon(tmp_path / "area.geojson"), parent_resolutions=[5, 4], resolution=6,
              min_resolution=5, max_pairs=2)
    plan = pm.plan(cfg)
    both = stays(children[:2], 3, [8, 10], "two")  # six persons, both leaves each, one window
    one = stays(children[2:3], 4, [8], "one")        # four persons, one leaf
    pseud = Pseudonymiser(TEST_KEY.encode(), PERIOD.isoformat())
    leaves = np.array(children, dtype=np.uint64)
    exact = get_backend("polars").exact_cells(pm.read_pings(frame(both + one)), cfg, pseud,
                                              plan.key_cells, partition=lambda _counts: leaves)
    leaf_counts = dict(zip(exact.counts["cell"].to_list(), exact.counts["count"].to_list(), strict=True))
    assert leaf_counts == {children[0]: 6, children[1]: 6, children[2]: 4}  # distinct persons
    parent5, parent4 = h3.str_to_int(AREA), h3.str_to_int(h3.cell_to_parent(AREA, 4))
    # 16 pairs = 6 + 6 + 4, the leaves' sum (10 distinct persons)
    assert exact.levels[5].select("cell", "window", "count").rows() == [(parent5, 0, 16)]
    assert exact.levels[4].select("cell", "window", "count").rows() == [(parent4, 0, 16)]


# -- consistency: parent = sum of its leaves, non-negative, whole ---------------------------

def _partition(cfg: pm.JobConfig) -> tuple[pm.Plan, TableSpec, np.ndarray]:
    """A fixed mixed-resolution partition of the Beijing roots (res 4): some roots kept,
    the others split into their res-5 children, one of which split again to res 6."""
    plan = pm.plan(cfg)
    roots = plan.specs.partition.keys.axes[0][1]  # type: ignore[union-attr]
    leaves: list[int] = []
    for i, root in enumerate(roots.tolist()):
        if i % 3 == 0:
            leaves.append(root)
            continue
        kids = sorted(h3.str_to_int(c) for c in h3.cell_to_children(h3.int_to_str(root), 5))
        leaves += kids[1:]
        leaves += [h3.str_to_int(c) for c in h3.cell_to_children(h3.int_to_str(kids[0]), 6)]
    cells = np.array(sorted(leaves), dtype=np.uint64)
    return plan, with_leaves(plan.specs.occupancy, cells, cfg), cells


def _truth(cells: np.ndarray, n_win: int, seed: int) -> np.ndarray:
    """Sparse exact leaf counts (most zero, a few large), cell-major."""
    rng = np.random.default_rng(seed)
    busy = rng.random((cells.size, n_win)) < 0.2
    return np.where(busy, rng.integers(1, 300, (cells.size, n_win)), 0).astype(np.int64)


def _exact_frames(cells: np.ndarray, truth: np.ndarray, levels: dict[int, TableSpec]
                  ) -> tuple[pl.DataFrame, dict[int, pl.DataFrame]]:
    n_win = truth.shape[1]
    leaf = pl.DataFrame({"cell": pl.Series(np.repeat(cells, n_win), dtype=pl.UInt64),
                         "window": np.tile(np.arange(n_win), cells.size),
                         "count": truth.ravel()})
    out = {}
    for res in levels:
        parent = np.array([h3.str_to_int(h3.cell_to_parent(h3.int_to_str(int(c)), res)) for c in cells],
                          dtype=np.uint64)
        out[res] = (leaf.with_columns(cell=pl.Series(np.repeat(parent, n_win), dtype=pl.UInt64))
                    .group_by("cell", "window").agg(pl.col("count").sum()))
    return leaf.filter(pl.col("count") > 0), out


def _check_sums(cells: np.ndarray, leaf_values: np.ndarray, levels: dict[int, TableSpec],
                level_values: dict[int, np.ndarray], n_win: int) -> None:
    by_leaf = leaf_values.reshape(cells.size, n_win)
    for res, spec in levels.items():
        parents = spec.keys.axes[0][1]  # type: ignore[union-attr]
        up = np.array([h3.str_to_int(h3.cell_to_parent(h3.int_to_str(int(c)), res)) for c in cells])
        summed = np.stack([by_leaf[up == p].sum(axis=0) for p in parents.tolist()])
        assert np.array_equal(level_values[res].reshape(parents.size, n_win), summed)


def test_consistent_counts_add_up_exactly_are_whole_and_never_negative() -> None:
    cfg = job(BEIJING, parent_resolutions=[4, 3], window="6h")
    plan, leaf, cells = _partition(cfg)
    n_win = cfg.n_windows
    truth = _truth(cells, n_win, seed=12)
    leaf_exact, level_exact = _exact_frames(cells, truth, plan.specs.levels)
    for _ in range(3):
        leaf_noisy = noising.noise_dense(leaf, leaf_exact)
        level_noisy = {r: noising.noise_dense(s, level_exact[r]) for r, s in plan.specs.levels.items()}
        assert (leaf_noisy < 0).any()  # the raw noise does go below zero
        leaf_values, level_values = noising.consistent_counts(leaf, leaf_noisy, plan.specs.levels,
                                                              level_noisy)
        for values in (leaf_values, *level_values.values()):
            assert values.dtype == np.int64 and (values >= 0).all()
        _check_sums(cells, leaf_values, plan.specs.levels, level_values, n_win)
        # res 4 is the roots' own resolution: an unsplit root's leaf equals its level cell
        roots4 = plan.specs.levels[4].keys.axes[0][1]  # type: ignore[union-attr]
        for i, root in enumerate(roots4.tolist()):
            if root in set(cells.tolist()):
                j = int(np.searchsorted(cells, root))
                assert np.array_equal(leaf_values.reshape(-1, n_win)[j],
                                      level_values[4].reshape(-1, n_win)[i])


def test_consistency_lowers_the_leaf_error_against_the_bounded_truth() -> None:
    """Statistical (a few hundred thousand keys): the consistent leaves are closer to the
    exact bounded counts than the raw noisy ones, which a leaves-only release publishes."""
    cfg = job(BEIJING, parent_resolutions=[4, 3], window="3h")
    plan, leaf, cells = _partition(cfg)
    n_win = cfg.n_windows
    raw_err, cons_err, level_raw, level_cons = [], [], [], []
    for seed in range(6):
        truth = _truth(cells, n_win, seed=seed)
        leaf_exact, level_exact = _exact_frames(cells, truth, plan.specs.levels)
        leaf_noisy = noising.noise_dense(leaf, leaf_exact)
        level_noisy = {r: noising.noise_dense(s, level_exact[r]) for r, s in plan.specs.levels.items()}
        leaf_values, level_values = noising.consistent_counts(leaf, leaf_noisy, plan.specs.levels,
                                                              level_noisy)
        raw_err.append(np.abs(leaf_noisy - truth.ravel()).mean())
        cons_err.append(np.abs(leaf_values - truth.ravel()).mean())
        level_truth = noising.key_vector(plan.specs.levels[3].keys,  # type: ignore[arg-type]
                                         level_exact[3])
        level_raw.append(np.abs(level_noisy[3] - level_truth).mean())
        level_cons.append(np.abs(level_values[3] - level_truth).mean())
    assert np.mean(cons_err) < 0.9 * np.mean(raw_err)
    assert np.mean(level_cons) <= np.mean(level_raw)


# -- the release end to end -----------------------------------------------------------------

def test_a_release_with_levels_publishes_parents_that_are_the_sums_of_its_leaves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many persons in every cell of a small area: nothing is suppressed, so the released
    tables themselves must add up exactly, level by level and window by window."""
    monkeypatch.setenv("PRIVMOB_PSEUDONYM_KEY", TEST_KEY)
    monkeypatch.setenv("PRIVMOB_LEDGER", str(tmp_path / "ledger.sqlite"))
    cfg = job(hexagon(tmp_path / "area.geojson"), parent_resolutions=[5, 4], resolution=6,
              window="12h", epsilon=4.0, min_resolution=5, max_pairs=2, tree_share=0.5
              ).with_overrides(budget__ledger=str(tmp_path / "ledger.sqlite"), budget__epsilon_per_day=20.0)
    plan = pm.plan(cfg)
    assert plan.key_cells is not None
    rows = stays(plan.key_cells.tolist(), 120, [8, 14], "p")
    release = plan.release(pm.read_pings(frame(rows)), write_to=tmp_path / "release")
    m, table = release.manifest, release.table
    assert m["cells_suppressed"] == 0 and m["cells_released"] == m["n_keys"] > 0
    assert table["count"].dtype == pl.Int64 and (table["count"] >= 0).all()
    leaves = table.select(pl.col("cell").map_elements(h3.str_to_int, return_dtype=pl.UInt64),
                          "window_start", "count")
    assert sorted(release.levels) == [4, 5]
    for level in m["levels"]:
        res = level["resolution"]
        assert level["counts"] == "pairs"
        assert level["consistency"] == "Hay et al. 2010 least squares, non-negative, integer"
        assert "conservative" in level["ci_method"]
        assert level["cells_released"] == level["n_keys"]  # nothing suppressed here either
        assert (tmp_path / "release" / level["file"]).exists()
        got = release.levels[res]
        assert (got["count"] >= 0).all()
        up = pl.Series([_parent(c, res) for c in leaves["cell"].to_list()], dtype=pl.UInt64)
        summed = leaves.with_columns(cell=up).group_by("cell", "window_start").agg(pl.col("count").sum())
        shown = got.select(pl.col("cell").map_elements(h3.str_to_int, return_dtype=pl.UInt64),
                           "window_start", "count")
        assert shown.sort("cell", "window_start").rows() == summed.sort("cell", "window_start").rows()
    assert m["consistency"] == "Hay et al. 2010 least squares, non-negative, integer"
    assert set(m["budget_split"]) == {"occupancy", "partition", "occupancy_res5", "occupancy_res4"}
    on_disk = pl.read_parquet(tmp_path / "release" / "release-res5.parquet")
    assert on_disk["count"].to_list() == release.levels[5]["count"].to_list()
