"""Output paths and flag values that used to end in a traceback: report files, a score into another run's folder,
train --out, --storage folders, --max-memory, and an adapter config without peft_type. Each is refused with a
message naming the flag or file, exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_report_factories import outcome_run
from typer.testing import CliRunner

from medjp_agent.cli import app
from medjp_agent.optimizers.storage import StorageError, open_storage
from medjp_agent.training.config import TrainConfig, TrainConfigError

runner = CliRunner()


def said(res) -> str:
    """The output as one line: typer draws flag errors in a box that may wrap."""
    return " ".join(res.output.replace("│", " ").split())


def refused(res, fragment: str) -> None:
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception  # no traceback
    assert fragment in said(res), res.output


@pytest.fixture
def runs(tmp_path: Path) -> list[str]:
    return [str(outcome_run(tmp_path / name, outcomes)) for name, outcomes in
            (("base", [True] * 6 + [False] * 6), ("other", [True] * 8 + [False] * 4))]


@pytest.fixture
def no_report(monkeypatch):
    """A bad output path must fail before the report is computed (bootstraps take minutes on big runs)."""
    import medjp_agent.report

    def computed(*args, **kwargs):
        raise AssertionError("the report was computed before its output paths were checked")

    monkeypatch.setattr(medjp_agent.report, "build_report", computed)


@pytest.mark.parametrize("flag, where, message", [
    ("--html", "/proc/x.html", "Invalid value for '--html': /proc/x.html: cannot write this file"),
    ("--json", "/proc/x/sub/r.json", "Invalid value for '--json': /proc/x/sub/r.json: cannot write this file"),
    ("--csv", "{tmp}", "Invalid value for '--csv'"),
    ("--csv", "{tmp}", "cannot write this file (it is a folder; give a file name)"),
    ("--plots-dir", "/proc/x", "Invalid value for '--plots-dir': /proc/x: cannot write files here"),
    ("--plots-dir", "{tmp}/base/results.jsonl", "cannot write files here (a file of that name is in the way)"),
])
def test_unwritable_report_outputs_are_refused_naming_the_flag(runs, tmp_path, no_report, flag, where, message):
    refused(runner.invoke(app, ["report", *runs, flag, where.format(tmp=tmp_path)]), message)


def test_report_outputs_get_their_missing_folders(runs, tmp_path):
    json_out, csv_out = tmp_path / "nodir" / "sub" / "r.json", tmp_path / "other-dir" / "r.csv"
    res = runner.invoke(app, ["report", *runs, "--json", str(json_out), "--csv", str(csv_out), "--n-boot", "100"])
    assert res.exit_code == 0, res.output
    assert json.loads(json_out.read_text(encoding="utf-8"))["runs"] and csv_out.read_text(encoding="utf-8")


def test_score_into_another_runs_folder_is_a_message_like_eval(runs, tmp_path):
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"problem_id": "SA1", "prediction": "a"}\n', encoding="utf-8")
    res = runner.invoke(app, ["score", "--predictions", str(preds), "--out", runs[0]])
    refused(res, "holds a different run")
    assert "error:" in res.output and "use another --out" in said(res)


@pytest.fixture
def no_model(monkeypatch):
    """train --out must be checked before a model loads."""
    from medjp_agent.training import trainer

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(trainer, "build_trainer", loaded)


@pytest.mark.parametrize("out, reason", [
    ("{tmp}/a-file.txt", "(a file of that name is in the way)"),
    ("/proc/x", "(No such file or directory)"),
])
def test_train_out_is_checked_before_the_model_loads(tmp_path, no_model, out, reason):
    (tmp_path / "a-file.txt").write_text("not a folder", encoding="utf-8")
    out = out.format(tmp=tmp_path)
    res = runner.invoke(app, ["train", "--max-steps", "1", "--no-quantize", "--compute-dtype", "float32",
                              "--out", out])
    refused(res, f"TrainConfig.out: {out}: cannot write a run folder here {reason}")


def test_train_out_is_checked_for_python_callers_too(no_model):
    from medjp_agent.training.trainer import train

    with pytest.raises(TrainConfigError, match=r"TrainConfig.out: /proc/x: cannot write a run folder here"):
        train(TrainConfig(out="/proc/x", quantize=False))


@pytest.mark.parametrize("url", ["sqlite:////proc/x/study.db", "journal:/proc/x/j.log"])
def test_storage_in_an_unwritable_folder_names_storage(url):
    with pytest.raises(StorageError, match=rf"^--storage {url}: cannot write into the folder /proc/x \(No such"):
        open_storage(url)


def test_search_with_an_unwritable_storage_exits_with_the_message_before_the_model_loads(tmp_path, monkeypatch):
    from medjp_agent.cli import search_cmd

    loaded = []
    monkeypatch.setattr(search_cmd, "_build_lm", lambda options: loaded.append(options))  # a 70B load takes minutes
    res = runner.invoke(app, ["search", "--storage", "journal:/proc/x/j.log", "--out", str(tmp_path / "s"),
                              "--n-trials", "1", "--no-tui", "--limit", "20"])
    refused(res, "error: --storage journal:/proc/x/j.log: cannot write into the folder /proc/x")
    assert not loaded


@pytest.mark.parametrize("value", ["cpu", "=5GiB", "cpu="])
def test_max_memory_without_device_and_size_is_refused(value):
    res = runner.invoke(app, ["eval", "--max-memory", value, "--limit", "1"])
    refused(res, f"error: --max-memory '{value}': expected DEVICE=SIZE")


def test_key_value_flags_share_the_check(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"question": "q", "options": ["a", "b"], "answer": "a"}\n', encoding="utf-8")
    res = runner.invoke(app, ["eval", "--data", str(tmp_path / "q.jsonl"), "--column", "question"])
    refused(res, "error: --column 'question': expected FIELD=COLUMN")


def test_max_memory_below_the_weights_is_refused(tmp_path):
    res = runner.invoke(app, ["eval", "--max-memory", "cpu=1KiB", "--limit", "1", "--max-new-tokens", "2",
                              "--out", str(tmp_path / "r")])
    refused(res, "error: --max-memory caps cpu at 1.0 KiB, no more than the weights")
    assert "nothing is left for batches" in said(res)


def test_adapter_config_without_peft_type_names_the_file(tmp_path):
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text("{}", encoding="utf-8")
    res = runner.invoke(app, ["eval", "--adapter", str(tmp_path / "lora"), "--limit", "1",
                              "--out", str(tmp_path / "r")])
    refused(res, f"error: --adapter {tmp_path / 'lora'}: {tmp_path / 'lora' / 'adapter_config.json'} has no "
                 '"peft_type"')


def test_adapter_folder_without_weights_says_so(tmp_path):
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text('{"peft_type": "LORA"}', encoding="utf-8")
    res = runner.invoke(app, ["eval", "--adapter", str(tmp_path / "lora"), "--limit", "1",
                              "--out", str(tmp_path / "r")])
    refused(res, f"error: --adapter {tmp_path / 'lora'}: no adapter weights (adapter_model.safetensors)")
