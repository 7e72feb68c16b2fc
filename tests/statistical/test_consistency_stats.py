"""Consistency post-processing improves noisy hierarchical counts (Hay et al., VLDB 2010).

These tests exercise :mod:`privmob.privacy.consistency`, a post-processing function: its
input is any set of noisy values and its output is a deterministic function of them. The
noise below is therefore drawn with a seeded ``numpy.random`` generator (continuous
Laplace), which is fine *here only* because nothing is released: the test measures the
estimator's bias and variance over many draws, not the privacy of a release (privacy noise
is drawn by OpenDP through ``privmob.privacy.noising.sample`` alone).

Each draw is one column of an ``(n, R)`` array, so a whole simulation is one call. Checks:

* the least-squares estimates are unbiased at every node (mean error within 5 standard
  errors), with unmeasured internal nodes too;
* their variance is the one the linear estimator predicts, never above a node's own
  measurement variance, and at the roots and the leaves below the raw measurements' on
  the same draws (Hay et al.'s claim), with per-level variances of very different size;
* control: ignoring those variances (equal weights) makes the leaves *worse* than raw,
  so the variance check has the power to catch a wrong weighting;
* on sparse true trees (most leaves 0) the non-negative, and then the rounded, estimates
  have a lower error than the raw measurements and than the plain least squares.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from privmob.privacy.consistency import consistent, nonnegative, round_consistent

F = npt.NDArray[np.float64]
I = npt.NDArray[np.int64]  # noqa: E741
R = 20_000
Z = 5.0  # standard errors allowed: a false alarm per check is ~6e-7


def h3_like_forest() -> tuple[I, I]:
    """Three roots: one split to depth 3 along one branch (mixed resolutions), one split
    once, one left whole; fanout 7 like H3. Returns (parent, depth)."""
    parent: list[int] = []
    depth: list[int] = []

    def add(p: int, d: int) -> int:
        parent.append(p)
        depth.append(d)
        return len(parent) - 1

    a = add(-1, 0)
    kids = [add(a, 1) for _ in range(7)]
    grand = [add(kids[0], 2) for _ in range(7)]
    for _ in range(7):
        add(grand[0], 3)
    for _ in range(3):
        add(kids[1], 2)
    b = add(-1, 0)
    for _ in range(7):
        add(b, 1)
    add(-1, 0)
    return np.array(parent), np.array(depth)


PARENT, DEPTH = h3_like_forest()
N = len(PARENT)
INTERNAL = np.bincount(PARENT[PARENT >= 0], minlength=N) > 0
LEAF = ~INTERNAL
ROOT = PARENT < 0
ALONE = ROOT & LEAF  # a root never split: nothing to combine with, its estimate is its value


def truth_from_leaves(leaves: F) -> F:
    """Node totals from leaf values (every node the sum of the leaves under it)."""
    x = np.where(LEAF, leaves, 0.0)
    for d in range(int(DEPTH.max()), 0, -1):
        at = np.flatnonzero(d == DEPTH)
        np.add.at(x, PARENT[at], x[at])
    return x


def draw(truth: F, variance: F, seed: int) -> F:
    """R noisy measurements of every node (Laplace, the given variances), one per column."""
    rng = np.random.default_rng(seed)
    scale = np.sqrt(variance / 2.0)
    return truth[:, None] + rng.laplace(0.0, 1.0, (N, R)) * scale[:, None]


def linear_variance(measured: npt.NDArray[np.bool_], variance: F) -> F:
    """Variance of each estimate predicted from the estimator's matrix (it is linear)."""
    cols = np.flatnonzero(measured)
    m = np.zeros((N, cols.size))
    for j, node in enumerate(cols):
        e = np.where(measured, 0.0, np.nan)
        e[node] = 1.0
        m[:, j] = consistent(PARENT, e, variance)
    return np.asarray(np.einsum("ij,j,ij->i", m, variance[cols], m), dtype=np.float64)


#: Per-level noise variance: roots and leaves cheap to measure well, the middle noisy.
VARIANCE = np.select([ROOT, LEAF], [8.0, 4.0], 30.0)
TRUTH = truth_from_leaves(np.random.default_rng(1).integers(0, 40, N).astype(np.float64))


def test_least_squares_is_unbiased_with_predicted_variance_below_raw() -> None:
    y = draw(TRUTH, VARIANCE, seed=2)
    x = consistent(PARENT, y, VARIANCE[:, None])
    err = x - TRUTH[:, None]
    se = err.std(axis=1, ddof=1) / np.sqrt(R)
    assert np.all(np.abs(err.mean(axis=1)) <= Z * se)

    predicted = linear_variance(np.ones(N, dtype=bool), VARIANCE)
    assert np.all(predicted <= VARIANCE + 1e-12)
    empirical = err.var(axis=1, ddof=1)
    # a variance estimate from R draws of a near-Gaussian error: relative sd ≈ sqrt(2/R)
    # (3/R more for the raw Laplace kurtosis); 5 sd is ≈ 0.06
    assert np.all(np.abs(empirical / predicted - 1) <= Z * np.sqrt(5 / R))

    raw = (y - TRUTH[:, None]).var(axis=1, ddof=1)
    at = (ROOT | LEAF) & ~ALONE
    assert np.all(empirical[at] < 0.97 * raw[at])  # ≈ 0.93 at a leaf, 0.85 at the big root
    assert np.all(empirical[ALONE] == raw[ALONE])


def test_unmeasured_internal_nodes_keep_the_estimates_unbiased() -> None:
    measured = ~(INTERNAL & ~ROOT)  # roots and leaves measured, the middle levels not
    y = draw(TRUTH, VARIANCE, seed=3)
    y[~measured] = np.nan
    x = consistent(PARENT, y, VARIANCE[:, None])
    err = x - TRUTH[:, None]
    se = err.std(axis=1, ddof=1) / np.sqrt(R)
    assert np.all(np.abs(err.mean(axis=1)) <= Z * se)
    predicted = linear_variance(measured, VARIANCE)
    assert np.all(np.abs(err.var(axis=1, ddof=1) / predicted - 1) <= Z * np.sqrt(5 / R))
    raw = (y[measured] - TRUTH[measured, None]).var(axis=1, ddof=1)
    ls = err[measured].var(axis=1, ddof=1)
    assert np.all(ls[~ALONE[measured]] < raw[~ALONE[measured]])


def test_control_equal_weights_make_the_leaves_worse_than_raw() -> None:
    """Ignoring the per-level variances lets the noisy middle level pull its leaves: the
    variance check above would catch an estimator that weighted wrongly."""
    y = draw(TRUTH, VARIANCE, seed=4)
    wrong = consistent(PARENT, y, np.ones((N, 1)))
    err = (wrong - TRUTH[:, None]).var(axis=1, ddof=1)
    raw = (y - TRUTH[:, None]).var(axis=1, ddof=1)
    assert np.any(err[LEAF] > raw[LEAF])


def test_nonnegative_beats_raw_and_least_squares_on_sparse_trees() -> None:
    rng = np.random.default_rng(5)
    leaves = np.where(rng.random(N) < 0.85, 0.0, rng.integers(5, 30, N).astype(np.float64))
    truth = truth_from_leaves(leaves)
    assert (truth[LEAF] == 0).mean() > 0.6
    variance = np.full(N, 18.0)  # Laplace scale 3 at every level
    y = draw(truth, variance, seed=6)
    ls = consistent(PARENT, y, variance[:, None])
    nn = nonnegative(PARENT, ls)
    rounded = round_consistent(PARENT, nn)

    def mse(est: npt.NDArray[np.generic]) -> float:
        return float(((est - truth[:, None]) ** 2).mean())

    raw_err, ls_err, nn_err, round_err = mse(y), mse(ls), mse(nn), mse(rounded)
    assert ls_err < raw_err
    assert nn_err < 0.8 * ls_err  # the zeros' negative noise is gone
    assert round_err < ls_err
    # and on the zero leaves alone, where sparsity bites
    zeros = LEAF & (truth == 0)
    assert float((nn[zeros] ** 2).mean()) < 0.5 * float((y[zeros] ** 2).mean())
