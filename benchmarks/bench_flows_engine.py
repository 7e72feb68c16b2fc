"""Flows' stays and trips on Spark: found on the driver from collected fixes, or on the engine.

On N synthetic pings (:mod:`privmob.synth`, cached under benchmarks/data/, never
committed; 300k by default), in Spark local mode:

* **driver** — what flows did before issue 13: ``SparkBackend.fixes()`` brings every
  usable fix to the driver, where :func:`privmob.movement.stays.person_trips` runs;
* **engine** — ``SparkBackend.trips()``: one shuffle by person, then ``person_trips`` per
  chunk of whole persons on the executors; the driver receives the trips and one row
  per person (the id, hashed there).

Checks that both give the same trips, and prints the seconds of each (best of
``--repeat``, after a warm-up run on the bundled sample that starts the JVM and the
Python workers), their ratio, and the largest frame each brought to the driver (rows):
what decides whether the driver's memory bounds the input.

    python benchmarks/bench_flows_engine.py                  # 300k pings, local[2]
    python benchmarks/bench_flows_engine.py --rows 1000000 --master 'local[4]'
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

import privmob as pm
from privmob import synth
from privmob.backends import _spark
from privmob.backends._spark import SparkBackend, local_session
from privmob.movement.stays import StayParams, person_trips
from privmob.stages.pseudonymise import Pseudonymiser

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent / "data-samples" / "beijing_pings.parquet"
KEY = b"bench-flows-engine-" + b"0" * 32


def dataset(rows: int, seed: int) -> Path:
    """A cached synthetic day of about ``rows`` pings (Beijing, 5% dense loggers)."""
    path = HERE / "data" / f"synth-{rows}-s{seed}.parquet"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        persons = max(1, round(rows / synth.expected_rows_per_person_day()))
        written = synth.generate_to_parquet(path, persons, 1, seed=seed)
        print(f"generated {written:,} pings ({persons:,} persons) → {path}", file=sys.stderr)
    return path


def job() -> pm.JobConfig:
    return pm.JobConfig.from_dict({
        "job": {"operator": "bench", "period": "2026-11-26", "dataset": "bench"},
        "grid": {"resolution": 8, "window": "1h"},
        "flows": {"units": "cells", "resolution": 7, "epsilon": 0.5},
    })


class Collected:
    """The largest frame the Spark engine brings to the driver while it is installed."""

    def __init__(self) -> None:
        self.peak = 0
        self._real = _spark._collect

    def __enter__(self) -> Collected:
        def collect(*args: Any, **kwargs: Any) -> pl.DataFrame:
            frame = self._real(*args, **kwargs)
            self.peak = max(self.peak, frame.height)
            return frame

        _spark._collect = collect
        return self

    def __exit__(self, *exc: object) -> None:
        _spark._collect = self._real


def best(repeat: int, fn: Callable[[], pl.DataFrame]) -> tuple[float, pl.DataFrame, int]:
    """Best seconds of ``repeat`` runs, the result, and the peak rows collected."""
    times = []
    out = pl.DataFrame()
    with Collected() as seen:
        for _ in range(repeat):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
    return min(times), out, seen.peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    path = dataset(args.rows, args.seed)
    cfg = job()
    key = Pseudonymiser(KEY, "2026-11-26")
    params = StayParams.of(cfg.flows)
    engine = SparkBackend(local_session(args.master))
    t = time.perf_counter()
    engine.trips(pm.read_pings(SAMPLE), cfg, key)  # JVM, Python workers: not counted
    print(f"warm-up on the sample: {time.perf_counter() - t:.1f} s")

    source = pm.read_pings(path)
    driver_s, on_driver, driver_rows = best(
        args.repeat, lambda: person_trips(engine.fixes(source, cfg, key), params))
    engine_s, on_engine, engine_rows = best(args.repeat, lambda: engine.trips(source, cfg, key))
    assert on_engine.equals(on_driver), "the two ways found different trips"
    print(f"input: {path.name}, Spark {args.master}, {on_engine.height:,} trips, "
          f"{on_engine['pid'].n_unique():,} persons with trips")
    print(f"{'':22}{'seconds':>10}{'peak rows on driver':>22}")
    print(f"{'fixes → driver':22}{driver_s:>10.2f}{driver_rows:>22,}")
    print(f"{'trips on the engine':22}{engine_s:>10.2f}{engine_rows:>22,}")
    print(f"time ratio (driver / engine): {driver_s / engine_s:.2f}; "
          f"rows on the driver: {driver_rows / max(engine_rows, 1):.1f}× fewer on the engine")


if __name__ == "__main__":
    main()
