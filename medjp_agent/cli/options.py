"""Options shared by several commands, declared once."""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, get_args, get_type_hints

import typer
from rich.console import Console
from rich.markup import escape

from medjp_agent.lm.options import LMOptions
from medjp_agent.redact import redact_text
from medjp_agent.naming import counted

# Piped output (logs, files) is read later in wide windows; rich would otherwise cut it at 80 columns.
_PIPE_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
console = Console(width=_PIPE_WIDTH)
err_console = Console(stderr=True, width=_PIPE_WIDTH)

_LM = "LM options"
# Each shared LM flag: parameter name -> (annotation, default). A decorated command receives one `lm: LMOptions`.
_LM_PARAMS: dict[str, tuple[Any, Any]] = {
    "model": (Annotated[str | None, typer.Option(help="HF hub id or local dir, or the served model name with --api-base. Default: an embedded tiny random Llama.", rich_help_panel=_LM)], None),
    "adapter": (Annotated[list[str] | None, typer.Option(help="PEFT LoRA adapter dir or id; repeat for several, switchable by name (NAME=PATH).", rich_help_panel=_LM)], None),
    "api_base": (Annotated[str | None, typer.Option(help="OpenAI-compatible server URL (e.g. vLLM), instead of loading the model here.", rich_help_panel=_LM)], None),
    "api_key": (Annotated[str | None, typer.Option(envvar="MEDJP_API_KEY", help="API key for --api-base.", rich_help_panel=_LM)], None),
    "load_in_4bit": (Annotated[bool, typer.Option("--load-in-4bit", help="bitsandbytes NF4 with double quantization, bf16 compute.", rich_help_panel=_LM)], False),
    "load_in_8bit": (Annotated[bool, typer.Option("--load-in-8bit", help="bitsandbytes LLM.int8.", rich_help_panel=_LM)], False),
    "dtype": (Annotated[str, typer.Option(help="Weights dtype when not quantized: auto, bfloat16, float16, float32.", rich_help_panel=_LM)], "auto"),
    "device_map": (Annotated[str | None, typer.Option(help="transformers device map, e.g. auto.", rich_help_panel=_LM)], None),
    "max_memory": (Annotated[list[str] | None, typer.Option(help="Per-device memory cap DEVICE=SIZE (e.g. 0=70GiB, cpu=100GiB); repeatable.", rich_help_panel=_LM)], None),
    "trust_remote_code": (Annotated[bool, typer.Option("--trust-remote-code", help="Allow model code from the hub (off by default).", rich_help_panel=_LM)], False),
    "batch_size": (Annotated[int, typer.Option(min=1, help="Most prompts per batched generate call (an upper bound: batches are cut to fit the device's free memory or --max-memory).", rich_help_panel=_LM)], 16),
    "max_new_tokens": (Annotated[int, typer.Option(min=1, help="Most tokens generated per answer.", rich_help_panel=_LM)], 512),
    "temperature": (Annotated[float, typer.Option(min=0.0, help="Sampling temperature; 0 is greedy.", rich_help_panel=_LM)], 0.0),
    "top_p": (Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus sampling.", rich_help_panel=_LM)], 1.0),
    "no_cache": (Annotated[bool, typer.Option("--no-cache", help="Bypass the on-disk generation cache.", rich_help_panel=_LM)], False),
    "api_timeout": (Annotated[float, typer.Option(min=0.1, help="Seconds to wait for one reply from --api-base before retrying it.", rich_help_panel=_LM)], 600.0),
    "api_retries": (Annotated[int, typer.Option(min=0, help="Retries of a failed --api-base request (timeout, 5xx, 429, dropped connection, empty reply), with exponential backoff from 1 s.", rich_help_panel=_LM)], 4),
    "no_prefix_cache": (Annotated[bool, typer.Option("--no-prefix-cache", help="Prefill every prompt whole instead of reusing the KV cache of a batch's shared prefix (instruction + demos).", rich_help_panel=_LM)], False),
}


def _lm_options(values: dict[str, Any]) -> LMOptions:
    memory = key_values("--max-memory", values["max_memory"] or [], "DEVICE=SIZE (e.g. 0=70GiB or cpu=100GiB)")
    if memory:  # checked here, not once the model has loaded
        from medjp_agent.lm.memory import parse_size

        for device, size in memory.items():
            try:
                parse_size(size)
            except ValueError:
                raise fail(f"--max-memory {device}={size}: {size!r} is not a size (e.g. 70GiB, 500MB)") from None
    cache_dir = os.environ.get("MEDJP_CACHE_DIR")
    return LMOptions(
        model=values["model"], adapters=tuple(values["adapter"] or ()), api_base=values["api_base"],
        api_key=values["api_key"], load_in_4bit=values["load_in_4bit"], load_in_8bit=values["load_in_8bit"],
        dtype=values["dtype"], device_map=values["device_map"], max_memory=memory,
        trust_remote_code=values["trust_remote_code"], batch_size=values["batch_size"],
        max_new_tokens=values["max_new_tokens"], temperature=values["temperature"], top_p=values["top_p"],
        cache=not values["no_cache"], cache_dir=Path(cache_dir) if cache_dir else None,
        timeout=values["api_timeout"], retries=values["api_retries"],
        prefix_cache=not values["no_prefix_cache"],
    )


def _extend(func: Callable[..., Any], extra: dict[str, tuple[Any, Any]], pack: Callable[[dict[str, Any]], dict[str, Any]]
            ) -> Callable[..., Any]:
    """Add ``extra`` keyword flags to a typer command; ``pack`` turns their values into the command's keywords.

    Annotations are resolved (``get_type_hints``), so typer sees the ``Annotated`` options even in modules that use
    postponed annotations.
    """
    hints = get_type_hints(func, include_extras=True)
    sig = inspect.signature(func)
    packed = set(pack({name: default for name, (_, default) in extra.items()}))
    own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values() if p.name not in packed]
    params = own + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default)
                    for name, (ann, default) in extra.items()]

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        return func(**pack({name: kwargs.pop(name) for name in extra}), **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper


def with_lm_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command every LM flag; the function receives them packed as ``lm: LMOptions``."""
    return _extend(func, _LM_PARAMS, lambda values: {"lm": _lm_options(values)})


DataOpt = Annotated[str, typer.Option("--data", help="IgakuQA folder, a JSONL/CSV file, or 'sample' (the bundled exam).")]
FormatOpt = Annotated[str, typer.Option("--format", help="A named format, a YAML/JSON format file, or FILE:NAME.")]
YearsOpt = Annotated[list[int] | None, typer.Option("--year", help="Keep these years (repeatable).")]
SectionsOpt = Annotated[list[str] | None, typer.Option("--section", help="Keep these sections, e.g. 112-A or A (repeatable).")]
TextOnlyOpt = Annotated[bool, typer.Option("--text-only", help="Only questions that need no figure.")]
QTypeOpt = Annotated[list[str] | None, typer.Option("--qtype", help="single, multi or numeric (repeatable).")]
ChoicesOpt = Annotated[list[int] | None, typer.Option("--n-choices", min=0, help="Keep questions with this many choices (repeatable).")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N selected questions.")]
LenientOpt = Annotated[bool, typer.Option("--lenient", help="Skip bad input records with a counted warning instead of stopping.")]


def _group_by(value: str) -> str:
    from medjp_agent.scoring.aggregate import GroupBy

    if value not in get_args(GroupBy):
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(get_args(GroupBy))}")
    return value


ByOpt = Annotated[str, typer.Option("--by", callback=_group_by, help="Group the table by year, section, category or qtype.")]
ColumnsOpt = Annotated[list[str] | None, typer.Option("--column", help="FIELD=COLUMN mapping for a generic JSONL/CSV file (repeatable).")]
LogPromptsOpt = Annotated[bool, typer.Option("--log-prompts", help="Keep each question's exact prompt in results.jsonl (see it with `medjp report --show QID RUN`).")]
PresetOpt = Annotated[str | None, typer.Option("--preset", help="A named selection: harness (the paper harness's questions: text-only, 5 choices, question text of at most 1,024 characters).")]

#: Data-selection flags: flag parameter -> (``load_questions`` keyword, annotation, default).
_SELECTION: dict[str, tuple[str, Any, Any]] = {
    "year": ("years", YearsOpt, None), "section": ("sections", SectionsOpt, None),
    "text_only": ("text_only", TextOnlyOpt, False), "qtype": ("qtypes", QTypeOpt, None),
    "n_choices": ("n_choices", ChoicesOpt, None), "limit": ("limit", LimitOpt, None),
    "column": ("columns", ColumnsOpt, None), "lenient": ("lenient", LenientOpt, False),
    "preset": ("preset", PresetOpt, None),
}


def selection_given(selection: dict[str, Any]) -> bool:
    """Whether any flag that selects questions was given (``selection`` as :func:`with_data_options` passes it;
    ``--lenient`` selects none)."""
    return any(selection.get(keyword) != default for keyword, _, default in _SELECTION.values()
               if keyword != "lenient")


def recorded_selection(filters: dict[str, Any]) -> dict[str, Any]:
    """``load_questions`` keywords that select what a run's recorded ``filters`` selected (with its column mapping,
    and leniently if that run skipped bad records)."""
    from medjp_agent.results import SKIPPED

    keywords = {keyword: default for keyword, _, default in _SELECTION.values()}
    recorded = {k: v for k, v in filters.items() if k in keywords}
    if "columns" in recorded:
        recorded["columns"] = [f"{field}={column}" for field, column in recorded["columns"].items()]
    return {**keywords, **recorded, "lenient": SKIPPED in filters}


def with_data_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the data-selection flags; it receives them as ``selection``, keywords of ``load_questions``."""
    extra = {name: (ann, default) for name, (_, ann, default) in _SELECTION.items()}
    return _extend(func, extra, lambda values: {"selection": {_SELECTION[k][0]: v for k, v in values.items()}})


def _writable_folder(what: str) -> Callable[[Path | None], Path | None]:
    """A callback of a flag naming an output folder: create it and prove it writable while parsing flags."""

    def check(path: Path | None) -> Path | None:
        from medjp_agent.paths import folder_write_error

        if path is not None and (reason := folder_write_error(path)):
            raise typer.BadParameter(f"{path}: cannot write {what} here ({reason})")
        return path

    return check


#: ``--out`` callback: a bad run folder fails while parsing flags, before any model loads.
writable_dir = _writable_folder("a run folder")
#: ``--plots-dir`` callback.
writable_folder = _writable_folder("files")


def writable_file(path: Path | None) -> Path | None:
    """Callback of a flag naming an output file (``--html``, ``--csv``, ``--json``): its folder is created and the
    file proved writable while parsing flags, so a bad path fails before the work whose result it would hold."""
    from medjp_agent.paths import folder_write_error

    if path is None:
        return None
    reason = "it is a folder; give a file name" if path.is_dir() else folder_write_error(path.parent)
    if reason is None:
        existed = path.exists()
        try:
            # Append mode: an existing file is proved writable without being emptied before the work succeeds.
            with path.open("a"):
                pass
        except OSError as e:
            reason = e.strerror or str(e)
        else:
            if not existed:
                path.unlink()
    if reason:
        raise typer.BadParameter(f"{path}: cannot write this file ({reason})")
    return path


def key_values(flag: str, items: list[str], shape: str = "KEY=VALUE") -> dict[str, str]:
    """Repeated ``KEY=VALUE`` values of ``flag`` as a dict; one without ``=`` or with an empty side exits naming it."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not (sep and key.strip() and value.strip()):
            raise fail(f"{flag} {item!r}: expected {shape}")
        if key in pairs:
            raise fail(f"{flag} {item!r}: {key} is already mapped to {pairs[key]!r}")
        pairs[key] = value
    return pairs


def fail(message: str, code: int = 2) -> typer.Exit:
    # Escaped: messages quote user input and commands such as pip install 'medjp-agent[postgres]'.
    err_console.print(f"[bold red]error:[/] {escape(redact_text(message))}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def reports_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """The project's own errors (:class:`~medjp_agent.errors.MedjpError`) end the command with their message and
    exit code; any other exception is a bug and keeps its traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from medjp_agent.errors import MedjpError

        try:
            return func(*args, **kwargs)
        except MedjpError as e:
            raise fail(str(e), code=e.exit_code) from None

    return wrapper


def show_own_warnings() -> None:
    """Print medjp's own warnings (:class:`~medjp_agent.errors.MedjpWarning`) as one line, as errors are printed;
    other warnings as Python prints them."""
    import warnings

    from medjp_agent.errors import MedjpWarning

    python_shows = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        if issubclass(category, MedjpWarning):
            err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
        else:
            python_shows(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def _print_load_warnings(dataset: Any, skip_reason: str, shown: int = 10) -> None:
    """What loaded with something unknown, and the count of bad records skipped (``skip_reason`` says why they
    were): nothing goes unsaid."""
    for warning in dataset.warnings[:shown]:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if len(dataset.warnings) > shown:
        err_console.print(f"[yellow]warning:[/] … and {len(dataset.warnings) - shown} more warnings", highlight=False)
    if dataset.skipped:
        err_console.print(f"[yellow]warning:[/] skipped {counted(len(dataset.skipped), 'bad record')} ({skip_reason});"
                          f" first: {escape(dataset.skipped[0])}", highlight=False, soft_wrap=True)


def load_questions(data: str, *, columns: list[str] | None = None, lenient: bool = False,
                   years: list[int] | None = None, sections: list[str] | None = None, text_only: bool = False,
                   qtypes: list[str] | None = None, n_choices: list[int] | None = None,
                   limit: int | None = None, preset: str | None = None,
                   skip_reason: str = "--lenient") -> tuple[Any, list[Any], dict[str, Any]]:
    """Load and filter questions for a command; bad input exits with the located error, unless ``lenient``, which
    skips bad records and says so, with ``skip_reason``."""
    from medjp_agent.data import DataError, load_dataset, select
    from medjp_agent.data.select import unmatched
    from medjp_agent.results import skipped_filter

    mapping = key_values("--column", columns or [], "FIELD=COLUMN")
    try:
        # Loaded leniently either way (a strict load would raise its first bad record, the first one skipped here),
        # so a refusal can say what --lenient would do.
        dataset = load_dataset(data, columns=mapping or None, lenient=True)
    except (DataError, ValueError) as e:
        raise fail(str(e)) from None
    if dataset.skipped and not lenient:
        would = (f" (--lenient would skip {counted(len(dataset.skipped), 'bad record')} and load "
                 f"{counted(len(dataset.questions), 'question')})") if dataset.questions else ""
        raise fail(dataset.skipped[0] + would)
    _print_load_warnings(dataset, skip_reason)
    if not dataset.questions:
        raise fail(f"{data}: holds no questions" + (f" ({counted(len(dataset.skipped), 'bad record')} skipped)"
                                                    if dataset.skipped else ""))
    missing = unmatched(list(dataset), years=years or (), sections=sections or (), qtypes=qtypes or (),
                        n_choices=n_choices or ())
    if missing:
        raise fail(f"no question in {data} has {'; '.join(missing)}")
    filters = {"years": years or [], "sections": sections or [], "text_only": text_only, "qtypes": qtypes or [],
               "n_choices": n_choices or [], "limit": limit, **({"preset": preset} if preset else {}),
               **({"columns": mapping} if mapping else {}), **skipped_filter(dataset.skipped)}
    questions = select(dataset, years=years, sections=sections, text_only=True if text_only else None,
                       qtypes=qtypes, n_choices=n_choices)  # type: ignore[arg-type]
    if preset:
        from medjp_agent.data.select import apply_preset

        try:
            questions = apply_preset(questions, preset)
        except ValueError as e:
            raise fail(f"--preset: {e}") from None
    if limit is not None:
        questions = questions[:limit]
    if not questions:
        raise fail(f"no questions left in {data} after the filters {filters}")
    return dataset, questions, filters
