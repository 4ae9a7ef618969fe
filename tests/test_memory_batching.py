"""Batches sized by the KV budget, and out-of-memory survived by halving, simulated on CPU: a wrapped model
(:class:`gpu_check.MemoryLimitedModel`) raises CUDA's out-of-memory error for batches it deems too big, and the
outputs must equal an unsplit run's."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from medjp_agent.lm.errors import NotRun
from medjp_agent.lm.hf import HFLM
from medjp_agent.lm.memory import MemoryPlanner, ModelShape, is_out_of_memory
from medjp_agent.lm.options import LMOptions
from test_lm_hf import ask_at_once as ask

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gpu_check import MemoryLimitedModel  # noqa: E402  (the dry run of the GPU check simulates out-of-memory too)

PROMPTS = ["問題：高血圧の治療で第一選択となる薬はどれか。", "答え：", "選択肢：\na. 肺炎\nb. 気胸\nc. 心不全", "解説：急性心筋梗塞では",
           "### 指示：\n以下は医学知識に関する多肢選択問題です。", "a"]


def ask_at_once(lm: HFLM, prompts: list[str], **kwargs) -> list[Any]:
    """All prompts at once (one batch); a failed request gives its exception in its place."""
    return ask(lm, prompts, errors=True, **kwargs)


@pytest.fixture(scope="module")
def loaded(tiny_model: Path):
    from medjp_agent.lm.loading import load

    return load(LMOptions(model=str(tiny_model)))


def limited(loaded: Any, **limits: int) -> Any:
    return dataclasses.replace(loaded, model=MemoryLimitedModel(loaded.model, **limits))


@pytest.mark.parametrize("prefix_sharing", [True, False], ids=["prefix", "plain"])
def test_out_of_memory_splits_the_batch_and_outputs_equal_an_unsplit_run(loaded, prefix_sharing: bool):
    prompts = [f"### 指示：\n以下は医学知識に関する多肢選択問題です。\n問題：{p}" for p in PROMPTS]
    unsplit = HFLM(loaded, cache=None, max_tokens=10, prefix_sharing=prefix_sharing)
    small = limited(loaded, max_rows=2)
    lm = HFLM(small, cache=None, max_tokens=10, prefix_sharing=prefix_sharing)
    try:
        want = ask_at_once(unsplit, prompts)
        assert unsplit.stats.batch_sizes == [6]
        assert ask_at_once(lm, prompts) == want
        assert small.model.ooms == [6, 3, 3] and lm.memory.oom_splits == 3
        assert sorted(lm.stats.batch_sizes) == [1, 1, 2, 2]
        # The size that worked is remembered: a later batch of similar length is cut at once, with no error.
        assert ask_at_once(lm, [p + "。" for p in prompts]) == ask_at_once(unsplit, [p + "。" for p in prompts])
        assert small.model.ooms == [6, 3, 3] and lm.stats.batch_sizes[4:] == [2, 2, 2]
    finally:
        unsplit.close()
        lm.close()


def test_a_sequence_that_alone_does_not_fit_is_not_run_and_the_others_are_answered(loaded):
    long = "### 指示：\n以下は医学知識に関する多肢選択問題です。" * 6
    width = len(loaded.tokenizer(long)["input_ids"])
    lm = HFLM(limited(loaded, max_width=width - 1), cache=None, max_tokens=6)
    plain = HFLM(loaded, cache=None, max_tokens=6)
    try:
        results = ask_at_once(lm, [*PROMPTS[:3], long])
        assert isinstance(results[3], NotRun) and "out of memory" in str(results[3])
        assert results[:3] == ask_at_once(plain, PROMPTS[:3])
    finally:
        lm.close()
        plain.close()


def test_other_errors_are_not_taken_for_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1.00 GB)"))
    assert is_out_of_memory(RuntimeError("XPU out of memory. Tried to allocate 20.00 MiB"))
    assert not is_out_of_memory(RuntimeError("size mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def fake_model(dtype: torch.dtype = torch.bfloat16, **config: int) -> Any:
    """A model object with a config and an embedding dtype, and no weights: sizes of models that do not fit here."""
    from transformers import LlamaConfig

    return SimpleNamespace(config=LlamaConfig(**config), device=torch.device("cuda", 0),
                           get_input_embeddings=lambda: SimpleNamespace(weight=torch.empty(0, dtype=dtype)))


#: A Llama-2-70B shape: 80 layers, 8 KV heads of size 128.
LLAMA_70B = dict(num_hidden_layers=80, hidden_size=8192, intermediate_size=28672, num_attention_heads=64,
                 num_key_value_heads=8, vocab_size=32000)


def test_kv_cost_per_token_and_batch_estimate_of_a_70b_model():
    shape = ModelShape.of(fake_model(**LLAMA_70B))
    assert shape.kv_bytes_per_token == 2 * 80 * 8 * 128 * 2 == 327_680  # 320 KiB in bf16
    # The example: 16 prompts of 2,300 tokens + 512 new ones need about 14 GB of KV cache alone; the
    # prefill's MLP activations (16 × 2,300 tokens × 28,672 wide, three such tensors) add about 8 GB more.
    peak, kv = shape.peak_bytes(16, 2300, 512), 16 * 2812 * 327_680
    assert 14e9 < kv < 15e9 and kv + 6e9 < peak < kv + 10e9
    assert shape.peak_bytes(8, 2300, 512) < peak / 1.9


def test_batches_are_cut_to_the_budget_and_batch_size_stays_the_upper_bound():
    shape = ModelShape.of(fake_model(**LLAMA_70B))
    requests = [SimpleNamespace(ids=[0] * n, weight=1) for n in [2000] * 6 + [2300] * 10]
    roomy = MemoryPlanner(shape, budget=lambda: 200 << 30, max_rows=16)
    assert [len(c) for c in roomy.chunks(requests, 512)] == [16]
    assert [len(c) for c in MemoryPlanner(shape, lambda: 200 << 30, max_rows=5).chunks(requests, 512)] == [5, 5, 5, 1]
    fits_five = int(shape.peak_bytes(5, 2300, 512) / 0.9) + 1
    planner = MemoryPlanner(shape, budget=lambda: fits_five, max_rows=16)
    chunks = planner.chunks(requests, 512)
    assert sum(len(c) for c in chunks) == 16 and len(chunks) >= 3
    assert all(shape.peak_bytes(len(c), max(len(r.ids) for r in c), 512) <= fits_five * 0.9 for c in chunks)
    # What the prefix cache holds comes out of the same budget.
    held = MemoryPlanner(shape, budget=lambda: fits_five, max_rows=16, reserved=lambda: fits_five // 2)
    assert held.rows_that_fit(2300, 512) < planner.rows_that_fit(2300, 512)
    # Even one row over the estimate is still tried (the estimate is a model; out-of-memory decides).
    assert MemoryPlanner(shape, budget=lambda: 1, max_rows=16).rows_that_fit(2300, 512) == 1


def test_max_memory_caps_the_budget_and_the_estimate_is_shown(loaded, tiny_model: Path,
                                                              capsys: pytest.CaptureFixture[str]):
    weights = loaded.model.get_memory_footprint()
    lm = HFLM(loaded, max_memory={"cpu": str(weights + (4 << 20))}, cache=None, max_tokens=64)
    try:
        assert lm.memory.budget() == 4 << 20
        assert 1 <= lm.memory.rows_that_fit(2000, 64) < 16
        summary = lm.memory_summary()
        assert "budget 4.0 MiB" in summary and "KiB/token" in summary and "prefix cache on" in summary
    finally:
        lm.close()
    roomy = HFLM.from_options(LMOptions(model=str(tiny_model), cache=False, max_new_tokens=8))
    try:
        assert "memory: weights" in capsys.readouterr().err  # shown at start-up
        assert roomy.memory.rows_that_fit(2000, 8) == 16
    finally:
        roomy.close()


@pytest.mark.slow
def test_gpu_check_dry_run_runs_end_to_end(tmp_path: Path):
    """benchmarks/gpu_check.sh --dry-run: every step of the GPU check on CPU (45 s on 2 idle cores)."""
    import json
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(["bash", str(script), "--dry-run", "--out", str(out), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["oom"]["ok"] and report["oom"]["oom_splits"] > 0 and report["oom"]["not_run"] == 0
    assert report["train"]["steps"] == 20 and report["bench"]["eval_5shot_s"] > 0
    assert set(report["seconds"]) == {"build", "bench", "oom", "train"}
