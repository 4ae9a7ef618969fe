"""TrainConfig validation and YAML, the contamination check, and the FSDP-QLoRA launcher config (no torch)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from medjp_agent.training.config import TRAIN_SAMPLE, TrainConfig, TrainConfigError
from medjp_agent.training.contamination import find_overlaps
from medjp_agent.training.data import load_training_questions
from medjp_agent.training.fsdp import FSDP_QLORA_KEYS, fsdp_ready, under_fsdp, write_fsdp_config

from medjp_agent.data import Question, load_dataset, load_medqa


def test_every_field_is_documented_and_the_defaults_are_qlora():
    for f in dataclasses.fields(TrainConfig):
        assert len(f.metadata.get("help", "")) > 10, f.name
        assert f.metadata["section"] in ("Data", "Model", "LoRA", "Optimisation", "Output")
    cfg = TrainConfig()
    assert (cfg.quantize, cfg.compute_dtype, cfg.optim, cfg.lr_scheduler, cfg.target_modules) == (
        True, "bfloat16", "paged_adamw_8bit", "cosine", ("all-linear",))


def test_yaml_round_trip(tmp_path: Path):
    cfg = TrainConfig(format={"template": "plain", "reasoning": "cot"}, target_modules=("q_proj", "v_proj"),
                      columns={"text": "q"}, learning_rate=1e-4)
    assert TrainConfig.from_yaml(cfg.to_yaml(tmp_path / "c.yaml")) == cfg
    assert cfg.prompt_format().template == "plain"


def test_yaml_scientific_notation_is_a_float(tmp_path: Path):
    (tmp_path / "c.yaml").write_text("learning_rate: 2e-4\ntarget_modules: [q_proj]\nshots: -1\n")
    cfg = TrainConfig.from_yaml(tmp_path / "c.yaml")
    assert cfg.learning_rate == 2e-4 and cfg.target_modules == ("q_proj",) and cfg.shots == (-1,)


@pytest.mark.parametrize("values, message", [
    ({"lora_rank": 8}, r"c.yaml: TrainConfig.lora_rank: unknown field \(did you mean 'lora_r' or "),
    ({"lora_r": 0}, "c.yaml: TrainConfig.lora_r: must be at least 1, got 0"),
    ({"lora_dropout": 1.5}, r"TrainConfig.lora_dropout: must be in \[0, 1\)"),
    ({"target": "essay"}, "TrainConfig.target: 'essay' is not one of explanation, answer"),
    ({"format": "no-such-format"}, "TrainConfig.format: unknown format 'no-such-format'"),
    ({"format": {"template": "tabular"}}, "TrainConfig.format: .*template"),
    ({"quantize": "yes"}, "TrainConfig.quantize: expected true or false"),
    ({"max_steps": 0}, "TrainConfig.max_steps: must be -1"),
    ({"target_modules": []}, "TrainConfig.target_modules: must name at least one module"),
    ({"target_modules": ["all-linear", "lm_head"]}, "TrainConfig.target_modules: 'all-linear' .* stands alone"),
    ({"batch_size": 2.5}, "TrainConfig.batch_size: expected an integer"),
    ({"shots": [0, 9]}, r"TrainConfig.shots: must hold -1 \(the format's\) or 0..8"),
    ({"epochs": float("inf")}, "TrainConfig.epochs: expected a finite number, got inf"),
    ({"learning_rate": float("nan")}, "TrainConfig.learning_rate: expected a finite number, got nan"),
    ({"weight_decay": -0.1}, "TrainConfig.weight_decay: must not be negative, got -0.1"),
    ({"max_grad_norm": -1.0}, r"TrainConfig.max_grad_norm: must not be negative \(0: no clipping\)"),
    ({"seed": -3}, r"TrainConfig.seed: must be in \[0, 2\*\*32\), got -3"),
    ({"seed": 2**32}, r"TrainConfig.seed: must be in \[0, 2\*\*32\), got 4294967296"),
])
def test_bad_configs_name_the_file_and_field(tmp_path: Path, values: dict, message: str):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(values))
    with pytest.raises(TrainConfigError, match=message):
        TrainConfig.from_yaml(tmp_path / "c.yaml")


def test_missing_data_file_and_exam_data_are_refused(tmp_path: Path):
    with pytest.raises(TrainConfigError, match=f"TrainConfig.data: {tmp_path / 'nope.jsonl'}: no such file"):
        load_training_questions(TrainConfig(data=str(tmp_path / "nope.jsonl")))
    for exam in ("sample", str(tmp_path)):
        with pytest.raises(TrainConfigError, match="TrainConfig.data: .*IgakuQA layout: evaluation data"):
            load_training_questions(TrainConfig(data=exam))
    assert len(load_training_questions(TrainConfig(data=TRAIN_SAMPLE))) == 60


def test_contamination_flags_a_reworded_copy_and_nothing_else():
    exam = load_dataset("sample").questions
    target = exam[3]
    reworded = target.text.replace("。", "、", 1) + "最も適切なのはどれか。"
    copy = Question(id="copy", year=0, section="t", text=reworded, choices=target.choices, answers=target.answers)
    exact = Question(id="exact", year=0, section="t", text=f" {exam[7].text}\n", choices=exam[7].choices, answers=())
    report = find_overlaps([copy, exact, *load_medqa(Path(__file__).with_name("test_train_memo.jsonl"))], exam,
                           eval_source="sample")
    assert {(o.train_id, o.eval_id, o.exact) for o in report.overlaps} == {("copy", target.id, False),
                                                                          ("exact", exam[7].id, True)}
    assert "2 of 30 questions of sample overlap" in report.message()


def test_bundled_training_set_does_not_overlap_the_bundled_exam():
    train = load_training_questions(TrainConfig()).questions
    assert find_overlaps(train, load_dataset("sample").questions).clean


def test_fsdp_config_has_the_qlora_keys(tmp_path: Path):
    path = write_fsdp_config(tmp_path / "fsdp.yaml", num_processes=8, offload_params=False)
    written = yaml.safe_load(path.read_text())
    assert written["distributed_type"] == "FSDP" and written["num_processes"] == 8
    fsdp = written["fsdp_config"]
    assert {k: fsdp[k] for k in FSDP_QLORA_KEYS if k != "fsdp_offload_params"} == {
        k: v for k, v in FSDP_QLORA_KEYS.items() if k != "fsdp_offload_params"}
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True and fsdp["fsdp_use_orig_params"] is False
    assert fsdp["fsdp_sync_module_states"] is True and fsdp["fsdp_offload_params"] is False
    assert (fsdp["fsdp_auto_wrap_policy"], fsdp["fsdp_state_dict_type"]) == ("TRANSFORMER_BASED_WRAP",
                                                                             "SHARDED_STATE_DICT")


def test_training_adapts_itself_under_fsdp(monkeypatch: pytest.MonkeyPatch):
    assert not under_fsdp()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert under_fsdp()
    cfg, notes = fsdp_ready(TrainConfig())
    assert (cfg.quant_storage, cfg.optim) == ("bfloat16", "adamw_torch") and len(notes) == 2
    assert fsdp_ready(cfg) == (cfg, [])
