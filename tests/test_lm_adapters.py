"""PEFT LoRA adapters on the tiny model: several loaded on one base, switched by name, kept apart in the cache."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from medjp_agent.lm.adapters import AdapterSpec, parse_adapters
from medjp_agent.lm.hf import HFLM
from medjp_agent.lm.options import RAW_PROMPT, LMOptions

PROMPT = [{"role": "user", "content": "問題：急性虫垂炎の所見はどれか。\n答え：", "name": RAW_PROMPT}]


def make_adapters(base: Path, root: Path, seeds: list[int]) -> list[Path]:
    """LoRA adapters with random, non-zero B matrices (PEFT's default B is zero: a no-op adapter)."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    paths = []
    for seed in seeds:
        torch.manual_seed(seed)
        get_peft_model(copy.deepcopy(model), config).save_pretrained(root / f"lora{seed}")
        paths.append(root / f"lora{seed}")
    return paths


@pytest.fixture(scope="module")
def lm(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> HFLM:
    root = tmp_path_factory.mktemp("adapters")
    one, two = make_adapters(tiny_model, root, [1, 2])
    lm = HFLM.from_options(LMOptions(model=str(tiny_model), adapters=(str(one), f"second={two}"), max_new_tokens=10,
                                     cache_dir=root / "generations"))
    yield lm
    lm.close()


def test_adapters_are_named_and_the_first_is_active(lm: HFLM):
    assert lm.adapters == ["lora1", "second"]
    assert lm.describe() == {"model": lm.model, "adapter": "lora1", "backend": "hf"}
    from peft import PeftModel

    assert isinstance(lm.loaded.model, PeftModel)


def test_switching_adapters_changes_outputs_without_reloading(lm: HFLM):
    base_model = lm.loaded.model.base_model
    outputs = {}
    for name in ("lora1", "second", None, "lora1"):
        lm.set_adapter(name)
        outputs.setdefault(name, []).append(lm.complete(messages=PROMPT).texts)
    lm.set_adapter("lora1")
    assert len({outputs["lora1"][0], outputs["second"][0], outputs[None][0]}) == 3
    assert outputs["lora1"][0] == outputs["lora1"][1]
    assert lm.loaded.model.base_model is base_model


def test_each_adapter_has_its_own_cache_entries(lm: HFLM):
    prompt = [{"role": "user", "content": "キャッシュ：" + PROMPT[0]["content"], "name": RAW_PROMPT}]
    generated, fingerprints = [], set()
    for name in ("lora1", "second", "lora1", "second"):
        lm.set_adapter(name)
        fingerprints.add(lm.fingerprint)
        calls = lm.generate_calls
        lm.complete(messages=prompt)
        generated.append(lm.generate_calls - calls)
    lm.set_adapter("lora1")
    assert generated == [1, 1, 0, 0]
    assert len(fingerprints) == 2


def test_copies_with_different_adapters_run_concurrently(lm: HFLM):
    lm.set_adapter("lora1")
    alone = {}
    for name in ("lora1", "second"):
        lm.set_adapter(name)
        alone[name] = lm.complete(messages=PROMPT, cache=False).texts
    lm.set_adapter("lora1")
    copies = {name: lm.copy() for name in ("lora1", "second")}
    copies["second"].set_adapter("second")
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda name: (name, copies[name].complete(messages=PROMPT, cache=False).texts),
                                 ["lora1", "second"] * 4))
    assert all(texts == alone[name] for name, texts in together)
    assert lm.adapter == "lora1"


def test_adapter_specs_and_errors(lm: HFLM):
    assert AdapterSpec.parse("/x/medical-lora/") == AdapterSpec("medical-lora", "/x/medical-lora/")
    assert AdapterSpec.parse("med=org/lora") == AdapterSpec("med", "org/lora")
    with pytest.raises(ValueError, match="named 'lora'"):
        parse_adapters(["/a/lora", "/b/lora"])
    with pytest.raises(ValueError, match="no adapter named 'missing'"):
        lm.set_adapter("missing")
