"""The live view's renderables, each drawn from a snapshot into a recording console."""

from __future__ import annotations

from rich.console import Console

from medjp_agent.optimizers import Budget, TrialOutcome
from medjp_agent.search_tui import (
    BestPanel, BudgetLine, CurrentTrials, LogObserver, SearchMonitor, SearchSnapshot, SearchSummary, TopTrials,
    dashboard,
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
    assert "template=xml · separator='\\n'" in rows[0]  # axis=value, whitespace values shown as reprs
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


def test_search_summary_shows_test_results_screening_and_repeats():
    from medjp_agent.optimizers import FormatSensitivity, ScreenResult, SearchResult, TestRun

    best = outcome(2, 0.625, template="xml")
    repeat = outcome(5, 0.625, template="xml")
    repeat = type(repeat)(**{**repeat.to_dict(), "duplicate_of": 2})
    screen = ScreenResult("s-screen", 40, 12, 480, ("screen-3",), {"screen-3": -0.4}, {"screen-3": 0.6},
                          spearman=0.8, p_value=0.1)
    result = SearchResult(study="s", score="correct", stop_reason="n_trials", n_complete=5, n_pruned=1, n_failed=0,
                          lm_calls=130, lm_calls_saved=30, best=best, references={o.reference: o for o in OUTCOMES[:2]},
                          sensitivity=FormatSensitivity.from_outcomes(OUTCOMES[:3]), trials=(*OUTCOMES, repeat),
                          n_duplicates=1, screen=screen,
                          test={"best": TestRun("best", "runs/x", 0.6, 10, 6, 10, best.format)})
    text = " ".join(render(SearchSummary(result)).split())
    assert "5 trials (1 pruned, 1 repeated)" in text and "60.0%" in text
    assert "Spearman's ρ between the stages' rankings +0.80 over 1 formats that ran both" in text
    assert "(480 LM calls), 1 promoted" in text


def test_log_observer_says_which_study_opened_and_marks_repeats():
    console = Console(record=True, width=200)
    observer = LogObserver(console)
    observer.search_started("s", "sqlite:///x.db", OUTCOMES, 40)
    repeat = type(OUTCOMES[2])(**{**OUTCOMES[2].to_dict(), "number": 9, "duplicate_of": 2})
    observer.trial_done(repeat)
    text = console.export_text()
    assert "study s in sqlite:///x.db: 4 finished trials, 40 dev questions" in text
    assert "same format as trial 2, not asked again" in text


def test_counts_read_as_english():
    from medjp_agent.naming import counted

    assert (counted(1, "trial"), counted(0, "trial"), counted(1200, "bad record")) == (
        "1 trial", "0 trials", "1,200 bad records")
