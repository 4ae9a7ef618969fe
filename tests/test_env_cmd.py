"""`medjp env`: versions, CPU features, the bitsandbytes 4-bit path and cache sizes, with no model loaded."""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medjp_agent.cli import app
from medjp_agent.envinfo import PACKAGES, cpu, human_bytes


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A MEDJP_HOME holding a generation cache of 1000 bytes and a tiny model of 3000 + 500, plus its lock file."""
    home = tmp_path / "home"
    (home / "generations").mkdir(parents=True)
    (home / "generations" / "cache.db").write_bytes(b"g" * 1000)
    (home / "tiny-llama-x" / "sub").mkdir(parents=True)
    (home / "tiny-llama-x" / "model.safetensors").write_bytes(b"m" * 3000)
    (home / "tiny-llama-x" / "sub" / "tokenizer.json").write_bytes(b"t" * 500)
    (home / "tiny-llama-x.lock").write_bytes(b"")
    monkeypatch.setenv("MEDJP_HOME", str(home))
    return home


def run_env(*args: str, monkeypatch: pytest.MonkeyPatch) -> str:
    # Importing any of these (so: loading a model) fails the command.
    for heavy in ("transformers", "peft", "trl", "accelerate", "dspy"):
        monkeypatch.setitem(sys.modules, heavy, None)
    result = CliRunner().invoke(app, ["env", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_env_json_reports_versions_host_path_and_cache_sizes(home: Path, monkeypatch: pytest.MonkeyPatch):
    from medjp_agent.lm.bnb_cpu import host_has_avx512bf16

    info = json.loads(run_env("--json", monkeypatch=monkeypatch))
    assert list(info["versions"]) == list(PACKAGES)
    assert {name: info["versions"][name] for name in ("torch", "transformers", "bitsandbytes", "dspy")} == {
        name: version(name) for name in ("torch", "transformers", "bitsandbytes", "dspy")}
    assert info["medjp_home"] == str(home)
    assert info["caches"] == [{"name": "generations", "bytes": 1000}, {"name": "tiny-llama-x", "bytes": 3500}]
    if not info["gpus"]:
        assert ("fused AVX512-BF16 kernel" in info["bnb_4bit_path"]) == host_has_avx512bf16()
    assert set(info["cpu"]["flags"]) <= {"AVX2", "AVX512", "AVX512-BF16", "AMX"}


def test_env_table_names_each_part(home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = run_env(monkeypatch=monkeypatch)
    for part in ("bitsandbytes 4-bit", "CUDA devices", "CPU", "optuna", "vllm", str(home), "tiny-llama-x", "3.4 KiB"):
        assert part in out


def test_cpu_features_come_from_cpuinfo(tmp_path: Path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f amx_tile\n\n"
                       "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f amx_tile\n")
    found = cpu(cpuinfo)
    assert found.model == "Test CPU 9000"
    assert found.flags == {"AVX2": True, "AVX512": True, "AVX512-BF16": False, "AMX": True}
    assert not cpu(tmp_path / "absent").flags


def test_sizes_read_as_people_write_them():
    assert [human_bytes(n) for n in (0, 1023, 1024, 3500, 5 << 20, 80 << 30)] == [
        "0 B", "1023 B", "1.0 KiB", "3.4 KiB", "5.0 MiB", "80.0 GiB"]
