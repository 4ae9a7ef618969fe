"""`medjp eval`: run the exam module over questions and write a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medjp_agent.lm.options import LMOptions

from .options import (
    ByOpt, DataOpt, FormatOpt, LogPromptsOpt, console, load_questions, reports_errors, with_data_options,
    with_lm_options, writable_dir,
)

DEFAULT_FORMAT = "paper-instruction-in-header"


def register(app: typer.Typer) -> None:
    @app.command("eval")
    @reports_errors
    @with_lm_options
    @with_data_options
    def eval_(
        data: DataOpt = "sample",
        format: FormatOpt = DEFAULT_FORMAT,
        out: Annotated[Path | None, typer.Option(callback=writable_dir, help="Run folder (default runs/<model>__<format>__<time>). Re-running with the same --out resumes it.")] = None,
        threads: Annotated[int, typer.Option(min=1, help="Questions in flight at once; the backend batches them.")] = 16,
        by: ByOpt = "year",
        log_prompts: LogPromptsOpt = False,
        *,
        selection: dict,
        lm: LMOptions,
    ) -> None:
        """Answer exam questions in one prompt format, score them and write results.jsonl + summary.json."""
        from medjp_agent.clash import check_run_folder
        from medjp_agent.errors import user_input
        from medjp_agent.lm import generation_settings
        from medjp_agent.naming import default_run_name
        from medjp_agent.paths import inside
        from medjp_agent.prompt_log import log_prompts as keep_prompts
        from medjp_agent.runs import EvalConfig, RunInfo, run_eval
        from medjp_agent.signatures import MedicalQA, exemplar_pool, resolve_format

        keep_prompts(log_prompts)
        dataset, questions, filters = load_questions(data, **selection)
        with user_input("--format"):
            fmt = resolve_format(format)
        # The paper formats take IgakuQA's own exemplar from an IgakuQA checkout; the manifest says which was used.
        pool = exemplar_pool(data, fmt)
        program = MedicalQA(fmt, demo_pool=list(pool.demos))
        run_dir = out or inside("runs", default_run_name(lm.model, program.format.name))
        check_run_folder(run_dir, model=lm.model, kind="eval", data=dataset.source, format=program.format.to_dict(),
                         filters=filters, generation=generation_settings(lm.request()))
        run_eval(EvalConfig(questions, program, lm, run_dir, threads=threads, console=console, by=by,
                            info=RunInfo(data=dataset.source, filters=filters,
                                         extra={"exemplar": pool.note} if pool.note else {})))
        console.print(f"[green]wrote[/] {run_dir}")
