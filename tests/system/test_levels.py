"""Hierarchical release: coarser resolutions for sparse areas, each with its own budget share."""

from __future__ import annotations

import h3
import polars as pl
import pytest

import privmob as pm
from tests.conftest import SAMPLES, config


def levels_config(**grid: object) -> pm.JobConfig:
    return config(grid={"resolution": 7, "window": "3h", "parent_epsilon": 0.5,
                        "boundary": str(SAMPLES / "beijing_boundary.geojson"),
                        "parent_resolutions": [5, 6], **grid},
                  privacy={"max_windows": 8, "epsilon": 1.0})


def test_levels_are_released_and_charged(key_env: str, tmp_path: object) -> None:
    plan = pm.plan(levels_config())
    assert float(plan.cost.epsilon) == 2.0  # 1.0 for res 7 + 0.5 for each of res 6 and 5
    release = plan.release(SAMPLES / "beijing_pings.parquet")
    assert sorted(release.levels) == [5, 6]
    for info in release.manifest["levels"]:
        res = info["resolution"]
        table = release.levels[res]
        assert table.height == info["cells_released"]
        assert (table["count"] >= info["release_threshold"]).all()
        assert all(h3.get_resolution(c) == res for c in table["cell"].to_list())
        public = plan.level_key_cells(res)
        assert public is not None and info["n_keys"] == public.size * 8
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
