"""Shared fixtures: offline settings, a scripted LM, the tiny model, and the IgakuQA data when present."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*kernels.*")

IGAKUQA = Path(__file__).resolve().parents[1].parent / "shared" / "igakuqa"


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory):
    """Caches (tiny model, generations, DSPy) live in a session temp dir, never in the user's home."""
    home = tmp_path_factory.mktemp("medjp_home")
    os.environ["MEDJP_HOME"] = str(home)
    os.environ["DSPY_CACHEDIR"] = str(home / "dspy")
    yield home


@pytest.fixture()
def igakuqa() -> Path:
    if not (IGAKUQA / "data").is_dir():
        pytest.skip("../shared/igakuqa is not present")
    return IGAKUQA


@pytest.fixture(scope="session")
def tiny_model(_isolated_home: Path) -> Path:
    """The tiny random Llama (built once per session, ~10 s), saved like a hub model."""
    from medjp_agent.lm.tiny import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture()
def scripted():
    """Factory: ``scripted(reply)`` -> a ScriptedLM answering with ``reply(prompt, kwargs)`` or a fixed string."""
    from medjp_agent.lm.scripted import ScriptedLM

    return ScriptedLM
