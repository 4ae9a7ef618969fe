"""Small rich renderables shared by commands: run progress and result tables. Each renders to any Console."""

from __future__ import annotations

from collections.abc import Iterable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from medjp_agent.results import RunSummary
from medjp_agent.scoring import QuestionResult
from medjp_agent.scoring.aggregate import SIDE_COUNTS


class _RateColumn(ProgressColumn):
    # Over the whole run, not rich's short window: a batched backend finishes questions in bursts.
    def render(self, task: Task) -> Text:
        done = task.completed - task.fields.get("resumed", 0)
        speed = done / task.elapsed if task.elapsed and done else None
        return Text(f"{speed:.2f} q/s" if speed else "– q/s", style="progress.data.speed")


class _AccuracyColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        n, correct = task.fields.get("answered", 0), task.fields.get("correct", 0)
        return Text(f"acc {correct / n:.1%} ({correct}/{n})" if n else "acc –", style="bold cyan")


class RunProgress:
    """A progress bar with questions/s, ETA and running accuracy; feed it results as they finish."""

    def __init__(self, total: int, done: Iterable[QuestionResult] = (), description: str = "answering", **kw):
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 _RateColumn(), TimeRemainingColumn(), _AccuracyColumn(), **kw)
        done = list(done)
        self.answered, self.correct = len(done), sum(r.correct for r in done)
        self.task = self.progress.add_task(description, total=total, completed=len(done), resumed=len(done),
                                           answered=self.answered, correct=self.correct)

    def __enter__(self) -> "RunProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def on_result(self, result: QuestionResult) -> None:
        """An observer of :func:`medjp_agent.evaluate.evaluate`: one more question done."""
        self.answered += 1
        self.correct += int(result.correct)
        self.progress.update(self.task, advance=1, answered=self.answered, correct=self.correct)

    def should_stop(self) -> bool:
        return False


def summary_table(summary: RunSummary, by: str = "year", title: str | None = None) -> Table:
    """Accuracy, points, forbidden choices and parse failures per group, with an overall row; questions not run
    and answers cut off at the token limit get a column when there are any."""
    table = Table(title=title, show_footer=False)
    extra = [(name, key) for name, key in SIDE_COUNTS if summary.overall.get(key)]
    for name, justify in ((by, "left"), ("n", "right"), ("accuracy", "right"), ("points", "right"),
                          ("禁忌肢", "right"), ("parse fail", "right"), *((name, "right") for name, _ in extra)):
        table.add_column(name, justify=justify)

    def row(label: str, agg: dict, style: str | None = None) -> None:
        table.add_row(label, str(agg["n"]), f"{agg['accuracy']:.1%}", f"{agg['points']}/{agg['points_possible']}",
                      str(agg["forbidden_picked"]), str(agg["parse_failures"]), *(str(agg.get(key, 0)) for _, key in extra),
                      style=style)

    for key, agg in summary.groups.get(by, {}).items():
        row(key, agg)
    row("all", summary.overall, style="bold")
    return table


def usage_line(summary: RunSummary) -> str:
    return (f"{summary.lm_calls} LM calls · {summary.prompt_tokens:,} prompt + {summary.completion_tokens:,} "
            f"completion tokens · {summary.generation_s:.1f} s generating · {summary.wall_s:.1f} s wall")
