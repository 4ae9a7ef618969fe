"""`medjp demo`: the whole pipeline offline on the embedded tiny model, in a few minutes on a laptop CPU.

It is a script over the real commands, so the demo exercises exactly what users run:
1. build the tiny random Llama (cached);
2. QLoRA-train it (4-bit NF4) on the bundled USMLE-JP-style set so it answers in the exam format (cached);
3. `medjp search` on the bundled sample exam, with the live TUI, in :data:`SEARCH_SETTINGS` (:data:`WHY_SETTINGS`);
4. `medjp report` on the held-out test runs, with the deltas against the paper's two formats as the search ran them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import console, reports_errors

#: The search's first reference format (the paper's prompt): the report's baseline. The search's second stage
#: generates with it as written (no ``-direct`` variant), on the same test questions as the winner.
REFERENCE_FORMAT = "paper-instruction-in-header"

#: `medjp search` flags that size the demo so that the Wilcoxon pruner can stop formats on a 30-question exam.
SEARCH_SETTINGS = ("--split", "0.1,0.6,0.3", "--n-startup-steps", "14", "--screen", "logprob", "--screen-trials", "12")
#: Why (printed before the search). A chance-level model's 0/1 scores differ on too few questions: with k
#: same-sign differences the one-sided p-value is about 2^-k, so the best format must be right on 4 or more
#: questions another is wrong on; a log-probability differs on every question.
WHY_SETTINGS = ("search settings: 20 of the 30 questions choose (--split 0.1,0.6,0.3), stops may start after 14 "
                "(--n-startup-steps 14, the least), and formats are first screened by the gold option's "
                "log-probability (--screen logprob): at chance level 0/1 scores differ on too few questions for the "
                "Wilcoxon pruner, log-probabilities on every one")


def _invoke(app: typer.Typer, args: list[str]) -> None:
    """Run another medjp command in this process; its own errors end the demo with its exit code."""
    from typer.main import get_command

    console.rule(f"[bold]medjp {' '.join(args[:1])}")
    console.print("$ medjp " + " ".join(args), style="dim", soft_wrap=True, highlight=False)
    code = get_command(app).main(args, prog_name="medjp", standalone_mode=False)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    @app.command("demo")
    @reports_errors
    def demo(
        out: Annotated[Path, typer.Option(help="Folder for the demo's runs.")] = Path("runs/demo"),
        n_trials: Annotated[int, typer.Option(min=1, help="Formats generated with, after 12 screened by log-probability.")] = 8,
        threads: Annotated[int, typer.Option(min=1, help="Questions in flight at once.")] = 16,
        no_tui: Annotated[bool, typer.Option("--no-tui", help="Log lines instead of the live view.")] = False,
    ) -> None:
        """Build, QLoRA-train, search and report on the embedded tiny model, offline."""
        from medjp_agent.lm.tiny import ensure_tiny_model
        from medjp_agent.training.demo import ensure_demo_adapter

        console.rule("[bold]1 · tiny model")
        model = ensure_tiny_model()
        console.print(f"tiny random Llama at {model}")
        console.rule("[bold]2 · QLoRA training (4-bit NF4)")
        adapter = ensure_demo_adapter()  # in its labelled DEMO_FORMAT: a label line is what 40 steps teach
        console.print(f"adapter at {adapter}")
        search_dir = out / "search"
        console.print(WHY_SETTINGS, style="dim", highlight=False)
        _invoke(app, ["search", "--model", str(model), "--adapter", str(adapter), "--out", str(search_dir),
                      "--n-trials", str(n_trials), "--threads", str(threads), "--max-new-tokens", "192",
                      *SEARCH_SETTINGS, *(["--no-tui"] if no_tui else [])])
        runs = sorted(str(p) for p in (search_dir / "test").iterdir() if (p / "results.jsonl").exists())
        _invoke(app, ["report", *runs, "--baseline", str(search_dir / "test" / REFERENCE_FORMAT),
                      "--html", str(out / "report.html")])
        console.print(f"[green]demo done:[/] runs in {out}, report in {out / 'report.html'}. The tiny model knows no "
                      "medicine: accuracies are chance level; the pipeline is the point.")
