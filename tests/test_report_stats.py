"""Golden tests of the paired statistics: hand-computed cases, statsmodels, and a constructed bootstrap case."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from medjp_agent.report import holm, mcnemar_exact, paired_bootstrap_ci


def test_mcnemar_hand_computed():
    # b=2, c=10: p = 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert mcnemar_exact(2, 10) == pytest.approx(158 / 4096, abs=1e-15)
    # b=0, c=5: p = 2 / 32
    assert mcnemar_exact(0, 5) == pytest.approx(1 / 16, abs=1e-15)
    assert mcnemar_exact(7, 7) == 1.0
    assert mcnemar_exact(0, 0) == 1.0


def test_mcnemar_is_symmetric_and_rejects_negative_counts():
    assert mcnemar_exact(3, 15) == mcnemar_exact(15, 3)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


@pytest.mark.parametrize("b,c", [(1, 0), (2, 10), (5, 9), (30, 45), (117, 571), (250, 251), (0, 40)])
def test_mcnemar_matches_statsmodels(b, c):
    table = [[100, b], [c, 50]]
    assert mcnemar_exact(b, c) == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-9, abs=1e-300)


def test_holm_hand_case():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, 2*0.03, max(1*0.04, 0.06); back in input order
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_holm_matches_statsmodels():
    p = [0.001, 0.2, 0.011, 0.04, 0.0049, 0.3]
    rejected, adjusted, _, _ = multipletests(p, alpha=0.05, method="holm")
    assert holm(p) == pytest.approx(list(adjusted))
    assert [a <= 0.05 for a in holm(p)] == list(rejected)


def _paired_sample(n: int, p_first: float, p_second: float, seed: int) -> tuple[list[bool], list[bool]]:
    rng = np.random.default_rng(seed)
    return list(rng.random(n) < p_first), list(rng.random(n) < p_second)


def test_bootstrap_covers_the_true_difference():
    # Independent systems at 60 % and 70 %: the true accuracy difference is +0.10.
    first, second = _paired_sample(2000, 0.6, 0.7, seed=1)
    low, high = paired_bootstrap_ci(first, second, seed=0)
    assert low < 0.10 < high
    assert 0.0 < low and high - low < 0.07  # significant, and a plausible width for n=2000


def test_bootstrap_is_deterministic_with_a_seed():
    first, second = _paired_sample(300, 0.5, 0.6, seed=2)
    assert paired_bootstrap_ci(first, second, seed=7) == paired_bootstrap_ci(first, second, seed=7)
    assert paired_bootstrap_ci(first, second, seed=7) != paired_bootstrap_ci(first, second, seed=8)


def test_bootstrap_matches_resampling_questions():
    # The multinomial shortcut must give the same interval as resampling question indices.
    first, second = _paired_sample(400, 0.55, 0.65, seed=3)
    diff = np.asarray(second, dtype=int) - np.asarray(first, dtype=int)
    idx = np.random.default_rng(0).integers(0, diff.size, size=(20_000, diff.size))
    naive = np.quantile(diff[idx].mean(axis=1), [0.025, 0.975])
    low, high = paired_bootstrap_ci(first, second, n_boot=20_000)
    assert (low, high) == pytest.approx(tuple(naive), abs=0.006)


def test_bootstrap_of_identical_systems_is_zero_and_errors_are_clear():
    assert paired_bootstrap_ci([True, False] * 10, [True, False] * 10) == (0.0, 0.0)
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap_ci([True], [True, False])
    with pytest.raises(ValueError, match="no paired"):
        paired_bootstrap_ci([], [])
