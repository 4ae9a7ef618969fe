"""What ``--model`` names, checked before anything loads, with errors that say what to do.

A hub id (``org/name``) is left to transformers. Something that looks like a path must be a transformers model
folder: one that does not exist, a file, a PEFT adapter folder, or a folder without ``config.json`` is refused
with a :class:`~medjp_agent.errors.ConfigError` saying which and what to pass instead. With no ``--model`` a
notice says, once, that the embedded random tiny model answers at chance level.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

from medjp_agent.errors import ConfigError

CONFIG, ADAPTER_CONFIG = "config.json", "adapter_config.json"


def looks_like_path(model: str) -> bool:
    """A local path rather than a hub id: starts like a path, has more parts than ``org/name``, or its ``org``
    part is a local folder (``models/swallow`` next to a ``models/`` folder)."""
    return (model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1 or model.endswith("/")
            or ("/" in model and Path(model).parent.is_dir()))


def _adapter_base(folder: Path) -> str:
    try:
        return str(json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
                   or "BASE")
    except (OSError, ValueError, AttributeError):
        return "BASE"


def check_model_source(model: str | None) -> None:
    """Refuse a ``--model`` that cannot be a model, naming what it is; print the tiny-model notice for None."""
    if model is None:
        tiny_model_notice()
        return
    path = Path(model).expanduser()
    if not path.exists():
        if looks_like_path(model):
            raise ConfigError(f"--model {model}: no such folder (a local model is a folder holding {CONFIG}; "
                              "a hub id looks like org/name)")
        return
    if not path.is_dir():
        raise ConfigError(f"--model {model}: is a file; give the model's folder (holding {CONFIG}) or a hub id")
    if (path / ADAPTER_CONFIG).exists() and not (path / CONFIG).exists():
        raise ConfigError(f"--model {model}: this folder is a PEFT adapter ({ADAPTER_CONFIG}); pass its base model "
                          f"with --model {_adapter_base(path)} and this folder with --adapter {model}")
    if not (path / CONFIG).exists():
        held = ", ".join(sorted(p.name for p in path.iterdir())[:5]) or "nothing"
        raise ConfigError(f"--model {model}: no {CONFIG} in this folder (it holds {held}), so it is not a "
                          "transformers model folder; give the folder that holds config.json and the weights")


@functools.cache
def tiny_model_notice() -> None:
    """Said once per process, before the model loads: results without --model mean nothing about any real model."""
    from rich.console import Console

    Console(stderr=True, width=None if sys.stderr.isatty() else 160).print(
        "[yellow]note:[/] no --model given: using the embedded random tiny Llama, whose answers are at chance "
        "level. Pass --model ORG/NAME or a model folder to evaluate a real model.", highlight=False)
