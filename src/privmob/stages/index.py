"""Stage 4 — index: positions to H3 cells, times to windows and dwell minutes.

H3 indexing runs vectorised inside Polars (polars-h3): about 5 M pings/s on one core,
where a Python loop over ``h3.latlng_to_cell`` manages ~0.5 M/s. Windows are aligned to
the start of the release period (local midnight in the job's time zone).
"""

from __future__ import annotations

import polars as pl
import polars_h3 as plh3

__all__ = ["cell", "minute", "window"]


def cell(resolution: int) -> pl.Expr:
    """H3 cell (UInt64) of ``lat``/``lng``; only call on validated coordinates."""
    expr: pl.Expr = plh3.latlng_to_cell("lat", "lng", resolution)
    return expr


def window(period_start: int, window_seconds: int) -> pl.Expr:
    """Window index (Int32) of ``t`` counted from ``period_start`` (epoch seconds)."""
    return ((pl.col("t") - period_start) // window_seconds).cast(pl.Int32)


def minute() -> pl.Expr:
    """Whole minute of ``t`` (Int64): the unit of dwell time used by bounding."""
    return pl.col("t") // 60
