"""Peer: the naive script — pandas + a per-ping ``h3.latlng_to_cell`` loop + groupby nunique.

What one writes without an engine: ``pandas.read_parquet`` the whole file, filter key
groups and the release day, index each ping in a Python loop, count distinct persons per
(cell, window). No validation beyond that, no pseudonyms, no bounding, no noise, no public
keys (cells outside the boundary are counted too): it is not a DP release, it is the floor
a hand-written script reaches. The loop is capped (``--cap``, default 1M in-scope pings);
the loop and the groupby are timed on that subset and extrapolated linearly to all
in-scope pings (the JSON says so); reading and filtering are always measured in full.
"""

from __future__ import annotations

import os
from pathlib import Path

from _common import KEY_GROUPS, Stopwatch, emit, parse_args, versions


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    import h3
    import pandas as pd

    watch = Stopwatch()
    df = pd.read_parquet(args.input, columns=["person_id", "ts", "lat", "lng", "group"])
    watch.lap("read_parquet (pandas, whole file)")
    start = pd.Timestamp(args.period_start, unit="s", tz="UTC")
    end = start + pd.Timedelta(seconds=args.windows * args.window_seconds)
    df = df[df["group"].isin(KEY_GROUPS) & (df["ts"] >= start) & (df["ts"] < end)]
    n_scope = len(df)
    watch.lap("filter scope + day (pandas)")
    sub = df if args.cap is None or n_scope <= args.cap else df.iloc[: args.cap]
    res = args.resolution
    cells = [h3.latlng_to_cell(lat, lng, res) for lat, lng in zip(sub["lat"], sub["lng"], strict=True)]
    watch.lap("H3 per ping (Python loop)")
    sub = sub.assign(cell=cells,
                     window=((sub["ts"] - start).dt.total_seconds() // args.window_seconds)
                     .astype("int32"))
    counts = sub.groupby(["cell", "window"])["person_id"].nunique().reset_index(name="count")
    watch.lap("groupby nunique (pandas)")
    os.makedirs(args.out, exist_ok=True)
    counts.to_parquet(Path(args.out) / "naive_pandas.parquet", index=False)
    watch.lap("write")
    extrapolated = None
    if len(sub) < n_scope:
        factor = n_scope / len(sub)
        extrapolated = {"factor": factor, "measured_rows": len(sub),
                        "stages": ["H3 per ping (Python loop)", "groupby nunique (pandas)"]}
        for name in extrapolated["stages"]:
            watch.stages[name] *= factor
    emit("naive_pandas", watch, rows_scope=n_scope, keys=None, released=len(counts),
         extrapolated=extrapolated, versions=versions("pandas", "h3", "pyarrow"))


if __name__ == "__main__":
    main()
