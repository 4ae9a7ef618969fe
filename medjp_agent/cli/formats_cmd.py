"""`medjp formats`: list the named prompt formats, and show exactly the prompt one sends for one question."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from .options import DataOpt, FormatOpt, console, err_console, fail, load_questions, reports_errors

formats_app = typer.Typer(help="List the named prompt formats; show the exact prompt a format sends.",
                          no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(formats_app, name="formats")


@formats_app.command("list")
@reports_errors
def list_formats() -> None:
    """Every named format, with one line on what it is."""
    from medjp_agent.signatures import DESCRIPTIONS, NAMED_FORMATS

    width = max(map(len, NAMED_FORMATS))
    for name in NAMED_FORMATS:
        console.print(f"{name:<{width}}  {DESCRIPTIONS[name]}", highlight=False, soft_wrap=True)


def rendered_prompts(fmt: Any, question: Any, data: str) -> tuple[list[list[dict[str, Any]]], str]:
    """(the messages the LM receives for ``question`` on each call, the exemplar note) in format ``fmt``."""
    from medjp_agent.signatures import MedicalQA, exemplar_pool

    pool = exemplar_pool(data, fmt)
    qa = MedicalQA(fmt, demo_pool=list(pool.demos))
    note = " ".join(filter(None, [pool.note, "the demos' reasoning is the model's own once it has answered them "
                                  "(Medprompt's self-generated chains of thought): shown here with the exemplars' "
                                  "explanations" if fmt.self_generated_cot else ""]))
    return qa.prompts(question.text, question.choices), note


@formats_app.command("show")
@reports_errors
def show(
    name: Annotated[str, typer.Argument(help="A named format, a YAML/JSON format file, or FILE:NAME.")],
    qid: Annotated[str, typer.Option("--id", help="The question's id, e.g. 116A1.")],
    data: DataOpt = "sample",
    shots: Annotated[int | None, typer.Option(min=0, max=8, help="Override the format's number of demos.")] = None,
) -> None:
    """Print exactly the prompt the LM receives for one question and nothing else: the raw text for completion
    formats, the messages as JSON for chat formats. Notes (such as a substitute exemplar) go to stderr."""
    from medjp_agent.lm.prompts import prompt_sent
    from medjp_agent.signatures import resolve_format

    try:
        fmt = resolve_format(name)
    except ValueError as e:
        raise fail(str(e)) from None
    if shots is not None:
        fmt = fmt.replace(shots=shots)
    # One question is shown: bad records elsewhere in the file do not stop it.
    _, questions, _ = load_questions(data, lenient=True, skip_reason="formats show needs only the asked question")
    question = next((q for q in questions if q.id == qid), None)
    if question is None:
        raise fail(f"{data}: no question with id {qid!r}")
    prompts, note = rendered_prompts(fmt, question, data)
    messages = prompts[0]  # an ensemble's first member
    if note:
        err_console.print(f"[dim]note:[/] {note}", highlight=False, soft_wrap=True)
    shown = prompt_sent(messages)
    sys.stdout.write(shown if isinstance(shown, str) else json.dumps(shown, ensure_ascii=False, indent=2) + "\n")
    sys.stdout.flush()


__all__ = ["FormatOpt", "formats_app", "register", "rendered_prompts"]
