"""The released noise has the distribution the manifest claims.

OpenDP's samplers draw from the OS's CSPRNG and cannot be seeded, so each test is a
goodness-of-fit test at a fixed false-alarm rate (ALPHA) over many draws; a control with a
wrong scale shows each test has the power to fail.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats

import privmob as pm
from privmob.privacy import mechanism
from privmob.privacy.mechanism import NoiseModel
from privmob.privacy.noising import noise_table
from tests.conftest import SAMPLES, config

ALPHA = 1e-4
DRAWS = 120_000


def merged_chisquare(observed: np.ndarray, expected: np.ndarray) -> float:
    """Chi-square p-value after merging neighbouring bins until each expects at least 20."""
    obs, exp, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(observed, expected, strict=True):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 20:
            obs.append(acc_o)
            exp.append(acc_e)
            acc_o = acc_e = 0.0
    obs[-1] += acc_o
    exp[-1] += acc_e
    if len(obs) < 2:
        return 1.0
    exp_arr = np.array(exp) * (sum(obs) / sum(exp))
    return float(stats.chisquare(obs, exp_arr).pvalue)


def chi2_pvalue(draws: np.ndarray, model: NoiseModel) -> float:
    """Chi-square goodness of fit of integer draws against the model's exact pmf."""
    lo, hi = model.quantile(0.001), model.quantile(0.999)
    edges = np.arange(lo, hi + 1)
    observed = np.array(
        [(draws < lo).sum(), *np.bincount(draws[(draws >= lo) & (draws <= hi)] - lo,
                                          minlength=hi - lo + 1), (draws > hi).sum()]
    )
    expected_p = np.array([1 - model.tail(lo), *[model.tail(e) - model.tail(e + 1) for e in edges],
                           model.tail(hi + 1)])
    return merged_chisquare(observed, expected_p * draws.size)


@pytest.mark.slow
@pytest.mark.parametrize("mechanism_name", ["laplace", "gaussian"])
def test_noise_matches_the_calibrated_distribution(mechanism_name: str) -> None:
    plan = pm.plan(config(privacy={"mechanism": mechanism_name}))
    draws = mechanism.noise_counts(plan.noise, np.zeros(DRAWS, dtype=np.int64))
    assert chi2_pvalue(draws, plan.noise) > ALPHA
    # The interval the manifest publishes covers the truth ~95% of the time.
    h = plan.noise.ci_halfwidth(0.95)
    coverage = float((np.abs(draws) <= h).mean())
    assert abs(coverage - 0.95) < 4 * np.sqrt(0.95 * 0.05 / DRAWS) + 0.01
    # Control: the same draws are rejected against a 15% wider distribution.
    wrong = NoiseModel(plan.noise.mechanism, plan.noise.scale * 1.15, plan.noise.sensitivity,
                       plan.noise.cost)
    assert chi2_pvalue(draws, wrong) < ALPHA


@pytest.mark.slow
def test_release_path_noises_every_public_key_once(key_env: str) -> None:
    """Through Plan: crowded keys carry one draw of the claimed noise; empty public keys clear
    the threshold exactly as often as one draw each would (the sparse path, ADR 0005)."""
    cfg = config(grid={"boundary": str(SAMPLES / "beijing_boundary.geojson"), "resolution": 6},
                 privacy={"mechanism": "laplace", "epsilon": 2.0, "max_windows": 24,
                          "max_spurious_rate": 0.02})
    plan = pm.plan(cfg)
    assert plan.key_cells is not None
    n_keys = plan.key_cells.size * cfg.n_windows
    tau = plan.release_threshold
    rng = np.random.default_rng(7)  # only to place known exact counts, not privacy noise
    picks = rng.choice(n_keys, 3000, replace=False)
    high = tau + 4 * plan.noise.quantile(1 - 1e-9)  # always released
    exact = pl.DataFrame({
        "cell": pl.Series(plan.key_cells[picks // cfg.n_windows], dtype=pl.UInt64),
        "window": pl.Series(picks % cfg.n_windows, dtype=pl.Int32),
        "count": pl.Series(rng.integers(high, high + 500, picks.size), dtype=pl.Int64),
    })
    residuals, empty_released, empty_keys = [], 0, 0
    for _ in range(10):
        released = noise_table(plan.specs.occupancy, exact)
        assert released.spec.n_keys == n_keys
        frame = released.frame.select("cell", pl.col("window").cast(pl.Int32), noisy="count")
        assert (frame["noisy"] >= tau).all()
        assert frame.select(pl.struct("cell", "window").n_unique()).item() == frame.height
        joined = frame.join(exact, on=["cell", "window"], how="left")
        crowded = joined.filter(pl.col("count").is_not_null())
        assert crowded.height == exact.height, "every crowded key is released"
        residuals.append((crowded["noisy"] - crowded["count"]).to_numpy())
        empty_released += joined["count"].null_count()
        empty_keys += n_keys - exact.height
    assert chi2_pvalue(np.concatenate(residuals), plan.noise) > ALPHA
    q = plan.noise.tail(tau)
    assert q > 1e-3  # enough empty keys clear τ for the count to test something
    assert stats.binomtest(empty_released, empty_keys, q).pvalue > ALPHA
