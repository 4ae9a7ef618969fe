"""`medjp train` on the inputs a hospital user gets wrong: config files with values of the wrong type, an empty data
file, an `--out` that is someone else's folder or a finished run, a merge into another base, a torn metrics log.
Each stops with one line naming the field or file, and leaves the user's files as they were; and a resume from
another working directory continues the same run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medjp_agent.cli import app
from medjp_agent.training.config import TrainConfig

MEMO = Path(__file__).with_name("test_train_memo.jsonl")
runner = CliRunner()


def medjp(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def one_line(result) -> str:
    assert result.exit_code == 2, result.output  # an uncaught exception (a traceback) exits 1
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A real one-step QLoRA run of the tiny 4-bit model, finished: checkpoint-1/ and adapter/."""
    from medjp_agent.training.demo import single_thread
    from medjp_agent.training.trainer import train

    out = tmp_path_factory.mktemp("finished") / "run"
    cfg = TrainConfig(data=str(MEMO), format="alpaca-labelled-in-header", validation_fraction=0.0, eval_data=(),
                      out=str(out), model=str(tiny_model), compute_dtype="float32", batch_size=4, grad_accum=1,
                      max_steps=1, save_steps=1, gradient_checkpointing=False)
    with single_thread():  # other suites share this 2-core box; see test_train_qlora
        train(cfg)
    return out


@pytest.mark.parametrize("line, message", [
    ("data: 3", "TrainConfig.data: expected text, got 3"),
    ("eval_data: [sample, 3]", "TrainConfig.eval_data: expected text, got 3"),
    ("model: 7", "TrainConfig.model: expected text, got 7"),
    ("columns: text", "TrainConfig.columns: expected a mapping of FIELD: COLUMN, got 'text'"),
    ("columns: {text: 3}", "TrainConfig.columns: expected text, got 3"),
    ("shots: [0, true]", "TrainConfig.shots: expected an integer, got True"),
    ("format: 3", "TrainConfig.format: expected a format name or a mapping, got 3"),
])
def test_a_config_value_of_the_wrong_type_names_file_and_field(tmp_path: Path, line: str, message: str):
    (tmp_path / "train.yaml").write_text(line + "\n", encoding="utf-8")
    result = medjp("train", "--config", tmp_path / "train.yaml")
    assert f"{tmp_path / 'train.yaml'}: {message}" in one_line(result)


def test_an_empty_data_file_is_named_as_such(tmp_path: Path, tiny_model: Path):
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    result = medjp("train", "--data", tmp_path / "empty.jsonl", "--model", tiny_model, "--out", tmp_path / "run")
    assert f"TrainConfig.data: {tmp_path / 'empty.jsonl'}: holds no questions" in one_line(result)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def _memo_with_bad_records(tmp_path: Path) -> Path:
    """The memo set with a torn JSON line (line 3) and a row whose answer is no option (line 5) among its rows."""
    good = MEMO.read_text(encoding="utf-8").splitlines()
    bad = json.loads(good[0]) | {"id": "memo-9", "answer_idx": "Z"}
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([*good[:2], '{"id": "memo-8", "question": "', *good[2:3], json.dumps(bad),
                               *good[3:]]) + "\n", encoding="utf-8")
    return path


def test_a_bad_training_record_is_located_and_the_lenient_switch_named(tmp_path: Path, tiny_model: Path):
    data = _memo_with_bad_records(tmp_path)
    result = medjp("train", "--data", data, "--model", tiny_model, "--out", tmp_path / "run")
    text = one_line(result)
    assert f"TrainConfig.data: {data}:3:" in text and "(--lenient, or `lenient: true` in the config, skips" in text


@pytest.mark.slow
def test_lenient_training_skips_bad_records_and_lists_each_in_the_run(tmp_path: Path, tiny_model: Path):
    data = _memo_with_bad_records(tmp_path)
    result = medjp("train", "--data", data, "--model", tiny_model, "--out", tmp_path / "run", "--lenient",
                   "--format", "alpaca-labelled-in-header", "--validation-fraction", "0", "--eval-data", "sample",
                   "--compute-dtype", "float32", "--batch-size", "4", "--grad-accum", "1", "--max-steps", "1",
                   "--no-gradient-checkpointing")
    said = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert f"skipped 2 bad records of {data} (lenient), each listed in {tmp_path / 'run'}/data.json" in said
    listed = json.loads((tmp_path / "run" / "data.json").read_text(encoding="utf-8"))
    manifest = json.loads((tmp_path / "run" / "adapter" / "train_manifest.json").read_text(encoding="utf-8"))
    assert listed["n_train"] == 4 and manifest["data"] == listed
    assert listed["skipped"]["count"] == 2
    assert [r.split(": ")[0] for r in listed["skipped"]["records"]] == [f"{data}:3", f"{data}:5"]


@pytest.mark.parametrize("resume", [[], ["--resume"]])
def test_an_out_folder_that_is_not_a_run_is_refused_and_left_as_it_was(tmp_path: Path, tiny_model: Path,
                                                                       resume: list[str]):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("ward rota\n", encoding="utf-8")
    (notes / "data.json").write_text("{}", encoding="utf-8")
    result = medjp("train", "--data", MEMO, "--model", tiny_model, "--eval-data", "sample", "--out", notes, *resume)
    assert f"TrainConfig.out: {notes} is not empty (README.md, data.json) and is not a training run" in one_line(
        result)
    assert sorted(p.name for p in notes.iterdir()) == ["README.md", "data.json"]
    assert (notes / "README.md").read_text(encoding="utf-8") == "ward rota\n"


@pytest.mark.slow
def test_a_finished_run_without_checkpoints_keeps_its_adapter(finished_run: Path, tmp_path: Path, tiny_model: Path):
    run = shutil.copytree(finished_run, tmp_path / "run")
    for checkpoint in run.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)  # what a user does to free the disk once the adapter is saved
    weights = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    metrics = (run / "metrics.jsonl").read_text(encoding="utf-8")
    for resume in ([], ["--resume"]):
        result = medjp("train", "--config", run / "train_config.yaml", "--out", run, *resume)
        assert f"TrainConfig.out: {run} already holds a trained adapter" in one_line(result)
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == weights
    assert (run / "metrics.jsonl").read_text(encoding="utf-8") == metrics


@pytest.mark.slow
def test_a_run_resumes_from_another_working_directory(tmp_path: Path, tiny_model: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    """A batch job resumes with the paths spelt from its own directory: same data, base and folder, same run."""
    from medjp_agent.training.demo import single_thread
    from medjp_agent.training.trainer import train

    (tmp_path / "ward").mkdir()
    shutil.copy(MEMO, tmp_path / "ward" / "memo.jsonl")
    monkeypatch.chdir(tmp_path / "ward")
    cfg = TrainConfig(data="memo.jsonl", format="alpaca-labelled-in-header", validation_fraction=0.0, eval_data=(),
                      out="run", model=os.path.relpath(tiny_model), compute_dtype="float32", batch_size=4,
                      grad_accum=1, max_steps=1, save_steps=1, gradient_checkpointing=False)
    with single_thread():
        train(cfg)
        monkeypatch.chdir(tmp_path)
        resumed = train(cfg.replace(data="ward/memo.jsonl", out="ward/run/", model=os.path.relpath(tiny_model),
                                    max_steps=2), resume=True)
    assert resumed.resumed_from == str(Path("ward/run/checkpoint-1")) and resumed.steps == 2
    # A run started before local bases were saved absolute holds the path as typed: resumed where it ran, it matches.
    saved = tmp_path / "ward" / "run" / "train_config.yaml"
    saved.write_text(saved.read_text(encoding="utf-8").replace(str(tiny_model), os.path.relpath(tiny_model,
                                                                                              tmp_path / "ward")),
                     encoding="utf-8")
    assert str(tiny_model) not in saved.read_text(encoding="utf-8")
    monkeypatch.chdir(tmp_path / "ward")
    with single_thread():
        again = train(cfg.replace(max_steps=3), resume=True)
    assert again.resumed_from == str(Path("run/checkpoint-2")) and again.steps == 3
    # Resumed twice after finishing: the log reads as one run of 3 steps, its one closing summary last.
    from medjp_agent.training.progress import SUMMARY_KEY, read_metrics

    records = read_metrics(tmp_path / "ward" / "run" / "metrics.jsonl")
    assert [i for i, r in enumerate(records) if SUMMARY_KEY in r] == [len(records) - 1]
    assert records[-1]["step"] == 3 and [r["step"] for r in records] == sorted(r["step"] for r in records)


@pytest.mark.slow
def test_merging_into_a_base_of_other_shapes_says_so_in_one_line(finished_run: Path, tmp_path: Path):
    from medjp_agent.lm.tiny import TinyConfig, build_tiny_model

    other = build_tiny_model(tmp_path / "other", TinyConfig(layers=2, hidden=128, intermediate=352))
    result = medjp("train", "merge", finished_run / "adapter", "--out", tmp_path / "merged", "--base", other,
                   "--dtype", "float32")
    text = one_line(result)
    assert f"does not fit the base model {other}, whose layers have other shapes" in text
    assert text.count("size mismatch") == 1 and not (tmp_path / "merged").exists()


@pytest.mark.slow
def test_evaluating_with_an_adapter_of_another_base_says_so_in_one_line(finished_run: Path, tmp_path: Path):
    from medjp_agent.lm.tiny import TinyConfig, build_tiny_model

    other = build_tiny_model(tmp_path / "other", TinyConfig(layers=2, hidden=128, intermediate=352))
    result = medjp("eval", "--model", other, "--adapter", f"memo={finished_run / 'adapter'}", "--limit", "1",
                   "--out", tmp_path / "eval")
    text = one_line(result)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"does not fit the base model {other}, whose layers have other shapes" in text
    assert text.count("size mismatch") == 1


def test_a_resume_drops_the_torn_line_a_kill_leaves_in_the_metrics(tmp_path: Path):
    from medjp_agent.training.progress import MetricsLog, read_metrics

    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 3, "loss": 1.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo', encoding="utf-8")
    assert read_metrics(path) == rows  # a reader skips the torn line; a resume must not append after it
    MetricsLog(path).keep_until(2)
    assert path.read_text(encoding="utf-8") == "".join(json.dumps(r) + "\n" for r in rows[:2])


def test_a_finished_run_resumed_to_train_longer_keeps_one_closing_summary(tmp_path: Path):
    from medjp_agent.training.progress import MetricsLog

    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "train_runtime": 3.1, "train_loss": 1.7}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    MetricsLog(path).keep_until(2)  # the run resumes from its last checkpoint, step 2, and will log its own summary
    assert path.read_text(encoding="utf-8") == "".join(json.dumps(r) + "\n" for r in rows[:2])
