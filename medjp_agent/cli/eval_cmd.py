"""`medjp eval`: run the exam module over questions and write a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medjp_agent.lm.options import LMOptions

from .options import DataOpt, FormatOpt, console, fail, load_questions, with_data_options, with_lm_options

DEFAULT_FORMAT = "paper-instruction-in-header"


def register(app: typer.Typer) -> None:
    @app.command("eval")
    @with_lm_options
    @with_data_options
    def eval_(
        data: DataOpt = "sample",
        format: FormatOpt = DEFAULT_FORMAT,
        out: Annotated[Path | None, typer.Option(help="Run folder (default runs/<format>). Re-running resumes it.")] = None,
        threads: Annotated[int, typer.Option(help="Questions in flight at once; the backend batches them.")] = 16,
        by: Annotated[str, typer.Option(help="Group the final table by year, section, category or qtype.")] = "year",
        *,
        selection: dict,
        lm: LMOptions,
    ) -> None:
        """Answer exam questions in one prompt format, score them and write results.jsonl + summary.json."""
        from medjp_agent.evaluate import RunInterrupted
        from medjp_agent.runs import evaluate_run

        dataset, questions, filters = load_questions(data, **selection)
        try:
            summary, run_dir = evaluate_run(questions, format, lm, out=out, data=dataset.source, filters=filters,
                                            threads=threads, console=console, by=by)
        except RunInterrupted as e:
            raise fail(str(e), code=1) from None
        except ValueError as e:
            raise fail(str(e)) from None
        console.print(f"[green]wrote[/] {run_dir}")
