"""The DSPy signature of a Japanese medical-licensing-exam question."""

from __future__ import annotations

import dspy


class MedicalMCQ(dspy.Signature):
    """以下は医学知識に関する多肢選択問題です。段階的に考えて解き、最終的な答えを出力してください。"""

    question: str = dspy.InputField(desc="問題文")
    choices: list[str] = dspy.InputField(desc="選択肢。空のときは数値で答える計算問題")
    answer: str = dspy.OutputField(desc="選んだ選択肢の記号（複数ならカンマ区切り）、または計算問題の数値")


def signature_for(instructions: str, marker: str) -> type[dspy.Signature]:
    """MedicalMCQ carrying a format's instruction and answer marker, where optimizers can rewrite both."""
    return MedicalMCQ.with_instructions(instructions).with_updated_fields("answer", prefix=marker)
