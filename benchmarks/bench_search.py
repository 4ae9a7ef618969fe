"""Does TPE + Wilcoxon pruning find the best prompt format, and on how many LM calls?

A surrogate LM (:class:`PlantedLM`, a scripted ``dspy.BaseLM``) answers exam questions with a probability that
depends on the format in a planted, additive way, so the best format is known. The benchmark runs the same search
with TPE + WilcoxonPruner, TPE without pruning, random search (with and without pruning) and grid search over
several seeds, and reports how often each finds the planted best, after how many LM calls, and the calls pruning
saves. The goal: at least 40 % fewer calls than unpruned TPE at the same final best.

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
from typing import Any

import dspy
import optuna
from rich.console import Console
from rich.table import Table

from medjp_agent.data import LABELS, Question, load_exemplars
from medjp_agent.lm.scripted import ScriptedLM
from medjp_agent.optimizers import (
    Budget, CorrectnessScore, FormatSpace, SearchResult, SearchSettings, run_search,
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
        return Renderer(fmt).response("考察", answer, len(question.choices))


def _find(prompt: str, text: str) -> int:
    # The JSON template shows texts JSON-escaped.
    return max(prompt.rfind(text), prompt.rfind(json.dumps(text, ensure_ascii=False)[1:-1]))


def shown_answer(prompt: str, question: Question, right: bool = True) -> str:
    """The gold answer (or a wrong one) in the labels as *shown* in ``prompt``, which may shuffle the choices."""
    if not question.choices:
        return question.answers[0] if right else "0"
    start = _find(prompt, question.text)
    positions = [_find(prompt[start:], choice) for choice in question.choices]
    shown = sorted(range(len(question.choices)), key=positions.__getitem__)  # display slot -> canonical index
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
    """Surface and structure axes (no cost multipliers such as ensembles, which would confound the call counts)."""
    return FormatSpace.default().restrict(
        template=["alpaca", "plain", "chat", "markdown", "xml", "json"], instruction_position=["header", "preamble"],
        language=["ja", "en"], persona=["none", "examinee", "specialist", "professor"],
        labels=["latin", "upper", "katakana", "digits", "roman"], wrapper=["dot", "paren", "bracket"],
        separator=["：", ": "], reasoning=["direct", "cot", "summarize"], shots=[0, 1],
    ).fixed(choice_layout="lines", casing="title", joiner="\n\n", answer_word="", full_width=False, chat=False,
            demo_selection="fixed", demo_order="given", output="marker", shuffle_choices=False, self_consistency=1,
            ensemble=1, self_generated_cot=False, wording="paper")


CONFIGS: dict[str, dict[str, Any]] = {
    "tpe+wilcoxon": {"sampler": "tpe", "prune": True},
    "tpe": {"sampler": "tpe", "prune": False},
    "random+wilcoxon": {"sampler": "random", "prune": True},
    "random": {"sampler": "random", "prune": False},
    "grid": {"sampler": "grid", "prune": False},
}


def found(result: SearchResult, planted: Mapping[str, Any]) -> bool:
    return result.best is not None and all(result.best.format[k] == v for k, v in planted.items())


def calls_to_best(result: SearchResult) -> int | None:
    """LM calls spent up to and including the trial that ended as the best."""
    if result.best is None:
        return None
    return sum(t.lm_calls for t in result.trials if t.number <= result.best.number)


def run_config(name: str, seed: int, n_trials: int, dev: Sequence[Question], lm: PlantedLM) -> dict[str, Any]:
    settings = SearchSettings(study=f"{name}-{seed}", storage=None, seed=seed, n_startup_trials=10, threads=1,
                              n_startup_steps=10, budget=Budget(n_trials=n_trials), **CONFIGS[name])
    start = time.perf_counter()
    result = run_search(settings, bench_space(), dev, CorrectnessScore(lm))
    chosen = PromptFormat.from_dict(result.best.format) if result.best else None
    return {
        "config": name, "seed": seed, "lm_calls": result.lm_calls, "lm_calls_saved": result.lm_calls_saved,
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
    lm = PlantedLM(dev, EFFECTS, base=BASE, spread=0.25)
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
    if {"tpe+wilcoxon", "tpe"} <= set(summaries):
        pruned, unpruned = summaries["tpe+wilcoxon"], summaries["tpe"]
        out.update(calls_pruned=pruned["lm_calls_mean"], calls_unpruned=unpruned["lm_calls_mean"],
                   best_found_pruned=pruned["best_found_rate"], best_found_unpruned=unpruned["best_found_rate"],
                   calls_saved_fraction=1 - pruned["lm_calls_mean"] / unpruned["lm_calls_mean"])
        console.print(f"pruning: {out['calls_saved_fraction']:.0%} fewer LM calls; best found "
                      f"{pruned['best_found_rate']:.0%} (pruned) vs {unpruned['best_found_rate']:.0%} (unpruned)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
