"""The report's tables, built once from a :class:`Report` and drawn as rich, Markdown or HTML.

A :class:`ReportTable` is plain data (title, columns, formatted cells, a style per row) that knows how to draw itself:
print it with rich (it is a renderable), or call :meth:`ReportTable.to_markdown` / :meth:`ReportTable.to_html`. Row
styles are rich style names, and the HTML page uses the same names as CSS classes.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from medjp_agent.naming import shown_value
from medjp_agent.scoring.aggregate import SIDE_COUNTS

from .build import Report
from .compare import Comparison
from .diff import RunDiff
from .optuna_views import SearchView
from .verdict import Criterion, YearVerdict

DASH = "–"


@dataclass(frozen=True)
class ReportTable:
    """A titled table of formatted cells; ``numeric`` marks right-aligned columns, ``styles`` one style per row."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: frozenset[int] = frozenset()
    styles: tuple[str, ...] = ()
    caption: str = ""

    def _style(self, i: int) -> str:
        return self.styles[i] if i < len(self.styles) else ""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        # A table too wide for the terminal would have rich squeeze numbers to "76." or drop columns: it is drawn
        # as one block of "column  value" lines per row instead, so every cell is shown whole.
        table = self._wide()
        # Measured without the width limit: rich clamps a measurement to the width it is given.
        needed = Measurement.get(console, options.update_width(1 << 16), table).minimum
        yield table if needed <= options.max_width else self._vertical()

    def _titled(self, **kwargs: object) -> Table:
        # Cells are Text, not markup: reasoning and labels may hold brackets such as "[a]".
        return Table(title=Text(self.title, style="table.title"),
                     caption=Text(self.caption, style="table.caption") if self.caption else None, **kwargs)

    def _wide(self) -> Table:
        table = self._titled()
        for j, name in enumerate(self.columns):
            numeric = j in self.numeric
            table.add_column(Text(name), justify="right" if numeric else "left", overflow="fold", no_wrap=numeric)
        for i, row in enumerate(self.rows):
            table.add_row(*map(Text, row), style=self._style(i) or None)
        return table

    def _vertical(self) -> Table:
        table = self._titled(show_header=False)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for i, row in enumerate(self.rows):
            for j, (name, cell) in enumerate(zip(self.columns, row)):
                table.add_row(Text(name), Text(cell), style=self._style(i) or None,
                              end_section=j == len(row) - 1)
        return table

    def to_markdown(self) -> str:
        # Markdown renderers pass raw HTML through: run names, categories and reasoning are escaped as text.
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(_md(c).replace("|", "\\|").replace("\n", "<br>") for c in cells) + " |"

        align = ["---:" if j in self.numeric else "---" for j in range(len(self.columns))]
        lines = [f"### {_md(self.title)}", "", line(self.columns), line(align), *map(line, self.rows)]
        return "\n".join(lines + (["", _md(self.caption)] if self.caption else [])) + "\n"

    def to_html(self) -> str:
        def cells(tag: str, values: Sequence[str]) -> str:
            num = ' class="num"'
            return "".join(f"<{tag}{num if j in self.numeric else ''}>{html.escape(v)}</{tag}>"
                           for j, v in enumerate(values))

        body = "".join(f'<tr class="{html.escape(self._style(i))}">{cells("td", row)}</tr>'
                       for i, row in enumerate(self.rows))
        head = cells("th", self.columns)
        caption = f"<p class=\"caption\">{html.escape(self.caption)}</p>" if self.caption else ""
        return (f"<h3>{html.escape(self.title)}</h3><table><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>{caption}")


def _md(text: str) -> str:
    return html.escape(text, quote=False)


def pct(x: float) -> str:
    return f"{x:.1%}"


def pts(delta: float) -> str:
    """An accuracy difference in percentage points."""
    return f"{delta * 100:+.1f}"


def pvalue(p: float) -> str:
    return f"{p:.2g}"


def direction_style(c: Comparison | None) -> str:
    """Green for a significant gain, red for a significant loss, nothing for a difference that may be chance."""
    if c is None or not c.significant:
        return ""
    return "green" if c.delta > 0 else "red"


def objective(value: float, score: str) -> str:
    """A search trial's value in its own unit: accuracy as a percentage, a log-probability as itself (nats)."""
    return f"{value:.3f}" if score == "logprob" else pct(value)


def objective_name(score: str) -> str:
    return "mean log-prob (nats)" if score == "logprob" else "accuracy"


def runs_table(report: Report) -> ReportTable:
    """One row per run: what ran, accuracy, points, accuracy per year, usage, and Δ vs the baseline with its CI."""
    years = sorted({y for r in report.runs for y in r.years})
    # Identity columns no run fills (e.g. adapter and optimizer for scored predictions) would only take width.
    identity = [f for f in ("model", "adapter", "format", "optimizer") if any(getattr(r, f) for r in report.runs)]
    extra = [(name, key) for name, key in SIDE_COUNTS if any(getattr(r.overall, key) for r in report.runs)]
    columns = ("run", *identity, "n", "accuracy", "points", *years, "禁忌肢", "parse fail", *(n for n, _ in extra),
               "LM calls", "tokens", f"Δ vs {report.baseline} [CI]")
    rows, styles = [], []
    for r in report.runs:
        c = report.comparison(r.label)
        if r.label == report.baseline:
            delta = "baseline"
        elif c is None:
            delta = "no shared questions" if report.baseline else DASH
        else:
            delta = f"{pts(c.delta)} [{pts(c.ci_low)}, {pts(c.ci_high)}]{' *' if c.significant else ''}"
        o = r.overall
        if c is not None and c.n != o.n:  # paired on the shared questions only: say on how many
            delta += f" on {c.n}"
        n = (str(o.n) if r.planned is None else f"{o.n} of {r.planned}") + (
            f" ({r.skipped:,} bad skipped)" if r.skipped else "")
        rows.append((r.label, *(getattr(r, f) or DASH for f in identity), n, pct(o.accuracy),
                     f"{o.points}/{o.points_possible}",
                     *(pct(r.years[y].accuracy) if y in r.years else DASH for y in years),
                     str(o.forbidden_picked), str(o.parse_failures), *(str(getattr(o, key)) for _, key in extra),
                     f"{r.lm_calls:,}",
                     f"{r.prompt_tokens + r.completion_tokens:,}", delta))
        styles.append("bold" if r.label == report.baseline else direction_style(c))
    numeric = frozenset(range(1 + len(identity), len(columns)))
    caption = (f"Δ in accuracy points, paired bootstrap {report.comparisons[0].confidence:.0%} CI; "
               f"* survives Holm-adjusted exact McNemar at α={report.alpha}") if report.comparisons else ""
    return ReportTable("Runs", columns, tuple(rows), numeric, tuple(styles), caption)


def comparisons_table(report: Report) -> ReportTable:
    """The paired tests behind each Δ: discordant counts, McNemar p, Holm-adjusted p, and whether it survives."""
    columns = ("run", "paired n", "baseline acc", "run acc", "Δ pts", "CI", "lost", "gained", "p McNemar",
               "p Holm", "survives")
    rows = tuple((c.run, str(c.n), pct(c.baseline_accuracy), pct(c.run_accuracy), pts(c.delta),
                  f"[{pts(c.ci_low)}, {pts(c.ci_high)}]", str(c.lost), str(c.gained), pvalue(c.p_value),
                  pvalue(c.p_holm), "yes" if c.significant else "no") for c in report.comparisons)
    caption = (f"exact McNemar, Holm-adjusted over {len(rows)} comparison{'s' if len(rows) > 1 else ''} at "
               f"α={report.alpha}; lost = {report.baseline} right and run wrong, gained = the reverse")
    return ReportTable(f"Paired comparisons vs {report.baseline}", columns, rows, frozenset(range(1, 10)),
                       tuple(direction_style(c) for c in report.comparisons), caption)


def groups_table(report: Report) -> ReportTable:
    """Accuracy (and correct/n) of every run in each ``--by`` group."""
    keys = sorted({k for r in report.runs for k in r.groups})
    rows = tuple((key, *(f"{pct(r.groups[key].accuracy)} ({r.groups[key].correct}/{r.groups[key].n})"
                         if key in r.groups else DASH for r in report.runs)) for key in keys)
    return ReportTable(f"Accuracy by {report.by}", (report.by, *(r.label for r in report.runs)), rows,
                       frozenset(range(1, len(report.runs) + 1)))


def _criterion(c: Criterion | None) -> str:
    if c is None or c.passed is None:
        return DASH
    return f"{c.points}/{c.possible} ≥ {c.required:.4g} {'✓' if c.passed else '✗'}"


def forbidden_cell(v: YearVerdict) -> str:
    """Questions with a 禁忌肢 picked against the most allowed: ``4 > 3 ✗``, ``2 ≤ 3 ✓``, or ``?`` when some
    questions' 禁忌肢 are unknown and the count is only a lower bound."""
    if v.forbidden_max is None:
        return str(v.forbidden)
    if v.forbidden > v.forbidden_max:
        return f"{v.forbidden} > {v.forbidden_max} ✗"
    return f"{v.forbidden} ≤ {v.forbidden_max} {'?' if v.forbidden_unknown else '✓'}"


def verdict_label(v: YearVerdict) -> str:
    return {"pass": "PASS", "fail": "FAIL"}.get(v.status, v.status) + (" ~" if v.approximate else "")


def verdicts_table(verdicts: Sequence[YearVerdict]) -> ReportTable:
    """NMLE verdict per run and year with the three criteria; ``~`` marks an approximate verdict (see notes)."""
    columns = ("run", "year", "exam", "必修", "一般+臨床", "禁忌肢", "verdict", "notes")
    rows = tuple((v.run, str(v.year), f"{v.exam}th" if v.exam else DASH, _criterion(v.compulsory),
                  _criterion(v.general), forbidden_cell(v), verdict_label(v), "; ".join(v.notes)) for v in verdicts)
    styles = tuple({"pass": "green", "fail": "red"}.get(v.status, "dim") for v in verdicts)
    sources = sorted({v.source for v in verdicts if v.source})
    caption = ("Cut-offs scaled to the points present; ~ = approximate. Source: " + "; ".join(sources)
               if sources else "")
    return ReportTable("Exam verdicts (NMLE pass criteria)", columns, rows, frozenset(), styles, caption)


def _clip(text: str, limit: int | None) -> str:
    text = " ".join(text.split()) if limit is not None else text
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def diff_table(diff: RunDiff, *, limit: int | None = None, reasoning_chars: int | None = 160) -> ReportTable:
    """Questions that flip between the two runs: both answers and reasoning; ``limit`` caps the rows shown.

    ``reasoning_chars`` clips the reasoning to one line of that length (None keeps it whole, as the HTML page does).
    """
    flips = diff.flips if limit is None else diff.flips[:limit]
    columns = ("id", "category", "gold", diff.first, diff.second, "change", f"{diff.first} reasoning",
               f"{diff.second} reasoning")
    rows = tuple((f.id, f.category, ",".join(f.gold), f.first.shown, f.second.shown,
                  "gained" if f.gained else "lost", _clip(f.first.reasoning, reasoning_chars),
                  _clip(f.second.reasoning, reasoning_chars)) for f in flips)
    scope = f" in {', '.join(diff.categories)}" if diff.categories else ""
    caption = (f"{len(diff.flips)} of {diff.shared} shared questions{scope} flip: {diff.gained} gained, "
               f"{diff.lost} lost by {diff.second}" + (f"; first {len(flips)} shown" if len(flips) < len(diff.flips)
                                                        else ""))
    return ReportTable(f"Flips: {diff.first} → {diff.second}", columns, rows, frozenset(),
                       tuple("green" if f.gained else "red" for f in flips), caption)


def importances_table(view: SearchView) -> ReportTable:
    """fANOVA importance of each format axis, largest first."""
    ranked = sorted(view.importances.items(), key=lambda kv: -kv[1])
    return ReportTable(f"{view.run}: axis importance (fANOVA)", ("axis", "importance"),
                       tuple((k, pct(v)) for k, v in ranked), frozenset({1}),
                       caption=f"{view.n_complete} finished trials, {view.n_pruned} pruned, study {view.study}")


def axes_table(view: SearchView) -> ReportTable:
    """Mean and best objective of the trials that used each value of each axis."""
    rows = tuple((a.param, shown_value(a.value), str(a.n), objective(a.mean, view.score),
                  objective(a.best, view.score)) for a in view.axes)
    return ReportTable(f"{view.run}: {objective_name(view.score)} by axis value",
                       ("axis", "value", "trials", "mean", "best"), rows, frozenset({2, 3, 4}))


def best_so_far_table(view: SearchView) -> ReportTable:
    """The trials that improved on the best so far (the steps of the best-so-far curve)."""
    steps = [(n, v) for i, (n, v, best) in enumerate(view.best_so_far)
             if i == 0 or best != view.best_so_far[i - 1][2]]
    best = ", ".join(f"{k}={shown_value(v)}" for k, v in view.best_format.items())
    return ReportTable(f"{view.run}: best so far ({objective_name(view.score)}, {view.direction})",
                       ("trial", "value"), tuple((str(n), objective(v, view.score)) for n, v in steps),
                       frozenset({0, 1}), caption=f"best format: {best}")


def report_tables(report: Report, *, flips: int | None = None, reasoning_chars: int | None = 160) -> list[ReportTable]:
    """Every table of the report, in display order; ``flips`` caps the diff rows (None: all)."""
    tables = [runs_table(report), groups_table(report)] if report.runs else []
    if report.comparisons:
        tables.insert(1, comparisons_table(report))
    if report.verdicts:
        tables.append(verdicts_table(report.verdicts))
    if report.diff is not None:
        tables.append(diff_table(report.diff, limit=flips, reasoning_chars=reasoning_chars))
    for view in report.searches:
        tables += [importances_table(view), best_so_far_table(view), axes_table(view)]
    return tables
