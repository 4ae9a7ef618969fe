"""`medjp search` (Optuna format search) and `medjp optimize` (DSPy optimizers within formats).

Both split the questions into train (demos), dev (choosing) and test (reporting), and both end with ordinary run
folders under ``<out>/test`` that `medjp report` compares. DSPy, Optuna and the LM are imported when a command
runs, never at start-up.

No ``from __future__ import annotations`` here: typer must see the ``Annotated`` option objects themselves, and
``with_lm_options`` hands it the command's signature as written.
"""

from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from medjp_agent.lm.options import LMOptions
from medjp_agent.prompt_log import log_prompts as keep_prompts

from .eval_cmd import DEFAULT_FORMAT
from .options import (
    DataOpt, FormatOpt, LogPromptsOpt, console, load_questions, recorded_selection, reports_errors, selection_given,
    with_data_options, with_lm_options, writable_dir,
)

if TYPE_CHECKING:
    from medjp_agent.optimizers import Splits

_SEARCH, _SCREEN, _BUDGET, _SPLIT, _OPT = "Search", "Screening", "Budget", "Splits", "Optimizer"
DEFAULT_SPLIT = "0.2,0.4,0.4"

SplitOpt = Annotated[str, typer.Option(help="TRAIN,DEV,TEST fractions: train gives demos, dev chooses, test reports.", rich_help_panel=_SPLIT)]
SplitSeedOpt = Annotated[int, typer.Option(help="Seed of the hash-based split.", rich_help_panel=_SPLIT)]
ThreadsOpt = Annotated[int, typer.Option(min=1, help="Questions in flight at once; the backend batches them.")]


def _splits(questions: list[Any], split: str | tuple[float, ...], split_seed: int) -> "Splits":
    from medjp_agent.errors import ConfigError, user_input
    from medjp_agent.optimizers import Splits

    try:
        fractions = tuple(float(x) for x in split.split(",")) if isinstance(split, str) else split
    except ValueError:
        raise ConfigError(f"--split must be three comma-separated fractions, got {split!r}") from None
    with user_input("--split"):
        return Splits.make(questions, fractions, split_seed)


def _space(path: Path | None, base: str) -> Any:
    from medjp_agent.errors import ConfigError, user_input
    from medjp_agent.optimizers import FormatSpace, load_space

    with user_input("--space/--base"):
        space = load_space(path) if path else FormatSpace.default(base)
    if not space.axes:
        raise ConfigError(f"--space {path}: no axis has two or more values, so there is nothing to search; "
                          "`medjp eval --format` runs one format")
    return space


def _storage_url(out: Path) -> str:
    from medjp_agent.optimizers import default_storage_url

    return default_storage_url(out)


def _screening(score: str, screen: str, n_trials: int, n_questions: int, promote: float) -> Any:
    """The screening stage's settings (None without one); every flag is checked before a model loads."""
    from medjp_agent.errors import ConfigError
    from medjp_agent.optimizers import ScreenSettings
    from medjp_agent.optimizers.scores import check_score

    check_score(score)
    if screen not in ("none", "logprob"):
        raise ConfigError(f"--screen must be none or logprob, got {screen!r}")
    settings = ScreenSettings(n_trials, n_questions, promote)  # checked even when unused: a typo shows
    return settings if screen == "logprob" else None


def _build_lm(options: LMOptions) -> Any:
    import optuna

    from medjp_agent import lm as backends
    from medjp_agent.errors import user_input

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the live view or the log lines say what happens
    with user_input("LM options"):
        return backends.build_lm(options)


def search(
    data: DataOpt = "sample",
    out: Annotated[Path, typer.Option(callback=writable_dir, help="Run folder: study.db, manifest, trials/<n> and test/ runs, best_program.json, best_format.yaml.")] = Path("runs/search"),
    study: Annotated[str | None, typer.Option(help="Study name; the same name and storage resumes it. Default: the --out folder's name.", rich_help_panel=_SEARCH)] = None,
    storage: Annotated[str | None, typer.Option(help="sqlite:///FILE, postgresql://..., or journal:PATH. Default: sqlite:///<out>/study.db.", rich_help_panel=_SEARCH)] = None,
    space: Annotated[Path | None, typer.Option(help="YAML/JSON format space (base + axes); default: every axis.", rich_help_panel=_SEARCH)] = None,
    base: Annotated[str, typer.Option(help="Format whose values the unsearched fields keep (without --space).", rich_help_panel=_SEARCH)] = "paper-instruction-in-header",
    sampler: Annotated[str, typer.Option(help="tpe, gp, random or grid.", rich_help_panel=_SEARCH)] = "tpe",
    score: Annotated[str, typer.Option(help="Objective: correct (generation accuracy of the format as it will be run) or logprob (gold option's log-probability of direct-answer variants, local models).", rich_help_panel=_SEARCH)] = "correct",
    screen: Annotated[str, typer.Option(help="none, or logprob: screen formats by log-probability on a dev subset first, then search the best by generation (local models).", rich_help_panel=_SCREEN)] = "none",
    screen_trials: Annotated[int, typer.Option(min=1, help="Formats scored in the screening stage.", rich_help_panel=_SCREEN)] = 60,
    screen_questions: Annotated[int, typer.Option(min=1, help="Dev questions the screening stage scores them on.", rich_help_panel=_SCREEN)] = 30,
    promote: Annotated[float, typer.Option(help="Share of screened formats that go on to the generation stage.", rich_help_panel=_SCREEN)] = 0.1,
    prune: Annotated[bool, typer.Option("--prune/--no-prune", help="Stop clearly worse formats early (Wilcoxon signed-rank test).", rich_help_panel=_SEARCH)] = True,
    p_threshold: Annotated[float, typer.Option(help="One-sided p-value below which a trial is stopped.", rich_help_panel=_SEARCH)] = 0.1,
    n_startup_steps: Annotated[int, typer.Option(help="Questions before any stop (at least 14).", rich_help_panel=_SEARCH)] = 20,
    n_startup_trials: Annotated[int, typer.Option(help="Random trials before TPE/GP model the space.", rich_help_panel=_SEARCH)] = 10,
    n_workers: Annotated[int, typer.Option(min=1, help="Parallel workers in this process; other processes may join with the same --study/--storage.", rich_help_panel=_SEARCH)] = 1,
    heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeats; a trial silent for 3x this is re-queued.", rich_help_panel=_SEARCH)] = 30.0,
    seed: Annotated[int, typer.Option(help="Seed of the sampler (of the process that creates the study) and the question order.", rich_help_panel=_SEARCH)] = 0,
    n_trials: Annotated[int | None, typer.Option(min=0, help="Finished (complete or pruned) trials in the study, over all runs and workers; 0 runs none (only the final test of the study's best).", rich_help_panel=_BUDGET)] = 30,
    timeout: Annotated[float | None, typer.Option(help="Seconds for this run; running trials finish.", rich_help_panel=_BUDGET)] = None,
    max_lm_calls: Annotated[int | None, typer.Option(min=1, help="LM calls over the study (both stages), checked before each question.", rich_help_panel=_BUDGET)] = None,
    split: SplitOpt = DEFAULT_SPLIT,
    split_seed: SplitSeedOpt = 0,
    final: Annotated[bool, typer.Option("--final/--no-final", help="Evaluate the best and the reference formats on the test split at the end (--no-final for extra workers).")] = True,
    no_tui: Annotated[bool, typer.Option("--no-tui", help="Log lines instead of the live view.")] = False,
    threads: ThreadsOpt = 8,
    log_prompts: LogPromptsOpt = False,
    *,
    selection: dict[str, Any],
    lm: LMOptions,
) -> None:
    """Search the prompt-format space with Optuna on the dev split; report the best on the test split."""
    from medjp_agent.optimizers import Budget, Liveness, SearchConfig, SearchSettings, run_search
    from medjp_agent.optimizers.storage import open_storage, require_finished_trials
    from medjp_agent.redact import redact_text
    from medjp_agent.report.optuna_views import dashboard_hint
    from medjp_agent.search_tui import LogObserver, SearchMonitor, SearchSummary

    keep_prompts(log_prompts)
    dataset, questions, filters = load_questions(data, **selection)
    format_space, url = _space(space, base), storage or _storage_url(out)
    settings = SearchSettings(
        study=study or out.name, storage=url, sampler=sampler, seed=seed, prune=prune, p_threshold=p_threshold,
        n_startup_steps=n_startup_steps, n_startup_trials=n_startup_trials, n_workers=n_workers, threads=threads,
        budget=Budget(n_trials, timeout, max_lm_calls), liveness=Liveness(interval_s=heartbeat))
    if n_trials == 0:
        require_finished_trials(url, settings.study)
    screening = _screening(score, screen, screen_trials, screen_questions, promote)
    open_storage(url)  # a storage that cannot be opened fails now, not after the model has loaded
    # Piped (`| tee log`), a live view would stay blank until one final frame: log lines instead.
    live = not no_tui and console.is_terminal
    observer = SearchMonitor(settings.budget, tuple(format_space.axes)) if live else LogObserver(console)
    config = SearchConfig(_splits(questions, split, split_seed), _build_lm(lm), format_space, settings, score,  # type: ignore[arg-type]
                          screening, out, final, dataset.source, filters, observer, console)
    with nullcontext() if isinstance(observer, LogObserver) else observer.live(console):
        result = run_search(config)
    console.print(SearchSummary(result))
    console.print(f"[green]wrote[/] {out}", highlight=False)
    console.print(dashboard_hint(redact_text(url)), highlight=False, soft_wrap=True)

def optimize(
    optimizer: Annotated[str, typer.Option(help="bootstrap, bootstrap-rs, mipro, copro, gepa, simba or knn.", rich_help_panel=_OPT)],
    data: DataOpt = "sample",
    format: FormatOpt = DEFAULT_FORMAT,
    from_search: Annotated[Path | None, typer.Option(help="A `medjp search` run folder: optimize within its best --top-k formats (combined mode).", rich_help_panel=_OPT)] = None,
    top_k: Annotated[int, typer.Option(help="With --from-search: how many of its best formats to optimize within.", rich_help_panel=_OPT)] = 3,
    out: Annotated[Path | None, typer.Option(callback=writable_dir, help="Run folder (default runs/optimize-<optimizer>). Re-running resumes it.")] = None,
    auto: Annotated[str, typer.Option(help="MIPROv2/GEPA budget preset: light, medium or heavy.", rich_help_panel=_OPT)] = "light",
    max_demos: Annotated[int, typer.Option(help="Demos per program (neighbours for knn).", rich_help_panel=_OPT)] = 4,
    candidates: Annotated[int, typer.Option(help="Candidate programs (bootstrap-rs), instructions per round (copro), samples (simba).", rich_help_panel=_OPT)] = 4,
    steps: Annotated[int, typer.Option(help="Rounds (copro depth, simba steps).", rich_help_panel=_OPT)] = 2,
    max_metric_calls: Annotated[int | None, typer.Option(help="GEPA budget in metric calls (replaces --auto).", rich_help_panel=_OPT)] = None,
    max_lm_calls: Annotated[int | None, typer.Option(min=1, help="LM calls of this run (compiling, the reflection model's, dev and test), checked before each call.", rich_help_panel=_BUDGET)] = None,
    reflection_model: Annotated[str | None, typer.Option(help="Model that writes instructions/reflects (MIPROv2, COPRO, SIMBA, GEPA); default: --model.", rich_help_panel=_OPT)] = None,
    reflection_api_base: Annotated[str | None, typer.Option(help="OpenAI-compatible server of --reflection-model.", rich_help_panel=_OPT)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the optimizers.", rich_help_panel=_OPT)] = 0,
    split: SplitOpt = DEFAULT_SPLIT,
    split_seed: SplitSeedOpt = 0,
    threads: ThreadsOpt = 8,
    log_prompts: LogPromptsOpt = False,
    *,
    selection: dict[str, Any],
    lm: LMOptions,
) -> None:
    """Tune instructions and demos with a DSPy optimizer within a format (or a search's best formats)."""
    import dataclasses

    from medjp_agent.errors import ConfigError, user_input
    from medjp_agent.optimizers import OptimizeConfig, OptimizerSettings, formats_from_search, run_optimize
    from medjp_agent.optimizers.dspy_optimizers import optimizer_spec
    from medjp_agent.signatures import resolve_format

    optimizer_spec(optimizer)
    settings = OptimizerSettings(auto=auto, max_demos=max_demos, candidates=candidates, steps=steps,  # type: ignore[arg-type]
                                 max_metric_calls=max_metric_calls, threads=threads, seed=seed)
    keep_prompts(log_prompts)
    fractions: str | tuple[float, ...] = split
    given = [flag for flag, value, default in (("--format", format, DEFAULT_FORMAT), ("--split", split, DEFAULT_SPLIT),
                                               ("--split-seed", split_seed, 0)) if value != default]
    if from_search is not None and given:
        raise ConfigError(f"--from-search takes the search's formats, split and split seed; leave out {', '.join(given)}")
    pick = None
    with user_input("--format/--from-search"):
        if from_search is not None:
            pick = formats_from_search(from_search, top_k)
            formats, fractions, split_seed = pick.formats, pick.fractions, pick.seed
            # What is not given is the search's: its data, and its selection flags (all or none).
            if data == "sample":
                data = _searched_data(pick, from_search)
            if not selection_given(selection):
                recorded = recorded_selection(pick.filters)
                selection = {**recorded, "lenient": recorded["lenient"] or selection.get("lenient", False)}
        else:
            formats = [resolve_format(format)]
    dataset, questions, filters = load_questions(data, **selection)
    if pick is not None:
        _check_searched_data(pick, from_search, dataset.source, filters)  # type: ignore[arg-type]
    model = _build_lm(lm)
    if pick is not None:
        _check_searched_model(pick, from_search, model, given=lm.model is not None)  # type: ignore[arg-type]
    # Another model: the student's adapters are not its own, and its proposals are longer than exam answers.
    proposer = (_build_lm(dataclasses.replace(lm, model=reflection_model or lm.model,
                                              api_base=reflection_api_base or lm.api_base, adapters=(),
                                              max_new_tokens=max(lm.max_new_tokens, LMOptions.max_new_tokens)))
                if reflection_model or reflection_api_base else None)
    out = out or Path("runs") / f"optimize-{optimizer}"
    result = run_optimize(OptimizeConfig(
        optimizer, formats, _splits(questions, fractions, split_seed), model, out, proposer, settings, max_lm_calls,
        dataset.source, filters, {"from_search": str(from_search or "")}, console))
    for name, run in result.test.items():
        console.print(f"{name}: test accuracy {run.accuracy:.1%} ({run.run_dir})", highlight=False)
    if result.stopped:
        console.print(f"[yellow]{result.stopped}[/]; what finished is saved", highlight=False)
    console.print(f"[green]wrote[/] {out} · {result.lm_calls:,} LM calls")


def _searched_data(pick: Any, run_dir: Path) -> str:
    """The data a search ran on, which the combined mode takes when --data is not given."""
    if not Path(pick.data).exists():
        from medjp_agent.errors import ConfigError

        raise ConfigError(f"--from-search: the data {run_dir} searched on, {pick.data}, is not found from here (a path "
                          "relative to where the search ran?): pass it as --data; the search's filters are taken")
    return pick.data


def _check_searched_data(pick: Any, run_dir: Path, source: str, filters: dict[str, Any]) -> None:
    """Refuse questions other than those the search chose its formats and split on: other data (where the search's
    path can be found from here to compare) or other filters, naming what differs."""
    from medjp_agent.errors import ConfigError
    from medjp_agent.results import selection_filters

    wanted, chosen = selection_filters(filters), selection_filters(pick.filters)
    differ = [f"{k}: {chosen.get(k)!r} there, {wanted.get(k)!r} now" for k in sorted({*wanted, *chosen})
              if wanted.get(k) != chosen.get(k)]
    if Path(pick.data).exists() and Path(source).resolve() != Path(pick.data).resolve():
        differ.insert(0, f"data: {pick.data} there, {source} now")
    if differ:
        raise ConfigError(f"--from-search: {run_dir} chose its formats on other questions ({'; '.join(differ)}): leave "
                          "out --data and the selection flags to take the search's")


def _check_searched_model(pick: Any, run_dir: Path, model: Any, given: bool) -> None:
    """The combined mode optimizes with the model the search chose its formats with, unless --model says otherwise
    (then it warns)."""
    import warnings

    from medjp_agent.errors import ConfigError, MedjpWarning
    from medjp_agent.lm import describe_lm

    described = describe_lm(model)
    now, then = (described["model"], described["adapter"]), (pick.model, pick.adapter)
    if now == then:
        return
    said = (f"{run_dir} chose its formats with {' + '.join(filter(None, then))}; this run uses "
            f"{' + '.join(filter(None, now))}")
    if not given:
        raise ConfigError(f"--from-search: {said}: pass --model (and --adapter or --api-base) to say which")
    warnings.warn(MedjpWarning(f"--from-search: {said}, as --model asks"), stacklevel=2)


def register(app: typer.Typer) -> None:
    for name, command in (("search", search), ("optimize", optimize)):
        app.command(name)(reports_errors(with_lm_options(with_data_options(command))))
