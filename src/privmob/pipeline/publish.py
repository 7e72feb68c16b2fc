"""Stage 10 — publish: a release folder with its reports, written and signed as one.

This sits above both :mod:`privmob.release.table` (the data files, written atomically by
:meth:`~privmob.release.table.ReleasedTable.write`) and :mod:`privmob.report` (the pictures), so
neither imports the other: the heatmaps and the offline HTML page are drawn here into the
folder being written, before the manifest lists every file's digest and the signature
covers them — the pictures people forward are signed with the numbers.

The pictures need the ``[report]`` extra (Matplotlib and fonts). A job that asks for them
on an install without it is refused by :func:`check_reports` before any budget is reserved
or data read; the demo asks :func:`reports_installed` and publishes without them.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from privmob.errors import MissingExtraError
from privmob.release.table import ReleasedTable

__all__ = ["check_reports", "draw_reports", "publish", "reports_installed"]


def _import_report() -> None:
    """Import :mod:`privmob.report`, which raises :class:`MissingExtraError` without [report]."""
    importlib.import_module("privmob.report")


def reports_installed() -> bool:
    """Whether the ``[report]`` extra is installed (imports the drawing stack if so)."""
    try:
        _import_report()
    except MissingExtraError:
        return False
    return True


def check_reports(write_to: str | Path | None, reports: bool) -> None:
    """Refuse, up front, a release that would be written with reports it cannot draw.

    Called before the ledger is opened: without the ``[report]`` extra a job with
    ``[job] reports = true`` would otherwise spend its budget and fail at the last step.

    Raises
    ------
    MissingExtraError
        Naming ``pip install 'privmob[report]'`` and ``[job] reports = false`` (exit 2).
    """
    if write_to is None or not reports:
        return
    try:
        _import_report()
    except MissingExtraError as exc:
        raise MissingExtraError(
            f"{exc}; or set `[job] reports = false` to publish the release without its "
            "heatmaps and HTML report (nothing was read or charged)",
            extra=exc.extra, package=exc.package,
        ) from exc


def draw_reports(release: ReleasedTable, folder: Path) -> list[str]:
    """Draw the pictures a person will look at into ``folder``; returns the file names."""
    from privmob.report import heatmap, small_multiples
    from privmob.report.html import write_html_report

    written = []
    single = heatmap(release, boundary=release.boundary)
    for name in ("heatmap.png", "heatmap.pdf"):
        single.save(folder / name)
        written.append(name)
    windows = int(release.manifest.get("windows") or 0)
    if 1 < windows <= 48:
        small_multiples(release, boundary=release.boundary).save(folder / "heatmap-windows.png")
        written.append("heatmap-windows.png")
    write_html_report(release, folder / "report.html", boundary=release.boundary)
    written.append("report.html")
    return written


def publish(release: ReleasedTable, folder: str | Path, *, reports: bool = True,
            signing_key: Any | None = None) -> Path:
    """Write ``release`` into ``folder`` atomically — data files, and with ``reports`` the
    heatmaps (PNG, PDF) and the HTML report — signed with ``signing_key`` (Ed25519) if given.

    Returns the folder. The folder must not already hold a release
    (:class:`~privmob.errors.ReleaseExistsError`).
    """
    return release.write(folder, signing_key=signing_key,
                         extra_files=draw_reports if reports else None)
