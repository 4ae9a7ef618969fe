"""Batched generation and continuation scoring on a loaded transformers model (the torch side of HFLM).

Prompts arrive as token ids of different lengths. Decoder-only models decode in this package's own loop
(:mod:`.decode`), which can start from a shared prefix's KV cache (:mod:`.prefix`); others, and models whose
generation config asks for more than that loop does, go through ``model.generate``, left padded: transformers
derives each row's positions from the attention mask, so a padded row generates what it would alone (greedy
outputs match unbatched ones). Scoring runs a plain forward pass, which does not derive positions, so it passes them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import torch

from .completions import Generation
from .params import GenerationParams
from .decode import UnroutedAttention, decode, supports_fast_decoding
from .prefix import PrefixKV


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` with every row right-aligned."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(list(row), dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def generation_config(model: Any, params: GenerationParams) -> Any:
    """The model's own generation config with this request's settings on top.

    Greedy requests reset the sampling knobs that instruct models ship in ``generation_config.json``
    (temperature 0.6, top_p 0.9, ...), so transformers neither warns nor samples. Sampling disables top-k, which
    OpenAI-style requests do not have.
    """
    config = copy.deepcopy(model.generation_config)
    sampling = {"temperature": params.temperature, "top_p": params.top_p, "top_k": 0} if params.sampling else {
        "temperature": 1.0, "top_p": 1.0, "top_k": 50}
    config.update(do_sample=params.sampling, max_new_tokens=params.max_new_tokens,
                  min_new_tokens=params.min_new_tokens, num_return_sequences=params.n, **sampling)
    if params.stop:
        config.stop_strings = list(params.stop)
    return config


def end_token_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ids | {tokenizer.pad_token_id}


def generate(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], params: GenerationParams,
             prefix: PrefixKV | None = None) -> list[Generation]:
    """One batch for all ``prompts`` (``n`` sequences each); one :class:`Generation` per prompt.

    With ``prefix`` (a KV cache of tokens every prompt starts with) the decoding loop prefills only the prompts'
    suffixes; ``generate``, for models the loop does not support (:func:`supports_fast_decoding`), prefills all.
    """
    start = time.perf_counter()
    ends = end_token_ids(model, tokenizer)
    new: list[list[int]] | None = None
    if supports_fast_decoding(model):
        try:
            new = decode(model, prompts, params, tokenizer.pad_token_id, ends,
                         stop_hit=_stop_finder(tokenizer, params.stop, ends), prefix=prefix)
        except UnroutedAttention:
            pass  # custom modelling code: generate, from now on, for this model
    if new is None:
        ids, mask = left_pad(prompts, tokenizer.pad_token_id, model.device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=generation_config(model, params),
                                 tokenizer=tokenizer if params.stop else None)
        new = out[:, ids.shape[1]:].tolist()
    lengths = [_until_end(row, ends) for row in new]
    texts = tokenizer.batch_decode([row[:k] for row, k in zip(new, lengths)], skip_special_tokens=True)
    share = (time.perf_counter() - start) / len(prompts)
    results = []
    for p, prompt in enumerate(prompts):
        rows = range(p * params.n, (p + 1) * params.n)
        cut = [_cut_at_stop(texts[r], params.stop, ended=lengths[r] < len(new[r])) for r in rows]
        results.append(Generation(texts=tuple(text for text, _ in cut), finish_reasons=tuple(reason for _, reason in cut),
                                  prompt_tokens=len(prompt), completion_tokens=sum(lengths[r] for r in rows),
                                  generation_s=share))
    return results


def _until_end(tokens: Sequence[int], ends: set[int]) -> int:
    """How many of ``tokens`` come before the first end token."""
    return next((i for i, t in enumerate(tokens) if t in ends), len(tokens))


def _stop_finder(tokenizer: Any, stop: Sequence[str], ends: set[int]) -> Any:
    """``hit(tokens)``: whether a row's new tokens (up to its end token), checked after every step, just completed
    one of ``stop``; None if no stops.

    Only the tail is decoded: a stop string first appears with the newest token, within the last 4 tokens per
    character (a character is at most 4 byte tokens), plus a few for a space a decoder drops at the window's start.
    Decoding the whole row each step made stop strings cost quadratic time in the tokens generated.
    """
    if not stop:
        return None
    window = 4 * max(len(s) for s in stop) + 4

    def hit(tokens: list[int]) -> bool:
        end = _until_end(tokens, ends)
        text = tokenizer.decode(tokens[max(0, end - window):end], skip_special_tokens=True)
        return any(s in text for s in stop)

    return hit


def _cut_at_stop(text: str, stop: Sequence[str], ended: bool) -> tuple[str, str]:
    """The text before the first stop string, and OpenAI's finish reason."""
    hits = [at for at in (text.find(s) for s in stop) if at >= 0]
    if hits:
        return text[: min(hits)], "stop"
    return text, "stop" if ended else "length"


def score(model: Any, tokenizer: Any, prompt: Sequence[int], continuations: Sequence[Sequence[int]],
          batch_size: int) -> list[float]:
    """Summed log-probability of each continuation's tokens after ``prompt`` (0 for an empty continuation)."""
    scores: list[float] = []
    for start in range(0, len(continuations), batch_size):
        chunk = continuations[start : start + batch_size]
        keep = max(len(c) for c in chunk) + 1
        ids, mask = left_pad([[*prompt, *c] for c in chunk], tokenizer.pad_token_id, model.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            # Only the last positions' logits are needed: a 128k vocabulary makes the full tensor large.
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for row, cont in enumerate(chunk):
            if not cont:
                scores.append(0.0)
                continue
            # Logit at position t predicts token t + 1; the continuation fills the last len(cont) positions.
            steps = torch.arange(keep - len(cont) - 1, keep - 1, device=logprobs.device)
            targets = torch.tensor(list(cont), device=logprobs.device)
            scores.append(float(logprobs[row, steps, targets].sum()))
    return scores
