"""`medjp score`: score published or external predictions (IgakuQA baseline format) into a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import (
    ByOpt, ColumnsOpt, DataOpt, LenientOpt, SectionsOpt, TextOnlyOpt, YearsOpt, console, err_console, fail,
    load_questions, reports_errors, writable_dir,
)


def register(app: typer.Typer) -> None:
    @app.command("score")
    @reports_errors
    def score(
        predictions: Annotated[Path, typer.Option(help="A prediction JSONL file or a folder searched recursively.")],
        data: DataOpt = "sample",
        system: Annotated[str | None, typer.Option(help="Only IgakuQA's *_<SYSTEM>.jsonl files, e.g. gpt4, chatgpt.")] = None,
        out: Annotated[Path | None, typer.Option(callback=writable_dir, help="Write a run folder, the same files as `medjp eval` (scoring again into it scores the files as they are then).")] = None,
        parse: Annotated[str, typer.Option(help="strict: IgakuQA's own comma-split rule (reproduces its scores); lenient: medjp's answer extractor; harness-exact / harness-gestalt: the paper harness's exact and gestalt matching of the response's first line against the choice texts. Every mode's score is printed next to it.")] = "strict",
        year: YearsOpt = None,
        section: SectionsOpt = None,
        text_only: TextOnlyOpt = False,
        lenient: LenientOpt = False,
        column: ColumnsOpt = None,
        by: ByOpt = "year",
    ) -> None:
        """Score prediction files against the gold answers, as IgakuQA's evaluation does."""
        from medjp_agent.baseline import PARSE_MODES, read_predictions, score_predictions
        from medjp_agent.data import DataError
        from medjp_agent.results import RunManifest, RunSummary, RunWriter
        from medjp_agent.runlock import holding
        from medjp_agent.views import summary_table

        if parse not in PARSE_MODES:
            raise fail(f"--parse must be one of {', '.join(PARSE_MODES)}, got {parse!r}")
        dataset, questions, filters = load_questions(data, columns=column, lenient=lenient, years=year,
                                                     sections=section, text_only=text_only)
        try:
            preds = read_predictions(predictions, system)
        except DataError as e:
            raise fail(str(e)) from None
        results, missing, extra = score_predictions(questions, preds, parse)  # type: ignore[arg-type]
        mismatch = prediction_mismatch(len(preds.by_id), extra, questions, data)
        if mismatch:
            raise fail(mismatch)
        if missing:
            err_console.print(f"[yellow]warning:[/] {len(missing)} questions have no prediction and are scored wrong: "
                              f"{', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}", highlight=False)
        if extra:
            err_console.print(f"[yellow]warning:[/] {len(extra)} predictions match no selected question: "
                              f"{', '.join(extra[:10])}{' …' if len(extra) > 10 else ''}", highlight=False)
        name = system or Path(predictions).stem
        if out is not None:
            manifest = RunManifest.create(name=out.name, kind="score", data=dataset.source, model=name, system=name,
                                          filters=filters, n_questions=len(questions),
                                          extra={"predictions": str(predictions), "parse": parse})
            with holding(out):
                writer = RunWriter(out, manifest, resume=False)
                for r in results:
                    writer.write(r)
                summary = writer.finalize(n_expected=len(questions), missing=missing, unmatched=extra)
        else:
            summary = RunSummary.from_results(results)
        console.print(summary_table(summary, by=by, title=f"{name} · {len(preds.files)} prediction files"))
        console.print(parse_modes_table(questions, preds, parse))
        if out is not None:
            console.print(f"[green]wrote[/] {out}")


def prediction_mismatch(n_predictions: int, unmatched: list[str], questions: list, data: str) -> str:
    """Why scoring would be meaningless when most predictions answer no selected question (wrong ``--data`` or
    filters), naming both sides; empty when most do match."""
    if not n_predictions or len(unmatched) * 2 <= n_predictions:
        return ""
    sample = ", ".join(unmatched[:3])
    selected = ", ".join(q.id for q in questions[:3])
    return (f"{len(unmatched)} of {n_predictions} predictions match no question of --data {data} "
            f"({len(questions)} questions selected): predictions are for e.g. {sample}, the questions are "
            f"e.g. {selected}. Give the exam they answer with --data (an IgakuQA folder) or loosen --year/--section.")


def parse_modes_table(questions: list, preds: object, chosen: str) -> object:
    """Accuracy of the same predictions under every parse mode: medjp's own next to IgakuQA's and the harness's."""
    from rich.table import Table

    from medjp_agent.baseline import PARSE_MODES, score_predictions
    from medjp_agent.scoring import aggregate

    table = Table(title="parse modes", title_justify="left")
    for column in ("mode", "correct", "accuracy", "parse failures", "no prediction"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode in PARSE_MODES:
        rows, _, _ = score_predictions(questions, preds, mode)  # type: ignore[arg-type]
        total = aggregate(rows)
        correct = total.correct
        table.add_row(mode + (" *" if mode == chosen else ""), f"{correct}/{len(rows)}",
                      f"{correct / len(rows):.1%}" if rows else "-", str(total.parse_failures), str(total.missing))
    return table

