"""Consistency post-processing: parent = sum of children, least squares, non-negative, integer.

``consistent`` is checked against a brute-force weighted least squares (numpy ``lstsq`` on the
system with the constraints eliminated: the unknowns are the leaves, every node is the sum
of the leaves under it) on hand-made and random forests with mixed depths, any fanout and
unmeasured internal nodes. The random number generator here only shapes test forests and
test values; no privacy noise is drawn.
"""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import numpy.typing as npt
import pytest

from privmob.errors import InputError
from privmob.privacy import consistency
from privmob.privacy.consistency import consistent, forest, nonnegative, round_consistent

F = npt.NDArray[np.float64]
I = npt.NDArray[np.int64]  # noqa: E741


def leaf_matrix(parent: I) -> F:
    """A[i, l] = 1 when leaf l lies under (or is) node i."""
    n = len(parent)
    leaves = [i for i in range(n) if i not in set(parent.tolist())]
    a = np.zeros((n, len(leaves)))
    for col, leaf in enumerate(leaves):
        node = leaf
        while node >= 0:
            a[node, col] = 1.0
            node = int(parent[node])
    return a


def brute_force(parent: I, y: F, v: F) -> F:
    """Weighted least squares over the leaves, every node the sum of its leaves."""
    a = leaf_matrix(parent)
    rows = ~np.isnan(y)
    sw = 1.0 / np.sqrt(v[rows])
    sol, *_ = np.linalg.lstsq(a[rows] * sw[:, None], y[rows] * sw, rcond=None)
    return np.asarray(a @ sol, dtype=np.float64)


def max_violation(parent: I, x: npt.NDArray[np.generic]) -> float:
    """Largest |node − sum of its children| over internal nodes (per column)."""
    x2 = np.asarray(x, dtype=np.float64).reshape(len(parent), -1)
    sums = np.zeros_like(x2)
    has = parent >= 0
    np.add.at(sums, parent[has], x2[has])
    internal = np.bincount(parent[has], minlength=len(parent)) > 0
    return float(np.abs(x2[internal] - sums[internal]).max(initial=0.0))


def random_forest(rng: np.random.Generator, n_roots: int = 3, max_depth: int = 4) -> I:
    """A forest with fanout 1..7, leaves at mixed depths, node positions shuffled."""
    parents: list[int] = []
    frontier = []
    for _ in range(n_roots):
        parents.append(-1)
        frontier.append((len(parents) - 1, 0))
    while frontier:
        node, depth = frontier.pop()
        if depth < max_depth and rng.random() < 0.6:
            for _ in range(int(rng.integers(1, 8))):
                parents.append(node)
                frontier.append((len(parents) - 1, depth + 1))
    perm = rng.permutation(len(parents))  # position of old node i is perm[i]
    out = np.full(len(parents), -1, dtype=np.int64)
    for old, p in enumerate(parents):
        out[perm[old]] = -1 if p < 0 else perm[p]
    return out


def random_problem(rng: np.random.Generator) -> tuple[I, F, F]:
    parent = random_forest(rng)
    n = len(parent)
    internal = np.bincount(parent[parent >= 0], minlength=n) > 0
    y = rng.normal(20, 10, n)
    y[internal & (rng.random(n) < 0.4)] = np.nan  # some internal nodes not measured
    v = rng.uniform(0.5, 8, n)
    return parent, y, v


# An H3-like partition: root 0 (res 4) splits into 1, 2, 3 (res 5); 1 splits into 4, 5
# (res 6); 4 splits again into 6, 7, 8 (res 7); root 9 stays a coarse leaf. Node 1 was not
# measured (its value is only the sum of its children).
UNBALANCED = np.array([-1, 0, 0, 0, 1, 1, 4, 4, 4, -1])
UNBALANCED_Y = np.array([40.0, np.nan, 9.0, 4.0, 14.0, 8.0, 3.0, 6.0, 2.0, 7.0])
UNBALANCED_V = np.array([8.0, 1.0, 2.0, 2.0, 4.0, 2.0, 1.0, 1.0, 3.0, 2.0])


def test_the_module_example_runs_as_written() -> None:
    result = doctest.testmod(consistency, raise_on_error=False)
    assert result.attempted >= 5 and result.failed == 0


def test_a_chain_is_the_inverse_variance_mean_of_its_measurements() -> None:
    parent = np.array([-1, 0, 1])  # every node has one child: all three are the same count
    y, v = np.array([3.0, 6.0, 12.0]), np.array([1.0, 2.0, 4.0])
    x = consistent(parent, y, v)
    mean = (3 / 1 + 6 / 2 + 12 / 4) / (1 + 1 / 2 + 1 / 4)
    np.testing.assert_allclose(x, [mean] * 3, rtol=0, atol=1e-12)
    np.testing.assert_allclose(x, brute_force(parent, y, v), rtol=0, atol=1e-9)


def test_an_unbalanced_tree_with_an_unmeasured_node_matches_brute_force() -> None:
    x = consistent(UNBALANCED, UNBALANCED_Y, UNBALANCED_V)
    np.testing.assert_allclose(x, brute_force(UNBALANCED, UNBALANCED_Y, UNBALANCED_V), rtol=0, atol=1e-9)
    assert max_violation(UNBALANCED, x) < 1e-12
    assert x[9] == 7.0  # a lone root is its own measurement
    # by hand, the deepest family: its parent (4) measured 14 but its children add to 11
    assert x[6] + x[7] + x[8] == pytest.approx(x[4], abs=1e-12)
    assert 11 < x[4] < 14


@pytest.mark.parametrize("seed", range(25))
def test_random_forests_match_brute_force_least_squares(seed: int) -> None:
    parent, y, v = random_problem(np.random.default_rng(seed))
    x = consistent(parent, y, v)
    np.testing.assert_allclose(x, brute_force(parent, y, v), rtol=0, atol=1e-9)
    assert max_violation(parent, x) < 1e-9


def test_only_leaves_measured_returns_them_exactly_and_parents_as_sums() -> None:
    y = UNBALANCED_Y.copy()
    internal = np.bincount(UNBALANCED[UNBALANCED >= 0], minlength=len(UNBALANCED)) > 0
    y[internal] = np.nan
    x = consistent(UNBALANCED, y, UNBALANCED_V)
    assert np.array_equal(x[~internal], y[~internal])  # exactly, not approximately
    assert x[4] == 11.0 and x[1] == 19.0 and x[0] == 32.0


def test_a_forest_of_roots_alone_returns_the_measurements() -> None:
    y = np.array([1.5, -2.0, 7.25])
    assert np.array_equal(consistent(np.array([-1, -1, -1]), y, np.array([1.0, 2.0, 3.0])), y)


def test_the_estimates_never_have_more_variance_than_the_measurements() -> None:
    """The estimator is linear: its covariance is M V Mᵀ, M found column by column."""
    parent, y, v = UNBALANCED, UNBALANCED_Y, UNBALANCED_V
    measured = ~np.isnan(y)
    cols = np.flatnonzero(measured)
    m = np.zeros((len(parent), len(cols)))
    for j, node in enumerate(cols):
        e = np.where(measured, 0.0, np.nan)
        e[node] = 1.0
        m[:, j] = consistent(parent, e, v)
    var = np.einsum("ij,j,ij->i", m, v[cols], m)
    assert np.all(var[measured] <= v[measured] + 1e-12)
    assert var[0] < v[0] and var[6] < v[6]  # strictly better at the root and a deep leaf


def test_columns_are_independent_value_sets_on_one_forest() -> None:
    rng = np.random.default_rng(3)
    parent, _, v = random_problem(rng)
    ys = rng.normal(10, 5, (len(parent), 4))
    ys[np.isnan(random_problem(np.random.default_rng(3))[1])] = np.nan
    x = consistent(parent, ys, v[:, None])
    assert np.array_equal(consistent(parent, ys, v), x)  # one variance per node, every column
    for j in range(4):
        np.testing.assert_allclose(x[:, j], consistent(parent, ys[:, j], v), rtol=0, atol=1e-12)
    nn = nonnegative(parent, x)
    r = round_consistent(parent, nn)
    for j in range(4):
        np.testing.assert_array_equal(nn[:, j], nonnegative(parent, x[:, j]))
        np.testing.assert_array_equal(r[:, j], round_consistent(parent, nn[:, j]))


def test_an_unmeasured_leaf_is_refused_without_quoting_values() -> None:
    y = UNBALANCED_Y.copy()
    y[8] = np.nan
    with pytest.raises(InputError, match="position 8 is a leaf") as err:
        consistent(UNBALANCED, y, UNBALANCED_V)
    assert "40" not in str(err.value) and "14" not in str(err.value)


@pytest.mark.parametrize(("parent", "match"), [
    (np.array([-1, 2, 1]), "cycle"),
    (np.array([-1, 5]), "position 1 is not a node position"),
    (np.array([[-1]]), "one-dimensional"),
    (np.array([-1.0, 0.0]), "integers"),
])
def test_a_malformed_forest_is_refused(parent: npt.NDArray[np.generic], match: str) -> None:
    with pytest.raises(InputError, match=match):
        forest(parent)


def test_a_measured_node_needs_a_positive_finite_variance() -> None:
    v = UNBALANCED_V.copy()
    v[2] = 0.0
    with pytest.raises(InputError, match="variance at position 2"):
        consistent(UNBALANCED, UNBALANCED_Y, v)
    v[2], v[1] = 1.0, np.nan  # node 1 is unmeasured: its variance is ignored
    consistent(UNBALANCED, UNBALANCED_Y, v)
    with pytest.raises(InputError, match="shape"):
        consistent(UNBALANCED, UNBALANCED_Y[:5], UNBALANCED_V)


def projection_brute_force(e: F, total: float) -> F:
    """Closest point to e with x ≥ 0 and sum x = total, by trying every support."""
    best, best_d = np.zeros_like(e), np.inf
    for k in range(1, len(e) + 1):
        for support in itertools.combinations(range(len(e)), k):
            s = list(support)
            x = np.zeros_like(e)
            x[s] = e[s] - (e[s].sum() - total) / k
            if x.min() >= -1e-12 and (d := float(((x - e) ** 2).sum())) < best_d:
                best, best_d = x, d
    return best


def test_nonnegative_holds_the_constraints_and_is_zero_or_above() -> None:
    for seed in range(15):
        parent, y, v = random_problem(np.random.default_rng(seed))
        x = consistent(parent, y - 25.0, v)  # plenty of negatives
        nn = nonnegative(parent, x)
        assert nn.min() >= 0.0
        assert max_violation(parent, nn) < 1e-9


def test_nonnegative_projects_each_family_onto_its_parents_total() -> None:
    rng = np.random.default_rng(5)
    for _ in range(30):
        k = int(rng.integers(1, 7))
        e = rng.normal(0, 3, k)
        parent = np.array([-1] + [0] * k)
        root = float(rng.uniform(0, 6))
        nn = nonnegative(parent, np.concatenate(([root], e)))
        assert nn[0] == root
        np.testing.assert_allclose(nn[1:], projection_brute_force(e, root), rtol=0, atol=1e-9)


def test_nonnegative_by_hand() -> None:
    parent = np.array([-1, 0, 0, -1, 3, 3])
    got = nonnegative(parent, np.array([2.0, -5.0, -1.0, -3.0, 1.0, -4.0]))
    # family of 0: shift t = -3 so that (-1 - t) = 2; -5 - t < 0 → 0. Root 3 < 0: all zero.
    np.testing.assert_allclose(got, [2.0, 0.0, 2.0, 0.0, 0.0, 0.0], rtol=0, atol=1e-12)


def test_nonnegative_leaves_valid_values_unchanged() -> None:
    x = consistent(UNBALANCED, UNBALANCED_Y, UNBALANCED_V)
    assert x.min() > 0
    np.testing.assert_allclose(nonnegative(UNBALANCED, x), x, rtol=0, atol=1e-12)


def test_rounding_keeps_every_sum_and_moves_each_node_by_less_than_one() -> None:
    for seed in range(15):
        parent, y, v = random_problem(np.random.default_rng(seed))
        nn = nonnegative(parent, consistent(parent, y - 15.0, v))
        r = round_consistent(parent, nn)
        assert r.dtype == np.int64
        assert max_violation(parent, r) == 0.0  # exact, in integers
        assert np.all(np.abs(r - nn) < 1.0)
        assert r.min() >= 0


def test_rounding_by_hand_gives_the_remainder_to_the_largest_fractions() -> None:
    parent = np.array([-1, 0, 0, 0])
    r = round_consistent(parent, np.array([3.0, 0.4, 0.9, 1.7]))
    # floors 0, 0, 1 add to 1; the 2 left go to the fractions .9 and .7
    assert r.tolist() == [3, 0, 1, 2]
    assert round_consistent(parent, np.array([3.0, 1.0, 1.0, 1.0])).tolist() == [3, 1, 1, 1]


def test_rounding_an_inconsistent_input_still_adds_up() -> None:
    parent = np.array([-1, 0, 0])
    r = round_consistent(parent, np.array([10.0, 1.0, 1.0]))
    assert r[1] + r[2] == 10 and abs(r[1] - r[2]) <= 1


def test_non_finite_values_are_refused() -> None:
    with pytest.raises(InputError, match="position 1"):
        nonnegative(np.array([-1, 0]), np.array([1.0, np.nan]))
    with pytest.raises(InputError, match="position 0"):
        round_consistent(np.array([-1, 0]), np.array([np.inf, 1.0]))
