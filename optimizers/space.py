"""`FormatSpace`: which :class:`PromptFormat` axes a search varies, over which values, and how a trial samples them.

Every searched axis is an Optuna categorical parameter named exactly like the ``PromptFormat`` field, so a study's
params read as formats (``optuna-dashboard``, `medjp report`). Axes that do not change the rendered prompt in a
given point (``casing`` for a Japanese format, ``demo_selection`` with zero shots, ...) are *conditional*: they are
not suggested at all there, which is how Optuna expects conditional spaces to be written (TPE with ``group=True``
then models each sub-space separately instead of spending trials on distinctions that render identically).

A space is data: it serialises to YAML/JSON, and users restrict it in a file::

    base: paper-instruction-in-header   # fields not searched keep this format's values
    axes:
      template: [alpaca, xml, chat]
      shots: [0, 1, 3]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_type_hints

from medjp_agent.naming import format_name
from medjp_agent.signatures.formats import (
    ANSWER_WORDS, INSTRUCTIONS, LABEL_SCHEMES, PERSONAS, PromptFormat, read_config, resolve_format,
)

if TYPE_CHECKING:
    import optuna

Values = tuple[Any, ...]

#: Free-form axes take these values by default; FormatSpread's surface grammar (Sclar et al. 2023).
SEPARATORS: Values = ("：", ": ", " - ", "\n")
JOINERS: Values = ("\n\n", "\n")
ANSWER_WORD_CHOICES: Values = ("", ANSWER_WORDS["ja"][1], ANSWER_WORDS["ja"][2], ANSWER_WORDS["en"][1])

#: Fields no search varies: ``name`` only labels a format.
NOT_SEARCHABLE = frozenset({"name"})


def _literal_values(name: str) -> Values:
    return get_args(get_type_hints(PromptFormat)[name])


#: The full space: every axis of :class:`PromptFormat` with its curated values.
DEFAULT_AXES: dict[str, Values] = {
    "template": _literal_values("template"),
    "instruction_position": _literal_values("instruction_position"),
    "language": _literal_values("language"),
    "wording": tuple(INSTRUCTIONS["ja"]),
    "persona": tuple(PERSONAS),
    "labels": tuple(LABEL_SCHEMES),
    "full_width": (False, True),
    "wrapper": _literal_values("wrapper"),
    "choice_layout": _literal_values("choice_layout"),
    "separator": SEPARATORS,
    "casing": _literal_values("casing"),
    "joiner": JOINERS,
    "answer_word": ANSWER_WORD_CHOICES,
    "shots": (0, 1, 2, 3, 5),
    "demo_selection": _literal_values("demo_selection"),
    "demo_order": _literal_values("demo_order"),
    "reasoning": _literal_values("reasoning"),
    "output": _literal_values("output"),
    "chat": (False, True),
    "shuffle_choices": (False, True),
    "self_consistency": (1, 5),
    "ensemble": (1, 5),
    "self_generated_cot": (False, True),
}

#: When an axis changes the prompt at all. An axis whose rule is false in a point is not suggested there.
RELEVANT: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "wording": lambda f: f["instruction"] is None,
    "full_width": lambda f: f["labels"] in ("latin", "upper", "digits"),  # katakana and roman have no ASCII form
    "wrapper": lambda f: f["template"] != "json",  # the JSON template shows choices as an object
    "choice_layout": lambda f: f["template"] != "json",
    "casing": lambda f: f["language"] == "en",  # Japanese descriptors have no case
    "demo_selection": lambda f: f["shots"] > 0,
    "demo_order": lambda f: f["shots"] > 1,
    "chat": lambda f: f["template"] != "chat",  # the chat template always is
    "self_generated_cot": lambda f: f["shots"] > 0 and f["reasoning"] != "direct",
}

#: Axes the paper's harness layout (``template="harness"``) never renders: its choices are bare texts, its headers
#: and answer are fixed, its demos hold the answer text only and it has no persona line. With that template they are
#: not suggested and keep the base's value, so two harness points differing only there are one format (one set of
#: params: the duplicate-trial check sees them as the same). ``reasoning`` only changes the instruction's hint.
HARNESS_IGNORES = frozenset({
    "persona", "labels", "full_width", "wrapper", "choice_layout", "separator", "casing", "joiner", "answer_word",
    "output", "self_generated_cot",
})

#: Axes that cannot matter when a question is scored by the log-probability of its options (no generation), and
#: the values they are fixed to there.
LOGPROB_FIXED: dict[str, Any] = {
    "reasoning": "direct", "output": "marker", "self_consistency": 1, "ensemble": 1, "self_generated_cot": False,
    "shuffle_choices": False,
}

_FIELD_ORDER = tuple(f.name for f in dataclasses.fields(PromptFormat))


@dataclass(frozen=True)
class FormatSpace:
    """A base format plus the axes a search varies.

    Args:
        axes: ``field name -> allowed values`` (an Optuna categorical each). Axes with one value are folded into
            ``base``. Axes are sampled in ``PromptFormat`` field order, so conditions see the axes they depend on.
        base: Values of every field that is not searched, and of conditional axes where they do not apply.

    Example:
        >>> space = FormatSpace.default().restrict(template=["alpaca", "xml"], shots=[0, 1])
        >>> fmt = space.sample(trial)          # inside an Optuna objective
    """

    axes: Mapping[str, Values] = field(default_factory=dict)
    base: PromptFormat = field(default_factory=lambda: PromptFormat(name="base"))

    def __post_init__(self) -> None:
        axes: dict[str, Values] = {}
        base = self.base
        for name, values in self.axes.items():
            if name not in _FIELD_ORDER or name in NOT_SEARCHABLE:
                searchable = ", ".join(n for n in _FIELD_ORDER if n not in NOT_SEARCHABLE)
                raise ValueError(f"format space: {name!r} is not a searchable PromptFormat field ({searchable})")
            # A string is iterable too: ``template: xml`` would become the axis ('x', 'm', 'l').
            if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
                raise ValueError(f"format space: axes.{name}: expected a list of values, got {values!r}")
            values = tuple(values)
            if not values:
                raise ValueError(f"format space: axes.{name} has no values")
            for value in values:
                _check_value(base, name, value)
            if len(set(values)) != len(values):
                raise ValueError(f"format space: axes.{name} repeats a value")
            if len(values) == 1:
                base = base.replace(**{name: values[0]})
            else:
                axes[name] = values
        object.__setattr__(self, "axes", {n: axes[n] for n in _FIELD_ORDER if n in axes})
        object.__setattr__(self, "base", base)

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def default(cls, base: str | PromptFormat = "paper-instruction-in-header") -> "FormatSpace":
        """Every axis with its curated values, around ``base``."""
        return cls(DEFAULT_AXES, resolve_format(base).replace(name="base"))

    def restrict(self, **axes: Any) -> "FormatSpace":
        """A copy where the given axes take only these values (a single value fixes the axis)."""
        merged = dict(self.axes)
        for name, values in axes.items():
            merged[name] = tuple(values) if isinstance(values, (list, tuple)) else (values,)
        return FormatSpace(merged, self.base)

    def fixed(self, **values: Any) -> "FormatSpace":
        """A copy where the given fields are fixed to one value each (no longer searched)."""
        return FormatSpace({n: v for n, v in self.axes.items() if n not in values}, self.base.replace(**values))

    def for_logprob(self) -> "FormatSpace":
        """The space a log-probability score can tell apart: generation-only axes fixed (:data:`LOGPROB_FIXED`)."""
        return self.fixed(**LOGPROB_FIXED)

    @staticmethod
    def logprob_variant(fmt: PromptFormat) -> PromptFormat:
        """``fmt`` as a log-probability score sees it (direct answer, one vote), named ``<name>-direct``."""
        return fmt.replace(**LOGPROB_FIXED, name=f"{fmt.name}-direct")

    # -- sampling ---------------------------------------------------------------------------------------------------
    def sample(self, trial: "optuna.Trial") -> PromptFormat:
        """Suggest every relevant axis on ``trial`` and return the format, named by the values that differ from the
        base (``markdown·upper·5shot``, :func:`~medjp_agent.naming.format_name`).

        Works with any Optuna trial, including ``optuna.trial.FixedTrial(params)`` to rebuild a format.
        """
        values = self.base.to_dict()
        for name, choices in self.axes.items():
            if self._relevant(name, values):
                values[name] = trial.suggest_categorical(name, choices)
        values["name"] = format_name(values, self.base.to_dict(), self.axes)
        return PromptFormat(**values)

    def params_for(self, fmt: PromptFormat) -> dict[str, Any] | None:
        """The params that make :meth:`sample` return ``fmt`` (to enqueue it), or None when it is outside the space."""
        params: dict[str, Any] = {}
        values = self.base.to_dict()
        for name, choices in self.axes.items():
            if self._relevant(name, values):
                value = getattr(fmt, name)
                if value not in choices:
                    return None
                params[name] = values[name] = value
        rebuilt = PromptFormat(**{**values, "name": fmt.name})
        return params if rebuilt == fmt else None

    @staticmethod
    def _relevant(name: str, values: Mapping[str, Any]) -> bool:
        if values["template"] == "harness" and not _renders_in_harness(name, values):
            return False
        rule = RELEVANT.get(name)
        return rule is None or rule(values)

    # -- size and grid -------------------------------------------------------------------------------------------
    def grid(self) -> dict[str, list[Any]]:
        """The search space for ``optuna.samplers.GridSampler`` (conditional axes included: the grid is a product)."""
        return {name: list(values) for name, values in self.axes.items()}

    @property
    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.axes.values())

    # -- serialisation ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        base = {k: v for k, v in self.base.to_dict().items() if k != "name"}
        return {"base": base, "axes": {name: list(values) for name, values in self.axes.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "<dict>") -> "FormatSpace":
        """``{"base": format name | file | field mapping, "axes": {field: [values]}}``; missing ``axes``: all."""
        unknown = sorted(set(d) - {"base", "axes"})
        if unknown:
            raise ValueError(f"{source}: unknown format-space key {unknown[0]!r} (expected base, axes)")
        raw_base = d.get("base", "paper-instruction-in-header")
        try:
            base = (PromptFormat.from_dict({**raw_base, "name": "base"}, source="base") if isinstance(raw_base, Mapping)
                    else resolve_format(str(raw_base)).replace(name="base"))
            axes = d.get("axes")
            if axes is not None and not isinstance(axes, Mapping):
                raise ValueError(f"axes: expected a mapping FIELD: [values] (e.g. 'shots: [0, 1]' indented under "
                                 f"'axes:'), got {type(axes).__name__} {axes!r}")
            return cls(DEFAULT_AXES if axes is None else dict(axes), base)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None


def load_space(path: str | Path) -> FormatSpace:
    """Read a :class:`FormatSpace` from YAML or JSON."""
    raw = read_config(path)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: a format space is a mapping with 'base' and 'axes'")
    return FormatSpace.from_dict(raw, source=str(path))


def _renders_in_harness(name: str, values: Mapping[str, Any]) -> bool:
    if name == "reasoning":  # the harness shows no reasoning; only an instruction with a hint slot changes with it
        return values["instruction"] is None and "{reasoning}" in INSTRUCTIONS[values["language"]][values["wording"]]
    return name not in HARNESS_IGNORES


def _check_value(base: PromptFormat, name: str, value: Any) -> None:
    if not (value is None or isinstance(value, (bool, int, float, str))):
        raise ValueError(f"format space: axes.{name}: {value!r} is not a categorical value (str, int, float, bool)")
    try:
        base.replace(**{name: value})
    except (TypeError, ValueError) as e:
        raise ValueError(f"format space: axes.{name}: {e}") from None
