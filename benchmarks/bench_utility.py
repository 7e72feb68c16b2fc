"""Utility of releases, measured: an ε × resolution × window sweep, and forecast skill.

On synthetic Beijing data (``privmob.synth``; the truth is known), with the public keys of
``data-samples/beijing_boundary.geojson`` and the default mechanism (discrete Gaussian,
δ = 1e-7, 1 cell per window, every window of the day, min_count 10, spurious rate ≤ 1e-4):

1. **Sweep.** One synthetic day is released for every ε in 0.1, 0.5, 1, 2, 5 × H3
   resolution 6, 7, 8 × hourly and 3-hourly windows, and each release is scored by
   :func:`privmob.analysis.evaluate.evaluate` against the *unbounded* truth (distinct persons per
   cell and window, what an analyst wants to know; the error includes bounding loss) and
   the *bounded* truth (what the mechanism noised; noise and suppression only).
2. **Forecast skill.** Seven days of the same population are released one day at a time
   (res 7, 1 h, ε = 1); day 7 is forecast from days 1–6 with :func:`privmob.analysis.forecast`
   (ETS) and with the seasonal-naive baseline, and both are scored against day 7's bounded
   truth and against day 7's own release.

3. **Adaptive** (``--adaptive-persons N``, issue 12; off by default). The same day released
   with only ε, the boundary and ``[job] expected_persons = N`` set — plan() then picks the
   window, the PrivTree partition, ``max_pairs`` and the mechanism — ``--adaptive-runs``
   times (fresh noise), next to the fixed res 6 / 3 h release, each scored at its own
   granularity (the partition's leaves) against the unbounded and the bounded truth.

Prints markdown tables (the ones in docs/utility.md) and saves them as JSON under
benchmarks/results/. Data is generated once into benchmarks/data/ (git-ignored).

    python benchmarks/bench_utility.py                 # everything, 20k persons
    python benchmarks/bench_utility.py --skip-forecast --resolutions 7
    python benchmarks/bench_utility.py --skip-sweep --skip-forecast --adaptive-persons 20000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

import privmob as pm
from privmob import synth
from privmob.analysis.evaluate import evaluate, truth_counts
from privmob.analysis.forecast import forecast
from privmob.config import parse_duration

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BOUNDARY = REPO / "data-samples" / "beijing_boundary.geojson"
KEY = "bench-utility-key-" + "0" * 40
START = dt.date(2026, 11, 26)
DAYS = 7
EPSILONS = (0.1, 0.5, 1.0, 2.0, 5.0)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def day_files(persons: int, seed: int) -> list[Path]:
    """One Parquet file per local day of a 7-day synthetic population (cached)."""
    folder = HERE / "data"
    days = [folder / f"utility-{persons}-s{seed}-day{d}.parquet" for d in range(DAYS)]
    if all(p.exists() for p in days):
        return days
    folder.mkdir(parents=True, exist_ok=True)
    week = folder / f"utility-{persons}-s{seed}-week.parquet"
    t = time.perf_counter()
    rows = synth.generate_to_parquet(week, persons, DAYS, seed=seed, start=START)
    log(f"generated {rows:,} pings ({persons:,} persons × {DAYS} days) in {time.perf_counter() - t:.0f} s")
    tz = dt.timezone(dt.timedelta(hours=8))  # Asia/Shanghai has no DST
    for d, path in enumerate(days):
        lo = dt.datetime.combine(START + dt.timedelta(days=d), dt.time(), tz).astimezone(dt.UTC)
        hi = lo + dt.timedelta(days=1)
        pl.scan_parquet(week).filter(pl.col("ts") >= lo, pl.col("ts") < hi).sink_parquet(path)
    week.unlink()
    return days


def job(resolution: int, window: str, epsilon: float, day: int = 0) -> pm.JobConfig:
    windows = 86_400 // parse_duration(window)
    return pm.JobConfig.from_dict({
        "job": {"operator": "bench-utility", "dataset": "synthetic-beijing",
                "period": (START + dt.timedelta(days=day)).isoformat()},
        "grid": {"resolution": resolution, "window": window, "boundary": str(BOUNDARY)},
        "privacy": {"epsilon": epsilon, "max_windows": windows},
    })


def mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else math.nan


def fmt(x: float, spec: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


# -- 1. the sweep ---------------------------------------------------------------------------
def sweep(day0: Path, resolutions: list[int], windows: list[str], epsilons: list[float],
          k: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows, grids = [], []
    for res in resolutions:
        for window in windows:
            t = time.perf_counter()
            base = job(res, window, 1.0)
            unbounded = truth_counts(day0, base, bounded=False)
            bounded = truth_counts(day0, base, bounded=True)
            plan = pm.plan(base)
            n_keys = int(plan.key_cells.size) * base.n_windows if plan.key_cells is not None else 0
            grids.append({
                "resolution": res, "window": window, "public_keys": n_keys,
                "true_keys": unbounded.height, "persons_cell_windows": int(unbounded["count"].sum()),
                "bounding_loss": 1 - int(bounded["count"].sum()) / max(int(unbounded["count"].sum()), 1),
            })
            log(f"res {res} {window}: truth in {time.perf_counter() - t:.1f} s")
            for eps in epsilons:
                t = time.perf_counter()
                release = pm.plan(job(res, window, eps)).release(day0)
                m_u = evaluate(release, unbounded, k=k)
                m_b = evaluate(release, bounded, k=k)
                man = release.manifest
                rows.append({
                    "resolution": res, "window": window, "epsilon": eps,
                    "noise_std": man["noise_std"], "threshold": man["release_threshold"],
                    "released": int(m_u["released"]),
                    **{f"{name}": m_u[name] for name in (
                        "emd_km", "jsd", "median_relative_error", "suppressed_mass_share",
                        "spurious_rate", "topk_recall", "mass_ratio")},
                    "median_relative_error_bounded": m_b["median_relative_error"],
                    "suppressed_mass_share_bounded": m_b["suppressed_mass_share"],
                    "seconds": round(time.perf_counter() - t, 2),
                })
                log(f"  ε={eps}: {rows[-1]['released']} released, EMD {m_u['emd_km']:.2f} km, "
                    f"{rows[-1]['seconds']} s")
    return rows, grids


def sweep_table(rows: list[dict[str, Any]], k: int) -> str:
    head = ("| res | window | ε | noise σ | threshold | released | EMD km | JSD | median rel. err. "
            f"| suppressed mass | spurious rate | top-{k} recall |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['resolution']} | {r['window']} | {r['epsilon']:g} | {r['noise_std']:.1f} "
            f"| {r['threshold']} | {r['released']:,} | {fmt(r['emd_km'], '.2f')} | {fmt(r['jsd'], '.3f')} "
            f"| {fmt(r['median_relative_error'], '.3f')} ({fmt(r['median_relative_error_bounded'], '.3f')}) "
            f"| {fmt(r['suppressed_mass_share'], '.1%')} ({fmt(r['suppressed_mass_share_bounded'], '.1%')}) "
            f"| {fmt(r['spurious_rate'], '.2%')} | {fmt(r['topk_recall'], '.2f')} |")
    return "\n".join(lines)


def grid_table(grids: list[dict[str, Any]]) -> str:
    lines = ["| res | window | public keys | true non-zero keys | person-cell-windows | bounding loss |",
             "|---|---|---|---|---|---|"]
    for g in grids:
        lines.append(f"| {g['resolution']} | {g['window']} | {g['public_keys']:,} | {g['true_keys']:,} "
                     f"| {g['persons_cell_windows']:,} | {g['bounding_loss']:.1%} |")
    return "\n".join(lines)


# -- 2. forecast skill ----------------------------------------------------------------------
def forecast_skill(days: list[Path], resolution: int, window: str, epsilon: float) -> dict[str, Any]:
    releases = []
    t = time.perf_counter()
    for d, path in enumerate(days):
        releases.append(pm.plan(job(resolution, window, epsilon, d)).release(path))
    cfg6 = job(resolution, window, epsilon, DAYS - 1)
    truth = truth_counts(days[-1], cfg6, bounded=True)
    log(f"forecast: {DAYS} releases + truth in {time.perf_counter() - t:.0f} s")
    per_day = 86_400 // cfg6.grid.window_seconds
    threshold = releases[-1].manifest["release_threshold"]
    out: dict[str, Any] = {"resolution": resolution, "window": window, "epsilon": epsilon,
                           "threshold": threshold, "noise_std": releases[-1].manifest["noise_std"]}
    last = releases[-1].table.select("cell", "window_start", pl.col("count").alias("release7"))
    methods: tuple[Literal["auto", "seasonal_naive"], ...] = ("auto", "seasonal_naive")
    for method in methods:
        t = time.perf_counter()
        fc = forecast(releases[:-1], horizon=per_day, method=method)
        seconds = time.perf_counter() - t
        scored = (fc.table.join(truth.rename({"count": "truth"}), on=["cell", "window_start"], how="left")
                  .join(last, on=["cell", "window_start"], how="left")
                  .with_columns(pl.col("truth").fill_null(0).cast(pl.Float64)))
        f, x = scored["forecast"].to_numpy(), scored["truth"].to_numpy()
        lo, hi = scored["lo"].to_numpy(), scored["hi"].to_numpy()
        big = x >= threshold
        rel_mask = scored["release7"].is_not_null().to_numpy()
        r7 = scored["release7"].fill_null(0).to_numpy().astype(np.float64)
        name = "ets" if method == "auto" else "seasonal_naive"
        out[name] = {
            "series": fc.manifest["series"], "methods": fc.manifest["methods"],
            "censored_share": fc.manifest["censored"]["share"],
            "mae": mean(np.abs(f - x)),
            "mae_truth_ge_threshold": mean(np.abs(f - x)[big]),
            "bias_truth_ge_threshold": mean((f - x)[big]),
            "coverage_truth": mean((x >= lo) & (x <= hi)),
            "coverage_truth_ge_threshold": mean(((x >= lo) & (x <= hi))[big]),
            "coverage_release7": mean(((r7 >= lo) & (r7 <= hi))[rel_mask]),
            "width": mean(hi - lo),
            "cell_windows": int(f.size), "cell_windows_truth_ge_threshold": int(big.sum()),
            "seconds": round(seconds, 1),
        }
        if name == "ets":  # the day's own release as an estimate of its truth: noise only
            out["release7_mae_on_released"] = mean(np.abs(r7 - x)[rel_mask])
            out["forecast_mae_on_released"] = mean(np.abs(f - x)[rel_mask])
    return out


def skill_table(s: dict[str, Any]) -> str:
    lines = ["| method | MAE, all | MAE, truth ≥ T | bias, truth ≥ T | coverage of truth "
             "| … truth ≥ T | coverage of day-7 release | mean width | fit time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, label in (("ets", "ETS (statsmodels)"), ("seasonal_naive", "seasonal naive")):
        m = s[name]
        lines.append(
            f"| {label} | {m['mae']:.1f} | {m['mae_truth_ge_threshold']:.1f} "
            f"| {m['bias_truth_ge_threshold']:+.1f} | {m['coverage_truth']:.1%} "
            f"| {m['coverage_truth_ge_threshold']:.1%} | {m['coverage_release7']:.1%} "
            f"| {m['width']:.0f} | {m['seconds']:.1f} s |")
    return "\n".join(lines)


# -- 3. adaptive releases (issue 12) --------------------------------------------------------
def adaptive_job(expected_persons: int, epsilon: float) -> pm.JobConfig:
    """Only ε, the boundary and the declared population: plan() chooses the rest."""
    return pm.JobConfig.from_dict({
        "job": {"operator": "bench-utility", "dataset": "synthetic-beijing",
                "period": START.isoformat(), "expected_persons": expected_persons},
        "grid": {"boundary": str(BOUNDARY)},
        "privacy": {"epsilon": epsilon},
    })


def _as_truth(counts: pl.DataFrame, config: pm.JobConfig) -> pl.DataFrame:
    """``cell`` (UInt64), ``window`` (index), ``count`` → evaluate()'s cell / window_start / count."""
    import polars_h3 as plh3

    start_us = int(config.period_start.timestamp()) * 1_000_000
    step_us = config.grid.window_seconds * 1_000_000
    return counts.select(
        plh3.int_to_str("cell").alias("cell"),
        (pl.lit(start_us) + pl.col("window").cast(pl.Int64) * step_us)
        .cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("window_start"),
        pl.col("count").cast(pl.Int64))


def leaf_truth(pings: Path, plan: pm.Plan, leaves: np.ndarray, *, bounded: bool) -> pl.DataFrame:
    """Exact persons per (leaf, window) of an adaptive release — for simulations only.

    Unbounded: distinct persons whose pings fall under each leaf in the window. Bounded:
    the engine's own exact counts with the release's partition handed back (same
    pseudonyms, cap and tie-breaks), i.e. what the mechanism noised.
    """
    from privmob.backends import PolarsBackend
    from privmob.stages import index, scope
    from privmob.stages.hierarchy import parent
    from privmob.stages.pseudonymise import Pseudonymiser, load_key

    cfg, engine = plan.config, PolarsBackend()
    if bounded:
        pseud = Pseudonymiser(load_key(cfg.job.key_file, cfg.job.key_env), plan.linkage_label)
        counts = engine.exact_cells(pings, cfg, pseud, plan.key_cells,
                                    partition=lambda _tree: leaves).counts
        return _as_truth(counts, cfg)
    start = int(cfg.period_start.timestamp())
    fine = (engine.validated(pings, cfg).filter(pl.col("status") == scope.OK)
            .select("person_id", index.window(start, cfg.grid.window_seconds).alias("window"),
                    index.cell(cfg.grid.resolution).alias("cell"))
            .unique().collect(engine="streaming"))
    leaf = pl.DataFrame({"cell": pl.Series(leaves, dtype=pl.UInt64)}).with_columns(
        res=(pl.col("cell") // (1 << 52) % 16).cast(pl.Int8))
    parts = [fine.with_columns(parent("cell", r).alias("cell"))
             .join(leaf.filter(pl.col("res") == r).select("cell"), on="cell", how="semi")
             for r in leaf["res"].unique().to_list()]
    counts = (pl.concat(parts).group_by("cell", "window")
              .agg(pl.col("person_id").n_unique().cast(pl.Int64).alias("count")))
    return _as_truth(counts, cfg)


def _score(release: pm.ReleasedTable, unbounded: pl.DataFrame, bounded: pl.DataFrame,
           k: int) -> dict[str, Any]:
    m_u, m_b = evaluate(release, unbounded, k=k), evaluate(release, bounded, k=k)
    big = unbounded.filter(pl.col("count") >= 20)
    hit = big.join(release.table.select("cell", "window_start"), on=["cell", "window_start"],
                   how="semi").height
    kept, total = int(bounded["count"].sum()), int(unbounded["count"].sum())
    return {
        "released": int(m_u["released"]), "true_keys_ge20": big.height,
        "recall@20": hit / big.height if big.height else math.nan,
        **{name: m_u[name] for name in ("spurious_rate", "median_relative_error", "emd_km",
                                        "jsd", "suppressed_mass_share", "topk_recall")},
        "median_relative_error_bounded": m_b["median_relative_error"],
        "bounding_loss": 1 - kept / total if total else math.nan,
    }


def adaptive_compare(day0: Path, expected_persons: int, runs: int, k: int) -> list[dict[str, Any]]:
    """The adaptive release (``runs`` times) next to the fixed res 6 / 3 h one, at ε = 1."""
    import tempfile

    from privmob.governance.ledger import Ledger, budget_from

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="privmob-bench-") as tmp:
        configs = [("adaptive", adaptive_job(expected_persons, 1.0))] * runs + [("fixed", job(6, "3h", 1.0))]
        truths: dict[str, tuple[pl.DataFrame, pl.DataFrame]] = {}
        for run, (kind, cfg) in enumerate(configs):
            # fresh noise and a fresh ledger per run: the same day is released again
            os.environ["PRIVMOB_LEDGER"] = str(Path(tmp) / f"ledger-{run}.sqlite")
            Ledger(Path(os.environ["PRIVMOB_LEDGER"])).declare(
                cfg.dataset, budget_from(10.0, 1e-5, None), operator="bench-utility",
                reason="utility benchmark on synthetic data", exist_ok=True)
            t = time.perf_counter()
            plan = pm.plan(cfg)
            release = plan.release(day0)
            seconds = time.perf_counter() - t
            man = release.manifest
            a = man.get("adaptive")
            if isinstance(a, dict):
                leaves = np.array([int(c, 16) for c in a["leaf_cells"]], dtype=np.uint64)
                truth = (leaf_truth(day0, plan, leaves, bounded=False),
                         leaf_truth(day0, plan, leaves, bounded=True))
            else:
                if kind not in truths:
                    truths[kind] = (truth_counts(day0, cfg, bounded=False),
                                    truth_counts(day0, cfg, bounded=True))
                truth = truths[kind]
            rows.append({
                "kind": kind, "run": run, "window": man["window"], "mechanism": man.get("mechanism"),
                "threshold": man["release_threshold"], "noise_std": man["noise_std"],
                "resolution": man["resolution"],
                "leaves": a["leaves"] if isinstance(a, dict) else None,
                "leaves_by_resolution": a["leaves_by_resolution"] if isinstance(a, dict) else None,
                "split_threshold": a["split_threshold"] if isinstance(a, dict) else None,
                "max_pairs": a["max_pairs"] if isinstance(a, dict) else None,
                **_score(release, *truth, k), "release_seconds": round(seconds, 1),
            })
            log(json.dumps(rows[-1], default=str))
    return rows


def adaptive_table(rows: list[dict[str, Any]], k: int) -> str:
    lines = [f"| release | run | window | mechanism | threshold | leaves | θ | max_pairs | released "
             f"| recall@20 | spurious | MRE (bounded) | EMD km | bounding loss | top-{k} recall |",
             "|" + "---|" * 15]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['run']} | {r['window']} | {r['mechanism']} | {r['threshold']} "
            f"| {r['leaves'] or '–'} | {r['split_threshold'] or '–'} | {r['max_pairs'] or '–'} "
            f"| {r['released']:,} | {fmt(r['recall@20'], '.2f')} | {fmt(r['spurious_rate'], '.2%')} "
            f"| {fmt(r['median_relative_error'], '.3f')} ({fmt(r['median_relative_error_bounded'], '.3f')}) "
            f"| {fmt(r['emd_km'], '.2f')} | {fmt(r['bounding_loss'], '.1%')} "
            f"| {fmt(r['topk_recall'], '.2f')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--persons", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epsilons", default=",".join(f"{e:g}" for e in EPSILONS))
    ap.add_argument("--resolutions", default="6,7,8")
    ap.add_argument("--windows", default="1h,3h")
    ap.add_argument("--k", type=int, default=10, help="hotspots per window for top-k recall")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--skip-forecast", action="store_true")
    ap.add_argument("--adaptive-persons", dest="adaptive_persons", type=int,
                    help="also release day 1 adaptively with [job] expected_persons = N (issue 12)")
    ap.add_argument("--adaptive-runs", dest="adaptive_runs", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("PRIVMOB_PSEUDONYM_KEY", KEY)

    t0 = time.perf_counter()
    days = day_files(args.persons, args.seed)
    result: dict[str, Any] = {
        "date": dt.date.today().isoformat(), "persons": args.persons, "seed": args.seed,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "privmob": pm.__version__,
    }
    print(f"# privmob utility — synthetic Beijing, {args.persons:,} persons, seed {args.seed}\n")
    if not args.skip_sweep:
        rows, grids = sweep(days[0], [int(r) for r in args.resolutions.split(",")],
                            args.windows.split(","), [float(e) for e in args.epsilons.split(",")],
                            args.k)
        result["sweep"], result["grids"] = rows, grids
        print("## Sweep (day 1; metrics vs the unbounded truth, bounded in brackets)\n")
        print(sweep_table(rows, args.k) + "\n")
        print(grid_table(grids) + "\n")
    if not args.skip_forecast:
        skill = forecast_skill(days, 7, "1h", 1.0)
        result["forecast"] = skill
        print(f"## Forecast skill (res 7, 1 h, ε = 1, threshold {skill['threshold']}, "
              f"noise σ {skill['noise_std']:.1f}; day 7 from days 1–6, vs day 7's bounded truth)\n")
        print(skill_table(skill) + "\n")
        print(f"On cell-windows released on day 7: forecast MAE "
              f"{fmt(skill['forecast_mae_on_released'], '.1f')}, day 7's own release MAE "
              f"{fmt(skill['release7_mae_on_released'], '.1f')}.\n")
    if args.adaptive_persons:
        arows = adaptive_compare(days[0], args.adaptive_persons, args.adaptive_runs, args.k)
        result["adaptive"] = arows
        print(f"## Adaptive (day 1, ε = 1, expected_persons {args.adaptive_persons:,}; "
              "vs the unbounded truth at each release's keys, bounded in brackets)\n")
        print(adaptive_table(arows, args.k) + "\n")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"total {result['seconds']:.0f} s")
    out = HERE / "results" / f"utility-{args.persons}-s{args.seed}-{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"saved {out}")


if __name__ == "__main__":
    main()
