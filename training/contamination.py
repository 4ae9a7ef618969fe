"""Does a training set contain evaluation questions? Normalised-text and character n-gram overlap.

Training on the exam one reports (IgakuQA) makes its scores meaningless, and exam questions circulate in
re-worded copies, so exact matching is not enough. Each question is normalised (NFKC, lower case, whitespace and
punctuation removed; Japanese has no word boundaries, so the units are characters) and cut into character
n-grams. A pair (training question, evaluation question) is reported when the share of the evaluation question's
n-grams found in that one training question reaches the threshold: a copy with a changed age or an extra sentence
still shares most of its n-grams, while two questions about the same disease share few 10-character runs.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from medjp_agent.data import Question

_NOISE = re.compile(r"[\s\W_]+")


@dataclass(frozen=True)
class Overlap:
    """One suspicious pair; ``share`` is the fraction of the evaluation question's n-grams in the training one."""

    train_id: str
    eval_id: str
    share: float
    exact: bool


@dataclass(frozen=True)
class ContaminationReport:
    """Every overlapping pair found between a training set and one evaluation set."""

    eval_source: str
    overlaps: tuple[Overlap, ...]
    n_train: int
    n_eval: int
    ngram: int
    threshold: float

    @property
    def clean(self) -> bool:
        return not self.overlaps

    def message(self, most: int = 5) -> str:
        """A one-paragraph summary naming the first pairs, for a warning or an error."""
        if self.clean:
            return f"no overlap between {self.n_train} training and {self.n_eval} evaluation questions"
        eval_ids = {o.eval_id for o in self.overlaps}
        shown = ", ".join(f"{o.train_id}~{o.eval_id} ({'exact' if o.exact else f'{o.share:.0%}'})"
                          for o in self.overlaps[:most])
        more = f" and {len(self.overlaps) - most} more" if len(self.overlaps) > most else ""
        return (f"{len(eval_ids)} of {self.n_eval} questions of {self.eval_source} overlap the training data "
                f"({self.ngram}-gram share >= {self.threshold:.0%}): {shown}{more}")


def normalize_text(text: str) -> str:
    """NFKC, lower case, without whitespace or punctuation: the form questions are compared in."""
    return _NOISE.sub("", unicodedata.normalize("NFKC", text).lower())


def _question_text(q: Question) -> str:
    return normalize_text(q.text + "".join(q.choices))


def char_ngrams(text: str, n: int) -> set[str]:
    """Character n-grams of ``text``; a text shorter than ``n`` is its own single gram."""
    if len(text) <= n:
        return {text} if text else set()
    return {text[i : i + n] for i in range(len(text) - n + 1)}


def find_overlaps(train: Sequence[Question], evaluation: Sequence[Question], *, eval_source: str = "evaluation",
                  ngram: int = 10, threshold: float = 0.5) -> ContaminationReport:
    """Pairs of training and evaluation questions whose text overlaps (see the module docstring).

    An inverted index from n-gram to evaluation questions keeps this linear in the training set's size, so a
    10k-question training set against the whole IgakuQA takes seconds.
    """
    eval_texts = [_question_text(q) for q in evaluation]
    eval_grams = [char_ngrams(t, ngram) for t in eval_texts]
    index: dict[str, list[int]] = defaultdict(list)
    for j, grams in enumerate(eval_grams):
        for gram in grams:
            index[gram].append(j)
    exact = {t: j for j, t in enumerate(eval_texts) if t}
    overlaps = []
    for q in train:
        text = _question_text(q)
        shared = Counter(j for gram in char_ngrams(text, ngram) for j in index.get(gram, ()))
        if text in exact:
            shared[exact[text]] = len(eval_grams[exact[text]])
        for j, count in shared.items():
            share = count / len(eval_grams[j])
            if share >= threshold:
                overlaps.append(Overlap(q.id, evaluation[j].id, round(share, 3), eval_texts[j] == text))
    overlaps.sort(key=lambda o: (-o.share, o.train_id, o.eval_id))
    return ContaminationReport(eval_source, tuple(overlaps), len(train), len(evaluation), ngram, threshold)
