"""`MedicalQA`: the chain-of-thought exam module users run, optimise, save and load.

It composes one ``dspy.ChainOfThought`` predictor and knows nothing about LMs; the format's adapter is activated
with ``dspy.context`` *inside* ``forward``, so optimizers' own meta-prompts keep DSPy's default adapters.
Choice shuffling, self-consistency and Medprompt's shuffle ensemble are votes over calls of that one predictor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import dspy

from medjp_agent.data import LABELS, load_exemplars
from medjp_agent.prompt_log import prompts_logged
from medjp_agent.scoring import Extraction

from .adapter import FormatAdapter, ensemble_hash
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

    Returns (from ``forward``) a ``dspy.Prediction`` with ``extraction`` (the winning :class:`Extraction`, labels
    in the original choice order, as the adapter found them), ``answer`` (the same labels as "a,c", for DSPy
    metrics), ``reasoning``, ``completion``, ``parse_error`` (None when parsed), ``samples`` (every voted answer),
    ``prompt_hash`` (of the prompt(s) actually sent) and ``lm_calls``.

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

    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        """DSPy's state, with demos cut to the signature's fields: demos that optimizers bootstrap from traces also
        carry what the adapter returned besides them (the extraction, the raw completion, the prompt hash)."""
        state = super().dump_state(json_mode=json_mode)
        keep = {*self.cot.predict.signature.fields, "augmented"}
        for predictor in state.values():
            predictor["demos"] = [{k: v for k, v in demo.items() if k in keep} for demo in predictor.get("demos", [])]
        return state

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
                if pred.extraction.ok and sorted(pred.extraction.answer) == sorted(demo["answer"].split(",")):
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

    def forward(self, question: str, choices: Sequence[str] | None = ()) -> dspy.Prediction:
        if not self._cot_ready:
            self._ensure_self_generated_cot()
        ballot = self._ballot(question, choices)
        for order, kwargs in ballot.calls:
            ballot.add(order, self._call(**kwargs))
        return ballot.result()

    async def aforward(self, question: str, choices: Sequence[str] | None = ()) -> dspy.Prediction:
        """:meth:`forward` on DSPy's async path (``acall``): the same calls in the same order, awaited."""
        if not self._cot_ready:
            # One-off, shared by every question, and under a thread lock: prepared synchronously (it holds the event
            # loop once), so no task of this loop can wait on the lock while another holds it.
            self._ensure_self_generated_cot()
        ballot = self._ballot(question, choices)
        for order, kwargs in ballot.calls:
            ballot.add(order, await self._acall(**kwargs))
        return ballot.result()

    def _ballot(self, question: str, choices: Sequence[str] | None) -> "_Ballot":
        """The calls that answer one question: one per ensemble member, each with its own order of the choices (no
        choices, or None: a numeric question)."""
        fmt = self.format
        choices = list(choices or ())
        # Demos depend on the question only, not on the vote: select them once.
        demos = self.cot.predict.demos if self._selector.fixed else self._selector.select(question, choices)
        calls = []
        for vote in range(fmt.ensemble if choices else 1):
            order = self._permutation(question, len(choices), vote)
            kwargs: dict[str, Any] = {"question": question, "choices": [choices[i] for i in order]}
            if not self._selector.fixed:
                kwargs["demos"] = demos
            if fmt.self_consistency > 1:
                kwargs["config"] = {"n": fmt.self_consistency}
            calls.append((order, kwargs))
        return _Ballot(calls)

    def prompts(self, question: str, choices: Sequence[str] | None = ()) -> list[list[dict[str, Any]]]:
        """The messages of each LM call for this question (one per ensemble member, each with its order of the
        choices), rendered without asking the LM: before Medprompt's self-generated chains of thought are
        prepared, their demos carry the pool's own explanations."""
        return [self.adapter.format(self.cot.predict.signature,
                                    [dict(d) for d in kwargs.get("demos", self.cot.predict.demos)],
                                    {"question": kwargs["question"], "choices": kwargs["choices"]})
                for _, kwargs in self._ballot(question, choices).calls]

    def _call(self, **kwargs: Any) -> list[dict[str, Any]]:
        with dspy.context(adapter=self.adapter):
            return _outputs(self.cot(**kwargs))

    async def _acall(self, **kwargs: Any) -> list[dict[str, Any]]:
        with dspy.context(adapter=self.adapter):
            return _outputs(await self.cot.acall(**kwargs))


@dataclasses.dataclass
class _Ballot:
    """One question's votes: the calls to make (``(order of the choices, predictor kwargs)``) and what came back."""

    calls: list[tuple[list[int], dict[str, Any]]]
    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    hashes: list[str] = dataclasses.field(default_factory=list)
    prompts: list[Any] = dataclasses.field(default_factory=list)  # the messages sent, kept only under --log-prompts

    def add(self, order: list[int], outputs: list[dict[str, Any]]) -> None:
        self.hashes.append(outputs[0]["prompt_hash"])
        self.prompts.append(outputs[0].get("prompt"))
        self.samples += [_in_original_order(out, order) for out in outputs]

    def result(self) -> dspy.Prediction:
        hashes, prompts = self.hashes, self.prompts
        prompt_hash = ensemble_hash(hashes)
        # An ensemble's prompts in the order they were sent, like its hash.
        prompt = (prompts[0] if len(prompts) == 1 else prompts) if prompts_logged() else None
        return _vote(self.samples, len(hashes), prompt_hash, prompt)


def _outputs(pred: dspy.Prediction) -> list[dict[str, Any]]:
    """Every completion of one predictor call (``n`` of them under self-consistency)."""
    completions = pred.completions
    return [completions[i].toDict() for i in range(len(completions))] if completions else [pred.toDict()]


def _in_original_order(out: dict[str, Any], order: list[int]) -> dict[str, Any]:
    """One completion's extraction with labels mapped from the shown (maybe shuffled) order back to the original."""
    got: Extraction = out["extraction"]
    if got.answer and order != sorted(order):
        got = dataclasses.replace(got, answer=tuple(sorted(LABELS[order[LABELS.index(a)]] for a in got.answer)))
    return {"extraction": got, "reasoning": out.get("reasoning") or "", "completion": out.get("completion") or ""}


def _vote(samples: list[dict[str, Any]], calls: int, prompt_hash: str, prompt: Any = None) -> dspy.Prediction:
    """Majority vote over the parsed samples; the winner keeps the extraction of the first sample that gave it."""
    parsed = [s for s in samples if s["extraction"].ok]
    if parsed:
        winner = Counter(s["extraction"].answer for s in parsed).most_common(1)[0][0]
        best = next(s for s in parsed if s["extraction"].answer == winner)
    else:
        best = samples[0]
    extraction: Extraction = best["extraction"]
    return dspy.Prediction(
        answer=",".join(extraction.answer), extraction=extraction, reasoning=best["reasoning"],
        completion=best["completion"], parse_error=extraction.reason, prompt_hash=prompt_hash, lm_calls=calls,
        samples=[list(s["extraction"].answer) for s in samples], prompt=prompt,
    )

__all__ = ["DEFAULT_FORMAT", "MedicalQA", "NAMED_FORMATS", "default_pool"]
