"""The H3 hierarchy of adaptive releases (privmob.stages.hierarchy): what the partition
counts, how rows reach the leaves, and the per-period bound on a person's pairs."""

from __future__ import annotations

import h3
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privmob.stages.hierarchy import bound_pairs, parent, to_leaves, tree_counts

BEIJING = h3.latlng_to_cell(39.99, 116.31, 8)


def _cell(c: str) -> int:
    return h3.str_to_int(c)


def _dwell(rows: list[tuple[int, int, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {"pid": [r[0] for r in rows], "window": [r[1] for r in rows],
         "cell": [_cell(r[2]) for r in rows], "minutes": [r[3] for r in rows]},
        schema={"pid": pl.Int64, "window": pl.Int32, "cell": pl.UInt64, "minutes": pl.Int64})


def test_parent_is_h3s_parent_at_every_resolution() -> None:
    cells = [h3.latlng_to_cell(39.9 + i * 0.01, 116.3 + i * 0.02, 9) for i in range(20)]
    frame = pl.DataFrame({"cell": [_cell(c) for c in cells]}, schema={"cell": pl.UInt64})
    for r in range(0, 10):
        got = frame.select(parent("cell", r)).to_series().to_list()
        assert got == [_cell(h3.cell_to_parent(c, r)) for c in cells]


def test_tree_counts_count_each_person_once_per_node_under_their_cells_of_most_dwell() -> None:
    a, b = h3.cell_to_children(h3.cell_to_parent(BEIJING, 7), 8)[:2]
    far = h3.latlng_to_cell(39.5, 116.9, 8)
    dwell = _dwell([(1, 0, a, 50), (1, 1, b, 20), (1, 2, far, 5),   # person 1: a most, then b
                    (2, 0, b, 30), (2, 1, b, 30)])                  # person 2: b only
    one = tree_counts(dwell, range(6, 9), cells_per_person=1)
    got = dict(zip(one["cell"].to_list(), one["count"].to_list(), strict=True))
    assert got[_cell(a)] == 1
    assert got[_cell(b)] == 1
    assert _cell(far) not in got  # person 1's third cell is not among their top 1
    assert got[_cell(h3.cell_to_parent(a, 7))] == 2
    two = tree_counts(dwell, range(7, 9), cells_per_person=2)
    got2 = dict(zip(two["cell"].to_list(), two["count"].to_list(), strict=True))
    assert got2[_cell(b)] == 2
    assert got2[_cell(h3.cell_to_parent(a, 7))] == 2  # person 1 has a and b under it: once


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 3), st.integers(0, 48), st.integers(1, 90)),
                min_size=1, max_size=60))
def test_with_one_cell_per_person_a_node_is_the_sum_of_its_children(
        rows: list[tuple[int, int, int, int]]) -> None:
    fine = h3.cell_to_children(h3.cell_to_parent(BEIJING, 6), 8)
    dwell = _dwell([(p, w, fine[c], m) for p, w, c, m in rows]).unique(["pid", "window", "cell"])
    counts = tree_counts(dwell, range(6, 9), cells_per_person=1)
    got = dict(zip(counts["cell"].to_list(), counts["count"].to_list(), strict=True))
    for node, n in got.items():
        node_h = h3.int_to_str(node)
        if h3.get_resolution(node_h) < 8:
            kids = h3.cell_to_children(node_h, h3.get_resolution(node_h) + 1)
            assert n == sum(got.get(_cell(k), 0) for k in kids)
    assert got[_cell(h3.cell_to_parent(BEIJING, 6))] == dwell["pid"].n_unique()


def test_rows_move_to_the_leaf_that_holds_them_and_minutes_add_up() -> None:
    p7 = h3.cell_to_parent(BEIJING, 7)
    split = h3.cell_to_children(p7, 8)
    coarse = h3.latlng_to_cell(39.7, 116.6, 6)
    coarse_child = h3.cell_to_children(coarse, 8)[5]
    leaves = np.array(sorted([_cell(c) for c in split] + [_cell(coarse)]), dtype=np.uint64)
    outside = h3.latlng_to_cell(31.2, 121.4, 8)
    other_child = h3.cell_to_children(coarse, 8)[0]
    dwell = _dwell([(1, 0, split[0], 10), (1, 0, coarse_child, 7), (1, 0, other_child, 3),
                    (2, 1, outside, 60)])
    got = to_leaves(dwell, leaves)
    rows = {(r["pid"], r["window"], h3.int_to_str(r["cell"])): r["minutes"]
            for r in got.iter_rows(named=True)}
    assert rows == {(1, 0, split[0]): 10, (1, 0, coarse): 10}


def test_bound_pairs_keeps_each_persons_pairs_of_most_dwell_and_ignores_row_order() -> None:
    cells = h3.cell_to_children(h3.cell_to_parent(BEIJING, 7), 8)
    rows = [(1, w, cells[c], 10 * w + c) for w in range(3) for c in range(3)] + [(2, 0, cells[0], 5)]
    dwell = _dwell(rows)
    kept = bound_pairs(dwell, 2)
    assert kept.filter(pl.col("pid") == 1).sort("minutes")["minutes"].to_list() == [21, 22]
    assert kept.filter(pl.col("pid") == 2).height == 1
    shuffled = bound_pairs(dwell.sample(fraction=1.0, shuffle=True, seed=3), 2)
    assert shuffled.sort("pid", "window", "cell").equals(kept.sort("pid", "window", "cell"))


@pytest.mark.parametrize("k", [1, 3, 7])
def test_no_person_keeps_more_than_max_pairs(k: int) -> None:
    cells = h3.cell_to_children(h3.cell_to_parent(BEIJING, 6), 8)
    rng = np.random.default_rng(k)  # test data only
    rows = [(int(p), int(w), cells[int(c)], int(m)) for p, w, c, m in
            zip(rng.integers(0, 30, 400), rng.integers(0, 8, 400), rng.integers(0, 49, 400),
                rng.integers(1, 60, 400), strict=True)]
    dwell = _dwell(rows).unique(["pid", "window", "cell"])
    kept = bound_pairs(dwell, k)
    assert kept.group_by("pid").len()["len"].max() <= k
    assert kept.height == sum(min(k, n) for n in dwell.group_by("pid").len()["len"].to_list())
