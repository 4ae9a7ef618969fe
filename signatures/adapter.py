"""`FormatAdapter`: the one DSPy adapter that renders every :class:`PromptFormat` and parses the answer back.

It renders what the *program* holds, not constants: ``signature.instructions`` (which MIPROv2, COPRO and GEPA
rewrite), the answer field's ``prefix`` (COPRO rewrites it) and the demos. Raw-completion formats become one user
message named :data:`RAW_PROMPT`, whose content the backend uses as the prompt verbatim; chat formats become
system/user/assistant turns for the model's chat template.

Its ``__call__`` (DSPy's public adapter entry point) renders each prompt once, sends exactly that, and reads every
completion into an :class:`~medjp_agent.scoring.Extraction` with the extractor's public function, so the parsed
answer keeps its type (labels, how they were found, or why nothing was) all the way to the result file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

import dspy

from medjp_agent.data import LABELS, Question
from medjp_agent.errors import lm_boundary
from medjp_agent.lm.options import RAW_PROMPT
from medjp_agent.lm.prompts import is_ensemble, prompt_sent, raw_messages
from medjp_agent.prompt_log import prompts_logged
from medjp_agent.scoring import Extraction, extract_answer, locate_answer

from .formats import ALPACA_HEADER, DESCRIPTORS, PERSONAS, PromptFormat

_ALPACA_HEADER_EN = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
_WRAPPERS = {"dot": "{}.", "paren": "({})", "right_paren": "{})", "bracket": "[{}]", "colon": "{}:"}


def answer_prefix(signature: type[dspy.Signature], default: str) -> str:
    field = signature.output_fields.get("answer")
    prefix = (field.json_schema_extra or {}).get("prefix") if field is not None else None
    # DSPy's automatic prefix ("Answer:") means nobody set one: the format's marker applies.
    return default if not prefix or prefix == "Answer:" else prefix


class Renderer:
    """Renders blocks of one format. Kept apart from the adapter so training data uses the very same text."""

    def __new__(cls, fmt: PromptFormat, *args: Any, **kwargs: Any) -> "Renderer":
        # The paper's harness layout has its own renderer; every caller keeps constructing a plain ``Renderer``.
        if cls is Renderer and fmt.template == "harness":
            from .harness import HarnessRenderer

            cls = HarnessRenderer
        return super().__new__(cls)

    def __init__(self, fmt: PromptFormat, instruction: str | None = None, marker: str | None = None):
        self.fmt = fmt
        self.instruction = fmt.task_instruction() if instruction is None else instruction
        self.marker = marker or fmt.marker
        self.words = DESCRIPTORS[fmt.language]

    # -- pieces -------------------------------------------------------------------------------------------------
    def word(self, key: str) -> str:
        return self.fmt.descriptor_text(self.words[key])

    def choices(self, choices: Sequence[str]) -> str:
        labels = self.fmt.display_labels
        items = [f"{_WRAPPERS[self.fmt.wrapper].format(labels[i])} {text}" for i, text in enumerate(choices)]
        return ("\n" if self.fmt.choice_layout == "lines" else " ").join(items)

    def display_answer(self, answer: Any, n_choices: int) -> str:
        """Canonical labels ("a,c" or ["a", "c"]) in the format's labels; anything else is shown as given."""
        tokens = answer if isinstance(answer, (list, tuple)) else re.split(r"[,、\s]+", str(answer).strip())
        tokens = [str(t) for t in tokens if str(t)]
        if n_choices and tokens and all(t in LABELS[:n_choices] for t in tokens):
            return ",".join(self.fmt.display_labels[LABELS.index(t)] for t in tokens)
        return ",".join(tokens) if isinstance(answer, (list, tuple)) else str(answer).strip()

    def field(self, key: str, value: str) -> str:
        fmt, word = self.fmt, self.word(key)
        if fmt.template == "alpaca":
            return f"### {word}{fmt.separator.rstrip()}\n{value}"
        if fmt.template == "markdown":
            return f"## {word}\n{value}"
        if fmt.template == "xml":
            return f"<{key}>\n{value}\n</{key}>"
        if "\n" in value and not fmt.separator.endswith("\n"):
            return f"{word}{fmt.separator.rstrip()}\n{value}"
        return f"{word}{fmt.separator}{value}"

    # -- blocks -------------------------------------------------------------------------------------------------
    def preamble(self, chat: bool) -> str:
        """Text before the first example; the system message in chat."""
        fmt = self.fmt
        parts = [PERSONAS[fmt.persona][fmt.language]]
        if fmt.instruction_position == "preamble":
            parts.append(self.instruction)
        elif fmt.template == "alpaca" and not chat:
            parts.append(ALPACA_HEADER if fmt.language == "ja" else _ALPACA_HEADER_EN)
        return "\n".join(p for p in parts if p)

    def example_input(self, inputs: dict[str, Any]) -> str:
        fmt = self.fmt
        question = str(inputs.get("question", ""))
        choices = list(inputs.get("choices") or [])
        extra = {k: v for k, v in inputs.items() if k not in ("question", "choices")}
        header = fmt.instruction_position == "header"
        after = fmt.instruction_position == "after"
        if fmt.template == "json":
            obj: dict[str, Any] = {}
            if header:
                obj[self.word("instruction")] = self.instruction
            obj[self.word("question")] = question
            if choices:
                obj[self.word("choices")] = dict(zip(fmt.display_labels, choices))
            obj.update(extra)
            if after:
                obj[self.word("instruction")] = self.instruction
            return json.dumps(obj, ensure_ascii=False)
        if fmt.template == "alpaca":
            rest = [self.choices(choices)] if choices else []
            if after:
                rest.append(self.instruction)
            if header:
                sections = [("instruction", self.instruction), ("input", "\n".join([question, *rest]))]
            else:
                sections = [("instruction", question)] + ([("input", "\n\n".join(rest))] if rest else [])
        else:
            sections = [("instruction", self.instruction)] if header else []
            sections.append(("question", question))
            if choices:
                sections.append(("choices", self.choices(choices)))
            if after:
                sections.append(("instruction", self.instruction))
        sections += [(k, str(v)) for k, v in extra.items() if k in self.words]
        return fmt.joiner.join(self.field(k, v) for k, v in sections)

    def response_header(self) -> str:
        """What the prompt ends with, after which the model writes (empty in chat)."""
        fmt = self.fmt
        if fmt.template == "alpaca":
            return f"### {self.word('response')}{fmt.separator.rstrip()}\n"
        if fmt.template == "markdown":
            return f"## {self.word('response')}\n"
        if fmt.template == "xml":
            return "<response>\n"
        if fmt.output == "json":
            return ""
        key = "summary" if fmt.reasoning == "summarize" else "reasoning"
        return "" if fmt.reasoning == "direct" else f"{self.word(key)}{fmt.separator}"

    def prompt_tail(self) -> str:
        """The header plus, for direct marker answers, the marker itself, so the completion is the answer."""
        direct = self.fmt.reasoning == "direct" and self.fmt.output == "marker"
        return self.response_header() + (self.marker if direct else "")

    def response(self, reasoning: str | None, answer: Any, choices: Sequence[str]) -> str:
        """A demo's response body, as the model is expected to write it (after :meth:`response_header`), for a
        question showing ``choices`` in this order (a subclass may answer with their texts)."""
        fmt = self.fmt
        shown = self.display_answer(answer, len(choices))
        reasoning = (reasoning or "").strip() if fmt.reasoning != "direct" else ""
        if fmt.output == "json":
            labels = shown.split(",") if choices else shown
            obj = {"reasoning": reasoning, "answer": labels} if reasoning else {"answer": labels}
            body = json.dumps(obj, ensure_ascii=False)
        else:
            body = f"{reasoning}\n{self.marker}{shown}" if reasoning else f"{self.marker}{shown}"
        return body + ("\n</response>" if fmt.template == "xml" else "")

    def block_starts(self) -> list[str]:
        """Text that opens a new example: a completion is cut there, so a model that runs on into an invented next
        question cannot put its answer in place of the real one."""
        first = self.example_input({"question": "\x00", "choices": []}).split("\x00")[0].strip().split("\n")[0]
        return [s for s in {first, self.preamble(chat=False).strip()[:20]} if len(s) >= 2]

    # -- whole prompts ------------------------------------------------------------------------------------------
    def demo_block(self, demo: dict[str, Any]) -> tuple[str, str]:
        choices = list(demo.get("choices") or [])
        return self.example_input(_inputs_of(demo)), self.response(demo.get("reasoning"), demo.get("answer", ""),
                                                                   choices)

    def completion_prompt(self, demos: Sequence[dict[str, Any]], inputs: dict[str, Any]) -> str:
        j = self.fmt.joiner
        parts = [self.preamble(chat=False)]
        for demo in demos:
            text, response = self.demo_block(demo)
            parts.append(f"{text}{j}{self.response_header()}{response}")
        parts.append(f"{self.example_input(inputs)}{j}{self.prompt_tail()}")
        return j.join(p for p in parts if p)

    def chat_messages(self, demos: Sequence[dict[str, Any]], inputs: dict[str, Any]) -> list[dict[str, str]]:
        messages = []
        system = self.preamble(chat=True)
        if system:
            messages.append({"role": "system", "content": system})
        for demo in demos:
            text, response = self.demo_block(demo)
            messages += [{"role": "user", "content": text}, {"role": "assistant", "content": response}]
        messages.append({"role": "user", "content": self.example_input(inputs)})
        return messages

    # -- parsing ------------------------------------------------------------------------------------------------
    def split_completion(self, completion: str) -> tuple[str, str | None]:
        """(reasoning, answer span or None when no answer could be located)."""
        text = completion
        for start in self.block_starts():
            at = text.find(start, 1)
            if at > 0:
                text = text[:at]
        text = text.replace("</response>", "")
        if self.fmt.output == "json":
            return _parse_json_answer(text)
        found = locate_answer(text, self.marker)
        if found is None:
            if self.fmt.reasoning == "direct":  # the prompt already ended with the marker
                first = next((line.strip() for line in text.split("\n") if line.strip()), "")
                return "", first
            return text.strip(), None
        at, span = found
        return text[:at].strip(), span


def _parse_json_answer(text: str) -> tuple[str, str | None]:
    start, end = text.find("{"), text.rfind("}")
    if start >= 0 and end > start:
        try:
            obj = json.loads(text[start : end + 1])
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and "answer" in obj:
            answer = obj["answer"]
            span = ",".join(map(str, answer)) if isinstance(answer, list) else str(answer)
            return str(obj.get("reasoning", "")), span
    found = re.search(r'"answer"\s*:\s*(\[[^\]]*\]|"[^"]*"|[-\d.]+)', text)
    if found:
        return text[:start].strip() if start > 0 else "", re.sub(r'[\[\]"]', "", found.group(1))
    return text.strip(), None


def _inputs_of(demo: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in demo.items() if k not in ("reasoning", "answer") and not k.startswith("_")}


class FormatAdapter(dspy.Adapter):
    """Renders a signature + demos + inputs in one :class:`PromptFormat`, and parses completions back.

    ``parse`` never raises on a bad answer: it returns ``answer=None`` and a ``parse_error`` so the caller can score
    the question wrong with the reason recorded. The raw text is kept as ``completion``.
    """

    def __init__(self, fmt: PromptFormat):
        super().__init__()
        self.fmt = fmt

    def renderer(self, signature: type[dspy.Signature]) -> Renderer:
        return Renderer(self.fmt, instruction=signature.instructions, marker=answer_prefix(signature, self.fmt.marker))

    def format(self, signature: type[dspy.Signature], demos: list[dict[str, Any]], inputs: dict[str, Any]) -> list[dict[str, Any]]:
        r = self.renderer(signature)
        # Demos that DSPy optimizers bootstrap carry whatever the traced prediction held; only the signature's
        # fields belong in a prompt.
        keep = {*signature.input_fields, *signature.output_fields, "reasoning"}
        demos = [{k: v for k, v in d.items() if k in keep} for d in demos]
        inputs = {k: v for k, v in inputs.items() if k in signature.input_fields}
        if self.fmt.uses_chat:
            return r.chat_messages(demos, inputs)
        return raw_messages(r.completion_prompt(demos, inputs))

    def parse(self, signature: type[dspy.Signature], completion: str) -> dict[str, Any]:
        """``answer`` is the span after the marker: None when no answer was found, "" when it was empty."""
        reasoning, span = self.renderer(signature).split_completion(completion)
        return {"reasoning": reasoning, "answer": span, "completion": completion,
                "parse_error": self.parse_error(signature, span)}

    def parse_error(self, signature: type[dspy.Signature], span: str | None) -> str | None:
        if span:
            return None
        if span is not None:
            return "empty answer"
        if self.fmt.output == "json":
            return 'no "answer" in a JSON object in the completion'
        return f"no answer marker {self.renderer(signature).marker.strip()!r} in the completion"

    def __call__(self, lm: dspy.BaseLM, lm_kwargs: dict[str, Any], signature: type[dspy.Signature],
                 demos: list[dict[str, Any]], inputs: dict[str, Any]) -> list[dict[str, Any]]:
        """Render the prompt once, send exactly that, and read every completion into an :class:`Extraction`.

        This is DSPy's public adapter entry point (``Predict`` calls it), replaced whole so that the prompt hashed
        is the prompt sent and the parsed answer keeps its type: each completion comes back with ``extraction``
        (labels as *shown* in this prompt, how they were found, or why nothing was), ``completion`` (the raw text)
        and ``prompt_hash``, next to the signature's own ``reasoning`` and ``answer``.
        """
        messages = self.format(signature, demos, inputs)
        with lm_boundary():
            outputs = lm(messages=messages, **lm_kwargs)
        return self.read_all(signature, messages, inputs, outputs)

    async def acall(self, lm: dspy.BaseLM, lm_kwargs: dict[str, Any], signature: type[dspy.Signature],
                    demos: list[dict[str, Any]], inputs: dict[str, Any]) -> list[dict[str, Any]]:
        """:meth:`__call__` on DSPy's async path (``Predict.aforward`` awaits it): the same prompt, sent with the
        LM's ``acall``, read the same way."""
        messages = self.format(signature, demos, inputs)
        with lm_boundary():
            outputs = await lm.acall(messages=messages, **lm_kwargs)
        return self.read_all(signature, messages, inputs, outputs)

    def read_all(self, signature: type[dspy.Signature], messages: list[dict[str, Any]], inputs: dict[str, Any],
                 outputs: Sequence[Any]) -> list[dict[str, Any]]:
        """Every output of one call of ``messages`` (rendered from ``inputs``), each read by :meth:`read`."""
        prompt_hash = hash_prompt(messages)
        shown = Question(id="", year=0, section="", text=str(inputs.get("question", "")),
                         choices=tuple(inputs.get("choices") or ()), answers=())
        # --log-prompts: what was sent travels with each output to the question's result (a raw prompt as its text).
        sent = {"prompt": prompt_sent(messages)} if prompts_logged() else {}
        return [{**self.read(signature, output, shown, prompt_hash), **sent} for output in outputs]

    def read(self, signature: type[dspy.Signature], output: Any, shown: Question, prompt_hash: str) -> dict[str, Any]:
        """One LM output -> the signature's fields plus ``extraction``, ``completion`` and ``prompt_hash``."""
        text = str((output.get("text") if isinstance(output, dict) else output) or "")
        parsed = self.parse(signature, text)
        if not text.strip():
            extraction = Extraction(reason="empty completion")
        elif parsed["parse_error"] is not None:
            extraction = Extraction(reason=parsed["parse_error"])
        else:
            extraction = extract_answer(parsed["answer"], shown, labels=self.fmt.display_labels)
        return {**parsed, "extraction": extraction, "parse_error": extraction.reason, "prompt_hash": prompt_hash}


def hash_prompt(messages: Sequence[Any] | str) -> str:
    """Short hash of the messages exactly as sent, to tell results of different prompts apart; a raw prompt's text
    (as ``--log-prompts`` keeps it) hashes as the message it was sent in, and an ensemble's prompts (a list of
    prompts) as :func:`ensemble_hash` of theirs."""
    if is_ensemble(messages):
        return ensemble_hash([hash_prompt(p) for p in messages])
    sent = raw_messages(messages) if isinstance(messages, str) else list(messages)
    return hashlib.sha256(json.dumps(sent, ensure_ascii=False).encode()).hexdigest()[:16]


def ensemble_hash(hashes: Sequence[str]) -> str:
    """One question's prompt hash from its calls' (in the order sent): the hash itself for a single call."""
    return hashes[0] if len(hashes) == 1 else hashlib.sha256(":".join(hashes).encode()).hexdigest()[:16]
