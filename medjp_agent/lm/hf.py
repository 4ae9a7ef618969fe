"""`HFLM`: a local transformers model as a DSPy LM, batched across threads and cached on disk.

It plugs into DSPy as a ``dspy.BaseLM`` subclass implementing ``forward``/``aforward`` (DSPy 3.4's legacy LM
interface; ``dspy<3.5`` is pinned). That path gets neither DSPy's cache nor its retries, so this class brings
its own cache, and a local model has no transient failures to retry. Unlike DSPy's engine interface it receives
``n`` whole, so the ``n`` samples of a self-consistency vote are generated in one batch.

A call renders the messages (:mod:`.prompts`), looks the request up in the :class:`GenerationCache`, and
otherwise queues it on the :class:`MicroBatcher`, whose worker generates batches (:mod:`.generation`). The
:class:`MemoryPlanner` cuts each batch into chunks whose KV cache fits the device (and halves a chunk that still runs
out of memory), and each chunk's shared prompt prefix is prefilled once (:class:`PrefixCache`). A prompt that
cannot run (longer than the model's context, or out of memory even alone) fails with :class:`NotRun`.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

import dspy

from medjp_agent.errors import ConfigError

from .adapters import active_adapter
from .batcher import MicroBatcher, Request
from .cache import GenerationCache, cache_key
from .completions import Generation, openai_response
from .decode import supports_fast_decoding
from .errors import NotRun
from .fingerprint import numerics_fingerprint
from .generation import generate, score
from .loading import LoadedModel, load
from .memory import MemoryPlanner, ModelShape, device_cap, free_device_cache, free_memory
from .options import LMOptions
from .params import GenerationParams
from .prefix import PrefixCache
from .prompts import RenderedPrompt, prompt_ids, render_prompt

#: Share of the memory budget the prefix KV cache may hold.
PREFIX_CACHE_SHARE = 0.05


@dataclass(frozen=True)
class BatchGroup:
    """What every request of one ``generate`` call shares."""

    adapter: str | None
    raw: bool
    params: GenerationParams


@dataclass
class BackendStats:
    """Counters of one loaded model, shared by every copy of its LM (``lm.copy()``)."""

    generate_calls: int = 0
    cache_hits: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    generation_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_batch(self, size: int, seconds: float) -> None:
        with self.lock:
            self.generate_calls += 1
            self.batch_sizes.append(size)
            self.generation_s += seconds

    def record_hit(self) -> None:
        with self.lock:
            self.cache_hits += 1


class HFLM(dspy.BaseLM):
    """A local Hugging Face causal LM (optionally 4-bit NF4, with PEFT adapters) for DSPy.

    Build it with :meth:`from_options`; every DSPy module and optimizer then uses it like any LM. Concurrent calls
    (``medjp eval --threads 16``, ``dspy.Evaluate(num_threads=16)``) are generated in batches of up to
    ``batch_size`` sequences, and finished generations are cached on disk, keyed by model and adapter fingerprint,
    rendered prompt and generation parameters.

    Example:
        >>> lm = HFLM.from_options(LMOptions(model="tokyotech-llm/Swallow-70b-instruct-hf", load_in_4bit=True,
        ...                                  adapters=("medical=./lora",)))
        >>> with dspy.context(lm=lm):
        ...     MedicalQA()(question="...", choices=[...])
        >>> lm.generate_calls, lm.cache_hits
    """

    def __init__(self, loaded: LoadedModel, *, batch_size: int = 16, cache: GenerationCache | None = None,
                 prefix_sharing: bool = True, max_memory: dict[str, str] | None = None, **kwargs: Any):
        super().__init__(model=loaded.name, model_type="chat", cache=False, **kwargs)
        self.loaded = loaded
        self.store = cache
        self.adapter: str | None = next(iter(loaded.adapters), None)
        self.stats = BackendStats()
        self.batch_size = batch_size
        self._numerics = numerics_fingerprint(loaded.model)
        self.memory = self._planner(max_memory or {})
        share = int(self.memory.budget() * PREFIX_CACHE_SHARE)
        self.prefixes = PrefixCache(share) if prefix_sharing and supports_fast_decoding(loaded.model) else None
        self._model_lock = threading.Lock()
        self._inflight: dict[str, Future] = {}
        self._inflight_lock = threading.Lock()
        self._batcher = MicroBatcher(self._run_batch, batch_size=batch_size)

    @classmethod
    def from_options(cls, opts: LMOptions) -> "HFLM":
        """Load the model ``opts`` names (default: the embedded tiny model)."""
        lm = cls(load(opts), batch_size=opts.batch_size,
                 cache=GenerationCache(opts.cache_dir) if opts.cache else None,
                 prefix_sharing=opts.prefix_cache, max_memory=opts.max_memory,
                 **opts.request())
        # At start-up, like the loading bar before it: what a batch may hold, before hours of generation.
        sys.stderr.write(lm.memory_summary() + "\n")
        return lm

    def _planner(self, max_memory: dict[str, str]) -> MemoryPlanner:
        model = self.loaded.model
        cap = device_cap(max_memory, model.device)
        weights = model.get_memory_footprint()
        # Split over several devices, this one holds only part of the weights, so a cap below all of them can fit.
        if cap is not None and cap <= weights and len(set(getattr(model, "hf_device_map", {}).values())) <= 1:
            from medjp_agent.envinfo import human_bytes

            raise ConfigError(f"--max-memory caps {model.device} at {human_bytes(cap)}, no more than the weights "
                              f"({human_bytes(weights)}): nothing is left for batches; raise the cap or leave it out")
        budget = (lambda: cap - weights) if cap is not None else (lambda: free_memory(model.device))

        def on_oom() -> None:
            if self.prefixes is not None:
                self.prefixes.clear()
            free_device_cache(model.device)

        return MemoryPlanner(ModelShape.of(model), budget, self.batch_size,
                             reserved=lambda: self.prefixes.nbytes if self.prefixes is not None else 0, on_oom=on_oom)

    def memory_summary(self, prompt_tokens: int = 2048) -> str:
        """One line for start-up: weights, memory budget, KV cache per token, and the largest batch it allows."""
        from medjp_agent.envinfo import human_bytes

        new = int(self.kwargs.get("max_tokens") or 512)
        length = min(prompt_tokens, max(1, (self.context_length or prompt_tokens + new) - new))
        plan = self.memory.describe(self.loaded.model.get_memory_footprint(), length, new)
        return (f"memory: weights {human_bytes(plan['weights'])} · budget {human_bytes(plan['budget'])} on "
                f"{self.loaded.model.device} · KV {human_bytes(plan['kv_per_token'])}/token · largest batch "
                f"{plan['largest_batch']} of ≤ {self.batch_size} at {length}+{new} tokens · prefix cache "
                f"{'on' if self.prefixes is not None else 'off'}")

    @property
    def context_length(self) -> int | None:
        """The model's longest sequence (prompt + generated tokens), if its config says."""
        return getattr(self.loaded.model.config.get_text_config(), "max_position_embeddings", None)

    # -- what the LM is ----------------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def generate_calls(self) -> int:
        """How many batches were generated (each one decoding pass over its sequences)."""
        return self.stats.generate_calls

    @property
    def cache_hits(self) -> int:
        """Requests answered from the on-disk cache without generating."""
        return self.stats.cache_hits

    @property
    def fingerprint(self) -> str:
        """Model fingerprint joined with its numerics' (:func:`numerics_fingerprint`) and the active adapter's: the
        model part of cache keys."""
        return self._fingerprint_with(self.adapter)

    def _fingerprint_with(self, adapter: str | None) -> str:
        return f"{self.loaded.fingerprint}+{self._numerics}+{self.loaded.adapters[adapter] if adapter else 'base'}"

    @property
    def adapters(self) -> list[str]:
        return list(self.loaded.adapters)

    def set_adapter(self, name: str | None) -> None:
        """Answer with adapter ``name`` from now on (None: the bare base model); the base is not reloaded.

        The choice belongs to this LM object, so ``lm.copy()`` can hold another adapter and both run at once.
        """
        if name is not None and name not in self.loaded.adapters:
            raise ValueError(f"no adapter named {name!r}; loaded: {', '.join(self.loaded.adapters) or 'none'}")
        self.adapter = name

    def describe(self) -> dict[str, str]:
        backend = "hf" + (f"-{self.loaded.quantization}" if self.loaded.quantization else "")
        return {"model": self.model, "adapter": self.adapter or "", "backend": backend}

    # -- DSPy's LM interface -----------------------------------------------------------------------------------------
    def forward(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any):
        """Generate for one call; returns an OpenAI-shaped chat completion with ``usage``."""
        return openai_response(self.complete(prompt, messages, **kwargs), self.model)

    async def aforward(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any):
        return openai_response(await asyncio.wrap_future(self._submit(prompt, messages, kwargs)), self.model)

    def complete(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None,
                 **kwargs: Any) -> Generation:
        """The :class:`Generation` for one call (what :meth:`forward` wraps for DSPy), blocking until done."""
        return self._submit(prompt, messages, kwargs).result()

    def _submit(self, prompt: str | None, messages: list[dict[str, Any]] | None, kwargs: dict[str, Any]) -> Future:
        """The future of this call's generation: already done on a cache hit, else queued for a batch."""
        merged = {**self.kwargs, **kwargs}
        # A per-call cache=False (DSPy's spelling) bypasses the cache, like --no-cache for the whole LM.
        use_cache = self.store is not None and merged.pop("cache", True)
        params = GenerationParams.from_kwargs(merged)
        rendered = render_prompt(self.tokenizer, messages, prompt)
        key = cache_key(self.fingerprint, rendered.raw, rendered.text, params, merged.get("rollout_id"))
        cached = self.store.get(key) if use_cache else None
        if cached is not None:
            self.stats.record_hit()
            done: Future = Future()
            done.set_result(replace(cached, generation_s=0.0))
            return done
        return self._generate(key, rendered, params, store=use_cache)

    def _generate(self, key: str, rendered: RenderedPrompt, params: GenerationParams, store: bool) -> Future:
        ids = prompt_ids(self.tokenizer, rendered)  # outside the lock: callers tokenize in parallel
        context = self.context_length
        if context is not None and len(ids) + params.max_new_tokens > context:
            failed: Future = Future()
            failed.set_exception(NotRun(f"prompt too long ({len(ids)} prompt + {params.max_new_tokens} new tokens > "
                                        f"the model's {context}-token context)"))
            return failed
        # Identical requests in flight share one generation: DSPy resubmits straggling examples, and a resubmitted
        # call would otherwise miss the cache, which is written only when the first one finishes.
        with self._inflight_lock:
            future = self._inflight.get(key)
            if future is None:
                group = BatchGroup(self.adapter, rendered.raw, params)
                future = self._batcher.submit(ids, group, weight=params.n, payload=key if store else None)
                self._inflight[key] = future
                future.add_done_callback(lambda _f: self._forget(key))
        return future

    def _forget(self, key: str) -> None:
        with self._inflight_lock:
            self._inflight.pop(key, None)

    def _run_batch(self, group: Hashable, requests: list[Request]) -> list[Generation | NotRun]:
        assert isinstance(group, BatchGroup)
        with self._model_lock, active_adapter(self.loaded.model, group.adapter):
            results = self.memory.run(requests, group.params.max_new_tokens,
                                      lambda chunk: self._generate_chunk(group, chunk))
        if self.store is not None:
            # One transaction for the batch: 16 callers writing at once queue on SQLite's lock with growing
            # back-off sleeps (measured: ~90 ms between a batch and the next, against 3 ms here).
            self.store.put_many((r.payload, g) for r, g in zip(requests, results)
                                if r.payload is not None and isinstance(g, Generation))
        return results

    def _generate_chunk(self, group: BatchGroup, requests: list[Request]) -> list[Generation]:
        """One ``generate`` call (under the model lock), its shared prefix taken from or added to the cache."""
        rows = [r.ids for r in requests]
        prefix = None if self.prefixes is None or not supports_fast_decoding(self.loaded.model) else \
            self.prefixes.for_batch(self.loaded.model, self._fingerprint_with(group.adapter), rows)
        results = generate(self.loaded.model, self.tokenizer, rows, group.params, prefix=prefix)
        self.stats.record_batch(len(requests), sum(g.generation_s for g in results))
        return results

    # -- scoring -----------------------------------------------------------------------------------------------------
    def score_continuations(self, messages: list[dict[str, Any]], continuations: Sequence[str]) -> list[float]:
        """Summed log-probability of each continuation's tokens appended to the prompt, with no generation.

        The prompt is rendered from ``messages`` exactly as :meth:`forward` renders it; each continuation is
        tokenized on its own (no special tokens) and appended. Useful as a continuous per-question score, e.g. the
        log-probability of the gold answer's text after the answer marker.
        """
        rendered = render_prompt(self.tokenizer, messages)
        ids = prompt_ids(self.tokenizer, rendered)
        conts = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        with self._model_lock, active_adapter(self.loaded.model, self.adapter):
            return score(self.loaded.model, self.tokenizer, ids, conts, self.batch_size)

    def close(self) -> None:
        """Stop the batch worker and close the cache, for this LM and every copy of it (they share both)."""
        self._batcher.close()
        if self.store is not None:
            self.store.close()
