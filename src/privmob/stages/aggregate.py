"""Stage 6 — aggregate: distinct persons per (cell, window).

After bounding each row is a distinct (person, window, cell), so the distinct-person
count is a row count. The result is the small *exact* table; it stays private.

Coarser levels count distinct persons per (parent cell, window) from the same bounded
rows — never by summing child counts: a person with k kept cells under one parent would
then add k to that parent key, while the noise is calibrated for a change of at most 1
per key (L∞ = 1, L2 = √(k·w)). Counted distinct, a person still touches at most k keys
per window by 1 each, so the fine level's :class:`~privmob.privacy.mechanism.Sensitivity` holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl

from privmob.stages.bound import BoundingStats

__all__ = ["ExactCounts", "cell_counts", "level_counts", "parent_bits"]


def cell_counts(bounded: pl.DataFrame) -> pl.DataFrame:
    """Columns ``cell`` (UInt64), ``window`` (Int32), ``count`` (Int64), sorted by key."""
    return (
        bounded.group_by("cell", "window")
        .agg(pl.len().cast(pl.Int64).alias("count"))
        .sort("window", "cell")
    )


def parent_bits(resolution: int) -> tuple[int, int]:
    """``(clear, set)`` such that ``(cell & ~clear) | set`` is the H3 parent at ``resolution``.

    An H3 cell index keeps its resolution in bits 52–55 and one 3-bit digit per
    resolution 1–15 below them (resolution r in bits 3·(15 − r) … 3·(15 − r) + 2), unused
    digits all ones. The parent is the same index with the resolution field set and the
    finer digits set to 7: two bit operations any engine has (Spark SQL has no H3).
    """
    if not 0 <= resolution <= 15:
        raise ValueError(f"H3 resolution {resolution} is not in 0..15")
    digits = (1 << (3 * (15 - resolution))) - 1
    return (0xF << 52) | digits, (resolution << 52) | digits


def level_counts(bounded: pl.DataFrame, resolutions: Sequence[int]) -> dict[int, pl.DataFrame]:
    """Distinct persons per (parent cell, window) at each resolution, from the bounded rows.

    Parameters
    ----------
    bounded
        Columns ``pid``, ``window`` (Int32), ``cell`` (UInt64): after :func:`privmob.stages.bound.bound`.
    resolutions
        Parent resolutions, each coarser than the cells'.

    Returns
    -------
    ``{resolution: frame}``, each frame like :func:`cell_counts`' (``cell``, ``window``,
    ``count``, sorted by window then cell).
    """
    out: dict[int, pl.DataFrame] = {}
    for res in resolutions:
        clear, bits = parent_bits(res)
        parents = bounded.select(
            "pid", "window",
            ((pl.col("cell") & pl.lit(~clear & (2**64 - 1), dtype=pl.UInt64))
             | pl.lit(bits, dtype=pl.UInt64)).alias("cell"),
        ).unique()
        out[res] = cell_counts(parents)
    return out


@dataclass(frozen=True, eq=False)
class ExactCounts:
    """The exact, bounded aggregate a backend hands to the release path.

    Private: it holds true counts. No public function returns it and it is never
    written; only the noisy, suppressed :class:`~privmob.release.table.ReleasedTable` leaves.
    """

    counts: pl.DataFrame
    rows_in: int
    rows_by_status: dict[str, int]
    persons: int
    bounding: BoundingStats
    #: PII findings per input column: {column: {kind: rows}} (kinds from privmob.stages.pii).
    pii: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Extra input columns (never read into the pipeline) that are identifiers by name.
    identifier_names: tuple[str, ...] = ()
    #: Per parent resolution of the job: distinct persons per (parent cell, window) from the
    #: bounded rows (:func:`level_counts`), never summed child counts — except in an adaptive
    #: release, where a level counts kept (person, cell, window) pairs, the sum of its cells
    #: (:func:`privmob.stages.hierarchy.level_pair_counts`), so consistency can hold.
    levels: dict[int, pl.DataFrame] = field(default_factory=dict)
    #: Rows dropped as out of scope per normalised group value: only values that look like
    #: a group label (:func:`privmob.stages.scope.out_of_scope_by_group`); the rest are summed under
    #: ``"(other)"`` with their number of distinct values under ``"(other values)"``.
    out_of_scope_by_group: dict[str, int] = field(default_factory=dict)
    #: Out-of-period rows whose time, read as epoch milliseconds, falls in the period: a
    #: hint that the export wrote milliseconds where seconds were expected.
    rows_epoch_ms: int = 0

    def __repr__(self) -> str:  # never print exact counts by accident
        return f"ExactCounts(<{self.counts.height} private keys>, rows_in={self.rows_in})"
