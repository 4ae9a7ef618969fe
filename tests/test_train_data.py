"""Training rows are the evaluation's own prompt text plus exactly what its parser expects, and only the completion
carries loss."""

from __future__ import annotations

from pathlib import Path

import dspy
import pytest
from medjp_agent.signatures import MedicalQA, Renderer, resolve_format
from medjp_agent.training.config import TrainConfig
from medjp_agent.training.data import ExampleRenderer, build_training_data, load_training_questions

from medjp_agent.data import Question, load_medqa

MEMO = Path(__file__).with_name("test_train_memo.jsonl")
LABELLED = "alpaca-labelled-in-header"


def rows(**changes) -> tuple:
    cfg = TrainConfig(data=str(MEMO), validation_fraction=0.0, **changes)
    return build_training_data(cfg, load_training_questions(cfg)).train


def test_prompt_is_the_evaluation_prompt_and_completion_its_expected_answer():
    q = load_medqa(MEMO).questions[1]
    qa = MedicalQA("alpaca-labelled-in-header", demo_pool=[])
    eval_prompt = qa.adapter.format(qa.cot.predict.signature, [], {"question": q.text, "choices": list(q.choices)})
    row = rows(format=LABELLED)[1]
    assert row["prompt"] == eval_prompt[0]["content"]
    assert row["prompt"].endswith("### 応答：\n")
    assert row["completion"] == "骨折である。\n答え：b"
    parsed = qa.adapter.parse(qa.cot.predict.signature, row["completion"])
    assert (parsed["answer"], parsed["reasoning"]) == ("b", "骨折である。")


def test_direct_format_does_not_repeat_the_marker_the_prompt_ends_with():
    row = rows(format="plain-ja-direct")[0]
    assert row["prompt"].endswith("答え：") and row["completion"] == "a"


@pytest.mark.parametrize("fmt, expected", [
    ("json-ja-cot", '{"answer": ["a"]}'), ("xml-ja-cot", "答え：a\n</response>"),
    ("alpaca-labelled-preamble", "答え：a"),
])
def test_answer_only_target(fmt: str, expected: str):
    assert rows(format=fmt, target="answer")[0]["completion"] == expected


def test_chat_format_gives_conversational_rows():
    row = rows(format="chat-ja-cot")[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert row["completion"] == [{"role": "assistant", "content": "感染で熱が出る。\n答え：a"}]


def test_format_shots_put_the_formats_demos_in_the_prompt():
    fmt = resolve_format(LABELLED)
    pool_demo = MedicalQA(fmt).cot.predict.demos[0]
    zero, one = rows(format=LABELLED)[0]["prompt"], rows(format=LABELLED, shots=(-1,))[0]["prompt"]
    assert pool_demo["question"] not in zero and pool_demo["question"] in one
    assert one.endswith(zero.split(Renderer(fmt).preamble(chat=False))[1])
    both = rows(format=LABELLED, shots=(0, -1))
    assert [r["prompt"] for r in both[:2]] == [zero, one] and len(both) == 2 * len(rows())


def test_split_is_disjoint_and_the_fingerprint_follows_the_rendered_text():
    def data(**changes):
        cfg = TrainConfig(data=str(MEMO), validation_fraction=0.5, **{"format": LABELLED, **changes})
        return build_training_data(cfg, load_training_questions(cfg))

    base = data()
    assert len(base.train) == len(base.validation) == 2
    assert not {r["prompt"] for r in base.train} & {r["prompt"] for r in base.validation}
    assert data().fingerprint == base.fingerprint
    assert len({base.fingerprint, data(target="answer").fingerprint, data(format="plain-ja-cot").fingerprint,
                data(split_seed=1).fingerprint}) == 4


def test_paper_format_is_the_default_and_trains_the_choice_text_evaluation_parses(scripted):
    assert TrainConfig().format == "paper-instruction-in-header"
    q = load_medqa(MEMO).questions[1]
    qa = MedicalQA("paper-instruction-in-header", demo_pool=[])
    eval_prompt = qa.adapter.format(qa.cot.predict.signature, [], {"question": q.text, "choices": list(q.choices)})
    row, answer_only = rows()[1], rows(target="answer")[1]
    assert row["prompt"] == eval_prompt[0]["content"] and row["prompt"].endswith("### 応答：\n")
    assert row["completion"] == answer_only["completion"] == "骨折"  # the harness's response: the text, no reasoning
    several = Question(id="m", year=2025, section="M", text="熱と口渇の原因はどれか。2つ選べ。",
                       choices=("感染", "骨折", "脱水"), answers=("a", "c"))
    paper = ExampleRenderer(resolve_format("paper-instruction-in-header"), 0, "explanation")
    completion = paper.row(several)["completion"]
    assert completion == "感染,脱水"
    for question, reply in ((q, row["completion"]), (several, completion)):
        with dspy.context(lm=scripted(reply)):
            pred = qa(question=question.text, choices=list(question.choices))
        assert pred.parse_error is None and pred.answer == ",".join(question.answers)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["alpaca-labelled-in-header", "paper-instruction-in-header", "chat-ja-cot"])
def test_only_completion_tokens_carry_loss(tiny_model: Path, tmp_path: Path, fmt: str):
    from medjp_agent.training.trainer import build_trainer

    cfg = TrainConfig(data=str(MEMO), format=fmt, validation_fraction=0.0, compute_dtype="float32", out=str(tmp_path))
    data = build_training_data(cfg, load_training_questions(cfg))
    trainer = build_trainer(cfg, data, str(tiny_model))
    tokenizer = trainer.processing_class
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for i, row in enumerate(data.train[:2]):
        if isinstance(row["prompt"], str):
            prompt, completion = row["prompt"], row["completion"] + tokenizer.eos_token
        else:  # the chat template wraps both turns, and its end-of-turn token ends the completion
            prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
            completion = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)[len(prompt):]
            assert completion.startswith(row["completion"][0]["content"] + tokenizer.eos_token)
        ids, learnt = batch["input_ids"][i], batch["labels"][i] != -100
        real = batch["attention_mask"][i].bool()
        assert tokenizer.decode(ids[learnt]) == completion
        assert tokenizer.decode(ids[real & ~learnt]) == prompt


def test_explanation_target_without_any_explanation_is_refused(tmp_path: Path):
    from medjp_agent.training.config import TrainConfigError

    table = tmp_path / "q.csv"
    table.write_text("question,a,b,answer\nq1,x,y,a\nq2,u,v,b\n", encoding="utf-8")
    cfg = TrainConfig(data=str(table), columns={"text": "question", "choices": "a,b", "answers": "answer"},
                      validation_fraction=0.0)
    with pytest.raises(TrainConfigError, match="TrainConfig.target: 'explanation', but no question of .*q.csv has one"):
        build_training_data(cfg, load_training_questions(cfg))
    assert len(build_training_data(cfg.replace(target="answer"), load_training_questions(cfg)).train) == 2
