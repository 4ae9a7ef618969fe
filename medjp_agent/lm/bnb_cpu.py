"""Which of bitsandbytes' two CPU kernels each 4-bit layer runs, and keeping every layer on one that works.

bitsandbytes 0.50's ``Linear4bit.forward`` repacks a layer's weights for a fused AVX512-BF16 kernel the first time
the layer runs on CPU in eval mode with no gradient, if the layer's ``support_avx512bf16_for_cpu`` is set (at
construction: whether the host CPU has AVX512-BF16). Otherwise it runs the unfused kernel (dequantize, then
matmul). The fused path breaks in two ways, both only on hosts that have the instructions:

* the repacking (``functional._convert_weight_packed_for_cpu``) asserts ``out_features`` is a multiple of its
  ``block_n`` (32), and reshapes the block scales to one row per output, which needs ``in_features`` to be a
  multiple of the quantization block size (64): other widths crash at the layer's first evaluation;
* packed weights have no backward: after a validation pass has packed them, the training steps that follow
  silently lose the gradient through every base layer.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

#: The per-layer switch ``Linear4bit.forward`` reads.
FUSED_FLAG = "support_avx512bf16_for_cpu"
#: ``_convert_weight_packed_for_cpu``'s ``block_n``: the fused kernel's tile of output features.
BLOCK_N = 32


def host_has_avx512bf16() -> bool:
    """bitsandbytes' own test, the one that sets every new layer's :data:`FUSED_FLAG`."""
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


def quantized_layers(model: Any) -> list[tuple[str, Any]]:
    """The model's bitsandbytes 4-bit linear layers, by name."""
    from bitsandbytes.nn import Linear4bit

    return [(name, module) for name, module in model.named_modules() if isinstance(module, Linear4bit)]


def fused_kernel_fits(layer: Any) -> bool:
    """Whether the fused kernel's repacking accepts this layer's shape."""
    return layer.out_features % BLOCK_N == 0 and layer.in_features % _blocksize(layer) == 0


def _blocksize(layer: Any) -> int:
    return int(getattr(layer.weight.quant_state, "blocksize", None) or layer.weight.blocksize)


def _fused_on_cpu(layers: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [(name, m) for name, m in layers if getattr(m, FUSED_FLAG, False) and m.weight.device.type == "cpu"]


def guard_inference(model: Any, console: Console | None = None) -> int:
    """Turn the fused kernel off for the CPU layers whose shape it cannot take, with one warning saying how many
    and why; those layers then compute exactly what they compute on a host without AVX512-BF16. Returns the count."""
    layers = quantized_layers(model)
    misfits = [(name, m) for name, m in _fused_on_cpu(layers) if not fused_kernel_fits(m)]
    for _, layer in misfits:
        setattr(layer, FUSED_FLAG, False)
    if misfits:
        name, first = misfits[0]
        (console or Console(stderr=True)).print(
            f"[yellow]warning:[/] {len(misfits)} of {len(layers)} 4-bit layers use bitsandbytes' unfused CPU kernel: "
            f"its fused AVX512-BF16 kernel needs out_features divisible by {BLOCK_N} and in_features by "
            f"{_blocksize(first)}, and theirs are not (e.g. {name}: {first.in_features} → {first.out_features})",
            highlight=False)
    return len(misfits)


def guard_training(model: Any) -> int:
    """Turn the fused kernel off for every CPU layer of a model being trained: its packed weights have no backward,
    so a validation pass would silently cut the gradients of the steps after it. Returns the count."""
    fused = _fused_on_cpu(quantized_layers(model))
    for _, layer in fused:
        setattr(layer, FUSED_FLAG, False)
    return len(fused)


def host_path() -> str:
    """The 4-bit path this host takes, in words (``medjp env``)."""
    import torch

    if torch.cuda.is_available():
        return "CUDA kernels (layers on the GPU)"
    if host_has_avx512bf16():
        return (f"CPU, fused AVX512-BF16 kernel for inference (layers whose out_features divide by {BLOCK_N} and "
                "in_features by the block size 64; unfused for other layers and in training)")
    return "CPU, unfused kernel (dequantize, then matmul): no AVX512-BF16"
