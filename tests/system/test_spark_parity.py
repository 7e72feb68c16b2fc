"""The Spark backend computes exactly what the Polars backend computes.

Same input, same job, same key → the same :class:`ExactCounts` field by field (counts
frame, row counts by status, persons, bounding statistics, PII findings), the same bad
rows (numbers, reasons, pseudonyms), the same positions; and a release through Spark runs
the one shared release path (same manifest apart from ids, times and noise). Stays and
trips for flows run on the engine: Spark finds the same trips (so the same exact OD
counts) while only the trips, never the fixes, reach the driver.

Spark runs in local mode (``local[2]``), one session for the whole module. Skipped, with
the reason, when PySpark (``pip install 'privmob[spark]'``) or a Java runtime is missing.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from h3.api import basic_int as h3i

pytest.importorskip("pyspark", reason="PySpark is not installed: pip install 'privmob[spark]'")
if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
    pytest.skip("the Spark backend needs a Java runtime (17+): none on PATH or in JAVA_HOME",
                allow_module_level=True)

import privmob as pm
from privmob import synth
from privmob.backends import _spark
from privmob.backends._polars import PolarsBackend
from privmob.backends._spark import SparkBackend, local_session
from privmob.errors import InputError, SchemaError
from privmob.movement.flows import Units, load_units
from privmob.movement.stays import TRIP_SCHEMA, StayParams, person_trips
from privmob.stages import pii, scope
from privmob.stages.aggregate import ExactCounts
from privmob.stages.ingest import BAD_REASONS
from privmob.stages.pseudonymise import Pseudonymiser
from tests.conftest import fresh_ledger

flows = importlib.import_module("privmob.movement.flows")
SAMPLES = Path(__file__).resolve().parents[2] / "data-samples"
KEY = b"0123456789abcdef0123456789abcdef-spark-parity"


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    # Small file splits so the 1M-ping file is read by several tasks, in parallel and
    # numbered across partitions (bad_rows).
    session = local_session("local[2]", **{"spark.sql.files.maxPartitionBytes": "4m"})
    yield session
    session.stop()


@pytest.fixture(scope="module")
def engines(spark: Any) -> tuple[PolarsBackend, SparkBackend]:
    return PolarsBackend(), SparkBackend(spark)


@pytest.fixture(scope="module")
def demo() -> pm.JobConfig:
    return pm.JobConfig.from_toml(SAMPLES / "demo.toml")


@pytest.fixture(scope="module")
def pseudonymiser() -> Pseudonymiser:
    return Pseudonymiser(KEY, "2026-11-26")


def _config(**overrides: Any) -> pm.JobConfig:
    job = {"operator": "spark-parity", "period": "2026-11-26", "timezone": "Asia/Shanghai"}
    job.update(overrides.pop("job", {}))
    return pm.JobConfig.from_dict({"job": job, **overrides})


def assert_same(a: ExactCounts, b: ExactCounts) -> None:
    assert a.counts.schema == b.counts.schema == pl.Schema(
        {"cell": pl.UInt64, "window": pl.Int32, "count": pl.Int64})
    assert a.counts.equals(b.counts)
    assert a.rows_in == b.rows_in
    assert a.rows_by_status == b.rows_by_status
    assert a.persons == b.persons
    assert a.bounding == b.bounding
    assert a.pii == b.pii
    assert a.identifier_names == b.identifier_names
    assert sorted(a.levels) == sorted(b.levels)
    for res, level in a.levels.items():
        assert level.schema == a.counts.schema and level.equals(b.levels[res])
    assert a.out_of_scope_by_group == b.out_of_scope_by_group
    assert a.rows_epoch_ms == b.rows_epoch_ms


def assert_same_bad_rows(polars_rows: pl.DataFrame, spark_rows: pl.DataFrame) -> None:
    assert polars_rows.schema == spark_rows.schema
    assert polars_rows.equals(spark_rows)


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(frame.columns)


# --- the bundled samples -----------------------------------------------------------------


def test_sample_parquet(engines: tuple[PolarsBackend, SparkBackend], demo: pm.JobConfig,
                        pseudonymiser: Pseudonymiser) -> None:
    polars_engine, spark_engine = engines
    keys = pm.plan(demo).key_cells
    source = pm.read_pings(SAMPLES / "beijing_pings.parquet")
    expected = polars_engine.exact_cells(source, demo, pseudonymiser, keys)
    assert expected.counts.height > 1000  # a real comparison, not of two empty tables
    assert_same(expected, spark_engine.exact_cells(source, demo, pseudonymiser, keys))
    assert spark_engine.columns(source) == polars_engine.columns(source)


def test_sample_dirty_csv(engines: tuple[PolarsBackend, SparkBackend], demo: pm.JobConfig,
                          pseudonymiser: Pseudonymiser) -> None:
    polars_engine, spark_engine = engines
    keys = pm.plan(demo).key_cells
    source = pm.read_pings(SAMPLES / "beijing_pings_dirty.csv.gz")
    expected = polars_engine.exact_cells(source, demo, pseudonymiser, keys)
    assert sum(n for r, n in expected.rows_by_status.items() if r in BAD_REASONS) == 100
    assert_same(expected, spark_engine.exact_cells(source, demo, pseudonymiser, keys))
    for limit in (None, 5):
        assert_same_bad_rows(polars_engine.bad_rows(source, demo, pseudonymiser, limit),
                             spark_engine.bad_rows(source, demo, pseudonymiser, limit))
    expected_positions = polars_engine.positions(source, demo, pseudonymiser)
    positions = spark_engine.positions(source, demo, pseudonymiser)
    assert positions.schema == expected_positions.schema
    assert _sorted(positions).equals(_sorted(expected_positions))
    if hasattr(polars_engine, "fixes"):  # flows' input, where that backend method exists
        assert _sorted(spark_engine.fixes(source, demo, pseudonymiser)).equals(
            _sorted(polars_engine.fixes(source, demo, pseudonymiser)))


# --- a 1M-ping synthetic day -------------------------------------------------------------


@pytest.fixture(scope="module")
def million(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spark") / "synth-1m.parquet"
    persons = round(1_000_000 / synth.expected_rows_per_person_day())
    # bad_fraction > 0: every column is text, so the text parsers run at scale too;
    # several row groups, so Spark reads the file in several partitions.
    rows = synth.generate_to_parquet(path, persons, seed=7, bad_fraction=0.001,
                                     rows_per_chunk=200_000)
    assert 900_000 < rows < 1_100_000
    return path


def test_synthetic_million(engines: tuple[PolarsBackend, SparkBackend], million: Path,
                           pseudonymiser: Pseudonymiser, spark: Any) -> None:
    polars_engine, spark_engine = engines
    # Bounding that bites on both axes: 2 cells per window, 6 of 24 hourly windows.
    cfg = _config(grid={"resolution": 8, "window": "1h"},
                  privacy={"max_cells_per_window": 2, "max_windows": 6})
    source = pm.read_pings(million)
    expected = polars_engine.exact_cells(source, cfg, pseudonymiser, None)
    assert expected.bounding.dropped_share > 0.1
    assert_same(expected, spark_engine.exact_cells(source, cfg, pseudonymiser, None))
    assert spark.read.parquet(str(million)).rdd.getNumPartitions() > 1
    # Row numbers run on across Spark's partitions of the file.
    assert_same_bad_rows(polars_engine.bad_rows(source, cfg, pseudonymiser, None),
                         spark_engine.bad_rows(source, cfg, pseudonymiser, None))


def test_spark_dataframe_and_uri_inputs(engines: tuple[PolarsBackend, SparkBackend],
                                        pseudonymiser: Pseudonymiser, spark: Any) -> None:
    polars_engine, spark_engine = engines
    cfg = _config(grid={"resolution": 7, "window": "3h"})
    path = SAMPLES / "beijing_pings.parquet"
    expected = polars_engine.exact_cells(pm.read_pings(path), cfg, pseudonymiser, None)
    assert_same(expected, spark_engine.exact_cells(spark.read.parquet(str(path)), cfg,
                                                   pseudonymiser, None))
    assert_same(expected, spark_engine.exact_cells(f"file://{path}", cfg, pseudonymiser, None))


# --- every parsing rule, and schema errors -----------------------------------------------

TRICKY_CSV = """person_id,ts,lat,lng,group,note,phone
P1,2026-11-26T08:00:00Z,39.9,116.4,confirmed,write to a@example.com,
 P1 ,2026-11-26T08:00:30+08:00,39.9,116.4,confirmed,,
P2,2026-11-26 09:15:00,39.95,116.45,suspected,,138 1234 5678
P2,2026-11-26T09:15,39.95,116.45,suspected,"two
lines",
P2,2026-11-26T09:16:10.123456,39.95,116.45, suspected ,,
P3,1795650000,40.0,116.3,close_contact,,
P3,1795650000.75,40.0,116.3,close_contact,,
P3,  1795650060  ,40.0,116.3,close_contact,"a, b",
P3,1795650061,40.0001, 116.3 ,close_contact,,
P4,not-a-time,40,116,confirmed,,
,2026-11-26T10:00:00Z,40,116,confirmed,,
"",2026-11-26T10:00:00Z,40,116,confirmed,,
"  ",2026-11-26T10:00:00Z,40,116,confirmed,,
P5,2026-11-26T10:00:00Z,abc,116,confirmed,,
P5,2026-11-26T10:00:00Z,40,xyz,confirmed,,
P5,2026-11-26T10:00:00Z,NaN,116,confirmed,,
P5,2026-11-26T10:00:00Z,inf,116,confirmed,,
P5,2026-11-26T10:00:00Z,91,116,confirmed,,
P5,2026-11-26T10:00:00Z,40,-181,confirmed,,
P5,,40,116,confirmed,,
P6,2026-11-26T10:00:00Z,40,116,,,
P6,2026-11-26T10:00:00Z,40,116,"",,
P6,2026-11-26T10:00:00Z,40,116,general,,
P6,2026-11-20T10:00:00Z,40,116,confirmed,,
P6,2026-11-26T16:00:00Z,40,116,confirmed,,
P7,2026-11-26T11:00:00Z,40,116,call 13812345678,,
张三,2026-11-26T12:00:00+08:00,39.91,116.39,confirmed,,
"P8,x",2026-11-26T12:30:00+0800,39.91,116.39,confirmed,id 11010519491231002X,
P8,2026-11-26T12:30:00.5+08:00,39.91,116.39,close_contact,,
P9,2026-11-26T23:59:59,39.91,116.39,close_contact,,
P9,2026-11-27T00:00:00,39.91,116.39,close_contact,,
"""


@pytest.fixture(scope="module")
def tricky(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spark") / "tricky.csv"
    path.write_text(TRICKY_CSV, encoding="utf-8")
    return path


def test_every_rule_csv(engines: tuple[PolarsBackend, SparkBackend], tricky: Path,
                        pseudonymiser: Pseudonymiser) -> None:
    polars_engine, spark_engine = engines
    cfg = _config(grid={"resolution": 9, "window": "15m"},
                  privacy={"max_cells_per_window": 2, "max_windows": 3})
    source = pm.read_pings(tricky)
    expected = polars_engine.exact_cells(source, cfg, pseudonymiser, None)
    # the file exercises every reason and status, and the PII scan
    assert set(BAD_REASONS) <= set(expected.rows_by_status)
    assert {"ok", "out_of_scope", "out_of_period"} <= set(expected.rows_by_status)
    assert expected.pii and expected.identifier_names == ("phone",)
    assert_same(expected, spark_engine.exact_cells(source, cfg, pseudonymiser, None))
    assert_same_bad_rows(polars_engine.bad_rows(source, cfg, pseudonymiser, None),
                         spark_engine.bad_rows(source, cfg, pseudonymiser, None))
    assert_same_bad_rows(polars_engine.bad_rows(source, cfg, pseudonymiser, 3),
                         spark_engine.bad_rows(source, cfg, pseudonymiser, 3))


def test_levels_group_normalisation_and_hints(engines: tuple[PolarsBackend, SparkBackend],
                                              pseudonymiser: Pseudonymiser) -> None:
    """Parent levels (distinct persons per parent: aggregate.level_counts in Polars, a Spark
    aggregation with H3 bit arithmetic in Spark), group values in other case and width, the
    dropped-group tallies and the epoch-milliseconds hint agree between the engines."""
    polars_engine, spark_engine = engines
    frame = pl.read_parquet(SAMPLES / "beijing_pings.parquet").with_row_index("i").select(
        "person_id",
        pl.when(pl.col("i") % 50 == 0).then(pl.col("ts").dt.epoch("ms"))
        .otherwise(pl.col("ts").dt.epoch("s")).alias("ts"),
        "lat", "lng",
        pl.when(pl.col("i") % 3 == 0).then(pl.col("group").str.to_uppercase())
        .when(pl.col("i") % 7 == 0).then(pl.lit("ｃｏｎｆｉｒｍｅｄ"))
        .when(pl.col("i") % 11 == 0).then(pl.lit("13812345678"))
        .otherwise(pl.col("group")).alias("group"),
    )
    cfg = _config(grid={"resolution": 8, "window": "3h", "parent_resolutions": [7, 5]},
                  privacy={"max_cells_per_window": 3, "max_windows": 8})
    expected = polars_engine.exact_cells(frame, cfg, pseudonymiser, None)
    assert expected.levels[7].height > 100 and expected.levels[5].height > 10
    assert expected.rows_epoch_ms > 1000
    assert {"general", "resident", "(other)"} <= set(expected.out_of_scope_by_group)
    assert_same(expected, spark_engine.exact_cells(frame, cfg, pseudonymiser, None))


def test_gcj02_pings(engines: tuple[PolarsBackend, SparkBackend], pseudonymiser: Pseudonymiser) -> None:
    """Pings in GCJ-02 are converted to WGS-84 before indexing, on both engines."""
    polars_engine, spark_engine = engines
    cfg = _config(job={"crs": "gcj02"}, grid={"resolution": 9, "window": "1h"})
    source = pm.read_pings(SAMPLES / "beijing_pings_dirty.csv.gz")
    expected = polars_engine.exact_cells(source, cfg, pseudonymiser, None)
    assert not expected.counts.equals(
        polars_engine.exact_cells(source, _config(grid={"resolution": 9, "window": "1h"}),
                                  pseudonymiser, None).counts)  # the conversion moved cells
    assert_same(expected, spark_engine.exact_cells(source, cfg, pseudonymiser, None))


def _typed_frame() -> pl.DataFrame:
    """Typed columns, naive local datetimes across a DST gap (Europe/Berlin, 2026-03-29)."""
    naive = [dt.datetime(2026, 3, 29, 1, 30), dt.datetime(2026, 3, 29, 2, 30),
             dt.datetime(2026, 3, 29, 3, 30), dt.datetime(2026, 3, 29, 23, 59), None,
             dt.datetime(2026, 3, 28, 23, 59), dt.datetime(2026, 3, 29, 12, 0)]
    return pl.DataFrame({
        "person_id": ["a", "a", "b", "b", "c", "c", "d"],
        "ts": pl.Series(naive, dtype=pl.Datetime("us")),
        "lat": pl.Series([52.52, 52.52, 52.5, None, 52.5, 52.5, float("nan")], dtype=pl.Float32),
        "lng": pl.Series([13, 13, 13, 13, 13, 200, 13], dtype=pl.Int64),
        "group": pl.Series(["confirmed", "confirmed", "suspected", "suspected", "confirmed",
                            "confirmed", "confirmed"], dtype=pl.Categorical),
        "visits": pl.Series([1, 2, 3, 4, 5, 6, 13812345678], dtype=pl.UInt64),
    })


def test_every_rule_typed(engines: tuple[PolarsBackend, SparkBackend], pseudonymiser: Pseudonymiser,
                          tmp_path: Path) -> None:
    polars_engine, spark_engine = engines
    cfg = _config(job={"timezone": "Europe/Berlin", "period": "2026-03-29"},
                  grid={"resolution": 8, "window": "1h"})
    frame = _typed_frame()
    frame.write_parquet(tmp_path / "typed.parquet")  # naive timestamps: TIMESTAMP_NTZ in Spark
    for source in (pm.read_pings(frame), pm.read_pings(tmp_path / "typed.parquet")):
        expected = polars_engine.exact_cells(source, cfg, pseudonymiser, None)
        assert expected.rows_by_status["ts_unparseable"] == 2  # the DST gap, and the null
        assert_same(expected, spark_engine.exact_cells(source, cfg, pseudonymiser, None))
        assert_same_bad_rows(polars_engine.bad_rows(source, cfg, pseudonymiser, None),
                             spark_engine.bad_rows(source, cfg, pseudonymiser, None))


def test_schema_errors_match(engines: tuple[PolarsBackend, SparkBackend],
                             pseudonymiser: Pseudonymiser) -> None:
    polars_engine, spark_engine = engines
    cfg = _config()
    cases = [
        (pl.DataFrame({"person_id": ["a"], "time": [0], "lat": [1.0], "lng": [2.0],
                       "group": ["confirmed"]}), cfg),
        (pl.DataFrame({"person_id": ["a"], "ts": [0], "lat": [True], "lng": [2.0],
                       "group": ["confirmed"]}), cfg),
        (pl.DataFrame({"person_id": ["a"], "ts": [0], "lat": [1.0], "lng": [2.0],
                       "group": ["confirmed"]}), _config(scope={"assume_group": "confirmed"})),
    ]
    for frame, config in cases:
        with pytest.raises(SchemaError) as polars_error:
            polars_engine.exact_cells(pm.read_pings(frame), config, pseudonymiser, None)
        with pytest.raises(SchemaError) as spark_error:
            spark_engine.exact_cells(pm.read_pings(frame), config, pseudonymiser, None)
        assert str(spark_error.value) == str(polars_error.value)


def test_unreadable_inputs_fail_alike(engines: tuple[PolarsBackend, SparkBackend],
                                      pseudonymiser: Pseudonymiser, tmp_path: Path) -> None:
    polars_engine, spark_engine = engines
    cfg = _config()
    head = "person_id,ts,lat,lng,group\nP1,2026-11-26T08:00:00Z,39.9,116.4,confirmed\n"
    short = tmp_path / "short.csv"  # a missing last field is null, in both readers
    short.write_text(head + "P2,2026-11-26T08:00:00Z,39.9,116.4\n")
    assert_same(polars_engine.exact_cells(pm.read_pings(short), cfg, pseudonymiser, None),
                spark_engine.exact_cells(pm.read_pings(short), cfg, pseudonymiser, None))
    long = tmp_path / "long.csv"  # a surplus field fails the job, in both
    long.write_text(head + '"P3\nx",2026-11-26T08:00:00Z,39.9,116.4,confirmed,surplus\n')
    nested = pl.DataFrame({"person_id": ["a"], "ts": [0], "lat": [1.0], "lng": [2.0],
                           "group": ["confirmed"], "tags": [[1, 2]]})  # cannot be scanned for PII
    for source in (pm.read_pings(long), pm.read_pings(nested)):
        with pytest.raises(InputError) as polars_error:
            polars_engine.exact_cells(source, cfg, pseudonymiser, None)
        with pytest.raises(InputError) as spark_error:
            spark_engine.exact_cells(source, cfg, pseudonymiser, None)
        assert str(spark_error.value) == str(polars_error.value)
        assert "P3" not in str(spark_error.value)  # no value from the input in the message


CORPUS = Path(__file__).resolve().parents[1] / "corpus"
#: Inputs Spark's own reader refuses before privmob's code sees a row: same error type,
#: its own (more specific) reason.
SPARK_WORDS = {"unbalanced_quote.csv": "a quoted field is not closed"}


def _outcome(engine: Any, path: Path, cfg: pm.JobConfig, pseudonymiser: Pseudonymiser
             ) -> ExactCounts | InputError | SchemaError:
    try:
        result: ExactCounts = engine.exact_cells(pm.read_pings(path), cfg, pseudonymiser, None)
    except (InputError, SchemaError) as exc:
        return exc
    return result


def test_bad_input_corpus(engines: tuple[PolarsBackend, SparkBackend],
                          pseudonymiser: Pseudonymiser) -> None:
    """Every malformed input of tests/corpus: the same result, or the same refusal."""
    polars_engine, spark_engine = engines
    cfg = _config(grid={"resolution": 6, "window": "3h"}, privacy={"max_windows": 8})
    inputs = sorted(p for p in CORPUS.iterdir() if p.suffix in (".csv", ".gz", ".parquet"))
    assert len(inputs) >= 25
    for path in inputs:
        expected = _outcome(polars_engine, path, cfg, pseudonymiser)
        got = _outcome(spark_engine, path, cfg, pseudonymiser)
        if isinstance(expected, ExactCounts):
            assert isinstance(got, ExactCounts), (path.name, got)
            assert_same(expected, got)
            if set(expected.rows_by_status) & set(BAD_REASONS):
                assert_same_bad_rows(polars_engine.bad_rows(pm.read_pings(path), cfg, pseudonymiser, None),
                                     spark_engine.bad_rows(pm.read_pings(path), cfg, pseudonymiser, None))
            continue
        assert type(got) is type(expected), (path.name, got)
        if path.name in SPARK_WORDS:
            assert str(got).endswith(SPARK_WORDS[path.name]), path.name
        else:
            assert str(got) == str(expected), path.name
        assert "rawid" not in str(got) and "secretval" not in str(got), path.name
    # A remote path is not read by Polars at all: duplicated columns are still refused alike.
    with pytest.raises(SchemaError, match="repeats a column name"):
        spark_engine.exact_cells(f"file://{CORPUS / 'duplicated_columns.csv'}", cfg, pseudonymiser, None)


# --- one release path --------------------------------------------------------------------

#: Manifest fields that differ between any two runs (ids, clocks) or depend on the noise.
RUN_FIELDS = {"release_id", "created_at", "timings_s", "cells_released", "cells_suppressed", "ledger"}


def test_release_runs_the_shared_path(engines: tuple[PolarsBackend, SparkBackend], demo: pm.JobConfig,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # The module whose release path picks the engine (`privmob.pipeline.plan` is also a function;
    # issue 13 moves the run out of plan.py into privmob.pipeline.run).
    has_run = importlib.util.find_spec("privmob.pipeline.run") is not None
    plan_module = importlib.import_module("privmob.pipeline.run" if has_run else "privmob.pipeline.plan")
    _, spark_engine = engines
    real = plan_module.get_backend
    called: list[str] = []

    def get_backend(name: str) -> Any:
        called.append(name)
        return spark_engine if name == "spark" else real(name)

    # Routes "spark" to this module's engine (and session), and records that it was asked for.
    monkeypatch.setattr(plan_module, "get_backend", get_backend)
    monkeypatch.setenv("PRIVMOB_PSEUDONYM_KEY", KEY.decode())
    cfg = demo.with_overrides(grid__window="1d", privacy__max_windows=1)  # 1 window: fast noise
    plan = pm.plan(cfg)
    source = SAMPLES / "beijing_pings_dirty.csv.gz"
    # Each release is the first of its population in a ledger of its own: the same job
    # released twice into one ledger is refused as a re-run (test_ledger covers that).
    with fresh_ledger():
        by_polars = plan.release(source, backend="polars")
    with fresh_ledger():
        by_spark = plan.release(source, backend="spark")
    assert "spark" in called
    assert by_spark.manifest["stages"] == by_polars.manifest["stages"]
    same = {k: v for k, v in by_polars.manifest.items() if k not in RUN_FIELDS}
    assert {k: v for k, v in by_spark.manifest.items() if k not in RUN_FIELDS} == same
    # The exact figures (operator record) agree too: rows by status, persons, bounding.
    exact = {k: v for k, v in by_polars.operator_record.items() if k not in RUN_FIELDS}
    assert {k: v for k, v in by_spark.operator_record.items() if k not in RUN_FIELDS} == exact
    assert by_spark.table.schema == by_polars.table.schema


# --- driver-side steps: written once, called by both engines --------------------------------


def test_spark_runs_the_shared_driver_steps(engines: tuple[PolarsBackend, SparkBackend],
                                            pseudonymiser: Pseudonymiser,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The schema check, the row accounting (outside the boundary too) and the PII findings
    Spark reports are the results of the shared functions, as Polars' are."""
    polars_engine, spark_engine = engines
    results: dict[str, list[Any]] = {"check_schema": [], "rows_by_status": [], "findings": []}
    for module, name in ((scope, "check_schema"), (scope, "rows_by_status"), (pii, "findings")):
        real = getattr(module, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            results[_name].append(out := _real(*args, **kwargs))
            return out

        monkeypatch.setattr(module, name, spy)
    t = "2026-11-26T09:00:00+08:00"
    frame = pl.DataFrame({
        "person_id": ["a", "b", "c", "d", "e"], "ts": [t, t, t, t, "never"],
        "lat": [39.9, 39.91, 10.0, 39.9, 39.9], "lng": [116.4, 116.41, 10.0, 116.4, 116.4],
        "group": ["confirmed", "call 13812345678", "confirmed", "general", "confirmed"],
        "note": [None, "a@example.com", None, None, None]})
    cfg = _config(grid={"resolution": 6, "window": "1h",
                        "boundary": str(SAMPLES / "beijing_boundary.geojson")})
    keys = pm.plan(cfg).key_cells
    exact = spark_engine.exact_cells(frame, cfg, pseudonymiser, keys)
    assert len(results["check_schema"]) >= 1  # on the schema Spark reads
    assert results["rows_by_status"] == [exact.rows_by_status]
    assert exact.rows_by_status == {"ok": 1, "out_of_scope": 2, "outside_boundary": 1,
                                    "ts_unparseable": 1}
    assert results["findings"] == [exact.pii]
    assert exact.pii == {"group": {"mobile": 1}, "note": {"email": 1}}
    assert_same(polars_engine.exact_cells(frame, cfg, pseudonymiser, keys), exact)
    with pytest.raises(SchemaError, match="assume_group is set"):
        spark_engine.exact_cells(frame, _config(scope={"assume_group": "confirmed"}), pseudonymiser, None)


# --- stays and trips on the engine ----------------------------------------------------------


def _flows_config(units: str = "cells", **flows_section: Any) -> pm.JobConfig:
    return _config(grid={"resolution": 7, "window": "3h"},
                   flows={"units": units, "resolution": 6, "epsilon": 0.5,
                          "boundary": str(SAMPLES / "beijing_districts.geojson"), **flows_section})


def _od_counts(trip_frame: pl.DataFrame, cfg: pm.JobConfig, units: Units | None) -> pl.DataFrame:
    """flows.exact_flows' exact OD counts from the trips an engine found."""
    counts: pl.DataFrame = flows.exact_flows(trip_frame, cfg, units).counts
    return counts


def _collected_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows of every frame the Spark engine brings to the driver, from now on."""
    heights: list[int] = []
    real = _spark._collect

    def collect(*args: Any, **kwargs: Any) -> pl.DataFrame:
        frame = real(*args, **kwargs)
        heights.append(frame.height)
        return frame

    monkeypatch.setattr(_spark, "_collect", collect)
    return heights


def test_trips_and_flows_on_the_engine_sample(engines: tuple[PolarsBackend, SparkBackend],
                                              pseudonymiser: Pseudonymiser,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    polars_engine, spark_engine = engines
    cfg = _flows_config()
    source = pm.read_pings(SAMPLES / "beijing_pings.parquet")
    fixes = polars_engine.fixes(source, cfg, pseudonymiser)
    expected = polars_engine.trips(source, cfg, pseudonymiser)
    # The trips flows found from the fixes before, now found on the engine.
    assert expected.equals(person_trips(fixes, StayParams.of(cfg.flows)))
    assert expected.height > 10_000 and expected.schema == pl.Schema(TRIP_SCHEMA)
    collected = _collected_rows(monkeypatch)
    got = spark_engine.trips(source, cfg, pseudonymiser)
    assert got.schema == expected.schema and got.equals(expected)
    # Only the trips and one row per person came to the driver, never the fixes.
    persons = fixes["pid"].n_unique()
    assert collected == [expected.height + persons] and max(collected) < fixes.height / 5
    for units in (None, load_units(SAMPLES / "beijing_districts.geojson", "adcode")):
        c = cfg if units is None else _flows_config("boundary")
        od = _od_counts(expected, c, units)
        assert od.height > 10 and od.equals(_od_counts(got, c, units))


def _edge_case_pings() -> pl.DataFrame:
    """Persons with one fix, no stay, one stay, stays across a data gap, duplicates, same
    second elsewhere, ids that differ only by outer spaces or are not ASCII, more fixes than
    an Arrow batch, bad and out-of-scope rows; and a synthetic crowd around them."""
    start = int(dt.datetime(2026, 11, 26, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp())
    home, work, far = (39.99, 116.32), (39.908, 116.46), (40.2, 116.0)
    rows: list[tuple[Any, ...]] = [("single", start + 100, *home, "confirmed")]
    rows += [("walker", start + 60 * i, 39.9 + 0.003 * i, 116.4, "confirmed") for i in range(60)]
    rows += [("sitter", start + 60 * i, *home, "suspected") for i in range(120)]
    for i in range(0, 24 * 60, 2):  # a dense logger: home, work, home, then a gap, then far away
        place = home if i < 480 or 1000 <= i < 1200 else work if i < 960 else far
        if 1200 <= i < 1320:
            continue
        who = " 张三 " if i % 3 == 0 else "张三"  # the same person once spaces are trimmed
        rows.append((who, start + 60 * i + (i % 7), place[0] + 1e-5 * (i % 5), place[1], "close_contact"))
    rows += [("dup", start + 60 * i, *work, "confirmed") for i in range(30) for _ in range(2)]
    rows += [("dup", start + 60 * 40, *far, "confirmed"), ("dup", start + 60 * 40, *home, "confirmed")]
    rows += [("dup", start + 60 * i, *home, "confirmed") for i in range(41, 80)]
    rows += [("bad", "no time", *home, "confirmed"), ("other", start + 60, *home, "general")]
    crowd = synth.generate(60, seed=11, dense_fraction=0.3).select(
        "person_id", pl.col("ts").dt.epoch("s").cast(pl.String).alias("ts"), "lat", "lng", "group")
    rows = [(r[0], str(r[1]), *r[2:]) for r in rows]  # epoch seconds as text, and "no time"
    return pl.concat([pl.DataFrame(rows, schema=crowd.schema, orient="row"), crowd])


def test_trips_and_flows_on_the_engine_edge_cases(engines: tuple[PolarsBackend, SparkBackend],
                                                  pseudonymiser: Pseudonymiser, spark: Any) -> None:
    polars_engine, spark_engine = engines
    cfg = _flows_config(stay_min_duration="15m", max_trips_per_window=3)
    frame = _edge_case_pings()
    expected = polars_engine.trips(frame, cfg, pseudonymiser)
    assert expected["pid"].n_unique() > 20
    conf = "spark.sql.execution.arrow.maxRecordsPerBatch"
    old = spark.conf.get(conf)
    spark.conf.set(conf, "97")  # persons cut across many batches: whole persons regrouped
    try:
        got = spark_engine.trips(frame, cfg, pseudonymiser)
    finally:
        spark.conf.set(conf, old)
    assert got.equals(expected)
    assert _od_counts(got, cfg, None).equals(_od_counts(expected, cfg, None))
    # Explicit stay parameters reach the executors too.
    tight = StayParams(radius_m=60.0, min_duration_s=300, max_gap_s=600)
    assert spark_engine.trips(frame, cfg, pseudonymiser, tight).equals(
        polars_engine.trips(frame, cfg, pseudonymiser, tight))


class _Colliding(Pseudonymiser):
    """Pseudonyms with only 49 values (-24 to 24): of the edge cases' ~60 usable persons
    some must share one, as distinct ids may (p ≈ n²/2⁶⁵)."""

    def pseudonyms(self, ids: pl.Series) -> pl.Series:
        return super().pseudonyms(ids) % 25


def test_trips_when_pseudonyms_collide(engines: tuple[PolarsBackend, SparkBackend]) -> None:
    """Persons whose pseudonyms collide are one person to the Polars engine (their fixes
    merged before stays are found); Spark then keys the fixes by pseudonym, and agrees."""
    polars_engine, spark_engine = engines
    cfg = _flows_config()
    frame = _edge_case_pings()
    colliding = _Colliding(KEY, "2026-11-26")
    persons = polars_engine.fixes(frame, cfg, Pseudonymiser(KEY, "x"))["pid"].n_unique()
    assert persons > 49 and polars_engine.fixes(frame, cfg, colliding)["pid"].n_unique() <= 49
    expected = polars_engine.trips(frame, cfg, colliding)
    assert expected.height > 0 and set(expected["pid"]) <= set(range(-24, 25))
    got = spark_engine.trips(frame, cfg, colliding)
    assert got.equals(expected)


# --- adaptive releases: tree counts, the partition, leaves, pairs ----------------------------


class _Recorded:
    """A deterministic partition standing in for PrivTree, that keeps the tree counts it is
    handed: from the roots at ``min_res`` (those in the counts) down, a node splits into
    its seven children iff its exact count is at least ``k``, to ``max_res`` at most; or,
    with ``leaves``, that fixed set whatever the counts."""

    def __init__(self, k: int = 0, leaves: list[int] | None = None, min_res: int = 4,
                 max_res: int = 8) -> None:
        self.k, self.fixed, self.min_res, self.max_res = k, leaves, min_res, max_res
        self.trees: list[pl.DataFrame] = []

    def __call__(self, tree: pl.DataFrame) -> np.ndarray:
        self.trees.append(tree)
        if self.fixed is not None:
            return np.array(sorted(self.fixed), dtype=np.uint64)
        counts = dict(zip(tree["cell"].to_list(), tree["count"].to_list(), strict=True))
        frontier = [c for c in counts if h3i.get_resolution(c) == self.min_res]
        leaves = []
        while frontier:
            node = frontier.pop()
            if h3i.get_resolution(node) < self.max_res and counts.get(node, 0) >= self.k:
                frontier.extend(h3i.cell_to_children(node))
            else:
                leaves.append(node)
        return np.array(sorted(leaves), dtype=np.uint64)


def _adaptive_config(parents: tuple[int, ...] = (), **adaptive: Any) -> pm.JobConfig:
    return _config(grid={"boundary": str(SAMPLES / "beijing_boundary.geojson"), "window": "1h",
                         "parent_resolutions": list(parents)},
                   adaptive={"max_pairs": 3, "cells_per_person": 2, **adaptive})


def _resolutions(cells: pl.Series) -> set[int]:
    return set((cells // (1 << 52) % 16).to_list())


def _assert_same_adaptive(polars_engine: PolarsBackend, spark_engine: SparkBackend, source: Any,
                          cfg: pm.JobConfig, pseud: Pseudonymiser,
                          make: Callable[[], _Recorded]) -> tuple[ExactCounts, pl.DataFrame]:
    """Both engines, each handed its own copy of the same deterministic partition: the same
    tree counts go in, the same exact counts and bounding statistics come out."""
    keys = pm.plan(cfg).key_cells
    by_polars, by_spark = make(), make()
    expected = polars_engine.exact_cells(source, cfg, pseud, keys, partition=by_polars)
    got = spark_engine.exact_cells(source, cfg, pseud, keys, partition=by_spark)
    assert len(by_polars.trees) == len(by_spark.trees) == 1
    tree = by_polars.trees[0]
    assert tree.schema == by_spark.trees[0].schema == pl.Schema({"cell": pl.UInt64, "count": pl.Int64})
    assert tree.equals(by_spark.trees[0])
    assert_same(expected, got)
    return expected, tree


def test_adaptive_sample(engines: tuple[PolarsBackend, SparkBackend], pseudonymiser: Pseudonymiser,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An adaptive job on the sample: tree counts at resolutions 4 to 8 (two cells per
    person), leaves of every resolution, a per-period cap that drops most pairs, and
    coarser totals (kept pairs per parent: the sum of its leaves)."""
    polars_engine, spark_engine = engines
    cfg = _adaptive_config(parents=(4, 3))
    collected = _collected_rows(monkeypatch)
    expected, tree = _assert_same_adaptive(polars_engine, spark_engine,
                                           pm.read_pings(SAMPLES / "beijing_pings.parquet"), cfg,
                                           pseudonymiser, lambda: _Recorded(k=30))
    assert tree.height > 1000 and _resolutions(tree["cell"]) == {4, 5, 6, 7, 8}
    assert _resolutions(expected.counts["cell"]) == {4, 5, 6, 7, 8}
    assert expected.counts.height > 1000 and expected.bounding.dropped_share > 0.5
    for level in expected.levels.values():
        assert level["count"].sum() == expected.bounding.person_cell_windows_kept
    # Spark brought aggregates to the driver (ids and row counts, the tree counts, the leaf
    # counts), never the person-level dwell rows.
    assert len(collected) == 3 and max(collected) < expected.bounding.person_cell_windows / 5


def _tie_pings() -> tuple[pl.DataFrame, list[int]]:
    """Persons whose cells and pairs tie on minutes, on both sides of leaf boundaries.

    The partition (second value) refines one path of the hierarchy down to a res-8 cell:
    that cell and its six siblings are res-8 leaves, next to res-7, res-6 and res-5 leaves,
    all under one res-4 root. Each person spends 4 minutes in each of two cells, in each of
    two hourly windows: equal totals for the tree's ranking, four equal pairs for a cap
    of three, unless both cells lie under one coarser leaf (8 minutes there). One cell
    lies under another root, where no leaf is: counted in the tree, dropped from the leaves.
    """
    fine = h3i.latlng_to_cell(39.9, 116.4, 8)
    path = [h3i.cell_to_parent(fine, r) for r in range(4, 9)]
    leaves = [c for r in range(4, 8) for c in h3i.cell_to_children(path[r - 4]) if c != path[r - 3]]
    leaves.append(fine)
    sibling = next(c for c in h3i.cell_to_children(path[3]) if c != fine)
    near7 = next(c for c in h3i.cell_to_children(path[2]) if c != path[3])  # a res-7 leaf
    n1, n2 = h3i.cell_to_children(near7)[:2]
    far6 = next(c for c in h3i.cell_to_children(path[1]) if c != path[2])  # a res-6 leaf
    other_root = h3i.latlng_to_cell(40.4, 116.1, 8)
    assert h3i.cell_to_parent(other_root, 4) != path[0]
    cells = [fine, sibling, n1, n2, h3i.cell_to_children(far6)[3], other_root]
    start = int(dt.datetime(2026, 11, 26, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp())
    rows = []
    for i in range(60):
        a, b = cells[i % 6], cells[(i + 1 + i // 6) % 6]
        for window in (0, 1):
            for minute in range(4):
                for cell, offset in ((a, 0), (b, 10)):
                    lat, lng = h3i.cell_to_latlng(cell)
                    rows.append((f"T{i:02d}", start + 3600 * window + 60 * (minute + offset), lat, lng))
    frame = pl.DataFrame(rows, schema={"person_id": pl.String, "ts": pl.Int64, "lat": pl.Float64,
                                       "lng": pl.Float64}, orient="row")
    return frame.with_columns(group=pl.lit("confirmed")), leaves


def test_adaptive_ties_and_leaf_boundaries(engines: tuple[PolarsBackend, SparkBackend]) -> None:
    """Ties broken by the keyed pseudonym as in Polars, cells moved to leaves of three
    resolutions, rows under no leaf dropped; also when pseudonyms collide (ranked by pid)."""
    polars_engine, spark_engine = engines
    frame, leaves = _tie_pings()
    cfg = _adaptive_config(parents=(4,), cells_per_person=1)
    for pseud in (Pseudonymiser(KEY, "2026-11-26"), _Colliding(KEY, "2026-11-26")):
        expected, tree = _assert_same_adaptive(polars_engine, spark_engine, frame, cfg, pseud,
                                               lambda: _Recorded(leaves=leaves))
        assert _resolutions(expected.counts["cell"]) == {6, 7, 8}
        assert expected.bounding.dropped_share > 0.1  # the cap of 3 pairs broke ties
        # each person counted under one cell (ties too): two res-4 roots, one without leaves
        roots = tree.filter((pl.col("cell") // (1 << 52) % 16) == 4)
        assert roots.height == 2 and roots["count"].sum() == tree.filter(
            (pl.col("cell") // (1 << 52) % 16) == 8)["count"].sum() <= 60
    assert expected.persons == 60
