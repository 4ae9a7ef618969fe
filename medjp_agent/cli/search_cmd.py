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

from .options import DataOpt, FormatOpt, console, fail, load_questions, with_data_options, with_lm_options

if TYPE_CHECKING:
    from medjp_agent.optimizers import SearchResult, Splits

_SEARCH, _BUDGET, _SPLIT, _OPT = "Search", "Budget", "Splits", "Optimizer"

SplitOpt = Annotated[str, typer.Option(help="TRAIN,DEV,TEST fractions: train gives demos, dev chooses, test reports.", rich_help_panel=_SPLIT)]
SplitSeedOpt = Annotated[int, typer.Option(help="Seed of the hash-based split.", rich_help_panel=_SPLIT)]
ThreadsOpt = Annotated[int, typer.Option(help="Questions in flight at once; the backend batches them.")]


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise fail(f"--split must be three comma-separated fractions, got {text!r}") from None


def _splits(questions: list[Any], split: str, split_seed: int) -> "Splits":
    from medjp_agent.optimizers import Splits

    try:
        return Splits.make(questions, _fractions(split), split_seed)
    except ValueError as e:
        raise fail(str(e)) from None


def register(app: typer.Typer) -> None:
    @app.command("search")
    @with_lm_options
    @with_data_options
    def search(
        data: DataOpt = "sample",
        out: Annotated[Path, typer.Option(help="Run folder: study.db, manifest, test/ runs, best_program.json, best_format.yaml.")] = Path("runs/search"),
        study: Annotated[str | None, typer.Option(help="Study name; the same name and storage resumes it. Default: the --out folder's name.", rich_help_panel=_SEARCH)] = None,
        storage: Annotated[str | None, typer.Option(help="sqlite:///FILE, postgresql://..., or journal:PATH. Default: sqlite:///<out>/study.db.", rich_help_panel=_SEARCH)] = None,
        space: Annotated[Path | None, typer.Option(help="YAML/JSON format space (base + axes); default: every axis.", rich_help_panel=_SEARCH)] = None,
        base: Annotated[str, typer.Option(help="Format whose values the unsearched fields keep (without --space).", rich_help_panel=_SEARCH)] = "paper-instruction-in-header",
        sampler: Annotated[str, typer.Option(help="tpe, gp, random or grid.", rich_help_panel=_SEARCH)] = "tpe",
        score: Annotated[str, typer.Option(help="Per-question score: correct (0/1), logprob (gold option's log-probability, local models), auto.", rich_help_panel=_SEARCH)] = "auto",
        prune: Annotated[bool, typer.Option("--prune/--no-prune", help="Stop clearly worse formats early (Wilcoxon signed-rank test).", rich_help_panel=_SEARCH)] = True,
        p_threshold: Annotated[float, typer.Option(help="One-sided p-value below which a trial is stopped.", rich_help_panel=_SEARCH)] = 0.1,
        n_startup_steps: Annotated[int, typer.Option(help="Questions before any stop (at least 14).", rich_help_panel=_SEARCH)] = 20,
        n_startup_trials: Annotated[int, typer.Option(help="Random trials before TPE/GP model the space.", rich_help_panel=_SEARCH)] = 10,
        n_workers: Annotated[int, typer.Option(help="Parallel workers in this process; other processes may join with the same --study/--storage.", rich_help_panel=_SEARCH)] = 1,
        heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeats; a trial silent for 3x this is re-queued.", rich_help_panel=_SEARCH)] = 30.0,
        seed: Annotated[int, typer.Option(help="Seed of the sampler and the question order.", rich_help_panel=_SEARCH)] = 0,
        n_trials: Annotated[int | None, typer.Option(help="Finished trials in the study (over all runs and workers).", rich_help_panel=_BUDGET)] = 30,
        timeout: Annotated[float | None, typer.Option(help="Seconds for this run; running trials finish.", rich_help_panel=_BUDGET)] = None,
        max_lm_calls: Annotated[int | None, typer.Option(help="LM calls over the study.", rich_help_panel=_BUDGET)] = None,
        split: SplitOpt = "0.2,0.4,0.4",
        split_seed: SplitSeedOpt = 0,
        final: Annotated[bool, typer.Option("--final/--no-final", help="Evaluate the best and the paper formats on the test split at the end (--no-final for extra workers).")] = True,
        no_tui: Annotated[bool, typer.Option("--no-tui", help="Log lines instead of the live view.")] = False,
        threads: ThreadsOpt = 8,
        *,
        selection: dict[str, Any],
        lm: LMOptions,
    ) -> None:
        """Search the prompt-format space with Optuna on the dev split; report the best on the test split."""
        import optuna

        from medjp_agent import lm as backends
        from medjp_agent.evaluate import RunInterrupted
        from medjp_agent.optimizers import (
            SAMPLERS, Budget, FormatSpace, Liveness, SearchResult, SearchSettings, StudyMismatch, default_storage_url,
            finish_search, load_space, make_score, open_study, run_study,
        )
        from medjp_agent.results import RunManifest, RunWriter
        from medjp_agent.search_tui import LogObserver, SearchMonitor
        from medjp_agent.signatures import PAPER_FORMATS, PromptFormat, resolve_format

        if sampler not in SAMPLERS:
            raise fail(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if score not in ("auto", "correct", "logprob"):
            raise fail(f"--score must be auto, correct or logprob, got {score!r}")
        dataset, questions, filters = load_questions(data, **selection)
        splits = _splits(questions, split, split_seed)
        try:
            format_space = load_space(space) if space else FormatSpace.default(base)
            model = backends.build_lm(lm)
            scorer = make_score(score, model, splits.demo_pool(), seed)  # type: ignore[arg-type]
        except ValueError as e:
            raise fail(str(e)) from None
        dev = [q for q in splits.dev if scorer.accepts(q)]
        references: tuple[str | PromptFormat, ...] = PAPER_FORMATS
        if scorer.name == "logprob":
            format_space = format_space.for_logprob()
            references = tuple(FormatSpace.logprob_variant(resolve_format(name)) for name in PAPER_FORMATS)
        url = storage or default_storage_url(out)
        settings = SearchSettings(
            study=study or out.name, storage=url, sampler=sampler, seed=seed, prune=prune, p_threshold=p_threshold,
            n_startup_steps=n_startup_steps, n_startup_trials=n_startup_trials, n_workers=n_workers, threads=threads,
            budget=Budget(n_trials, timeout, max_lm_calls), liveness=Liveness(interval_s=heartbeat),
            references=references,
        )
        info = backends.describe_lm(model)
        writer = RunWriter(out, RunManifest.create(
            name=out.name, kind="search", data=dataset.source, model=info["model"], adapter=info["adapter"],
            backend=info["backend"], filters=filters, n_questions=len(dev),
            extra={"storage": url, "study": settings.study, "sampler": sampler, "score": scorer.name,
                   "split": splits.to_dict(), "space": format_space.to_dict()},
        ))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            opened, opened_storage = open_study(settings, format_space, scorer, dev)
        except StudyMismatch as e:
            raise fail(str(e)) from None
        previous = SearchResult.from_study(opened).trials
        console.print(f"study [bold]{settings.study}[/] in {url}: {len(previous)} finished trials, {len(dev)} dev "
                      f"questions, score {scorer.name}, sampler {sampler}", highlight=False)
        observer = LogObserver(console) if no_tui else SearchMonitor(settings.budget, tuple(format_space.axes), previous)
        try:
            with nullcontext() if isinstance(observer, LogObserver) else observer.live(console):
                result = run_study(opened, opened_storage, settings, format_space, dev, scorer, observer)
        except RunInterrupted as e:
            raise fail(f"{e} Re-run the same command to resume the study.", code=1) from None
        _print_search(result)
        test = {}
        if final and result.best is not None:
            test = finish_search(PromptFormat.from_dict(result.best.format), PAPER_FORMATS, splits.test, model, out,
                                 demo_pool=splits.demo_pool(), seed=seed, data=dataset.source, filters=filters,
                                 threads=threads, console=console)
        writer.finalize(search=result.to_dict(), test={k: v.to_dict() for k, v in test.items()})
        console.print(f"[green]wrote[/] {out} · optuna-dashboard {url}", highlight=False)

    @app.command("optimize")
    @with_lm_options
    @with_data_options
    def optimize(
        optimizer: Annotated[str, typer.Option(help="bootstrap, bootstrap-rs, mipro, copro, gepa, simba or knn.", rich_help_panel=_OPT)],
        data: DataOpt = "sample",
        format: FormatOpt = "paper-instruction-in-header",
        from_search: Annotated[Path | None, typer.Option(help="A `medjp search` run folder: optimize within its best --top-k formats (combined mode).", rich_help_panel=_OPT)] = None,
        top_k: Annotated[int, typer.Option(help="With --from-search: how many of its best formats to optimize within.", rich_help_panel=_OPT)] = 3,
        out: Annotated[Path | None, typer.Option(help="Run folder (default runs/optimize-<optimizer>). Re-running resumes it.")] = None,
        auto: Annotated[str, typer.Option(help="MIPROv2/GEPA budget preset: light, medium or heavy.", rich_help_panel=_OPT)] = "light",
        max_demos: Annotated[int, typer.Option(help="Demos per program (neighbours for knn).", rich_help_panel=_OPT)] = 4,
        candidates: Annotated[int, typer.Option(help="Candidate programs (bootstrap-rs), instructions per round (copro), samples (simba).", rich_help_panel=_OPT)] = 4,
        steps: Annotated[int, typer.Option(help="Rounds (copro depth, simba steps).", rich_help_panel=_OPT)] = 2,
        max_metric_calls: Annotated[int | None, typer.Option(help="GEPA budget in metric calls (replaces --auto).", rich_help_panel=_OPT)] = None,
        reflection_model: Annotated[str | None, typer.Option(help="Model that writes instructions/reflects (MIPROv2, COPRO, SIMBA, GEPA); default: --model.", rich_help_panel=_OPT)] = None,
        reflection_api_base: Annotated[str | None, typer.Option(help="OpenAI-compatible server of --reflection-model.", rich_help_panel=_OPT)] = None,
        seed: Annotated[int, typer.Option(help="Seed of the optimizers.", rich_help_panel=_OPT)] = 0,
        split: SplitOpt = "0.2,0.4,0.4",
        split_seed: SplitSeedOpt = 0,
        threads: ThreadsOpt = 8,
        *,
        selection: dict[str, Any],
        lm: LMOptions,
    ) -> None:
        """Tune instructions and demos with a DSPy optimizer within a format (or a search's best formats)."""
        import dataclasses

        from medjp_agent import lm as backends
        from medjp_agent.evaluate import RunInterrupted
        from medjp_agent.optimizers import OPTIMIZERS, OptimizerSettings, load_search, run_optimize
        from medjp_agent.results import RunManifest, RunWriter
        from medjp_agent.signatures import PromptFormat, resolve_format

        if optimizer not in OPTIMIZERS:
            raise fail(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        if auto not in ("light", "medium", "heavy"):
            raise fail(f"--auto must be light, medium or heavy, got {auto!r}")
        dataset, questions, filters = load_questions(data, **selection)
        try:
            if from_search is not None:
                searched, manifest = load_search(from_search)
                formats = [PromptFormat.from_dict(o.format) for o in searched.top(top_k)]
                if not formats:
                    raise ValueError(f"{from_search}: the search has no fully evaluated trial yet")
                recorded = manifest.extra.get("split") or {}
                split = ",".join(map(str, recorded.get("fractions", _fractions(split))))
                split_seed = int(recorded.get("seed", split_seed))
            else:
                formats = [resolve_format(format)]
            model = backends.build_lm(lm)
            proposer = (backends.build_lm(dataclasses.replace(lm, model=reflection_model or lm.model,
                                                              api_base=reflection_api_base or lm.api_base))
                        if reflection_model or reflection_api_base else None)
        except (ValueError, FileNotFoundError, KeyError) as e:
            raise fail(str(e)) from None
        splits = _splits(questions, split, split_seed)
        out = out or Path("runs") / f"optimize-{optimizer}"
        info = backends.describe_lm(model)
        writer = RunWriter(out, RunManifest.create(
            name=out.name, kind="optimize", data=dataset.source, model=info["model"], adapter=info["adapter"],
            backend=info["backend"], optimizer=optimizer, filters=filters, n_questions=len(splits.test),
            extra={"formats": [f.name for f in formats], "split": splits.to_dict(),
                   "from_search": str(from_search or ""), "proposer": backends.describe_lm(proposer or model)},
        ))
        settings = OptimizerSettings(auto=auto, max_demos=max_demos, candidates=candidates, steps=steps,  # type: ignore[arg-type]
                                     max_metric_calls=max_metric_calls, threads=threads, seed=seed)
        try:
            result = run_optimize(optimizer, formats, splits, model, out, proposer=proposer, settings=settings,
                                  data=dataset.source, filters=filters, console=console)
        except RunInterrupted as e:
            raise fail(str(e), code=1) from None
        writer.finalize(optimize=result.to_dict())
        for name, run in result.test.items():
            console.print(f"{name}: test accuracy {run.accuracy:.1%} ({run.run_dir})", highlight=False)
        console.print(f"[green]wrote[/] {out}")


def _print_search(result: "SearchResult") -> None:
    """The search's outcome: best format, references, pruning savings and format sensitivity."""
    from rich.table import Table

    s = result.sensitivity
    table = Table(title=f"{result.study}: {result.n_complete} trials ({result.n_pruned} pruned) · stop: {result.stop_reason}")
    table.add_column("")
    table.add_column("dev accuracy", justify="right")
    table.add_column("score", justify="right")
    if result.best is not None:
        table.add_row(f"best: {result.best.name}", f"{result.best.accuracy:.1%}", f"{result.best.value:.3f}", style="bold")
    for name, ref in result.references.items():
        table.add_row(name, f"{ref.accuracy:.1%}", f"{ref.value:.3f}")
    console.print(table)
    saved = result.lm_calls_saved
    console.print(f"LM calls {result.lm_calls:,} · saved by pruning {saved:,} "
                  f"({saved / max(1, result.lm_calls + saved):.0%})", highlight=False)
    if s.n_formats:
        console.print(f"format sensitivity over {s.n_formats} formats: spread {s.spread:.1%} (best {s.best:.1%} "
                      f"{s.best_format}, worst {s.worst:.1%} {s.worst_format}), median {s.quantiles['p50']:.1%}, "
                      f"stdev {s.stdev:.1%}", highlight=False)
