"""Assemble a :class:`Report` from run folders: per-run figures, paired comparisons, verdicts, diffs and searches.

Everything here only reads the results schema (:mod:`medjp_agent.results`); tables, plots and HTML only read the
:class:`Report`, and the report serialises to JSON and CSV.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medjp_agent.naming import counted
from medjp_agent.results import MANIFEST, RESULTS, SKIPPED, Run, read_manifest, read_run
from medjp_agent.scoring import Aggregate, aggregate, aggregate_by
from medjp_agent.scoring.aggregate import GroupBy

from .compare import Comparison, compare_runs
from .diff import RunDiff
from .optuna_views import SearchView, load_search_view
from .serialize import Serializable
from .verdict import YearVerdict, exam_verdicts


def short_name(model: str) -> str:
    """A local model folder by its name (the manifest keeps the full path); hub ids (org/name) stay whole."""
    return Path(model).name if model.startswith(("/", ".", "~")) else model


@dataclass(frozen=True)
class RunRow(Serializable):
    """One run as the report shows it: what ran, and its figures overall, per year and per ``--by`` group."""

    label: str
    path: str
    kind: str
    model: str
    adapter: str
    format: str
    optimizer: str
    overall: Aggregate
    years: dict[str, Aggregate]
    groups: dict[str, Aggregate]
    lm_calls: int
    prompt_tokens: int
    completion_tokens: int
    subset: tuple[str, ...]
    #: Accuracy per clinical category (循環器, 小児科, …), whatever ``--by`` is: the category plot draws it.
    categories: dict[str, Aggregate] = field(default_factory=dict)
    #: Questions an unfinished run (interrupted, or with questions not run) was started with; None when finished.
    planned: int | None = None
    #: Bad input records a ``--lenient`` load skipped (listed in the run's manifest).
    skipped: int = 0

    @classmethod
    def of(cls, run: Run, label: str, by: GroupBy) -> "RunRow":
        m = run.manifest
        return cls(
            label=label, path=str(run.path), kind=m.kind, model=short_name(m.model or m.system),
            adapter=short_name(m.adapter),
            format=str((m.format or {}).get("name", "")), optimizer=m.optimizer, overall=aggregate(run.results),
            years=aggregate_by(run.results, "year"), groups=aggregate_by(run.results, by),
            lm_calls=run.summary.lm_calls, prompt_tokens=run.summary.prompt_tokens,
            completion_tokens=run.summary.completion_tokens, subset=subset_reasons(run),
            categories=aggregate_by(run.results, "category"),
            planned=None if run.summary.complete else m.n_questions,
            skipped=int((m.filters.get(SKIPPED) or {}).get("count", 0)),
        )


def subset_reasons(run: Run) -> tuple[str, ...]:
    """Why a run does not cover whole exams (filters other than years, an unfinished run); empty when it does."""
    filters = run.manifest.filters
    reasons = [f"filtered: {k}={v}" for k, v in filters.items() if v and k not in ("years", SKIPPED)]
    if SKIPPED in filters:
        skipped = counted(filters[SKIPPED]["count"], "bad input record")
        reasons.append(f"{skipped} skipped (--lenient), listed in the manifest")
    if not run.summary.complete:
        reasons.append(f"incomplete run ({run.summary.n_questions}/{run.manifest.n_questions} questions)")
    return tuple(reasons)


@dataclass(frozen=True)
class Report(Serializable):
    """Everything `medjp report` shows. ``baseline`` is the label the ``comparisons`` are made against."""

    runs: tuple[RunRow, ...]
    by: str
    baseline: str | None = None
    comparisons: tuple[Comparison, ...] = ()
    verdicts: tuple[YearVerdict, ...] = ()
    searches: tuple[SearchView, ...] = ()
    diff: RunDiff | None = None
    alpha: float = 0.05

    def comparison(self, label: str) -> Comparison | None:
        return next((c for c in self.comparisons if c.run == label), None)

    def csv_rows(self) -> list[dict[str, Any]]:
        """One flat row per run with raw numbers: overall figures, accuracy and verdict per year, the comparison."""
        rows = []
        for r in self.runs:
            row: dict[str, Any] = {k: getattr(r, k) for k in ("label", "path", "kind", "model", "adapter", "format",
                                                               "optimizer", "lm_calls", "prompt_tokens",
                                                               "completion_tokens")}
            row.update(r.overall.to_dict())
            row.update({f"accuracy_{y}": a.accuracy for y, a in r.years.items()})
            row.update({f"verdict_{v.year}": v.status + ("~" if v.approximate else "")
                        for v in self.verdicts if v.run == r.label})
            c = self.comparison(r.label)
            if c is not None:
                row.update({k: getattr(c, k) for k in ("delta", "ci_low", "ci_high", "lost", "gained", "p_value",
                                                       "p_holm", "significant")})
            rows.append(row)
        return rows


def unique_labels(runs: Sequence[Run]) -> list[str]:
    """Run labels, with a run's path standing in where two runs share a name."""
    names = [run.label for run in runs]
    return [str(run.path) if names.count(run.label) > 1 else run.label for run in runs]


def load_run_dirs(dirs: Sequence[Path]) -> tuple[list[Run], list[SearchView]]:
    """Read run folders; search runs also yield their study's view.

    A search folder that holds only its study (no ``results.jsonl``) contributes the view alone.
    """
    runs, searches = [], []
    for d in dirs:
        has_results = (d / RESULTS).exists()
        if has_results or not (d / MANIFEST).exists():
            runs.append(read_run(d))  # raises, naming the file that is missing
            manifest, label = runs[-1].manifest, runs[-1].label
        else:
            manifest = read_manifest(d / MANIFEST)
            label = manifest.name or d.name
        view = load_search_view(d, manifest, label)
        finalists = [] if has_results or view is not None else _test_runs(d, manifest.kind)
        if view is None and not has_results and not finalists:
            raise FileNotFoundError(f"{d}: not a run folder (no {RESULTS}) and not a search or optimize run")
        if view is not None:
            searches.append(view)
        runs += finalists
    return runs, searches


def _test_runs(folder: Path, kind: str) -> list[Run]:
    """An optimize folder's test-split runs (the optimized program and its unoptimized format)."""
    if kind != "optimize":
        return []
    from medjp_agent.optimizers.heldout import TEST_DIR

    return [read_run(run) for run in sorted((folder / TEST_DIR).glob("*")) if (run / RESULTS).exists()]


def build_report(runs: Sequence[Run], *, baseline: Run | None = None, by: GroupBy = "year",
                 searches: Sequence[SearchView] = (), diff: RunDiff | None = None, alpha: float = 0.05,
                 confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> Report:
    """Figures, verdicts and paired comparisons of ``runs`` against ``baseline`` (default: the first run).

    A baseline that is not among ``runs`` is shown first. Comparisons are Holm-adjusted together at ``alpha``.
    """
    runs = list(runs)
    if baseline is None and runs:
        baseline = runs[0]
    paths = [run.path.resolve() for run in runs]
    if baseline is not None and baseline.path.resolve() not in paths:
        runs.insert(0, baseline)
        paths.insert(0, baseline.path.resolve())
    labels = unique_labels(runs)
    base_label = labels[paths.index(baseline.path.resolve())] if baseline is not None else None
    others = [(run, label) for run, label in zip(runs, labels) if label != base_label]
    comparisons = compare_runs(baseline, [r for r, _ in others], labels=[label for _, label in others],
                               baseline_label=base_label, alpha=alpha, confidence=confidence, n_boot=n_boot,
                               seed=seed) if baseline is not None else ()
    rows = tuple(RunRow.of(run, label, by) for run, label in zip(runs, labels))
    return Report(
        runs=rows, by=by, baseline=base_label, comparisons=comparisons,
        verdicts=tuple(v for run, row in zip(runs, rows)
                       for v in exam_verdicts(run.results, run=row.label, subset=row.subset)),
        searches=tuple(searches), diff=diff, alpha=alpha,
    )
