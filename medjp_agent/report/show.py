"""One question of one run, whole: the exact prompt, the raw completion, the parsed answer, the gold answer and why
it was scored as it was (``medjp report --show QID RUN``).

The prompt is the one ``--log-prompts`` stored; without it, it is rebuilt from the run's recorded format and data
and checked against the ``prompt_hash`` of what was sent, so the page says whether it is exactly that prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from medjp_agent.results import MANIFEST, RESULTS, read_manifest, read_results
from medjp_agent.scoring import QuestionResult


def find_result(run_dir: Path, qid: str) -> QuestionResult:
    """The run's (last) result for question ``qid``; KeyError naming close ids when the run has none."""
    if not (run_dir / RESULTS).exists():
        raise FileNotFoundError(f"{run_dir}: no {RESULTS} (not a run folder?)")
    results = {r.id: r for r in read_results(run_dir / RESULTS)}
    if qid not in results:
        from medjp_agent.suggest import did_you_mean

        raise KeyError(f"{run_dir / RESULTS}: no question {qid!r}{did_you_mean(qid, results)}")
    return results[qid]


def rerendered_prompt(run_dir: Path, result: QuestionResult) -> tuple[Any, str]:
    """(the prompt rebuilt from the run's recorded format and data, a note saying whether it is the one sent).

    The result's ``prompt_hash`` is the hash of the messages actually sent, so a rebuilt prompt with the same hash
    is exactly that prompt. Returns (None, why) where it cannot be rebuilt.
    """
    from medjp_agent.cli.formats_cmd import rendered_prompts
    from medjp_agent.data import load_dataset
    from medjp_agent.signatures import PromptFormat
    from medjp_agent.signatures.adapter import hash_prompt

    manifest = read_manifest(run_dir / MANIFEST)
    if not manifest.format:
        return None, "no prompt format recorded in this run (scored predictions)"
    try:
        question = next((q for q in load_dataset(manifest.data, lenient=True) if q.id == result.id), None)
        if question is None:
            return None, f"question {result.id} is no longer in {manifest.data}"
        prompts, _ = rendered_prompts(PromptFormat.from_dict(manifest.format), question, manifest.data)
        messages = prompts[0] if len(prompts) == 1 else prompts  # as --log-prompts stores an ensemble's
    except (OSError, ValueError) as e:
        return None, f"cannot rebuild it from {manifest.data}: {e}"
    if hash_prompt(messages) == result.prompt_hash:
        return messages, "rebuilt from the run's format and data; its hash matches the prompt sent, so it is exact"
    return messages, ("rebuilt from the run's format and data, but its hash differs from the prompt sent (the data, "
                      "demos or an optimized program changed it): only --log-prompts keeps the exact one")


def _prompt_text(prompt: Any) -> Text:
    from medjp_agent.lm.prompts import is_ensemble, prompt_sent

    if is_ensemble(prompt):  # its prompts, in the order sent
        return Text("\n\n── next prompt ──\n\n").join(_prompt_text(p) for p in prompt)
    if isinstance(prompt, list):
        prompt = prompt_sent(prompt)
    if isinstance(prompt, str):
        return Text(prompt)
    # Chat messages: one block per message, the role first.
    return Text("\n\n").join(Text.assemble((f"[{m.get('role', '?')}]\n", "bold"), str(m.get("content", "")))
                             for m in prompt)


def prompt_panel(run_dir: Path, result: QuestionResult) -> Panel:
    """The stored prompt, else the prompt rebuilt from the run's format (saying whether it is exact)."""
    if result.prompt is not None:
        return Panel(_prompt_text(result.prompt), title="prompt (stored by --log-prompts)", title_align="left")
    rebuilt, note = rerendered_prompt(run_dir, result)
    body = Text(f"{note}\n\n", style="dim") + (_prompt_text(rebuilt) if rebuilt is not None else Text(""))
    return Panel(body, title="prompt", title_align="left")


def why(result: QuestionResult) -> str:
    """Why the answer was scored as it was, in words."""
    if result.parse_error:
        return f"unparseable, scored wrong: {result.parse_error}"
    verdict = "correct" if result.correct else "wrong"
    how = f" (parsed by {result.method})" if result.method else ""
    forbidden = f"; 禁忌肢 picked: {','.join(result.forbidden_picked)}" if result.forbidden_picked else ""
    return f"{verdict}: answered {','.join(result.answer) or '(nothing)'}, gold {','.join(result.gold)}{how}{forbidden}"


def show_question(run_dir: Path, qid: str) -> RenderableType:
    """Everything about question ``qid`` in the run folder ``run_dir``, as a rich renderable."""
    result = find_result(run_dir, qid)
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold", no_wrap=True)
    facts.add_column(overflow="fold")
    for name, value in (("question", f"{result.id} · {result.year} · {result.section} · {result.category}"),
                        ("answer", ",".join(result.answer) or "(none)"), ("gold", ",".join(result.gold)),
                        ("points", f"{result.points}/{result.points_possible}"), ("why", why(result))):
        facts.add_row(name, Text(value))
    return Group(
        prompt_panel(run_dir, result),
        Panel(Text(result.completion or "(empty)"), title="raw completion", title_align="left"),
        facts,
    )
