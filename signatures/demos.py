"""Few-shot demo selection: fixed, random, or nearest neighbours (Medprompt's kNN few-shot) over a labelled pool.

Selection never calls the LM: the neighbour index is built once from the pool's question texts.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medjp_agent.data import Question

from .formats import PromptFormat

Embedder = Callable[[list[str]], Any]


def demo_from_question(q: Question, reasoning: str | None = None) -> dict[str, Any]:
    """A demo dict in the signature's field names; answers are canonical labels, rendered by the adapter."""
    return {
        "question": q.text, "choices": list(q.choices), "reasoning": q.explanation if reasoning is None else reasoning,
        "answer": ",".join(q.answers),
    }


@dataclass(frozen=True)
class ExemplarPool:
    """The demo pool a format draws from for one data source, and what a run manifest should say about it."""

    demos: tuple[dict[str, Any], ...]
    note: str = ""


#: The paper's 1-shot exemplar is IgakuQA's 100E5, the first line of ``<igakuqa>/prompts/prompt.jsonl``.
PAPER_EXEMPLAR = Path("prompts") / "prompt.jsonl"


def exemplar_pool(data: str | Path, fmt: PromptFormat) -> ExemplarPool:
    """The pool ``fmt`` takes its demos from when evaluating ``data``.

    The paper formats (``template="harness"``) use the paper's exemplar: IgakuQA's 100E5 (answer text only, no
    reasoning) when ``data`` is an IgakuQA checkout (or its ``data/`` folder); otherwise the bundled original
    exemplars, and the note says the layout is the paper's but the exemplar a substitute. IgakuQA's text is never
    bundled. Every other format uses the bundled exemplars.
    """
    from medjp_agent.data import load_exemplars

    if fmt.template != "harness" or fmt.shots == 0:
        return ExemplarPool(tuple(demo_from_question(q) for q in load_exemplars()))
    root = Path(str(data))
    found = next((r / PAPER_EXEMPLAR for r in (root, root.parent) if (r / PAPER_EXEMPLAR).is_file()), None)
    if found is None:
        return ExemplarPool(tuple(demo_from_question(q, reasoning="") for q in load_exemplars()),
                            note="paper layout; the exemplar is a bundled substitute (IgakuQA's 100E5 is not "
                                 "redistributed: pass an IgakuQA checkout as --data to use it)")
    first = load_exemplars(found).questions[0]
    return ExemplarPool((demo_from_question(first, reasoning=""),), note=f"paper exemplar {first.id} from {found}")


def _question_text(demo: dict[str, Any]) -> str:
    return f"{demo['question']}\n" + "\n".join(demo.get("choices") or [])


class DemoSelector:
    """Picks ``fmt.shots`` demos from ``pool`` for each question, as ``fmt.demo_selection`` and ``demo_order`` say.

    ``embedder`` (texts -> 2-D array) backs ``knn-embedding``; pass e.g. ``dspy.Embedder(...)``. Without one,
    ``knn-embedding`` falls back to a latent-semantic (TF-IDF + SVD) embedding, which needs no model download.
    """

    def __init__(self, fmt: PromptFormat, pool: Sequence[dict[str, Any]], embedder: Embedder | None = None, seed: int = 0):
        self.fmt, self.pool, self.seed = fmt, list(pool), seed
        self._index = None
        if fmt.demo_selection.startswith("knn") and self.pool:
            self._index = self._build_index(embedder)

    def _build_index(self, embedder: Embedder | None):
        texts = [_question_text(d) for d in self.pool]
        if self.fmt.demo_selection == "knn-embedding" and embedder is not None:
            matrix = np.asarray(embedder(texts), dtype=float)
            return lambda q: _cosine(np.asarray(embedder([q]), dtype=float), matrix)
        from sklearn.feature_extraction.text import TfidfVectorizer

        # Character n-grams: Japanese has no spaces, and medical terms share kanji/katakana substrings.
        vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 3), sublinear_tf=True)
        matrix = vectorizer.fit_transform(texts)
        if self.fmt.demo_selection == "knn-embedding":
            from sklearn.decomposition import TruncatedSVD

            svd = TruncatedSVD(n_components=max(1, min(64, matrix.shape[1] - 1, len(texts) - 1)), random_state=0)
            dense = svd.fit_transform(matrix)
            return lambda q: _cosine(svd.transform(vectorizer.transform([q])), dense)
        return lambda q: (vectorizer.transform([q]) @ matrix.T).toarray()[0]

    @property
    def fixed(self) -> bool:
        return self.fmt.demo_selection == "fixed"

    def select(self, question: str, choices: Sequence[str] = ()) -> list[dict[str, Any]]:
        k = min(self.fmt.shots, len(self.pool))
        text = f"{question}\n" + "\n".join(choices)
        pool = [d for d in self.pool if _question_text(d) != text]  # never show a question its own answer
        k = min(k, len(pool))
        if k == 0:
            return []
        if self.fmt.demo_selection == "fixed":
            chosen = pool[:k]
        elif self.fmt.demo_selection == "random":
            digest = hashlib.sha256(f"{self.seed}:{text}".encode()).digest()
            chosen = random.Random(digest).sample(pool, k)
        else:
            scores = self._index(text)
            by_id = {id(d): s for d, s in zip(self.pool, scores)}
            chosen = sorted(pool, key=lambda d: -by_id[id(d)])[:k]
        if self.fmt.demo_order == "reversed" or (self.fmt.demo_order == "nearest-last" and not self.fixed):
            chosen = chosen[::-1]
        return chosen


def _cosine(query: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    qn = query / (np.linalg.norm(query, axis=1, keepdims=True) + 1e-12)
    mn = matrix / (np.linalg.norm(matrix, axis=1, keepdims=True) + 1e-12)
    return (qn @ mn.T)[0]
