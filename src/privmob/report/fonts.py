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
"""

from __future__ import annotations

import functools
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
    "ENV_VAR",
    "FontChoice",
    "MissingCJKFontWarning",
    "cjk_font",
    "rc_params",
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
