"""Statistics of reported numbers: exact binomial intervals for accuracies measured on n examples
(used by certification and by every report row), so that two numbers a point apart are not read
as different."""

from __future__ import annotations

import torch

__all__ = ["accuracy_interval", "clopper_pearson", "mcnemar_exact"]


def clopper_pearson(successes: torch.Tensor | int, trials: int, alpha: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The two-sided Clopper–Pearson interval ``[lower, upper]`` at confidence ``1 − alpha`` for a
    binomial proportion (``scipy.stats.beta`` quantiles); ``successes`` may be a tensor of counts.
    ``lower = 0`` when there is no success and ``upper = 1`` when all trials succeed.

    Example: ``clopper_pearson(10, 10, 0.05)`` → ``(0.025^(1/10) = 0.6915, 1.0)``.
    """
    from scipy.stats import beta

    k = torch.as_tensor(successes).double().cpu().numpy()
    if trials < 1 or not 0 < alpha < 1:
        raise ValueError("clopper_pearson needs trials >= 1 and 0 < alpha < 1")
    lower = beta.ppf(alpha / 2, k, trials - k + 1)
    upper = beta.ppf(1 - alpha / 2, k + 1, trials - k)
    lower = torch.as_tensor(lower).nan_to_num(0.0)
    upper = torch.as_tensor(upper).nan_to_num(1.0)
    lower = torch.where(torch.as_tensor(k) == 0, torch.zeros_like(lower), lower)
    upper = torch.where(torch.as_tensor(k) == trials, torch.ones_like(upper), upper)
    return lower, upper


def accuracy_interval(correct: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """The Clopper–Pearson interval of an accuracy ``correct / n`` (``(nan, nan)`` when ``n`` is
    0): the range of true accuracies consistent with the examples evaluated."""
    if n < 1:
        return float("nan"), float("nan")
    lo, hi = clopper_pearson(correct, n, 1 - confidence)
    return float(lo), float(hi)


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar test of a paired comparison on the same examples: ``lost``
    examples right under A and wrong under B, ``gained`` the reverse. Under "A and B are equally
    accurate" each discordant example is a fair coin, so the p-value is
    ``min(1, 2 · P[Binomial(lost + gained, ½) ≤ min(lost, gained)])`` (1 when none differ).

    Example: ``mcnemar_exact(9, 1)`` → ``2 · 11 / 1024 = 0.0215``.
    """
    if lost < 0 or gained < 0:
        raise ValueError("mcnemar_exact needs counts >= 0")
    if lost + gained == 0:
        return 1.0
    from scipy.stats import binom

    return float(min(1.0, 2 * binom.cdf(min(lost, gained), lost + gained, 0.5)))
