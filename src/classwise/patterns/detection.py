"""Backdoor detection: the median-absolute-deviation anomaly index over one statistic per class."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median  # even count: the mean of the two middles (torch's: the lower)
from typing import Any

MAD_CONSISTENCY = 1.4826  # makes the MAD estimate the standard deviation of a normal distribution
THRESHOLD = 2.0
# A pattern enters our statistic only if it works: held-out ASR at the gate ratio >= ASR_GATE (see
# `pattern_detection`; docs/detection.md says why 0.5 at the largest ratio).
ASR_GATE = 0.5
MIN_SCORED = 3  # a median and a MAD of fewer values measure nothing
EMPTY_MASK_L1 = 1e-6
PRIMARY = "log_mask_l1"


def median_and_mad(values: Sequence[float]) -> tuple[float, float]:
    """The median of `values` and their MAD scaled to a normal's standard deviation (x 1.4826)."""
    med = median(values)
    return med, MAD_CONSISTENCY * median([abs(v - med) for v in values])


def anomaly_indices(values: Sequence[float]) -> list[float]:
    """|v - median| / (1.4826 * MAD) per value; 0 everywhere when the MAD is 0 and all agree."""
    med, mad = median_and_mad(values)
    if mad == 0:
        return [0.0 if v == med else math.inf for v in values]
    return [abs(v - med) / mad for v in values]


@dataclass(frozen=True)
class MADRule:
    """What `detect` flags: classes whose `statistic` lies beyond `threshold` anomaly indices on the
    `suspicious` side ("small": below the median, as a trigger's mask is; "large": above it)."""

    statistic: str
    suspicious: str = "small"
    threshold: float = THRESHOLD

    def __post_init__(self) -> None:
        if self.suspicious not in ("small", "large"):
            raise ValueError(f"suspicious={self.suspicious!r}; accepted: small, large")


def detect(
    values: Sequence[float],
    rule: MADRule,
    class_indices: Sequence[int] | None = None,
    scored: Sequence[bool] | None = None,
    reference: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """The MAD detection block of `rule.statistic`: flagged classes are beyond `rule.threshold` on the
    suspicious side.

    `reference` (all when None) are the classes whose values form the median and MAD; every one of
    them gets an anomaly index, the others None. Only `scored` classes (default: the reference) can
    be flagged; the rest are listed in `not_scored`. With fewer than `MIN_SCORED` reference classes
    there is no spread to measure against: no index, nothing flagged, `median` None.
    `predicted_target` is the flagged class with the highest index, or None. `score`: the largest
    signed index (median - value) / (1.4826 MAD) on the suspicious side among the scored classes
    (0 when none is scored): one number per model, the larger the more one class stands out.
    """
    suspicious, threshold = rule.suspicious, rule.threshold
    classes = list(class_indices) if class_indices is not None else list(range(len(values)))
    ref = [True] * len(values) if reference is None else [bool(k) for k in reference]
    keep = ref if scored is None else [bool(k) for k in scored]
    if not len(classes) == len(keep) == len(values) == len(ref):
        raise ValueError(f"{len(values)} values, {len(classes)} classes, {len(keep)} scored flags; accepted: equal lengths")
    in_stat = [float(v) for v, k in zip(values, ref, strict=True) if k]
    idx: list[float | None] = [None] * len(values)
    med = None
    score = 0.0
    if len(in_stat) >= MIN_SCORED:
        med, mad = median_and_mad(in_stat)
        sign = 1.0 if suspicious == "small" else -1.0
        signed = [sign * (med - float(v)) / mad if mad > 0 else (0.0 if v == med else sign * math.copysign(math.inf, med - v))
                  for v in values]
        idx = [abs(s) if r else None for s, r in zip(signed, ref, strict=True)]
        score = max([s for s, k, r in zip(signed, keep, ref, strict=True) if k and r] or [0.0])
    flagged = [
        c for c, v, a, k in zip(classes, values, idx, keep, strict=True)
        if k and a is not None and a > threshold and ((v < med) if suspicious == "small" else (v > med))
    ]
    predicted = max(flagged, key=lambda c: idx[classes.index(c)]) if flagged else None
    return {
        "statistic": rule.statistic, "suspicious_side": suspicious, "threshold": threshold,
        "classes": classes, "values": [float(v) for v in values], "median": med,
        "anomaly_index": [None if a is None else float(min(a, 1e6)) for a in idx],
        "not_scored": [c for c, k in zip(classes, keep, strict=True) if not k],
        "flagged": flagged, "predicted_target": predicted, "score": float(max(-1e6, min(1e6, score))),
    }


def pattern_detection(
    mask_l1: Sequence[float],
    asr: Sequence[float],
    class_indices: Sequence[int] | None = None,
    asr_gate: float = ASR_GATE,
    gate_ratio: float | None = None,
    threshold: float = THRESHOLD,
) -> dict[str, Any]:
    """Our detector: MAD anomaly index of the mask L1, small side; only patterns that work can be flagged.

    The gate: a class can be flagged only if its pattern's held-out ASR (at `gate_ratio`) reaches
    `asr_gate`. A backdoor is a small pattern that *works*; a search that collapsed (empty mask,
    ASR near 0) has the smallest L1 of all and, ungated, would be named the target. Every class whose
    mask is not empty enters the median and MAD (so one working class among failed ones is still
    judged against the rest); an empty mask enters nothing. Two statistics, both recorded under
    `statistics`: `log_mask_l1` (primary; its fields are also the block's top level) and `mask_l1`
    (raw). Why the log is primary: the clean masks spread multiplicatively, and on the raw L1 the few
    large masks inflate the MAD (docs/detection.md).
    """
    classes = list(class_indices) if class_indices is not None else list(range(len(mask_l1)))
    if len(asr) != len(mask_l1):
        raise ValueError(f"{len(mask_l1)} mask L1 values but {len(asr)} ASRs; accepted: one of each per class")
    nonempty = [m > EMPTY_MASK_L1 for m in mask_l1]
    scored = [a >= asr_gate and e for a, e in zip(asr, nonempty, strict=True)]
    stats = {
        "log_mask_l1": detect([math.log(max(v, EMPTY_MASK_L1)) for v in mask_l1], MADRule("log_mask_l1", "small", threshold),
                              class_indices=classes, scored=scored, reference=nonempty),
        "mask_l1": detect(list(mask_l1), MADRule("mask_l1", "small", threshold), class_indices=classes, scored=scored,
                          reference=nonempty),
    }
    return {**stats[PRIMARY], "primary": PRIMARY, "statistics": stats, "not_scored_mask": [not s for s in scored],
            "asr_gate": {"threshold": asr_gate, "pattern_ratio": gate_ratio, "asr": [float(a) for a in asr]}}
