"""A run folder survives a kill at any point of its resume-time rewrite, one process at a time writes it, and
readers count each question once (issue 15, items 1 and 2). Kills and concurrency use real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from medjp_agent.results import RESULTS, RunManifest, RunWriter, read_run
from medjp_agent.runlock import RunFolderBusy, holding
from medjp_agent.scoring import QuestionResult
from openai_server import FixedReply, OpenAIServer

N_LINES = 3000
MANIFEST = RunManifest(name="run", kind="eval", data="sample")


def result(i: int) -> QuestionResult:
    return QuestionResult(id=f"q{i}", year=118, section="A", category="", qtype="single", gold=("a",),
                          answer=("a",), correct=True, points=1, points_possible=1)


def torn_run(tmp_path: Path) -> Path:
    """A run folder whose results.jsonl holds N_LINES results and a torn last line (a kill mid-append)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps(MANIFEST.to_dict()), encoding="utf-8")
    lines = "".join(json.dumps(result(i).to_dict()) + "\n" for i in range(N_LINES))
    (run / RESULTS).write_text(lines + '{"id": "torn', encoding="utf-8")
    return run


#: Resumes the run folder argv[1] with every write of a file failing halfway: after writing half of its data the
#: process is killed (argv[2] "kill": SIGKILL, nothing cleans up) or the disk is full ("full": an OSError).
#: Whatever way the resume rewrites results.jsonl, it fails in the middle of it.
FAILING_MID_WRITE = textwrap.dedent("""
    import builtins, io, os, signal, sys
    from medjp_agent.results import RunManifest, RunWriter
    real_open = io.open

    def fail():
        if sys.argv[2] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(28, "No space left on device")

    def failing_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax+"):
            write = f.write
            def half_then_fail(data):
                write(data[: len(data) // 2])
                f.flush()
                fail()
            f.write = half_then_fail
        return f

    io.open = builtins.open = failing_open
    RunWriter(sys.argv[1], RunManifest(name="run", kind="eval", data="sample"))
""")


@pytest.mark.parametrize(("fault", "exit_code"), [("kill", -signal.SIGKILL), ("full", 1)])
def test_a_failure_during_the_resume_rewrite_loses_nothing(fault: str, exit_code: int, tmp_path: Path):
    run = torn_run(tmp_path)
    before = (run / RESULTS).read_bytes()
    proc = subprocess.run([sys.executable, "-c", FAILING_MID_WRITE, str(run), fault], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == exit_code, proc.stderr  # it really failed mid-write
    assert (run / RESULTS).read_bytes() == before
    with holding(run):  # the next resume repairs the torn tail, and drops the dead writer's temporary file
        resumed = RunWriter(run, MANIFEST)
    assert sorted(resumed.done_ids) == sorted(f"q{i}" for i in range(N_LINES))
    assert (run / RESULTS).read_text(encoding="utf-8").endswith("}\n")
    assert sorted(p.name for p in run.iterdir()) == [".medjp.lock", "manifest.json", RESULTS]


def test_readers_count_each_question_once_and_say_so(tmp_path: Path):
    run = tmp_path / "run"
    writer = RunWriter(run, MANIFEST)
    for i in (0, 1, 2):
        writer.write(result(i))
    with (run / RESULTS).open("a", encoding="utf-8") as f:  # what two unlocked processes used to leave
        f.write(json.dumps(result(1).to_dict()) + "\n" + json.dumps(result(2).to_dict()) + "\n")
    with pytest.warns(UserWarning, match=r"2 questions appear more than once .* counted once"):
        loaded = read_run(run)
    assert [r.id for r in loaded.results] == ["q0", "q1", "q2"]
    assert loaded.summary.n_questions == 3


def test_a_second_holder_in_another_process_is_refused_and_a_dead_holder_frees_the_folder(tmp_path: Path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom medjp_agent.runlock import holding\n"
                               "with holding(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n",
                               str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=f"{run}: another process holds this run folder"):
            with holding(run):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed holder must not leave the folder locked
        holder.wait()
    with holding(run):
        pass


class GatedReply(FixedReply):
    """Answers the first request at once and the others once ``gate`` opens (at most a minute): the first
    `medjp eval` is provably inside its run while the second one starts."""

    def __init__(self, text: str):
        super().__init__(text)
        self.gate = threading.Event()
        self.calls = 0

    def complete(self, messages, n=1, **params):
        self.calls += 1
        if self.calls > 1:
            self.gate.wait(60)
        return super().complete(messages, n=n, **params)


@pytest.mark.slow
def test_two_evals_on_one_folder_the_second_exits_2_and_nothing_is_duplicated(tmp_path: Path):
    reply = GatedReply("答え：a")
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with OpenAIServer(reply, "stub") as server:
        args = [str(Path(sys.executable).parent / "medjp"), "eval", "--data", "sample", "--format", "plain-ja-direct",
                "--api-base", server.url, "--model", "stub", "--limit", "6", "--threads", "1", "--out", str(out)]
        first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while reply.calls < 2 and time.monotonic() < deadline and first.poll() is None:
                time.sleep(0.1)
            assert reply.calls >= 2, first.communicate()
            second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        finally:
            reply.gate.set()
            first_out, first_err = first.communicate(timeout=120)
    assert second.returncode == 2, second.stderr
    assert f"{out}: another process holds this run folder" in " ".join(second.stderr.split())
    assert first.returncode == 0, first_err
    ids = [json.loads(line)["id"] for line in (out / RESULTS).read_text(encoding="utf-8").splitlines()]
    assert len(ids) == len(set(ids)) == 6
    assert reply.calls == 6  # the refused process asked nothing
