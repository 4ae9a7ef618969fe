"""Paired statistics for two systems answering the same questions.

Accuracy deltas between prompt formats or models are measured on *the same* questions, so each question gives a pair
of outcomes. Paired tests use that: a question both systems get right (or both wrong) says nothing about which is
better, only the discordant questions do. Unpaired tests (two-proportion z-tests) ignore the pairing and lose power.

- :func:`mcnemar_exact`: is the difference real? Exact McNemar test on the discordant counts.
- :func:`paired_bootstrap_ci`: how large is it? Percentile bootstrap CI for the accuracy difference.
- :func:`holm`: several comparisons at once? Holm's step-down adjustment of their p-values.

scipy and numpy are imported inside the functions so ``medjp --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Sequence


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts.

    Args:
        b: questions the first system gets right and the second wrong.
        c: questions the first system gets wrong and the second right.

    Under the null hypothesis of equal accuracy each discordant question is equally likely to fall either way, so
    ``c ~ Binomial(b + c, 1/2)``; the p-value is scipy's exact two-sided binomial test. The exact test is used rather
    than the chi-square approximation because the approximation is poor when few questions are discordant (under
    about 25), which is the usual case for a per-year or text-only subset; on large counts the two agree. With no
    discordant question there is no evidence either way and the p-value is 1.

    Matches ``statsmodels.stats.contingency_tables.mcnemar(table, exact=True).pvalue``.

    >>> round(mcnemar_exact(2, 10), 4)
    0.0386
    """
    from scipy.stats import binomtest

    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return float(binomtest(c, b + c, 0.5, alternative="two-sided").pvalue)


def paired_bootstrap_ci(first: Sequence[bool], second: Sequence[bool], *, n_boot: int = 10_000,
                        confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI for ``accuracy(second) - accuracy(first)`` over paired questions.

    A paired bootstrap resamples *questions* (keeping both systems' outcomes together) with replacement and takes the
    accuracy difference of each resample; the CI is the central ``confidence`` share of those differences. It needs no
    normality assumption and reflects how much the delta depends on which questions happened to be asked.

    Each question's paired difference is -1, 0 or +1, so a resample is fully described by how many of each it drew,
    and those counts are multinomial. Drawing the counts directly gives exactly the distribution of resampling indices,
    in O(n_boot) rather than O(n_boot × n). The same ``seed`` gives the same interval.

    Args:
        first, second: per-question correctness of the two systems, in the same question order.
        n_boot: bootstrap resamples.
        confidence: coverage of the interval, e.g. 0.95.
        seed: seed of numpy's random generator.
    """
    import numpy as np

    if len(first) != len(second):
        raise ValueError(f"paired outcomes differ in length: {len(first)} vs {len(second)}")
    if not first:
        raise ValueError("no paired questions to bootstrap")
    diff = np.asarray(second, dtype=int) - np.asarray(first, dtype=int)
    n = diff.size
    shares = [np.count_nonzero(diff == 1) / n, np.count_nonzero(diff == -1) / n, np.count_nonzero(diff == 0) / n]
    counts = np.random.default_rng(seed).multinomial(n, shares, size=n_boot)
    deltas = (counts[:, 0] - counts[:, 1]) / n
    tail = (1 - confidence) / 2
    low, high = np.quantile(deltas, [tail, 1 - tail])
    return float(low), float(high)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input order.

    Comparing several runs with one baseline is several tests; at α = 0.05 each, the chance that at least one "win" is
    a fluke grows with their number. Holm's step-down method controls that family-wise error rate (the probability of
    one or more false rejections) at α under any dependence between the tests, and rejects at least as much as
    Bonferroni. With p-values sorted ascending, ``p_(i)`` is multiplied by ``m - i + 1`` (i from 1), made monotone
    with a running maximum, and capped at 1; reject where the adjusted p-value is ≤ α.

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
