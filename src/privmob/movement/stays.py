"""Stays and trips: where a person stopped, and the moves between those stops.

Dense GPS (GeoLife: one fix every 1–5 s) is jittery: a person sitting at a desk "moves"
tens of metres every few seconds, and counting every cell that jitter touches inflates
movement. Movement analytics (OD flows) therefore start from *stays* — places a person
stayed within ``radius_m`` for at least ``min_duration_s`` — and *trips* between
consecutive stays.

Definition (what :func:`stays` computes, exactly)
-------------------------------------------------
Fixes are sorted by ``(pid, t, lat, lng)`` (so the input row order never matters) and
exact duplicate rows are dropped. Distances are great-circle distances on a sphere of
radius :data:`EARTH_RADIUS_M` (compared as chord lengths between unit vectors, which is
the haversine formula to ~1e-12 relative — nanometres — without a sine per pair).

1. **Segments.** A person's fixes are cut into segments wherever two consecutive fixes
   are more than ``max_gap_s`` apart: no data is not evidence of staying.
2. **Stay points** (Li et al. 2008, as used by Zheng et al. for GeoLife), per segment with
   fixes ``0..m-1``::

       i = 0
       while i < m:
           j = first index > i farther than radius_m from fix i  (m if none)
           if t[j-1] - t[i] >= min_duration_s:   # a stay: fixes i..j-1
               emit(i, j); i = j
           else:
               i = i + 1

   The anchor is the first fix of the stay; every fix of the stay is within ``radius_m``
   of it. Differences from the published pseudo-code: the duration is measured to the
   last fix *inside* the radius (``t[j-1]``, not ``t[j]``, which would count the time
   spent leaving), the first fix outside is not averaged into the centroid, and a run
   that reaches the end of a segment is a stay if it lasts long enough (the original
   drops it).
3. **Merge.** Consecutive stay points of a segment are merged into one stay when their
   centroids are within ``radius_m`` of each other and the time between them (first fix
   of the later minus last fix of the earlier) is shorter than ``min_duration_s``. This
   is the one addition to the textbook: an anchor off the middle of a place (the first
   fix on arrival) or one multipath outlier otherwise splits an eight-hour stay in two
   and creates a trip from a place to itself. The fixes between merged stay points
   (the outlier, the short absence) are not averaged into the centroid. Each pair of
   neighbours is compared by its own centroids, so a chain of merges could in principle
   drift further than the radius (it would need a stay creeping along by < radius at a
   time with pauses shorter than ``min_duration_s``).

A stay's centroid is the normalised mean of its fixes' unit vectors (correct across the
antimeridian), its times are those of its first and last fix.

How it is vectorised
--------------------
The textbook loop is sequential per person, and costs (fixes) × (fixes within the
radius) distance evaluations. It is rewritten as a greedy choice over *qualifying
anchors*: fix ``i`` qualifies when every fix up to ``k(i)`` — the first fix at least
``min_duration_s`` after it — is within the radius. The loop then visits exactly: the
first qualifying anchor ``q`` of a segment, its stay up to ``j(q)``, the first
qualifying anchor at or after ``j(q)``, and so on. So

* qualification is decided for all fixes of all persons at once: k(i) by one
  ``searchsorted``; the fix at k(i) itself rules out nearly every moving fix; short
  windows (sparse phones) are checked offset by offset; long windows (dense loggers)
  get exact range extrema of latitude and longitude over ``(i, k(i)]`` (a sparse table
  built one level at a time over only the fixes still needed), which bound the
  farthest fix from below and above, and only the fixes whose bounds straddle the
  radius are checked fix by fix;
* the chain of stays is walked for all segments in parallel, one stay per step, each
  stay's end found by a vectorised forward scan in doubling blocks.

The work is O(n log w) for n fixes and w fixes per ``min_duration_s`` window, plus
O(fixes inside stays) distance evaluations; the number of Python-level steps grows with
the most stays in one segment (times the log of a stay's length), never with the number
of fixes or persons. Memory is ~100 bytes per fix on top of the input. The result is
identical to the loop above: ``tests/unit/test_stays.py`` compares it with a plain
per-person Python implementation of this definition, with and without the merge.

Examples
--------
>>> import polars as pl
>>> fixes = pl.DataFrame({"pid": [1, 1, 1, 1], "t": [0, 300, 700, 5000],
...                       "lat": [39.9, 39.9001, 39.9, 40.0], "lng": [116.4] * 4})
>>> stays(fixes).select("pid", "stay_id", "start_t", "end_t", "n_fixes").rows()
[(1, 0, 0, 700, 3)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import polars as pl

from privmob.errors import ConfigError, SchemaError

if TYPE_CHECKING:
    from privmob.config import FlowsConfig

__all__ = ["EARTH_RADIUS_M", "STAY_SCHEMA", "TRIP_SCHEMA", "StayParams", "person_trips", "stays", "trips"]

EARTH_RADIUS_M = 6_371_008.8
"""Mean Earth radius (IUGG), metres: the sphere haversine distances are measured on."""

STAY_SCHEMA: dict[str, pl.DataType] = {
    "pid": pl.Int64(),
    "stay_id": pl.Int32(),
    "start_t": pl.Int64(),
    "end_t": pl.Int64(),
    "lat": pl.Float64(),
    "lng": pl.Float64(),
    "n_fixes": pl.Int64(),
}
"""Columns of :func:`stays`' result."""

TRIP_SCHEMA: dict[str, pl.DataType] = {
    "pid": pl.Int64(),
    "trip_id": pl.Int32(),
    "origin_lat": pl.Float64(),
    "origin_lng": pl.Float64(),
    "dest_lat": pl.Float64(),
    "dest_lng": pl.Float64(),
    "depart_t": pl.Int64(),
    "arrive_t": pl.Int64(),
}
"""Columns of :func:`trips`' result."""

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
_B = npt.NDArray[np.bool_]

_FIRST_BLOCK = 32  # fixes scanned per element in the first step of a forward scan
_MAX_BATCH = 1 << 20  # distance evaluations per scan step (bounds the scan's memory)
_CHUNK = 1 << 20  # pairs per chunk in element-wise distance checks
_MARGIN = 1e-9  # relative slack that keeps the range bounds rigorous under rounding
_SHORT_WINDOW = 8  # windows of at most this many fixes are checked fix by fix, offset by offset


@dataclass(frozen=True)
class StayParams:
    """Parameters of stay detection (see the module docstring for the exact definition).

    Parameters
    ----------
    radius_m
        Every fix of a stay point is within this distance of its anchor (metres). 200 m is
        about the edge of an H3 resolution-9 cell (0.105 km², ~174 m edge) and ~5× the
        typical error of a consumer GPS fix in a city (10–50 m, worse near tall
        buildings), so jitter does not end a stay but walking to the next block does.
    min_duration_s
        Shortest stay (first to last fix), seconds. 10 minutes keeps a shop visit or a
        school run and drops traffic lights, jams and bus stops (usually < 5 min). Also
        the longest absence that still merges two stay points at the same place into
        one stay: an absence too short to be a stay elsewhere is not a trip.
    max_gap_s
        Two consecutive fixes further apart in time than this end a stay (and start a new
        segment): no data is not evidence of staying. One hour bridges a phone that
        reports every few minutes indoors but not a night without data.

    Examples
    --------
    >>> StayParams(radius_m=100)
    StayParams(radius_m=100, min_duration_s=600, max_gap_s=3600)
    """

    radius_m: float = 200.0
    min_duration_s: int = 600
    max_gap_s: int = 3600

    @classmethod
    def of(cls, flows: FlowsConfig | None) -> StayParams:
        """The stay parameters a job's ``[flows]`` section sets (defaults without one).

        >>> from privmob.config import FlowsConfig
        >>> StayParams.of(FlowsConfig(units="cells", stay_min_duration="15m"))
        StayParams(radius_m=200.0, min_duration_s=900, max_gap_s=3600)
        """
        if flows is None:
            return cls()
        from privmob.config import parse_duration

        return cls(radius_m=flows.stay_radius_m, min_duration_s=parse_duration(flows.stay_min_duration),
                   max_gap_s=parse_duration(flows.stay_max_gap))

    def __post_init__(self) -> None:
        r = self.radius_m
        if isinstance(r, bool) or not isinstance(r, int | float) or not (math.isfinite(r) and r > 0):
            raise ConfigError(f"radius_m must be a positive number of metres, got {r!r}")
        if r >= math.pi * EARTH_RADIUS_M / 2:
            raise ConfigError(f"radius_m must be below a quarter of the Earth's circumference, got {r!r}")
        for name in ("min_duration_s", "max_gap_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive whole number of seconds, got {v!r}")


def stays(fixes: pl.DataFrame | pl.LazyFrame, params: StayParams | None = None) -> pl.DataFrame:
    """Detect stays: places where a person stayed within a radius for a minimum time.

    Parameters
    ----------
    fixes
        Columns ``pid`` (integer person pseudonym), ``t`` (integer epoch seconds),
        ``lat``, ``lng`` (WGS-84 degrees, already validated); other columns are ignored.
        Row order does not matter.
    params
        Radius, minimum duration and maximum gap; :class:`StayParams` defaults if omitted.

    Returns
    -------
    polars.DataFrame
        One row per stay (:data:`STAY_SCHEMA`): ``pid``, ``stay_id`` (0, 1, ... per person
        in time order), ``start_t``/``end_t`` (first and last fix), ``lat``/``lng`` (the
        centroid of its fixes) and ``n_fixes``; sorted by ``pid``, ``stay_id``. Persons
        without a stay have no rows.

    Raises
    ------
    SchemaError
        A column is missing, has the wrong type, or holds nulls or non-finite values.

    Examples
    --------
    >>> import polars as pl
    >>> home = pl.DataFrame({"pid": 7, "t": range(0, 3600, 60), "lat": 39.9, "lng": 116.4})
    >>> stays(home)[["stay_id", "start_t", "end_t", "n_fixes"]].row(0)
    (0, 0, 3540, 60)
    """
    p = params if params is not None else StayParams()
    return _stays(fixes, p, merge=True)


def trips(stay_frame: pl.DataFrame) -> pl.DataFrame:
    """Trips between consecutive stays of each person.

    A trip leaves when the origin stay ends (its last fix) and arrives when the next stay
    begins (its first fix). Every pair of consecutive stays makes a trip, also across a
    data gap (the person was at A, later at B: they went there somehow) and back to the
    same place after a long absence; the flows stage decides which ones to count.

    Parameters
    ----------
    stay_frame
        A frame shaped like the result of :func:`stays` (``pid``, ``stay_id``,
        ``start_t``, ``end_t``, ``lat``, ``lng``).

    Returns
    -------
    polars.DataFrame
        :data:`TRIP_SCHEMA`: ``pid``, ``trip_id`` (0, 1, ... per person; trip k goes from
        stay k to stay k+1), ``origin_lat``, ``origin_lng``, ``dest_lat``, ``dest_lng``,
        ``depart_t``, ``arrive_t``; sorted by ``pid``, ``trip_id``. A person with n stays
        has n - 1 trips.

    Examples
    --------
    >>> import polars as pl
    >>> s = pl.DataFrame({"pid": [1, 1, 2], "stay_id": [0, 1, 0], "start_t": [0, 900, 0],
    ...                   "end_t": [600, 2000, 700], "lat": [39.9, 40.0, 39.0],
    ...                   "lng": [116.3, 116.4, 116.0]})
    >>> trips(s)[["pid", "trip_id", "depart_t", "arrive_t"]].rows()
    [(1, 0, 600, 900)]
    """
    missing = [c for c in ("pid", "stay_id", "start_t", "end_t", "lat", "lng") if c not in stay_frame.columns]
    if missing:
        raise SchemaError(f"trips: the stay frame lacks {missing}; pass the result of stays()")
    s = stay_frame.sort("pid", "stay_id")
    same = pl.col("pid").shift(-1) == pl.col("pid")
    return (
        s.select(
            pl.col("pid").cast(pl.Int64),
            pl.col("stay_id").cast(pl.Int32).alias("trip_id"),
            pl.col("lat").cast(pl.Float64).alias("origin_lat"),
            pl.col("lng").cast(pl.Float64).alias("origin_lng"),
            pl.col("lat").shift(-1).cast(pl.Float64).alias("dest_lat"),
            pl.col("lng").shift(-1).cast(pl.Float64).alias("dest_lng"),
            pl.col("end_t").cast(pl.Int64).alias("depart_t"),
            pl.col("start_t").shift(-1).cast(pl.Int64).alias("arrive_t"),
            same.fill_null(False).alias("_same"),
        )
        .filter(pl.col("_same"))
        .drop("_same")
    )


def person_trips(fixes: pl.DataFrame | pl.LazyFrame, params: StayParams | None = None) -> pl.DataFrame:
    """Trips between the stays of each person: ``trips(stays(fixes, params))``.

    The one definition of a trip both engines run. A person's trips depend on that
    person's fixes alone, so any split of the fixes that keeps each person's fixes
    together gives the same trips: the Polars engine calls this once on all fixes, the
    Spark engine once per chunk of whole persons on its executors
    (:meth:`privmob.backends.Backend.trips`), and only the trips reach the driver.

    Parameters
    ----------
    fixes
        As for :func:`stays`: ``pid``, ``t``, ``lat``, ``lng``, any row order.
    params
        Radius, minimum duration and maximum gap (:class:`StayParams` defaults if omitted).

    Returns
    -------
    polars.DataFrame
        :data:`TRIP_SCHEMA`, sorted by ``pid``, ``trip_id``.
    """
    return trips(stays(fixes, params))


# --------------------------------------------------------------------------------------
# Implementation


@dataclass(frozen=True)
class _Fixes:
    """Sorted, de-duplicated fixes as arrays, with the unit vectors distances are taken on."""

    pid: _I64
    t: _I64
    lat: _F64
    lng: _F64
    x: _F64  # unit vector: distances are chord lengths, no trigonometry per pair
    y: _F64
    z: _F64
    seg: _I64  # segment number (global, increasing)
    seg_start: _I64  # per segment: index of its first fix
    seg_end: _I64  # per fix: index one past the last fix of its segment

    @property
    def n(self) -> int:
        return int(self.t.size)


def _stays(fixes: pl.DataFrame | pl.LazyFrame, params: StayParams, *, merge: bool) -> pl.DataFrame:
    """:func:`stays`, with the merge step optional (tests compare both with references)."""
    f = _prepare(fixes, params.max_gap_s)
    if f.n == 0:
        return pl.DataFrame(schema=STAY_SCHEMA)
    thr = _hav_threshold(params.radius_m)
    k = _window_end(f, params.min_duration_s)
    qualifies = _qualifying(f, k, thr)
    start, end = _walk(f, k, qualifies, thr)
    sx, sy, sz = _unit_sums(f, start, end)
    n_fixes = end - start
    start_t, end_t = f.t[start], f.t[end - 1]
    pid, seg = f.pid[start], f.seg[start]
    if merge and start.size > 1:
        norm = np.sqrt(sx * sx + sy * sy + sz * sz)
        ux, uy, uz = sx / norm, sy / norm, sz / norm  # centroid directions
        link = np.zeros(start.size, dtype=np.bool_)  # link[i]: stay i continues stay i-1
        link[1:] = (
            (seg[1:] == seg[:-1])
            & (start_t[1:] - end_t[:-1] < params.min_duration_s)
            & (_chord_hav(ux[:-1], uy[:-1], uz[:-1], ux[1:], uy[1:], uz[1:]) <= thr)
        )
        if link.any():
            heads = np.flatnonzero(~link)
            sx, sy, sz = (np.add.reduceat(a, heads) for a in (sx, sy, sz))
            n_fixes = np.add.reduceat(n_fixes, heads)
            tails = np.append(heads[1:], start.size) - 1
            end_t = end_t[tails]
            start_t, pid = start_t[heads], pid[heads]
    lat, lng = _centroid(sx, sy, sz)
    first_of_pid = np.ones(pid.size, dtype=np.bool_)
    first_of_pid[1:] = pid[1:] != pid[:-1]
    pos = np.arange(pid.size, dtype=np.int64)
    stay_id = pos - np.maximum.accumulate(np.where(first_of_pid, pos, 0))
    return pl.DataFrame(
        {
            "pid": pid,
            "stay_id": stay_id.astype(np.int32),
            "start_t": start_t,
            "end_t": end_t,
            "lat": lat,
            "lng": lng,
            "n_fixes": n_fixes.astype(np.int64),
        },
        schema=STAY_SCHEMA,
    )


def _prepare(fixes: pl.DataFrame | pl.LazyFrame, max_gap_s: int) -> _Fixes:
    """Check and sort the input, drop duplicate rows, and cut persons into segments.

    Sorting is by one int64 key, (person code) × span + (t - t_min): numpy's argsort of
    one int64 column takes about a quarter of a two-column Polars sort (measured on 10M
    rows), and input that is already in order, like the GeoLife export, is not sorted
    at all. Fixes of one person with the same
    second — rare, but GeoLife has them — are then ordered by position, so the result
    never depends on the input row order.
    """
    lf = fixes.lazy() if isinstance(fixes, pl.DataFrame) else fixes
    if not isinstance(lf, pl.LazyFrame):
        raise SchemaError(f"stays: expected a polars DataFrame or LazyFrame, got {type(fixes).__name__}")
    schema = lf.collect_schema()
    missing = [c for c in ("pid", "t", "lat", "lng") if c not in schema]
    if missing:
        raise SchemaError(f"stays: the fixes lack columns {missing}; pass pid, t, lat, lng")
    for col, kind in (("pid", "integer"), ("t", "integer"), ("lat", "numeric"), ("lng", "numeric")):
        dtype = schema[col]
        ok = dtype.is_integer() if kind == "integer" else dtype.is_numeric()
        if not ok:
            hint = " (epoch seconds: use .dt.epoch('s'))" if col == "t" and dtype.is_temporal() else ""
            raise SchemaError(f"stays: column {col!r} must be {kind}, got {dtype}{hint}")
    df = lf.select(
        pl.col("pid").cast(pl.Int64),
        pl.col("t").cast(pl.Int64),
        pl.col("lat").cast(pl.Float64),
        pl.col("lng").cast(pl.Float64),
    ).collect()
    nulls = {c: n for c, n in zip(df.columns, df.null_count().row(0), strict=True) if n}
    if nulls:
        raise SchemaError(f"stays: null values in {nulls}; validate the fixes first (privmob.stages.ingest)")
    pid = df["pid"].to_numpy()
    t = df["t"].to_numpy()
    lat = df["lat"].to_numpy()
    lng = df["lng"].to_numpy()
    del df
    if not (np.isfinite(lat).all() and np.isfinite(lng).all()):
        raise SchemaError("stays: lat/lng hold NaN or infinite values; validate the fixes first")
    n = t.size
    if n:
        key = _sort_key(pid, t)
        if not bool(np.all(key[1:] >= key[:-1])):
            order = np.argsort(key)  # ties are put in a fixed order below
            pid, t, lat, lng = pid[order], t[order], lat[order], lng[order]
            key = key[order]
            del order
        same_key = key[1:] == key[:-1]
        del key
        if same_key.any():  # order ties by position, then drop exact duplicates
            tied = np.zeros(n, dtype=np.bool_)
            tied[1:] |= same_key
            tied[:-1] |= same_key
            idx = np.flatnonzero(tied)
            src = idx[np.lexsort((lng[idx], lat[idx], t[idx], pid[idx]))]
            if not (lat.flags.writeable and lng.flags.writeable):  # views of the caller's frame
                lat, lng = lat.copy(), lng.copy()
            lat[idx], lng[idx] = lat[src], lng[src]  # pid and t are equal within a tie
            dup = np.zeros(n, dtype=np.bool_)
            dup[1:] = same_key & (lat[1:] == lat[:-1]) & (lng[1:] == lng[:-1])
            if dup.any():
                keep = ~dup
                pid, t, lat, lng = pid[keep], t[keep], lat[keep], lng[keep]
                n = t.size
    new_seg = np.ones(n, dtype=np.bool_)
    if n > 1:
        new_seg[1:] = (pid[1:] != pid[:-1]) | (t[1:] - t[:-1] > max_gap_s)
    seg = np.cumsum(new_seg, dtype=np.int64) - 1
    starts = np.flatnonzero(new_seg)
    ends = np.append(starts[1:], n).astype(np.int64)
    # Unit vectors, with as few full-size temporaries as possible.
    lam = np.radians(lng)
    cos_phi = np.cos(np.radians(lat))
    x = np.cos(lam)
    x *= cos_phi
    y = np.sin(lam)
    y *= cos_phi
    del lam, cos_phi
    return _Fixes(
        pid=np.ascontiguousarray(pid, dtype=np.int64),
        t=np.ascontiguousarray(t, dtype=np.int64),
        lat=np.ascontiguousarray(lat),
        lng=np.ascontiguousarray(lng),
        x=x,
        y=y,
        z=np.sin(np.radians(lat)),
        seg=seg,
        seg_start=starts.astype(np.int64),
        seg_end=ends[seg],
    )


def _sort_key(pid: _I64, t: _I64) -> _I64:
    """One int64 that orders fixes by (pid, t): pid's rank among the persons × the time span.

    Pseudonyms are arbitrary 64-bit values, so they are first replaced by their rank
    among the distinct pids (a hash-based unique over the persons, then a binary search);
    small pids are used as they are.
    """
    t0 = int(t.min())
    span = int(t.max()) - t0 + 1
    p0 = int(pid.min())
    if (int(pid.max()) - p0 + 1) * span < 2**62:
        code = pid - p0
    else:
        persons = np.sort(pl.Series(pid).unique().to_numpy())
        if persons.size * span >= 2**62:
            raise SchemaError("stays: the time span of the fixes is too long to index (t: epoch seconds)")
        code = np.searchsorted(persons, pid).astype(np.int64)
    key: _I64 = code * span + (t - t0)
    return key


def _hav_threshold(radius_m: float) -> float:
    """hav(radius / R): a fix is within the radius iff its haversine term is at most this."""
    return math.sin(radius_m / EARTH_RADIUS_M / 2) ** 2


def _chord_hav(x1: _F64, y1: _F64, z1: _F64, x2: _F64, y2: _F64, z2: _F64) -> _F64:
    """hav(d / R) of the great-circle distance d between unit vectors, as chord² / 4.

    |u1 - u2|² = 2 - 2 cos(d/R) = 4 hav(d/R): the same quantity as the haversine formula
    (to ~1e-12 relative, i.e. nanometres at city scale) at half the cost, with no sine
    per pair. Monotone in d, so comparing it with :func:`_hav_threshold` decides "within
    the radius" without an ``asin`` or ``sqrt``.
    """
    dx, dy, dz = x2 - x1, y2 - y1, z2 - z1
    out: _F64 = (dx * dx + dy * dy + dz * dz) * 0.25
    return out


def _hav_idx(f: _Fixes, i: _I64, j: _I64) -> _F64:
    return _chord_hav(f.x[i], f.y[i], f.z[i], f.x[j], f.y[j], f.z[j])


def _within(f: _Fixes, i: _I64, j: _I64, thr: float) -> _B:
    """Whether fixes i and j are within the radius, pair by pair, in bounded memory.

    Chunks of 2^20 pairs keep the gathered coordinates (six floats per pair) in cache
    and out of the peak RSS.
    """
    out = np.empty(i.size, dtype=np.bool_)
    for a in range(0, i.size, _CHUNK):
        b = a + _CHUNK
        out[a:b] = _hav_idx(f, i[a:b], j[a:b]) <= thr
    return out


def _window_end(f: _Fixes, min_duration_s: int) -> _I64:
    """k(i): the first fix of i's segment at least ``min_duration_s`` after fix i, or -1.

    One ``searchsorted`` over a key that orders (segment, time) and keeps segments more
    than ``min_duration_s`` apart, so a window never reaches into the next segment.
    """
    t0 = int(f.t.min())
    span = int(f.t.max()) - t0 + min_duration_s + 1
    n_seg = int(f.seg[-1]) + 1
    if n_seg * span >= 2**62:
        raise SchemaError("stays: the time span of the fixes is too long to index (t must be epoch seconds)")
    key = f.seg * span + (f.t - t0)
    k = np.empty(f.n, dtype=np.int64)
    for a in range(0, f.n, 2 * _CHUNK):
        b = a + 2 * _CHUNK
        k[a:b] = np.searchsorted(key, key[a:b] + min_duration_s, side="left")
    k[k >= f.seg_end] = -1
    return k


def _qualifying(f: _Fixes, k: _I64, thr: float) -> _B:
    """Whether each fix is a qualifying anchor: fixes ``i+1 .. k(i)`` all within the radius.

    * The fix at the window's end, k(i), is in the window: one exact distance rules out
      nearly every moving fix.
    * Short windows (a phone reporting every few minutes) are checked fix by fix.
    * Long windows (dense loggers) get exact range extrema of latitude and longitude,
      which bound the haversine term of the farthest fix from below and above (see
      :func:`_bounds`): below the radius for sure → qualifies; beyond for sure → not.
      Only the few in between (a cloud a little wider than the radius diagonally, the
      arrival at a place) are checked fix by fix.

    Fixes are taken in chunks of 2^21, which bounds the temporaries (a chunk's windows
    may reach past its end; they are read, not cut).
    """
    q = np.zeros(f.n, dtype=np.bool_)
    for a in range(0, f.n, 2 * _CHUNK):
        _qualifying_part(f, k, thr, a, min(a + 2 * _CHUNK, f.n), q)
    return q


def _qualifying_part(f: _Fixes, k: _I64, thr: float, a: int, b: int, q: _B) -> None:
    """:func:`_qualifying` for the fixes ``a .. b-1``, marked in ``q``."""
    cand = a + np.flatnonzero(k[a:b] >= 0)
    if cand.size == 0:
        return
    kc = k[cand]
    near = _within(f, cand, kc, thr)
    cand, kc = cand[near], kc[near]
    short = kc - cand <= _SHORT_WINDOW
    si, sk = cand[short], kc[short]
    for d in range(1, _SHORT_WINDOW):  # offset k(i) - i was checked above
        longer = sk - si > d
        q[si[~longer]] = True
        si, sk = si[longer], sk[longer]
        inside = _within(f, si, si + d, thr)
        si, sk = si[inside], sk[inside]
    q[si] = True
    long_i, long_k = cand[~short], kc[~short]
    if long_i.size:
        pmin, pmax, lmin, lmax = _range_extrema(f, long_i + 1, long_k)
        phi, lam = np.radians(f.lat[long_i]), np.radians(f.lng[long_i])
        lower, upper = _bounds(phi, lam, np.cos(phi), pmin, pmax, lmin, lmax)
        sure = upper <= thr * (1 - _MARGIN)
        q[long_i[sure]] = True
        unsure = ~sure & (lower <= thr * (1 + _MARGIN))
        ci, ck = long_i[unsure], long_k[unsure]
        if ci.size:
            q[ci[_first_outside(f, ci, ci + 1, ck + 1, thr) > ck]] = True


def _range_extrema(f: _Fixes, lo: _I64, hi: _I64) -> tuple[_F64, _F64, _F64, _F64]:
    """Min/max of latitude and longitude (radians) over the index ranges ``[lo, hi]``.

    A sparse table (the extrema of every run of 2^level fixes) built one level at a time
    over only the fixes the remaining ranges cover: the ranges that need level l are
    answered from two overlapping runs, then level l+1 is made from level l. Memory
    stays at about one level, and the work shrinks with the levels: only dense loggers'
    stays need the deep ones.
    """
    length = hi - lo + 1
    level = np.zeros(length.size, dtype=np.int64)
    nz = length > 1
    level[nz] = np.floor(np.log2(length[nz])).astype(np.int64)
    level = np.where((1 << (level + 1)) <= length, level + 1, level)  # guard log2 rounding
    level = np.where((1 << level) > length, level - 1, level)
    top = int(level.max())
    out = [np.empty(lo.size) for _ in range(4)]
    reducers = (np.minimum, np.maximum, np.minimum, np.maximum)
    first = int(lo.min())
    last = int(hi.max())
    lat, lng = f.lat[first : last + 1], f.lng[first : last + 1]
    lo, hi = lo - first, hi - first
    span = last - first + 1  # positions (fixes); the level-l table is 2^l - 1 shorter
    qid = np.arange(lo.size)  # which query each remaining (lo, hi) answers
    tables: list[_F64] = []
    for lev in range(top + 1):
        width = 1 << lev
        # Keep only the fixes that the remaining ranges cover (never the moving ones).
        cover = np.cumsum(np.bincount(lo, minlength=span + 1) - np.bincount(hi + 1, minlength=span + 1))
        cover = cover[:span] > 0
        if lev == 0:
            phi, lam = np.radians(lat[cover]), np.radians(lng[cover])
            tables = [phi, phi, lam, lam]
        elif not cover.all():
            keep = cover[: tables[0].size]
            tables = [tab[keep] for tab in tables]
        if not cover.all():
            newpos = np.cumsum(cover) - 1
            lo, hi = newpos[lo], newpos[hi]
            span = int(newpos[-1]) + 1
        sel = level == lev
        if sel.any():
            a, b = lo[sel], hi[sel] - width + 1
            for o, tab, red in zip(out, tables, reducers, strict=True):
                o[qid[sel]] = red(tab[a], tab[b])
        if lev == top:
            break
        rest = ~sel
        level, lo, hi, qid = level[rest], lo[rest], hi[rest], qid[rest]
        tables = [red(tab[:-width], tab[width:]) for tab, red in zip(tables, reducers, strict=True)]
    return out[0], out[1], out[2], out[3]


def _bounds(
    phi: _F64, lam: _F64, cos_phi: _F64, pmin: _F64, pmax: _F64, lmin: _F64, lmax: _F64
) -> tuple[_F64, _F64]:
    """Lower and upper bounds on max hav(d/R) from a fix to a set of fixes, given the
    set's latitude range [pmin, pmax] and longitude range [lmin, lmax] (radians).

    hav(d/R) = sin²(Δφ/2) + cos φ₁ cos φ₂ sin²(Δλ/2). The upper bound takes each term at
    its largest over the box; the lower bound is the term of a fix known to exist: the
    one at the extreme latitude (at least sin²(Δφ/2)) or at the extreme longitude (at
    least cos φ₁ · min cos φ · sin²(Δλ/2)). Both are exact at the box's corners, so a
    compact cloud gets tight bounds; longitude differences are wrapped by the sines'
    period, so the antimeridian needs no special case.
    """
    dphi = np.maximum(pmax - phi, phi - pmin)
    s_phi = np.sin(dphi * 0.5) ** 2
    a, b = lmin - lam, lmax - lam
    s_lam_ends = np.maximum(np.sin(a * 0.5) ** 2, np.sin(b * 0.5) ** 2)
    s_lam_max = np.where((b >= np.pi) | (a <= -np.pi), 1.0, s_lam_ends)
    abs_lo, abs_hi = np.abs(pmin), np.abs(pmax)
    cos_max = np.where((pmin <= 0) & (pmax >= 0), 1.0, np.cos(np.minimum(abs_lo, abs_hi)))
    cos_min = np.cos(np.maximum(abs_lo, abs_hi))
    upper: _F64 = s_phi + cos_phi * cos_max * s_lam_max
    lower: _F64 = np.maximum(s_phi, cos_phi * cos_min * s_lam_ends)
    return lower, upper


def _first_outside(f: _Fixes, anchor: _I64, start: _I64, stop: _I64, thr: float) -> _I64:
    """For each anchor: the first index in ``[start, stop)`` beyond the radius, else stop.

    All anchors are scanned together, each in blocks whose length doubles at every step
    (32, 64, ...): a short run costs one small step, a stay of 30,000 fixes about ten,
    and an anchor leaves the batch as soon as its answer is known. A step evaluates at
    most ~1M distances (the anchors that do not fit wait for the next step), which bounds
    memory however many anchors there are.
    """
    big = np.iinfo(np.int64).max
    result = stop.copy()
    pos = start.copy()
    block = np.full(anchor.size, _FIRST_BLOCK, dtype=np.int64)
    active = np.flatnonzero(pos < stop)
    while active.size:
        lens = np.minimum(block[active], stop[active] - pos[active])
        fits = int(np.searchsorted(np.cumsum(lens), _MAX_BATCH, side="right"))
        now = active[: max(fits, 1)]
        lens = lens[: now.size]
        p = pos[now]
        offsets = np.cumsum(lens) - lens
        which = np.repeat(np.arange(now.size), lens)
        idx = p[which] + (np.arange(int(lens.sum())) - offsets[which])
        outside = _hav_idx(f, anchor[now][which], idx) > thr
        hit = np.minimum.reduceat(np.where(outside, idx, big), offsets)
        found = hit < big
        result[now[found]] = hit[found]
        pos[now] = p + lens
        block[now] *= 2
        done = np.zeros(anchor.size, dtype=np.bool_)
        done[now] = found | (pos[now] >= stop[now])
        active = active[~done[active]]
    return result


def _walk(f: _Fixes, k: _I64, qualifies: _B, thr: float) -> tuple[_I64, _I64]:
    """Walk the greedy chain of stay points of every segment in parallel.

    From position p of a segment, the textbook loop's next stay is anchored at the first
    qualifying fix q >= p and ends at j(q), the first fix beyond the radius from q (fixes
    up to k(q) are known to be inside, so the scan starts after k(q)). Returns the stays'
    first and one-past-last fix indices, in (segment, time) order.
    """
    anchors = np.flatnonzero(qualifies)
    starts: list[_I64] = []
    ends: list[_I64] = []
    if anchors.size == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    pos = f.seg_start
    while pos.size:
        slot = np.searchsorted(anchors, pos)
        q = anchors[np.minimum(slot, anchors.size - 1)]
        ok = (slot < anchors.size) & (q < f.seg_end[pos])
        q = q[ok]
        if q.size == 0:
            break
        j = _first_outside(f, q, k[q] + 1, f.seg_end[q], thr)
        starts.append(q)
        ends.append(j)
        pos = j[j < f.seg_end[q]]
    start = np.concatenate(starts)
    end = np.concatenate(ends)
    order = np.argsort(start, kind="stable")
    return start[order], end[order]


def _unit_sums(f: _Fixes, start: _I64, end: _I64) -> tuple[_F64, _F64, _F64]:
    """Sums of the fixes' unit vectors over each (disjoint, ordered) ``[start, end)``.

    """
    if start.size == 0:
        e = np.empty(0)
        return e, e, e
    inside = np.cumsum(np.bincount(start, minlength=f.n + 1) - np.bincount(end, minlength=f.n + 1))[: f.n] > 0
    lens = end - start
    offsets = np.cumsum(lens) - lens
    return (np.add.reduceat(f.x[inside], offsets), np.add.reduceat(f.y[inside], offsets),
            np.add.reduceat(f.z[inside], offsets))


def _centroid(x: _F64, y: _F64, z: _F64) -> tuple[_F64, _F64]:
    """Latitude and longitude (degrees) of the direction of summed unit vectors."""
    lat: _F64 = np.degrees(np.arctan2(z, np.hypot(x, y)))
    lng: _F64 = np.degrees(np.arctan2(y, x))
    return lat, lng
