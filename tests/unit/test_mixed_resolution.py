"""Reports of a release whose cells mix H3 resolutions (an adaptive release, issue 12).

The release is made by hand: real Beijing cells at res 4, 6 and 8 that do not overlap (a
res-4 root left whole, the res-6 children of its neighbour but one, and that one's res-8
children), as PrivTree leaves would be.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from typing import Any

import h3
import matplotlib as mpl
import numpy as np
import polars as pl
import pytest
from matplotlib.colors import LogNorm
from matplotlib.path import Path as Path_
from matplotlib.text import Text

import privmob.report as report
from privmob.config import DEFAULT_MARKING
from privmob.errors import InputError
from privmob.release.manifest import ManifestView
from privmob.release.table import ReleasedTable
from privmob.report.html import ADAPTIVE_NOTE, html_report
from tests.conftest import SAMPLES

BOUNDARY = SAMPLES / "beijing_boundary.geojson"
START = dt.datetime(2026, 11, 26, tzinfo=dt.timezone(dt.timedelta(hours=8)))
THRESHOLD = 20


def partition() -> tuple[str, list[str], list[str]]:
    """(a res-4 leaf, res-6 leaves, res-8 leaves): a partition of two res-4 roots downtown."""
    c8 = h3.latlng_to_cell(39.9087, 116.3975, 8)
    p4, r6 = h3.cell_to_parent(c8, 4), h3.cell_to_parent(c8, 6)
    n4 = sorted(h3.grid_ring(p4, 1))[0]
    six = sorted(set(h3.cell_to_children(p4, 6)) - {r6})
    eight = sorted(h3.cell_to_children(r6, 8))
    return n4, six, eight


N4, SIX, EIGHT = partition()
LEAVES = [N4, *SIX, *EIGHT]
#: Released in window 0: the res-4 cell (60), five res-6 cells (40–44), twelve res-8 cells (30–140).
ROWS = ([(N4, 60)] + [(c, 40 + i) for i, c in enumerate(SIX[:5])]
        + [(c, 30 + 10 * i) for i, c in enumerate(EIGHT[:12])])


def mixed_release(*, uint64: bool = False, resolution_column: bool = True,
                  leaves: bool = True, second_window: bool = False) -> ReleasedTable:
    w0 = START.astimezone(dt.UTC)
    rows = [(c, w0, n) for c, n in ROWS]
    if second_window:  # a few res-8 cells an hour later
        rows += [(c, w0 + dt.timedelta(hours=1), 25 + i) for i, c in enumerate(EIGHT[:3])]
    frame = pl.DataFrame(rows, schema={"cell": pl.String, "window_start": pl.Datetime("us", "UTC"),
                                       "count": pl.Int64}, orient="row")
    frame = frame.with_columns((pl.col("count") - 9).alias("ci_low"), (pl.col("count") + 9).alias("ci_high"),
                               (pl.col("count") < THRESHOLD + 9).alias("near_threshold"))
    if resolution_column:
        frame = frame.with_columns(
            pl.Series("resolution", [h3.get_resolution(c) for c, *_ in rows], dtype=pl.Int8))
    if uint64:
        frame = frame.with_columns(pl.Series("cell", [h3.str_to_int(c) for c, *_ in rows], dtype=pl.UInt64))
    manifest: dict[str, Any] = {
        "release_id": "mixed-by-hand", "dataset": "test", "window": "1h", "windows": 24,
        "period_start": START.isoformat(), "timezone": "Asia/Shanghai",
        "resolution": "adaptive", "resolutions": [4, 8],
        "release_threshold": THRESHOLD, "ci95_halfwidth": 9, "mechanism": "laplace", "epsilon": 1.0,
        "min_count": 10, "marking": DEFAULT_MARKING,
        "keys": "public:" + hashlib.sha256(BOUNDARY.read_bytes()).hexdigest(),
    }
    if leaves:
        manifest["adaptive"] = {"leaves": len(LEAVES), "leaf_cells": LEAVES}
    return ReleasedTable(table=frame, manifest=manifest)


def fixed_release() -> ReleasedTable:
    """The same place at one resolution (7), as releases were before issue 12."""
    cells = sorted(h3.grid_disk(h3.latlng_to_cell(39.9087, 116.3975, 7), 1))
    frame = pl.DataFrame({"cell": cells, "window_start": [START.astimezone(dt.UTC)] * len(cells),
                          "count": [30 + 5 * i for i in range(len(cells))]}).with_columns(
        pl.col("window_start").dt.cast_time_unit("us"),
        (pl.col("count") - 9).alias("ci_low"), (pl.col("count") + 9).alias("ci_high"))
    manifest = {**mixed_release().manifest, "resolution": 7, "release_id": "fixed"}
    del manifest["resolutions"], manifest["adaptive"]
    return ReleasedTable(table=frame, manifest=manifest)


def layer(hm: report.Heatmap, gid: str) -> Any:
    (found,) = [a for a in (*hm.panels[0].axes.collections, *hm.panels[0].axes.patches) if a.get_gid() == gid]
    return found


def text_by_gid(hm: report.Heatmap, gid: str) -> str:
    return "\n".join(t.get_text() for t in hm.figure.findobj(Text)
                     if isinstance(t, Text) and t.get_gid() == gid)


def drawn_cell(vertices: np.ndarray[Any, Any], resolution: int) -> str:
    closed = len(vertices) > 1 and np.allclose(vertices[0], vertices[-1])
    lng, lat = (vertices[:-1] if closed else vertices).mean(axis=0)
    return str(h3.latlng_to_cell(lat, lng, resolution))


@pytest.fixture(scope="module")
def mixed_map() -> report.Heatmap:
    return report.heatmap(mixed_release(), boundary=BOUNDARY)


# ── the manifest ─────────────────────────────────────────────────────────────────────


def test_manifest_view_reads_an_adaptive_release() -> None:
    view = ManifestView.of(mixed_release().manifest)
    assert view.resolution is None and view.adaptive
    assert view.resolutions == (4, 8)
    assert view.partition == tuple(LEAVES)
    ints = ManifestView.of({"resolution": "adaptive", "adaptive": {"leaf_cells": [h3.str_to_int(N4)]}})
    assert ints.partition == (N4,)
    fixed = ManifestView.of(fixed_release().manifest)
    assert fixed.resolution == 7 and not fixed.adaptive
    assert fixed.resolutions is None and fixed.partition == ()


# ── the heatmap ──────────────────────────────────────────────────────────────────────


def test_every_cell_is_drawn_at_its_own_resolution_coarse_first(mixed_map: report.Heatmap) -> None:
    released = layer(mixed_map, "released")
    paths = released.get_paths()
    assert len(paths) == len(ROWS) == mixed_map.panels[0].released
    resolutions = []
    for path in paths:  # each polygon is the boundary of one released cell, at that cell's resolution
        found = {r for r in (4, 6, 8) if drawn_cell(path.vertices, r) in dict(ROWS)
                 and h3.get_resolution(drawn_cell(path.vertices, r)) == r}
        assert len(found) == 1
        resolutions.append(found.pop())
    assert sorted(resolutions) == resolutions, "a coarse cell was drawn over a finer one"
    assert set(resolutions) == {4, 6, 8}


def test_colour_is_persons_per_km2_by_default_and_the_legend_says_so(mixed_map: report.Heatmap) -> None:
    cells, counts = zip(*sorted(ROWS, key=lambda r: (h3.get_resolution(r[0]), r[0])), strict=True)
    density = np.array(counts) / np.array([h3.cell_area(c, "km^2") for c in cells])
    released = layer(mixed_map, "released")
    assert np.allclose(released.get_array(), density, rtol=1e-6)
    assert isinstance(released.norm, LogNorm)
    # a director reads the crowded res-8 cells as hotter than the big, sparse res-4 one,
    # although the res-4 cell holds more persons than some of them
    colours = released.norm(released.get_array())
    assert colours[0] < colours[-12:].min() and counts[0] > min(counts[-12:])
    (bar,) = [ax for ax in mixed_map.figure.axes if ax.get_label() == "colorbar"]
    assert "per km²" in bar.get_ylabel() and "log scale" in bar.get_ylabel()
    (legend,) = mixed_map.figure.legends
    assert any("colour = persons per km²" in t.get_text() for t in legend.get_texts())


def test_colour_by_count_is_offered_and_says_big_cells_hold_more() -> None:
    hm = report.heatmap(mixed_release(), boundary=BOUNDARY, colour="count")
    released = layer(hm, "released")
    assert sorted(released.get_array().tolist()) == sorted(n for _, n in ROWS)
    (legend,) = hm.figure.legends
    assert any("persons per cell (bigger cells hold more)" in t.get_text() for t in legend.get_texts())
    with pytest.raises(InputError, match="colour"):
        report.heatmap(mixed_release(), colour="hue")  # type: ignore[arg-type]


@pytest.mark.parametrize("colour", ["density", "count"])
def test_the_legend_fits_the_page_at_a_readable_size(colour: str) -> None:
    # the mixed legend says what the colour means, which made one row too long: the labels
    # were shrunk to 5.7 pt and the boundary's entry still ran off the page
    hm = report.heatmap(mixed_release(), boundary=BOUNDARY, colour=colour)  # type: ignore[arg-type]
    fig = hm.figure
    (legend,) = fig.legends
    with mpl.rc_context(hm._rc):  # the report's own fonts: extents depend on them
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        for artist in (legend, *fig.texts):
            if artist.get_gid() == "watermark":
                continue
            extent = artist.get_window_extent(renderer)
            assert extent.x0 >= 0 and extent.x1 <= fig.bbox.width, artist
    assert min(t.get_fontsize() for t in legend.get_texts()) >= 9
    assert any("boundary" in t.get_text() for t in legend.get_texts())


def test_footer_and_subtitle_state_the_resolution_mix(mixed_map: report.Heatmap) -> None:
    footer = text_by_gid(mixed_map, "footer")
    assert "H3 cells res 4–8 (adaptive)" in footer
    assert "H3 resolution" not in footer  # not one resolution, whichever cell came first
    assert f"public keys: {len(LEAVES)} cells of a public partition" in footer
    subtitle = text_by_gid(mixed_map, "subtitle")
    assert "adaptive H3 cells, res 4–8" in subtitle and "H3 resolution" not in subtitle


def test_withheld_layer_is_the_partition_minus_the_released_cells(mixed_map: report.Heatmap) -> None:
    panel = mixed_map.panels[0]
    assert panel.withheld == len(LEAVES) - len(ROWS)
    rings = [Path_(ring) for ring in layer(mixed_map, "withheld").get_path().to_polygons()]

    def covered(cell: str) -> bool:
        lat, lng = h3.cell_to_latlng(cell)
        return sum(ring.contains_point((lng, lat)) for ring in rings) % 2 == 1

    released = dict(ROWS)
    # H3 children stick out of their parent's outline, so a leaf's centre can lie under a
    # released neighbour of another resolution; the released cell is drawn there, on top
    outlines = [Path_(np.array([(lng, lat) for lat, lng in h3.cell_to_boundary(c)])) for c in released]

    def under_released(cell: str) -> bool:
        lat, lng = h3.cell_to_latlng(cell)
        return any(o.contains_point((lng, lat)) for o in outlines)

    withheld = [c for c in LEAVES if c not in released and not under_released(c)]
    assert len(withheld) > len(LEAVES) - len(ROWS) - 5
    assert all(covered(c) for c in withheld)
    assert not any(covered(c) for c in released)


def test_uint64_cells_without_a_resolution_column_or_partition_draw() -> None:
    hm = report.heatmap(mixed_release(uint64=True, resolution_column=False, leaves=False), boundary=BOUNDARY)
    assert hm.panels[0].released == len(ROWS)
    assert hm.panels[0].withheld is None  # the leaves are not listed: how many is unknown
    assert layer(hm, "withheld") is not None  # the roots' area minus the released cells
    assert "res 4–8 (adaptive)" in text_by_gid(hm, "footer")


def test_small_multiples_share_one_density_scale_and_leave_no_slivers() -> None:
    hm = report.small_multiples(mixed_release(second_window=True), boundary=BOUNDARY, windows=[0, 1, 2])
    assert [p.released for p in hm.panels] == [len(ROWS), 3, 0]
    norms = {id(c.norm) for p in hm.panels for c in p.axes.collections if c.get_gid() == "released"}
    assert len(norms) == 1
    assert "res 4–8 (adaptive)" in text_by_gid(hm, "footer")
    # nothing released: the whole partition is withheld, with no white slivers where H3
    # children stick out of (or fall short of) their parent's outline
    (withheld,) = [a for a in hm.panels[2].axes.patches if a.get_gid() == "withheld"]
    rings = [Path_(ring) for ring in withheld.get_path().to_polygons()]
    for root in (N4, h3.cell_to_parent(SIX[0], 4)):
        outline = np.array([(lng, lat) for lat, lng in h3.cell_to_boundary(root)])
        centre = outline.mean(axis=0)
        for t in np.linspace(0, 1, 8, endpoint=False):  # points just inside each edge
            edge = outline + t * (np.roll(outline, -1, axis=0) - outline)
            for point in centre + 0.97 * (edge - centre):
                assert sum(r.contains_point(point) for r in rings) % 2 == 1, (root, point)


def test_zoom_to_released_cells_holds_every_resolution() -> None:
    hm = report.heatmap(mixed_release(), boundary=BOUNDARY, extent="released")
    x0, x1 = hm.panels[0].axes.get_xlim()
    y0, y1 = hm.panels[0].axes.get_ylim()
    corners = np.array([(lng, lat) for cell, _ in ROWS for lat, lng in h3.cell_to_boundary(cell)])
    assert (corners >= (x0, y0)).all() and (corners <= (x1, y1)).all()
    # and no wider than the cells need: the margin follows the finest cells, not the first one's
    width = np.ptp(corners[:, 0])
    assert x1 - x0 < 1.5 * width


def test_a_fixed_resolution_release_is_drawn_as_before() -> None:
    hm = report.heatmap(fixed_release(), boundary=BOUNDARY)
    released = layer(hm, "released")
    assert sorted(released.get_array().tolist()) == sorted(fixed_release().table["count"].to_list())
    assert not isinstance(released.norm, LogNorm) and released.norm.vmin == THRESHOLD
    assert "H3 resolution 7, " in text_by_gid(hm, "footer")
    assert "H3 resolution 7, ≈" in text_by_gid(hm, "subtitle")
    (legend,) = hm.figure.legends
    assert not any("colour =" in t.get_text() for t in legend.get_texts())


# ── the HTML report ──────────────────────────────────────────────────────────────────


def page_data(page: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="privmob-data">(.*?)</script>', page, re.S)
    assert match
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def decoded(poly: list[int]) -> np.ndarray[Any, Any]:
    """A cell outline of the page: [lng0, lat0, dlng1, dlat1, ...] in 1e-5 degrees."""
    return np.cumsum(np.array(poly, dtype=np.float64).reshape(-1, 2), axis=0) / 1e5


def test_html_page_carries_each_cells_polygon_resolution_and_area() -> None:
    page = html_report(mixed_release(), boundary=BOUNDARY)
    data = page_data(page)
    assert set(LEAVES) <= set(data["cells"])
    assert sum(data["isKey"]) == data["keyCells"] == len(LEAVES)
    for i, cell in enumerate(data["cells"]):
        res = h3.get_resolution(cell)
        assert data["cellRes"][i] == res
        assert data["cellKm2"][i] == pytest.approx(h3.cell_area(cell, "km^2"), rel=1e-2)
        assert drawn_cell(decoded(data["poly"][i]), res) == cell  # its own outline, at its resolution
    assert data["colourBy"] == "density"
    # the partition's roots are painted under its withheld cells (no white slivers between sizes)
    roots = [drawn_cell(decoded(p), 4) for p in data["roots"]]
    assert sorted(roots) == sorted({h3.cell_to_parent(c, 4) for c in LEAVES})
    assert data["dmin"] == pytest.approx(60 / h3.cell_area(N4, "km^2"), rel=1e-3)
    assert data["adaptive"]["min"] == 4 and data["adaptive"]["max"] == 8
    assert "H3 resolution 4–8, adaptive" in page
    assert f'<p class="sub" id="adaptive-note">{ADAPTIVE_NOTE}</p>' in page
    assert "<th class=\"num\">res</th>" in page and "per km²" in page
    # the manifest card: the mix and the partition's size, not its hundred cells as a list
    assert f"adaptive H3 cells, resolution 4–8, {len(LEAVES)} cells in the partition" in page
    card = page.split('id="manifest"', 1)[1].split("<details>", 1)[0]
    assert "&quot;leaves&quot;: 98" in card and EIGHT[-1] not in card
    # the script shows resolution and area on hover and draws coarse cells first
    assert '"H3 resolution " + D.cellRes[idx]' in page and "D.cellRes[a.e.idx] - D.cellRes[b.e.idx]" in page


def test_html_of_an_adaptive_release_without_its_partition_says_withheld_is_not_drawn() -> None:
    page = html_report(mixed_release(uint64=True, leaves=False), boundary=BOUNDARY)
    data = page_data(page)
    assert data["isKey"] is None and data["keyCells"] is None
    assert sorted(data["cells"]) == sorted(c for c, _ in ROWS)  # UInt64 cells arrive as H3 strings
    assert "does not list its partition" in page


def test_html_of_a_fixed_resolution_release_has_no_adaptive_parts() -> None:
    page = html_report(fixed_release(), boundary=BOUNDARY)
    data = page_data(page)
    assert not {"cellRes", "cellKm2", "colourBy", "adaptive", "roots"} & set(data)
    assert data["resolution"] == 7 and "adaptive-note" not in page
    assert "H3 resolution 7 (≈ " in page and "Distinct key-group persons (noisy)" in page


# ── the GeoJSON ──────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("uint64", [False, True])
def test_geojson_features_carry_their_resolution(uint64: bool) -> None:
    release = mixed_release(uint64=uint64, resolution_column=not uint64)
    features = release.to_geojson()["features"]
    assert [f["properties"]["cell"] for f in features] == [c for c, _ in ROWS]
    for feature in features:
        cell = feature["properties"]["cell"]
        assert feature["properties"]["resolution"] == h3.get_resolution(cell)
        ring = feature["geometry"]["coordinates"][0]
        assert len(ring) == len(h3.cell_to_boundary(cell)) + 1
    assert {f["properties"]["resolution"] for f in features} == {4, 6, 8}
    fixed = fixed_release().to_geojson()["features"]
    assert {f["properties"]["resolution"] for f in fixed} == {7}
