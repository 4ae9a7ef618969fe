"""Errors that say what to do: --model checks, score mismatches, did-you-mean, resume advice, quiet libraries,
the tiny-model notice, --version."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medjp_agent.cli import app
from medjp_agent.errors import ConfigError
from medjp_agent.lm import model_path
from medjp_agent.lm.errors import RequestRejected, ServerUnavailable
from medjp_agent.lm.model_path import check_model_source
from medjp_agent.quiet import silence_library_noise
from medjp_agent.rerun import rerun_can_fix, resume_hint
from medjp_agent.suggest import did_you_mean

runner = CliRunner()


@pytest.fixture
def adapter_dir(tmp_path) -> Path:
    folder = tmp_path / "lora"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base"}))
    return folder


def test_missing_model_folder_is_named_not_a_traceback(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"--model ./models/swallow: no such folder .*hub id looks like org/name"):
        check_model_source("./models/swallow")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(ConfigError, match="no such folder"):  # org/name-shaped, but models/ is a local folder
        check_model_source("models/swallow")
    check_model_source("org/model-on-the-hub")  # a hub id is left to transformers


def test_adapter_folder_as_model_says_use_adapter(adapter_dir):
    with pytest.raises(ConfigError, match=rf"PEFT adapter .* --model org/base and this folder with --adapter "
                                          rf"{adapter_dir}"):
        check_model_source(str(adapter_dir))


def test_folder_without_config_says_so(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"no config.json in this folder \(it holds weights.safetensors\)"):
        check_model_source(str(tmp_path))
    with pytest.raises(ConfigError, match="is a file"):
        check_model_source(str(tmp_path / "weights.safetensors"))


def test_eval_with_an_adapter_as_model_stops_before_loading(adapter_dir, tmp_path):
    res = runner.invoke(app, ["eval", "--model", str(adapter_dir), "--limit", "1", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "this folder is a PEFT adapter" in res.output
    assert "re-run" not in res.output and not (tmp_path / "r" / "results.jsonl").exists()


def test_tiny_model_notice_is_said_once(capsys):
    model_path.tiny_model_notice.cache_clear()
    check_model_source(None)
    check_model_source(None)
    err = capsys.readouterr().err
    assert err.count("no --model given") == 1 and "chance level" in err


def test_resume_advice_only_where_rerunning_can_help(tmp_path):
    down = ServerUnavailable("connection refused")
    rejected = RequestRejected("400 prompt too long")
    assert rerun_can_fix(down) and rerun_can_fix(TimeoutError()) and rerun_can_fix(RuntimeError("CUDA out of memory"))
    assert not rerun_can_fix(rejected) and not rerun_can_fix(OSError("Should have a model_type key"))
    try:
        raise RuntimeError("wrapped") from AttributeError("no attribute 'disable_adapter'")
    except RuntimeError as e:
        assert not rerun_can_fix(e)
    assert resume_hint(down, 3, 10, tmp_path).endswith("re-run the same command to resume.")
    assert "re-run the same command" not in resume_hint(rejected, 3, 10, tmp_path)
    assert "fix the cause above" in resume_hint(rejected, 3, 10, tmp_path)


def test_did_you_mean():
    assert did_you_mean("tpe", ["tpe", "random"]) == " (did you mean 'tpe'?)"
    assert did_you_mean("TPE", ["tpe", "random"]) == " (did you mean 'tpe'?)"
    assert did_you_mean("zzz", ["tpe", "random"]) == ""


def test_mistyped_format_suggests_the_name(tmp_path):
    res = runner.invoke(app, ["eval", "--format", "plain-ja-cott", "--limit", "1", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "did you mean 'plain-ja-cot'" in res.output


def test_score_without_matching_data_stops_naming_the_mismatch(tmp_path):
    preds = tmp_path / "preds"
    preds.mkdir()
    (preds / "116-A_gpt4.jsonl").write_text("".join(json.dumps({"problem_id": f"116A{i}", "prediction": "a"}) + "\n"
                                                    for i in range(1, 41)))
    res = runner.invoke(app, ["score", "--predictions", str(preds), "--out", str(tmp_path / "r")])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "40 of 40 predictions match no question of --data sample" in out
    assert "116A1" in out and "--data" in out and not (tmp_path / "r" / "summary.json").exists()


def test_missing_predictions_are_counted_as_missing(tmp_path):
    preds = tmp_path / "preds"
    preds.mkdir()
    (preds / "a_sys.jsonl").write_text(json.dumps({"problem_id": "SA1", "prediction": "b"}) + "\n")
    res = runner.invoke(app, ["score", "--predictions", str(preds), "--system", "sys"], env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    strict = next(line for line in res.output.splitlines() if line.startswith("│ strict"))
    assert strict.split("│")[4].strip() == "0" and strict.split("│")[5].strip() == "29"  # parse failures, missing


def test_library_noise_is_silenced_and_real_warnings_kept(caplog):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_library_noise()
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
        for _ in range(3):
            warnings.warn("Paged optimizers are not supported on CPU. Falling back.", UserWarning)
        warnings.warn("a real deprecation", FutureWarning)
    messages = [str(w.message) for w in caught]
    assert messages == ["Paged optimizers are not supported on CPU. Falling back.", "a real deprecation"]
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure", "x")
        logger.warning("something real")
    assert [r.getMessage() for r in caplog.records] == ["something real"]
    caplog.clear()
    gepa = logging.getLogger("dspy.teleprompt.gepa.gepa")
    with caplog.at_level(logging.INFO):
        gepa.info("Batched reflection failed (prompt too long); retrying per task.")
        gepa.info("Traceback (most recent call last):\n  File \"x.py\", line 1\nNotRun: prompt too long")
    assert [r.getMessage() for r in caplog.records] == [
        "Batched reflection failed (prompt too long); retrying per task."]


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.startswith("medjp-agent ")


def test_mistyped_sampler_and_optimizer_suggest_the_name(tmp_path):
    from medjp_agent.optimizers.dspy_optimizers import optimizer_spec

    res = runner.invoke(app, ["search", "--sampler", "tpf", "--limit", "4", "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "did you mean 'tpe'" in res.output
    with pytest.raises(ConfigError, match="did you mean 'mipro'"):
        optimizer_spec("mirpo")


@pytest.mark.parametrize("args, message", [
    (["search", "--seed", "-1"], "--seed must be in [0, 2**32), got -1"),
    (["search", "--heartbeat", "0"], "--heartbeat must be positive, got 0.0"),
    (["search", "--timeout", "-5"], "--timeout must be positive, got -5.0"),
    (["search", "--n-startup-trials", "-2"], "--n-startup-trials must not be negative, got -2"),
    (["search", "--n-startup-steps", "5"], "--n-startup-steps must be at least 14 (on fewer paired questions"),
    (["search", "--promote", "2"], "--promote must be in (0, 1], got 2.0"),  # checked without --screen too
    (["optimize", "--optimizer", "bootstrap", "--seed", str(2**32)], "--seed must be in [0, 2**32), got 4294967296"),
    (["optimize", "--optimizer", "bootstrap", "--steps", "0"], "--steps must be at least 1, got 0"),
    (["optimize", "--optimizer", "bootstrap", "--max-demos", "-1"], "--max-demos must not be negative, got -1"),
    (["optimize", "--optimizer", "bootstrap", "--auto", "huge"], "--auto must be light, medium or heavy, got 'huge'"),
    (["optimize", "--optimizer", "bootstrap", "--from-search", "s", "--split-seed", "3"],
     "--from-search takes the search's formats, split and split seed; leave out --split-seed"),
    (["report", "--seed", "-1", "a", "b"], "Invalid value for '--seed'"),
    (["report", "--n-boot", "1", "a", "b"], "Invalid value for '--n-boot'"),
    (["demo", "--n-trials", "0"], "Invalid value for '--n-trials'"),  # before the demo trains anything
    (["eval", "--max-memory", "cpu=lots"], "--max-memory cpu=lots: 'lots' is not a size (e.g. 70GiB, 500MB)"),
    (["eval", "--by", "foo"], "Invalid value for '--by': 'foo' is not one of year, section, category, qtype"),
    (["score", "--predictions", "p.jsonl", "--by", "foo"], "Invalid value for '--by'"),
])
def test_out_of_range_settings_stop_before_any_work(tmp_path, args, message):
    out = tmp_path / "run"
    res = runner.invoke(app, [*args, *(["--out", str(out)] if args[0] != "report" else [])])
    assert res.exit_code == 2 and message in " ".join(res.output.split())
    assert not out.exists() or not any(out.iterdir())


def test_settings_objects_check_their_ranges_from_python_too():
    from medjp_agent.optimizers import Budget, OptimizerSettings, SearchSettings
    from medjp_agent.optimizers.liveness import Liveness

    for make, message in [(lambda: Budget(timeout_s=float("nan")), "--timeout must be positive"),
                          (lambda: Budget(max_lm_calls=0), "--max-lm-calls must be at least 1"),
                          (lambda: Liveness(interval_s=-1), "--heartbeat must be positive"),
                          (lambda: Liveness(max_attempts=0), "max_attempts must be at least 1"),
                          (lambda: SearchSettings(seed=2**32), r"--seed must be in \[0, 2\*\*32\)"),
                          (lambda: SearchSettings(threads=0), "--threads must be at least 1"),
                          (lambda: OptimizerSettings(candidates=0), "--candidates must be at least 1")]:
        with pytest.raises(ConfigError, match=message):
            make()
    assert SearchSettings(seed=2**32 - 1).seed == 2**32 - 1 and Budget(n_trials=0).n_trials == 0


@pytest.mark.parametrize("args, message", [
    (["--section", "S-A", "--section", "Zz"], "no question in sample has --section 'Zz' (present: A, B, S-A, S-B)"),
    (["--qtype", "single", "--qtype", "singel"], "--qtype 'singel' (present: multi, numeric, single)"),
    (["--year", "2099", "--n-choices", "9"], "--year 2099 (present: 2025); --n-choices 9"),
])
def test_a_filter_value_no_question_has_is_named_even_beside_valid_ones(tmp_path, args, message):
    res = runner.invoke(app, ["eval", *args, "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and message in " ".join(res.output.split())


def test_column_mappings_are_asked_for_where_they_apply(tmp_path):
    table = tmp_path / "q.csv"
    table.write_text("question,a,b,answer\nq1,x,y,a\n", encoding="utf-8")
    for args, message in [(["--data", str(table)], "q.csv: a CSV file needs FIELD=COLUMN column mappings (fields: id,"),
                          (["--column", "text=question"], "sample: is the bundled exam, but column mappings need"),
                          (["--data", str(table), "--column", "text=question", "--column", "text=a"],
                           "--column 'text=a': text is already mapped to 'question'")]:
        res = runner.invoke(app, ["eval", *args, "--out", str(tmp_path / "run")])
        assert res.exit_code == 2 and message in " ".join(res.output.split()), (args, res.output)


def test_a_space_with_nothing_to_search_is_refused(tmp_path):
    (tmp_path / "s.yaml").write_text("axes: {shots: [1]}\n", encoding="utf-8")
    res = runner.invoke(app, ["search", "--space", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "no axis has two or more values" in " ".join(res.output.split())


def test_an_empty_question_file_says_so(tmp_path):
    (tmp_path / "q.jsonl").write_text("\n", encoding="utf-8")
    res = runner.invoke(app, ["eval", "--data", str(tmp_path / "q.jsonl"), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "q.jsonl: holds no questions" in " ".join(res.output.split())


def test_medjp_warnings_print_as_one_line_and_others_as_python_prints_them(capsys, monkeypatch):
    import warnings

    from medjp_agent.cli.options import show_own_warnings
    from medjp_agent.errors import MedjpWarning

    passed_on = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *rest, **kw: passed_on.append(str(message)))
    show_own_warnings()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("gepa: the reflection model could not answer 2 of its 2 calls (x)", MedjpWarning)
        warnings.warn("a library's own", UserWarning)
    assert capsys.readouterr().err == "warning: gepa: the reflection model could not answer 2 of its 2 calls (x)\n"
    assert passed_on == ["a library's own"]
