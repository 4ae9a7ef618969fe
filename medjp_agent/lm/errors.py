"""What an LM backend raises when it cannot answer, and what the evaluation core does about each.

Both are :class:`~medjp_agent.errors.LMError`, so a caller that knows neither still stops cleanly and never scores
a failure as an answer.

- :class:`NotRun`: this one question could not be asked (the server keeps returning empty completions; a prompt
  longer than the model's context; out of memory even alone). The core records the question as *not run* with
  ``reason`` (never as a wrong answer) and goes on with the others.
- :class:`ServerUnavailable`: the server itself is down. The core stops the run; what finished is saved and a
  re-run resumes.
"""

from __future__ import annotations

from medjp_agent.errors import LMError


class NotRun(LMError):
    """The question could not be asked; ``reason`` says why, in words for the results file and the report."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ServerUnavailable(LMError):
    """The server kept failing after every retry."""


class RequestRejected(LMError):
    """The server refused the request (4xx other than rate limiting): retrying the same request cannot help.
    ``status`` is the HTTP status, when the refusal was one."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status
