"""`medjp eval` on the local HF backend end to end: concurrent questions become batches; a re-run is all cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medjp_agent.cli import app
from medjp_agent.lm import build_lm

runner = CliRunner()


@pytest.fixture()
def built_lms(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list:
    """Every LM `medjp eval` builds (through the real build_lm), with the generation cache in ``tmp_path``."""
    monkeypatch.setenv("MEDJP_CACHE_DIR", str(tmp_path / "generations"))
    built: list = []

    def build(opts):
        built.append(build_lm(opts))
        return built[-1]

    monkeypatch.setattr("medjp_agent.runs.build_lm", build)
    yield built
    for lm in built:
        lm.close()


@pytest.mark.slow
def test_eval_with_16_threads_batches_and_a_rerun_is_all_cache(tiny_model: Path, tmp_path: Path, built_lms: list):
    args = ["eval", "--limit", "16", "--threads", "16", "--format", "plain-ja-direct", "--max-new-tokens", "6",
            "--model", str(tiny_model)]
    first = runner.invoke(app, [*args, "--out", str(tmp_path / "first")])
    assert first.exit_code == 0, first.output
    cold = built_lms[0]
    assert cold.describe()["backend"] == "hf"
    assert max(cold.stats.batch_sizes) > 1
    assert cold.generate_calls < 16 and cold.cache_hits == 0
    summary = json.loads((tmp_path / "first" / "summary.json").read_text())
    assert summary["n_questions"] == 16 and summary["prompt_tokens"] > 0 and summary["completion_tokens"] > 0

    second = runner.invoke(app, [*args, "--out", str(tmp_path / "second")])
    assert second.exit_code == 0, second.output
    warm = built_lms[1]
    assert (warm.generate_calls, warm.cache_hits) == (0, 16)
    lines = (tmp_path / "second" / "results.jsonl").read_text().splitlines()
    completions = [json.loads(line)["completion"] for line in (tmp_path / "first" / "results.jsonl").read_text().splitlines()]
    assert sorted(json.loads(line)["completion"] for line in lines) == sorted(completions)
