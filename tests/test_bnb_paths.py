"""bitsandbytes' two 4-bit CPU kernels (see medjp_agent.lm.bnb_cpu): the tiny model fits the fused one, models with
odd layer widths fall back to the unfused one per layer and evaluate on both paths, and training keeps its
gradients after a validation pass."""

from __future__ import annotations

import json
from dataclasses import asdict, fields, replace
from pathlib import Path

import pytest

from medjp_agent.lm.tiny import TinyConfig, build_tiny_model

#: Two layers of q/k/v/o 64 → 64 (the fused kernel takes them) and gate/up 64 → 100, down 100 → 64 (it cannot).
MIXED = TinyConfig(layers=2, hidden=64, intermediate=100, heads=4, vocab=1000)
#: No layer the fused kernel can take: hidden 48 is not a multiple of 32, intermediate 100 not of 64.
ALL_ODD = replace(MIXED, hidden=48)
FORMAT = "paper-instruction-in-header"


def test_tiny_model_layer_widths_fit_the_fused_kernel(tiny_model: Path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    assert json.loads((tiny_model / "medjp_tiny.json").read_text(encoding="utf-8")) == asdict(TinyConfig())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_model))
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear) == 7 * TinyConfig().layers + 1
    assert all(m.out_features % 64 == 0 and m.in_features % 64 == 0 for m in linear)


def test_tiny_model_cache_is_keyed_by_every_setting():
    default = TinyConfig()
    assert default.intermediate == 704
    for f in fields(TinyConfig):
        changed = replace(default, **{f.name: getattr(default, f.name) * 2 + 1})
        assert changed.tag != default.tag, f.name
    assert replace(default, intermediate=688).tag != default.tag  # the model cached before 704 is not reused


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("odd_models")
    return {"mixed": build_tiny_model(root / "mixed", MIXED), "all_odd": build_tiny_model(root / "all_odd", ALL_ODD)}


def evaluate_4bit(model: Path, out: Path) -> tuple[list[str], object]:
    """``medjp eval``'s code on four bundled questions with the model in 4-bit: the completions, and the LM."""
    from medjp_agent.data import SAMPLE_DIR, load_igakuqa
    from medjp_agent.lm.hf import HFLM
    from medjp_agent.lm.options import LMOptions
    from medjp_agent.results import read_run
    from medjp_agent.runs import evaluate_run

    lm = HFLM.from_options(LMOptions(model=str(model), load_in_4bit=True, max_new_tokens=8, cache=False))
    try:
        _, run_dir = evaluate_run(list(load_igakuqa(SAMPLE_DIR))[:4], FORMAT, lm, out=out, threads=4)
    finally:
        lm.close()
    return [r.completion for r in sorted(read_run(run_dir).results, key=lambda r: r.id)], lm


@pytest.mark.slow
def test_odd_width_4bit_model_evaluates_on_both_cpu_paths(odd_models, bnb_cpu_path: str, tmp_path: Path, capsys):
    from medjp_agent.lm.bnb_cpu import FUSED_FLAG, quantized_layers

    completions, lm = evaluate_4bit(odd_models["mixed"], tmp_path / "run")
    warning = capsys.readouterr().err
    assert len(completions) == 4 and lm.stats.generate_calls > 0
    layers = dict(quantized_layers(lm.loaded.model))
    packed = {name for name, m in layers.items() if getattr(m.weight.quant_state, "packing_format_for_cpu", False)}
    odd = {name for name in layers if name.endswith(("gate_proj", "up_proj", "down_proj"))}
    if bnb_cpu_path == "fused":
        assert "6 of 14 4-bit layers use bitsandbytes' unfused CPU kernel" in warning
        assert "out_features divisible by 32 and in_features by 64" in warning
        assert packed == set(layers) - odd and not any(getattr(layers[name], FUSED_FLAG) for name in odd)
    else:
        assert "unfused CPU kernel" not in warning and not packed


@pytest.mark.slow
def test_odd_width_layers_answer_as_on_a_host_without_the_fused_kernel(odd_models, tmp_path: Path, capsys,
                                                                     monkeypatch: pytest.MonkeyPatch):
    import bitsandbytes.nn.modules as bnb_modules

    from medjp_agent.lm.bnb_cpu import host_has_avx512bf16

    if not host_has_avx512bf16():
        pytest.skip("this CPU lacks AVX512-BF16: every layer runs the unfused kernel already")
    guarded, _ = evaluate_4bit(odd_models["all_odd"], tmp_path / "guarded")
    assert capsys.readouterr().err.count("14 of 14 4-bit layers use bitsandbytes' unfused CPU kernel") == 1
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: False)
    unfused, _ = evaluate_4bit(odd_models["all_odd"], tmp_path / "unfused")
    assert guarded == unfused and any(guarded)


@pytest.mark.slow
def test_training_gradients_survive_a_validation_pass(tiny_model: Path):
    """On an AVX512-BF16 host an eval pass would repack the base layers for the fused kernel, whose output has no
    backward: the steps after it would lose the gradient through every base layer."""
    import torch
    from peft import get_peft_model

    from medjp_agent.lm.bnb_cpu import FUSED_FLAG, quantized_layers
    from medjp_agent.training.config import TrainConfig
    from medjp_agent.training.trainer import load_base_model, lora_config

    cfg = TrainConfig(compute_dtype="float32", lora_dropout=0.0)
    model = get_peft_model(load_base_model(cfg, str(tiny_model)), lora_config(cfg))
    assert not any(getattr(m, FUSED_FLAG) for _, m in quantized_layers(model))
    ids = torch.arange(10, 42).unsqueeze(0)

    def gradients() -> list:
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.requires_grad]

    before = gradients()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after = gradients()
    assert len(before) == 2 * 7 * TinyConfig().layers
    assert all(torch.equal(a, b) for a, b in zip(before, after))
