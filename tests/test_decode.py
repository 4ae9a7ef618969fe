"""The decoding loop against transformers' own ``generate``, on tiny real models: the same greedy tokens with and
without a shared prefix (float32, and NF4 computing in float32 on both bitsandbytes CPU kernels), with grouped KV
heads, row groups read apart or as one, end-of-sequence ids and ``min_new_tokens``; the same texts and finish
reasons with stop strings; sampling; the prefix stored once; and the fallback to ``generate`` for what the loop
does not do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medjp_agent.lm import decode as decode_module
from medjp_agent.lm import generation
from medjp_agent.lm.decode import decode, own_spans, prefill_groups, supports_fast_decoding
from medjp_agent.lm.generation import end_token_ids, generation_config, left_pad
from medjp_agent.lm.options import LMOptions
from medjp_agent.lm.params import GenerationParams
from medjp_agent.lm.prefix import common_prefix_length, compute_prefix
from test_prefix_cache import prompts


@pytest.fixture(scope="module")
def loaded(tiny_model: Path):
    from medjp_agent.lm.loading import load

    return load(LMOptions(model=str(tiny_model)))


def token_rows(tokenizer) -> list[list[int]]:
    return [tokenizer(p)["input_ids"] for p in prompts()]


def reference(model, tokenizer, rows, params: GenerationParams) -> list[list[int]]:
    """What ``model.generate`` makes of ``rows``, left padded: its new tokens, padded after each row's end."""
    ids, mask = left_pad(rows, tokenizer.pad_token_id, model.device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=generation_config(model, params))
    return out[:, ids.shape[1]:].tolist()


def ours(model, tokenizer, rows, params: GenerationParams, shared: bool) -> list[list[int]]:
    prefix = compute_prefix(model, rows[0][:common_prefix_length(rows)]) if shared else None
    return decode(model, rows, params, tokenizer.pad_token_id, end_token_ids(model, tokenizer), prefix=prefix)


@pytest.mark.parametrize(("quantized", "bnb_cpu_path"), [
    ({}, None), *(pytest.param({"load_in_4bit": True, "dtype": "float32"}, path, marks=pytest.mark.slow)
                  for path in ("fused", "unfused"))],
    ids=["fp32", "nf4-fused", "nf4-unfused"], indirect=["bnb_cpu_path"])
def test_greedy_tokens_equal_generate_with_and_without_a_shared_prefix(tiny_model: Path, quantized: dict,
                                                                       bnb_cpu_path: str | None):
    from medjp_agent.lm.loading import load

    loaded = load(LMOptions(model=str(tiny_model), **quantized))
    model, tokenizer = loaded.model, loaded.tokenizer
    rows = token_rows(tokenizer)
    params = GenerationParams(max_new_tokens=16)
    expected = reference(model, tokenizer, rows, params)
    assert len({tuple(r) for r in expected}) == len(rows)  # real, prompt-dependent outputs
    assert ours(model, tokenizer, rows, params, shared=False) == expected
    assert ours(model, tokenizer, rows, params, shared=True) == expected
    assert model.config._attn_implementation == "sdpa"  # the loop's attention is switched back


def test_grouped_kv_heads_and_several_prefill_groups(loaded):
    from transformers import LlamaForCausalLM

    config = type(loaded.model.config)(**{**loaded.model.config.to_dict(), "num_key_value_heads": 2})
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = loaded.tokenizer.pad_token_id
    tokenizer = loaded.tokenizer
    # One very long question: the rows prefill in more than one group.
    rows = token_rows(tokenizer)
    rows[2] = rows[2] + tokenizer("急性心筋梗塞の初期治療で誤っているのはどれか。" * 8)["input_ids"]
    assert len(prefill_groups(sorted(len(r) for r in rows))) > 1
    params = GenerationParams(max_new_tokens=10)
    expected = reference(model, tokenizer, rows, params)
    assert ours(model, tokenizer, rows, params, shared=True) == expected
    assert ours(model, tokenizer, rows, params, shared=False) == expected


def test_steps_read_each_groups_own_columns_on_a_cpu_and_all_of_them_elsewhere():
    lengths, groups = [3, 4, 10, 30], [(0, 2), (2, 3), (3, 4)]
    assert own_spans(lengths, groups, 1, torch.device("cpu")) == ((0, 2, 26), (2, 3, 20), (3, 4, 0))
    assert own_spans(lengths, groups, 2, torch.device("cpu")) == ((0, 4, 26), (4, 6, 20), (6, 8, 0))
    assert own_spans(lengths, groups, 2, torch.device("cuda")) == ((0, 8, 0),)


def test_one_group_reading_every_column_gives_the_same_tokens(loaded, monkeypatch: pytest.MonkeyPatch):
    """What a GPU runs (one group, padding included), checked here on the CPU against ``generate``."""
    model, tokenizer = loaded.model, loaded.tokenizer
    rows = token_rows(tokenizer)
    rows[2] = rows[2] + tokenizer("急性心筋梗塞の初期治療で誤っているのはどれか。" * 8)["input_ids"]
    spans = []
    monkeypatch.setattr(decode_module, "own_spans", lambda *a: spans.append(own_spans(*a[:3], torch.device("cuda")))
                        or spans[-1])
    params = GenerationParams(max_new_tokens=10)
    assert ours(model, tokenizer, rows, params, shared=True) == reference(model, tokenizer, rows, params)
    assert spans == [((0, len(rows), 0),)]


def test_end_of_sequence_and_min_new_tokens_as_generate(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    rows = token_rows(tokenizer)
    greedy = reference(model, tokenizer, rows, GenerationParams(max_new_tokens=8))
    end = greedy[0][2]  # a token row 0 picks on the third step: made the end-of-sequence token
    before = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = end
    try:
        for least in (0, 5):
            params = GenerationParams(max_new_tokens=8, min_new_tokens=least)
            expected = reference(model, tokenizer, rows, params)
            assert ours(model, tokenizer, rows, params, shared=True) == expected
            assert (end in expected[0][:3]) is (least == 0)
    finally:
        model.generation_config.eos_token_id = before


# Early in a short completion, and late in a long one: only the last tokens are decoded to look for a stop string.
@pytest.mark.parametrize(("new_tokens", "at"), [(12, 4), (48, -3)], ids=["early", "late"])
def test_stop_strings_end_rows_as_generate_does(loaded, monkeypatch: pytest.MonkeyPatch, new_tokens: int, at: int):
    model, tokenizer = loaded.model, loaded.tokenizer
    rows = token_rows(tokenizer)
    text = tokenizer.decode(reference(model, tokenizer, rows[:1], GenerationParams(max_new_tokens=new_tokens))[0],
                            skip_special_tokens=True).strip()
    stop = text[at:][:2]
    params = GenerationParams(max_new_tokens=new_tokens, stop=(stop,))
    fast = generation.generate(model, tokenizer, rows, params)
    monkeypatch.setattr(generation, "supports_fast_decoding", lambda model: False)
    slow = generation.generate(model, tokenizer, rows, params)
    assert fast[0].finish_reasons == ("stop",) and stop not in fast[0].texts[0]
    assert [(g.texts, g.finish_reasons, g.completion_tokens) for g in fast] == [
        (g.texts, g.finish_reasons, g.completion_tokens) for g in slow]


def test_sampling_keeps_rows_apart_and_top_p_near_zero_is_greedy(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    rows = token_rows(tokenizer)[:2]
    greedy = ours(model, tokenizer, rows, GenerationParams(max_new_tokens=8), shared=True)
    torch.manual_seed(0)
    narrow = ours(model, tokenizer, rows, GenerationParams(max_new_tokens=8, temperature=1.5, top_p=1e-6, n=2),
                  shared=True)
    assert narrow == [greedy[0], greedy[0], greedy[1], greedy[1]]
    sampled = ours(model, tokenizer, rows, GenerationParams(max_new_tokens=8, temperature=1.5, n=3), shared=True)
    assert len(sampled) == 6 and len({tuple(r) for r in sampled}) == 6  # 8000 tokens at 1.5: no two rows alike


def test_the_prefix_is_stored_once_not_per_row(loaded, monkeypatch: pytest.MonkeyPatch):
    model, tokenizer = loaded.model, loaded.tokenizer
    rows = token_rows(tokenizer)
    caches = []
    monkeypatch.setattr(decode_module, "Cache", lambda layers: _recording(caches, layers))
    shared = common_prefix_length(rows)
    prefix = compute_prefix(model, rows[0][:shared])
    decode(model, rows, GenerationParams(max_new_tokens=4), tokenizer.pad_token_id, {tokenizer.pad_token_id}, prefix=prefix)
    own = max(len(r) for r in rows) - shared
    layer = caches[0][0]
    assert layer._keys.shape[0] == len(rows) and layer._keys.shape[2] == own + 4  # own tokens and new ones only
    assert layer.prefix[0] is prefix.layers[0][0] and prefix.layers[0][0].shape[0] == 1


def _recording(caches: list, layers: list):
    from transformers.cache_utils import Cache

    caches.append(layers)
    return Cache(layers=layers)


def test_what_the_loop_does_not_do_goes_to_generate(loaded):
    model = loaded.model
    assert supports_fast_decoding(model)
    model.generation_config.repetition_penalty = 1.3
    try:
        assert not supports_fast_decoding(model)
        rows = token_rows(loaded.tokenizer)[:3]
        params = GenerationParams(max_new_tokens=8)
        texts = [g.texts[0] for g in generation.generate(model, loaded.tokenizer, rows, params)]
        assert texts == loaded.tokenizer.batch_decode(reference(model, loaded.tokenizer, rows, params),
                                                      skip_special_tokens=True)
        # A prefix computed for the loop is no use to generate, which prefills whole prompts: same answers.
        with_prefix = generation.generate(model, loaded.tokenizer, rows, params, prefix=compute_prefix(model, rows[0][:20]))
        assert [g.texts[0] for g in with_prefix] == texts
    finally:
        model.generation_config.repetition_penalty = 1.0
    model.generation_config.update(num_beams=1, no_repeat_ngram_size=0, suppress_tokens=[])  # spelled-out no-ops
    assert supports_fast_decoding(model)
    for setting, value, off in (("sliding_window", 64, None), ("attn_logit_softcapping", 30.0, None)):
        setattr(model.config, setting, value)
        try:
            assert not supports_fast_decoding(model)
        finally:
            setattr(model.config, setting, off)
    assert supports_fast_decoding(model)


def test_prefill_groups_split_only_where_padding_costs_more_than_a_pass():
    assert prefill_groups([30] * 8) == [(0, 8)]
    assert prefill_groups([10] * 8 + [400], pass_cost=64) == [(0, 8), (8, 9)]
    assert prefill_groups([10, 12, 14, 16], pass_cost=64) == [(0, 4)]
    groups = prefill_groups(list(range(1, 200, 7)), pass_cost=16)
    assert groups[0][0] == 0 and groups[-1][1] == len(range(1, 200, 7))
    assert all(a[1] == b[0] for a, b in zip(groups, groups[1:])) and len(groups) > 2


@pytest.mark.parametrize(("all_threads_s", "one_thread_s", "single"), [(0.010, 0.005, True), (0.005, 0.010, False)])
def test_decoding_steps_keep_the_thread_setting_their_first_steps_ran_faster_with(
        loaded, monkeypatch: pytest.MonkeyPatch, all_threads_s: float, one_thread_s: float, single: bool):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    now = {"t": 0.0}
    monkeypatch.setattr(decode_module.time, "perf_counter", lambda: now["t"])
    head = loaded.model.get_output_embeddings()
    in_head: list[int] = []
    threads = decode_module._StepThreads(loaded.model, "cpu")  # its hooks first, so the recording one sees them
    recording = head.register_forward_pre_hook(lambda *_: in_head.append(torch.get_num_threads()))
    try:
        seen = []
        for step in range(1, 8):
            with threads.step(step):
                seen.append(torch.get_num_threads())
                with torch.inference_mode():
                    head(torch.zeros(1, head.in_features))
                now["t"] += one_thread_s if torch.get_num_threads() == 1 else all_threads_s
        kept = 1 if single else 2
        assert seen == [2, 2, 1, 1, kept, kept, kept]
        assert in_head == [2] * 7  # the output projection, one large product, keeps every thread
        threads.restore()
        assert torch.get_num_threads() == 2 and not head._forward_pre_hooks.keys() - {recording.id}
        assert not decode_module._StepThreads(loaded.model, "cuda").active  # a GPU's steps are left alone
    finally:
        threads.restore()
        recording.remove()
        torch.set_num_threads(before)


def test_a_model_whose_attention_skips_the_interface_falls_back_to_generate(loaded, monkeypatch: pytest.MonkeyPatch):
    """Custom modelling code that calls its attention directly would never see the prefix: caught at the first
    prefill, before any token, and that model is generated with ``generate`` from then on."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.llama import modeling_llama

    model, tokenizer = loaded.model, loaded.tokenizer
    rows = token_rows(tokenizer)[:3]
    params = GenerationParams(max_new_tokens=8)
    expected = [g.texts for g in generation.generate(model, tokenizer, rows, params)]
    monkeypatch.setattr(modeling_llama.ALL_ATTENTION_FUNCTIONS, "get_interface",
                        lambda name, default: sdpa_attention_forward)
    try:
        prefix = compute_prefix(model, rows[0][:common_prefix_length(rows)])
        with pytest.raises(decode_module.UnroutedAttention):
            ours(model, tokenizer, rows, params, shared=True)
        assert not supports_fast_decoding(model)
        assert [g.texts for g in generation.generate(model, tokenizer, rows, params, prefix=prefix)] == expected
        assert model.config._attn_implementation == "sdpa"
    finally:
        decode_module._UNROUTED.discard(model)
