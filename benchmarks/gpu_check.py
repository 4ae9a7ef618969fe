"""The Python steps of `gpu_check.sh`: build a random Llama and a LoRA adapter, force out-of-memory, merge the JSON.

    python benchmarks/gpu_check.py build WORK --size 7b --device cuda
    python benchmarks/gpu_check.py oom WORK --device cuda --json oom.json
    python benchmarks/gpu_check.py report --out gpu_check.json --parts build.json bench.json oom.json train.json

On a GPU the out-of-memory check caps torch's allocator (``torch.cuda.set_per_process_memory_fraction``) a little
above what the weights use, so a batch planned from the device's free memory really fails, and the backend must
split it until it fits. On CPU (``--device cpu``, the dry run) the same error is raised by
:class:`MemoryLimitedModel`, the real model wrapped to fail for batches above a size, as the tests do.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: Model sizes: the 7B Llama shape for the GPU, and a small one whose widths suit bitsandbytes' CPU kernel.
SIZES = {"7b": dict(layers=32, hidden=4096, intermediate=11008, heads=32),
         "dry": dict(layers=2, hidden=256, intermediate=704, heads=4)}
#: The out-of-memory check: this many prompts of about ``OOM_WORDS`` words each, room for ``OOM_ROOM_ROWS`` rows.
OOM_PROMPTS, OOM_WORDS, OOM_ROOM_ROWS, OOM_NEW = 32, 500, 4, 8


class MemoryLimitedModel:
    """The real model, except that generating raises ``torch.OutOfMemoryError`` (as CUDA does) for more than
    ``max_rows`` sequences, or for rows wider than ``max_width`` prompt tokens: out-of-memory on a CPU. Both ways of
    generating are covered: the backend's decoding loop (a forward pass on its KV cache, which knows the batch's rows
    and shared prefix) and ``generate``."""

    def __init__(self, model: Any, max_rows: int = 10**6, max_width: int = 10**6):
        self._model, self.max_rows, self.max_width = model, max_rows, max_width
        self.ooms: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from medjp_agent.lm.prefix import CACHE_ARG

        ids, cache = kwargs["input_ids"], kwargs.get(CACHE_ARG)
        layer = cache.layers[0] if cache is not None else None
        self._check(getattr(layer, "rows", ids.shape[0]), getattr(layer, "shared", 0) + ids.shape[1])
        return self._model(*args, **kwargs)

    def generate(self, input_ids: Any, **kwargs: Any) -> Any:
        self._check(input_ids.shape[0] * kwargs["generation_config"].num_return_sequences, input_ids.shape[1])
        return self._model.generate(input_ids=input_ids, **kwargs)

    def _check(self, rows: int, width: int) -> None:
        import torch

        if rows > self.max_rows or width > self.max_width:
            self.ooms.append(rows)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")


def build(work: Path, size: str, device: str) -> dict[str, Any]:
    """A random Llama of ``size`` (bf16 on a GPU, where it is built in seconds) and a LoRA adapter with random,
    non-zero weights, under ``work/model`` and ``work/adapter``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from medjp_agent.lm.tiny import TinyConfig, build_tiny_model

    start = time.perf_counter()
    dtype = torch.bfloat16 if device != "cpu" else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            build_tiny_model(work / "model", TinyConfig(**SIZES[size]))
    finally:
        torch.set_default_dtype(previous)
    built_s = time.perf_counter() - start
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=dtype, device_map=device, use_safetensors=True)
    config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(work / "adapter")
    params = sum(p.numel() for p in model.parameters())
    return {"size": size, "parameters": params, "build_s": round(built_s, 1),
            "adapter_s": round(time.perf_counter() - start - built_s, 1), "dtype": str(dtype)}


def oom_prompts() -> list[str]:
    return [f"問題{i}：" + "発熱と咳が続く。" * (OOM_WORDS // 8) for i in range(OOM_PROMPTS)]


def cap_memory(loaded: Any, width: int) -> Any:
    """Make a batch of every prompt run out of memory: on CUDA by capping the allocator at the weights plus room
    for a few rows, elsewhere by wrapping the model. Returns the (possibly wrapped) loaded model."""
    import torch

    from medjp_agent.lm.memory import ModelShape

    device = loaded.model.device
    if device.type != "cuda":
        return dataclasses.replace(loaded, model=MemoryLimitedModel(loaded.model, max_rows=OOM_ROOM_ROWS))
    room = ModelShape.of(loaded.model).peak_bytes(OOM_ROOM_ROWS, width, OOM_NEW)
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_allocated(device) + room) / total), device)
    return loaded


def oom_check(work: Path, device: str) -> dict[str, Any]:
    """A batch too big on purpose: the backend must split it, answer every prompt, and match unbatched answers."""
    from concurrent.futures import ThreadPoolExecutor

    from medjp_agent.lm.hf import HFLM
    from medjp_agent.lm.loading import load
    from medjp_agent.lm.options import LMOptions
    from medjp_agent.lm.prompts import raw_messages

    # float32 compute: answers then do not depend on how a batch was split, so they can be compared.
    opts = LMOptions(model=str(work / "model"), adapters=(f"lora={work / 'adapter'}",), load_in_4bit=True,
                     dtype="float32", device_map=device if device != "cpu" else None)
    loaded = load(opts)
    prompts = oom_prompts()
    width = max(len(loaded.tokenizer(p)["input_ids"]) for p in prompts)
    capped = cap_memory(loaded, width)
    lm = HFLM(capped, batch_size=OOM_PROMPTS, cache=None, max_tokens=OOM_NEW, min_new_tokens=OOM_NEW)
    messages = [raw_messages(p) for p in prompts]
    start = time.perf_counter()
    with ThreadPoolExecutor(OOM_PROMPTS) as pool:
        answers = list(pool.map(lambda m: _answer(lm, m), messages))
    split_s = time.perf_counter() - start
    alone = HFLM(capped, batch_size=1, cache=None, max_tokens=OOM_NEW, min_new_tokens=OOM_NEW)
    reference = [_answer(alone, m) for m in messages[:OOM_ROOM_ROWS]]
    lm.close()
    alone.close()
    return {"prompts": OOM_PROMPTS, "prompt_tokens": width, "batch_sizes": lm.stats.batch_sizes,
            "oom_splits": lm.memory.oom_splits, "not_run": sum(a is None for a in answers), "seconds": round(split_s, 2),
            "equal_to_unbatched": answers[:OOM_ROOM_ROWS] == reference,
            "ok": lm.memory.oom_splits > 0 and None not in answers and answers[:OOM_ROOM_ROWS] == reference}


def _answer(lm: Any, messages: list[dict[str, str]]) -> str | None:
    from medjp_agent.lm.errors import NotRun

    try:
        return lm.complete(messages=messages).texts[0]
    except NotRun:
        return None


def report(out: Path, parts: list[Path]) -> dict[str, Any]:
    """One JSON of every step's file (by file stem), with the machine it ran on."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    merged: dict[str, Any] = {"device": device, "torch": torch.__version__, "python": sys.version.split()[0],
                              "seconds": {}}
    for part in parts:
        found = json.loads(part.read_text(encoding="utf-8")) if part.is_file() else None
        name, timing = part.stem.removesuffix(".time"), part.stem.endswith(".time")
        if timing:
            merged["seconds"][name] = found and found["seconds"]
        else:
            merged[name] = found
    out.write_text(json.dumps(merged, indent=2), encoding="utf-8")
    return merged


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["build", "oom", "report"])
    p.add_argument("work", type=Path, nargs="?", help="folder of the model and adapter (build, oom)")
    p.add_argument("--parts", type=Path, nargs="+", default=[], help="JSON files to merge (report; NAME.time.json: "
                                                                   "the seconds step NAME took)")
    p.add_argument("--size", choices=sorted(SIZES), default="7b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", type=Path, help="write this step's result here")
    p.add_argument("--out", type=Path, help="the merged report (report)")
    args = p.parse_args()
    if args.step == "report":
        result = report(args.out, args.parts)
    else:
        result = build(args.work, args.size, args.device) if args.step == "build" else oom_check(args.work, args.device)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result if args.step != "report" else {"wrote": str(args.out)}, indent=2))


if __name__ == "__main__":
    main()
