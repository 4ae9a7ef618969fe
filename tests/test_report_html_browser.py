"""The HTML report in a real browser: Japanese renders as glyphs, not tofu boxes, even with no CJK system font.

Headless Chromium renders two pages that differ only in which kanji a cell holds. Tofu boxes (the .notdef glyph)
look the same for every character, so identical screenshots mean the kanji were not drawn. Skipped where no
Chromium is installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from medjp_agent.report import ReportTable
from medjp_agent.report.html import render_html

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(BROWSER is None, reason="no headless Chromium installed")]


def screenshot(html: str, path: Path) -> bytes:
    page = path.with_suffix(".html")
    page.write_text(html, encoding="utf-8")
    shot = path.with_suffix(".png")
    # The virtual time budget lets the embedded font load before the shot is taken.
    subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-dev-shm-usage", "--hide-scrollbars", "--virtual-time-budget=3000",
                    "--window-size=320,200", f"--screenshot={shot}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    return shot.read_bytes()


def test_kanji_render_as_distinct_glyphs(tmp_path):
    pages = {word: render_html("medjp report: 循環器", [ReportTable("分野", ("分野",), ((word,),))], {})
             for word in ("循環器内科", "消化器外科")}
    assert all('<html lang="ja">' in page for page in pages.values())
    first, second = (screenshot(page, tmp_path / f"page{i}") for i, page in enumerate(pages.values()))
    assert first.startswith(b"\x89PNG") and first != second
