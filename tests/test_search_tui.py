"""The live view's renderables, each drawn from a snapshot into a recording console."""

from __future__ import annotations

from rich.console import Console

from medjp_agent.optimizers import Budget, TrialOutcome
from medjp_agent.search_tui import (
    BestPanel, BudgetLine, CurrentTrials, LogObserver, SearchMonitor, SearchSnapshot, TopTrials, dashboard,
)


def outcome(number: int, accuracy: float, *, pruned: bool = False, reference: str = "", **fmt) -> TrialOutcome:
    answered = 10 if pruned else 40
    return TrialOutcome(number=number, value=accuracy, accuracy=accuracy, answered=answered, n_questions=40,
                        pruned=pruned, lm_calls=answered, lm_calls_saved=40 - answered if pruned else 0,
                        format={"name": reference or f"trial-{number}", "template": "alpaca", "separator": "\n",
                                **fmt}, reference=reference)


OUTCOMES = (
    outcome(0, 0.50, reference="paper-instruction-in-header"),
    outcome(1, 0.45, reference="paper-instruction-preamble"),
    outcome(2, 0.625, template="xml"),
    outcome(3, 0.20, pruned=True, template="json"),
)


def render(renderable) -> str:
    console = Console(record=True, width=120)
    console.print(renderable)
    return console.export_text()


def snapshot(**kw) -> SearchSnapshot:
    defaults = {"running": (), "outcomes": OUTCOMES, "budget": Budget(n_trials=10), "elapsed_s": 80.0,
                "finished_here": 4, "axes": ("template", "separator")}
    return SearchSnapshot(**{**defaults, **kw})


def test_best_panel_compares_with_the_paper_formats():
    text = render(BestPanel(snapshot()))
    assert "trial-2" in text and "accuracy 62.5%" in text
    assert "vs paper-instruction-in-header: 50.0%  +12.5%" in text
    assert "vs paper-instruction-preamble: 45.0%  +17.5%" in text
    assert "no trial finished yet" in render(BestPanel(snapshot(outcomes=())))


def test_top_trials_ranks_by_score_and_marks_pruned_and_references():
    lines = render(TopTrials(snapshot(), k=3)).splitlines()
    rows = [line for line in lines if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == ["2", "0", "1"]
    assert "xml · '\\n'" in rows[0]  # searched axes, with whitespace values shown as reprs
    assert "paper-instruction-in-header" in rows[1]
    assert "pruned" in render(TopTrials(snapshot(), k=4))


def test_budget_line_counts_calls_saved_and_eta():
    text = render(BudgetLine(snapshot()))
    assert "trials 4/10 · pruned 1" in text
    assert "LM calls 130 · saved 30 (19%)" in text
    assert "elapsed 1:20 · ETA 2:00" in text  # 6 trials left at 20 s each


def test_current_trials_shows_progress():
    monitor = SearchMonitor(Budget(n_trials=5), axes=("template",))
    monitor.question_done(7, "trial-7", 12, 40, 0.5)
    text = render(CurrentTrials(monitor.snapshot()))
    assert "trial-7" in text and "12/40" in text and "0.500" in text
    monitor.trial_done(outcome(7, 0.5))
    snap = monitor.snapshot()
    assert snap.running == () and snap.finished_here == 1 and "waiting" in render(CurrentTrials(snap))


def test_dashboard_and_log_observer_render():
    text = render(dashboard(snapshot()))
    for part in ("best so far", "running", "top 8 trials", "pruned 1"):
        assert part in text
    console = Console(record=True, width=200)
    LogObserver(console).trial_done(outcome(3, 0.2, pruned=True))
    assert "trial 3 trial-3: score 0.200, accuracy 20.0%, pruned after 10/40, 10 LM calls" in console.export_text()
