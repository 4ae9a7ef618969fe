"""A run folder from one program over questions: :func:`run_eval`, the step `eval`, search trials, the held-out
test evaluation and `optimize` share. It wires :func:`~medjp_agent.evaluate.evaluate` to its observers (the run
writer, the progress bar, and any the caller adds); the questions themselves are asked only there.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
from rich.console import Console

from medjp_agent.data import Question
from medjp_agent.errors import MedjpWarning, RunInterrupted, user_input
from medjp_agent.evaluate import CallMeter, Observer, evaluate
from medjp_agent.lm import build_lm, describe_lm, generation_settings
from medjp_agent.lm.options import LMOptions
from medjp_agent.naming import counted
from medjp_agent.paths import inside
from medjp_agent.rerun import resume_hint
from medjp_agent.results import RunManifest, RunSummary, RunWriter
from medjp_agent.runlock import holding
from medjp_agent.signatures import MedicalQA, PromptFormat, resolve_format
from medjp_agent.views import RunProgress, summary_table, usage_line

PROGRAM, FORMAT_FILE = "program.json", "format.yaml"


@dataclass(frozen=True)
class RunInfo:
    """What a run folder's manifest records besides the model and the format."""

    kind: str = "eval"
    data: str = ""
    filters: Mapping[str, Any] = field(default_factory=dict)
    optimizer: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation into a run folder.

    Args:
        questions: What to ask (a folder that already holds some of them resumes: only the rest are asked).
        program: The program asking them: ``MedicalQA``, or a DSPy module with its ``format`` (a
            :class:`PromptFormat`, recorded in the manifest) whose prediction carries an ``extraction``.
        lm: Any DSPy LM, or :class:`LMOptions` to build one.
        out: The run folder.
        threads: Questions in flight at once.
        info: What the manifest records.
        observers: Observers besides the writer and the progress bar (a trial reporter, a live view).
        meter: Counts the calls into a budget shared by several evaluations.
        console: Where the progress bar and the summary table go (None: silent).
        by: The summary table's grouping.
    """

    questions: Sequence[Question]
    program: dspy.Module
    lm: dspy.BaseLM | LMOptions
    out: Path
    threads: int = 16
    info: RunInfo = RunInfo()
    observers: Sequence[Observer] = ()
    meter: CallMeter | None = None
    console: Console | None = None
    by: str = "year"


def run_eval(config: EvalConfig) -> RunSummary:
    """Evaluate into ``config.out`` (results.jsonl, summary.json, manifest.json, program.json, format.yaml).

    The folder is locked first (before a model loads) and for the whole run: another process writing it is refused
    with :class:`~medjp_agent.runlock.RunFolderBusy`. Raises :class:`RunInterrupted` when the LM fails, saying how
    much is saved and how to resume.
    """
    with holding(config.out):
        return _run_eval_locked(config)


def _run_eval_locked(config: EvalConfig) -> RunSummary:
    if isinstance(config.lm, dspy.BaseLM):
        lm = config.lm
    else:
        with user_input("LM options"):
            lm = build_lm(config.lm)
    fmt: PromptFormat = config.program.format
    writer = RunWriter(config.out, manifest_for(config, fmt, lm))
    if dropped := writer.keep_only({q.id for q in config.questions}):
        warnings.warn(MedjpWarning(f"{writer.dir}: dropped {counted(dropped, 'result')} of questions no longer "
                                   "selected (the data changed since they were answered)"), stacklevel=2)
    todo = [q for q in config.questions if q.id not in writer.done_ids]
    progress = RunProgress(len(config.questions), writer.results, console=config.console,
                           disable=config.console is None, transient=False)
    start = time.perf_counter()
    try:
        with progress:
            evaluate(config.program, todo, lm, threads=config.threads, observers=[writer, progress, *config.observers],
                     meter=config.meter)
    except RunInterrupted as e:
        hint = resume_hint(e.__cause__, len(writer.done_ids), len(config.questions), writer.dir)
        raise RunInterrupted(f"{e}. {hint}") from e.__cause__
    except KeyboardInterrupt:
        # Re-raised as it is (a search stops on it), but the user should not have to guess what was kept.
        if config.console is not None:
            config.console.print(f"[yellow]interrupted:[/] {len(writer.done_ids)} of {len(config.questions)} "
                                 f"questions answered are saved in {writer.dir}; run the same command again to "
                                 "resume", highlight=False)
        raise
    finally:
        summary = writer.finalize(n_expected=len(config.questions), wall_s=time.perf_counter() - start)
    config.program.save(str(config.out / PROGRAM))
    (config.out / FORMAT_FILE).write_text(fmt.to_yaml(), encoding="utf-8")
    if config.console is not None:
        title = f"{config.out.name} · {fmt.name} · {describe_lm(lm)['model']}"
        config.console.print(summary_table(summary, by=config.by, title=title))
        config.console.print(usage_line(summary), style="dim")
    return summary


def manifest_for(config: EvalConfig, fmt: PromptFormat, lm: dspy.BaseLM) -> RunManifest:
    described = describe_lm(lm)
    info = config.info
    return RunManifest.create(
        name=config.out.name, kind=info.kind, data=info.data, model=described["model"], adapter=described["adapter"],
        backend=described["backend"], format=fmt.to_dict(), optimizer=info.optimizer, filters=dict(info.filters),
        generation=generation_settings(lm.kwargs), n_questions=len(config.questions), extra=dict(info.extra),
    )


def evaluate_run(questions: Sequence[Question], fmt: str | PromptFormat, lm: LMOptions | dspy.BaseLM, *,
                 out: str | Path | None = None, threads: int = 16, console: Console | None = None,
                 **info: Any) -> tuple[RunSummary, Path]:
    """``MedicalQA(fmt)`` over ``questions`` into ``out`` (default ``runs/<format>``); ``info``: :class:`RunInfo`."""
    program = MedicalQA(resolve_format(fmt))
    run_dir = Path(out) if out else inside("runs", program.format.name)
    config = EvalConfig(list(questions), program, lm, run_dir, threads=threads, console=console,
                        info=dataclasses.replace(RunInfo(), **info))
    return run_eval(config), run_dir
