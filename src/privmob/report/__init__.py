"""Reports drawn from a release: static heatmaps (PNG and PDF) and an offline HTML page.

Everything here is post-processing of a :class:`~privmob.release.table.ReleasedTable`: it reads
only released counts and the manifest, so drawing spends no privacy budget.

>>> from privmob import report  # doctest: +SKIP
>>> report.heatmap("out/demo", boundary="city.geojson").save("out/demo/heatmap.png")  # doctest: +SKIP

The drawing stack (Matplotlib, fontTools, the Noto CJK font) is the ``[report]`` extra: a
plain ``pip install privmob`` releases without it. Importing this package (or any module in
it) without the extra raises :class:`~privmob.errors.MissingExtraError` naming
``pip install 'privmob[report]'``, not a bare ``ModuleNotFoundError`` from deep inside.
"""

from privmob.errors import import_extra

#: What importing the report package needs: (module, distribution). The font package and
#: brotli are optional within the extra (a system CJK font, or WOFF instead of WOFF2, stand in).
REQUIRED = (("matplotlib", "matplotlib"), ("fontTools", "fonttools"))

for _module, _package in REQUIRED:
    import_extra(_module, extra="report", package=_package,
                 purpose="privmob.report (the heatmaps and the HTML report)")

# After the check on purpose: a missing extra is named before any drawing module fails.
from privmob.report.fonts import FontChoice, MissingCJKFontWarning, cjk_font  # noqa: E402
from privmob.report.heatmap import Heatmap, Panel, heatmap, small_multiples  # noqa: E402
from privmob.report.html import html_report, write_html_report  # noqa: E402

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
