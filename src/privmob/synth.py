"""Synthetic city traces for samples, tests and benchmarks.

The privacy pipeline must be exercised on data that *behaves* like real location
records — people sleep at home, commute to a handful of business districts, run
errands, and their phones report irregularly with GPS jitter, while a few dedicated
loggers report every few seconds — without ever touching a real person's trace. This
module draws such traces from a simple, fully vectorised activity model.

Nothing here is derived from a real data set (in particular not from GeoLife): the
places are approximate public landmarks (business districts, large residential areas)
and every movement is drawn from the seeded random generator below. Because the data is
synthetic, ``numpy.random`` is the right tool; privacy noise is drawn elsewhere
(``privmob.privacy.mechanism``, OpenDP only).

Model, per person and local day (the city's time zone)
-----------------------------------------------------
* a home (clustered in residential areas), a workplace (80% in a business district
  chosen by a gravity model, weight ``exp(-km / 8)`` from home; 20% near home) and three
  errand places (two near home, one in a nearby district or residential centre);
* workers (75%): home → work around 07:45 ± 0:36, work until ~18:00 ± 0:48, then an
  errand (40%) and home; non-workers: a morning errand, back home, an afternoon errand
  (60%); 10% of person-days are spent entirely at home;
* moves follow a slightly bent straight line at 25–45 km/h (×1.25 detour factor) plus
  3–15 min access time; every fix gets 10–30 m Gaussian jitter (per person);
* ordinary persons report as a Poisson process (exponential gaps) at a per-person rate
  whose mean is ``1 / ping_interval_s``; dense loggers additionally report every 1–5 s
  for a 1–4 h stretch that starts just before they leave home.
"""

from __future__ import annotations

import datetime as dt
import gzip
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import polars as pl

__all__ = [
    "BAD_KINDS",
    "CITIES",
    "DEFAULT_GROUP_MIX",
    "OUT_OF_SCOPE_GROUPS",
    "City",
    "expected_rows_per_person_day",
    "generate",
    "generate_to_parquet",
    "write",
]

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
_B = npt.NDArray[np.bool_]

_Place = tuple[float, float, float]
"""(lat, lng, spread_km): centre of an area and the std-dev of a Gaussian around it."""


@dataclass(frozen=True)
class City:
    """A city the generator can populate.

    Parameters
    ----------
    name
        Key in :data:`CITIES`.
    timezone
        IANA zone; schedules (night at home, commute at 8 h, ...) are in this local time.
    center
        ``(lat, lng)`` of the city centre, WGS-84.
    bbox
        ``(lat_min, lng_min, lat_max, lng_max)``, WGS-84 — note the latitude-first order,
        like every other coordinate pair here. Every clean generated fix lies inside it.
    residential
        ``(lat, lng, spread_km)`` areas where homes cluster (chosen uniformly).
    business
        ``(lat, lng, spread_km)`` districts where most workplaces are; they become the
        hotspots of a daytime heatmap.
    """

    name: str
    timezone: str
    center: tuple[float, float]
    bbox: tuple[float, float, float, float]
    residential: list[_Place] = field(default_factory=list)
    business: list[_Place] = field(default_factory=list)

    def __post_init__(self) -> None:
        lat_min, lng_min, lat_max, lng_max = self.bbox
        if not (lat_min < lat_max and lng_min < lng_max):
            raise ValueError(f"City {self.name!r}: bbox must be (lat_min, lng_min, lat_max, lng_max)")
        if not self.residential or not self.business:
            raise ValueError(f"City {self.name!r}: needs residential and business areas")
        ZoneInfo(self.timezone)  # fail early on an unknown zone


# Approximate public landmarks (to ~1 km); WGS-84 vs GCJ-02 (~0.5 km) does not matter
# at this precision. Bounding boxes are those of the administrative outlines in
# /work/shared/data/boundaries (WGS-84).
CITIES: dict[str, City] = {
    "beijing": City(
        name="beijing",
        timezone="Asia/Shanghai",
        center=(39.9042, 116.4074),
        bbox=(39.4415, 115.4168, 41.0592, 117.5081),
        residential=[
            (40.070, 116.420, 2.0),  # Tiantongyuan
            (40.075, 116.335, 2.0),  # Huilongguan
            (40.000, 116.475, 1.5),  # Wangjing
            (39.890, 116.660, 3.0),  # Tongzhou (Liyuan / Beiguan)
            (39.850, 116.370, 2.5),  # Fengtai (Majiabao / Caoqiao)
            (39.905, 116.200, 2.0),  # Shijingshan (Gucheng / Lugu)
            (39.935, 116.590, 2.0),  # Chaoyang east (Changying / Dongba)
            (39.740, 116.335, 2.5),  # Daxing (Huangcun)
            (40.025, 116.335, 1.8),  # Haidian (Wudaokou / Qinghe)
            (39.925, 116.395, 2.0),  # old city (Dongcheng / Xicheng)
            (39.875, 116.465, 1.8),  # Chaoyang south (Jinsong / Shilihe)
            (40.130, 116.655, 2.5),  # Shunyi
            (40.220, 116.235, 2.0),  # Changping town
            (39.730, 116.140, 2.0),  # Fangshan (Liangxiang)
        ],
        business=[
            (39.908, 116.460, 0.8),  # Guomao / CBD
            (39.983, 116.316, 0.9),  # Zhongguancun
            (39.915, 116.357, 0.5),  # Financial Street
            (39.996, 116.481, 0.8),  # Wangjing
            (39.795, 116.506, 1.5),  # Yizhuang (BDA)
            (39.909, 116.728, 1.5),  # Tongzhou sub-centre
            (40.045, 116.300, 1.2),  # Shangdi / Xi'erqi
            (39.868, 116.316, 0.8),  # Lize
            (39.935, 116.445, 0.8),  # Sanlitun / Dongzhimen
            (40.080, 116.590, 1.5),  # Capital Airport
        ],
    ),
    "cangzhou": City(
        name="cangzhou",
        timezone="Asia/Shanghai",
        center=(38.304, 116.839),
        bbox=(37.4724, 115.6993, 38.9474, 117.9520),
        residential=[
            (38.300, 116.830, 2.0),  # Yunhe district
            (38.315, 116.870, 2.0),  # Xinhua district
            (38.250, 116.880, 1.5),  # south of the centre
            (38.710, 116.100, 2.0),  # Renqiu
            (38.370, 117.330, 2.0),  # Huanghua
            (38.080, 116.570, 1.5),  # Botou
            (38.445, 116.090, 1.5),  # Hejian
        ],
        business=[
            (38.305, 116.850, 1.0),  # city centre
            (38.345, 116.890, 1.5),  # development zone
            (38.320, 117.830, 1.5),  # Bohai New Area / Huanghua port
            (38.705, 116.095, 1.0),  # Renqiu
            (38.075, 116.565, 0.8),  # Botou
        ],
    ),
}

DEFAULT_GROUP_MIX: Mapping[str, float] = {
    "confirmed": 0.1,
    "suspected": 0.2,
    "close_contact": 0.7,
}
"""Share of each key group among in-scope persons (normalised if it does not sum to 1)."""

OUT_OF_SCOPE_GROUPS: tuple[str, ...] = ("general", "resident")
"""Group labels given (in equal shares) to the ``out_of_scope_fraction`` of persons."""

BAD_KINDS: tuple[str, ...] = (
    "lat_out_of_range",  # lat = "400.17"
    "lng_out_of_range",  # lng = "181"
    "non_numeric_coordinate",  # lat or lng = "abc"
    "empty_person_id",  # person_id = ""
    "null_person_id",  # person_id = null
    "unparseable_ts",  # ts = "not-a-time"
    "nan_coordinate",  # lat = lng = "NaN"
)
"""Kinds of malformed rows injected with ``bad_fraction > 0``, in round-robin order."""

_KM_PER_DEG = 111.32
_H = 3600.0
_WORKER_SHARE = 0.75
_HOME_DAY_SHARE = 0.10
_LOCAL_JOB_SHARE = 0.20
_WORK_SCALE_KM = 8.0  # gravity model: weight of a district falls by e every 8 km
_DENSE_GAP_S = (1.0, 5.0)
_DENSE_HOURS = (1.0, 4.0)
_N_SEG = 9  # stay home, move, stay A, move, stay B, move, stay C, move, stay home
_RATE_SHAPE = 4.0  # Gamma shape of the per-person ping-rate multiplier (mean 1, cv 0.5)


def expected_rows_per_person_day(ping_interval_s: float = 300.0, dense_fraction: float = 0.05) -> float:
    """Expected rows one person contributes per day (averaged over persons).

    Useful to size benchmarks: ``persons ≈ rows / (days * expected_rows_per_person_day())``.
    Ignores the (rare) truncation of a dense window at midnight.
    """
    mean_dense_s = sum(_DENSE_HOURS) / 2 * _H
    return 86_400.0 / ping_interval_s + dense_fraction * mean_dense_s / (sum(_DENSE_GAP_S) / 2)


def generate(
    persons: int,
    days: int = 1,
    *,
    seed: int = 0,
    start: str | dt.date = "2026-11-26",
    city: str = "beijing",
    ping_interval_s: float = 300.0,
    dense_fraction: float = 0.05,
    out_of_scope_fraction: float = 0.1,
    bad_fraction: float = 0.0,
    group_mix: Mapping[str, float] | None = None,
    first_person: int = 0,
) -> pl.DataFrame:
    """Generate synthetic pings for ``persons`` people over ``days`` local days.

    Parameters
    ----------
    persons
        Number of distinct persons (ids ``P0000000``, ``P0000001``, ... — opaque, so they
        can never be mistaken for a phone or ID-card number).
    days
        Number of consecutive local days, starting at ``start``.
    seed
        Seed of the ``numpy.random.Generator``; the same arguments give an identical frame.
    start
        First local day (ISO date string or :class:`datetime.date`).
    city
        A key of :data:`CITIES`; sets the time zone, bounding box and places.
    ping_interval_s
        Mean seconds between fixes of an ordinary person (Poisson process, so gaps are
        exponential); each person's rate is scaled by a Gamma(4, 1/4) factor, because real
        devices differ a lot in how often they report.
    dense_fraction
        Share of persons who, on top of that, log every 1–5 s for a 1–4 h stretch around
        their morning departure — the GeoLife-like loggers that make contribution bounding
        matter.
    out_of_scope_fraction
        Share of persons whose group is not a key group (``"general"`` / ``"resident"``),
        so the scope step has something to drop and count.
    bad_fraction
        Share of rows made malformed (kinds in :data:`BAD_KINDS`, round-robin). With
        ``bad_fraction > 0`` every column is Utf8 so the frame can hold them: ``ts`` as
        ISO-8601 local time with offset (e.g. ``+08:00``) mixed with ~25% epoch-second
        strings, ``lat``/``lng`` rounded to 6 decimals.
    group_mix
        Relative shares of the key groups among in-scope persons; default
        :data:`DEFAULT_GROUP_MIX`. Counts are allocated to within one person of the
        shares (unbiased rounding), then assigned to persons at random.
    first_person
        Number of the first person id; chunked generation uses it to keep ids distinct.

    Returns
    -------
    polars.DataFrame
        Columns ``person_id`` (Utf8), ``ts`` (Datetime("us", "UTC")), ``lat``, ``lng``
        (Float64), ``group`` (Utf8); all Utf8 when ``bad_fraction > 0``. Rows are in random
        order, so no step can come to rely on the input order.

    Examples
    --------
    >>> df = generate(50, seed=1)
    >>> df.columns
    ['person_id', 'ts', 'lat', 'lng', 'group']
    >>> df.equals(generate(50, seed=1))
    True
    """
    return _generate(
        persons,
        days,
        rng=np.random.default_rng(seed),
        start=start,
        city=city,
        ping_interval_s=ping_interval_s,
        dense_fraction=dense_fraction,
        out_of_scope_fraction=out_of_scope_fraction,
        bad_fraction=bad_fraction,
        group_mix=group_mix,
        first_person=first_person,
        id_width=None,
    )


def _generate(
    persons: int,
    days: int,
    *,
    rng: np.random.Generator,
    start: str | dt.date,
    city: str,
    ping_interval_s: float,
    dense_fraction: float,
    out_of_scope_fraction: float,
    bad_fraction: float,
    group_mix: Mapping[str, float] | None,
    first_person: int,
    id_width: int | None,
) -> pl.DataFrame:
    c, day0, mix = _validate(
        persons,
        days,
        start,
        city,
        ping_interval_s,
        dense_fraction,
        out_of_scope_fraction,
        bad_fraction,
        group_mix,
        first_person,
    )
    tz = ZoneInfo(c.timezone)
    # Local midnights in UTC µs; a day's length follows from the next midnight (DST-safe).
    mid = [
        int(dt.datetime.combine(day0 + dt.timedelta(days=i), dt.time(0), tzinfo=tz).timestamp())
        for i in range(days + 1)
    ]
    day_start_us = np.array(mid[:-1], dtype=np.int64) * 1_000_000
    day_len = np.diff(np.array(mid, dtype=np.float64))

    # --- persons: places, groups, device traits ------------------------------------
    n_p = persons
    home = _around(rng, c.residential, n_p, c)
    is_local_job = rng.random(n_p) < _LOCAL_JOB_SHARE
    work_district = _around(rng, c.business, n_p, c, near=home, scale_km=_WORK_SCALE_KM)
    work_local = _jitter_km(rng, home, 3.0, c)
    work = np.where(is_local_job[:, None], work_local, work_district)
    errands = np.stack(
        [
            _jitter_km(rng, home, 1.2, c),
            _jitter_km(rng, home, 1.2, c),
            _around(rng, c.business + c.residential, n_p, c, near=home, scale_km=5.0),
        ],
        axis=1,
    )  # (P, 3, 2)
    is_worker = rng.random(n_p) < _WORKER_SHARE
    speed_kmh = rng.uniform(25.0, 45.0, n_p)
    sigma_m = rng.uniform(10.0, 30.0, n_p)
    rate = rng.gamma(_RATE_SHAPE, 1.0 / _RATE_SHAPE, n_p) / ping_interval_s
    is_dense = np.zeros(n_p, dtype=np.bool_)
    is_dense[rng.permutation(n_p)[: _round_unbiased(rng, n_p * dense_fraction)]] = True
    group_names, group_code = _assign_groups(rng, n_p, mix, out_of_scope_fraction)

    # --- person-days: schedules as 9 segments with boundaries -----------------------
    n_pd = n_p * days
    p_of = np.repeat(np.arange(n_p), days)
    d_of = np.tile(np.arange(days), n_p)
    length = day_len[d_of]
    home_pd = home[p_of]
    home_day = rng.random(n_pd) < _HOME_DAY_SHARE
    worker = is_worker[p_of] & ~home_day
    pick = rng.integers(0, 3, size=(n_pd, 2))
    e1 = errands[p_of, pick[:, 0]]
    e2 = errands[p_of, pick[:, 1]]
    ww = worker[:, None]

    # Stop A: work (workers) or a morning errand; B: evening errand or home at midday;
    # C: afternoon errand (non-workers). A skipped stop repeats the previous place with
    # zero stay, so its moves have zero length and zero duration and yield no rows.
    place_a = np.where(ww, work[p_of], e1)
    b_errand = rng.random(n_pd) < 0.4
    place_b = np.where(ww, np.where(b_errand[:, None], e2, place_a), home_pd)
    c_errand = ~worker & (rng.random(n_pd) < 0.6)
    place_c = np.where(c_errand[:, None], e2, place_b)
    hd = home_day[:, None]
    place_a, place_b, place_c = (np.where(hd, home_pd, x) for x in (place_a, place_b, place_c))

    dep0 = np.where(
        worker,
        np.clip(rng.normal(7.75 * _H, 0.6 * _H, n_pd), 5.5 * _H, 10 * _H),
        rng.uniform(8.5 * _H, 11 * _H, n_pd),
    )
    stay_a = rng.uniform(0.5 * _H, 3 * _H, n_pd)
    work_end = np.clip(rng.normal(18 * _H, 0.8 * _H, n_pd), 15.5 * _H, 21.5 * _H)
    stay_b = np.where(
        worker,
        np.where(b_errand, rng.uniform(0.25 * _H, 2 * _H, n_pd), 0.0),
        rng.uniform(1 * _H, 4 * _H, n_pd),
    )
    stay_c = np.where(c_errand, rng.uniform(0.5 * _H, 2 * _H, n_pd), 0.0)
    spd = speed_kmh[p_of]
    arr1 = dep0 + _travel_s(rng, home_pd, place_a, spd, c)
    dep1 = np.where(worker, np.maximum(arr1, work_end), arr1 + stay_a)
    arr2 = dep1 + _travel_s(rng, place_a, place_b, spd, c)
    dep2 = arr2 + stay_b
    arr3 = dep2 + _travel_s(rng, place_b, place_c, spd, c)
    dep3 = arr3 + stay_c
    arr4 = dep3 + _travel_s(rng, place_c, home_pd, spd, c)
    inner = np.stack([dep0, arr1, dep1, arr2, dep2, arr3, dep3, arr4], axis=1)
    inner = np.maximum.accumulate(np.clip(inner, 0.0, length[:, None]), axis=1)
    seg_t0 = np.concatenate([np.zeros((n_pd, 1)), inner], axis=1)  # (PD, 9)
    seg_t1 = np.concatenate([inner, length[:, None]], axis=1)
    stops = np.stack([home_pd, place_a, place_b, place_c, home_pd], axis=1)  # (PD, 5, 2)
    # segment j is a stay at stop j/2 (j even) or the move from stop j//2 to j//2 + 1
    seg_from = stops[:, [j // 2 for j in range(_N_SEG)]]
    seg_to = stops[:, [(j + 1) // 2 for j in range(_N_SEG)]]
    # Moves bend sideways a little (roads are not straight lines); stays do not move.
    bend = rng.normal(0.0, 0.08, (n_pd, _N_SEG))
    bend[:, 0::2] = 0.0

    # --- ping times: Poisson per person-day, plus dense stretches -------------------
    # at least one fix per person-day, so every requested person is in the data
    n_ord = np.maximum(rng.poisson(length * rate[p_of]), 1)
    pd_ord = np.repeat(np.arange(n_pd), n_ord)
    t_ord = rng.random(pd_ord.size) * length[pd_ord]
    dense_pd = np.flatnonzero(is_dense[p_of])
    w0 = np.clip(dep0[dense_pd] - rng.uniform(0.0, 0.5 * _H, dense_pd.size), 0.0, None)
    w1 = np.minimum(w0 + rng.uniform(*_DENSE_HOURS, dense_pd.size) * _H, length[dense_pd])
    w_len = np.maximum(w1 - w0, 0.0)
    mean_gap = sum(_DENSE_GAP_S) / 2
    n_draw = np.ceil(w_len / mean_gap * 1.1 + 20).astype(np.int64)
    gaps = rng.uniform(*_DENSE_GAP_S, int(n_draw.sum()))
    csum = np.cumsum(gaps)
    first = np.cumsum(n_draw) - n_draw
    rel = csum - np.repeat(csum[first] - gaps[first], n_draw)  # segmented cumsum
    own = np.repeat(np.arange(dense_pd.size), n_draw)
    keep = rel < np.repeat(w_len, n_draw)
    pd_dense = dense_pd[own[keep]]
    t_dense = w0[own[keep]] + rel[keep]
    pd_idx = np.concatenate([pd_ord, pd_dense])
    t = np.concatenate([t_ord, t_dense])
    del pd_ord, t_ord, pd_dense, t_dense, gaps, csum, rel, own, keep

    # --- positions ------------------------------------------------------------------
    seg = np.zeros(t.size, dtype=np.int64)
    for k in range(1, _N_SEG):  # rows are grouped by pd here, so the gathers stream
        seg += t >= seg_t0[pd_idx, k]
    flat = pd_idx * _N_SEG + seg
    t0 = seg_t0.reshape(-1)[flat]
    dur = seg_t1.reshape(-1)[flat] - t0
    frac = np.clip((t - t0) / np.maximum(dur, 1e-9), 0.0, 1.0)
    del t0, dur
    a_lat = seg_from[..., 0].reshape(-1)[flat]
    a_lng = seg_from[..., 1].reshape(-1)[flat]
    d_lat = seg_to[..., 0].reshape(-1)[flat] - a_lat
    d_lng = seg_to[..., 1].reshape(-1)[flat] - a_lng
    coslat = math.cos(math.radians(c.center[0]))
    side = np.sin(np.pi * frac) * bend.reshape(-1)[flat]
    # perpendicular of (dx, dy) in km is (-dy, dx); converted back to degrees
    lat = a_lat + frac * d_lat + side * d_lng * coslat
    lng = a_lng + frac * d_lng - side * d_lat / coslat
    del a_lat, a_lng, d_lat, d_lng, side, frac, flat, seg
    p_row = pd_idx // days
    sig = sigma_m[p_row] / 1000.0 / _KM_PER_DEG
    lat += rng.standard_normal(t.size) * sig
    lng += rng.standard_normal(t.size) * sig / coslat
    del sig
    lat_min, lng_min, lat_max, lng_max = c.bbox
    np.clip(lat, lat_min, lat_max, out=lat)
    np.clip(lng, lng_min, lng_max, out=lng)
    ts_us = day_start_us[pd_idx % days] + np.floor(t * 1e6).astype(np.int64)
    del t, pd_idx

    # --- shuffle, assemble -----------------------------------------------------------
    perm = rng.permutation(ts_us.size)
    p_row = p_row[perm]
    width = id_width if id_width is not None else max(7, len(str(first_person + n_p - 1)))
    ids = pl.int_range(first_person, first_person + n_p, eager=True).cast(pl.Utf8).str.zfill(width)
    ids = ("P" + ids) if n_p else ids
    df = pl.DataFrame(
        {
            "person_id": pl.Series("person_id", ids, dtype=pl.Utf8).gather(p_row),
            "ts": pl.Series("ts", ts_us[perm]).cast(pl.Datetime("us", "UTC")),
            "lat": lat[perm],
            "lng": lng[perm],
            "group": pl.Series("group", group_names, dtype=pl.Utf8).gather(group_code[p_row]),
        },
        schema={
            "person_id": pl.Utf8,
            "ts": pl.Datetime("us", "UTC"),
            "lat": pl.Float64,
            "lng": pl.Float64,
            "group": pl.Utf8,
        },
    )
    if bad_fraction > 0:
        df = _make_dirty(df, rng, bad_fraction, c.timezone)
    return df


def _validate(
    persons: int,
    days: int,
    start: str | dt.date,
    city: str,
    ping_interval_s: float,
    dense_fraction: float,
    out_of_scope_fraction: float,
    bad_fraction: float,
    group_mix: Mapping[str, float] | None,
    first_person: int,
) -> tuple[City, dt.date, dict[str, float]]:
    if isinstance(persons, bool) or not isinstance(persons, int) or persons < 0:
        raise ValueError(f"persons must be a non-negative int, got {persons!r}")
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"days must be an int >= 1, got {days!r}")
    if first_person < 0:
        raise ValueError(f"first_person must be >= 0, got {first_person!r}")
    if city not in CITIES:
        raise ValueError(f"unknown city {city!r}; choose one of {sorted(CITIES)}")
    if not (ping_interval_s > 0 and math.isfinite(ping_interval_s)):
        raise ValueError(f"ping_interval_s must be a positive number, got {ping_interval_s!r}")
    for name, v in (
        ("dense_fraction", dense_fraction),
        ("out_of_scope_fraction", out_of_scope_fraction),
        ("bad_fraction", bad_fraction),
    ):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v!r}")
    if isinstance(start, dt.datetime):
        day0 = start.date()
    elif isinstance(start, dt.date):
        day0 = start
    else:
        try:
            day0 = dt.date.fromisoformat(start)
        except ValueError as exc:
            raise ValueError(f"start must be an ISO date like '2026-11-26', got {start!r}") from exc
    mix = dict(DEFAULT_GROUP_MIX if group_mix is None else group_mix)
    if not mix or any(not k or v < 0 or not math.isfinite(v) for k, v in mix.items()):
        raise ValueError(f"group_mix needs non-empty names and non-negative shares, got {mix!r}")
    total = sum(mix.values())
    if total <= 0:
        raise ValueError("group_mix shares must not all be zero")
    return CITIES[city], day0, {k: v / total for k, v in mix.items()}


def _round_unbiased(rng: np.random.Generator, x: float) -> int:
    """Round ``x`` up with probability equal to its fractional part.

    Counts stay within 1 of the target, yet are unbiased — so many small chunks (see
    :func:`generate_to_parquet`) add up to the requested shares.
    """
    lo = math.floor(x)
    return lo + int(rng.random() < x - lo)


def _allocate(rng: np.random.Generator, n: int, shares: list[float]) -> list[int]:
    """Split ``n`` into integer counts ≈ ``n * share``: floors, then the leftover units
    go to categories drawn without replacement in proportion to their remainders."""
    raw = np.asarray(shares, dtype=np.float64) * n
    counts = np.floor(raw).astype(np.int64)
    left = n - int(counts.sum())
    if left > 0:
        rem = raw - counts
        p = rem / rem.sum() if rem.sum() > 0 else np.full(rem.size, 1.0 / rem.size)
        counts[rng.choice(rem.size, size=left, replace=False, p=p)] += 1
    return [int(c) for c in counts]


def _assign_groups(
    rng: np.random.Generator, n: int, mix: Mapping[str, float], out_of_scope: float
) -> tuple[list[str], npt.NDArray[np.int32]]:
    """Group counts within one person of the shares (so small samples match the mix
    too), placed on persons at random."""
    n_out = _round_unbiased(rng, n * out_of_scope)
    names = list(mix) + [g for g in OUT_OF_SCOPE_GROUPS if g not in mix]
    counts = _allocate(rng, n - n_out, list(mix.values()))
    oos = [g for g in OUT_OF_SCOPE_GROUPS if g not in mix] or [OUT_OF_SCOPE_GROUPS[0]]
    oos_counts = _allocate(rng, n_out, [1.0 / len(oos)] * len(oos))
    codes = np.concatenate(
        [np.full(k, i, dtype=np.int32) for i, k in enumerate(counts)]
        + [np.full(k, names.index(g), dtype=np.int32) for g, k in zip(oos, oos_counts, strict=True)]
        + [np.zeros(0, dtype=np.int32)]
    )
    return names, rng.permutation(codes)


def _clip_bbox(ll: _F64, c: City) -> _F64:
    lat_min, lng_min, lat_max, lng_max = c.bbox
    m = 0.01  # keep anchors off the box edge so jittered fixes rarely need clipping
    out = np.empty_like(ll)
    out[:, 0] = np.clip(ll[:, 0], lat_min + m, lat_max - m)
    out[:, 1] = np.clip(ll[:, 1], lng_min + m, lng_max - m)
    return out


def _around(
    rng: np.random.Generator,
    areas: list[_Place],
    n: int,
    c: City,
    near: _F64 | None = None,
    scale_km: float = 0.0,
) -> _F64:
    """``n`` points, each around an area chosen uniformly or, given ``near``, by gravity.

    With ``near`` (one point per draw), area ``j`` is chosen with weight
    ``exp(-distance / scale_km)``: people mostly work and shop in a district not too far
    from home, which keeps commutes at Beijing-like durations (~0.5–1.5 h) instead of
    sending someone from Fangshan to the airport every day.
    """
    arr = np.asarray(areas, dtype=np.float64)
    if near is None:
        choice = rng.integers(0, len(areas), n)
    else:
        coslat = math.cos(math.radians(c.center[0]))
        km = np.hypot(near[:, 0:1] - arr[None, :, 0], (near[:, 1:2] - arr[None, :, 1]) * coslat) * _KM_PER_DEG
        w = np.exp(-(km - km.min(axis=1, keepdims=True)) / scale_km)
        cum = np.cumsum(w, axis=1)
        u = rng.random((n, 1)) * cum[:, -1:]
        choice = np.minimum((cum < u).sum(axis=1), len(areas) - 1)
    a = arr[choice]
    z = rng.standard_normal((n, 2)) * (a[:, 2:3] / _KM_PER_DEG)
    z[:, 1] /= np.cos(np.radians(a[:, 0]))
    return _clip_bbox(a[:, :2] + z, c)


def _jitter_km(rng: np.random.Generator, ll: _F64, km: float, c: City) -> _F64:
    z = rng.standard_normal(ll.shape) * (km / _KM_PER_DEG)
    z[:, 1] /= np.cos(np.radians(ll[:, 0]))
    return _clip_bbox(ll + z, c)


def _travel_s(rng: np.random.Generator, a: _F64, b: _F64, speed_kmh: _F64, c: City) -> _F64:
    """Door-to-door seconds: 1.25 × straight distance at the person's speed + access time."""
    coslat = math.cos(math.radians(c.center[0]))
    km = np.hypot(b[:, 0] - a[:, 0], (b[:, 1] - a[:, 1]) * coslat) * _KM_PER_DEG
    access = rng.uniform(180.0, 900.0, km.size)
    out: _F64 = np.where(km > 0.05, km * 1.25 / speed_kmh * _H + access, 0.0)
    return out


def _make_dirty(
    df: pl.DataFrame, rng: np.random.Generator, bad_fraction: float, timezone: str
) -> pl.DataFrame:
    """Turn every column into text (as a careless CSV export would) and break some rows."""
    n = df.height
    is_epoch = rng.random(n) < 0.25
    kind = np.full(n, -1, dtype=np.int8)
    n_bad = min(n, round(n * bad_fraction))
    rows = rng.choice(n, size=n_bad, replace=False)
    kind[rows] = np.arange(n_bad) % len(BAD_KINDS)
    alt = rng.random(n) < 0.5  # which coordinate the "abc" goes into
    k = pl.Series("_kind", kind)
    out = df.with_columns(
        _kind=k,
        _epoch=pl.Series("_epoch", is_epoch),
        _alt=pl.Series("_alt", alt),
    ).with_columns(
        ts=pl.when(pl.col("_epoch"))
        .then(pl.col("ts").dt.epoch("s").cast(pl.Utf8))
        .otherwise(pl.col("ts").dt.convert_time_zone(timezone).dt.to_string("%Y-%m-%dT%H:%M:%S%.6f%:z")),
        lat=pl.col("lat").round(6).cast(pl.Utf8),
        lng=pl.col("lng").round(6).cast(pl.Utf8),
    )
    kc = pl.col("_kind")
    abc = kc == BAD_KINDS.index("non_numeric_coordinate")
    nan = kc == BAD_KINDS.index("nan_coordinate")
    out = out.with_columns(
        lat=pl.when(kc == BAD_KINDS.index("lat_out_of_range"))
        .then(pl.lit("400.17"))
        .when(abc & ~pl.col("_alt"))
        .then(pl.lit("abc"))
        .when(nan)
        .then(pl.lit("NaN"))
        .otherwise(pl.col("lat")),
        lng=pl.when(kc == BAD_KINDS.index("lng_out_of_range"))
        .then(pl.lit("181"))
        .when(abc & pl.col("_alt"))
        .then(pl.lit("abc"))
        .when(nan)
        .then(pl.lit("NaN"))
        .otherwise(pl.col("lng")),
        person_id=pl.when(kc == BAD_KINDS.index("empty_person_id"))
        .then(pl.lit(""))
        .when(kc == BAD_KINDS.index("null_person_id"))
        .then(pl.lit(None, dtype=pl.Utf8))
        .otherwise(pl.col("person_id")),
        ts=pl.when(kc == BAD_KINDS.index("unparseable_ts"))
        .then(pl.lit("not-a-time"))
        .otherwise(pl.col("ts")),
    )
    return out.select("person_id", "ts", "lat", "lng", "group")


def write(
    df: pl.DataFrame,
    path: str | Path,
    *,
    timezone: str = "Asia/Shanghai",
    compression_level: int | None = None,
) -> Path:
    """Write a frame of pings to ``.parquet``, ``.csv`` or ``.csv.gz`` (chosen by suffix).

    Parquet keeps the types (zstd). CSV writes ``ts`` as ISO-8601 local time with its
    offset (``timezone``, e.g. ``2026-11-26T08:05:00.123456+08:00``) because that is what
    exports from Chinese systems look like and it is unambiguous; text ``ts`` columns
    (dirty frames) are written as they are. ``.csv.gz`` is written with a zero mtime so
    re-running gives byte-identical files. ``compression_level`` is the zstd level for
    Parquet (higher is smaller and slower; 19 suits small shipped samples).

    Returns
    -------
    pathlib.Path
        The path written.
    """
    p = Path(path)
    name = p.name.lower()
    if name.endswith(".parquet"):
        df.write_parquet(p, compression="zstd", compression_level=compression_level)
        return p
    if not (name.endswith(".csv") or name.endswith(".csv.gz")):
        raise ValueError(f"write: unsupported suffix in {p.name!r}; use .parquet, .csv or .csv.gz")
    ts_type = df.schema.get("ts")
    if isinstance(ts_type, pl.Datetime):
        ts = pl.col("ts")
        if ts_type.time_zone is None:
            ts = ts.dt.replace_time_zone("UTC")
        df = df.with_columns(ts=ts.dt.convert_time_zone(timezone).dt.to_string("%Y-%m-%dT%H:%M:%S%.6f%:z"))
    if name.endswith(".gz"):
        with (
            p.open("wb") as raw,
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
        ):
            df.write_csv(cast("IO[bytes]", gz))
    else:
        df.write_csv(p)
    return p


def generate_to_parquet(
    path: str | Path,
    persons: int,
    days: int = 1,
    *,
    seed: int = 0,
    rows_per_chunk: int = 2_000_000,
    start: str | dt.date = "2026-11-26",
    city: str = "beijing",
    ping_interval_s: float = 300.0,
    dense_fraction: float = 0.05,
    out_of_scope_fraction: float = 0.1,
    bad_fraction: float = 0.0,
    group_mix: Mapping[str, float] | None = None,
) -> int:
    """Generate a large trace set straight into one Parquet file, in bounded memory.

    Persons are generated in chunks of about ``rows_per_chunk`` rows (sized with
    :func:`expected_rows_per_person_day`); each chunk has its own random stream
    (``default_rng([seed, chunk])``), its own consecutive person ids — so persons never
    repeat across chunks — and becomes one row group. Peak memory is ~260 bytes per chunk
    row (~0.7 GB peak RSS at the default), whatever the total; 100M rows (~2.2 GB of
    Parquet) take ~30 s on 2 cores.
    Rows are shuffled within a chunk, not across chunks.

    Returns
    -------
    int
        Number of rows written.
    """
    from privmob.errors import import_extra

    # One file written row group by row group needs pyarrow's ParquetWriter: the [eval] extra.
    pq = import_extra("pyarrow.parquet", extra="eval", package="pyarrow",
                      purpose="privmob.synth.generate_to_parquet (large files in bounded memory)")

    if isinstance(rows_per_chunk, bool) or not isinstance(rows_per_chunk, int) or rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk must be a positive int, got {rows_per_chunk!r}")
    # Validate everything once, before a file is created.
    _validate(
        persons,
        days,
        start,
        city,
        ping_interval_s,
        dense_fraction,
        out_of_scope_fraction,
        bad_fraction,
        group_mix,
        0,
    )
    per_person = days * expected_rows_per_person_day(ping_interval_s, dense_fraction)
    chunk_persons = max(1, int(rows_per_chunk / per_person))
    width = max(7, len(str(max(persons - 1, 0))))
    written = 0
    writer = None
    try:
        for chunk, first in enumerate(range(0, max(persons, 1), chunk_persons)):
            n = min(chunk_persons, persons - first)
            df = _generate(
                n,
                days,
                rng=np.random.default_rng([seed, chunk]),
                start=start,
                city=city,
                ping_interval_s=ping_interval_s,
                dense_fraction=dense_fraction,
                out_of_scope_fraction=out_of_scope_fraction,
                bad_fraction=bad_fraction,
                group_mix=group_mix,
                first_person=first,
                id_width=width,
            )
            table = df.to_arrow(compat_level=pl.CompatLevel.oldest())
            if writer is None:
                writer = pq.ParquetWriter(str(path), table.schema, compression="zstd")
            writer.write_table(table, row_group_size=max(table.num_rows, 1))
            written += table.num_rows
            del df, table
    finally:
        if writer is not None:
            writer.close()
    return written
