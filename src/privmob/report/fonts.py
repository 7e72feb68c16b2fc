"""A font that can draw the marking in Chinese, or a clean fallback that never draws tofu.

A release is marked in Chinese and English ("疫情防控内部信息 · 未经授权不得传播 / ..."). A
figure drawn with a font that lacks those glyphs shows empty boxes ("tofu") where the
marking should be, which is worse than no Chinese at all: the reader sees that something
is missing and not what. So :func:`cjk_font` looks for a font whose glyphs cover the text,
in this order:

1. the file named by the environment variable ``PRIVMOB_CJK_FONT`` (an operator's choice);
2. the pip package ``noto-cjk-sans-otc`` (Google's Noto Sans CJK, SIL Open Font License),
   privmob's declared dependency for reports;
3. system fonts known to matplotlib or installed in the usual folders: Noto Sans CJK,
   Source Han Sans, WenQuanYi, Microsoft YaHei, PingFang, Hiragino, SimHei, ...

Every candidate is checked glyph by glyph (FreeType's ``get_char_index`` must be non-zero
for each character that DejaVu Sans, matplotlib's own font, cannot draw). With none found,
it warns with :class:`MissingCJKFontWarning` and the returned :class:`FontChoice` draws
only text its fallback font covers: :meth:`FontChoice.safe` keeps the English half of a
bilingual "中文 / English" text and drops any other character it cannot draw.

PDF output embeds glyphs as Type 3 fonts (``pdf.fonttype = 3``): matplotlib's Type 42
path writes CFF-flavoured OpenType fonts (as Noto Sans CJK is) into a TrueType slot,
which viewers reject or repair; Type 3 is valid for every font and keeps text extractable.

The HTML report cannot count on the *viewer's* computer having a Chinese font either, so
:func:`embed_cjk` cuts the same font down to the Chinese characters the page uses (one or
two hundred glyphs, tens of kilobytes) with fontTools and the page carries it as a ``data:``
WOFF2 ``@font-face``. Noto Sans CJK is under the SIL Open Font License 1.1, which allows
embedding a subset; the subset keeps the font's whole ``name`` table (copyright and
licence entries included). :func:`text_outline` turns text into SVG outlines for images
that cannot use the page's fonts (the watermark tile).
"""

from __future__ import annotations

import base64
import functools
import io
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib import font_manager, ft2font

__all__ = [
    "CJK_FAMILIES",
    "EMBEDDED_FAMILY",
    "ENV_VAR",
    "EmbeddedFont",
    "FontChoice",
    "MissingCJKFontWarning",
    "cjk_characters",
    "cjk_font",
    "embed_cjk",
    "rc_params",
    "text_outline",
]

#: Environment variable naming a font file (.ttf, .otf, .ttc) to use for Chinese text.
ENV_VAR = "PRIVMOB_CJK_FONT"

#: Families with Simplified Chinese glyphs, most preferred first (system fonts).
CJK_FAMILIES: tuple[str, ...] = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "Noto Sans CJK TC",
    "Source Han Sans TC",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Microsoft YaHei",
    "PingFang SC",
    "Hiragino Sans GB",
    "Heiti SC",
    "SimHei",
    "Noto Sans CJK JP",
    "Source Han Sans",
    "Noto Serif CJK SC",
    "AR PL UMing CN",
)

#: Pip-installed font packages: (import name, file inside it). OFL-licensed only.
_PACKAGES: tuple[tuple[str, str], ...] = (("noto_cjk_sans_otc", "NotoSansCJK-Regular.ttc"),)

#: File-name patterns of CJK fonts matplotlib's cached font list may not know yet.
_FILE_PATTERN = re.compile(
    r"(notosanscjk|notoserifcjk|notosanssc|sourcehansans|wqy|wenquanyi|simhei|msyh|pingfang|"
    r"hiragino|uming|ukai)",
    re.IGNORECASE,
)

#: The family matplotlib ships; the fallback for everything a CJK font lacks, and alone
#: when no CJK font is found.
FALLBACK_FAMILY = "DejaVu Sans"

_BILINGUAL_SEPARATOR = " / "


class MissingCJKFontWarning(UserWarning):
    """No installed font can draw the Chinese text; the figure shows the English only."""


@dataclass(frozen=True)
class FontChoice:
    """The font families a figure is drawn with.

    Attributes
    ----------
    family
        Family name of the CJK font registered with matplotlib, or ``None`` when none was
        found (then only :data:`FALLBACK_FAMILY` is used).
    path
        The font file (a ``.ttc`` collection holds several faces).
    face_index
        The face inside ``path`` whose family is ``family``.
    source
        Where it was found: ``"env PRIVMOB_CJK_FONT"``, ``"package noto_cjk_sans_otc"``,
        ``"system"`` or ``"none"``.
    """

    family: str | None
    path: Path | None = None
    face_index: int = 0
    source: str = "none"

    @property
    def has_cjk(self) -> bool:
        """Whether Chinese text can be drawn."""
        return self.family is not None

    @property
    def families(self) -> list[str]:
        """``font.sans-serif`` list: the CJK family first, matplotlib's own font for the rest."""
        return [self.family, FALLBACK_FAMILY] if self.family else [FALLBACK_FAMILY]

    def can_draw(self, text: str) -> bool:
        """Whether every character of ``text`` has a glyph in one of :attr:`families`."""
        return all(self._covers(ch) for ch in text)

    def safe(self, text: str) -> str:
        """``text`` reduced to what these fonts can draw, so no glyph is ever a tofu box.

        A bilingual ``"中文 / English"`` text keeps the halves that can be drawn whole;
        otherwise characters without a glyph are dropped and spacing tidied.

        Examples
        --------
        >>> FontChoice(None).safe("疫情防控内部信息 / Internal information")
        'Internal information'
        >>> FontChoice(None).safe("北京 Beijing")
        'Beijing'
        """
        if self.can_draw(text):
            return text
        if _BILINGUAL_SEPARATOR in text:
            halves = [h.strip() for h in text.split(_BILINGUAL_SEPARATOR)]
            drawable = [h for h in halves if h and self.can_draw(h)]
            if drawable:
                return _BILINGUAL_SEPARATOR.join(drawable)
        kept = "".join(ch for ch in text if self._covers(ch))
        kept = re.sub(r"\s*·\s*(?=·|$)", "", kept)  # separators left without neighbours
        kept = re.sub(r"[ \t]{2,}", " ", kept)
        return kept.strip(" ·-—/|,;:")

    def _covers(self, ch: str) -> bool:
        if ch in "\n\t ":
            return True
        if _glyph_index(_fallback_path(), 0, ch):
            return True
        return self.path is not None and bool(_glyph_index(str(self.path), self.face_index, ch))


def rc_params(choice: FontChoice) -> dict[Any, Any]:
    """Matplotlib settings for drawing and saving a figure with ``choice``.

    Used as ``matplotlib.rc_context(rc_params(choice))`` around both building and saving a
    figure (tick labels are created at draw time and read the font settings then).
    """
    return {
        "font.family": "sans-serif",
        "font.sans-serif": choice.families,
        "pdf.fonttype": 3,
        "ps.fonttype": 3,
        "svg.fonttype": "path",
        "axes.unicode_minus": True,
    }


def cjk_font(text: str = "疫情防控内部信息 · 未经授权不得传播", *, stacklevel: int = 2) -> FontChoice:
    """Find, register and return a font that can draw ``text``; warn when there is none.

    The search (see the module docstring) runs once per distinct ``text``; the warning is
    repeated on every call that finds nothing, so each figure drawn without Chinese says so.

    Parameters
    ----------
    text
        Characters the font must cover (those matplotlib's DejaVu Sans lacks). Defaults to
        the Chinese half of the default marking.
    stacklevel
        Passed to :func:`warnings.warn`, so the warning names the caller's line.

    Returns
    -------
    FontChoice
        ``has_cjk`` is false when nothing was found.
    """
    choice = _find(text)
    if not choice.has_cjk and _missing_sample(text):
        warnings.warn(
            "no installed font has the Chinese glyphs of the marking "
            f"({_missing_sample(text)}); the figure shows the English text only. Install "
            "one: `pip install noto-cjk-sans-otc` (privmob[report]) or "
            "`apt-get install fonts-noto-cjk`, or set PRIVMOB_CJK_FONT=/path/to/font.otf",
            MissingCJKFontWarning,
            stacklevel=stacklevel,
        )
    return choice


@functools.lru_cache(maxsize=32)
def _find(text: str) -> FontChoice:
    needed = {ch for ch in text if not ch.isspace() and not _glyph_index(_fallback_path(), 0, ch)}
    for path, source in _candidate_files():
        for index, family in _faces(path):
            if all(_glyph_index(str(path), index, ch) for ch in needed):
                registered = _register(path, index, family)
                if registered is not None:
                    return FontChoice(registered, path, index, source)
    return FontChoice(None)


def _candidate_files() -> Iterator[tuple[Path, str]]:
    """Font files to try, best first (a file may appear twice; checking is cheap)."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        path = Path(env).expanduser()
        if path.is_file():
            yield path, f"env {ENV_VAR}"
        else:
            warnings.warn(
                f"{ENV_VAR}={env} is not a font file; looking for other fonts",
                MissingCJKFontWarning,
                stacklevel=4,
            )
    for package, filename in _PACKAGES:
        found = _package_file(package, filename)
        if found is not None:
            yield found, f"package {package}"
    known = {entry.name: Path(entry.fname) for entry in font_manager.fontManager.ttflist}
    for family in CJK_FAMILIES:
        if family in known:
            yield known[family], "system"
    for name in sorted(font_manager.findSystemFonts()):
        if _FILE_PATTERN.search(Path(name).name.replace("-", "").replace("_", "")):
            yield Path(name), "system"


def _package_file(package: str, filename: str) -> Path | None:
    from importlib import resources

    try:
        path = Path(str(resources.files(package).joinpath(filename)))
    except (ModuleNotFoundError, TypeError):
        return None
    return path if path.is_file() else None


def _faces(path: Path) -> list[tuple[int, str]]:
    """(face index, family name) of each face, preferred Chinese families first."""
    try:
        first = ft2font.FT2Font(str(path))
        faces = [(0, first.family_name)] + [
            (i, ft2font.FT2Font(str(path), face_index=i).family_name) for i in range(1, first.num_faces)
        ]
    except (OSError, RuntimeError, ValueError):
        return []
    rank = {family: i for i, family in enumerate(CJK_FAMILIES)}
    return sorted(faces, key=lambda face: (rank.get(face[1], len(rank)), face[0]))


def _register(path: Path, index: int, family: str) -> str | None:
    """Make ``family`` resolvable by matplotlib, to exactly this file and face."""
    names = {(e.name, Path(e.fname).resolve()) for e in font_manager.fontManager.ttflist}
    if (family, path.resolve()) not in names:
        try:
            font_manager.fontManager.addfont(str(path))
        except (OSError, RuntimeError, ValueError):
            return None
    try:
        found = font_manager.findfont(
            font_manager.FontProperties(family=family), fallback_to_default=False
        )
    except ValueError:
        return None
    # Another file of the same family name may win the lookup; it must cover the glyphs
    # too, which the caller checked only for ``path`` -- so accept only this file.
    return family if Path(found).resolve() == path.resolve() else None


@functools.lru_cache(maxsize=1)
def _fallback_path() -> str:
    return str(font_manager.findfont(font_manager.FontProperties(family=FALLBACK_FAMILY)))


@functools.lru_cache(maxsize=64)
def _font(path: str, index: int) -> ft2font.FT2Font:
    return ft2font.FT2Font(path, face_index=index)


@functools.lru_cache(maxsize=8192)
def _glyph_index(path: str, index: int, ch: str) -> int:
    try:
        return int(_font(path, index).get_char_index(ord(ch)))
    except (OSError, RuntimeError, ValueError):
        return 0


def _missing_sample(text: str) -> str:
    missing = [
        ch for ch in dict.fromkeys(text) if not ch.isspace() and not _glyph_index(_fallback_path(), 0, ch)
    ]
    return "".join(missing[:8]) + ("…" if len(missing) > 8 else "")


# ── the HTML report: an embedded subset, and outlines for images ──────────────────────

#: CSS family name of the subset the HTML report embeds. No installed font is called this,
#: so the page's Chinese is drawn from the embedded glyphs and never silently from chance.
EMBEDDED_FAMILY = "privmob CJK"

#: Code points the embedded face serves (``unicode-range``): CJK ideographs, radicals,
#: CJK punctuation, kana, full-width forms. Latin letters, digits and ASCII punctuation stay
#: with the page's Latin font, so English text looks the same with or without the subset.
CJK_BLOCKS: tuple[tuple[int, int], ...] = (
    (0x2E80, 0x2FDF),  # radicals
    (0x2FF0, 0x9FFF),  # ideographic description, CJK symbols and punctuation, kana, ..., unified
    (0xF900, 0xFAFF),  # compatibility ideographs
    (0xFE10, 0xFE1F),  # vertical forms
    (0xFE30, 0xFE4F),  # compatibility forms
    (0xFF00, 0xFFEF),  # half- and full-width forms
    (0x20000, 0x3134F),  # extensions B-G
)


@dataclass(frozen=True)
class EmbeddedFont:
    """A subset of a CJK font for a web page, or why there is none.

    Attributes
    ----------
    characters
        The CJK characters the subset draws, sorted.
    missing
        CJK characters of the text no font on this machine could draw (the page says so).
    data
        The subset font file (WOFF2, or WOFF where brotli is missing); empty when none.
    format
        ``"woff2"`` or ``"woff"`` (``""`` when nothing is embedded).
    face
        Full name of the source face, e.g. ``"Noto Sans CJK SC"``.
    licence
        The source face's licence entry (``name`` ID 13), kept inside the subset too.
    """

    characters: str
    missing: str = ""
    data: bytes = b""
    format: str = ""
    face: str = ""
    licence: str = ""

    @property
    def embedded(self) -> bool:
        """Whether the page carries a font."""
        return bool(self.data)

    def css(self, family: str = EMBEDDED_FAMILY) -> str:
        """One ``@font-face`` rule with the subset as a base64 ``data:`` URL (``""`` if none).

        ``unicode-range`` lists exactly the subset's characters, so browsers use the face
        for those and keep every other character with the next family in the stack. Only
        the regular weight is embedded; browsers embolden it for bold text.
        """
        if not self.data:
            return ""
        encoded = base64.b64encode(self.data).decode("ascii")
        licence = "SIL Open Font License 1.1" if "Open Font License" in self.licence else "see its name table"
        note = f"/* {_css_comment(self.face)}, subset of {len(self.characters)} characters; {licence} */"
        return (
            f'{note}@font-face{{font-family:"{family}";font-style:normal;font-weight:400;'
            f"font-display:block;src:url(data:font/{self.format};base64,{encoded}) "
            f'format("{self.format}");unicode-range:{unicode_range(self.characters)}}}'
        )


def cjk_characters(text: str) -> str:
    """The distinct CJK characters of ``text`` (see :data:`CJK_BLOCKS`), sorted."""
    return "".join(sorted({ch for ch in text if _in_cjk_blocks(ord(ch))}))


def embed_cjk(text: str, *, stacklevel: int = 2) -> EmbeddedFont:
    """A subset of the CJK font :func:`cjk_font` would pick, covering ``text``'s CJK characters.

    Warns with :class:`MissingCJKFontWarning` when some or all of them have no font here:
    the caller must then say so where people read (a page cannot show the boxes' cause).

    Parameters
    ----------
    text
        All the text of the page (characters outside :data:`CJK_BLOCKS` are ignored).
    stacklevel
        Passed to :func:`warnings.warn`.
    """
    chars = cjk_characters(text)
    if not chars:
        return EmbeddedFont("")
    choice = _find(chars)
    if not choice.has_cjk:  # some rare character missing: embed what the best font has
        choice = _find(cjk_characters("疫情防控内部信息"))
    path = str(choice.path) if choice.path is not None else ""
    covered = "".join(ch for ch in chars if path and _glyph_index(path, choice.face_index, ch))
    missing = "".join(ch for ch in chars if ch not in covered)
    if missing:
        warnings.warn(
            f"no installed font has the glyph(s) of {len(missing)} Chinese character(s) of the page: "
            "a viewer without such a font sees empty boxes there. Install "
            "one: `pip install noto-cjk-sans-otc` (privmob[report]) or `apt-get install "
            "fonts-noto-cjk`, or set PRIVMOB_CJK_FONT=/path/to/font.otf",
            MissingCJKFontWarning,
            stacklevel=stacklevel,
        )
    if not covered or choice.path is None:
        return EmbeddedFont("", missing=missing)
    data, flavor, face, licence = _subset(str(choice.path), choice.face_index, covered)
    return EmbeddedFont(covered, missing=missing, data=data, format=flavor, face=face, licence=licence)


def text_outline(text: str, size: float, choice: FontChoice | None = None) -> tuple[str, float] | None:
    """``text`` as SVG path data (baseline at y = 0, starting at x = 0) and its width.

    For images, which cannot use the page's fonts: an SVG ``data:`` image is drawn in
    isolation, with only the viewer's installed fonts. ``choice`` defaults to the font
    :func:`cjk_font` finds for ``text``. ``None`` when there is no such font or it lacks a
    glyph of ``text``.
    """
    choice = _find(text) if choice is None else choice
    if choice.path is None:
        return None
    from fontTools.pens.svgPathPen import SVGPathPen  # type: ignore[import-untyped]
    from fontTools.pens.transformPen import TransformPen  # type: ignore[import-untyped]

    font = _tt_font(str(choice.path), choice.face_index)
    cmap = font.getBestCmap()
    glyphs = font.getGlyphSet()
    scale = size / font["head"].unitsPerEm
    pen = SVGPathPen(glyphs, ntos=_short_number)
    x = 0.0
    for ch in text:
        name = cmap.get(ord(ch))
        if name is None:
            return None
        glyph = glyphs[name]
        glyph.draw(TransformPen(pen, (scale, 0, 0, -scale, x, 0)))
        x += glyph.width * scale
    return pen.getCommands(), x


def unicode_range(characters: str) -> str:
    """CSS ``unicode-range`` value for exactly ``characters`` (runs merged: ``U+4E00-4E01``)."""
    points = sorted({ord(ch) for ch in characters})
    runs: list[list[int]] = []
    for point in points:
        if runs and point == runs[-1][1] + 1:
            runs[-1][1] = point
        else:
            runs.append([point, point])
    return ",".join(f"U+{a:X}" if a == b else f"U+{a:X}-{b:X}" for a, b in runs)


@functools.lru_cache(maxsize=16)
def _subset(path: str, index: int, characters: str) -> tuple[bytes, str, str, str]:
    """(font file, format, face name, licence text) of ``characters`` cut from one face.

    Keeps the whole ``name`` table: the OFL asks that the copyright and licence travel with
    the font. Keeps only the layout features horizontal text applies by default, not
    ``locl`` or ``vert``: their Japanese, Korean, Traditional and vertical alternates would
    nearly double the subset and the page draws none of them (its face is already SC).
    """
    from fontTools import subset  # type: ignore[import-untyped]

    options = subset.Options()
    options.font_number = index
    options.layout_features = ["ccmp", "kern", "liga", "calt", "mark", "mkmk"]
    options.name_IDs = ["*"]
    options.name_languages = ["*"]
    options.name_legacy = True
    options.flavor = "woff2" if _has_brotli() else "woff"
    font = subset.load_font(path, options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=characters)
    subsetter.subset(font)
    names = font["name"]
    face = str(names.getDebugName(4) or names.getDebugName(1) or Path(path).name)
    licence = str(names.getDebugName(13) or "")
    out = io.BytesIO()
    subset.save_font(font, out, options)
    return out.getvalue(), str(options.flavor), face, licence


def _has_brotli() -> bool:
    """WOFF2 needs brotli (``brotli`` or ``brotlicffi``); without it WOFF (zlib) is written."""
    from importlib.util import find_spec

    return find_spec("brotli") is not None or find_spec("brotlicffi") is not None


@functools.lru_cache(maxsize=4)
def _tt_font(path: str, index: int) -> Any:
    from fontTools.ttLib import TTFont  # type: ignore[import-untyped]

    return TTFont(path, fontNumber=index, lazy=True)


def _in_cjk_blocks(point: int) -> bool:
    return any(lo <= point <= hi for lo, hi in CJK_BLOCKS)


def _short_number(value: float) -> str:
    text = f"{value:.1f}".rstrip("0").rstrip(".")  # a tenth of a pixel: finer than the eye
    return "0" if text in ("-0", "") else text


def _css_comment(text: str) -> str:
    return text.replace("*/", "* /")
