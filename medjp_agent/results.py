"""The one results schema that `medjp eval`, `score`, `search` and `optimize` write and `medjp report` reads.

A run folder holds:
- ``results.jsonl``: one :class:`QuestionResult` per line, appended as questions finish (so a killed run resumes);
- ``summary.json``: a :class:`RunSummary` (overall and grouped aggregates, LM usage);
- ``manifest.json``: a :class:`RunManifest` (what ran: data, filters, model, adapter, format, versions).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medjp_agent.scoring import QuestionResult, aggregate, aggregate_by

RESULTS, SUMMARY, MANIFEST = "results.jsonl", "summary.json", "manifest.json"
_GROUPS = ("year", "section", "category", "qtype")


class RunMismatch(ValueError):
    """Resuming into a folder that holds a different run (other model, format or data)."""


@dataclass(frozen=True)
class RunManifest:
    """What a run was. ``identity`` fields must match for a re-run to resume into the same folder."""

    name: str
    kind: str
    data: str
    model: str = ""
    adapter: str = ""
    backend: str = ""
    system: str = ""
    format: dict[str, Any] | None = None
    optimizer: str = ""
    filters: dict[str, Any] = field(default_factory=dict)
    n_questions: int = 0
    command: tuple[str, ...] = ()
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("kind", "data", "model", "adapter", "system", "format", "optimizer", "filters")}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunManifest":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["command"] = tuple(kw.get("command", ()))
        return cls(**kw)

    @classmethod
    def create(cls, **kw: Any) -> "RunManifest":
        from medjp_agent import __version__

        versions = {"medjp_agent": __version__, "python": platform.python_version()}
        for mod in ("dspy", "optuna", "torch", "transformers", "peft", "bitsandbytes"):
            if mod in sys.modules:
                versions[mod] = getattr(sys.modules[mod], "__version__", "")
        return cls(created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), command=tuple(sys.argv), versions=versions, **kw)


@dataclass(frozen=True)
class RunSummary:
    n_questions: int
    overall: dict[str, Any]
    groups: dict[str, dict[str, dict[str, Any]]]
    lm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generation_s: float = 0.0
    wall_s: float = 0.0
    complete: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return float(self.overall.get("accuracy", 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "accuracy": self.accuracy}

    @classmethod
    def from_results(cls, results: list[QuestionResult], *, n_expected: int | None = None, **kw: Any) -> "RunSummary":
        return cls(
            n_questions=len(results),
            overall=aggregate(results).to_dict(),
            groups={g: {k: a.to_dict() for k, a in aggregate_by(results, g).items()} for g in _GROUPS},
            lm_calls=sum(r.lm_calls for r in results),
            prompt_tokens=sum(r.prompt_tokens for r in results),
            completion_tokens=sum(r.completion_tokens for r in results),
            generation_s=round(sum(r.generation_s for r in results), 3),
            complete=n_expected is None or len(results) >= n_expected,
            **kw,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSummary":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)  # atomic: a reader never sees half a summary


def read_results(path: Path) -> list[QuestionResult]:
    """Read ``results.jsonl``; a torn last line (a kill mid-write) is ignored, any other bad line is an error."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    out = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(QuestionResult.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError) as e:
            if i >= len(lines) - 1:
                break
            raise ValueError(f"{path}:{i}: not a question result ({e})") from None
    return out


class RunWriter:
    """Appends results to a run folder as they finish; thread-safe; resumes a folder holding the same run."""

    def __init__(self, run_dir: str | Path, manifest: RunManifest):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest = manifest
        self._lock = threading.Lock()
        old = self.dir / MANIFEST
        if old.exists() and (self.dir / RESULTS).exists():
            previous = RunManifest.from_dict(json.loads(old.read_text(encoding="utf-8")))
            if previous.identity() != manifest.identity():
                diff = [k for k, v in manifest.identity().items() if previous.identity()[k] != v]
                raise RunMismatch(f"{self.dir} holds a different run ({', '.join(diff)} differ); use another --out")
        self._results = {r.id: r for r in read_results(self.dir / RESULTS)}
        self._repair_tail()
        _write_json(old, manifest.to_dict())

    def _repair_tail(self) -> None:
        # Rewrite the file from what parsed, so a torn last line cannot glue onto the next append.
        path = self.dir / RESULTS
        if path.exists():
            path.write_text("".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in self._results.values()),
                            encoding="utf-8")

    @property
    def done_ids(self) -> set[str]:
        return set(self._results)

    @property
    def results(self) -> list[QuestionResult]:
        return list(self._results.values())

    def write(self, result: QuestionResult) -> None:
        line = json.dumps(result.to_dict(), ensure_ascii=False) + "\n"
        with self._lock, (self.dir / RESULTS).open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            self._results[result.id] = result

    def finalize(self, *, n_expected: int | None = None, wall_s: float = 0.0, **extra: Any) -> RunSummary:
        summary = RunSummary.from_results(self.results, n_expected=n_expected, wall_s=round(wall_s, 3), extra=extra)
        _write_json(self.dir / SUMMARY, summary.to_dict())
        return summary


@dataclass(frozen=True)
class Run:
    """A finished (or partial) run folder, as `medjp report` sees it."""

    path: Path
    manifest: RunManifest
    summary: RunSummary
    results: tuple[QuestionResult, ...]

    @property
    def label(self) -> str:
        return self.manifest.name or self.path.name


def read_run(run_dir: str | Path) -> Run:
    path = Path(run_dir)
    for name in (MANIFEST, RESULTS):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path}: not a run folder (no {name})")
    manifest = RunManifest.from_dict(json.loads((path / MANIFEST).read_text(encoding="utf-8")))
    results = read_results(path / RESULTS)
    summary_path = path / SUMMARY
    summary = (RunSummary.from_dict(json.loads(summary_path.read_text(encoding="utf-8"))) if summary_path.exists()
               else RunSummary.from_results(results, n_expected=manifest.n_questions))
    return Run(path, manifest, summary, tuple(results))
