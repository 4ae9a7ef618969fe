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


@pytest.fixture(params=["fused", "unfused"])
def bnb_cpu_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """The bitsandbytes 4-bit CPU kernel the models a test loads run: "fused" (AVX512-BF16: skipped on a host without
    it) or "unfused", forced through the flag each new ``Linear4bit`` takes; afterwards checks that the test really
    ran that kernel. Host-dependent, so every 4-bit inference test runs both. ``None`` (indirect) changes nothing."""
    if request.param is None:
        yield None
        return
    import bitsandbytes.nn.modules as bnb_modules

    from medjp_agent.lm.bnb_cpu import host_has_avx512bf16

    fused = request.param == "fused"
    if fused and not host_has_avx512bf16():
        pytest.skip("this CPU lacks AVX512-BF16: bitsandbytes has no fused 4-bit CPU kernel here")
    repack, repacked = bnb_modules._convert_weight_packed_for_cpu, []

    def counted_repack(*args, **kwargs):
        repacked.append(args)
        return repack(*args, **kwargs)

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: fused)
    monkeypatch.setattr(bnb_modules, "_convert_weight_packed_for_cpu", counted_repack)
    yield request.param
    assert bool(repacked) == fused, f"{request.param} kernel wanted; {len(repacked)} layers repacked for the fused one"


@pytest.fixture()
def scripted():
    """Factory: ``scripted(reply)`` -> a ScriptedLM answering with ``reply(prompt, kwargs)`` or a fixed string."""
    from medjp_agent.lm.scripted import ScriptedLM

    return ScriptedLM


@pytest.fixture()
def lm_options_from_flags():
    """Factory: ``lm_options_from_flags("--no-cache", ...)`` -> the :class:`LMOptions` a command receives."""
    import typer
    from typer.testing import CliRunner

    from medjp_agent.cli.options import with_lm_options

    def parse(*flags: str):
        seen = []
        app = typer.Typer()

        @app.command()
        @with_lm_options
        def probe(*, lm) -> None:
            seen.append(lm)

        result = CliRunner().invoke(app, list(flags))
        assert result.exit_code == 0, result.output
        return seen[0]

    return parse
