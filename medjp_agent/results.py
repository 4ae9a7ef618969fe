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
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medjp_agent.data.errors import DataError
from medjp_agent.data.fields import check_types
from medjp_agent.data.textfile import (
    MAX_RESULT_LINE_BYTES, check_file, decode_line, parse_json, raw_lines, read_json_object, too_long,
)
from medjp_agent.errors import MedjpError
from medjp_agent.paths import replace_text
from medjp_agent.redact import redact_argv, redact_text
from medjp_agent.scoring import QuestionResult, aggregate, aggregate_by

RESULTS, SUMMARY, MANIFEST = "results.jsonl", "summary.json", "manifest.json"
#: The ``filters`` key listing the bad input records a ``--lenient`` load skipped (:func:`skipped_filter`).
SKIPPED = "skipped"
#: Skipped records listed one by one in a manifest; past that, a count (every search trial's manifest holds it).
MAX_SKIPPED_LISTED = 100
_GROUPS = ("year", "section", "category", "qtype")


class RunMismatch(MedjpError, ValueError):
    """Resuming into a folder that holds a different run (other model, format or data): ``differ`` names the
    identity fields that differ, ``detail`` how, ``hint`` what else to do than choose another folder."""

    def __init__(self, folder: Path, differ: Sequence[str], detail: str = "", hint: str = ""):
        verb = "differs" if len(differ) == 1 else "differ"
        super().__init__(f"{folder} holds a different run ({', '.join(differ)} {verb})"
                         f"{': ' + detail if detail else ''}; use another --out{hint}")


def skipped_filter(skipped: Sequence[str]) -> dict[str, Any]:
    """The ``filters`` entry recording the bad records a lenient load skipped, each with its located reason (the
    first :data:`MAX_SKIPPED_LISTED`), and their count; empty when none were."""
    return {SKIPPED: {"count": len(skipped), "records": list(skipped[:MAX_SKIPPED_LISTED])}} if skipped else {}


def selection_filters(filters: dict[str, Any]) -> dict[str, Any]:
    """The ``filters`` that select questions: all but the record of skipped bad records."""
    return {k: v for k, v in filters.items() if k != SKIPPED}


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
    generation: dict[str, Any] = field(default_factory=dict)
    n_questions: int = 0
    command: tuple[str, ...] = ()
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("kind", "data", "model", "adapter", "system", "format", "optimizer",
                                              "filters", "generation")}

    def same(self, key: str, value: Any) -> bool:
        """Whether identity field ``key`` equals ``value``; runs recorded before generation settings were (empty)
        match any, as runs recorded before column mappings were match any mapping. The bad records a lenient load
        skipped are recorded in ``filters`` but select nothing: a run resumed after the file was mended asks the
        mended questions too."""
        mine = getattr(self, key)
        if key == "filters":
            mine, value = selection_filters(mine), selection_filters(value)
            if "columns" not in mine:
                value = {k: v for k, v in value.items() if k != "columns"}
        return mine == value or (key == "generation" and not mine)

    def conflicts(self, wanted: dict[str, Any], has_results: bool) -> list[str]:
        """The identity fields of ``wanted`` that keep a run from resuming into this one's folder (empty: it may): a
        run of another kind always, one of the same kind once the folder holds results (a search keeps its results
        in trials/, not results.jsonl; a folder with none has nothing to lose)."""
        held = self.identity()
        differ = [k for k, v in wanted.items() if k in held and not self.same(k, v)]
        return differ if "kind" in differ or (differ and has_results) else []

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
        return cls(created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), command=redact_argv(sys.argv), versions=versions, **kw)


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
            complete=(n_expected is None or len(results) >= n_expected) and not any(r.not_run for r in results),
            **kw,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSummary":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _write_json(path: Path, obj: Any) -> None:
    # Whole or not at all (a reader never sees half a summary), and never with a credential in a URL or a key.
    replace_text(path, redact_text(json.dumps(obj, ensure_ascii=False, indent=2)) + "\n")


#: Types a reader relies on: a file that breaks them is a located error, not a traceback deep in a report.
_RESULT_TYPES = {"id": str, "year": int, "section": str, "category": str, "qtype": str, "gold": list, "answer": list,
                 "correct": bool, "points": int, "points_possible": int}
_RESULT_OPTIONAL = {"forbidden_picked": list, "parse_error": str, "lm_calls": int, "prompt_tokens": int,
                    "completion_tokens": int, "generation_s": (int, float), "text_only": bool, "samples": list,
                    "prompt": (str, list)}
_MANIFEST_TYPES = {"name": str, "kind": str, "data": str}
_MANIFEST_OPTIONAL = {"model": str, "adapter": str, "backend": str, "system": str, "optimizer": str, "format": dict,
                      "filters": dict, "generation": dict, "n_questions": int, "command": list, "created": str,
                      "versions": dict, "extra": dict}
_FILTER_TYPES = {"years": list, "sections": list, "text_only": bool, "qtypes": list, "n_choices": list, "limit": int,
                 "preset": str, "columns": dict, SKIPPED: dict}
_SUMMARY_TYPES = {"n_questions": int, "overall": dict, "groups": dict}
_SUMMARY_OPTIONAL = {"lm_calls": int, "prompt_tokens": int, "completion_tokens": int, "generation_s": (int, float),
                     "wall_s": (int, float), "complete": bool, "extra": dict}


def _result_line(raw: bytes | None, path: Path, lineno: int) -> QuestionResult | None:
    """One ``results.jsonl`` line as a result (None when blank); a bad line is a located :class:`DataError`."""
    if raw is None:
        raise too_long(path, lineno, MAX_RESULT_LINE_BYTES)
    line = decode_line(raw, path, lineno).strip()
    if not line:
        return None
    obj = parse_json(line, path, lineno)
    if not isinstance(obj, dict):
        raise DataError(path, lineno, None, f"expected a JSON object (a question result), got {type(obj).__name__}")
    check_types(obj, _RESULT_TYPES, _RESULT_OPTIONAL, path, lineno)
    return QuestionResult.from_dict(obj)


def read_results(path: Path) -> list[QuestionResult]:
    """Read ``results.jsonl``; a torn last line (a kill mid-write: no final newline) is ignored, any other bad line
    is a :class:`DataError` naming file, line and field."""
    if not path.exists():
        return []
    check_file(path)
    out = []
    for lineno, raw in raw_lines(path, MAX_RESULT_LINE_BYTES):
        try:
            result = _result_line(raw, path, lineno)
        except DataError:
            if raw is not None and not raw.endswith(b"\n"):  # only a file's last line can lack its newline
                break
            raise
        if result is not None:
            out.append(result)
    return _counted_once(out, path)


def _counted_once(results: list[QuestionResult], path: Path) -> list[QuestionResult]:
    """Each question once (its last line), with a warning when a file repeats some: folders written before run
    folders were locked may hold two processes' lines."""
    unique = {r.id: r for r in results}
    # A question recorded as not run and asked again on resume has two lines by design: only others are repeats.
    asked = [r.id for r in results if not r.not_run]
    if len(set(asked)) < len(asked):
        repeated = [qid for qid, n in Counter(asked).items() if n > 1]
        warnings.warn(f"{path}: {len(repeated)} questions appear more than once ({len(results) - len(unique)} extra "
                      f"lines, first {repeated[0]!r}); each is counted once, by its last line", stacklevel=3)
    return list(unique.values())


def read_manifest(path: Path) -> RunManifest:
    """A run's ``manifest.json``; a bad file is a located :class:`DataError`."""
    obj = read_json_object(path)
    check_types(obj, _MANIFEST_TYPES, _MANIFEST_OPTIONAL, path, None)
    # A search's filters are taken again by `optimize --from-search`: a bad one is named here, not deep in a load.
    check_types({f"filters.{k}": v for k, v in (obj.get("filters") or {}).items()}, {},
                {f"filters.{k}": kind for k, kind in _FILTER_TYPES.items()}, path, None)
    return RunManifest.from_dict(obj)


def read_summary(path: Path) -> RunSummary:
    """A run's ``summary.json``; a bad file is a located :class:`DataError`."""
    obj = read_json_object(path)
    check_types(obj, _SUMMARY_TYPES, _SUMMARY_OPTIONAL, path, None)
    return RunSummary.from_dict(obj)


class RunWriter:
    """Appends results to a run folder as they finish; thread-safe; resumes a folder holding the same run.

    It is an observer of :func:`medjp_agent.evaluate.evaluate` (``on_result``) and never stops a run. With
    ``resume=False`` the folder's previous results are dropped, for a run recomputed whole each time (scoring
    prediction files, which may have changed since).
    """

    def __init__(self, run_dir: str | Path, manifest: RunManifest, *, resume: bool = True):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest = manifest
        self._lock = threading.Lock()
        self._file: Any = None
        old = self.dir / MANIFEST
        if old.exists():
            previous = read_manifest(old)
            if diff := previous.conflicts(manifest.identity(), (self.dir / RESULTS).exists()):
                raise RunMismatch(self.dir, diff)
        if resume:
            self._results = {r.id: r for r in read_results(self.dir / RESULTS)}
            self._repair_tail()
        else:
            self._results = {}
            replace_text(self.dir / RESULTS, "")
        _write_json(old, manifest.to_dict())

    def _repair_tail(self) -> None:
        # Rewrite the file from what parsed, so a torn last line cannot glue onto the next append.
        path = self.dir / RESULTS
        if path.exists():  # a temporary file and os.replace: a kill now keeps every line (issue 15)
            lines = (json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in self._results.values())
            replace_text(path, "".join(lines))

    def keep_only(self, ids: set[str]) -> int:
        """Drop the resumed results of questions not in ``ids`` (the data changed since: a mended file, say, moves
        a ``--limit``), so the run and its summary hold exactly the questions selected now; returns how many."""
        dropped = [qid for qid in self._results if qid not in ids]
        for qid in dropped:
            del self._results[qid]
        if dropped:
            self._repair_tail()
        return len(dropped)

    @property
    def done_ids(self) -> set[str]:
        """Questions a resumed run need not ask again: a question recorded as not run is asked again."""
        return {qid for qid, r in self._results.items() if not r.not_run}

    @property
    def results(self) -> list[QuestionResult]:
        return list(self._results.values())

    def write(self, result: QuestionResult) -> None:
        line = json.dumps(result.to_dict(), ensure_ascii=False) + "\n"
        with self._lock:
            # Opened once (an open per line was a third of a cached run's time); each line is flushed to the OS,
            # so a killed process still leaves every finished line.
            if self._file is None:
                self._file = (self.dir / RESULTS).open("a", encoding="utf-8")
            self._file.write(line)
            self._file.flush()
            self._results[result.id] = result

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def on_result(self, result: QuestionResult) -> None:
        self.write(result)

    def should_stop(self) -> bool:
        return False

    def finalize(self, *, n_expected: int | None = None, wall_s: float = 0.0, **extra: Any) -> RunSummary:
        """Close the results file and write the summary."""
        self.close()
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
    manifest = read_manifest(path / MANIFEST)
    results = read_results(path / RESULTS)
    summary_path = path / SUMMARY
    summary = (read_summary(summary_path) if summary_path.exists()
               else RunSummary.from_results(results, n_expected=manifest.n_questions))
    return Run(path, manifest, summary, tuple(results))
