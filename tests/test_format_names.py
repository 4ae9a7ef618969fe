"""A format's name becomes folder and file names: it must be a slug, and every path built from a name stays under
its parent (issue 15, item 10)."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medjp_agent.cli import app
from medjp_agent.data import SAMPLE_DIR, load_igakuqa
from medjp_agent.errors import ConfigError
from medjp_agent.paths import inside
from medjp_agent.runs import evaluate_run
from medjp_agent.signatures import PromptFormat, load_formats

ESCAPES = ["../../x", "/abs/x", "a/b", "..", ".", "", "a b", "a\\b", "x" * 241, "問" * 81]
SLUGS = ["custom", "paper-instruction-in-header-0shot", "screen-12", "v1.2_b", "日本語-cot", "markdown·upper·5shot",
         "c++", "x" * 240]


@pytest.mark.parametrize("name", ESCAPES)
def test_a_format_name_must_be_a_slug(name: str, tmp_path: Path):
    with pytest.raises(ValueError, match=r"PromptFormat\.name: .* is not a slug"):
        PromptFormat(name=name)
    spec = tmp_path / "formats.yaml"
    spec.write_text(f"'{name}':\n  template: plain\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{spec}: format {name!r}")):
        load_formats(spec)


@pytest.mark.parametrize("name", SLUGS)
def test_slugs_are_accepted(name: str):
    assert PromptFormat(name=name).name == name


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "a/../../x", "..", "."])
def test_a_path_built_from_a_name_stays_under_its_parent(name: str, tmp_path: Path):
    with pytest.raises(ConfigError, match="would write outside"):
        inside(tmp_path / "runs", name)


def test_inside_allows_children_and_folders_symlinked_elsewhere(tmp_path: Path):
    runs, elsewhere = tmp_path / "runs", tmp_path / "disk2"
    runs.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, runs / "big")
    assert inside(runs, "fmt-1") == runs / "fmt-1"
    assert inside(runs, "big", "trials") == runs / "big" / "trials"


def test_a_name_that_slipped_past_validation_still_cannot_leave_runs(tmp_path: Path, monkeypatch, scripted):
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")
    fmt = PromptFormat(name="ok")
    object.__setattr__(fmt, "name", "../../x")  # as a future loader that forgot the check would build it
    with pytest.raises(ConfigError, match="would write outside runs"):
        evaluate_run(list(load_igakuqa(SAMPLE_DIR))[:2], fmt, scripted("答え：a"), threads=1)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b"]


@pytest.mark.parametrize("name", ["../../x", "/abs/x"])
def test_eval_with_an_escaping_yaml_format_exits_2_and_writes_nothing(name: str, tmp_path: Path, monkeypatch,
                                                                      scripted):
    monkeypatch.setattr("medjp_agent.runs.build_lm", lambda _opts: scripted("答え：a"))
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    (work / "bad.yaml").write_text(f'"{name}":\n  template: plain\n', encoding="utf-8")
    res = CliRunner().invoke(app, ["eval", "--format", "bad.yaml", "--limit", "2"])
    assert res.exit_code == 2, res.output
    assert "not a slug" in res.output
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["a", "a/b", "a/b/bad.yaml"]
    assert not Path("/abs").exists()


def test_a_format_renamed_with_replace_is_checked_too():
    with pytest.raises(ValueError, match="not a slug"):
        dataclasses.replace(PromptFormat(), name="../up")
