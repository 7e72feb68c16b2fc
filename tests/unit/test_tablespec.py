"""The budget split: one function gives every table its share; the shares compose to the
cost a release is charged and states."""

from __future__ import annotations

from fractions import Fraction

import pytest

import privmob as pm
from privmob.privacy.accountant import PrivacyCost
from privmob.privacy.mechanism import calibrate, rho_to_epsilon
from privmob.privacy.tablespec import PublicKeys, ThresholdKeys, table_specs
from tests.conftest import SAMPLES, config

DISTRICTS = SAMPLES / "beijing_districts.geojson"
BOUNDARY = str(SAMPLES / "beijing_boundary.geojson")


def _cfg(mechanism: str, public: bool, flows_units: str) -> pm.JobConfig:
    return config(
        grid={"resolution": 7, "window": "3h", "parent_resolutions": [6, 5], "parent_epsilon": 0.25,
              **({"boundary": BOUNDARY} if public else {})},
        privacy={"mechanism": mechanism, "max_windows": 8, "epsilon": 1.0, "delta": 1e-7},
        flows={"units": flows_units, "boundary": str(DISTRICTS), "resolution": 6, "epsilon": 0.5},
    )


CASES = [(m, public, units) for m in ("laplace", "gaussian") for public in (True, False)
         for units in ("boundary", "cells")]


@pytest.mark.parametrize(("mechanism", "public", "units"), CASES)
def test_the_split_composes_to_the_plan_cost(mechanism: str, public: bool, units: str) -> None:
    plan = pm.plan(_cfg(mechanism, public, units))
    specs = plan.specs
    assert [t.name for t in specs.tables] == ["occupancy", "occupancy_res6", "occupancy_res5", "flows"]
    total = PrivacyCost(Fraction(0))
    for t in specs.tables:
        total = total + t.cost
    assert plan.cost == specs.cost
    assert (plan.cost.epsilon_basic, plan.cost.delta, plan.cost.rho_delta) == (
        total.epsilon, total.delta, total.rho_delta)
    # issue 12: the tables compose in zCDP — Gaussian ones convert their total ρ once, far
    # below the sum of their ε at the same δ; Laplace ones (no δ to convert at) add ε
    rhos = [t.cost.zcdp_rho for t in specs.tables]
    assert plan.cost.rho == sum(r for r in rhos if r is not None) and None not in rhos
    if mechanism == "gaussian":
        assert plan.cost.composition == "zcdp" and plan.cost.epsilon < Fraction(3, 2) < total.epsilon
        assert float(plan.cost.epsilon) == pytest.approx(
            rho_to_epsilon(float(plan.cost.rho or 0), float(total.delta - total.rho_delta)), rel=1e-12)
    else:
        assert (plan.cost.composition, plan.cost.epsilon) == ("basic", total.epsilon)
    # each table spends its own configured share of ε
    assert [float(t.cost.epsilon) for t in specs.tables] == [1.0, 0.25, 0.25, 0.5]
    # selection δ is charged exactly for the tables whose keys come from the data
    for t in specs.tables:
        assert isinstance(t.keys, PublicKeys) == t.public
        assert t.cost.rho_delta == (0 if t.public else Fraction(repr(t.selection_delta)))
        assert t.threshold_delta <= t.selection_delta
    assert specs.occupancy.public == public
    assert specs.flows is not None and specs.flows.public == (units == "boundary")


def test_each_spec_is_calibrated_to_its_share_alone() -> None:
    """A spec's noise is what OpenDP calibrates for that table's privacy settings by itself."""
    cfg = _cfg("gaussian", False, "cells")
    specs = table_specs(cfg)
    assert isinstance(specs.occupancy.keys, ThresholdKeys)
    alone = calibrate(cfg.privacy, specs.occupancy.sensitivity, threshold_delta=cfg.privacy.delta / 2)
    assert specs.occupancy.noise == alone
    assert specs.levels[6].noise.sensitivity == specs.occupancy.sensitivity
    assert specs.levels[6].noise.scale > specs.occupancy.noise.scale  # ε 0.25 < 1: more noise


def test_the_manifest_states_the_composed_cost(key_env: str) -> None:
    plan = pm.plan(_cfg("laplace", True, "boundary").with_overrides(grid__parent_resolutions=(6,)))
    release = plan.release(SAMPLES / "beijing_pings.parquet")
    m = release.manifest
    assert m["budget_exact"]["epsilon_exact"] == str(plan.cost.epsilon)
    assert m["budget_composition"] == "basic"  # Laplace: no δ to convert ρ at, ε adds
    split = m["budget_split"]
    assert list(split) == ["occupancy", "flows", "occupancy_res6"]
    assert sum(Fraction(repr(v["epsilon"])) for v in split.values()) == plan.cost.epsilon
    assert m["levels"][0]["release_threshold"] == plan.specs.levels[6].threshold
    assert m["flows"]["release_threshold"] == plan.specs.flows.threshold  # type: ignore[union-attr]


def test_a_gaussian_manifest_states_the_zcdp_composition(key_env: str) -> None:
    """Issue 12: the manifest's ε is one conversion of the tables' total ρ, says so, and
    keeps the plain sum beside it."""
    plan = pm.plan(_cfg("gaussian", True, "boundary").with_overrides(grid__parent_resolutions=(6,)))
    m = plan.release(SAMPLES / "beijing_pings.parquet").manifest
    split = m["budget_split"]
    summed = sum(Fraction(repr(v["epsilon"])) for v in split.values())
    assert m["budget_composition"] == plan.cost.composition == "zcdp"
    assert m["budget_exact"]["epsilon_basic_exact"] == str(summed) == "7/4"
    assert m["budget_exact"]["epsilon_exact"] == str(plan.cost.epsilon)
    assert m["epsilon"] == float(plan.cost.epsilon) < 0.75 * float(summed)
    assert m["rho"] == pytest.approx(sum(v["rho"] for v in split.values()), rel=1e-12)


@pytest.mark.parametrize("n_cells", [10, 1_000, 100_000])
def test_public_keys_expect_at_most_one_spurious_cell_per_table_whatever_their_number(n_cells: int) -> None:
    """The threshold is a per-table target (ADR 0002): n_keys · P(noise ≥ t) ≤ 1 with the
    lowest such t — so it grows with the key set instead of letting spurious cells grow."""
    import numpy as np

    from privmob.config import PrivacyConfig
    from privmob.privacy.mechanism import Sensitivity
    from privmob.privacy.tablespec import spec

    keys = PublicKeys((("cell", np.arange(n_cells, dtype=np.uint64)),
                       ("window", np.arange(24, dtype=np.int64))), "test")
    privacy = PrivacyConfig(mechanism="laplace", min_count=1)
    s = spec("occupancy", privacy, Sensitivity(1, 24), keys)
    assert keys.n_keys * s.noise.tail(s.threshold) <= 1.0
    assert keys.n_keys * s.noise.tail(s.threshold - 1) > 1.0
    # a per-key rate, when the job sets one, is what it asks for
    per_key = spec("occupancy", PrivacyConfig(mechanism="laplace", min_count=1, max_spurious_rate=1e-4),
                   Sensitivity(1, 24), keys)
    assert per_key.noise.tail(per_key.threshold) <= 1e-4 < per_key.noise.tail(per_key.threshold - 1)


def test_threshold_keys_keep_a_per_key_rate() -> None:
    from privmob.config import PrivacyConfig
    from privmob.privacy.mechanism import Sensitivity
    from privmob.privacy.tablespec import spec

    s = spec("occupancy", PrivacyConfig(mechanism="laplace", min_count=1), Sensitivity(1, 24),
             ThresholdKeys(("cell", "window")))
    assert s.threshold >= s.noise.spurious_threshold(PrivacyConfig.DEFAULT_SPURIOUS_RATE)
