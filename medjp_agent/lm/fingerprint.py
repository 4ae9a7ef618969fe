"""Fingerprints of model and adapter weights, so cached generations never mix models.

A fingerprint must change whenever the weights or tokenizer change, yet must not read tens of gigabytes: for a
local folder it hashes every file's relative name and size, small files (configs, tokenizer, safetensors index)
whole, and the first and last MiB of large ones (the safetensors header and the first and last tensor bytes,
which differ between two checkpoints of the same shapes). Modification times are left out, so a copied
folder keeps its fingerprint. A hub id is identified by the commit of its downloaded snapshot.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_WHOLE_FILE_LIMIT = 1 << 20
_EDGE = 1 << 20


def fingerprint(name_or_path: str | Path) -> str:
    """A short stable id of a model or adapter: a local folder's content digest, or ``hub-id@commit``."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return f"folder:{folder_digest(path)}"
    return f"{name_or_path}@{_hub_commit(str(name_or_path))}"


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and not _hidden(p.relative_to(folder))):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(folder).as_posix()}\0{size}\0".encode())
        with file.open("rb") as fh:
            if size <= _WHOLE_FILE_LIMIT:
                digest.update(fh.read())
            else:
                digest.update(fh.read(_EDGE))
                fh.seek(size - _EDGE)
                digest.update(fh.read(_EDGE))
    return digest.hexdigest()[:16]


def _hidden(relative: Path) -> bool:
    # Lock files and caches (.cache/huggingface, .locks) change without the weights changing.
    return any(part.startswith(".") for part in relative.parts) or relative.suffix == ".lock"


def _hub_commit(repo_id: str) -> str:
    """The commit of the cached snapshot (``.../snapshots/<commit>/config.json``), or "unresolved"."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "adapter_config.json"):
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return Path(found).parent.name
    return "unresolved"


def numerics_fingerprint(model: Any) -> str:
    """A digest of everything besides the weights that changes what ``model`` generates.

    Quantization and its settings (NF4 vs int8, double quantization, compute dtype), the dtypes of the weights,
    the attention kernel, and the versions of the libraries that compute (torch, transformers, and bitsandbytes
    or peft where used). Two loads of one checkpoint with other settings then never share cached generations.
    The device is left out: a cache filled on one GPU serves another.
    """
    config = model.config
    quant = getattr(config, "quantization_config", None)
    libraries = ["torch", "transformers"] + (["bitsandbytes"] if quant is not None else []) + (
        ["peft"] if hasattr(model, "peft_config") else [])
    parts = {
        "quantization": quant.to_dict() if hasattr(quant, "to_dict") else quant,
        "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
        "attention": getattr(config, "_attn_implementation", None),
        "versions": {name: _version(name) for name in libraries},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "absent"
