"""Speed, memory and output of stay/trip detection on real and synthetic traces.

Measures ``privmob.movement.stays.stays()`` + ``trips()`` on

* the GeoLife traces (../shared/data/geolife/traces.csv.gz, 4.5M real fixes at 1–5 s;
  skipped with a note when absent), and
* N synthetic pings (``privmob.synth``, cached under benchmarks/data/, never committed;
  10M by default: ~22,800 persons over one day, 5% of them dense loggers),

each in a fresh subprocess, so the peak RSS is the detection's own (the peak is reset
after the input is loaded, where the kernel allows). On a sample of each it also runs
the plain per-person Python loop of the same definition (the peer any vectorised code
must beat, and the one the unit tests compare with), checks that the two agree, and
counts how much raw fixes inflate movement: distinct H3 res-9 cells and cell changes
per person-day, against stays and trips.

    python benchmarks/bench_stays.py                    # GeoLife + 10M synthetic pings
    python benchmarks/bench_stays.py --synth-rows 1000000 --no-geolife

Prints a table and saves it as JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from typing import Any

import polars as pl
from bench_pipeline import dataset

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GEOLIFE = REPO.parent / "shared" / "data" / "geolife" / "traces.csv.gz"
SAMPLE_FIXES = 100_000  # fixes given to the plain Python loop
LOCAL_OFFSET_S = 8 * 3600  # both data sets are Beijing (UTC+8): person-days are local days


def load(which: str, arg: str) -> pl.DataFrame:
    """Fixes as the stays API takes them: pid (Int64), t (epoch s), lat, lng."""
    if which == "geolife":
        return (
            pl.scan_csv(GEOLIFE, schema_overrides={"person_id": pl.String, "ts": pl.String})
            .select(
                pl.col("person_id").cast(pl.Int64).alias("pid"),
                pl.col("ts").str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC").dt.epoch("s").alias("t"),
                "lat",
                "lng",
            )
            .collect()
        )
    return pl.scan_parquet(arg).select(
        pl.col("person_id").str.slice(1).cast(pl.Int64).alias("pid"),
        pl.col("ts").dt.epoch("s").alias("t"),
        "lat",
        "lng",
    ).collect()


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS since the last reset) in MB, from /proc; ru_maxrss elsewhere."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    fields = {k: v.split()[0] for k, v in fields.items() if v.split()}
    return int(fields["VmRSS"]) / 1024, int(fields["VmHWM"]) / 1024


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return False
    return True


def worker(which: str, arg: str) -> dict[str, Any]:
    """Load the input, then time stays() and trips() on it; one JSON line on stdout."""
    from privmob.movement.stays import stays, trips

    t = time.perf_counter()
    fixes = load(which, arg)
    load_s = time.perf_counter() - t
    rss_input, _ = _rss_mb()
    reset = _reset_peak()
    w, c = time.perf_counter(), time.process_time()
    s = stays(fixes)
    stays_wall, stays_cpu = time.perf_counter() - w, time.process_time() - c
    w, c = time.perf_counter(), time.process_time()
    tr = trips(s)
    trips_wall, trips_cpu = time.perf_counter() - w, time.process_time() - c
    _, peak = _rss_mb()
    out = {
        "dataset": which, "fixes": fixes.height, "persons": fixes["pid"].n_unique(),
        "load_s": load_s, "stays_wall_s": stays_wall, "stays_cpu_s": stays_cpu,
        "trips_wall_s": trips_wall, "trips_cpu_s": trips_cpu,
        "rss_input_mb": rss_input, "peak_rss_mb": peak,
        "peak_is_detection_only": reset,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    out.update(describe(fixes, s, tr))
    return out


def describe(fixes: pl.DataFrame, s: pl.DataFrame, tr: pl.DataFrame) -> dict[str, Any]:
    """What came out, and how much raw fixes overstate movement against stays and trips."""
    import polars_h3 as plh3

    from privmob.movement.stays import StayParams, _stays

    day = ((pl.col("t") + LOCAL_OFFSET_S) // 86_400).alias("day")  # local days
    cells = (
        fixes.sort("pid", "t")
        .with_columns(day, cell=plh3.latlng_to_cell("lat", "lng", 9))
        .with_columns(change=(pl.col("cell") != pl.col("cell").shift(1)).over("pid", "day").fill_null(False))
        .group_by("pid", "day")
        .agg(pl.col("cell").n_unique().alias("cells"), pl.col("change").sum().alias("changes"))
    )
    person_days = cells.height
    plain = _stays(fixes, StayParams(), merge=False).height
    in_stays = int(s["n_fixes"].sum() or 0)
    minutes = (s["end_t"] - s["start_t"]) / 60
    trip_min = (tr["arrive_t"] - tr["depart_t"]) / 60
    return {
        "stays": s.height, "trips": tr.height, "stay_points_before_merge": plain,
        "person_days": person_days,
        "stays_per_person_day": s.height / person_days if person_days else math.nan,
        "trips_per_person_day": tr.height / person_days if person_days else math.nan,
        "median_stay_min": float(minutes.median() or math.nan),  # type: ignore[arg-type]
        "median_trip_min": float(trip_min.median() or math.nan),  # type: ignore[arg-type]
        "share_of_fixes_in_stays": in_stays / fixes.height if fixes.height else math.nan,
        "res9_cells_per_person_day": float(cells["cells"].mean() or math.nan),  # type: ignore[arg-type]
        "res9_cell_changes_per_person_day": float(cells["changes"].mean() or math.nan),  # type: ignore[arg-type]
    }


def reference_loop(which: str, arg: str) -> dict[str, Any]:
    """The plain Python loop (tests/unit/test_stays.py) against stays() on a sample."""
    sys.path.insert(0, str(REPO))
    from tests.unit.test_stays import reference_stays

    from privmob.movement.stays import StayParams, stays

    fixes = load(which, arg)
    sizes = fixes.group_by("pid").len().sort("pid")
    if sizes.height <= 100:
        # Few, heavy persons (GeoLife): the first fixes of every person, in time order.
        per_person = SAMPLE_FIXES // sizes.height
        sample = fixes.sort("pid", "t").group_by("pid", maintain_order=True).head(per_person)
    else:
        # Many light persons (synthetic): whole persons in pid order until the sample is full.
        keep = sizes.filter(pl.col("len").cum_sum() <= SAMPLE_FIXES)["pid"]
        sample = fixes.filter(pl.col("pid").is_in(keep.implode()))
    w = time.perf_counter()
    want = reference_stays(sample, StayParams())
    loop_s = time.perf_counter() - w
    w = time.perf_counter()
    got = stays(sample)
    vec_s = time.perf_counter() - w
    same = got.select("pid", "stay_id", "start_t", "end_t", "n_fixes").rows() == [
        (r[0], r[1], r[2], r[3], r[6]) for r in want
    ]
    return {"sample_fixes": sample.height, "sample_persons": sample["pid"].n_unique(),
            "loop_s": loop_s, "vectorised_s": vec_s, "identical": same, "stays": len(want)}


def run(mode: str, which: str, arg: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, f"--{mode}", which, arg]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{which} {mode} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synth-rows", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-geolife", action="store_true")
    parser.add_argument("--no-reference", action="store_true", help="skip the plain-loop comparison")
    parser.add_argument("--worker", nargs=2, metavar=("DATASET", "ARG"), help=argparse.SUPPRESS)
    parser.add_argument("--reference", nargs=2, metavar=("DATASET", "ARG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    if args.reference:
        print(json.dumps(reference_loop(*args.reference)))
        return

    jobs: list[tuple[str, str]] = []
    if args.no_geolife:
        pass
    elif GEOLIFE.exists():
        jobs.append(("geolife", str(GEOLIFE)))
    else:
        print(f"note: {GEOLIFE} not found; GeoLife skipped", file=sys.stderr)
    jobs.append(("synthetic", str(dataset(args.synth_rows, args.seed))))

    results = []
    for which, arg in jobs:
        r = run("worker", which, arg)
        if not args.no_reference:
            r["reference"] = run("reference", which, arg)
        results.append(r)

    import privmob

    print(f"\nprivmob {privmob.__version__} · polars {pl.__version__} · {os.cpu_count()} cores · "
          f"load average {os.getloadavg()[0]:.1f}\n")
    cols = ("fixes", "stays + trips wall s", "CPU s", "M fixes/s (wall)", "M fixes/s (CPU)", "peak RSS MB")
    print(f"{'dataset':10} " + " ".join(f"{c:>18}" for c in cols))
    for r in results:
        wall = r["stays_wall_s"] + r["trips_wall_s"]
        cpu = r["stays_cpu_s"] + r["trips_cpu_s"]
        vals = (f"{r['fixes']:,}", f"{wall:.2f}", f"{cpu:.2f}", f"{r['fixes'] / wall / 1e6:.2f}",
                f"{r['fixes'] / cpu / 1e6:.2f}", f"{r['peak_rss_mb']:.0f}")
        print(f"{r['dataset']:10} " + " ".join(f"{v:>18}" for v in vals))
    print()
    for r in results:
        print(f"{r['dataset']}: {r['persons']:,} persons, {r['person_days']:,} person-days; "
              f"{r['stays']:,} stays ({r['stay_points_before_merge']:,} stay points before merging), "
              f"{r['trips']:,} trips; median stay {r['median_stay_min']:.1f} min, median trip "
              f"{r['median_trip_min']:.1f} min; {r['share_of_fixes_in_stays']:.0%} of fixes in stays")
        print(f"  per person-day: {r['stays_per_person_day']:.2f} stays, {r['trips_per_person_day']:.2f} "
              f"trips vs {r['res9_cells_per_person_day']:.1f} distinct res-9 cells and "
              f"{r['res9_cell_changes_per_person_day']:.1f} cell changes in the raw fixes")
        ref = r.get("reference")
        if ref:
            print(f"  plain Python loop on {ref['sample_fixes']:,} fixes ({ref['sample_persons']} persons): "
                  f"{ref['loop_s']:.1f} s vs {ref['vectorised_s']:.2f} s vectorised "
                  f"({ref['loop_s'] / ref['vectorised_s']:.0f}×), identical: {ref['identical']}")
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "privmob": privmob.__version__, "polars": pl.__version__, "python": platform.python_version(),
        "cores": os.cpu_count(), "runs": results,
    }
    out = HERE / "results" / f"stays-{dt.date.today().isoformat()}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
