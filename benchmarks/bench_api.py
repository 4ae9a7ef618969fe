"""How much client CPU does a question cost on the server path, and how many questions/s does the core reach?

An instant OpenAI-compatible stub (``tests/openai_server.py`` serving a fixed, parseable reply) runs on loopback
in its own process. Over a few hundred IgakuQA questions (``../shared/igakuqa`` when present, else the bundled
sample made unique with a numbered suffix) it measures:

- ``scripted_ms_per_question``: client CPU per question of the sequential loop (``answer_question``) with a
  scripted LM: rendering, adapter, parsing and scoring, the floor;
- ``client_ms_per_question``: the same loop against the stub through ``APILM`` (cache on, every request a miss);
- ``api_qps``: questions/s of ``evaluate_run`` (what ``medjp eval`` runs) against the stub, at the best of
  ``--threads`` (a server backend is asked on one event loop: ``--threads`` is the requests in flight);
- ``stub_ms_per_request``: the stub's own CPU per request;
- ``async_lm_qps``: the LM alone through DSPy's ``acall`` (the async path), ``--async-concurrency`` requests in
  flight on one event loop, with the OS threads the process held at the peak;
- ``async_eval_qps``: questions/s of the evaluation core (``evaluate``) at ``--threads`` = ``--async-concurrency``,
  which on a server backend is that many requests in flight on one event loop, with the peak OS threads.

CPU times are the process's own (``time.process_time``; the stub's from psutil), so they hold better than wall-clock
rates on a machine shared with other jobs; each phase also reports the CPU the rest of the machine used
(``others_cores``: cores busy with other processes, on average). Every measurement runs ``--repeats`` times in
rounds and the best is reported (as ``bench_backend.py`` does): other jobs only ever add to a cost. Goals on a
2-core machine: ``client_ms_per_question`` ≤ 2 and ``api_qps`` ≥ 250.

    python benchmarks/bench_api.py --json benchmarks/results/api.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# DSPy 3.4 warns on every legacy-interface call (BaseLM.forward, messages=); ScriptedLM and APILM both use it.
warnings.filterwarnings("ignore", category=DeprecationWarning)
# DSPy opens its cache when imported: a fresh folder, so every request of the run is a miss that is then stored.
CACHE_DIR = os.environ["DSPY_CACHEDIR"] = tempfile.mkdtemp(prefix="medjp-bench-api-cache-")

import psutil  # noqa: E402 - after the cache folder is chosen

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "igakuqa"


def load_questions(n: int) -> tuple[list[Any], str]:
    """``n`` questions with distinct texts, and where they came from."""
    from medjp_agent.data import SAMPLE_DIR, load_igakuqa

    source = SHARED if SHARED.is_dir() else SAMPLE_DIR
    bank = list(load_igakuqa(source))
    out = []
    for i in range(n):
        q = bank[i % len(bank)]
        lap = i // len(bank)
        out.append(q if lap == 0 else dataclasses.replace(q, id=f"{q.id}-r{lap}", text=f"{q.text}（{lap}）"))
    return out, str(source)


class Stub:
    """The stub server in its own process; ``cpu_s()`` is the CPU it has used so far."""

    def __init__(self, reply: str):
        cmd = [sys.executable, str(ROOT / "tests" / "openai_server.py"), "--reply", reply]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.url = (self.proc.stdout.readline() if self.proc.stdout else "").strip()
        if not self.url:
            raise RuntimeError("the stub server did not start")
        self.ps = psutil.Process(self.proc.pid)

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@contextmanager
def measured(stub: Stub | None = None) -> Iterator[dict[str, float]]:
    """Wall, own CPU, stub CPU and the rest of the machine's CPU over the block, in seconds."""
    out: dict[str, float] = {}
    machine, own, wall = psutil.cpu_times(), time.process_time(), time.perf_counter()
    stub_cpu = stub.cpu_s() if stub else 0.0
    yield out
    out["wall_s"] = time.perf_counter() - wall
    out["cpu_s"] = time.process_time() - own
    out["stub_cpu_s"] = (stub.cpu_s() - stub_cpu) if stub else 0.0
    after = psutil.cpu_times()
    busy = sum(after) - sum(machine) - (after.idle - machine.idle) - (after.iowait - machine.iowait)
    out["others_cores"] = max(0.0, busy - out["cpu_s"] - out["stub_cpu_s"]) / out["wall_s"]


def sequential(program: Any, questions: list[Any], lm: Any) -> dict[str, float]:
    """Per question: client CPU and wall ms of the sequential loop."""
    from medjp_agent.evaluate import answer_question

    for q in questions[:20]:  # warm-up: imports, connections, first-call caches (other model name: no cache hits)
        answer_question(program, dataclasses.replace(q, text=q.text + "（warm-up）"), lm)
    with measured() as m:
        for q in questions:
            answer_question(program, q, lm)
    n = len(questions)
    return {"ms_per_question": 1e3 * m["cpu_s"] / n, "wall_ms_per_question": 1e3 * m["wall_s"] / n,
            "others_cores": m["others_cores"]}


def throughput(fmt: Any, questions: list[Any], stub: Stub, threads: int, run_dir: Path) -> dict[str, float]:
    """``evaluate_run`` over ``questions`` with ``threads`` in flight, into a fresh run folder."""
    from medjp_agent.lm.api import APILM
    from medjp_agent.runs import evaluate_run

    lm = APILM(f"bench-{run_dir.name}", stub.url, max_tokens=512)
    with measured(stub) as m:
        summary, _ = evaluate_run(questions, fmt, lm, out=run_dir, threads=threads)
    n = summary.n_questions
    return {"threads": threads, "qps": n / m["wall_s"], "client_ms_per_question": 1e3 * m["cpu_s"] / n,
            "stub_ms_per_request": 1e3 * m["stub_cpu_s"] / n, "others_cores": m["others_cores"]}


def async_lm(stub: Stub, prompts: list[str], concurrency: int, name: str) -> dict[str, float]:
    """Requests through ``APILM.acall`` with ``concurrency`` in flight on one loop; the peak OS thread count."""
    from medjp_agent.lm.api import APILM

    lm = APILM(name, stub.url, max_tokens=512)
    peak = threading.active_count()

    async def one(gate: asyncio.Semaphore, prompt: str) -> None:
        nonlocal peak
        async with gate:
            await lm.acall(messages=[{"role": "user", "content": prompt}])
            peak = max(peak, threading.active_count())

    async def run() -> None:
        gate = asyncio.Semaphore(concurrency)
        await asyncio.gather(*(one(gate, p) for p in prompts))

    with measured(stub) as m:
        asyncio.run(run())
    n = len(prompts)
    return {"concurrency": concurrency, "qps": n / m["wall_s"], "client_ms_per_request": 1e3 * m["cpu_s"] / n,
            "peak_threads": peak, "others_cores": m["others_cores"]}


class PeakThreads:
    """An observer of ``evaluate`` that samples the process's OS threads before each question and after each result."""

    def __init__(self) -> None:
        self.peak = threading.active_count()

    def on_result(self, _result: Any) -> None:
        self.peak = max(self.peak, threading.active_count())

    def should_stop(self) -> bool:
        self.peak = max(self.peak, threading.active_count())
        return False


def async_eval(program: Any, questions: list[Any], stub: Stub, threads: int, name: str) -> dict[str, float]:
    """``evaluate`` against the stub at ``threads``: through the async path, the OS threads it held at the peak."""
    from medjp_agent.evaluate import evaluate
    from medjp_agent.lm.api import APILM

    lm, peak = APILM(name, stub.url, max_tokens=512), PeakThreads()
    with measured(stub) as m:
        results = evaluate(program, questions, lm, threads=threads, observers=[peak])
    n = len(results)
    return {"threads": threads, "qps": n / m["wall_s"], "client_ms_per_question": 1e3 * m["cpu_s"] / n,
            "peak_threads": peak.peak, "others_cores": m["others_cores"]}


def one_round(i: int, setup: dict[str, Any], stub: Stub, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Every measurement once; each APILM has a new model name, so every request of the round misses the cache."""
    from medjp_agent.lm.api import APILM
    from medjp_agent.lm.scripted import ScriptedLM

    program, questions, fmt = setup["program"], setup["questions"], setup["fmt"]
    prompts = [f"{q.text}\n" + "\n".join(q.choices) for q in questions]
    return {
        "scripted": sequential(program, questions, ScriptedLM(setup["reply"])),
        "api": sequential(program, questions, APILM(f"bench-seq-{i}", stub.url, max_tokens=512)),
        "threads": [throughput(fmt, questions, stub, t, tmp / f"r{i}-t{t}") for t in args.threads],
        "async": async_lm(stub, prompts, args.async_concurrency, f"bench-async-{i}"),
        "async_eval": async_eval(program, questions, stub, args.async_concurrency, f"bench-async-eval-{i}"),
    }


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from medjp_agent.signatures import MedicalQA, resolve_format
    from medjp_agent.signatures.adapter import Renderer

    fmt = resolve_format(args.format)
    # The labels stand in for the choice texts: one reply that answers "a" in every question, in the paper's
    # layout (which answers with a choice's text) too.
    reply = Renderer(fmt).response("所見から考える。", "a", fmt.display_labels[:5])
    questions, source = load_questions(args.questions)
    setup = {"fmt": fmt, "reply": reply, "questions": questions, "program": MedicalQA(fmt)}
    stub = Stub(reply)
    try:
        rounds = [one_round(i, setup, stub, args, tmp) for i in range(args.repeats)]
    finally:
        stub.close()
    # The best of the rounds: what the work itself costs on a machine whose other jobs come and go.
    scripted = min((r["scripted"] for r in rounds), key=lambda m: m["ms_per_question"])
    client = min((r["api"] for r in rounds), key=lambda m: m["ms_per_question"])
    runs = [max((r["threads"][k] for r in rounds), key=lambda m: m["qps"]) for k in range(len(args.threads))]
    async_run = max((r["async"] for r in rounds), key=lambda m: m["qps"])
    async_eval_run = max((r["async_eval"] for r in rounds), key=lambda m: m["qps"])
    best = max(runs, key=lambda r: r["qps"])
    return {
        "api_qps": best["qps"], "best_threads": best["threads"],
        "client_ms_per_question": client["ms_per_question"], "scripted_ms_per_question": scripted["ms_per_question"],
        "stub_ms_per_request": best["stub_ms_per_request"], "async_lm_qps": async_run["qps"],
        "async_eval_qps": async_eval_run["qps"], "async_eval_peak_threads": async_eval_run["peak_threads"],
        "goals": {"client_ms_per_question": 2.0, "api_qps": 250.0},
        "questions": len(questions), "source": source, "format": fmt.name, "cpus": os.cpu_count(),
        "repeats": args.repeats, "loadavg_1m": os.getloadavg()[0],
        "sequential": {"scripted": scripted, "api": client}, "threads": runs, "async": async_run,
        "async_eval": async_eval_run, "rounds": rounds,
    }


def table(results: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title=f"server path · {results['questions']} questions · best of {results['repeats']} rounds · "
                    f"{results['cpus']} CPUs · load {results['loadavg_1m']:.1f}")
    for col in ("measure", "value", "goal", "other processes (cores)"):
        t.add_column(col, justify="left" if col == "measure" else "right")
    seq, best = results["sequential"], max(results["threads"], key=lambda r: r["qps"])
    rows: list[tuple[str, str, str, float]] = [
        ("client_ms_per_question (CPU)", f"{results['client_ms_per_question']:.2f}", "≤ 2", seq["api"]["others_cores"]),
        ("scripted_ms_per_question (CPU)", f"{results['scripted_ms_per_question']:.2f}", "",
         seq["scripted"]["others_cores"]),
        (f"api_qps (threads {best['threads']})", f"{results['api_qps']:.0f}", "≥ 250", best["others_cores"]),
        ("stub_ms_per_request (CPU)", f"{results['stub_ms_per_request']:.2f}", "", best["others_cores"]),
    ]
    rows += [(f"  qps at threads {r['threads']} (client CPU ms/q {r['client_ms_per_question']:.2f})",
              f"{r['qps']:.0f}", "", r["others_cores"]) for r in results["threads"]]
    a = results["async"]
    rows.append((f"async_lm_qps ({a['concurrency']} in flight, peak {a['peak_threads']} threads, "
                 f"CPU ms/req {a['client_ms_per_request']:.2f})", f"{a['qps']:.0f}", "", a["others_cores"]))
    e = results["async_eval"]
    rows.append((f"async_eval_qps (evaluate, --threads {e['threads']}: peak {e['peak_threads']} OS threads, "
                 f"CPU ms/q {e['client_ms_per_question']:.2f})", f"{e['qps']:.0f}", "", e["others_cores"]))
    for name, value, goal, others in rows:
        t.add_row(name, value, goal, f"{others:.2f}")
    return t


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=400, help="Questions per measurement (default 400).")
    p.add_argument("--threads", type=_ints, default=[8, 16, 32, 64], help="Comma-separated --threads to try.")
    p.add_argument("--async-concurrency", type=int, default=256, help="Requests in flight on the async path (the async rows' --threads).")
    p.add_argument("--format", default="paper-instruction-in-header", help="The prompt format.")
    p.add_argument("--repeats", type=int, default=3, help="Rounds of every measurement; the best is reported.")
    p.add_argument("--json", type=Path, help="Write the results here.")
    return p.parse_args(argv)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from rich.console import Console

    args = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="medjp-bench-api-runs-") as tmp:
            results = run(args, Path(tmp))
    finally:
        shutil.rmtree(CACHE_DIR, ignore_errors=True)
    console = Console()
    console.print(table(results))
    for i, r in enumerate(results["rounds"]):
        qps = " · ".join(f"t{m['threads']} {m['qps']:.0f}/s" for m in r["threads"])
        console.print(f"round {i + 1}: client {r['api']['ms_per_question']:.2f} ms/q · scripted "
                      f"{r['scripted']['ms_per_question']:.2f} ms/q · {qps} · async {r['async']['qps']:.0f}/s · "
                      f"async eval {r['async_eval']['qps']:.0f}/s · "
                      f"other processes {r['api']['others_cores']:.2f} cores", style="dim")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
