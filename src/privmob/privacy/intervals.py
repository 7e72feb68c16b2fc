"""Selection-aware confidence intervals for released counts.

A count is published only when its noisy value ``Y = c + Z`` clears the release threshold
τ. Conditional on being published, ``Y`` overstates small true counts: at τ = 92 a released
``y`` is never within ``± h`` of a true count ≤ 43, so ``y ± h`` (the unconditional 95%
interval) covers such counts 0% of the time. The interval published instead inverts the
test on the distribution a reader actually sees, ``Y`` given ``Y ≥ τ``:

    c ∈ CI(y)  ⇔  P(Y ≥ y | c, Y ≥ τ) > α/2  and  P(Y ≤ y | c, Y ≥ τ) > α/2,   c ≥ 0.

For every true count ``c`` the published interval then covers ``c`` with probability
≥ 1 − α *among the releases where c's key was published* (tests/statistical/test_intervals.py).

Why the accepted ``c`` form an interval: the discrete Laplace and discrete Gaussian have
log-concave probability mass functions, so their survival function ``S(t) = P(Z ≥ t)`` is
log-concave and ``S(s + d) / S(s)`` does not increase in ``s``. With ``s = τ − c`` the first
probability is ``S(y − c) / S(τ − c)`` (non-decreasing in ``c``) and the second is
``1 − S(y + 1 − c) / S(τ − c)`` (non-increasing in ``c``): the accepted set is
``[c_lo, c_hi]``, found by vectorised bisection on the integers, once per distinct ``y``.

Numerics. Every tail is computed as ``log S(t)`` and only differences of logs are
exponentiated (the comparisons are made in log space), so ``P(Y ≥ τ | c)`` is never formed
as a float and never underflows: at ``c`` tens of σ below τ it is ``e^{-1250}``, far below
the smallest double, but its logarithm is an ordinary number and the ratio is exact to
rounding. Where that ratio itself underflows (``log U < −745``) the true probability is
below 1e-300, far below α/2, so rejecting ``c`` is the correct conclusion, not an artefact.
The discrete Laplace tail is in closed form. The discrete Gaussian's is summed on the
integers (``np.logaddexp.accumulate``) over the range the search needs plus 40σ of tail
on either side, beyond which the neglected mass is below ``e^{-800}`` relative. The noise
model's own float pmf (:class:`privmob.privacy.mechanism.NoiseModel`) stops at 14σ, so it is used
only for the bracket (:meth:`~privmob.privacy.mechanism.NoiseModel.ci_halfwidth`); the tails here
are those of the same distribution (same kind, same scale) and agree with
:meth:`~privmob.privacy.mechanism.NoiseModel.tail` wherever that is representable.

An empty set, and what is published instead. When even ``c = 0`` makes the observed ``y``
a lower-tail event (``P(Y ≤ y | 0, Y ≥ τ) ≤ α/2``; it happens for ``y`` at τ with a wide
discrete Laplace, b ≳ 40), no ``c`` passes the test. Any superset of the accepted set keeps
the coverage guarantee, so the interval published is ``[0, c*]`` with ``c*`` the largest
count as compatible with ``y`` as ``c = 0`` (for the discrete Laplace, whose conditional
distribution is the same for every ``c ≤ τ``, that is ``[0, τ]``: the data cannot tell
those counts apart). All of this is post-processing of released values: no privacy cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from privmob.errors import ConfigError, InputError

if TYPE_CHECKING:
    from privmob.privacy.mechanism import NoiseModel

__all__ = ["CI_METHOD", "SELECTION_NOTE", "log_sf", "near_threshold", "selection_interval"]

#: How the published ci_low/ci_high were made; the manifests state it beside ci95_halfwidth.
CI_METHOD = "selection-aware (conditional on publication), 95%"

#: Tail mass beyond this many σ of a discrete Gaussian is below e^{-800} of the total.
_GAUSS_SPAN_SIGMAS = 40
#: Relative slack for "as compatible as c = 0" in the empty-set fallback (float ties).
_TIE = 1e-9

LogSF = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float64]]


def log_sf(model: NoiseModel, t_min: int, t_max: int) -> LogSF:
    """``t ↦ log P(Z ≥ t)`` for the model's noise, valid for integers ``t_min ≤ t ≤ t_max``.

    Never ``−inf`` for a finite ``t``: the far tails stay ordinary (very negative) numbers.
    """
    if model.mechanism == "laplace":
        b = float(model.scale)
        log_q = -1.0 / b
        log1p_q = math.log1p(math.exp(log_q))

        def laplace(t: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
            # p(z) = (1−q)/(1+q)·q^|z|:  S(t) = q^t/(1+q) for t ≥ 0, 1 − S(1 − t) below.
            tf = np.asarray(t, dtype=np.float64)
            upper = tf * log_q - log1p_q
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                lower = np.log1p(-np.exp((1.0 - tf) * log_q - log1p_q))
            return np.where(tf >= 0, upper, lower)

        return laplace
    if model.mechanism == "gaussian":
        sigma = float(model.scale)
        span = math.ceil(_GAUSS_SPAN_SIGMAS * sigma) + 10
        z_lo = min(int(t_min), -span)
        z_hi = max(int(t_max), 0) + span
        z = np.arange(z_lo, z_hi + 1, dtype=np.float64)
        log_w = -(z * z) / (2.0 * sigma * sigma)
        tails = np.logaddexp.accumulate(log_w[::-1])[::-1]  # log Σ_{z' ≥ z} w(z')
        log_norm = float(tails[0])

        def gaussian(t: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
            pos = np.asarray(t, dtype=np.int64) - z_lo
            if pos.size and (int(pos.min()) < 0 or int(pos.max()) >= tails.size):
                raise ValueError("log_sf evaluated outside the range it was built for")
            return np.minimum(tails[pos] - log_norm, 0.0)

        return gaussian
    raise ConfigError(f"no selection-aware interval for mechanism {model.mechanism!r}")


def selection_interval(
    model: NoiseModel,
    threshold: int,
    noisy: npt.ArrayLike,
    level: float = 0.95,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The ``level`` interval for the true count of each released value, given it was released.

    Parameters
    ----------
    model
        The noise the values were released with.
    threshold
        τ: a value was released because it was ≥ τ (every ``noisy`` must be).
    noisy
        Released noisy counts.
    level
        Confidence level 1 − α.

    Returns
    -------
    (ci_low, ci_high)
        Integer arrays aligned with ``noisy``; ``0 ≤ ci_low ≤ ci_high``. Far above τ they are
        ``noisy ∓ model.ci_halfwidth(level)``; near τ they shift down (and may lie below the
        released value: that is the upward bias of a released count).
    """
    if not 0.0 < level < 1.0:
        raise ConfigError(f"confidence level must be between 0 and 1 (exclusive), not {level!r}")
    y_all = np.asarray(noisy, dtype=np.int64).ravel()
    if y_all.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()
    below = np.flatnonzero(y_all < threshold)
    if below.size:
        where = ", ".join(str(int(i)) for i in below[:5]) + (" …" if below.size > 5 else "")
        raise InputError(
            f"{below.size} value(s) at position(s) {where} are below the release threshold: "
            "only released counts (at or above it) have a selection-aware interval"
        )
    ys, inverse = np.unique(y_all, return_inverse=True)
    half_alpha = (1.0 - level) / 2.0
    log_a = math.log(half_alpha)
    log_1ma = math.log1p(-half_alpha)
    tau = int(threshold)

    bracket = model.ci_halfwidth(level) + 2
    while True:  # c_hi(y) ≤ y + h (conditioning only moves Y up); checked, not assumed
        top = ys + bracket
        sf = log_sf(model, tau - int(top.max()), int(ys.max()) + 1)

        def log_upper(c: npt.NDArray[np.int64], sf: LogSF = sf) -> npt.NDArray[np.float64]:
            """log P(Y ≥ y | c, Y ≥ τ)."""
            return sf(ys - c) - sf(tau - c)

        def log_above(c: npt.NDArray[np.int64], sf: LogSF = sf) -> npt.NDArray[np.float64]:
            """log P(Y ≥ y + 1 | c, Y ≥ τ) = log(1 − P(Y ≤ y | c, Y ≥ τ))."""
            return sf(ys + 1 - c) - sf(tau - c)

        if bool(np.all(log_upper(top) > log_a)) and bool(np.all(log_above(top) >= log_1ma)):
            break
        bracket *= 2  # pragma: no cover - the half-width bound always holds

    zero = np.zeros_like(ys)
    # c_lo: smallest c with P(Y ≥ y | c, sel) > α/2 (non-decreasing in c).
    c_lo = _first_true(lambda c: log_upper(c) > log_a, zero, top)
    # c_hi: largest c with P(Y ≤ y | c, sel) > α/2 (non-increasing in c), i.e. one below the
    # first c with P(Y ≥ y + 1 | c, sel) ≥ 1 − α/2.
    c_hi = _first_true(lambda c: log_above(c) >= log_1ma, zero, top) - 1
    none_pass = c_hi < 0
    if none_pass.any():
        # No c ≥ 0 passes: publish [0, c*], c* the largest c as compatible as c = 0.
        p0 = -np.expm1(log_above(zero))  # P(Y ≤ y | 0, sel)
        cutoff = p0 * (1.0 - _TIE)
        c_star = _first_true(lambda c: -np.expm1(log_above(c)) < cutoff, zero, top) - 1
        c_hi = np.where(none_pass, np.maximum(c_star, 0), c_hi)
        c_lo = np.where(none_pass, 0, c_lo)
    low = np.minimum(c_lo, c_hi)
    high = np.maximum(c_lo, c_hi)  # the union keeps coverage if rounding ever crossed them
    return low[inverse].astype(np.int64), high[inverse].astype(np.int64)


def near_threshold(noisy: npt.ArrayLike, threshold: int, halfwidth: int) -> npt.NDArray[np.bool_]:
    """Released values within one (unconditional) interval of τ: ``noisy < τ + halfwidth``.

    These are the counts whose upward selection bias matters; reports mark them.
    """
    return np.asarray(noisy, dtype=np.int64) < int(threshold) + int(halfwidth)


def _first_true(
    pred: Callable[[npt.NDArray[np.int64]], npt.NDArray[np.bool_]],
    lo: npt.NDArray[np.int64],
    hi: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """Per element, the smallest integer c in [lo, hi] where the monotone ``pred`` (false, then
    true) holds; ``hi`` when it holds nowhere below. ``pred`` sees one c per element."""
    lo = lo.astype(np.int64).copy()
    hi = hi.astype(np.int64).copy()
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        ok = np.asarray(pred(mid), dtype=bool)
        hi = np.where(active & ok, mid, hi)
        lo = np.where(active & ~ok, mid + 1, lo)


#: What every map and page says about published counts near τ (Chinese, English).
SELECTION_NOTE = (
    "接近发布阈值的人数偏高：只有加噪后达到阈值的数字才会发布。其95%区间已按“已发布”条件校正"
    "（选择感知区间），可能低于显示值。",
    "Counts near the release threshold are biased upward: a count is published only when its "
    "noise lifted it over the threshold. Their 95% intervals are selection-aware (they allow for "
    "that) and may lie below the shown count.",
)
