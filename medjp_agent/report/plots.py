"""PNG plots of a report, as bytes (for files and for the HTML page's data URIs).

Figures are built with ``matplotlib.figure.Figure`` and drawn by the Agg canvas, never through pyplot, so plotting
needs no display and leaves no global figure state behind. matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from .build import Report
from .optuna_views import SearchView

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(width: float = 7.0, height: float = 3.6) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(fig: "Figure") -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def accuracy_by_year_png(report: Report) -> bytes:
    """Grouped bars: accuracy of every run in every year."""
    years = sorted({y for r in report.runs for y in r.years})
    fig = _figure()
    ax = fig.add_subplot()
    width = 0.8 / max(len(report.runs), 1)
    for i, r in enumerate(report.runs):
        xs = [j + (i - (len(report.runs) - 1) / 2) * width for j in range(len(years))]
        ax.bar(xs, [r.years[y].accuracy if y in r.years else 0.0 for y in years], width, label=r.label)
    ax.set_xticks(range(len(years)), years)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy by year")
    ax.legend(fontsize="small")
    return _png(fig)


def deltas_png(report: Report) -> bytes:
    """Forest plot: each run's accuracy delta vs the baseline with its CI; filled where it survives Holm."""
    comps = report.comparisons
    fig = _figure(height=1.2 + 0.45 * len(comps))
    ax = fig.add_subplot()
    for i, c in enumerate(comps):
        ax.errorbar(c.delta * 100, i, xerr=[[(c.delta - c.ci_low) * 100], [(c.ci_high - c.delta) * 100]],
                    fmt="o", color="tab:green" if c.significant else "tab:gray",
                    markerfacecolor=None if c.significant else "white", capsize=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(comps)), [c.run for c in comps])
    ax.invert_yaxis()
    ax.set_xlabel(f"Δ accuracy vs {report.baseline} (points)")
    ax.set_title("Paired deltas (filled: significant after Holm)")
    return _png(fig)


def best_so_far_png(view: SearchView) -> bytes:
    """Every finished trial's value and the best-so-far step curve of a search."""
    fig = _figure()
    ax = fig.add_subplot()
    numbers = [n for n, _, _ in view.best_so_far]
    ax.scatter(numbers, [v for _, v, _ in view.best_so_far], s=12, color="tab:gray", label="trial")
    ax.step(numbers, [b for _, _, b in view.best_so_far], where="post", color="tab:blue", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.set_title(f"{view.run}: best so far")
    ax.legend(fontsize="small")
    return _png(fig)


def importances_png(view: SearchView) -> bytes:
    """Horizontal bars of fANOVA importance per format axis."""
    ranked = sorted(view.importances.items(), key=lambda kv: kv[1])
    fig = _figure(height=1.2 + 0.3 * len(ranked))
    ax = fig.add_subplot()
    ax.barh([k for k, _ in ranked], [v for _, v in ranked], color="tab:blue")
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title(f"{view.run}: which axis matters")
    return _png(fig)


def report_plots(report: Report) -> dict[str, bytes]:
    """Every plot the report has data for, by file name."""
    plots = {"accuracy_by_year.png": accuracy_by_year_png(report)} if report.runs else {}
    if report.comparisons:
        plots["deltas.png"] = deltas_png(report)
    for i, view in enumerate(report.searches):
        if view.best_so_far:
            plots[f"search{i}_best_so_far.png"] = best_so_far_png(view)
        if view.importances:
            plots[f"search{i}_importances.png"] = importances_png(view)
    return plots
