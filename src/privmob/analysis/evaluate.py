"""Utility, measured: how far a release is from the truth, in simulations.

For **simulations only** — synthetic data, or a test bed where the operator already holds
the truth. :func:`truth_counts` returns *exact* counts, the one thing privmob otherwise
never hands out (DESIGN §1); it exists so that parameters can be chosen with numbers
(``benchmarks/bench_utility.py``, ``docs/utility.md``). Never publish its output, and
never tune a real release's parameters on that release's own truth: that choice would
itself depend on the private data.

Metrics of :func:`evaluate` (``truth`` and the release joined on key and window; a key
missing from the release was suppressed)
-----------------------------------------------------------------------------------
``emd_km`` (cells)
    Earth mover's distance between the true and the released heatmap of each window, on
    H3 cell centroids with great-circle (haversine) cost in km, by POT's exact solver
    (``ot.emd2``; POT is the ``[eval]`` extra, ``pip install 'privmob[eval]'``, imported
    on first use: without it cells raise :class:`~privmob.errors.MissingExtraError`).
    Both heatmaps are normalised to mass 1 first, so it measures *where* the mass sits
    (how far, on average, released mass must move to match the truth), not how much.
    Averaged over windows weighted by true mass; a window whose release is empty has no
    EMD and is left out (``emd_mass_share`` says how much true mass was covered).
``jsd``
    Jensen–Shannon divergence (base 2, in [0, 1]) between the normalised true and
    released distributions over keys, per window, true-mass-weighted; a window with true
    mass and an empty release counts 1. For OD flows this is the headline metric; for
    cells it complements the EMD (JSD ignores distance: a hotspot one cell off is as wrong
    as one across town).
``median_relative_error``
    Median over released rows of ``|released − true| / max(true, 1)``.
``mae_released``
    Mean absolute error over released rows.
``suppressed_mass_share``
    Share of all true mass (Σ true counts) in keys that were not released.
``spurious_rate``
    Share of released rows whose true count is below ``min_count`` (the policy floor):
    cells published though the truth would not have qualified.
``topk_recall``
    Per window, the share of the ``k`` truly largest keys that are among the ``k``
    largest released ones; averaged over windows with any true mass.
``mass_ratio``
    Σ released / Σ true.
``released``, ``true_keys``
    Number of released rows and of true non-zero key-windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import h3
import numpy as np
import numpy.typing as npt
import polars as pl
import polars_h3 as plh3

from privmob.config import JobConfig
from privmob.errors import InputError, import_extra
from privmob.release.table import ReleasedTable

__all__ = ["evaluate", "haversine_km", "truth_counts"]

_F64 = npt.NDArray[np.float64]
_EARTH_KM = 6371.0088
_WS = "window_start"


def evaluate(release: ReleasedTable | pl.DataFrame, truth: pl.DataFrame, *, k: int = 10,
             min_count: int | None = None) -> dict[str, float]:
    """Compare a release with the truth it estimates.

    Parameters
    ----------
    release
        A :class:`~privmob.release.table.ReleasedTable` or its table.
    truth
        Exact counts: ``cell, window_start, count`` (heatmaps) or ``origin, destination,
        window_start, count`` (OD flows), e.g. from :func:`truth_counts`.
    k
        Hotspots per window for ``topk_recall``.
    min_count
        Policy floor for ``spurious_rate``; default the release manifest's ``min_count``.

    Returns
    -------
    dict
        The metrics described in the module docstring (``emd_km`` and ``emd_mass_share``
        for cell heatmaps only).

    Examples
    --------
    >>> import datetime as dt, polars as pl
    >>> t = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    >>> truth = pl.DataFrame({"cell": ["8731aa52effffff", "8731aa541ffffff"],
    ...                       "window_start": [t, t], "count": [100, 30]})
    >>> m = evaluate(truth, truth, min_count=10)
    >>> m["emd_km"], m["jsd"], m["topk_recall"], m["suppressed_mass_share"]
    (0.0, 0.0, 1.0, 0.0)
    """
    table = release.table if isinstance(release, ReleasedTable) else release
    if min_count is None:
        if not isinstance(release, ReleasedTable) or release.manifest.get("min_count") is None:
            raise InputError("evaluate: pass min_count= (a plain frame has no manifest to read it from)")
        min_count = int(release.manifest["min_count"])
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"evaluate: k = {k!r} must be a positive integer")
    keys = _key_columns(truth)
    for name, frame in (("release", table), ("truth", truth)):
        missing = [c for c in (*keys, _WS, "count") if c not in frame.columns]
        if missing:
            raise InputError(f"evaluate: the {name} has no column(s) {missing}")
    true = _prepare(truth, keys, "true")
    rel = _prepare(table, keys, "released").with_columns(pl.lit(True).alias("_in_rel"))
    joined = true.join(rel, on=[*keys, _WS], how="full", coalesce=True).with_columns(
        pl.col("true").fill_null(0.0), pl.col("released").fill_null(0.0),
        pl.col("_in_rel").fill_null(False),
    )
    out: dict[str, float] = {}
    released_rows = joined.filter(pl.col("_in_rel"))
    total_true = float(joined["true"].sum())
    total_rel = float(released_rows["released"].sum())
    out["released"] = float(released_rows.height)
    out["true_keys"] = float(joined.filter(pl.col("true") > 0).height)
    if released_rows.height:
        r, t = released_rows["released"].to_numpy(), released_rows["true"].to_numpy()
        out["median_relative_error"] = float(np.median(np.abs(r - t) / np.maximum(t, 1.0)))
        out["mae_released"] = float(np.mean(np.abs(r - t)))
        out["spurious_rate"] = float(np.mean(t < min_count))
    else:
        out["median_relative_error"] = math.nan
        out["mae_released"] = math.nan
        out["spurious_rate"] = 0.0
    suppressed_true = float(joined.filter(~pl.col("_in_rel"))["true"].sum())
    out["suppressed_mass_share"] = suppressed_true / total_true if total_true else 0.0
    out["mass_ratio"] = total_rel / total_true if total_true else math.nan

    jsd_sum = emd_sum = emd_w = recall_sum = 0.0
    recall_n = 0
    with_emd = keys == ("cell",)
    centroids = _centroids(joined["cell"]) if with_emd else {}
    for (_ws,), part in joined.partition_by(_WS, as_dict=True, maintain_order=False).items():
        t = part["true"].to_numpy()
        r = np.where(part["_in_rel"].to_numpy(), part["released"].to_numpy(), 0.0)
        r = np.maximum(r, 0.0)
        mass = float(t.sum())
        if mass <= 0:
            continue
        jsd_sum += mass * (jensen_shannon(t, r) if r.sum() > 0 else 1.0)
        recall_sum += _recall(t, r, part["_in_rel"].to_numpy(), k)
        recall_n += 1
        if with_emd and r.sum() > 0:
            emd_sum += mass * _emd_km(part["cell"].to_list(), t, r, centroids)
            emd_w += mass
    out["jsd"] = jsd_sum / total_true if total_true else math.nan
    out["topk_recall"] = recall_sum / recall_n if recall_n else math.nan
    if with_emd:
        out["emd_km"] = emd_sum / emd_w if emd_w else math.nan
        out["emd_mass_share"] = emd_w / total_true if total_true else math.nan
    return out


def jensen_shannon(p: Sequence[float] | _F64, q: Sequence[float] | _F64) -> float:
    """Jensen–Shannon divergence (base 2, in [0, 1]) of two non-negative mass vectors,
    each normalised to sum 1 first."""
    pa = np.asarray(p, dtype=np.float64)
    qa = np.asarray(q, dtype=np.float64)
    pa, qa = pa / pa.sum(), qa / qa.sum()
    m = (pa + qa) / 2

    def kl(a: _F64) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return max(0.0, min(1.0, (kl(pa) + kl(qa)) / 2))


def haversine_km(lat1: _F64, lng1: _F64, lat2: _F64, lng2: _F64) -> _F64:
    """Great-circle distance in km (broadcasting over the inputs), degrees in."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dlat, dlng = p2 - p1, np.radians(lng2) - np.radians(lng1)
    a = np.sin(dlat / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlng / 2) ** 2
    out: _F64 = 2 * _EARTH_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return out


def truth_counts(pings: Any, config: JobConfig, *, bounded: bool,
                 key: bytes | str | None = None) -> pl.DataFrame:
    """Exact distinct-person counts per (cell, window) — for simulations only.

    Parameters
    ----------
    pings
        What :meth:`privmob.Plan.release` takes: a path, a frame or a pings handle.
    config
        The job whose release is evaluated (period, grid, scope, bounds, boundary).
    bounded
        True: the counts after privmob's contribution bounding, i.e. exactly what the
        mechanism noised — the error against them is noise plus suppression only. False:
        distinct persons per (cell, window) with no bounding — what an analyst wants to
        know; the error against them includes the bounding loss too.
    key
        Pseudonymisation key for the bounded truth (bounding breaks ties by a keyed
        value); default the job's key file or environment variable, as the release used.

    Returns
    -------
    polars.DataFrame
        ``cell`` (H3 string), ``window_start`` (Datetime UTC), ``count`` (Int64); only
        non-zero counts, only cells of the job's boundary when it has one. **Exact,
        private data**: never publish it.
    """
    from privmob.backends import PolarsBackend
    from privmob.pipeline.plan import plan
    from privmob.stages import index, scope
    from privmob.stages.pseudonymise import Pseudonymiser, load_key

    p = plan(config)
    engine = PolarsBackend()
    if bounded:
        raw = load_key(config.job.key_file, config.job.key_env) if key is None else (
            key.encode() if isinstance(key, str) else key)
        counts = engine.exact_cells(pings, config, Pseudonymiser(raw, p.linkage_label),
                                    p.key_cells).counts
    else:
        start = int(config.period_start.timestamp())
        counts = (
            engine.validated(pings, config)  # same ingest/validate/scope as a release
            .filter(pl.col("status") == scope.OK)
            .select("person_id", index.window(start, config.grid.window_seconds).alias("window"),
                    index.cell(config.grid.resolution).alias("cell"))
            .group_by("cell", "window")
            .agg(pl.col("person_id").n_unique().cast(pl.Int64).alias("count"))
            .collect(engine="streaming")
        )
        if p.key_cells is not None:
            keys = pl.DataFrame({"cell": pl.Series(p.key_cells, dtype=pl.UInt64)})
            counts = counts.join(keys, on="cell", how="semi")
    start_us = int(config.period_start.timestamp()) * 1_000_000
    step_us = config.grid.window_seconds * 1_000_000
    return counts.select(
        plh3.int_to_str("cell").alias("cell"),
        (pl.lit(start_us) + pl.col("window").cast(pl.Int64) * step_us)
        .cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias(_WS),
        pl.col("count").cast(pl.Int64),
    ).sort(_WS, "cell")


# -- helpers ----------------------------------------------------------------------------------
def _key_columns(truth: pl.DataFrame) -> tuple[str, ...]:
    if {"origin", "destination"} <= set(truth.columns):
        return ("origin", "destination")
    if "cell" in truth.columns:
        return ("cell",)
    raise InputError("evaluate: the truth needs a cell column, or origin and destination columns")


def _prepare(frame: pl.DataFrame, keys: tuple[str, ...], name: str) -> pl.DataFrame:
    out = frame.select(*keys, pl.col(_WS).cast(pl.Datetime("us", "UTC")),
                       pl.col("count").cast(pl.Float64).alias(name))
    dupes = out.group_by(*keys, _WS).len().filter(pl.col("len") > 1).height
    if dupes:
        raise InputError(f"evaluate: {dupes} key-window(s) appear more than once in the {name} frame")
    return out


def _recall(t: _F64, r: _F64, in_release: npt.NDArray[np.bool_], k: int) -> float:
    kk = min(k, int((t > 0).sum()))
    if kk == 0:
        return math.nan
    # Stable order: ties broken by position, which is the same for both rankings.
    top_true = set(np.argsort(-t, kind="stable")[:kk].tolist())
    released_idx = np.flatnonzero(in_release)
    top_rel = set(released_idx[np.argsort(-r[released_idx], kind="stable")[:kk]].tolist())
    return len(top_true & top_rel) / kk


def _centroids(cells: pl.Series) -> dict[str, tuple[float, float]]:
    return {c: h3.cell_to_latlng(c) for c in cells.unique().to_list()}


def _emd_km(cells: list[str], t: _F64, r: _F64, centroids: dict[str, tuple[float, float]]) -> float:
    ot = _ot()
    ti, ri = np.flatnonzero(t > 0), np.flatnonzero(r > 0)
    ll = np.array([centroids[c] for c in cells], dtype=np.float64)
    cost = haversine_km(ll[ti, 0][:, None], ll[ti, 1][:, None], ll[ri, 0][None, :], ll[ri, 1][None, :])
    a = t[ti] / t[ti].sum()
    b = r[ri] / r[ri].sum()
    return float(ot.emd2(a, b, np.ascontiguousarray(cost), numItermax=10_000_000))


def _ot() -> Any:
    """POT, the ``[eval]`` extra, imported on first use (only cells need an EMD)."""
    return import_extra("ot", extra="eval", purpose="privmob.evaluate (earth mover's distance)",
                        package="pot")
