"""DSPy signature, prompt formats, the format adapter and the `MedicalQA` module."""

from .adapter import RAW_PROMPT, FormatAdapter, Renderer
from .demos import DemoSelector, ExemplarPool, demo_from_question, exemplar_pool
from .formats import (
    DESCRIPTIONS, NAMED_FORMATS, PAPER_FORMATS, PromptFormat, load_formats, resolve_format,
)
from .module import DEFAULT_FORMAT, MedicalQA, default_pool
from .signature import MedicalMCQ, signature_for

__all__ = [
    "DEFAULT_FORMAT", "DESCRIPTIONS", "ExemplarPool", "NAMED_FORMATS", "PAPER_FORMATS", "RAW_PROMPT", "DemoSelector",
    "FormatAdapter", "MedicalMCQ", "MedicalQA", "PromptFormat", "Renderer", "default_pool", "demo_from_question",
    "exemplar_pool", "load_formats", "resolve_format", "signature_for",
]
