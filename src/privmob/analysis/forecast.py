"""Forecasts of released series: post-processing, so they cost no privacy budget.

:func:`forecast` reads *released* tables only — the noisy, suppressed counts a
:class:`~privmob.release.table.ReleasedTable` publishes, never pings or exact counts. Anything
computed from DP outputs alone is post-processing: it spends no budget, and the forecast's
manifest says so (``"privacy_cost": 0``, ``"post_processing_of": [release ids]``).

Method, per key (an H3 cell, or an OD pair)
-------------------------------------------
1. **Series.** The releases' tables are concatenated and laid on the full grid of windows
   the releases cover (consecutive periods; a gap is an error, not a zero). Keys are those
   released at least once.
2. **Suppressed windows are censored, not zero.** A key absent from a release it could
   have been in was *below the release threshold* T after noise. We impute ``T / 2`` —
   the midpoint of what a suppressed noisy count can be ([0, T) for a non-negative count)
   — and mark those windows (``Forecast.history["censored"]``). Zero would pull hotspots'
   forecasts down whenever a quiet hour was withheld; T would push every quiet cell up to
   the threshold. On synthetic Beijing data the true count behind a suppressed window of a
   sometimes-released cell averages ≈ T/3, so T/2 errs on the high side there (see
   ``docs/utility.md``).
3. **Model.** With at least two seasons of history (and the ≥ 10 + 2⌊s/2⌋ windows
   statsmodels' heuristic initialisation needs) each series gets statsmodels'
   ``ETSModel``: additive error, additive seasonality of period ``season`` (default: the
   windows of one day), optionally a damped additive trend, heuristic initial states and
   maximum-likelihood smoothing parameters. Shorter series — or a fit that fails — fall
   back to the **seasonal-naive** forecast (the last value seen at the same position of
   the season), computed for all such keys at once. Series are fitted in a loop; keys
   are the few released cells, and at most ``max_series`` of them are fitted (the ones
   released most often, then largest); the manifest says how many were left out.
4. **Intervals include the DP noise.** With ``z`` the two-sided normal quantile of
   ``level``, σ²_model(h) the model's forecast variance h windows ahead and σ_dp the
   noise standard deviation of the latest release (``noise_std`` in its manifest)::

       lo, hi = forecast ∓ z · sqrt(σ²_model(h) + σ_dp²)

   σ²_model is statsmodels' analytic ETS forecast variance, with its maximum-likelihood σ²
   scaled by n / (n − p) (p = initial states + smoothing parameters fitted on the same n
   windows; in-sample residuals understate out-of-sample error). It is estimated from
   the history *as released*, so it already contains the noise that was in the history;
   σ_dp² adds the noise of the release being forecast, independent of everything before
   it. The interval is therefore meant to cover both the next *released* count and the
   *true* count, and is conservative for the latter. The
   seasonal-naive variance is ``k·D`` (``k`` seasons ahead), with ``D`` the mean squared
   seasonal difference of the history, or — with less than two seasons, where no such
   difference exists — ``D = σ_dp² + 2·max(forecast, 1)``: the noise in the one value
   carried forward plus a Poisson-like day-to-day change of a count.
5. **Clipping.** Counts of persons are never negative: ``forecast`` and ``lo`` are
   clipped at 0 (post-processing).

statsmodels and pandas are imported when :func:`forecast` first fits an ETS model, not
with ``import privmob``; they come with the ``[forecast]`` extra (``pip install
'privmob[forecast]'``). Without it an ETS fit raises
:class:`~privmob.errors.MissingExtraError`; ``method="seasonal_naive"`` needs no extra.
"""

from __future__ import annotations

import datetime as dt
import importlib
import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import polars as pl

from privmob.config import parse_duration
from privmob.errors import ConfigError, InputError, import_extra
from privmob.release.table import ReleasedTable

__all__ = ["MAX_SERIES", "Forecast", "forecast"]

#: Default cap on the number of series fitted one by one (see ``max_series``).
MAX_SERIES = 2_000

_F64 = npt.NDArray[np.float64]
_WINDOW_START = "window_start"


@dataclass(frozen=True, eq=False)
class Forecast:
    """Forecasts drawn from released tables only.

    Attributes
    ----------
    table
        One row per key and future window: the key column(s), ``window_start``
        (Datetime UTC), ``forecast``, ``lo``, ``hi`` (the ``level`` prediction interval,
        DP noise included) and ``method`` (``"ets"``, ``"seasonal_naive"`` or ``"mean"``).
    manifest
        How it was made: ``privacy_cost`` (always 0), ``post_processing_of`` (the release
        ids read), model, interval formula, censoring rule and share, series cap.
    history
        The series the models saw: key column(s), ``window_start``, ``value`` and
        ``censored`` (true where a suppressed window was imputed).
    """

    table: pl.DataFrame
    manifest: Mapping[str, Any] = field(default_factory=dict)
    history: pl.DataFrame = field(default_factory=pl.DataFrame)

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Forecast({m.get('series', '?')} series × {m.get('horizon', '?')} windows, "
                f"methods={m.get('methods')}, privacy_cost={m.get('privacy_cost')})")


@dataclass(frozen=True)
class _Source:
    """The concatenated released rows and what the manifests say about them."""

    table: pl.DataFrame
    window_seconds: int
    grid_start: dt.datetime
    n_windows: int
    noise_std: float
    #: Per window of the grid: the threshold of the release that covered it.
    thresholds: _F64
    release_ids: list[str]
    marking: str | None


def forecast(
    releases: Sequence[ReleasedTable] | pl.DataFrame,
    *,
    horizon: int,
    key: str | Sequence[str] = "cell",
    season: int | None = None,
    level: float = 0.95,
    trend: bool = False,
    max_series: int = MAX_SERIES,
    noise_std: float | None = None,
    threshold: int | None = None,
    window: str | None = None,
    method: Literal["auto", "seasonal_naive"] = "auto",
) -> Forecast:
    """Forecast the next ``horizon`` windows of every released series.

    Parameters
    ----------
    releases
        Consecutive releases (e.g. one per day, in any order) of the same grid, or one
        frame of released rows (``key``, ``window_start``, ``count``). Only released
        data is read: a forecast is post-processing and costs no privacy budget.
    horizon
        Number of windows to forecast after the last window of the history.
    key
        Column(s) naming a series: ``"cell"`` for heatmaps, ``("origin", "destination")``
        for OD flows.
    season
        Windows per season; default the windows of one day (7 for daily windows).
    level
        Coverage of the prediction interval.
    trend
        Add a damped additive trend to the ETS model.
    max_series
        At most this many series are fitted (the keys released most often, then the
        largest); the rest are left out and counted in the manifest.
    noise_std, threshold, window
        Needed only for a frame, which carries no manifest: the noise standard deviation
        and release threshold of the releases it came from, and the window length
        (``"1h"``). A frame's grid runs from its first to its last ``window_start``.
    method
        ``"auto"``: ETS with two seasons of history or more, else seasonal-naive;
        ``"seasonal_naive"``: the baseline for every series.

    Returns
    -------
    Forecast
        ``table`` (key, window_start, forecast, lo, hi, method), ``manifest`` and
        ``history``. See the module docstring for the method and the interval formula.

    Examples
    --------
    >>> import datetime as dt, polars as pl
    >>> start = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    >>> rows = pl.DataFrame({"cell": ["8731aa52effffff"] * 48,
    ...                      "window_start": [start + dt.timedelta(hours=h) for h in range(48)],
    ...                      "count": [100 + 50 * (h % 24 >= 8) for h in range(48)]})
    >>> fc = forecast(rows, horizon=24, noise_std=10.0, threshold=40, window="1h")
    >>> fc.manifest["privacy_cost"], fc.table.height, fc.table["method"][0]
    (0, 24, 'ets')
    """
    keys = (key,) if isinstance(key, str) else tuple(key)
    if not keys:
        raise ConfigError("forecast: key must name at least one column, e.g. key='cell'")
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ConfigError(f"forecast: horizon = {horizon!r} must be a positive number of windows")
    if not 0.5 <= level < 1:
        raise ConfigError(f"forecast: level = {level!r} must be in [0.5, 1), e.g. 0.95")
    if method not in ("auto", "seasonal_naive"):
        raise ConfigError(f"forecast: method = {method!r}; use 'auto' or 'seasonal_naive'")
    if isinstance(max_series, bool) or not isinstance(max_series, int) or max_series < 1:
        raise ConfigError(f"forecast: max_series = {max_series!r} must be a positive integer")
    src = _gather(releases, keys, noise_std=noise_std, threshold=threshold, window=window)
    per_day = 86_400 // src.window_seconds
    s = season if season is not None else (per_day if per_day > 1 else 7)
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise ConfigError(f"forecast: season = {season!r} must be a positive number of windows")

    # Keys: those released at least once; the most often released (then largest) first.
    ranked = (
        src.table.group_by(keys)
        .agg(pl.len().alias("_n"), pl.col("count").sum().alias("_mass"))
        .sort(["_n", "_mass", *keys], descending=[True, True] + [False] * len(keys))
    )
    dropped = max(0, ranked.height - max_series)
    key_frame = ranked.head(max_series).select(keys).with_row_index("_k")
    y, censored = _matrix(src, key_frame, keys)

    n_keys, n = y.shape
    z = _z(level)
    fc = np.zeros((n_keys, horizon))
    var = np.zeros((n_keys, horizon))
    used = np.full(n_keys, "seasonal_naive", dtype=object)
    need_ets = method == "auto" and n >= max(2 * s, 10 + 2 * (s // 2)) and s > 1
    fallback_errors = 0
    if need_ets and n_keys:
        sm, pd = _statsmodels()
        for i in range(n_keys):
            try:
                fc[i], var[i] = _ets(sm, pd, y[i], s, horizon, trend)
                used[i] = "ets"
            except (ValueError, np.linalg.LinAlgError, FloatingPointError):
                fallback_errors += 1
    naive = used != "ets"
    if naive.any():
        f_sn, v_sn, label = _seasonal_naive(y[naive], s, horizon, src.noise_std)
        fc[naive], var[naive] = f_sn, v_sn
        used[naive] = label

    sd = np.sqrt(np.maximum(var, 0.0) + src.noise_std**2)
    point = np.maximum(fc, 0.0)
    lo = np.maximum(fc - z * sd, 0.0)
    hi = np.maximum(fc + z * sd, 0.0)
    table = _future_table(src, key_frame, keys, point, lo, hi, used, horizon)
    history = _history_table(src, key_frame, keys, y, censored)
    methods = {str(m): int((used == m).sum()) for m in sorted(set(used.tolist()))}
    suppressed = int(censored.sum())
    manifest: dict[str, Any] = {
        "kind": "forecast",
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "privacy_cost": 0,
        "post_processing_of": src.release_ids,
        "privacy_note": (
            "computed from released tables only (post-processing of differentially private "
            "outputs): it spends no privacy budget and reads no pings or exact counts"
        ),
        "marking": src.marking,
        "key": list(keys),
        "horizon": horizon,
        "window": _duration_label(src.window_seconds),
        "season": s,
        "level": level,
        "history_start": src.grid_start.isoformat(),
        "history_windows": n,
        "series": n_keys,
        "series_cap": max_series,
        "series_left_out": dropped,
        "methods": methods,
        "ets_fallbacks": fallback_errors,
        "model": (
            "statsmodels ETSModel(error='add', "
            + ("trend='add', damped_trend=True, " if trend else "trend=None, ")
            + f"seasonal='add', seasonal_periods={s}, initialization_method='heuristic'); "
            "seasonal-naive below two seasons of history"
        ),
        "interval": "forecast ± z·sqrt(model_variance(h) + noise_std²); forecast and lo clipped at 0",
        "noise_std": src.noise_std,
        "censored": {
            "rule": "a suppressed window of a released key is below the threshold T: imputed T/2",
            "windows": suppressed,
            "share": round(suppressed / y.size, 6) if y.size else 0.0,
        },
        "statsmodels_version": _statsmodels_version() if "ets" in methods else None,
    }
    return Forecast(table=table, manifest=manifest, history=history)


# -- gathering the released series ---------------------------------------------------------
def _gather(releases: Sequence[ReleasedTable] | pl.DataFrame, keys: tuple[str, ...], *,
            noise_std: float | None, threshold: int | None, window: str | None) -> _Source:
    if isinstance(releases, pl.DataFrame):
        return _gather_frame(releases, keys, noise_std=noise_std, threshold=threshold, window=window)
    items = list(releases)
    if not items:
        raise InputError("forecast needs at least one release")
    for r in items:
        if not isinstance(r, ReleasedTable):
            raise InputError(
                f"forecast reads ReleasedTable objects or one frame of released rows, "
                f"not {type(r).__name__}"
            )
    spans = []
    for r in items:
        m = r.manifest
        missing = [f for f in ("window", "windows", "period_start", "noise_std",
                               "release_threshold") if m.get(f) is None]
        if missing:
            raise InputError(f"release {m.get('release_id')} has no {', '.join(missing)} in its manifest")
        start = dt.datetime.fromisoformat(str(m["period_start"])).astimezone(dt.UTC)
        spans.append((start, int(m["windows"]), parse_duration(str(m["window"])), r))
    spans.sort(key=lambda t: t[0])
    seconds = {w for _, _, w, _ in spans}
    if len(seconds) > 1:
        raise InputError(f"releases have different windows ({sorted(seconds)} s); "
                         "forecast one grid at a time")
    (window_seconds,) = seconds
    resolutions = {str(r.manifest.get("resolution")) for r in items}
    if len(resolutions) > 1:
        raise InputError(f"releases have different H3 resolutions {sorted(resolutions)}; "
                         "forecast one resolution at a time")
    grid_start = spans[0][0]
    thresholds: list[float] = []
    expected = grid_start
    for start, windows, _, r in spans:
        if start != expected:
            what = "overlap" if start < expected else "leave a gap"
            raise InputError(
                f"releases {what} at {expected.isoformat()} (next starts {start.isoformat()}); "
                "forecast needs consecutive periods, each released once"
            )
        thresholds.extend([float(r.manifest["release_threshold"])] * windows)
        expected = start + dt.timedelta(seconds=windows * window_seconds)
    frames = []
    for r in items:
        missing_cols = [c for c in (*keys, _WINDOW_START, "count") if c not in r.table.columns]
        if missing_cols:
            raise InputError(f"release {r.manifest.get('release_id')} has no column(s) {missing_cols}")
        frames.append(r.table.select(*keys, _WINDOW_START, pl.col("count").cast(pl.Float64)))
    table = pl.concat(frames, how="vertical_relaxed")
    markings = {str(r.manifest["marking"]) for r in items if r.manifest.get("marking")}
    return _Source(
        table=table,
        window_seconds=window_seconds,
        grid_start=grid_start,
        n_windows=len(thresholds),
        noise_std=float(spans[-1][3].manifest["noise_std"]),
        thresholds=np.asarray(thresholds, dtype=np.float64),
        release_ids=[str(r.manifest.get("release_id")) for _, _, _, r in spans],
        marking=next(iter(markings)) if len(markings) == 1 else None,
    )


def _gather_frame(frame: pl.DataFrame, keys: tuple[str, ...], *, noise_std: float | None,
                  threshold: int | None, window: str | None) -> _Source:
    if noise_std is None or threshold is None or window is None:
        raise ConfigError(
            "forecast of a plain frame needs noise_std=, threshold= and window= (a frame carries "
            "no manifest); pass the ReleasedTable objects instead to read them from their manifests"
        )
    if not (math.isfinite(noise_std) and noise_std >= 0):
        raise ConfigError(f"forecast: noise_std = {noise_std!r} must be a finite number ≥ 0")
    missing = [c for c in (*keys, _WINDOW_START, "count") if c not in frame.columns]
    if missing:
        raise InputError(f"forecast: the frame has no column(s) {missing}")
    window_seconds = parse_duration(window)
    table = frame.select(*keys, pl.col(_WINDOW_START).cast(pl.Datetime("us", "UTC")),
                         pl.col("count").cast(pl.Float64))
    if table.height == 0:
        raise InputError("forecast: the frame has no rows")
    first, last = table[_WINDOW_START].min(), table[_WINDOW_START].max()
    assert isinstance(first, dt.datetime)
    assert isinstance(last, dt.datetime)
    n_windows = int((last - first).total_seconds() // window_seconds) + 1
    ids = frame["release_id"].unique().sort().to_list() if "release_id" in frame.columns else []
    return _Source(
        table=table,
        window_seconds=window_seconds,
        grid_start=first,
        n_windows=n_windows,
        noise_std=float(noise_std),
        thresholds=np.full(n_windows, float(threshold)),
        release_ids=[str(i) for i in ids],
        marking=None,
    )


def _matrix(src: _Source, key_frame: pl.DataFrame,
            keys: tuple[str, ...]) -> tuple[_F64, npt.NDArray[np.bool_]]:
    """Keys × windows: released counts, suppressed windows imputed at T/2 (and marked)."""
    start_us = int(src.grid_start.timestamp() * 1_000_000)
    step_us = src.window_seconds * 1_000_000
    rows = src.table.join(key_frame, on=list(keys), how="inner").with_columns(
        ((pl.col(_WINDOW_START).dt.epoch("us") - start_us) // step_us).alias("_w")
    )
    off_grid = rows.filter((pl.col("_w") < 0) | (pl.col("_w") >= src.n_windows)
                           | ((pl.col(_WINDOW_START).dt.epoch("us") - start_us) % step_us != 0))
    if off_grid.height:
        raise InputError(
            f"{off_grid.height} released row(s) fall outside the releases' window grid "
            f"(first: {off_grid[_WINDOW_START][0]}); were the tables edited?"
        )
    dupes = rows.group_by("_k", "_w").len().filter(pl.col("len") > 1)
    if dupes.height:
        raise InputError(f"{dupes.height} key-window(s) appear more than once; "
                         "pass each period's release once")
    n_keys = key_frame.height
    y = np.broadcast_to(src.thresholds / 2, (n_keys, src.n_windows)).copy()
    censored = np.ones((n_keys, src.n_windows), dtype=np.bool_)
    k = rows["_k"].to_numpy().astype(np.int64)
    w = rows["_w"].to_numpy().astype(np.int64)
    y[k, w] = rows["count"].to_numpy()
    censored[k, w] = False
    return y, censored


# -- models ---------------------------------------------------------------------------------
def _statsmodels() -> tuple[Any, Any]:
    """statsmodels' ETS module and pandas: the ``[forecast]`` extra, imported on first use."""
    ets = import_extra("statsmodels.tsa.exponential_smoothing.ets", extra="forecast",
                       purpose="privmob.forecast (ETS models)", package="statsmodels")
    pd = import_extra("pandas", extra="forecast", purpose="privmob.forecast (ETS models)")
    return ets, pd


def _statsmodels_version() -> str:
    return str(importlib.import_module("statsmodels").__version__)


def _ets(ets: Any, pd: Any, y: _F64, season: int, horizon: int, trend: bool) -> tuple[_F64, _F64]:
    """ETS(A,N,A) (or A,Ad,A) forecast and its analytic variance, h = 1..horizon."""
    if np.ptp(y) == 0:  # a flat series (e.g. always suppressed): nothing to smooth
        raise ValueError("constant series")
    model = ets.ETSModel(
        pd.Series(y), error="add", trend="add" if trend else None, damped_trend=trend,
        seasonal="add", seasonal_periods=season, initialization_method="heuristic",
    )
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # convergence chatter; a bad fit is caught below
        fit = model.fit(disp=False)
        pred = fit.get_prediction(start=y.size, end=y.size + horizon - 1)
    mean = np.asarray(pred.predicted_mean, dtype=np.float64)
    # statsmodels' σ² is the maximum-likelihood one (residual sum of squares / n), from
    # residuals of states fitted to those same windows: scale it to n / (n − p), p the
    # initial states (level, s − 1 free seasonals, trend) plus the smoothing parameters,
    # so that it estimates out-of-sample error rather than the in-sample fit.
    p = season + (1 if trend else 0) + len(np.atleast_1d(fit.params))
    var = np.asarray(pred.forecast_variance, dtype=np.float64) * y.size / max(y.size - p, 1)
    if mean.shape != (horizon,) or not (np.isfinite(mean).all() and np.isfinite(var).all()):
        raise ValueError("ETS fit produced no finite forecast")
    return mean, var


def _seasonal_naive(y: _F64, season: int, horizon: int,
                    noise_std: float) -> tuple[_F64, _F64, str]:
    """Vectorised over keys: the last value at the same seasonal position, and its variance."""
    n = y.shape[1]
    h = np.arange(1, horizon + 1)
    if n < season:  # not even one season: the mean level, flat
        f = np.repeat(y.mean(axis=1, keepdims=True), horizon, axis=1)
        d = noise_std**2 + 2 * np.maximum(f, 1.0)
        return f, d, "mean"
    k = (h - 1) // season + 1  # seasons ahead
    idx = n - season + (h - 1) % season
    f = y[:, idx]
    if n >= 2 * season:
        diff = y[:, season:] - y[:, :-season]
        d = np.repeat((diff**2).mean(axis=1, keepdims=True), horizon, axis=1)
    else:
        d = noise_std**2 + 2 * np.maximum(f, 1.0)
    return f, d * k[None, :], "seasonal_naive"


def _z(level: float) -> float:
    return statistics.NormalDist().inv_cdf(0.5 + level / 2)


# -- output tables --------------------------------------------------------------------------
def _future_table(src: _Source, key_frame: pl.DataFrame, keys: tuple[str, ...], point: _F64,
                  lo: _F64, hi: _F64, method: npt.NDArray[Any], horizon: int) -> pl.DataFrame:
    n_keys = key_frame.height
    last = src.grid_start + dt.timedelta(seconds=(src.n_windows - 1) * src.window_seconds)
    starts = [last + dt.timedelta(seconds=(i + 1) * src.window_seconds) for i in range(horizon)]
    frame = pl.DataFrame({
        "_k": np.repeat(np.arange(n_keys, dtype=np.uint32), horizon),
        _WINDOW_START: pl.Series(starts * n_keys, dtype=pl.Datetime("us", "UTC")),
        "forecast": point.reshape(-1),
        "lo": lo.reshape(-1),
        "hi": hi.reshape(-1),
        "method": pl.Series(np.repeat(method, horizon).tolist(), dtype=pl.String),
    })
    return (frame.join(key_frame, on="_k", how="left")
            .select(*keys, _WINDOW_START, "forecast", "lo", "hi", "method")
            .sort(*keys, _WINDOW_START))


def _history_table(src: _Source, key_frame: pl.DataFrame, keys: tuple[str, ...], y: _F64,
                   censored: npt.NDArray[np.bool_]) -> pl.DataFrame:
    n_keys, n = y.shape
    starts = pl.datetime_range(
        src.grid_start, src.grid_start + dt.timedelta(seconds=(n - 1) * src.window_seconds),
        dt.timedelta(seconds=src.window_seconds), eager=True, time_zone="UTC",
    ).cast(pl.Datetime("us", "UTC"))
    frame = pl.DataFrame({
        "_k": np.repeat(np.arange(n_keys, dtype=np.uint32), n),
        _WINDOW_START: pl.concat([starts] * n_keys) if n_keys else starts.clear(),
        "value": y.reshape(-1),
        "censored": censored.reshape(-1),
    })
    return (frame.join(key_frame, on="_k", how="left")
            .select(*keys, _WINDOW_START, "value", "censored")
            .sort(*keys, _WINDOW_START))


def _duration_label(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
