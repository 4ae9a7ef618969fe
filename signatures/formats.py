"""`PromptFormat`: one point in the prompt-format space, as plain frozen data.

Every axis is a field here and is rendered in exactly one place, :mod:`medjp_agent.signatures.adapter` (the
paper harness's own layout, ``template="harness"``, in :mod:`medjp_agent.signatures.harness`, which it dispatches to).
Formats serialise to YAML/JSON (:meth:`PromptFormat.to_dict` / :func:`load_formats`), so users add their own.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_type_hints

import yaml

from medjp_agent.data.fields import type_problem
from medjp_agent.data.textfile import read_text
from medjp_agent.paths import slug_error

Template = Literal["alpaca", "plain", "chat", "markdown", "xml", "json", "harness"]
Position = Literal["header", "preamble", "after"]
Language = Literal["ja", "en"]
LabelScheme = Literal["latin", "upper", "katakana", "digits", "roman"]
Wrapper = Literal["dot", "paren", "right_paren", "bracket", "colon"]
Layout = Literal["lines", "inline"]
Casing = Literal["title", "upper", "lower"]
Reasoning = Literal["direct", "cot", "summarize"]
Output = Literal["marker", "json"]
Selection = Literal["fixed", "random", "knn-tfidf", "knn-embedding"]
Order = Literal["given", "reversed", "nearest-last"]

LABEL_SCHEMES: dict[str, tuple[str, ...]] = {
    "latin": tuple("abcdefghi"),
    "upper": tuple("ABCDEFGHI"),
    "katakana": tuple("アイウエオカキクケ"),
    "digits": tuple("123456789"),
    "roman": tuple("ⅰⅱⅲⅳⅴⅵⅶⅷⅸ"),
}

#: Curated task instructions; ``{reasoning}`` is filled from REASONING_HINTS so one wording serves every mode.
INSTRUCTIONS: dict[str, dict[str, str]] = {
    "ja": {
        "paper": "以下は医学知識に関する多肢選択問題です。{reasoning}最終的な答えを出力してください。",
        "exam": "医師国家試験の問題です。{reasoning}正しい選択肢を選んでください。",
        "concise": "次の医学の問題に答えてください。{reasoning}",
        # The paper's own sentence (japanese-lm-med-harness, template.py); no reasoning hint, it has its own.
        "harness": "以下は医学知識に関する多肢選択問題です。利用可能な情報を要約してから、段階的に解決してください。"
                   "最終的な答えとして5つの選択肢のうちの1つを出力してください。",
    },
    "en": {
        "paper": "The following are multiple-choice questions about medical knowledge. {reasoning}Output the final answer.",
        "exam": "This is a question from the Japanese medical licensing examination. {reasoning}Choose the correct option.",
        "concise": "Answer the following medical question. {reasoning}",
        "harness": "The following are multiple choice questions about medical knowledge. Solve them in a step-by-step "
                   "fashion, starting by summarizing the available information. Output a single option from the five "
                   "options as the final answer.",
    },
}

REASONING_HINTS: dict[str, dict[str, str]] = {
    "ja": {
        "direct": "",
        "cot": "段階的に考えて解き、",
        "summarize": "与えられた情報を要約した上で、段階的に考えて解き、",
    },
    "en": {
        "direct": "",
        "cot": "Solve it step by step, then ",
        "summarize": "Summarise the available information first, then solve it step by step, and ",
    },
}

PERSONAS: dict[str, dict[str, str]] = {
    "none": {"ja": "", "en": ""},
    "examinee": {"ja": "あなたは医師国家試験の受験生です。", "en": "You are a candidate sitting the Japanese medical licensing exam."},
    "specialist": {"ja": "あなたは経験豊富な専門医です。", "en": "You are an experienced medical specialist."},
    "professor": {"ja": "あなたは医学部の教授です。", "en": "You are a professor of medicine."},
}

#: Field descriptors per language. ``answer`` is the default answer-marker word.
DESCRIPTORS: dict[str, dict[str, str]] = {
    "ja": {"instruction": "指示", "input": "入力", "response": "応答", "question": "問題", "choices": "選択肢",
           "reasoning": "解説", "summary": "要約", "answer": "答え"},
    "en": {"instruction": "instruction", "input": "input", "response": "response", "question": "question",
           "choices": "choices", "reasoning": "reasoning", "summary": "summary", "answer": "answer"},
}

ANSWER_WORDS: dict[str, tuple[str, ...]] = {"ja": ("答え", "解答", "正解"), "en": ("answer", "final answer")}


@dataclass(frozen=True)
class PromptFormat:
    """How a question is put to the model and how the answer is read back.

    Attributes:
        name: A label for tables and files.
        template: Family of the layout: Alpaca sections with labelled choices, plain lines, a chat conversation
            (system + user turns), Markdown headings, XML tags, the inputs as one JSON object, or ``harness``: the
            paper's own Alpaca prompts as its author's harness renders them (bare choice texts joined by ``,``, the
            answer is the choice text; see :mod:`medjp_agent.signatures.harness`).
        instruction_position: ``preamble`` (once, before every example; the system message in chat), ``header``
            (first field of every example block) or ``after`` (last input field of every block).
        language: Language of the instruction, persona and descriptors.
        wording: Key of a curated instruction in :data:`INSTRUCTIONS`.
        instruction: Free instruction text; it replaces ``wording`` (DSPy optimizers write here).
        persona: Key of :data:`PERSONAS`; rendered as the first line (the system message in chat).
        labels: Choice label scheme shown to the model (answers are mapped back to canonical a–i).
        full_width: Show labels full-width (ａ instead of a).
        wrapper: How a label is wrapped: ``a.``, ``(a)``, ``a)``, ``[a]`` or ``a:``.
        choice_layout: One choice per line, or all on one line.
        separator: Between a descriptor and its value (``：``, ``: ``, `` - ``, a newline).
        casing: Casing of English descriptors.
        joiner: Between fields of one block, and between blocks.
        answer_word: The answer marker's word; the marker is ``answer_word + separator``. Empty: the language's first.
        shots: Number of demonstrations (0–8).
        demo_selection: ``fixed`` (the first k of the pool), ``random``, or nearest neighbours of the question by
            TF-IDF or embedding (Medprompt's kNN few-shot).
        demo_order: Order of the selected demos; ``nearest-last`` puts the most similar demo next to the question.
        reasoning: ``direct`` answer, chain of thought, or CoT that summarises the case first.
        output: ``marker`` (reasoning, then ``答え：a``) or a ``json`` object ``{"reasoning", "answer"}``.
        chat: Send the prompt through the model's chat template (``template="chat"`` implies it).
        shuffle_choices: Present choices in a per-question shuffled order (answers are mapped back).
        self_consistency: Number of sampled completions per prompt, combined by majority vote.
        ensemble: Medprompt's choice-shuffle ensemble: this many prompts with differently shuffled choices, voted.
        self_generated_cot: Medprompt: demos carry chains of thought the model wrote itself (kept only when their
            answer matched the gold), instead of the exemplars' written explanations.
    """

    name: str = "custom"
    template: Template = "alpaca"
    instruction_position: Position = "header"
    language: Language = "ja"
    wording: str = "paper"
    instruction: str | None = None
    persona: str = "none"
    labels: LabelScheme = "latin"
    full_width: bool = False
    wrapper: Wrapper = "dot"
    choice_layout: Layout = "lines"
    separator: str = "："
    casing: Casing = "title"
    joiner: str = "\n\n"
    answer_word: str = ""
    shots: int = 1
    demo_selection: Selection = "fixed"
    demo_order: Order = "given"
    reasoning: Reasoning = "summarize"
    output: Output = "marker"
    chat: bool = False
    shuffle_choices: bool = False
    self_consistency: int = 1
    ensemble: int = 1
    self_generated_cot: bool = False

    def __post_init__(self) -> None:
        if (bad_name := slug_error(self.name)) is not None:
            raise ValueError(f"PromptFormat.name: {bad_name}")
        hints = get_type_hints(PromptFormat)
        for f in dataclasses.fields(self):
            # Types first: the range and key checks below, and rendering, assume them.
            if (problem := type_problem(hints[f.name], getattr(self, f.name))) is not None:
                raise ValueError(f"PromptFormat.{f.name}: {problem}")
        if self.wording not in INSTRUCTIONS[self.language] and self.instruction is None:
            raise ValueError(f"PromptFormat.wording: {self.wording!r} is not one of {', '.join(INSTRUCTIONS[self.language])}")
        if self.persona not in PERSONAS:
            raise ValueError(f"PromptFormat.persona: {self.persona!r} is not one of {', '.join(PERSONAS)}")
        if not 0 <= self.shots <= 8:
            raise ValueError(f"PromptFormat.shots: {self.shots} is outside 0..8")
        for name in ("self_consistency", "ensemble"):
            if getattr(self, name) < 1:
                raise ValueError(f"PromptFormat.{name}: must be at least 1, got {getattr(self, name)}")

    @property
    def uses_chat(self) -> bool:
        return self.chat or self.template == "chat"

    @property
    def marker(self) -> str:
        return self.descriptor_text(self.answer_word or ANSWER_WORDS[self.language][0]) + self.separator

    def descriptor_text(self, word: str) -> str:
        if self.language == "ja":
            return word
        return {"title": word.title(), "upper": word.upper(), "lower": word.lower()}[self.casing]

    @property
    def display_labels(self) -> tuple[str, ...]:
        labels = LABEL_SCHEMES[self.labels]
        if self.full_width:
            labels = tuple("".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in label) for label in labels)
        return labels

    def task_instruction(self) -> str:
        if self.instruction is not None:
            return self.instruction
        hint = REASONING_HINTS[self.language][self.reasoning]
        return INSTRUCTIONS[self.language][self.wording].format(reasoning=hint)

    def replace(self, **changes: Any) -> "PromptFormat":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """A format file holding this format (``NAME: {fields}``), as ``--format FILE`` reads it."""
        return yaml.safe_dump({self.name: self.to_dict()}, allow_unicode=True, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "<dict>") -> "PromptFormat":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{source}: unknown PromptFormat field {unknown[0]!r}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None


ALPACA_HEADER = "以下に、あるタスクを説明する指示と、それに付随する入力があります。要求を適切に満たす応答を書きなさい。"

_HARNESS = PromptFormat(name="harness", template="harness", wording="harness", joiner="\n")

#: Named formats with a one-line description each (``medjp formats list``). The ``paper-*`` formats are the paper's
#: two prompts exactly as its author's harness renders them (1-shot, as the paper evaluates; ``-0shot`` as the
#: harness's active templates); ``alpaca-labelled-*`` are medjp's earlier labelled-choice Alpaca variants.
NAMED_FORMATS: dict[str, PromptFormat] = {
    "paper-instruction-in-header": _HARNESS.replace(name="paper-instruction-in-header"),
    "paper-instruction-preamble": _HARNESS.replace(name="paper-instruction-preamble",
                                                   instruction_position="preamble"),
    "paper-instruction-in-header-0shot": _HARNESS.replace(name="paper-instruction-in-header-0shot", shots=0),
    "paper-instruction-preamble-0shot": _HARNESS.replace(name="paper-instruction-preamble-0shot",
                                                         instruction_position="preamble", shots=0),
    "alpaca-labelled-in-header": PromptFormat(name="alpaca-labelled-in-header"),
    "alpaca-labelled-preamble": PromptFormat(name="alpaca-labelled-preamble", instruction_position="preamble"),
    "plain-ja-cot": PromptFormat(name="plain-ja-cot", template="plain", instruction_position="preamble", reasoning="cot"),
    "plain-ja-direct": PromptFormat(name="plain-ja-direct", template="plain", instruction_position="preamble",
                                    reasoning="direct", shots=0),
    "chat-ja-cot": PromptFormat(name="chat-ja-cot", template="chat", instruction_position="preamble",
                                persona="examinee", reasoning="cot"),
    "markdown-en-cot": PromptFormat(name="markdown-en-cot", template="markdown", language="en",
                                    instruction_position="preamble", separator=": ", reasoning="cot"),
    "xml-ja-cot": PromptFormat(name="xml-ja-cot", template="xml", instruction_position="preamble", reasoning="cot"),
    "json-ja-cot": PromptFormat(name="json-ja-cot", template="json", output="json", instruction_position="preamble",
                                reasoning="cot"),
    "medprompt": PromptFormat(name="medprompt", template="plain", instruction_position="preamble", reasoning="cot",
                              shots=5, demo_selection="knn-tfidf", demo_order="nearest-last", self_generated_cot=True,
                              ensemble=5),
}

DESCRIPTIONS: dict[str, str] = {
    "paper-instruction-in-header": "The paper's prompt, instruction in ### 指示： (medpalm_five_choice_cot_ja), 1-shot",
    "paper-instruction-preamble": "The paper's prompt, instruction first (alpaca_med_five_choice_cot_ja), 1-shot",
    "paper-instruction-in-header-0shot": "paper-instruction-in-header, 0-shot (the harness's active template)",
    "paper-instruction-preamble-0shot": "paper-instruction-preamble, 0-shot (the harness's active template)",
    "alpaca-labelled-in-header": "Alpaca sections, labelled choices (a. …), summarise-first CoT, 答え： marker, 1-shot",
    "alpaca-labelled-preamble": "alpaca-labelled-in-header with the instruction once, before every example",
    "plain-ja-cot": "Plain 問題/選択肢 lines, chain of thought, 答え： marker, 1-shot",
    "plain-ja-direct": "Plain lines, the answer right after 答え：, 0-shot",
    "chat-ja-cot": "Chat turns through the model's chat template, examinee persona, chain of thought",
    "markdown-en-cot": "Markdown headings in English, chain of thought",
    "xml-ja-cot": "XML-tagged fields, chain of thought",
    "json-ja-cot": "Inputs and the answer as JSON objects, chain of thought",
    "medprompt": "Medprompt: kNN 5-shot with self-generated CoT, choice-shuffle ensemble of 5",
}

PAPER_FORMATS = ("paper-instruction-in-header", "paper-instruction-preamble")


def read_config(path: str | Path) -> Any:
    """The data in a ``.json`` file, or in YAML (any other suffix). A folder, a missing file, text that is not UTF-8
    and a syntax error are each an error naming the file."""
    path = Path(path)
    text = read_text(path)
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: not valid {path.suffix.lstrip('.').upper() or 'YAML'}: {e}") from None


#: The layout of a format file, as its errors state it.
_LAYOUT = "a mapping NAME: {PromptFormat fields} (or a list of field mappings, each with a name)"


def load_formats(path: str | Path) -> dict[str, PromptFormat]:
    """Read named formats from YAML or JSON: a mapping ``name -> fields`` or a list of field mappings with ``name``."""
    path = Path(path)
    raw = read_config(path)
    if isinstance(raw, dict):
        _refuse_flat_format(raw, path)
        items = list(raw.items())
    elif isinstance(raw, list):
        items = []
        for i, d in enumerate(raw, start=1):
            if not isinstance(d, dict) or not d.get("name"):
                raise ValueError(f"{path}: item {i}: expected a mapping of PromptFormat fields with a name, got {d!r}")
            items.append((d["name"], d))
    elif raw is None:  # an empty file holds no formats
        items = []
    else:
        raise ValueError(f"{path}: expected {_LAYOUT}, got {type(raw).__name__} {raw!r}")
    out: dict[str, PromptFormat] = {}
    for name, fields in items:
        if not isinstance(fields, dict):
            raise ValueError(f"{path}: format {name!r}: expected a mapping of PromptFormat fields, got {fields!r}")
        out[name] = PromptFormat.from_dict({**fields, "name": name}, source=f"{path}: format {name!r}")
    return out


def _refuse_flat_format(raw: dict[Any, Any], path: Path) -> None:
    """Refuse the fields of one format written at the top level, and say how to nest them: read as NAME: fields,
    each field would be a format's name and the first error would name a "format 'template'"."""
    fields = {f.name for f in dataclasses.fields(PromptFormat)}
    if not raw or not set(raw) <= fields or any(isinstance(v, dict) for v in raw.values()):
        return
    name = raw.get("name")
    heading = f"{name}:" if isinstance(name, str) and slug_error(name) is None else "NAME:"
    raise ValueError(f"{path}: holds one format's fields at the top level, but a format file is {_LAYOUT}: indent "
                     f"the fields under a line {heading!r}" + (" and drop 'name'" if "name" in raw else ""))


def resolve_format(spec: str | PromptFormat) -> PromptFormat:
    """A named format, ``file.yaml`` (its only format) or ``file.yaml:name``."""
    if isinstance(spec, PromptFormat):
        return spec
    if spec in NAMED_FORMATS:
        return NAMED_FORMATS[spec]
    file, _, name = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    if Path(file).exists():
        formats = load_formats(file)
        if name:
            if name not in formats:
                from medjp_agent.suggest import did_you_mean

                raise ValueError(f"{file}: no format named {name!r}{did_you_mean(name, formats)} "
                                 f"(has {', '.join(formats)})")
            return formats[name]
        if len(formats) != 1:
            raise ValueError(f"{file}: holds {len(formats)} formats; pick one with {file}:NAME")
        return next(iter(formats.values()))
    from medjp_agent.suggest import did_you_mean

    raise ValueError(f"unknown format {spec!r}{did_you_mean(spec, NAMED_FORMATS)}; named formats: "
                     f"{', '.join(NAMED_FORMATS)}, or a YAML/JSON file")
