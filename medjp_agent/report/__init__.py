"""Ablation reports over run folders: paired statistics, exam verdicts, flips, search views, tables, plots, HTML.

`medjp report` reads only the results schema (:mod:`medjp_agent.results`):

- :mod:`.stats`: exact McNemar, paired bootstrap CI, Holm adjustment;
- :mod:`.compare`: runs against a baseline on their shared questions;
- :mod:`.verdict` (+ ``cutoffs.yaml``): NMLE pass/fail per year;
- :mod:`.diff`: questions that flip between two runs;
- :mod:`.optuna_views`: fANOVA importances, best-so-far curve, accuracy by format-axis value of a search;
- :mod:`.build`: the :class:`Report` that ties them together;
- :mod:`.tables`, :mod:`.plots`, :mod:`.html`: how a report is drawn.
"""

from .build import Report, RunRow, build_report, load_run_dirs
from .compare import Comparison, compare_runs
from .diff import Flip, RunDiff, diff_runs
from .optuna_views import AxisValue, SearchView, load_search_view, summarise_study
from .stats import holm, mcnemar_exact, paired_bootstrap_ci
from .tables import ReportTable, report_tables
from .verdict import Criterion, Cutoff, YearVerdict, exam_verdicts, load_cutoffs

__all__ = [
    "AxisValue",
    "Comparison",
    "Criterion",
    "Cutoff",
    "Flip",
    "Report",
    "ReportTable",
    "RunDiff",
    "RunRow",
    "SearchView",
    "YearVerdict",
    "build_report",
    "compare_runs",
    "diff_runs",
    "exam_verdicts",
    "holm",
    "load_cutoffs",
    "load_run_dirs",
    "load_search_view",
    "mcnemar_exact",
    "paired_bootstrap_ci",
    "report_tables",
    "summarise_study",
]
