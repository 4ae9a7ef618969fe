"""Shared-prefix KV reuse on the tiny model: same greedy tokens as the plain path (fp32 and NF4 with fp32 compute),
the prefix computed once per format and kept across batches, one prefix per adapter, a bounded cache, and the
switch that turns it off."""

from __future__ import annotations

from pathlib import Path

import pytest

from medjp_agent.lm.hf import HFLM
from medjp_agent.lm.options import LMOptions
from medjp_agent.lm.prefix import MIN_PREFIX, PrefixCache, common_prefix_length
from test_lm_hf import ask_at_once, raw

#: A few-shot prompt head (instruction + demos), then each question's own text of different lengths.
HEAD = "### 指示：\n以下は医学知識に関する多肢選択問題です。\n\n" + "".join(
    f"### 入力：\n問題{i}：発熱と咳が続く患者。\n選択肢：\na. 肺炎\nb. 気胸\nc. 心不全\n\n### 応答：\n答え：a\n\n" for i in range(3))
QUESTIONS = ["高血圧の治療で第一選択となる薬はどれか。", "急性虫垂炎の所見はどれか。", "貧血", "心房細動で誤っているのはどれか。二つ選べ。",
             "新生児の黄疸で正しいのはどれか。", "糖尿病"]


def prompts(head: str = HEAD) -> list[str]:
    return [f"{head}### 入力：\n{q}\n\n### 応答：\n" for q in QUESTIONS]


@pytest.fixture(scope="module")
def loaded(tiny_model: Path):
    from medjp_agent.lm.loading import load

    return load(LMOptions(model=str(tiny_model)))


# NF4 computing in float32, on both of bitsandbytes' CPU kernels (see tests/test_lm_hf.py for why float32).
@pytest.mark.parametrize(("quantized", "bnb_cpu_path"), [
    ({}, None), *(pytest.param({"load_in_4bit": True, "dtype": "float32"}, path, marks=pytest.mark.slow)
                  for path in ("fused", "unfused"))],
    ids=["fp32", "nf4-fused", "nf4-unfused"], indirect=["bnb_cpu_path"])
def test_shared_prefix_greedy_equals_the_plain_path(tiny_model: Path, quantized: dict, bnb_cpu_path: str | None):
    shared = HFLM.from_options(LMOptions(model=str(tiny_model), max_new_tokens=12, cache=False, **quantized))
    plain = HFLM(shared.loaded, prefix_sharing=False, max_tokens=12)
    try:
        with_prefix = ask_at_once(shared, prompts())
        without = ask_at_once(plain, prompts())
        assert shared.stats.batch_sizes == [len(QUESTIONS)] and plain.prefixes is None
        assert with_prefix == without
        assert len({tuple(t) for t in with_prefix}) == len(QUESTIONS)  # real, prompt-dependent outputs
        assert (shared.prefixes.misses, len(shared.prefixes)) == (1, 1)
        if quantized:
            assert "Linear4bit" in type(shared.loaded.model.model.layers[0].mlp.up_proj).__name__
    finally:
        shared.close()
        plain.close()


def test_prefix_is_computed_once_per_format_across_batches(loaded):
    lm = HFLM(loaded, cache=None, max_tokens=6)
    plain = HFLM(loaded, cache=None, prefix_sharing=False, max_tokens=6)
    try:
        first, second = ask_at_once(lm, prompts()[:3]), ask_at_once(lm, prompts()[3:])
        assert lm.stats.batch_sizes == [3, 3]
        assert (lm.prefixes.misses, lm.prefixes.hits, len(lm.prefixes)) == (1, 1, 1)
        # A lone request of the same format reuses it too; another format gets its own entry.
        alone = lm.complete(messages=raw(prompts()[0])).texts
        assert lm.prefixes.hits == 2 and [alone[0]] == first[0]
        other = ask_at_once(lm, prompts("### Instruction:\nAnswer the medical question below.\n" * 4))
        assert (lm.prefixes.misses, len(lm.prefixes)) == (2, 2)
        assert first + second == ask_at_once(plain, prompts())
        assert other == ask_at_once(plain, prompts("### Instruction:\nAnswer the medical question below.\n" * 4))
    finally:
        lm.close()
        plain.close()


def test_sampled_n_completions_run_on_the_shared_prefix(loaded):
    lm = HFLM(loaded, cache=None, max_tokens=6)
    try:
        results = ask_at_once(lm, prompts()[:2], n=3, temperature=1.0)
        assert [len(r) for r in results] == [3, 3] and lm.prefixes.misses == 1
    finally:
        lm.close()


def test_each_adapter_has_its_own_prefix(tiny_model: Path, tmp_path: Path):
    from test_lm_adapters import make_adapters

    one, two = make_adapters(tiny_model, tmp_path, [1, 2])
    opts = LMOptions(model=str(tiny_model), adapters=(f"one={one}", f"two={two}"), max_new_tokens=8, cache=False)
    lm = HFLM.from_options(opts)
    plain = HFLM(lm.loaded, prefix_sharing=False, max_tokens=8)
    try:
        outputs = {}
        for name in ("one", "two", None):
            lm.set_adapter(name)
            plain.set_adapter(name)
            outputs[name] = ask_at_once(lm, prompts()[:3])
            assert outputs[name] == ask_at_once(plain, prompts()[:3])
        assert len({str(o) for o in outputs.values()}) == 3
        assert (lm.prefixes.misses, len(lm.prefixes)) == (3, 3)
    finally:
        lm.close()
        plain.close()


def test_the_cache_drops_the_least_recently_used_prefix_beyond_its_bound(loaded):
    rows = [[5] * 40 + [6, 7], [5] * 40 + [8]]
    one = PrefixCache(max_bytes=10**9).for_batch(loaded.model, "m", rows)
    cache = PrefixCache(max_bytes=int(one.nbytes * 1.5))
    first = cache.for_batch(loaded.model, "m", rows)
    cache.for_batch(loaded.model, "m", [[9] * 40 + [6], [9] * 40 + [7]])
    assert len(cache) == 1 and cache.nbytes <= cache.max_bytes
    assert cache.for_batch(loaded.model, "m", rows) is not first  # evicted, computed again
    assert cache.misses == 3
    # Another owner (model or adapter) never sees it; a lone prompt never computes one.
    assert cache.for_batch(loaded.model, "other", rows[:1]) is None


def test_common_prefix_leaves_every_row_a_token_of_its_own():
    rows = [[1, 2, 3, 4, 10, 11, 12], [1, 2, 3, 4, 20], [1, 2, 3, 4, 30, 31]]
    assert common_prefix_length(rows) == 4
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert common_prefix_length([[7, 2], [1, 2]]) == 0
    assert MIN_PREFIX > 4  # so short accidental overlaps never cost a forward pass


def test_no_prefix_cache_flag_turns_it_off(loaded, lm_options_from_flags):
    assert lm_options_from_flags().prefix_cache is True
    off = HFLM(loaded, prefix_sharing=lm_options_from_flags("--no-prefix-cache").prefix_cache)
    assert off.prefixes is None
    off.close()
