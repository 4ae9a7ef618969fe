"""A batched decoding loop for decoder-only models: what ``model.generate`` does for this backend's requests, faster.

``generate`` pays, at every step, for a KV cache that grows by concatenation (each layer's keys and values are
copied whole, so a step costs in proportion to everything cached), for rebuilding masks and positions, and for
its general machinery; it pads every prompt to the batch's longest and needs a shared prefix's KV copied per row.
Here a batch's KV cache is allocated once for the rows' own and new tokens, and each step writes one column; a
shared prefix (:mod:`.prefix`) is stored once and read once per step for all rows (:func:`_attention`); the rows'
own tokens are prefilled in groups of similar length (:func:`prefill_groups`), and on a CPU each step reads a
group's own columns only from where its longest row starts; masks and positions are built once. Measured on 2
CPU cores, 16 five-shot prompts (333 shared tokens, 22-78 own, 32 new): ``generate`` from the expanded prefix
took 0.69 s on the benchmark's tiny Llama and 5.8 s on its 100M one, this loop 0.40 s and 3.6 s; reading own
columns by group then took the tiny one's to 0.35-0.38 s (steps read 44 % padding before; the 100M one's
steps are bound by its weights).

Each row's own tokens are right-aligned, padding before them; positions count only real tokens, so a padded row
computes what it would alone, and with float32 compute the greedy tokens equal ``generate``'s (tested against it).
Decoding covers greedy and sampling (temperature, then top-p), ``n``, ``min_new_tokens``, end-of-sequence ids and
stop strings. A model whose own generation config asks for more (a repetition penalty, beams, banned words, ...)
is left to ``generate`` (:func:`supports_fast_decoding`). The model runs with this module's attention function
during the loop (SDPA for prefills), whatever implementation it was loaded with.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .params import GenerationParams
from .prefix import CACHE_ARG, PrefixKV

#: Generation-config fields this loop implements, or that do not change decoding; the request sets the
#: sampling ones, so a model's defaults for them (temperature 0.6, top_p 0.9, ...) do not matter.
_HANDLED = {"max_new_tokens", "max_length", "min_new_tokens", "min_length", "do_sample", "temperature", "top_k",
            "top_p", "num_return_sequences", "stop_strings", "eos_token_id", "pad_token_id", "bos_token_id",
            "decoder_start_token_id", "use_cache", "output_attentions", "output_hidden_states", "output_scores",
            "output_logits", "return_dict_in_generate", "_from_model_config", "transformers_version",
            "cache_implementation", "generation_kwargs"}
#: Values of other fields that change nothing (transformers' own defaults are unset, None): a model's config may
#: spell out ``repetition_penalty: 1.0`` or ``num_beams: 1``.
_NEUTRAL = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "num_beams": 1, "num_beam_groups": 1,
            "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "length_penalty": 1.0,
            "diversity_penalty": 0.0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "min_p": 0.0,
            "guidance_scale": 1.0, "early_stopping": False, "renormalize_logits": False,
            "remove_invalid_values": False, "token_healing": False, "low_memory": False}


#: Models whose attention was found not to go through transformers' ``AttentionInterface`` (custom modelling
#: code): this loop cannot give them the shared prefix, so they are left to ``generate``.
_UNROUTED: weakref.WeakSet[Any] = weakref.WeakSet()


class UnroutedAttention(RuntimeError):
    """The model did not call this loop's attention function (nothing was generated yet)."""


def supports_fast_decoding(model: Any) -> bool:
    """Whether this loop can generate for ``model``: a decoder-only model whose caches keep every position (sliding
    windows drop old ones), with plain softmax attention (no logit soft-capping) routed through transformers'
    ``AttentionInterface``, and whose own generation config asks only for what the loop does."""
    from transformers import GenerationConfig

    config = model.config.get_text_config()
    windowed = getattr(config, "sliding_window", None) or any(
        "sliding" in str(t) for t in getattr(config, "layer_types", None) or ())
    if windowed or getattr(config, "is_encoder_decoder", False) or getattr(config, "attn_logit_softcapping", None):
        return False
    if model in _UNROUTED:
        return False
    default = GenerationConfig().to_dict()
    return all(key in _HANDLED or value in (None, [], {}) or value == default.get(key)
               or (key in _NEUTRAL and value == _NEUTRAL[key]) for key, value in model.generation_config.to_dict().items())


#: What a forward pass costs beyond its tokens, in tokens: prefill groups (:func:`prefill_groups`) split only
#: where that saves more padding than this. A pass reads every weight once; on a GPU that takes as long as
#: computing a few hundred tokens, on a CPU a few dozen. Tuning within that range changes little.
PASS_COST_TOKENS = 64


def prefill_groups(lengths: Sequence[int], pass_cost: int = PASS_COST_TOKENS) -> list[tuple[int, int]]:
    """``[(start, end), ...]``: consecutive groups of ``lengths`` (ascending) to prefill in one pass each, padded to
    their longest; the split minimises padded tokens plus ``pass_cost`` per pass (dynamic programming)."""
    cost, cut = [0] + [0] * len(lengths), [0] * (len(lengths) + 1)
    for end in range(1, len(lengths) + 1):
        cost[end], cut[end] = min((cost[start] + (end - start) * lengths[end - 1] + pass_cost, start)
                                  for start in range(end))
    groups, end = [], len(lengths)
    while end:
        groups.append((cut[end], end))
        end = cut[end]
    return groups[::-1]


def own_spans(lengths: Sequence[int], groups: Sequence[tuple[int, int]], n: int,
              device: torch.device) -> tuple[tuple[int, int, int], ...]:
    """``(first_row, end_row, first_column)`` of the own columns each row group's decoding steps read
    (:func:`_attention`): ``groups`` of ``lengths`` (ascending, right-aligned), ``n`` rows per prompt.

    On a CPU, each prefill group from where its longest row starts. On a GPU a step's time goes to kernel
    launches, not to reading a few padded columns, so all rows form one group there.
    """
    width = lengths[-1]
    if device.type != "cpu":
        groups = [(0, len(lengths))]
    return tuple((a * n, b * n, width - lengths[b - 1]) for a, b in groups)


class _BufferLayer(DynamicLayer):
    """One layer's KV cache for a batch: the shared prefix once (batch size one, never copied per row), and each
    row's own and new tokens in a buffer allocated at the first write, ``[rows, heads, width + new, dim]``.

    The buffer starts zeroed: padding columns that no pass writes are masked, and a masked softmax weight (0) times
    uninitialised memory (possibly NaN) would still be NaN. Prefill passes say where they write (:meth:`aim`);
    decoding steps append after the columns written so far, for every row.
    """

    def __init__(self, rows: int, capacity: int, prefix: tuple[torch.Tensor, torch.Tensor] | None):
        super().__init__()
        self.rows, self.capacity, self.prefix = rows, capacity, prefix
        self.shared = 0 if prefix is None else prefix[0].shape[-2]
        self.end = 0  # columns written so far
        self.decoding()

    def aim(self, rows: slice, start: int, copies: int) -> None:
        """The next update is a prefill pass writing ``rows`` (each input row ``copies`` times) from column
        ``start``; it returns the prefix and the new keys, for attention within the pass."""
        self.target, self.start, self.copies, self.prefill = rows, start, copies, True

    def decoding(self) -> None:
        """Updates from now on append one step for every row, and return the rows' own columns so far, which
        attention reads with the prefix (:func:`_attention`)."""
        self.target, self.copies, self.prefill = slice(None), 1, False

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self._keys = key_states.new_zeros((self.rows, key_states.shape[1], self.capacity, key_states.shape[3]))
        self._values = value_states.new_zeros((self.rows, value_states.shape[1], self.capacity, value_states.shape[3]))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.start if self.prefill else self.end
        self.end = start + key_states.shape[-2]
        for buffer, new in ((self._keys, key_states), (self._values, value_states)):
            buffer[self.target, :, start:self.end] = new if self.copies == 1 else new.repeat_interleave(
                self.copies, dim=0)
        if not self.prefill:
            return self._keys[:, :, :self.end], self._values[:, :, :self.end]
        if self.prefix is None:
            return key_states, value_states
        rows = key_states.shape[0]
        return tuple(torch.cat([p.expand(rows, -1, -1, -1), new], dim=-2)  # type: ignore[return-value]
                     for p, new in zip(self.prefix, (key_states, value_states)))

    def get_seq_length(self) -> int:
        return self.shared + self.end


#: The attention implementation the loop runs the model with (:func:`_attention`), registered with transformers.
ATTENTION = "medjp_shared_prefix"


def _attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
               shared_prefix: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None,
               spans: tuple[tuple[int, int, int], ...] | None = None, routed: list[bool] | None = None,
               **kwargs: Any) -> tuple[torch.Tensor, None]:
    """SDPA for prefills; for a decoding step (``spans`` given, one query per row), attention over the shared
    prefix and the rows' own keys (``key``/``value``, masked by ``attention_mask``).

    A step is bound by the memory it reads, much of it attention's keys and values: the prefix's are read once for
    all rows, in one matrix product per KV head (not once per row), and the rows' own columns only from where each
    row group's longest suffix starts, ``(first_row, end_row, first_column)`` per group in ``spans`` (rows sorted
    by length and right-aligned: the columns before hold only shorter rows' padding). The softmax runs in float32
    over prefix and own keys together. ``routed`` records that the model called this function.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if routed is not None:
        routed.append(True)
    if spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rows, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    q = query.reshape(rows, kv_heads, heads // kv_heads, dim)  # query head h reads KV head h // group
    scores = q.new_full((*q.shape[:-1], key.shape[-2]), float("-inf"))
    for first, end, column in spans:
        scores[first:end, ..., column:] = q[first:end] @ key[first:end, :, column:].transpose(-1, -2)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    p = 0
    if shared_prefix is not None:
        prefix_keys, prefix_values = shared_prefix[module.layer_idx]
        p = prefix_keys.shape[-2]
        by_head = q.transpose(0, 1).reshape(kv_heads, -1, dim) @ prefix_keys[0].transpose(-1, -2)
        scores = torch.cat([by_head.reshape(kv_heads, rows, -1, p).transpose(0, 1), scores], -1)
    probs = (scores.float() * (dim ** -0.5 if scaling is None else scaling)).softmax(-1).to(query.dtype)
    out = torch.zeros_like(q) if shared_prefix is None else (
        probs[..., :p].transpose(0, 1).reshape(kv_heads, -1, p) @ prefix_values[0]).reshape(
        kv_heads, rows, -1, dim).transpose(0, 1)
    for first, end, column in spans:
        out[first:end] += probs[first:end, ..., p + column:] @ value[first:end, :, column:]
    return out.reshape(rows, 1, heads, dim), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, _attention)


def decode(model: Any, prompts: Sequence[Sequence[int]], params: GenerationParams, pad_id: int,
           end_ids: set[int], stop_hit: Any = None, prefix: PrefixKV | None = None) -> list[list[int]]:
    """The new tokens of every row (prompt ``p``'s ``n`` rows are ``p * n ...``), ``pad_id`` after a row ends.

    ``prefix``: a KV cache of tokens every prompt starts with; only the rest of each prompt is prefilled, once per
    prompt however many samples it asks for. ``stop_hit(tokens) -> bool``, asked after each step with the row's new
    tokens so far, ends a row whose latest token completed a stop string.
    """
    shared, n, new = 0 if prefix is None else len(prefix.ids), params.n, params.max_new_tokens
    # Rows by suffix length, so prefill groups pad little; their results go back to prompt order at the end.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    suffixes = [list(prompts[i][shared:]) for i in order]
    lengths = [len(s) for s in suffixes]
    width, count, device = lengths[-1], len(prompts) * n, model.device
    # Key columns a row attends to besides the prefix: its own tokens (right-aligned in ``width``), then the new ones.
    real = torch.ones((count, width + new), dtype=torch.bool)
    for i, length in enumerate(lengths):
        real[i * n:(i + 1) * n, :width - length] = False
    config = model.config.get_text_config()
    layers = [_BufferLayer(count, width + new, None if prefix is None else prefix.layers[i])
              for i in range(config.num_hidden_layers)]
    cache = Cache(layers=layers)
    ends = torch.tensor(sorted(end_ids), dtype=torch.long, device=device)
    done = torch.zeros(count, dtype=torch.bool, device=device)
    out: list[torch.Tensor] = []
    _register_attention()
    before, config._attn_implementation = config._attn_implementation, ATTENTION
    threads = _StepThreads(model, device)
    try:
        with torch.inference_mode():
            routed: list[bool] = []
            groups = prefill_groups(lengths)
            logits = torch.cat([_prefill(model, cache, suffixes[a:b], real[a * n:b * n:n, :width], shared, pad_id,
                                         slice(a * n, b * n), n, routed) for a, b in groups])
            if not routed:
                _UNROUTED.add(model)
                raise UnroutedAttention(f"{type(model).__name__} does not call transformers' attention interface")
            for layer in layers:
                layer.decoding()
            spans = own_spans(lengths, groups, n, torch.device(device))
            positions = torch.tensor([shared + length for length in lengths], device=device).repeat_interleave(n)
            real = real[:, None, None, :].to(device)
            so_far: list[list[int]] = [[] for _ in range(count)]  # each row's new tokens, for stop strings
            for step in range(new):
                if step:
                    with threads.step(step):
                        logits = model(input_ids=token[:, None], attention_mask=real[..., :width + step],
                                       position_ids=positions[:, None] + step - 1,
                                       shared_prefix=prefix and prefix.layers, spans=spans, logits_to_keep=1,
                                       **{CACHE_ARG: cache}).logits[:, -1].float()
                if step < params.min_new_tokens:
                    logits[:, ends] = float("-inf")
                token = _pick(logits, params).masked_fill(done, pad_id)
                out.append(token)
                done |= torch.isin(token, ends)
                if stop_hit is not None:
                    for row, t in zip(so_far, token.tolist()):
                        row.append(t)
                    done |= torch.tensor([not d and stop_hit(t) for d, t in zip(done.tolist(), so_far)],
                                         device=device)
                if bool(done.all()):
                    break
    finally:
        config._attn_implementation = before
        threads.restore()
    generated = torch.stack(out, 1).tolist()
    results: list[list[int]] = [[] for _ in range(count)]
    for i, prompt in enumerate(order):
        results[prompt * n:(prompt + 1) * n] = generated[i * n:(i + 1) * n]
    return results


class _StepThreads:
    """How many CPU threads decoding steps run on: all of torch's, or one for the layers (the output projection,
    the one large product of a step, keeps all), whichever the first steps ran faster with.

    A step multiplies a few rows by every weight matrix, dozens of small products; on a CPU, waking the thread pool
    for each can cost more than the other cores give. Measured with 2 threads on 2 cores: the tiny Llama's steps
    ran ~15 % faster with one thread for the layers, the 100M one's slower. Steps 1-2 run on all threads and 3-4
    on one; the faster setting keeps the rest. (A GPU's steps do not depend on it.)
    """

    TRIAL = ((1, 2), (3, 4))

    def __init__(self, model: Any, device: Any):
        self.all = torch.get_num_threads()
        self.active = torch.device(device).type == "cpu" and self.all > 1
        self.times: dict[int, float] = {}
        self.single = False
        head = model.get_output_embeddings() if self.active else None
        self._hooks = [] if head is None else [head.register_forward_pre_hook(lambda *_: self._head(True)),
                                               head.register_forward_hook(lambda *_: self._head(False))]

    def _head(self, starting: bool) -> None:
        if self.single:
            torch.set_num_threads(self.all if starting else 1)

    def _use(self, single: bool) -> None:
        self.single = single
        torch.set_num_threads(1 if single else self.all)

    @contextmanager
    def step(self, step: int) -> Iterator[None]:
        timed = self.active and step <= self.TRIAL[1][-1]
        if timed and step == self.TRIAL[1][0]:
            self._use(True)
        start = time.perf_counter()
        yield
        if timed:
            self.times[step] = time.perf_counter() - start
            if step == self.TRIAL[1][-1]:
                self._use(min(self.times[s] for s in self.TRIAL[1]) < min(self.times[s] for s in self.TRIAL[0]))

    def restore(self) -> None:
        for hook in self._hooks:
            hook.remove()
        if self.active:
            self._use(False)


def _prefill(model: Any, cache: Cache, suffixes: list[list[int]], real: torch.Tensor, shared: int, pad_id: int,
             rows: slice, copies: int, routed: list[bool]) -> torch.Tensor:
    """Prefill one group of suffixes (right-aligned, padded to the group's longest) into ``rows`` of the cache;
    returns the logits of each row's first new token, ``copies`` per suffix.

    Causal over a row's real tokens, after the whole prefix; a padding query sees itself, so no row of the softmax
    is empty (an empty one is NaN, which the padding's values would carry into real rows).
    """
    device, group, width = model.device, len(suffixes), max(len(s) for s in suffixes)
    start = real.shape[1] - width
    real = real[:, start:]
    ids = torch.full((group, width), pad_id, dtype=torch.long)
    for i, suffix in enumerate(suffixes):
        ids[i, width - len(suffix):] = torch.tensor(suffix, dtype=torch.long)
    positions = shared + (real.long().cumsum(-1) - 1).clamp(min=0)
    own = (torch.ones((width, width), dtype=torch.bool).tril() & real[:, None, :]) | torch.eye(width, dtype=torch.bool)
    mask = torch.cat([torch.ones((group, width, shared), dtype=torch.bool), own], dim=-1)[:, None]
    for layer in cache.layers:
        layer.aim(rows, start, copies)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                   routed=routed, logits_to_keep=1, **{CACHE_ARG: cache}).logits[:, -1].float()
    return logits.repeat_interleave(copies, dim=0)


def _pick(logits: torch.Tensor, params: GenerationParams) -> torch.Tensor:
    if not params.sampling:
        return logits.argmax(-1)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        # Nucleus: keep the most likely tokens until their mass reaches top_p (always at least the first).
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > params.top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    return torch.multinomial(probs, 1)[:, 0]
