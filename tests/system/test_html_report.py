"""The offline HTML report: the page's content without a browser, then the page in headless Chromium.

The browser tests need Chromium from the system packages (``apt-get install chromium``) at
``/usr/bin/chromium`` (or ``$PRIVMOB_CHROMIUM``) and the ``playwright`` Python package; they
never download a browser. Chromium runs with a fontconfig that knows only matplotlib's DejaVu
fonts, as on a viewer's computer without a Chinese font: the page's Chinese must come from the
font it embeds. Screenshots go to ``test-artifacts/html-report-*.png``.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from privmob.cli import main
from privmob.errors import InputError
from privmob.privacy.intervals import SELECTION_NOTE
from privmob.release.table import ReleasedTable
from privmob.report.fonts import EMBEDDED_FAMILY, cjk_characters
from privmob.report.html import CSP, html_report, write_html_report
from tests.conftest import REPO, SAMPLES

CHROMIUM = Path(os.environ.get("PRIVMOB_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
ARTIFACTS = REPO / "test-artifacts"
BOUNDARY = SAMPLES / "beijing_boundary.geojson"


# ── fixtures ───────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def demo_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html-report") / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def released(demo_release: Path) -> ReleasedTable:
    return ReleasedTable(
        table=pl.read_parquet(demo_release / "release.parquet"),
        manifest=json.loads((demo_release / "manifest.json").read_text(encoding="utf-8")),
    )


def sample_flows(release: ReleasedTable) -> pl.DataFrame:
    """Made-up OD flows between the released cells of each window (only to exercise drawing)."""
    rows = []
    for (start,), group in release.table.sort("count", descending=True).group_by(
        "window_start", maintain_order=True
    ):
        cells = group.get_column("cell").to_list()
        counts = group.get_column("count").to_list()
        for i in range(min(len(cells) - 1, 4)):
            count = max(counts[i], counts[i + 1]) // 3
            rows.append((cells[i], cells[i + 1], start, count, max(count - 20, 0), count + 20))
    return pl.DataFrame(
        rows,
        schema={"origin": pl.String, "destination": pl.String, "window_start": pl.Datetime("us", "UTC"),
                "count": pl.Int64, "ci_low": pl.Int64, "ci_high": pl.Int64},
        orient="row",
    )


@pytest.fixture(scope="module")
def report_file(
    demo_release: Path, released: ReleasedTable, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    target = tmp_path_factory.mktemp("html-page") / "report.html"
    return write_html_report(demo_release, target, boundary=BOUNDARY, flows=sample_flows(released))


@pytest.fixture(scope="module")
def page_text(report_file: Path) -> str:
    return report_file.read_text(encoding="utf-8")


def embedded_data(page: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="privmob-data">(.*?)</script>', page, re.S)
    assert match, "the page embeds no data block"
    data: dict[str, Any] = json.loads(match.group(1))
    return data


# ── the page without a browser ─────────────────────────────────────────────────────────


class _Refs(HTMLParser):
    """Collects every place a browser could fetch from: attributes, scripts and styles."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.fetchable: list[str] = []
        self.csp: list[str] = []
        self._code_tag: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "meta" and (values.get("http-equiv") or "").lower() == "content-security-policy":
            self.csp.append(values.get("content") or "")
        for name, value in attrs:
            if value and name in {"src", "href", "action", "srcset", "poster", "data", "style", "xlink:href"}:
                self.fetchable.append(value)
        if tag in {"script", "style"} and values.get("type") != "application/json":
            self._code_tag = tag

    def handle_endtag(self, tag: str) -> None:
        if tag == self._code_tag:
            self._code_tag = None

    def handle_data(self, data: str) -> None:
        if self._code_tag:
            self.fetchable.append(data)


def test_page_is_self_contained_with_a_csp_that_forbids_network(page_text: str) -> None:
    refs = _Refs()
    refs.feed(page_text)
    assert refs.csp == [CSP]
    assert "default-src 'none'" in CSP and "img-src data:" in CSP
    for code in refs.fetchable:
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", code, re.I), code[:200]
        assert "@import" not in code
        for rule in re.findall(r"@font-face\s*\{[^}]*\}", code):  # only the embedded font, as data:
            assert re.search(r"\bsrc:url\(data:font/woff2?;base64,[A-Za-z0-9+/=]+\) format", rule), rule[:200]
            assert rule.count("url(") == 1
    assert "font-src data:" in CSP
    # Beyond attributes and code, any remaining address may only be readable text.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page_text, re.I)
    assert "<link rel=\"stylesheet\"" not in page_text and "<iframe" not in page_text
    assert page_text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page_text


class _TextNodes(HTMLParser):
    """The text a reader sees: text nodes outside scripts and styles, and title attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self._code = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._code += tag in {"script", "style"}
        self.text.extend(v for k, v in attrs if v and k in {"title", "aria-label"})

    def handle_endtag(self, tag: str) -> None:
        self._code -= tag in {"script", "style"}

    def handle_data(self, data: str) -> None:
        if not self._code:
            self.text.append(data)


def test_page_embeds_a_subset_font_for_all_its_chinese(page_text: str) -> None:
    """One data: @font-face, a subset of Noto Sans CJK SC with every CJK character of the page."""
    import base64
    import io

    from fontTools.ttLib import TTFont  # type: ignore[import-untyped]

    rules = re.findall(r"@font-face\{[^}]*\}", page_text)
    assert len(rules) == 1
    found = re.search(r'font-family:"([^"]+)".*src:url\(data:font/woff2;base64,([A-Za-z0-9+/=]+)\)', rules[0])
    assert found and found.group(1) == EMBEDDED_FAMILY
    font = TTFont(io.BytesIO(base64.b64decode(found.group(2))))
    nodes = _TextNodes()
    nodes.feed(page_text)
    visible = cjk_characters("".join(nodes.text))
    assert len(visible) > 100  # marking, note, legend, manifest labels
    assert "疫" in visible and "噪" in visible and "（" in visible
    cmap = font.getBestCmap()
    assert [ch for ch in visible if ord(ch) not in cmap] == []
    assert {chr(c) for c in cmap} == set(cjk_characters(page_text))  # exactly the page's, no more
    assert str(font["name"].getDebugName(1)) == "Noto Sans CJK SC"
    assert "Open Font License" in str(font["name"].getDebugName(13))  # the licence travels along
    size = len(base64.b64decode(found.group(2)))
    assert size < 150_000, size  # tens of kB; the page stays one small offline file
    for stack in re.findall(r"font-family:\s*([^;{}]+)", page_text.split("</style>")[0]):
        if "Noto Sans CJK SC" in stack:  # every stack naming a CJK font names the embedded one first
            assert stack.lstrip().startswith(f'"{EMBEDDED_FAMILY}"'), stack


def test_page_embeds_every_released_cell_with_its_interval(page_text: str, released: ReleasedTable) -> None:
    data = embedded_data(page_text)
    index = {cell: i for i, cell in enumerate(data["cells"])}
    labels = [w["label"] for w in data["windows"]]
    assert len(labels) == released.manifest["windows"] == 8
    assert labels[0] == "2026-11-26 00:00–03:00 (UTC+08:00)"
    assert labels[-1] == "2026-11-26 21:00–24:00 (UTC+08:00)"
    start = dt.datetime.fromisoformat(released.manifest["period_start"])
    seen = 0
    for row in released.table.iter_rows(named=True):
        w = int((row["window_start"] - start).total_seconds() // (3 * 3600))
        values = data["windows"][w]["values"][str(index[row["cell"]])]
        if isinstance(values, int):  # the interval is count ± half-width, clipped at 0
            half = data["halfwidth"]
            values = [values, max(values - half, 0), values + half]
        # a fourth element 1 marks a count near the threshold (selection-aware interval)
        assert values[:3] == [row["count"], row["ci_low"], row["ci_high"]]
        assert (len(values) == 4 and values[3] == 1) == row["near_threshold"]
        seen += 1
    assert seen == released.table.height == sum(len(w["values"]) for w in data["windows"])
    # Public keys + boundary: every key cell is there to be drawn as withheld.
    assert data["keyCells"] == released.manifest["key_cells"] == sum(data["isKey"])
    assert len(data["poly"]) == len(data["cells"]) and all(len(p) == 12 for p in data["poly"])
    # Outlines: first vertex absolute, then steps, in 1e-5 degrees; check one against h3.
    import h3

    cell, flat = data["cells"][0], data["poly"][0]
    lng, lat, decoded = 0, 0, []
    for i in range(0, len(flat), 2):
        lng, lat = lng + flat[i], lat + flat[i + 1]
        decoded += [lat / 1e5, lng / 1e5]
    truth = [v for vertex in h3.cell_to_boundary(cell) for v in vertex]
    assert decoded == pytest.approx(truth, abs=1e-5)


def test_page_shows_marking_fingerprint_manifest_and_note(page_text: str, released: ReleasedTable) -> None:
    m = released.manifest
    zh, en = m["marking"].split(" / ")
    assert page_text.count(zh) >= 3  # banner, footer, map label (and the watermark, as an image)
    assert en in page_text
    assert m["signature"]["fingerprint"] in page_text
    for field in ("purpose", "operator", "release_id", "dataset"):
        assert str(m[field]) in page_text
    for stage in m["stages"]:
        assert f"<li>{stage}</li>" in page_text
    assert f"within\n<strong>± {m['ci95_halfwidth']}</strong>" in page_text
    assert f"below\n<strong>about {m['release_threshold']}</strong>" in page_text
    assert "ε = 1" in page_text
    # The exact input statistics are for the operator only; they must not reach the page.
    for field in ("rows_in", "rows_used", "persons", "person_cell_windows", "timings_s"):
        assert f'"{field}"' not in page_text
    assert "rows_in" not in m and "persons" not in m  # not in the release at all (issue 11)
    # A manifest of an older release that still carries exact figures: the page drops them.
    old = {**m, "rows_in": 987_654, "persons": 45_678, "input_sha256": "feedc0de" * 8,
           "identifier_columns_dropped": ["13812345678"],
           "pseudonymisation": {**m["pseudonymisation"], "key_id": "0badc0ffee0ddf00"}}
    page = html_report(ReleasedTable(table=released.table, manifest=old))
    for leaked in ("987,654", "987654", "45,678", "45678", "feedc0de", "13812345678", "0badc0ffee0ddf00"):
        assert leaked not in page


def test_page_says_near_threshold_counts_are_biased_upward(page_text: str, released: ReleasedTable) -> None:
    zh, en = SELECTION_NOTE
    m = released.manifest
    limit = m["release_threshold"] + m["ci95_halfwidth"]
    assert page_text.count(html.escape(en)) >= 2 and page_text.count(html.escape(zh)) >= 2  # legend + note
    assert f"near threshold (count &lt; {limit}): biased upward; its interval is selection-aware" in page_text
    assert "selection-aware (95% given that the count was published" in page_text  # manifest section
    assert 'id="selection-note"' in page_text
    # the demo publishes near-threshold cells, and the page marks exactly those
    data = embedded_data(page_text)
    near = sum(1 for w in data["windows"] for v in w["values"].values()
               if isinstance(v, list) and len(v) == 4)
    assert near == released.table["near_threshold"].sum() > 0


def test_near_flags_of_a_release_without_the_column_follow_the_manifest(released: ReleasedTable) -> None:
    m = released.manifest
    legacy = ReleasedTable(table=released.table.drop("near_threshold"), manifest=m)
    data = embedded_data(html_report(legacy))
    near = sum(1 for w in data["windows"] for v in w["values"].values()
               if isinstance(v, list) and len(v) == 4)
    limit = m["release_threshold"] + m["ci95_halfwidth"]
    assert near == released.table.filter(pl.col("count") < limit).height


def test_unsigned_release_without_boundary_says_so(released: ReleasedTable) -> None:
    manifest = {k: v for k, v in released.manifest.items() if k != "signature"}
    page = html_report(ReleasedTable(table=released.table, manifest=manifest))
    assert 'id="fingerprint" class="unsigned">UNSIGNED' in page
    assert "no boundary file was given: withheld cells are not drawn" in page
    data = embedded_data(page)
    assert data["isKey"] is None and data["boundary"] == []
    assert sorted(data["cells"]) == sorted(released.table.get_column("cell").unique().to_list())


def test_manifest_text_cannot_break_out_of_the_page(released: ReleasedTable, tmp_path: Path) -> None:
    evil = "</script><script>alert(1)</script><img src=x onerror=alert(2)>"
    manifest = {**released.manifest, "operator": evil, "dataset": evil, "marking": evil}
    path = write_html_report(ReleasedTable(table=released.table, manifest=manifest), tmp_path / "r.html",
                             title=evil)
    page = path.read_text(encoding="utf-8")
    assert evil not in page and "<img src=x" not in page
    assert page.count("<script") == 2  # the data block and the page's own script
    assert embedded_data(page)["marking"] == evil


def test_flows_of_districts_span_the_slider_windows(released: ReleasedTable) -> None:
    """Flows between named units (districts) with coordinates, in windows longer than the map's."""
    start = dt.datetime.fromisoformat(released.manifest["period_start"]).astimezone(dt.UTC)
    flows = pl.DataFrame({
        "origin": ["110101", "110105"], "destination": ["110105", "110108"],
        "window_start": [start, start], "count": [40, 25], "ci_low": [10, 0], "ci_high": [70, 55],
        "origin_lat": [39.93, 39.92], "origin_lng": [116.42, 116.49],
        "dest_lat": [39.92, 39.96], "dest_lng": [116.49, 116.30],
    }).with_columns(pl.col("window_start").cast(pl.Datetime("us", "UTC")))
    manifest = {**released.manifest, "flows": {"window": "1d", "windows": 1, "ci95_halfwidth": 30,
                                               "trips": 123_456, "persons": 3_456, "epsilon": 0.5}}
    page = html_report(ReleasedTable(table=released.table, manifest=manifest), flows=flows)
    data = embedded_data(page)["flows"]
    assert data["nodes"] == ["110101", "110105", "110108"]
    assert data["window"] == "1d" and data["labels"] == ["2026-11-26 00:00–24:00 (UTC+08:00)"]
    assert all(len(w) == 2 for w in data["windows"])  # a daily flow shows on all eight 3-hour windows
    assert data["centres"][0] == [116.42, 39.93]
    assert "each flow ± 30 (95%)" in page
    assert "123,456" not in page and "123456" not in page and '"trips"' not in page


def test_window_outside_the_period_is_refused(released: ReleasedTable) -> None:
    with pytest.raises(InputError, match="outside the period"):
        html_report(released, window=8)
    assert 'value="2"' in html_report(released, window=2)


# ── the page in a real browser ─────────────────────────────────────────────────────────


def latin_only_fontconfig(folder: Path) -> Path:
    """A fontconfig file that knows only matplotlib's DejaVu fonts: no font with Chinese glyphs.

    Chromium on Linux finds fonts through fontconfig (``FONTCONFIG_FILE``), so with this it
    draws any character the page does not bring a font for as the missing-glyph box.
    """
    import matplotlib

    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    aliases = "".join(
        f"<alias><family>{generic}</family><prefer><family>{family}</family></prefer></alias>"
        for generic, family in (("sans-serif", "DejaVu Sans"), ("serif", "DejaVu Serif"),
                                ("monospace", "DejaVu Sans Mono"))
    )
    conf = folder / "fonts.conf"
    conf.write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE fontconfig SYSTEM "urn:fontconfig:fonts.dtd">\n'
        f"<fontconfig><dir>{html.escape(str(dejavu))}</dir>"
        f"<cachedir>{html.escape(str(folder / 'fc-cache'))}</cachedir>{aliases}</fontconfig>\n",
        encoding="utf-8",
    )
    return conf


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(
            f"headless Chromium is not installed at {CHROMIUM}: install the system package "
            "(`apt-get install chromium`, as `make test` does where it can) or point "
            "PRIVMOB_CHROMIUM at a Chromium binary"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: it is part of privmob[dev] (pip install -e '.[dev]')")
    env: dict[str, str | float | bool] = {**os.environ}
    env["FONTCONFIG_FILE"] = str(latin_only_fontconfig(tmp_path_factory.mktemp("fonts")))
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
                                     env=env)
        try:
            yield chromium
        finally:
            chromium.close()


def released_state(page: Any) -> tuple[str, frozenset[tuple[str, int]]]:
    """The window the map shows and its (cell, count) hexagons, as drawn."""
    window = page.get_attribute("#map", "data-window")
    cells = page.eval_on_selector_all(
        "#layer-released path[data-count]",
        "els => els.map(e => [e.getAttribute('data-cell'), e.getAttribute('data-count')])",
    )
    return window, frozenset((c, int(n)) for c, n in cells)


def expected_state(release: ReleasedTable) -> list[frozenset[tuple[str, int]]]:
    """(cell, count) per window of the period, from the table (the demo's noise differs per run)."""
    start = dt.datetime.fromisoformat(release.manifest["period_start"])
    out: list[set[tuple[str, int]]] = [set() for _ in range(release.manifest["windows"])]
    for row in release.table.iter_rows(named=True):
        out[int((row["window_start"] - start).total_seconds() // (3 * 3600))].add((row["cell"], row["count"]))
    return [frozenset(s) for s in out]


def hover_released(page: Any) -> int:
    """Move the mouse onto a released hexagon where nothing covers it; return its count."""
    page.evaluate("window.scrollTo(0, 0)")
    found = page.eval_on_selector_all(
        "#layer-released path[data-count]",
        """els => { for (const e of els.slice().reverse()) {
             const r = e.getBoundingClientRect();
             for (const [fx, fy] of [[.5, .5], [.3, .5], [.7, .5], [.5, .3], [.5, .7]]) {
               const x = r.x + r.width * fx, y = r.y + r.height * fy;
               if (document.elementFromPoint(x, y) === e) return [x, y, e.getAttribute('data-count')];
             }
           } return null; }""",
    )
    assert found, "no released hexagon can be pointed at"
    page.mouse.move(found[0], found[1])
    return int(found[2])


def hover_withheld(page: Any) -> bool:
    """Point at empty map (a withheld key cell is painted there) until the tooltip says so."""
    box = page.locator("#map").bounding_box()
    assert box is not None
    for fy in (0.5, 0.4, 0.6, 0.3, 0.7):
        for fx in (0.5, 0.4, 0.6, 0.3, 0.7):
            x, y = box["x"] + box["width"] * fx, box["y"] + box["height"] * fy
            if page.evaluate("([x, y]) => document.elementFromPoint(x, y).id", [x, y]) != "map":
                continue
            page.mouse.move(x, y)
            if page.is_visible("#tooltip") and page.inner_text("#tooltip").startswith("withheld"):
                return True
    return False


def test_report_renders_in_headless_chromium(
    browser: Any, report_file: Path, released: ReleasedTable
) -> None:
    started = time.monotonic()
    ARTIFACTS.mkdir(exist_ok=True)
    expected = expected_state(released)
    threshold = released.manifest["release_threshold"]
    busiest = max(range(len(expected)), key=lambda w: (sum(n for _, n in expected[w]), -w))
    url = report_file.resolve().as_uri()
    page = browser.new_page(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
    console: list[tuple[str, str]] = []
    requests: list[str] = []
    page.on("console", lambda msg: console.append((msg.type, msg.text)))
    page.on("pageerror", lambda exc: console.append(("pageerror", str(exc))))
    page.on("request", lambda req: requests.append(req.url))
    page.goto(url)
    page.wait_for_selector("html[data-ready='1']", timeout=10_000)

    # The page opens on the busiest window: hexagons with counts, hover shows count ± interval.
    assert page.input_value("#window") == str(busiest)
    assert released_state(page) == (str(busiest), expected[busiest])
    assert len(expected[busiest]) >= 1
    assert page.get_attribute("#withheld-canvas", "data-cells") == str(released.manifest["key_cells"])
    assert page.locator("#layer-boundary path").count() >= 1
    count = hover_released(page)
    tip = page.inner_text("#tooltip")
    assert page.is_visible("#tooltip")
    assert f"{count} persons" in tip and "95% interval" in tip
    limit = released.manifest["release_threshold"] + released.manifest["ci95_halfwidth"]
    if count < limit:  # near the threshold: flagged, with its selection-aware interval
        assert "near threshold" in tip and "biased upward" in tip and "selection-aware" in tip
    else:
        assert f"± {released.manifest['ci95_halfwidth']}" in tip and "near threshold" not in tip
    assert page.inner_text("#window-label") in tip
    # Near-threshold hexagons are drawn with a dashed dark outline, and only they.
    drawn = page.eval_on_selector_all(
        "#layer-released path[data-count]",
        "els => els.map(e => [+e.getAttribute('data-count'), getComputedStyle(e).strokeDasharray])")
    assert drawn and all((dash not in ("", "none")) == (n < limit) for n, dash in drawn)
    assert page.is_visible("#selection-note") and "biased upward" in page.inner_text("#selection-note")
    page.screenshot(path=str(ARTIFACTS / "html-report-busiest.png"))

    # A withheld cell says so (not zero): with public keys every key cell was noised.
    assert hover_withheld(page), "no withheld cell found under the pointer"
    info = page.inner_text("#tooltip")
    assert "withheld" in info and "not zero" in info and f"below the release threshold {threshold}" in info

    # The slider: Home goes to window 0 (local-time label), arrow keys step through the day,
    # and every window draws exactly the cells the release has for it.
    page.focus("#window")
    page.keyboard.press("Home")
    assert page.inner_text("#window-label") == "2026-11-26 00:00–03:00 (UTC+08:00)"
    states = [released_state(page)]
    for _ in range(len(expected) - 1):
        page.keyboard.press("ArrowRight")
        states.append(released_state(page))
    assert [w for w, _ in states] == [str(i) for i in range(len(expected))]
    assert [cells for _, cells in states] == expected
    assert len({cells for _, cells in states}) > 1, "moving the slider never changed the map"
    assert page.inner_text("#window-label") == "2026-11-26 21:00–24:00 (UTC+08:00)"
    page.fill("#window", "3")
    assert released_state(page) == ("3", expected[3])
    assert page.inner_text("#window-label") == "2026-11-26 09:00–12:00 (UTC+08:00)"
    assert page.locator("#cells-table tbody tr").count() == min(len(expected[3]), 25)
    page.fill("#window", str(busiest))
    assert page.locator("#layer-flows path").count() >= 1

    # The marking (both languages) and the signature fingerprint are on screen.
    zh, en = released.manifest["marking"].split(" / ")
    assert page.is_visible("#marking")
    banner = page.inner_text("#marking")
    assert zh in banner and en in banner
    box = page.locator("#marking").bounding_box()
    assert box is not None and box["y"] <= 1 and box["height"] >= 40
    fingerprint = released.manifest["signature"]["fingerprint"]
    assert page.inner_text("#fingerprint") == fingerprint and page.is_visible("#fingerprint")
    assert page.is_visible("#noise-note") and page.is_visible("#manifest")
    page.click("#zoom-released")
    hover_released(page)
    page.screenshot(path=str(ARTIFACTS / "html-report-zoomed.png"))
    page.click("#zoom-all")
    page.mouse.move(0, 0)
    page.screenshot(path=str(ARTIFACTS / "html-report-full.png"), full_page=True)

    # Nothing but the page itself was requested, and nothing went wrong.
    assert [u for u in requests if not u.startswith("data:")] == [url]
    errors = [(kind, text) for kind, text in console if kind in {"error", "pageerror"}]
    assert errors == [], errors
    page.close()
    assert time.monotonic() - started < 30


def glyph_images(page: Any, family: str, text: str) -> list[str]:
    """Each character of ``text`` drawn alone on a canvas in ``family``, as PNG data URLs."""
    images: list[str] = page.evaluate(
        """([family, text]) => {
             const c = document.createElement('canvas'); c.width = 48; c.height = 48;
             const g = c.getContext('2d'); const out = [];
             for (const ch of text) {
               g.clearRect(0, 0, 48, 48); g.font = '32px ' + family; g.fillText(ch, 4, 36);
               out.push(c.toDataURL());
             }
             return out; }""",
        [family, text],
    )
    return images


def test_chinese_is_drawn_from_the_embedded_font_where_no_chinese_font_is_installed(
    browser: Any, report_file: Path, page_text: str, released: ReleasedTable
) -> None:
    needed = cjk_characters(page_text)
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
    page.goto(report_file.resolve().as_uri())
    page.wait_for_selector("html[data-ready='1']", timeout=10_000)
    page.evaluate("document.fonts.ready.then(() => true)")

    # The browser has no Chinese font of its own (else this test could not fail): a family
    # that does not exist draws every Chinese character as the same missing-glyph box.
    tofu = glyph_images(page, '"no-such-family", sans-serif', needed)
    assert len(set(tofu)) == 1, "Chromium found a font with Chinese glyphs; the test needs none"

    # The page's own face is loaded and answers for its Chinese text ...
    faces = page.evaluate("[...document.fonts].map(f => [f.family.replace(/\"/g, ''), f.status])")
    assert faces == [[EMBEDDED_FAMILY, "loaded"]]
    zh = released.manifest["marking"].split(" / ")[0]
    assert page.evaluate("([f, t]) => document.fonts.check('16px \"' + f + '\"', t)", [EMBEDDED_FAMILY, zh])
    # ... and every Chinese character of the page draws as its own glyph, none as the box.
    drawn = glyph_images(page, f'"{EMBEDDED_FAMILY}"', needed)
    assert len(set(drawn)) == len(needed) and tofu[0] not in drawn

    # Chromium's own account of the fonts it drew the page's Chinese text with.
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument")["root"]["nodeId"]
    selectors = ("#marking .zh", "#marking-footer span[lang]", ".map-marking", "#selection-note span[lang]",
                 "#noise-note h2 span", "#manifest h2 span", ".marking-text")
    for selector in selectors:
        node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        used = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
        text = page.eval_on_selector(selector, "e => e.textContent")
        chinese = sum(1 for ch in text if cjk_characters(ch))
        assert chinese > 0, selector
        from_page = sum(f["glyphCount"] for f in used if f["isCustomFont"])
        assert from_page == chinese, (selector, used)  # all from the embedded font, nothing else

    # What a reader sees: the banner differs from the same text in a family that does not exist.
    banner = page.locator("#marking .zh")
    page.evaluate("window.scrollTo(0, 0)")
    with_font = banner.screenshot(path=str(ARTIFACTS / "html-report-marking.png"))
    page.eval_on_selector("#marking .zh", "e => { e.style.fontFamily = '\"no-such-family\", sans-serif'; }")
    without = banner.screenshot()
    assert with_font != without
    page.close()


def test_adaptive_release_draws_each_cell_at_its_resolution_in_chromium(browser: Any, tmp_path: Path) -> None:
    """Cells of res 4, 6 and 8 in one page: coarse drawn first, density colours, resolution on hover."""
    from tests.unit.test_mixed_resolution import LEAVES, ROWS, mixed_release

    ARTIFACTS.mkdir(exist_ok=True)
    target = write_html_report(mixed_release(), tmp_path / "adaptive.html", boundary=BOUNDARY)
    page = browser.new_page(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
    console: list[tuple[str, str]] = []
    page.on("console", lambda msg: console.append((msg.type, msg.text)))
    page.on("pageerror", lambda exc: console.append(("pageerror", str(exc))))
    page.goto(target.resolve().as_uri())
    page.wait_for_selector("html[data-ready='1']", timeout=10_000)

    drawn = page.eval_on_selector_all(
        "#layer-released path[data-count]",
        "els => els.map(e => [e.getAttribute('data-cell'), +e.getAttribute('data-res'), "
        "e.getAttribute('fill')])")
    assert sorted(c for c, _, _ in drawn) == sorted(c for c, _ in ROWS)
    resolutions = [r for _, r, _ in drawn]
    assert resolutions == sorted(resolutions) and set(resolutions) == {4, 6, 8}  # coarse first: fine on top
    fills = {c: f for c, _, f in drawn}
    # by density: the big res-4 cell (60 persons over ~1,300 km²) is the darkest, not the brightest
    assert fills[ROWS[0][0]] == "rgb(68,1,84)"
    assert page.get_attribute("#withheld-canvas", "data-cells") == str(len(LEAVES))
    assert "persons per km², log scale" in page.eval_on_selector("#colour-bar", "e => e.textContent")
    assert page.is_visible("#adaptive-note") and "adaptive" in page.inner_text("#adaptive-note")

    for res in (8, 4):  # hover a fine and the coarse cell: each says its own resolution and area
        box = page.eval_on_selector_all(
            f"#layer-released path[data-res='{res}']",
            """els => { for (const e of els.slice().reverse()) { const r = e.getBoundingClientRect();
                 const x = r.x + r.width / 2, y = r.y + r.height / 2;
                 if (document.elementFromPoint(x, y) === e) return [x, y]; } return null; }""")
        assert box, f"no res-{res} cell can be pointed at"
        page.mouse.move(box[0], box[1])
        tip = page.inner_text("#tooltip")
        assert f"H3 resolution {res} · area ≈" in tip and "persons per km²" in tip
    page.screenshot(path=str(ARTIFACTS / "html-report-adaptive.png"))
    assert hover_withheld(page), "no withheld cell found under the pointer"
    assert "H3 resolution" in page.inner_text("#tooltip")
    errors = [(kind, text) for kind, text in console if kind in {"error", "pageerror"}]
    assert errors == [], errors
    page.close()
