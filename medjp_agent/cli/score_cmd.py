"""`medjp score`: score published or external predictions (IgakuQA baseline format) into a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import DataOpt, LenientOpt, SectionsOpt, TextOnlyOpt, YearsOpt, console, err_console, fail, load_questions


def register(app: typer.Typer) -> None:
    @app.command("score")
    def score(
        predictions: Annotated[Path, typer.Option(help="A prediction JSONL file or a folder searched recursively.")],
        data: DataOpt = "sample",
        system: Annotated[str | None, typer.Option(help="Only IgakuQA's *_<SYSTEM>.jsonl files, e.g. gpt4, chatgpt.")] = None,
        out: Annotated[Path | None, typer.Option(help="Write a run folder, the same files as `medjp eval`.")] = None,
        parse: Annotated[str, typer.Option(help="strict: IgakuQA's own comma-split rule (reproduces its scores); lenient: medjp's answer extractor.")] = "strict",
        year: YearsOpt = None,
        section: SectionsOpt = None,
        text_only: TextOnlyOpt = False,
        lenient: LenientOpt = False,
        by: Annotated[str, typer.Option(help="Group the table by year, section, category or qtype.")] = "year",
    ) -> None:
        """Score prediction files against the gold answers, as IgakuQA's evaluation does."""
        from medjp_agent.baseline import read_predictions, score_predictions
        from medjp_agent.data import DataError
        from medjp_agent.results import RunManifest, RunSummary, RunWriter
        from medjp_agent.views import summary_table

        if parse not in ("strict", "lenient"):
            raise fail(f"--parse must be strict or lenient, got {parse!r}")
        dataset, questions, filters = load_questions(data, lenient=lenient, years=year, sections=section,
                                                     text_only=text_only)
        try:
            preds = read_predictions(predictions, system)
        except DataError as e:
            raise fail(str(e)) from None
        results, missing, extra = score_predictions(questions, preds, parse)  # type: ignore[arg-type]
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
            writer = RunWriter(out, manifest)
            for r in results:
                if r.id not in writer.done_ids:
                    writer.write(r)
            summary = writer.finalize(n_expected=len(questions), missing=missing, unmatched=extra)
        else:
            summary = RunSummary.from_results(results)
        console.print(summary_table(summary, by=by, title=f"{name} · {len(preds.files)} prediction files"))
        if out is not None:
            console.print(f"[green]wrote[/] {out}")
