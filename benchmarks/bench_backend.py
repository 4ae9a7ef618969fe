"""How much of batched generation's speed survives the DSPy path: four measurements on one loaded model.

1. one ``generate`` per question (what existing Japanese medical eval harnesses do);
2. raw batched ``model.generate`` over the same rendered prompts (``--batch-size``, left padded, question order);
3. the evaluation through ``MedicalQA`` and the HF backend, ``--threads`` questions in flight
   (``medjp_agent.runs.evaluate_run``, the code behind ``medjp eval``), generation cache cold;
4. the same evaluation into a fresh run folder, cache warm.

Every path generates exactly ``--new-tokens`` tokens per question (``min_new_tokens`` = ``max_new_tokens``), so
the times compare the same work. The default model is the embedded tiny random Llama (4 layers, hidden 256).
The four measurements are repeated ``--repeats`` times in rounds (each round with a fresh generation cache) and
the fastest of each is reported, the time the work itself takes on a machine shared with other jobs.
``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` here: with OpenMP's default spin-waiting, while another process
held one of 2 cores, the same batched ``generate`` took 4-6 × longer in the main thread (where (1) and (2)
run) than in a worker thread (where the backend generates), which would have been counted as the backend's gain;
with passive waiting both took the same time.

Run:
    python benchmarks/bench_backend.py --json bench.json
    python benchmarks/bench_backend.py --random-model 1b --load-in-4bit   # on a GPU node
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP: before any torch import

#: Larger random Llamas for GPU runs (the tiny tokenizer; only the model sizes change).
RANDOM_MODELS = {"1b": dict(layers=16, hidden=2048, intermediate=5504, heads=16),
                 "7b": dict(layers=32, hidden=4096, intermediate=11008, heads=32)}
TARGETS = ("(3) ≤ 1.15 × (2)", "(3) ≥ 3 × faster than (1)", "(4) 0 generate calls and ≤ 5 % of (3)")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=64)
    p.add_argument("--format", default="paper-instruction-preamble",
                   help="prompt format; the default's 1-shot prompts are 205-313 tiny-tokenizer tokens (median 240)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=16, help="questions in flight in the evaluation")
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="rounds of the four measurements; the fastest is reported")
    p.add_argument("--model", help="model folder or hub id (default: the embedded tiny random Llama)")
    p.add_argument("--random-model", choices=sorted(RANDOM_MODELS), help="build a larger random Llama (GPU runs)")
    p.add_argument("--load-in-4bit", action="store_true")
    p.add_argument("--device-map", help="e.g. cuda or auto")
    p.add_argument("--json", type=Path, help="write the results here")
    return p.parse_args()


def questions(n: int) -> list[Any]:
    from medjp_agent.data import SAMPLE_DIR, load_igakuqa, load_medqa

    pool = [*load_igakuqa(SAMPLE_DIR), *load_medqa(SAMPLE_DIR / "usmle_jp.jsonl")]
    if len(pool) < n:
        raise SystemExit(f"only {len(pool)} bundled questions")
    return pool[:n]


def rendered_prompts(fmt: Any, qs: list[Any], tokenizer: Any) -> list[Any]:
    """The exact prompts the evaluation sends: MedicalQA's predictor rendered by its format adapter."""
    from medjp_agent.lm.prompts import render_prompt
    from medjp_agent.signatures import MedicalQA

    qa = MedicalQA(fmt)
    demos = [dict(d) for d in qa.cot.predict.demos]
    return [render_prompt(tokenizer, qa.adapter.format(qa.cot.predict.signature, demos,
                                                       {"question": q.text, "choices": list(q.choices)}))
            for q in qs]


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def raw_generate(model: Any, tokenizer: Any, texts: list[str], add_special: bool, new_tokens: int) -> None:
    """Plain transformers: tokenize with left padding, greedy ``generate``."""
    import torch

    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special).to(model.device)
    with torch.inference_mode():
        model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)


def model_options(args: argparse.Namespace, work: Path) -> Any:
    from medjp_agent.lm.options import LMOptions
    from medjp_agent.lm.tiny import TinyConfig, build_tiny_model

    model = args.model
    if args.random_model:
        model = str(build_tiny_model(work / args.random_model, TinyConfig(**RANDOM_MODELS[args.random_model])))
    return LMOptions(model=model, load_in_4bit=args.load_in_4bit, device_map=args.device_map)


def one_round(loaded: Any, qs: list[Any], fmt: Any, texts: list[str], raw: bool, args: argparse.Namespace,
              work: Path) -> dict[str, Any]:
    """The four measurements once; the evaluation starts from an empty generation cache in ``work``."""
    from medjp_agent.lm.cache import GenerationCache
    from medjp_agent.lm.hf import HFLM
    from medjp_agent.runs import evaluate_run

    model, tokenizer, n, b = loaded.model, loaded.tokenizer, args.new_tokens, args.batch_size
    result: dict[str, Any] = {
        "sequential_s": timed(lambda: [raw_generate(model, tokenizer, [t], raw, n) for t in texts]),
        "raw_batched_s": timed(lambda: [raw_generate(model, tokenizer, texts[i : i + b], raw, n)
                                        for i in range(0, len(texts), b)]),
    }
    # The length is forced through the LM's request kwargs, as any DSPy caller would pass them.
    lm = HFLM(loaded, batch_size=b, cache=GenerationCache(work / "generations"), max_tokens=n, min_new_tokens=n)
    for key in ("eval", "eval_warm"):
        calls, hits, batches = lm.generate_calls, lm.cache_hits, len(lm.stats.batch_sizes)
        start = time.perf_counter()
        summary, _ = evaluate_run(qs, fmt, lm, out=work / key, threads=args.threads)
        result |= {f"{key}_s": time.perf_counter() - start, f"{key}_generate_calls": lm.generate_calls - calls,
                   f"{key}_cache_hits": lm.cache_hits - hits, f"{key}_batch_sizes": lm.stats.batch_sizes[batches:],
                   f"{key}_prompt_tokens": summary.prompt_tokens}
    lm.close()
    return result


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    from medjp_agent.lm.loading import load
    from medjp_agent.signatures import resolve_format

    torch.set_num_threads(args.torch_threads)
    loaded = load(model_options(args, work))
    tokenizer = loaded.tokenizer
    fmt = resolve_format(args.format)
    qs = questions(args.questions)
    prompts = rendered_prompts(fmt, qs, tokenizer)
    texts, raw = [p.text for p in prompts], prompts[0].raw
    lengths = [len(tokenizer(t, add_special_tokens=raw)["input_ids"]) for t in texts]

    raw_generate(loaded.model, tokenizer, texts[:2], raw, args.new_tokens)  # warm-up: first-call allocations
    rounds = [one_round(loaded, qs, fmt, texts, raw, args, work / f"round{i}") for i in range(args.repeats)]
    fastest = {key: min(r[key] for r in rounds) for key in ("sequential_s", "raw_batched_s", "eval_s", "eval_warm_s")}
    config = loaded.model.config
    return {
        **fastest,
        "eval_generate_calls": max(r["eval_generate_calls"] for r in rounds),
        "eval_warm_generate_calls": max(r["eval_warm_generate_calls"] for r in rounds),
        "prompt_count": len(texts), "prompt_tokens": {"min": min(lengths), "max": max(lengths),
                                                      "mean": round(sum(lengths) / len(lengths), 1)},
        "prompt_tokens_match_eval": all(sum(lengths) == r["eval_prompt_tokens"] for r in rounds),
        "new_tokens": args.new_tokens, "batch_size": args.batch_size, "threads": args.threads,
        "torch_threads": args.torch_threads, "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "repeats": args.repeats, "format": fmt.name,
        "load_in_4bit": args.load_in_4bit, "device": str(loaded.model.device),
        "model": {"name": loaded.name, "layers": config.num_hidden_layers, "hidden": config.hidden_size,
                  "intermediate": config.intermediate_size, "heads": config.num_attention_heads,
                  "vocab": config.vocab_size},
        "rounds": rounds,
    }


def verdicts(r: dict[str, Any]) -> list[bool]:
    return [r["eval_s"] <= 1.15 * r["raw_batched_s"], r["sequential_s"] >= 3 * r["eval_s"],
            r["eval_warm_generate_calls"] == 0 and r["eval_warm_s"] <= 0.05 * r["eval_s"]]


def table(r: dict[str, Any]) -> Any:
    from rich.table import Table

    m = r["model"]
    title = (f"{m['name']} (l{m['layers']} h{m['hidden']} v{m['vocab']}{', nf4' if r['load_in_4bit'] else ''}) · "
             f"{r['prompt_count']} prompts of {r['prompt_tokens']['min']}-{r['prompt_tokens']['max']} tokens · "
             f"{r['new_tokens']} new tokens · {r['torch_threads']} torch threads · {r['device']}")
    t = Table(title=title)
    for col in ("measurement", "seconds", "× vs (1)", "generate calls"):
        t.add_column(col, justify="left" if col == "measurement" else "right")
    rows = [("(1) one generate per question", r["sequential_s"], r["prompt_count"]),
            (f"(2) raw batched generate (batch {r['batch_size']})", r["raw_batched_s"],
             -(-r["prompt_count"] // r["batch_size"])),
            (f"(3) eval via DSPy + HFLM ({r['threads']} threads)", r["eval_s"], r["eval_generate_calls"]),
            ("(4) same eval, cache warm", r["eval_warm_s"], r["eval_warm_generate_calls"])]
    for label, seconds, calls in rows:
        t.add_row(label, f"{seconds:.2f}", f"{r['sequential_s'] / seconds:.1f}", str(calls))
    for target, ok in zip(TARGETS, verdicts(r)):
        t.add_row(f"target {target}", "", "", "[green]met[/]" if ok else "[red]missed[/]")
    return t


def main() -> None:
    from rich.console import Console

    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="medjp-bench-") as tmp:
        os.environ.setdefault("DSPY_CACHEDIR", str(Path(tmp) / "dspy"))
        results = run(args, Path(tmp))
    console = Console()
    console.print(table(results))
    for i, r in enumerate(results["rounds"]):
        times = " · ".join(f"{k} {r[k]:.2f}" for k in ("sequential_s", "raw_batched_s", "eval_s", "eval_warm_s"))
        console.print(f"round {i + 1}: {times} · eval batch sizes {r['eval_batch_sizes']}", style="dim")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
