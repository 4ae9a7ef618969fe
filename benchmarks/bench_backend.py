"""How much of batched generation's speed survives the DSPy path, and what shared-prefix KV reuse adds.

1. one ``generate`` per question (what existing Japanese medical eval harnesses do);
2. raw batched ``model.generate`` over the same rendered prompts (``--batch-size``, left padded, question order);
3. the evaluation through ``MedicalQA`` and the HF backend, ``--threads`` questions in flight
   (``medjp_agent.runs.evaluate_run``, the code behind ``medjp eval``), generation cache cold;
4. the same evaluation into a fresh run folder, cache warm.

Then a 5-shot configuration (``--format-5shot`` with 5 fixed demos: the prompts share their instruction and demos):

5. raw batched ``generate`` over the 5-shot prompts (``raw_batched_5shot_s``);
6. the evaluation over them, the backend prefilling each batch's shared prefix once, caches cold
   (``eval_5shot_s``); ``identical_greedy_5shot`` says whether (5) and (6) produced the same tokens;
7. the same token ids through a vLLM server, ``--threads`` requests in flight, its prefix cache reset before each
   round (``vllm_5shot_s``; null where vLLM is not installed: see ``benchmarks/vllm_server.py``).

(5)-(7) run again on a ~100M-parameter random Llama (``--random-model 100m``'s sizes; keys ending ``_100m``),
where compute rather than per-request overhead dominates; ``--skip-100m`` leaves that out. The table's title
gives the machine's load average at start and end, since other jobs slow every row.

Every path generates exactly ``--new-tokens`` tokens per question (``min_new_tokens`` = ``max_new_tokens``), so
the times compare the same work. The default model is the embedded tiny random Llama (4 layers, hidden 256,
intermediate 704; 688 before every layer width was made a multiple of 64 for bitsandbytes' fused CPU kernel).
The four measurements are repeated ``--repeats`` times in rounds (each round with a fresh generation cache) and
the fastest of each is reported, the time the work itself takes on a machine shared with other jobs.
OpenMP runs as the environment says (its default unless ``OMP_WAIT_POLICY``/``GOMP_SPINCOUNT`` are set: what a
user's ``medjp eval`` gets), and the table's title says which. The raw ``generate`` rows run in worker threads
(:func:`in_worker`), as the backend generates in its batcher's: with spin-waiting OpenMP (the default), while
another process held one of 2 cores, the same batched ``generate`` took 1.6-1.8 × longer in the main thread than
in a worker thread, which would have been counted as the backend's gain. (Passive waiting avoids that too, but
costs every row: on a quiet machine the 5-shot ``generate`` took 0.98 s with it against 0.87 s, and the
evaluation 0.44 s against 0.37 s.)

Run:
    python benchmarks/bench_backend.py --json benchmarks/results/backend.json
    python benchmarks/bench_backend.py --random-model 1b --load-in-4bit --skip-100m   # on a GPU node
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: Larger random Llamas for GPU runs (the tiny tokenizer; only the model sizes change).
RANDOM_MODELS = {"100m": dict(layers=8, hidden=1024, intermediate=2816, heads=16),
                 "1b": dict(layers=16, hidden=2048, intermediate=5504, heads=16),
                 "7b": dict(layers=32, hidden=4096, intermediate=11008, heads=32)}
TARGETS = ("(3) ≤ 1.15 × (2)", "(3) ≥ 3 × faster than (1)", "(4) 0 generate calls and ≤ 5 % of (3)",
           "(6) ≤ 0.5 × (5)", "(6) ≤ 1.0 × (7)", "(6) same greedy tokens as (5)",
           "100m: (6) ≤ 0.5 × (5)", "100m: (6) ≤ 1.0 × (7)", "100m: (6) same greedy tokens as (5)")


@dataclasses.dataclass(frozen=True)
class FiveShot:
    """The 5-shot configuration: format, questions, rendered prompts and their token ids."""

    fmt: Any
    questions: list[Any]
    prompts: list[Any]
    ids: list[list[int]]


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
    p.add_argument("--dtype", default="auto", help="weights dtype (with --load-in-4bit: the compute dtype)")
    p.add_argument("--adapter", action="append", help="LoRA adapter folder (NAME=PATH); the first is active")
    p.add_argument("--device-map", help="e.g. cuda or auto")
    p.add_argument("--questions-5shot", type=int, default=16, help="questions of the 5-shot rows (5)-(7)")
    p.add_argument("--format-5shot", default="paper-instruction-in-header",
                   help="the 5-shot rows' format (5 fixed demos); the default's prompts share ~90 %% of their tokens")
    p.add_argument("--skip-100m", action="store_true", help="leave out the 5-shot rows on the 100M random Llama")
    p.add_argument("--no-vllm", action="store_true", help="leave out row (7) even where vLLM is installed")
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


def in_worker(fn: Any) -> Any:
    """``fn`` to run in a new thread that ends with it, returning its result.

    OpenMP keeps a team of threads for each thread that ran torch in parallel, for as long as that thread lives;
    with spin-waiting, a live idle team slowed the evaluation's decoding steps that followed (11-12 ms a step on
    both threads instead of 7). The backend generates in its batcher's thread, which ends when its LM closes; the
    raw rows' threads end too.
    """
    def run() -> Any:
        with ThreadPoolExecutor(1, thread_name_prefix="bench-raw") as worker:
            return worker.submit(fn).result()
    return run


def raw_generate(model: Any, tokenizer: Any, texts: list[str], add_special: bool, new_tokens: int) -> list[list[int]]:
    """Plain transformers: tokenize with left padding, greedy ``generate``; the new tokens of each row."""
    import torch

    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special).to(model.device)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return out[:, batch["input_ids"].shape[1]:].tolist()


def model_options(args: argparse.Namespace, work: Path, random_model: str | None = None) -> Any:
    """The benchmark's model: ``--model``, a random Llama of a named size (built in ``work``), or the tiny one."""
    from medjp_agent.lm.options import LMOptions
    from medjp_agent.lm.tiny import TinyConfig, build_tiny_model, ensure_tiny_model

    model = args.model or str(ensure_tiny_model())
    size = random_model or args.random_model
    if size:
        model = str(build_tiny_model(work / size, TinyConfig(**RANDOM_MODELS[size])))
    return LMOptions(model=model, load_in_4bit=args.load_in_4bit, device_map=args.device_map,
                     dtype=args.dtype, adapters=tuple(args.adapter or ()))


def one_round(loaded: Any, qs: list[Any], fmt: Any, texts: list[str], raw: bool, args: argparse.Namespace,
              work: Path) -> dict[str, Any]:
    """The four measurements once; the evaluation starts from an empty generation cache in ``work``."""
    from medjp_agent.lm.cache import GenerationCache
    from medjp_agent.lm.hf import HFLM
    from medjp_agent.runs import evaluate_run

    model, tokenizer, n, b = loaded.model, loaded.tokenizer, args.new_tokens, args.batch_size
    result: dict[str, Any] = {
        "sequential_s": timed(in_worker(lambda: [raw_generate(model, tokenizer, [t], raw, n) for t in texts])),
        "raw_batched_s": timed(in_worker(lambda: [raw_generate(model, tokenizer, texts[i : i + b], raw, n)
                                                  for i in range(0, len(texts), b)])),
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


def five_shot_prompts(loaded: Any, args: argparse.Namespace) -> FiveShot:
    from medjp_agent.signatures import resolve_format

    fmt = resolve_format(args.format_5shot).replace(shots=5, demo_selection="fixed")
    fmt = fmt.replace(name=f"{fmt.name}-5shot")
    qs = questions(args.questions_5shot)
    prompts = rendered_prompts(fmt, qs, loaded.tokenizer)
    ids = [loaded.tokenizer(p.text, add_special_tokens=p.raw)["input_ids"] for p in prompts]
    return FiveShot(fmt, qs, prompts, ids)


def five_shot_round(loaded: Any, five: FiveShot, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """(5) raw batched ``generate`` and (6) the evaluation with prefix reuse (caches cold) over the 5-shot prompts.

    (6)'s tokens are read back from its own generation cache (a warm re-ask generates nothing) and compared with
    (5)'s, cut where the backend cuts a completion (the first end or padding token).
    """
    from medjp_agent.lm.cache import GenerationCache
    from medjp_agent.lm.generation import end_token_ids
    from medjp_agent.lm.hf import HFLM
    from medjp_agent.lm.prompts import raw_messages
    from medjp_agent.runs import evaluate_run

    model, tokenizer, n, b = loaded.model, loaded.tokenizer, args.new_tokens, args.batch_size
    texts, raw = [p.text for p in five.prompts], five.prompts[0].raw
    rows: list[list[int]] = []
    raw_s = timed(in_worker(lambda: [rows.extend(raw_generate(model, tokenizer, texts[i : i + b], raw, n))
                                     for i in range(0, len(texts), b)]))
    lm = HFLM(loaded, batch_size=b, cache=GenerationCache(work / "generations-5shot"), max_tokens=n, min_new_tokens=n)
    start = time.perf_counter()
    evaluate_run(five.questions, five.fmt, lm, out=work / "eval-5shot", threads=args.threads)
    eval_s = time.perf_counter() - start
    calls = lm.generate_calls
    if not raw:
        raise SystemExit(f"--format-5shot {args.format_5shot}: the comparison needs a raw-completion format")
    again = [lm.complete(messages=raw_messages(t)).texts[0] for t in texts]
    ends = end_token_ids(model, tokenizer)
    cut = [row[: next((i for i, t in enumerate(row) if t in ends), len(row))] for row in rows]
    prefix = lm.prefixes
    lm.close()
    return {"raw_batched_5shot_s": raw_s, "eval_5shot_s": eval_s,
            "identical_greedy_5shot": lm.generate_calls == calls and again == tokenizer.batch_decode(
                cut, skip_special_tokens=True),
            "eval_5shot_prefix": None if prefix is None else {"misses": prefix.misses, "hits": prefix.hits},
            "eval_5shot_batch_sizes": list(lm.stats.batch_sizes)}


def vllm_5shot(model_dir: str, five: FiveShot, args: argparse.Namespace) -> tuple[float | None, str]:
    """(7) the 5-shot prompts through a vLLM server, ``--threads`` requests in flight, the same token ids and counts.

    Each round starts from a cold prefix cache (the server's development endpoint resets it); the fastest round
    is returned, or None and the reason where vLLM is not installed.
    """
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from vllm_server import VLLMServer, unavailable_reason

    reason = unavailable_reason()
    if reason or args.no_vllm:
        return None, reason or "--no-vllm"
    body = {"model": "bench", "max_tokens": args.new_tokens, "min_tokens": args.new_tokens, "temperature": 0.0,
            "ignore_eos": True}
    times = []
    with VLLMServer(Path(model_dir), "bench", env={"VLLM_SERVER_DEV_MODE": "1"}) as server, \
            httpx.Client(timeout=600, limits=httpx.Limits(max_connections=args.threads)) as client:
        def ask(ids: list[int]) -> None:
            client.post(f"{server.url}/completions", json={**body, "prompt": ids}).raise_for_status()

        ask([1, 2, 3])  # warm-up: first-request allocations, with no prefix of the prompts
        for _ in range(args.repeats):
            client.post(f"{server.url.removesuffix('/v1')}/reset_prefix_cache").raise_for_status()
            with ThreadPoolExecutor(args.threads) as pool:
                times.append(timed(lambda: list(pool.map(ask, five.ids))))
    return min(times), ""


def five_shot(loaded: Any, model_dir: str, args: argparse.Namespace, work: Path, suffix: str = "") -> dict[str, Any]:
    """Rows (5)-(7) on one loaded model, fastest of ``--repeats`` rounds, keys ending in ``suffix``."""
    five = five_shot_prompts(loaded, args)
    rounds = [five_shot_round(loaded, five, args, work / f"5shot{suffix}-{i}") for i in range(args.repeats)]
    vllm_s, why = vllm_5shot(model_dir, five, args)
    from medjp_agent.lm.prefix import common_prefix_length

    lengths = [len(i) for i in five.ids]
    result = {"raw_batched_5shot_s": min(r["raw_batched_5shot_s"] for r in rounds),
              "eval_5shot_s": min(r["eval_5shot_s"] for r in rounds), "vllm_5shot_s": vllm_s,
              "identical_greedy_5shot": all(r["identical_greedy_5shot"] for r in rounds)}
    return {**{f"{k}{suffix}": v for k, v in result.items()},
            f"five_shot{suffix}": {"prompts": len(lengths), "prompt_tokens": {"min": min(lengths), "max": max(lengths)},
                                   "shared_prefix_tokens": common_prefix_length(five.ids), "format": five.fmt.name,
                                   "vllm_skipped": why, "rounds": rounds}}


def five_shot_100m(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Rows (5)-(7) again on a ~100M-parameter random Llama, where compute rather than overhead dominates."""
    from medjp_agent.lm.loading import load

    # Adapters given for the main model do not fit this one's shapes.
    opts = dataclasses.replace(model_options(args, work, random_model="100m"), adapters=())
    loaded = load(opts)
    result = five_shot(loaded, str(opts.model), args, work, suffix="_100m")
    config = loaded.model.config
    result["model_100m"] = {"layers": config.num_hidden_layers, "hidden": config.hidden_size,
                            "intermediate": config.intermediate_size, "heads": config.num_attention_heads,
                            "parameters": sum(p.numel() for p in loaded.model.parameters())}
    return result


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    from medjp_agent.lm.loading import load
    from medjp_agent.signatures import resolve_format

    torch.set_num_threads(args.torch_threads)
    opts = model_options(args, work)
    loaded = load(opts)
    tokenizer = loaded.tokenizer
    fmt = resolve_format(args.format)
    qs = questions(args.questions)
    prompts = rendered_prompts(fmt, qs, tokenizer)
    texts, raw = [p.text for p in prompts], prompts[0].raw
    lengths = [len(tokenizer(t, add_special_tokens=raw)["input_ids"]) for t in texts]

    in_worker(lambda: raw_generate(loaded.model, tokenizer, texts[:2], raw, args.new_tokens))()  # warm-up
    rounds = [one_round(loaded, qs, fmt, texts, raw, args, work / f"round{i}") for i in range(args.repeats)]
    fastest = {key: min(r[key] for r in rounds) for key in ("sequential_s", "raw_batched_s", "eval_s", "eval_warm_s")}
    config = loaded.model.config
    return {
        **fastest,
        **five_shot(loaded, str(opts.model), args, work),
        **({} if args.skip_100m else five_shot_100m(args, work)),
        "eval_generate_calls": max(r["eval_generate_calls"] for r in rounds),
        "eval_warm_generate_calls": max(r["eval_warm_generate_calls"] for r in rounds),
        "prompt_count": len(texts), "prompt_tokens": {"min": min(lengths), "max": max(lengths),
                                                      "mean": round(sum(lengths) / len(lengths), 1)},
        "prompt_tokens_match_eval": all(sum(lengths) == r["eval_prompt_tokens"] for r in rounds),
        "new_tokens": args.new_tokens, "batch_size": args.batch_size, "threads": args.threads,
        "torch_threads": args.torch_threads, "openmp": openmp_setting(),
        "repeats": args.repeats, "format": fmt.name,
        "load_in_4bit": args.load_in_4bit, "device": str(loaded.model.device),
        "model": {"name": loaded.name, "layers": config.num_hidden_layers, "hidden": config.hidden_size,
                  "intermediate": config.intermediate_size, "heads": config.num_attention_heads,
                  "vocab": config.vocab_size},
        "rounds": rounds,
    }


def openmp_setting() -> str:
    """How OpenMP threads wait, as the environment sets it."""
    given = [f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ]
    return " ".join(given) or "OpenMP default"


def verdicts(r: dict[str, Any]) -> list[bool | None]:
    """Each target met (True), missed (False), or not measured (None: no vLLM, or the 100M rows skipped)."""
    found = [r["eval_s"] <= 1.15 * r["raw_batched_s"], r["sequential_s"] >= 3 * r["eval_s"],
             r["eval_warm_generate_calls"] == 0 and r["eval_warm_s"] <= 0.05 * r["eval_s"]]
    for suffix in ("", "_100m"):
        if f"eval_5shot_s{suffix}" not in r:
            found += [None, None, None]
            continue
        ev, vllm = r[f"eval_5shot_s{suffix}"], r[f"vllm_5shot_s{suffix}"]
        found += [ev <= 0.5 * r[f"raw_batched_5shot_s{suffix}"], None if vllm is None else ev <= vllm,
                  r[f"identical_greedy_5shot{suffix}"]]
    return found


def table(r: dict[str, Any]) -> Any:
    from rich.table import Table

    m = r["model"]
    load = r["load_avg"]
    title = (f"{Path(m['name']).name} (l{m['layers']} h{m['hidden']} i{m['intermediate']} v{m['vocab']}"
             f"{', nf4' if r['load_in_4bit'] else ''}) · "
             f"{r['prompt_count']} prompts of {r['prompt_tokens']['min']}-{r['prompt_tokens']['max']} tokens · "
             f"{r['new_tokens']} new tokens · {r['torch_threads']} torch threads ({r['openmp']}) · {r['device']} · "
             f"load average {load['start'][0]:.1f} at start, {load['end'][0]:.1f} at end on {r['cpus']} CPUs (1-min)")
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
    for suffix, name in (("", "this model"), ("_100m", "100M random Llama")):
        if f"eval_5shot_s{suffix}" not in r:
            continue
        five = r[f"five_shot{suffix}"]
        t.add_section()
        t.add_row(f"5-shot on {name}: {five['prompts']} prompts of {five['prompt_tokens']['min']}-"
                  f"{five['prompt_tokens']['max']} tokens, {five['shared_prefix_tokens']} shared", "", "", "")
        for label, key in (("(5) raw batched generate", "raw_batched_5shot_s"),
                           ("(6) eval, shared-prefix KV reuse, caches cold", "eval_5shot_s"),
                           (f"(7) vLLM server ({r['threads']} in flight)", "vllm_5shot_s")):
            seconds = r[f"{key}{suffix}"]
            base = r[f"raw_batched_5shot_s{suffix}"]
            t.add_row(label, "n/a" if seconds is None else f"{seconds:.2f}",
                      "" if seconds is None else f"{base / seconds:.1f} vs (5)", "")
    t.add_section()
    for target, ok in zip(TARGETS, verdicts(r)):
        verdict = "[dim]not run[/]" if ok is None else "[green]met[/]" if ok else "[red]missed[/]"
        t.add_row(f"target {target}", "", "", verdict)
    return t


def main() -> None:
    from rich.console import Console

    args = parse_args()
    start_load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="medjp-bench-") as tmp:
        os.environ.setdefault("DSPY_CACHEDIR", str(Path(tmp) / "dspy"))
        results = run(args, Path(tmp))
    # Other jobs on the machine slow every row; the load average says how busy it was.
    results |= {"load_avg": {"start": start_load, "end": os.getloadavg()}, "cpus": os.cpu_count()}
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
