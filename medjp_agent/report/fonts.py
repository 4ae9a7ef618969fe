"""Japanese glyphs in plots and in the HTML page, even on a machine with no CJK font installed.

The ``matplotlib-fontja`` package ships IPAexGothic. Plots draw with it as the fallback after DejaVu Sans (Latin,
Greek and symbols stay in matplotlib's default face). The HTML page names the usual Japanese system fonts and, last,
an embedded subset of IPAexGothic holding only the characters the page uses (a few KB), so a reader's browser never
shows tofu boxes and the page still loads nothing from anywhere.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: The family name IPAexGothic registers under, and the one the HTML page gives its embedded subset.
FONT_FAMILY = "IPAexGothic"
EMBEDDED_FAMILY = "medjp-ja"
#: The embedded subset first: it holds only the page's non-ASCII characters, so Latin text falls through to the
#: Latin faces, and kanji never depend on what is installed. Chromium on Linux does not go on down the list for a
#: character once an installed family (Arial's alias, ``sans-serif``, ``system-ui``) has matched, so a subset
#: placed after them would never be used there. The Japanese system fonts follow, for text the subset lacks.
CSS_FONT_STACK = (f'"{EMBEDDED_FAMILY}", "Hiragino Sans", "Hiragino Kaku Gothic ProN", "Yu Gothic UI", '
                  '"Yu Gothic", Meiryo, "Noto Sans CJK JP", "Noto Sans JP", IPAexGothic, "Helvetica Neue", Arial, '
                  'sans-serif')


def japanese_font_file() -> Path | None:
    """IPAexGothic's TTF from ``matplotlib-fontja``; None where the package is not installed.

    Found through the package's import spec: importing the package would set matplotlib's global font.
    """
    spec = importlib.util.find_spec("matplotlib_fontja")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "fonts" / "ipaexg.ttf"
    return path if path.is_file() else None


@functools.cache
def _register() -> bool:
    from matplotlib import font_manager

    path = japanese_font_file()
    if path is not None:
        font_manager.fontManager.addfont(str(path))
    return path is not None


@contextmanager
def japanese_plots() -> Iterator[None]:
    """Figures made (and saved) inside draw Japanese labels with IPAexGothic where DejaVu Sans has no glyph."""
    import matplotlib

    families = ["DejaVu Sans", FONT_FAMILY] if _register() else ["DejaVu Sans"]
    with matplotlib.rc_context({"font.family": families}):
        yield


def embedded_font_css(text: str) -> str:
    """An ``@font-face`` rule holding IPAexGothic cut to the non-ASCII characters of ``text`` as a WOFF data URI;
    empty when the text is all ASCII or the font is not installed."""
    wanted = "".join(sorted({c for c in text if ord(c) > 0x7F}))
    path = japanese_font_file()
    if not wanted or path is None:
        return ""
    from fontTools import subset
    from fontTools.ttLib import TTFont

    options = subset.Options()
    options.flavor = "woff"
    font = TTFont(path)
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=wanted)
    subsetter.subset(font)
    buf = io.BytesIO()
    font.flavor = "woff"
    font.save(buf)
    data = base64.b64encode(buf.getvalue()).decode()
    source = f'url(data:font/woff;base64,{data}) format("woff")'
    return f'@font-face {{ font-family: "{EMBEDDED_FAMILY}"; src: {source}; }}\n'
