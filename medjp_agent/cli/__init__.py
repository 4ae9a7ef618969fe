"""`medjp`: the command line. Each command group lives in its own module and registers itself here.

Only typer and rich are imported at start-up, so ``medjp --help`` is instant; commands import DSPy, torch and
transformers when they run.
"""

from __future__ import annotations

import importlib
import os
from typing import Annotated

import typer

app = typer.Typer(
    name="medjp",
    help="Evaluate local LLMs on Japanese medical licensing exams and search for the prompt format that scores best.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"medjp-agent {version('medjp-agent')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the installed version and exit.")] = False,
) -> None:
    """Evaluate local LLMs on Japanese medical licensing exams and search for the prompt format that scores best."""


for _module in ("eval_cmd", "score_cmd", "report_cmd", "search_cmd", "train_cmd", "demo_cmd", "env_cmd", "formats_cmd"):
    importlib.import_module(f"{__name__}.{_module}").register(app)


def main() -> None:
    from medjp_agent.cli.options import show_own_warnings
    from medjp_agent.paths import medjp_home
    from medjp_agent.quiet import silence_library_noise

    silence_library_noise()  # before any command imports bitsandbytes or transformers
    show_own_warnings()

    # DSPy reads this when first imported; its default is a folder in the home directory.
    os.environ.setdefault("DSPY_CACHEDIR", str(medjp_home() / "dspy"))
    app()
