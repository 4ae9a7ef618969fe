"""Finding the prompt format (and program) that scores best: Optuna format search and DSPy optimizers.

- :mod:`.space`: the format space (which ``PromptFormat`` axes, which values, conditional axes);
- :mod:`.scores`: per-question scores (0/1 correctness, or the gold option's log-probability);
- :mod:`.objective`: one trial = one format on the dev split, reported per question for pruning;
- :mod:`.pruning`, :mod:`.samplers`, :mod:`.storage`: the Optuna pieces, configured for this problem;
- :mod:`.liveness`, :mod:`.workers`: heartbeats, dead-trial recovery, parallel workers and budgets;
- :mod:`.search`: a resumable study; :mod:`.sensitivity`: format sensitivity (spread, distribution);
- :mod:`.heldout`: the winner and its baselines on the test split; :mod:`.splits`: train/dev/test;
- :mod:`.dspy_optimizers`, :mod:`.optimize`: DSPy optimizers tuning instructions and demos within formats.
"""

from .dspy_optimizers import OPTIMIZERS, ExamMetric, OptimizerSettings, compile_program
from .heldout import BEST_FORMAT, BEST_PROGRAM, Finalist, TestRun, evaluate_finalists, finish_search, save_best
from .liveness import Liveness
from .objective import REFERENCE, FormatObjective, SearchObserver, TrialInterrupted, TrialOutcome
from .optimize import OptimizeResult, run_optimize
from .pruning import make_pruner
from .samplers import SAMPLERS, make_sampler
from .scores import CorrectnessScore, LogprobScore, QuestionScore, make_score, supports_logprob
from .search import SearchResult, SearchSettings, StudyMismatch, load_search, open_study, run_search, run_study
from .sensitivity import FormatSensitivity
from .space import DEFAULT_AXES, FormatSpace, load_space
from .splits import DEFAULT_FRACTIONS, Splits
from .storage import default_storage_url, open_storage, search_storage_url
from .workers import Budget, Workers

__all__ = [
    "BEST_FORMAT", "BEST_PROGRAM", "DEFAULT_AXES", "DEFAULT_FRACTIONS", "OPTIMIZERS", "REFERENCE", "SAMPLERS",
    "Budget", "CorrectnessScore", "ExamMetric", "Finalist", "FormatObjective", "FormatSensitivity", "FormatSpace",
    "Liveness", "LogprobScore", "OptimizeResult", "OptimizerSettings", "QuestionScore", "SearchObserver",
    "SearchResult", "SearchSettings", "Splits", "StudyMismatch", "TestRun", "TrialInterrupted", "TrialOutcome",
    "Workers", "compile_program", "default_storage_url", "evaluate_finalists", "finish_search", "load_search", "load_space", "make_pruner",
    "make_sampler", "make_score", "open_storage", "open_study", "search_storage_url", "run_optimize", "run_search", "run_study", "save_best",
    "supports_logprob",
]
