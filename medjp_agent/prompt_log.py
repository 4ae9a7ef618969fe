"""``--log-prompts``: keep each question's exact prompt in ``results.jsonl`` (as lm-eval's ``--log_samples`` does).

A process-wide switch, set by every command that answers questions (on or off), read where the adapter renders a
prompt and where a result is recorded. Off by default: a 5-shot prompt is kilobytes per question. Without it,
``medjp report --show`` rebuilds a prompt from the run's format and checks it against the recorded hash.
"""

from __future__ import annotations

_enabled = False


def log_prompts(on: bool) -> None:
    """Keep (``on``) or drop the prompts of the questions this process answers from now on."""
    global _enabled
    _enabled = on


def prompts_logged() -> bool:
    return _enabled
