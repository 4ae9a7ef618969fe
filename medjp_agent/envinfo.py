"""What a bug report needs to know about this install and host (``medjp env``): library versions, the GPUs or the
CPU and its kernel-picking features, the bitsandbytes 4-bit path, and the caches under ``MEDJP_HOME``.

Collecting it imports torch (for the devices) and bitsandbytes (for its own CPU test), never a model.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

#: Distributions a report names, in this order; those not installed are reported as such (vLLM is optional).
PACKAGES = ("medjp-agent", "torch", "transformers", "peft", "trl", "bitsandbytes", "dspy", "optuna", "vllm")
#: CPU features that decide which kernels run, by their /proc/cpuinfo names.
CPU_FLAGS = {"AVX2": "avx2", "AVX512": "avx512f", "AVX512-BF16": "avx512_bf16", "AMX": "amx_tile"}


@dataclass(frozen=True)
class Sized:
    """A named thing and its size in bytes: a GPU and its memory, or a cache and its files."""

    name: str
    bytes: int


@dataclass(frozen=True)
class Cpu:
    """``flags`` maps each :data:`CPU_FLAGS` name to whether the CPU has it; empty where the OS does not say."""

    model: str
    cores: int
    flags: dict[str, bool]
    torch_capability: str


@dataclass(frozen=True)
class EnvInfo:
    """The report; ``versions`` holds None for a package that is not installed."""

    python: str
    platform: str
    versions: dict[str, str | None]
    gpus: tuple[Sized, ...]
    cpu: Cpu
    bnb_4bit_path: str
    medjp_home: str
    caches: tuple[Sized, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect() -> EnvInfo:
    from medjp_agent.paths import medjp_home

    home = medjp_home()
    return EnvInfo(python=platform.python_version(), platform=platform.platform(), versions=versions(),
                   gpus=gpus(), cpu=cpu(), bnb_4bit_path=bnb_4bit_path(), medjp_home=str(home), caches=caches(home))


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def gpus() -> tuple[Sized, ...]:
    import torch

    if not torch.cuda.is_available():
        return ()
    props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    return tuple(Sized(p.name, int(p.total_memory)) for p in props)


def cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> Cpu:
    """The CPU model and features from ``cpuinfo`` (Linux); elsewhere the model only, as the platform names it."""
    import torch

    model, flags = platform.processor() or platform.machine(), {}
    if cpuinfo.is_file():
        first_cpu = cpuinfo.read_text(errors="replace").split("\n\n")[0]
        pairs = (line.partition(":") for line in first_cpu.splitlines())
        fields = {key.strip(): value.strip() for key, _, value in pairs}
        model = fields.get("model name", model)
        present = set(fields.get("flags", "").split())
        flags = {name: flag in present for name, flag in CPU_FLAGS.items()}
    return Cpu(model=model, cores=os.cpu_count() or 0, flags=flags,
               torch_capability=torch.backends.cpu.get_cpu_capability())


def bnb_4bit_path() -> str:
    try:
        version("bitsandbytes")
    except PackageNotFoundError:
        return "none: bitsandbytes is not installed"
    from medjp_agent.lm.bnb_cpu import host_path

    # On AVX512-BF16 hosts importing bitsandbytes logs that an optional faster kernel package is absent: not news here.
    quiet = logging.getLogger("bitsandbytes")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return host_path()
    finally:
        quiet.setLevel(level)


def caches(home: Path) -> tuple[Sized, ...]:
    """Each folder or file directly under ``home`` (tiny models, generations, DSPy, demo adapters), with its size."""
    if not home.is_dir():
        return ()
    entries = sorted(e for e in home.iterdir() if not e.name.endswith(".lock"))
    return tuple(Sized(entry.name, _size(entry)) for entry in entries)


def _size(path: Path) -> int:
    if not path.is_dir():
        return path.lstat().st_size
    return sum((Path(root) / f).lstat().st_size for root, _, files in os.walk(path) for f in files)


def human_bytes(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    step = 0
    while n >= 1024 and step < len(units) - 1:
        n, step = n / 1024, step + 1
    return f"{n:.0f} B" if step == 0 else f"{n:.1f} {units[step]}"
