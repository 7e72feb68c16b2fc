"""The Spark engine: the same exact aggregate as the Polars backend, on a cluster.

What runs where
---------------
* **Per-row work** — validation, the first failing check, GCJ-02/BD-09 to WGS-84, scope
  and period status, the window, the dwell minute and the H3 cell — runs on the executors inside
  ``DataFrame.mapInArrow``: each Arrow batch is wrapped as a Polars frame (no copy) and
  the *same* expressions the Polars backend uses (:func:`privmob.stages.ingest.validate`,
  :func:`privmob.stages.scope.status`, :mod:`privmob.stages.index`, :mod:`privmob.stages.pii`) are applied to
  it. There is one definition of what a valid row is, what a timestamp means and which
  cell a fix is in, so the two engines cannot drift apart. Each batch is reduced at once
  to distinct (person, window, cell, minute) rows plus per-(status, group) row counts.
* **Cross-row work** — distinct minutes per (person, window, cell), the pseudonym join,
  both bounding rankings (Spark window functions with the same keys and tie-breaks as
  :func:`privmob.stages.bound.bound`) and the per-(cell, window) count — runs as Spark shuffles.
* **The driver** receives only: the per-(status, group) counts (a few dozen rows; the
  PII scan of ``group`` runs on them, as in the Polars backend), the distinct person ids
  (hashed there with :meth:`Pseudonymiser.pseudonyms`, so the key never leaves the
  driver, then broadcast back as (id, pseudonym) pairs), the exact aggregate and, for an
  adaptive release, the tree counts (one row per node of the hierarchy). What
  it does with them — the schema check, the row accounting, the PII findings — is the
  shared code of :mod:`privmob.stages.scope` and :mod:`privmob.stages.pii`, as for Polars.
* **Adaptive releases** (``partition``): the tree counts
  (:func:`privmob.stages.hierarchy.tree_counts`) are aggregated on the executors and
  only they come to the driver, where ``partition`` draws the public leaves; the leaves
  go back as a broadcast, and moving each dwell row to its leaf and the per-period cap
  (:func:`~privmob.stages.hierarchy.to_leaves`, :func:`~privmob.stages.hierarchy.bound_pairs`)
  run on the executors with the same ranks and ties.
* **Stays and trips** (flows, :meth:`SparkBackend.trips`) run on the executors too: the
  usable fixes are shuffled by person and sorted within each partition, and
  :func:`privmob.movement.stays.person_trips` runs on chunks of whole persons; the driver
  receives the trips and one row per person, never the fixes.

H3 runs as polars-h3 on each Arrow batch (measured against h3-py in a pandas UDF in
``benchmarks/bench_spark.py``; Apache Sedona's H3 functions need its JARs from Maven and
were not measurable offline — see docs/spark.md).

The input is read once per :meth:`SparkBackend.exact_cells` (its header twice): the reduced table is
persisted (memory, spilling to disk) for the few small actions that follow, and dropped
before returning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import shutil
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import polars as pl
import pyarrow as pa

from privmob.backends._driver import keyed_fixes, keyed_trips, stored_positions
from privmob.errors import BackendUnavailableError, ConfigError, InputError
from privmob.movement.stays import TRIP_SCHEMA, StayParams, person_trips
from privmob.stages import aggregate, bound, crs, index, ingest, pii, scope
from privmob.stages.aggregate import ExactCounts
from privmob.stages.crs import CRS

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from pyspark.sql import DataFrame as SparkDataFrame
    from pyspark.sql import SparkSession

    from privmob.config import JobConfig
    from privmob.stages.pseudonymise import Pseudonymiser

try:
    import pandas  # noqa: F401  - PySpark's mapInArrow insists on it, though no data goes through it
    from pyspark.sql import DataFrame as _SparkDataFrame
    from pyspark.sql import SparkSession as _SparkSession
    from pyspark.sql import functions as F  # noqa: N812 - the PySpark convention
    from pyspark.sql.window import Window
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise BackendUnavailableError(
        "backend 'spark' needs PySpark and pandas; install them with `pip install 'privmob[spark]'`"
    ) from exc

with warnings.catch_warnings():
    # PySpark imports its test helpers on the first Python → JVM value conversion, and
    # that import announces (FutureWarning) that its *pandas* APIs are not validated on
    # pandas 3 yet. privmob moves data through Arrow, not pandas: import them quietly.
    warnings.simplefilter("ignore", FutureWarning)
    # (PySpark 3.5's helpers import pandas-on-Spark, which fails on pandas 3; nothing
    # here needs them, so then they are simply not pre-imported.)
    with contextlib.suppress(ImportError):
        import pyspark.testing.utils  # noqa: F401

__all__ = ["SparkBackend", "local_session"]

#: Distinct ids up to this many are broadcast to every executor for the pseudonym join;
#: beyond it the (id, pseudonym) table is joined by a shuffle instead.
BROADCAST_IDS = 2_000_000

#: Rows per Arrow batch handed to the per-row step (Spark's default is 10,000; Polars
#: amortises its per-batch planning better on larger batches). Local sessions only.
ARROW_BATCH_ROWS = 100_000

# What the per-row steps emit (Arrow; Spark's schema is derived from these).
_EXACT_OUT = pa.schema([("status", pa.string()), ("group", pa.string()), ("person_id", pa.string()),
                        ("window", pa.int32()), ("cell", pa.int64()), ("minute", pa.int64()),
                        ("n", pa.int64())])
_BAD_OUT = pa.schema([("part", pa.int32()), ("idx", pa.int64()), ("reason", pa.string()),
                      ("person_id", pa.string()), ("t", pa.int64()), ("lat", pa.float64()),
                      ("lng", pa.float64()), ("group", pa.string())])
_POSITIONS_OUT = pa.schema([("person_id", pa.string()), ("t", pa.int64()), ("lat", pa.float64()),
                            ("lng", pa.float64()), ("group", pa.string())])
_FIXES_OUT = pa.schema([("person_id", pa.string()), ("t", pa.int64()), ("lat", pa.float64()),
                        ("lng", pa.float64())])


def _trips_out(key: str) -> pa.Schema:
    """What the stays-and-trips step emits: trips (TRIP_SCHEMA with the person as ``key``)
    and one row per person with only ``key`` set."""
    trips = pl.DataFrame(schema=TRIP_SCHEMA).to_arrow().schema
    return pa.schema([(key, pa.string() if key == "person_id" else pa.int64())]
                     + [f for f in trips if f.name != "pid"])

#: A ``package.module.SomeError: message`` line of a Python traceback.
_RAISED = re.compile(r"^(?:[A-Za-z_][\w]*\.)+([A-Za-z_]\w*(?:Error|Exception)): (.*)$")

#: Where Spark's CSV reader puts a line whose field count is not the header's.
_MALFORMED = "_privmob_malformed_line"

#: A CSV nullValue no cell will ever hold (see SparkBackend._read_path).
_NEVER_NULL = "\uffff<privmob: no text means null>\uffff"

#: The status under which the per-row step reports its epoch-milliseconds hint count.
_EPOCH_MS = "hint:epoch_ms"

_ROW_DTYPE = pl.DataFrame({"x": [0]}).with_row_index("row").schema["row"]


# --- the session -----------------------------------------------------------------------


def local_session(master: str = "local[2]", **conf: str) -> SparkSession:
    """A local SparkSession set up for privmob (or the active one, left as it is).

    Local mode: ``master`` cores, 8 shuffle partitions (the default 200 is for clusters),
    no web UI, session time zone UTC, executors' Python = this interpreter (so they see
    the same privmob, Polars and h3). Extra ``conf`` entries (``spark.driver.memory`` and
    so on) are passed to the builder; they only take effect when no session is running.
    """
    active = _SparkSession.getActiveSession()
    if active is not None:
        return active
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        raise BackendUnavailableError(
            "backend 'spark' needs a Java runtime (17 or later); install one (e.g. "
            "`apt-get install openjdk-17-jre-headless`) or set JAVA_HOME"
        )
    # Executors start `python3` from PATH unless told otherwise; in a venv that is the
    # wrong interpreter (no privmob). The environment variable is what PySpark reads.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    settings = {
        "spark.sql.shuffle.partitions": "8",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(ARROW_BATCH_ROWS),
        "spark.driver.memory": "2g",
        # one Polars thread per Python worker: Spark already runs one worker per core
        "spark.executorEnv.POLARS_MAX_THREADS": "1",
        **conf,
    }
    builder = _SparkSession.builder.master(master).appName("privmob")
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


# --- per-row step, run on the executors ------------------------------------------------


@dataclass(frozen=True)
class _RowSpec:
    """Everything the per-row step needs, shipped to the executors (no key material)."""

    schema: dict[str, pl.DataType]
    timezone: str
    assume_group: str | None
    groups: tuple[str, ...]
    start: int
    end: int
    window_seconds: int
    resolution: int
    extras: tuple[str, ...] = ()
    #: CSV only: the header's field count (a longer line fails the job, as in Polars).
    csv_fields: int | None = None
    #: The pings' coordinate system (converted to WGS-84 before indexing).
    crs: CRS = "wgs84"


def _check_lines(frame: pl.DataFrame, spec: _RowSpec) -> None:
    """Fail on a CSV line with more fields than the header, as Polars' reader does.

    Spark's reader keeps such a line (dropping the surplus), and marks it, like a line
    with too few fields (which Polars too fills with nulls), in the malformed-line
    column; only the marked lines, which are rare, are split again here to tell the two
    apart. A quote left open, which Polars refuses and Spark reads to the end of the
    file, fails too. The message names no value.
    """
    if spec.csv_fields is None:
        return
    import csv
    import io

    for line in frame[_MALFORMED].drop_nulls().to_list():
        try:
            records = list(csv.reader(io.StringIO(line), strict=True))
        except csv.Error as exc:
            # Spark reads an unclosed quote on to the end of the file as one field
            if "unexpected end of data" in str(exc):
                raise InputError("a quoted field is not closed") from None
            continue
        if any(len(fields) > spec.csv_fields for fields in records):
            raise InputError("found more fields than defined in 'Schema'")


def _validated(frame: pl.DataFrame, spec: _RowSpec) -> pl.LazyFrame:
    """The Polars backend's validated frame with its ``status``, for one batch."""
    _check_lines(frame, spec)
    lf = ingest.validate(frame.lazy(), spec.schema, spec.timezone, assume_group=spec.assume_group)
    if spec.crs != "wgs84":  # GCJ-02 / BD-09 pings: to WGS-84 before indexing
        lf = crs.polars_frame_to_wgs84(lf, spec.crs)
    return lf.with_columns(scope.status(spec.groups, spec.start, spec.end).alias("status"))


def _to_batches(frame: pl.DataFrame, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    table = frame.to_arrow().cast(schema)
    yield from table.to_batches()


def _exact_batches(batches: Iterator[pa.RecordBatch], spec: _RowSpec,
                   out: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Per batch: (status, group) counts, PII counts of extra columns, and the distinct
    (person, window, cell, minute) rows of usable pings with their ping count."""
    for batch in batches:
        raw = pl.DataFrame(pl.from_arrow(batch))
        lf = _validated(raw, spec)
        counts = lf.group_by("status", "group").agg(pl.len().cast(pl.Int64).alias("n"))
        dwell = (
            lf.filter(pl.col("status") == scope.OK)
            .select(
                "person_id",
                index.window(spec.start, spec.window_seconds).alias("window"),
                index.cell(spec.resolution).cast(pl.Int64).alias("cell"),
                index.minute().alias("minute"),
            )
            .group_by("person_id", "window", "cell", "minute")
            .agg(pl.len().cast(pl.Int64).alias("n"))
        )
        hint = lf.select(pl.lit(_EPOCH_MS).alias("status"),
                         scope.epoch_ms_hint(spec.start, spec.end).sum().cast(pl.Int64).alias("n"))
        queries = [counts, dwell, hint]
        if spec.extras:
            queries.append(raw.lazy().select(pii.scan_exprs(list(spec.extras))))
        counted, dwelled, hinted, *scanned = pl.collect_all(queries)
        parts = [
            counted.select("status", "group", "n"),
            dwelled.select("person_id", "window", "cell", "minute", "n"),
            hinted,
        ]
        if scanned:
            parts.append(
                scanned[0].unpivot(variable_name="status", value_name="n")
                .with_columns(pl.col("n").cast(pl.Int64))
            )
        yield from _to_batches(pl.concat(parts, how="diagonal_relaxed").select(out.names), out)


def _bad_batches(batches: Iterator[pa.RecordBatch], spec: _RowSpec, limit: int | None,
                 out: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Per partition: its first ``limit`` bad rows (position within the partition), then
    one row (reason null) holding the partition's row count, to number rows globally."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    part = 0 if ctx is None else ctx.partitionId()
    seen = emitted = 0
    for batch in batches:
        if limit is None or emitted < limit:
            bad = (
                _validated(pl.DataFrame(pl.from_arrow(batch)), spec)
                .with_row_index("idx", offset=seen)
                .filter(pl.col("reason").is_not_null())
                .select(pl.lit(part, dtype=pl.Int32).alias("part"), pl.col("idx").cast(pl.Int64),
                        "reason", "person_id", "t", "lat", "lng", "group")
            )
            if limit is not None:
                bad = bad.head(limit - emitted)
            found = bad.collect()
            emitted += found.height
            if found.height:
                yield from _to_batches(found, out)
        seen += batch.num_rows
    size = pl.DataFrame({"part": [part], "idx": [seen]}, schema={"part": pl.Int32, "idx": pl.Int64})
    yield from _to_batches(size.with_columns(pl.lit(None).alias(c) for c in out.names[2:]), out)


def _position_batches(batches: Iterator[pa.RecordBatch], spec: _RowSpec,
                      out: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Validated, in-scope, in-period fixes of one batch (the columns of ``out``), exact
    duplicates dropped."""
    for batch in batches:
        fixes = (
            _validated(pl.DataFrame(pl.from_arrow(batch)), spec)
            .filter(pl.col("status") == scope.OK)
            .select(out.names)
            .unique()
            .collect()
        )
        yield from _to_batches(fixes, out)


def _trip_batches(batches: Iterator[pa.RecordBatch], key: str, params: StayParams,
                  out: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Trips of every person of a partition sorted by ``key`` (see :func:`_whole_persons`)."""
    for chunk in _whole_persons(batches, key):
        yield from _to_batches(_chunk_trips(chunk, key, params).select(out.names), out)


def _whole_persons(batches: Iterator[pa.RecordBatch], key: str) -> Iterator[pl.DataFrame]:
    """The rows of a partition sorted by ``key``, regrouped into chunks of whole persons.

    A person is complete once a later key appears: each batch's complete persons make
    one chunk, and the last person's rows wait for the next batch. Memory stays at about
    one batch plus the largest person's fixes, however large the partition.
    """
    pending: list[pl.DataFrame] = []
    previous: Any = None
    for batch in batches:
        frame = pl.DataFrame(pl.from_arrow(batch))
        if frame.height == 0:
            continue
        keys = frame[key]
        if not keys.is_sorted() or (previous is not None and keys[0] < previous):
            # sortWithinPartitions guarantees the order; without it persons would be cut
            raise RuntimeError("the stays step received fixes not sorted by person")
        previous = keys[-1]
        complete = frame.height - int((keys == previous).sum())
        if complete:
            yield pl.concat([*pending, frame.head(complete)])
            pending = []
        pending.append(frame.slice(complete))
    if pending:
        yield pl.concat(pending)


def _chunk_trips(chunk: pl.DataFrame, key: str, params: StayParams) -> pl.DataFrame:
    """:func:`privmob.movement.stays.person_trips` of whole persons identified by ``key``, plus one
    row per person (only ``key`` set) so the driver learns every person, also those
    without a trip. Persons are numbered within the chunk for the stays step, which
    needs integer ids; a person's trips do not depend on the number."""
    coded = chunk.with_columns(pl.col(key).rank("dense").cast(pl.Int64).alias("_code"))
    codes = coded.select(key, "_code").unique()
    found = person_trips(coded.select(pl.col("_code").alias("pid"), "t", "lat", "lng"), params)
    found = found.rename({"pid": "_code"}).join(codes, on="_code", how="inner").drop("_code")
    return pl.concat([found, codes.select(key)], how="diagonal_relaxed")


# --- the backend -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Input:
    df: SparkDataFrame
    what: str
    #: the Polars types of a frame source before it went through Arrow to Spark
    polars_schema: dict[str, pl.DataType] | None = None
    #: CSV sources: the header's field count (the frame has a malformed-line column too)
    csv_fields: int | None = None

    @property
    def columns(self) -> list[str]:
        """The input's own columns."""
        return [c for c in self.df.columns if not (self.csv_fields is not None and c == _MALFORMED)]


class SparkBackend:
    """Spark implementation of :class:`privmob.backends.Backend`.

    Parameters
    ----------
    spark
        The session to run on. Without one, the active session is used, or a local one
        is started on first use (:func:`local_session`: ``local[2]``).

    ``source`` may be a PySpark DataFrame, a path or URI (``hdfs://``, ``s3a://``,
    ``file://``; a directory is read as a Parquet data set, or as CSV when every file in
    it is ``.csv``/``.csv.gz``), a :class:`privmob.stages.ingest.Pings` handle, or a Polars /
    pandas frame (sent to Spark through Arrow).
    """

    name = "spark"

    def __init__(self, spark: SparkSession | None = None) -> None:
        self._spark = spark

    @property
    def spark(self) -> SparkSession:
        if self._spark is None:
            self._spark = local_session()
        return self._spark

    # -- sources ------------------------------------------------------------------------
    def frame(self, source: Any) -> _Input:
        """The source as a Spark DataFrame, with how to name it in an error message."""
        if isinstance(source, _SparkDataFrame):
            return _Input(source, "input Spark DataFrame")
        if isinstance(source, str) and "://" in source:
            return self._read_path(source, csv=_looks_csv(source), what=f"input {source}")
        if isinstance(source, str | Path) and Path(source).is_dir():
            folder = Path(source)
            files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))]
            csv = bool(files) and all(_looks_csv(p.name) for p in files)
            return self._read_path(str(folder.resolve()), csv=csv, what=f"input {folder}")
        pings = ingest.read_pings(source)
        if pings.kind == "frame":
            assert pings.frame is not None
            # the frame's own Polars types decide schema errors, as in the Polars backend
            return _Input(self._from_polars(_spark_ready(pings.frame)), pings.describe(),
                          dict(pings.frame.schema))
        assert pings.path is not None
        # Polars reads only the header (or Parquet footer) here: an empty file, duplicated
        # columns and unusable types then fail with the Polars backend's own errors.
        schema = pings.schema()
        read = self._read_path(str(pings.path.resolve()), csv=pings.kind == "csv", what=pings.describe())
        return dataclasses.replace(read, polars_schema=schema)

    def _read_path(self, path: str, *, csv: bool, what: str) -> _Input:
        from pyspark.sql.types import StringType, StructField, StructType

        try:
            if not csv:
                return _Input(self.spark.read.parquet(path), what)
            # Every column as text (validated per row, like the Polars backend's
            # infer_schema=False); RFC-4180 quoting ("" inside quotes); quoted line
            # breaks allowed, which makes one plain CSV file one task: use Parquet (or
            # many files) for scale. An unquoted empty field is null and a quoted "" is
            # the empty string, as in Polars: so no text may stand for null.
            options: dict[str, Any] = {"header": True, "multiLine": True, "escape": '"',
                                       "encoding": "UTF-8", "nullValue": _NEVER_NULL}
            header = self.spark.read.csv(path, inferSchema=False, **options).schema
            schema = StructType([StructField(f.name, StringType()) for f in header.fields]
                                + [StructField(_MALFORMED, StringType())])
            df = self.spark.read.csv(path, schema=schema, mode="PERMISSIVE",
                                     columnNameOfCorruptRecord=_MALFORMED, **options)
        except Exception as exc:
            raise InputError(f"{what} cannot be read: {_spark_message(exc)}") from exc
        if not header.fields:
            raise InputError(f"{what} cannot be read: it is empty (not even a header row)")
        names = _header_names(header.fieldNames())
        return _Input(df, what, csv_fields=len(header.fields),
                      polars_schema=dict.fromkeys(names, pl.String()) if names else None)

    def _from_polars(self, frame: pl.DataFrame) -> SparkDataFrame:
        table = frame.to_arrow()
        # PySpark < 4 knows no 64-bit-offset lists or binaries (Polars' Arrow default)
        small = [pa.field(f.name, pa.list_(f.type.value_type)) if pa.types.is_large_list(f.type)
                 else pa.field(f.name, pa.binary()) if pa.types.is_large_binary(f.type) else f
                 for f in table.schema]
        table = table.cast(pa.schema(small))
        schema = _spark_schema(table.schema)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # pandas 3 notice from PySpark
            try:
                return self.spark.createDataFrame(table, schema=schema)  # type: ignore[call-overload,unused-ignore]
            except TypeError:
                pass
        # PySpark < 4 takes pandas or rows, not Arrow. pandas conflates NaN with null (and
        # makes nullable integers float), so it is used only for frames with neither.
        nan = any(frame[c].is_nan().any() for c, t in frame.schema.items() if t.is_float())
        if nan or any(frame.null_count().row(0)):
            return self.spark.createDataFrame(table.to_pylist(), schema=schema)
        return self.spark.createDataFrame(table.to_pandas(), schema=schema)

    def columns(self, source: Any) -> list[str]:
        return self.frame(source).columns

    def _spec(self, source: _Input, config: JobConfig, extras: tuple[str, ...] = ()) -> _RowSpec:
        """Check the columns exactly as the Polars backend does and fix the per-row spec."""
        from pyspark.sql.pandas.types import to_arrow_schema

        assume_group = config.scope.assume_group
        if source.polars_schema is not None:
            scope.check_schema(source.polars_schema, config)
        # The time zone only labels instants (Arrow batches carry the session zone): any will do.
        own = source.df.select(*[_quoted(c) for c in source.columns]).schema
        try:
            arrow = to_arrow_schema(own, timezone="UTC")
        except TypeError:  # PySpark < 4: no time zone parameter, always UTC
            arrow = to_arrow_schema(own)
        schema = dict(pl.DataFrame(arrow.empty_table()).schema)
        scope.check_schema(schema, config)
        needed = {c: schema[c] for c in ingest.REQUIRED_COLUMNS if c in schema}
        needed.update({c: schema[c] for c in extras})
        return _RowSpec(
            schema=needed,
            timezone=config.job.timezone,
            assume_group=assume_group,
            groups=tuple(config.scope.groups),
            start=int(config.period_start.timestamp()),
            end=int(config.period_end.timestamp()),
            window_seconds=config.grid.window_seconds,
            resolution=config.grid.resolution,
            extras=extras,
            csv_fields=source.csv_fields,
            crs=config.job.crs,
        )

    # -- the exact aggregate --------------------------------------------------------------
    def exact_cells(
        self,
        source: Any,
        config: JobConfig,
        pseudonymiser: Pseudonymiser,
        key_cells: npt.NDArray[np.uint64] | None,
        partition: Callable[[pl.DataFrame], npt.NDArray[np.uint64]] | None = None,
    ) -> ExactCounts:
        if partition is not None:
            _check_adaptive(config)
        src = self.frame(source)
        df, what = src.df, src.what
        extras = tuple(c for c in src.columns if c not in ingest.REQUIRED_COLUMNS)
        spec = self._spec(src, config, extras)
        reduced = (
            _map(_job_columns(df, spec), _exact_batches, _EXACT_OUT, spec=spec)
            # One shuffle by person: every later step groups or ranks by person (plus
            # more keys), so none of them shuffles again.
            .repartition("person_id")
            # distinct minutes across batches, then dwell per (person, window, cell)
            .groupBy("status", "group", "person_id", "window", "cell", "minute")
            .agg(F.sum("n").alias("n"))
            .groupBy("status", "group", "person_id", "window", "cell")
            .agg(F.count("minute").alias("minutes"), F.sum("n").alias("n"))
        )
        from pyspark import StorageLevel

        reduced = reduced.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            return self._exact_from(reduced, what, config, pseudonymiser, key_cells, extras,
                                    has_group="group" in src.columns, partition=partition)
        finally:
            reduced.unpersist()

    def _exact_from(self, reduced: SparkDataFrame, what: str, config: JobConfig,
                    pseudonymiser: Pseudonymiser, key_cells: npt.NDArray[np.uint64] | None,
                    extras: tuple[str, ...], *, has_group: bool,
                    partition: Callable[[pl.DataFrame], npt.NDArray[np.uint64]] | None = None,
                    ) -> ExactCounts:
        # Spark pays ~0.5-1 s per action even on tiny data, so the driver asks twice:
        # (A) the row counts, PII counts, outside-boundary count and the distinct ids;
        # (B) the bounded aggregate and the pre-bounding totals. An adaptive release asks
        # once more in between: the tree counts its partition is drawn from.
        none_str, none_long = F.lit(None).cast("string"), F.lit(None).cast("long")
        parts = [reduced.filter(F.col("status").isNotNull())
                 .select("status", "group", "n", none_str.alias("person_id"))]
        dwell = reduced.filter(F.col("status").isNull()).select("person_id", "window", "cell",
                                                                "minutes", "n")
        if key_cells is not None:
            keys = self._from_polars(pl.DataFrame(
                {"cell": pl.Series(key_cells, dtype=pl.UInt64).cast(pl.Int64), "_in": True}))
            flagged = dwell.join(F.broadcast(keys), on="cell", how="left")
            parts.append(flagged.filter(F.col("_in").isNull()).agg(F.sum("n").alias("n")).select(
                F.lit(scope.OUTSIDE_BOUNDARY).alias("status"), none_str.alias("group"), "n",
                none_str.alias("person_id")))
            dwell = flagged.filter(F.col("_in").isNotNull()).drop("_in")
        parts.append(dwell.select("person_id").distinct().select(
            none_str.alias("status"), none_str.alias("group"), none_long.alias("n"), "person_id"))
        first = _collect(functools.reduce(lambda a, b: a.unionByName(b), parts), what,
                         {"status": pl.String, "group": pl.String, "n": pl.Int64,
                          "person_id": pl.String})

        tagged = first.filter(pl.col("status").is_not_null())
        is_pii = pl.col("status").str.starts_with("pii:")
        is_outside = pl.col("status") == scope.OUTSIDE_BOUNDARY
        is_hint = pl.col("status") == _EPOCH_MS
        epoch_ms = int(tagged.filter(is_hint)["n"].sum() or 0)
        counted = tagged.filter(~is_pii & ~is_outside & ~is_hint)
        dropped = scope.out_of_scope_by_group(counted)
        scanned = tagged.filter(is_pii).group_by("status").agg(pl.col("n").sum())
        found = pii.findings(counted if has_group else None, dict(scanned.iter_rows()))
        outside = int(tagged.filter(is_outside)["n"].sum() or 0)
        by_status = scope.rows_by_status(counted, outside)

        # Pseudonyms: the distinct ids were hashed here, on the driver (the key stays
        # here); the (id, pseudonym) pairs go back to the executors for the join.
        ids = first.filter(pl.col("person_id").is_not_null())["person_id"]
        pids = pseudonymiser.pseudonyms(ids)
        mapping = self._from_polars(pl.DataFrame({"person_id": ids, "pid": pids}))
        if ids.len() <= BROADCAST_IDS:
            mapping = F.broadcast(mapping)
        dwell_pid = dwell.join(mapping, on="person_id", how="inner").select(
            "person_id", "pid", "window", "cell", "minutes")
        # A person is a pseudonym: two ids whose pseudonyms collide (p ~ n^2/2^65) are one
        # person to the Polars backend, so then rank by pid (one more shuffle).
        person = "person_id" if pids.n_unique() == pids.len() else "pid"
        before = dwell_pid  # what bounding starts from (the statistics' totals)
        if partition is not None:  # adaptive: the partition is drawn between two counts
            before, kept = self._adaptive(dwell_pid, person, config, partition, what)
        else:
            kept = _bound(dwell_pid, config.privacy.max_cells_per_window, config.privacy.max_windows,
                          person)
        resolutions = config.grid.parent_resolutions
        if resolutions:  # read once per level too: keep the ranked rows
            from pyspark import StorageLevel

            kept = kept.persist(StorageLevel.MEMORY_AND_DISK)
        none_int = F.lit(None).cast("int")
        counts_q = kept.groupBy("cell", "window").agg(F.count(F.lit(1)).alias("count"),
                                                      F.sum("minutes").alias("minutes"))
        totals_q = before.agg(F.count(F.lit(1)).alias("count"), F.sum("minutes").alias("minutes"))
        queries = [
            counts_q.select(none_int.alias("level"), "cell", "window", "count", "minutes"),
            totals_q.select(none_int.alias("level"), none_long.alias("cell"), none_int.alias("window"),
                            "count", "minutes"),
        ]
        for res in resolutions:
            # aggregate.level_counts as a Spark aggregation: distinct (person, parent, window);
            # adaptive, hierarchy.level_pair_counts: kept pairs per (parent, window), so that a
            # parent is the sum of its leaves
            parents = kept.select("pid", "window", _parent(res).alias("cell"))
            if partition is None:
                parents = parents.distinct()
            queries.append(
                parents.groupBy("cell", "window").agg(F.count(F.lit(1)).alias("count"))
                .select(F.lit(res).alias("level"), "cell", "window", "count", none_long.alias("minutes")))
        try:
            second = _collect(
                functools.reduce(lambda a, b: a.unionByName(b), queries), what,
                {"level": pl.Int32, "cell": pl.Int64, "window": pl.Int32, "count": pl.Int64,
                 "minutes": pl.Int64})
        finally:
            if resolutions:
                kept.unpersist()
        levels = {
            res: second.filter(pl.col("level") == res).select(
                pl.col("cell").cast(pl.UInt64), "window", "count").sort("window", "cell")
            for res in resolutions
        }
        second = second.filter(pl.col("level").is_null())
        totals = second.filter(pl.col("cell").is_null())
        cells = second.filter(pl.col("cell").is_not_null())
        counts = cells.select(
            pl.col("cell").cast(pl.UInt64), pl.col("window").cast(pl.Int32),
            pl.col("count").cast(pl.Int64),
        ).sort("window", "cell")
        stats = bound.BoundingStats(
            person_cell_windows=int(totals["count"].sum() or 0),
            person_cell_windows_kept=int(cells["count"].sum() or 0),
            dwell_minutes=int(totals["minutes"].sum() or 0),
            dwell_minutes_kept=int(cells["minutes"].sum() or 0),
        )
        return ExactCounts(
            counts=counts,
            rows_in=sum(by_status.values()),
            rows_by_status=by_status,
            persons=ids.len(),
            bounding=stats,
            pii=found,
            identifier_names=tuple(pii.identifier_by_name(extras)),
            levels=levels,
            out_of_scope_by_group=dropped,
            rows_epoch_ms=epoch_ms,
        )

    def _adaptive(self, dwell: SparkDataFrame, person: str, config: JobConfig,
                  partition: Callable[[pl.DataFrame], npt.NDArray[np.uint64]],
                  what: str) -> tuple[SparkDataFrame, SparkDataFrame]:
        """The Polars backend's adaptive branch in Spark: tree counts, partition, leaves, bound.

        Only the tree counts (one row per node of the hierarchy) come to the driver, where
        ``partition`` draws the public leaves from them; the leaves go back as a broadcast.
        Returns the dwell rows moved to the leaves (``pid``, ``window``, ``cell``,
        ``minutes``: what bounding starts from) and the rows :func:`_bound_pairs` keeps.
        """
        a = config.adaptive
        assert a is not None  # _check_adaptive
        # A person is a pseudonym (see _exact_from): group by it, and by the id too while
        # the two are one to one, so that the data's partitioning by id is reused.
        by = ["pid"] if person == "pid" else ["person_id", "pid"]
        resolutions = range(a.min_resolution, config.grid.resolution + 1)
        tree = _collect(_tree_counts(dwell, by, resolutions, a.cells_per_person), what,
                        {"cell": pl.Int64, "count": pl.Int64})
        tree = tree.select(pl.col("cell").cast(pl.UInt64), pl.col("count").cast(pl.Int64)).sort("cell")
        leaves = pl.Series("cell", partition(tree), dtype=pl.UInt64)
        # H3 indexes have bit 63 clear: a value past Int64 is no cell's parent (dropped).
        leaf = pl.DataFrame({"cell": leaves.cast(pl.Int64, strict=False)}).drop_nulls().unique()
        present = sorted((leaf["cell"] // (1 << 52) % 16).unique().to_list())
        leaf_dwell = _to_leaves(dwell, by, self._from_polars(leaf), present)
        kept = _bound_pairs(leaf_dwell, by, a.max_pairs)
        return leaf_dwell.select("pid", "window", "cell", "minutes"), kept

    # -- the working store and the quarantine ----------------------------------------------
    def _usable(self, source: Any, config: JobConfig, out: pa.Schema) -> tuple[SparkDataFrame, str]:
        """Usable fixes (the columns of ``out``) on the executors, and the input's name."""
        src = self.frame(source)
        spec = self._spec(src, config)
        return _map(_job_columns(src.df, spec), _position_batches, out, spec=spec), src.what

    def _fixes(self, source: Any, config: JobConfig, out: pa.Schema) -> pl.DataFrame:
        """Distinct usable fixes (the columns of ``out``), on the driver."""
        usable, what = self._usable(source, config, out)
        return _collect(usable.distinct(), what, dict(pl.DataFrame(out.empty_table()).schema))

    def fixes(self, source: Any, config: JobConfig, pseudonymiser: Pseudonymiser) -> pl.DataFrame:
        """Usable fixes keyed by pseudonym (``pid``, ``t``, ``lat``, ``lng``), every one of
        them on the driver, as in the Polars backend (flows use :meth:`trips`)."""
        return keyed_fixes(self._fixes(source, config, _FIXES_OUT), pseudonymiser)

    def trips(self, source: Any, config: JobConfig, pseudonymiser: Pseudonymiser,
              params: StayParams | None = None) -> pl.DataFrame:
        """Trips between each person's stays, found on the executors.

        The usable fixes are shuffled once by person and sorted within each partition;
        each executor then runs :func:`privmob.movement.stays.person_trips` on chunks of whole
        persons. The driver receives the trips and one row per person (the id, hashed
        here, so the key stays on the driver): never the fixes. When two ids share a
        pseudonym (p ≈ n²/2⁶⁵) the Polars backend treats them as one person, so then the
        fixes are keyed by pseudonym on the executors and the step runs again by ``pid``.
        """
        stay_params = params if params is not None else StayParams.of(config.flows)
        usable, what = self._usable(source, config, _FIXES_OUT)
        found = _person_trips(usable, "person_id", stay_params, what)
        ids = found["person_id"].unique()
        mapping = pl.DataFrame({"person_id": ids, "pid": pseudonymiser.pseudonyms(ids)})
        if mapping["pid"].n_unique() == mapping.height:
            return keyed_trips(found.filter(pl.col("trip_id").is_not_null()), mapping)
        pairs = self._from_polars(mapping)
        keyed = usable.join(F.broadcast(pairs) if ids.len() <= BROADCAST_IDS else pairs,
                            on="person_id", how="inner").select("pid", "t", "lat", "lng")
        merged = _person_trips(keyed, "pid", stay_params, what)
        return (merged.filter(pl.col("trip_id").is_not_null())
                .select([pl.col(c).cast(t) for c, t in TRIP_SCHEMA.items()]).sort("pid", "trip_id"))

    def positions(self, source: Any, config: JobConfig, pseudonymiser: Pseudonymiser) -> pl.DataFrame:
        return stored_positions(self._fixes(source, config, _POSITIONS_OUT), pseudonymiser)

    def bad_rows(
        self, source: Any, config: JobConfig, pseudonymiser: Pseudonymiser, limit: int | None
    ) -> pl.DataFrame:
        """Bad rows numbered 1, 2, ... in the order Spark reads the input.

        For one file (CSV or Parquet, any number of splits) and for a Polars/pandas frame
        that is the input order. For a directory of files Spark reads the largest files
        first, and for a DataFrame it is the order of its partitions (as ``zipWithIndex``
        would number it). Rows are numbered in the same pass that finds them, so the
        numbers stay consistent even for a DataFrame whose order is not deterministic.
        """
        src = self.frame(source)
        df, what = src.df, src.what
        spec = self._spec(src, config)
        found = _collect(
            _map(_job_columns(df, spec), _bad_batches, _BAD_OUT, spec=spec, limit=limit),
            what,
            {"part": pl.Int32, "idx": pl.Int64, "reason": pl.String, "person_id": pl.String,
             "t": pl.Int64, "lat": pl.Float64, "lng": pl.Float64, "group": pl.String},
        )
        sizes = found.filter(pl.col("reason").is_null()).select("part", pl.col("idx").alias("size"))
        offsets = sizes.sort("part").with_columns(
            (pl.col("size").cum_sum() - pl.col("size")).alias("offset")).select("part", "offset")
        bad = (
            found.filter(pl.col("reason").is_not_null())
            .join(offsets, on="part", how="left")
            .select((pl.col("offset") + pl.col("idx") + 1).cast(_ROW_DTYPE).alias("row"),
                    "reason", "person_id", "t", "lat", "lng", "group")
            .sort("row")
        )
        if limit is not None:
            bad = bad.head(limit)
        return bad.with_columns(
            pseudonymiser.hex(bad["person_id"]).alias("person_pseudonym")
        ).drop("person_id")


# --- helpers ---------------------------------------------------------------------------


def _bound(dwell: SparkDataFrame, max_cells_per_window: int, max_windows: int,
           person: str) -> SparkDataFrame:
    """:func:`privmob.stages.bound.bound` in Spark: the same ranks, ties and limits.

    Cells of a (person, window) by minutes, then ``pid XOR cell`` (signed int64), both
    descending; windows of a person by summed minutes, then ``pid XOR window``,
    descending. Written as window functions over ``person`` only, so data already
    partitioned by it is not shuffled again (a join of the kept windows would be).
    """
    tie_cell = F.col("pid").bitwiseXOR(F.col("cell"))
    tie_window = F.col("pid").bitwiseXOR(F.col("window").cast("long"))
    by_cell = Window.partitionBy(person, "window").orderBy(F.col("minutes").desc(), tie_cell.desc())
    in_window = Window.partitionBy(person, "window")
    # Every row of a window shares its (total, tie), and distinct windows differ in the
    # tie, so the dense rank over rows is the rank of the window among the person's.
    by_window = Window.partitionBy(person).orderBy(F.col("_window_minutes").desc(), tie_window.desc())
    return (
        dwell.withColumn("_cell_rank", F.row_number().over(by_cell))
        .withColumn("_window_minutes", F.sum("minutes").over(in_window))
        .withColumn("_window_rank", F.dense_rank().over(by_window))
        .filter((F.col("_cell_rank") <= max_cells_per_window) & (F.col("_window_rank") <= max_windows))
        .select("pid", "window", "cell", "minutes")
    )


def _check_adaptive(config: JobConfig) -> None:
    """Refuse, before reading any data, a partition for a job that has no adaptive settings."""
    if config.adaptive is None:
        raise ConfigError("a partition was given for a job without an [adaptive] section")


def _parent(resolution: int, column: str = "cell") -> Any:
    """:func:`privmob.stages.hierarchy.parent` in Spark SQL: two bit operations on the H3
    index, held as a signed int64 (bit 63 of an H3 index is 0, so no value changes)."""
    clear, bits = aggregate.parent_bits(resolution)
    return F.col(column).bitwiseAND(F.lit(~clear)).bitwiseOR(F.lit(bits))


def _tree_counts(dwell: SparkDataFrame, by: list[str], resolutions: Iterable[int],
                 cells_per_person: int) -> SparkDataFrame:
    """:func:`privmob.stages.hierarchy.tree_counts` in Spark: the same cells kept, the same counts.

    Each person's ``cells_per_person`` cells of most dwell over the period, ties by ``pid
    XOR cell`` (signed int64), both descending, as :func:`privmob.stages.bound.top_per_group`;
    then distinct persons per parent at every resolution. ``cell`` (int64), ``count``.
    """
    per_cell = dwell.groupBy(*by, "cell").agg(F.sum("minutes").alias("minutes"))
    rank = Window.partitionBy(*by).orderBy(F.col("minutes").desc(),
                                           F.col("pid").bitwiseXOR(F.col("cell")).desc())
    kept = (per_cell.withColumn("_rank", F.row_number().over(rank))
            .filter(F.col("_rank") <= cells_per_person).select(*by, "cell"))
    nodes = [_parent(r) for r in sorted(set(resolutions))]
    if not nodes:
        return per_cell.select("cell", F.lit(0).cast("long").alias("count")).filter(F.lit(False))
    # one pass: every ancestor of a kept cell (distinct per resolution: the index holds it)
    return (kept.select(*by, F.explode(F.array(*nodes)).alias("cell")).distinct()
            .groupBy("cell").agg(F.count(F.lit(1)).alias("count")))


def _to_leaves(dwell: SparkDataFrame, by: list[str], leaves: SparkDataFrame,
               resolutions: list[int]) -> SparkDataFrame:
    """:func:`privmob.stages.hierarchy.to_leaves` in Spark: each dwell row under the leaf that
    holds it, minutes summed per (person, window, leaf); rows under no leaf dropped.

    ``leaves`` (``cell``, int64) is small and public: broadcast to one semi join with the
    cell's ancestors at every leaf resolution present. An ancestor at resolution r carries
    r in its index, so it can only match a leaf of resolution r: the Polars backend's join
    per resolution, in one pass.
    """
    if not resolutions:
        return dwell.select(*by, "window", "cell", "minutes").filter(F.lit(False))
    ancestors = F.explode(F.array(*[_parent(r) for r in resolutions])).alias("cell")
    return (dwell.select(*by, "window", ancestors, "minutes")
            .join(F.broadcast(leaves), on="cell", how="left_semi")
            .groupBy(*by, "window", "cell").agg(F.sum("minutes").alias("minutes")))


def _bound_pairs(leaf_dwell: SparkDataFrame, by: list[str], max_pairs: int) -> SparkDataFrame:
    """:func:`privmob.stages.hierarchy.bound_pairs` in Spark: each person's ``max_pairs``
    (cell, window) pairs by minutes, then ``pid XOR cell XOR window`` (signed int64), both
    descending."""
    tie = F.col("pid").bitwiseXOR(F.col("cell")).bitwiseXOR(F.col("window").cast("long"))
    rank = Window.partitionBy(*by).orderBy(F.col("minutes").desc(), tie.desc())
    return (leaf_dwell.withColumn("_rank", F.row_number().over(rank))
            .filter(F.col("_rank") <= max_pairs).select("pid", "window", "cell", "minutes"))


def _person_trips(fixes: SparkDataFrame, key: str, params: StayParams, what: str) -> pl.DataFrame:
    """Trips per person (``key``) on the executors, plus one row per person, on the driver.

    One shuffle puts all of a person's fixes in one partition; the sort within it lets
    :func:`_whole_persons` hand the stays step whole persons in bounded memory.
    """
    out = _trips_out(key)
    by_person = fixes.repartition(key).sortWithinPartitions(key)
    return _collect(_map(by_person, _trip_batches, out, key=key, params=params), what,
                    dict(pl.DataFrame(out.empty_table()).schema))


def _job_columns(df: SparkDataFrame, spec: _RowSpec) -> SparkDataFrame:
    """Only the columns the job reads (the five, extras for the PII scan, and for CSV
    the malformed-line marker)."""
    names = list(spec.schema) + ([_MALFORMED] if spec.csv_fields is not None else [])
    return df.select(*[F.col(_quoted(c)) for c in names])


def _map(df: SparkDataFrame, step: Callable[..., Iterator[pa.RecordBatch]], out: pa.Schema,
         **kwargs: Any) -> SparkDataFrame:
    """``df.mapInArrow`` of a per-row step whose batches have exactly the schema ``out``."""
    from pyspark.sql.pandas.types import from_arrow_schema

    fn = functools.partial(step, out=out, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # PySpark's notice about pandas 3
        return df.mapInArrow(fn, from_arrow_schema(out))  # no timestamps in `out`


def _collect(df: SparkDataFrame, what: str, schema: dict[str, Any]) -> pl.DataFrame:
    """Run a query and bring its (small) result to the driver as a typed Polars frame.

    Errors Spark reports about the data (a file it cannot read, a per-row step that
    failed on a value) become :class:`InputError`, like the Polars backend's; anything
    else (out of memory, a lost executor) is raised as Spark raised it.
    """
    from pyspark.errors.exceptions.captured import CapturedException

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # PySpark < 4 has no toArrow; not toPandas() there: it makes nullable longs
            # float64, which rounds H3 cells.
            if hasattr(df, "toArrow"):
                table = df.toArrow()
            else:
                batches = cast(Any, df)._collect_as_arrow()
                table = pa.Table.from_batches(batches) if batches else pa.table({})
    except CapturedException as exc:
        raise InputError(f"{what} cannot be read: {_spark_message(exc)}") from exc
    frame = pl.DataFrame(pl.from_arrow(table)) if table.num_columns else pl.DataFrame()
    if frame.height == 0:
        return pl.DataFrame(schema=schema)
    return frame.select([pl.col(c).cast(t) for c, t in schema.items()])


def _spark_message(exc: BaseException) -> str:
    """Why Spark could not read the input, in :func:`privmob.stages.ingest.first_line`'s words.

    A per-row step that raised shows up as a Python traceback inside Spark's error; its
    last ``module.Error: message`` line is the exception the Polars backend would have
    raised, so it is categorised the same way. Spark's messages often quote the row they
    failed on: only the category is kept, never the text.
    """
    raised = None
    for line in str(exc).splitlines():
        hit = _RAISED.match(line.strip())
        if hit:
            raised = hit
    if raised is None:
        return ingest.first_line(exc)
    inner = type(raised.group(1), (Exception,), {})(raised.group(2))
    return ingest.first_line(inner)


def _header_names(spark_names: list[str]) -> list[str] | None:
    """Polars' names for a CSV header that Spark renamed for duplicates, else None.

    Spark makes repeated names unique by appending each one's position (``lat`` at 2 and
    5 become ``lat2``, ``lat5``); Polars keeps the first and names the next
    ``lat_duplicated_0``, which :func:`privmob.stages.ingest.require_columns` refuses. Only
    exact repeats are restored (Spark also renames names that differ in case alone).
    """
    bases = [n[: -len(str(i))] if n.endswith(str(i)) else None for i, n in enumerate(spark_names)]
    repeated = {b for b in bases if b and bases.count(b) > 1}
    if not repeated:
        return None
    seen: dict[str, int] = {}
    names = []
    for name, base in zip(spark_names, bases, strict=True):
        if base in repeated:
            k = seen.get(base, -1)
            names.append(base if k < 0 else f"{base}_duplicated_{k}")
            seen[base] = k + 1
        else:
            names.append(name)
    return names


def _quoted(column: str) -> str:
    return "`" + column.replace("`", "``") + "`"


def _looks_csv(name: str) -> bool:
    """Whether a remote path (which cannot be sniffed like a local one) names CSV."""
    return name.lower().rstrip("/").endswith((".csv", ".csv.gz", ".csv.bz2"))


def _spark_schema(arrow: pa.Schema) -> Any:
    """Spark's schema for Arrow data, naive timestamps kept naive (TIMESTAMP_NTZ).

    A naive datetime is local time in the job's zone, which the per-row step applies;
    Spark's default would read it in the session's zone instead.
    """
    from pyspark.sql.pandas.types import from_arrow_schema
    from pyspark.sql.types import StructField, StructType, TimestampNTZType

    try:
        return from_arrow_schema(arrow, prefer_timestamp_ntz=True)
    except TypeError:  # PySpark < 3.5 has no prefer_timestamp_ntz
        schema = from_arrow_schema(arrow)
        return StructType([
            StructField(f.name, TimestampNTZType(), f.nullable)
            if pa.types.is_timestamp(a.type) and a.type.tz is None else f
            for f, a in zip(schema.fields, arrow, strict=True)
        ])


def _spark_ready(frame: pl.DataFrame) -> pl.DataFrame:
    """A frame whose Arrow types Spark accepts, values unchanged where it matters.

    Spark has no unsigned integers and no categoricals: unsigned integers widen (UInt64
    to Int64, where values past 2**63 - 1 become null), categoricals become text.
    """
    casts = []
    for name, dtype in frame.schema.items():
        if dtype in (pl.UInt8, pl.UInt16):
            casts.append(pl.col(name).cast(pl.Int32))
        elif dtype in (pl.UInt32, pl.UInt64):
            casts.append(pl.col(name).cast(pl.Int64, strict=False))
        elif isinstance(dtype, pl.Categorical | pl.Enum):
            casts.append(pl.col(name).cast(pl.String))
    return frame.with_columns(casts) if casts else frame
