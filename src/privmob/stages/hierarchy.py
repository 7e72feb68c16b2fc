"""Stage 5, adaptive — the H3 hierarchy: what the partition counts, and the leaves' rows.

An adaptive release (``[adaptive]``, docs/adr/0007) counts persons twice, on the engine,
with a differentially private partition drawn on the driver in between:

1. :func:`tree_counts` — for the partition: each person's ``cells_per_person`` fine cells
   of most dwell over the whole period, and per node of the hierarchy (every resolution
   from the roots' down to the fine one) the distinct persons with a kept cell under it.
   A person changes each node by at most one, on at most ``cells_per_person``
   root-to-leaf paths: the sensitivity PrivTree is calibrated for.
2. :func:`to_leaves` then :func:`bound_pairs` — for the counts: each dwell row moved up to
   the leaf of the (public) partition that holds it, and each person's contribution
   capped at ``max_pairs`` (leaf, window) pairs per period, most dwell first, so L1 =
   ``max_pairs`` whatever the partition turned out to be.
3. :func:`level_pair_counts` — coarser totals (``[grid] parent_resolutions``): the kept
   pairs under each parent cell, so a parent's count is exactly the sum of its leaves'.

Parents are computed with two bit operations on the H3 index
(:func:`privmob.stages.aggregate.parent_bits`), which any engine has.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
import polars as pl

from privmob.stages.aggregate import parent_bits
from privmob.stages.bound import top_per_group

__all__ = ["bound_pairs", "level_pair_counts", "parent", "to_leaves", "tree_counts"]

_ALL_BITS = 2**64 - 1


def parent(column: str | pl.Expr, resolution: int) -> pl.Expr:
    """The H3 parent at ``resolution`` of a UInt64 cell column (the cell itself at its own)."""
    clear, bits = parent_bits(resolution)
    expr = pl.col(column) if isinstance(column, str) else column
    return (expr & pl.lit(~clear & _ALL_BITS, dtype=pl.UInt64)) | pl.lit(bits, dtype=pl.UInt64)


def tree_counts(dwell: pl.DataFrame, resolutions: Iterable[int], cells_per_person: int) -> pl.DataFrame:
    """Distinct persons per node of the hierarchy, each person counted under their
    ``cells_per_person`` cells of most dwell over the period.

    Parameters
    ----------
    dwell
        ``pid`` (Int64), ``window``, ``cell`` (UInt64, the finest resolution), ``minutes``.
    resolutions
        The node resolutions to count (each no finer than the cells').

    Returns
    -------
    ``cell`` (UInt64, nodes of every resolution asked for), ``count`` (Int64): private.
    """
    per_cell = dwell.group_by("pid", "cell").agg(pl.col("minutes").sum())
    kept = top_per_group(per_cell.with_columns((pl.col("pid") ^ pl.col("cell").cast(pl.Int64)).alias("_tie")),
                          ["pid"], "minutes", cells_per_person)
    parts = [kept.select("pid", parent("cell", r).alias("cell")).unique()
             .group_by("cell").agg(pl.len().cast(pl.Int64).alias("count"))
             for r in sorted(set(resolutions))]
    schema = {"cell": pl.UInt64, "count": pl.Int64}
    return pl.concat(parts).sort("cell") if parts else pl.DataFrame(schema=schema)


def to_leaves(dwell: pl.DataFrame, leaves: npt.NDArray[np.uint64]) -> pl.DataFrame:
    """Each dwell row under the leaf that holds its cell (minutes summed per person, window, leaf).

    ``leaves`` is a partition (no leaf is another's ancestor), so each fine cell has at
    most one leaf above it; rows under no leaf (outside the partition's roots) are dropped.
    """
    leaf = pl.Series("cell", leaves, dtype=pl.UInt64).to_frame()
    leaf = leaf.with_columns(res=(pl.col("cell") // (1 << 52) % 16).cast(pl.Int8))
    parts = []
    for r in leaf["res"].unique().sort().to_list():
        at_r = leaf.filter(pl.col("res") == r).select("cell")
        parts.append(dwell.with_columns(parent("cell", r).alias("cell")).join(at_r, on="cell", how="semi"))
    if not parts:
        return dwell.clear()
    return (pl.concat(parts).group_by("pid", "window", "cell").agg(pl.col("minutes").sum())
            .select(dwell.columns).sort("pid", "window", "cell"))


def bound_pairs(leaf_dwell: pl.DataFrame, max_pairs: int) -> pl.DataFrame:
    """Each person's ``max_pairs`` (cell, window) pairs of most dwell in the period.

    A per-person rule, so the bound holds for any choice; most dwell first keeps the
    places a person actually spent time, ties broken by the keyed pseudonym XOR the cell
    and window (never input order).
    """
    tie = pl.col("pid") ^ pl.col("cell").cast(pl.Int64) ^ pl.col("window").cast(pl.Int64)
    return top_per_group(leaf_dwell.with_columns(tie.alias("_tie")), ["pid"], "minutes", max_pairs
                          ).select(leaf_dwell.columns)


def level_pair_counts(kept: pl.DataFrame, resolutions: Iterable[int]) -> dict[int, pl.DataFrame]:
    """Kept (person, leaf, window) pairs per (parent cell, window) at each resolution.

    Pairs, not distinct persons: a person with two kept leaves under one parent counts
    twice there, so a parent's count is the sum of its leaves' counts (each leaf count is
    its distinct persons, since a person keeps a (leaf, window) pair at most once) and a
    released parent can be made to equal the sum of its released leaves
    (:mod:`privmob.privacy.consistency`). One person still adds at most ``max_pairs`` to
    a level in all (each pair lands under one parent): L1 = ``max_pairs``; but up to
    ``max_pairs`` to one key (L∞ = L2 = ``max_pairs``).

    Parameters
    ----------
    kept
        :func:`bound_pairs`' output: ``pid``, ``window``, ``cell`` (UInt64, the leaves).
    resolutions
        Parent resolutions, none finer than the coarsest leaf.

    Returns
    -------
    ``{resolution: frame}`` with ``cell`` (UInt64), ``window``, ``count`` (Int64), sorted by
    window then cell, like :func:`privmob.stages.aggregate.cell_counts`.
    """
    return {r: (kept.select(parent("cell", r).alias("cell"), "window")
                .group_by("cell", "window").agg(pl.len().cast(pl.Int64).alias("count"))
                .sort("window", "cell"))
            for r in resolutions}
