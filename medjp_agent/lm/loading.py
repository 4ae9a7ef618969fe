"""Loading a local model as :class:`LMOptions` asks: quantization, dtype, placement, tokenizer, adapters.

Weights load from safetensors only (a pickle checkpoint can run code), and hub code runs only with
``trust_remote_code``. With no ``model`` the embedded tiny random Llama is built (once) and loaded through this
very path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .adapters import attach_adapters, parse_adapters
from .bnb_cpu import guard_inference
from .fingerprint import fingerprint
from .options import LMOptions


@dataclass
class LoadedModel:
    """A ready model: ``name`` for manifests, ``fingerprint`` for cache keys, adapter fingerprints by name."""

    model: Any
    tokenizer: Any
    name: str
    fingerprint: str
    adapters: dict[str, str]
    quantization: str


def quantization(opts: LMOptions) -> str:
    if opts.load_in_4bit and opts.load_in_8bit:
        raise ValueError("choose one of --load-in-4bit and --load-in-8bit")
    return "nf4" if opts.load_in_4bit else "int8" if opts.load_in_8bit else ""


def model_kwargs(opts: LMOptions) -> dict[str, Any]:
    """``from_pretrained`` arguments for the options (QLoRA's NF4 recipe for 4-bit)."""
    import torch
    from transformers import BitsAndBytesConfig

    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": opts.trust_remote_code}
    dtype = None if opts.dtype == "auto" else _torch_dtype(opts.dtype)
    quant = quantization(opts)
    if quant == "nf4":
        # bf16 compute unless --dtype says otherwise (float16 on GPUs without bf16, such as T4 and V100).
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype or torch.bfloat16)
    elif quant == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    # With quantization this is the dtype of the layers left unquantized (embeddings, norms, LM head).
    kwargs["dtype"] = dtype or "auto"
    if opts.device_map:
        kwargs["device_map"] = opts.device_map
    if opts.max_memory:
        # accelerate names GPUs by index and everything else by string ("cpu", "disk").
        kwargs["max_memory"] = {int(k) if k.isdigit() else k: v for k, v in opts.max_memory.items()}
    return kwargs


def _torch_dtype(name: str) -> Any:
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"--dtype {name!r} is not a torch dtype (auto, bfloat16, float16, float32)")
    return dtype


def load_tokenizer(source: str | Path, trust_remote_code: bool = False) -> Any:
    """The tokenizer, left padding (generation appends on the right), pad token falling back to EOS."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load(opts: LMOptions) -> LoadedModel:
    """Load ``opts.model`` (hub id or folder; default: the tiny model) with its tokenizer and adapters."""
    from transformers import AutoModelForCausalLM

    from medjp_agent.quiet import silence_library_noise, silence_loading_bars

    from .model_path import check_model_source
    from .tiny import ensure_tiny_model

    check_model_source(opts.model)  # a clear error (no such folder, an adapter folder) before transformers tries
    silence_library_noise()
    silence_loading_bars()
    source = opts.model or str(ensure_tiny_model())
    adapters = parse_adapters(opts.adapters)
    model = AutoModelForCausalLM.from_pretrained(source, **model_kwargs(opts))
    if quantization(opts) == "nf4":
        guard_inference(model)
    tokenizer = load_tokenizer(source, opts.trust_remote_code)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model, adapter_prints = attach_adapters(model, adapters)
    return LoadedModel(model=model.eval(), tokenizer=tokenizer, name=opts.model or Path(source).name,
                       fingerprint=fingerprint(source), adapters=adapter_prints, quantization=quantization(opts))
