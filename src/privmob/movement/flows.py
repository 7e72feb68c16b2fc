"""Origin–destination flows: where key-group persons went, under the same guarantee.

Occupancy shows where people are; an epidemiologist next asks where they went. Trips run
between consecutive stays (:mod:`privmob.movement.stays`), so GPS jitter and pass-through cells do
not count as movement. Each trip is mapped to an origin and a destination *unit* — an H3
cell at the flows resolution, or a polygon of a boundary layer (districts) — and to the
window in which it departs.

Contribution bounding mirrors occupancy: per person at most ``max_trips_per_window`` trips
in a window (the longest ones, ties by a keyed value) and at most ``max_windows`` windows
(those with most trips). A person then changes at most k·w (origin, destination, window)
counts by one, so L1 = k·w and L2 = √(k·w), exactly as for cells. This module stops at the
exact, bounded counts (:class:`ExactFlows`); the flows table is then noised, thresholded and
suppressed by the same path as every table (:mod:`privmob.privacy.tablespec`, :mod:`privmob.privacy.noising`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl
import polars_h3 as plh3

from privmob.config import FlowsConfig, JobConfig
from privmob.errors import BoundaryError
from privmob.stages.bound import BoundingStats

__all__ = ["ExactFlows", "Units", "exact_flows", "load_units", "n_windows", "unit_coordinates"]


@dataclass(frozen=True, eq=False)
class Units:
    """Named polygons (districts) that trips start and end in."""

    names: tuple[str, ...]
    geometries: tuple[object, ...]
    path: Path
    sha256: str
    prop: str

    @property
    def key_label(self) -> str:
        return f"public:{self.sha256}?units={self.prop}"

    def locate(self, lat: npt.NDArray[np.float64], lng: npt.NDArray[np.float64]) -> npt.NDArray[np.int32]:
        """Index of the unit containing each point, or -1 outside all of them."""
        import shapely

        out = np.full(lat.shape, -1, dtype=np.int32)
        for i, geom in enumerate(self.geometries):
            hit = shapely.contains_xy(geom, lng, lat) & (out < 0)
            out[hit] = i
        return out


def load_units(path: Path, prop: str, crs: str = "wgs84") -> Units:
    """Polygons of a boundary layer, one unit per distinct value of ``prop`` (converted
    to WGS-84 from ``crs``)."""
    from shapely import make_valid, union_all

    from privmob.config import read_small_file
    from privmob.errors import ConfigError, import_extra

    gpd = import_extra("geopandas", extra="geo", purpose="flows (reading the unit polygons)")
    try:
        data = read_small_file(path, "flows boundary file", limit=512 << 20)
    except ConfigError as exc:
        raise BoundaryError(str(exc)) from exc
    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # pyogrio raises several unrelated types
        raise BoundaryError(f"flows boundary file {path} is not a readable vector layer: {exc}") from exc
    if not isinstance(frame, gpd.GeoDataFrame) or prop not in frame.columns:
        raise BoundaryError(
            f"flows boundary file {path} has no property {prop!r}; set [flows] unit_property"
        )
    if frame.crs is not None and frame.crs.to_epsg() != 4326:
        frame = frame.to_crs(4326)
    names, geoms = [], []
    for value, group in frame.groupby(frame[prop].astype(str), sort=True):
        parts = [g for g in group.geometry if g is not None]
        if not parts or any(g.geom_type not in ("Polygon", "MultiPolygon") for g in parts):
            raise BoundaryError(f"unit {value!r} in {path} is not a polygon")
        names.append(str(value))
        geom = make_valid(union_all(parts))
        if crs != "wgs84":
            from privmob.stages.crs import geometry_to_wgs84

            geom = make_valid(geometry_to_wgs84(geom, crs))  # type: ignore[arg-type]
        geoms.append(geom)
    if len(names) < 2:
        raise BoundaryError(f"flows need at least two units; {path} has {len(names)}")
    return Units(tuple(names), tuple(geoms), path, hashlib.sha256(data).hexdigest(), prop)


@dataclass(frozen=True, eq=False)
class ExactFlows:
    """The exact, bounded OD counts (private, like :class:`~privmob.stages.aggregate.ExactCounts`)."""

    counts: pl.DataFrame  # origin (str), destination (str), window (Int32), count (Int64)
    persons: int
    trips: int
    trips_outside_units: int
    bounding: BoundingStats

    def __repr__(self) -> str:
        return f"ExactFlows(<{self.counts.height} private keys>, trips={self.trips})"


def exact_flows(trip_frame: pl.DataFrame, config: JobConfig, units: Units | None) -> ExactFlows:
    """Trips → units → bounded distinct persons per (origin, destination, window).

    ``trip_frame`` holds each person's trips (:data:`privmob.movement.stays.TRIP_SCHEMA`, keyed
    pseudonyms), as :meth:`privmob.backends.Backend.trips` finds them on the engine.
    """
    fc = config.flows
    assert fc is not None
    start = int(config.period_start.timestamp())
    n_windows = _n_windows(config, fc)
    located = _locate(trip_frame, fc, units).with_columns(
        ((pl.col("depart_t") - start) // fc.window_seconds).cast(pl.Int32).alias("window"),
        ((pl.col("dest_lat") - pl.col("origin_lat")) ** 2
         + ((pl.col("dest_lng") - pl.col("origin_lng")) * 0.77) ** 2).alias("_length"),
    )
    inside = located.filter(
        pl.col("origin").is_not_null() & pl.col("destination").is_not_null()
        & (pl.col("window") >= 0) & (pl.col("window") < n_windows)
    )
    # Each (person, origin, destination, window) counts once; keep a person's longest trips.
    od_hash = pl.concat_str("origin", "destination").hash(seed=0).reinterpret(signed=True)
    per_od = inside.group_by("pid", "window", "origin", "destination").agg(
        pl.col("_length").max().alias("_length"))
    ranked = per_od.with_columns(
        pl.struct(pl.col("_length"), pl.col("pid") ^ od_hash)
        .rank("ordinal", descending=True).over("pid", "window").alias("_r")
    ).filter(pl.col("_r") <= fc.max_trips_per_window)
    windows = (
        ranked.group_by("pid", "window").agg(pl.len().alias("_n"))
        .with_columns(
            pl.struct(pl.col("_n"), pl.col("pid") ^ pl.col("window").cast(pl.Int64))
            .rank("ordinal", descending=True).over("pid").alias("_wr"))
        .filter(pl.col("_wr") <= fc.max_windows)
    )
    kept = ranked.join(windows.select("pid", "window"), on=["pid", "window"], how="semi")
    counts = (
        kept.group_by("origin", "destination", "window")
        .agg(pl.len().cast(pl.Int64).alias("count"))
        .sort("window", "origin", "destination")
    )
    return ExactFlows(
        counts=counts,
        persons=int(inside["pid"].n_unique()),
        trips=trip_frame.height,
        trips_outside_units=trip_frame.height - inside.height,
        bounding=BoundingStats(
            person_cell_windows=per_od.height,
            person_cell_windows_kept=kept.height,
            dwell_minutes=per_od.height,
            dwell_minutes_kept=kept.height,
        ),
    )


def _n_windows(config: JobConfig, fc: FlowsConfig) -> int:
    span = config.period_end.timestamp() - config.period_start.timestamp()
    return int(-(-span // fc.window_seconds))


def n_windows(config: JobConfig) -> int:
    """Flows windows in the release period."""
    assert config.flows is not None
    return _n_windows(config, config.flows)


def unit_coordinates(names: Iterable[str], units: Units | None) -> dict[str, tuple[float, float]]:
    """(lat, lng) to draw each unit at: a point inside its polygon, or the H3 cell centre."""
    if units is not None:
        where = dict(zip(units.names, units.geometries, strict=True))
        return {n: (where[n].representative_point().y, where[n].representative_point().x)  # type: ignore[attr-defined]
                for n in names}
    import h3

    return {c: h3.cell_to_latlng(c) for c in names}


def _locate(trip_frame: pl.DataFrame, fc: FlowsConfig, units: Units | None) -> pl.DataFrame:
    if fc.units == "cells":
        return trip_frame.with_columns(
            plh3.int_to_str(plh3.latlng_to_cell("origin_lat", "origin_lng", fc.resolution)).alias("origin"),
            plh3.int_to_str(plh3.latlng_to_cell("dest_lat", "dest_lng", fc.resolution)).alias("destination"),
        )
    assert units is not None
    names = np.array([*units.names, None], dtype=object)
    o = units.locate(trip_frame["origin_lat"].to_numpy(), trip_frame["origin_lng"].to_numpy())
    d = units.locate(trip_frame["dest_lat"].to_numpy(), trip_frame["dest_lng"].to_numpy())
    return trip_frame.with_columns(
        pl.Series("origin", names[o], dtype=pl.String),
        pl.Series("destination", names[d], dtype=pl.String),
    )
