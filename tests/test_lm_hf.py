"""HFLM on the tiny random Llama, loaded through the real from_pretrained path: batching, caching, sampling,
stop strings, prompt rendering, scoring and the DSPy plug-in."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dspy
import pytest

from medjp_agent.lm.hf import HFLM
from medjp_agent.lm.options import LMOptions
from medjp_agent.lm.prompts import raw_messages as raw
from medjp_agent.signatures import NAMED_FORMATS, MedicalQA

PROMPTS = ["問題：高血圧の治療で第一選択となる薬はどれか。", "答え：", "### 指示：\n以下は医学知識に関する多肢選択問題です。\n\n### 入力：\n発熱",
           "a", "選択肢：\na. 肺炎\nb. 気胸\nc. 心不全", "解説：急性心筋梗塞では"]


def complete_all(lm: HFLM, prompts: list[str], threads: int = 16, **kwargs) -> list[tuple[str, ...]]:
    """Every prompt from its own thread, as DSPy's evaluators call an LM."""
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda p: lm.complete(messages=raw(p), **kwargs).texts, prompts))


@pytest.fixture(scope="module")
def lm(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> HFLM:
    lm = HFLM.from_options(LMOptions(model=str(tiny_model), max_new_tokens=12,
                                     cache_dir=tmp_path_factory.mktemp("generations")))
    yield lm
    lm.close()


# NF4 weights computing in float32: with the default bf16 compute, left padding's tiny reordering of float sums
# (~1e-5 in fp32 logits) is amplified by bf16 rounding to ~0.05, and on this random model, whose top two logits
# are often only 0.1-0.3 apart, one prompt in six then diverges after about ten tokens. That is numerics, not
# batching; float32 compute makes the comparison exact, so it tests the batching itself.
NF4 = {"load_in_4bit": True, "dtype": "float32"}


@pytest.mark.parametrize(("quantized", "bnb_cpu_path"), [
    ({}, None), *(pytest.param(NF4, path, marks=pytest.mark.slow) for path in ("fused", "unfused"))],
    ids=["fp32", "nf4-fused", "nf4-unfused"], indirect=["bnb_cpu_path"])
def test_batched_greedy_equals_unbatched(tiny_model: Path, quantized: dict, bnb_cpu_path: str | None):
    batched = HFLM.from_options(LMOptions(model=str(tiny_model), max_new_tokens=16, cache=False, **quantized))
    one_by_one = HFLM(batched.loaded, batch_size=1, max_tokens=16)
    try:
        together = complete_all(batched, PROMPTS)
        alone = [one_by_one.complete(messages=raw(p)).texts for p in PROMPTS]
        assert max(batched.stats.batch_sizes) > 1
        assert set(one_by_one.stats.batch_sizes) == {1}
        assert together == alone
        assert len(set(together)) == len(PROMPTS)  # real, prompt-dependent outputs
        if quantized:
            assert "Linear4bit" in type(batched.loaded.model.model.layers[0].mlp.up_proj).__name__
            assert batched.describe()["backend"] == "hf-nf4"
    finally:
        batched.close()
        one_by_one.close()


def test_cache_hits_skip_generation_and_persist(lm: HFLM, tmp_path: Path):
    prompts = [f"{p}（キャッシュ）" for p in PROMPTS[:3]]
    first = complete_all(lm, prompts)
    calls, hits = lm.generate_calls, lm.cache_hits
    assert complete_all(lm, prompts) == first
    assert (lm.generate_calls, lm.cache_hits) == (calls, hits + 3)

    # A new LM on the same cache folder (a later process) finds the entries; --no-cache bypasses them.
    reopened = HFLM(lm.loaded, cache=type(lm.store)(lm.store.directory), max_tokens=12)
    uncached = HFLM(lm.loaded, cache=None, max_tokens=12)
    try:
        assert complete_all(reopened, prompts) == first and reopened.generate_calls == 0
        assert complete_all(uncached, prompts) == first and uncached.generate_calls >= 1
        # Other generation parameters are other entries.
        reopened.complete(messages=raw(prompts[0]), max_tokens=5)
        assert reopened.generate_calls == 1
    finally:
        reopened.close()
        uncached.close()


def test_cache_hit_reports_tokens_but_no_generation_time(lm: HFLM):
    fresh = lm.complete(messages=raw("使用量の確認"))
    again = lm.complete(messages=raw("使用量の確認"))
    assert fresh.generation_s > 0 and again.generation_s == 0
    assert (again.prompt_tokens, again.completion_tokens) == (fresh.prompt_tokens, fresh.completion_tokens)
    assert fresh.completion_tokens <= 12


def test_identical_requests_in_flight_share_one_generation(tiny_model: Path, lm: HFLM):
    uncached = HFLM(lm.loaded, cache=None, max_tokens=12)
    try:
        texts = complete_all(uncached, ["同じ質問"] * 8)
        assert len(set(texts)) == 1
        assert uncached.stats.batch_sizes == [1]
    finally:
        uncached.close()


def test_stop_strings_end_the_completion(lm: HFLM):
    full = lm.complete(messages=raw(PROMPTS[0]), max_tokens=12, cache=False)
    text = full.texts[0]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = lm.complete(messages=raw(PROMPTS[0]), max_tokens=12, stop=[stop])
    assert cut.texts[0] == text[: text.find(stop)]
    assert cut.finish_reasons == ("stop",)
    assert cut.completion_tokens < full.completion_tokens
    assert full.finish_reasons == ("length",)


def ask_at_once(lm: HFLM, prompts: list[str], errors: bool = False, **kwargs) -> list[list[str]]:
    """Concurrent DSPy calls through ``acall``: all queued within microseconds, so timing cannot split them.
    With ``errors``, a failed call gives its exception in its place instead of raising."""
    async def ask_all():
        return await asyncio.gather(*(lm.acall(messages=raw(p), **kwargs) for p in prompts), return_exceptions=errors)

    return asyncio.run(ask_all())


def test_n_samples_are_generated_in_one_batch(lm: HFLM):
    calls = lm.generate_calls
    results = ask_at_once(lm, ["サンプリング一", "サンプリング二"], n=4, temperature=1.0)
    assert lm.generate_calls == calls + 1 and lm.stats.batch_sizes[-1] == 2
    assert [len(r) for r in results] == [4, 4]
    assert all(len(set(r)) > 1 for r in results)


def test_chat_messages_go_through_the_chat_template(lm: HFLM):
    chat = [{"role": "system", "content": "医師として"}, {"role": "user", "content": "発熱の原因は？"}]
    template = lm.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert template.endswith("<|assistant|>\n")
    via_chat = lm.complete(messages=chat)
    via_raw = lm.complete(messages=raw(template))
    assert via_chat.texts == via_raw.texts
    assert via_chat.prompt_tokens == len(lm.tokenizer(template, add_special_tokens=False)["input_ids"])


def test_score_continuations_is_the_summed_logprob_of_the_continuation(lm: HFLM):
    import torch

    messages = [{"role": "user", "content": "答えはどれか。"}]
    continuations = ["a", "肺炎です", ""]
    scores = lm.score_continuations(messages, continuations)
    prompt = lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    for text, got in zip(continuations, scores):
        cont = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = lm.loaded.model(torch.tensor([prompt_ids + cont])).logits[0]
        logprobs = torch.log_softmax(logits.float(), -1)
        want = sum(float(logprobs[len(prompt_ids) + i - 1, t]) for i, t in enumerate(cont))
        assert got == pytest.approx(want, abs=1e-3)
    assert scores[2] == 0.0 and scores[1] < scores[0] < 0


def test_dspy_module_calls_are_batched_with_usage(lm: HFLM):
    fmt = NAMED_FORMATS["plain-ja-direct"].replace(self_consistency=3)
    qa = MedicalQA(fmt)
    calls = lm.generate_calls
    with dspy.context(lm=lm.copy(max_tokens=8), track_usage=True):
        pred = qa(question="高尿酸血症をきたすのはどれか。", choices=["サイアザイド", "アロプリノール", "ビタミンC"])
    assert len(pred.samples) == 3  # n=3 in one request...
    assert lm.generate_calls == calls + 1  # ...and in one generate call
    usage = next(iter(pred.get_lm_usage().values()))
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 3 * 8


def test_async_calls_are_batched(lm: HFLM):
    calls = lm.generate_calls
    outputs = ask_at_once(lm, [f"非同期{i}" for i in range(4)])
    assert [len(o) for o in outputs] == [1, 1, 1, 1]
    assert lm.generate_calls == calls + 1


def test_4bit_follows_the_qlora_recipe():
    from medjp_agent.lm.loading import model_kwargs

    config = model_kwargs(LMOptions(load_in_4bit=True))["quantization_config"]
    assert (config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant) == ("nf4", True)
    assert str(config.bnb_4bit_compute_dtype) == "torch.bfloat16"
    assert str(model_kwargs(LMOptions(load_in_4bit=True, dtype="float16"))["quantization_config"]
               .bnb_4bit_compute_dtype) == "torch.float16"
    with pytest.raises(ValueError, match="one of"):
        model_kwargs(LMOptions(load_in_4bit=True, load_in_8bit=True))


def test_unsupported_arguments_fail_loudly(lm: HFLM):
    with pytest.raises(ValueError, match="logprobs"):
        lm.complete(messages=raw("x"), logprobs=True)


def test_default_options_load_the_tiny_model(tiny_model: Path):
    lm = HFLM.from_options(LMOptions(cache=False, max_new_tokens=4))
    try:
        assert lm.describe() == {"model": tiny_model.name, "adapter": "", "backend": "hf"}
        assert lm.tokenizer.padding_side == "left"
        assert len(lm.complete(messages=raw("既定")).texts) == 1
    finally:
        lm.close()


def test_importing_the_lm_package_does_not_import_torch():
    code = ("import sys, medjp_agent.lm, medjp_agent.lm.cache, medjp_agent.lm.api; "
            "print(any(m in sys.modules for m in ('torch', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_prompt_longer_than_the_context_is_not_run_not_generated(lm: HFLM):
    from medjp_agent.lm.errors import NotRun

    context = lm.loaded.model.config.max_position_embeddings
    long = "発熱 " * context
    calls = lm.generate_calls
    with pytest.raises(NotRun, match=f"prompt too long .* > the model's {context}-token context"):
        lm.complete(messages=raw(long))
    # Prompt + max_new_tokens is what must fit: a prompt that fits only with fewer new tokens runs with them.
    ids = lm.tokenizer(long)["input_ids"][: context - 4]
    fits = lm.tokenizer.decode(ids[1:])
    n = len(lm.tokenizer(fits)["input_ids"])
    with pytest.raises(NotRun, match="prompt too long"):
        lm.complete(messages=raw(fits), max_tokens=context - n + 1)
    assert lm.generate_calls == calls
    assert lm.complete(messages=raw(fits), max_tokens=context - n).completion_tokens <= context - n
