"""A run folder that already holds another run, found from what is known before a model loads.

:class:`~medjp_agent.results.RunWriter` refuses such a folder too, but only once the model is loaded (the manifest
names the loaded model). This check compares what the command line already says (kind, data, format, filters,
and the model when ``--model`` names it) so a 70B model is not loaded only to be refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medjp_agent.results import MANIFEST, RESULTS, RunMismatch, read_manifest


def check_run_folder(out: Path, *, model: str | None, **identity: Any) -> None:
    """Raise :class:`RunMismatch` when ``out`` holds a run whose ``identity`` fields (or model) differ: a run of
    another kind always, one of the same kind once it holds results."""
    if not (out / MANIFEST).exists():
        return
    previous = read_manifest(out / MANIFEST)
    wanted = {**identity, **({"model": model} if model else {})}
    held = previous.identity()
    if differ := previous.conflicts(wanted, (out / RESULTS).exists()):
        shown = "; ".join(f"{k}: {_short(held[k])} there, {_short(wanted[k])} now" for k in differ)
        raise RunMismatch(out, differ, shown, ", or leave --out out for a new folder named by model, format and time")


def _short(value: Any) -> str:
    if isinstance(value, dict) and "name" in value:
        return str(value["name"])
    return repr(value)
