"""Static heatmaps of a release: one time window, or a day of windows as small multiples.

What the figure must never let a reader get wrong:

* **A missing cell is not a zero.** With public keys (cells of a boundary polygon) every
  key was noised; a cell that is not in the release had a noisy count below the release
  threshold. Those cells are drawn as a light hatched grey layer labelled "withheld", so
  an empty-looking district reads as "fewer than ~N (noise threshold)", not "nobody".
  Released counts are never zero: they are at or above the threshold.
* **Every number is noisy.** The colour bar is labelled with the 95% half-width.
* **A count near the threshold is biased upward.** It was published because its noise
  lifted it over τ; its interval in the release is selection-aware (privmob.privacy.intervals).
  Cells whose noisy count is below τ + the half-width are outlined and dotted
  ("near threshold"), and a bilingual note under the legend says so on every figure.
* **Where it came from and how it may be used.** The footer states the mechanism, ε, δ
  (and ρ), ``min_count`` and threshold, resolution, release id and the public-key
  fingerprint of the signature (or ``UNSIGNED``); the marking runs across the top, along
  the bottom and as a light watermark over the map.
* **Cells of an adaptive release differ in size.** Its cells mix H3 resolutions (fine
  where many persons were, coarse where few). Each is drawn as its own polygon, coarse
  ones first so finer ones stay on top, coloured by persons per km² (see :func:`heatmap`,
  ``colour``), and the footer states the mix ("cells res 4–8 (adaptive)").

Everything is post-processing of the released table: drawing spends no privacy budget.
The figure is a plain :class:`matplotlib.figure.Figure` (Agg canvas), never pyplot state,
so it works without a display (rcParams are set only inside ``rc_context`` while drawing
and saving; the process-wide font list gains the CJK font).

Examples
--------
>>> from privmob import report
>>> hm = report.heatmap("out/demo", boundary="data-samples/beijing_boundary.geojson")  # doctest: +SKIP
>>> hm.save("out/demo/heatmap.png")  # doctest: +SKIP
>>> report.small_multiples("out/demo", boundary="...").save("out/demo/day.pdf")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h3
import matplotlib as mpl
import numpy as np
import numpy.typing as npt
import polars as pl
import polars_h3 as plh3
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PolyCollection
from matplotlib.colors import Colormap, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, PathPatch, Rectangle
from matplotlib.path import Path as MplPath
from matplotlib.ticker import FuncFormatter, MaxNLocator

import privmob.report.fonts as _fonts
from privmob.config import DEFAULT_MARKING, parse_duration
from privmob.errors import InputError
from privmob.privacy.intervals import SELECTION_NOTE
from privmob.release.manifest import ManifestView
from privmob.release.table import ReleasedTable, release_zone
from privmob.report.cells import cell_columns
from privmob.report.cells import resolutions as release_resolutions

__all__ = ["Heatmap", "Panel", "heatmap", "small_multiples"]

#: Light grey with a slightly darker hatch: clearly "no number here", never a colour of
#: the count scale (viridis and cividis both start dark).
WITHHELD_FACE = "#e4e4e4"
WITHHELD_HATCH = "#b4b4b4"
#: Near-threshold cells: a dark outline and dots over their colour (the colour stays readable).
NEAR_EDGE = "#111111"
NEAR_HATCH = "...."
BOUNDARY_COLOR = "#333333"
MARKING_BAND = "#9b1c1c"
MIN_PNG_DPI = 150
DEFAULT_DPI = 200
#: A period with more windows than this is drawn a day at a time (``windows=``).
MAX_PANELS = 48

#: What a map shows: the whole area, the released cells, or a lng/lat box.
Extent = Literal["auto", "boundary", "released"] | tuple[float, float, float, float]

#: "auto" zooms in when the released cells' box covers less than this share of the area's.
AUTO_ZOOM_SHARE = 0.25

#: What the colour of a cell shows: its count, persons per km², or "auto" (count when every
#: cell has one size, density when they differ; see :func:`heatmap`).
Colour = Literal["auto", "count", "density"]

_REQUIRED_COLUMNS = ("cell", "window_start", "count")
#: Inches under the legend for the note on near-threshold counts (three lines of text).
_SELECTION_NOTE_H = 0.65
_INCH_MARGIN = 0.35


# ── public API ──────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Panel:
    """One map of a figure: a time window and what it shows.

    Attributes
    ----------
    window_start, window_end
        The window, in the job's local time zone.
    released
        Hexagons drawn with a count (cells released in this window).
    withheld
        Key cells drawn as withheld (key cells − released), or ``None`` when the key set is
        unknown (no boundary given) and the withheld layer is not drawn.
    axes
        The matplotlib axes of the map.
    """

    window_start: dt.datetime
    window_end: dt.datetime
    released: int
    withheld: int | None
    axes: Axes


class Heatmap:
    """A drawn heatmap: the matplotlib :attr:`figure` and the :attr:`panels` in it.

    Save it with :meth:`save` (PNG or PDF by suffix). In a notebook it displays itself.
    """

    def __init__(
        self,
        figure: Figure,
        panels: Sequence[Panel],
        *,
        rc: Mapping[Any, Any],
        title: str,
        marking: str,
        release_id: str,
        font: _fonts.FontChoice,
    ) -> None:
        self.figure = figure
        self.panels = tuple(panels)
        self.title = title
        self.marking = marking
        self.release_id = release_id
        self.font = font
        self._rc: dict[Any, Any] = dict(rc)

    def __repr__(self) -> str:
        return f"Heatmap({self.title!r}, {len(self.panels)} panel(s), release {self.release_id})"

    def save(self, path: str | Path, *, dpi: int = DEFAULT_DPI) -> Path:
        """Write the figure as PNG (raster, ``dpi`` ≥ 150) or PDF (vector), by suffix.

        Fonts are embedded in the PDF (as Type 3 subsets; see :mod:`privmob.report.fonts`).
        The marking and release id are also written into the file's metadata.

        Returns
        -------
        Path
            ``path``.
        """
        target = Path(path)
        suffix = target.suffix.lower()
        if suffix not in (".png", ".pdf"):
            raise ValueError(f"cannot save a heatmap as {target.name!r}: name it *.png or *.pdf")
        if dpi < MIN_PNG_DPI:
            raise ValueError(f"dpi={dpi} is too coarse to read the map: use at least {MIN_PNG_DPI}")
        subject = f"{self.marking} · privmob release {self.release_id}"
        metadata: dict[str, str]
        if suffix == ".pdf":
            metadata = {"Title": self.title, "Subject": subject, "Keywords": self.release_id}
        else:
            metadata = {"Title": self.title, "Description": subject}
        target.parent.mkdir(parents=True, exist_ok=True)
        with mpl.rc_context(self._rc):
            self.figure.savefig(
                target, dpi=dpi, format=suffix[1:], metadata=metadata, facecolor="white"
            )
        return target

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        with mpl.rc_context(self._rc):
            self.figure.savefig(buffer, dpi=100, format="png", facecolor="white")
        return buffer.getvalue()


def heatmap(
    release: ReleasedTable | str | Path,
    *,
    boundary: str | Path | None = None,
    window: dt.datetime | int | None = None,
    place: str | None = None,
    cmap: str | Colormap = "viridis",
    extent: Extent = "auto",
    colour: Colour = "auto",
) -> Heatmap:
    """Draw one time window of a release as a map of H3 cells coloured by count (or, for
    cells of mixed sizes, by persons per km²).

    Parameters
    ----------
    release
        A :class:`~privmob.release.table.ReleasedTable`, or a release folder (``release.parquet``
        and ``manifest.json``, as written by ``ReleasedTable.write`` / ``privmob run``).
    boundary
        The job's boundary file (GeoJSON / GeoPackage). Draws the outline and, for a
        release with public keys, the withheld layer: every key cell not released in the
        window. Without it, withheld cells cannot be drawn and a note says so.
    window
        Window index in the period (``0`` = first), or its start time (naive times are read
        in the job's time zone). Default: the window with the most released persons.
    place
        Place name for the title; default: the manifest's ``dataset``.
    cmap
        A perceptually uniform colour map: ``"viridis"`` (default) or ``"cividis"``.
    extent
        ``"boundary"``: the whole area; ``"released"``: zoom to the cells released anywhere
        in the period (the same view for every window), with a locator map of the whole
        area; ``"auto"`` (default): ``"released"`` when those cells span less than a quarter
        of the area's bounding box, else ``"boundary"``; or ``(min_lng, min_lat, max_lng,
        max_lat)``.
    colour
        ``"count"``: noisy persons per cell; ``"density"``: persons per km² (count ÷ the
        cell's own area, log scale); ``"auto"`` (default): count when every cell has the
        same resolution, density when they mix (an adaptive release). Why: on a map the eye
        reads colour over area. With one resolution every cell has the same area, so the
        count is the density and the numbers are the table's. With mixed resolutions a
        res-4 cell covers ~2,400 times the area of a res-8 one and holds more persons
        merely for being big; coloured by count, a sparse outskirt would glow like a busy
        centre. Coloured by density, a director reads "where are people concentrated"
        correctly; the exact counts stay in the table and the legend says which is shown.

    Returns
    -------
    Heatmap
        ``.figure``, ``.panels`` (one) and ``.save(path)``.
    """
    job = _Job.build(release, boundary)
    index = job.window_index(window) if window is not None else job.busiest_window()
    return _Drawing(job, [index], place=place, cmap=cmap, small=False, extent=extent, colour=colour).draw()


def small_multiples(
    release: ReleasedTable | str | Path,
    *,
    boundary: str | Path | None = None,
    windows: Sequence[int] | None = None,
    place: str | None = None,
    cmap: str | Colormap = "viridis",
    extent: Extent = "auto",
    ncols: int | None = None,
    colour: Colour = "auto",
) -> Heatmap:
    """Draw every window of the period (or ``windows``) as a grid of maps on one colour scale.

    A day of hourly windows gives 24 panels (6 × 4); of 3-hour windows, 8 (4 × 2).

    Parameters
    ----------
    release, boundary, place, cmap, extent, colour
        As for :func:`heatmap`.
    windows
        Window indices to draw (default: all windows of the period, at most 48).
    ncols
        Columns of the grid (default: about 1.5 × as many columns as rows).
    """
    job = _Job.build(release, boundary)
    indices = list(range(job.n_windows)) if windows is None else [job.window_index(w) for w in windows]
    if not indices:
        raise InputError("small_multiples needs at least one window")
    if len(indices) > MAX_PANELS:
        raise InputError(
            f"the period has {len(indices)} windows, too many panels for one page; draw a day "
            f"at a time, e.g. windows=range(0, {min(24, job.windows_per_day)})"
        )
    return _Drawing(job, indices, place=place, cmap=cmap, small=True, ncols=ncols, extent=extent,
                    colour=colour).draw()


# ── the release, read once ───────────────────────────────────────────────────────────


@dataclass(frozen=True)
class _Job:
    table: pl.DataFrame  # with "w": window index in the period
    manifest: Mapping[str, Any]
    tz: dt.tzinfo
    tz_name: str
    period_start: dt.datetime
    window_seconds: int
    n_windows: int
    resolution: int | None  # None when the cells mix resolutions
    resolutions: tuple[int, ...]  # the distinct resolutions of the cells (or the manifest's range)
    threshold: int | None
    halfwidth: int | None
    public_keys: bool
    boundary_name: str | None
    boundary_geom: Any  # shapely geometry or None
    key_area: Any  # shapely union of the key cells or None
    key_cells: int | None
    vmin: int
    vmax: int

    @property
    def view(self) -> ManifestView:
        """The manifest, typed."""
        return ManifestView.of(self.manifest)

    @classmethod
    def build(cls, release: ReleasedTable | str | Path, boundary: str | Path | None) -> _Job:
        released = _load_release(release)
        m = released.manifest
        view = ManifestView.of(m)
        table = released.table
        missing = [c for c in _REQUIRED_COLUMNS if c not in table.columns]
        if missing:
            raise InputError(f"the release table lacks column(s) {', '.join(missing)}")
        table = _cell_columns(table)
        tz, tz_name = release_zone(m)
        starts = table.get_column("window_start")
        if starts.dtype != pl.Datetime("us", "UTC"):
            starts = starts.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
            table = table.with_columns(starts.alias("window_start"))
        window_seconds = _window_seconds(view.window, starts)
        period_start = _period_start(view.period_start, starts, tz)
        start_us = int(period_start.timestamp()) * 1_000_000
        table = table.with_columns(
            ((pl.col("window_start").dt.epoch("us") - start_us) // (window_seconds * 1_000_000))
            .cast(pl.Int64)
            .alias("w")
        )
        n_windows = view.windows or 0
        if n_windows <= 0:
            n_windows = int(table.get_column("w").max() or 0) + 1 if table.height else 1  # type: ignore[arg-type]
        resolutions = release_resolutions(view, table)
        resolution = resolutions[0] if len(resolutions) == 1 else None
        threshold, halfwidth = view.release_threshold, view.ci95_halfwidth
        table = table.with_columns(_near_column(table, threshold, halfwidth).alias("_near"))
        keys = view.keys
        geom = area = None
        key_cells = boundary_name = None
        source = boundary if boundary is not None else (released.boundary or _recorded_boundary(m))
        if source is not None and resolutions:
            # a mixed release's partition covers its roots: the boundary's cells at the coarsest
            geom, area, key_cells = _boundary_layers(Path(source), keys, resolutions[0])
            boundary_name = Path(source).name
            key_cells = key_cells if resolution is not None else None
        if resolution is None and view.partition:  # the leaves, released or not: the key cells
            # with their roots: H3 children do not tile their parent exactly, and the slivers
            # between leaves of different resolutions are part of the area all the same
            roots = {h3.cell_to_parent(c, resolutions[0]) for c in view.partition
                     if h3.is_valid_cell(c) and h3.get_resolution(c) >= resolutions[0]}
            area, key_cells = _cells_area([*view.partition, *sorted(roots)]), len(view.partition)
        counts = table.get_column("count")
        cmax = int(counts.max() or 0) if table.height else 0  # type: ignore[arg-type]
        cmin = int(counts.min() or 0) if table.height else 0  # type: ignore[arg-type]
        vmin = threshold if threshold is not None else cmin
        return cls(
            table=table,
            manifest=m,
            tz=tz,
            tz_name=tz_name,
            period_start=period_start,
            window_seconds=window_seconds,
            n_windows=n_windows,
            resolution=resolution,
            resolutions=resolutions,
            threshold=threshold,
            halfwidth=halfwidth,
            public_keys=view.public_keys,
            boundary_name=boundary_name,
            boundary_geom=geom,
            key_area=area,
            key_cells=key_cells,
            vmin=vmin,
            vmax=max(cmax, vmin + 1),
        )

    @property
    def windows_per_day(self) -> int:
        return max(1, 86_400 // self.window_seconds)

    def window_bounds(self, index: int) -> tuple[dt.datetime, dt.datetime]:
        start = self.period_start + dt.timedelta(seconds=index * self.window_seconds)
        end = start + dt.timedelta(seconds=self.window_seconds)
        return start.astimezone(self.tz), end.astimezone(self.tz)

    def window_index(self, window: dt.datetime | int) -> int:
        if isinstance(window, dt.datetime):
            when = window if window.tzinfo is not None else window.replace(tzinfo=self.tz)
            offset = (when - self.period_start).total_seconds()
            index, rest = divmod(offset, self.window_seconds)
            if rest:
                raise InputError(
                    f"{window.isoformat()} is not the start of a window; windows are "
                    f"{self.view.window or f'{self.window_seconds}s'} long from "
                    f"{self.period_start.astimezone(self.tz).isoformat()}"
                )
            index = int(index)
        elif isinstance(window, int | np.integer) and not isinstance(window, bool):
            index = int(window)
        else:
            raise InputError(f"window must be an index or a start time, not {window!r}")
        if not 0 <= index < self.n_windows:
            first, _ = self.window_bounds(0)
            raise InputError(
                f"window {window!r} is outside the period: it has {self.n_windows} windows "
                f"(0–{self.n_windows - 1}) from {first.isoformat()}"
            )
        return index

    def busiest_window(self) -> int:
        if self.table.height == 0:
            return 0
        mass = (
            self.table.filter(pl.col("w").is_between(0, self.n_windows - 1))
            .group_by("w")
            .agg(pl.col("count").sum())
            .sort(["count", "w"], descending=[True, False])
        )
        return int(mass.get_column("w")[0]) if mass.height else 0

    @property
    def mixed(self) -> bool:
        """The cells mix H3 resolutions (an adaptive release)."""
        return self.resolution is None and len(self.resolutions) > 1

    def _rows(self, index: int) -> pl.DataFrame:
        # coarse cells first: drawn in this order, finer cells stay on top of coarser ones
        return self.table.filter(pl.col("w") == index).sort("_res", "cell")

    def cells(self, index: int) -> tuple[list[str], npt.NDArray[np.int64]]:
        rows = self._rows(index)
        return rows.get_column("cell").to_list(), rows.get_column("count").to_numpy().astype(np.int64)

    def near(self, index: int) -> npt.NDArray[np.bool_]:
        """Near-threshold flags of :meth:`cells` (same order)."""
        return self._rows(index).get_column("_near").to_numpy().astype(bool)

    def km2(self, index: int) -> npt.NDArray[np.float64]:
        """Areas of :meth:`cells` in km² (same order)."""
        return self._rows(index).get_column("_km2").to_numpy().astype(np.float64)

    def density_range(self) -> tuple[float, float]:
        """Lowest and highest persons per km² over the period (one scale for all panels)."""
        if not self.table.height:
            return 1.0, 10.0
        counts = self.table.get_column("count").clip(lower_bound=1)
        density = (counts / self.table.get_column("_km2")).to_numpy()
        low, high = float(density.min()), float(density.max())
        return low, max(high, low * 10)

    @property
    def near_limit(self) -> int | None:
        """τ + h: released counts below it are near the threshold (None when unknown)."""
        if self.threshold is None or self.halfwidth is None:
            return None
        return self.threshold + self.halfwidth


def _near_column(table: pl.DataFrame, threshold: int | None, halfwidth: int | None) -> pl.Expr:
    """The release's ``near_threshold`` flags; for a release written before it had them,
    the same rule from the manifest (count < τ + h); all false when that is unknown."""
    if "near_threshold" in table.columns:
        return pl.col("near_threshold").cast(pl.Boolean).fill_null(False)
    if threshold is not None and halfwidth is not None:
        return pl.col("count") < threshold + halfwidth
    return pl.lit(False)


def _cell_columns(table: pl.DataFrame) -> pl.DataFrame:
    """:func:`privmob.report.cells.cell_columns`, plus each cell's area in km² (``_km2``)."""
    return cell_columns(table).with_columns(plh3.cell_area("cell", unit="km^2").alias("_km2"))


def _cells_area(cells: Sequence[str]) -> Any:
    """The union of these cells' polygons (shapely), e.g. an adaptive release's partition."""
    from shapely import union_all
    from shapely.geometry import Polygon

    return union_all([Polygon(_hexagon(c)) for c in cells])


def _load_release(release: ReleasedTable | str | Path) -> ReleasedTable:
    """A release object, or one read from its folder."""
    return release if isinstance(release, ReleasedTable) else ReleasedTable.read(release)


def _recorded_boundary(manifest: Mapping[str, Any]) -> str | None:
    recorded = manifest.get("boundary")
    if isinstance(recorded, str) and recorded:
        return recorded
    if isinstance(recorded, Mapping) and isinstance(recorded.get("path"), str):
        return str(recorded["path"])
    return None


def _window_seconds(window: str | None, starts: pl.Series) -> int:
    if window is not None:
        return parse_duration(window)
    distinct = starts.unique().sort().dt.epoch("s").to_numpy()
    if len(distinct) > 1:
        return int(np.diff(distinct).min())
    return 3600


def _period_start(text: str | None, starts: pl.Series, tz: dt.tzinfo) -> dt.datetime:
    if text is not None:
        try:
            start = dt.datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            return (start if start.tzinfo else start.replace(tzinfo=tz)).astimezone(dt.UTC)
    first = starts.min()
    if isinstance(first, dt.datetime):
        return first if first.tzinfo else first.replace(tzinfo=dt.UTC)
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


_AREA_CACHE: dict[tuple[str, str, int], tuple[Any, Any, int]] = {}


def _boundary_layers(path: Path, keys: str, resolution: int) -> tuple[Any, Any, int]:
    """(boundary outline, union of its cells at ``resolution``, number of cells)."""
    from shapely.geometry import shape

    from privmob.privacy.keys import release_boundary

    boundary, note = release_boundary(path, keys)
    if note is not None:
        warnings.warn(note, UserWarning, stacklevel=4)
    cache_key = (boundary.sha256, json.dumps(boundary.where), resolution)
    if cache_key not in _AREA_CACHE:
        cells = [h3.int_to_str(int(c)) for c in boundary.cells(resolution)]
        area = shape(h3.cells_to_h3shape(cells).__geo_interface__)
        if len(_AREA_CACHE) >= 8:
            _AREA_CACHE.pop(next(iter(_AREA_CACHE)))
        _AREA_CACHE[cache_key] = (boundary.geometry, area, len(cells))
    return _AREA_CACHE[cache_key]


# ── drawing ──────────────────────────────────────────────────────────────────────────


class _Drawing:
    """Lays out one figure (inches, top-down) and draws its panels."""

    def __init__(
        self,
        job: _Job,
        indices: Sequence[int],
        *,
        place: str | None,
        cmap: str | Colormap,
        small: bool,
        ncols: int | None = None,
        extent: Extent = "auto",
        colour: Colour = "auto",
    ) -> None:
        self.job = job
        self.indices = list(indices)
        self.small = small
        self.cmap = mpl.colormaps[cmap] if isinstance(cmap, str) else cmap
        if colour not in ("auto", "count", "density"):
            raise InputError(f"colour must be 'auto', 'count' or 'density', not {colour!r}")
        self.density = colour == "density" or (colour == "auto" and job.mixed)
        self.norm: Normalize = (LogNorm(*job.density_range()) if self.density
                                else Normalize(vmin=job.vmin, vmax=job.vmax))
        marking = job.view.marking or DEFAULT_MARKING
        # stacklevel 4: cjk_font → _Drawing → heatmap / small_multiples → the caller
        # (the place name is filtered by safe() instead: a rare character in it must not
        # cost the marking its Chinese half)
        self.font = _fonts.cjk_font(marking, stacklevel=4)
        self.marking = self.font.safe(marking)
        self.place = self.font.safe(place or job.view.dataset or "") or "release"
        self.rc: dict[Any, Any] = {**_fonts.rc_params(self.font), "hatch.linewidth": 0.6}
        n = len(self.indices)
        if ncols is None:
            ncols = max(1, math.ceil(math.sqrt(n * 1.5)))
            ncols = math.ceil(n / math.ceil(n / ncols))
        self.ncols = max(1, min(ncols, n))
        self.nrows = math.ceil(n / self.ncols)
        self.bounds = _map_bounds(job, extent)
        whole = _map_bounds(job, "boundary")
        self.zoomed = self.bounds != whole and job.boundary_geom is not None
        self.panel_w = 1.0  # inches; set by _compose
        self.aspect = 1 / math.cos(math.radians((self.bounds[1] + self.bounds[3]) / 2))

    # layout in inches; matplotlib wants figure fractions
    def draw(self) -> Heatmap:
        with mpl.rc_context(self.rc):
            fig, panels, title = self._compose()
            _fit_to_width(fig)
            fig.draw_without_rendering()  # creates tick labels under these fonts
        return Heatmap(
            fig,
            panels,
            rc=self.rc,
            title=title,
            marking=self.marking,
            release_id=self.job.view.release_id or "unknown",
            font=self.font,
        )

    def _compose(self) -> tuple[Figure, list[Panel], str]:
        # Layout in inches from the top: band, title block, maps (+ colour bar at the right),
        # legend, footer. Converted to figure fractions by fx / fy.
        minx, miny, maxx, maxy = self.bounds
        ratio = (maxy - miny) * self.aspect / max(maxx - minx, 1e-9)  # height / width of a map
        right_h = 2.0  # colour bar, its tick labels and its label
        if self.small:
            panel_w = 2.7 if self.ncols <= 4 else 2.3
            self.panel_w = panel_w
            panel_h = min(max(panel_w * ratio, 1.4), panel_w * 1.6)
            gap_x, gap_y = 0.15, 0.42
            grid_w = self.ncols * panel_w + (self.ncols - 1) * gap_x
            grid_h = self.nrows * panel_h + (self.nrows - 1) * gap_y
            width = max(_INCH_MARGIN + grid_w + right_h, 10.0)
        else:
            width = 10.0
            grid_w = panel_w = width - _INCH_MARGIN - right_h
            self.panel_w = panel_w
            grid_h = panel_h = min(max(panel_w * ratio, 3.5), 9.5)
            gap_x = gap_y = 0.0
        band_h, head_h = 0.8, 0.85
        top = band_h + head_h + (0.3 if self.small else 0.05)
        note = self.job.key_area is None
        legend_top = top + grid_h + 0.15
        # a mixed-resolution legend says what the colour means: two rows, not a tiny font
        rows_h = 0.25 if self.job.mixed else 0.0
        legend_h = 0.4 + rows_h + (0.3 if note else 0.0) + _SELECTION_NOTE_H
        footer_h = 1.0
        height = legend_top + legend_h + footer_h
        fig = Figure(figsize=(width, height), facecolor="white")
        FigureCanvasAgg(fig)  # no display, no pyplot: Agg renders PNG, savefig picks PDF

        def fx(inches: float) -> float:
            return inches / width

        def fy(inches_from_top: float) -> float:
            return 1 - inches_from_top / height

        self._marking_band(fig, fy(band_h), band_h / height)
        title, subtitle = self._titles()
        fig.text(fx(_INCH_MARGIN), fy(band_h + 0.4), title, fontsize=16, color="#111111",
                 va="baseline", gid="title")
        fig.text(fx(_INCH_MARGIN), fy(band_h + 0.7), subtitle, fontsize=10.5, color="#444444",
                 va="baseline", gid="subtitle")

        panels: list[Panel] = []
        for k, index in enumerate(self.indices):
            row, col = divmod(k, self.ncols)
            left = _INCH_MARGIN + col * (panel_w + gap_x)
            upper = top + row * (panel_h + gap_y)
            ax = fig.add_axes((fx(left), fy(upper + panel_h), fx(panel_w), panel_h / height),
                              label=f"map:{index}")
            panels.append(self._map(ax, index, scale_bar=not self.small or k == 0))

        bar_h = min(grid_h * 0.7, 5.0)
        bar_top = top + (grid_h - bar_h) / 2
        if self.zoomed:  # a locator map of the whole area, beside the maps (never over data)
            loc_w = 1.5
            loc_h = min(loc_w * _ratio(self.job.boundary_geom.bounds, self.aspect), 1.8)
            self._locator(fig.add_axes((fx(_INCH_MARGIN + grid_w + 0.3), fy(top + loc_h), fx(loc_w),
                                        loc_h / height), label="locator"))
            bar_h = min(grid_h - loc_h - 0.6, 5.0)
            bar_top = top + loc_h + 0.45 + (grid_h - loc_h - 0.6 - bar_h) / 2
        cax = fig.add_axes(
            (fx(_INCH_MARGIN + grid_w + 0.35), fy(bar_top + bar_h), fx(0.2), bar_h / height),
            label="colorbar",
        )
        self._colour_bar(fig, cax)
        self._legend(fig, fx(_INCH_MARGIN - 0.05), fy(legend_top), note_y=fy(legend_top + 0.42 + rows_h))
        self._selection_note(fig, fx(_INCH_MARGIN), fy(legend_top + 0.42 + rows_h + (0.3 if note else 0.0)))
        if self.small or note:
            self._watermark_figure(fig, fx(_INCH_MARGIN), fy(top + grid_h), fx(grid_w), grid_h / height)
        else:
            self._watermark_axes(panels[0].axes)
        self._footer(fig, fx(_INCH_MARGIN), fy(height - 0.45), fy(height - 0.15))
        return fig, panels, title

    def _titles(self) -> tuple[str, str]:
        job = self.job
        first, _ = job.window_bounds(self.indices[0])
        _, last = job.window_bounds(self.indices[-1])
        zone = f"{job.tz_name}, UTC{_utc_offset(first)}"
        res = job.resolution
        cell = f"H3 resolution {res}, ≈{_area_text(res)} per cell" if res is not None else "H3 cells"
        if job.mixed:
            low, high = job.resolutions[0], job.resolutions[-1]
            cell = (f"adaptive H3 cells, res {low}–{high}, ≈{_area_text(high)} to ≈{_area_text(low)}"
                    f"; colour: {'persons per km²' if self.density else 'persons per cell'}")
        if self.small:
            days = first.date().isoformat()
            if (last - dt.timedelta(microseconds=1)).date() != first.date():
                days += f" – {(last - dt.timedelta(microseconds=1)).date().isoformat()}"
            window = job.view.window or f"{job.window_seconds // 60}m"
            title = f"{self.place} — {days} ({first:%a}), {len(self.indices)} windows of {window} ({zone})"
            subtitle = f"Key-group persons per cell and window ({cell}); one colour scale for all panels"
        else:
            title = f"{self.place} — {first.date().isoformat()} ({first:%a}) {_span(first, last)} ({zone})"
            cells, _ = job.cells(self.indices[0])
            shown = f"{len(cells):,} cells released"
            if job.key_cells is not None:
                shown += f", {max(job.key_cells - len(cells), 0):,} withheld"
            subtitle = f"Key-group persons per cell ({cell}) · {shown} in this window"
        return self.font.safe(title), self.font.safe(subtitle)

    def _map(self, ax: Axes, index: int, *, scale_bar: bool) -> Panel:
        job = self.job
        cells, counts = job.cells(index)
        hexagons = [_hexagon(c) for c in cells]
        withheld: int | None = None
        if job.key_area is not None:
            from shapely import union_all
            from shapely.geometry import Polygon

            region = job.key_area
            if hexagons:
                region = region.difference(union_all([Polygon(v) for v in hexagons]))
            path = _shape_path(region)
            if path is not None:
                ax.add_patch(PathPatch(path, facecolor=WITHHELD_FACE, edgecolor="none",
                                       hatchcolor=WITHHELD_HATCH, hatch="////" if not self.small else "///",
                                       linewidth=0, zorder=1, gid="withheld"))
            withheld = max(job.key_cells - len(cells), 0) if job.key_cells is not None else None
        # White seams separate hexagons that are big enough to see as hexagons; on small
        # ones they would wash the colour out, so those get seamless edges of their own colour.
        values = counts / job.km2(index) if self.density else counts
        edges = self._edges(hexagons, values)
        released = PolyCollection(hexagons, closed=True, array=values, cmap=self.cmap, norm=self.norm,
                                  zorder=3, gid="released", **edges)
        ax.add_collection(released)
        near = job.near(index)
        if near.any():  # outlined and dotted over their colour: biased upward, see the note
            ax.add_collection(PolyCollection(
                [hexagons[i] for i in np.flatnonzero(near)], closed=True, facecolors="none",
                edgecolors=NEAR_EDGE, linewidths=0.9 if not self.small else 0.6, hatch=NEAR_HATCH,
                zorder=3.5, gid="near-threshold"))
        if job.boundary_geom is not None:
            outline = _shape_path(job.boundary_geom)
            if outline is not None:
                ax.add_patch(PathPatch(outline, fill=False, edgecolor=BOUNDARY_COLOR,
                                       linewidth=0.7 if self.small else 1.1, zorder=4, gid="boundary"))
        minx, miny, maxx, maxy = self.bounds
        ax.set_xlim(minx, maxx)
        ax.set_ylim(miny, maxy)
        ax.set_aspect(self.aspect, adjustable="box", anchor="C")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():  # a frame only where the map is cut off
            spine.set_visible(self.zoomed)
            spine.set_edgecolor("#999999")
            spine.set_linewidth(0.6)
        ax.patch.set_visible(False)
        start, end = job.window_bounds(index)
        if self.small:
            label = f"{_span(start, end)} · " + (
                f"{len(cells)} cell{'s' if len(cells) != 1 else ''}" if cells else "none released"
            )
            ax.set_title(label, fontsize=9.5, color="#222222", pad=3)
        if scale_bar:
            _scale_bar(ax, self.bounds, small=self.small)
        return Panel(start, end, len(cells), withheld, ax)

    def _edges(self, hexagons: Sequence[npt.NDArray[np.float64]],
               values: npt.NDArray[Any]) -> dict[str, Any]:
        """Edge colours and widths: white seams on hexagons big enough to read as hexagons,
        seamless edges of their own colour on small ones (seams would wash them out). Cells
        of mixed resolutions each get the style of their own size."""
        minx, _, maxx, _ = self.bounds

        def points(hexagon: npt.NDArray[np.float64]) -> float:
            return float(np.ptp(hexagon[:, 0])) / max(maxx - minx, 1e-12) * self.panel_w * 72

        if not self.job.mixed:
            hex_pt = points(hexagons[0]) if len(hexagons) else 0.0
            return ({"edgecolors": "white", "linewidths": min(0.5, 0.05 * hex_pt)} if hex_pt >= 6
                    else {"edgecolors": "face", "linewidths": 0.15})
        sizes = np.array([points(h) for h in hexagons])
        own = self.cmap(self.norm(values)) if len(hexagons) else np.zeros((0, 4))
        big = sizes >= 6
        colours = np.where(big[:, None], mpl.colors.to_rgba("white"), own)
        return {"edgecolors": colours, "linewidths": np.where(big, np.minimum(0.5, 0.05 * sizes), 0.15)}

    def _locator(self, ax: Axes) -> None:
        """A small map of the whole area with the zoomed view outlined."""
        job = self.job
        whole = _shape_path(job.boundary_geom)
        if whole is not None:
            ax.add_patch(PathPatch(whole, facecolor="#f2f2f2", edgecolor=BOUNDARY_COLOR, linewidth=0.6))
        minx, miny, maxx, maxy = self.bounds
        ax.add_patch(Rectangle((minx, miny), maxx - minx, maxy - miny, fill=False, edgecolor=MARKING_BAND,
                               linewidth=1.2, zorder=3))
        bx0, by0, bx1, by1 = job.boundary_geom.bounds
        ax.set_xlim(min(bx0, minx), max(bx1, maxx))
        ax.set_ylim(min(by0, miny), max(by1, maxy))
        ax.set_aspect(self.aspect, adjustable="box", anchor="NW")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(self.font.safe("red box: area of the map"), fontsize=7.5, color="#555555", labelpad=2)
        for spine in ax.spines.values():
            spine.set_edgecolor("#999999")
            spine.set_linewidth(0.6)
        ax.set_facecolor("white")

    def _colour_bar(self, fig: Figure, cax: Axes) -> None:
        job = self.job
        mappable = ScalarMappable(norm=self.norm, cmap=self.cmap)
        bar = fig.colorbar(mappable, cax=cax)
        if self.density:
            bar.set_label("key-group persons per km² (noisy count ÷ cell area; log scale)", fontsize=10)
            bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            bar.ax.tick_params(labelsize=9)
            bar.outline.set_linewidth(0.5)
            return
        half = f" ± {job.halfwidth}" if job.halfwidth is not None else ""
        bar.set_label(f"distinct key-group persons (noisy count, 95%{half} away from the threshold)",
                      fontsize=10)
        ticks = [t for t in MaxNLocator(nbins=5, integer=True).tick_values(job.vmin, job.vmax)
                 if job.vmin + 0.08 * (job.vmax - job.vmin) < t <= job.vmax]
        bar.set_ticks([job.vmin, *ticks])
        labels = [f"{job.vmin}" + (" (threshold)" if job.threshold is not None else "")]
        bar.set_ticklabels(labels + [f"{t:g}" for t in ticks])
        bar.ax.tick_params(labelsize=9)
        bar.outline.set_linewidth(0.5)

    def _legend(self, fig: Figure, x: float, y: float, *, note_y: float) -> None:
        job = self.job
        colour = ""
        if job.mixed:
            colour = ("; colour = persons per km² (cells differ in size)" if self.density
                      else "; colour = persons per cell (bigger cells hold more)")
        handles: list[Any] = [
            Patch(facecolor=self.cmap(0.6), edgecolor="white",
                  label=f"released: noisy count ≥ {job.vmin}{colour}"),
        ]
        thr = job.threshold if job.threshold is not None else job.vmin
        limit = job.near_limit
        handles.append(Patch(facecolor=self.cmap(0.15), edgecolor=NEAR_EDGE, hatch=NEAR_HATCH, linewidth=0.9,
                             label=f"near threshold (count < {limit}): biased upward" if limit is not None
                             else "near threshold: biased upward"))
        if job.key_area is not None:
            label = (f"withheld: fewer than ~{thr} (noise threshold) — not zero" if job.public_keys
                     else f"not released: none, or fewer than ~{thr} (noise threshold)")
            handles.append(Patch(facecolor=WITHHELD_FACE, edgecolor=WITHHELD_HATCH, hatch="////",
                                 linewidth=0, label=label))
        if job.boundary_geom is not None:
            handles.append(Line2D([], [], color=BOUNDARY_COLOR, linewidth=1.1,
                                  label=f"boundary ({job.boundary_name})"))
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(x, y),
                   ncols=2 if job.mixed else len(handles),
                   frameon=False, fontsize=9.5, handlelength=1.6, columnspacing=1.6)
        if job.key_area is None:
            fig.text(x + 0.005, note_y, self.font.safe(
                f"Cells not drawn were withheld (noisy count below ~{thr}): a missing cell is not "
                "a zero. Give the boundary file to draw them."), fontsize=9, color="#9b1c1c", va="top",
                gid="note")

    def _selection_note(self, fig: Figure, x: float, y: float) -> None:
        """The plain statement on near-threshold counts, Chinese over English."""
        zh, en = SELECTION_NOTE
        lines = [self.font.safe(zh), *textwrap.wrap(self.font.safe(en), 150)]
        fig.text(x, y, "\n".join(line for line in lines if line), fontsize=8.5, color="#1f1f1f", va="top",
                 linespacing=1.45, gid="selection-note")

    def _footer(self, fig: Figure, x: float, y: float, marking_y: float) -> None:
        v = ManifestView.of(self.job.manifest)
        mech = v.mechanism or "?"
        mech = {"gaussian": "discrete Gaussian", "laplace": "discrete Laplace"}.get(mech, mech)
        eps, delta, rho = v.epsilon, v.delta, v.rho
        budget = f"ε = {_num(eps)}, δ = {_num(delta)}" + (f" (ρ = {_num(rho, 4)} zCDP)" if rho else "")
        half = (f"; each count ± {self.job.halfwidth} at 95% (near the threshold: selection-aware interval)"
                if self.job.halfwidth is not None else "")
        bounding = v.max_cells_per_window
        line1 = (f"Person-level differential privacy: {mech} noise (OpenDP), {budget} for the period"
                 + (f"; ≤ {bounding} cell(s) per person and window" if bounding else "")
                 + (f"; ≤ {v.max_pairs} (cell, window) pairs per person" if v.max_pairs else "")
                 + half + ".")
        thr = self.job.threshold
        n_cells = self.job.key_cells or (v.key_cells if not self.job.mixed else None)
        windows = f"{self.job.n_windows} window{'s' if self.job.n_windows != 1 else ''}"
        keys = (
            f"public keys: {_count(n_cells)} cells × {windows}, all noised"
            if self.job.public_keys
            else "keys selected by a DP threshold"
        )
        res = self.job.resolutions
        if self.job.mixed:
            adaptive = " (adaptive)" if v.adaptive else ""
            cells = f"H3 cells res {res[0]}–{res[-1]}{adaptive}: finer where more persons were"
            if self.job.public_keys:
                keys = (f"public keys: {_count(n_cells) if n_cells is not None else 'the'} cells of a "
                        f"public partition × {windows}, all noised")
        else:
            cells = f"H3 resolution {self.job.resolution}"
        line2 = (f"Counts below the release threshold {thr if thr is not None else '?'} are withheld "
                 f"(min_count {_num(v.min_count)}); {keys}. {cells}, "
                 f"{v.window or '?'} windows, period {v.key_period or '?'}.")
        signed = f"signed: {v.signature_fingerprint}" if v.signature_fingerprint else "UNSIGNED"
        line3 = (f"Release {v.release_id or '?'} · {signed} · purpose {v.purpose or '?'}"
                 f" · privmob {v.privmob_version or '?'}")
        text = "\n".join(self.font.safe(line) for line in (line1, line2, line3))
        fig.text(x, y, text, fontsize=8, color="#333333", va="bottom", linespacing=1.5, gid="footer")
        fig.text(x, marking_y, self.marking, fontsize=8.5, color=MARKING_BAND, va="bottom",
                 gid="marking-footer")

    def _marking_band(self, fig: Figure, y: float, h: float) -> None:
        fig.add_artist(Rectangle((0, y), 1, h, transform=fig.transFigure, facecolor=MARKING_BAND,
                                 edgecolor="none", zorder=0))
        halves = [part.strip() for part in self.marking.split(" / ")]
        bold = [patheffects.withStroke(linewidth=0.9, foreground="white")]
        if len(halves) >= 2:
            fig.text(0.5, y + h * 0.62, halves[0], ha="center", va="center", color="white", fontsize=16,
                     path_effects=bold, gid="marking")
            fig.text(0.5, y + h * 0.22, " / ".join(halves[1:]), ha="center", va="center", color="white",
                     fontsize=10.5, gid="marking")
        else:
            fig.text(0.5, y + h / 2, halves[0], ha="center", va="center", color="white", fontsize=14,
                     path_effects=bold, gid="marking")

    def _watermark_text(self) -> str:
        halves = [part.strip() for part in self.marking.split(" / ")]
        return halves[0] if len(halves[0]) >= 4 else self.marking

    def _watermark_axes(self, ax: Axes) -> None:
        bbox = ax.get_position()
        fig = ax.get_figure()
        assert isinstance(fig, Figure)
        w_in, h_in = bbox.width * fig.get_figwidth(), bbox.height * fig.get_figheight()
        self._watermark(fig, ax.transAxes, 0.5, 0.5, w_in, h_in, ax)

    def _watermark_figure(self, fig: Figure, x: float, y: float, w: float, h: float) -> None:
        self._watermark(fig, fig.transFigure, x + w / 2, y + h / 2, w * fig.get_figwidth(),
                        h * fig.get_figheight(), None)

    def _watermark(self, fig: Figure, transform: Any, cx: float, cy: float, w_in: float, h_in: float,
                   ax: Axes | None) -> None:
        text = self._watermark_text()
        angle = math.degrees(math.atan2(h_in, w_in))
        diagonal = math.hypot(w_in, h_in)
        ems = sum(1.0 if ord(ch) > 0x2E80 else 0.56 for ch in text)
        size = min(44.0, 0.7 * diagonal * 72 / max(ems, 1.0))
        kwargs: dict[str, Any] = {"transform": transform, "rotation": angle, "rotation_mode": "anchor",
                                  "ha": "center", "va": "center", "fontsize": size, "color": "#7a0f0f",
                                  "alpha": 0.11, "zorder": 6, "gid": "watermark"}
        if ax is not None:  # between the withheld layer and the counts: it never hides a number
            kwargs.update(zorder=2, alpha=0.13)
            ax.text(cx, cy, text, clip_on=False, **kwargs)
        else:
            fig.text(cx, cy, text, **kwargs)


def _fit_to_width(fig: Figure) -> None:
    """Shrink figure-level texts and the legend that would run past the figure's edges.

    Place names, fingerprints and fallback fonts vary in width; a line cut off at the edge
    could hide exactly the part (a release id, a threshold) a reader needs.
    """
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    width = fig.bbox.width
    margin = _INCH_MARGIN * fig.dpi
    for text in fig.texts:
        if text.get_rotation() or text.get_gid() == "watermark":
            continue
        extent = text.get_window_extent(renderer)
        x0 = fig.transFigure.transform((text.get_position()[0], 0))[0]
        centred = text.get_horizontalalignment() == "center"
        room = width - 2 * margin if centred else width - margin - x0
        if extent.width > room > 0:
            text.set_fontsize(max(5.5, float(text.get_fontsize()) * room / extent.width * 0.98))
    for legend in fig.legends:
        # handles and spacing do not shrink with the labels: measure again until it fits
        for _ in range(6):
            extent = legend.get_window_extent(renderer)
            room = width - margin - extent.x0
            size = float(legend.get_texts()[0].get_fontsize())
            if not extent.width > room > 0 or size <= 5.5:
                break
            for label in legend.get_texts():
                label.set_fontsize(max(5.5, size * room / extent.width * 0.95))


# ── geometry helpers ─────────────────────────────────────────────────────────────────


def _hexagon(cell: str) -> npt.NDArray[np.float64]:
    return np.array([(lng, lat) for lat, lng in h3.cell_to_boundary(cell)], dtype=np.float64)


def _map_bounds(job: _Job, extent: Extent = "auto") -> tuple[float, float, float, float]:
    if isinstance(extent, tuple):
        if len(extent) != 4 or not (extent[0] < extent[2] and extent[1] < extent[3]):
            raise InputError(f"extent {extent!r} must be (min_lng, min_lat, max_lng, max_lat)")
        return tuple(float(v) for v in extent)  # type: ignore[return-value]
    if extent not in ("auto", "boundary", "released"):
        raise InputError(f"extent must be 'auto', 'boundary', 'released' or a lng/lat box, not {extent!r}")
    if extent == "auto":
        whole = _map_bounds(job, "boundary")
        if job.boundary_geom is None or not job.table.height:
            return whole
        zoomed = _map_bounds(job, "released")
        share = _box_area(zoomed) / max(_box_area(whole), 1e-12)
        return zoomed if share < AUTO_ZOOM_SHARE else whole
    geoms = [g for g in (job.boundary_geom, job.key_area) if g is not None]
    if job.table.height and (extent == "released" or not geoms):
        points = np.concatenate([_hexagon(c) for c in job.table.get_column("cell").unique().to_list()])
        minx, miny = points.min(axis=0)
        maxx, maxy = points.max(axis=0)
        # at least ~15 cells across, and some context around the released cells
        finest = job.resolutions[-1] if job.resolutions else 7
        span = max(maxx - minx, maxy - miny, 15 * h3.average_hexagon_edge_length(
            finest, unit="km") / 111.32 * 2)
        cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
        half_x = max(maxx - minx, span * 0.6) / 2 * 1.25
        half_y = max(maxy - miny, span * 0.6) / 2 * 1.25
        return float(cx - half_x), float(cy - half_y), float(cx + half_x), float(cy + half_y)
    if geoms:
        bounds = np.array([g.bounds for g in geoms])
        minx, miny = bounds[:, 0].min(), bounds[:, 1].min()
        maxx, maxy = bounds[:, 2].max(), bounds[:, 3].max()
    else:
        minx, miny, maxx, maxy = 0.0, 0.0, 1.0, 1.0
    padx, pady = (maxx - minx) * 0.02 + 1e-3, (maxy - miny) * 0.02 + 1e-3
    return float(minx - padx), float(miny - pady), float(maxx + padx), float(maxy + pady)


def _box_area(box: tuple[float, float, float, float]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def _ratio(bounds: tuple[float, float, float, float], aspect: float) -> float:
    """Height / width of a lng/lat box drawn at ``aspect``."""
    minx, miny, maxx, maxy = bounds
    return (maxy - miny) * aspect / max(maxx - minx, 1e-9)


def _shape_path(geom: Any) -> MplPath | None:
    """A compound matplotlib path of the polygons in ``geom`` (holes stay holes)."""
    from shapely.geometry import MultiPolygon, Polygon
    from shapely.geometry.polygon import orient

    if isinstance(geom, Polygon):
        polygons = [geom]
    elif isinstance(geom, MultiPolygon):
        polygons = list(geom.geoms)
    else:  # a GeometryCollection left over by a difference
        polygons = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon)]
    vertices: list[npt.NDArray[np.float64]] = []
    codes: list[npt.NDArray[np.uint8]] = []
    for polygon in polygons:
        if polygon.is_empty:
            continue
        polygon = orient(polygon, 1.0)  # exterior counter-clockwise, holes clockwise
        for ring in (polygon.exterior, *polygon.interiors):
            xy = np.asarray(ring.coords, dtype=np.float64)[:, :2]
            if len(xy) < 4:
                continue
            code = np.full(len(xy), MplPath.LINETO, dtype=np.uint8)
            code[0], code[-1] = MplPath.MOVETO, MplPath.CLOSEPOLY
            vertices.append(xy)
            codes.append(code)
    if not vertices:
        return None
    return MplPath(np.concatenate(vertices), np.concatenate(codes))


def _scale_bar(ax: Axes, bounds: tuple[float, float, float, float], *, small: bool) -> None:
    minx, miny, maxx, maxy = bounds
    km_per_degree = 111.32 * math.cos(math.radians((miny + maxy) / 2))
    target = (maxx - minx) * km_per_degree / 5
    length = max((n for n in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500) if n <= target), default=1)
    x1 = maxx - (maxx - minx) * 0.04
    x0 = x1 - length / km_per_degree
    y = miny + (maxy - miny) * 0.04
    ax.plot([x0, x1], [y, y], color="#222222", linewidth=2 if not small else 1.2,
            solid_capstyle="butt", zorder=5, gid="scale-bar")
    ax.text((x0 + x1) / 2, y + (maxy - miny) * 0.012, f"{length} km", ha="center", va="bottom",
            fontsize=9 if not small else 7, color="#222222", zorder=5)


# ── text helpers ─────────────────────────────────────────────────────────────────────


def _span(start: dt.datetime, end: dt.datetime) -> str:
    end_text = "24:00" if end.time() == dt.time(0) and end.date() > start.date() else f"{end:%H:%M}"
    return f"{start:%H:%M}–{end_text}"


def _utc_offset(when: dt.datetime) -> str:
    offset = when.utcoffset() or dt.timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "−"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _area_text(resolution: int) -> str:
    km2 = float(h3.average_hexagon_area(resolution, unit="km^2"))
    return f"{km2:.2g} km²" if km2 >= 0.1 else f"{km2 * 1e6:,.0f} m²"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "?"


def _num(value: Any, digits: int = 6) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.{digits}g}"
    return "?" if value is None else str(value)
