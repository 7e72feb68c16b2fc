"""The default engine: Polars, lazily and streaming.

One streaming pass over the input does ingest, validation, scope and indexing and reduces
the pings to distinct (person, window, cell, minute) rows plus per-status row counts; the
raw id is then replaced by its pseudonym on that much smaller table, and bounding and
aggregation run on it. Only the five job columns are ever read from the source.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from privmob import aggregate, bound, index, ingest, scope
from privmob.aggregate import ExactCounts
from privmob.config import JobConfig
from privmob.errors import InputError
from privmob.pseudonymise import Pseudonymiser

__all__ = ["PolarsBackend"]

OUTSIDE_BOUNDARY = "outside_boundary"


class PolarsBackend:
    """Polars implementation of :class:`privmob.backends.Backend`."""

    name = "polars"

    def columns(self, source: Any) -> list[str]:
        return list(ingest.read_pings(source).schema())

    def _validated(self, source: Any, config: JobConfig) -> pl.LazyFrame:
        pings = ingest.read_pings(source)
        schema = pings.schema()
        ingest.require_columns(schema, group_optional=config.scope.assume_group is not None)
        if config.scope.assume_group is not None and "group" in schema:
            from privmob.errors import SchemaError

            raise SchemaError(
                "[scope] assume_group is set but the input has a group column; remove "
                "assume_group so each row's own group decides its scope"
            )
        lf = ingest.validate(pings.scan(), schema, config.job.timezone,
                             assume_group=config.scope.assume_group)
        start = int(config.period_start.timestamp())
        end = int(config.period_end.timestamp())
        return lf.with_columns(scope.status(config.scope.groups, start, end).alias("status"))

    def exact_cells(
        self,
        source: Any,
        config: JobConfig,
        pseudonymiser: Pseudonymiser,
        key_cells: npt.NDArray[np.uint64] | None,
    ) -> ExactCounts:
        lf = self._validated(source, config)
        start = int(config.period_start.timestamp())
        ok = pl.col("status") == scope.OK
        # Coordinates of rows that are not ok may be garbage (lat 400 still yields a cell):
        # null them so only validated positions are indexed.
        minutes = lf.select(
            pl.col("status"),
            pl.when(ok).then(pl.col("person_id")).alias("person_id"),
            pl.when(ok).then(index.window(start, config.grid.window_seconds)).alias("window"),
            pl.when(ok).then(index.minute()).alias("minute"),
            pl.when(ok).then(pl.col("lat")).alias("lat"),
            pl.when(ok).then(pl.col("lng")).alias("lng"),
        ).with_columns(index.cell(config.grid.resolution).alias("cell")).drop("lat", "lng")
        try:
            reduced = (
                minutes.group_by("status", "person_id", "window", "cell", "minute")
                .agg(pl.len().cast(pl.Int64).alias("n"))
                .collect(engine="streaming")
            )
        except pl.exceptions.PolarsError as exc:
            raise InputError(f"{ingest.read_pings(source).describe()} cannot be read: "
                             f"{ingest._first_line(exc)}") from exc
        if key_cells is not None:
            inside = pl.col("cell").is_in(pl.Series(key_cells, dtype=pl.UInt64))
            reduced = reduced.with_columns(
                pl.when((pl.col("status") == scope.OK) & ~inside)
                .then(pl.lit(OUTSIDE_BOUNDARY))
                .otherwise(pl.col("status"))
                .alias("status")
            )
        by_status = {
            str(s): int(n)
            for s, n in reduced.group_by("status").agg(pl.col("n").sum()).iter_rows()
        }
        rows_in = sum(by_status.values())
        good = reduced.filter(pl.col("status") == scope.OK).select(
            "person_id", "window", "cell", "minute"
        )
        persons = good["person_id"].n_unique()
        distinct_ids = good["person_id"].unique()
        mapping = pl.DataFrame(
            {"person_id": distinct_ids, "pid": pseudonymiser.pseudonyms(distinct_ids)}
        )
        with_pid = good.join(mapping, on="person_id", how="inner").drop("person_id")
        dwell = bound.dwell(with_pid.lazy()).collect()
        kept = bound.bound(
            dwell, config.privacy.max_cells_per_window, config.privacy.max_windows
        )
        return ExactCounts(
            counts=aggregate.cell_counts(kept),
            rows_in=rows_in,
            rows_by_status=by_status,
            persons=persons,
            bounding=bound.stats(dwell, kept),
        )

    def bad_rows(
        self, source: Any, config: JobConfig, pseudonymiser: Pseudonymiser, limit: int | None
    ) -> pl.DataFrame:
        lf = self._validated(source, config).with_row_index("row", offset=1)
        bad = lf.filter(pl.col("reason").is_not_null()).select(
            "row", "reason", "person_id", "t", "lat", "lng", "group"
        )
        if limit is not None:
            bad = bad.head(limit)
        frame = bad.collect()
        return frame.with_columns(
            pseudonymiser.hex(frame["person_id"]).alias("person_pseudonym")
        ).drop("person_id")
