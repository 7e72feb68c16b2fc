"""Shared plumbing of the peer scripts (run in benchmarks/.venv-peers, not privmob's venv).

Every peer reads the same Parquet file bench_peers.py hands it, does the same job as
privmob's release (distinct persons per (H3 cell, hour window) over the release day,
key groups only, public keys = the boundary's cells × 24 windows), and prints ONE line of
JSON on stdout: stage timings, total seconds, peak RSS, rows, released cells, versions.
Timings start after imports, as privmob's do (interpreter start-up is not counted).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from importlib import metadata
from typing import Any

KEY_GROUPS = ("confirmed", "suspected", "close_contact")


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--input", required=True, help="the pings Parquet file")
    p.add_argument("--period-start", type=int, required=True,
                   help="release day start, epoch seconds (local midnight of the job's zone)")
    p.add_argument("--window-seconds", type=int, default=3600)
    p.add_argument("--windows", type=int, default=24)
    p.add_argument("--resolution", type=int, default=8)
    p.add_argument("--keys", required=True, help="Parquet of public keys: cell (u64), window (i32)")
    p.add_argument("--mechanism", choices=("laplace", "gaussian"), default="laplace")
    p.add_argument("--epsilon", type=float, default=1.0)
    p.add_argument("--delta", type=float, default=0.0, help="gaussian only")
    p.add_argument("--rho", type=float, default=None, help="gaussian only (OpenDP zCDP)")
    p.add_argument("--cells-per-window", type=int, default=1)
    p.add_argument("--max-windows", type=int, default=24)
    p.add_argument("--threshold", type=int, required=True,
                   help="publish noisy counts >= this (privmob's release threshold)")
    p.add_argument("--out", required=True, help="directory to write the release into")
    p.add_argument("--cap", type=int, default=None,
                   help="process at most this many in-scope pings and extrapolate")
    return p.parse_args()


class Stopwatch:
    """Ordered stage timings; ``total`` is the sum (stages are sequential)."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = now - self._t
        self._t = now


def versions(*packages: str) -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def emit(peer: str, watch: Stopwatch, **fields: Any) -> None:
    seconds = fields.pop("seconds", None)
    result = {
        "peer": peer,
        "stages_s": watch.stages,
        "seconds": sum(watch.stages.values()) if seconds is None else seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **fields,
    }
    sys.stdout.write(json.dumps(result) + "\n")


def polars_prep(args: argparse.Namespace) -> Any:
    """Scan → scope/period/coordinate filter → H3 cell + window → in-boundary pings.

    The same vectorised indexing privmob uses (polars-h3), so the peers that have no
    indexing of their own (OpenDP, PipelineDP) are compared on their DP engine, not on
    how fast someone else's H3 loop is. Returns an in-memory DataFrame
    (person_id, window, cell), the input every DP engine below starts from.
    """
    import polars as pl
    import polars_h3 as plh3

    start, end = args.period_start, args.period_start + args.windows * args.window_seconds
    epoch = pl.col("ts").dt.epoch("s")
    key_cells = pl.scan_parquet(args.keys).select("cell").unique()
    return (
        pl.scan_parquet(args.input)
        .filter(pl.col("group").is_in(KEY_GROUPS), epoch >= start, epoch < end,
                pl.col("lat").is_between(-90, 90), pl.col("lng").is_between(-180, 180),
                pl.col("person_id").is_not_null())
        .select("person_id",
                ((epoch - start) // args.window_seconds).cast(pl.Int32).alias("window"),
                plh3.latlng_to_cell("lat", "lng", args.resolution).alias("cell"))
        .join(key_cells, on="cell", how="semi")
        .collect(engine="streaming")
    )
