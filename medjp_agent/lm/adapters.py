"""PEFT LoRA adapters: several loaded onto one base model, switched by name without reloading the base."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from medjp_agent.errors import ConfigError

from .fingerprint import fingerprint


@dataclass(frozen=True)
class AdapterSpec:
    """One ``--adapter`` value: ``PATH_OR_ID`` (named after its last path component) or ``NAME=PATH_OR_ID``."""

    name: str
    source: str

    @classmethod
    def parse(cls, spec: str) -> "AdapterSpec":
        name, sep, source = spec.partition("=")
        if not sep:
            source = spec
            name = PurePath(spec.rstrip("/")).name
        if not name or not source:
            raise ValueError(f"--adapter {spec!r}: expected PATH, HUB_ID or NAME=PATH")
        return cls(name=name, source=source)


def parse_adapters(specs: Sequence[str]) -> list[AdapterSpec]:
    parsed = [AdapterSpec.parse(s) for s in specs]
    names = [a.name for a in parsed]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"two adapters are named {duplicates[0]!r}; name them explicitly with NAME=PATH")
    for adapter in parsed:
        check_adapter_folder(adapter.source)
    return parsed


def check_adapter_folder(source: str) -> None:
    """Refuse a local adapter folder whose config PEFT cannot read, naming the file; PEFT's own error is a bare
    ``KeyError: 'peft_type'``. Hub ids and missing folders are left to PEFT, which says those clearly."""
    from .model_path import ADAPTER_CONFIG

    config = Path(source).expanduser() / ADAPTER_CONFIG
    if not config.is_file():
        return
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"--adapter {source}: cannot read {config}: {e}") from None
    if not isinstance(raw, dict) or not raw.get("peft_type"):
        raise ConfigError(f"--adapter {source}: {config} has no \"peft_type\" (a LoRA adapter's is \"LORA\"); "
                          "is this a PEFT adapter folder?")
    # PEFT, finding no weights here, looks for them on the hub under the folder's path and says it is no repo id.
    if not any(config.parent.glob("adapter_model.*")):
        raise ConfigError(f"--adapter {source}: no adapter weights (adapter_model.safetensors) next to {config.name}")


def attach_adapters(model: Any, adapters: Sequence[AdapterSpec]) -> tuple[Any, dict[str, str]]:
    """Load every adapter onto ``model``; returns the PEFT model and each adapter's fingerprint by name."""
    from peft import PeftModel

    if not adapters:
        return model, {}
    base, peft_model = model.config.name_or_path, None
    for adapter in adapters:
        try:
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(model, adapter.source, adapter_name=adapter.name,
                                                       is_trainable=False)
            else:
                peft_model.load_adapter(adapter.source, adapter_name=adapter.name, is_trainable=False)
        except RuntimeError as e:
            if (refused := other_shapes(e, adapter.source, base)) is None:
                raise
            raise refused from None
    peft_model.eval()
    return peft_model, {a.name: fingerprint(a.source) for a in adapters}


def other_shapes(error: RuntimeError, adapter: str, base: str) -> ConfigError | None:
    """PEFT's error for an adapter trained on a base of other shapes, in one line (PEFT lists every mismatched
    tensor: hundreds of lines for a real model, the first shows the cause); None for any other error."""
    lines = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
    if not lines:
        return None
    return ConfigError(f"{adapter} does not fit the base model {base}, whose layers have other shapes (was the "
                       f"adapter trained on another base?): {lines[0]}")


@contextlib.contextmanager
def active_adapter(model: Any, name: str | None) -> Iterator[None]:
    """Run the model with adapter ``name``, or the bare base model when ``name`` is None."""
    if not hasattr(model, "peft_config"):
        yield
    elif name is None:
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(name)
        yield
