"""Published intervals cover the truth 95% of the time *among published counts* (issue 11).

A count is published only when its noisy value clears τ, so a published count of a small
true count is biased upward and ``count ± h`` misses it every time (coverage 0 for true
counts below τ − h). The selection-aware interval (privmob.privacy.intervals) must cover every
true count with probability ≥ 95% given publication, near and below τ included.

The simulation is a release: keys with true counts spread over [0, 3τ] are noised and
suppressed by the production path (:func:`privmob.privacy.sparse.noise_and_suppress`, OpenDP's
samplers; numpy only chooses how many keys of each count), and only what was published
is scored. Each true count is a bucket. Checks, at a false-alarm rate of about 1e-6 each:

* every bucket: the one-sided Clopper–Pearson upper bound of coverage is ≥ 0.95 (the data
  do not show coverage below 95%);
* pooled near/below τ and pooled far above it: the Clopper–Pearson lower bound is ≥ 0.93
  (coverage is shown to be close to 95% or more, not merely not refuted);
* control: the old ``count ± h`` interval fails the per-bucket check below τ − h.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats

import privmob as pm
from privmob.errors import ConfigError, InputError
from privmob.privacy import sparse
from privmob.privacy.accountant import PrivacyCost
from privmob.privacy.intervals import log_sf, near_threshold, selection_interval
from privmob.privacy.mechanism import NoiseModel, Sensitivity

ALPHA = 1e-6  # per check
TARGET = 600  # published keys expected per bucket
CAP = 200_000  # keys per bucket at most (buckets far below τ publish too rarely to score)
MIN_SCORED = 100  # a bucket with fewer published keys is not scored


def _plan(tmp: Path, mechanism: str) -> pm.Plan:
    """The demo calibration: k = 1 cell per window, w = 24 windows, ε = 1, threshold keys."""
    return pm.plan(pm.JobConfig.from_dict({
        "job": {"operator": "test", "period": "2026-11-26", "key_file": str(tmp / "pseudonym.key")},
        "grid": {"resolution": 7, "window": "1h"},
        "privacy": {"mechanism": mechanism, "epsilon": 1.0, "delta": 1e-7, "max_windows": 24,
                    "max_cells_per_window": 1, "min_count": 10, "max_spurious_rate": 0.0001},
    }))


def _model(mechanism: str, scale: float) -> NoiseModel:
    return NoiseModel(mechanism, scale, Sensitivity(1, 1), PrivacyCost(Fraction(1)))


@pytest.fixture(scope="module")
def calibrations(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[NoiseModel, int]]:
    tmp = tmp_path_factory.mktemp("plans")
    gauss, laplace = _plan(tmp, "gaussian"), _plan(tmp, "laplace")
    return {
        # threshold keys: τ from OpenDP's δ for key selection (148 at σ ≈ 25)
        "gaussian-threshold-keys": (gauss.noise, gauss.release_threshold),
        # public keys: τ = max(min_count, spurious threshold) (93 at σ ≈ 25, the case)
        "gaussian-public-keys": (gauss.noise, max(10, gauss.noise.spurious_threshold(0.0001))),
        "laplace-threshold-keys": (laplace.noise, laplace.release_threshold),
    }


def _simulate(model: NoiseModel, tau: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(true count, released value) of every published key of one simulated release."""
    grid = np.unique(np.linspace(0, 3 * tau, 31).round().astype(np.int64))
    q = np.exp(log_sf(model, -4 * tau, 4 * tau)(tau - grid))  # P(published | c)
    per_count = np.clip(np.ceil(TARGET / np.maximum(q, 1e-300)), TARGET, CAP).astype(np.int64)
    true = np.repeat(grid, per_count)
    idx, released = sparse.noise_and_suppress(model, true, tau)
    return true[idx], released


def _cp_upper(hits: int, n: int) -> float:
    return 1.0 if hits == n else float(stats.beta.ppf(1 - ALPHA, hits + 1, n - hits))


def _cp_lower(hits: int, n: int) -> float:
    return 0.0 if hits == 0 else float(stats.beta.ppf(ALPHA, hits, n - hits + 1))


def _buckets(true: npt.NDArray[np.int64], covered: npt.NDArray[np.bool_]) -> dict[int, tuple[int, int]]:
    """true count → (covered, published), for buckets with enough published keys."""
    out = {}
    for c in np.unique(true).tolist():
        sel = true == c
        if sel.sum() >= MIN_SCORED:
            out[int(c)] = (int(covered[sel].sum()), int(sel.sum()))
    return out


@pytest.mark.parametrize("name", ["gaussian-threshold-keys", "gaussian-public-keys",
                                  "laplace-threshold-keys"])
def test_selection_aware_interval_covers_every_true_count_given_publication(
    calibrations: dict[str, tuple[NoiseModel, int]], name: str,
) -> None:
    model, tau = calibrations[name]
    h = model.ci_halfwidth(0.95)
    true, released = _simulate(model, tau)
    low, high = selection_interval(model, tau, released)
    assert (low >= 0).all()

    new = _buckets(true, (low <= true) & (true <= high))
    assert min(new) < tau - h, "no bucket far below τ was scored: the test would prove nothing"
    assert max(new) > tau + 2 * h
    for c, (hits, n) in new.items():
        assert _cp_upper(hits, n) >= 0.95, f"{name}: coverage {hits}/{n} at true count {c}"
    for region in ([c for c in new if c < tau + h], [c for c in new if c >= tau + h]):
        hits, n = (sum(new[c][i] for c in region) for i in (0, 1))
        assert _cp_lower(hits, n) >= 0.93, f"{name}: pooled coverage {hits}/{n}"

    # Control: the old interval, count ± h (clipped at 0), fails the same check below τ − h.
    old = _buckets(true, (np.maximum(released - h, 0) <= true) & (true <= released + h))
    below = [c for c in old if c < tau - h]
    assert below
    for c in below:
        hits, n = old[c]
        assert hits == 0 and _cp_upper(hits, n) < 0.5


# --- unit behaviour ---------------------------------------------------------------------------


@pytest.mark.parametrize(("mechanism", "scale", "tau"), [
    ("gaussian", 25.006662905749238, 93), ("gaussian", 25.006662905749238, 148),
    ("laplace", 24.0, 447), ("laplace", 2.0, 3), ("gaussian", 2.0, 100), ("laplace", 48.0, 300),
])
def test_endpoints_are_monotone_in_the_released_value(mechanism: str, scale: float, tau: int) -> None:
    model = _model(mechanism, scale)
    y = np.arange(tau, tau + 20 * math.ceil(scale) + 50, dtype=np.int64)
    low, high = selection_interval(model, tau, y)
    assert (np.diff(low) >= 0).all() and (np.diff(high) >= 0).all()
    assert (low >= 0).all() and (low <= high).all() and (low <= y).all()


@pytest.mark.parametrize(("mechanism", "scale", "tau"), [
    ("gaussian", 25.006662905749238, 148), ("laplace", 24.0, 447), ("laplace", 2.0, 3),
    ("gaussian", 0.7, 12),
])
def test_far_above_the_threshold_it_is_the_unconditional_interval(
    mechanism: str, scale: float, tau: int,
) -> None:
    model = _model(mechanism, scale)
    h = model.ci_halfwidth(0.95)
    far = tau + 3 * h + np.array([30 * math.ceil(scale), 50 * math.ceil(scale), 10_000], dtype=np.int64)
    low, high = selection_interval(model, tau, far)
    assert low.tolist() == (far - h).tolist() and high.tolist() == (far + h).tolist()


def test_near_the_threshold_the_interval_moves_down() -> None:
    model = _model("gaussian", 25.006662905749238)
    h = model.ci_halfwidth(0.95)
    low, high = selection_interval(model, 93, np.array([93, 93 + h], dtype=np.int64))
    assert low[0] == 0 and high[0] < 93 + h  # a count at τ may well be a much smaller truth
    assert low[1] < 93 and high[1] <= 93 + 2 * h


def test_same_value_same_interval_in_any_order() -> None:
    model = _model("laplace", 24.0)
    y = np.array([600, 447, 500, 447, 600, 451], dtype=np.int64)
    low, high = selection_interval(model, 447, y)
    one_low, one_high = selection_interval(model, 447, np.unique(y))
    lookup = dict(zip(np.unique(y).tolist(), zip(one_low.tolist(), one_high.tolist(), strict=True),
                      strict=True))
    assert [lookup[v] for v in y.tolist()] == list(zip(low.tolist(), high.tolist(), strict=True))


def test_gaussian_tails_tens_of_sigma_below_do_not_underflow() -> None:
    """σ = 2, τ = 100: P(Y ≥ τ | c = 0) = e^{-1250} is 0 as a double; the answer must not be."""
    model = _model("gaussian", 2.0)
    sf = log_sf(model, -500, 500)
    assert np.isfinite(sf(np.array([100, 250, 500], dtype=np.int64))).all()
    low, high = selection_interval(model, 100, np.array([100, 101], dtype=np.int64))
    # At τ the conditional law of Y piles up on τ for every c far below: any such c fits.
    assert low[0] == 0 and 100 <= high[0] <= 105
    # One above τ is unlikely unless c is within a few σ of τ.
    assert 80 < low[1] <= 97 and high[1] <= 106


def test_log_sf_agrees_with_the_noise_model() -> None:
    for model in (_model("gaussian", 25.006662905749238), _model("laplace", 24.0), _model("gaussian", 0.9)):
        t = np.arange(-60, 80, dtype=np.int64)
        mine = np.exp(log_sf(model, -100, 100)(t))
        ref = np.array([model.tail(int(v)) for v in t])
        ok = ref > 1e-250
        assert np.allclose(mine[ok], ref[ok], rtol=1e-9, atol=0)


def test_wide_laplace_at_the_threshold_publishes_zero_to_tau() -> None:
    """b = 48: y = τ is in the lower 2.5% tail for every c (the conditional law of Y is the
    same for all c ≤ τ), so no c passes the test; the interval published is [0, τ]."""
    model = _model("laplace", 48.0)
    low, high = selection_interval(model, 300, np.array([300], dtype=np.int64))
    assert (int(low[0]), int(high[0])) == (0, 300)


def test_near_threshold_flag_is_count_below_tau_plus_halfwidth() -> None:
    y = np.arange(90, 200, dtype=np.int64)
    flags = near_threshold(y, 93, 49)
    assert flags.tolist() == [v < 93 + 49 for v in y.tolist()]


def test_refuses_values_below_the_threshold_and_bad_levels() -> None:
    model = _model("laplace", 2.0)
    with pytest.raises(InputError, match=r"position\(s\) 1") as info:
        selection_interval(model, 10, np.array([12, 7], dtype=np.int64))
    assert "7" not in str(info.value).replace("position(s) 1", "")
    for level in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError):
            selection_interval(model, 10, np.array([12], dtype=np.int64), level)
    low, high = selection_interval(model, 10, np.zeros(0, dtype=np.int64))
    assert low.size == high.size == 0
