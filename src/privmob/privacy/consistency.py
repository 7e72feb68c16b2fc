"""Consistency across levels: parent = sum of its children, non-negative, whole numbers.

A release over a hierarchy (H3 cells and their parents, an adaptive partition whose leaves
sit at mixed resolutions) holds one noisy value per measured node. Noised independently,
a parent and the sum of its children disagree, and a reader adding up the children gets
a different total than the parent shows. This module turns such values into a consistent
set, in three steps, each pure post-processing of values already noised: it costs no
privacy budget and draws no noise.

1. :func:`consistent` — the weighted least-squares estimates under the constraints
   "every internal node = the sum of its children" (Hay, Rastogi, Miklau, Suciu, VLDB 2010,
   "Boosting the accuracy of differentially private histograms through consistency"),
   with any fanout, leaves at any depth, per-node noise variances and unmeasured nodes.
   The least-squares estimate is unbiased and, among linear unbiased estimators, has the
   least variance at every node (Gauss–Markov), so no node gets worse than its own
   measurement and most get better.
2. :func:`nonnegative` — negative estimates removed, top-down, keeping consistency.
3. :func:`round_consistent` — whole numbers, top-down, keeping consistency, each within 1
   of its input.

The forest is given as arrays: ``parent_index[i]`` is node ``i``'s parent (``-1`` for a
root). Values are arrays of shape ``(n,)`` or ``(n, m)``; with ``m`` columns (for example
one per time window) each column is its own set of values on the same forest.

Example
-------
A root (0) with children 1 and 2; node 1 is split again into leaves 3 and 4 and was not
measured itself (NaN), so its information comes only from its children::

    >>> import numpy as np
    >>> from privmob.privacy.consistency import consistent, nonnegative, round_consistent
    >>> parent = np.array([-1, 0, 0, 1, 1])
    >>> measured = np.array([10.0, np.nan, 3.0, 4.0, 5.0])
    >>> variance = np.full(5, 2.0)
    >>> x = consistent(parent, measured, variance)
    >>> x.tolist()
    [10.5, 8.0, 2.5, 3.5, 4.5]
    >>> round_consistent(parent, nonnegative(parent, x)).tolist()
    [10, 8, 2, 4, 4]

An adaptive release (mixed-resolution leaves) with coarser totals gets its forest from
:func:`h3_forest`: the totals' cells, every partition cell between them and the leaves
(unmeasured), and the leaves.

Thresholded releases: the estimates are unbiased only for values measured without
selection. Applied to values that were published *because* they cleared a threshold, the
inputs themselves are biased upward and so is the result; how suppressed nodes enter
(unmeasured, or measured as their noisy value) is the caller's decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from privmob.errors import InputError
from privmob.stages.aggregate import parent_bits

__all__ = ["Forest", "H3Forest", "consistent", "forest", "h3_forest", "nonnegative", "round_consistent"]

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Forest:
    """A validated forest, with its nodes grouped by depth.

    Attributes
    ----------
    parent:
        ``parent[i]`` is node ``i``'s parent, ``-1`` for a root.
    levels:
        ``levels[d]`` holds the indices of the nodes at depth ``d`` (roots at depth 0),
        sorted by parent so each family is contiguous.
    n_children:
        Number of children of each node (0 for a leaf).
    """

    parent: _I64
    levels: tuple[_I64, ...]
    n_children: _I64

    @property
    def size(self) -> int:
        return int(self.parent.shape[0])


def forest(parent_index: npt.ArrayLike) -> Forest:
    """Check ``parent_index`` describes a forest and group its nodes by depth.

    Depth is found from the roots down, all nodes of a level at once (one numpy step per
    level); a node never reached lies on a cycle (or hangs from one).

    Raises
    ------
    InputError
        When the array is not one-dimensional integers in ``[-1, n)``, or has a cycle.
    """
    raw = np.asarray(parent_index)
    if raw.ndim != 1 or (raw.size and not np.issubdtype(raw.dtype, np.integer)):
        raise InputError("parent_index must be a one-dimensional array of integers "
                         "(the parent's position, -1 for a root).")
    parent = raw.astype(np.int64)
    n = parent.shape[0]
    bad = np.flatnonzero((parent < -1) | (parent >= n))
    if bad.size:
        raise InputError(f"parent_index at position {int(bad[0])} is not a node position "
                         f"nor -1 ({bad.size} such); give each node's parent as its position.")
    depth = np.where(parent < 0, 0, -1).astype(np.int64)
    frontier = parent < 0
    has_parent = parent >= 0
    d = 0
    while frontier.any():  # one step per level, roots down: O(n · depth)
        d += 1
        frontier = has_parent & frontier[np.maximum(parent, 0)]
        depth[frontier] = d
    if (depth < 0).any():
        first = int(np.flatnonzero(depth < 0)[0])
        raise InputError(f"parent_index has a cycle through position {first}; "
                         "every node must lead to a root (parent -1).")
    order = np.lexsort((parent, depth))  # by depth, then by parent: families contiguous
    bounds = np.cumsum(np.bincount(depth, minlength=1))
    levels = tuple(np.split(order, bounds[:-1]))
    n_children = np.bincount(parent[parent >= 0], minlength=n).astype(np.int64)
    return Forest(parent, levels, n_children)


def _as_forest(parent_index: npt.ArrayLike | Forest) -> Forest:
    return parent_index if isinstance(parent_index, Forest) else forest(parent_index)


def _values(f: Forest, values: npt.ArrayLike, name: str) -> _F64:
    """``values`` as float64 of shape ``(n,)`` or ``(n, m)``, checked against the forest."""
    out = np.asarray(values, dtype=np.float64)
    if out.ndim not in (1, 2) or out.shape[0] != f.size:
        raise InputError(f"{name} must have shape (n,) or (n, m) with n = {f.size}, the number of "
                         f"nodes in parent_index; it has {out.ndim} dimension(s) and "
                         f"{out.shape[0] if out.ndim else 0} row(s).")
    return out


def _tiled(f: Forest, m: int) -> Forest:
    """``m`` disjoint copies of the forest (copy ``j`` holds rows ``j·n .. j·n + n − 1``):
    the columns of an ``(n, m)`` array flattened in column order are values on it."""
    if m == 1:
        return f
    n = f.size
    offsets = np.arange(m, dtype=np.int64) * n
    parent = np.where(f.parent[None, :] >= 0, f.parent[None, :] + offsets[:, None], -1).ravel()
    # copy j's nodes all precede copy j+1's parents, so stacking the copies of a level keeps
    # it ordered by parent (families contiguous)
    levels = tuple((lvl[None, :] + offsets[:, None]).ravel() for lvl in f.levels)
    return Forest(parent, levels, np.tile(f.n_children, m))


def _flat(values: _F64) -> tuple[_F64, int]:
    """Column-major flattening of ``(n,)`` / ``(n, m)`` values, and ``m``."""
    if values.ndim == 1:
        return values, 1
    return np.ascontiguousarray(values.T).ravel(), values.shape[1]


def _unflat(flat: npt.NDArray[np.generic], shape: tuple[int, ...]) -> npt.NDArray[np.generic]:
    if len(shape) == 1:
        return flat
    return np.ascontiguousarray(flat.reshape(shape[1], shape[0]).T)


def consistent(parent_index: npt.ArrayLike | Forest, measured: npt.ArrayLike,
               variance: npt.ArrayLike) -> _F64:
    """Weighted least-squares estimates with every internal node = the sum of its children.

    Hay et al.'s (VLDB 2010) two passes, generalised to any fanout, leaves at any depth and
    per-node variances; both passes are exact for independent measurements on a tree:

    * up, leaves first: a node's estimate from its own subtree, ``z``, with variance ``w``.
      A leaf has ``z = y``, ``w = v`` (its measurement and noise variance). An internal node
      combines the sum of its children's ``z`` (variance ``S`` = the sum of their ``w``)
      with its own measurement by inverse-variance weighting,
      ``z = (y/v + Σz_c/S) / (1/v + 1/S)``, ``w = 1 / (1/v + 1/S)``; unmeasured, it takes
      ``z = Σz_c``, ``w = S``.
    * down, roots first: a root's estimate is its ``z``. Each family's residual,
      ``x_parent − Σ z_c``, goes to the children in proportion to their ``w`` (the
      minimum-variance split of a known total among independent estimates), so the
      children add up to the parent exactly, up to float rounding.

    Vectorised by depth level: one numpy step per level, none per node.

    Parameters
    ----------
    parent_index:
        ``parent_index[i]`` is node ``i``'s parent position, ``-1`` for a root (or a
        :class:`Forest` from :func:`forest`, to validate once and reuse).
    measured:
        Noisy values, shape ``(n,)`` or ``(n, m)`` (columns are independent value sets on the
        same forest). NaN where a node was not measured; every leaf must be measured.
    variance:
        Noise variance of each measurement: shape ``(n,)`` (one per node, the same in
        every column) or anything broadcastable to ``measured``. Must be finite and > 0
        where a node is measured; ignored where it is not.

    Returns
    -------
    numpy.ndarray
        The estimates, float64, the shape of ``measured``. With only leaves measured (or
        a forest of roots alone) these are the measurements, exactly, and the internal
        nodes their sums.

    Raises
    ------
    InputError
        On a malformed forest, a shape mismatch, an unmeasured leaf (its value would be
        undetermined), or a measured node with a variance that is not finite and positive.
    """
    f = _as_forest(parent_index)
    y = _values(f, measured, "measured")
    var_in = np.asarray(variance, dtype=np.float64)
    if var_in.ndim == 1 and y.ndim == 2 and var_in.shape[0] == f.size:
        var_in = var_in[:, None]  # one variance per node, the same in every column
    try:
        var = np.broadcast_to(var_in, y.shape)
    except ValueError:
        raise InputError(f"variance must have shape (n,) or be broadcastable to measured's shape "
                         f"{y.shape}.") from None
    is_measured = ~np.isnan(y)
    leaf = (f.n_children == 0).reshape((-1,) + (1,) * (y.ndim - 1))
    missing = np.argwhere(leaf & ~is_measured)
    if missing.size:
        raise InputError(f"node at position {int(missing[0][0])} is a leaf and has no measurement "
                         f"({missing.shape[0]} such); every leaf needs one, else its value is "
                         "undetermined (measure it, or drop it from the forest).")
    bad_var = np.argwhere(is_measured & ~(np.isfinite(var) & (var > 0)))
    if bad_var.size:
        raise InputError(f"variance at position {int(bad_var[0][0])} is not finite and > 0 for "
                         f"a measured node ({bad_var.shape[0]} such); give each measured node "
                         "its noise variance.")
    if np.isinf(y).any():
        raise InputError(f"measured at position {int(np.argwhere(np.isinf(y))[0][0])} is infinite; "
                         "give finite values, NaN for nodes not measured.")

    yf, m = _flat(y)
    vf, _ = _flat(np.array(var))
    g = _tiled(f, m)
    z, w = _up(g, yf, vf)
    return _unflat(_down(g, z, w), y.shape).astype(np.float64)


def _up(f: Forest, y: _F64, v: _F64) -> tuple[_F64, _F64]:
    """Subtree estimates ``z`` and their variances ``w``, deepest level first."""
    n = f.size
    z = np.full(n, np.nan)
    w = np.full(n, np.nan)
    child_sum = np.zeros(n)
    child_var = np.zeros(n)
    for level in reversed(f.levels):
        if not level.size:
            continue
        yl, vl = y[level], v[level]
        own = ~np.isnan(yl)
        internal = f.n_children[level] > 0
        s, big_s = child_sum[level], child_var[level]
        zl = np.where(own, yl, s)
        wl = np.where(own, vl, big_s)
        both = own & internal
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = 1.0 / vl[both] + 1.0 / big_s[both]
            zl[both] = (yl[both] / vl[both] + s[both] / big_s[both]) / precision
            wl[both] = 1.0 / precision
        z[level], w[level] = zl, wl
        up = f.parent[level]
        has_parent = up >= 0
        child_sum += np.bincount(up[has_parent], weights=zl[has_parent], minlength=n)
        child_var += np.bincount(up[has_parent], weights=wl[has_parent], minlength=n)
    return z, w


def _down(f: Forest, z: _F64, w: _F64) -> _F64:
    """Final estimates, roots first: each family's residual shared in proportion to ``w``."""
    n = f.size
    x = np.full(n, np.nan)
    child_sum = np.zeros(n)
    child_var = np.zeros(n)
    for depth, level in enumerate(f.levels):
        if not level.size:
            continue
        if depth == 0:
            x[level] = z[level]
        else:
            p = f.parent[level]
            residual = x[p] - child_sum[p]
            x[level] = z[level] + residual * (w[level] / child_var[p])
        # sums of this level's children, for the next level's residuals
        nxt = f.levels[depth + 1] if depth + 1 < len(f.levels) else np.empty(0, dtype=np.int64)
        if nxt.size:
            child_sum += np.bincount(f.parent[nxt], weights=z[nxt], minlength=n)
            child_var += np.bincount(f.parent[nxt], weights=w[nxt], minlength=n)
    return x


def nonnegative(parent_index: npt.ArrayLike | Forest, estimates: npt.ArrayLike) -> _F64:
    """Non-negative values with every internal node = the sum of its children.

    Top-down: each root becomes ``max(x, 0)``; then, level by level, each family's children
    are replaced by the closest (least-squares) non-negative values adding up to their
    parent's final value — the Euclidean projection onto the scaled simplex,
    ``x_c = max(e_c − t, 0)`` with the one shift ``t`` that makes them add up (sort-based,
    Held–Wolfe–Crowder / Duchi et al. 2008). Why this and not the alternatives:

    * clamping leaves to 0 and summing upward keeps consistency but adds every leaf's
      positive noise to its ancestors: totals drift upward with the number of leaves;
    * scaling the non-negative children to the parent distorts large counts by a factor
      and leaves nothing to share when every child is negative;
    * the projection changes each child by one common shift (zeros excepted), so the
      parent's total — the most accurate value after :func:`consistent` — is kept, and
      sparse families (true zeros whose noise was negative or small) lose their noise.
      Values already non-negative and consistent are returned unchanged.

    Cost: one sort per family, ``O(n log k)`` for fanout ``k`` (``O(n)`` for H3's k ≤ 7),
    one numpy step per level (and one per rank within a family). The output holds the
    constraints whatever the input: an inconsistent input's children are fitted to their
    parent's value, not the other way round.

    Parameters
    ----------
    parent_index:
        As in :func:`consistent`.
    estimates:
        Values, shape ``(n,)`` or ``(n, m)``, finite (typically :func:`consistent`'s output).

    Returns
    -------
    numpy.ndarray
        Float64 values ≥ 0, the input's shape; children add up to their parent to float
        rounding (the rounding residue of each family is given to its largest child).
    """
    f = _as_forest(parent_index)
    e = _values(f, estimates, "estimates")
    _require_finite(e, "estimates")
    ef, m = _flat(e)
    g = _tiled(f, m)
    x = np.full(g.size, np.nan)
    roots = g.levels[0]
    x[roots] = np.maximum(ef[roots], 0.0)
    for level in g.levels[1:]:
        if level.size:
            x[level] = _project_families(g.parent[level], ef[level], x)
    return _unflat(x, e.shape).astype(np.float64)


def _family_starts(parents: _I64) -> tuple[_I64, _I64]:
    """For nodes contiguous by parent: each family's start position and each node's family."""
    new = np.ones(parents.shape[0], dtype=bool)
    new[1:] = parents[1:] != parents[:-1]
    starts = np.flatnonzero(new).astype(np.int64)
    family = np.cumsum(new) - 1
    return starts, family.astype(np.int64)


def _cumsum_within(u: _F64, rank: _I64) -> _F64:
    """Running sums of ``u`` within contiguous families (``rank`` 1-based in each).

    One numpy step per rank, each over the positions of that rank only (``O(n)`` in all):
    unlike a global cumulative sum less each family's offset, every family's sums are
    those of its own values alone, so the result does not depend on the other families
    (nor on the other columns of an ``(n, m)`` input).
    """
    out = u.copy()
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.cumsum(np.bincount(rank))
    for r in range(2, bounds.shape[0]):
        at = by_rank[bounds[r - 1]:bounds[r]]
        out[at] = out[at - 1] + u[at]
    return out


def _project_families(parents: _I64, e: _F64, x: _F64) -> _F64:
    """Each family's children projected onto {≥ 0, adding up to the parent's ``x``}."""
    starts, family = _family_starts(parents)
    total = x[parents[starts]]
    order = np.lexsort((-e, family))  # families stay in order; within each, largest first
    u = e[order]
    rank = np.arange(u.shape[0]) - starts[family] + 1            # 1-based position in family
    cum_in = _cumsum_within(u, rank)                             # running sum within family
    keep = u - (cum_in - total[family]) / rank > 0
    rho = np.maximum(np.bincount(family, weights=keep, minlength=starts.shape[0]), 1).astype(np.int64)
    last = starts + rho - 1
    shift = (cum_in[last] - total) / rho
    out_sorted = np.maximum(u - shift[family], 0.0)
    # float residue of each family to its largest child (first in sorted order), so the
    # constraint holds to rounding; that child is > 0 whenever the parent is
    residue = total - np.bincount(family, weights=out_sorted, minlength=starts.shape[0])
    out_sorted[starts] = np.maximum(out_sorted[starts] + residue, 0.0)
    out = np.empty(u.shape[0], dtype=np.float64)
    out[order] = out_sorted
    return out


def round_consistent(parent_index: npt.ArrayLike | Forest, values: npt.ArrayLike) -> _I64:
    """Whole numbers with every internal node = the sum of its children.

    Top-down: each root is rounded to the nearest integer; then, level by level, each
    family's children take their floors and the family's remainder (the parent's integer
    minus the floors' sum) goes one by one to the children with the largest fractional
    parts (largest-remainder rounding; ties to the lower position). When the input is
    consistent every node ends within 1 of its value (at its floor or ceiling), and
    non-negative values stay non-negative; whatever the input, children add up to their
    parent exactly.

    Parameters
    ----------
    parent_index:
        As in :func:`consistent`.
    values:
        Finite values, shape ``(n,)`` or ``(n, m)`` (typically :func:`nonnegative`'s output).

    Returns
    -------
    numpy.ndarray
        Int64 values, the input's shape.
    """
    f = _as_forest(parent_index)
    v = _values(f, values, "values")
    _require_finite(v, "values")
    vf, m = _flat(v)
    g = _tiled(f, m)
    out = np.zeros(g.size, dtype=np.int64)
    roots = g.levels[0]
    out[roots] = np.rint(vf[roots]).astype(np.int64)
    for level in g.levels[1:]:
        if not level.size:
            continue
        parents = g.parent[level]
        starts, family = _family_starts(parents)
        size = np.bincount(family).astype(np.int64)
        low = np.floor(vf[level])
        frac = vf[level] - low
        base = low.astype(np.int64)
        remainder = out[parents[starts]] - np.bincount(family, weights=base, minlength=starts.shape[0]
                                                       ).round().astype(np.int64)
        order = np.lexsort((level, -frac, family))  # within a family: largest fraction first
        rank = np.empty(level.shape[0], dtype=np.int64)
        rank[order] = np.arange(level.shape[0]) - starts[family[order]]
        # floor division spreads any remainder, even one outside [0, size] (inconsistent input)
        extra = remainder[family] // size[family] + (rank < remainder[family] % size[family])
        out[level] = base + extra
    return np.asarray(_unflat(out, v.shape), dtype=np.int64)


def _require_finite(values: _F64, name: str) -> None:
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:
        raise InputError(f"{name} at position {int(bad[0][0])} is not a finite number "
                         f"({bad.shape[0]} such); pass the output of consistent(), which has none.")


# -- the H3 hierarchy of an adaptive release ------------------------------------------------


@dataclass(frozen=True)
class H3Forest:
    """The hierarchy of an adaptive release as a :class:`Forest` over H3 cells.

    Nodes ``0 .. len(cells) − 1`` are the *internal* cells (sorted): every level cell and
    every ancestor of a leaf between the coarsest level and the leaf; the ``leaves`` follow,
    in the order given. A leaf at a level's own resolution hangs under that level's node
    for the same cell (two measurements of one area). A node's parent is its H3 parent one
    resolution up; a cell at the coarsest level is a root.

    Attributes
    ----------
    forest:
        The validated forest.
    cells:
        The internal nodes' H3 cells, sorted.
    leaf_nodes:
        The node of each leaf, in the order of the leaves given.
    level_nodes:
        Per level resolution, the node of each level cell, in the order given.
    """

    forest: Forest
    cells: npt.NDArray[np.uint64]
    leaf_nodes: _I64
    level_nodes: dict[int, _I64]

    @property
    def size(self) -> int:
        return self.forest.size


def _h3_resolution(cells: npt.NDArray[np.uint64]) -> _I64:
    return ((cells >> np.uint64(52)) & np.uint64(0xF)).astype(np.int64)


def _h3_parent(cells: npt.NDArray[np.uint64], resolution: int) -> npt.NDArray[np.uint64]:
    """The ancestor of each cell at ``resolution`` (no finer than the cells): two bit
    operations on the index (:func:`privmob.stages.aggregate.parent_bits`)."""
    clear, bits = parent_bits(resolution)
    return (cells & np.uint64(~clear & (2**64 - 1))) | np.uint64(bits)


def _index_of(sorted_cells: npt.NDArray[np.uint64], cells: npt.NDArray[np.uint64]) -> _I64:
    """Position of each of ``cells`` in ``sorted_cells`` (−1 where absent)."""
    if sorted_cells.size == 0:
        return np.full(cells.size, -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_cells, cells), sorted_cells.size - 1).astype(np.int64)
    return np.where(sorted_cells[pos] == cells, pos, -1)


def h3_forest(leaves: npt.ArrayLike, levels: Mapping[int, npt.ArrayLike]) -> H3Forest:
    """The forest of an adaptive partition's ``leaves`` under coarser ``levels``.

    Parameters
    ----------
    leaves:
        H3 cells (uint64) of mixed resolution, none another's ancestor (a partition).
    levels:
        Resolution → its cells (uint64, distinct), each resolution no finer than the
        coarsest leaf: the coarser totals measured beside the leaves.

    Returns
    -------
    H3Forest
        Every level cell and every cell between the coarsest level and a leaf (the
        partition's internal nodes, unmeasured unless at a level's resolution) as internal
        nodes, then the leaves; families follow H3 parenthood, so constraining each node to
        the sum of its children makes every level cell the sum of the leaves under it.

    Raises
    ------
    InputError
        With no level, or a level finer than a leaf (it would cut through a leaf).
    """
    leaf = np.asarray(leaves, dtype=np.uint64).ravel()
    cells_of = {int(r): np.asarray(c, dtype=np.uint64).ravel() for r, c in levels.items()}
    if not cells_of:
        raise InputError("h3_forest needs at least one level resolution above the leaves.")
    leaf_res = _h3_resolution(leaf)
    top = min(cells_of)
    if leaf.size and max(cells_of) > int(leaf_res.min()):
        raise InputError(f"level resolution {max(cells_of)} is finer than the coarsest leaf "
                         f"(resolution {int(leaf_res.min())}); levels must be at or above every leaf.")
    seeds = [leaf, *cells_of.values()]
    pieces = [*cells_of.values()]
    for seed in seeds:
        res = _h3_resolution(seed)
        for q in range(top, int(res.max(initial=top))):
            pieces.append(_h3_parent(seed[res > q], q))
    internal = np.unique(np.concatenate(pieces)) if pieces else np.zeros(0, dtype=np.uint64)
    n_int = internal.size
    int_res = _h3_resolution(internal)
    parent = np.full(n_int + leaf.size, -1, dtype=np.int64)
    for q in np.unique(int_res[int_res > top]).tolist():
        at = np.flatnonzero(int_res == q)
        parent[at] = _index_of(internal, _h3_parent(internal[at], q - 1))
    # a leaf at a level's resolution hangs under that level's node for the same cell
    same = _index_of(internal, leaf)
    up = np.full(leaf.size, -1, dtype=np.int64)
    for q in np.unique(leaf_res[leaf_res > top]).tolist():
        at = np.flatnonzero(leaf_res == q)
        up[at] = _index_of(internal, _h3_parent(leaf[at], q - 1))
    parent[n_int:] = np.where(same >= 0, same, up)
    level_nodes = {r: _index_of(internal, c) for r, c in cells_of.items()}
    assert all((nodes >= 0).all() for nodes in level_nodes.values())
    return H3Forest(forest(parent), internal,
                    np.arange(n_int, n_int + leaf.size, dtype=np.int64), level_nodes)
