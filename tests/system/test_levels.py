"""Hierarchical release: coarser resolutions for sparse areas, each with its own budget share."""

from __future__ import annotations

import h3
import polars as pl
import pytest

import privmob as pm
from privmob.privacy.tablespec import PublicKeys, TableSpec
from tests.conftest import SAMPLES, config, fresh_ledger


def levels_config(**grid: object) -> pm.JobConfig:
    return config(grid={"resolution": 7, "window": "3h", "parent_epsilon": 0.5,
                        "boundary": str(SAMPLES / "beijing_boundary.geojson"),
                        "parent_resolutions": [5, 6], **grid},
                  privacy={"max_windows": 8, "epsilon": 1.0})


def test_levels_are_released_and_charged(key_env: str, tmp_path: object) -> None:
    plan = pm.plan(levels_config())
    # 1.0 for res 7 + 0.5 for each of res 6 and 5 added; Gaussian tables compose in zCDP
    # (one conversion of their total ρ, issue 12), well below that sum
    assert plan.cost.epsilon_basic == 2 and plan.cost.composition == "zcdp"
    assert 1.0 < float(plan.cost.epsilon) < 1.5
    release = plan.release(SAMPLES / "beijing_pings.parquet")
    assert sorted(release.levels) == [5, 6]
    for info in release.manifest["levels"]:
        res = info["resolution"]
        table = release.levels[res]
        assert table.height == info["cells_released"]
        assert (table["count"] >= info["release_threshold"]).all()
        assert all(h3.get_resolution(c) == res for c in table["cell"].to_list())
        keys = plan.specs.levels[res].keys
        assert isinstance(keys, PublicKeys)
        public = dict(keys.axes)["cell"]
        assert info["n_keys"] == public.size * 8
        # every fine public cell's parent is a public key of the level
        fine = plan.key_cells
        assert fine is not None
        parents = {h3.cell_to_parent(h3.int_to_str(int(c)), res) for c in fine[:: max(1, fine.size // 200)]}
        assert parents <= {h3.int_to_str(int(c)) for c in public}
    assert release.manifest["budget_split"]["occupancy_res6"]["epsilon"] == 0.5
    out = release.write(tmp_path / "r")  # type: ignore[operator]
    files = pl.read_json(out / "manifest.json").to_dicts()[0]["files"]
    assert {"release-res5.parquet", "release-res6.csv"} <= set(files)


def test_coarser_levels_publish_more_of_a_sparse_day(key_env: str) -> None:
    """The point of levels: where res 7 is mostly withheld, res 5 still shows the mass."""
    release = pm.plan(levels_config()).release(SAMPLES / "beijing_pings.parquet")
    fine = int(release.table["count"].sum())
    coarse = int(release.levels[5]["count"].sum())
    assert coarse > fine


@pytest.mark.parametrize("bad", [[7], [8], ["6"], "6"])
def test_parent_resolutions_must_be_coarser(bad: object) -> None:
    with pytest.raises(pm.ConfigError, match="parent_resolutions"):
        levels_config(parent_resolutions=bad)


# --- sensitivity of the levels: distinct persons, never summed children (issue 11) --------

K, W = 4, 2  # cells per window, windows per person


def _neighbours() -> tuple[pl.DataFrame, pl.DataFrame]:
    """D and D without one person who keeps K res-8 cells under one res-7 parent in each of
    W windows (a bus ride inside one district): the worst case for summed child counts."""
    from tests.conftest import PERIOD_START, pings

    parent = h3.latlng_to_cell(39.9087, 116.3975, 6)
    children = [c for c in sorted(h3.cell_to_children(parent, 8))
                if h3.cell_to_parent(c, 7) == h3.cell_to_parent(sorted(h3.cell_to_children(parent, 8))[0], 7)]
    assert len(children) >= K
    rows = []
    for w in range(W):
        for i, cell in enumerate(children[:K]):
            lat, lng = h3.cell_to_latlng(cell)
            rows += [("target", PERIOD_START + w * 3600 + 60 * (10 * i + m), lat, lng, "confirmed")
                     for m in range(5)]
    lat, lng = h3.cell_to_latlng(children[0])
    others = [(f"p{p}", PERIOD_START + 60 * p, lat, lng, "confirmed") for p in range(3)]
    return pings(rows + others), pings(others)


def _level_config(mechanism: str) -> pm.JobConfig:
    return config(grid={"resolution": 8, "window": "1h", "parent_resolutions": [7, 6],
                        "parent_epsilon": 0.5},
                  privacy={"mechanism": mechanism, "max_cells_per_window": K, "max_windows": W})


def _distance(a: pl.DataFrame, b: pl.DataFrame) -> tuple[int, int, float, int]:
    """(L0, L1, L2, L∞) between two exact count tables over their (cell, window) keys."""
    joined = a.join(b, on=["cell", "window"], how="full", coalesce=True).fill_null(0)
    diff = (joined["count"] - joined["count_right"]).abs()
    return (int((diff > 0).sum()), int(diff.sum()), float((diff**2).sum()) ** 0.5,
            int(diff.max() or 0))


def test_engine_levels_count_distinct_persons_per_parent() -> None:
    from privmob.backends import get_backend
    from privmob.stages.pseudonymise import Pseudonymiser
    from tests.conftest import TEST_KEY

    d, d_minus = _neighbours()
    cfg = _level_config("laplace")
    pseudonymiser = Pseudonymiser(TEST_KEY.encode(), "p")
    full = get_backend("polars").exact_cells(d, cfg, pseudonymiser, None)
    less = get_backend("polars").exact_cells(d_minus, cfg, pseudonymiser, None)
    assert sorted(full.levels) == [6, 7]
    for res in (7, 6):
        level = full.levels[res]
        assert level.schema == full.counts.schema
        assert all(h3.get_resolution(h3.int_to_str(c)) == res for c in level["cell"].to_list())
        # window 0: the target and the three others, once each, in their one parent
        assert level.filter(pl.col("window") == 0)["count"].to_list() == [4]
        l0, l1, _, linf = _distance(level, less.levels[res])
        assert (l0, l1, linf) == (W, W, 1)


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_a_person_moves_each_level_key_by_at_most_one(
        key_env: str, monkeypatch: pytest.MonkeyPatch, mechanism: str) -> None:
    """Neighbouring inputs (D, D minus one person) move the level tables the plan noises by
    no more than the sensitivity the plan calibrated them for: L∞ 1 (OpenDP's threshold map
    takes (L0, L1, 1)), L1 and L0 ≤ k·w, L2 ≤ √(k·w) — and so, by OpenDP's own privacy map
    at the observed distance, the level costs no more than it claims. Summing child counts
    moved one parent key by k = 4 here: L∞ 4, L2 4·√2, so 4× the claimed ρ for Gaussian noise."""
    from privmob.privacy import noising

    seen: dict[str, list[pl.DataFrame]] = {"occupancy_res7": [], "occupancy_res6": []}
    noise_table = noising.noise_table

    def spy(spec: TableSpec, counts: pl.DataFrame) -> noising.NoisyTable:
        if spec.name in seen:
            seen[spec.name].append(counts)
        return noise_table(spec, counts)

    monkeypatch.setattr(noising, "noise_table", spy)
    plan = pm.plan(_level_config(mechanism))
    d, d_minus = _neighbours()
    for data in (d, d_minus):
        with fresh_ledger():  # each a first release of its own population
            plan.release(data)
    s = plan.sensitivity
    assert (s.l0, s.l1) == (K * W, K * W)
    for res in (7, 6):
        full, less = seen[f"occupancy_res{res}"]
        l0, l1, l2, linf = _distance(full, less)
        assert linf <= 1, f"res {res}: one person moved a key by {linf}"
        assert l0 <= s.l0 and l1 <= s.l1 and l2 <= s.l2 + 1e-12
        if mechanism == "gaussian":
            level = plan.specs.levels[res]
            spent = float(level.noise.measurement().map(l2))
            assert spent <= float(level.cost.rho or 0) * (1 + 1e-9)
