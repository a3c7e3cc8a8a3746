"""95% confidence intervals of attack success rates: Wilson score intervals, from scipy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from statistics import NormalDist

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval


# Cached: binomtest computes a p-value besides the interval, far slower than the closed form
# (docs/speed.md), and the sequential evaluation asks for the same (hits, n, z) at every look of
# every pattern still running.
@lru_cache(maxsize=1 << 16)
def wilson_interval(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (lo, hi) of the proportion hits / n at `z`; (0, 1) when n = 0.

    Unlike the normal approximation p +- z*sqrt(p(1-p)/n), it stays inside [0, 1] and keeps a
    sensible width at rates of 0 and 1, where most baselines and the strongest patterns sit.
    scipy takes a confidence level, so `z` goes in as the two-sided level 2 * Phi(z) - 1 (the
    sequential evaluation's z is not 95%'s). Its ends are exact at 0 and n hits; the clip only
    removes rounding.
    """
    # Imported here, not with the module: every CLI start (a refused config included) would pay
    # scipy.stats' import through classwise.patterns.
    from scipy.special import ndtr
    from scipy.stats import binomtest

    if n <= 0:
        return 0.0, 1.0
    ci = binomtest(int(hits), int(n)).proportion_ci(confidence_level=2 * float(ndtr(z)) - 1, method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


FIRST_LOOK = 128  # images of the seeded order at a sequential evaluation's first look; each look doubles it


def look_schedule(n_images: int) -> list[int]:
    """Prefix lengths of the seeded eval order at which sequential evaluation may stop: 128, 256, ..., n_images.

    Fixed in images, so where a run stops depends on neither the device nor its free memory.
    """
    looks, n = [], FIRST_LOOK
    while n < n_images:
        looks.append(n)
        n *= 2
    return [*looks, n_images]


def sequential_z(n_images: int) -> float:
    """z of the intervals of a sequential evaluation over `n_images`: Bonferroni over its looks.

    Stopping at the first look whose 95% Wilson interval is narrow enough covers too little: a
    lucky early streak stops early (docs/scale.md has the simulated coverage). Spending 5% / looks
    at each look keeps coverage at or above 95% whatever look the rule stops at.
    """
    return NormalDist().inv_cdf(1 - 0.05 / (2 * len(look_schedule(n_images))))


def half_width(hits: int, n: int, z: float = Z95) -> float:
    lo, hi = wilson_interval(hits, n, z)
    return (hi - lo) / 2


def rate_fields(hits: int, n: int, name: str, z: float = Z95) -> dict[str, float | int | list[float]]:
    """`{name: rate, name_ci: [lo, hi], name_n: n}`: the one spelling of a rate in results.json."""
    lo, hi = wilson_interval(hits, n, z)
    return {name: hits / n if n else 0.0, f"{name}_ci": [round(lo, 4), round(hi, 4)], f"{name}_n": n}


def mean_interval(rates: Sequence[float], ns: Sequence[int], z: float = Z95) -> tuple[float, float] | None:
    """95% interval of the mean of K independent rates, each measured on its own n images.

    The mean's standard error is sqrt(sum_k p_k (1 - p_k) / n_k) / K with each p_k shrunk as
    Agresti-Coull's (hits + z^2/2) / (n + z^2), so a class at 0 or 1 still adds its uncertainty.
    It covers the sampling of eval images only, not the search's seed-to-seed spread.
    None when a rate has no n (results written before the intervals existed).
    """
    if not rates or len(rates) != len(ns) or any(n is None or n <= 0 for n in ns):
        return None
    var = 0.0
    for p, n in zip(rates, ns, strict=True):
        adj = (p * n + z * z / 2) / (n + z * z)
        var += adj * (1 - adj) / (n + z * z)
    mean = sum(rates) / len(rates)
    half = z * math.sqrt(var) / len(rates)
    return max(0.0, mean - half), min(1.0, mean + half)
