"""The live view of `medjp search`: small rich renderables over a snapshot of the search, composed in a Live.

:class:`SearchMonitor` receives progress from the search (it is a ``SearchObserver``) and hands out immutable
:class:`SearchSnapshot` s; every renderable draws one snapshot, so each can be tested by rendering it to a
``Console(record=True)``. :class:`LogObserver` is the ``--no-tui`` alternative: one log line per finished trial.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from medjp_agent.naming import axis_values, counted
from medjp_agent.optimizers.objective import TrialOutcome
from medjp_agent.optimizers.search import SearchResult
from medjp_agent.optimizers.workers import Budget
from medjp_agent.redact import redact_text


@dataclass(frozen=True)
class RunningTrial:
    number: int
    name: str
    answered: int
    total: int
    mean: float


@dataclass(frozen=True)
class SearchSnapshot:
    """The search at one moment: trials in flight, finished trials (this run's and earlier runs'), the budget.

    ``finished_here`` counts trials this run finished, which set the pace for the ETA.
    """

    running: tuple[RunningTrial, ...]
    outcomes: tuple[TrialOutcome, ...]
    budget: Budget
    elapsed_s: float
    finished_here: int = 0
    axes: tuple[str, ...] = ()
    title: str = ""

    @property
    def full(self) -> list[TrialOutcome]:
        return [o for o in self.outcomes if not o.pruned and o.duplicate_of is None]

    @property
    def best(self) -> TrialOutcome | None:
        return max(self.full, key=lambda o: (o.value, -o.number), default=None)

    @property
    def references(self) -> list[TrialOutcome]:
        return [o for o in self.full if o.reference]

    @property
    def lm_calls(self) -> int:
        return sum(o.lm_calls for o in self.outcomes)

    @property
    def lm_calls_saved(self) -> int:
        return sum(o.lm_calls_saved for o in self.outcomes)

    def eta_s(self) -> float | None:
        """Seconds until the first budget runs out, at this run's pace; None when nothing bounds the search yet."""
        if not self.finished_here or self.elapsed_s <= 0:
            return None
        etas = []
        if self.budget.n_trials is not None:
            etas.append(max(0, self.budget.n_trials - len(self.outcomes)) * self.elapsed_s / self.finished_here)
        if self.budget.timeout_s is not None:
            etas.append(max(0.0, self.budget.timeout_s - self.elapsed_s))
        if self.budget.max_lm_calls is not None and self.lm_calls:
            here = sum(o.lm_calls for o in self.outcomes[-self.finished_here:])
            etas.append(max(0, self.budget.max_lm_calls - self.lm_calls) * self.elapsed_s / max(1, here))
        return min(etas) if etas else None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}" if hours else f"{m}:{s:02d}"


@dataclass(frozen=True)
class CurrentTrials:
    """Trials in flight: number, format, questions answered, running mean score."""

    snapshot: SearchSnapshot

    def __rich__(self) -> RenderableType:
        table = Table(title="running", title_justify="left", expand=True)
        for name, justify in (("#", "right"), ("format", "left"), ("answered", "right"), ("score", "right")):
            numeric = justify == "right"
            table.add_column(name, justify=justify, no_wrap=numeric, min_width=len(name) if numeric else 12,
                             overflow="fold", ratio=None if numeric else 1)
        for t in self.snapshot.running:
            table.add_row(str(t.number), t.name, f"{t.answered}/{t.total}", f"{t.mean:.3f}")
        if not self.snapshot.running:
            table.add_row("", "[dim]waiting[/]", "", "")
        return table


@dataclass(frozen=True)
class BestPanel:
    """Best format so far against the reference (paper) formats, on the dev split."""

    snapshot: SearchSnapshot

    def __rich__(self) -> RenderableType:
        best = self.snapshot.best
        if best is None:
            return Panel(Text("no trial finished yet", style="dim"), title="best so far", title_align="left")
        lines = Text()
        lines.append(f"{best.name}  ", style="bold")
        lines.append(f"accuracy {best.accuracy:.1%}  score {best.value:.3f}  (trial {best.number})\n")
        for ref in self.snapshot.references:
            delta = best.accuracy - ref.accuracy
            lines.append(f"vs {ref.reference}: {ref.accuracy:.1%}  ")
            lines.append(f"{delta:+.1%}\n", style="green" if delta > 0 else "red" if delta < 0 else "")
        return Panel(lines, title="best so far", title_align="left")


@dataclass(frozen=True)
class TopTrials:
    """The ``k`` best finished trials, with the searched axes' values."""

    snapshot: SearchSnapshot
    k: int = 8

    def __rich__(self) -> RenderableType:
        table = Table(title=f"top {self.k} trials", title_justify="left", expand=True)
        # Numbers keep their full width at any terminal size; the format column takes the rest and wraps.
        for name, justify in (("#", "right"), ("score", "right"), ("accuracy", "right"), ("answered", "right")):
            table.add_column(name, justify=justify, no_wrap=True, min_width=len(name))
        table.add_column("", no_wrap=True)
        table.add_column("format", overflow="fold", ratio=1, min_width=12)
        ranked = sorted(self.snapshot.outcomes, key=lambda o: (-o.value, o.number))[: self.k]
        for o in ranked:
            # The format column names a reference format already: the mark only says that it is one.
            mark = "pruned" if o.pruned else "reference" if o.reference else ""
            table.add_row(str(o.number), f"{o.value:.3f}", f"{o.accuracy:.1%}", f"{o.answered}/{o.n_questions}",
                          mark, format_label(o, self.snapshot.axes), style="dim" if o.pruned else None)
        return table


def format_label(outcome: TrialOutcome, axes: Sequence[str]) -> str:
    """A trial's descriptive name; ``axis=value`` of the searched axes for a study whose trials are ``trial-N``."""
    name = outcome.name
    return axis_values(outcome.format, axes) if name == f"trial-{outcome.number}" and axes else name


@dataclass(frozen=True)
class BudgetLine:
    """Trials done, pruned, LM calls used and saved by pruning, elapsed time and ETA."""

    snapshot: SearchSnapshot

    def __rich__(self) -> RenderableType:
        s = self.snapshot
        total = f"/{s.budget.n_trials}" if s.budget.n_trials is not None else ""
        used, saved = s.lm_calls, s.lm_calls_saved
        share = f" ({saved / (used + saved):.0%})" if used + saved else ""
        calls = f"{used:,}" + (f"/{s.budget.max_lm_calls:,}" if s.budget.max_lm_calls is not None else "")
        return Text(f"trials {len(s.outcomes)}{total} · pruned {sum(o.pruned for o in s.outcomes)} · LM calls {calls} "
                    f"· saved {saved:,}{share} · elapsed {_duration(s.elapsed_s)} · ETA {_duration(s.eta_s())}")


def dashboard(snapshot: SearchSnapshot) -> RenderableType:
    """The whole live layout."""
    parts = [BudgetLine(snapshot), BestPanel(snapshot), CurrentTrials(snapshot), TopTrials(snapshot)]
    return Group(*([Text(snapshot.title, style="bold")] if snapshot.title else []), *parts)


@dataclass
class SearchMonitor:
    """Collects progress from the search threads; :meth:`snapshot` is safe to call from any thread."""

    budget: Budget
    axes: Sequence[str] = ()
    previous: Iterable[TrialOutcome] = ()
    _running: dict[int, RunningTrial] = field(default_factory=dict, init=False)
    _outcomes: list[TrialOutcome] = field(default_factory=list, init=False)
    _finished_here: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._outcomes = sorted(self.previous, key=lambda o: o.number)
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._title = ""

    def search_started(self, study: str, storage: str, previous: Sequence[TrialOutcome], n_dev: int) -> None:
        """A study opened (a screened search opens two, one after the other): show its trials from now on."""
        with self._lock:
            self._running.clear()
            self._outcomes = sorted(previous, key=lambda o: o.number)
            self._finished_here = 0
            self._start = time.monotonic()
            self._title = started_line(study, storage, previous, n_dev)

    def question_done(self, trial_number: int, name: str, answered: int, total: int, mean: float) -> None:
        with self._lock:
            self._running[trial_number] = RunningTrial(trial_number, name, answered, total, mean)

    def trial_done(self, outcome: TrialOutcome) -> None:
        with self._lock:
            self._running.pop(outcome.number, None)
            self._outcomes.append(outcome)
            self._finished_here += 1

    def snapshot(self) -> SearchSnapshot:
        with self._lock:
            return SearchSnapshot(tuple(self._running.values()), tuple(self._outcomes), self.budget,
                                  time.monotonic() - self._start, self._finished_here, tuple(self.axes), self._title)

    def live(self, console: Console) -> Live:
        """A rich Live that redraws the dashboard from fresh snapshots."""
        return Live(console=console, refresh_per_second=4, transient=False,
                    get_renderable=lambda: dashboard(self.snapshot()))


def started_line(study: str, storage: str, previous: Sequence[TrialOutcome], n_dev: int) -> str:
    return f"study {study} in {redact_text(storage)}: {len(previous)} finished trials, {n_dev} dev questions"


@dataclass
class LogObserver:
    """``--no-tui``: a log line per finished trial, nothing per question."""

    console: Console

    def search_started(self, study: str, storage: str, previous: Sequence[TrialOutcome], n_dev: int) -> None:
        self.console.print(started_line(study, storage, previous, n_dev), highlight=False)

    def question_done(self, trial_number: int, name: str, answered: int, total: int, mean: float) -> None:
        return None

    def trial_done(self, outcome: TrialOutcome) -> None:
        state = f"pruned after {outcome.answered}/{outcome.n_questions}" if outcome.pruned else "complete"
        if outcome.duplicate_of is not None:
            state = f"same format as trial {outcome.duplicate_of}, not asked again"
        self.console.log(f"trial {outcome.number} {outcome.name}: score {outcome.value:.3f}, accuracy "
                         f"{outcome.accuracy:.1%}, {state}, {outcome.lm_calls} LM calls", highlight=False)


@dataclass(frozen=True)
class SearchSummary:
    """A finished search: best format and references on dev, pruning savings, screening and format sensitivity."""

    result: SearchResult

    def __rich__(self) -> RenderableType:
        r = self.result
        table = Table(title=f"{r.study}: {counted(r.n_complete, 'trial')} ({r.n_pruned} pruned, "
                            f"{r.n_duplicates} repeated) · stop: {r.stop_reason}")
        for name, justify in (("", "left"), ("dev accuracy", "right"), ("score", "right"), ("test accuracy", "right")):
            table.add_column(name, justify=justify)
        rows = ([("best: " + r.best.name, r.best, "best")] if r.best else []) + [
            (name, ref, name) for name, ref in r.references.items()]
        for label, o, key in rows:
            test = r.test.get(key)
            table.add_row(label, f"{o.accuracy:.1%}", f"{o.value:.3f}", f"{test.accuracy:.1%}" if test else "–",
                          style="bold" if key == "best" else None)
        return Group(table, *(Text(line) for line in self.lines()))

    def lines(self) -> list[str]:
        r, s = self.result, self.result.sensitivity
        saved = r.lm_calls_saved
        out = [f"LM calls {r.lm_calls:,} · saved by pruning {saved:,} ({saved / max(1, r.lm_calls + saved):.0%})"]
        if r.screen is not None:
            rho = "–" if r.screen.spearman is None else f"{r.screen.spearman:+.2f}"
            out.append(f"screening: {r.screen.n_trials} formats by log-probability on {r.screen.n_questions} "
                       f"questions ({r.screen.lm_calls:,} LM calls), {len(r.screen.promoted)} promoted, "
                       f"{r.screen.n_pruned} pruned; Spearman's ρ between the stages' rankings {rho} over "
                       f"{len(set(r.screen.stage1) & set(r.screen.stage2))} formats that ran both")
        if s.n_formats:
            out.append(f"format sensitivity over {s.n_formats} formats: spread {s.spread:.1%} (best {s.best:.1%} "
                       f"{s.best_format}, worst {s.worst:.1%} {s.worst_format}), median {s.quantiles['p50']:.1%}, "
                       f"stdev {s.stdev:.1%}")
        return out
