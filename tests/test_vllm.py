"""vLLM as a tested engine: `medjp eval --api-base` against a real vLLM server answers as the local backend does.

The server (vLLM's CPU build, from the environment ``MEDJP_VLLM_PYTHON`` names; `.ci/run` makes it) serves the tiny
model and a LoRA adapter with random, non-zero weights. Greedy fp32 answers through it, for the base and for the
adapter, on /v1/completions (raw prompts) and /v1/chat/completions (chat formats), equal the local Hugging Face
backend's for the same model and adapter. Skips where vLLM is not installed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medjp_agent.cli import app
from medjp_agent.signatures import resolve_format

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from test_lm_adapters import make_adapters  # noqa: E402
from vllm_server import VLLMServer, unavailable_reason  # noqa: E402

UNAVAILABLE = unavailable_reason()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))]
ADAPTER = "medical"
#: Enough questions and tokens for random weights to tell two models apart in every answer.
EVAL = ["--limit", "8", "--max-new-tokens", "24", "--threads", "8", "--no-cache"]
PAPER = "paper-instruction-in-header"


@pytest.fixture(scope="module")
def adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapters(tiny_model, tmp_path_factory.mktemp("vllm-lora"), [3])[0]


@pytest.fixture(scope="module")
def server(tiny_model: Path, adapter: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with VLLMServer(tiny_model, "tiny", loras={ADAPTER: adapter}, max_lora_rank=8, log=log) as running:
        yield running
    # The context stopped it by its process id; nothing may be left listening.
    assert running.process is None


def answers(out: Path, *args: str) -> dict[str, tuple[list[str], str]]:
    """``medjp eval`` into ``out``: each question's parsed answer and completion text, by question id."""
    result = CliRunner().invoke(app, ["eval", "--out", str(out), *EVAL, *args])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    # vLLM's incremental detokenizer withholds a trailing incomplete UTF-8 sequence that a full decode renders
    # as U+FFFD (a byte-level BPE model may stop mid-character): the same tokens, shown one character apart.
    return {r["id"]: (r["answer"], r["completion"].rstrip("\ufffd")) for r in rows}


def chat_format(folder: Path) -> Path:
    """The paper's format sent as chat messages: through the model's chat template, on /v1/chat/completions."""
    path = folder / "chat.yaml"
    fmt = resolve_format(PAPER).replace(name="paper-chat", chat=True)
    path.write_text(yaml.safe_dump({fmt.name: fmt.to_dict()}, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_vllm_answers_equal_the_local_backend_for_base_and_adapter(server, tiny_model, adapter, tmp_path, chat):
    fmt = ["--format", str(chat_format(tmp_path)) if chat else PAPER]
    local = [*fmt, "--model", str(tiny_model), "--dtype", "float32"]
    served_base = answers(tmp_path / "vllm-base", *fmt, "--api-base", server.url, "--model", "tiny")
    served_lora = answers(tmp_path / "vllm-lora", *fmt, "--api-base", server.url, "--model", ADAPTER)
    local_base = answers(tmp_path / "hf-base", *local)
    local_lora = answers(tmp_path / "hf-lora", *local, "--adapter", f"{ADAPTER}={adapter}")
    assert len(served_base) == 8
    assert served_base == local_base
    assert served_lora == local_lora
    # The server really applied the adapter: it changes every completion.
    assert all(served_lora[q][1] != served_base[q][1] for q in served_base)
