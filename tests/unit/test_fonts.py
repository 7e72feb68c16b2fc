"""The font the HTML report embeds for its Chinese text, without a browser.

The page carries a subset of Noto Sans CJK SC (a declared dependency: noto-cjk-sans-otc) as
one ``data:`` ``@font-face``; these tests read that font back with fontTools. How it draws
in a browser with no Chinese font installed is checked in tests/system/test_html_report.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import re
from collections.abc import Iterator
from html.parser import HTMLParser

import h3
import polars as pl
import pytest
from fontTools.ttLib import TTFont  # type: ignore[import-untyped]

from privmob.config import DEFAULT_MARKING
from privmob.release.table import ReleasedTable
from privmob.report import fonts
from privmob.report.html import html_report

FONT_FACE = re.compile(r"@font-face\{[^}]*\}")
DATA_URL = re.compile(r'src:url\(data:font/(woff2|woff);base64,([A-Za-z0-9+/=]+)\) format\("\1"\)')


class _Text(HTMLParser):
    """Every text node and rendered attribute text of a page (not scripts or styles)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"script", "style"}:
            self._skip += 1
        self.parts.extend(v for k, v in attrs if v and k in {"title", "aria-label", "alt", "placeholder"})

    def handle_endtag(self, tag: str) -> None:
        if tag in {"script", "style"}:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def page_text(page: str) -> str:
    parser = _Text()
    parser.feed(page)
    return "".join(parser.parts)


def embedded_font(page: str) -> tuple[str, TTFont, str]:
    """(format, font, the rule) of the page's only @font-face."""
    rules = FONT_FACE.findall(page)
    assert len(rules) == 1, f"{len(rules)} @font-face rules"
    match = DATA_URL.search(rules[0])
    assert match, rules[0][:200]
    return match.group(1), TTFont(io.BytesIO(base64.b64decode(match.group(2)))), rules[0]


@pytest.fixture(scope="module")
def release() -> ReleasedTable:
    """A two-cell release with a Chinese operator name and purpose beside the marking."""
    cell = h3.latlng_to_cell(39.9, 116.4, 7)
    table = pl.DataFrame({
        "cell": [cell, h3.grid_disk(cell, 1)[1]],
        "window_start": [dt.datetime(2026, 11, 25, 16, tzinfo=dt.UTC)] * 2,
        "count": [60, 90],
    }).with_columns(pl.col("window_start").cast(pl.Datetime("us", "UTC")))
    manifest = {
        "marking": DEFAULT_MARKING, "operator": "北京市疾控中心", "purpose": "密接轨迹热力图（测试）",
        "period_start": "2026-11-26T00:00:00+08:00", "window": "3h", "windows": 1,
        "timezone": "Asia/Shanghai", "release_threshold": 50, "ci95_halfwidth": 20,
    }
    return ReleasedTable(table=table, manifest=manifest)


@pytest.fixture
def no_cjk_font(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make the font search find nothing (as on a machine without CJK fonts)."""
    monkeypatch.setattr(fonts, "_candidate_files", lambda: iter(()))
    fonts._find.cache_clear()
    yield
    fonts._find.cache_clear()


def test_page_embeds_one_data_font_covering_every_chinese_character(release: ReleasedTable) -> None:
    page = html_report(release)
    flavor, font, rule = embedded_font(page)
    assert flavor == "woff2"  # brotli is a dependency; WOFF (zlib) only where it is missing
    needed = fonts.cjk_characters(page_text(page))
    assert "北" in needed and "疫" in needed and "（" in needed  # operator, marking, full-width
    cmap = font.getBestCmap()
    assert [ch for ch in needed if ord(ch) not in cmap] == []
    # exactly the page's characters (text nodes plus the data block, which holds the same)
    assert fonts.cjk_characters("".join(map(chr, cmap))) == fonts.cjk_characters(page)
    assert f"unicode-range:{fonts.unicode_range(fonts.cjk_characters(page))}" in rule
    assert f'font-family:"{fonts.EMBEDDED_FAMILY}"' in rule
    assert len(font.getGlyphOrder()) == len(needed) + 1  # a subset: its characters and .notdef
    assert len(rule) < 200_000


def test_subset_keeps_the_fonts_copyright_and_licence(release: ReleasedTable) -> None:
    page = html_report(release)
    _, font, _ = embedded_font(page)
    names = font["name"]
    assert "Open Font License" in str(names.getDebugName(13))
    assert "scripts.sil.org/OFL" in str(names.getDebugName(14))
    assert "Adobe" in str(names.getDebugName(0))
    assert str(names.getDebugName(1)) == "Noto Sans CJK SC"  # the Simplified Chinese face of the TTC
    # and the page's CSS says so in plain text, right before the rule
    assert re.search(r"/\* Noto Sans CJK SC, subset of \d+ characters; SIL Open Font License 1\.1 \*/"
                     r"@font-face\{", page)


def test_css_stacks_put_the_embedded_family_first(release: ReleasedTable) -> None:
    page = html_report(release)
    stacks = re.findall(r"font-family:\s*([^;{}]+)", page.split("</style>")[0].split("@font-face")[-1])
    zh = [s for s in stacks if "Noto Sans CJK SC" in s]
    assert zh and all(s.strip().startswith(f'"{fonts.EMBEDDED_FAMILY}"') for s in zh)


def test_watermark_draws_chinese_as_outlines(release: ReleasedTable) -> None:
    """The watermark tile is an image: it cannot use the page's font, so it carries outlines."""
    page = html_report(release)
    encoded = re.search(r'\.page-watermark\{background-image:url\("data:image/svg\+xml;base64,([^"]+)"\)',
                        page)
    assert encoded
    tile = base64.b64decode(encoded.group(1)).decode("utf-8")
    zh = DEFAULT_MARKING.split(" / ")[0]
    assert zh not in tile and "<path" in tile
    outline = fonts.text_outline(zh, 22)
    assert outline is not None and outline[0] in tile and 150 < outline[1] < 420


def test_without_a_cjk_font_the_page_says_so_and_warns(no_cjk_font: None, release: ReleasedTable) -> None:
    with pytest.warns(fonts.MissingCJKFontWarning, match="Chinese character"):
        page = html_report(release)
    assert FONT_FACE.search(page) is None
    assert re.search(r'<p class="warn" id="font-note">[^<]*no font with Chinese glyphs was found[^<]*'
                     r"empty boxes", page)
    assert "疫情防控" in page  # the Chinese text is still there, for viewers who have a font


def test_a_character_no_font_has_is_named_on_the_page(release: ReleasedTable) -> None:
    rare = "\U0002a6d6"  # CJK extension B: not in Noto Sans CJK SC
    manifest = {**release.manifest, "operator": f"疾控{rare}"}
    with pytest.warns(fonts.MissingCJKFontWarning, match="1 Chinese character"):
        page = html_report(ReleasedTable(table=release.table, manifest=manifest))
    _, font, _ = embedded_font(page)
    assert ord("疾") in font.getBestCmap() and ord(rare) not in font.getBestCmap()
    assert "1 Chinese character(s) have no glyph" in page


def test_unicode_range_merges_runs() -> None:
    assert fonts.unicode_range("一丁七中") == "U+4E00-4E01,U+4E03,U+4E2D"
    assert fonts.cjk_characters("a1·，中“") == "中，"
    assert fonts.embed_cjk("English only, 123") == fonts.EmbeddedFont("")
    assert fonts.EmbeddedFont("").css() == ""


def test_without_brotli_the_subset_is_woff(monkeypatch: pytest.MonkeyPatch, release: ReleasedTable) -> None:
    monkeypatch.setattr(fonts, "_has_brotli", lambda: False)
    fonts._subset.cache_clear()
    try:
        flavor, font, _ = embedded_font(html_report(release))
    finally:
        fonts._subset.cache_clear()
    assert flavor == "woff" and font.flavor == "woff"
    assert "疫" in fonts.cjk_characters("".join(map(chr, font.getBestCmap())))
