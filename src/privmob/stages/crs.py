"""Coordinate reference systems of Chinese map data: WGS-84, GCJ-02 and BD-09.

Why this module exists
----------------------
GPS receivers report WGS-84. Maps published in China must by law use GCJ-02 (the "Mars"
datum, 国测局坐标): WGS-84 pushed through a deliberately obfuscating, non-linear offset.
Baidu adds its own further offset on top (BD-09). Data exported from Chinese map services —
AMap/Gaode district boundaries, geocoded addresses, app location logs — is therefore often
GCJ-02 or BD-09 *without saying so* (the GeoJSON of ``../shared/data/boundaries`` is a case
in point). In the populous east of China the offset is 300–700 m (500–610 m all over
Beijing), mostly eastward; only in the far west does it drop to tens of metres. That is more
than the edge of an H3 resolution-9 cell (~175 m). Mixing datums silently moves pings into the wrong
cells and cells out of the wrong boundary polygon, so privmob converts everything to WGS-84
*before* H3 indexing.

The math
--------
The GCJ-02 forward offset is the widely published, public-domain reconstruction (known as
"eviltransform" / "coordtransform"): two smooth fields of metre-valued offsets in
``x = lng − 105`` and ``y = lat − 35`` (a low-order polynomial, a ``√|x|`` term and sine
series), turned into degrees with the radii of curvature of the Krasovsky 1940 ellipsoid
(``a = 6378245 m``, ``e² = 0.00669342162296594323``). It is defined only inside a rough
bounding box of China (:func:`in_china`); outside it GCJ-02 equals WGS-84.

There is no closed-form inverse. :func:`to_wgs84` inverts the forward map by fixed-point
iteration ``w ← w + (target − F(w))``: the offset changes by less than 10⁻² degree per
degree, so each step gains two decimal digits or more (worst error over the China box after
1, 2, 3, 4, 5 steps: 6e-5, 4e-7, 3e-9, 2e-11, 1e-13 degree). The iteration stops once the
largest step is below ``1e-9`` degree (~0.1 mm), with a hard cap on the number of steps.

BD-09 is GCJ-02 converted with a small polar perturbation around (0, 0) — radius
``+ 2e-5·sin(lat·x_pi)``, angle ``+ 3e-6·cos(lng·x_pi)`` with ``x_pi = π·3000/180`` — then
shifted by (+0.006 lat, +0.0065 lng). The usual published inverse simply subtracts the same
terms evaluated at the BD-09 point, which is off by up to ~0.2 m; here it is only the first
guess of the same fixed-point refinement, so BD-09 → GCJ-02 round trips are exact to
~10⁻¹² degree. BD-09 → WGS-84 goes through GCJ-02.

Outside China
-------------
All three systems are treated as WGS-84 outside the :func:`in_china` box: GCJ-02 is
undefined there (the standard formulas return the input) and, to keep one rule in both code
paths, the BD-09 offset is not applied there either. The box test is applied to the
*input* coordinates of each conversion, identically in the NumPy and Polars paths.

Two implementations, one formula
--------------------------------
:func:`to_wgs84` / :func:`from_wgs84` work on NumPy arrays; :func:`polars_to_wgs84` builds
the same computation as native Polars expressions (no Python UDF), so it runs inside lazy /
streaming plans. Both evaluate the *same* Python functions below (``_gcj_offset`` etc.),
written once against a tiny set of element-wise operations, so they cannot drift apart; they
agree to ~1e-11 degree (the Polars path runs a fixed number of steps). The Polars iteration
keeps its state in a struct whose fields are rebound by ``struct.with_fields`` (see
:class:`_StructLet`) — this keeps the expression tree linear in the number of steps instead
of exponential.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final, Literal, TypeVar, get_args

import numpy as np
import numpy.typing as npt
import polars as pl
import shapely

from privmob.errors import ConfigError

__all__ = [
    "CRS",
    "from_wgs84",
    "geometry_to_wgs84",
    "in_china",
    "polars_frame_to_wgs84",
    "polars_to_wgs84",
    "to_wgs84",
]

CRS = Literal["wgs84", "gcj02", "bd09"]
_CRS_NAMES: Final[tuple[str, ...]] = get_args(CRS)

FloatArray = npt.NDArray[np.float64]

# --- constants of the published formulas -------------------------------------------------
#: Semi-major axis (m) and first eccentricity squared of the Krasovsky 1940 ellipsoid.
_A: Final = 6378245.0
_EE: Final = 0.00669342162296594323
#: Baidu's angular constant: π·3000/180.
_X_PI: Final = math.pi * 3000.0 / 180.0
_BD_DLAT: Final = 0.006
_BD_DLNG: Final = 0.0065

#: The usual rough bounding box of China used with the GCJ-02 formula (inclusive).
_CHINA_LAT: Final = (0.8293, 55.8271)
_CHINA_LNG: Final = (72.004, 137.8347)

#: Fixed-point iteration: stop when the largest step is below this (degrees, ~0.1 mm) ...
_TOL_DEG: Final = 1e-9
#: ... or after this many steps (NumPy path; it normally stops after 5 GCJ-02 / 3 BD-09 steps).
_MAX_ITER: Final = 25
#: Steps of the Polars path, which cannot stop on a data-dependent test. Worst error left over
#: the China box: ~2e-11 degree (GCJ-02, 4 steps) and ~1e-12 degree (BD-09, 3 steps from the
#: published approximate inverse).
_GCJ_STEPS: Final = 4
_BD_STEPS: Final = 3
#: Points per block in the NumPy path (keeps temporaries in cache).
_CHUNK: Final = 1 << 16

_Num = TypeVar("_Num", FloatArray, pl.Expr)
#: ``let(name, value)`` — bind an intermediate value used more than once. Identity for NumPy;
#: for Polars it stores the value as a struct field and returns a reference to it.
_Let = Callable[[str, _Num], _Num]
#: A forward map ``(lat, lng, let) -> (lat', lng')``.
_Forward = Callable[[_Num, _Num, _Let[_Num]], tuple[_Num, _Num]]


# --- element-wise operations shared by the NumPy and Polars paths -------------------------
def _sin(v: _Num) -> _Num:
    if isinstance(v, pl.Expr):
        return v.sin()
    return np.sin(v)


def _cos(v: _Num) -> _Num:
    if isinstance(v, pl.Expr):
        return v.cos()
    return np.cos(v)


def _sqrt(v: _Num) -> _Num:
    if isinstance(v, pl.Expr):
        return v.sqrt()
    return np.sqrt(v)


def _abs(v: _Num) -> _Num:
    if isinstance(v, pl.Expr):
        return v.abs()
    return np.abs(v)


def _atan2(y: _Num, x: _Num) -> _Num:
    if isinstance(y, pl.Expr):
        assert isinstance(x, pl.Expr)
        return pl.arctan2(y, x)
    assert isinstance(x, np.ndarray)
    return np.arctan2(y, x)


# --- the formulas, written once -----------------------------------------------------------
def _no_binding(name: str, value: _Num) -> _Num:
    """The NumPy "let": a value is already computed once."""
    return value


def _gcj_offset(lat: _Num, lng: _Num, let: _Let[_Num] = _no_binding) -> tuple[_Num, _Num]:
    """GCJ-02 minus WGS-84 (degrees lat, degrees lng) at the WGS-84 point ``(lat, lng)``.

    The two fields are metre offsets; dividing by the meridian radius ``M`` and by the
    parallel radius ``N·cos φ`` of the Krasovsky ellipsoid turns them into degrees.
    ``let`` names intermediate values used more than once (see :class:`_StructLet`).
    """
    pi = math.pi
    x = let("x", lng - 105.0)
    y = let("y", lat - 35.0)
    # A fast ripple along x, common to both fields.
    ripple_x = let("ripple_x", (20.0 * _sin(6.0 * pi * x) + 20.0 * _sin(2.0 * pi * x)) * (2.0 / 3.0))
    north_m = (
        -100.0
        + 2.0 * x
        + 3.0 * y
        + 0.2 * y * y
        + 0.1 * x * y
        + 0.2 * _sqrt(_abs(x))
        + ripple_x
        + (20.0 * _sin(pi * y) + 40.0 * _sin(pi * y / 3.0)) * (2.0 / 3.0)
        + (160.0 * _sin(pi * y / 12.0) + 320.0 * _sin(pi * y / 30.0)) * (2.0 / 3.0)
    )
    east_m = (
        300.0
        + x
        + 2.0 * y
        + 0.1 * x * x
        + 0.1 * x * y
        + 0.1 * _sqrt(_abs(x))
        + ripple_x
        + (20.0 * _sin(pi * x) + 40.0 * _sin(pi * x / 3.0)) * (2.0 / 3.0)
        + (150.0 * _sin(pi * x / 12.0) + 300.0 * _sin(pi * x / 30.0)) * (2.0 / 3.0)
    )
    phi = lat * (pi / 180.0)
    sin_phi = _sin(phi)
    w = let("w", 1.0 - _EE * sin_phi * sin_phi)  # 1 − e² sin²φ
    sqrt_w = let("sqrt_w", _sqrt(w))
    meridian_r = (_A * (1.0 - _EE)) / (w * sqrt_w)
    parallel_r = (_A / sqrt_w) * _cos(phi)
    return north_m * (180.0 / pi) / meridian_r, east_m * (180.0 / pi) / parallel_r


def _gcj_forward(lat: _Num, lng: _Num, let: _Let[_Num] = _no_binding) -> tuple[_Num, _Num]:
    """WGS-84 → GCJ-02 (no box test)."""
    dlat, dlng = _gcj_offset(lat, lng, let)
    return lat + dlat, lng + dlng


def _bd_forward(lat: _Num, lng: _Num, let: _Let[_Num] = _no_binding) -> tuple[_Num, _Num]:
    """GCJ-02 → BD-09: perturb radius and angle around (0, 0), then shift."""
    r = let("r", _sqrt(lng * lng + lat * lat) + 0.00002 * _sin(lat * _X_PI))
    theta = let("theta", _atan2(lat, lng) + 0.000003 * _cos(lng * _X_PI))
    return r * _sin(theta) + _BD_DLAT, r * _cos(theta) + _BD_DLNG


def _bd_first_guess(lat: _Num, lng: _Num, let: _Let[_Num] = _no_binding) -> tuple[_Num, _Num]:
    """The commonly published approximate BD-09 → GCJ-02 (~0.2 m off): undo the shift, then
    subtract the perturbation terms evaluated at the shifted point."""
    y = let("y", lat - _BD_DLAT)
    x = let("x", lng - _BD_DLNG)
    r = let("r", _sqrt(x * x + y * y) - 0.00002 * _sin(y * _X_PI))
    theta = let("theta", _atan2(y, x) - 0.000003 * _cos(x * _X_PI))
    return r * _sin(theta), r * _cos(theta)


def _fixed_point_step(
    forward: _Forward[_Num],
    lat: _Num,
    lng: _Num,
    target_lat: _Num,
    target_lng: _Num,
    let: _Let[_Num] = _no_binding,
) -> tuple[_Num, _Num]:
    """One step ``w ← w + (target − F(w))`` towards the inverse of a near-identity map ``F``."""
    f_lat, f_lng = forward(lat, lng, let)
    return lat + (target_lat - f_lat), lng + (target_lng - f_lng)


def _check_crs(crs: str) -> None:
    if crs not in _CRS_NAMES:
        raise ConfigError(f"unknown coordinate system {crs!r}; use one of {', '.join(_CRS_NAMES)}")


# --- NumPy ---------------------------------------------------------------------------------
def _as_float_arrays(lat: npt.ArrayLike, lng: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    lat_a, lng_a = np.broadcast_arrays(np.asarray(lat, dtype=np.float64), np.asarray(lng, dtype=np.float64))
    return lat_a, lng_a


def in_china(lat: npt.ArrayLike, lng: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """True where ``(lat, lng)`` is inside the rough bounding box of China used with GCJ-02.

    This is the box of the published formulas (lat 0.8293–55.8271, lng 72.004–137.8347,
    inclusive), not a border: it also covers parts of neighbouring countries, which is what
    the formulas (and the map services that use them) do too. NaN is outside.
    """
    lat_a, lng_a = _as_float_arrays(lat, lng)
    inside: npt.NDArray[np.bool_] = (
        (lat_a >= _CHINA_LAT[0])
        & (lat_a <= _CHINA_LAT[1])
        & (lng_a >= _CHINA_LNG[0])
        & (lng_a <= _CHINA_LNG[1])
    )
    return inside


def _invert_np(
    forward: _Forward[FloatArray],
    guess: tuple[FloatArray, FloatArray],
    target: tuple[FloatArray, FloatArray],
) -> tuple[FloatArray, FloatArray]:
    """Fixed-point inverse of ``forward`` at ``target``: iterate until the largest step is
    below :data:`_TOL_DEG` or for at most :data:`_MAX_ITER` steps."""
    lat, lng = guess
    for _ in range(_MAX_ITER):
        new_lat, new_lng = _fixed_point_step(forward, lat, lng, target[0], target[1])
        step = float(np.max(np.maximum(np.abs(new_lat - lat), np.abs(new_lng - lng)), initial=0.0))
        lat, lng = new_lat, new_lng
        if step < _TOL_DEG:
            break
    return lat, lng


def _gcj_to_wgs_np(lat: FloatArray, lng: FloatArray) -> tuple[FloatArray, FloatArray]:
    return _invert_np(_gcj_forward, (lat, lng), (lat, lng))


def _bd_to_wgs_np(lat: FloatArray, lng: FloatArray) -> tuple[FloatArray, FloatArray]:
    gcj = _invert_np(_bd_forward, _bd_first_guess(lat, lng), (lat, lng))
    return _gcj_to_wgs_np(*gcj)


def _wgs_to_bd_np(lat: FloatArray, lng: FloatArray) -> tuple[FloatArray, FloatArray]:
    return _bd_forward(*_gcj_forward(lat, lng))


def _apply_in_china(
    lat: npt.ArrayLike,
    lng: npt.ArrayLike,
    kernel: Callable[[FloatArray, FloatArray], tuple[FloatArray, FloatArray]],
) -> tuple[FloatArray, FloatArray]:
    """``kernel`` applied to the points inside :func:`in_china`, the others copied unchanged.

    Works in blocks of :data:`_CHUNK` points: the formulas make ~100 temporary arrays per
    step, and keeping them in cache is ~2x faster than whole-array arithmetic on 10M points.
    """
    lat_a, lng_a = _as_float_arrays(lat, lng)
    out_lat, out_lng = lat_a.copy(), lng_a.copy()
    flat_lat, flat_lng = out_lat.reshape(-1), out_lng.reshape(-1)  # views: shapes are contiguous
    todo = np.flatnonzero(in_china(flat_lat, flat_lng))
    for start in range(0, todo.size, _CHUNK):
        sel = todo[start : start + _CHUNK]
        flat_lat[sel], flat_lng[sel] = kernel(flat_lat[sel], flat_lng[sel])
    return out_lat, out_lng


def to_wgs84(lat: npt.ArrayLike, lng: npt.ArrayLike, crs: CRS) -> tuple[FloatArray, FloatArray]:
    """Convert coordinates in ``crs`` to WGS-84, element-wise over (broadcast) arrays.

    GCJ-02 is inverted by fixed-point iteration to < 1e-9 degree; BD-09 goes to GCJ-02 the
    same way, then to WGS-84. Points outside :func:`in_china` (judged on the input) and NaN
    are returned unchanged. Always returns new float64 arrays.
    """
    _check_crs(crs)
    if crs == "gcj02":
        return _apply_in_china(lat, lng, _gcj_to_wgs_np)
    if crs == "bd09":
        return _apply_in_china(lat, lng, _bd_to_wgs_np)
    lat_a, lng_a = _as_float_arrays(lat, lng)
    return lat_a.copy(), lng_a.copy()


def from_wgs84(lat: npt.ArrayLike, lng: npt.ArrayLike, crs: CRS) -> tuple[FloatArray, FloatArray]:
    """Convert WGS-84 coordinates to ``crs`` (the forward formulas), element-wise.

    Points outside :func:`in_china` (judged on the WGS-84 input) and NaN are unchanged.
    """
    _check_crs(crs)
    if crs == "gcj02":
        return _apply_in_china(lat, lng, _gcj_forward)
    if crs == "bd09":
        return _apply_in_china(lat, lng, _wgs_to_bd_np)
    lat_a, lng_a = _as_float_arrays(lat, lng)
    return lat_a.copy(), lng_a.copy()


# --- Polars --------------------------------------------------------------------------------
def _in_china_expr(lat: pl.Expr, lng: pl.Expr) -> pl.Expr:
    """:func:`in_china` as a Polars expression (null is outside)."""
    inside = (lat >= _CHINA_LAT[0]) & (lat <= _CHINA_LAT[1]) & (lng >= _CHINA_LNG[0]) & (lng <= _CHINA_LNG[1])
    return inside.fill_null(False)


def _output_name(expr: pl.Expr, default: str) -> str:
    try:
        name: str = expr.meta.output_name()
    except pl.exceptions.ComputeError:
        return default
    return name


class _StructLet:
    """Let-bindings for Polars expressions, kept as fields of one struct.

    An expression that refers to a sub-expression twice evaluates it twice, and iterating
    ``w ← f(w)`` would make the expression tree grow exponentially. Instead the state lives
    in a struct; :meth:`__call__` stores a value as a field (one ``struct.with_fields``) and
    returns ``pl.field(name)``, which later fields may use as often as they like.
    """

    def __init__(self, **fields: pl.Expr) -> None:
        self.state: pl.Expr = pl.struct([value.alias(name) for name, value in fields.items()])

    def __call__(self, name: str, value: pl.Expr) -> pl.Expr:
        self.state = self.state.struct.with_fields(value.alias(name))
        return pl.field(name)

    def set(self, **fields: pl.Expr) -> None:
        """Rebind several fields at once (all computed from the previous state)."""
        self.state = self.state.struct.with_fields(**fields)


def _polars_state(lat: pl.Expr, lng: pl.Expr, crs: CRS) -> pl.Expr:
    """A struct whose fields ``w_lat``/``w_lng`` hold ``(lat, lng)`` converted to WGS-84
    (plus working fields). ``crs`` must not be ``"wgs84"``."""
    t_lat, t_lng = pl.field("t_lat"), pl.field("t_lng")
    w_lat, w_lng = pl.field("w_lat"), pl.field("w_lng")
    g_lat, g_lng = pl.field("g_lat"), pl.field("g_lng")
    let = _StructLet(t_lat=lat.cast(pl.Float64), t_lng=lng.cast(pl.Float64))
    if crs == "bd09":
        first_lat, first_lng = _bd_first_guess(t_lat, t_lng, let)
        let.set(w_lat=first_lat, w_lng=first_lng)
        for _ in range(_BD_STEPS):
            new_lat, new_lng = _fixed_point_step(_bd_forward, w_lat, w_lng, t_lat, t_lng, let)
            let.set(w_lat=new_lat, w_lng=new_lng)
        let.set(g_lat=w_lat, g_lng=w_lng)
    else:
        let.set(g_lat=t_lat, g_lng=t_lng, w_lat=t_lat, w_lng=t_lng)
    for _ in range(_GCJ_STEPS):
        new_lat, new_lng = _fixed_point_step(_gcj_forward, w_lat, w_lng, g_lat, g_lng, let)
        let.set(w_lat=new_lat, w_lng=new_lng)
    inside = _in_china_expr(t_lat, t_lng)
    let.set(
        w_lat=pl.when(inside).then(w_lat).otherwise(t_lat),
        w_lng=pl.when(inside).then(w_lng).otherwise(t_lng),
    )
    return let.state


def polars_to_wgs84(lat: pl.Expr, lng: pl.Expr, crs: CRS) -> tuple[pl.Expr, pl.Expr]:
    """:func:`to_wgs84` as native Polars expressions (no Python UDF; streaming-safe).

    Evaluates the same formulas as the NumPy path, with a fixed number of fixed-point steps
    (results agree with :func:`to_wgs84` to ~1e-10 degree); the iteration state lives in a
    struct (see :class:`_StructLet`), so the plan stays small. The results are Float64 and
    keep the output names of ``lat`` and ``lng``, so
    ``frame.with_columns(*polars_to_wgs84(pl.col("lat"), pl.col("lng"), "gcj02"))`` converts
    in place. Null and out-of-China rows are returned unchanged.

    Polars cannot share work between expressions that contain ``struct.with_fields``, so
    using *both* expressions computes the conversion twice; :func:`polars_frame_to_wgs84`
    computes it once (about twice as fast).
    """
    _check_crs(crs)
    lat_name, lng_name = _output_name(lat, "lat"), _output_name(lng, "lng")
    if crs == "wgs84":
        return lat.cast(pl.Float64).alias(lat_name), lng.cast(pl.Float64).alias(lng_name)
    state = _polars_state(lat, lng, crs)
    return state.struct.field("w_lat").alias(lat_name), state.struct.field("w_lng").alias(lng_name)


_FrameT = TypeVar("_FrameT", pl.DataFrame, pl.LazyFrame)
_STATE_COLUMN: Final = "__privmob_crs_state"


def polars_frame_to_wgs84(frame: _FrameT, crs: CRS, *, lat: str = "lat", lng: str = "lng") -> _FrameT:
    """Replace columns ``lat``/``lng`` of a DataFrame or LazyFrame (in ``crs``) by WGS-84.

    Same result as :func:`polars_to_wgs84`, but the conversion is materialised once in a
    temporary struct column and both coordinates are read from it, so it is computed once.
    Lazy frames stay lazy and streamable.
    """
    _check_crs(crs)
    if crs == "wgs84":
        return frame.with_columns(pl.col(lat).cast(pl.Float64), pl.col(lng).cast(pl.Float64))
    state = pl.col(_STATE_COLUMN)
    return (
        frame.with_columns(_polars_state(pl.col(lat), pl.col(lng), crs).alias(_STATE_COLUMN))
        .with_columns(state.struct.field("w_lat").alias(lat), state.struct.field("w_lng").alias(lng))
        .drop(_STATE_COLUMN)
    )


# --- shapely -------------------------------------------------------------------------------
def geometry_to_wgs84(geom: shapely.Geometry, crs: CRS) -> shapely.Geometry:
    """Convert a shapely geometry (or array of geometries) in ``crs`` to WGS-84.

    Coordinates are ``(x, y) = (lng, lat)``; Z values, if any, are kept. Uses
    :func:`shapely.transform` with the vectorised :func:`to_wgs84`, so a polygon with a
    million vertices converts in one call. A GCJ-02 boundary used unconverted against WGS-84
    pings mis-assigns a ~0.5 km wide strip along its whole border.
    """
    _check_crs(crs)
    if crs == "wgs84":
        return geom

    def convert(coords: FloatArray) -> FloatArray:
        out = coords.copy()
        out[:, 1], out[:, 0] = to_wgs84(coords[:, 1], coords[:, 0], crs)
        return out

    return shapely.transform(geom, convert, include_z=True)
