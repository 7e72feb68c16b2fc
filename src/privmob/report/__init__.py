"""Reports drawn from a release: static heatmaps (PNG and PDF) and an offline HTML page.

Everything here is post-processing of a :class:`~privmob.release.table.ReleasedTable`: it reads
only released counts and the manifest, so drawing spends no privacy budget.

>>> from privmob import report  # doctest: +SKIP
>>> report.heatmap("out/demo", boundary="city.geojson").save("out/demo/heatmap.png")  # doctest: +SKIP
"""

from privmob.report.fonts import FontChoice, MissingCJKFontWarning, cjk_font
from privmob.report.heatmap import Heatmap, Panel, heatmap, small_multiples
from privmob.report.html import html_report, write_html_report

__all__ = [
    "FontChoice",
    "Heatmap",
    "MissingCJKFontWarning",
    "Panel",
    "cjk_font",
    "heatmap",
    "html_report",
    "small_multiples",
    "write_html_report",
]
