"""Stage 2 — scope: only key groups are processed, never a whole region's population.

A row's ``status`` says why it is (or is not) used: a bad-row reason, ``out_of_scope``
(its group is not a configured key group), ``out_of_period`` (its time is outside the
release period) or ``ok``. Out-of-scope rows are counted, then dropped before any further
stage sees them.

Group values are compared after one normalisation, applied alike to the configured groups
and to every input value (:func:`normalised`): Unicode NFKC (full-width ``ｃｏｎｆｉｒｍｅｄ``
becomes ``confirmed``), lower case, outer whitespace trimmed, and every run of inner
whitespace or hyphens one ``_`` — so ``Confirmed``, `` CONFIRMED ``, ``close-contact`` and
``Close Contact`` all match their key group instead of being silently dropped. Both
engines use this module's expression (Spark runs it per Arrow batch).

The driver-side steps of scope are here too, once for both engines: the schema check
(:func:`check_schema`, with the ``assume_group`` rule) before any row is read, and the
row accounting (:func:`rows_by_status`, which moves usable rows outside the boundary to
:data:`OUTSIDE_BOUNDARY`) after; an engine supplies only the counts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import polars as pl

from privmob.errors import SchemaError
from privmob.stages import ingest

if TYPE_CHECKING:
    from privmob.config import JobConfig

__all__ = ["LABEL", "OK", "OTHER", "OTHER_VALUES", "OUTSIDE_BOUNDARY", "OUT_OF_PERIOD", "OUT_OF_SCOPE",
           "check_schema", "epoch_ms_hint", "in_groups", "no_usable_rows", "normalised",
           "normalised_groups", "out_of_scope_by_group", "rows_by_status", "status"]

OK = "ok"
OUT_OF_SCOPE = "out_of_scope"
OUT_OF_PERIOD = "out_of_period"
#: Usable rows whose cell is not a key cell of the job's boundary (counted, not released).
OUTSIDE_BOUNDARY = "outside_boundary"

#: What a normalised group value must look like to be recorded by name in the operator's
#: tallies of dropped rows; anything else (a phone number, a name in Chinese characters,
#: free text) is only counted, under :data:`OTHER`, so no arbitrary input text is kept.
LABEL = re.compile(r"^[a-z_]{1,32}$")
#: Key of the rows whose group value does not look like a label.
OTHER = "(other)"
#: Key of how many distinct such values there were (a count, never the values).
OTHER_VALUES = "(other values)"


def check_schema(schema: Mapping[str, pl.DataType], config: JobConfig) -> None:
    """Refuse an input the job cannot read, from its schema alone, before any row is read.

    In this order: a repeated or missing job column (``group`` may be missing only when
    ``[scope] assume_group`` says the whole input is one key group); a ``group`` column
    although ``assume_group`` is set (the rows' own groups must decide, never the
    setting); a job column of an unusable type. Every engine calls this on the schema it
    reads, so they refuse the same inputs with the same messages.

    Raises
    ------
    SchemaError
        Naming job columns and positions only, never another header (it may be data).
    """
    assume_group = config.scope.assume_group
    columns = dict(schema)
    ingest.require_columns(columns, group_optional=assume_group is not None)
    if assume_group is not None and "group" in columns:
        raise SchemaError(
            "[scope] assume_group is set but the input has a group column; remove "
            "assume_group so each row's own group decides its scope"
        )
    needed = {c: columns[c] for c in ingest.REQUIRED_COLUMNS if c in columns}
    # validate() builds its expressions from the types: an unusable one raises here.
    ingest.validate(pl.LazyFrame(schema=needed), needed, config.job.timezone, assume_group=assume_group)


def normalised(expr: pl.Expr) -> pl.Expr:
    """A group value as it is compared: NFKC, lower case, trimmed, ``[\\s-]+`` → ``_``."""
    return (
        expr.str.normalize("NFKC").str.strip_chars().str.to_lowercase()
        .str.replace_all(r"[\s\-]+", "_")
    )


def normalised_groups(groups: Sequence[str]) -> list[str]:
    """The configured groups through the very expression input values go through."""
    series = pl.Series("g", list(groups), dtype=pl.String)
    return series.to_frame().select(normalised(pl.col("g"))).to_series().unique(maintain_order=True).to_list()


def in_groups(groups: Sequence[str]) -> pl.Expr:
    """Whether a row's ``group``, normalised, is one of the (normalised) ``groups``.

    Normalising is done once per distinct value of a batch, not per row: group columns hold
    a handful of values, and NFKC plus a regex on every row of a 10M-ping day costs ~7 s
    where this costs ~0.1 s. Elementwise, so it streams.
    """
    keys = normalised_groups(groups)

    def member(values: pl.Series) -> pl.Series:
        distinct = values.unique()
        hit = distinct.to_frame("g").select(normalised(pl.col("g")).is_in(keys)).to_series()
        return values.is_in(distinct.filter(hit).implode()).fill_null(False)

    return pl.col("group").map_batches(member, return_dtype=pl.Boolean, is_elementwise=True)


def status(groups: Sequence[str], period_start: int, period_end: int) -> pl.Expr:
    """Expression over a validated frame: the row's status.

    Parameters
    ----------
    groups
        The key groups the job may process (normalised here, as the input values are).
    period_start, period_end
        The release period as epoch seconds, half-open ``[start, end)``.
    """
    return (
        pl.when(pl.col("reason").is_not_null())
        .then(pl.col("reason"))
        .when(~in_groups(groups))
        .then(pl.lit(OUT_OF_SCOPE))
        .when((pl.col("t") < period_start) | (pl.col("t") >= period_end))
        .then(pl.lit(OUT_OF_PERIOD))
        .otherwise(pl.lit(OK))
    )


def epoch_ms_hint(period_start: int, period_end: int) -> pl.Expr:
    """Whether an out-of-period row's time, read as epoch milliseconds, is in the period.

    Counted, never shown: it lets a refusal say "timestamps look like epoch milliseconds"
    without printing a value.
    """
    return (pl.col("status") == OUT_OF_PERIOD) & (pl.col("t") // 1000 >= period_start) \
        & (pl.col("t") // 1000 < period_end)


def out_of_scope_by_group(counted: pl.DataFrame) -> dict[str, int]:
    """Rows dropped as out of scope per normalised group value, from (status, group, n) rows.

    Values that look like a group label (:data:`LABEL`, after normalisation) are keys;
    every other value only adds its rows to :data:`OTHER` and one to :data:`OTHER_VALUES`.
    """
    dropped = (
        counted.filter(pl.col("status") == OUT_OF_SCOPE)
        .select(normalised(pl.col("group")).alias("g"), "n")
        .group_by("g").agg(pl.col("n").sum())
    )
    out: dict[str, int] = {}
    other_rows = other_values = 0
    for value, n in dropped.sort("g").iter_rows():
        if isinstance(value, str) and LABEL.fullmatch(value):
            out[value] = int(n)
        else:
            other_rows += int(n)
            other_values += 1
    if other_values:
        out[OTHER] = other_rows
        out[OTHER_VALUES] = other_values
    return out


def rows_by_status(counted: pl.DataFrame, outside: int = 0) -> dict[str, int]:
    """Rows per status, from (``status``, ``n``) rows, with ``outside`` usable rows
    (``ok`` but in a cell outside the job's boundary) moved to :data:`OUTSIDE_BOUNDARY`.

    Statuses with no rows are left out; keys are sorted, so the operator's record reads
    the same whatever order an engine counted in.

    >>> counted = pl.DataFrame({"status": ["ok", "ok", "out_of_scope"], "n": [5, 2, 3]})
    >>> rows_by_status(counted, outside=7)
    {'out_of_scope': 3, 'outside_boundary': 7}
    """
    totals = counted.group_by("status").agg(pl.col("n").sum())
    by_status = {str(s): int(n) for s, n in totals.iter_rows()}
    if outside:
        by_status[OK] = by_status.get(OK, 0) - outside
        by_status[OUTSIDE_BOUNDARY] = outside
    return {s: by_status[s] for s in sorted(by_status) if by_status[s]}


def no_usable_rows(rows_by_status: Mapping[str, int], rows_epoch_ms: int = 0) -> str:
    """Why no row is usable, for the refusal of a release that would be pure noise.

    Only counts by reason and hints derived from counts: never an input value.
    """
    total = sum(rows_by_status.values())
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(rows_by_status.items(), key=lambda x: (-x[1], x[0])))
    hints = []
    out_of_period = rows_by_status.get(OUT_OF_PERIOD, 0)
    if rows_epoch_ms and 2 * rows_epoch_ms >= out_of_period:
        hints.append(f"{rows_epoch_ms} out-of-period row(s) would fall in the period if their ts "
                     "were epoch milliseconds: timestamps look like epoch milliseconds; export "
                     "epoch seconds or ISO-8601")
    elif out_of_period:
        hints.append("check [job] period and timezone against the export's day (a stale file?)")
    if rows_by_status.get("ts_unparseable", 0):
        hints.append("a ts that is neither ISO-8601 nor epoch seconds is unusable (epoch "
                     "milliseconds in text are not read as time): export epoch seconds or ISO-8601")
    if rows_by_status.get(OUT_OF_SCOPE, 0):
        hints.append("no group matches [scope] groups, even after normalising case, width and "
                     "spaces: check the group column and [scope] groups")
    if rows_by_status.get(OUTSIDE_BOUNDARY, 0):
        hints.append("check [grid] boundary and [job] crs (GCJ-02 coordinates read as WGS-84?)")
    return (
        f"no usable rows: none of the {total} row(s) is valid, in scope, in the period and inside "
        f"the boundary ({reasons})" + ("; " + "; ".join(hints) if hints else "")
        + ". Nothing was released and no budget spent; if a release of pure noise is really "
        "meant, set [job] allow_empty = true"
    )
