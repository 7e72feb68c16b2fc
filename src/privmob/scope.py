"""Stage 2 — scope: only key groups are processed, never a whole region's population.

A row's ``status`` says why it is (or is not) used: a bad-row reason, ``out_of_scope``
(its group is not a configured key group), ``out_of_period`` (its time is outside the
release period) or ``ok``. Out-of-scope rows are counted, then dropped before any further
stage sees them.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

__all__ = ["OK", "OUT_OF_PERIOD", "OUT_OF_SCOPE", "status"]

OK = "ok"
OUT_OF_SCOPE = "out_of_scope"
OUT_OF_PERIOD = "out_of_period"


def status(groups: Sequence[str], period_start: int, period_end: int) -> pl.Expr:
    """Expression over a validated frame: the row's status.

    Parameters
    ----------
    groups
        The key groups the job may process.
    period_start, period_end
        The release period as epoch seconds, half-open ``[start, end)``.
    """
    return (
        pl.when(pl.col("reason").is_not_null())
        .then(pl.col("reason"))
        .when(~pl.col("group").is_in(list(groups)))
        .then(pl.lit(OUT_OF_SCOPE))
        .when((pl.col("t") < period_start) | (pl.col("t") >= period_end))
        .then(pl.lit(OUT_OF_PERIOD))
        .otherwise(pl.lit(OK))
    )
