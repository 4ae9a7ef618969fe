"""Resuming from the newest complete checkpoint after a kill during a save, and refusing pickle weights in
`medjp train` and `train merge` (no model is trained or loaded here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medjp_agent.cli import app
from medjp_agent.training.checkpoints import incomplete_reason, newest_complete
from medjp_agent.training.weights import PickleWeightsError, refuse_pickle_weights

runner = CliRunner()


def checkpoint(out: Path, step: int, *, state: str | None = "ok", adapter: bool = True) -> Path:
    """A ``checkpoint-STEP`` folder as a kill at some point of the Trainer's save leaves it."""
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if adapter:
        (folder / "adapter_model.safetensors").write_bytes(b"\0" * 8)
    if state == "ok":
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    elif state is not None:
        (folder / "trainer_state.json").write_text(state)
    return folder


@pytest.mark.parametrize("make, reason", [
    (dict(state=None), "no trainer_state.json"),
    (dict(state='{"global_step": 6, "log_hist'), "trainer_state.json is torn"),
    (dict(state='{"global_step": 4}'), "trainer_state.json is for step 4"),
    (dict(adapter=False), "no adapter weights"),
])
def test_a_half_written_checkpoint_is_named_and_skipped(tmp_path: Path, make: dict, reason: str):
    complete = checkpoint(tmp_path, 4)
    torn = checkpoint(tmp_path, 6, **make)
    assert incomplete_reason(complete) is None and reason in incomplete_reason(torn)

    assert newest_complete(tmp_path) == (complete, [f"checkpoint-6 is incomplete ({incomplete_reason(torn)}: "
                                                    "killed while saving?)"])
    assert torn.is_dir()  # only rank 0 moves it, below

    found, notes = newest_complete(tmp_path, set_aside=True)
    assert found == complete and notes[0].endswith("moved to incomplete-checkpoint-6")
    # Out of the Trainer's sight (its rotation would count it as the newest checkpoint), but kept.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "incomplete-checkpoint-6"]


def test_no_complete_checkpoint_starts_over(tmp_path: Path):
    checkpoint(tmp_path, 2, state=None)
    assert newest_complete(tmp_path, set_aside=True)[0] is None
    assert newest_complete(tmp_path / "missing") == (None, [])


def test_torn_checkpoints_still_need_resume(tmp_path: Path):
    checkpoint(tmp_path / "run", 2, state=None)
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "already holds checkpoints; pass --resume" in " ".join(result.output.split())


def pickled(folder: Path, name: str = "pytorch_model.bin", config: str = "config.json") -> Path:
    """A model folder whose weights are a pickle (never unpickled here: any byte would do)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"\x80\x04not really a pickle")
    (folder / config).write_text("{}")
    return folder


def test_pickle_weights_are_refused_and_safetensors_pass(tmp_path: Path):
    with pytest.raises(PickleWeightsError, match=r"pytorch_model-00001-of-00002\.bin.*safetensors only"):
        refuse_pickle_weights(pickled(tmp_path / "sharded", "pytorch_model-00001-of-00002.bin"))
    both = pickled(tmp_path / "both")
    (both / "model.safetensors").write_bytes(b"")
    refuse_pickle_weights(both)  # transformers picks the safetensors with use_safetensors=True
    refuse_pickle_weights("org/some-hub-model")  # hub ids: use_safetensors=True never downloads a pickle


def test_train_refuses_a_pickle_base_model(tmp_path: Path):
    base = pickled(tmp_path / "base")
    result = runner.invoke(app, ["train", "--model", str(base), "--out", str(tmp_path / "run")])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert f"{base}: the base model weights are pickle files (pytorch_model.bin)" in text
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("what", ["adapter", "base model"])
def test_merge_refuses_pickle_weights(tmp_path: Path, what: str):
    base = pickled(tmp_path / "base") if what == "base model" else tmp_path / "never-read"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    if what == "adapter":
        pickled(adapter, "adapter_model.bin", "README.md")
    else:
        (adapter / "adapter_model.safetensors").write_bytes(b"")
    result = runner.invoke(app, ["train", "merge", str(adapter), "--out", str(tmp_path / "merged")])
    assert result.exit_code == 2, result.output
    assert f"the {what} weights are pickle files" in " ".join(result.output.split())
    assert not (tmp_path / "merged").exists()
