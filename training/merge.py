"""Merge a LoRA adapter into its base model in full precision, for servers that take plain weights (vLLM).

The adapter was trained against a 4-bit base, but it is merged into the *unquantized* base: merging into NF4
weights would re-quantize and lose the update's precision, and vLLM loads full-precision checkpoints anyway.
Merging runs in one ordinary process; it is unsupported under FSDP, so a multi-GPU run merges afterwards. Base and
adapter load from safetensors only (see weights.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

#: Files saved with a medjp adapter that are copied to the merged model, so it keeps its provenance.
PROVENANCE = ("train_config.yaml", "format.yaml", "train_manifest.json")


def adapter_base(adapter: Path) -> str:
    """The base model an adapter was trained on (``base_model_name_or_path`` in its ``adapter_config.json``)."""
    config = adapter / "adapter_config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config}: names no base model; pass one with --base")
    return str(base)


def merge_adapter(adapter: str | Path, out: str | Path, *, base: str | None = None, dtype: str = "bfloat16",
                  trust_remote_code: bool = False) -> Path:
    """Merge ``adapter`` into ``base`` (default: the base it was trained on) and save it as safetensors at ``out``.

    Args:
        adapter: A PEFT LoRA adapter folder (``medjp train`` writes ``RUN/adapter``).
        out: The merged model's folder: weights, config, tokenizer, and the adapter's training provenance.
        base: Hub id or folder of the base model, when it moved since training.
        dtype: Precision of the merged weights: bfloat16, float16 or float32.
        trust_remote_code: Allow model code from the hub.

    Returns:
        ``out``.

    Raises:
        PickleWeightsError: the base or the adapter folder holds pickle weights only.
        ValueError: an unknown ``dtype``, or a base whose layers have other shapes than the adapter's.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from medjp_agent.lm.adapters import other_shapes
    from medjp_agent.lm.loading import load_tokenizer

    from .fsdp import under_fsdp
    from .weights import refuse_pickle_weights

    if under_fsdp():
        raise RuntimeError("merging is unsupported under FSDP: run `medjp train merge` in a single process")
    adapter, out = Path(adapter), Path(out)
    source = base or adapter_base(adapter)
    refuse_pickle_weights(adapter, "adapter")
    refuse_pickle_weights(source, "base model")
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
        raise ValueError(f"dtype {dtype!r} is not one of bfloat16, float16, float32")
    model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                                                      use_safetensors=True)
    try:
        merged = PeftModel.from_pretrained(model, str(adapter), use_safetensors=True).merge_and_unload()
    except RuntimeError as e:
        if (refused := other_shapes(e, str(adapter), source)) is None:
            raise
        raise refused from None
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out), safe_serialization=True)
    has_tokenizer = (adapter / "tokenizer_config.json").is_file()
    load_tokenizer(adapter if has_tokenizer else source, trust_remote_code).save_pretrained(str(out))
    for name in PROVENANCE:
        if (adapter / name).is_file():
            shutil.copy2(adapter / name, out / name)
    return out
