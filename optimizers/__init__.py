"""Finding the prompt format (and program) that scores best: Optuna format search and DSPy optimizers.

The two entry points, what `medjp search` and `medjp optimize` run:
- :func:`run_search` (:class:`SearchConfig` -> :class:`SearchResult`), in :mod:`.format_search`;
- :func:`run_optimize` (:class:`OptimizeConfig` -> :class:`OptimizeResult`), in :mod:`.optimize`.

Their parts:
- :mod:`.space`: the format space (which ``PromptFormat`` axes, which values, conditional axes);
- :mod:`.scores`: what a trial's value is made of (generation accuracy, or the gold option's log-probability);
- :mod:`.objective`: one trial = one format on the dev split through the evaluation core; where a trial is pruned;
- :mod:`.screen`: the log-probability first stage of a screened (multi-fidelity) search;
- :mod:`.pruning`, :mod:`.samplers`, :mod:`.storage`: the Optuna pieces, configured for this problem;
- :mod:`.liveness`, :mod:`.workers`: heartbeats, dead-trial recovery, parallel workers and exact budgets;
- :mod:`.search`: a resumable study; :mod:`.sensitivity`: format sensitivity (spread, distribution);
- :mod:`.heldout`: the winner and its baselines on the test split; :mod:`.splits`: train/dev/test;
- :mod:`.dspy_optimizers`: DSPy optimizers tuning instructions and demos within formats.
"""

from .dspy_optimizers import OPTIMIZERS, ExamMetric, OptimizerSettings, compile_program
from .format_search import SearchConfig, run_search
from .heldout import BEST_FORMAT, BEST_PROGRAM, Finalist, TestRun, evaluate_finalists, finish_search, save_best
from .liveness import Liveness
from .objective import (
    DUPLICATE_OF, REFERENCE, TRIALS_DIR, FormatObjective, SearchObserver, TrialInterrupted, TrialOutcome, TrialReporter,
)
from .optimize import OptimizeConfig, OptimizeResult, SearchPick, formats_from_search, run_optimize
from .pruning import make_pruner
from .samplers import SAMPLERS, make_sampler
from .scores import SCORES, LogprobQA, make_program, supports_logprob
from .screen import CandidateSpace, ScreenResult, ScreenSettings
from .search import SearchResult, SearchSettings, StudyMismatch, load_search, open_study
from .sensitivity import FormatSensitivity
from .space import DEFAULT_AXES, FormatSpace, load_space
from .splits import DEFAULT_FRACTIONS, Splits
from .storage import default_storage_url, open_storage, search_storage_url
from .workers import Budget, CallBudget, Workers

__all__ = [
    "BEST_FORMAT", "BEST_PROGRAM", "DEFAULT_AXES", "DEFAULT_FRACTIONS", "DUPLICATE_OF", "OPTIMIZERS", "REFERENCE",
    "SAMPLERS", "SCORES", "TRIALS_DIR", "Budget", "CallBudget", "CandidateSpace", "ExamMetric", "Finalist",
    "FormatObjective", "FormatSensitivity", "FormatSpace", "Liveness", "LogprobQA", "OptimizeConfig",
    "OptimizeResult", "OptimizerSettings", "ScreenResult", "ScreenSettings", "SearchConfig", "SearchObserver",
    "SearchResult", "SearchSettings", "Splits", "StudyMismatch", "TestRun", "TrialInterrupted", "TrialOutcome",
    "TrialReporter", "Workers", "compile_program", "default_storage_url", "evaluate_finalists", "finish_search",
    "SearchPick", "formats_from_search", "load_search", "load_space", "make_pruner", "make_program", "make_sampler",
    "open_storage", "open_study", "run_optimize", "run_search", "save_best", "search_storage_url",
    "supports_logprob",
]
