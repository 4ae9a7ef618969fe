"""`medjp report`: compare run folders with paired statistics, exam verdicts, flips, search views, plots and HTML."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medjp_agent.errors import SEEDS

from .options import ByOpt, console, err_console, fail, reports_errors, writable_file, writable_folder

if TYPE_CHECKING:
    from medjp_agent.report import Report

#: Where ``--plots`` writes its PNG files when no ``--plots-dir`` is given.
DEFAULT_PLOTS = "report-plots"


def register(app: typer.Typer) -> None:
    @app.command("report")
    @reports_errors
    def report(
        runs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="Run folders written by eval, score, search or optimize.", show_default=False)],
        baseline: Annotated[Path | None, typer.Option(help="The run every other run is compared with (default: the first RUN); shown first if not among them.")] = None,
        by: ByOpt = "year",
        diff: Annotated[tuple[Path, Path] | None, typer.Option(help="Questions that flip between two runs: --diff RUN_A RUN_B.", show_default=False)] = None,
        category: Annotated[list[str] | None, typer.Option(help="Only flips in this category, e.g. 循環器 (repeatable; needs --diff).")] = None,
        flips: Annotated[int, typer.Option(min=0, help="Most flips in the terminal and Markdown tables, 0 for all (the HTML page shows all).")] = 30,
        alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Family-wise error rate for the Holm-adjusted McNemar tests.")] = 0.05,
        confidence: Annotated[float, typer.Option(min=0.0, max=1.0, help="Coverage of the paired bootstrap CI.")] = 0.95,
        n_boot: Annotated[int, typer.Option(min=100, help="Bootstrap resamples (at least 100: fewer give no usable interval).")] = 10_000,
        seed: Annotated[int, typer.Option(min=SEEDS.start, max=SEEDS.stop - 1, help="Seed of the bootstrap.")] = 0,
        md: Annotated[bool, typer.Option("--md", help="Print the tables as Markdown instead of rich tables.")] = False,
        html_out: Annotated[Path | None, typer.Option("--html", callback=writable_file, help="Write one self-contained HTML report (tables and embedded plots).")] = None,
        plots: Annotated[bool, typer.Option("--plots", help=f"Write the plots as PNG files (into {DEFAULT_PLOTS}/ unless --plots-dir).")] = False,
        plots_dir: Annotated[Path | None, typer.Option(callback=writable_folder, help="Folder for the PNG plots (implies --plots).", show_default=False)] = None,
        show: Annotated[str | None, typer.Option(metavar="QID", help="Print one question of RUN whole: the exact prompt (kept by --log-prompts), the raw completion, the parsed answer and why.", show_default=False)] = None,
        csv_out: Annotated[Path | None, typer.Option("--csv", callback=writable_file, help="Write one row per run (raw numbers, verdicts, comparison) as CSV.")] = None,
        json_out: Annotated[Path | None, typer.Option("--json", callback=writable_file, help="Write the whole report as JSON.")] = None,
    ) -> None:
        """Compare runs: accuracy, Δ vs a baseline with CI and Holm-adjusted exact McNemar, NMLE verdicts per year.

        Search runs add fANOVA axis importances, the best-so-far curve and accuracy by format-axis value.
        """
        from medjp_agent.report import build_report, diff_runs, load_run_dirs, report_tables
        from medjp_agent.report.optuna_views import dashboard_hint
        from medjp_agent.results import read_run

        if show is not None:
            return _show(show, runs)
        _check_flags(runs, category=category, diff=diff, plots=plots and plots_dir is None)
        try:
            loaded, searches = load_run_dirs(runs)
            base = read_run(baseline) if baseline is not None else None
            flipped = diff_runs(read_run(diff[0]), read_run(diff[1]), categories=category or ()) if diff else None
            result = build_report(loaded, baseline=base, by=by,  # type: ignore[arg-type]
                                  searches=searches, diff=flipped,
                                  alpha=alpha, confidence=confidence, n_boot=n_boot, seed=seed)
        except (FileNotFoundError, KeyError, ValueError) as e:
            raise fail(str(e)) from None

        shown = report_tables(result, flips=flips or None)
        if md:
            typer.echo("\n".join(t.to_markdown() for t in shown))
        else:
            for table in shown:
                console.print(table)
        plots_to = plots_dir or (Path(DEFAULT_PLOTS) if plots else None)
        _write_outputs(result, html_out=html_out, plots=plots_to, csv_out=csv_out, json_out=json_out)
        for view in result.searches:
            if view.storage:
                err_console.print(f"{view.run}: {dashboard_hint(view.storage)}", highlight=False, soft_wrap=True)


def _check_flags(runs: list[Path], *, category: list[str] | None, diff: object, plots: bool) -> None:
    missing = next((r for r in runs if not r.exists()), None)
    if missing is not None and plots:
        # `--plots DIR`, the old form, reads DIR as a run folder.
        raise fail(f"{missing}: no such run folder; --plots takes no value (to choose the folder: "
                   f"--plots-dir {missing})")
    if category and diff is None:
        raise fail("--category filters the flips of --diff RUN_A RUN_B; give --diff too")


def _show(qid: str, runs: list[Path]) -> None:
    from medjp_agent.report.show import show_question

    if len(runs) != 1:
        raise fail(f"--show {qid} shows one question of one run: give exactly one RUN_DIR, got {len(runs)}")
    try:
        console.print(show_question(runs[0], qid))
    except (FileNotFoundError, KeyError) as e:
        raise fail(str(e.args[0] if isinstance(e, KeyError) else e)) from None


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
        # Named by every run and search it holds, so browser tabs and bookmarks tell reports apart.
        title = "medjp report: " + ", ".join(dict.fromkeys([*(r.label for r in result.runs),
                                                            *(v.run for v in result.searches)]))
        html_out.write_text(render_html(title, report_tables(result, reasoning_chars=None), images), encoding="utf-8")
        console.print(f"[green]wrote[/] {html_out}")
