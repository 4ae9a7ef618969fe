"""`medjp demo`: the whole pipeline offline on the embedded tiny model, in a few minutes on a laptop CPU.

It is a script over the real commands, so the demo exercises exactly what users run:
1. build the tiny random Llama (cached);
2. QLoRA-train it (4-bit NF4) on the bundled USMLE-JP-style set so it answers in the exam format (cached);
3. `medjp search` on the bundled sample exam, with the live TUI;
4. `medjp report` on the held-out test runs, with the deltas against the paper's two formats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import console

#: The search's first reference format (the paper's prompt): the report's baseline.
REFERENCE_FORMAT = "paper-instruction-in-header"


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
    def demo(
        out: Annotated[Path, typer.Option(help="Folder for the demo's runs.")] = Path("runs/demo"),
        n_trials: Annotated[int, typer.Option(help="Formats to try in the search.")] = 8,
        threads: Annotated[int, typer.Option(help="Questions in flight at once.")] = 16,
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
        _invoke(app, ["search", "--model", str(model), "--adapter", str(adapter), "--out", str(search_dir),
                      "--n-trials", str(n_trials), "--threads", str(threads), "--max-new-tokens", "192",
                      *(["--no-tui"] if no_tui else [])])
        runs = sorted(str(p) for p in (search_dir / "test").iterdir() if (p / "results.jsonl").exists())
        _invoke(app, ["report", *runs, "--baseline", str(search_dir / "test" / REFERENCE_FORMAT),
                      "--html", str(out / "report.html")])
        console.print(f"[green]demo done:[/] runs in {out}, report in {out / 'report.html'}. The tiny model knows no "
                      "medicine: accuracies are chance level; the pipeline is the point.")
