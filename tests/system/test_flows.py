"""Origin–destination flows: one budgeted run releases occupancy and flows together."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

import privmob as pm
from privmob.backends import get_backend
from privmob.cli import main
from privmob.governance.ledger import Ledger
from privmob.movement.flows import exact_flows, load_units
from privmob.stages.pseudonymise import Pseudonymiser
from tests.conftest import SAMPLES, TEST_KEY, config

DISTRICTS = SAMPLES / "beijing_districts.geojson"


def flows_config(units: str = "boundary", **flows: object) -> pm.JobConfig:
    return config(
        grid={"resolution": 7, "window": "3h", "boundary": str(SAMPLES / "beijing_boundary.geojson")},
        privacy={"max_windows": 8, "epsilon": 1.0},
        flows={"units": units, "boundary": str(DISTRICTS), "resolution": 6, "epsilon": 0.5, **flows},
    )


@pytest.fixture(scope="module")
def fixes() -> pl.DataFrame:
    cfg = flows_config()
    return get_backend("polars").trips(SAMPLES / "beijing_pings.parquet", cfg,
                                       Pseudonymiser(TEST_KEY.encode(), "2026-11-26"))


def test_flows_are_bounded_per_person(fixes: pl.DataFrame) -> None:
    cfg = flows_config(max_trips_per_window=2, max_windows=1)
    units = load_units(DISTRICTS, "adcode")
    exact = exact_flows(fixes, cfg, units)
    # Each person adds at most k·w = 2 (origin, destination, window) keys, so the counts sum
    # to at most 2 per person, and every OD is a pair of Beijing's 16 districts.
    assert exact.counts["count"].sum() <= 2 * exact.persons
    assert exact.bounding.person_cell_windows_kept <= 2 * exact.persons
    assert set(exact.counts["origin"]) | set(exact.counts["destination"]) <= set(units.names)
    assert exact.trips > exact.persons  # commuters make several trips a day
    # More trips allowed per window → more of them kept.
    looser = exact_flows(fixes, flows_config(max_trips_per_window=6), units)
    assert looser.bounding.person_cell_windows_kept > exact.bounding.person_cell_windows_kept


def test_boundary_units_use_public_keys(key_env: str) -> None:
    plan = pm.plan(flows_config())
    release = plan.release(SAMPLES / "beijing_pings.parquet")
    f = release.manifest["flows"]
    assert f["keys"].startswith("public:") and f["n_keys"] == 16 * 16 * 1
    assert f["threshold"] is None
    assert release.flows is not None and release.flows.height == f["flows_released"] > 0
    assert (release.flows["count"] >= f["release_threshold"]).all()
    assert set(release.flows.columns) >= {"origin", "destination", "window_start", "count", "ci_low",
                                          "ci_high"}
    # The whole release costs occupancy + flows, and says so.
    assert plan.specs.flows is not None
    basic = plan.specs.occupancy.cost + plan.specs.flows.cost
    assert (plan.cost.epsilon_basic, plan.cost.delta, plan.cost.rho) == (
        basic.epsilon, basic.delta, basic.rho)
    # Gaussian tables compose in zCDP (issue 12): one conversion of ρ, below 1.0 + 0.5
    assert plan.cost.composition == "zcdp" and 1.0 < float(plan.cost.epsilon) < 1.5


def test_cell_units_use_the_threshold_mechanism(key_env: str) -> None:
    release = pm.plan(flows_config("cells")).release(SAMPLES / "beijing_pings.parquet")
    f = release.manifest["flows"]
    assert f["keys"] == "threshold" and f["threshold"]["delta"] > 0
    assert f["units"] == "cells@res6"
    assert release.flows is not None
    assert (release.flows["count"] >= f["threshold"]["value"]).all()


def test_one_budgeted_run_releases_and_signs_both_tables(tmp_path: Path) -> None:
    key = tmp_path / "pseudonym.key"
    key.write_text(TEST_KEY)
    key.chmod(0o600)
    assert main(["keys", "init", str(tmp_path / "signing.pem")]) == 0
    shutil.copy(DISTRICTS, tmp_path / "districts.geojson")
    job = tmp_path / "job.toml"
    job.write_text(f"""
[job]
operator = "cdc-analyst-01"
input = "{(SAMPLES / 'beijing_pings.parquet').as_posix()}"
output = "out"
period = "2026-11-26"
key_file = "pseudonym.key"
signing_key = "signing.pem"
reports = false
[grid]
resolution = 7
window = "3h"
[privacy]
epsilon = 1.0
max_windows = 8
[flows]
units = "boundary"
boundary = "districts.geojson"
epsilon = 0.5
[budget]
ledger = "ledger.sqlite"
epsilon_per_day = 2.0
""")
    assert main(["run", str(job)]) == 0
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"flows.parquet", "flows.csv", "flows.geojson"} <= manifest["files"].keys()
    # the whole release: occupancy 1.0 + flows 0.5 composed in zCDP (issue 12), below the sum
    assert manifest["budget_composition"] == "zcdp" and 1.0 < manifest["epsilon"] < 1.5
    assert manifest["budget_exact"]["epsilon_basic_exact"] == "3/2"
    assert manifest["budget_split"]["occupancy"]["epsilon"] == 1.0
    assert manifest["budget_split"]["flows"]["epsilon"] == manifest["flows"]["epsilon"] == 0.5
    (row,) = Ledger(tmp_path / "ledger.sqlite").rows()
    assert float(row.spent) == manifest["epsilon"]  # the ledger charges both tables, tightly
    assert main(["verify", str(out), "--public-key", str(tmp_path / "signing.pub")]) == 0
    flows = pl.read_parquet(out / "flows.parquet")
    assert flows.height == manifest["flows"]["flows_released"]
    assert (out / "flows.csv").read_text(encoding="utf-8").startswith("# ")
    lines = json.loads((out / "flows.geojson").read_text())["features"]
    assert all(f["geometry"]["type"] == "LineString" for f in lines)


def test_gcj02_inputs_land_in_the_same_cells_as_their_wgs84_originals() -> None:
    """Chinese map data is often GCJ-02; converted before indexing, it gives the same counts."""
    from privmob.stages.crs import from_wgs84

    raw = pl.read_parquet(SAMPLES / "beijing_pings.parquet")
    lat, lng = from_wgs84(raw["lat"].to_numpy(), raw["lng"].to_numpy(), "gcj02")
    shifted = raw.with_columns(pl.Series("lat", lat), pl.Series("lng", lng))
    pseudo = Pseudonymiser(TEST_KEY.encode(), "2026-11-26")
    backend = get_backend("polars")
    wgs = config(grid={"resolution": 9, "window": "1h"})
    gcj = config(job={"crs": "gcj02"}, grid={"resolution": 9, "window": "1h"})
    original = backend.exact_cells(raw, wgs, pseudo, None)
    assert backend.exact_cells(shifted, gcj, pseudo, None).counts.equals(original.counts)
    # Unconverted, the ~550 m offset moves most counts to other res-9 cells.
    moved = backend.exact_cells(shifted, wgs, pseudo, None).counts
    same = moved.join(original.counts, on=["cell", "window", "count"], how="semi").height
    assert same < original.counts.height / 2


def test_gcj02_boundary_gives_the_wgs84_key_set() -> None:
    from privmob.privacy.keys import load_boundary
    from tests.conftest import shared_data

    gcj = load_boundary(shared_data("boundaries", "boundaries_gcj02.geojson"), {"adcode": "110000"},
                        "gcj02")
    wgs = load_boundary(shared_data("boundaries", "boundaries_wgs84.geojson"), {"adcode": "110000"})
    a, b = set(gcj.cells(6).tolist()), set(wgs.cells(6).tolist())
    assert len(a ^ b) <= 0.01 * len(b)
    assert gcj.key_label.endswith("crs=gcj02")


def test_pm_flows_releases_both_tables(key_env: str) -> None:
    release = pm.flows(SAMPLES / "beijing_pings.parquet", config(grid={"resolution": 7}),
                       units="boundary", boundary=str(DISTRICTS), epsilon=0.5)
    assert release.flows is not None
    assert release.manifest["flows"]["keys"].startswith("public:")
    assert 1.0 < release.manifest["epsilon"] < 1.5  # 1.0 + 0.5 composed in zCDP (issue 12)


@pytest.mark.parametrize(("adcode", "districts"), [("110000", 16), ("130900", 16), ("150800", 7)])
def test_real_city_boundaries_give_public_keys_and_units(adcode: str, districts: int) -> None:
    """Beijing, Cangzhou and Bayannur from ../shared/data: outlines and their districts."""
    import geopandas as gpd

    from privmob.privacy.keys import load_boundary
    from tests.conftest import shared_data

    path = shared_data("boundaries", "boundaries_wgs84.geojson")
    outline = load_boundary(path, {"adcode": adcode})
    assert outline.cells(5).size > 10
    frame = gpd.read_file(path)
    prefix = "1101" if adcode == "110000" else adcode[:4]  # Beijing: the city is 1101xx
    county = frame[(frame["level"] == "county") & frame["adcode"].astype(str).str.startswith(prefix)]
    counties = tmp_units(county)
    assert len(load_units(counties, "adcode").names) == districts


def tmp_units(frame: object) -> Path:
    import tempfile

    out = Path(tempfile.mkdtemp()) / "units.geojson"
    frame.to_file(out, driver="GeoJSON")  # type: ignore[attr-defined]
    return out
