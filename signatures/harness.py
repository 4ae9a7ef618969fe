"""The paper's two prompts exactly as its author's harness renders them (``template="harness"``).

The harness is ``stardust-coder/japanese-lm-med-harness`` (``template.py``, ``eval_bench.py``). Its prompt is
Alpaca sections with full-width colons, each header on its own line, sections joined by a single newline, ending
with ``### 応答：\\n``; the choices are the bare choice texts joined by ``,`` and the expected response is the choice
text itself (several joined by ``,``), not a label:

- instruction in the header (``medpalm_five_choice_cot_ja``)::

    ### 指示：\\n{instruction}\\n### 入力：\\n{question}\\n{choices}\\n### 応答：\\n

- instruction as a preamble (``alpaca_med_five_choice_cot_ja``)::

    {instruction}\\n### 指示：\\n{question}\\n### 入力：\\n{choices}\\n### 応答：\\n

A k-shot prompt (the harness's commented-out 1-shot template) puts each solved example between the instruction and
the question, its choices joined by ``", "`` and its response the answer text only; the instruction appears once.
The instruction names the number of options: for a question with n ≠ 5 choices only the 5 becomes n.

``instruction_position="after"`` (not the harness's; a point of the search space) is the in-header layout with the
instruction section moved after the question's own input: ``{shots}### 入力：\n{question}\n{choices}\n### 指示：\n
{instruction}\n### 応答：\n``. Only the template, instruction position, language, wording (and the reasoning hint
it may hold), shots, chat and voting change a harness prompt: the search fixes every other axis
(:data:`medjp_agent.optimizers.space.HARNESS_IGNORES`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from medjp_agent.data import LABELS

from .adapter import Renderer

#: (instruction, input, response) headers per language, as the harness writes them.
HEADERS = {"ja": ("### 指示：", "### 入力：", "### 応答："), "en": ("### Instruction:", "### Input:", "### Response:")}
_COUNT = {"ja": ("5つの選択肢", "{n}つの選択肢"), "en": ("the five options", "the {n} options")}
_EN_NUMBERS = dict(enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")))


class HarnessRenderer(Renderer):
    """A :class:`Renderer` for ``template="harness"``: the harness's prompt, answer texts instead of labels."""

    @property
    def headers(self) -> tuple[str, str, str]:
        return HEADERS[self.fmt.language]

    def instruction_for(self, n_choices: int) -> str:
        """The instruction for a question with ``n_choices`` options (unchanged for 5, or without choices)."""
        five, many = _COUNT[self.fmt.language]
        if n_choices in (0, 5):
            return self.instruction
        count = str(n_choices) if self.fmt.language == "ja" else _EN_NUMBERS.get(n_choices, str(n_choices))
        return self.instruction.replace(five, many.format(n=count))

    def answer_text(self, answer: Any, choices: Sequence[str], joiner: str = ",") -> str:
        """Canonical labels -> the choice texts they name; anything else (a number) as given."""
        tokens = answer if isinstance(answer, (list, tuple)) else re.split(r"[,、\s]+", str(answer).strip())
        tokens = [str(t) for t in tokens if str(t)]
        if choices and tokens and all(t in LABELS[: len(choices)] for t in tokens):
            return joiner.join(choices[LABELS.index(t)] for t in tokens)
        return joiner.join(tokens)

    def block(self, question: str, choices: str, instruction: str | None = None) -> str:
        """One example's input sections, up to and including the response header; ``instruction`` (the "after"
        position, the question's own block only) goes last."""
        instruction_header, input_, response = self.headers
        if self.fmt.instruction_position == "preamble":
            return f"{instruction_header}\n{question}\n{input_}\n{choices}\n{response}\n"
        last = f"{instruction_header}\n{instruction}\n" if instruction is not None else ""
        return f"{input_}\n{question}\n{choices}\n{last}{response}\n"

    def completion_prompt(self, demos: Sequence[dict[str, Any]], inputs: dict[str, Any]) -> str:
        choices = list(inputs.get("choices") or [])
        instruction = self.instruction_for(len(choices))
        position = self.fmt.instruction_position
        head = {"preamble": f"{instruction}\n", "header": f"{self.headers[0]}\n{instruction}\n", "after": ""}[position]
        shots = "".join(
            self.block(str(d.get("question", "")), ", ".join(d.get("choices") or []))
            + self.answer_text(d.get("answer", ""), list(d.get("choices") or []), ", ") + "\n"
            for d in demos
        )
        last = instruction if position == "after" else None
        return head + shots + self.block(str(inputs.get("question", "")), ",".join(choices), last)

    def chat_messages(self, demos: Sequence[dict[str, Any]], inputs: dict[str, Any]) -> list[dict[str, str]]:
        # The harness prompts a base model with raw text; in chat the whole prompt is the one user turn.
        return [{"role": "user", "content": self.completion_prompt(demos, inputs)}]

    def response_header(self) -> str:
        return f"{self.headers[2]}\n"

    def prompt_tail(self) -> str:
        return self.response_header()

    def response(self, reasoning: str | None, answer: Any, choices: Sequence[str]) -> str:
        """The harness's expected response: the answer's choice texts joined by ``,`` (a number as given). It holds
        no reasoning, whatever ``reasoning`` is: the harness reads the whole response as the answer."""
        return self.answer_text(answer, choices)

    def block_starts(self) -> list[str]:
        return [self.headers[0], self.headers[1]]

    def split_completion(self, completion: str) -> tuple[str, str | None]:
        """("", the response up to any invented next example): the whole response is read for the answer."""
        text = completion
        for start in self.block_starts():
            at = text.find(start)
            if at >= 0:
                text = text[:at]
        return "", text.strip()
