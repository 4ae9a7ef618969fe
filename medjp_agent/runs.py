"""Evaluate one program over questions into a run folder: the step `eval`, `search`, `optimize` and `demo` share."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import dspy
import yaml
from rich.console import Console

from medjp_agent.data import Question
from medjp_agent.evaluate import run_questions
from medjp_agent.lm import build_lm, describe_lm
from medjp_agent.lm.options import LMOptions
from medjp_agent.results import RunManifest, RunSummary, RunWriter
from medjp_agent.signatures import MedicalQA, PromptFormat, resolve_format
from medjp_agent.views import RunProgress, summary_table, usage_line

PROGRAM, FORMAT_FILE = "program.json", "format.yaml"


def evaluate_run(
    questions: list[Question],
    fmt: str | PromptFormat,
    lm: LMOptions | dspy.BaseLM,
    *,
    out: str | Path | None = None,
    data: str = "",
    filters: dict[str, Any] | None = None,
    threads: int = 16,
    console: Console | None = None,
    by: str = "year",
    program: MedicalQA | None = None,
    kind: str = "eval",
    optimizer: str = "",
    extra: dict[str, Any] | None = None,
) -> tuple[RunSummary, Path]:
    """Answer ``questions`` with ``program`` (default ``MedicalQA(fmt)``) and write the run folder.

    ``lm`` is an :class:`LMOptions` (built here) or any DSPy LM. Re-running into the same folder resumes it.
    """
    fmt = program.format if program is not None else resolve_format(fmt)
    lm_obj = lm if isinstance(lm, dspy.BaseLM) else build_lm(lm)
    info = describe_lm(lm_obj)
    run_dir = Path(out) if out else Path("runs") / fmt.name
    manifest = RunManifest.create(
        name=run_dir.name, kind=kind, data=data, model=info["model"], adapter=info["adapter"], backend=info["backend"],
        format=fmt.to_dict(), optimizer=optimizer, filters=filters or {}, n_questions=len(questions), extra=extra or {},
    )
    writer = RunWriter(run_dir, manifest)
    program = program or MedicalQA(fmt)
    wanted = {q.id for q in questions}
    start = time.perf_counter()
    progress = RunProgress(len(questions), [r for r in writer.results if r.id in wanted], console=console,
                           disable=console is None, transient=False)
    try:
        with progress:
            run_questions(program, questions, writer, lm=lm_obj, threads=threads, on_result=progress.update)
    finally:
        summary = writer.finalize(n_expected=len(questions), wall_s=time.perf_counter() - start)
    program.save(str(run_dir / PROGRAM))
    (run_dir / FORMAT_FILE).write_text(yaml.safe_dump({fmt.name: fmt.to_dict()}, allow_unicode=True, sort_keys=False),
                                       encoding="utf-8")
    if console is not None:
        console.print(summary_table(summary, by=by, title=f"{run_dir.name} · {fmt.name} · {info['model']}"))
        console.print(usage_line(summary), style="dim")
    return summary, run_dir
