"""medjp-agent: evaluate local LLMs on Japanese medical licensing exams and search for the best prompt format."""

__version__ = "0.1.0"
