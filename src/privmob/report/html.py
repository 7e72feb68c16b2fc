"""A single self-contained HTML page for a release: map, time slider, flows and manifest.

Epidemic-control offices often work offline, so the page needs nothing at view time: the
script, the styles, the hexagons, the counts and the manifest are all inside the one file,
and a Content-Security-Policy forbids the browser from fetching anything (``default-src
'none'``; only inline styles and scripts, ``data:`` images and the ``data:`` font are
allowed). The viewer's computer may have no Chinese font either, so the page embeds a subset
of Noto Sans CJK SC (SIL Open Font License 1.1) with exactly the CJK characters it uses, and
says so visibly when it was made where no such font was installed (see :func:`_embed_font`).

What the page shows:

* the marking (bilingual internal-information text) in a red banner at the top and the
  bottom and as a faint watermark over the whole page and the map;
* the map of H3 hexagons for one time window, coloured by count on one fixed scale for the
  whole period, with a slider over the windows (labelled in the job's local time);
  hovering a hexagon shows its count and 95% interval — or "withheld" for a public-key
  cell whose noisy count was below the release threshold (a missing number is not a zero);
* an adaptive release (cells of mixed H3 resolutions, fine where many persons were): every
  cell drawn as its own polygon, coarse ones under finer ones, coloured by persons per km²
  (a big cell holds more persons merely for being big), its resolution and area on hover,
  and a sentence saying what "adaptive" means;
* near-threshold hexagons (``near_threshold``: noisy count < τ + half-width) with a dashed
  outline and "near threshold" on hover, and, in the legend and the note (Chinese and
  English), that such counts are biased upward and their intervals are selection-aware;
* the boundary outline and, when given, the origin–destination flows of the window;
* a plain-language note on what the noise means, and the manifest as readable tables.

The manifest's exact input statistics (``rows_*``, ``persons``, bounding tallies,
timings) are for the operator only — they are not differentially private — and are left
out of the page.

Everything is post-processing of a :class:`~privmob.release.table.ReleasedTable`: making the
page spends no privacy budget.

Examples
--------
>>> from privmob.report.html import write_html_report
>>> write_html_report("out/demo", "out/demo-report.html",
...                   boundary="data-samples/beijing_boundary.geojson")  # doctest: +SKIP
PosixPath('out/demo-report.html')
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import itertools
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import h3
import numpy as np
import polars as pl
import polars_h3 as plh3

from privmob._version import __version__
from privmob.config import DEFAULT_MARKING, parse_duration
from privmob.errors import InputError
from privmob.privacy.intervals import SELECTION_NOTE
from privmob.release.manifest import ManifestView
from privmob.release.table import ReleasedTable, release_zone
from privmob.report.cells import cell_columns
from privmob.report.cells import resolutions as release_resolutions
from privmob.report.fonts import cjk_characters, embed_cjk, text_outline

__all__ = ["CSP", "html_report", "write_html_report"]

#: The page may not fetch anything: no scripts, styles, fonts, images or connections from
#: anywhere but the page itself (inline), ``data:`` images (the watermark tile) and the
#: ``data:`` font (the embedded subset of the Chinese font).
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "img-src data:; font-src data:; base-uri 'none'; form-action 'none'"
)

#: Where the page's ``@font-face`` goes, and the note when the page's Chinese could not be
#: given a font; filled in once the whole page's text is known. Both hold a "<", which no
#: escaped text of the page can, so the first occurrence is always the page's own.
_FONT_SLOT = "<privmob:font-face>"
_FONT_NOTE_SLOT = "<privmob:font-note>"

#: What the page says an adaptive release is (one sentence).
ADAPTIVE_NOTE = (
    "This release is adaptive: the area was split into smaller cells only where enough persons "
    "were present to count them reliably, so busy places show small cells and quiet ones large "
    "cells, and colours show persons per km² so that cells of different sizes compare fairly."
)

#: Manifest fields that describe the *exact* input (not differentially private): the
#: manifest itself says they must not be published with the table, so the page omits them.
_OPERATOR_ONLY = frozenset({
    "rows_in", "rows_bad", "rows_out_of_scope", "rows_out_of_period", "rows_outside_boundary",
    "rows_used", "persons", "exact_fields_note", "timings_s",
    "input_sha256", "config_sha256", "identifier_columns_dropped",  # older manifests only
})
_OPERATOR_ONLY_BOUNDING = frozenset({
    "person_cell_windows", "person_cell_windows_kept", "person_cell_windows_dropped_share",
    "dwell_minutes", "dwell_minutes_kept_share",
})
_OPERATOR_ONLY_FLOWS = frozenset({"trips", "trips_outside_units", "persons"})
_OPERATOR_ONLY_FLOWS_BOUNDING = frozenset({"person_od_windows", "person_od_windows_kept"})
_FLOW_COLUMNS = ("origin", "destination", "window_start", "count")
_COORD_DIGITS = 5  # ≈ 1 m: finer than any H3 resolution privmob releases
_COORD_SCALE = 10**_COORD_DIGITS
_MAX_WINDOWS = 24 * 31  # one slider position per window; a month of hours at most


def html_report(
    release: ReleasedTable | str | Path,
    *,
    boundary: str | Path | None = None,
    title: str | None = None,
    flows: pl.DataFrame | None = None,
    window: int | None = None,
) -> str:
    """The release as one self-contained, offline HTML page (returned as text).

    Parameters
    ----------
    release
        A :class:`~privmob.release.table.ReleasedTable`, or a release folder (``release.parquet``
        and ``manifest.json``, as written by ``ReleasedTable.write`` / ``privmob run``). For
        a folder the page also states whether its signature and file digests check out.
    boundary
        The job's boundary file (GeoJSON / GeoPackage, WGS-84). Draws the outline and, for
        a release with public keys, every key cell not released in a window as "withheld".
        Without it only released cells are drawn and a note says so.
    title
        Heading of the page; default names the dataset and period.
    flows
        Origin–destination flows to draw as arrows: a frame with ``origin``,
        ``destination``, ``window_start`` and ``count``, optionally ``ci_low``, ``ci_high``
        and the units' coordinates ``origin_lat``, ``origin_lng``, ``dest_lat``,
        ``dest_lng`` (needed when the units are not H3 cells, e.g. districts). Default: the
        release's own flows (``ReleasedTable.flows``, or ``flows.parquet`` in a folder).
        A flow is shown on every slider window its own (often longer) window overlaps.
    window
        Window index (``0`` = first of the period) the page opens on; default: the window
        with the most released persons, as for :func:`privmob.report.heatmap`.

    Returns
    -------
    str
        The HTML text (UTF-8 when written; see :func:`write_html_report`).
    """
    released, folder = _load_release(release)
    if flows is None:
        flows = getattr(released, "flows", None)
    if flows is None and folder is not None and (folder / "flows.parquet").is_file():
        try:
            flows = pl.read_parquet(folder / "flows.parquet")
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise InputError(f"cannot read {folder / 'flows.parquet'}: {exc}") from exc
    page = _Page.build(released, boundary=boundary, flows=flows, folder=folder)
    return page.render(title, window)


def write_html_report(
    release: ReleasedTable | str | Path,
    path: str | Path,
    *,
    boundary: str | Path | None = None,
    title: str | None = None,
    flows: pl.DataFrame | None = None,
    window: int | None = None,
) -> Path:
    """Write :func:`html_report` to ``path`` (UTF-8) and return the path.

    Do not write the page into the release folder itself: ``privmob verify`` reports any
    file the manifest does not list.
    """
    text = html_report(release, boundary=boundary, title=title, flows=flows, window=window)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target


# ── reading the release ────────────────────────────────────────────────────────────────


def _near_column(table: pl.DataFrame, threshold: int | None, halfwidth: int | None) -> pl.Expr:
    """The table's ``near_threshold`` flags; for a release written before it had them, the
    same rule from the manifest (count < τ + h); all false when that is unknown."""
    if "near_threshold" in table.columns:
        return pl.col("near_threshold").cast(pl.Boolean).fill_null(False)
    if threshold is not None and halfwidth is not None:
        return pl.col("count") < threshold + halfwidth
    return pl.lit(False)


def _load_release(release: ReleasedTable | str | Path) -> tuple[ReleasedTable, Path | None]:
    """A release object (and its folder, when read from one, to verify its signature)."""
    if isinstance(release, ReleasedTable):
        return release, None
    folder = Path(release)
    folder = folder.parent if folder.is_file() else folder
    return ReleasedTable.read(folder), folder


@dataclass(frozen=True)
class _Windows:
    tz: dt.tzinfo
    tz_name: str
    start: dt.datetime  # UTC
    seconds: int
    count: int

    def index(self, column: pl.Expr) -> pl.Expr:
        start_us = int(self.start.timestamp()) * 1_000_000
        return ((column.dt.epoch("us") - start_us) // (self.seconds * 1_000_000)).cast(pl.Int64)

    def bounds(self, i: int) -> tuple[dt.datetime, dt.datetime]:
        start = self.start + dt.timedelta(seconds=i * self.seconds)
        return start.astimezone(self.tz), (start + dt.timedelta(seconds=self.seconds)).astimezone(self.tz)

    def label(self, i: int) -> tuple[str, str]:
        """(full label, short tick label) in local time."""
        start, end = self.bounds(i)
        if end.date() == start.date():
            until = f"{end:%H:%M}"
        elif end.date() == start.date() + dt.timedelta(days=1) and end.time() == dt.time(0):
            until = "24:00"
        else:
            until = f"{end:%Y-%m-%d %H:%M}"
        return f"{start:%Y-%m-%d %H:%M}–{until} ({_utc_offset(start)})", f"{start:%H:%M}"


def _windows(view: ManifestView, table: pl.DataFrame) -> _Windows:
    tz, tz_name = release_zone(view.raw)
    starts = table.get_column("window_start")
    seconds = 0
    if view.window is not None:
        try:
            seconds = parse_duration(view.window)
        except ValueError:
            seconds = 0
    if seconds <= 0:
        distinct = starts.unique().sort().dt.epoch("s").to_list()
        gaps = [b - a for a, b in itertools.pairwise(distinct) if b > a]
        seconds = int(min(gaps)) if gaps else 3600
    start: dt.datetime | None = None
    if view.period_start is not None:
        try:
            parsed = dt.datetime.fromisoformat(view.period_start)
        except ValueError:
            parsed = None
        if parsed is not None:
            start = (parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)).astimezone(dt.UTC)
    if start is None:
        first = starts.min() if table.height else None
        start = first if isinstance(first, dt.datetime) else dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        start = start if start.tzinfo else start.replace(tzinfo=dt.UTC)
    count = view.windows or 0
    return _Windows(tz=tz, tz_name=tz_name, start=start, seconds=seconds, count=count)


def _utc_table(table: pl.DataFrame, what: str, columns: Sequence[str]) -> pl.DataFrame:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(f"the {what} lacks column(s) {', '.join(missing)}; it needs {', '.join(columns)}")
    starts = table.get_column("window_start")
    if not isinstance(starts.dtype, pl.Datetime):
        raise InputError(f"the {what}'s window_start must be a datetime column, not {starts.dtype}")
    if starts.dtype.time_zone is None:
        table = table.with_columns(pl.col("window_start").dt.replace_time_zone("UTC"))
    elif starts.dtype.time_zone != "UTC":
        table = table.with_columns(pl.col("window_start").dt.convert_time_zone("UTC"))
    return table


# ── the public keys and the boundary ─────────────────────────────────────────────────


@dataclass(frozen=True)
class _Area:
    rings: list[list[float]]  # outline, flat [lng, lat, lng, lat, ...] per ring
    key_cells: list[str] | None  # public key cells at the release resolution, or None
    name: str
    note: str | None  # a warning for the page (boundary does not match the keys)


def _area(path: Path, keys: str, resolution: int | None) -> _Area:
    from privmob.privacy.keys import release_boundary

    boundary, note = release_boundary(path, keys)
    if note is not None:
        warnings.warn(note, UserWarning, stacklevel=4)
    public = keys.startswith("public:")
    geom = boundary.geometry
    minx, miny, maxx, maxy = geom.bounds
    outline = geom.simplify(max(maxx - minx, maxy - miny) / 3000, preserve_topology=True)
    rings: list[list[float]] = []
    for polygon in getattr(outline, "geoms", [outline]):
        if polygon.geom_type != "Polygon":
            continue
        for ring in (polygon.exterior, *polygon.interiors):
            rings.append([round(v, _COORD_DIGITS) for xy in ring.coords for v in xy[:2]])
    cells = None
    if public and resolution is not None:
        cells = [h3.int_to_str(int(c)) for c in boundary.cells(resolution)]
    return _Area(rings=rings, key_cells=cells, name=path.name, note=note)


def _recorded_boundary(manifest: Mapping[str, Any]) -> Path | None:
    recorded = manifest.get("boundary")
    if isinstance(recorded, Mapping):
        recorded = recorded.get("path")
    if isinstance(recorded, str) and recorded and Path(recorded).is_file():
        return Path(recorded)
    return None


# ── the page ─────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class _Page:
    manifest: Mapping[str, Any]
    data: dict[str, Any]
    windows: _Windows
    marking: str
    fingerprint: str | None
    verification: tuple[str, list[str]] | None  # (headline, problems) for a folder
    area_name: str | None
    public_keys: bool
    withheld_drawn: bool
    notes: list[str]

    @classmethod
    def build(
        cls,
        release: ReleasedTable,
        *,
        boundary: str | Path | None,
        flows: pl.DataFrame | None,
        folder: Path | None,
    ) -> _Page:
        m = release.manifest
        view = ManifestView.of(m)
        table = _utc_table(release.table, "release table", ("cell", "window_start", "count"))
        win = _windows(view, table)
        table = table.with_columns(win.index(pl.col("window_start")).alias("w"))
        if "ci_low" not in table.columns or "ci_high" not in table.columns:
            assumed = view.ci95_halfwidth or 0
            table = table.with_columns(
                (pl.col("count") - assumed).clip(lower_bound=0).alias("ci_low"),
                (pl.col("count") + assumed).alias("ci_high"),
            )
        bad = table.filter(pl.col("w") < 0).height
        if bad:
            raise InputError(f"{bad} row(s) of the release start before its period_start {win.start}")
        last = int(table.get_column("w").max() or 0) if table.height else 0  # type: ignore[arg-type]
        n_windows = max(win.count, last + 1, 1)
        if n_windows > _MAX_WINDOWS:
            raise InputError(
                f"the release has {n_windows} windows; one page shows at most {_MAX_WINDOWS} — "
                "make a page per day (filter the table by window_start)"
            )
        win = _Windows(tz=win.tz, tz_name=win.tz_name, start=win.start, seconds=win.seconds, count=n_windows)

        table = cell_columns(table)
        resolutions = release_resolutions(view, table)
        resolution = resolutions[0] if len(resolutions) == 1 else None
        mixed = resolution is None and len(resolutions) > 1
        keys, public = view.keys, view.public_keys
        notes: list[str] = []
        source = Path(boundary) if boundary is not None else (release.boundary or _recorded_boundary(m))
        area = _area(source, keys, resolution) if source is not None else None
        if area is not None and area.note:
            notes.append(area.note)

        released_cells = sorted(set(table.get_column("cell").to_list()))
        key_cells = area.key_cells if area is not None else None
        if mixed:  # the key cells are the partition's leaves, released or not
            key_cells = list(view.partition) if public and view.partition else None
        cells = sorted(set(released_cells) | set(key_cells or ()))
        index = {c: i for i, c in enumerate(cells)}
        key_set = set(key_cells or ())
        polygons, extent = _hexagons(cells)

        # Per window: cell index → count, or [count, low, high] when the interval is not the
        # manifest's count ± half-width (clipped at 0), which the page works out itself, or
        # [count, low, high, 1] for a count near the threshold (selection-aware interval).
        half, threshold = view.ci95_halfwidth, view.release_threshold
        table = table.with_columns(_near_column(table, threshold, half).alias("_near"))
        per_window: list[dict[str, int | list[int]]] = [{} for _ in range(n_windows)]
        for cell, w, count, lo, hi, near in table.select(
                "cell", "w", "count", "ci_low", "ci_high", "_near").iter_rows():
            derivable = half is not None and lo == max(count - half, 0) and hi == count + half
            value: int | list[int] = int(count) if derivable else [int(count), int(lo), int(hi)]
            if near:
                value = [int(count), int(lo), int(hi), 1]
            per_window[w][str(index[cell])] = value
        counts = table.get_column("count")
        cmin = int(counts.min() or 0) if table.height else 0  # type: ignore[arg-type]
        cmax = int(counts.max() or 0) if table.height else 0  # type: ignore[arg-type]
        # The scale starts at the release threshold: no released count lies below it.
        vmin = cmin if threshold is None else min(threshold, cmin) if table.height else threshold
        labels = [win.label(i) for i in range(n_windows)]
        mass = table.group_by("w").agg(pl.col("count").sum()).sort(["count", "w"], descending=[True, False])
        busiest = int(mass.get_column("w")[0]) if mass.height else 0

        flow_payload = None
        if flows is not None:
            try:
                flow_seconds = (parse_duration(view.flows.window)
                                if view.flows is not None and view.flows.window else win.seconds)
            except ValueError:
                flow_seconds = win.seconds
            fwin = _Windows(tz=win.tz, tz_name=win.tz_name, start=win.start, seconds=flow_seconds, count=0)
            flow_payload = _flows(flows, win, fwin)
        bbox = _bbox(extent, area.rings if area is not None else [], flow_payload)

        fingerprint = view.signature_fingerprint
        verification = _verify(folder) if folder is not None else None
        marking = view.marking or DEFAULT_MARKING
        halfwidth = view.ci95_halfwidth
        data: dict[str, Any] = {
            "cells": cells,
            "poly": polygons,
            "keyCells": len(key_cells) if key_cells is not None else None,
            "isKey": [1 if c in key_set else 0 for c in cells] if key_cells is not None else None,
            "windows": [
                {"label": full, "tick": tick, "values": values}
                for (full, tick), values in zip(labels, per_window, strict=True)
            ],
            "boundary": area.rings if area is not None else [],
            "flows": flow_payload,
            "bbox": bbox,
            "vmin": vmin,
            "vmax": max(cmax, vmin + 1),
            "threshold": threshold,
            "halfwidth": halfwidth,
            "publicKeys": public,
            "resolution": resolution,
            "areaKm2": None if resolution is None else round(h3.average_hexagon_area(resolution, "km^2"), 2),
            "tz": win.tz_name,
            "busiest": busiest,
            "marking": marking,
        }
        if mixed:
            data.update(_mixed_cells(cells, table, resolutions))
            if key_cells is not None:  # painted under the withheld cells: no white slivers
                data["roots"] = _hexagons(sorted({h3.cell_to_parent(c, resolutions[0]) for c in key_cells
                                                  if h3.get_resolution(c) >= resolutions[0]}))[0]
        if public and key_cells is None and mixed:
            notes.append(
                "This adaptive release does not list its partition (its cells, released or not): "
                "withheld cells are not drawn, so an area without cells may still hold up to about "
                f"{threshold if threshold is not None else '?'} persons per cell."
            )
        elif public and key_cells is None:
            notes.append(
                "This release used public keys, but no boundary file was given: withheld cells "
                "are not drawn, so an area without hexagons may still hold up to about "
                f"{threshold if threshold is not None else '?'} persons per cell."
            )
        return cls(
            manifest=m,
            data=data,
            windows=win,
            marking=marking,
            fingerprint=str(fingerprint) if fingerprint else None,
            verification=verification,
            area_name=area.name if area is not None else None,
            public_keys=public,
            withheld_drawn=key_cells is not None,
            notes=notes,
        )

    # ── HTML ──

    def render(self, title: str | None, window: int | None) -> str:
        m = self.manifest
        n = self.windows.count
        if window is None:
            start = self.data["busiest"]
        elif isinstance(window, int) and not isinstance(window, bool) and 0 <= window < n:
            start = window
        else:
            raise InputError(f"window {window!r} is outside the period: it has {n} windows (0–{n - 1})")
        view = ManifestView.of(m)
        dataset = view.dataset or "release"
        period = view.key_period or ""
        heading = title or f"Key-group persons per area — {dataset}" + (f", {period}" if period else "")
        zh, en = _marking_halves(self.marking)
        esc = html.escape
        signed = (
            f"Signed (Ed25519) · key fingerprint <code id=\"fingerprint\">{esc(self.fingerprint)}</code>"
            if self.fingerprint
            else '<strong id="fingerprint" class="unsigned">UNSIGNED</strong> — this release carries no '
            "signature; its origin cannot be checked"
        )
        check = ""
        if self.verification is not None:
            headline, problems = self.verification
            cls = ("ok" if headline.startswith("VERIFIED")
                   else "partial" if headline.startswith("INTEGRITY") else "bad")
            verdict, sep, rest = headline.partition(": ")
            check = (f'<div class="verify {cls}" id="verification"><strong>{esc(verdict)}</strong>'
                     f"{esc(sep + rest)}")
            if problems:
                check += "<ul>" + "".join(f"<li>{esc(p)}</li>" for p in problems) + "</ul>"
            check += "</div>"
        res = self.data["resolution"]
        area_text = f" (≈ {self.data['areaKm2']:g} km² per hexagon)" if self.data["areaKm2"] else ""
        adaptive = self.data.get("adaptive")
        if adaptive is not None:
            res = f"{adaptive['min']}–{adaptive['max']}, adaptive"
            area_text = f" (≈ {adaptive['km2'][0]:g} to {adaptive['km2'][1]:,.0f} km² per cell)"
        length = esc(view.window or _duration(self.windows.seconds))
        sub = " · ".join(
            part
            for part in (
                f"period {esc(period)}" if period else "",
                f"{self.windows.count} window{'s' if self.windows.count != 1 else ''} of {length}",
                f"local time {esc(self.windows.tz_name)}",
                f"H3 resolution {res}{area_text}" if res is not None else "",
                f"release <code>{esc(view.release_id or '?')}</code>",
            )
            if part
        )
        notes = "".join(f'<p class="warn">{esc(n)}</p>' for n in self.notes)
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta name="referrer" content="no-referrer">',
            f'<meta name="generator" content="privmob {esc(__version__)}">',
            f'<meta name="privmob-release-id" content="{esc(view.release_id or "")}">',
            f'<meta name="privmob-marking" content="{esc(self.marking)}">',
            f"<title>{esc(heading)} · {esc(zh)}</title>",
            '<link rel="icon" href="data:,">',
            f"<style>{_FONT_SLOT}{_asset('report.css')}{self._watermark_css()}</style>",
            "</head>",
            "<body>",
            '<div class="page-watermark" aria-hidden="true"></div>',
            f'<header class="marking-banner" id="marking" role="note" aria-label="marking">'
            f'<span class="zh" lang="zh-CN">{esc(zh)}</span>'
            + (f'<span class="en">{esc(en)}</span>' if en else "")
            + "</header>",
            "<main>",
            '<section class="titlebar">',
            f"<h1>{esc(heading)}</h1>",
            f'<p class="sub">{sub}</p>',
            f'<p class="sig" id="signature">{signed}</p>',
            check,
            f'<p class="sub" id="adaptive-note">{esc(ADAPTIVE_NOTE)}</p>' if adaptive is not None else "",
            notes,
            _FONT_NOTE_SLOT,
            "</section>",
            self._viewer(start),
            self._note(),
            '<section class="card" id="cells-section"><h2>Released cells in this window</h2>'
            '<p class="hint" id="cells-caption"></p>'
            '<table class="cells" id="cells-table"><thead><tr><th>#</th><th>H3 cell</th>'
            + ('<th class="num">res</th><th class="num">area km²</th>' if adaptive is not None else "")
            + "<th>centre (lat, lng)</th><th class=\"num\">count</th><th class=\"num\">95% interval</th>"
            "</tr></thead><tbody></tbody></table></section>",
            self._manifest_section(),
            "</main>",
            f'<footer class="marking-footer" id="marking-footer"><span lang="zh-CN">{esc(zh)}</span>'
            + (f"<span>{esc(en)}</span>" if en else "")
            + f'<span class="meta">release {esc(view.release_id or "?")} · '
            f"{esc(self.fingerprint or 'UNSIGNED')} · "
            f"privmob {esc(view.privmob_version or __version__)}"
            " · works offline, fetches nothing</span></footer>",
            f'<script type="application/json" id="privmob-data">{_json_for_script(self.data)}</script>',
            f"<script>{_asset('report.js')}</script>",
            "</body>",
            "</html>",
        ]
        return _embed_font("\n".join(p for p in parts if p) + "\n")

    def _viewer(self, start: int) -> str:
        d = self.data
        n = self.windows.count
        thr = d["threshold"]
        withheld_item = (
            '<li><svg width="22" height="16" aria-hidden="true"><defs><pattern id="hatch-key" width="5" '
            'height="5" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
            '<rect width="5" height="5" fill="#ececec"/>'
            '<line x1="0" y1="0" x2="0" y2="5" stroke="#c4c4c4" stroke-width="2"/></pattern></defs>'
            '<rect x="1" y="1" width="20" height="14" class="withheld"/></svg>'
            f"withheld: noisy count below {thr if thr is not None else 'the threshold'} (not zero)</li>"
            if self.withheld_drawn
            else ""
        )
        boundary_item = (
            '<li><svg width="22" height="16" aria-hidden="true"><path d="M1 8 H21" class="boundary"/></svg>'
            f"boundary ({html.escape(self.area_name)})</li>"
            if self.area_name
            else '<li class="hint">No boundary file given: the area outline is not drawn.</li>'
        )
        limit = (thr + d["halfwidth"]) if thr is not None and d["halfwidth"] is not None else None
        near_item = (
            '<li><svg width="22" height="16" aria-hidden="true"><rect x="2" y="2" width="18" height="12" '
            'class="near"/></svg>near threshold'
            + (f" (count &lt; {limit})" if limit is not None else "")
            + ": biased upward; its interval is selection-aware</li>"
        )
        note_zh, note_en = SELECTION_NOTE
        selection_note = (
            f'<p class="selection-note" id="selection-note"><span lang="zh-CN">{html.escape(note_zh)}</span> '
            f"{html.escape(note_en)}</p>"
        )
        flows_item = (
            '<li><svg width="22" height="16" aria-hidden="true"><path d="M2 12 Q11 2 20 8" class="flow"/>'
            f"</svg>flows, {html.escape(d['flows']['window'])} windows (width ∝ count)</li>"
            if d["flows"]
            else ""
        )
        layers = []
        if self.withheld_drawn:
            layers.append(
                '<label><input type="checkbox" id="toggle-withheld" checked> withheld cells</label>'
            )
        if d["flows"]:
            layers.append('<label><input type="checkbox" id="toggle-flows" checked> flows</label>')
        zh = html.escape(_marking_halves(self.marking)[0])
        kicker = ("Key-group persons per km² (noisy count ÷ cell area: cells differ in size)"
                  if d.get("colourBy") == "density" else "Distinct key-group persons (noisy)")
        return f"""<section class="viewer">
<div class="mapcard">
<div class="mapwrap" id="mapwrap">
<canvas id="withheld-canvas" class="withheld-canvas" aria-hidden="true"></canvas>
<svg id="map" role="img" aria-label="map of released counts per H3 cell" data-window="{start}">
<defs>
<marker id="arrow" viewBox="0 0 10 10" refX="8" refY="5" markerWidth="3.2" markerHeight="3.2"
 orient="auto-start-reverse">
<path d="M0 0 L10 5 L0 10 z" fill="#c2410c"/></marker>
</defs>
<g id="layer-released"></g>
<g id="layer-boundary"></g>
<g id="layer-flows"></g>
<g id="layer-focus"></g>
</svg>
<div class="map-tools" role="group" aria-label="zoom">
<button type="button" id="zoom-in" title="zoom in">+</button>
<button type="button" id="zoom-out" title="zoom out">−</button>
<button type="button" id="zoom-released" title="zoom to this window's released cells">◎</button>
<button type="button" id="zoom-all" title="whole area">⤢</button>
</div>
<div class="scalebar" id="scalebar"><div class="bar"></div><span></span></div>
<div class="map-marking" lang="zh-CN" aria-hidden="true">{zh}</div>
<div class="map-watermark" lang="zh-CN" aria-hidden="true">{zh}</div>
<svg id="locator" class="locator" aria-label="whole area; the box is the part shown"></svg>
<div id="tooltip" class="tooltip" role="status" hidden></div>
<noscript><p class="warn">The interactive map needs JavaScript. The note and the manifest below
are readable without it; the counts are in release.csv / release.parquet.</p></noscript>
</div>
</div>
<aside class="panel">
<div class="card window-card">
<div class="kicker">Time window · local time ({html.escape(self.windows.tz_name)})</div>
<div id="window-label" class="window-label" aria-live="polite"></div>
<svg id="bars" class="bars" aria-label="cells released per window"></svg>
<input type="range" id="window" min="0" max="{n - 1}" step="1" value="{start}" autocomplete="off"
 aria-label="time window" {'disabled' if n == 1 else ''}>
<div class="controls">
<button type="button" id="prev" title="previous window">◀</button>
<button type="button" id="play" title="play through the windows">▶ play</button>
<button type="button" id="next" title="next window">▶</button>
</div>
<div id="window-stats" class="stats"></div>
</div>
<div class="card legend">
<div class="kicker">{kicker}</div>
<svg id="colour-bar" class="colour-bar" aria-label="colour scale"></svg>
<ul class="keys">{near_item}{withheld_item}{boundary_item}{flows_item}</ul>
{selection_note}
<div class="layers">{''.join(layers)}</div>
</div>
<div class="card hover-card" id="hover-card">
<div class="kicker">Hover or tap a hexagon</div>
<div id="hover-info" class="hover-info">—</div>
</div>
</aside>
</section>"""

    def _note(self) -> str:
        view = ManifestView.of(self.manifest)
        half = self.data["halfwidth"]
        thr = self.data["threshold"]
        half_en = f"± {half}" if half is not None else "the stated interval"
        thr_en = f"about {thr}" if thr is not None else "the release threshold"
        unit = "one person over the whole period" + (f" ({html.escape(view.key_period)})"
                                                     if view.key_period else "")
        if self.public_keys:
            absent_en = (
                "Every cell of the area was noised, empty ones included, so a withheld cell reveals "
                "nothing: it means “fewer than about "
                f"{thr if thr is not None else '?'} persons, possibly none” — not zero."
            )
            absent_zh = (
                "区域内每个单元格（包括无人的）都加入了噪声，因此灰色单元格不泄露任何信息："
                f"它表示“少于约{thr if thr is not None else '?'}人，也可能无人”，而不是零。"
            )
        else:
            absent_en = (
                "Cells were selected by a differentially private threshold; a cell without a number "
                f"had fewer than {thr_en} persons (or none) — not zero."
            )
            absent_zh = (
                "单元格由差分隐私阈值选出；没有数字的单元格表示少于约"
                f"{thr if thr is not None else '?'}人（或无人），而不是零。"
            )
        half_zh = f"±{half}" if half is not None else "所示区间"
        flows_en = ""
        if self.data["flows"]:
            fh = view.flows.ci95_halfwidth if view.flows is not None else None
            flows_en = (
                "<p>Arrows are origin–destination flows: distinct key-group persons who made a trip "
                "between two places, counted with the same kind of noise"
                + (f" (each flow ± {html.escape(str(fh))}, 95%)" if fh is not None else "")
                + ". Flows below their threshold are not drawn.</p>"
            )
        thr_zh = f"{thr}" if thr is not None else "发布阈值"
        known = thr is not None and half is not None
        near_en = f"{thr + half}" if known else "the threshold plus the half-width"
        near_zh = f"{thr + half}" if known else "阈值加区间半宽"
        return f"""<section class="card note" id="noise-note">
<h2>What the numbers mean <span lang="zh-CN">数字说明</span></h2>
<div class="note-cols">
<div>
<p>Each number is a count of <strong>distinct key-group persons</strong> (confirmed, suspected and
close contacts) seen in that hexagon during that time window, with <strong>random noise added</strong>
so that no single person's presence can be inferred. The true value lies within
<strong>{half_en}</strong> of the shown value 95% of the time for counts well above the threshold.
Cells whose noisy count is below
<strong>{thr_en}</strong> persons are withheld. {absent_en}</p>
<p>Read the map for where key-group persons gathered, not for exact numbers: a difference smaller
than the interval may be noise. The same person can appear in several windows, so counts of
different windows must not be added up. Privacy unit: {unit}.</p>
<p class="selection-note"><strong>Near the threshold.</strong> {html.escape(SELECTION_NOTE[1])}
Cells with a noisy count below {near_en} are outlined with a dashed line and marked
“near threshold”; their 95% intervals are computed given that the count was published (they
cover the true count 95% of the time among published cells) and may reach down to 0.</p>{flows_en}
</div>
<div lang="zh-CN">
<p>每个数字是该时段内到过该六边形区域的<strong>重点人群（确诊、疑似、密切接触者）去重人数</strong>，并加入了<strong>随机噪声</strong>，
使任何单个人是否在其中都无法被推断。真实值有95%的概率落在显示值<strong>{half_zh}</strong>的范围内。
加噪后人数低于<strong>{thr_zh}</strong>的单元格不予公布。{absent_zh}</p>
<p>请用地图判断重点人群聚集的区域，而不是读取精确人数：小于误差区间的差异可能只是噪声。同一人可出现在多个时段，不同时段的人数不能相加。</p>
<p class="selection-note"><strong>接近阈值的数字。</strong>{html.escape(SELECTION_NOTE[0])}
加噪后人数低于{near_zh}的单元格以虚线勾出并标为“接近阈值”。</p>
</div>
</div>
</section>"""

    def _manifest_section(self) -> str:
        """The manifest as readable tables, every field read through :class:`ManifestView`
        (as the heatmap reads it); keys the view does not know are listed as they are."""
        m = self.manifest
        v = ManifestView.of(m)
        esc = html.escape
        rows: list[tuple[str, str, str]] = []  # (group, label, html value)

        def add(group: str, label: str, value: Any, *, raw: bool = False) -> None:
            if value is None or value == "" or value == []:
                return
            rows.append((group, label, value if raw else esc(str(value))))

        g = "Release"
        add(g, "Purpose", v.purpose)
        add(g, "Operator (answers for this release)", v.operator)
        add(g, "Marking", f'<span class="marking-text">{esc(self.marking)}</span>', raw=True)
        add(g, "Dataset", v.dataset)
        add(g, "Period", _period_text(v.key_period, self.windows))
        add(g, "Release id", _code(v.release_id), raw=True)
        add(g, "Created", _local_time(v.created_at, self.windows.tz))
        add(g, "Software", f"privmob {v.privmob_version}" if v.privmob_version else None)

        g = "Privacy budget spent"
        mech = {"gaussian": "discrete Gaussian (OpenDP)", "laplace": "discrete Laplace (OpenDP)"}.get(
            str(v.mechanism), v.mechanism or "?")
        add(g, "Unit of privacy", v.privacy_unit
            or "one person over the whole period (all of their records)")
        add(g, "Mechanism", mech)
        budget = []
        if v.epsilon is not None:
            budget.append(f"ε = {_num(v.epsilon)}")
        if v.delta is not None:
            budget.append(f"δ = {_num(v.delta)}")
        if v.rho is not None:
            budget.append(f"ρ = {_num(v.rho, 4)} (zCDP)")
        add(g, "This release spent" + (" (all tables)" if v.flows is not None else ""),
            ", ".join(budget) or None)
        if v.charged_days is not None:
            limits = ", ".join(
                f"{name} {_num(value)}/day"
                for value, name in ((v.epsilon_per_day, "ε"), (v.delta_per_day, "δ"), (v.rho_per_day, "ρ"))
                if value is not None
            )
            add(g, "Budget ledger", f"charged to day(s) {', '.join(v.charged_days)}"
                + (f"; limit {limits}" if limits else ""))
        else:
            add(g, "Budget ledger", "not recorded in a ledger for this release")

        g = "Accuracy and suppression"
        std = v.noise_std or v.noise_scale
        add(g, "Noise", f"standard deviation {_num(std, 4)}" if std is not None else None)
        if v.ci95_halfwidth is not None:
            add(g, "95% interval", f"shown count ± {v.ci95_halfwidth} well above the threshold; near it "
                "selection-aware (95% given that the count was published; may lie below the count); "
                "never below 0")
        if v.release_threshold is not None:
            text = (f"noisy count ≥ {v.release_threshold} is published "
                    f"(min_count {v.min_count if v.min_count is not None else '?'})")
            if v.spurious_rate is not None:
                text += ("; an empty cell passes by noise alone with probability "
                         f"{_num(v.spurious_rate, 3)}")
            add(g, "Release threshold", text)
        if v.cells_released is not None:
            add(g, "Released", f"{_count(v.cells_released)} cell-windows released, "
                f"{_count(v.cells_suppressed)} withheld")
        if v.public_keys:
            add(g, "Keys", f"public: {_count(v.key_cells)} cells of the boundary × "
                f"{_count(v.windows)} windows = {_count(v.n_keys)} keys, all noised "
                f"(boundary sha256 {v.keys[7:19]}…)")
        elif v.keys:
            add(g, "Keys", f"{v.keys} (selected by a differentially private threshold)")

        g = "Grid and contribution bounds"
        add(g, "Cells", f"H3 resolution {v.resolution}" if v.resolution is not None else
            f"adaptive H3 cells, resolution {v.resolutions[0]}–{v.resolutions[1]}"
            + (f", {len(v.partition):,} cells in the partition" if v.partition else "")
            if v.adaptive and v.resolutions is not None else None)
        window = v.window or _duration(self.windows.seconds)
        add(g, "Time windows", f"{self.windows.count} × {window}, time zone {self.windows.tz_name}")
        add(g, "Key groups", ", ".join(v.scope_groups) or None)
        bound = []
        if v.max_cells_per_window is not None:
            bound.append(f"≤ {v.max_cells_per_window} cell(s) per person and window")
        if v.max_windows is not None:
            bound.append(f"≤ {v.max_windows} window(s) per person")
        if v.max_pairs is not None:
            bound.append(f"≤ {v.max_pairs} (cell, window) pairs per person over the period")
        if v.sensitivity is not None:
            l1, l2 = v.sensitivity
            bound.append(f"sensitivity L1 = {_num(l1)}, L2 = {_num(l2, 4)}")
        add(g, "Contribution bound", "; ".join(bound) or None)
        add(g, "Which cells a person keeps", v.bounding_rule)

        g = "Processing"
        if v.stages:
            chips = '<ol class="stages">' + "".join(f"<li>{esc(s)}</li>" for s in v.stages) + "</ol>"
            add(g, "Stages applied", chips, raw=True)
        if v.pseudonymisation is not None:
            method, linkage = v.pseudonymisation
            add(g, "Pseudonymisation", f"{method or '?'}; linkage period {linkage or '?'}")

        fl = v.flows
        if fl is not None:
            g = "Origin–destination flows"
            prop = f" (property {fl.unit_property})" if fl.unit_property else ""
            add(g, "Units", (fl.units or "?") + prop)
            add(g, "Windows", f"{_count(fl.windows)} × {fl.window or '?'} (trips by departure time)")
            spent = ", ".join(f"{name} = {_num(value, 4)}" for value, name in
                              ((fl.epsilon, "ε"), (fl.delta, "δ"), (fl.rho, "ρ")) if value is not None)
            mech_f = {"gaussian": "discrete Gaussian", "laplace": "discrete Laplace"}.get(
                str(fl.mechanism), fl.mechanism or "?")
            add(g, "Noise", f"{mech_f}, {spent}; each flow ± {_num(fl.ci95_halfwidth)} (95%)")
            add(g, "Release threshold", f"noisy count ≥ {_num(fl.release_threshold)}; keys "
                f"{fl.keys or '?'}; {_count(fl.flows_released)} flow(s) released")
            add(g, "Contribution bound", f"≤ {_num(fl.max_trips_per_window)} trip(s) per person and "
                f"window, ≤ {_num(fl.max_windows)} window(s)")
            stays = fl.stays
            if stays is not None:
                add(g, "Stays (trip ends)", f"within {stays.get('radius_m', '?')} m for ≥ "
                    f"{stays.get('min_duration', '?')} (gaps ≤ {stays.get('max_gap', '?')})")

        g = "Integrity"
        if v.signature_fingerprint:
            add(g, "Signature", f"{esc(v.signature_algorithm or '?')} · {_code(v.signature_fingerprint)}"
                " — compare with the fingerprint the publisher announced", raw=True)
        else:
            add(g, "Signature", '<strong class="unsigned">UNSIGNED</strong>', raw=True)
        if self.verification is not None:
            add(g, "Checked when this page was made", self.verification[0])
        if v.files:
            add(g, "Files", "<br>".join(f"{esc(name)}: {_code(digest)}" for name, digest in v.files),
                raw=True)

        known = {
            "purpose", "operator", "marking", "dataset", "key_period", "period_start", "period_end",
            "release_id", "created_at", "privmob_version", "mechanism", "epsilon", "delta", "rho",
            "budget", "budget_exact", "noise_std", "noise_scale", "ci95_halfwidth", "ci_level",
            "release_threshold", "min_count", "spurious_rate", "max_spurious_rate", "cells_released",
            "cells_suppressed", "keys", "key_cells", "n_keys", "threshold", "resolution", "window",
            "windows", "timezone", "scope", "max_cells_per_window", "max_windows", "sensitivity",
            "bounding", "stages", "pseudonymisation", "identifier_columns_dropped", "signature",
            "input_sha256", "config_sha256", "files", "flows", "privacy_unit", "resolutions",
        }
        for key, value in m.items():
            if key in known or key in _OPERATOR_ONLY or value is None:
                continue
            if key == "adaptive" and isinstance(value, Mapping):  # its cells are drawn, not listed
                value = {k: v for k, v in value.items() if k != "leaf_cells"}
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            add("Other fields", key, text)

        out = ['<section class="card manifest" id="manifest"><h2>How this release was made '
               '<span lang="zh-CN">发布说明</span></h2><div class="manifest-grid">']
        current = None
        for group, label, value in rows:
            if group != current:
                if current is not None:
                    out.append("</tbody></table></div>")
                out.append(f'<div class="mgroup"><h3>{esc(group)}</h3><table class="kv"><tbody>')
                current = group
            out.append(f"<tr><th>{esc(label)}</th><td>{value}</td></tr>")
        if current is not None:
            out.append("</tbody></table></div>")
        out.append("</div>")
        public = _public_manifest(m)
        out.append(
            '<p class="hint">Not shown: the exact input statistics (record and person counts, '
            "bounding tallies, timings). They are not differentially private and are for the "
            "operator only.</p>"
            "<details><summary>Manifest as JSON (without the operator-only fields)</summary>"
            f"<pre>{esc(json.dumps(public, ensure_ascii=False, indent=2))}</pre></details>"
        )
        out.append("</section>")
        return "".join(out)

    def _watermark_css(self) -> str:
        """A repeating, faint, diagonal tile of the marking over the whole page (a data: image)."""
        zh, en = _marking_halves(self.marking)
        ns = "http://www.w3.org/2000/svg"  # a name, not an address; base64 keeps it out of the page
        # An image cannot use the page's embedded font, so the Chinese is drawn as outlines
        # (stroked a little for bold); as text only when no font here has its glyphs.
        outline = text_outline(zh, 22) if cjk_characters(zh) else None
        zh_svg = (
            f'<path transform="translate({230 - outline[1] / 2:.1f} 145)" stroke="#8b1a1a" '
            f'stroke-width="0.7" d="{outline[0]}"/>'
            if outline
            else f'<text x="230" y="145" font-size="22" font-weight="700">{html.escape(zh)}</text>'
        )
        tile = (
            f'<svg xmlns="{ns}" width="460" height="300">'
            '<g transform="rotate(-28 230 150)" fill="#8b1a1a" opacity="0.06" '
            'font-family="Noto Sans CJK SC, Source Han Sans SC, PingFang SC, Microsoft YaHei, sans-serif" '
            'text-anchor="middle">'
            + zh_svg
            + (f'<text x="230" y="172" font-size="11">{html.escape(en)}</text>' if en else "")
            + "</g></svg>"
        )
        encoded = base64.b64encode(tile.encode("utf-8")).decode("ascii")
        return f'.page-watermark{{background-image:url("data:image/svg+xml;base64,{encoded}")}}'


# ── helpers ──────────────────────────────────────────────────────────────────────────




def _mixed_cells(cells: Sequence[str], table: pl.DataFrame, resolutions: Sequence[int]) -> dict[str, Any]:
    """What the page needs to draw cells of several sizes: each cell's resolution and area
    (km², 3 significant digits), and the density scale (persons per km², over the period)."""
    res = [int(h3.get_resolution(c)) for c in cells]
    km2 = [float(f"{h3.cell_area(c, 'km^2'):.3g}") for c in cells]
    density = (table.get_column("count").clip(lower_bound=1)
               / table.select(plh3.cell_area("cell", unit="km^2")).to_series()).to_numpy()
    low = float(density.min()) if density.size else 1.0
    high = max(float(density.max()) if density.size else 10.0, low * 10)
    return {
        "cellRes": res,
        "cellKm2": km2,
        "colourBy": "density",
        "dmin": float(f"{low:.4g}"),
        "dmax": float(f"{high:.4g}"),
        "adaptive": {
            "min": resolutions[0], "max": resolutions[-1],
            "km2": [float(f"{h3.average_hexagon_area(r, 'km^2'):.3g}")
                    for r in (resolutions[-1], resolutions[0])],
        },
    }


def _hexagons(cells: Sequence[str]) -> tuple[list[list[int]], list[float] | None]:
    """Each cell's boundary, compactly: ``[lng0, lat0, dlng1, dlat1, ...]`` in 1e-5 degrees
    (first vertex absolute, then steps from the previous vertex); and the lng/lat extent.
    """
    if not cells:
        return [], None
    rings = [h3.cell_to_boundary(c) for c in cells]
    lengths = np.fromiter((len(r) for r in rings), dtype=np.int64, count=len(rings))
    degrees = np.array([v for r in rings for v in r], dtype=np.float64)
    lnglat = np.rint(degrees * _COORD_SCALE).astype(np.int64)[:, ::-1]
    steps = np.diff(lnglat, axis=0, prepend=np.zeros((1, 2), dtype=np.int64))
    firsts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    steps[firsts] = lnglat[firsts]
    flat = steps.ravel().tolist()
    bounds = np.concatenate(([0], np.cumsum(lengths * 2)))
    polygons = [flat[a:b] for a, b in itertools.pairwise(bounds.tolist())]
    lo, hi = lnglat.min(axis=0) / _COORD_SCALE, lnglat.max(axis=0) / _COORD_SCALE
    return polygons, [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])]


def _flows(frame: pl.DataFrame, win: _Windows, fwin: _Windows) -> dict[str, Any] | None:
    """Flows per slider window: each flow on every slider window its own window overlaps."""
    frame = _utc_table(frame, "flows frame", _FLOW_COLUMNS)
    for name in ("ci_low", "ci_high"):
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, pl.Int64).alias(name))
    frame = frame.with_columns(fwin.index(pl.col("window_start")).alias("fw")).filter(
        pl.col("origin") != pl.col("destination")
    )
    coords: dict[str, tuple[float, float]] = {}
    if {"origin_lat", "origin_lng", "dest_lat", "dest_lng"} <= set(frame.columns):
        ends = (("origin", "origin_lat", "origin_lng"), ("destination", "dest_lat", "dest_lng"))
        for end, lat, lng in ends:
            for unit, y, x in frame.select(end, lat, lng).unique().iter_rows():
                if y is not None and x is not None:
                    coords[unit] = (float(x), float(y))
    nodes = sorted(set(frame.get_column("origin").to_list()) | set(frame.get_column("destination").to_list()))
    for node in nodes:
        if node not in coords:
            if not h3.is_valid_cell(node):
                raise InputError(
                    f"flows: unit {node!r} is not an H3 cell and has no coordinates; give the "
                    "frame origin_lat, origin_lng, dest_lat and dest_lng columns"
                )
            lat, lng = h3.cell_to_latlng(node)
            coords[node] = (lng, lat)
    node_index = {c: i for i, c in enumerate(nodes)}
    per_window: list[list[list[int | None]]] = [[] for _ in range(win.count)]
    labels: dict[int, int] = {}
    label_text: list[str] = []
    ratio = fwin.seconds / win.seconds
    rows = frame.select("origin", "destination", "fw", "count", "ci_low", "ci_high").iter_rows()
    for origin, dest, fw, count, lo, hi in rows:
        first = math.floor(fw * ratio)
        last = math.ceil((fw + 1) * ratio) - 1
        if fw not in labels:
            labels[fw] = len(label_text)
            label_text.append(fwin.label(fw)[0])
        entry = [node_index[origin], node_index[dest], int(count),
                 None if lo is None else int(lo), None if hi is None else int(hi), labels[fw]]
        for w in range(max(first, 0), min(last, win.count - 1) + 1):
            per_window[w].append(entry)
    if not any(per_window):
        return None
    counts = frame.get_column("count")
    return {
        "nodes": nodes,
        "centres": [[round(v, _COORD_DIGITS) for v in coords[n]] for n in nodes],
        "windows": per_window,
        "labels": label_text,
        "window": _duration(fwin.seconds),
        "max": max(int(counts.max() or 1), 1),  # type: ignore[arg-type]
    }


def _bbox(
    extent: list[float] | None, rings: Iterable[list[float]], flows: Mapping[str, Any] | None
) -> list[float] | None:
    xs: list[float] = [extent[0], extent[2]] if extent else []
    ys: list[float] = [extent[1], extent[3]] if extent else []
    for flat in rings:
        xs.extend(flat[0::2])
        ys.extend(flat[1::2])
    if flows:
        for lng, lat in flows["centres"]:
            xs.append(lng)
            ys.append(lat)
    if not xs:
        return None
    return [min(xs), min(ys), max(xs), max(ys)]


def _verify(folder: Path) -> tuple[str, list[str]]:
    from privmob.governance.signing import verify_release

    result = verify_release(folder)
    lines = result.summary().splitlines()
    return lines[0], lines[1:]


def _public_manifest(m: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest without the exact (not differentially private) input statistics."""
    out = {k: v for k, v in m.items() if k not in _OPERATOR_ONLY}
    pseudo = out.get("pseudonymisation")
    if isinstance(pseudo, Mapping):  # older manifests carried the key id
        out["pseudonymisation"] = {k: v for k, v in pseudo.items() if k != "key_id"}
    bounding = out.get("bounding")
    if isinstance(bounding, Mapping):
        out["bounding"] = {k: v for k, v in bounding.items() if k not in _OPERATOR_ONLY_BOUNDING}
    flows = out.get("flows")
    if isinstance(flows, Mapping):
        flows = {k: v for k, v in flows.items() if k not in _OPERATOR_ONLY_FLOWS}
        if isinstance(flows.get("bounding"), Mapping):
            flows["bounding"] = {k: v for k, v in flows["bounding"].items()
                                 if k not in _OPERATOR_ONLY_FLOWS_BOUNDING}
        out["flows"] = flows
    return out


def _embed_font(page: str) -> str:
    """``page`` with a subset of a Chinese font for exactly its CJK characters embedded.

    The viewer's computer may have no Chinese font (then the browser draws empty boxes,
    "tofu"), so the page carries one: every CJK character anywhere in the page's text (all
    text nodes, attributes and the data block) is cut from the font :func:`cjk_font` finds
    (Noto Sans CJK SC, SIL OFL 1.1) into one ``data:`` ``@font-face``. Without such a font
    here the page still works and says, visibly, that Chinese may not show.
    """
    font = embed_cjk(page, stacklevel=5)
    page = page.replace(_FONT_SLOT, font.css(), 1)
    note = ""
    if font.missing:
        what = "no font with Chinese glyphs was found" if not font.embedded else (
            f"{len(font.missing)} Chinese character(s) have no glyph in any font found")
        note = (
            '<p class="warn" id="font-note">When this page was made, ' + what + ", so it carries "
            "none for them: on a computer without a Chinese font they show as empty boxes. "
            "Install fonts-noto-cjk or the noto-cjk-sans-otc package where the page is made, "
            "and make it again.</p>"
        )
    return page.replace(_FONT_NOTE_SLOT, note, 1)


def _marking_halves(marking: str) -> tuple[str, str]:
    zh, sep, en = marking.partition(" / ")
    return (zh.strip(), en.strip()) if sep else (marking.strip(), "")


def _json_for_script(data: Any) -> str:
    """JSON safe inside a <script> element: no '</script>', '<!--' or ']]>' can appear."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _asset(name: str) -> str:
    return resources.files("privmob.report").joinpath("_assets", name).read_text(encoding="utf-8")


def _period_text(key_period: str | None, win: _Windows) -> str:
    start = win.start.astimezone(win.tz)
    end = (win.start + dt.timedelta(seconds=win.seconds * win.count)).astimezone(win.tz)
    span = f"{start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M} ({_utc_offset(start)}, {win.tz_name})"
    return f"{key_period}: {span}" if key_period else span


def _local_time(value: Any, tz: dt.tzinfo) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return value
    if when.tzinfo is None:
        return value
    local = when.astimezone(tz)
    return f"{local:%Y-%m-%d %H:%M:%S} ({_utc_offset(local)})"


def _utc_offset(when: dt.datetime) -> str:
    offset = when.utcoffset() or dt.timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "−"
    hours, mins = divmod(abs(minutes), 60)
    return f"UTC{sign}{hours:02d}:{mins:02d}"


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if math.isfinite(value) else None


def _code(value: Any) -> str | None:
    return None if value in (None, "") else f"<code>{html.escape(str(value))}</code>"


def _count(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "?" if value is None else str(value)


def _num(value: Any, digits: int = 6) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value) if value is not None else "?"
    return f"{value:.{digits}g}"
