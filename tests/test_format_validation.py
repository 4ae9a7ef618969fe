"""Format and format-space files are checked field by field: a quoted "false", a float number of shots, a file of the
wrong shape or encoding, or a malformed ``axes`` is an error naming the file and the field, never a truthy string
that silently renders chat messages or a ``TypeError`` deep in rendering."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import medjp_agent.lm as backends
from medjp_agent.cli import app
from medjp_agent.optimizers import load_space
from medjp_agent.signatures import PromptFormat, load_formats, resolve_format

FIELDS = dataclasses.fields(PromptFormat)
BOOL_FIELDS = [f.name for f in FIELDS if f.type == "bool"]
INT_FIELDS = [f.name for f in FIELDS if f.type == "int"]
#: "Sample questions" in Japanese, as a Shift-JIS file would hold it.
SHIFT_JIS = "mine:\n  instruction: 見本の問題\n".encode("cp932")


def write(tmp_path: Path, text: str | bytes, name: str = "formats.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_the_field_lists_cover_the_dataclass():
    assert {"full_width", "chat", "shuffle_choices", "self_generated_cot"} <= set(BOOL_FIELDS)
    assert {"shots", "self_consistency", "ensemble"} <= set(INT_FIELDS)


# -- 1. field types ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", BOOL_FIELDS)
@pytest.mark.parametrize("value", ["false", "true", "maybe", 0, 1, None])
def test_bool_fields_take_only_true_or_false(field: str, value: object):
    with pytest.raises(ValueError, match=re.escape(f"PromptFormat.{field}: expected true or false, got {value!r}")):
        PromptFormat(**{field: value})


@pytest.mark.parametrize("field", INT_FIELDS)
@pytest.mark.parametrize("value", [1.7, 2.0, "two", "2", True, None])
def test_int_fields_take_only_integers(field: str, value: object):
    with pytest.raises(ValueError, match=re.escape(f"PromptFormat.{field}: expected an integer, got {value!r}")):
        PromptFormat(**{field: value})


@pytest.mark.parametrize(("changes", "message"), [
    ({"separator": 5}, "PromptFormat.separator: expected text, got 5"),
    ({"instruction": ["a"]}, "PromptFormat.instruction: expected text, got ['a']"),
    ({"template": True}, "PromptFormat.template: True is not one of alpaca"),
    ({"shots": 9}, "PromptFormat.shots: 9 is outside 0..8"),
    ({"ensemble": 0}, "PromptFormat.ensemble: must be at least 1, got 0"),
])
def test_other_fields_name_the_field_and_value(changes: dict[str, object], message: str):
    with pytest.raises(ValueError, match=re.escape(message)):
        PromptFormat(**changes)


def test_real_values_are_accepted():
    fmt = PromptFormat(chat=True, full_width=False, shots=0, ensemble=3, instruction=None, separator=": ")
    assert fmt.uses_chat and fmt.shots == 0 and fmt.ensemble == 3
    assert PromptFormat(instruction="自由な指示").task_instruction() == "自由な指示"


@pytest.mark.parametrize(("fields", "message"), [
    ('chat: "false"', "format 'mine': PromptFormat.chat: expected true or false, got 'false'"),
    ("chat: maybe", "format 'mine': PromptFormat.chat: expected true or false, got 'maybe'"),
    ("full_width: 1", "format 'mine': PromptFormat.full_width: expected true or false, got 1"),
    ("shuffle_choices: 'yes'", "format 'mine': PromptFormat.shuffle_choices: expected true or false, got 'yes'"),
    ("shots: 1.7", "format 'mine': PromptFormat.shots: expected an integer, got 1.7"),
    ('shots: "two"', "format 'mine': PromptFormat.shots: expected an integer, got 'two'"),
    ("self_consistency: 2.5", "format 'mine': PromptFormat.self_consistency: expected an integer, got 2.5"),
])
def test_a_format_file_with_a_wrongly_typed_field_names_file_format_and_field(tmp_path: Path, fields: str,
                                                                               message: str):
    path = write(tmp_path, f"mine:\n  name: mine\n  template: plain\n  {fields}\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
        load_formats(path)


def test_json_format_files_are_checked_the_same_way(tmp_path: Path):
    path = write(tmp_path, '{"mine": {"chat": "false"}}', "formats.json")
    with pytest.raises(ValueError, match=re.escape(f"{path}: format 'mine': PromptFormat.chat: expected true or false")):
        load_formats(path)


def test_valid_format_files_still_load(tmp_path: Path):
    path = write(tmp_path, "mine:\n  chat: false\n  shots: 2\n  template: plain\n  full_width: yes\n")
    fmt = resolve_format(str(path))
    assert fmt == PromptFormat(name="mine", chat=False, shots=2, template="plain", full_width=True)
    assert not fmt.uses_chat
    listed = write(tmp_path, "- name: a\n  chat: true\n- name: b\n  shots: 0\n", "list.yaml")
    assert {n: (f.chat, f.shots) for n, f in load_formats(listed).items()} == {"a": (True, 1), "b": (False, 0)}
    assert load_formats(write(tmp_path, "", "empty.yaml")) == {}


def test_the_cli_refuses_a_quoted_false_in_one_line_instead_of_rendering_chat(tmp_path: Path):
    path = write(tmp_path, 'mine:\n  name: mine\n  chat: "false"\n  template: plain\n')
    result = CliRunner().invoke(app, ["formats", "show", "--id", "SA1", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "PromptFormat.chat: expected true or false" in result.output
    assert '"role"' not in result.output


# -- 2. format file shapes ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "message"), [
    ("- 1\n- 2\n", "item 1: expected a mapping of PromptFormat fields with a name, got 1"),
    ("- template: plain\n", "item 1: expected a mapping of PromptFormat fields with a name, got {'template': 'plain'}"),
    ("hello\n", "expected a mapping NAME: {PromptFormat fields} (or a list of field mappings, each with a name), "
                "got str 'hello'"),
    ("42\n", "expected a mapping NAME: {PromptFormat fields} (or a list of field mappings, each with a name), "
              "got int 42"),
    ("mine: plain\n", "format 'mine': expected a mapping of PromptFormat fields, got 'plain'"),
    ("name: mine\ntemplate: harness\nshots: 1\n",
     "holds one format's fields at the top level, but a format file is a mapping NAME: {PromptFormat fields}"),
    ("template: harness\nshots: 1\n", "holds one format's fields at the top level"),
])
def test_a_format_file_of_the_wrong_shape_says_what_is_expected(tmp_path: Path, text: str, message: str):
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
        load_formats(path)


def test_a_flat_format_file_is_told_how_to_nest_its_fields(tmp_path: Path):
    path = write(tmp_path, "name: mine\ntemplate: harness\nshots: 1\n")
    with pytest.raises(ValueError, match=re.escape("indent the fields under a line 'mine:' and drop 'name'")):
        load_formats(path)
    path = write(tmp_path, "template: harness\nshots: 1\n", "unnamed.yaml")
    with pytest.raises(ValueError, match=re.escape("indent the fields under a line 'NAME:'")) as error:
        load_formats(path)
    assert "drop 'name'" not in str(error.value)


def test_a_folder_given_as_a_format_file_names_the_folder(tmp_path: Path):
    folder = tmp_path / "formats.yaml"
    folder.mkdir()
    with pytest.raises(ValueError, match=re.escape(f"{folder}: is a directory, expected a file")):
        resolve_format(str(folder))


def test_a_shift_jis_format_file_names_the_file_and_the_encoding(tmp_path: Path):
    path = write(tmp_path, SHIFT_JIS)
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: not UTF-8")) as error:
        resolve_format(str(path))
    assert "Shift-JIS" in str(error.value)


@pytest.mark.parametrize(("content", "message"), [
    (b"- 1\n- 2\n", "item 1: expected a mapping"),
    (b"name: mine\ntemplate: harness\n", "indent the fields under a line 'mine:'"),
    (SHIFT_JIS, "not UTF-8"),
])
def test_the_cli_reports_bad_format_files_in_one_line(tmp_path: Path, content: bytes, message: str):
    path = write(tmp_path, content)
    result = CliRunner().invoke(app, ["formats", "show", "--id", "SA1", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {path}") and message in result.output
    assert "Traceback" not in result.output


# -- 3. search space files ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "message"), [
    ("axes:\n  shots: [0.5, 2.5]\n", "format space: axes.shots: PromptFormat.shots: expected an integer, got 0.5"),
    ("axes:\n  chat: ['false', 'true']\n",
     "format space: axes.chat: PromptFormat.chat: expected true or false, got 'false'"),
    ("axes:\n  full_width: [0, 1]\n", "format space: axes.full_width: PromptFormat.full_width: expected true or false"),
    ("axes:\n  - 1\n  - 2\n", "axes: expected a mapping FIELD: [values]"),
    ("axes: 5\n", "axes: expected a mapping FIELD: [values] (e.g. 'shots: [0, 1]' indented under 'axes:'), got int 5"),
    ("axes:\n  template: xml\n", "format space: axes.template: expected a list of values, got 'xml'"),
    ("axes:\n  shots: 2\n", "format space: axes.shots: expected a list of values, got 2"),
    ("base:\n  chat: 'false'\n", "base: PromptFormat.chat: expected true or false, got 'false'"),
])
def test_bad_space_files_name_the_file_and_the_axis(tmp_path: Path, text: str, message: str):
    path = write(tmp_path, text, "space.yaml")
    with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
        load_space(path)


@pytest.mark.parametrize(("content", "message"), [
    (None, "is a directory, expected a file"),
    (SHIFT_JIS, "not UTF-8"),
])
def test_unreadable_space_files_name_the_file(tmp_path: Path, content: bytes | None, message: str):
    path = tmp_path / "space.yaml"
    path.mkdir() if content is None else path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + re.escape(message)):
        load_space(path)


def test_valid_space_files_still_load(tmp_path: Path):
    space = load_space(write(tmp_path, "base:\n  chat: false\naxes:\n  chat: [false, true]\n  shots: [0, 2]\n",
                             "space.yaml"))
    assert space.axes == {"shots": (0, 2), "chat": (False, True)} and space.base.chat is False


@pytest.mark.parametrize("axes", ["axes:\n  shots: [0.5, 2.5]\n", "axes:\n  - 1\n  - 2\n", "axes: 5\n",
                                  "axes:\n  chat: ['false', 'true']\n"])
def test_search_refuses_a_bad_space_before_building_an_lm(tmp_path: Path, monkeypatch, axes: str):
    def no_lm(_options: object) -> None:
        raise AssertionError("the LM was built before the space was checked")

    monkeypatch.setattr(backends, "build_lm", no_lm)
    space = write(tmp_path, axes, "space.yaml")
    result = CliRunner().invoke(app, ["search", "--no-tui", "--n-trials", "1", "--limit", "30", "--space", str(space),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and str(space) in result.output and "axes" in result.output
    assert len(result.output.strip().splitlines()) <= 2  # one message, wrapped at most once by the terminal width
