"""DSPy signature, prompt formats, the format adapter and the `MedicalQA` module."""

from .adapter import RAW_PROMPT, FormatAdapter, Renderer
from .demos import DemoSelector, demo_from_question
from .formats import (
    NAMED_FORMATS, PAPER_FORMATS, PromptFormat, load_formats, resolve_format,
)
from .module import DEFAULT_FORMAT, MedicalQA, default_pool
from .signature import MedicalMCQ, signature_for

__all__ = [
    "DEFAULT_FORMAT", "NAMED_FORMATS", "PAPER_FORMATS", "RAW_PROMPT", "DemoSelector", "FormatAdapter", "MedicalMCQ",
    "MedicalQA", "PromptFormat", "Renderer", "default_pool", "demo_from_question", "load_formats", "resolve_format",
    "signature_for",
]
