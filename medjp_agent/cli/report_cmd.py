"""`medjp report`: compare run folders with paired statistics, exam verdicts, flips, search views, plots and HTML."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, get_args

import typer

from .options import console, fail

if TYPE_CHECKING:
    from medjp_agent.report import Report


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        runs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="Run folders written by eval, score, search or optimize.", show_default=False)],
        baseline: Annotated[Path | None, typer.Option(help="The run every other run is compared with (default: the first RUN); shown first if not among them.")] = None,
        by: Annotated[str, typer.Option(help="Accuracy table grouped by year, section, category or qtype.")] = "year",
        diff: Annotated[tuple[Path, Path] | None, typer.Option(help="Questions that flip between two runs: --diff RUN_A RUN_B.", show_default=False)] = None,
        category: Annotated[list[str] | None, typer.Option(help="Only flips in this category, e.g. 循環器 (repeatable; needs --diff).")] = None,
        flips: Annotated[int, typer.Option(help="Most flips in the terminal and Markdown tables, 0 for all (the HTML page shows all).")] = 30,
        alpha: Annotated[float, typer.Option(help="Family-wise error rate for the Holm-adjusted McNemar tests.")] = 0.05,
        confidence: Annotated[float, typer.Option(help="Coverage of the paired bootstrap CI.")] = 0.95,
        n_boot: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 10_000,
        seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
        md: Annotated[bool, typer.Option("--md", help="Print the tables as Markdown instead of rich tables.")] = False,
        html_out: Annotated[Path | None, typer.Option("--html", help="Write one self-contained HTML report (tables and embedded plots).")] = None,
        plots: Annotated[Path | None, typer.Option(help="Write the plots as PNG files into this folder.")] = None,
        csv_out: Annotated[Path | None, typer.Option("--csv", help="Write one row per run (raw numbers, verdicts, comparison) as CSV.")] = None,
        json_out: Annotated[Path | None, typer.Option("--json", help="Write the whole report as JSON.")] = None,
    ) -> None:
        """Compare runs: accuracy, Δ vs a baseline with CI and Holm-adjusted exact McNemar, NMLE verdicts per year.

        Search runs add fANOVA axis importances, the best-so-far curve and accuracy by format-axis value.
        """
        from medjp_agent.report import build_report, diff_runs, load_run_dirs, report_tables
        from medjp_agent.results import read_run
        from medjp_agent.scoring.aggregate import GroupBy

        if by not in get_args(GroupBy):
            raise fail(f"--by must be one of {', '.join(get_args(GroupBy))}, got {by!r}")
        if category and diff is None:
            raise fail("--category filters the flips of --diff RUN_A RUN_B; give --diff too")
        try:
            loaded, searches = load_run_dirs(runs)
            base = read_run(baseline) if baseline is not None else None
            flipped = diff_runs(read_run(diff[0]), read_run(diff[1]), categories=category or ()) if diff else None
            result = build_report(loaded, baseline=base, by=by, searches=searches, diff=flipped,  # type: ignore[arg-type]
                                  alpha=alpha, confidence=confidence, n_boot=n_boot, seed=seed)
        except (FileNotFoundError, KeyError, ValueError) as e:
            raise fail(str(e)) from None

        shown = report_tables(result, flips=flips or None)
        if md:
            typer.echo("\n".join(t.to_markdown() for t in shown))
        else:
            for table in shown:
                console.print(table)
        _write_outputs(result, html_out=html_out, plots=plots, csv_out=csv_out, json_out=json_out)


def _write_outputs(result: "Report", *, html_out: Path | None, plots: Path | None, csv_out: Path | None,
                   json_out: Path | None) -> None:
    import csv
    import json

    from medjp_agent.report import report_tables

    if csv_out is not None:
        rows = result.csv_rows()
        with csv_out.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
            writer.writeheader()
            writer.writerows(rows)
        console.print(f"[green]wrote[/] {csv_out}")
    if json_out is not None:
        json_out.write_text(json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        console.print(f"[green]wrote[/] {json_out}")
    if html_out is None and plots is None:
        return
    from medjp_agent.report.html import render_html
    from medjp_agent.report.plots import report_plots

    images = report_plots(result)
    if plots is not None:
        plots.mkdir(parents=True, exist_ok=True)
        for name, png in images.items():
            (plots / name).write_bytes(png)
        console.print(f"[green]wrote[/] {len(images)} plots to {plots}")
    if html_out is not None:
        title = "medjp report: " + ", ".join(r.label for r in result.runs)
        html_out.write_text(render_html(title, report_tables(result, reasoning_chars=None), images), encoding="utf-8")
        console.print(f"[green]wrote[/] {html_out}")
