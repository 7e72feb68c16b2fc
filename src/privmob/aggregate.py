"""Stage 6 — aggregate: distinct persons per (cell, window).

After bounding each row is a distinct (person, window, cell), so the distinct-person
count is a row count. The result is the small *exact* table; it stays private.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from privmob.bound import BoundingStats

__all__ = ["ExactCounts", "cell_counts"]


def cell_counts(bounded: pl.DataFrame) -> pl.DataFrame:
    """Columns ``cell`` (UInt64), ``window`` (Int32), ``count`` (Int64), sorted by key."""
    return (
        bounded.group_by("cell", "window")
        .agg(pl.len().cast(pl.Int64).alias("count"))
        .sort("window", "cell")
    )


@dataclass(frozen=True, eq=False)
class ExactCounts:
    """The exact, bounded aggregate a backend hands to the release path.

    Private: it holds true counts. No public function returns it and it is never
    written; only the noisy, suppressed :class:`~privmob.release.ReleasedTable` leaves.
    """

    counts: pl.DataFrame
    rows_in: int
    rows_by_status: dict[str, int]
    persons: int
    bounding: BoundingStats
    #: PII findings per input column: {column: {kind: rows}} (kinds from privmob.pii).
    pii: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Extra input columns (never read into the pipeline) that are identifiers by name.
    identifier_names: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never print exact counts by accident
        return f"ExactCounts(<{self.counts.height} private keys>, rows_in={self.rows_in})"
