"""`medjp`: the command line. Each command group lives in its own module and registers itself here.

Only typer and rich are imported at start-up, so ``medjp --help`` is instant; commands import DSPy, torch and
transformers when they run.
"""

from __future__ import annotations

import importlib
import os

import typer

app = typer.Typer(
    name="medjp",
    help="Evaluate local LLMs on Japanese medical licensing exams and search for the prompt format that scores best.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

for _module in ("eval_cmd", "score_cmd", "report_cmd", "search_cmd", "train_cmd", "demo_cmd"):
    importlib.import_module(f"{__name__}.{_module}").register(app)


def main() -> None:
    from medjp_agent.lm.tiny import medjp_home

    # DSPy reads this when first imported; its default is a folder in the home directory.
    os.environ.setdefault("DSPY_CACHEDIR", str(medjp_home() / "dspy"))
    app()
