"""privmob.report: static heatmaps (PNG/PDF), the withheld layer, marking and fonts."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h3
import numpy as np
import polars as pl
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.patches import PathPatch
from matplotlib.path import Path as Path_
from matplotlib.text import Text
from PIL import Image

import privmob.report as report
from privmob.cli import main
from privmob.config import DEFAULT_MARKING
from privmob.errors import InputError
from privmob.privacy.intervals import SELECTION_NOTE
from privmob.release.table import ReleasedTable
from privmob.report import fonts
from tests.conftest import SAMPLES

BOUNDARY = SAMPLES / "beijing_boundary.geojson"
CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff]")
CN_HALF, EN_HALF = (part.strip() for part in DEFAULT_MARKING.split(" / "))
SHANGHAI = dt.timezone(dt.timedelta(hours=8))

has_cjk_font = fonts._find(CN_HALF).has_cjk
needs_cjk_font = pytest.mark.skipif(
    not has_cjk_font, reason="no CJK font installed (pip install noto-cjk-sans-otc)"
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("heatmap") / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def manifest(demo: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((demo / "manifest.json").read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def table(demo: Path) -> pl.DataFrame:
    return pl.read_parquet(demo / "release.parquet")


@pytest.fixture(scope="module")
def single(demo: Path) -> report.Heatmap:
    return report.heatmap(demo, boundary=BOUNDARY)


@pytest.fixture(scope="module")
def day(demo: Path) -> report.Heatmap:
    return report.small_multiples(demo, boundary=BOUNDARY)


@pytest.fixture
def no_cjk_font(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make the font search find nothing (as on a machine without CJK fonts)."""
    monkeypatch.setattr(fonts, "_candidate_files", lambda: iter(()))
    fonts._find.cache_clear()
    yield
    fonts._find.cache_clear()


def texts(hm: report.Heatmap) -> list[Text]:
    return [t for t in hm.figure.findobj(Text) if isinstance(t, Text) and t.get_text()]


def text_by_gid(hm: report.Heatmap, gid: str) -> str:
    return "\n".join(t.get_text() for t in texts(hm) if t.get_gid() == gid)


def released_in(table: pl.DataFrame, start: dt.datetime) -> pl.DataFrame:
    return table.filter(pl.col("window_start") == start.astimezone(dt.UTC))


def collection(panel: report.Panel, gid: str) -> Any:
    found = [a for a in (*panel.axes.collections, *panel.axes.patches) if a.get_gid() == gid]
    assert len(found) == 1, f"expected one {gid!r} layer"
    return found[0]


# ── files ────────────────────────────────────────────────────────────────────────────


def test_png_is_saved_at_a_readable_resolution(single: report.Heatmap, tmp_path: Path) -> None:
    path = single.save(tmp_path / "out" / "heatmap.png")
    assert path == tmp_path / "out" / "heatmap.png"
    width_in, height_in = single.figure.get_size_inches()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] == pytest.approx(width_in * 200, abs=1)
        assert image.size[1] == pytest.approx(height_in * 200, abs=1)
        assert image.info["dpi"][0] == pytest.approx(200, abs=1)
        assert "privmob release" in image.info.get("Description", "")
    with Image.open(single.save(tmp_path / "h150.png", dpi=150)) as image:
        assert image.size[0] == pytest.approx(width_in * 150, abs=1)


def test_save_refuses_coarse_png_and_unknown_formats(single: report.Heatmap, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 150"):
        single.save(tmp_path / "h.png", dpi=100)
    with pytest.raises(ValueError, match=r"\*\.png or \*\.pdf"):
        single.save(tmp_path / "h.jpg")


def test_pdf_embeds_its_fonts(single: report.Heatmap, tmp_path: Path) -> None:
    data = single.save(tmp_path / "heatmap.pdf").read_bytes()
    assert data.startswith(b"%PDF")
    fonts_used = re.findall(rb"/BaseFont /(?:[A-Z]{6}\+)?([\w-]+)", data)
    assert fonts_used, "no font in the PDF"
    assert b"/Subtype /Type3" in data  # glyphs embedded (valid for CFF fonts too)
    if has_cjk_font:
        assert any(name.startswith(b"NotoSansCJK") for name in fonts_used), fonts_used


# ── marking and fonts ────────────────────────────────────────────────────────────────


@needs_cjk_font
def test_marking_is_drawn_in_both_languages(single: report.Heatmap) -> None:
    band = text_by_gid(single, "marking")
    assert CN_HALF in band and EN_HALF in band
    assert CN_HALF in text_by_gid(single, "watermark")
    assert DEFAULT_MARKING in text_by_gid(single, "marking-footer")
    assert fonts.cjk_font().can_draw(DEFAULT_MARKING)


def test_without_a_cjk_font_it_warns_and_draws_no_cjk(no_cjk_font: None, demo: Path, tmp_path: Path) -> None:
    with pytest.warns(fonts.MissingCJKFontWarning, match="noto-cjk-sans-otc"):
        hm = report.heatmap(demo, boundary=BOUNDARY, place="北京市 Beijing")
    drawn = [t.get_text() for t in texts(hm)]
    assert not [t for t in drawn if CJK.search(t)]
    assert EN_HALF in text_by_gid(hm, "marking")
    assert text_by_gid(hm, "title").startswith("Beijing")
    assert not hm.font.has_cjk
    assert hm.save(tmp_path / "ascii.png").stat().st_size > 0


def test_font_choice_keeps_only_what_it_can_draw() -> None:
    none = fonts.FontChoice(None)
    assert none.safe(DEFAULT_MARKING) == EN_HALF
    assert none.safe("北京 Beijing") == "Beijing"
    assert none.safe("ε = 1 · δ = 1e-07") == "ε = 1 · δ = 1e-07"
    assert not none.can_draw(CN_HALF)


# ── what is drawn ────────────────────────────────────────────────────────────────────


def test_default_window_is_the_one_with_most_released_persons(
    single: report.Heatmap, table: pl.DataFrame
) -> None:
    mass = dict(table.group_by("window_start").agg(pl.col("count").sum()).iter_rows())
    # (compared by mass: two windows can tie, and either is then a right answer)
    assert mass[single.panels[0].window_start] == max(mass.values())


def test_hexagons_are_the_released_cells_and_the_rest_is_withheld(
    single: report.Heatmap, table: pl.DataFrame, manifest: dict[str, Any]
) -> None:
    (panel,) = single.panels
    rows = released_in(table, panel.window_start)
    released = collection(panel, "released")
    assert isinstance(released, PolyCollection)
    assert len(released.get_paths()) == rows.height == panel.released > 0
    assert sorted(released.get_array().tolist()) == sorted(rows.get_column("count").to_list())
    assert panel.withheld == manifest["key_cells"] - rows.height
    withheld = collection(panel, "withheld")
    assert isinstance(withheld, PathPatch) and withheld.get_hatch()
    # the withheld layer covers key cells that were not released, and never a released one
    rings = [Path_(ring) for ring in withheld.get_path().to_polygons()]

    def covered(lat: float, lng: float) -> bool:  # even-odd: a released cell is a hole
        return sum(ring.contains_point((lng, lat)) for ring in rings) % 2 == 1

    released_cells = set(rows.get_column("cell").to_list())
    for cell in released_cells:
        assert not covered(*h3.cell_to_latlng(cell))
    for cell in h3.grid_disk(h3.latlng_to_cell(39.9042, 116.4074, manifest["resolution"]), 3):
        if cell not in released_cells:
            assert covered(*h3.cell_to_latlng(cell))


def test_released_counts_are_never_drawn_as_zero(single: report.Heatmap, manifest: dict[str, Any]) -> None:
    released = collection(single.panels[0], "released")
    assert min(released.get_array()) >= manifest["release_threshold"]
    assert released.norm.vmin == manifest["release_threshold"]


def test_legend_says_withheld_is_not_zero(single: report.Heatmap, manifest: dict[str, Any]) -> None:
    (legend,) = single.figure.legends
    labels = [t.get_text() for t in legend.get_texts()]
    threshold = manifest["release_threshold"]
    assert any(f"withheld: fewer than ~{threshold} (noise threshold)" in x for x in labels)
    assert any("boundary" in x for x in labels)


def test_colour_bar_is_labelled_with_the_interval(single: report.Heatmap, manifest: dict[str, Any]) -> None:
    (bar,) = [ax for ax in single.figure.axes if ax.get_label() == "colorbar"]
    assert bar.get_ylabel() == (
        f"distinct key-group persons (noisy count, 95% ± {manifest['ci95_halfwidth']} "
        "away from the threshold)"
    )


# ── near the threshold: biased upward, selection-aware intervals (issue 11) ────────────


def test_every_figure_says_near_threshold_counts_are_biased_upward(
    single: report.Heatmap, day: report.Heatmap, tmp_path: Path,
) -> None:
    zh, en = SELECTION_NOTE
    for hm in (single, day):
        note = text_by_gid(hm, "selection-note")
        assert "biased upward" in note and "selection-aware" in note
        assert " ".join(en.split()) in " ".join(note.split())  # all of it, wrapped
        if has_cjk_font:
            assert zh in note
        (legend,) = hm.figure.legends
        assert any("near threshold" in t.get_text() for t in legend.get_texts())
    pdf = single.save(tmp_path / "h.pdf").read_bytes()
    assert pdf.startswith(b"%PDF")


def test_without_a_cjk_font_the_note_is_still_there_in_english(no_cjk_font: None, demo: Path) -> None:
    with pytest.warns(fonts.MissingCJKFontWarning):
        hm = report.heatmap(demo, boundary=BOUNDARY)
    note = text_by_gid(hm, "selection-note")
    assert "biased upward" in note and not CJK.search(note)


def _near_release(base: ReleasedTable) -> tuple[ReleasedTable, set[str]]:
    """Seven released cells in one window, three of them near the threshold."""
    m = base.manifest
    start = base.table["window_start"].min()
    cells = sorted(h3.grid_disk(h3.latlng_to_cell(39.9087, 116.3975, m["resolution"]), 1))
    limit = m["release_threshold"] + m["ci95_halfwidth"]
    counts = [m["release_threshold"], limit - 1, m["release_threshold"] + 3, limit, limit + 5, limit + 40,
              limit + 90]
    table = pl.DataFrame({"cell": cells, "window_start": [start] * 7, "count": counts}).with_columns(
        (pl.col("count") - 10).alias("ci_low"), (pl.col("count") + 10).alias("ci_high"),
        (pl.col("count") < limit).alias("near_threshold"))
    near = {c for c, n in zip(cells, counts, strict=True) if n < limit}
    return ReleasedTable(table=table, manifest=m), near


def _drawn_cells(paths: Any, resolution: int) -> set[str]:
    """The H3 cells whose hexagons these paths are (by their centres)."""
    centres = (path.vertices[:6].mean(axis=0) for path in paths)
    return {h3.latlng_to_cell(lat, lng, resolution) for lng, lat in centres}


def test_near_threshold_cells_are_drawn_outlined_and_dotted(demo: Path) -> None:
    rel, near = _near_release(ReleasedTable.read(demo))
    res = rel.manifest["resolution"]
    hm = report.heatmap(rel, boundary=BOUNDARY)
    layer = collection(hm.panels[0], "near-threshold")
    assert layer.get_hatch() and len(layer.get_paths()) == len(near) == 3
    assert _drawn_cells(layer.get_paths(), res) == near
    released = collection(hm.panels[0], "released")
    assert len(released.get_paths()) == 7  # still coloured by count underneath
    # a release without the column (written before it existed) gets the same rule
    legacy = ReleasedTable(table=rel.table.drop("near_threshold"), manifest=rel.manifest)
    again = collection(report.heatmap(legacy, boundary=BOUNDARY).panels[0], "near-threshold")
    assert _drawn_cells(again.get_paths(), res) == near


def test_demo_release_marks_its_near_threshold_cells(single: report.Heatmap, table: pl.DataFrame,
                                                    manifest: dict[str, Any]) -> None:
    assert table["near_threshold"].to_list() == (
        table["count"] < manifest["release_threshold"] + manifest["ci95_halfwidth"]).to_list()
    start = single.panels[0].window_start
    near = released_in(table, start).filter(pl.col("near_threshold")).height
    layers = [a for a in single.panels[0].axes.collections if a.get_gid() == "near-threshold"]
    assert sum(len(a.get_paths()) for a in layers) == near


def test_title_names_place_window_and_time_zone(demo: Path) -> None:
    hm = report.heatmap(demo, boundary=BOUNDARY, window=dt.datetime(2026, 11, 26, 3), place="Beijing")
    title = text_by_gid(hm, "title")
    assert title.startswith("Beijing")
    assert "2026-11-26" in title and "03:00–06:00" in title and "Asia/Shanghai" in title
    assert hm.panels[0].window_start == dt.datetime(2026, 11, 26, 3, tzinfo=SHANGHAI)
    assert report.heatmap(demo, window=1).panels[0].window_start == hm.panels[0].window_start


def test_footer_states_parameters_release_and_signature(
    single: report.Heatmap, manifest: dict[str, Any], table: pl.DataFrame
) -> None:
    footer = text_by_gid(single, "footer")
    assert manifest["release_id"] in footer
    assert f"ε = {manifest['epsilon']:g}" in footer and "δ = 1e-07" in footer and "ρ = " in footer
    assert f"threshold {manifest['release_threshold']}" in footer
    assert f"min_count {manifest['min_count']}" in footer
    assert f"resolution {manifest['resolution']}" in footer
    assert f"signed: {manifest['signature']['fingerprint']}" in footer
    unsigned = {k: v for k, v in manifest.items() if k != "signature"}
    hm = report.heatmap(ReleasedTable(table=table, manifest=unsigned))
    assert "UNSIGNED" in text_by_gid(hm, "footer")


def test_small_multiples_draw_one_map_per_window(
    day: report.Heatmap, table: pl.DataFrame, manifest: dict[str, Any]
) -> None:
    maps = [ax for ax in day.figure.axes if ax.get_label().startswith("map:")]
    assert len(maps) == len(day.panels) == manifest["windows"] == 8
    assert len([ax for ax in day.figure.axes if ax.get_label() == "colorbar"]) == 1
    for panel in day.panels:
        assert panel.released == released_in(table, panel.window_start).height
        assert len(collection(panel, "released").get_paths()) == panel.released
    starts = [p.window_start for p in day.panels]
    assert starts == sorted(starts) and starts[0] == dt.datetime(2026, 11, 26, tzinfo=SHANGHAI)
    assert len({round(p.axes.get_position().x0, 6) for p in day.panels}) == 4  # 4 columns × 2 rows


def test_a_day_of_hourly_windows_is_a_six_by_four_grid() -> None:
    start = dt.datetime(2026, 11, 26, tzinfo=SHANGHAI)
    centre = h3.latlng_to_cell(39.9, 116.4, 7)
    cells = sorted(h3.grid_disk(centre, 1))
    rows = [
        (cell, (start + dt.timedelta(hours=w)).astimezone(dt.UTC), 20 + (w * 7 + i) % 30)
        for w in range(24) for i, cell in enumerate(cells) if (w + i) % 3
    ]
    frame = pl.DataFrame(rows, schema=["cell", "window_start", "count"], orient="row")
    release = ReleasedTable(
        table=frame.with_columns(pl.col("window_start").dt.cast_time_unit("us")),
        manifest={
            "release_id": "hand-made", "dataset": "test", "window": "1h", "windows": 24,
            "period_start": start.isoformat(), "timezone": "Asia/Shanghai", "resolution": 7,
            "release_threshold": 20, "ci95_halfwidth": 9, "mechanism": "laplace", "epsilon": 1.0,
            "min_count": 10, "keys": "threshold", "marking": DEFAULT_MARKING,
        },
    )
    hm = report.small_multiples(release)
    assert len(hm.panels) == 24
    assert len({round(p.axes.get_position().x0, 6) for p in hm.panels}) == 6
    assert len({round(p.axes.get_position().y0, 6) for p in hm.panels}) == 4
    assert [p.window_start.hour for p in hm.panels] == list(range(24))
    assert all(p.withheld is None for p in hm.panels)  # no boundary: withheld cells unknown
    assert "a missing cell is not a zero" in text_by_gid(hm, "note")


# ── inputs ───────────────────────────────────────────────────────────────────────────


def test_a_folder_without_a_release_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a release folder"):
        report.heatmap(tmp_path)


def test_a_window_outside_the_period_is_refused(demo: Path) -> None:
    with pytest.raises(InputError, match="outside the period"):
        report.heatmap(demo, window=8)
    with pytest.raises(InputError, match="not the start of a window"):
        report.heatmap(demo, window=dt.datetime(2026, 11, 26, 4))


def test_a_boundary_other_than_the_keys_one_is_flagged(demo: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.geojson"
    other.write_text(BOUNDARY.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="not the one this release's keys were drawn from"):
        report.heatmap(demo, boundary=other)


def test_extent_zooms_to_released_cells_with_a_locator(demo: Path) -> None:
    def labels(hm: report.Heatmap) -> list[str]:
        return [ax.get_label() for ax in hm.figure.axes]

    def map_width(hm: report.Heatmap) -> float:
        return abs(float(np.diff(hm.panels[0].axes.get_xlim())[0]))

    # Released cells clustered downtown (the demo's own cells are noisy: a spurious one far
    # out can make "released" as wide as the boundary).
    base = ReleasedTable.read(demo)
    m = base.manifest
    start = base.table["window_start"].min()
    centre = h3.latlng_to_cell(39.9087, 116.3975, m["resolution"])
    cells = sorted(h3.grid_disk(centre, 1))
    clustered = ReleasedTable(
        table=pl.DataFrame({"cell": cells, "window_start": [start] * len(cells),
                            "count": [m["release_threshold"] + 5] * len(cells)}).with_columns(
            (pl.col("count") - 10).alias("ci_low"), (pl.col("count") + 10).alias("ci_high")),
        manifest=m)
    whole = report.heatmap(clustered, boundary=BOUNDARY, extent="boundary")
    zoom = report.heatmap(clustered, boundary=BOUNDARY, extent="released")
    assert "locator" not in labels(whole)
    assert "locator" in labels(zoom)
    assert map_width(zoom) < map_width(whole)
    with pytest.raises(InputError, match="extent"):
        report.heatmap(clustered, extent="city")  # type: ignore[arg-type]
    assert zoom._repr_png_().startswith(b"\x89PNG")


def test_auto_extent_zooms_when_released_cells_are_a_small_part_of_the_area() -> None:
    start = dt.datetime(2026, 11, 26, tzinfo=SHANGHAI)
    cells = sorted(h3.grid_disk(h3.latlng_to_cell(39.9, 116.4, 7), 2))
    frame = pl.DataFrame(
        {"cell": cells, "window_start": [start.astimezone(dt.UTC)] * len(cells), "count": [30] * len(cells)}
    ).with_columns(pl.col("window_start").dt.cast_time_unit("us"))
    release = ReleasedTable(table=frame, manifest={
        "window": "1h", "windows": 24, "period_start": start.isoformat(), "timezone": "Asia/Shanghai",
        "resolution": 7, "release_threshold": 20, "keys": "threshold",
    })
    hm = report.heatmap(release, boundary=BOUNDARY)
    assert "locator" in [ax.get_label() for ax in hm.figure.axes]
    assert hm.panels[0].withheld is not None  # the boundary's cells not released are drawn
    assert "UNSIGNED" in text_by_gid(hm, "footer")
