"""The paper harness's own scoring (``japanese-lm-med-harness``, ``eval_bench.py``), as parse modes.

The harness reads the response as the text after the prompt, stripped, up to its first line break, and compares it
with the gold choice *texts* joined by ``,``:

- ``harness-exact``: the response with every ``.`` removed equals the gold texts joined by ``,`` (also without
  ``.``);
- ``harness-gestalt``: the n choices (n = number of gold answers) with the highest symmetric
  ``difflib.SequenceMatcher`` ratio to the response (the mean of both argument orders; ties to the earlier choice)
  are the answer, compared with the gold set.

So a user can put their number next to the paper's. Calculation questions (no choices) compare the response with
the gold string in both modes.
"""

from __future__ import annotations

import difflib
from typing import Literal

from medjp_agent.data import LABELS, Question

from .extract import Extraction

HarnessMode = Literal["harness-exact", "harness-gestalt"]
HARNESS_MODES: tuple[HarnessMode, ...] = ("harness-exact", "harness-gestalt")


def harness_response(completion: str) -> str:
    """What the harness scores: the completion stripped, up to its first line break, stripped."""
    return completion.strip().split("\n")[0].strip()


def _gestalt(a: str, b: str) -> float:
    return (difflib.SequenceMatcher(None, a, b).ratio() + difflib.SequenceMatcher(None, b, a).ratio()) / 2


def harness_exact(question: Question, completion: str) -> Extraction:
    response = harness_response(completion).replace(".", "").strip()
    if not question.choices:
        return Extraction((response,), method="harness-exact") if response else Extraction(reason="empty answer")
    gold = ",".join(question.choices[LABELS.index(a)] for a in question.answers).replace(".", "").strip()
    if response == gold:
        return Extraction(question.answers, method="harness-exact")
    return Extraction(reason="harness exact match: the response is not the gold choice texts joined by ','")


def harness_gestalt(question: Question, completion: str) -> Extraction:
    response = harness_response(completion).replace(".", "").strip()
    if not question.choices:
        return harness_exact(question, completion)
    scores = {i: _gestalt(choice, response) for i, choice in enumerate(question.choices)}
    picked = []
    for _ in range(min(len(question.answers), len(scores))):
        best = max(scores, key=lambda i: (scores[i], -i))
        picked.append(LABELS[best])
        del scores[best]
    return Extraction(tuple(sorted(picked)), method="harness-gestalt")


def harness_extract(mode: HarnessMode, question: Question, completion: str) -> Extraction:
    return harness_exact(question, completion) if mode == "harness-exact" else harness_gestalt(question, completion)
