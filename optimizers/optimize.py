"""`medjp optimize`: a DSPy optimizer tuning instructions and demos within one format, or within a search's best k.

With one format, the optimized program and the unoptimized format go to the test split. With several (the
combined mode: Optuna picked the formats, the optimizer tunes within each), every optimized candidate is first
evaluated on the dev split and only the best one goes to test, so test questions never take part in a choice.

Resuming: DSPy's optimizers keep nothing when interrupted, so each compiled program is saved as soon as it exists
(``<out>/programs/<format>.json``) and loaded instead of compiled on the next run; dev and test evaluations are
ordinary run folders that resume question by question.

``max_lm_calls`` is exact: the LMs (the proposer's too) are wrapped in one :class:`~.budget_lm.BudgetLM`, so no
call past the budget is sent, even from inside a compile; the run then ends with what finished saved and
``OptimizeResult.stopped`` saying in which phase the budget ran out.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError
from rich.console import Console

from medjp_agent.errors import ConfigError, LMError, check_settings
from medjp_agent.evaluate import CallMeter, counting_calls
from medjp_agent.lm import describe_lm, generation_settings
from medjp_agent.lm.errors import NotRun
from medjp_agent.paths import inside
from medjp_agent.results import RunManifest, RunWriter
from medjp_agent.runs import EvalConfig, RunInfo, run_eval
from medjp_agent.signatures import MedicalQA, PromptFormat

from .budget_lm import BudgetLM, CallAllowance, LMBudgetSpent, quiet_refusals
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
        max_lm_calls: LM calls this run may send (compiling, the proposer's, dev and test); None: no limit.
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
    max_lm_calls: int | None = None
    data: str = ""
    filters: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    console: Console | None = None

    def __post_init__(self) -> None:
        optimizer_spec(self.optimizer)
        if not self.formats:
            raise ConfigError("optimize: no format to optimize")
        if self.max_lm_calls is not None and self.max_lm_calls < 1:
            raise ConfigError(f"--max-lm-calls must be at least 1, got {self.max_lm_calls}")


@dataclass(frozen=True)
class OptimizeResult:
    """An optimize run: which format won (by dev accuracy when there were several) and the test results.

    ``test`` holds the optimized program (``<optimizer>-<format>``) and the same format unoptimized (``<format>``);
    ``lm_calls`` counts every LM call of this run: compiling (the proposer's too), dev and test evaluations.
    ``stopped`` says why the run ended early ("LM-call budget of N spent during <phase>"); what finished before
    is in the other fields (``chosen`` is empty when no format was chosen yet) and saved.
    """

    optimizer: str
    chosen: str
    dev_accuracy: dict[str, float]
    test: dict[str, TestRun]
    compile_s: dict[str, float] = field(default_factory=dict)
    resumed: tuple[str, ...] = ()
    lm_calls: int = 0
    stopped: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SearchPick:
    """What the combined mode takes from a `medjp search` folder: its best formats and its split, and the data,
    filters, model and adapter it ran with (the formats were chosen on those)."""

    formats: list[PromptFormat]
    fractions: tuple[float, ...]
    seed: int
    data: str
    filters: dict[str, Any]
    model: str
    adapter: str


def formats_from_search(run_dir: Path, top_k: int) -> SearchPick:
    """The best ``top_k`` fully evaluated formats of a `medjp search` folder, with its split and inputs."""
    check_settings(("--top-k", top_k, top_k >= 1, "must be at least 1"))
    searched, manifest = load_search(run_dir)
    formats = [PromptFormat.from_dict(o.format) for o in searched.top(top_k)]
    if not formats:
        raise ConfigError(f"{run_dir}: the search has no fully evaluated trial yet")
    recorded = manifest.extra.get("split") or {}
    if not isinstance(recorded, dict) or not isinstance(recorded.get("seed", 0), int):
        raise ConfigError(f"{run_dir}/manifest.json: extra.split: expected {{fractions, seed}}, got {recorded!r}")
    return SearchPick(formats, tuple(recorded.get("fractions", DEFAULT_FRACTIONS)), int(recorded.get("seed", 0)),
                      manifest.data, dict(manifest.filters), manifest.model, manifest.adapter)


def run_optimize(config: OptimizeConfig) -> OptimizeResult:
    """Optimize within each format, pick the best on dev (when several), evaluate it and its baseline on test.

    When ``max_lm_calls`` runs out the run ends there, returning (and writing to the summary) what finished.
    """
    writer = RunWriter(config.out, _manifest(config))
    meter = CallMeter()
    allowance = CallAllowance(config.max_lm_calls)
    if config.max_lm_calls is not None:
        quiet_refusals()
        config = dataclasses.replace(config, lm=BudgetLM(config.lm, allowance),
                                     proposer=BudgetLM(config.proposer, allowance) if config.proposer else None)
    done = _Done()
    try:
        with counting_calls(meter, lms=[lm for lm in (config.lm, config.proposer) if lm is not None]):
            _optimize(config, done, allowance, meter)
    except LMBudgetSpent as e:
        done.stopped = str(e)
    except CompileFailed as e:
        done.stopped = str(e)
        _finish(config, done, meter, writer)
        raise
    return _finish(config, done, meter, writer)


def _finish(config: OptimizeConfig, done: "_Done", meter: CallMeter, writer: RunWriter) -> OptimizeResult:
    result = OptimizeResult(config.optimizer, done.chosen, done.dev_accuracy, done.test, done.compile_s,
                            tuple(done.resumed), lm_calls=meter.calls, stopped=done.stopped)
    writer.finalize(optimize=result.to_dict())
    return result


class CompileFailed(LMError):
    """An optimizer's own prompts (instruction proposals, reflections) got no usable reply: longer than the model's
    context, or not in the structured form DSPy asks for. What finished is recorded."""

    def __init__(self, config: OptimizeConfig, fmt: str, cause: Exception):
        who = describe_lm(config.proposer or config.lm)["model"]
        reason = str(cause).splitlines()[0][:300].rstrip(".")
        super().__init__(f"{config.optimizer} could not compile {fmt}: {reason}. Its own prompts go to {who}; they are "
                         "longer than exam prompts and ask for DSPy's structured replies, which a small or base model "
                         "often cannot give: give an instruction-following model with a long context as "
                         "--reflection-model")


@dataclass
class _Done:
    """What an optimize run has finished so far, filled phase by phase (all of it is reported if the budget ends
    the run)."""

    compile_s: dict[str, float] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)
    dev_accuracy: dict[str, float] = field(default_factory=dict)
    chosen: str = ""
    test: dict[str, TestRun] = field(default_factory=dict)
    stopped: str = ""


def _optimize(config: OptimizeConfig, done: _Done, allowance: CallAllowance, meter: CallMeter) -> None:
    """The phases: compile each format, choose on dev (several formats), save the best, evaluate it on test."""
    programs = _compile_all(config, done, allowance)
    for name, program in programs.items() if len(programs) > 1 else ():
        with allowance.phase(f"the dev evaluation of {name}"):
            done.dev_accuracy[name] = _dev_accuracy(config, name, program, meter)
    done.chosen = max(done.dev_accuracy, key=done.dev_accuracy.__getitem__) if done.dev_accuracy \
        else config.formats[0].name
    best = programs[done.chosen]
    save_best(best, config.out)
    finalists = [Finalist(f"{config.optimizer}-{done.chosen}", best, config.optimizer),
                 Finalist(done.chosen, MedicalQA(best.format, demo_pool=config.splits.demo_pool(),
                                                 seed=config.settings.seed))]
    with allowance.phase("the test evaluation"):
        done.test = evaluate_finalists(
            finalists, config.splits.test, config.lm, config.out, kind="optimize", data=config.data,
            filters=dict(config.filters), threads=config.settings.threads, console=config.console,
            extra={"optimizer": config.optimizer}, meter=meter)


def _compile_all(config: OptimizeConfig, done: _Done, allowance: CallAllowance) -> dict[str, MedicalQA]:
    """Each format's optimized program: loaded when a previous run saved it, else compiled and saved at once."""
    pool = config.splits.demo_pool()
    programs: dict[str, MedicalQA] = {}
    for fmt in config.formats:
        path = inside(config.out / PROGRAMS_DIR, f"{fmt.name}.json")
        student = MedicalQA(fmt, demo_pool=pool, seed=config.settings.seed)
        if path.exists() and OPTIMIZERS[config.optimizer].saveable:
            student.load(str(path))
            programs[fmt.name] = student
            done.resumed.append(fmt.name)
            continue
        start = time.perf_counter()
        with allowance.phase(f"compiling {fmt.name} ({config.optimizer})"):
            try:
                programs[fmt.name] = compile_program(config.optimizer, student, config.splits.train,
                                                     config.splits.dev, config.lm, proposer=config.proposer,
                                                     settings=config.settings)
            except (NotRun, AdapterParseError) as e:
                raise CompileFailed(config, fmt.name, e) from e
        done.compile_s[fmt.name] = round(time.perf_counter() - start, 3)
        path.parent.mkdir(parents=True, exist_ok=True)
        programs[fmt.name].save(str(path))
    return programs


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
        generation=generation_settings(config.lm.kwargs), n_questions=len(config.splits.test),
        extra={"formats": [f.name for f in config.formats], "split": config.splits.to_dict(),
               "proposer": describe_lm(config.proposer or config.lm), **config.extra},
    )
