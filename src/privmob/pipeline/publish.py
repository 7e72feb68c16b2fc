"""Stage 10 — publish: a release folder with its reports, written and signed as one.

This sits above both :mod:`privmob.release.table` (the data files, written atomically by
:meth:`~privmob.release.table.ReleasedTable.write`) and :mod:`privmob.report` (the pictures), so
neither imports the other: the heatmaps and the offline HTML page are drawn here into the
folder being written, before the manifest lists every file's digest and the signature
covers them — the pictures people forward are signed with the numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from privmob.release.table import ReleasedTable

__all__ = ["draw_reports", "publish"]


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
