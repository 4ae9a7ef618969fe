"""`medjp optimize`: a DSPy optimizer tuning instructions and demos within one format, or within a search's best k.

With one format, the optimized program and the unoptimized format go to the test split. With several (the
combined mode: Optuna picked the formats, the optimizer tunes within each), every optimized candidate is first
evaluated on the dev split and only the best one goes to test, so test questions never take part in a choice.

Resuming: DSPy's optimizers keep nothing when interrupted, so each compiled program is saved as soon as it exists
(``<out>/programs/<format>.json``) and loaded instead of compiled on the next run; dev and test evaluations are
ordinary run folders that resume question by question.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
from rich.console import Console

from medjp_agent.runs import evaluate_run
from medjp_agent.signatures import MedicalQA, PromptFormat

from .dspy_optimizers import OPTIMIZERS, OptimizerSettings, compile_program
from .heldout import Finalist, TestRun, evaluate_finalists, save_best
from .splits import Splits

PROGRAMS_DIR, DEV_DIR = "programs", "dev"


@dataclass(frozen=True)
class OptimizeResult:
    """An optimize run: which format won (by dev accuracy when there were several) and the test results.

    ``test`` holds the optimized program (``<optimizer>-<format>``) and the same format unoptimized (``<format>``).
    """

    optimizer: str
    chosen: str
    dev_accuracy: dict[str, float]
    test: dict[str, TestRun]
    compile_s: dict[str, float] = field(default_factory=dict)
    resumed: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_optimize(optimizer: str, formats: Sequence[PromptFormat], splits: Splits, lm: dspy.BaseLM, out: Path, *,
                 proposer: dspy.BaseLM | None = None, settings: OptimizerSettings = OptimizerSettings(),
                 data: str = "", filters: Mapping[str, Any] | None = None, console: Console | None = None) -> OptimizeResult:
    """Optimize within each format, pick the best on dev (when several), evaluate it and its baseline on test."""
    if not formats:
        raise ValueError("optimize: no format to optimize")
    pool = splits.demo_pool()
    programs: dict[str, MedicalQA] = {}
    compile_s: dict[str, float] = {}
    resumed = []
    for fmt in formats:
        path = out / PROGRAMS_DIR / f"{fmt.name}.json"
        student = MedicalQA(fmt, demo_pool=pool, seed=settings.seed)
        if path.exists() and OPTIMIZERS[optimizer].saveable:
            student.load(str(path))
            programs[fmt.name] = student
            resumed.append(fmt.name)
            continue
        start = time.perf_counter()
        programs[fmt.name] = compile_program(optimizer, student, splits.train, splits.dev, lm, proposer=proposer,
                                             settings=settings)
        compile_s[fmt.name] = round(time.perf_counter() - start, 3)
        path.parent.mkdir(parents=True, exist_ok=True)
        programs[fmt.name].save(str(path))
    common = {"data": data, "filters": dict(filters or {}), "threads": settings.threads, "console": console}
    dev_accuracy = {}
    if len(programs) > 1:
        for name, program in programs.items():
            summary, _ = evaluate_run(list(splits.dev), program.format, lm, out=out / DEV_DIR / name, program=program,
                                      kind="optimize-dev", optimizer=optimizer, **common)
            dev_accuracy[name] = summary.accuracy
    chosen = max(dev_accuracy, key=dev_accuracy.__getitem__) if dev_accuracy else formats[0].name
    best = programs[chosen]
    finalists = [Finalist(f"{optimizer}-{chosen}", best, optimizer),
                 Finalist(chosen, MedicalQA(best.format, demo_pool=pool, seed=settings.seed))]
    test = evaluate_finalists(finalists, splits.test, lm, out, kind="optimize", extra={"optimizer": optimizer}, **common)
    save_best(best, out)
    return OptimizeResult(optimizer, chosen, dev_accuracy, test, compile_s, tuple(resumed))
