"""`medjp train`, `medjp train merge` and `medjp train fsdp-config` end to end through typer's runner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medjp_agent.cli import app
from medjp_agent.results import read_run

MEMO = Path(__file__).with_name("test_train_memo.jsonl")
runner = CliRunner()


def medjp(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_train_then_merge(tmp_path: Path, tiny_model: Path):
    from medjp_agent.training.demo import single_thread

    with single_thread():  # other suites share this 2-core box; see test_train_qlora
        (tmp_path / "train.yaml").write_text(yaml.safe_dump({
            "data": str(MEMO), "format": "plain-ja-direct", "validation_fraction": 0.25, "max_steps": 50,
            "compute_dtype": "float32", "learning_rate": 5e-3, "warmup_ratio": 0.0, "logging_steps": 1}))
        trained = medjp("train", "--config", tmp_path / "train.yaml", "--model", tiny_model, "--max-steps", 3,
                        "--save-steps", 3, "--out", tmp_path / "run", "--no-gradient-checkpointing")
        assert trained.exit_code == 0, trained.output
        adapter = tmp_path / "run" / "adapter"
        assert "trained 3 steps" in trained.output and "validation loss" in trained.output
        saved = yaml.safe_load((adapter / "train_config.yaml").read_text())
        assert (saved["max_steps"], saved["gradient_checkpointing"], saved["format"]["name"]) == (
            3, False, "plain-ja-direct")
        assert (tmp_path / "run" / "metrics.jsonl").read_text().count('"loss"') == 3
        # The printed next step runs as printed: the adapter on its 4-bit base, in its own format.
        hint = " ".join(trained.output.split()).split("evaluate it: medjp ", 1)[1].split()
        assert "--load-in-4bit" in hint
        evaluated = medjp(*hint, "--limit", 2, "--out", tmp_path / "eval", "--max-new-tokens", 8)
        assert evaluated.exit_code == 0, evaluated.output
        assert read_run(tmp_path / "eval").manifest.adapter
        merged = medjp("train", "merge", adapter, "--out", tmp_path / "merged", "--dtype", "float32")
        assert merged.exit_code == 0, merged.output
        assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_fsdp_config_command(tmp_path: Path):
    result = medjp("train", "fsdp-config", "--out", tmp_path / "fsdp.yaml", "--num-processes", 4)
    assert result.exit_code == 0, result.output
    assert "accelerate launch --config_file" in result.output
    config = yaml.safe_load((tmp_path / "fsdp.yaml").read_text())
    assert config["num_processes"] == 4 and config["fsdp_config"]["fsdp_use_orig_params"] is False


@pytest.mark.parametrize("args, message", [
    (["--lora-r", "0"], "--lora-r: must be at least 1"),
    (["--seed", "-3"], "--seed: must be in [0, 2**32), got -3"),
    (["--epochs", "inf"], "--epochs: expected a finite number, got inf"),
    (["--weight-decay", "-1"], "--weight-decay: must not be negative, got -1.0"),
    (["--target", "essay"], "--target: 'essay' is not one of explanation, answer"),
    (["--columns", "text"], "--columns 'text': expected KEY=VALUE"),
    (["--data", "missing.jsonl"], "TrainConfig.data: missing.jsonl: no such file"),
    (["--data", "sample"], "IgakuQA layout: evaluation data"),
    (["--config", "missing.yaml"], "missing.yaml: no such config file"),
])
def test_bad_flags_fail_clearly(args: list[str], message: str):
    result = medjp("train", *args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_unknown_config_key_is_named(tmp_path: Path):
    (tmp_path / "c.yaml").write_text("lr: 0.1\n")
    result = medjp("train", "--config", tmp_path / "c.yaml")
    assert result.exit_code == 2 and "TrainConfig.lr: unknown field" in result.output


def test_merge_of_a_non_adapter_fails_clearly(tmp_path: Path):
    result = medjp("train", "merge", tmp_path, "--out", tmp_path / "m")
    assert result.exit_code == 2 and "not a PEFT adapter folder" in result.output


def test_train_help_imports_no_torch():
    code = ("import sys; from typer.testing import CliRunner; from medjp_agent.cli import app; "
            "CliRunner().invoke(app, ['train', '--help']); "
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
