"""PNG plots of a report, as bytes (for files and for the HTML page's data URIs).

Figures are built with ``matplotlib.figure.Figure`` and drawn by the Agg canvas, never through pyplot, so plotting
needs no display and leaves no global figure state behind. matplotlib is imported only when a plot is drawn.
Japanese labels (categories, 必修) are drawn with IPAexGothic (:mod:`.fonts`). Bars carry their values; exam
verdicts carry each criterion's pass line; colours follow direction (green a significant gain, red a loss).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .build import Report
from .fonts import japanese_plots
from .optuna_views import SearchView
from .tables import direction_style, objective, objective_name
from .verdict import Criterion, YearVerdict

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Direction styles of :func:`.tables.direction_style` as plot colours.
COLOURS = {"green": "tab:green", "red": "tab:red", "": "tab:gray"}


def _figure(width: float = 7.0, height: float = 3.6) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(fig: "Figure") -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _grouped_bars(ax: "Axes", groups: Sequence[str], series: dict[str, list[float | None]]) -> None:
    """One bar per (group, series) with its accuracy as a label; a missing value leaves a gap."""
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        offset = (i - (len(series) - 1) / 2) * width
        shown = [(j + offset, v) for j, v in enumerate(values) if v is not None]
        bars = ax.bar([x for x, _ in shown], [v for _, v in shown], width, label=label)
        ax.bar_label(bars, labels=[f"{v:.0%}" for _, v in shown], fontsize="x-small", padding=1)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize="small")


def accuracy_by_year_png(report: Report) -> bytes:
    """Grouped bars: accuracy of every run in every year."""
    years = sorted({y for r in report.runs for y in r.years})
    fig = _figure()
    ax = fig.add_subplot()
    _grouped_bars(ax, years, {r.label: [r.years[y].accuracy if y in r.years else None for y in years]
                              for r in report.runs})
    ax.set_title("Accuracy by year")
    return _png(fig)


def accuracy_by_category_png(report: Report) -> bytes:
    """Grouped bars: accuracy of every run in every clinical category (循環器, 小児科, …)."""
    categories = sorted({c for r in report.runs for c in r.categories})
    fig = _figure(width=max(7.0, 0.9 * len(categories) * max(len(report.runs), 1) ** 0.5))
    ax = fig.add_subplot()
    _grouped_bars(ax, categories, {r.label: [r.categories[c].accuracy if c in r.categories else None
                                             for c in categories] for r in report.runs})
    ax.tick_params(axis="x", labelrotation=45 if len(categories) > 6 else 0)
    ax.set_title("Accuracy by category")
    return _png(fig)


def deltas_png(report: Report) -> bytes:
    """Forest plot: each run's accuracy delta vs the baseline with its CI; filled where it survives Holm."""
    comps = report.comparisons
    fig = _figure(height=1.2 + 0.45 * len(comps))
    ax = fig.add_subplot()
    for i, c in enumerate(comps):
        colour = COLOURS[direction_style(c)]
        ax.errorbar(c.delta * 100, i, xerr=[[(c.delta - c.ci_low) * 100], [(c.ci_high - c.delta) * 100]],
                    fmt="o", color=colour, markerfacecolor=None if c.significant else "white", capsize=3)
        ax.annotate(f"{c.delta * 100:+.1f}", (c.delta * 100, i), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize="x-small", color=colour)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(comps)), [c.run for c in comps])
    ax.invert_yaxis()
    ax.set_xlabel(f"Δ accuracy vs {report.baseline} (points)")
    ax.set_title("Paired deltas (filled: significant after Holm; green gain, red loss)")
    return _png(fig)


def _criterion_bars(ax: "Axes", title: str, labels: Sequence[str], criteria: Sequence[Criterion]) -> None:
    """Each run-year's share of the points with its (scaled) pass line: green where it passes, red where not."""
    shares = [c.points / c.possible if c.possible else 0.0 for c in criteria]
    bars = ax.bar(range(len(criteria)), shares, 0.6,
                  color=[COLOURS[{True: "green", False: "red"}.get(c.passed, "")] for c in criteria])
    ax.bar_label(bars, labels=[f"{c.points}/{c.possible}" for c in criteria], fontsize="x-small", padding=1)
    for x, c in enumerate(criteria):
        line = c.required / c.possible if c.possible else 0.0
        ax.hlines(line, x - 0.4, x + 0.4, colors="black", linestyles="dashed",
                  label="pass line" if x == 0 else None)
        ax.annotate(f"{line:.0%}", (x + 0.4, line), fontsize="x-small", va="center")
    ax.set_xticks(range(len(criteria)), labels, rotation=30 if len(criteria) > 3 else 0)
    ax.set_ylim(0, 1.1)
    ax.set_title(title)
    ax.legend(fontsize="small", loc="lower right")


def verdicts_png(verdicts: Sequence[YearVerdict]) -> bytes:
    """The two points criteria of every run-year with a known cut-off (必修, 一般+臨床), against their pass lines."""
    judged = [v for v in verdicts if v.compulsory is not None and v.general is not None]
    labels = [f"{v.run} {v.year}" for v in judged]
    fig = _figure(width=max(7.0, 1.6 * len(judged)))
    left, right = fig.subplots(1, 2, sharey=True)
    compulsory = [v.compulsory for v in judged if v.compulsory is not None]
    general = [v.general for v in judged if v.general is not None]
    _criterion_bars(left, "必修 (compulsory)", labels, compulsory)
    _criterion_bars(right, "一般+臨床 (general + clinical)", labels, general)
    left.set_ylabel("share of points")
    fig.suptitle("Exam verdicts: points against the pass line")
    return _png(fig)


def best_so_far_png(view: SearchView) -> bytes:
    """Every finished trial's value and the best-so-far step curve of a search, in the objective's own unit."""
    fig = _figure()
    ax = fig.add_subplot()
    numbers = [n for n, _, _ in view.best_so_far]
    ax.scatter(numbers, [v for _, v, _ in view.best_so_far], s=12, color="tab:gray", label="trial")
    ax.step(numbers, [b for _, _, b in view.best_so_far], where="post", color="tab:blue", label="best so far")
    last, best = numbers[-1], view.best_so_far[-1][2]
    ax.annotate(objective(best, view.score), (last, best), textcoords="offset points", xytext=(0, 6),
                ha="right", fontsize="small", color="tab:blue")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective_name(view.score))
    ax.set_title(f"{view.run}: best so far")
    ax.legend(fontsize="small")
    return _png(fig)


def importances_png(view: SearchView) -> bytes:
    """Horizontal bars of fANOVA importance per format axis, each labelled with its share."""
    ranked = sorted(view.importances.items(), key=lambda kv: kv[1])
    fig = _figure(height=1.2 + 0.3 * len(ranked))
    ax = fig.add_subplot()
    bars = ax.barh([k for k, _ in ranked], [v for _, v in ranked], color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.0%}" for _, v in ranked], fontsize="x-small", padding=2)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title(f"{view.run}: which axis matters")
    return _png(fig)


def report_plots(report: Report) -> dict[str, bytes]:
    """Every plot the report has data for, by file name."""
    with japanese_plots():
        plots = {"accuracy_by_year.png": accuracy_by_year_png(report)} if report.runs else {}
        if any(len(r.categories) > 1 for r in report.runs):
            plots["accuracy_by_category.png"] = accuracy_by_category_png(report)
        if report.comparisons:
            plots["deltas.png"] = deltas_png(report)
        if any(v.compulsory is not None and v.general is not None for v in report.verdicts):
            plots["verdicts.png"] = verdicts_png(report.verdicts)
        for i, view in enumerate(report.searches):
            if view.best_so_far:
                plots[f"search{i}_best_so_far.png"] = best_so_far_png(view)
            if view.importances:
                plots[f"search{i}_importances.png"] = importances_png(view)
    return plots
