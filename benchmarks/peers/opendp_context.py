"""Peer: OpenDP's Polars Context — grouped ``dp.len()`` over public keys, same bounds.

Privacy unit: one person (``identifier="person_id"``, one identifier changes). The query
truncates each person to 1 ping per hour window (so 1 cell per window; which ping is a
uniform sample), to ≤ 24 windows, and — a no-op on the data after those two, but the
statement OpenDP needs to derive the bound for the (cell, window) grouping — to ≤ 24
(cell, window) groups. OpenDP then reports L0 = 24, L∞ = 1: the same sensitivity as
privmob (integer Laplace scale 24 at ε = 1). Keys are public (``with_keys``), passed as a
*lazy scan* of the key Parquet: passing them as an in-memory DataFrame makes
``release()`` take 260–380 s (measured; linear in the keys, the same with no pings in
scope — apparently the key set travels with the plan into every step of the scale search).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from _common import Stopwatch, emit, parse_args, polars_prep, versions

warnings.simplefilter("ignore", FutureWarning)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    import opendp.prelude as dp
    import polars as pl

    dp.enable_features("contrib")
    watch = Stopwatch()
    pings = polars_prep(args)
    watch.lap("read + scope + H3 index (polars 1.36 + polars-h3)")
    # OpenDP's integer Gaussian accounts in zCDP: it gets privmob's ρ.
    loss = (dp.loss_of(epsilon=args.epsilon) if args.mechanism == "laplace"
            else dp.loss_of(rho=args.rho))
    context = dp.Context.compositor(
        data=pings.lazy(),
        privacy_unit=dp.unit_of(contributions=1, identifier="person_id"),
        privacy_loss=loss,
        split_evenly_over=1,
    )
    keys = pl.scan_parquet(args.keys)
    query = (
        context.query()
        .truncate_per_group(args.cells_per_window, by=["window"])
        .truncate_num_groups(args.max_windows, by=["window"], keep="first")
        .truncate_num_groups(args.cells_per_window * args.max_windows, by=["cell", "window"],
                             keep="first")
        .group_by("cell", "window")
        .agg(dp.len(signed=True))
        .with_keys(keys)
    )
    summary = query.summarize()
    released = query.release()
    watch.lap("resolve + release (OpenDP: calibrate, build measurement)")
    noisy = released.collect()
    watch.lap("collect (OpenDP: truncate, count, noise every key)")
    table = noisy.filter(pl.col("len") >= args.threshold).sort("window", "cell")
    os.makedirs(args.out, exist_ok=True)
    table.write_parquet(Path(args.out) / "opendp_context.parquet")
    watch.lap("suppress + write")
    emit("opendp_context", watch, rows_scope=pings.height, keys=noisy.height,
         released=table.height, distribution=summary["distribution"][0],
         scale=float(summary["scale"][0]),
         versions=versions("opendp", "polars", "polars-h3"))


if __name__ == "__main__":
    main()
