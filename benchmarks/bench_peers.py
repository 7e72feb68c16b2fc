"""privmob against its peers, in one run on the same Parquet files; and its scaling and memory.

For each size in ``--rows`` (default 1M and 10M pings) a synthetic Beijing day is generated
with ``privmob.synth`` into benchmarks/data/ (cached, git-ignored, never committed) and the
same release — distinct persons per (H3 res-8 cell, hour), key groups only, ≤ 1 cell per
window and ≤ 24 windows per person, Laplace ε = 1 over the public keys of the Beijing
outline, noisy counts < privmob's release threshold suppressed, table written — is run by:

* privmob (this venv): ``plan → release → write``, Parquet in → release on disk;
* OpenDP's Polars Context (benchmarks/peers/opendp_context.py);
* PipelineDP's local backend (benchmarks/peers/pipelinedp_local.py);
* a naive pandas + per-ping ``h3.latlng_to_cell`` loop (benchmarks/peers/naive_pandas.py).

Each engine runs in a fresh subprocess, so its peak RSS (getrusage) is its own. The peers
run in their own virtual environment, benchmarks/.venv-peers (created here on first use):
OpenDP's Polars integration pins polars 1.36.1, privmob runs on polars 2.x.

For each size in ``--privmob-only`` (default 100M) privmob alone runs end to end, for the
memory ceiling (peak RSS ≤ 4 GB on a ~2.2 GB input) and the scaling fit over all sizes.

Prints the tables (seconds, pings/s, peak RSS, ratios, per stage) and saves a small JSON
under benchmarks/results/.

    .venv/bin/python benchmarks/bench_peers.py                       # 1M + 10M peers, 100M privmob
    .venv/bin/python benchmarks/bench_peers.py --rows 1000000 --privmob-only
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
from bench_pipeline import BOUNDARY, KEY, dataset

import privmob as pm

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS_DIR = HERE / "peers"
PEERS_VENV = HERE / ".venv-peers"
#: What the peers' venv gets; opendp[polars] pins its own polars (1.36.1 for 0.16).
PEER_REQUIREMENTS = ("opendp[polars]==0.16.*", "pipeline-dp", "pandas", "h3", "pyarrow",
                     "polars-h3")
PEERS = {
    "opendp_context": "OpenDP Polars Context",
    "pipelinedp_local": "PipelineDP local backend",
    "naive_pandas": "naive pandas + h3 loop",
}
MEMORY_LIMIT_MB = 4096
TIMEOUT_S = 3600


# -- set-up ------------------------------------------------------------------------------
def peers_python(venv: Path = PEERS_VENV) -> Path:
    """The peers' interpreter; creates the venv and installs the peers when needed."""
    py = venv / "bin" / "python"
    stamp = venv / ".privmob-peer-requirements"
    want = "\n".join(PEER_REQUIREMENTS) + "\n"
    if py.exists() and stamp.exists() and stamp.read_text() == want:
        return py
    base = shutil.which("python3") or sys.executable
    if not py.exists():
        print(f"creating {venv.relative_to(REPO)} with {base} -m venv …", file=sys.stderr)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    print(f"pip install {' '.join(PEER_REQUIREMENTS)} into {venv.relative_to(REPO)} …",
          file=sys.stderr)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", *PEER_REQUIREMENTS], check=True)
    stamp.write_text(want)
    return py


def job_dict(resolution: int, mechanism: str, epsilon: float) -> dict[str, Any]:
    return {
        "job": {"operator": "bench", "period": "2026-11-26", "dataset": "bench"},
        "grid": {"resolution": resolution, "window": "1h", "boundary": str(BOUNDARY)},
        "privacy": {"mechanism": mechanism, "epsilon": epsilon, "max_cells_per_window": 1,
                    "max_windows": 24},
    }


def public_keys_file(plan: Any, resolution: int) -> Path:
    """The plan's public keys (cells × windows) as Parquet, for the peers to use as is."""
    path = HERE / "data" / f"keys-{BOUNDARY.stem}-res{resolution}.parquet"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        cells = pl.DataFrame({"cell": pl.Series(plan.key_cells, dtype=pl.UInt64)})
        windows = pl.DataFrame({"window": pl.arange(0, plan.config.n_windows, eager=True)
                                .cast(pl.Int32)})
        cells.join(windows, how="cross").write_parquet(path)
    return path


# -- runs --------------------------------------------------------------------------------
PRIVMOB_CHILD = r"""
import json, os, resource, sys, tempfile, threading, time
os.environ["PRIVMOB_PSEUDONYM_KEY"] = {key!r}
import privmob as pm
import flint, opendp.prelude, shapely  # privmob's lazy imports: imports are not timed, for any engine

stage = ["start"]
peak = {{}}
page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20

def sample():  # peak RSS per stage, from /proc every 50 ms
    with open("/proc/self/statm") as f:
        while True:
            f.seek(0)
            rss = int(f.read().split()[1]) * page_mb
            peak[stage[0]] = max(peak.get(stage[0], 0.0), rss)
            time.sleep(0.05)

threading.Thread(target=sample, daemon=True).start()
marks = []
def progress(name):
    marks.append((name, time.perf_counter()))
    stage[0] = name

t0 = time.perf_counter()
progress("plan (boundary → public keys, calibration)")
plan = pm.plan(pm.JobConfig.from_dict({job!r}))
release = plan.release({path!r}, progress=progress)
progress("write release (parquet, csv, geojson, manifest)")
with tempfile.TemporaryDirectory() as tmp:
    release.write(os.path.join(tmp, "release"))
t_end = time.perf_counter()
marks.append(("end", t_end))
time.sleep(0.06)
spans = {{a: b_t - a_t for (a, a_t), (_b, b_t) in zip(marks, marks[1:])}}
m, op = release.manifest, release.operator_record
print(json.dumps({{
    "seconds": t_end - t0, "spans_s": spans, "timings_s": op["timings_s"],
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "peak_rss_by_stage_mb": peak, "rows_in": op["rows_in"], "rows_used": op["rows_used"],
    "persons": op["persons"], "keys": m["n_keys"], "released": m["cells_released"],
    "noise_scale": m["noise_scale"], "mechanism": m["mechanism"],
}}))
"""


def run_privmob(path: Path, job: dict[str, Any]) -> dict[str, Any]:
    code = PRIVMOB_CHILD.format(key=KEY, job=job, path=str(path))
    load = os.getloadavg()[0]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=TIMEOUT_S)
    if out.returncode != 0:
        raise RuntimeError(f"privmob run failed:\n{out.stderr[-3000:]}")
    r: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    spans, timings = r.pop("spans_s"), r.pop("timings_s")
    exact_name = next(k for k in spans if k.startswith("read, validate"))
    noise_name = next(k for k in spans if k.startswith("noise"))
    r["stages_s"] = {
        "plan (boundary → public keys, calibration)":
            spans["plan (boundary → public keys, calibration)"],
        "exact: scan→validate→scope→pseudonymise→H3→bound→count": timings["exact"],
        "noise (OpenDP core, every public key, 2 threads)": timings["mechanism"],
        "suppress + table + manifest (incl. input SHA-256)":
            spans[exact_name] - timings["exact"] + spans[noise_name] - timings["mechanism"],
        "write release (parquet, csv, geojson, manifest)":
            spans["write release (parquet, csv, geojson, manifest)"],
    }
    r["load_avg_1m"] = [load, os.getloadavg()[0]]
    return r


def run_peer(py: Path, peer: str, path: Path, plan: Any, keys: Path, naive_cap: int | None,
             ) -> dict[str, Any]:
    cfg, noise = plan.config, plan.noise
    cmd = [str(py), str(PEERS_DIR / f"{peer}.py"), "--input", str(path),
           "--period-start", str(int(cfg.period_start.timestamp())),
           "--window-seconds", str(cfg.grid.window_seconds), "--windows", str(cfg.n_windows),
           "--resolution", str(cfg.grid.resolution), "--keys", str(keys),
           "--mechanism", noise.mechanism, "--epsilon", str(cfg.privacy.epsilon),
           "--cells-per-window", str(cfg.privacy.max_cells_per_window),
           "--max-windows", str(cfg.privacy.max_windows),
           "--threshold", str(plan.release_threshold)]
    if noise.mechanism == "gaussian":
        cmd += ["--delta", str(float(noise.cost.delta)), "--rho", str(float(noise.cost.rho))]
    if peer == "naive_pandas" and naive_cap:
        cmd += ["--cap", str(naive_cap)]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([*cmd, "--out", tmp], capture_output=True, text=True,
                             timeout=TIMEOUT_S, cwd=PEERS_DIR)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed",
                "stderr_tail": out.stderr[-2000:]}
    r: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    r["load_avg_1m"] = [load, os.getloadavg()[0]]
    return r


# -- report ------------------------------------------------------------------------------
def fmt_mb(mb: float) -> str:
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def print_size(rows: int, res: dict[str, Any]) -> None:
    pm_run = res["privmob"]
    base = pm_run["seconds"]
    loads = [x for r in res.values() if isinstance(r, dict) for x in r.get("load_avg_1m", [])]
    print(f"\n{rows:,} pings ({pm_run['rows_used']:,} used by privmob, {pm_run['persons']:,} "
          f"persons) · {pm_run['keys']:,} public keys · {pm_run['mechanism']} scale "
          f"{pm_run['noise_scale']:g} · load avg {min(loads):.1f}–{max(loads):.1f} on "
          f"{os.cpu_count()} cores")
    head = f"{'engine / stage':62} {'seconds':>8} {'M pings/s':>9} {'peak RSS':>9} " \
           f"{'time ÷ pm':>9} {'RSS ÷ pm':>8} {'released':>8}"
    print(head)
    print("-" * len(head))

    def line(name: str, sec: float, rss: float | None, ratio: float | None,
             released: Any = "") -> None:
        rate = rows / sec / 1e6 if sec > 0 else math.inf
        rss_ratio = None if rss is None else rss / pm_run["peak_rss_mb"]
        print(f"{name:62} {sec:8.2f} {rate:9.2f} "
              f"{fmt_mb(rss) if rss is not None else '':>9} "
              f"{f'{ratio:.2f}×' if ratio is not None else '':>9} "
              f"{f'{rss_ratio:.2f}×' if rss_ratio is not None else '':>8} {released!s:>8}")

    line("privmob — end to end (Parquet → release written)", base, pm_run["peak_rss_mb"], 1.0,
         pm_run["released"])
    for name, sec in pm_run["stages_s"].items():
        line(f"    {name}", sec, None, None)
    for peer, label in PEERS.items():
        r = res.get(peer)
        if r is None:
            continue
        if "error" in r:
            print(f"{label:62} failed: {r['error']}")
            continue
        note = ""
        if r.get("extrapolated"):
            note = f" (*{r['extrapolated']['factor']:.1f}× extrap.)"
        released = r["released"] if r.get("keys") else f"{r['released']} grp"
        line(f"{label}{note}", r["seconds"], r["peak_rss_mb"], r["seconds"] / base, released)
        for name, sec in r["stages_s"].items():
            star = " *" if r.get("extrapolated") and name in r["extrapolated"]["stages"] else ""
            line(f"    {name}{star}", sec, None, None)
    print("÷ pm: the peer's end-to-end time (peak RSS) over privmob's; > 1 = privmob faster "
          "(leaner). released: noisy counts ≥ the release threshold; grp = exact groups, no DP")
    rounds = {k: r["seconds_all_rounds"] for k, r in res.items()
              if isinstance(r, dict) and "seconds_all_rounds" in r}
    print("each engine's best round is shown; all rounds (s): " + "; ".join(
        f"{k} {', '.join(f'{x:.1f}' for x in v if x is not None)}" for k, v in rounds.items()))
    for r in res.values():
        if isinstance(r, dict) and r.get("extrapolated"):
            x = r["extrapolated"]
            print(f"* {r['peer']}: measured on the first {x['measured_rows']:,} in-scope pings, "
                  f"scaled linearly ×{x['factor']:.2f} to all {r['rows_scope']:,}")


def fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = a + b·x; returns (a, b, R²)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return a, b, 1 - ss_res / ss_tot if ss_tot else 1.0


def scaling(runs: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    sizes = sorted(runs)
    if len(sizes) < 2:
        return None
    exact_key = "exact: scan→validate→scope→pseudonymise→H3→bound→count"
    ns = [runs[n]["rows_in"] / 1e6 for n in sizes]
    total = [runs[n]["seconds"] for n in sizes]
    exact = [runs[n]["stages_s"][exact_key] for n in sizes]
    out: dict[str, Any] = {"rows_m": ns, "seconds": total, "exact_seconds": exact}
    print("\nprivmob scaling (time vs N)")
    print(f"{'pings':>14} {'end to end s':>13} {'exact stage s':>14} {'peak RSS':>9}")
    for n, t, e in zip(sizes, total, exact, strict=True):
        print(f"{runs[n]['rows_in']:>14,} {t:13.2f} {e:14.2f} {fmt_mb(runs[n]['peak_rss_mb']):>9}")
    for name, ys in (("end to end", total), ("exact stage", exact)):
        a, b, r2 = fit(ns, ys)
        expo = [math.log(ys[i + 1] / ys[i]) / math.log(ns[i + 1] / ns[i])
                for i in range(len(ns) - 1)]
        print(f"  {name:11}: t ≈ {a:.2f} s + {b:.3f} s per M pings (R² = {r2:.4f}); "
              f"log-log slope between sizes: {', '.join(f'{e:.2f}' for e in expo)} "
              f"(1.00 = linear)")
        out[name.replace(" ", "_")] = {"intercept_s": a, "slope_s_per_m_pings": b, "r2": r2,
                                       "loglog_slopes": expo}
    return out


# -- main --------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 10_000_000],
                        help="sizes run by privmob and every peer")
    parser.add_argument("--privmob-only", type=int, nargs="*", default=[100_000_000],
                        help="sizes run by privmob alone (memory ceiling, scaling)")
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--naive-cap", type=int, default=1_000_000,
                        help="in-scope pings through the naive per-ping loop, then extrapolated")
    parser.add_argument("--mechanism", choices=("laplace", "gaussian"), default="laplace")
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--resolution", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=2,
                        help="rounds per peer-compared size; each engine's best round is kept")
    args = parser.parse_args()

    job = job_dict(args.resolution, args.mechanism, args.epsilon)
    os.environ["PRIVMOB_PSEUDONYM_KEY"] = KEY
    plan = pm.plan(pm.JobConfig.from_dict(job))
    keys = public_keys_file(plan, args.resolution)
    py = peers_python() if args.rows and args.peers else None
    print(f"privmob {pm.__version__} (polars {pl.__version__}) · peers in "
          f"{PEERS_VENV.relative_to(REPO)} · {os.cpu_count()} cores · "
          f"load avg {os.getloadavg()[0]:.1f} · {args.mechanism} ε = {args.epsilon} · "
          f"release threshold {plan.release_threshold}", file=sys.stderr)

    results: dict[int, dict[str, Any]] = {}
    privmob_runs: dict[int, dict[str, Any]] = {}
    for rows in [*args.rows, *args.privmob_only]:
        path = dataset(rows, args.seed)
        n = pl.scan_parquet(path).select(pl.len()).collect().item()
        size_gb = path.stat().st_size / 1e9
        engines = ["privmob", *(args.peers if rows in args.rows and py is not None else [])]
        rounds = args.repeat if rows in args.rows else 1
        tries: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
        for k in range(rounds):  # interleaved rounds, so load spikes hit every engine alike
            for engine in engines:
                print(f"[{n:,} pings, {size_gb:.2f} GB] round {k + 1}/{rounds}: {engine} …",
                      file=sys.stderr)
                if engine == "privmob":
                    tries[engine].append(run_privmob(path, job))
                else:
                    assert py is not None
                    tries[engine].append(run_peer(py, engine, path, plan, keys, args.naive_cap))
        res: dict[str, Any] = {"rows": n, "parquet_gb": size_gb}
        for engine, runs in tries.items():  # best of the rounds (least disturbed by load)
            ok = [r for r in runs if "error" not in r] or runs
            best = min(ok, key=lambda r: r.get("seconds", math.inf))
            best["seconds_all_rounds"] = [r.get("seconds") for r in runs]
            res[engine] = best
        results[n] = res
        privmob_runs[n] = res["privmob"]
        if rows in args.rows:
            print_size(n, res)
        else:
            r = res["privmob"]
            verdict = "≤" if r["peak_rss_mb"] <= MEMORY_LIMIT_MB else "> (over the limit)"
            print(f"\nprivmob alone, {n:,} pings ({size_gb:.2f} GB Parquet), load avg "
                  f"{r['load_avg_1m'][0]:.1f}: {r['seconds']:.1f} s end to end "
                  f"({n / r['seconds'] / 1e6:.2f} M pings/s), peak RSS "
                  f"{fmt_mb(r['peak_rss_mb'])} {verdict} {MEMORY_LIMIT_MB / 1024:.0f} GB")
            for name, sec in r["stages_s"].items():
                print(f"    {name:60} {sec:8.2f} s")
        pm_run = res["privmob"]
        print("    peak RSS by privmob stage: " + ", ".join(
            f"{k.split(',')[0].split(' (')[0]} {fmt_mb(v)}"
            for k, v in pm_run["peak_rss_by_stage_mb"].items()))
    scale = scaling(privmob_runs)

    summary = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_end": os.getloadavg()},
        "privmob": pm.__version__, "polars": pl.__version__,
        "job": {**job, "grid": {**job["grid"], "boundary": str(BOUNDARY.relative_to(REPO))}},
        "release_threshold": plan.release_threshold,
        "naive_cap": args.naive_cap, "runs": {str(k): v for k, v in results.items()},
        "scaling": scale, "memory_limit_mb": MEMORY_LIMIT_MB,
    }
    out = HERE / "results" / f"peers-{args.mechanism}-res{args.resolution}-{dt.date.today()}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(f"\nsaved {out.relative_to(REPO)}")


if __name__ == "__main__":
    t = time.perf_counter()
    main()
    print(f"total benchmark time {time.perf_counter() - t:.0f} s", file=sys.stderr)
