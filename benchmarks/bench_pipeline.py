"""Throughput and memory of the release path on a synthetic city day.

Generates N pings with ``privmob.synth`` (cached under benchmarks/data/, never committed),
then measures, in one run on this machine:

* end to end (Parquet in → release written), in a fresh subprocess for an honest peak RSS;
* each stage on its own: scan + validate, + H3 index, the exact aggregate (one streaming
  pass + pseudonymise + bound), the OpenDP noise over all public keys, the write;
* the floor: a bare "scan → H3 → distinct persons per (cell, window)" query, with no
  validation, scope, pseudonyms, bounding or noise — what any engine must at least do.

Prints a table with pings/s and ratios, and saves it as JSON under benchmarks/results/.

    python benchmarks/bench_pipeline.py --rows 10_000_000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import flint  # noqa: F401 - privmob imports these lazily; imports are not timed
import opendp.prelude  # noqa: F401
import polars as pl
import polars_h3 as plh3

import privmob as pm
from privmob import synth
from privmob.backends import get_backend
from privmob.privacy import keys, sparse
from privmob.privacy.noising import key_vector, noise_table
from privmob.privacy.tablespec import PublicKeys
from privmob.stages import ingest, scope
from privmob.stages.pseudonymise import Pseudonymiser

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BOUNDARY = REPO / "data-samples" / "beijing_boundary.geojson"
KEY = "bench-key-" + "0" * 40


def dataset(rows: int, seed: int) -> Path:
    path = HERE / "data" / f"synth-{rows}-s{seed}.parquet"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        persons = max(1, round(rows / synth.expected_rows_per_person_day()))
        t = time.perf_counter()
        written = synth.generate_to_parquet(path, persons, 1, seed=seed)
        print(f"generated {written:,} pings ({persons:,} persons) in "
              f"{time.perf_counter() - t:.1f} s → {path}", file=sys.stderr)
    return path


def job(resolution: int) -> pm.JobConfig:
    return pm.JobConfig.from_dict({
        "job": {"operator": "bench", "period": "2026-11-26", "dataset": "bench"},
        "grid": {"resolution": resolution, "window": "1h", "boundary": str(BOUNDARY)},
        "privacy": {"mechanism": "gaussian", "epsilon": 1.0, "max_cells_per_window": 1,
                    "max_windows": 24},
    })


def timed(fn: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def end_to_end_subprocess(path: Path, resolution: int, cache_dir: Path | None = None) -> dict[str, float]:
    """Run plan → release → write in a fresh interpreter; return seconds and peak RSS.

    ``cache_dir`` is the public-key cache the run sees (PRIVMOB_CACHE_DIR): an empty folder
    for a cold start, the same folder again for a scheduled job's second day.
    """
    code = f"""
import json, os, resource, sys, tempfile, time
sys.path.insert(0, {str(HERE)!r})
os.environ["PRIVMOB_PSEUDONYM_KEY"] = {KEY!r}
from bench_pipeline import job
import privmob as pm
import flint, opendp.prelude, shapely  # privmob's lazy imports: imports are not timed, for any engine
t = time.perf_counter()
cfg = job({resolution})
plan = pm.plan(cfg)
release = plan.release({str(path)!r})
with tempfile.TemporaryDirectory() as tmp:
    release.write(os.path.join(tmp, "release"))
seconds = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"seconds": seconds, "peak_rss_mb": rss,
                   "cells_released": release.manifest["cells_released"]}}))
"""
    env = dict(os.environ)
    if cache_dir is not None:
        env["PRIVMOB_CACHE_DIR"] = str(cache_dir)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def stages(path: Path, resolution: int) -> dict[str, float]:
    os.environ["PRIVMOB_PSEUDONYM_KEY"] = KEY
    cfg = job(resolution)
    seconds: dict[str, float] = {}
    user_cache = os.environ.get("PRIVMOB_CACHE_DIR")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["PRIVMOB_CACHE_DIR"] = cache
        seconds["plan, cold (boundary → public keys by h3, calibration)"], plan = timed(lambda: pm.plan(cfg))
        keys._cells.cache_clear()
        seconds["plan, key cache warm"], plan = timed(lambda: pm.plan(cfg))
    os.environ.pop("PRIVMOB_CACHE_DIR")
    if user_cache is not None:
        os.environ["PRIVMOB_CACHE_DIR"] = user_cache
    pings = pm.read_pings(path)
    schema = pings.schema()
    start, end = int(cfg.period_start.timestamp()), int(cfg.period_end.timestamp())
    validated = ingest.validate(pings.scan(), schema, cfg.job.timezone).with_columns(
        scope.status(cfg.scope.groups, start, end).alias("status"))
    seconds["scan + validate + scope"], _ = timed(
        lambda: validated.group_by("status").len().collect(engine="streaming"))
    seconds["scan + validate + scope + H3 index"], _ = timed(
        lambda: validated.with_columns(plh3.latlng_to_cell("lat", "lng", resolution).alias("cell"))
        .group_by("status").agg(pl.col("cell").max()).collect(engine="streaming"))
    pseudo = Pseudonymiser(KEY.encode(), "2026-11-26")
    seconds["exact aggregate (all stages to counts)"], exact = timed(
        lambda: get_backend("polars").exact_cells(pings, cfg, pseudo, plan.key_cells))
    occupancy = plan.specs.occupancy
    seconds["noise + suppress (sparse path, ADR 0005)"], _ = timed(
        lambda: noise_table(occupancy, exact.counts))
    assert isinstance(occupancy.keys, PublicKeys)
    vec = key_vector(occupancy.keys, exact.counts)
    seconds["noise + suppress, every key by OpenDP (before ADR 0005)"], _ = timed(
        lambda: sparse.noise_and_suppress(plan.noise, vec, plan.release_threshold, max_q=0))
    release = plan.release(pings)
    with tempfile.TemporaryDirectory() as tmp:
        seconds["write release"], _ = timed(lambda: release.write(Path(tmp) / "r"))
    seconds["floor: scan → H3 → n_unique persons per (cell, hour)"], _ = timed(
        lambda: pl.scan_parquet(path)
        .select(plh3.latlng_to_cell("lat", "lng", resolution).alias("cell"),
                (pl.col("ts").dt.epoch("s") // 3600).alias("w"), "person_id")
        .group_by("cell", "w").agg(pl.col("person_id").n_unique())
        .collect(engine="streaming"))
    seconds["_keys"] = float(plan.key_cells.size * cfg.n_windows) if plan.key_cells is not None else 0
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="warm end-to-end runs (median shown)")
    args = parser.parse_args()
    path = dataset(args.rows, args.seed)
    rows = pl.scan_parquet(path).select(pl.len()).collect().item()
    with tempfile.TemporaryDirectory() as cache:
        cold = end_to_end_subprocess(path, args.resolution, Path(cache))
        warm_runs = [end_to_end_subprocess(path, args.resolution, Path(cache)) for _ in range(args.repeat)]
    warm_runs.sort(key=lambda r: r["seconds"])
    e2e = warm_runs[len(warm_runs) // 2]  # the median run
    st = stages(path, args.resolution)
    keys = st.pop("_keys")
    floor = st["floor: scan → H3 → n_unique persons per (cell, hour)"]
    exact = st["exact aggregate (all stages to counts)"]
    print(f"\nprivmob {pm.__version__} · {rows:,} pings · res {args.resolution} · "
          f"{int(keys):,} public keys · {os.cpu_count()} cores · polars {pl.__version__}\n")
    print(f"{'measure':58} {'seconds':>8} {'M pings/s':>10} {'× floor':>8}")
    for label, run in (("end to end, key cache warm (median of runs)", e2e),
                       ("end to end, key cache warm (best run)", warm_runs[0]),
                       ("end to end, cold (first run: boundary → keys by h3)", cold)):
        print(f"{label:58} {run['seconds']:8.2f} {rows / run['seconds'] / 1e6:10.2f} "
              f"{run['seconds'] / floor:8.2f}")
    for name, sec in st.items():
        print(f"{name:58} {sec:8.2f} {rows / sec / 1e6:10.2f} {sec / floor:8.2f}")
    print(f"\npeak RSS end to end: {e2e['peak_rss_mb']:.0f} MB · "
          f"exact aggregate / floor = {exact / floor:.2f} · "
          f"noise, every key by OpenDP: "
          f"{st['noise + suppress, every key by OpenDP (before ADR 0005)'] / keys * 1e6:.1f} µs per key")
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "privmob": pm.__version__, "polars": pl.__version__, "python": platform.python_version(),
        "cores": os.cpu_count(), "rows": rows, "resolution": args.resolution, "public_keys": keys,
        "end_to_end": e2e, "end_to_end_warm_runs": warm_runs, "end_to_end_cold": cold, "stages_s": st,
        "self_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    out = HERE / "results" / f"pipeline-{rows}-res{args.resolution}-{dt.date.today().isoformat()}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
