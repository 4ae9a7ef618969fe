"""Answer extraction, grading and aggregation. Nothing here imports an LM."""

from .aggregate import Aggregate, aggregate, aggregate_by
from .extract import Extraction, answer_span, extract_answer, locate_answer, normalize
from .grade import ALWAYS_CORRECT, Grade, grade
from .record import QuestionResult

__all__ = [
    "ALWAYS_CORRECT", "Aggregate", "Extraction", "Grade", "aggregate", "aggregate_by", "answer_span",
    "extract_answer", "grade", "locate_answer", "normalize", "QuestionResult",
]
