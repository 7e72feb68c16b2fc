"""Stage 1 — ingest: a lazy handle on raw pings, and the per-row validity check.

Nothing is read when a :class:`Pings` handle is made: the backend scans the source once,
lazily, selecting only the five columns the job needs (so name, phone, address and any
other extra column never enter memory). Every row gets a ``reason``: null for a good row,
otherwise the first check it fails. Bad rows are counted by reason and never silently
dropped.
"""

from __future__ import annotations

import hashlib
import io
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from privmob.errors import InputError, SchemaError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BAD_REASONS",
    "REQUIRED_COLUMNS",
    "Pings",
    "found_columns",
    "read_pings",
    "require_columns",
    "validate",
]

REQUIRED_COLUMNS: tuple[str, ...] = ("person_id", "ts", "lat", "lng", "group")

#: Every reason a row can be bad, in the order the checks run; the first failing one wins.
BAD_REASONS: dict[str, tuple[str, str]] = {
    "person_id_missing": ("person_id", "is empty or null"),
    "ts_unparseable": ("ts", "is not ISO-8601 (with or without offset) nor epoch seconds"),
    "lat_not_numeric": ("lat", "is not a number"),
    "lng_not_numeric": ("lng", "is not a number"),
    "coordinates_not_finite": ("lat/lng", "is NaN or infinite"),
    "lat_out_of_range": ("lat", "is outside [-90, 90]"),
    "lng_out_of_range": ("lng", "is outside [-180, 180]"),
    "group_missing": ("group", "is empty or null"),
}

_DUPLICATE = re.compile(r"^(.*)_duplicated_\d+$")

_HINTS = {
    "person_id": ("id", "pid", "user_id", "uid", "person"),
    "ts": ("time", "timestamp", "datetime", "date_time", "t"),
    "lat": ("latitude", "y"),
    "lng": ("lon", "long", "longitude", "x"),
    "group": ("category", "type", "key_group", "status"),
}

SourceKind = Literal["parquet", "csv", "frame"]


@dataclass(frozen=True, eq=False)
class Pings:
    """Raw movement records, not yet read.

    Make one with :func:`read_pings`. The handle knows where the records are and how to
    scan them; the release path reads them once, inside a backend.
    """

    kind: SourceKind
    path: Path | None = None
    frame: pl.DataFrame | None = None

    def scan(self) -> pl.LazyFrame:
        """A lazy scan of the raw records (CSV columns all as text, to validate per row)."""
        if self.kind == "frame":
            assert self.frame is not None
            return self.frame.lazy()
        assert self.path is not None
        if self.kind == "parquet":
            return pl.scan_parquet(self.path)
        return pl.scan_csv(self.path, infer_schema=False, encoding="utf8-lossy",
                           truncate_ragged_lines=False)

    def schema(self) -> dict[str, pl.DataType]:
        """Column names and types, reading only the file's header/metadata."""
        try:
            return dict(self.scan().collect_schema())
        except (pl.exceptions.ComputeError, OSError, pl.exceptions.PolarsError) as exc:
            raise InputError(f"{self.describe()} cannot be read: {first_line(exc)}") from exc

    def sha256(self) -> str:
        """Digest of the input bytes (files) or of an Arrow IPC dump (frames)."""
        digest = hashlib.sha256()
        if self.kind == "frame":
            assert self.frame is not None
            buf = io.BytesIO()
            self.frame.write_ipc(buf)
            digest.update(buf.getvalue())
        else:
            assert self.path is not None
            with self.path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()

    def describe(self) -> str:
        return f"input {self.path}" if self.path is not None else "input data frame"


def read_pings(source: str | Path | pl.DataFrame | pl.LazyFrame | pd.DataFrame | Pings) -> Pings:
    """Point privmob at raw pings: a CSV / CSV.gz / Parquet path, or a Polars/pandas frame.

    Reads nothing but the file's first bytes (to tell Parquet from CSV); the columns are
    checked when the job runs.

    Examples
    --------
    >>> import polars as pl
    >>> read_pings(pl.DataFrame({"person_id": ["a"], "ts": [0], "lat": [1.0],
    ...                          "lng": [2.0], "group": ["confirmed"]})).kind
    'frame'
    """
    if isinstance(source, Pings):
        return source
    if isinstance(source, pl.LazyFrame):
        return Pings("frame", frame=source.collect())
    if isinstance(source, pl.DataFrame):
        return Pings("frame", frame=source)
    if _is_pandas(source):
        return Pings("frame", frame=pl.from_pandas(source))  # type: ignore[arg-type]
    if not isinstance(source, str | Path):
        raise InputError(
            f"cannot read pings from a {type(source).__name__}; pass a path or a data frame"
        )
    path = Path(source)
    if not path.is_file():
        if path.exists():
            raise InputError(f"input {path} is not a regular file")
        raise InputError(f"input {path} does not exist")
    with path.open("rb") as fh:
        head = fh.read(4)
    if head == b"PAR1":
        return Pings("parquet", path=path)
    if path.suffix.lower() == ".parquet":
        raise InputError(f"input {path} is named .parquet but is not a Parquet file")
    return Pings("csv", path=path)


def _is_pandas(obj: Any) -> bool:
    return type(obj).__module__.startswith("pandas") and type(obj).__name__ == "DataFrame"


def require_columns(schema: dict[str, pl.DataType], *, group_optional: bool) -> None:
    """Fail with every missing column named (and a hint if a near name is present).

    Only the five job column names are ever quoted: any other header is input (a
    headerless file's first row is a data row — a phone number, an ID, a name), so it is
    referred to by its 1-based position instead.
    """
    duplicated = _duplicated_positions(list(schema))
    if duplicated:
        raise SchemaError(
            "the input's header repeats a column name: "
            + "; ".join(_describe_repeat(name, positions) for name, positions in duplicated)
            + "; keep one of each (which one holds the data would be a guess)"
        )
    needed = [c for c in REQUIRED_COLUMNS if not (c == "group" and group_optional)]
    missing = [c for c in needed if c not in schema]
    if not missing:
        return
    hints = []
    lower = {c.strip().lower(): position for position, c in enumerate(schema, start=1)}
    for col in missing:
        for alias in _HINTS[col]:
            if alias in lower:
                hints.append(f"column {lower[alias]} → {col!r}")
    parts = [f"input is missing required column(s) {', '.join(repr(m) for m in missing)}"]
    if "group" in missing:
        parts.append(
            "an input without a group column is accepted only when the job says the whole "
            "input is one key group: [scope] assume_group = \"close_contact\""
        )
    if hints:
        parts.append("rename " + ", ".join(hints))
    parts.append(found_columns(schema))
    if schema and not any(_is_known_column(c) for c in schema):
        parts.append("does the file have a header row?")
    raise SchemaError("; ".join(parts))


def found_columns(schema: Mapping[str, object]) -> str:
    """``found 7 column(s): 'person_id', 'ts' and 5 other(s) (names not shown: a header can be data)``.

    Only job column names are echoed; the others are counted, never named.
    """
    known = [c for c in schema if c in REQUIRED_COLUMNS]
    others = len(schema) - len(known)
    found = ", ".join(repr(c) for c in known) or "none of the job's columns"
    return (f"found {len(schema)} column(s): {found}"
            + (f" and {others} other(s) (names not shown: a header can be data)" if others else ""))


def _duplicated_positions(names: list[str]) -> list[tuple[str | None, list[int]]]:
    """Each repeated header as (job column name or None, 1-based positions), in order.

    Polars keeps the first of a repeated name and renames the next ``<name>_duplicated_<n>``.
    """
    groups: dict[str, list[int]] = {}
    for position, name in enumerate(names, start=1):
        m = _DUPLICATE.match(name)
        if m and m.group(1) in names:
            groups.setdefault(m.group(1), [names.index(m.group(1)) + 1]).append(position)
    return [(base if base in REQUIRED_COLUMNS else None, positions)
            for base, positions in groups.items()]


def _describe_repeat(name: str | None, positions: list[int]) -> str:
    where = ", ".join(str(p) for p in positions)
    return f"{name!r} at columns {where}" if name else f"one name at columns {where}"


def _is_known_column(name: str) -> bool:
    """Whether a header looks like one (a job name, a usual alias or an identifier's name).

    When none does, the first row is probably data: the message asks about a header row.
    """
    from privmob.stages.pii import IDENTIFIER_NAMES

    key = name.strip().lower()
    aliases = {a for values in _HINTS.values() for a in values}
    return key in REQUIRED_COLUMNS or key in aliases or key in IDENTIFIER_NAMES


def validate(
    lf: pl.LazyFrame,
    schema: dict[str, pl.DataType],
    timezone: str,
    *,
    assume_group: str | None = None,
) -> pl.LazyFrame:
    """Select the job's columns, parse them, and tag each row with its first failing check.

    Returns columns ``person_id`` (str), ``t`` (Int64 epoch seconds, UTC), ``lat``,
    ``lng`` (Float64), ``group`` (str) and ``reason`` (str, null when the row is good).
    Naive timestamps are read as local time in ``timezone``.
    """
    zoneinfo.ZoneInfo(timezone)  # validated by the config; fail loudly if called directly
    if "group" in schema:
        group = pl.col("group").cast(pl.String).str.strip_chars()
        group = pl.when(group == "").then(None).otherwise(group)
    else:
        group = pl.lit(assume_group, dtype=pl.String)
    pid = pl.col("person_id").cast(pl.String).str.strip_chars()
    lat_raw_missing, lat = _numeric("lat", schema)
    lng_raw_missing, lng = _numeric("lng", schema)
    t = _epoch_seconds(schema["ts"], timezone)
    frame = lf.select(
        pid.alias("person_id"),
        t.alias("t"),
        lat.alias("lat"),
        lng.alias("lng"),
        group.alias("group"),
        lat_raw_missing.alias("_lat_bad"),
        lng_raw_missing.alias("_lng_bad"),
    )
    finite = pl.col("lat").is_finite() & pl.col("lng").is_finite()
    reason = (
        pl.when(pl.col("person_id").is_null() | (pl.col("person_id") == ""))
        .then(pl.lit("person_id_missing"))
        .when(pl.col("t").is_null())
        .then(pl.lit("ts_unparseable"))
        .when(pl.col("_lat_bad"))
        .then(pl.lit("lat_not_numeric"))
        .when(pl.col("_lng_bad"))
        .then(pl.lit("lng_not_numeric"))
        .when(~finite)
        .then(pl.lit("coordinates_not_finite"))
        .when(pl.col("lat").abs() > 90)
        .then(pl.lit("lat_out_of_range"))
        .when(pl.col("lng").abs() > 180)
        .then(pl.lit("lng_out_of_range"))
        .when(pl.col("group").is_null())
        .then(pl.lit("group_missing"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    return frame.with_columns(reason.alias("reason")).drop("_lat_bad", "_lng_bad")


def _numeric(name: str, schema: dict[str, pl.DataType]) -> tuple[pl.Expr, pl.Expr]:
    """(is-not-numeric flag, Float64 value) for a coordinate column of any type."""
    dtype = schema[name]
    col = pl.col(name)
    if dtype.is_numeric():
        value = col.cast(pl.Float64)
        return col.is_null(), value
    if dtype == pl.String:
        text = col.str.strip_chars()
        value = text.cast(pl.Float64, strict=False)
        return value.is_null(), value
    raise SchemaError(f"column {name!r} has type {dtype}; expected a number (or numeric text)")


_OFFSET_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%:z",)
_NAIVE_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M")


def _epoch_seconds(dtype: pl.DataType, timezone: str) -> pl.Expr:
    col = pl.col("ts")
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            col = col.dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null")
        return col.dt.epoch("s")
    if isinstance(dtype, pl.Date):
        return col.cast(pl.Datetime("us")).dt.replace_time_zone(timezone).dt.epoch("s")
    if dtype.is_integer():
        return col.cast(pl.Int64)
    if dtype.is_float():
        return pl.when(col.is_finite()).then(col.floor()).otherwise(None).cast(pl.Int64)
    if dtype != pl.String:
        raise SchemaError(
            f"column 'ts' has type {dtype}; expected ISO-8601 text, epoch seconds or a datetime"
        )
    text = (
        col.str.strip_chars()
        .str.replace(r"[zZ]$", "+00:00")
        .str.replace(" ", "T", literal=True)
    )
    candidates: list[pl.Expr] = [
        text.str.to_datetime(fmt, strict=False, time_zone="UTC", time_unit="us").dt.epoch("s")
        for fmt in _OFFSET_FORMATS
    ]
    candidates += [
        text.str.to_datetime(fmt, strict=False, time_unit="us")
        .dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null")
        .dt.epoch("s")
        for fmt in _NAIVE_FORMATS
    ]
    epoch = text.cast(pl.Float64, strict=False)
    candidates.append(
        pl.when(epoch.is_finite() & (epoch.abs() < 1e12)).then(epoch.floor()).cast(pl.Int64)
    )
    return pl.coalesce(candidates)


_READ_ERRORS = (
    ("quote", "a quoted field is not closed"),
    ("could not parse", "a row could not be parsed (often a quote that is never closed)"),
    ("utf-8", "it is not valid UTF-8 text"),
    ("utf8", "it is not valid UTF-8 text"),
    ("parquet", "it is not a valid Parquet file (truncated or corrupt)"),
    ("magic", "it is not a valid Parquet file (truncated or corrupt)"),
    ("gzip", "its compressed stream is truncated or corrupt"),
    ("decompress", "its compressed stream is truncated or corrupt"),
    ("deflate", "its compressed stream is truncated or corrupt"),
    ("eof", "it ends unexpectedly"),
    ("end of file", "it ends unexpectedly"),
    ("fields", "a row has the wrong number of fields"),
    ("columns", "a row has the wrong number of fields"),
    ("permission denied", "permission denied"),
    ("no such file", "the file does not exist"),
    ("is a directory", "it is a directory"),
)


_QUOTED = re.compile(r"`[^`]*`?|'[^']*'|\"[^\"]*\"", re.DOTALL)


def first_line(exc: BaseException) -> str:
    """Why reading failed, in words that never quote the input.

    Parser messages echo the offending row (ids, places, times); error messages and the
    audit log must not, so only a category is kept — no position either, since a number
    in the message may be a cell's (a phone number). ``--debug`` shows the original.
    """
    # Quoted parts are the input itself (Polars quotes the row in backticks): not matched on.
    text = _QUOTED.sub(" ", str(exc)).lower()
    for needle, why in _READ_ERRORS:
        if needle in text:
            return why
    return f"{type(exc).__name__} while parsing (details withheld: they may quote personal data)"
