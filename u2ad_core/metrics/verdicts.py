"""Words follow numbers: the one rule that turns a measured difference into a verdict.

A difference counts only when it exceeds the measured spread. :func:`verdict` is that rule for
one difference and its spread (e.g. a paired difference and the std of the per-fold or
per-slice differences); :func:`compare` applies it to two rows, each a mean and a std over the
same test folds, with the larger of the two stds as the spread. Every verdict of the package
(detection rows, baselines against anatomy, the crossover and budget claims, the real-MRI
tables) comes from these two functions; :func:`format_mean_std` prints the numbers they judge.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["VERDICTS", "verdict", "compare", "significant", "format_mean_std"]

VERDICTS: tuple[str, ...] = ("better", "worse", "no clear difference", "not measured")
"""Every word :func:`verdict` and :func:`compare` return."""


def verdict(difference: float, spread: float, higher_is_better: bool = True) -> str:
    """The rule: ``"better"`` / ``"worse"`` only when ``|difference| > spread``.

    difference: A - B (a scalar, e.g. a mean gap or the mean of paired differences); spread:
    the measured spread it must exceed (a std). Returns ``"better"`` when the difference
    favours A (positive with ``higher_is_better``, negative without, for errors such as MSE or
    time), ``"worse"`` when it favours B, ``"no clear difference"`` when ``|difference| <=
    spread`` or the spread is unknown (NaN), ``"not measured"`` when the difference is NaN.
    """
    d, s = float(difference), float(spread)
    if math.isnan(d):
        return "not measured"
    if not math.isfinite(s) or abs(d) <= s:
        return "no clear difference"
    return "better" if (d > 0) == bool(higher_is_better) else "worse"


def compare(a_mean: float, a_std: float, b_mean: float, b_std: float, higher_is_better: bool = True) -> str:
    """Is A better or worse than B, given how much each varies from fold to fold?

    a_mean, a_std, b_mean, b_std: a metric's mean and standard deviation over the test folds
    (e.g. ``CVResult.summary()``) for rows A and B. :func:`verdict` of the gap ``a_mean -
    b_mean`` against the larger of the two stds: ``"better"`` or ``"worse"`` (for A) only when
    the gap exceeds it, else ``"no clear difference"``; an unknown std (NaN, either side)
    counts as no clear difference, a non-finite mean gives ``"not measured"``.
    ``higher_is_better=False`` for errors (MSE, variance, time).
    """
    a, b = float(a_mean), float(b_mean)
    if not (math.isfinite(a) and math.isfinite(b)):
        return "not measured"
    stds = (float(a_std), float(b_std))
    spread = max(stds) if all(math.isfinite(v) for v in stds) else float("nan")
    return verdict(a - b, spread, higher_is_better)


def significant(value: float | None, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits, as a reader takes it in at a glance.

    ``0.65671 -> "0.657"``, ``93.35 -> "93.4"``, ``12402 -> "12400"``, ``-0.00004 -> "-4e-05"``
    (below 1e-3 in magnitude: scientific notation), ``-0.0 -> "0"``; ``None``/``nan`` -> ``"n/a"``.
    """
    if value is None or not np.isfinite(value):
        return "n/a"
    v = float(value)
    if v == 0.0:
        return "0"
    if abs(v) < 1e-3:
        return f"{v:.{max(digits - 1, 0)}e}"
    decimals = digits - 1 - math.floor(math.log10(abs(v)))
    rounded = round(v, decimals)
    if rounded == 0.0:
        return "0"
    if decimals > 0:
        # rounding may carry into a new digit (0.9996 -> 1.000): keep ``digits`` significant ones
        decimals = max(digits - 1 - math.floor(math.log10(abs(rounded))), 0)
        return f"{rounded:.{decimals}f}"
    return f"{int(round(rounded)):d}"


def format_mean_std(mean: float, std: float, digits: int = 3) -> str:
    """``0.657 ± 0.11``: the mean to ``digits`` significant digits, the std to two (``nan`` -> ``n/a``)."""
    return f"{significant(mean, digits)} ± {significant(std, 2)}"
