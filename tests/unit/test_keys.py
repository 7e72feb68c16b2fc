"""Behaviour of public key sets derived from a boundary (privmob.privacy.keys)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import h3
import numpy as np
import pytest
from shapely.geometry import Point

from privmob.errors import BoundaryError
from privmob.privacy import keys
from privmob.privacy.keys import Boundary, load_boundary
from tests.conftest import SAMPLES

DISTRICTS = SAMPLES / "beijing_districts.geojson"
TIANANMEN = (39.9087, 116.3975)  # in Dongcheng (110101)
GUOMAO = (39.9087, 116.4605)  # in Chaoyang (110105)
SHANGHAI = (31.2304, 121.4737)


@pytest.fixture(scope="module")
def beijing() -> Boundary:
    return load_boundary(SAMPLES / "beijing_boundary.geojson")


@pytest.fixture(scope="module")
def chaoyang() -> Boundary:
    return load_boundary(DISTRICTS, {"adcode": "110105"})


def _cell(point: tuple[float, float], res: int) -> int:
    return h3.str_to_int(h3.latlng_to_cell(point[0], point[1], res))


def _geojson(tmp_path: Path, features: list[dict[str, Any]], name: str = "b.geojson") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _square(x: float, y: float, d: float = 0.1) -> dict[str, Any]:
    return {"type": "Polygon",
            "coordinates": [[[x, y], [x + d, y], [x + d, y + d], [x, y + d], [x, y]]]}


# --- loading -----------------------------------------------------------------------------------


def test_load_city_boundary(beijing: Boundary, sample_boundary: Path) -> None:
    assert beijing.geometry.geom_type in ("Polygon", "MultiPolygon")
    assert beijing.geometry.contains(Point(TIANANMEN[1], TIANANMEN[0]))
    assert not beijing.geometry.contains(Point(SHANGHAI[1], SHANGHAI[0]))
    assert beijing.path == sample_boundary
    assert beijing.where == ()


def test_load_one_district_by_property(chaoyang: Boundary) -> None:
    assert chaoyang.geometry.contains(Point(GUOMAO[1], GUOMAO[0]))
    assert not chaoyang.geometry.contains(Point(TIANANMEN[1], TIANANMEN[0]))
    assert chaoyang.where == (("adcode", "110105"),)


def test_district_is_smaller_than_the_city(beijing: Boundary, chaoyang: Boundary) -> None:
    assert 0 < chaoyang.geometry.area < beijing.geometry.area / 5


def test_all_districts_without_where_are_merged(beijing: Boundary) -> None:
    merged = load_boundary(DISTRICTS)
    assert merged.geometry.contains(Point(TIANANMEN[1], TIANANMEN[0]))
    assert merged.geometry.contains(Point(GUOMAO[1], GUOMAO[0]))
    # the 16 districts make up the city
    assert merged.geometry.area == pytest.approx(beijing.geometry.area, rel=0.05)


def test_unknown_property_names_the_available_ones() -> None:
    with pytest.raises(BoundaryError, match=r"no property 'code'") as info:
        load_boundary(DISTRICTS, {"code": "110105"})
    msg = str(info.value)
    assert "adcode" in msg
    assert "name" in msg
    assert "geometry" not in msg


def test_no_matching_feature() -> None:
    with pytest.raises(BoundaryError, match=r"no feature.*999999"):
        load_boundary(DISTRICTS, {"adcode": "999999"})


def test_where_with_two_properties_must_match_both() -> None:
    b = load_boundary(DISTRICTS, {"adcode": "110105", "name": "朝阳区"})
    assert b.geometry.contains(Point(GUOMAO[1], GUOMAO[0]))
    with pytest.raises(BoundaryError, match="no feature"):
        load_boundary(DISTRICTS, {"adcode": "110105", "name": "东城区"})


def test_numeric_property_values_are_matched_as_text(tmp_path: Path) -> None:
    path = _geojson(tmp_path, [
        {"type": "Feature", "properties": {"code": 1}, "geometry": _square(116.0, 39.0)},
        {"type": "Feature", "properties": {"code": 2}, "geometry": _square(117.0, 40.0)},
    ])
    b = load_boundary(path, {"code": "2"})
    assert b.geometry.contains(Point(117.05, 40.05))
    assert not b.geometry.contains(Point(116.05, 39.05))


def test_points_are_refused(tmp_path: Path) -> None:
    path = _geojson(tmp_path, [
        {"type": "Feature", "properties": {"n": "a"},
         "geometry": {"type": "Point", "coordinates": [116.4, 39.9]}},
    ])
    with pytest.raises(BoundaryError, match=r"must hold polygons.*Point"):
        load_boundary(path)


def test_mixed_polygons_and_lines_are_refused(tmp_path: Path) -> None:
    path = _geojson(tmp_path, [
        {"type": "Feature", "properties": {"n": "a"}, "geometry": _square(116.0, 39.0)},
        {"type": "Feature", "properties": {"n": "b"},
         "geometry": {"type": "LineString", "coordinates": [[116.0, 39.0], [117.0, 40.0]]}},
    ])
    with pytest.raises(BoundaryError, match="must hold polygons"):
        load_boundary(path)


def test_non_geo_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.geojson"
    path.write_text("this is not a vector layer\n")
    with pytest.raises(BoundaryError, match="not a readable vector layer"):
        load_boundary(path)


def test_plain_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"epsilon": 1.0}')
    with pytest.raises(BoundaryError, match="not a readable vector layer"):
        load_boundary(path)


def test_csv_table_without_geometry_is_refused(tmp_path: Path) -> None:
    """A CSV is a readable *table* for GDAL but has no geometry: a BoundaryError, not a crash."""
    path = tmp_path / "pings.csv"
    path.write_text("person_id,ts,lat,lng,group\na,0,39.9,116.4,confirmed\n")
    with pytest.raises(BoundaryError):
        load_boundary(path)


def test_empty_feature_collection_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BoundaryError):
        load_boundary(_geojson(tmp_path, []))


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BoundaryError, match="does not exist"):
        load_boundary(tmp_path / "nope.geojson")


def test_boundary_error_is_a_value_error() -> None:
    assert issubclass(BoundaryError, ValueError)


def test_projected_coordinates_without_crs_are_refused(tmp_path: Path) -> None:
    # Metres (e.g. a UTM layer) mislabelled as degrees: bounds are far outside ±180/±90.
    path = _geojson(tmp_path, [
        {"type": "Feature", "properties": {}, "geometry": _square(450_000.0, 4_400_000.0, 1000.0)},
    ])
    with pytest.raises(BoundaryError, match="longitude/latitude"):
        load_boundary(path)


# --- digests ---------------------------------------------------------------------------------


def test_sha256_is_the_digest_of_the_file_bytes(beijing: Boundary, sample_boundary: Path) -> None:
    assert beijing.sha256 == hashlib.sha256(sample_boundary.read_bytes()).hexdigest()
    assert beijing.key_label == f"public:{beijing.sha256}"


def test_sha256_is_stable_across_loads(beijing: Boundary, sample_boundary: Path) -> None:
    again = load_boundary(sample_boundary)
    assert again.sha256 == beijing.sha256
    assert np.array_equal(again.cells(5), beijing.cells(5))


def test_sha256_changes_with_the_file(tmp_path: Path, sample_boundary: Path) -> None:
    copy = tmp_path / "copy.geojson"
    copy.write_bytes(sample_boundary.read_bytes() + b"\n")
    assert load_boundary(copy).sha256 != load_boundary(sample_boundary).sha256


# --- cells -----------------------------------------------------------------------------------


@pytest.mark.parametrize("res", [5, 6])
def test_cells_include_the_cell_of_a_point_inside(beijing: Boundary, res: int) -> None:
    cells = beijing.cells(res)
    assert cells.dtype == np.uint64
    assert _cell(TIANANMEN, res) in set(cells.tolist())
    assert _cell(SHANGHAI, res) not in set(cells.tolist())


@pytest.mark.parametrize("res", [5, 6])
def test_cells_are_sorted_unique_valid_and_at_the_resolution(beijing: Boundary, res: int) -> None:
    cells = beijing.cells(res)
    assert np.all(cells[1:] > cells[:-1])  # strictly increasing: sorted and unique
    assert len(np.unique(cells)) == len(cells)
    sample = cells[:: max(1, len(cells) // 50)]
    for c in sample.tolist():
        assert h3.is_valid_cell(h3.int_to_str(c))
        assert h3.get_resolution(h3.int_to_str(c)) == res


def test_cells_cover_the_boundary(beijing: Boundary) -> None:
    """Every point of the area (a grid of probes inside it) falls in one of the key cells."""
    cells = set(beijing.cells(6).tolist())
    minx, miny, maxx, maxy = beijing.geometry.bounds
    probes = 0
    for x in np.linspace(minx, maxx, 25):
        for y in np.linspace(miny, maxy, 25):
            if beijing.geometry.contains(Point(x, y)):
                probes += 1
                assert _cell((y, x), 6) in cells
    assert probes > 100


def test_cells_grow_about_sevenfold_per_resolution(beijing: Boundary) -> None:
    n5, n6 = beijing.cells(5).size, beijing.cells(6).size
    assert 4 < n6 / n5 < 8


def test_city_area_is_plausible_at_res_6(beijing: Boundary) -> None:
    # Beijing is ~16,400 km²; a res-6 cell is ~36 km²; overlap covering adds a fringe.
    assert 16_400 / 36.2 < beijing.cells(6).size < 2 * 16_400 / 36.2


def test_district_cells_at_res_7(chaoyang: Boundary) -> None:
    cells = set(chaoyang.cells(7).tolist())
    assert _cell(GUOMAO, 7) in cells
    # Chaoyang is ~470 km²; a res-7 cell is ~5.2 km².
    assert 470 / 5.2 < len(cells) < 3 * 470 / 5.2


def test_cells_are_cached_but_per_resolution(beijing: Boundary) -> None:
    assert beijing.cells(5) is beijing.cells(5)
    assert beijing.cells(5).size != beijing.cells(6).size


def test_tiny_area_still_gets_its_overlapping_cell(tmp_path: Path) -> None:
    # A polygon far smaller than one res-5 cell overlaps (and so keys) at least that cell.
    path = _geojson(tmp_path, [
        {"type": "Feature", "properties": {}, "geometry": _square(116.3970, 39.9082, 0.001)},
    ])
    cells = set(load_boundary(path).cells(5).tolist())
    assert _cell((39.9087, 116.3975), 5) in cells


# --- plain GeoJSON without geopandas ---------------------------------------------------------


def _ring(x: float, y: float, d: float, clockwise: bool = False) -> list[list[float]]:
    ring = [[x, y], [x + d, y], [x + d, y + d], [x, y + d], [x, y]]
    return ring[::-1] if clockwise else ring


_PLAIN = {
    "square": [_square(116.3, 39.9)],
    "clockwise": [{"type": "Polygon", "coordinates": [_ring(116.3, 39.9, 0.1, clockwise=True)]}],
    "overlapping": [_square(116.3, 39.9), _square(116.35, 39.95)],
    "multipolygon": [{"type": "MultiPolygon", "coordinates": [[_ring(116.3, 39.9, 0.1)],
                                                              [_ring(116.6, 40.1, 0.05)]]}],
    "hole": [{"type": "Polygon", "coordinates": [_ring(116.0, 39.5, 1.0),
                                                 _ring(116.2, 39.7, 0.1, clockwise=True)]}],
    "self_intersecting": [{"type": "Polygon", "coordinates": [[[116, 39], [117, 40], [117, 39],
                                                              [116, 40], [116, 39]]]}],
    "many_digits": [{"type": "Polygon", "coordinates": [[
        [116.123456789012345, 39.98765432109876], [117.00000000000001, 39.1],
        [116.5, 40.3333333333333333], [116.123456789012345, 39.98765432109876]]]}],
}


@pytest.mark.parametrize("name", sorted(_PLAIN))
def test_plain_geojson_reads_as_gdal_does(tmp_path: Path, name: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain polygon FeatureCollection skips geopandas (~0.4 s of import) and must give
    the very geometry (same WKB) and cells that reading it with GDAL gives."""
    import shapely

    from privmob.privacy import keys

    path = _geojson(tmp_path, [{"type": "Feature", "properties": {"n": i}, "geometry": g}
                               for i, g in enumerate(_PLAIN[name])])
    assert keys._plain_geojson_polygons(path.read_bytes()) is not None
    fast = load_boundary(path)
    monkeypatch.setattr(keys, "_plain_geojson_polygons", lambda data: None)
    gdal = load_boundary(path)
    assert shapely.to_wkb(fast.geometry) == shapely.to_wkb(gdal.geometry)
    assert np.array_equal(fast.cells(8), gdal.cells(8))


def test_sample_boundaries_read_as_gdal_does(monkeypatch: pytest.MonkeyPatch) -> None:
    import shapely

    from privmob.privacy import keys

    paths = (SAMPLES / "beijing_boundary.geojson", DISTRICTS)
    fast = [load_boundary(p) for p in paths]
    monkeypatch.setattr(keys, "_plain_geojson_polygons", lambda data: None)
    for p, f in zip(paths, fast, strict=True):
        g = load_boundary(p)
        assert shapely.to_wkb(f.geometry) == shapely.to_wkb(g.geometry)
        assert np.array_equal(f.cells(7), g.cells(7))


@pytest.mark.parametrize("doc", [
    {"type": "FeatureCollection", "features": []},
    {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "EPSG:3857"}},
     "features": [{"type": "Feature", "properties": {}, "geometry": _square(116.3, 39.9)}]},
    {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
                                                "geometry": None}]},
    {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
                                                "geometry": {"type": "Point", "coordinates": [1, 2]}}]},
    {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": {
        "type": "Polygon", "coordinates": [[[116, 39], [117, 39], [117, 40], [116, 40]]]}}]},
    {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": {
        "type": "Polygon", "coordinates": [[[116, 39, 5], [117, 39, 5], [117, 40, 5], [116, 39, 5]]]}}]},
    {"type": "Feature", "properties": {}, "geometry": _square(116.3, 39.9)},
    _square(116.3, 39.9),
    [1, 2, 3],
])
def test_anything_but_plain_polygons_is_left_to_gdal(doc: Any) -> None:
    """CRS members, other types, null, unclosed or 3-D rings, bare features or geometries:
    GDAL reads (or refuses) them, with its conversions and our usual messages."""
    from privmob.privacy import keys

    assert keys._plain_geojson_polygons(json.dumps(doc).encode()) is None


def test_non_json_bytes_are_left_to_gdal() -> None:
    from privmob.privacy import keys

    assert keys._plain_geojson_polygons(b"PK\x03\x04 not json \xff") is None
    assert keys._plain_geojson_polygons(b"lat,lng\n1,2\n") is None


# --- the key cache -----------------------------------------------------------------------------


def _fresh_cells(boundary: Boundary, res: int) -> np.ndarray:
    keys._cells.cache_clear()  # the in-process cache would hide the file cache
    return boundary.cells(res)


def test_cells_are_cached_on_disk_and_reused_without_h3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, beijing: Boundary,
) -> None:
    monkeypatch.setenv("PRIVMOB_CACHE_DIR", str(tmp_path))
    first = _fresh_cells(beijing, 6)
    files = list((tmp_path / "keys").glob("*.npy"))
    assert len(files) == 1 and not list((tmp_path / "keys").glob("*.tmp"))

    def no_h3(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("h3 was asked again")

    monkeypatch.setattr(keys.h3_int, "h3shape_to_cells_experimental", no_h3)
    again = _fresh_cells(beijing, 6)
    assert np.array_equal(first, again) and again.dtype == np.uint64
    # another resolution or another area is another entry, not a wrong hit
    with pytest.raises(AssertionError, match="asked again"):
        _fresh_cells(beijing, 5)


@pytest.mark.parametrize("damage", ["garbage", "unsorted", "wrong resolution", "empty"])
def test_a_damaged_cache_entry_is_recomputed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, beijing: Boundary, damage: str,
) -> None:
    monkeypatch.setenv("PRIVMOB_CACHE_DIR", str(tmp_path))
    truth = _fresh_cells(beijing, 6)
    (entry,) = (tmp_path / "keys").glob("*.npy")
    if damage == "garbage":
        entry.write_bytes(b"not an array")
    else:
        bad = {"unsorted": truth[::-1], "empty": truth[:0],
               "wrong resolution": np.array([_cell(TIANANMEN, 7)], dtype=np.uint64)}[damage]
        np.save(entry, bad)
    assert np.array_equal(_fresh_cells(beijing, 6), truth)
    assert np.array_equal(np.load(entry), truth)  # and repaired


def test_cache_off_and_unwritable_cache_still_give_the_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, beijing: Boundary,
) -> None:
    monkeypatch.setenv("PRIVMOB_CACHE_DIR", "")
    assert keys.cache_dir() is None
    truth = _fresh_cells(beijing, 6)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("PRIVMOB_CACHE_DIR", str(blocker))
    assert np.array_equal(_fresh_cells(beijing, 6), truth)
    monkeypatch.delenv("PRIVMOB_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert keys.cache_dir() == tmp_path / "xdg" / "privmob"


# --- self-intersecting rings and the cap on cells (issue 11) ------------------------------


def _feature(points: list[tuple[float, float]]) -> dict[str, Any]:
    return {"type": "Feature", "properties": {},
            "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in points]]}}


BOWTIE = [(116.2, 39.8), (116.5, 40.0), (116.5, 39.8), (116.2, 40.0), (116.2, 39.8)]
SQUARE = [(116.3, 39.8), (116.4, 39.8), (116.4, 39.9), (116.3, 39.9), (116.3, 39.8)]


def test_a_bowtie_overlapping_another_polygon_is_repaired_to_its_area(tmp_path: Path) -> None:
    """Merging the unrepaired rings raised a GEOS TopologyException (exit 4)."""
    b = load_boundary(_geojson(tmp_path, [_feature(BOWTIE), _feature(SQUARE)]))
    from shapely import Polygon, union_all

    # the bow-tie is two triangles meeting at its crossing (116.35, 39.9)
    triangles = [Polygon([(116.2, 39.8), (116.35, 39.9), (116.2, 40.0)]),
                 Polygon([(116.5, 40.0), (116.35, 39.9), (116.5, 39.8)])]
    expected = union_all([*triangles, Polygon(SQUARE)])
    assert b.geometry.is_valid and b.geometry.symmetric_difference(expected).area < 1e-12
    assert b.cells(7).size > 0


def test_a_ring_that_encloses_nothing_is_refused(tmp_path: Path) -> None:
    flat = [(116.2, 39.8), (116.5, 39.8), (116.2, 39.8), (116.5, 39.8), (116.2, 39.8)]
    with pytest.raises(BoundaryError, match="no area"):
        load_boundary(_geojson(tmp_path, [_feature(flat)]))


def test_estimated_cells_is_close_below_the_true_cover(beijing: Boundary) -> None:
    for res in (5, 6, 7):
        true = beijing.cells(res).size
        assert 0.5 * true <= keys.estimated_cells(beijing, res) <= true


def test_a_cover_over_the_cap_is_refused_before_it_is_computed(beijing: Boundary,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the cover was computed")

    monkeypatch.setattr("privmob.privacy.keys.h3_int.h3shape_to_cells_experimental", never)
    with pytest.raises(BoundaryError, match=r"resolution 12 .* resolution = 10 or coarser"):
        beijing.cells(12)
    assert keys.estimated_cells(beijing, 10) <= keys.MAX_KEY_CELLS < keys.estimated_cells(beijing, 11)
