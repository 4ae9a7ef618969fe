"""Real QLoRA on the tiny random Llama loaded in 4-bit NF4: the loss falls, the adapter is saved with its provenance,
changes the backend's answers, merges exactly, and an interrupted run resumes to the same losses."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import dspy
import pytest
from medjp_agent.training.config import TrainConfig, TrainConfigError

pytestmark = pytest.mark.slow

MEMO = Path(__file__).with_name("test_train_memo.jsonl")
FORMAT = "alpaca-labelled-in-header"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Other suites share this 2-core box, where two OpenMP threads run the tiny model 5-30x slower."""
    from medjp_agent.training.demo import single_thread

    with single_thread():
        yield


def memo_config(out: Path, **changes) -> TrainConfig:
    """Four short questions, learnt by heart in a few steps of the default QLoRA recipe (float32 compute: CPU)."""
    base = TrainConfig(data=str(MEMO), format=FORMAT, validation_fraction=0.0, eval_data=(), out=str(out),
                       compute_dtype="float32", learning_rate=5e-3, batch_size=4, grad_accum=1, max_steps=10,
                       warmup_ratio=0.0, logging_steps=1, save_steps=5)
    return base.replace(**changes)


class Inspect:
    """Records what the trainer really runs: the model's layer types and the optimizer."""

    def __init__(self):
        self.seen: dict[str, str] = {}

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.seen["layers"] = " ".join(sorted({type(m).__name__ for m in model.modules()}))
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the real optimizer
        self.seen["optimizer"] = f"{type(inner).__module__}.{type(inner).__name__}"
        self.seen["bits"] = str(inner.args.optim_bits) if hasattr(inner, "args") else ""

    def __getattr__(self, name):  # every other TrainerCallback event is a no-op
        return lambda *args, **kwargs: None


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path):
    from medjp_agent.training.trainer import train

    inspect = Inspect()
    cfg = memo_config(tmp_path_factory.mktemp("memo"), model=str(tiny_model))
    return cfg, train(cfg, callbacks=[inspect]), inspect.seen


def test_qlora_on_a_4bit_base_memorises(trained):
    _, manifest, seen = trained
    assert "Linear4bit" in seen["layers"] and "lora" in seen["layers"].lower()
    assert seen["optimizer"].startswith("bitsandbytes.") and seen["bits"] == "8"  # paged_adamw_8bit (CPU: unpaged)
    assert manifest.quantized and manifest.steps == 10
    assert manifest.first_loss > 5 and manifest.final_loss < 0.1 * manifest.first_loss


def test_adapter_is_saved_with_config_fingerprint_and_format(trained):
    from medjp_agent.signatures import resolve_format
    from medjp_agent.training.data import build_training_data, load_training_questions
    from medjp_agent.training.trainer import TrainManifest

    cfg, manifest, _ = trained
    adapter = Path(manifest.adapter)
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "tokenizer.json").is_file()
    saved = TrainConfig.from_yaml(adapter / "train_config.yaml")
    assert saved.replace(model=cfg.model, format=cfg.format) == cfg
    assert saved.format == resolve_format(FORMAT).to_dict()
    assert resolve_format(str(adapter / "format.yaml")) == resolve_format(FORMAT)
    expected = build_training_data(cfg, load_training_questions(cfg)).fingerprint
    assert TrainManifest.from_json(adapter / "train_manifest.json").data["fingerprint"] == expected


def test_adapter_changes_the_backends_answers(trained, tiny_model: Path, bnb_cpu_path: str):
    from medjp_agent.signatures import MedicalQA

    from medjp_agent.data import load_medqa
    from medjp_agent.lm.hf import HFLM
    from medjp_agent.lm.options import LMOptions

    _, manifest, _ = trained
    lm = HFLM.from_options(LMOptions(model=str(tiny_model), adapters=(manifest.adapter,), load_in_4bit=True,
                                     dtype="float32", max_new_tokens=24, cache=False))
    qa = MedicalQA(TrainConfig(format=FORMAT).prompt_format().replace(shots=0))
    questions = load_medqa(MEMO).questions
    try:
        def answers(adapter: str | None) -> list[str]:
            lm.set_adapter(adapter)
            with dspy.context(lm=lm):
                return [qa(question=q.text, choices=list(q.choices)).answer for q in questions]

        with_adapter, base = answers("adapter"), answers(None)
    finally:
        lm.close()
    assert with_adapter == [",".join(q.answers) for q in questions]  # learnt answers, parsed from the exam format
    assert base != with_adapter


def test_merged_model_equals_base_plus_adapter(trained, tiny_model: Path, tmp_path: Path):
    import torch
    from medjp_agent.training.merge import merge_adapter
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, manifest, _ = trained
    merged_dir = merge_adapter(manifest.adapter, tmp_path / "merged", dtype="float32")
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "train_manifest.json").is_file()
    ids = AutoTokenizer.from_pretrained(merged_dir)("発熱の原因はどれか。感染", return_tensors="pt")

    def logits(model) -> torch.Tensor:
        with torch.no_grad():
            return model.eval()(**ids).logits

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    plain = logits(base)
    with_adapter = logits(PeftModel.from_pretrained(base, manifest.adapter))
    merged = logits(AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32))
    assert torch.allclose(merged, with_adapter, atol=1e-4)
    assert (merged - plain).abs().max() > 0.1


class Killed(Exception):
    pass


class KillAfterSave:
    """Dies right after checkpoint ``step`` is written, as a preempted job would."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def test_resume_after_a_kill_continues_exactly(tmp_path: Path, tiny_model: Path):
    from medjp_agent.training.progress import read_metrics
    from medjp_agent.training.trainer import train

    def run(out: Path, **kwargs):
        # Dropout on and the default cosine schedule with warm-up: RNG, optimizer and scheduler state must resume.
        cfg = memo_config(out, model=str(tiny_model), max_steps=4, save_steps=2, lora_dropout=0.1, warmup_ratio=0.25)
        return train(cfg, **kwargs)

    whole = run(tmp_path / "whole")
    with pytest.raises(Killed):
        run(tmp_path / "killed", callbacks=[KillAfterSave(2)])
    with pytest.raises(TrainConfigError, match="TrainConfig.out: .*--resume"):
        run(tmp_path / "killed")
    # What a kill in the middle of the next save leaves: the adapter written, the trainer state not yet.
    torn = tmp_path / "killed" / "checkpoint-3"
    torn.mkdir()
    shutil.copy(tmp_path / "killed" / "checkpoint-2" / "adapter_model.safetensors", torn)
    resumed = run(tmp_path / "killed", resume=True)

    assert resumed.resumed_from.endswith("checkpoint-2") and resumed.steps == 4
    assert (tmp_path / "killed" / "incomplete-checkpoint-3" / "adapter_model.safetensors").is_file()
    steps = lambda p: [(r["step"], r["loss"]) for r in read_metrics(p / "metrics.jsonl") if "loss" in r]
    got, want = steps(tmp_path / "killed"), steps(tmp_path / "whole")
    assert [s for s, _ in got] == [1, 2, 3, 4]
    assert [s for s, _ in got] == [s for s, _ in want]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=1e-4)
    assert whole.final_loss == pytest.approx(resumed.final_loss, rel=1e-4)


def test_resume_refuses_a_changed_config(tmp_path: Path, tiny_model: Path):
    from medjp_agent.training.trainer import train

    cfg = memo_config(tmp_path / "run", model=str(tiny_model), max_steps=2, save_steps=2)
    train(cfg)
    with pytest.raises(TrainConfigError, match="TrainConfig.lora_r: differs from the run being resumed"):
        train(cfg.replace(lora_r=4, max_steps=4), resume=True)


def test_bad_target_module_is_named(tmp_path: Path, tiny_model: Path):
    from medjp_agent.training.trainer import train

    with pytest.raises(TrainConfigError, match="TrainConfig.target_modules: 'qkv' matches no linear layer.*q_proj"):
        train(memo_config(tmp_path, model=str(tiny_model), target_modules=("q_proj", "qkv")))


def test_demo_adapter_is_cached(monkeypatch: pytest.MonkeyPatch, tiny_model: Path):
    from medjp_agent.training import demo, trainer

    quick = demo.DEMO_CONFIG.replace(max_steps=2, save_steps=2)
    adapter = demo.ensure_demo_adapter("plain-ja-direct", config=quick)
    assert (adapter / "adapter_model.safetensors").is_file()
    assert TrainConfig.from_yaml(adapter / "train_config.yaml").target == "answer"

    def no_training(*args, **kwargs):
        raise AssertionError("a cached demo adapter was trained again")

    monkeypatch.setattr(trainer, "train", no_training)
    started = time.monotonic()
    assert demo.ensure_demo_adapter("plain-ja-direct", config=quick) == adapter
    assert time.monotonic() - started < 2
    assert demo.demo_adapter_dir(demo.resolve_format("plain-ja-cot"), quick) != adapter
