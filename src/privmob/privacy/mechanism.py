"""Stage 7 — mechanism: the one place privacy noise is drawn, always by OpenDP.

Floating-point Laplace from ``numpy.random`` is attackable (Mironov 2012); OpenDP's
samplers draw exact integer noise (discrete Laplace, discrete Gaussian) from a CSPRNG,
and its privacy maps — not our arithmetic — decide what a release costs.

OpenDP's samplers are single-threaded (~6 µs per key for Laplace, ~10 µs for Gaussian);
a city day has hundreds of thousands of public keys, so the vector is noised in chunks on
all cores (the OpenDP call releases the GIL). Each key is noised exactly once. Public keys
far below the release threshold never come here one by one: :mod:`privmob.privacy.sparse` samples
which of them clear it, with the same output distribution (ADR 0005).

We use OpenDP's core measurements, not its Polars context: that integration pins one
exact Polars release, and our engine runs on current Polars.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from privmob.config import PrivacyConfig
from privmob.errors import ConfigError
from privmob.privacy.accountant import PrivacyCost, exact

__all__ = ["NoiseModel", "Sensitivity", "calibrate", "noise_counts", "opendp", "suppress",
           "threshold_counts", "threshold_for"]

_CHUNK = 32_768


def opendp() -> Any:
    """OpenDP's prelude with the ``contrib`` features privmob's measurements need."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


@dataclass(frozen=True)
class Sensitivity:
    """How much one person can change the vector of counts after bounding.

    With at most ``k`` cells per window and ``w`` windows a person changes at most
    ``k·w`` counts by one each: L1 = k·w, L2 = √(k·w), L0 = k·w, L∞ = 1.
    """

    cells_per_window: int
    windows: int

    @property
    def l0(self) -> int:
        return self.cells_per_window * self.windows

    @property
    def l1(self) -> int:
        return self.l0

    @property
    def l2(self) -> float:
        return math.sqrt(self.l0)


@dataclass(frozen=True)
class NoiseModel:
    """A calibrated mechanism: its kind, OpenDP scale, and what one release costs.

    ``scale`` is OpenDP's parameter: b of the discrete Laplace ``p(z) ∝ exp(-|z|/b)`` or
    σ of the discrete Gaussian ``p(z) ∝ exp(-z²/2σ²)``.
    """

    mechanism: str
    scale: float
    sensitivity: Sensitivity
    cost: PrivacyCost

    # -- the noise distribution, computed exactly on the integers ------------------------
    @cached_property
    def _pmf(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        if self.mechanism == "laplace":
            half = math.ceil(self.scale * 60) + 10
            z = np.arange(-half, half + 1, dtype=np.int64)
            w = np.exp(-np.abs(z) / self.scale)
        else:
            half = math.ceil(self.scale * 14) + 10
            z = np.arange(-half, half + 1, dtype=np.int64)
            w = np.exp(-(z.astype(np.float64) ** 2) / (2 * self.scale**2))
        return z, w / w.sum()

    def tail(self, t: int) -> float:
        """P(noise ≥ t)."""
        z, p = self._pmf
        return float(p[z >= t].sum())

    def quantile(self, q: float) -> int:
        """Smallest integer x with P(noise ≤ x) ≥ q."""
        z, p = self._pmf
        cdf = np.cumsum(p)
        return int(z[min(int(np.searchsorted(cdf, q - 1e-15)), len(z) - 1)])

    def ci_halfwidth(self, level: float = 0.95) -> int:
        """Smallest h with P(|noise| ≤ h) ≥ level: a released count ± h covers the truth."""
        z, p = self._pmf
        pos = p[z >= 0]  # p(0), p(1), ... ; the distribution is symmetric
        mass = np.cumsum(np.concatenate((pos[:1], 2 * pos[1:])))
        return int(np.searchsorted(mass, level - 1e-15))

    @property
    def std(self) -> float:
        z, p = self._pmf
        return float(np.sqrt((p * z.astype(np.float64) ** 2).sum()))

    def spurious_threshold(self, max_rate: float) -> int:
        """Smallest t ≥ 1 with P(noise ≥ t) ≤ max_rate: an empty key passes t that rarely."""
        z, p = self._pmf
        tails = np.cumsum(p[::-1])[::-1]  # tails[i] = P(noise ≥ z[i])
        ok = np.nonzero((tails <= max_rate) & (z >= 1))[0]
        return int(z[ok[0]]) if ok.size else int(z[-1])

    def detectable_count(self, threshold: int, probability: float) -> int:
        """Smallest true count released with at least ``probability`` at ``threshold``."""
        return max(0, threshold - self.quantile(1 - probability))

    # -- the OpenDP measurements ---------------------------------------------------------
    def measurement(self) -> Any:
        """The OpenDP measurement over a vector of integer counts."""
        dp = opendp()
        if self.mechanism == "laplace":
            space = dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int)
            return dp.m.make_laplace(*space, scale=self.scale)
        space = dp.vector_domain(dp.atom_domain(T=int)), dp.l2_distance(T=float)
        return dp.m.make_gaussian(*space, scale=self.scale)


def calibrate(privacy: PrivacyConfig, sensitivity: Sensitivity, *,
              threshold_delta: float = 0.0) -> NoiseModel:
    """Find the noise scale that spends exactly the configured budget (per OpenDP's maps).

    Laplace: pure ε-DP with b = L1/ε. Gaussian: ρ given, or the largest ρ whose (ε, δ)
    conversion fits the configured ε and δ − ``threshold_delta`` (the δ a key-selection
    threshold will need), then σ = L2/√(2ρ).
    """
    dp = opendp()
    eps = exact(privacy.epsilon)
    if privacy.mechanism == "laplace":
        scale = sensitivity.l1 / privacy.epsilon
        _check_scale(scale, privacy.epsilon)
        model = NoiseModel("laplace", scale, sensitivity, PrivacyCost(eps))
        spent = model.measurement().map(sensitivity.l1)
        if spent > privacy.epsilon * (1 + 1e-12):  # pragma: no cover - OpenDP is the judge
            raise AssertionError(f"OpenDP says ε = {spent}, more than {privacy.epsilon}")
        return model
    delta_conv = privacy.delta - threshold_delta
    if privacy.rho is not None:
        rho = privacy.rho
    else:
        def to_approx(r: float) -> Any:
            meas = dp.m.make_gaussian(
                dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float),
                scale=1 / math.sqrt(2 * r))
            return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(meas), delta_conv)

        # ρ for sensitivity 1 at σ = 1/√(2ρ) is exactly ρ; search the largest ρ that fits.
        lo, hi = 1e-14, 10.0
        if to_approx(lo).map(1.0)[0] > privacy.epsilon:
            raise ConfigError(
                f"epsilon = {privacy.epsilon:g} is too small for the Gaussian mechanism at "
                f"delta = {delta_conv:.3g}; use a larger epsilon or mechanism = 'laplace'"
            )
        for _ in range(200):
            mid = math.sqrt(lo * hi)
            if to_approx(mid).map(1.0)[0] <= privacy.epsilon:
                lo = mid
            else:
                hi = mid
            if hi / lo < 1 + 1e-9:
                break
        rho = lo
    scale = sensitivity.l2 / math.sqrt(2 * rho)
    _check_scale(scale, privacy.epsilon)
    probe = NoiseModel("gaussian", scale, sensitivity, PrivacyCost(eps))
    rho_spent = float(probe.measurement().map(sensitivity.l2))
    epsilon = eps if privacy.rho is None else exact(rho_to_epsilon(rho_spent, delta_conv))
    cost = PrivacyCost(epsilon, exact(delta_conv), Fraction(repr(rho_spent)))
    return NoiseModel("gaussian", scale, sensitivity, cost)


#: Noise beyond this scale would bury any count of people in a city (and the exact noise
#: distribution privmob computes for intervals and thresholds would not fit in memory).
MAX_SCALE = 20_000.0


def _check_scale(scale: float, epsilon: float) -> None:
    if scale > MAX_SCALE:
        raise ConfigError(
            f"epsilon = {epsilon:g} needs noise of scale {scale:,.0f}: no count of people could "
            "ever be told from noise; raise epsilon or lower max_windows / max_cells_per_window"
        )


def rho_to_epsilon(rho: float, delta: float) -> float:
    """The ε of ρ-zCDP at ``delta``, by OpenDP's conversion."""
    dp = opendp()
    meas = dp.m.make_gaussian(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float),
                              scale=1 / math.sqrt(2 * rho))
    return float(dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(meas), delta).map(1.0)[0])


def noise_counts(model: NoiseModel, counts: npt.NDArray[np.int64],
                 workers: int | None = None) -> npt.NDArray[np.int64]:
    """Add the model's noise to every count, once each, in parallel chunks."""
    n = int(counts.shape[0])
    if n == 0:
        return counts.copy()
    meas = model.measurement()
    cores = os.cpu_count() or 1
    size = max(256, min(_CHUNK, -(-n // cores)))  # a few thousand keys still use every core
    chunks = [counts[i:i + size].tolist() for i in range(0, n, size)]
    workers = workers or min(len(chunks), cores)
    if workers <= 1:
        noisy = [meas(c) for c in chunks]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="privmob-noise") as ex:
            noisy = list(ex.map(meas, chunks))
    out = np.fromiter((v for chunk in noisy for v in chunk), dtype=np.int64, count=n)
    return out


def suppress(noisy: npt.NDArray[np.int64], threshold: int) -> npt.NDArray[np.bool_]:
    """Mask of keys to publish: noisy count ≥ threshold (never the exact count).

    Comparing the *noisy* count is post-processing of a DP output and costs nothing;
    comparing the exact count would leak ("fewer than τ") through an absence.
    """
    return noisy >= threshold


def threshold_counts(model: NoiseModel, keys: Sequence[str], counts: Sequence[int],
                     min_threshold: int, delta: float) -> tuple[dict[str, int], int, float]:
    """Release data-dependent keys with OpenDP's noise-threshold mechanism.

    Keys seen in the data cannot all be published (a key's presence reveals a person),
    so only keys whose noisy count clears a threshold are kept. The threshold is the
    smallest one ≥ ``min_threshold`` whose δ (per OpenDP's map) is ≤ ``delta``.

    Returns the kept keys with noisy counts, the threshold used and its δ.
    """
    make, _ = _threshold_measurement(model)
    lo, spent = threshold_for(model, min_threshold, delta)
    released = make(lo)(dict(zip(keys, (int(c) for c in counts), strict=True)))
    return dict(released), lo, spent


def _threshold_measurement(model: NoiseModel) -> tuple[Any, tuple[int, int, int]]:
    dp = opendp()
    dom = dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T=int))
    if model.mechanism == "laplace":
        metric = dp.l01inf_distance(dp.absolute_distance(T=int))

        def make(t: int) -> Any:
            return dp.m.make_laplace_threshold(dom, metric, scale=model.scale, threshold=t)
    else:
        metric = dp.l02inf_distance(dp.absolute_distance(T=int))

        def make(t: int) -> Any:
            return dp.m.make_gaussian_threshold(dom, metric, scale=model.scale, threshold=t)

    s = model.sensitivity
    return make, (s.l0, s.l1, 1)


def threshold_for(model: NoiseModel, min_threshold: int, delta: float) -> tuple[int, float]:
    """The smallest threshold ≥ ``min_threshold`` whose δ (OpenDP's map) is ≤ ``delta``.

    Data-independent, so :meth:`Plan.explain` can state it before any data is read.
    """
    make, d_in = _threshold_measurement(model)

    def delta_at(t: int) -> float:
        return float(make(t).map(d_in)[1])

    lo = max(1, min_threshold)
    if delta_at(lo) > delta:
        hi = lo * 2
        while delta_at(hi) > delta:
            hi *= 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if delta_at(mid) <= delta:
                hi = mid
            else:
                lo = mid
        lo = hi
    return lo, delta_at(lo)
