"""What both reports need to know about a release's cells: their H3 strings and resolutions.

An adaptive release mixes resolutions and may carry cells as UInt64; the heatmap and the
HTML page read them the same way, here.
"""

from __future__ import annotations

import polars as pl
import polars_h3 as plh3

from privmob.release.manifest import ManifestView

__all__ = ["cell_columns", "resolutions"]


def cell_columns(table: pl.DataFrame) -> pl.DataFrame:
    """``cell`` as H3 strings (a release may carry UInt64 cells) and each cell's resolution
    (``_res``; the table's own ``resolution`` column when it has one)."""
    if table.schema["cell"].is_integer():
        table = table.with_columns(plh3.int_to_str(pl.col("cell").cast(pl.UInt64)).alias("cell"))
    res = pl.col("resolution") if "resolution" in table.columns else plh3.get_resolution("cell")
    return table.with_columns(res.cast(pl.Int8).alias("_res"))


def resolutions(view: ManifestView, table: pl.DataFrame) -> tuple[int, ...]:
    """The release's H3 resolutions, coarsest first: the manifest's one resolution, else
    the cells' own (an adaptive release names only its range). ``table`` has ``_res``."""
    if view.resolution is not None:
        return (view.resolution,)
    found = {int(r) for r in table.get_column("_res").unique().to_list() if r is not None}
    if view.resolutions is not None:
        found |= set(view.resolutions)
    return tuple(sorted(found))
