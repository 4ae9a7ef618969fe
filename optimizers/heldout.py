"""The end of a search or an optimization: the winner and its baselines on the held-out test split.

Each program is evaluated into an ordinary run folder (``<out>/test/<name>``, written by
:func:`medjp_agent.runs.run_eval`), so `medjp report` compares them like any runs, and a killed evaluation
resumes question by question. The winner is also saved at the top of ``<out>`` as a DSPy program
(``best_program.json``, loadable with ``MedicalQA(...).load``) and as a format file (``best_format.yaml``, usable
with ``--format``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy
from rich.console import Console

from medjp_agent.data import Question
from medjp_agent.evaluate import CallMeter
from medjp_agent.paths import inside
from medjp_agent.runs import EvalConfig, RunInfo, run_eval
from medjp_agent.signatures import MedicalQA, PromptFormat, resolve_format

TEST_DIR = "test"
BEST_PROGRAM, BEST_FORMAT = "best_program.json", "best_format.yaml"


@dataclass(frozen=True)
class Finalist:
    """A program to evaluate on test; ``optimizer`` names the DSPy optimizer that made it (empty: none)."""

    name: str
    program: MedicalQA
    optimizer: str = ""


@dataclass(frozen=True)
class TestRun:
    """One finalist's held-out result and where its run folder is."""

    name: str
    run_dir: str
    accuracy: float
    n_questions: int
    points: int
    points_possible: int
    format: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def evaluate_finalists(finalists: Sequence[Finalist], questions: Sequence[Question], lm: dspy.BaseLM, out: Path, *,
                       kind: str, data: str = "", filters: Mapping[str, Any] | None = None, threads: int = 8,
                       console: Console | None = None, extra: Mapping[str, Any] | None = None,
                       meter: CallMeter | None = None) -> dict[str, TestRun]:
    """Evaluate every finalist on ``questions`` into ``out/test/<name>``; returns the results by name."""
    runs = {}
    for finalist in finalists:
        run_dir = inside(out / TEST_DIR, finalist.name)
        info = RunInfo(kind=kind, data=data, filters=dict(filters or {}), optimizer=finalist.optimizer,
                       extra=dict(extra or {}))
        summary = run_eval(EvalConfig(list(questions), finalist.program, lm, run_dir, threads=threads,
                                      console=console, info=info, meter=meter))
        overall = summary.overall
        runs[finalist.name] = TestRun(finalist.name, str(run_dir), summary.accuracy, summary.n_questions,
                                      int(overall["points"]), int(overall["points_possible"]),
                                      finalist.program.format.to_dict())
    return runs


def save_best(program: MedicalQA, out: Path) -> None:
    """``best_program.json`` (DSPy ``save``) and ``best_format.yaml`` (one named format) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    program.save(str(out / BEST_PROGRAM))
    (out / BEST_FORMAT).write_text(program.format.to_yaml(), encoding="utf-8")


def finish_search(best: PromptFormat, references: Sequence[str | PromptFormat], questions: Sequence[Question],
                  lm: dspy.BaseLM, out: Path, *, demo_pool: Sequence[dict[str, Any]], seed: int = 0,
                  **kwargs: Any) -> dict[str, TestRun]:
    """A search's end: its best format (``test/best``) and the references (``test/<name>``) on the test split,
    each run exactly as the search ran it, so the comparison is like with like."""
    def program(fmt: str | PromptFormat) -> MedicalQA:
        return MedicalQA(fmt, demo_pool=demo_pool, seed=seed)

    winner = program(best)
    refs = [resolve_format(f) for f in references]
    finalists = [Finalist("best", winner), *(Finalist(f.name, program(f)) for f in refs)]
    runs = evaluate_finalists(finalists, questions, lm, out, kind="search-test", **kwargs)
    save_best(winner, out)
    return runs
