"""Stage 5 — bound: cap each person's contribution so sensitivity is known.

Each person keeps at most ``max_cells_per_window`` cells in a window and at most
``max_windows`` windows. Which ones is a per-person rule, so any choice keeps the
guarantee; we keep what serves the analyst: the cells and windows where the person spent
the most minutes (dwell), ties broken by a keyed value (the pseudonym XOR the cell or
window id) — never input row order, which would make results depend on file layout.

Dwell is counted in distinct minutes, so a logger that fixes every second does not
outweigh one that fixes every minute.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

__all__ = ["BoundingStats", "bound", "stats"]


@dataclass(frozen=True)
class BoundingStats:
    """What bounding removed, for explain() and the manifest (aggregate numbers only)."""

    person_cell_windows: int
    person_cell_windows_kept: int
    dwell_minutes: int
    dwell_minutes_kept: int

    @property
    def dropped_share(self) -> float:
        total = self.person_cell_windows
        return 0.0 if total == 0 else 1 - self.person_cell_windows_kept / total

    @property
    def dwell_kept_share(self) -> float:
        return 1.0 if self.dwell_minutes == 0 else self.dwell_minutes_kept / self.dwell_minutes

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "rule": "most dwell minutes first; ties by keyed pseudonym XOR id",
            "person_cell_windows": self.person_cell_windows,
            "person_cell_windows_kept": self.person_cell_windows_kept,
            "person_cell_windows_dropped_share": round(self.dropped_share, 6),
            "dwell_minutes": self.dwell_minutes,
            "dwell_minutes_kept_share": round(self.dwell_kept_share, 6),
        }


def bound(dwell_frame: pl.DataFrame, max_cells_per_window: int, max_windows: int) -> pl.DataFrame:
    """Keep each person's top cells per window and top windows, by dwell.

    Parameters
    ----------
    dwell_frame
        Columns ``pid`` (Int64), ``window`` (Int32), ``cell`` (UInt64), ``minutes``.

    Returns
    -------
    The kept rows, same columns; every (pid, window, cell) at most once.
    """
    cells = top_per_group(
        dwell_frame.with_columns((pl.col("pid") ^ pl.col("cell").cast(pl.Int64)).alias("_tie")),
        ["pid", "window"], "minutes", max_cells_per_window,
    ).select("pid", "window", "cell", "minutes")
    if dwell_frame["window"].n_unique() <= max_windows:
        return cells  # nobody has more windows than the whole frame: the cap drops nothing
    windows = top_per_group(
        dwell_frame.group_by("pid", "window")
        .agg(pl.col("minutes").sum().alias("_window_minutes"))
        .with_columns((pl.col("pid") ^ pl.col("window").cast(pl.Int64)).alias("_tie")),
        ["pid"], "_window_minutes", max_windows,
    )
    return cells.join(windows.select("pid", "window"), on=["pid", "window"], how="semi")


def top_per_group(frame: pl.DataFrame, by: list[str], order: str, k: int) -> pl.DataFrame:
    """The first ``k`` rows of each ``by`` group, largest ``order`` first, then largest ``_tie``.

    One sort and a linear scan (a row's place in its group is its index minus the index of
    the group's first row) instead of a rank over a window: ~6x faster on the 780k dwell
    rows of a 10M-ping day. ``(order, _tie)`` is unique within a group (the tie is keyed
    by the cell or window, both unique there), so the kept set is the same as an ordinal rank.
    """
    ordered = frame.sort([*by, order, "_tie"], descending=[False] * len(by) + [True, True])
    # Sorted, so a group starts where any key differs from the row before (cheaper than
    # is_first_distinct over a struct of the keys).
    first = pl.any_horizontal([(pl.col(c) != pl.col(c).shift(1)).fill_null(True) for c in by])
    row = pl.int_range(pl.len(), dtype=pl.UInt32)
    return ordered.filter(row - pl.when(first).then(row).forward_fill() < k)


def stats(before: pl.DataFrame, after: pl.DataFrame) -> BoundingStats:
    return BoundingStats(
        person_cell_windows=before.height,
        person_cell_windows_kept=after.height,
        dwell_minutes=int(before["minutes"].sum() or 0),
        dwell_minutes_kept=int(after["minutes"].sum() or 0),
    )
