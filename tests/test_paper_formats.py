"""The paper's two formats exactly as its author's harness renders them, the harness's scoring as parse modes,
the harness question set (`--preset harness`) and `medjp formats list/show`.

The golden files are written by :func:`harness_render` below, a small independent rendering of the harness's
template strings (``japanese-lm-med-harness/template.py``: ``medpalm_five_choice_cot_ja``,
``alpaca_med_five_choice_cot_ja`` and the commented-out 1-shot template), not by medjp's renderer.
Regenerate them with ``python tests/test_paper_formats.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medjp_agent.cli import app
from medjp_agent.data import Question, load_dataset, load_exemplars
from medjp_agent.scoring.harness import harness_exact, harness_gestalt, harness_response

GOLDEN = Path(__file__).parent / "golden"
QUESTION = "SB7"
INSTRUCTION = ("以下は医学知識に関する多肢選択問題です。利用可能な情報を要約してから、段階的に解決してください。"
               "最終的な答えとして5つの選択肢のうちの1つを出力してください。")
# The harness's templates, with liquid's {{instruction}} (the question) and {{input}} (the choices joined by ",").
MEDPALM_JA = "### 指示：\n" + INSTRUCTION + "\n### 入力：\n{{instruction}}\n{{input}}\n### 応答：\n"
ALPACA_MED_JA = INSTRUCTION + "\n### 指示：\n{{instruction}}\n### 入力：\n{{input}}\n### 応答：\n"
# 1-shot: the solved example sits between the instruction and the question; its choices are joined by ", ".
SHOT_IN_HEADER = "### 入力：\n{q}\n{c}\n### 応答：\n{a}\n"
SHOT_PREAMBLE = "### 指示：\n{q}\n### 入力：\n{c}\n### 応答：\n{a}\n"
GOLDENS = {"paper-instruction-in-header": ("header", 1), "paper-instruction-preamble": ("preamble", 1),
           "paper-instruction-in-header-0shot": ("header", 0), "paper-instruction-preamble-0shot": ("preamble", 0)}
runner = CliRunner()


def harness_render(position: str, question: Question, exemplar: Question | None = None) -> str:
    template = MEDPALM_JA if position == "header" else ALPACA_MED_JA
    if exemplar is not None:
        shot = (SHOT_IN_HEADER if position == "header" else SHOT_PREAMBLE).format(
            q=exemplar.text, c=", ".join(exemplar.choices),
            a=", ".join(exemplar.choices["abcde".index(x)] for x in exemplar.answers))
        split = template.index("### 入力：" if position == "header" else "### 指示：\n{{")
        template = template[:split] + shot + template[split:]
    return template.replace("{{instruction}}", question.text).replace("{{input}}", ",".join(question.choices))


def _sample(qid: str = QUESTION) -> Question:
    return next(q for q in load_dataset("sample") if q.id == qid)


def _show(*args: str) -> str:
    res = runner.invoke(app, ["formats", "show", *args])
    assert res.exit_code == 0, res.output
    return res.stdout


@pytest.mark.parametrize("name", GOLDENS)
def test_golden_files_are_the_harness_templates(name):
    position, shots = GOLDENS[name]
    expected = harness_render(position, _sample(), load_exemplars().questions[0] if shots else None)
    assert (GOLDEN / f"{name}.txt").read_text(encoding="utf-8") == expected


@pytest.mark.parametrize("name", GOLDENS)
def test_paper_formats_render_the_golden_prompts(name):
    assert _show(name, "--id", QUESTION) == (GOLDEN / f"{name}.txt").read_text(encoding="utf-8")


def test_the_quoted_shapes():
    header = (GOLDEN / "paper-instruction-in-header-0shot.txt").read_text(encoding="utf-8")
    q = _sample()
    assert header == f"### 指示：\n{INSTRUCTION}\n### 入力：\n{q.text}\n{','.join(q.choices)}\n### 応答：\n"
    preamble = (GOLDEN / "paper-instruction-preamble.txt").read_text(encoding="utf-8")
    assert preamble.count(INSTRUCTION) == 1 and preamble.endswith("### 応答：\n") and "\n\n" not in preamble


def test_shots_flag_and_instruction_for_other_choice_counts():
    assert _show("paper-instruction-in-header", "--id", QUESTION, "--shots", "0") == \
        (GOLDEN / "paper-instruction-in-header-0shot.txt").read_text(encoding="utf-8")
    from medjp_agent.signatures import NAMED_FORMATS, Renderer

    four = Renderer(NAMED_FORMATS["paper-instruction-preamble-0shot"]).completion_prompt(
        [], {"question": "どれか。", "choices": ["甲", "乙", "丙", "丁"]})
    assert four == INSTRUCTION.replace("5つ", "4つ") + "\n### 指示：\nどれか。\n### 入力：\n甲,乙,丙,丁\n### 応答：\n"


def test_paper_exemplar_from_an_igakuqa_checkout(igakuqa):
    exemplar = load_exemplars(igakuqa / "prompts" / "prompt.jsonl").questions[0]
    assert exemplar.id == "100E5"
    question = next(q for q in load_dataset(igakuqa / "data", lenient=True) if q.id == "116A1")
    for name, position in (("paper-instruction-in-header", "header"), ("paper-instruction-preamble", "preamble")):
        assert _show(name, "--data", str(igakuqa), "--id", "116A1") == harness_render(position, question, exemplar)


@pytest.mark.slow
def test_manifest_notes_a_substitute_exemplar(tmp_path):
    from medjp_agent.signatures import NAMED_FORMATS, exemplar_pool

    pool = exemplar_pool("sample", NAMED_FORMATS["paper-instruction-in-header"])
    assert "substitute" in pool.note and pool.demos[0]["reasoning"] == ""
    assert exemplar_pool("sample", NAMED_FORMATS["alpaca-labelled-in-header"]).note == ""
    res = runner.invoke(app, ["eval", "--format", "paper-instruction-in-header", "--limit", "1", "--out",
                              str(tmp_path / "run"), "--max-new-tokens", "4"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text(encoding="utf-8"))
    assert "substitute" in json.dumps(manifest, ensure_ascii=False)
    (row,) = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert "method" in row and (row["method"] != "") == (row["parse_error"] is None)  # how the answer was found


def test_formats_list_and_chat_formats_show_messages_json():
    res = runner.invoke(app, ["formats", "list"])
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert any(line.startswith("paper-instruction-in-header ") for line in lines)
    assert any(line.startswith("alpaca-labelled-preamble ") for line in lines)
    messages = json.loads(_show("chat-ja-cot", "--id", QUESTION))
    assert [m["role"] for m in messages][-1] == "user" and _sample().text in messages[-1]["content"]
    bad = runner.invoke(app, ["formats", "show", "chat-ja-cot", "--id", "NOPE"])
    assert bad.exit_code == 2 and "NOPE" in bad.output


@pytest.mark.parametrize("reply,expected", [
    ("TSH受容体抗体陽性\n### 入力：\n次の問題…\n### 応答：\nc", ("b",)),  # cut at an invented next example
    ("所見を要約すると、甲状腺機能亢進である。\nTSH受容体抗体陽性", ("b",)),  # reasoning, then the choice text
    ("画像がないため回答できません。", ()),
])
def test_paper_format_answers_are_choice_texts(reply, expected, scripted):
    import dspy

    from medjp_agent.signatures import MedicalQA

    q = Question("x", 2025, "S-A", "Basedow病で認められるのはどれか。",
                 ("血中TSHの上昇", "TSH受容体抗体陽性", "徐脈", "体重増加", "甲状腺放射性ヨウ素摂取率の低下"), ("b",))
    with dspy.context(lm=scripted(reply)):
        pred = MedicalQA("paper-instruction-in-header-0shot")(question=q.text, choices=q.choices)
    assert tuple(filter(None, pred.answer.split(","))) == expected
    assert pred.parse_error == (None if expected else "refusal")


Q = Question("h", 2022, "116-A", "どれか。2つ選べ。", ("B型肝炎", "C型肝炎", "A型肝炎", "E型肝炎", "D型肝炎"), ("a", "c"))


@pytest.mark.parametrize("completion,exact,gestalt", [
    ("B型肝炎,A型肝炎\n理由は…", True, True),
    ("  B型肝炎,A型肝炎.  ", True, True),  # stripped, "." removed
    ("A型肝炎,B型肝炎", False, True),  # exact compares the joined string, gestalt the sets
    ("B型肝炎, A型肝炎", False, True),
    ("c", False, False),
])
def test_harness_parse_modes(completion, exact, gestalt):
    assert harness_exact(Q, completion).answer == (("a", "c") if exact else ())
    assert (harness_gestalt(Q, completion).answer == ("a", "c")) == gestalt


def test_harness_response_is_the_first_line():
    assert harness_response("\n 答えはB型肝炎 \n次の行") == "答えはB型肝炎"
    tie = Question("t", 2022, "116-A", "どれか。", ("甲乙", "甲乙", "丙"), ("b",))
    assert harness_gestalt(tie, "甲乙").answer == ("a",)  # ties go to the earlier choice, as in the harness


def test_score_reports_every_parse_mode(tmp_path):
    preds = tmp_path / "p.jsonl"
    qs = list(load_dataset("sample"))
    rows = [{"problem_id": q.id, "prediction": ",".join(q.choices["abcde".index(a)] for a in q.answers)
             if q.choices else q.answers[0]} for q in qs]
    preds.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    res = runner.invoke(app, ["score", "--predictions", str(preds), "--parse", "harness-exact"])
    assert res.exit_code == 0, res.output
    rows = {line.split("│")[1].strip(): line for line in res.stdout.splitlines() if line.count("│") > 3}
    assert f" {len(qs)}/{len(qs)} " in rows["harness-exact *"]  # choice texts: the harness credits every one
    assert f" {len(qs)}/{len(qs)} " in rows["lenient"]  # medjp reads choice texts too
    assert {"strict", "harness-gestalt"} <= set(rows)


def test_preset_harness_selects_the_harness_questions(igakuqa):
    from medjp_agent.data.select import apply_preset

    questions = list(load_dataset(igakuqa / "data", lenient=True))
    kept = apply_preset(questions, "harness")
    assert kept and all(q.text_only and len(q.choices) == 5 and len(q.text) <= 1024 for q in kept)
    left_out = [q for q in questions if q.text_only and len(q.choices) == 5 and q not in kept]
    assert left_out and all(len(q.text) > 1024 for q in left_out)
    with pytest.raises(ValueError, match="harness"):
        apply_preset(questions, "nope")



def test_preset_flag_filters_and_names_bad_presets():
    from medjp_agent.cli.options import load_questions

    _, questions, filters = load_questions("sample", preset="harness")
    assert filters["preset"] == "harness" and questions
    assert all(len(q.choices) == 5 and q.text_only for q in questions)  # the numeric sample question is left out
    res = runner.invoke(app, ["eval", "--preset", "nope", "--limit", "1"])
    assert res.exit_code == 2 and "unknown preset 'nope'" in res.output

if __name__ == "__main__":
    for name, (position, shots) in GOLDENS.items():
        text = harness_render(position, _sample(), load_exemplars().questions[0] if shots else None)
        (GOLDEN / f"{name}.txt").write_text(text, encoding="utf-8")
