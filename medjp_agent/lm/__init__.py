"""LM backends. A backend is one DSPy LM; nothing here knows about formats or scoring.

- local Hugging Face models (optionally 4-bit NF4 with PEFT adapters), batched across threads, cached on disk;
- OpenAI-compatible servers (vLLM, ...) through :class:`~.api.APILM`, a ``dspy.BaseLM`` over one HTTP client.
Heavy libraries (torch, transformers) are imported only when a local model is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .options import LMOptions

if TYPE_CHECKING:
    import dspy


def build_lm(opts: LMOptions) -> "dspy.BaseLM":
    """The DSPy LM ``opts`` asks for: an API client with ``api_base``, else a local HF model (default: tiny)."""
    if opts.api_base:
        from .api import APILM
        from .cache import configure_dspy_cache

        if opts.cache:
            configure_dspy_cache()  # before the first request: DSPy otherwise builds its default, pickling cache
        return APILM.from_options(opts)
    from .hf import HFLM

    return HFLM.from_options(opts)


def describe_lm(lm: Any) -> dict[str, str]:
    """``{"model", "adapter", "backend"}`` for a run manifest; backends may provide ``describe()``."""
    if hasattr(lm, "describe"):
        return dict(lm.describe())
    return {"model": str(getattr(lm, "model", type(lm).__name__)), "adapter": "", "backend": type(lm).__name__}


def generation_settings(request: dict[str, Any]) -> dict[str, Any]:
    """The settings of an LM's default ``request`` (its ``kwargs``, or :meth:`LMOptions.request`) that change its
    answers, as a run manifest records them: resuming a run with other ones is refused. Greedy decoding ignores
    ``top_p``."""
    kept = {k: request[k] for k in ("temperature", "max_tokens", "top_p") if request.get(k) is not None}
    if not kept.get("temperature"):
        kept.pop("top_p", None)
    return kept


__all__ = ["LMOptions", "build_lm", "describe_lm", "generation_settings"]
