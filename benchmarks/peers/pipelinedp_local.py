"""Peer: PipelineDP's local backend — PRIVACY_ID_COUNT over public partitions.

Partitions are (cell, window); public partitions = the boundary's cells × 24 windows, so
no partition selection is needed (pure ε-DP with Laplace). Bounds:
``max_partitions_contributed = 24``, ``max_contributions_per_partition = 1`` — L0 = 24,
L∞ = 1, the same sensitivity as privmob, but PipelineDP samples any 24 (cell, window)
partitions per person uniformly: it cannot express "≤ 1 cell per window". Its noise is
floating-point (PyDP's Laplace / Gaussian), not integer. Indexing is done before PipelineDP
with the same polars + polars-h3 query as the OpenDP peer; PipelineDP then gets the
in-scope pings as Python tuples (person_id, cell, window), as its local backend wants.
"""

from __future__ import annotations

import os
from pathlib import Path

from _common import Stopwatch, emit, parse_args, polars_prep, versions


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    import pipeline_dp
    import polars as pl

    watch = Stopwatch()
    pings = polars_prep(args)
    watch.lap("read + scope + H3 index (polars 1.36 + polars-h3)")
    rows = list(zip(pings["person_id"].to_list(), pings["cell"].to_list(),
                    pings["window"].to_list(), strict=True))
    keys = pl.read_parquet(args.keys)
    public = list(zip(keys["cell"].to_list(), keys["window"].to_list(), strict=True))
    watch.lap("to Python tuples (rows + public partitions)")
    if args.mechanism == "laplace":
        accountant = pipeline_dp.NaiveBudgetAccountant(total_epsilon=args.epsilon, total_delta=0)
        noise = pipeline_dp.NoiseKind.LAPLACE
    else:
        accountant = pipeline_dp.NaiveBudgetAccountant(total_epsilon=args.epsilon,
                                                       total_delta=args.delta)
        noise = pipeline_dp.NoiseKind.GAUSSIAN
    engine = pipeline_dp.DPEngine(accountant, pipeline_dp.LocalBackend())
    params = pipeline_dp.AggregateParams(
        noise_kind=noise,
        metrics=[pipeline_dp.Metrics.PRIVACY_ID_COUNT],
        max_partitions_contributed=args.cells_per_window * args.max_windows,
        max_contributions_per_partition=1,
    )
    extractors = pipeline_dp.DataExtractors(
        privacy_id_extractor=lambda r: r[0],
        partition_extractor=lambda r: (r[1], r[2]),
        value_extractor=lambda r: 0,
    )
    result = engine.aggregate(rows, params, extractors, public_partitions=public)
    accountant.compute_budgets()
    noisy = list(result)  # the local backend is lazy: this runs bound + count + noise
    watch.lap("aggregate (PipelineDP: bound, count, noise every partition)")
    kept = [(c, w, v.privacy_id_count) for (c, w), v in noisy
            if v.privacy_id_count >= args.threshold]
    table = pl.DataFrame(kept, schema={"cell": pl.UInt64, "window": pl.Int32,
                                       "count": pl.Float64}, orient="row")
    os.makedirs(args.out, exist_ok=True)
    table.sort("window", "cell").write_parquet(Path(args.out) / "pipelinedp_local.parquet")
    watch.lap("suppress + write")
    emit("pipelinedp_local", watch, rows_scope=pings.height, keys=len(noisy), released=table.height,
         versions=versions("pipeline-dp", "python-dp", "polars"))


if __name__ == "__main__":
    main()
