"""95% confidence intervals of attack success rates (Wilson score), in plain Python for every reader."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval


def wilson_interval(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (lo, hi) of the proportion hits / n; (0, 1) when n = 0.

    Unlike the normal approximation p +- z*sqrt(p(1-p)/n), it stays inside [0, 1] and keeps a
    sensible width at rates of 0 and 1, where most baselines and the strongest patterns sit.
    """
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # Exact ends at 0 and n hits (the formula gives them up to rounding).
    return (0.0 if hits == 0 else max(0.0, center - half)), (1.0 if hits == n else min(1.0, center + half))


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

    Stopping at the first look whose 95% Wilson interval is narrow enough keeps coverage near 93%
    (rates near 0.03 stop early on a lucky streak); spending 5% / looks at each look keeps it at or
    above 95% whatever look the rule stops at.
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
