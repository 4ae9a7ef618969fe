"""Durable studies: a search killed mid-trial resumes with nothing lost or duplicated; workers share a study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from medjp_agent.data import load_dataset
from medjp_agent.optimizers import (
    REFERENCE, Budget, FormatSpace, Liveness, SearchConfig, SearchSettings, Splits, open_storage, run_search,
)
from medjp_agent.optimizers import DUPLICATE_OF
from medjp_agent.optimizers.liveness import RETRY_OF

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_search import PlantedLM  # noqa: E402

#: `medjp` with the LM replaced by a (slow, when DELAY is set) planted surrogate.
DRIVER = f"""
import os, sys, time
sys.path.insert(0, {str(ROOT / "benchmarks")!r})
from bench_search import PlantedLM
from medjp_agent.data import load_dataset
import medjp_agent.lm as backends

class SlowLM(PlantedLM):
    def _reply(self, prompt, kwargs):
        time.sleep(float(os.environ.get("DELAY", "0")))
        return super()._reply(prompt, kwargs)

backends.build_lm = lambda opts: SlowLM(list(load_dataset("sample")), {{"template": {{"xml": 0.3}}}}, base=0.4)
from medjp_agent.cli import app
app(sys.argv[1:], prog_name="medjp")
"""
SPACE_YAML = """base: paper-instruction-in-header
axes:
  template: [harness, alpaca, plain, markdown, xml]
  labels: [latin, upper, katakana]
  instruction_position: [header, preamble]
"""
N_TRIALS = 6


def search_command(tmp_path: Path, storage: str, study: str = "kill", heartbeat: float = 0.5) -> list[str]:
    """A trial silent for 3 x ``heartbeat`` counts as dead: short to find a killed one fast, long where processes run
    side by side on a loaded machine and a live trial must never be taken for a dead one."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE_YAML, encoding="utf-8")
    return [sys.executable, str(driver), "search", "--out", str(tmp_path / "run"), "--study", study, "--storage",
            storage, "--space", str(space), "--n-trials", str(N_TRIALS), "--no-tui", "--no-final", "--heartbeat",
            str(heartbeat), "--threads", "1", "--limit", "20"]


def env(delay: float) -> dict[str, str]:
    return {**os.environ, "DELAY": str(delay), "PYTHONPATH": str(ROOT)}


def load(storage: str, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=open_storage(storage))


def assert_settled(study: optuna.Study) -> None:
    """Exactly the requested trials completed, none left running, every failed trial retried exactly once."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # A repeated format copies a finished trial's outcome and does not count against the trial budget.
    assert sum(DUPLICATE_OF not in t.user_attrs for t in complete) == N_TRIALS
    assert states[TrialState.RUNNING] == 0
    references = Counter(t.user_attrs.get(REFERENCE) for t in complete if t.user_attrs.get(REFERENCE))
    assert references == {"paper-instruction-in-header": 1, "paper-instruction-preamble": 1}
    # Issue: every process seeded its sampler alike and replayed the same trials. No format is asked twice.
    asked = [tuple(sorted(t.params.items())) for t in complete if DUPLICATE_OF not in t.user_attrs]
    assert len(set(asked)) == len(asked)
    for failed in (t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("surplus")
                   and DUPLICATE_OF not in t.user_attrs):
        retries = [t for t in complete if t.user_attrs.get(RETRY_OF) == failed.number]
        assert len(retries) == 1 and retries[0].params.items() >= failed.params.items()


def test_a_killed_search_resumes_without_losing_or_duplicating_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    command = search_command(tmp_path, storage)
    first = subprocess.Popen(command, env=env(0.05), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.1)
            try:
                trials = load(storage, "kill").get_trials(deepcopy=False)
            except (KeyError, optuna.exceptions.StorageInternalError):
                continue
            done = sum(t.state == TrialState.COMPLETE for t in trials)
            # Kill mid-trial, a few questions (of 0.05 s each) away from either end of the 10.
            if done >= 2 and any(t.state == TrialState.RUNNING and 2 <= len(t.intermediate_values) <= 6 for t in trials):
                first.send_signal(signal.SIGKILL)
                break
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()
    left = [t.number for t in load(storage, "kill").trials if t.state == TrialState.RUNNING]
    assert len(left) == 1, first.stderr.read().decode()[-2000:]  # what a kill leaves behind
    killed_trial = left[0]

    resumed = subprocess.run(command, env=env(0.0), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    study = load(storage, "kill")
    assert_settled(study)
    assert study.trials[killed_trial].state == TrialState.FAIL
    assert any(t.user_attrs.get(RETRY_OF) == killed_trial for t in study.trials)


def test_two_processes_share_one_journal_study(tmp_path):
    storage = f"journal:{tmp_path / 'study.log'}"
    command = search_command(tmp_path, storage, study="shared", heartbeat=10.0)
    first = subprocess.Popen(command, env=env(0.01), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # the first creates the study; creating one concurrently could enqueue the references twice
    second = subprocess.Popen(command, env=env(0.01), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for proc in (first, second):
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()[-2000:]
    assert_settled(load(storage, "shared"))


def test_worker_threads_share_one_study(tmp_path):
    questions = list(load_dataset("sample"))
    dev = list(Splits.make(questions).dev)
    lm = PlantedLM(questions, {"template": {"xml": 0.3}}, base=0.4)
    searched = {"template": ["harness", "alpaca", "plain", "markdown", "xml"], "labels": ["latin", "upper"],
                "instruction_position": ["header", "preamble"]}
    space = FormatSpace({}, FormatSpace.default().base).restrict(**searched)
    settings = SearchSettings(study="threads", storage=f"journal:{tmp_path / 'study.log'}", n_workers=2, threads=2,
                              budget=Budget(n_trials=N_TRIALS), liveness=Liveness(interval_s=0.5))
    result = run_search(SearchConfig(Splits((), tuple(dev), ()), lm, space, settings))
    assert result.n_complete == N_TRIALS and result.n_failed == 0
    assert_settled(load(settings.storage, "threads"))


@pytest.fixture()
def python_sigint():
    """Python's own Ctrl-C handler for the test. A process started in the background by a non-interactive shell (as
    CI may start us) inherits SIGINT as ignored, and then no KeyboardInterrupt would ever be raised."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_requeues_the_running_trial(tmp_path, python_sigint):
    questions = list(load_dataset("sample"))
    dev = list(Splits.make(questions).dev)
    calls = []

    class InterruptingLM(PlantedLM):
        def _reply(self, prompt, kwargs):
            calls.append(1)
            if len(calls) == 20:  # mid-way through the second trial
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)
            return super()._reply(prompt, kwargs)

    settings = SearchSettings(study="ctrl-c", storage=f"journal:{tmp_path / 'study.log'}", threads=1,
                              budget=Budget(n_trials=4))
    with pytest.raises(KeyboardInterrupt):
        run_search(SearchConfig(Splits((), tuple(dev), ()), InterruptingLM(questions),
                                FormatSpace.default().restrict(template=["alpaca", "xml"]), settings))
    study = load(settings.storage, "ctrl-c")
    states = Counter(t.state for t in study.trials)
    assert states[TrialState.RUNNING] == 0 and states[TrialState.FAIL] == 1
    failed = next(t for t in study.trials if t.state == TrialState.FAIL)
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert [t.user_attrs[RETRY_OF] for t in waiting] == [failed.number]


def test_a_copied_search_folder_reads_its_own_study_and_a_missing_one_is_named(tmp_path):
    from medjp_agent.errors import ConfigError
    from medjp_agent.optimizers.search import search_study
    from medjp_agent.optimizers.storage import default_storage_url, search_storage_url
    from medjp_agent.results import RunManifest

    original, copy = tmp_path / "search", tmp_path / "copy"
    for folder in (original, copy):
        folder.mkdir()
        (folder / "study.db").write_bytes(b"")
    assert search_storage_url(copy, default_storage_url(original)) == default_storage_url(copy)
    assert search_storage_url(copy, "postgresql://db/studies") == "postgresql://db/studies"
    gone = tmp_path / "gone"
    manifest = RunManifest(name="gone", kind="search", data="d", extra={"study": "s",
                                                                         "storage": default_storage_url(gone)})
    with pytest.raises(ConfigError, match=f"{gone}: the search's study database {gone / 'study.db'} is missing"):
        search_study(gone, manifest)
    assert not gone.exists()  # nothing created on the way
