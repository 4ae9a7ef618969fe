"""`GenerationParams`: the generation settings of one LM call, normalised from DSPy's request kwargs.

Two calls batch together only when their params are equal, and the params are part of the cache key, so
every spelling of "the same request" must normalise to one value (``max_tokens`` vs ``max_new_tokens``, a
temperature of 0 vs None, one stop string vs a list of one).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: Request kwargs that carry no generation setting: DSPy's cache-busting id for repeated samples, and
#: its name for ``n`` in some optimizers.
_NOT_GENERATION = {"rollout_id"}
_ALIASES = {"max_tokens": "max_new_tokens", "num_generations": "n"}


@dataclass(frozen=True)
class GenerationParams:
    """How to generate: greedy unless ``temperature`` > 0; ``n`` completions per prompt.

    Attributes:
        max_new_tokens: Most tokens generated per completion.
        min_new_tokens: Fewest tokens generated (end-of-sequence is suppressed before); benchmarks use it to
            force a fixed length.
        temperature: Sampling temperature; 0 is greedy decoding.
        top_p: Nucleus sampling mass (ignored when greedy).
        n: Completions per prompt (self-consistency samples), generated in the same batch.
        stop: Strings that end a completion; the stop string itself is not returned (OpenAI semantics).
    """

    max_new_tokens: int = 512
    min_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()

    @property
    def sampling(self) -> bool:
        return self.temperature > 0

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> "GenerationParams":
        """Params from DSPy-style kwargs (``max_tokens``, ``temperature``, ``top_p``, ``n``, ``stop``, ...).

        ``None`` means "not set". An unknown kwarg raises ``ValueError`` rather than being ignored silently, so a
        request for something this backend cannot do (``logprobs``, tools) fails loudly.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in kwargs.items():
            key = _ALIASES.get(key, key)
            if key in _NOT_GENERATION or value is None:
                continue
            if key not in names:
                raise ValueError(f"the local HF backend does not support the LM argument {key!r}")
            values[key] = value
        stop = values.get("stop", ())
        values["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
        params = cls(**values)
        if params.n < 1 or params.max_new_tokens < 1 or params.min_new_tokens > params.max_new_tokens:
            raise ValueError(f"invalid generation parameters: {params}")
        if not params.sampling:
            # Greedy decoding ignores these: normalise them so equal requests batch and cache together.
            params = dataclasses.replace(params, temperature=0.0, top_p=1.0)
        return params

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "stop": list(self.stop)}
