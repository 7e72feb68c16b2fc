"""An empirical DP audit of PrivTree's split decisions (privmob.privacy.tree), checked against
the exact probabilities, and the proof's depth independence checked exhaustively.

The neighbouring pair: one root at res 5 whose tree goes to res 7 (two levels of decisions:
the root, then its seven children; res-7 cells are never split). D has θ + 1 persons on the
root-to-leaf path root → centre child → centre grandchild; D' has one person (m_t = 1) fewer,
θ, on every node of that path; every other node is empty in both. With ε = 2, λ = 13/12 and
δ = 3 this is the worst case of the proof for two levels: D's root and centre child each clear
the threshold e^{1/λ} times more often than D''s, so the partition "root split, only the
centre child split" is e^{2/λ} ≈ 6.3 times likelier under D (the claim allows e^2 ≈ 7.4).

How it runs fast and still tests the real code: :func:`partition` is called with ~4,000
copies of that small tree (4,000 distinct roots, each with the same relative counts). Every
node's noise is independent, and a root's leaves depend only on its own nodes' noise, so
each root of one call is an independent run of the one-root tree; ten calls per world give
~40,000 runs in well under a second. OpenDP's samplers cannot be seeded (they draw from the
OS's CSPRNG), so this is a test at a fixed confidence, not a replay: every bound below holds
jointly with probability ≥ 1 − 10⁻⁴ (Clopper–Pearson, Bonferroni over everything tested).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import Counter
from fractions import Fraction

import h3
import numpy as np
import numpy.typing as npt
import polars as pl
import polars_h3 as plh3
from scipy import stats

from privmob.privacy.accountant import PrivacyCost
from privmob.privacy.tree import TreeParams, level_spec, partition

PARAMS = TreeParams(min_resolution=5, max_resolution=7, epsilon=2.0, cells_per_person=1, theta=10)
CALLS = 10  # partition() calls per world
ALPHA = 1e-4  # joint error of every bound in this file
MIN_SEEN = 50  # an outcome is audited when seen at least this often in the two worlds
WHOLE = -1  # outcome code: the root was not split (otherwise a bitmask of split children)

_CENTRE = h3.latlng_to_cell(39.9, 116.4, 5)
ROOTS = np.array(sorted(h3.str_to_int(c) for c in h3.grid_disk(_CENTRE, 36)), dtype=np.uint64)


# -- the exact probabilities -----------------------------------------------------------------

def tail(t: int, lam: float) -> float:
    """P(Z ≥ t) for the discrete Laplace p(z) ∝ e^{−|z|/λ} (OpenDP's scale λ)."""
    a = math.exp(-1 / lam)
    return a**t / (1 + a) if t >= 1 else 1 - a ** (1 - t) / (1 + a)


def p_split(count: int, depth: int, p: TreeParams) -> float:
    """P(split) of a node: its biased count b plus noise must exceed θ (b + Z ≥ θ + 1)."""
    b = max(count - depth * p.delta, p.theta - p.delta)
    return tail(p.theta + 1 - b, p.lam)


def outcome_probs(path_count: int, p: TreeParams) -> dict[int, float]:
    """Exact probability of every partition of the one-root tree (WHOLE or split-children mask)."""
    root = p_split(path_count, 0, p)
    kids = [p_split(path_count, 1, p)] + [p_split(0, 1, p)] * 6  # child position 0 = centre
    probs = {WHOLE: 1 - root}
    for mask in range(128):
        q = root
        for i, k in enumerate(kids):
            q *= k if mask >> i & 1 else 1 - k
        probs[mask] = q
    return probs


# -- the runs --------------------------------------------------------------------------------

def _col(cells: npt.NDArray[np.uint64], expr: pl.Expr) -> npt.NDArray[np.uint64]:
    frame = pl.Series("c", cells, dtype=pl.UInt64).to_frame()
    return frame.select(expr).to_series().to_numpy().astype(np.uint64)


def world(path_count: int) -> pl.DataFrame:
    """Every root with ``path_count`` persons on its path root → centre child → grandchild."""
    c1 = _col(ROOTS, plh3.cell_to_center_child("c", 6))
    c2 = _col(ROOTS, plh3.cell_to_center_child("c", 7))
    cells = np.concatenate([ROOTS, c1, c2])
    return pl.DataFrame({"cell": pl.Series(cells, dtype=pl.UInt64),
                         "count": pl.Series(np.full(cells.size, path_count), dtype=pl.Int64)})


@functools.cache
def outcomes(path_count: int) -> Counter[int]:
    """Outcome of each root over ``CALLS`` calls of :func:`partition` on :func:`world`
    (computed once per world for the tests of this file)."""
    counts = world(path_count)
    seen: Counter[int] = Counter()
    for _ in range(CALLS):
        part = partition(ROOTS, counts, PARAMS)
        code = np.zeros(ROOTS.size, dtype=np.int64)
        code[np.searchsorted(ROOTS, part.leaves[part.resolutions == 5])] = WHOLE
        fine = part.leaves[part.resolutions == 7]
        split_kids = np.unique(_col(fine, plh3.cell_to_parent("c", 6)))
        frame = pl.Series("c", split_kids, dtype=pl.UInt64).to_frame()
        pos = frame.select(plh3.cell_to_child_pos("c", 5)).to_series().to_numpy().astype(np.int64)
        owner = np.searchsorted(ROOTS, _col(split_kids, plh3.cell_to_parent("c", 5)))
        np.bitwise_or.at(code, owner, np.left_shift(1, pos))
        seen.update(code.tolist())
    return seen


def _bounds(k: int, n: int, a: float) -> tuple[float, float]:
    """One-sided Clopper–Pearson lower and upper bounds, each at level 1 − a."""
    low = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return low, high


# -- the tests -------------------------------------------------------------------------------

def test_the_discrete_laplace_tail_is_the_samplers() -> None:
    """The exact formula used here is the distribution the spec's OpenDP noise has."""
    model = level_spec(PARAMS, ROOTS[:1], 5).noise
    for t in (-6, -1, 0, 1, 2, 4, 9):
        assert math.isclose(tail(t, PARAMS.lam), model.tail(t), rel_tol=1e-9)


def test_the_audit_is_meaningful_exact_loss_is_near_the_claim() -> None:
    """Exactly: every partition's probability ratio is within e^ε, and the largest is
    e^{2/λ} = e^{0.92 ε} — the pair is a near-worst case, so an audit of it can fail."""
    pd, pd1 = outcome_probs(PARAMS.theta + 1, PARAMS), outcome_probs(PARAMS.theta, PARAMS)
    assert math.isclose(sum(pd.values()), 1) and math.isclose(sum(pd1.values()), 1)
    loss = max(abs(math.log(pd[o] / pd1[o])) for o in pd)
    assert loss <= PARAMS.epsilon
    assert math.isclose(loss, 2 / PARAMS.lam) and loss >= 0.9 * PARAMS.epsilon
    assert math.isclose(pd[1] / pd1[1], math.exp(loss))  # root split, only the centre child split


def test_split_decisions_are_epsilon_dp_empirically() -> None:
    """P[D](o) / P[D'](o) ≤ e^ε for every partition o seen often enough, and the other way
    round, by one-sided Clopper–Pearson bounds; the observed frequencies also match the
    exact probabilities (so the code runs the mechanism analysed above)."""
    n = CALLS * ROOTS.size
    d, d1 = outcomes(PARAMS.theta + 1), outcomes(PARAMS.theta)
    assert sum(d.values()) == sum(d1.values()) == n
    audited = [o for o in set(d) | set(d1) if d[o] + d1[o] >= MIN_SEEN]
    assert {WHOLE, 0, 1} <= set(audited)
    pd, pd1 = outcome_probs(PARAMS.theta + 1, PARAMS), outcome_probs(PARAMS.theta, PARAMS)
    rare_d = n - sum(d[o] for o in audited)
    rare_d1 = n - sum(d1[o] for o in audited)
    tests = 4 * len(audited) + 2 + 2
    a = ALPHA / tests
    worst = 0.0
    for o in audited:
        low, high = _bounds(d[o], n, a)
        low1, high1 = _bounds(d1[o], n, a)
        worst = max(worst, low / high1, low1 / high)
        assert low / high1 <= math.exp(PARAMS.epsilon), f"outcome {o}: P[D]/P[D'] > e^ε"
        assert low1 / high <= math.exp(PARAMS.epsilon), f"outcome {o}: P[D']/P[D] > e^ε"
        assert low <= pd[o] <= high and low1 <= pd1[o] <= high1, f"outcome {o} off its exact probability"
    for k, probs in ((rare_d, pd), (rare_d1, pd1)):
        low, high = _bounds(k, n, a)
        assert low <= sum(probs[o] for o in probs if o not in audited) <= high
    # the audit sees a real privacy loss: the best lower bound on e^ε it finds is ≥ e^{ε/2}
    assert worst >= math.exp(PARAMS.epsilon / 2)


def test_the_audit_catches_an_unbounded_contribution() -> None:
    """Control: a person counted three times on the path (contribution bounding broken: the
    tree is calibrated for 1) is caught — the lower bound on the ratio exceeds e^ε."""
    n = CALLS * ROOTS.size
    d, d3 = outcomes(PARAMS.theta + 1), outcomes(PARAMS.theta - 2)
    a = ALPHA / 2
    low, _ = _bounds(d[0], n, a)  # root split, no child split
    _, high3 = _bounds(d3[0], n, a)
    assert low / high3 > math.exp(PARAMS.epsilon)


# -- depth independence ----------------------------------------------------------------------

def worst_path_loss(p: TreeParams, decisions: int, delta: int | None = None) -> float:
    """The largest |ln P[D](o)/P[D'](o)| over every partition event of one root-to-leaf path
    with ``decisions`` random levels, over every non-increasing count along the path (D' has
    one person fewer on every node), exhaustively; ``delta`` overrides p.delta."""
    d = p.delta if delta is None else delta
    q = TreeParams(min_resolution=0, max_resolution=decisions, epsilon=p.epsilon,
                   cells_per_person=p.cells_per_person, theta=p.theta)

    def split(c: int, depth: int) -> float:
        b = max(c - depth * d, q.theta - d)
        return tail(q.theta + 1 - b, q.lam)

    values = range(q.theta - d - 1, q.theta + decisions * d + 2)
    worst = 0.0
    for path in itertools.combinations_with_replacement(sorted(values, reverse=True), decisions):
        s = [math.log(split(c + 1, i) / split(c, i)) for i, c in enumerate(path)]
        u = [math.log((1 - split(c + 1, i)) / (1 - split(c, i))) for i, c in enumerate(path)]
        prefix = np.concatenate([[0.0], np.cumsum(s)])
        events = [prefix[k] + u[k] for k in range(decisions)] + [prefix[decisions]]
        worst = max(worst, max(abs(e) for e in events))
    return worst


def test_doubling_the_depth_changes_neither_cost_nor_bound() -> None:
    """Twice the depth: the same λ, δ and spec cost (ε_tree), and the exact worst-case loss
    of a path stays ≤ ε (it grows by a geometric tail bounded by ε/(2β − 1), not by depth)."""
    deep = TreeParams(min_resolution=5, max_resolution=9, epsilon=2.0, cells_per_person=1, theta=10)
    assert (deep.lam, deep.delta) == (PARAMS.lam, PARAMS.delta)
    cost = PrivacyCost(Fraction(2))
    assert level_spec(PARAMS, ROOTS, 5).cost == level_spec(deep, ROOTS, 8).cost == cost
    shallow_loss, deep_loss = worst_path_loss(PARAMS, 2), worst_path_loss(deep, 4)
    assert shallow_loss <= deep_loss <= PARAMS.epsilon
    assert deep_loss - shallow_loss <= PARAMS.epsilon / (2 * 7 - 1)
    assert math.isclose(shallow_loss, 2 / PARAMS.lam)


def test_the_bound_holds_per_path_for_other_budgets() -> None:
    """The exhaustive check at other ε and m_t (with δ rounded up each time): a path's loss
    stays within ε/m_t, so a person's m_t paths stay within ε."""
    for eps, m_t in ((0.5, 1), (1.0, 1), (5.0, 1), (2.0, 2)):
        p = TreeParams(min_resolution=5, max_resolution=8, epsilon=eps, cells_per_person=m_t, theta=12)
        assert worst_path_loss(p, 3) <= eps / m_t


def test_without_the_bias_the_loss_grows_with_depth() -> None:
    """Why δ: with no bias (δ = 0) each level on the path adds e^{1/λ} and three levels
    already exceed ε; with PrivTree's δ four levels do not."""
    assert math.isclose(worst_path_loss(PARAMS, 3, delta=0), 3 / PARAMS.lam)
    assert worst_path_loss(PARAMS, 3, delta=0) > PARAMS.epsilon >= worst_path_loss(PARAMS, 4)
