"""Utility on real GPS traces: what a director sees from a small key group (issue 12).

GeoLife (../shared/data/geolife, Microsoft Research, non-commercial; never copied into the
repository) holds 28 loggers over four years. An epidemic office sees a few hundred to a few
thousand key-group persons on one day; this script makes such days from the real traces by
treating every *local person-day* as one person and moving all of them onto one date (their
local time of day kept). ``--days N`` splits the person-days into N disjoint "days" (by a
hash of the person-day, so every day holds a different population), as an office would see
them night after night; ``--days 1`` stacks all 1,555 person-days onto one day, the setting
issue 12 measured.

Each day is released with the job given on the command line (default: privmob's defaults,
only ε set, data-derived threshold keys; ``--boundary`` for public keys) and scored at the
release's *own granularity* against the unbounded truth — distinct persons per released
key (cell at its resolution, window):

- ``recall@20``: share of true (cell, window) keys with ≥ 20 persons that were released;
- ``spurious``: share of released keys whose true count is below ``min_count``;
- ``MRE``: median over released keys of |released − true| / max(true, 1);
- ``EMD km`` (via :func:`privmob.analysis.evaluate.evaluate`, where the release has one resolution).

Issue 12's goal, at ε = 1 per person-day with only ε set: recall@20 ≥ 0.5, spurious ≤ 5%,
MRE ≤ 0.3. The truth is exact and exists here only to measure: never tune a real release on
its own truth.

    python benchmarks/bench_geolife_utility.py                      # defaults, ε = 1, 3 days
    python benchmarks/bench_geolife_utility.py --days 1 --resolution 6 --window 3h
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
import polars_h3 as plh3

import privmob as pm
from privmob.config import parse_duration

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TRACES = REPO.parent / "shared" / "data" / "geolife" / "traces.csv.gz"
TZ = "Asia/Shanghai"
DATE = dt.date(2026, 11, 26)
KEY = "bench-geolife-key-" + "5a" * 20
GOAL = {"recall@20": 0.5, "spurious": 0.05, "MRE": 0.3}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def person_days(path: Path, days: int) -> list[pl.DataFrame]:
    """The traces as ``days`` disjoint days of local person-days, all moved onto DATE.

    A person-day's fixes keep their local time of day; its id is "user/local date" (the
    pseudonymisation step hashes it like any other id).
    """
    raw = pl.read_csv(path, schema_overrides={"person_id": pl.String, "ts": pl.String})
    local = (pl.col("ts").str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC")
             .dt.convert_time_zone(TZ))
    frame = raw.with_columns(local=local).with_columns(
        person_id=pl.col("person_id") + "/" + pl.col("local").dt.date().cast(pl.String),
        # the same local wall-clock time on DATE, back in UTC
        ts=(pl.lit(DATE).cast(pl.Datetime("us")) + (pl.col("local").dt.replace_time_zone(None)
            - pl.col("local").dt.replace_time_zone(None).dt.truncate("1d")))
        .dt.replace_time_zone(TZ).dt.convert_time_zone("UTC"),
    ).select("person_id", "ts", "lat", "lng")
    part = pl.col("person_id").hash(seed=12) % days
    return [frame.filter(part == d).drop_nulls() for d in range(days)]


def job(args: argparse.Namespace, name: str) -> pm.JobConfig:
    grid: dict[str, Any] = {}
    if args.resolution is not None:
        grid["resolution"] = args.resolution
    if args.window is not None:
        grid["window"] = args.window
    if args.boundary is not None:
        grid["boundary"] = str(args.boundary)
    privacy: dict[str, Any] = {"epsilon": args.epsilon}
    for key in ("max_cells_per_window", "max_windows", "mechanism"):
        if getattr(args, key) is not None:
            privacy[key] = getattr(args, key)
    return pm.JobConfig.from_dict({
        "job": {"operator": "bench", "period": DATE.isoformat(), "dataset": name, "timezone": TZ},
        "scope": {"assume_group": "close_contact"},  # GeoLife has no group column
        "grid": grid,
        "privacy": privacy,
    })


def truth(pings: pl.DataFrame, resolutions: list[int], window: str) -> pl.DataFrame:
    """Exact distinct persons per (cell, resolution, window index), unbounded."""
    seconds = parse_duration(window)
    start = dt.datetime.combine(DATE, dt.time(), tzinfo=dt.timezone(dt.timedelta(hours=8)))
    t = pl.col("ts").dt.epoch("s") - int(start.timestamp())
    base = pings.with_columns(w=(t // seconds).cast(pl.Int64)).filter(
        (pl.col("w") >= 0) & (pl.col("w") < 86_400 // seconds))
    parts = [
        base.with_columns(cell=plh3.latlng_to_cell("lat", "lng", r, return_dtype=pl.Utf8))
        .group_by("cell", "w").agg(true=pl.col("person_id").n_unique())
        .with_columns(resolution=pl.lit(r, pl.Int32))
        for r in resolutions
    ]
    return pl.concat(parts)


def score(release: pm.ReleasedTable, pings: pl.DataFrame, min_count: int) -> dict[str, Any]:
    m = release.manifest
    table = release.table
    res_col = "resolution" if "resolution" in table.columns else None
    window = str(m["window"])
    seconds = parse_duration(window)
    start = dt.datetime.fromisoformat(str(m["period_start"]))
    released = table.with_columns(
        w=((pl.col("window_start").dt.epoch("s") - int(start.timestamp())) // seconds).cast(pl.Int64),
        resolution=(pl.col(res_col) if res_col else pl.lit(int(m["resolution"]))).cast(pl.Int32),
    ).select("cell", "w", "resolution", "count")
    resolutions = sorted(set(released["resolution"].to_list()) or {int(m["resolution"])})
    exact = truth(pings.with_columns(ts=pl.col("ts").dt.replace_time_zone("UTC")
                                     if pings.schema["ts"] == pl.Datetime("us") else pl.col("ts")),
                  resolutions, window)
    joined = released.join(exact, on=["cell", "w", "resolution"], how="left").with_columns(
        pl.col("true").fill_null(0))
    big = exact.filter(pl.col("true") >= 20)
    hit = big.join(released, on=["cell", "w", "resolution"], how="semi").height
    mre = ((joined["count"] - joined["true"]).abs() / joined["true"].clip(1)).median()
    return {
        "persons": pings["person_id"].n_unique(),
        "true_keys_ge20": big.height,
        "released": table.height,
        "recall@20": hit / big.height if big.height else None,
        "spurious": float((joined["true"] < min_count).mean()) if joined.height else None,
        "MRE": float(mre) if mre is not None else None,
        "threshold": m.get("release_threshold"),
        "ci95": m.get("ci95_halfwidth"),
        "resolution": m.get("resolution"),
        "window": window,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", type=Path, default=TRACES)
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--resolution", type=int)
    ap.add_argument("--window")
    ap.add_argument("--boundary", type=Path)
    ap.add_argument("--max-cells-per-window", dest="max_cells_per_window", type=int)
    ap.add_argument("--max-windows", dest="max_windows", type=int)
    ap.add_argument("--mechanism", choices=("gaussian", "laplace"))
    args = ap.parse_args(argv)
    if not args.traces.exists():
        log(f"GeoLife traces not found at {args.traces} (they are not part of privmob)")
        return 2
    os.environ["PRIVMOB_PSEUDONYM_KEY"] = KEY
    rows = []
    with tempfile.TemporaryDirectory(prefix="privmob-bench-") as tmp:
        os.environ["PRIVMOB_LEDGER"] = str(Path(tmp) / "ledger.sqlite")
        tick = time.perf_counter()
        days = person_days(args.traces, args.days)
        log(f"read {sum(d.height for d in days):,} fixes as {args.days} day(s) "
            f"in {time.perf_counter() - tick:.0f} s")
        for i, day in enumerate(days):
            cfg = job(args, f"geolife-day{i}")
            from privmob.governance.ledger import Ledger, budget_from

            Ledger(Path(os.environ["PRIVMOB_LEDGER"])).declare(
                cfg.dataset, budget_from(args.epsilon * 10, 1e-5, None), operator="bench",
                reason="utility benchmark on public traces", exist_ok=True)
            tick = time.perf_counter()
            release = pm.plan(cfg).release(day)
            row = {"day": i, **score(release, day, cfg.privacy.min_count),
                   "seconds": round(time.perf_counter() - tick, 1)}
            rows.append(row)
            log(json.dumps(row))
    cols = ["day", "persons", "resolution", "window", "threshold", "ci95", "released",
            "true_keys_ge20", "recall@20", "spurious", "MRE"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c])
                                for c in cols) + " |")
    met = {k: [r[k] for r in rows] for k in GOAL}
    print(f"\ngoal (issue 12): recall@20 ≥ {GOAL['recall@20']}, spurious ≤ {GOAL['spurious']:.0%}, "
          f"MRE ≤ {GOAL['MRE']}; measured {json.dumps(met)}")
    out = HERE / "results" / f"geolife-utility-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                               "python": platform.python_version(), "privmob": pm.__version__,
                               "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
