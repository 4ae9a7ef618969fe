"""`MedicalQA`: the chain-of-thought exam module users run, optimise, save and load.

It composes one ``dspy.ChainOfThought`` predictor and knows nothing about LMs; the format's adapter is activated
with ``dspy.context`` *inside* ``forward``, so optimizers' own meta-prompts keep DSPy's default adapters.
Choice shuffling, self-consistency and Medprompt's shuffle ensemble are votes over calls of that one predictor.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError

from medjp_agent.data import LABELS, Question, load_exemplars
from medjp_agent.scoring import extract_answer

from .adapter import FormatAdapter
from .demos import DemoSelector, Embedder, demo_from_question
from .formats import NAMED_FORMATS, PromptFormat, resolve_format
from .signature import signature_for

DEFAULT_FORMAT = "paper-instruction-in-header"
# Module-level, not an attribute: optimizers deepcopy programs, and a lock cannot be copied. Preparing demos is rare.
_PREPARE_LOCK = threading.Lock()


def default_pool() -> list[dict[str, Any]]:
    return [demo_from_question(q) for q in load_exemplars()]


class MedicalQA(dspy.Module):
    """Answer one exam question in a given :class:`PromptFormat`.

    Args:
        fmt: A :class:`PromptFormat`, a named format or a format file.
        demo_pool: Labelled demos (dicts with question, choices, reasoning, answer); defaults to the bundled
            original exemplars. ``fixed`` selection stores the first ``shots`` as the predictor's demos, where
            DSPy optimizers may replace them and ``save``/``load`` keep them.
        embedder: Text embedder for ``knn-embedding`` demo selection.
        seed: Seed of random demo selection and choice shuffling.

    Returns (from ``forward``) a ``dspy.Prediction`` with ``answer`` (canonical labels "a,c", or a number),
    ``reasoning``, ``completion``, ``parse_error`` (None when parsed), ``samples`` (every voted answer),
    ``prompt_hash`` and ``lm_calls``.

    Example:
        >>> qa = MedicalQA("paper-instruction-preamble")
        >>> with dspy.context(lm=my_lm):
        ...     qa(question="高尿酸血症をきたすのはどれか。", choices=["...", "..."]).answer
    """

    def __init__(self, fmt: str | PromptFormat = DEFAULT_FORMAT, demo_pool: Sequence[dict[str, Any]] | None = None,
                 embedder: Embedder | None = None, seed: int = 0):
        super().__init__()
        self.format = resolve_format(fmt)
        self.seed = seed
        self._pool = list(default_pool() if demo_pool is None else demo_pool)
        self._embedder = embedder
        self._cot_ready = not self.format.self_generated_cot
        self.cot = dspy.ChainOfThought(signature_for(self.format.task_instruction(), self.format.marker))
        self._selector = DemoSelector(self.format, self._pool, embedder, seed)
        if self._selector.fixed:
            self.cot.predict.demos = self._selector.select("")

    @property
    def adapter(self) -> FormatAdapter:
        return FormatAdapter(self.format)

    # -- Medprompt's self-generated chains of thought ------------------------------------------------------------
    def _ensure_self_generated_cot(self) -> None:
        with _PREPARE_LOCK:
            if self._cot_ready:
                return
            zero_shot = MedicalQA(self.format.replace(shots=0, ensemble=1, self_consistency=1,
                                                      self_generated_cot=False, shuffle_choices=False), demo_pool=[])
            kept = []
            for demo in self._pool:
                pred = zero_shot(question=demo["question"], choices=demo["choices"])
                if pred.parse_error is None and sorted(pred.answer.split(",")) == sorted(demo["answer"].split(",")):
                    kept.append({**demo, "reasoning": pred.reasoning})
            # Only chains that reached the gold answer are kept, as Medprompt does.
            self._pool = kept
            self._selector = DemoSelector(self.format, kept, self._embedder, self.seed)
            if self._selector.fixed:
                self.cot.predict.demos = self._selector.select("")
            self._cot_ready = True

    # -- one question ----------------------------------------------------------------------------------------------
    def _permutation(self, question: str, n: int, vote: int) -> list[int]:
        order = list(range(n))
        if vote == 0 and not self.format.shuffle_choices:
            return order
        digest = hashlib.sha256(f"{self.seed}:{vote}:{question}".encode()).digest()
        random.Random(digest).shuffle(order)
        return order

    def prompt_hash(self, question: str, choices: Sequence[str], demos: Sequence[dict[str, Any]] | None = None) -> str:
        """Hash of the exact rendered prompt (first vote), to tell results of different prompts apart.

        ``demos`` are the per-question demos already selected (None: the predictor's own, or select them now)."""
        if demos is None:
            demos = self.cot.predict.demos if self._selector.fixed else self._selector.select(question, choices)
        messages = self.adapter.format(self.cot.predict.signature, [dict(d) for d in demos],
                                       {"question": question, "choices": list(choices)})
        return hashlib.sha256(json.dumps(messages, ensure_ascii=False).encode()).hexdigest()[:16]

    def forward(self, question: str, choices: Sequence[str] = ()) -> dspy.Prediction:
        if not self._cot_ready:
            self._ensure_self_generated_cot()
        fmt = self.format
        choices = list(choices)
        samples: list[dict[str, Any]] = []
        calls = 0
        # Demos depend on the question only, not on the vote: select them once.
        demos = self.cot.predict.demos if self._selector.fixed else self._selector.select(question, choices)
        for vote in range(fmt.ensemble if choices else 1):
            order = self._permutation(question, len(choices), vote)
            shown = [choices[i] for i in order]
            kwargs: dict[str, Any] = {"question": question, "choices": shown}
            if not self._selector.fixed:
                kwargs["demos"] = demos
            if fmt.self_consistency > 1:
                kwargs["config"] = {"n": fmt.self_consistency}
            calls += 1
            for out in self._call(**kwargs):
                samples.append(self._read(out, question, shown, order))
        return self._vote(samples, calls, self.prompt_hash(question, choices, demos))

    def _call(self, **kwargs: Any) -> list[dict[str, Any]]:
        with dspy.context(adapter=self.adapter):
            try:
                pred = self.cot(**kwargs)
            except AdapterParseError as e:
                return [{"reasoning": "", "answer": None, "completion": e.lm_response or "",
                         "parse_error": "empty completion"}]
        completions = pred.completions
        return [completions[i].toDict() for i in range(len(completions))] if completions else [pred.toDict()]

    def _read(self, out: dict[str, Any], question: str, shown: list[str], order: list[int]) -> dict[str, Any]:
        """One completion -> canonical answer in the *original* choice order, or the reason it failed."""
        error = out.get("parse_error")
        answer: tuple[str, ...] = ()
        if error is None and out.get("answer"):
            shown_q = Question(id="", year=0, section="", text=question, choices=tuple(shown), answers=())
            got = extract_answer(str(out["answer"]), shown_q, labels=self.format.display_labels)
            error = got.reason
            answer = tuple(sorted(LABELS[order[LABELS.index(a)]] for a in got.answer)) if shown else got.answer
        elif error is None:
            error = "empty answer"
        return {"answer": answer, "error": error, "reasoning": out.get("reasoning") or "",
                "completion": out.get("completion") or ""}

    @staticmethod
    def _vote(samples: list[dict[str, Any]], calls: int, prompt_hash: str) -> dspy.Prediction:
        parsed = [s for s in samples if s["error"] is None]
        if parsed:
            winner = Counter(s["answer"] for s in parsed).most_common(1)[0][0]
            best = next(s for s in parsed if s["answer"] == winner)
            error = None
        else:
            winner, best = (), samples[0]
            error = best["error"]
        return dspy.Prediction(
            answer=",".join(winner), reasoning=best["reasoning"], completion=best["completion"], parse_error=error,
            samples=[list(s["answer"]) for s in samples], prompt_hash=prompt_hash, lm_calls=calls,
        )


__all__ = ["DEFAULT_FORMAT", "MedicalQA", "NAMED_FORMATS", "default_pool"]
