"""privmob.stages.crs: WGS-84 / GCJ-02 / BD-09 conversion (NumPy, Polars and shapely paths)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import polars_h3 as plh3
import pytest
import shapely
from shapely.geometry import shape

from privmob.errors import ConfigError
from privmob.stages import crs

FloatArray = npt.NDArray[np.float64]

#: ../shared/data next to the repository (not part of it; tests that need it skip without it).
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
EARTH_RADIUS_M = 6_371_008.8
N_RANDOM = 100_000


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available: the boundary checks need ../shared/data next to the repo")
    return path


def haversine_m(lat1: FloatArray, lng1: FloatArray, lat2: FloatArray, lng2: FloatArray) -> FloatArray:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dlat, dlng = p2 - p1, np.radians(lng2 - lng1)
    a = np.sin(dlat / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlng / 2) ** 2
    dist: FloatArray = 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(a))
    return dist


@pytest.fixture(scope="module")
def wgs_points() -> tuple[FloatArray, FloatArray]:
    """100k WGS-84 points spread over China (seeded)."""
    rng = np.random.default_rng(20261126)
    return rng.uniform(18.0, 53.0, N_RANDOM), rng.uniform(73.5, 135.0, N_RANDOM)


# --- round trips and the two implementations ------------------------------------------------
@pytest.mark.parametrize("system", ["gcj02", "bd09"])
def test_round_trip_is_below_1_m(system: crs.CRS, wgs_points: tuple[FloatArray, FloatArray]) -> None:
    lat, lng = wgs_points
    lat_c, lng_c = crs.from_wgs84(lat, lng, system)
    shift = haversine_m(lat, lng, lat_c, lng_c)
    assert shift.min() > 10.0 and np.median(shift) > 300.0  # really shifted (least in the far west)
    lat_back, lng_back = crs.to_wgs84(lat_c, lng_c, system)
    err = haversine_m(lat, lng, lat_back, lng_back)
    assert err.max() < 1.0
    # Much better than required: the fixed-point inverse stops at < 1e-9 degree (~0.1 mm).
    assert np.abs(lat_back - lat).max() < 1e-9
    assert np.abs(lng_back - lng).max() < 1e-9


@pytest.mark.parametrize("system", ["wgs84", "gcj02", "bd09"])
def test_numpy_and_polars_paths_agree(system: crs.CRS, wgs_points: tuple[FloatArray, FloatArray]) -> None:
    lat_c, lng_c = crs.from_wgs84(*wgs_points, system)
    frame = pl.DataFrame({"lat": lat_c, "lng": lng_c})
    expected_lat, expected_lng = crs.to_wgs84(lat_c, lng_c, system)

    by_frame = crs.polars_frame_to_wgs84(frame.lazy(), system).collect(engine="streaming")
    # The pair of expressions computes the conversion twice: check it on a slice to save time.
    by_exprs = frame.head(20_000).select(*crs.polars_to_wgs84(pl.col("lat"), pl.col("lng"), system))
    for out in (by_frame, by_exprs):
        assert out.columns == ["lat", "lng"]
        assert out.schema == pl.Schema({"lat": pl.Float64, "lng": pl.Float64})
        assert np.abs(out["lat"].to_numpy() - expected_lat[: out.height]).max() < 1e-9
        assert np.abs(out["lng"].to_numpy() - expected_lng[: out.height]).max() < 1e-9


def test_inverse_converges_across_the_sqrt_kink_at_105_e() -> None:
    """The GCJ-02 offset has a ``√|lng − 105|`` term (infinite slope at 105°E, near Bayannur):
    the fixed-point inverse still has to reach 1e-9 degree there, in both paths."""
    rng = np.random.default_rng(105)
    lat = rng.uniform(25.0, 45.0, 10_000)
    lng = 105.0 + rng.normal(0.0, 1e-4, 10_000) * rng.choice([1.0, 1e-3, 1e-6], 10_000)
    for system in ("gcj02", "bd09"):
        lat_c, lng_c = crs.from_wgs84(lat, lng, system)
        back_lat, back_lng = crs.to_wgs84(lat_c, lng_c, system)
        assert np.abs(back_lat - lat).max() < 1e-9 and np.abs(back_lng - lng).max() < 1e-9
        out = crs.polars_frame_to_wgs84(pl.DataFrame({"lat": lat_c, "lng": lng_c}), system)
        assert np.abs(out["lat"].to_numpy() - back_lat).max() < 1e-9
        assert np.abs(out["lng"].to_numpy() - back_lng).max() < 1e-9


def test_polars_plan_is_native_and_keeps_names() -> None:
    frame = pl.LazyFrame({"latitude": [39, 40], "longitude": [116, 117], "other": ["a", "b"]})  # Int64
    lat, lng = crs.polars_to_wgs84(pl.col("latitude"), pl.col("longitude"), "gcj02")
    plan = frame.with_columns(lat, lng).explain(engine="streaming")
    assert "python" not in plan.lower()  # no map_elements / map_batches UDF
    out = frame.with_columns(lat, lng).collect()
    assert out.columns == ["latitude", "longitude", "other"]
    expected = crs.to_wgs84(np.array([39.0, 40.0]), np.array([116.0, 117.0]), "gcj02")
    np.testing.assert_allclose(out["latitude"].to_numpy(), expected[0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["longitude"].to_numpy(), expected[1], rtol=0, atol=1e-9)
    converted = crs.polars_frame_to_wgs84(
        frame.select(pl.col("latitude").alias("y"), pl.col("longitude").alias("x")), "gcj02", lat="y", lng="x"
    ).collect()
    assert converted.columns == ["y", "x"]
    np.testing.assert_allclose(converted["y"].to_numpy(), expected[0], rtol=0, atol=1e-9)


# --- outside China, missing values, inputs ------------------------------------------------
OUTSIDE = {
    "London": (51.5007, -0.1246),
    "New York": (40.6892, -74.0445),
    "Sydney": (-33.8568, 151.2153),
    "Moscow": (55.7539, 37.6208),
    "Tokyo": (35.6586, 139.7454),
    "Cape Town": (-33.9628, 18.4098),
}


@pytest.mark.parametrize("system", ["gcj02", "bd09"])
def test_outside_china_is_unchanged(system: crs.CRS) -> None:
    lat = np.array([p[0] for p in OUTSIDE.values()])
    lng = np.array([p[1] for p in OUTSIDE.values()])
    assert not crs.in_china(lat, lng).any()
    for convert in (crs.to_wgs84, crs.from_wgs84):
        out_lat, out_lng = convert(lat, lng, system)
        np.testing.assert_array_equal(out_lat, lat)
        np.testing.assert_array_equal(out_lng, lng)
    frame = pl.DataFrame({"lat": lat, "lng": lng})
    assert frame.select(*crs.polars_to_wgs84(pl.col("lat"), pl.col("lng"), system)).equals(frame)
    assert crs.polars_frame_to_wgs84(frame, system).equals(frame)


def test_in_china_box() -> None:
    lat = np.array([39.9, 22.3, 51.5, np.nan, 0.8293, 55.8271, 0.8292, 40.0, 40.0])
    lng = np.array([116.4, 114.2, -0.12, 116.4, 100.0, 100.0, 100.0, 72.004, 137.8348])
    expected = [True, True, False, False, True, True, False, True, False]
    assert crs.in_china(lat, lng).tolist() == expected
    assert crs.in_china(39.9, 116.4).shape == ()  # scalars broadcast


@pytest.mark.parametrize("system", ["gcj02", "bd09"])
def test_missing_and_non_finite_values_pass_through(system: crs.CRS) -> None:
    lat = np.array([np.nan, 39.9, np.inf, 39.9])
    lng = np.array([116.4, np.nan, 116.4, 116.4])
    out_lat, out_lng = crs.to_wgs84(lat, lng, system)
    np.testing.assert_array_equal(out_lat[:3], lat[:3])
    np.testing.assert_array_equal(out_lng[:3], lng[:3])
    assert abs(out_lng[3] - 116.4) > 1e-3  # the valid row is converted
    frame = pl.DataFrame({"lat": [None, 39.9, float("nan"), 39.9], "lng": [116.4, None, 116.4, 116.4]})
    out = crs.polars_frame_to_wgs84(frame, system)
    assert out["lat"].is_null().to_list() == [True, False, False, False]
    assert out["lng"].is_null().to_list() == [False, True, False, False]
    assert np.isnan(out["lat"][2])
    assert out["lat"][1] == 39.9
    assert out["lng"][3] == pytest.approx(out_lng[3], abs=1e-9)


def test_inputs_broadcast_and_are_not_modified() -> None:
    lat = np.array([[39.9, 40.0], [31.2, 22.5]])
    lng = np.array(116.4)
    lat_before = lat.copy()
    out_lat, out_lng = crs.to_wgs84(lat, lng, "gcj02")
    assert out_lat.shape == out_lng.shape == (2, 2)
    assert out_lat.dtype == np.float64
    np.testing.assert_array_equal(lat, lat_before)
    same_lat, _ = crs.to_wgs84(lat, lng, "wgs84")
    np.testing.assert_array_equal(same_lat, lat)
    assert same_lat is not lat
    scalar_lat, scalar_lng = crs.from_wgs84(39, 116, "bd09")  # ints and scalars
    assert scalar_lat.shape == () and scalar_lng.dtype == np.float64


def test_unknown_crs_is_a_config_error() -> None:
    for call in (
        lambda: crs.to_wgs84(np.array([1.0]), np.array([1.0]), "epsg4326"),  # type: ignore[arg-type]
        lambda: crs.from_wgs84(np.array([1.0]), np.array([1.0]), "GCJ02"),  # type: ignore[arg-type]
        lambda: crs.polars_to_wgs84(pl.col("a"), pl.col("b"), "mars"),  # type: ignore[arg-type]
        lambda: crs.geometry_to_wgs84(shapely.Point(116, 40), "bd-09"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ConfigError, match="unknown coordinate system"):
            call()


# --- known point pairs ---------------------------------------------------------------------
# Published outputs of the public-domain formula: the README of wandergis/coordtransform
# (Tiananmen area, lng 116.404 lat 39.915) and the test table of googollee/eviltransform.
# Given as (lat, lng) in, (lat, lng) out.
PUBLISHED_WGS_TO_GCJ = [
    ((39.915, 116.404), (39.91640428150164, 116.41024449916938)),  # Beijing, coordtransform
    ((31.1774276, 121.5272106), (31.17530398364597, 121.531541859215)),  # Shanghai, eviltransform
    ((22.543847, 113.912316), (22.540796131694766, 113.9171764808363)),  # Shenzhen, eviltransform
    ((39.911954, 116.377817), (39.91334545536069, 116.38404722455657)),  # Beijing, eviltransform
]
PUBLISHED_WGS_TO_BD = [((39.915, 116.404), (39.922699552216216, 116.41662724378733))]  # coordtransform


@pytest.mark.parametrize(
    ("system", "wgs", "published"),
    [("gcj02", w, p) for w, p in PUBLISHED_WGS_TO_GCJ] + [("bd09", w, p) for w, p in PUBLISHED_WGS_TO_BD],
)
def test_published_reference_pairs(
    system: crs.CRS, wgs: tuple[float, float], published: tuple[float, float]
) -> None:
    lat, lng = crs.from_wgs84(np.array([wgs[0]]), np.array([wgs[1]]), system)
    assert lat[0] == pytest.approx(published[0], abs=1e-9)
    assert lng[0] == pytest.approx(published[1], abs=1e-9)
    back_lat, back_lng = crs.to_wgs84(np.array([published[0]]), np.array([published[1]]), system)
    assert haversine_m(back_lat, back_lng, np.array([wgs[0]]), np.array([wgs[1]]))[0] < 0.01


def test_gcj02_to_bd09_published_pair() -> None:
    # coordtransform README: gcj02tobd09(116.404, 39.915) -> (116.41036949371029, 39.92133699351021);
    # our BD-09 -> WGS-84 must go back through exactly that GCJ-02 point.
    gcj_lat, gcj_lng = crs.to_wgs84(np.array([39.92133699351021]), np.array([116.41036949371029]), "bd09")
    wgs_lat, wgs_lng = crs.to_wgs84(np.array([39.915]), np.array([116.404]), "gcj02")
    assert gcj_lat[0] == pytest.approx(wgs_lat[0], abs=1e-9)
    assert gcj_lng[0] == pytest.approx(wgs_lng[0], abs=1e-9)


def test_beijing_shift_is_half_a_kilometre_east_north_east() -> None:
    """README.cnmaps: the GCJ-02 shift is ~500-560 m in these cities, mostly eastward."""
    rng = np.random.default_rng(7)
    lat = rng.uniform(39.4415, 41.0592, 10_000)  # Beijing bbox (WGS-84)
    lng = rng.uniform(115.4168, 117.5081, 10_000)
    gcj_lat, gcj_lng = crs.from_wgs84(lat, lng, "gcj02")
    north = haversine_m(lat, lng, gcj_lat, lng) * np.sign(gcj_lat - lat)
    east = haversine_m(lat, lng, lat, gcj_lng) * np.sign(gcj_lng - lng)
    dist = haversine_m(lat, lng, gcj_lat, gcj_lng)
    assert dist.min() > 300.0 and dist.max() < 700.0
    assert 500.0 < float(np.median(dist)) < 600.0
    assert np.all(east > 0) and np.all(north > 0)
    assert np.all(east > 2 * north)  # mostly eastward
    # More than one H3 res-9 cell (edge ~175 m): unconverted data lands in the wrong cells.
    assert dist.min() > 2 * 175.0


# --- H3 cells ------------------------------------------------------------------------------
def test_converted_points_index_to_the_same_h3_cells(wgs_points: tuple[FloatArray, FloatArray]) -> None:
    lat, lng = wgs_points
    gcj_lat, gcj_lng = crs.from_wgs84(lat, lng, "gcj02")
    frame = pl.DataFrame({"lat": lat, "lng": lng, "gcj_lat": gcj_lat, "gcj_lng": gcj_lng})
    frame = frame.with_columns(pl.col("gcj_lat").alias("fixed_lat"), pl.col("gcj_lng").alias("fixed_lng"))
    cells = crs.polars_frame_to_wgs84(frame.lazy(), "gcj02", lat="fixed_lat", lng="fixed_lng").select(
        original=plh3.latlng_to_cell("lat", "lng", 9),
        converted=plh3.latlng_to_cell("fixed_lat", "fixed_lng", 9),
        unconverted=plh3.latlng_to_cell("gcj_lat", "gcj_lng", 9),
        east=pl.col("lng") >= 110.0,
    )
    same, east_unchanged = (
        cells.select(
            same=(pl.col("original") == pl.col("converted")).mean(),
            east_unchanged=(pl.col("original") == pl.col("unconverted")).filter(pl.col("east")).mean(),
        )
        .collect()
        .row(0)
    )
    assert same >= 0.999
    # The point of converting at all: in the populous east (shift 0.4-0.7 km) unconverted
    # GCJ-02 points practically never land in their true cell.
    assert east_unchanged < 0.01


# --- boundaries from ../shared/data ----------------------------------------------------------
@pytest.fixture(scope="module")
def boundaries() -> dict[str, dict[str, Any]]:
    """adcode -> {"gcj02": geometry mapping, "wgs84": geometry mapping}."""
    out: dict[str, dict[str, Any]] = {}
    for system in ("gcj02", "wgs84"):
        path = shared_data("boundaries", f"boundaries_{system}.geojson")
        for feature in json.loads(path.read_text(encoding="utf-8"))["features"]:
            out.setdefault(str(feature["properties"]["adcode"]), {})[system] = feature["geometry"]
    return out


@pytest.mark.shared_data
def test_boundary_vertices_match_the_wgs84_file(boundaries: dict[str, dict[str, Any]]) -> None:
    """The WGS-84 file was made from the GCJ-02 one by the iterative inverse and rounded to 7
    decimals (README.cnmaps), so every vertex must agree to the rounding, ~1 cm."""
    assert "110000" in boundaries and len(boundaries) == 45
    worst_m = 0.0
    for adcode, pair in boundaries.items():
        gcj = shapely.get_coordinates(shape(pair["gcj02"]))
        wgs = shapely.get_coordinates(shape(pair["wgs84"]))
        assert gcj.shape == wgs.shape, adcode
        lat, lng = crs.to_wgs84(gcj[:, 1], gcj[:, 0], "gcj02")
        assert np.abs(lat - wgs[:, 1]).max() <= 0.5e-7 + 1e-12, adcode  # half a unit of the 7th decimal
        assert np.abs(lng - wgs[:, 0]).max() <= 0.5e-7 + 1e-12, adcode
        worst_m = max(worst_m, float(haversine_m(lat, lng, wgs[:, 1], wgs[:, 0]).max()))
    assert worst_m < 0.01


@pytest.mark.shared_data
def test_geometry_to_wgs84_matches_the_wgs84_beijing_polygon(boundaries: dict[str, dict[str, Any]]) -> None:
    gcj = shape(boundaries["110000"]["gcj02"])
    wgs = shape(boundaries["110000"]["wgs84"])

    def iou(a: shapely.Geometry, b: shapely.Geometry) -> float:
        return float(shapely.area(shapely.intersection(a, b)) / shapely.area(shapely.union(a, b)))

    converted = crs.geometry_to_wgs84(gcj, "gcj02")
    assert converted.geom_type == "MultiPolygon" and converted.is_valid
    assert iou(converted, wgs) > 0.999
    assert iou(gcj, wgs) < 0.99  # unconverted, the ~0.5 km shift is plainly visible


def test_geometry_to_wgs84_keeps_z_and_handles_arrays() -> None:
    point_z = shapely.Point(116.404, 39.915, 43.5)
    out = crs.geometry_to_wgs84(point_z, "gcj02")
    lat, lng = crs.to_wgs84(np.array([39.915]), np.array([116.404]), "gcj02")
    assert out.has_z and out.z == 43.5
    assert (out.x, out.y) == pytest.approx((lng[0], lat[0]), abs=1e-12)
    many = crs.geometry_to_wgs84(
        np.array([shapely.Point(116.404, 39.915), shapely.Point(-0.12, 51.5)]), "bd09"
    )
    assert not many[0].has_z
    assert many[1].equals(shapely.Point(-0.12, 51.5))  # outside China: unchanged
    same = shapely.Point(116.404, 39.915)
    assert crs.geometry_to_wgs84(same, "wgs84") is same
