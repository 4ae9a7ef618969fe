"""How a run asks for its LM: one options record shared by `eval`, `search`, `optimize` and the Python API."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: The ``name`` of the single user message that carries a raw completion prompt: a backend sends its content to
#: the model verbatim (no chat template); any other message list goes through the model's chat template.
RAW_PROMPT = "raw_prompt"


@dataclass(frozen=True)
class LMOptions:
    """Which model answers, and how.

    With neither ``model`` nor ``api_base`` the embedded default is used: a tiny random Llama built and cached
    locally, so every command runs offline (its accuracy is chance level).
    """

    model: str | None = None
    adapters: tuple[str, ...] = ()
    api_base: str | None = None
    api_key: str | None = None
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    dtype: str = "auto"
    device_map: str | None = None
    max_memory: dict[str, str] = field(default_factory=dict)
    trust_remote_code: bool = False
    batch_size: int = 16
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    cache: bool = True
    cache_dir: Path | None = None
    #: Prefill a batch's shared prompt prefix once and keep it across batches (``--no-prefix-cache`` turns it off).
    prefix_cache: bool = True
    #: Seconds an API backend waits for one reply, and how often it retries a failed request (with backoff).
    timeout: float = 600.0
    retries: int = 4

    def request(self) -> dict[str, float | int]:
        """The LM's default request settings, by DSPy's names."""
        return {"temperature": self.temperature, "max_tokens": self.max_new_tokens, "top_p": self.top_p}
