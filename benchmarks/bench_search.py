"""Does a format search find the best prompt format, and on how many LM calls?

A surrogate LM (:class:`PlantedLM`, a scripted ``dspy.BaseLM``) answers exam questions with a probability that
depends on the format in a planted, additive way, so the best format is known; :class:`PlantedScorer` also scores
options by log-probability, noisily and blind to reasoning, as a local model does. The benchmark runs TPE +
WilcoxonPruner, TPE without pruning, random search (with and without pruning), grid search and the screened search
(log-probability stage 1, generation stage 2 with pruning) over several seeds, and reports how often each finds the
planted best, after how many LM calls (screening included), the calls pruning saves and, for the screened search,
Spearman's ρ between the stages' rankings. The goal: the planted best on 5 of 5 seeds with at most 35 % of the
unpruned search's LM calls; the JSON's top-level ``calls_pruned`` etc. describe the best early-stopping
configuration, ``configs`` holds one object per configuration.

    python benchmarks/bench_search.py --seeds 5 --n-trials 60 --json benchmarks/results/search.json

The surrogate reads the format from the active DSPy adapter (``MedicalQA`` activates its ``FormatAdapter`` around
each LM call), finds the question in the prompt, and replies in that format's answer form, choice shuffling included.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import NormalDist
from typing import Any

import dspy
import optuna
from rich.console import Console
from rich.table import Table

from medjp_agent.data import LABELS, Question, load_exemplars
from medjp_agent.lm.scripted import ScriptedLM
from medjp_agent.optimizers import (
    Budget, FormatSpace, ScreenSettings, SearchConfig, SearchResult, SearchSettings, Splits, run_search,
)
from medjp_agent.signatures import PromptFormat, Renderer

#: Planted effects on P(correct): the best format is XML, upper-case labels, chain of thought, a specialist persona.
EFFECTS: dict[str, dict[Any, float]] = {
    "template": {"xml": 0.15, "json": -0.05},
    "labels": {"upper": 0.12, "roman": -0.05},
    "reasoning": {"cot": 0.12, "direct": -0.05},
    "persona": {"specialist": 0.10},
    "language": {"en": -0.05},
}
BASE = 0.35


class PlantedLM(ScriptedLM):
    """Answers in the active format; right with probability ``base + Σ effects`` (plus a per-question offset).

    Args:
        bank: Every question it may be asked (the bundled exemplars are added, for Medprompt's self-generated CoT).
        effects: ``axis -> value -> change of P(correct)``; axes and values not listed change nothing.
        base: P(correct) of a format with no listed value.
        spread: Questions differ in difficulty by up to ± this much, the same for every format (what makes a
            paired test worthwhile).
        seed: Seed of the hashed coin flips; a (question, format) pair always gets the same outcome.
    """

    def __init__(self, bank: Sequence[Question], effects: Mapping[str, Mapping[Any, float]] | None = None,
                 base: float = 1.0, spread: float = 0.0, seed: int = 0):
        super().__init__(self._reply, model="planted")
        self.bank = [*bank, *load_exemplars()]
        self.effects = {axis: dict(values) for axis, values in (effects or {}).items()}
        self.base, self.spread, self.seed = base, spread, seed

    def p_correct(self, fmt: PromptFormat) -> float:
        p = self.base + sum(values.get(getattr(fmt, axis), 0.0) for axis, values in self.effects.items())
        return min(1.0, max(0.0, p))

    def planted_best(self) -> dict[str, Any]:
        """The best value of every axis with an effect (axes without one may take any value)."""
        return {axis: max(values, key=values.get) for axis, values in self.effects.items() if max(values.values()) > 0}

    def _uniform(self, *key: Any) -> float:
        digest = hashlib.sha256(":".join(map(str, (self.seed, *key))).encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def _reply(self, prompt: str, _kwargs: dict[str, Any]) -> str:
        fmt: PromptFormat = dspy.settings.adapter.fmt
        question = max(self.bank, key=lambda q: _find(prompt, q.text))
        offset = self.spread * (2 * self._uniform(question.id) - 1)
        fmt_key = json.dumps({**fmt.to_dict(), "name": ""}, sort_keys=True)
        right = self._uniform(question.id, fmt_key) < self.p_correct(fmt) + offset
        answer = shown_answer(prompt, question, right)
        return Renderer(fmt).response("考察", answer, shown_choices(prompt, question))


class PlantedScorer(PlantedLM):
    """A :class:`PlantedLM` that also scores options like a local model (``score_continuations``): the gold option's
    logit leads the others by ``signal × P(correct)`` of the format as scored (its direct-answer variant), and every
    logit carries standard normal noise per (question, format, option). The log-probability then ranks surfaces
    the way accuracy does, noisily, and is blind to reasoning, as a real model's is."""

    def __init__(self, *args: Any, signal: float = 8.0, **kw: Any):
        super().__init__(*args, **kw)
        self.signal = signal

    def score_continuations(self, messages: list[dict[str, Any]], continuations: list[str]) -> list[float]:
        fmt: PromptFormat = dspy.settings.adapter.fmt
        prompt = "\n".join(str(m["content"]) for m in messages)
        question = max(self.bank, key=lambda q: _find(prompt, q.text))
        shown = shown_answer(prompt, question).split(",")
        fmt_key = json.dumps({**fmt.to_dict(), "name": ""}, sort_keys=True)
        p = self.p_correct(fmt) + self.spread * (2 * self._uniform(question.id) - 1)
        noise = [NormalDist().inv_cdf(min(1 - 1e-9, max(1e-9, self._uniform(question.id, fmt_key, i))))
                 for i in range(len(continuations))]
        return [z + (self.signal * p if LABELS[i] in shown else 0.0) for i, z in enumerate(noise)]


def _find(prompt: str, text: str) -> int:
    # The JSON template shows texts JSON-escaped.
    return max(prompt.rfind(text), prompt.rfind(json.dumps(text, ensure_ascii=False)[1:-1]))


def _display_order(prompt: str, question: Question) -> list[int]:
    """Display slot -> canonical index of ``question``'s choices in ``prompt``, which may shuffle them."""
    start = _find(prompt, question.text)
    positions = [_find(prompt[start:], choice) for choice in question.choices]
    return sorted(range(len(question.choices)), key=positions.__getitem__)


def shown_choices(prompt: str, question: Question) -> list[str]:
    """``question``'s choice texts in the order ``prompt`` shows them."""
    return [question.choices[i] for i in _display_order(prompt, question)] if question.choices else []


def shown_answer(prompt: str, question: Question, right: bool = True) -> str:
    """The gold answer (or a wrong one) in the labels as *shown* in ``prompt``, which may shuffle the choices."""
    if not question.choices:
        return question.answers[0] if right else "0"
    shown = _display_order(prompt, question)
    gold = {LABELS.index(a) for a in question.answers}
    picked = gold if right else {next(i for i in range(len(shown)) if i not in gold)}
    return ",".join(LABELS[slot] for slot, i in enumerate(shown) if i in picked)


def synthetic_exam(n: int, seed: int = 0) -> list[Question]:
    """``n`` single-answer questions with unique, equally long texts (none is a substring of another)."""
    out = []
    for i in range(n):
        gold = LABELS[int(hashlib.sha256(f"{seed}:{i}".encode()).hexdigest(), 16) % 5]
        out.append(Question(id=f"B{i:04d}", year=2025, section="B-A", text=f"症例{i:04d}について正しいのはどれか。",
                            choices=tuple(f"所見{i:04d}-{k}" for k in range(5)), answers=(gold,)))
    return out


def bench_space() -> FormatSpace:
    """Surface and structure axes (no cost multipliers such as ensembles, which would confound the call counts);
    every other field keeps the paper format's value, so the paper's two formats lie in the space."""
    space = FormatSpace.default().restrict(
        template=["harness", "alpaca", "plain", "chat", "markdown", "xml", "json"],
        instruction_position=["header", "preamble"], language=["ja", "en"],
        persona=["none", "examinee", "specialist", "professor"], labels=["latin", "upper", "katakana", "digits", "roman"],
        wrapper=["dot", "paren", "bracket"], separator=["：", ": "], reasoning=["direct", "cot", "summarize"],
        shots=[0, 1],
    )
    kept = ("choice_layout", "casing", "joiner", "answer_word", "full_width", "chat", "demo_selection", "demo_order",
            "output", "shuffle_choices", "self_consistency", "ensemble", "self_generated_cot", "wording")
    return space.fixed(**{name: getattr(space.base, name) for name in kept})


CONFIGS: dict[str, dict[str, Any]] = {
    "tpe+wilcoxon": {"sampler": "tpe", "prune": True},
    "tpe": {"sampler": "tpe", "prune": False},
    "random+wilcoxon": {"sampler": "random", "prune": True},
    "random": {"sampler": "random", "prune": False},
    "grid": {"sampler": "grid", "prune": False},
    # Stage 1 scores surfaces by log-probability on a dev sample; stage 2 searches the promoted ones by generation.
    "screen+tpe+wilcoxon": {"sampler": "tpe", "prune": True, "n_trials": 20,
                            "screen": {"n_trials": 80, "n_questions": 10, "promote": 0.1}},
}
#: Configurations that stop trials early, and the unpruned search they are measured against.
PRUNED, UNPRUNED = ("tpe+wilcoxon", "random+wilcoxon", "screen+tpe+wilcoxon"), "tpe"


def found(result: SearchResult, planted: Mapping[str, Any]) -> bool:
    return result.best is not None and all(result.best.format[k] == v for k, v in planted.items())


def screen_calls(result: SearchResult) -> int:
    return result.screen.lm_calls if result.screen is not None else 0


def calls_to_best(result: SearchResult) -> int | None:
    """LM calls spent up to and including the trial that ended as the best (the screening stage's included)."""
    if result.best is None:
        return None
    return screen_calls(result) + sum(t.lm_calls for t in result.trials if t.number <= result.best.number)


def run_config(name: str, seed: int, n_trials: int, dev: Sequence[Question], lm: PlantedLM) -> dict[str, Any]:
    options = dict(CONFIGS[name])
    screen = options.pop("screen", None)
    settings = SearchSettings(study=f"{name}-{seed}", storage=None, seed=seed, n_startup_trials=10, threads=1,
                              n_startup_steps=14, budget=Budget(n_trials=options.pop("n_trials", n_trials)), **options)
    start = time.perf_counter()
    result = run_search(SearchConfig(Splits((), tuple(dev), ()), lm, bench_space(), settings,
                                     screen=ScreenSettings(**screen) if screen else None))
    chosen = PromptFormat.from_dict(result.best.format) if result.best else None
    return {
        "config": name, "seed": seed, "lm_calls": result.lm_calls + screen_calls(result),
        "screen_lm_calls": screen_calls(result), "spearman": result.screen.spearman if result.screen else None,
        "lm_calls_saved": result.lm_calls_saved,
        "n_pruned": result.n_pruned, "best_found": found(result, lm.planted_best()),
        "calls_to_best": calls_to_best(result), "best_p": lm.p_correct(chosen) if chosen else 0.0,
        "best_dev_accuracy": result.best.accuracy if result.best else 0.0, "seconds": time.perf_counter() - start,
    }


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    found_rows = [r["calls_to_best"] for r in rows if r["best_found"]]
    return {
        "runs": len(rows), "best_found_rate": sum(r["best_found"] for r in rows) / len(rows),
        "lm_calls_mean": statistics.fmean(r["lm_calls"] for r in rows),
        "lm_calls_saved_mean": statistics.fmean(r["lm_calls_saved"] for r in rows),
        "pruned_trials_mean": statistics.fmean(r["n_pruned"] for r in rows),
        "calls_to_best_mean": statistics.fmean(found_rows) if found_rows else None,
        "best_p_mean": statistics.fmean(r["best_p"] for r in rows),
        "spearman_mean": statistics.fmean(rhos) if (rhos := [r["spearman"] for r in rows if r["spearman"] is not None])
        else None,
        "seconds_mean": statistics.fmean(r["seconds"] for r in rows),
    }


def table(summaries: Mapping[str, dict[str, Any]], planted_p: float) -> Table:
    t = Table(title=f"Format search on a planted surrogate (best format P(correct) = {planted_p:.2f})")
    for col in ("config", "found best", "LM calls", "saved by pruning", "pruned trials", "calls to best",
                "P(correct) of chosen"):
        t.add_column(col, justify="left" if col == "config" else "right")
    for name, s in summaries.items():
        t.add_row(name, f"{s['best_found_rate']:.0%}", f"{s['lm_calls_mean']:,.0f}", f"{s['lm_calls_saved_mean']:,.0f}",
                  f"{s['pruned_trials_mean']:.1f}",
                  f"{s['calls_to_best_mean']:,.0f}" if s["calls_to_best_mean"] is not None else "–",
                  f"{s['best_p_mean']:.3f}")
    return t


def best_configuration(summaries: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The early-stopping configuration that found the planted best most often (then: on fewest calls), against
    unpruned TPE."""
    name = max((n for n in PRUNED if n in summaries),
               key=lambda n: (summaries[n]["best_found_rate"], -summaries[n]["lm_calls_mean"]))
    pruned, unpruned = summaries[name], summaries[UNPRUNED]
    return {"best_config": name, "calls_pruned": pruned["lm_calls_mean"], "calls_unpruned": unpruned["lm_calls_mean"],
            "best_found_pruned": pruned["best_found_rate"], "best_found_unpruned": unpruned["best_found_rate"],
            "calls_saved_fraction": 1 - pruned["lm_calls_mean"] / unpruned["lm_calls_mean"]}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="Repetitions of every configuration.")
    parser.add_argument("--n-trials", type=int, default=60, help="Trials per search.")
    parser.add_argument("--n-dev", type=int, default=100, help="Synthetic dev questions.")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--json", type=Path, help="Write the results here.")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    dev = synthetic_exam(args.n_dev)
    lm = PlantedScorer(dev, EFFECTS, base=BASE, spread=0.25)
    planted = lm.planted_best()
    planted_p = lm.p_correct(bench_space().base.replace(**planted))
    console = Console(width=None if sys.stdout.isatty() else 120)  # a full table in logs and CI output
    rows = []
    for name in args.configs:
        for seed in range(args.seeds):
            rows.append(run_config(name, seed, args.n_trials, dev, lm))
            console.log(f"{name} seed {seed}: {rows[-1]['lm_calls']} calls, best found {rows[-1]['best_found']}")
    summaries = {name: summarise([r for r in rows if r["config"] == name]) for name in args.configs}
    console.print(table(summaries, planted_p))
    out: dict[str, Any] = {
        "planted_best": {**planted, "p_correct": planted_p}, "effects": EFFECTS, "base": BASE,
        "n_dev": args.n_dev, "n_trials": args.n_trials, "seeds": args.seeds, "configs": summaries, "runs": rows,
    }
    if UNPRUNED in summaries and set(PRUNED) & set(summaries):
        out.update(best_configuration(summaries))
        console.print(f"best configuration {out['best_config']}: {out['calls_saved_fraction']:.0%} fewer LM calls than "
                      f"unpruned TPE ({out['calls_pruned']:,.0f} vs {out['calls_unpruned']:,.0f}); planted best found "
                      f"{out['best_found_pruned']:.0%} vs {out['best_found_unpruned']:.0%}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
