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

from medjp_agent.errors import ConfigError
from medjp_agent.evaluate import CallMeter, counting_calls
from medjp_agent.lm import describe_lm
from medjp_agent.paths import inside
from medjp_agent.results import RunManifest, RunWriter
from medjp_agent.runs import EvalConfig, RunInfo, run_eval
from medjp_agent.signatures import MedicalQA, PromptFormat

from .dspy_optimizers import OPTIMIZERS, OptimizerSettings, compile_program, optimizer_spec
from .heldout import Finalist, TestRun, evaluate_finalists, save_best
from .search import load_search
from .splits import DEFAULT_FRACTIONS, Splits

PROGRAMS_DIR, DEV_DIR = "programs", "dev"


@dataclass(frozen=True)
class OptimizeConfig:
    """Everything `medjp optimize` needs; its flags build one.

    Args:
        optimizer: A name in :data:`~.dspy_optimizers.OPTIMIZERS`.
        formats: The formats to optimize within (several: the best on dev goes to test).
        splits: Train (the optimizer's trainset), dev (its valset, and the choice) and test questions.
        lm: The LM answering; ``proposer`` (default ``lm``) writes instructions or reflects.
        out: Run folder (manifest, summary, ``programs/``, ``dev/<format>``, ``test/<name>``, best program).
        settings: The optimizers' budget knobs.
        data, filters, extra: What the manifests record.
        console: Where progress and tables go (None: silent).
    """

    optimizer: str
    formats: Sequence[PromptFormat]
    splits: Splits
    lm: dspy.BaseLM
    out: Path
    proposer: dspy.BaseLM | None = None
    settings: OptimizerSettings = OptimizerSettings()
    data: str = ""
    filters: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    console: Console | None = None

    def __post_init__(self) -> None:
        optimizer_spec(self.optimizer)
        if not self.formats:
            raise ConfigError("optimize: no format to optimize")


@dataclass(frozen=True)
class OptimizeResult:
    """An optimize run: which format won (by dev accuracy when there were several) and the test results.

    ``test`` holds the optimized program (``<optimizer>-<format>``) and the same format unoptimized (``<format>``);
    ``lm_calls`` counts every LM call of this run: compiling (the proposer's too), dev and test evaluations.
    """

    optimizer: str
    chosen: str
    dev_accuracy: dict[str, float]
    test: dict[str, TestRun]
    compile_s: dict[str, float] = field(default_factory=dict)
    resumed: tuple[str, ...] = ()
    lm_calls: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def formats_from_search(run_dir: Path, top_k: int) -> tuple[list[PromptFormat], tuple[float, ...], int]:
    """The best ``top_k`` fully evaluated formats of a `medjp search` folder, and its split (fractions, seed)."""
    searched, manifest = load_search(run_dir)
    formats = [PromptFormat.from_dict(o.format) for o in searched.top(top_k)]
    if not formats:
        raise ConfigError(f"{run_dir}: the search has no fully evaluated trial yet")
    recorded = manifest.extra.get("split") or {}
    return formats, tuple(recorded.get("fractions", DEFAULT_FRACTIONS)), int(recorded.get("seed", 0))


def run_optimize(config: OptimizeConfig) -> OptimizeResult:
    """Optimize within each format, pick the best on dev (when several), evaluate it and its baseline on test."""
    writer = RunWriter(config.out, _manifest(config))
    meter = CallMeter()
    with counting_calls(meter):
        programs, compile_s, resumed = _compile_all(config)
        common = {"data": config.data, "filters": dict(config.filters), "threads": config.settings.threads,
                  "console": config.console, "meter": meter}
        dev_accuracy = {name: _dev_accuracy(config, name, program, meter) for name, program in programs.items()
                        } if len(programs) > 1 else {}
        chosen = max(dev_accuracy, key=dev_accuracy.__getitem__) if dev_accuracy else config.formats[0].name
        best = programs[chosen]
        finalists = [Finalist(f"{config.optimizer}-{chosen}", best, config.optimizer),
                     Finalist(chosen, MedicalQA(best.format, demo_pool=config.splits.demo_pool(),
                                                seed=config.settings.seed))]
        test = evaluate_finalists(finalists, config.splits.test, config.lm, config.out, kind="optimize",
                                  extra={"optimizer": config.optimizer}, **common)
    save_best(best, config.out)
    result = OptimizeResult(config.optimizer, chosen, dev_accuracy, test, compile_s, tuple(resumed),
                            lm_calls=meter.calls)
    writer.finalize(optimize=result.to_dict())
    return result


def _compile_all(config: OptimizeConfig) -> tuple[dict[str, MedicalQA], dict[str, float], list[str]]:
    """Each format's optimized program: loaded when a previous run saved it, else compiled and saved at once."""
    pool = config.splits.demo_pool()
    programs: dict[str, MedicalQA] = {}
    compile_s: dict[str, float] = {}
    resumed = []
    for fmt in config.formats:
        path = inside(config.out / PROGRAMS_DIR, f"{fmt.name}.json")
        student = MedicalQA(fmt, demo_pool=pool, seed=config.settings.seed)
        if path.exists() and OPTIMIZERS[config.optimizer].saveable:
            student.load(str(path))
            programs[fmt.name] = student
            resumed.append(fmt.name)
            continue
        start = time.perf_counter()
        programs[fmt.name] = compile_program(config.optimizer, student, config.splits.train, config.splits.dev,
                                             config.lm, proposer=config.proposer, settings=config.settings)
        compile_s[fmt.name] = round(time.perf_counter() - start, 3)
        path.parent.mkdir(parents=True, exist_ok=True)
        programs[fmt.name].save(str(path))
    return programs, compile_s, resumed


def _dev_accuracy(config: OptimizeConfig, name: str, program: MedicalQA, meter: CallMeter) -> float:
    info = RunInfo(kind="optimize-dev", data=config.data, filters=dict(config.filters), optimizer=config.optimizer)
    summary = run_eval(EvalConfig(list(config.splits.dev), program, config.lm, inside(config.out / DEV_DIR, name),
                                  threads=config.settings.threads, info=info, console=config.console, meter=meter))
    return summary.accuracy


def _manifest(config: OptimizeConfig) -> RunManifest:
    info = describe_lm(config.lm)
    return RunManifest.create(
        name=config.out.name, kind="optimize", data=config.data, model=info["model"], adapter=info["adapter"],
        backend=info["backend"], optimizer=config.optimizer, filters=dict(config.filters),
        n_questions=len(config.splits.test),
        extra={"formats": [f.name for f in config.formats], "split": config.splits.to_dict(),
               "proposer": describe_lm(config.proposer or config.lm), **config.extra},
    )
