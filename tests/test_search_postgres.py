"""Searches on several machines share one study on a real PostgreSQL server.

`medjp search` processes start at the same instant on an empty database (as one per node would): all of them run,
the study ends with exactly ``--n-trials`` evaluated formats, none lost or duplicated, no format evaluated twice (a
repeated format is copied from its first trial, with no LM call, and not counted), and the surrogate LM's planted
best is found. A worker killed mid-trial is noticed by its silent heartbeat and its trial
runs again exactly once. `.ci/run` starts a throwaway server and exports ``MEDJP_TEST_POSTGRES_URL``; without it
these tests skip. The missing-driver message is tested on every host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from medjp_agent.optimizers import DUPLICATE_OF, REFERENCE, open_storage
from medjp_agent.optimizers.liveness import RETRY_OF
from medjp_agent.optimizers.storage import StorageError, create_study
from medjp_agent.optimizers.workers import SURPLUS
from medjp_agent.signatures import PAPER_FORMATS

ROOT = Path(__file__).resolve().parents[1]
URL_VAR = "MEDJP_TEST_POSTGRES_URL"

#: `medjp` with the LM replaced by a planted surrogate (the best format is XML), started on a signal so that every
#: process reaches the empty database at the same instant. KILL_AT=k: the process SIGKILLs itself at its k-th LM
#: call, that is mid-trial (LM calls happen only inside trials with --no-final).
DRIVER = f"""
import os, signal, sys, time
from pathlib import Path
sys.path.insert(0, {str(ROOT / "benchmarks")!r})
from bench_search import PlantedLM
import psycopg, sqlalchemy.orm
from medjp_agent.data import load_dataset
import medjp_agent.lm as backends
from medjp_agent.cli import app

class Surrogate(PlantedLM):
    calls = 0

    def _reply(self, prompt, kwargs):
        Surrogate.calls += 1
        if Surrogate.calls == int(os.environ.get("KILL_AT", "0")):
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(float(os.environ.get("DELAY", "0")))
        return super()._reply(prompt, kwargs)

backends.build_lm = lambda opts: Surrogate(list(load_dataset("sample")), {{"template": {{"xml": 0.3}}}}, base=0.4)
barrier = Path(os.environ["BARRIER"])
(barrier / str(os.getpid())).touch()
while not (barrier / "go").exists():
    time.sleep(0.005)
app(sys.argv[1:], prog_name="medjp")
"""
#: Eight formats: the paper's two (the harness template renders no labels, so they are one format each) and six XML
#: ones. Six evaluated trials: the paper's two and four of the other six, so at least four XML formats (the planted
#: best template) are evaluated, and the sampler never has to find the last unseen format of the space.
SPACE_YAML = """base: paper-instruction-in-header
axes:
  template: [harness, xml]
  labels: [latin, upper, katakana]
  instruction_position: [header, preamble]
"""
N_TRIALS = 6
STUDY = "nodes"


@pytest.fixture()
def database() -> Iterator[str]:
    """The URL of a new, empty database on the test server, dropped afterwards."""
    server = os.environ.get(URL_VAR)
    if not server:
        pytest.skip(f"{URL_VAR} is not set: no PostgreSQL server (.ci/run starts one where postgresql is installed)")
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'medjp-agent[postgres]'")
    name = f"medjp_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield f"{server.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def search_command(tmp_path: Path, url: str, out: str, *args: str) -> list[str]:
    """`medjp search` on the shared study (the driver and space files are written once)."""
    driver, space = tmp_path / "driver.py", tmp_path / "space.yaml"
    driver.write_text(DRIVER, encoding="utf-8")
    space.write_text(SPACE_YAML, encoding="utf-8")
    return [sys.executable, str(driver), "search", "--out", str(tmp_path / out), "--study", STUDY, "--storage", url,
            "--space", str(space), "--no-tui", "--threads", "1", "--limit", "20", *args]


def start_searches(tmp_path: Path, url: str, n: int, *, delay: float, heartbeat: float,
                   kill_first_at: int = 0) -> list[subprocess.Popen]:
    """``n`` `medjp search --no-final` processes on one study, released together once all have started. A live
    trial silent for 3 x ``heartbeat`` counts as dead: keep that well above what a loaded CI machine may stall."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = []
    for i in range(n):
        command = search_command(tmp_path, url, f"node{i}", "--n-trials", str(N_TRIALS), "--no-final",
                                 "--heartbeat", str(heartbeat))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "BARRIER": str(barrier), "DELAY": str(delay),
               "KILL_AT": str(kill_first_at if i == 0 else 0)}
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 120
    while len(list(barrier.iterdir())) < n and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    (barrier / "go").touch()
    return procs


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    """Each process's exit code and the end of its stderr (every process is ended, pass or fail)."""
    try:
        return [(p.wait(timeout=240), p.stderr.read()[-3000:]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def format_key(trial: FrozenTrial) -> str:
    return json.dumps(trial.params, sort_keys=True)


def settled(url: str) -> tuple[optuna.Study, list[FrozenTrial]]:
    """The study, checked: nothing running, N_TRIALS formats evaluated, none twice (a repeat is copied without an
    LM call), each paper format evaluated once, the planted best found. Returns it and its failed trials, less those
    given back unrun (a surplus claim, a repeat of a running format)."""
    study = optuna.load_study(study_name=STUDY, storage=open_storage(url))
    trials = study.get_trials(deepcopy=False)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    evaluated = [t for t in finished if DUPLICATE_OF not in t.user_attrs]
    assert len(evaluated) == N_TRIALS
    assert len({format_key(t) for t in evaluated}) == N_TRIALS, Counter(map(format_key, evaluated))
    assert all(t.user_attrs.get("lm_calls", 0) == 0 for t in finished if DUPLICATE_OF in t.user_attrs)
    references = Counter(t.user_attrs.get(REFERENCE) for t in evaluated if t.user_attrs.get(REFERENCE))
    assert references == dict.fromkeys(PAPER_FORMATS, 1)
    assert max(evaluated, key=lambda t: t.value).params["template"] == "xml"
    unrun = {SURPLUS, DUPLICATE_OF}
    return study, [t for t in trials if t.state == TrialState.FAIL and not unrun & set(t.user_attrs)]


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4])
def test_searches_started_together_on_an_empty_database_share_one_study(tmp_path, database, n):
    results = finish(start_searches(tmp_path, database, n, delay=0.02, heartbeat=10))
    for code, stderr in results:
        assert code == 0, stderr
    study, failed = settled(database)
    assert failed == []
    n_trials = len(study.trials)

    # The README's last step: the study's best and the paper's formats on the test split, no new trial.
    final = subprocess.run(search_command(tmp_path, database, "final", "--n-trials", "0"), capture_output=True,
                           text=True, timeout=240, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                        "BARRIER": str(tmp_path / "barrier")})
    assert final.returncode == 0, final.stderr[-3000:]
    assert len(study.trials) == n_trials
    assert {p.name for p in (tmp_path / "final" / "test").iterdir()} == {"best", *PAPER_FORMATS}


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_detected_and_its_trial_runs_again_once(tmp_path, database):
    # The first process kills itself at its 5th LM call: 5 questions into its first trial (a paper format) of 10.
    (killed, killed_err), (survivor, survivor_err) = finish(
        start_searches(tmp_path, database, 2, delay=0.05, heartbeat=2, kill_first_at=5))
    assert killed == -9, killed_err
    assert survivor == 0, survivor_err
    study, failed = settled(database)
    assert len(failed) == 1  # the killed trial, failed by the survivor once its heartbeat went silent
    assert 0 < len(failed[0].intermediate_values) < 10
    retries = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
               if t.user_attrs.get(RETRY_OF) == failed[0].number]
    assert [t.params for t in retries] == [failed[0].params]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_exactly_one_of_several_processes_opening_an_empty_storage_creates_the_study(tmp_path, request, kind):
    url = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else request.getfixturevalue("database")
    barrier = threading.Barrier(4)

    def open_and_create(_: int) -> bool:
        barrier.wait()
        return create_study(open_storage(url), STUDY, direction="maximize")[1]

    with ThreadPoolExecutor(4) as pool:
        created = list(pool.map(open_and_create, range(4)))
    assert sorted(created) == [False, False, False, True]
    assert [s.study_name for s in optuna.get_all_study_summaries(open_storage(url))] == [STUDY]


def test_a_missing_driver_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # what `import psycopg` does where it is not installed
    with pytest.raises(StorageError) as raised:
        open_storage("postgresql://someone:secret@127.0.0.1:1/study")
    message = str(raised.value)
    assert "\n" not in message and "pip install 'medjp-agent[postgres]'" in message
    assert "secret" not in message and "postgresql://someone:***@127.0.0.1:1/study" in message


def test_an_unreachable_server_is_one_line():
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'medjp-agent[postgres]'")
    with pytest.raises(StorageError, match=r"^storage postgresql://someone@127\.0\.0\.1:1/study: .*refused[^\n]*$"):
        open_storage("postgresql://someone@127.0.0.1:1/study")
