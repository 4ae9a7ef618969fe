"""A bounded soak of `medjp search`: two worker processes on one SQLite study, a faulty server, random SIGKILLs.

A loopback OpenAI-compatible server (``tests/openai_server.py``) answers every question *correctly*: its model
finds the asked question in the prompt and replies ``答え：<gold>``. A pump injects one fault every few requests
(5xx, 429, a dropped connection, a hang past ``--api-timeout``, an empty, ``null`` or missing completion, a body
that is not JSON, a completion truncated at ``max_tokens``). Two ``medjp search`` processes (``--n-workers 1``
each) share one study in ``<out>/study.db``; every few seconds one of them is SIGKILLed and restarted. Since the
healthy server is never wrong, every wrong answer in a results file was made by a fault. At the end it reports:

- ``kills``: SIGKILLs sent; ``faults_injected``: faults the server served (and each kind's count);
- ``trials_complete``: trials the study holds as complete (pruned ones apart);
- ``duplicate_formats``: evaluations of a format beyond its first, among finished trials that were evaluated
  (a trial that copied a finished twin's value is not an evaluation);
- ``results_lost``: result lines complete on disk right after a kill and missing at the end;
- ``faults_scored_as_wrong``: result lines scored wrong that neither say *not run* nor flag a truncation.

The goal is that the last three are 0. Everything runs on 127.0.0.1 with bounded loops: each search process gets
``--timeout`` up to the soak's end, so they stop on their own, and stragglers are killed a grace period later.

    python benchmarks/bench_soak.py --duration 180 --json benchmarks/results/soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from openai_server import OpenAIServer  # noqa: E402 - the tests' server, shared with the benchmarks

from medjp_agent.data import SAMPLE_DIR, load_igakuqa  # noqa: E402
from medjp_agent.lm.completions import Generation  # noqa: E402

MEDJP = str(Path(sys.executable).parent / "medjp")
#: The faults the pump draws from: everything the client must retry or record as not run, never score.
FAULTS = ("500", "503", "429", "drop", "timeout", "empty", "null", "no_choices", "malformed", "truncated")
#: A space of 4 personas x 3 wordings x 2 joiners x 4 shot counts x 2 instruction positions = 192 formats that keeps
#: the reply parseable in every format, so a wrong answer can only come from a fault; small enough for a sampler to
#: start repeating itself within a soak.
SPACE = {"base": "plain-ja-direct", "axes": {"persona": ["none", "examinee", "specialist", "professor"],
                                             "wording": ["paper", "exam", "concise"], "joiner": ["\n\n", "\n"],
                                             "shots": [0, 1, 2, 3], "instruction_position": ["preamble", "header"]}}


class GoldReply:
    """The server's model: the gold answer of the question the prompt asks last (demos come before it)."""

    def __init__(self) -> None:
        self.questions = list(load_igakuqa(SAMPLE_DIR))

    def complete(self, messages: list[dict[str, Any]], n: int = 1, **_params: Any) -> Generation:
        prompt = "\n".join(str(m.get("content") or "") for m in messages)
        asked = max(self.questions, key=lambda q: prompt.rfind(q.text))
        text = "答え：" + ",".join(asked.answers)
        return Generation(texts=(text,) * n, finish_reasons=("stop",) * n, prompt_tokens=len(prompt),
                          completion_tokens=n)


@dataclass
class FaultPump:
    """Queues one random fault on ``server`` after every 2-6 requests it receives, until stopped."""

    server: OpenAIServer
    rng: random.Random
    injected: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _pending_since: int | None = None

    def run(self) -> None:
        next_at = self.rng.randint(2, 6)
        while not self._stop.wait(0.02):
            received = len(self.server.peers)
            if received >= next_at and self._pending_since is None:
                fault = self.rng.choice(FAULTS)
                self.server.inject(fault)
                self.injected[fault] += 1
                self._pending_since = received
                next_at = received + self.rng.randint(2, 6)
            elif self._pending_since is not None and received > self._pending_since:
                self._pending_since = None  # the next request took it

    def stop(self) -> int:
        """Stop; returns the faults that were served (a last one still queued was not)."""
        self._stop.set()
        return sum(self.injected.values()) - (1 if self._pending_since is not None and
                                                len(self.server.peers) <= self._pending_since else 0)


def complete_lines(out: Path) -> set[tuple[str, str]]:
    """``(trial folder, question id)`` of every complete result line under ``out/trials``."""
    found = set()
    for path in sorted(out.glob("trials/*/results.jsonl")):
        for line in path.read_bytes().split(b"\n")[:-1]:  # the part after the last newline is torn
            try:
                found.add((path.parent.name, json.loads(line)["id"]))
            except (ValueError, KeyError, TypeError):
                continue
    return found


def judged(line: dict[str, Any]) -> str:
    """What a result line says: ``right``, ``not_run``, ``truncated`` (flagged) or ``wrong``."""
    if line.get("correct"):
        return "right"
    if line.get("not_run") or str(line.get("status", "")).replace(" ", "_") == "not_run":
        return "not_run"
    if line.get("truncated") or line.get("finish_reason") == "length":
        return "truncated"
    return "wrong"


def cause(line: dict[str, Any]) -> str:
    """Which fault made a wrong line: the healthy reply is ``答え：<gold>``, so its cut half is a truncation."""
    completion = str(line.get("completion") or "")
    healthy = "答え：" + ",".join(line.get("gold") or ())
    if not completion.strip() or completion.strip() == "None":
        return "empty or null reply scored"
    if healthy.startswith(completion) and completion != healthy:
        return "truncation not flagged"
    return "other"


def audit_results(out: Path) -> dict[str, Any]:
    """Judgements of every result line, and lines repeating an id within one results file."""
    kinds: Counter[str] = Counter()
    causes: Counter[str] = Counter()
    repeated = 0
    examples: list[str] = []
    for path in sorted(out.glob("trials/*/results.jsonl")):
        ids = Counter()
        for raw in path.read_bytes().split(b"\n")[:-1]:
            line = json.loads(raw)
            ids[line["id"]] += 1
            kind = judged(line)
            kinds[kind] += 1
            if kind == "wrong":
                causes[cause(line)] += 1
            if kind == "wrong" and len(examples) < 5:
                examples.append(f"{path.parent.name}/{line['id']}: answer {line.get('answer')} gold {line.get('gold')}"
                                f" ({line.get('parse_error') or 'parsed'}; completion {line.get('completion', '')!r})")
        repeated += sum(n - 1 for n in ids.values())
    return {"judged": dict(kinds), "wrong_by_cause": dict(causes), "repeated_ids": repeated,
            "wrong_examples": examples}


def audit_study(out: Path, study: str) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    loaded = optuna.load_study(study_name=study, storage=f"sqlite:///{out / 'study.db'}")
    trials = loaded.get_trials(deepcopy=False)
    states = Counter(t.state.name.lower() for t in trials)
    evaluated = Counter(json.dumps(t.params, sort_keys=True) for t in trials
                        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and "duplicate_of" not in t.user_attrs)
    copied = sum(1 for t in trials if "duplicate_of" in t.user_attrs)
    return {"states": dict(states), "trials_complete": states.get("complete", 0),
            "duplicate_formats": sum(n - 1 for n in evaluated.values()), "distinct_formats": len(evaluated),
            "copied_from_twin": copied}


@dataclass
class Worker:
    """One `medjp search` process slot: started, killed and restarted by the soak."""

    index: int
    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None
    exits: list[int] = field(default_factory=list)
    #: The exit code of the process that ended on its own since the last start (None: running or killed).
    last_exit: int | None = None

    def start(self, timeout_s: float) -> None:
        self.last_exit = None
        with self.log.open("a", encoding="utf-8") as log:
            log.write(f"\n--- start at {time.strftime('%H:%M:%S')} ---\n")
            log.flush()
            self.proc = subprocess.Popen([*self.args, "--timeout", f"{max(timeout_s, 5):.0f}"], env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            self.exits.append(self.proc.returncode)
            self.last_exit = self.proc.returncode
            self.proc = None
        return self.proc is not None

    def kill(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the search and anything it started
            self.proc.wait()
            self.proc = None


def search_args(args: argparse.Namespace, url: str, out: Path, space: Path) -> list[str]:
    return [MEDJP, "search", "--data", "sample", "--api-base", url, "--model", "gold", "--space", str(space),
            "--out", str(out), "--n-trials", str(args.n_trials), "--n-workers", "1", "--no-final", "--no-tui",
            "--heartbeat", "2", "--threads", "4", "--api-timeout", "1", "--api-retries", "6"]


@dataclass
class Churn:
    """What the kill loop did: SIGKILLs sent, workers restarted after failing on their own, and every result line
    that was complete on disk right after a kill (none of them may be missing at the end)."""

    kills: int = 0
    crashes: int = 0
    seen_after_kills: set[tuple[str, str]] = field(default_factory=set)


def churn(workers: list[Worker], rng: random.Random, args: argparse.Namespace, out: Path, end: float) -> Churn:
    """Until ``end``: SIGKILL a random worker every ``--kill-every`` seconds and restart it; restart a worker that
    failed on its own (at most ``--max-crashes`` times); stop early when every worker has finished its budget."""
    state = Churn()
    next_kill = time.monotonic() + rng.uniform(*args.kill_every)
    while time.monotonic() < end and any(w.alive() for w in workers):
        time.sleep(0.2)
        for w in workers:  # a worker that failed on its own is a finding: counted, logged, and restarted
            if not w.alive() and w.last_exit not in (None, 0) and state.crashes < args.max_crashes:
                state.crashes += 1
                w.start(end - time.monotonic())
        alive = [w for w in workers if w.alive()]
        if time.monotonic() >= next_kill and alive:
            victim = rng.choice(alive)
            victim.kill()
            state.kills += 1
            state.seen_after_kills |= complete_lines(out)
            time.sleep(rng.uniform(0.2, 2.0))
            victim.start(end - time.monotonic())
            next_kill = time.monotonic() + rng.uniform(*args.kill_every)
    return state


def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    out, space = work / "search", work / "space.json"
    space.write_text(json.dumps(SPACE), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MEDJP_HOME": str(work / "home"),
           "DSPY_CACHEDIR": str(work / "home" / "dspy"), "COLUMNS": "160"}
    with OpenAIServer(GoldReply(), "gold", hang_s=3.0) as server:
        pump = FaultPump(server, rng)
        threading.Thread(target=pump.run, daemon=True).start()
        start = time.monotonic()
        end = start + args.duration
        workers = [Worker(i, search_args(args, server.url, out, space), env, work / f"worker-{i}.log")
                   for i in range(2)]
        for w in workers:
            w.start(end - time.monotonic())
            time.sleep(1.0)  # the first creates the study; the second joins it
        state = churn(workers, rng, args, out, end)
        grace_end = time.monotonic() + args.grace
        while any(w.alive() for w in workers) and time.monotonic() < grace_end:
            time.sleep(0.5)
        stragglers = [w.index for w in workers if w.alive()]
        for w in workers:
            w.kill()
        faults = pump.stop()
        requests = len(server.peers)
    lost = state.seen_after_kills - complete_lines(out)
    results = audit_results(out)
    return {
        "duration_s": round(time.monotonic() - start, 1), "kills": state.kills, "faults_injected": faults,
        "faults_by_kind": dict(pump.injected), "requests": requests, **audit_study(out, out.name),
        "results_lost": len(lost), "lost_examples": sorted(lost)[:5],
        "faults_scored_as_wrong": results["judged"].get("wrong", 0), **results, "worker_crashes": state.crashes,
        "worker_exit_codes": [w.exits for w in workers], "stragglers_killed": stragglers,
        "cpus": os.cpu_count(), "work_dir": str(work),
    }


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"search soak · {results['duration_s']} s · 2 workers · {results['cpus']} CPUs "
                        "(machine shared with other jobs)", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("goal", justify="right")
    goals = {"duplicate_formats": "0", "results_lost": "0", "faults_scored_as_wrong": "0"}
    for key in ("kills", "worker_crashes", "faults_injected", "requests", "trials_complete", "distinct_formats", "copied_from_twin",
                "duplicate_formats", "results_lost", "faults_scored_as_wrong", "repeated_ids"):
        table.add_row(key, str(results[key]), goals.get(key, ""))
    console = Console(width=120)
    console.print(table)
    console.print(f"faults by kind: {results['faults_by_kind']}; result lines: {results['judged']}; "
                  f"trial states: {results['states']}; wrong lines by cause: {results['wrong_by_cause']}",
                  highlight=False)
    for example in results["wrong_examples"]:
        console.print(f"wrong: {example}", highlight=False, markup=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=180.0, help="Seconds of killing and restarting (default 180).")
    p.add_argument("--grace", type=float, default=60.0, help="Seconds the workers get to stop on their own after.")
    p.add_argument("--n-trials", type=int, default=150,
                   help="The study's trial budget (default 150 of the 192 formats: the duration ends the soak first).")
    p.add_argument("--kill-every", type=float, nargs=2, default=(5.0, 15.0), metavar=("MIN", "MAX"),
                   help="Seconds between two kills, drawn uniformly (default 5 15).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the faults and the kills.")
    p.add_argument("--max-crashes", type=int, default=5, help="Restarts of workers that failed on their own.")
    p.add_argument("--keep", action="store_true", help="Keep the work folder (logs, run folders, study).")
    p.add_argument("--json", type=Path, help="Write the results here.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="medjp-soak-"))
    results = soak(args, work)
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
