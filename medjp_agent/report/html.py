"""One self-contained HTML page: inline CSS, the report's tables, and its plots embedded as base64 PNG data URIs.

The page loads nothing from anywhere, so it can be mailed, attached to an issue or opened offline. It is marked
``lang="ja"`` (so browsers pick Japanese glyph shapes for kanji, not Chinese ones) and carries a subset of a Japanese
font for the characters it uses (:mod:`.fonts`), so it never shows tofu boxes on a machine without a CJK font.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence

from .fonts import CSS_FONT_STACK, embedded_font_css
from .tables import ReportTable

_CSS = """
body { font-family: FONT_STACK; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 0.3em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; }
td { white-space: pre-wrap; max-width: 40em; }
th { background: #f3f3f3; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.caption { color: #555; font-size: 0.85em; margin-top: 0; }
.bold { font-weight: 600; }
.green { color: #1a7f37; }
.red { color: #b42318; }
.dim { color: #777; }
figure { margin: 1em 0; }
"""


def render_html(title: str, tables: Sequence[ReportTable], plots: Mapping[str, bytes]) -> str:
    """The page: ``tables`` in order, then every plot (name: PNG bytes) as an embedded image."""
    figures = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
        for name, png in plots.items())
    body = ("".join(t.to_html() for t in tables) + (f"<h2>Plots</h2>{figures}" if figures else ""))
    css = embedded_font_css(title + body) + _CSS.replace("FONT_STACK", CSS_FONT_STACK)
    return (f'<!DOCTYPE html>\n<html lang="ja"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{css}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")
