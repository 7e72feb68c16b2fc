"""Behaviour of noise calibration and the OpenDP mechanisms (privmob.privacy.mechanism)."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from privmob.config import PrivacyConfig
from privmob.privacy import mechanism
from privmob.privacy.accountant import PrivacyCost
from privmob.privacy.mechanism import NoiseModel, Sensitivity, calibrate, noise_counts, threshold_counts


def _dp() -> Any:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


def _model(kind: str, scale: float) -> NoiseModel:
    return NoiseModel(kind, scale, Sensitivity(1, 1), PrivacyCost(Fraction(1)))


class BruteForce:
    """The noise pmf summed independently of NoiseModel, over a very wide support."""

    def __init__(self, kind: str, scale: float) -> None:
        half = int(scale * (200 if kind == "laplace" else 40)) + 50
        self.z = np.arange(-half, half + 1)
        if kind == "laplace":
            w = np.exp(-np.abs(self.z) / scale)
        else:
            w = np.exp(-(self.z.astype(float) ** 2) / (2 * scale**2))
        self.p = w / w.sum()

    def prob(self, mask: np.ndarray) -> float:
        return float(self.p[mask].sum())

    def tail(self, t: int) -> float:
        return self.prob(self.z >= t)

    def cdf(self, x: int) -> float:
        return self.prob(self.z <= x)

    def within(self, h: int) -> float:
        return self.prob(np.abs(self.z) <= h)


MODELS = [("laplace", 24.0), ("laplace", 1.5), ("laplace", 0.7), ("gaussian", 24.38), ("gaussian", 3.0),
          ("gaussian", 0.8)]


# --- sensitivity --------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "w"), [(1, 1), (1, 24), (3, 8)])
def test_sensitivity_norms(k: int, w: int) -> None:
    s = Sensitivity(k, w)
    assert s.l0 == s.l1 == k * w
    assert s.l2 == pytest.approx(math.sqrt(k * w))


# --- calibrate: Laplace --------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "w", "eps"), [(1, 24, 1.0), (2, 8, 0.5), (3, 7, 0.3), (1, 1, 20.0)])
def test_laplace_scale_is_l1_over_epsilon(k: int, w: int, eps: float) -> None:
    s = Sensitivity(k, w)
    model = calibrate(PrivacyConfig(mechanism="laplace", epsilon=eps), s)
    assert model.mechanism == "laplace"
    assert model.scale == (k * w) / eps
    assert model.cost.epsilon == Fraction(repr(eps))
    assert model.cost.delta == 0
    assert model.cost.rho is None


@pytest.mark.parametrize(("k", "w", "eps"), [(1, 24, 1.0), (2, 8, 0.5), (3, 7, 0.3)])
def test_laplace_opendp_map_agrees(k: int, w: int, eps: float) -> None:
    s = Sensitivity(k, w)
    model = calibrate(PrivacyConfig(mechanism="laplace", epsilon=eps), s)
    spent = model.measurement().map(s.l1)
    assert spent == pytest.approx(eps, rel=1e-9)
    # An independently built OpenDP measurement at the same scale agrees.
    dp = _dp()
    ref = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int),
                            scale=(k * w) / eps)
    assert ref.map(s.l1) == pytest.approx(spent, rel=1e-12)


# --- calibrate: Gaussian --------------------------------------------------------------------------


def _approx_eps(scale: float, l2: float, delta: float) -> float:
    """ε at δ of OpenDP's vector Gaussian at ``scale`` for L2 sensitivity ``l2``."""
    dp = _dp()
    meas = dp.m.make_gaussian(dp.vector_domain(dp.atom_domain(T=int)), dp.l2_distance(T=float),
                              scale=scale)
    return float(dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(meas), delta).map(l2)[0])


@pytest.mark.parametrize(("k", "w", "eps", "delta"), [(1, 24, 1.0, 1e-7), (2, 8, 0.5, 1e-6),
                                                      (1, 1, 3.0, 1e-9)])
def test_gaussian_calibrated_rho_converts_to_at_most_epsilon(k: int, w: int, eps: float,
                                                            delta: float) -> None:
    s = Sensitivity(k, w)
    model = calibrate(PrivacyConfig(mechanism="gaussian", epsilon=eps, delta=delta), s)
    assert model.mechanism == "gaussian"
    assert model.cost.epsilon == Fraction(repr(eps))
    assert model.cost.delta == Fraction(repr(delta))
    assert model.cost.rho is not None
    rho = float(model.cost.rho)
    # ρ recorded is what OpenDP says the measurement costs at this scale ...
    assert float(model.measurement().map(s.l2)) == pytest.approx(rho, rel=1e-9)
    assert model.scale == pytest.approx(s.l2 / math.sqrt(2 * rho), rel=1e-9)
    # ... and per OpenDP it converts to at most ε at δ,
    assert _approx_eps(model.scale, s.l2, delta) <= eps * (1 + 1e-9)
    # while spending (nearly) all of it: 1% less noise would exceed ε.
    assert _approx_eps(model.scale * 0.99, s.l2, delta) > eps


def test_gaussian_threshold_delta_is_set_aside() -> None:
    s = Sensitivity(1, 24)
    cfg = PrivacyConfig(mechanism="gaussian", epsilon=1.0, delta=1e-7)
    full = calibrate(cfg, s)
    part = calibrate(cfg, s, threshold_delta=5e-8)
    assert part.cost.delta == Fraction(repr(1e-7 - 5e-8))
    assert _approx_eps(part.scale, s.l2, 1e-7 - 5e-8) <= 1.0 * (1 + 1e-9)
    assert part.scale > full.scale  # less δ for the noise means more noise


@pytest.mark.parametrize(("k", "w", "rho"), [(1, 24, 0.05), (2, 4, 0.5), (1, 1, 2.0)])
def test_gaussian_rho_given_is_used(k: int, w: int, rho: float) -> None:
    s = Sensitivity(k, w)
    model = calibrate(PrivacyConfig(mechanism="gaussian", epsilon=1.0, delta=1e-7, rho=rho), s)
    assert model.scale == pytest.approx(math.sqrt(k * w) / math.sqrt(2 * rho), rel=1e-12)
    assert model.cost.rho is not None
    assert float(model.cost.rho) == pytest.approx(rho, rel=1e-9)
    # the (ε, δ) recorded is the conversion of that ρ, not the configured ε
    assert float(model.cost.epsilon) == pytest.approx(_approx_eps(model.scale, s.l2, 1e-7), rel=1e-9)


def test_gaussian_rho_given_ignores_configured_epsilon() -> None:
    s = Sensitivity(1, 24)
    a = calibrate(PrivacyConfig(mechanism="gaussian", epsilon=0.5, rho=0.1), s)
    b = calibrate(PrivacyConfig(mechanism="gaussian", epsilon=2.0, rho=0.1), s)
    assert a.scale == b.scale


def test_more_epsilon_means_less_noise() -> None:
    s = Sensitivity(1, 24)
    for kind in ("laplace", "gaussian"):
        lo = calibrate(PrivacyConfig(mechanism=kind, epsilon=0.5), s)  # type: ignore[arg-type]
        hi = calibrate(PrivacyConfig(mechanism=kind, epsilon=2.0), s)  # type: ignore[arg-type]
        assert hi.scale < lo.scale


# --- NoiseModel: distribution summaries -----------------------------------------------------------


@pytest.mark.parametrize(("kind", "scale"), MODELS)
def test_tail_matches_brute_force(kind: str, scale: float) -> None:
    m, bf = _model(kind, scale), BruteForce(kind, scale)
    for t in [-3 * int(scale) - 1, -2, -1, 0, 1, 2, 5, int(scale), int(3 * scale) + 1]:
        assert m.tail(t) == pytest.approx(bf.tail(t), abs=1e-9)


@pytest.mark.parametrize(("kind", "scale"), MODELS)
def test_tail_symmetry(kind: str, scale: float) -> None:
    m = _model(kind, scale)
    assert m.tail(0) + m.tail(1) == pytest.approx(1.0, abs=1e-12)
    for t in (1, 2, 7, 30):
        # P(Z ≥ t) = P(Z ≤ -t) = 1 - P(Z ≥ 1 - t)
        assert m.tail(t) == pytest.approx(1 - m.tail(1 - t), abs=1e-12)
    assert m.tail(0) > 0.5
    assert m.tail(1) < 0.5


@pytest.mark.parametrize(("kind", "scale"), MODELS)
def test_tail_is_non_increasing(kind: str, scale: float) -> None:
    m = _model(kind, scale)
    tails = [m.tail(t) for t in range(-20, 60)]
    assert all(a >= b - 1e-15 for a, b in itertools.pairwise(tails))  # up to float rounding


@pytest.mark.parametrize(("kind", "scale"), MODELS)
@pytest.mark.parametrize("q", [0.025, 0.3, 0.5, 0.9, 0.975, 0.999])
def test_quantile_matches_brute_force(kind: str, scale: float, q: float) -> None:
    x, bf = _model(kind, scale).quantile(q), BruteForce(kind, scale)
    assert bf.cdf(x) >= q - 1e-12
    assert bf.cdf(x - 1) < q


@pytest.mark.parametrize(("kind", "scale"), MODELS)
def test_quantile_is_symmetric(kind: str, scale: float) -> None:
    m = _model(kind, scale)
    assert m.quantile(0.5) == 0
    assert abs(m.quantile(0.975) + m.quantile(0.025)) <= 1


@pytest.mark.parametrize(("kind", "scale"), MODELS)
@pytest.mark.parametrize("level", [0.5, 0.9, 0.95, 0.99])
def test_ci_halfwidth_is_the_smallest_covering_width(kind: str, scale: float, level: float) -> None:
    h, bf = _model(kind, scale).ci_halfwidth(level), BruteForce(kind, scale)
    assert bf.within(h) >= level
    assert h == 0 or bf.within(h - 1) < level


def test_ci_halfwidth_default_is_95_percent() -> None:
    m = _model("laplace", 24.0)
    assert m.ci_halfwidth() == m.ci_halfwidth(0.95)
    # continuous Laplace: 95% half-width = b·ln(20) ≈ 71.9
    assert abs(m.ci_halfwidth() - 24 * math.log(20)) <= 2


def test_gaussian_ci_is_close_to_the_normal_one() -> None:
    m = _model("gaussian", 24.38)
    assert abs(m.ci_halfwidth(0.95) - 1.96 * 24.38) <= 2


@pytest.mark.parametrize(("kind", "scale"), MODELS)
def test_std_matches_brute_force(kind: str, scale: float) -> None:
    bf = BruteForce(kind, scale)
    expected = math.sqrt(float((bf.p * bf.z.astype(float) ** 2).sum()))
    assert _model(kind, scale).std == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("kind", "scale"), MODELS)
@pytest.mark.parametrize("rate", [0.3, 1e-2, 1e-4, 1e-7])
def test_spurious_threshold(kind: str, scale: float, rate: float) -> None:
    t, bf = _model(kind, scale).spurious_threshold(rate), BruteForce(kind, scale)
    assert t >= 1
    assert bf.tail(t) <= rate * (1 + 1e-9)
    assert t == 1 or bf.tail(t - 1) > rate


def test_spurious_threshold_is_at_least_one_even_for_lax_rates() -> None:
    assert _model("laplace", 0.3).spurious_threshold(0.5) == 1


def test_spurious_threshold_grows_as_the_rate_shrinks() -> None:
    m = _model("laplace", 24.0)
    ts = [m.spurious_threshold(r) for r in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)]
    assert ts == sorted(ts)
    assert len(set(ts)) == len(ts)


@pytest.mark.parametrize(("kind", "scale"), MODELS)
@pytest.mark.parametrize("threshold", [1, 10, 60])
@pytest.mark.parametrize("prob", [0.5, 0.95])
def test_detectable_count(kind: str, scale: float, threshold: int, prob: float) -> None:
    c, bf = _model(kind, scale).detectable_count(threshold, prob), BruteForce(kind, scale)
    assert c >= 0
    # a true count c is released (c + Z ≥ threshold) with at least the probability ...
    assert bf.tail(threshold - c) >= prob - 1e-12
    # ... and c is the smallest such count
    assert c == 0 or bf.tail(threshold - (c - 1)) < prob


def test_detectable_count_at_half_is_the_threshold() -> None:
    for kind, scale in MODELS:
        assert _model(kind, scale).detectable_count(50, 0.5) == 50


# --- noise_counts ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def laplace24() -> NoiseModel:
    return calibrate(PrivacyConfig(mechanism="laplace", epsilon=1.0), Sensitivity(1, 24))


@pytest.fixture(scope="module")
def gauss() -> NoiseModel:
    return calibrate(PrivacyConfig(mechanism="gaussian", epsilon=1.0, delta=1e-7), Sensitivity(1, 24))


@pytest.mark.parametrize("workers", [None, 1, 2])
@pytest.mark.parametrize("which", ["laplace24", "gauss"])
def test_noise_counts_shape_dtype_and_change(request: pytest.FixtureRequest, which: str,
                                             workers: int | None) -> None:
    model = request.getfixturevalue(which)
    counts = np.arange(2000, dtype=np.int64) % 50
    before = counts.copy()
    out = noise_counts(model, counts, workers=workers)
    assert out.shape == counts.shape
    assert out.dtype == np.int64
    assert np.array_equal(counts, before)  # input untouched
    assert (out != counts).mean() > 0.9  # almost every count moved
    diff = out - counts
    assert abs(diff.mean()) < 5  # centred
    assert np.abs(diff).max() < 40 * model.scale


def test_noise_counts_empty_input(laplace24: NoiseModel) -> None:
    for workers in (None, 1, 2):
        out = noise_counts(laplace24, np.zeros(0, dtype=np.int64), workers=workers)
        assert out.shape == (0,)
        assert out.dtype == np.int64


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_noise_counts_keeps_order_across_chunks(monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    monkeypatch.setattr(mechanism, "_CHUNK", 7)
    tiny = calibrate(PrivacyConfig(mechanism="laplace", epsilon=20.0), Sensitivity(1, 1))  # b = 0.05
    counts = np.arange(0, 1000 * 103, 1000, dtype=np.int64)  # 103 keys → 15 chunks
    out = noise_counts(tiny, counts, workers=workers)
    assert out.shape == counts.shape
    assert np.abs(out - counts).max() <= 1
    assert (out == counts).mean() > 0.99


def test_noise_counts_matches_the_model_statistically(laplace24: NoiseModel, gauss: NoiseModel) -> None:
    for model in (laplace24, gauss):
        out = noise_counts(model, np.zeros(20_000, dtype=np.int64), workers=2)
        assert abs(out.mean()) < 6 * model.std / math.sqrt(out.size)
        assert out.std() == pytest.approx(model.std, rel=0.05)
        inside = (np.abs(out) <= model.ci_halfwidth(0.95)).mean()
        assert 0.94 < inside < 0.96 + 0.01


def test_noise_counts_is_fresh_each_call(laplace24: NoiseModel) -> None:
    zeros = np.zeros(500, dtype=np.int64)
    assert not np.array_equal(noise_counts(laplace24, zeros), noise_counts(laplace24, zeros))


# --- threshold_counts --------------------------------------------------------------------------------


def _keys_and_counts() -> tuple[list[str], list[int]]:
    keys = [f"cell{i}:0" for i in range(200)]
    counts = [0] * 100 + [5] * 50 + [100_000 + i for i in range(50)]
    return keys, counts


@pytest.mark.parametrize("which", ["laplace24", "gauss"])
@pytest.mark.parametrize("delta", [1e-7, 1e-9])
def test_threshold_counts_keeps_only_keys_at_or_above_threshold(
    request: pytest.FixtureRequest, which: str, delta: float
) -> None:
    model = request.getfixturevalue(which)
    keys, counts = _keys_and_counts()
    released, threshold, delta_used = threshold_counts(model, keys, counts, 10, delta)
    assert threshold >= 10
    assert 0 <= delta_used <= delta
    assert set(released) <= set(keys)
    assert all(v >= threshold for v in released.values())
    assert all(isinstance(v, int) for v in released.values())
    # large counts always clear the threshold; empty keys never do at this δ
    assert {f"cell{i}:0" for i in range(150, 200)} <= set(released)
    assert not {f"cell{i}:0" for i in range(100)} & set(released)


@pytest.mark.parametrize("which", ["laplace24", "gauss"])
def test_threshold_is_the_smallest_that_meets_delta(request: pytest.FixtureRequest, which: str) -> None:
    model = request.getfixturevalue(which)
    delta = 1e-8
    _, threshold, _ = threshold_counts(model, ["a"], [0], 1, delta)
    dp = _dp()
    dom = dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T=int))
    s = model.sensitivity
    if model.mechanism == "laplace":
        metric = dp.l01inf_distance(dp.absolute_distance(T=int))
        make = dp.m.make_laplace_threshold
    else:
        metric = dp.l02inf_distance(dp.absolute_distance(T=int))
        make = dp.m.make_gaussian_threshold
    d_in = (s.l0, s.l1, 1)
    at = make(dom, metric, scale=model.scale, threshold=threshold).map(d_in)
    below = make(dom, metric, scale=model.scale, threshold=threshold - 1).map(d_in)
    assert float(at[1]) <= delta
    assert float(below[1]) > delta


def test_threshold_respects_a_high_minimum(laplace24: NoiseModel) -> None:
    _, threshold, delta_used = threshold_counts(laplace24, ["a"], [0], 5000, 1e-7)
    assert threshold == 5000
    assert delta_used <= 1e-7


def test_threshold_counts_rejects_mismatched_lengths(laplace24: NoiseModel) -> None:
    with pytest.raises(ValueError, match="zip"):
        threshold_counts(laplace24, ["a", "b"], [1], 10, 1e-7)


def test_threshold_counts_empty_input(gauss: NoiseModel) -> None:
    released, threshold, delta_used = threshold_counts(gauss, [], [], 10, 1e-7)
    assert released == {}
    assert threshold >= 10
    assert delta_used <= 1e-7
