"""PromptFormat rendering (golden files for the labelled Alpaca formats), the FormatAdapter and MedicalQA."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import dspy
import pytest

from medjp_agent.data import LABELS, Question, load_dataset
from medjp_agent.lm.options import RAW_PROMPT
from medjp_agent.signatures import (
    NAMED_FORMATS, MedicalMCQ, MedicalQA, PromptFormat, Renderer, load_formats,
    resolve_format,
)

GOLDEN = Path(__file__).parent / "golden"
SAMPLE = {q.id: q for q in load_dataset("sample")}


def rendered(qa: MedicalQA, q: Question) -> list[dict]:
    return qa.adapter.format(qa.cot.predict.signature, qa.cot.predict.demos,
                             {"question": q.text, "choices": list(q.choices)})


LABELLED = ("alpaca-labelled-in-header", "alpaca-labelled-preamble")  # the paper's own: tests/test_paper_formats.py


@pytest.mark.parametrize("name", LABELLED)
def test_labelled_alpaca_formats_match_golden_files(name):
    (msg,) = rendered(MedicalQA(name), SAMPLE["SB7"])
    assert msg["name"] == RAW_PROMPT and msg["role"] == "user"
    assert msg["content"] == (GOLDEN / f"{name}.txt").read_text(encoding="utf-8")


def test_labelled_formats_differ_only_in_where_the_instruction_sits():
    header, preamble = (rendered(MedicalQA(n), SAMPLE["SB7"])[0]["content"] for n in LABELLED)
    instruction = NAMED_FORMATS[LABELLED[0]].task_instruction()
    assert header.count("### 指示：\n" + instruction) == 2  # in every block's 指示 section
    assert preamble.startswith(instruction) and preamble.count(instruction) == 1
    for text in (header, preamble):
        assert text.endswith("### 応答：\n") and text.count("答え：b") == 1  # the 1-shot demo's answer


def reply_for(fmt: PromptFormat, q: Question, answer: tuple[str, ...], order: list[int] | None = None) -> str:
    """What a well-behaved model writes in this format: the demo response shape, with display labels."""
    order = order or list(range(len(q.choices)))
    shown = ",".join(LABELS[order.index(LABELS.index(a))] for a in answer) if q.choices else answer[0]
    body = Renderer(fmt).response("所見を整理すると", shown, [q.choices[i] for i in order] if q.choices else [])
    return body if fmt.uses_chat or fmt.reasoning != "direct" or fmt.output == "json" else body[len(fmt.marker):]


@pytest.mark.parametrize("name", [n for n, f in NAMED_FORMATS.items() if f.ensemble == 1])
@pytest.mark.parametrize("qid", ["SA1", "SA5", "SA15"])  # single, multi, numeric
def test_every_named_format_round_trips(name, qid, scripted):
    fmt, q = NAMED_FORMATS[name], SAMPLE[qid]
    lm = scripted(reply_for(fmt, q, q.answers))
    with dspy.context(lm=lm):
        pred = MedicalQA(fmt)(question=q.text, choices=q.choices)
    assert pred.parse_error is None, pred.completion
    assert tuple(pred.answer.split(",")) == q.answers
    msgs = lm.calls[0]["messages"]
    assert (msgs[-1].get("name") == RAW_PROMPT) != fmt.uses_chat


def test_chat_format_uses_system_and_demo_turns(scripted):
    q = SAMPLE["SA1"]
    msgs = rendered(MedicalQA("chat-ja-cot"), q)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0]["content"].startswith("あなたは医師国家試験の受験生です。")
    assert "答え：b" in msgs[2]["content"] and q.text in msgs[3]["content"]


def test_unparseable_answer_is_kept_with_reason(scripted):
    q = SAMPLE["SA1"]
    with dspy.context(lm=scripted("よくわからない")):
        pred = MedicalQA("alpaca-labelled-in-header")(question=q.text, choices=q.choices)
    assert pred.answer == "" and pred.parse_error == "no answer marker '答え：' in the completion"
    assert pred.completion == "よくわからない"
    with dspy.context(lm=scripted("")):
        assert MedicalQA()(question=q.text, choices=q.choices).parse_error == "empty completion"


def test_a_question_without_choices_may_pass_none(scripted):
    with dspy.context(lm=scripted("計算します。\n答え：12")):
        assert MedicalQA("plain-ja-cot")(question="体重60 kgの患者の…", choices=None).answer == "12"


def test_run_on_into_an_invented_next_question_is_cut(scripted):
    q = SAMPLE["SA1"]
    reply = "考察。\n答え：b\n\n### 指示：\n次の問題\n\n### 応答：\n答え：e"
    with dspy.context(lm=scripted(reply)):
        assert MedicalQA()(question=q.text, choices=q.choices).answer == "b"


def test_self_consistency_majority_vote(scripted):
    q = SAMPLE["SA1"]
    votes = ["c", "a", "c", "b", "c"]
    lm = scripted(lambda _p, kw: f"理由\n答え：{votes[kw['sample']]}")
    with dspy.context(lm=lm):
        pred = MedicalQA(NAMED_FORMATS["plain-ja-cot"].replace(self_consistency=5))(question=q.text, choices=q.choices)
    assert pred.answer == "c" and pred.samples == [[v] for v in votes]
    assert len(lm.calls) == 1 and lm.calls[0]["kwargs"]["n"] == 5


def test_shuffle_ensemble_maps_answers_back_to_original_order(scripted):
    q = SAMPLE["SA1"]
    gold_text = q.choices[LABELS.index(q.answers[0])]

    def reply(prompt: str, _kw) -> str:  # a model that knows the answer text, whatever its position
        last = prompt.rsplit("選択肢", 1)[-1]
        label = re.search(r"([a-e])\. " + re.escape(gold_text), last).group(1)
        return f"考察\n答え：{label}"

    fmt = NAMED_FORMATS["plain-ja-cot"].replace(ensemble=5, shots=0)
    lm = scripted(reply)
    with dspy.context(lm=lm):
        pred = MedicalQA(fmt)(question=q.text, choices=q.choices)
    orders = {call["prompt"].rsplit("選択肢", 1)[-1] for call in lm.calls}
    assert len(lm.calls) == 5 and len(orders) > 1  # really shuffled
    assert pred.samples == [list(q.answers)] * 5 and pred.answer == q.answers[0] and pred.lm_calls == 5


def test_adapter_is_scoped_to_the_module(scripted):
    q = SAMPLE["SA1"]
    with dspy.context(lm=scripted("答え：a")):
        MedicalQA()(question=q.text, choices=q.choices)
    assert dspy.settings.adapter is None


@pytest.mark.parametrize("adapter,reply", [
    (dspy.ChatAdapter(), "[[ ## reasoning ## ]]\n考察\n\n[[ ## answer ## ]]\nb\n\n[[ ## completed ## ]]"),
    (dspy.JSONAdapter(), '{"reasoning": "考察", "answer": "b"}'),
    (dspy.XMLAdapter(), "<reasoning>考察</reasoning>\n<answer>b</answer>"),
])
def test_default_dspy_adapters_still_work_with_the_signature(scripted, adapter, reply):
    q = SAMPLE["SA1"]
    with dspy.context(lm=scripted(reply), adapter=adapter):
        pred = dspy.ChainOfThought(MedicalMCQ)(question=q.text, choices=list(q.choices))
    assert (pred.reasoning, pred.answer) == ("考察", "b")


def test_adapter_renders_what_optimizers_write(scripted):
    """MIPROv2/GEPA rewrite instructions, COPRO the answer prefix, bootstrap the demos: all must show up."""
    qa = MedicalQA("plain-ja-cot")
    qa.cot.predict.signature = (qa.cot.predict.signature.with_instructions("新しい指示文です。")
                                .with_updated_fields("answer", prefix="最終解答："))
    qa.cot.predict.demos = [dspy.Example(question="デモ問題", choices=["x", "y"], reasoning="デモ理由", answer="b")]
    text = rendered(qa, SAMPLE["SA1"])[0]["content"]
    assert text.startswith("新しい指示文です。") and "デモ問題" in text and "最終解答：b" in text
    with dspy.context(lm=scripted("考察\n最終解答：d")):
        assert qa(question=SAMPLE["SA1"].text, choices=SAMPLE["SA1"].choices).answer == "d"


def test_save_and_load_keep_instructions_and_demos(tmp_path):
    qa = MedicalQA("plain-ja-cot")
    qa.cot.predict.signature = qa.cot.predict.signature.with_instructions("保存される指示")
    qa.cot.predict.demos = [dspy.Example(question="Q", choices=["x"], reasoning="R", answer="a")]
    qa.save(str(tmp_path / "p.json"))
    loaded = MedicalQA("plain-ja-cot")
    loaded.load(str(tmp_path / "p.json"))
    assert loaded.cot.predict.signature.instructions == "保存される指示"
    assert loaded.cot.predict.demos[0]["question"] == "Q"
    assert rendered(loaded, SAMPLE["SA1"]) == rendered(qa, SAMPLE["SA1"])


def test_knn_demos_pick_the_nearest_and_never_the_question_itself():
    pool = [{"question": q.text, "choices": list(q.choices), "reasoning": "", "answer": ",".join(q.answers)}
            for q in SAMPLE.values()]
    fmt = PromptFormat(template="plain", instruction_position="preamble", shots=1, demo_selection="knn-tfidf")
    qa = MedicalQA(fmt, demo_pool=pool)
    q = SAMPLE["SB7"]
    (demo,) = qa._selector.select(q.text + "追記", q.choices)
    assert demo["question"] != q.text + "追記"
    assert qa._selector.select(q.text, q.choices)[0]["question"] != q.text
    nearest = qa._selector.select("65歳の男性。胸痛。心電図でST上昇。心筋トロポニン陽性。", [])[0]
    assert "胸痛" in nearest["question"]


def test_medprompt_keeps_only_self_generated_chains_that_reach_the_gold(scripted):
    pool = [{"question": f"問{i}", "choices": ["x", "y"], "reasoning": "元の解説", "answer": "a"} for i in range(4)]
    fmt = PromptFormat(template="plain", instruction_position="preamble", shots=2, self_generated_cot=True)
    lm = scripted(lambda p, _k: "自作の推論\n答え：" + ("a" if "問0" in p or "問2" in p else "b"))
    qa = MedicalQA(fmt, demo_pool=pool)
    with dspy.context(lm=lm):
        qa(question="本番", choices=["x", "y"])
    assert [d["question"] for d in qa.cot.predict.demos] == ["問0", "問2"]
    assert all(d["reasoning"] == "自作の推論" for d in qa.cot.predict.demos)


def test_formats_round_trip_through_yaml_and_reject_bad_fields(tmp_path):
    fmt = NAMED_FORMATS["medprompt"].replace(name="mine", labels="katakana")
    path = tmp_path / "formats.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"mine": {k: v for k, v in fmt.to_dict().items() if k != "name"}}, allow_unicode=True))
    assert load_formats(path)["mine"] == fmt and resolve_format(str(path)) == fmt
    assert resolve_format(f"{path}:mine") == fmt
    path.write_text("mine:\n  template: alpaca\n  colour: red\n")
    with pytest.raises(ValueError, match=r"formats.yaml: format 'mine': unknown PromptFormat field 'colour'"):
        load_formats(path)
    path.write_text("mine:\n  labels: greek\n")
    with pytest.raises(ValueError, match=r"PromptFormat.labels: 'greek' is not one of"):
        load_formats(path)
    with pytest.raises(ValueError, match="unknown format"):
        resolve_format("no-such-format")


def test_display_labels_and_markers():
    fmt = PromptFormat(labels="upper", full_width=True, language="en", casing="upper", separator=" - ")
    assert fmt.display_labels[:3] == ("Ａ", "Ｂ", "Ｃ") and fmt.marker == "ANSWER - "
    assert Renderer(fmt).display_answer("a,c", 5) == "Ａ,Ｃ"
    fields = {f.name for f in dataclasses.fields(PromptFormat)}
    assert {"template", "labels", "shots", "reasoning", "ensemble", "self_consistency"} <= fields
