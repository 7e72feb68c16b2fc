"""Throughput of the Spark backend (local mode) against the Polars backend, same run.

For each size (1M and 10M synthetic Beijing pings by default, cached under
benchmarks/data/ with the same names as bench_pipeline.py), times the *exact aggregate*
— ingest → scope → pseudonymise → index → bound → aggregate, everything a backend does —
on the Polars backend and on Spark ``local[2]``, checks that both give the same
``ExactCounts``, and prints pings/s and the ratio. Spark's one-off start (JVM, Python
workers) is timed separately on the bundled sample and not counted.

Then measures how to compute H3 cells on Spark, on the 1M file:

* **polars-h3 on Arrow batches** (``mapInArrow``) — what the backend uses;
* **h3-py in a pandas UDF** (``h3.latlng_to_cell`` per row; h3-py has no array API);
* the **floor**: the same scan and Arrow round trip to Python with no H3 at all.

Apache Sedona's ``ST_H3CellIDs`` could not be measured here: it needs Sedona's JARs,
which Spark fetches from Maven Central (``spark.jars.packages``), and this machine
reaches PyPI only. Results are saved as JSON under benchmarks/results/.

    python benchmarks/bench_spark.py                      # 1M and 10M, res 8
    python benchmarks/bench_spark.py --rows 1000000 --master 'local[4]'
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

import privmob as pm
from privmob.backends._polars import PolarsBackend
from privmob.backends._spark import SparkBackend, local_session
from privmob.stages.pseudonymise import Pseudonymiser

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import dataset, job, timed

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BOUNDARY = REPO / "data-samples" / "beijing_boundary.geojson"
SAMPLE = REPO / "data-samples" / "beijing_pings.parquet"


def same(a: Any, b: Any) -> bool:
    return bool(a.counts.equals(b.counts) and a.rows_by_status == b.rows_by_status
                and a.persons == b.persons and a.bounding == b.bounding)


# --- H3 on Spark: the chosen way and its alternative --------------------------------------


def _cells_polars_h3(batches: Iterator[pa.RecordBatch], resolution: int) -> Iterator[pa.RecordBatch]:
    import polars_h3 as plh3

    for batch in batches:
        frame = pl.DataFrame(pl.from_arrow(batch))
        cells = frame.select(plh3.latlng_to_cell("lat", "lng", resolution).cast(pl.Int64).alias("cell"))
        yield from cells.to_arrow().cast(pa.schema([("cell", pa.int64())])).to_batches()


def _no_cells(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:  # the Arrow round trip alone: lat passed back as a number
        frame = pl.DataFrame(pl.from_arrow(batch))
        yield from frame.select(pl.col("lat").cast(pl.Int64).alias("cell")).to_arrow().cast(
            pa.schema([("cell", pa.int64())])).to_batches()


def h3_approaches(spark: Any, path: Path, resolution: int) -> dict[str, Any]:
    import functools
    import warnings

    import pandas as pd
    from pyspark.sql import functions as F  # noqa: N812
    from pyspark.sql.functions import pandas_udf

    warnings.simplefilter("ignore", FutureWarning)  # PySpark's notice about pandas 3
    coords = spark.read.parquet(str(path)).select("lat", "lng")
    rows = coords.count()

    def cells_h3_py(lat: pd.Series, lng: pd.Series) -> pd.Series:
        import h3

        cell = h3.api.basic_int.latlng_to_cell
        return pd.Series([cell(a, b, resolution) for a, b in zip(lat.tolist(), lng.tolist(), strict=True)],
                         dtype="int64")

    # PySpark reads the pandas types from the annotations, which must be classes here,
    # not the strings `from __future__ import annotations` makes of them.
    cells_h3_py.__annotations__ = {"lat": pd.Series, "lng": pd.Series, "return": pd.Series}
    h3_py = pandas_udf(cells_h3_py, "long")  # type: ignore[call-overload]

    queries = {
        "polars-h3 in mapInArrow (chosen)": coords.mapInArrow(
            functools.partial(_cells_polars_h3, resolution=resolution), "cell long"),
        "h3-py per row in a pandas UDF": coords.select(h3_py("lat", "lng").alias("cell")),
        "floor: Arrow round trip, no H3": coords.mapInArrow(_no_cells, "cell long"),
    }
    out: dict[str, Any] = {"rows": rows}
    checks = {}
    for name, query in queries.items():
        summary = query.agg(F.count_distinct("cell").alias("n"), F.sum(F.col("cell") % 1_000_003).alias("s"))
        seconds, row = timed(lambda q=summary: q.collect()[0])
        out[name] = {"seconds": round(seconds, 2), "pings_per_s": round(rows / seconds)}
        checks[name] = (row["n"], row["s"])
    chosen, alternative = list(checks)[:2]
    out["same_cells"] = checks[chosen] == checks[alternative]
    out["sedona"] = ("not measured: ST_H3CellIDs needs Sedona's JARs from Maven Central "
                     "(spark.jars.packages); this machine reaches PyPI only")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--resolution", type=int, default=8)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--no-h3", action="store_true", help="skip the H3 comparison")
    args = parser.parse_args()

    cfg = job(args.resolution)
    plan = pm.plan(cfg)
    keys = plan.key_cells
    pseudonymiser = Pseudonymiser(b"bench-key-" + b"0" * 40, "2026-11-26")
    startup, spark = timed(lambda: local_session(args.master, **{"spark.driver.memory": args.driver_memory}))
    polars_engine, spark_engine = PolarsBackend(), SparkBackend(spark)
    warm, _ = timed(lambda: spark_engine.exact_cells(pm.read_pings(SAMPLE), cfg, pseudonymiser, keys))
    load = os.getloadavg()[0]
    print(f"Spark {spark.version} {args.master}: session start {startup:.1f} s, first job on the "
          f"sample {warm:.1f} s (not counted below); load average {load:.1f} on {os.cpu_count()} cores")

    results: dict[str, Any] = {
        "date": dt.date.today().isoformat(), "machine": platform.platform(),
        "cores": os.cpu_count(), "load_average_1m": round(load, 2), "spark": spark.version,
        "polars": pl.__version__, "master": args.master, "resolution": args.resolution,
        "spark_session_start_s": round(startup, 2), "spark_first_job_s": round(warm, 2), "sizes": [],
    }
    print(f"\n{'pings':>12} {'Polars s':>9} {'Polars pings/s':>15} {'Spark s':>9} "
          f"{'Spark pings/s':>14} {'Spark/Polars':>13}  same")
    for rows in args.rows:
        path = dataset(rows)
        source = pm.read_pings(path)
        t_polars, a = timed(lambda s=source: polars_engine.exact_cells(s, cfg, pseudonymiser, keys))
        t_spark, b = timed(lambda s=source: spark_engine.exact_cells(s, cfg, pseudonymiser, keys))
        n = a.rows_in
        row = {"pings": n, "polars_s": round(t_polars, 2), "polars_pings_per_s": round(n / t_polars),
               "spark_s": round(t_spark, 2), "spark_pings_per_s": round(n / t_spark),
               "spark_over_polars_time": round(t_spark / t_polars, 1), "identical": same(a, b)}
        results["sizes"].append(row)
        print(f"{n:>12,} {t_polars:>9.2f} {n / t_polars:>15,.0f} {t_spark:>9.2f} {n / t_spark:>14,.0f} "
              f"{t_spark / t_polars:>12.1f}×  {row['identical']}")

    if not args.no_h3:
        h3 = h3_approaches(spark, dataset(min(args.rows)), args.resolution)
        results["h3"] = h3
        print(f"\nH3 on Spark {args.master}, {h3['rows']:,} pings, res {args.resolution}:")
        for name, value in h3.items():
            if isinstance(value, dict):
                print(f"  {name:<36} {value['seconds']:>7.2f} s  {value['pings_per_s']:>12,} pings/s")
        print(f"  same cells from both: {h3['same_cells']}\n  Sedona: {h3['sedona']}")

    out = HERE / "results" / f"spark-{args.master.replace('[', '').replace(']', '')}-res{args.resolution}-" \
        f"{dt.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nsaved {out.relative_to(REPO)}")
    spark.stop()


if __name__ == "__main__":
    main()
