"""Public keys: every H3 cell that overlaps a boundary polygon.

Keys fixed in advance by public information (a city outline) let the mechanism noise every
cell, empty ones included, so the absence of a cell in a release reveals nothing and the
release is pure ε-DP (or ρ-zCDP) with no δ spent on key selection.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h3
import h3.api.basic_int as h3_int
import numpy as np
import numpy.typing as npt

from privmob.errors import BoundaryError, import_extra

__all__ = ["BOUNDARY_FILE", "MAX_KEY_CELLS", "Boundary", "boundary_document", "estimated_cells",
           "load_boundary", "release_boundary"]


@dataclass(frozen=True, eq=False)
class Boundary:
    """A polygonal area (WGS-84) and the file it came from."""

    geometry: Any  # shapely (Multi)Polygon
    path: Path
    sha256: str
    where: tuple[tuple[str, str], ...]

    @property
    def key_label(self) -> str:
        """``public:<file sha256>``, plus the feature selection when there is one."""
        where = "&".join(f"{k}={v}" for k, v in self.where)
        return f"public:{self.sha256}" + (f"?{where}" if where else "")

    def cells(self, resolution: int) -> npt.NDArray[np.uint64]:
        """Sorted H3 cells (as UInt64) overlapping the area at ``resolution``."""
        return _cells(self, resolution)


#: Most public-key cells (as :func:`estimated_cells` counts them) a boundary may have at
#: the job's resolution. h3 covers ~40,000 cells a second (Beijing at res 10: 1.5 million
#: cells, 36 s) and every key cell is noised in every window, so the time and memory of a
#: release grow with it. A city at res 10 fits (Beijing: ~1.1 million estimated); res 11
#: and finer (Beijing: 7.6 million to 18 billion) would run for minutes to days or run out
#: of memory, so they are refused before any work. The estimate leaves out the partly
#: covered edge cells, so the real cover can be ~40% larger than this.
MAX_KEY_CELLS: int = 2_000_000

_EARTH_RADIUS_KM = 6371.0088  # mean radius, as h3 uses for its areas


def estimated_cells(boundary: Boundary, resolution: int) -> int:
    """About how many H3 cells cover the boundary at ``resolution``, without computing them.

    The area (on an equal-area sinusoidal projection of the sphere) over h3's average
    cell area at that resolution; it omits the partly covered cells along the edge, so
    it is an under-estimate — good enough to refuse a cover that is too large by far.
    """
    import shapely

    radius = np.radians(1.0) * _EARTH_RADIUS_KM

    def sinusoidal(xy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        lat = xy[:, 1]
        return np.column_stack((xy[:, 0] * np.cos(np.radians(lat)) * radius, lat * radius))

    area_km2 = float(shapely.transform(boundary.geometry, sinusoidal).area)
    return int(area_km2 / h3.average_hexagon_area(resolution, unit="km^2"))


def _check_cell_count(boundary: Boundary, resolution: int) -> None:
    estimate = estimated_cells(boundary, resolution)
    if estimate > MAX_KEY_CELLS:
        coarser = next((r for r in range(resolution - 1, -1, -1)
                        if estimated_cells(boundary, r) <= MAX_KEY_CELLS), 0)
        raise BoundaryError(
            f"boundary {boundary.path} at resolution {resolution} is about {estimate:,} H3 cells, "
            f"more than the {MAX_KEY_CELLS:,} privmob noises per window (that would take "
            f"minutes to days and gigabytes of memory); use [grid] resolution = {coarser} or "
            "coarser, or a smaller boundary"
        )


@functools.lru_cache(maxsize=16)
def _cells(boundary: Boundary, resolution: int) -> npt.NDArray[np.uint64]:
    _check_cell_count(boundary, resolution)
    cached = _cache_path(boundary, resolution)
    if cached is not None:
        hit = _read_cached(cached, resolution)
        if hit is not None:
            return hit
    shape = h3.geo_to_h3shape(boundary.geometry.__geo_interface__)
    # The int API: the same cells as the string one, without a str -> int call per cell.
    cells = h3_int.h3shape_to_cells_experimental(shape, resolution, contain="overlap")
    if not cells:
        raise BoundaryError(
            f"boundary {boundary.path} covers no H3 cell at resolution {resolution}"
        )
    out = np.sort(np.array(cells, dtype=np.uint64))
    if cached is not None:
        _write_cached(cached, out)
    return out


# -- the key cache ------------------------------------------------------------------------
# Covering a city outline at res 8 costs h3 ~0.5 s (31,854 cells, 2,971 vertices) — an
# eighth of a 10M-ping day's release — and a scheduled job asks for the same outline every
# day. The cells are public and a pure function of (geometry, resolution, h3 version), so
# they are cached under that digest. A missing, unreadable or implausible cache entry is
# recomputed; an unwritable cache folder is skipped. PRIVMOB_CACHE_DIR="" turns it off.


def cache_dir() -> Path | None:
    """``$PRIVMOB_CACHE_DIR``, else ``$XDG_CACHE_HOME/privmob``, else ``~/.cache/privmob``."""
    env = os.environ.get("PRIVMOB_CACHE_DIR")
    if env is not None:
        return Path(env).expanduser() if env else None
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "privmob"


def _cache_path(boundary: Boundary, resolution: int) -> Path | None:
    root = cache_dir()
    if root is None:
        return None
    digest = hashlib.sha256(boundary.geometry.wkb)
    digest.update(f"|res={resolution}|contain=overlap|h3={h3.__version__}".encode())
    return root / "keys" / f"{digest.hexdigest()}.npy"


def _read_cached(path: Path, resolution: int) -> npt.NDArray[np.uint64] | None:
    try:
        cells = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    ok = (cells.dtype == np.uint64 and cells.ndim == 1 and cells.size > 0
          and bool(np.all(cells[1:] > cells[:-1]))
          and bool(np.all((cells >> np.uint64(52)) & np.uint64(0xF) == resolution)))
    return cells if ok else None


def _write_cached(path: Path, cells: npt.NDArray[np.uint64]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, cells, allow_pickle=False)
        os.replace(tmp, path)  # whole or not at all: a reader never sees half a file
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


#: The boundary a release with public keys carries in its folder (public data, signed with
#: the rest), so its reports draw the outline and the withheld cells without --boundary.
BOUNDARY_FILE = "boundary.geojson"


def release_boundary(path: Path, key_label: str) -> tuple[Boundary, str | None]:
    """The boundary a release's public keys (manifest ``keys``) were drawn from, for drawing it.

    Returns the boundary — with the release's feature selection and datum when ``path`` is
    the file the keys came from, or as is when it is the release's own
    :data:`BOUNDARY_FILE` standing for those keys (see :func:`boundary_document`) — and,
    when it is neither, a sentence saying so (reports draw the file's cells then, which may
    differ from the release's keys).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BoundaryError(f"cannot read the boundary file {path}: {exc.strerror or exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    label, _, query = key_label.partition("?")
    where: dict[str, str] = {}
    note = None
    if label.startswith("public:"):
        if label == f"public:{digest}":
            where = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
        elif _stands_for(data) != key_label:
            note = (
                f"The boundary file {path.name} is not the one this release's keys were drawn from "
                f"(keys {label[:19]}…, file sha256:{digest[:12]}…): the withheld cells shown are this "
                "file's cells, which may differ from the release's key cells."
            )
    # The datum load_boundary added to the label is not a feature property to select by.
    crs = where.pop("crs") if where.get("crs") in ("gcj02", "bd09") else "wgs84"
    return load_boundary(path, where or None, crs), note


def boundary_document(path: Path, key_label: str) -> bytes | None:
    """The bytes of :data:`BOUNDARY_FILE` for a release whose keys are ``key_label``.

    The boundary file itself when the keys came from all of it, as plain WGS-84 GeoJSON:
    its sha256 is then the one in the label. Otherwise (a feature selection, a converted
    datum, another format) the selected area, merged and in WGS-84, as one GeoJSON feature
    whose ``privmob.privacy.keys`` names the label it stands for. None when the keys are not
    public or ``path`` is no longer the file they came from (nothing is carried then).
    """
    label, _, query = key_label.partition("?")
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if label != f"public:{hashlib.sha256(data).hexdigest()}":
        return None
    if not query and _plain_geojson_polygons(data) is not None:
        return data
    boundary, _ = release_boundary(path, key_label)
    from shapely.geometry import mapping

    doc = {"type": "FeatureCollection", "privmob": {"keys": key_label, "source": path.name},
           "features": [{"type": "Feature", "properties": {}, "geometry": mapping(boundary.geometry)}]}
    return json.dumps(doc, separators=(",", ":")).encode()


def _stands_for(data: bytes) -> str | None:
    """The keys label a :func:`boundary_document` says it stands for, if it is one."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    meta = doc.get("privmob") if isinstance(doc, dict) else None
    keys = meta.get("keys") if isinstance(meta, dict) else None
    return keys if isinstance(keys, str) else None


def load_boundary(path: Path, where: Mapping[str, str] | None = None,
                  crs: str = "wgs84") -> Boundary:
    """Read a GeoJSON / GeoPackage polygon layer; ``where`` picks features by property.

    All selected polygons are merged. The file must be WGS-84 (EPSG:4326) or declare a CRS
    that can be converted to it; ``crs = "gcj02"`` or ``"bd09"`` says its degrees are in
    China's offset datums (files rarely declare that), and they are converted to WGS-84.
    """
    from shapely import make_valid

    where = dict(where or {})
    from privmob.config import read_small_file
    from privmob.errors import ConfigError

    try:
        data = read_small_file(path, "boundary file", limit=512 << 20)
    except ConfigError as exc:
        raise BoundaryError(str(exc)) from exc
    geoms = None if where else _plain_geojson_polygons(data)
    if geoms is None:
        geoms = _read_polygons(path, where)
    geometry = _polygonal(geoms, path)
    if crs != "wgs84":
        from privmob.stages.crs import geometry_to_wgs84

        geometry = make_valid(geometry_to_wgs84(geometry, crs))  # type: ignore[arg-type]
    if geometry.is_empty or geometry.area == 0:
        raise BoundaryError(f"boundary in {path} has no area")
    minx, miny, maxx, maxy = geometry.bounds
    if not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
        raise BoundaryError(
            f"boundary in {path} is not in longitude/latitude degrees (bounds {geometry.bounds})"
        )
    return Boundary(
        geometry=geometry,
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        where=tuple(sorted(where.items())) + ((("crs", crs),) if crs != "wgs84" else ()),
    )


def _polygonal(geoms: list[Any], path: Path) -> Any:
    """The union of the polygons' areas, each repaired first (a bow-tie ring is two triangles).

    Self-intersecting rings are made valid one by one before they are merged (merging
    invalid polygons fails); what is left of a ring that encloses nothing (lines, points)
    is dropped, so only area counts.
    """
    import shapely
    from shapely import make_valid, union_all

    try:
        merged = make_valid(union_all([make_valid(g) for g in geoms]))
    except shapely.errors.GEOSException as exc:
        raise BoundaryError(
            f"boundary file {path} has polygons that cannot be repaired (rings that cross "
            "themselves or each other); redraw them as simple polygons"
        ) from exc
    parts = [g for g in shapely.get_parts(merged) if g.geom_type in ("Polygon", "MultiPolygon")]
    return union_all(parts) if parts else shapely.Polygon()


def _plain_geojson_polygons(data: bytes) -> list[Any] | None:
    """The polygons of a plain GeoJSON FeatureCollection, or None to let GDAL read the file.

    Importing geopandas (pandas, pyproj, pyogrio) is ~0.4 s of a ~0.9 s plan, and a city
    outline is nearly always such a file: only polygons, no ``crs`` member (so WGS-84), no
    feature selection. json + shapely read those to the same coordinates and geometries
    as GDAL. Anything else — a ``where``, a ``crs`` member, another geometry type, null, 3-D
    or non-finite coordinates, another format — returns None and takes the GDAL path, so
    its conversions and error messages are unchanged.
    """
    import shapely
    from shapely.geometry import shape

    try:
        doc = json.loads(data)
    except ValueError:  # includes UnicodeDecodeError: not JSON text
        return None
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection" or "crs" in doc:
        return None
    features = doc.get("features")
    if not isinstance(features, list) or not features:
        return None
    geoms = []
    for feature in features:
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
            return None
        coordinates = geometry.get("coordinates")
        polygons = [coordinates] if geometry["type"] == "Polygon" else coordinates
        if not isinstance(polygons, list) or not all(
            isinstance(rings, list) and rings and all(_closed_ring(r) for r in rings) for rings in polygons
        ):
            return None
        try:
            geom = shape(geometry)
        except Exception:  # malformed rings or coordinates: GDAL decides, and says why
            return None
        if geom.is_empty or shapely.has_z(geom) or not np.isfinite(shapely.get_coordinates(geom)).all():
            return None
        geoms.append(geom)
    return geoms


def _closed_ring(ring: Any) -> bool:
    """At least 4 positions, the last repeating the first (RFC 7946); else GDAL decides."""
    return isinstance(ring, list) and len(ring) >= 4 and ring[0] == ring[-1]


def _read_polygons(path: Path, where: Mapping[str, str]) -> list[Any]:
    """The selected polygons of any vector layer GDAL reads, in WGS-84."""
    # heavy (pandas, pyproj, GDAL): the [geo] extra, only needed when a boundary is not plain GeoJSON
    gpd = import_extra("geopandas", extra="geo", purpose="a boundary file that is not plain GeoJSON")
    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # pyogrio raises several unrelated types
        raise BoundaryError(f"boundary file {path} is not a readable vector layer: {exc}") from exc
    if not isinstance(frame, gpd.GeoDataFrame) or "geometry" not in frame.columns:
        raise BoundaryError(f"boundary file {path} has no geometry: it must hold polygons")
    for prop, value in where.items():
        if prop not in frame.columns:
            raise BoundaryError(
                f"boundary file {path} has no property {prop!r}; "
                f"properties: {', '.join(c for c in frame.columns if c != 'geometry')}"
            )
        frame = frame[frame[prop].astype(str) == value]
    if frame.empty:
        raise BoundaryError(f"no feature in {path} matches {where}")
    if frame.crs is not None and frame.crs.to_epsg() != 4326:
        frame = frame.to_crs(4326)
    geoms = [g for g in frame.geometry if g is not None]
    if not geoms or any(g.geom_type not in ("Polygon", "MultiPolygon") for g in geoms):
        kinds = sorted({g.geom_type for g in geoms}) if geoms else ["empty"]
        raise BoundaryError(
            f"boundary file {path} must hold polygons; found {', '.join(kinds)}"
        )
    return geoms
