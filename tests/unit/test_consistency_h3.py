"""The H3 forest of an adaptive release with coarser totals, and the dense noise draw that
feeds it (issue 12: consistency across levels)."""

from __future__ import annotations

import h3
import numpy as np
import pytest

from privmob.errors import InputError
from privmob.privacy import noising
from privmob.privacy.consistency import consistent, h3_forest, nonnegative, round_consistent
from privmob.privacy.mechanism import Sensitivity
from privmob.privacy.tablespec import PublicKeys, spec
from tests.conftest import config

ROOT = h3.latlng_to_cell(39.91, 116.40, 4)


def _int(cell: str) -> int:
    return int(h3.str_to_int(cell))


def _mixed_leaves() -> list[int]:
    """ROOT split into its res-5 children; the first of them split again to res 6."""
    kids = sorted(h3.cell_to_children(ROOT, 5))
    return sorted([_int(c) for c in kids[1:]] + [_int(c) for c in h3.cell_to_children(kids[0], 6)])


def test_the_forest_follows_h3_parenthood_with_the_partition_cells_in_between() -> None:
    leaves = np.array(_mixed_leaves(), dtype=np.uint64)
    top = _int(h3.cell_to_parent(ROOT, 3))
    h = h3_forest(leaves, {3: np.array([top], dtype=np.uint64)})
    parent = h.forest.parent
    # internal: the res-3 level cell, the res-4 root, the split res-5 cell (unmeasured ones)
    assert sorted(int(c) for c in h.cells) == sorted(
        [top, _int(ROOT), _int(sorted(h3.cell_to_children(ROOT, 5))[0])])
    node = {int(c): i for i, c in enumerate(h.cells)}
    for leaf, n in zip(leaves.tolist(), h.leaf_nodes.tolist(), strict=True):
        up = _int(h3.cell_to_parent(h3.int_to_str(leaf), h3.get_resolution(h3.int_to_str(leaf)) - 1))
        assert parent[n] == node[up]
    assert parent[node[_int(ROOT)]] == node[top] == h.level_nodes[3][0]
    assert parent[node[top]] == -1


def test_a_leaf_at_a_levels_resolution_hangs_under_that_levels_node_for_its_own_cell() -> None:
    leaves = np.array([_int(ROOT)], dtype=np.uint64)
    h = h3_forest(leaves, {4: leaves})
    assert h.forest.parent[h.leaf_nodes[0]] == h.level_nodes[4][0]
    # two measurements of one area are combined, and stay equal after rounding
    x = consistent(h.forest, np.array([[10.0], [14.0]]), np.array([4.0, 4.0]))
    assert x[:, 0].tolist() == [12.0, 12.0]
    assert round_consistent(h.forest, nonnegative(h.forest, x))[:, 0].tolist() == [12, 12]


def test_a_level_finer_than_a_leaf_is_refused() -> None:
    leaves = np.array([_int(ROOT)], dtype=np.uint64)
    finer = np.array([_int(sorted(h3.cell_to_children(ROOT, 5))[0])], dtype=np.uint64)
    with pytest.raises(InputError, match="finer than the coarsest leaf"):
        h3_forest(leaves, {5: finer})
    with pytest.raises(InputError, match="at least one level"):
        h3_forest(leaves, {})


def test_keep_all_noises_every_public_key_and_suppresses_none() -> None:
    privacy = config(privacy={"mechanism": "laplace", "epsilon": 1.0}).privacy
    keys = PublicKeys((("cell", np.arange(1, 401, dtype=np.uint64)),
                       ("window", np.arange(2, dtype=np.int64))), "test")
    table = spec("occupancy", privacy, Sensitivity(1, 1), keys)
    counts = np.zeros(keys.n_keys, dtype=np.int64)
    kept, _ = noising.sample(table, counts)
    assert kept.size < 0.1 * keys.n_keys  # the sparse path keeps only what clears τ
    idx, noisy = noising.sample(table, counts, keep_all=True)
    assert idx.tolist() == list(range(keys.n_keys))
    assert (noisy < 0).any() and (noisy > 0).any() and (noisy < table.threshold).mean() > 0.9
    released = noising.release_values(table, noisy)
    assert released.released == int((noisy >= table.threshold).sum())
    assert (released.frame["count"] >= table.threshold).all()
