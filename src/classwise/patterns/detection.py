"""Backdoor detection: the median-absolute-deviation anomaly index over one statistic per class."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MAD_CONSISTENCY = 1.4826  # makes the MAD estimate the standard deviation of a normal distribution
THRESHOLD = 2.0
# A pattern enters our statistic only if it works: held-out ASR at the gate ratio >= ASR_GATE (see
# `pattern_detection`; docs/detection.md says why 0.5 at the largest ratio).
ASR_GATE = 0.5
MIN_SCORED = 3  # a median and a MAD of fewer values measure nothing
EMPTY_MASK_L1 = 1e-6
PRIMARY = "log_mask_l1"


def median(values: Sequence[float]) -> float:
    """The statistical median: the middle value, or the mean of the two middle values for an even count.

    (`torch.median` returns the lower of the two middle values, a known slip in detectors built on it.)
    """
    s = sorted(float(v) for v in values)
    if not s:
        raise ValueError("median of no values")
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def anomaly_indices(values: Sequence[float]) -> list[float]:
    """|v - median| / (1.4826 * MAD) per value; 0 everywhere when the MAD is 0 and all agree."""
    med = median(values)
    mad = MAD_CONSISTENCY * median([abs(v - med) for v in values])
    if mad == 0:
        return [0.0 if v == med else math.inf for v in values]
    return [abs(v - med) / mad for v in values]


def detect(
    values: Sequence[float],
    statistic: str,
    suspicious: str = "small",
    threshold: float = THRESHOLD,
    class_indices: Sequence[int] | None = None,
    scored: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """The detection block of results.json: flagged classes are beyond `threshold` on the suspicious side.

    Only classes with `scored` true (all when None) enter the median and MAD and can be flagged; the
    others are listed in `not_scored` with anomaly index None. With fewer than `MIN_SCORED` scored
    classes there is no spread to measure against: no index, nothing flagged.
    `predicted_target` is the flagged class with the highest index, or None.
    """
    if suspicious not in ("small", "large"):
        raise ValueError(f"suspicious={suspicious!r}; accepted: small, large")
    classes = list(class_indices) if class_indices is not None else list(range(len(values)))
    keep = [True] * len(values) if scored is None else [bool(k) for k in scored]
    if not len(classes) == len(keep) == len(values):
        raise ValueError(f"{len(values)} values, {len(classes)} classes, {len(keep)} scored flags; accepted: equal lengths")
    in_stat = [float(v) for v, k in zip(values, keep, strict=True) if k]
    idx: list[float | None] = [None] * len(values)
    med = None
    if len(in_stat) >= MIN_SCORED:
        med = median(in_stat)
        it = iter(anomaly_indices(in_stat))
        idx = [next(it) if k else None for k in keep]
    flagged = [
        c for c, v, a in zip(classes, values, idx, strict=True)
        if a is not None and a > threshold and ((v < med) if suspicious == "small" else (v > med))
    ]
    predicted = max(flagged, key=lambda c: idx[classes.index(c)]) if flagged else None
    return {
        "statistic": statistic, "suspicious_side": suspicious, "threshold": threshold,
        "classes": classes, "values": [float(v) for v in values], "median": med,
        "anomaly_index": [None if a is None else float(a) for a in idx],
        "not_scored": [c for c, k in zip(classes, keep, strict=True) if not k],
        "flagged": flagged, "predicted_target": predicted,
    }


def pattern_detection(
    mask_l1: Sequence[float],
    asr: Sequence[float],
    class_indices: Sequence[int] | None = None,
    asr_gate: float = ASR_GATE,
    gate_ratio: float | None = None,
) -> dict[str, Any]:
    """Our detector: MAD anomaly index of the mask L1, small side, over the patterns that work.

    The gate: a class is scored only if its pattern's held-out ASR (at `gate_ratio`) reaches
    `asr_gate`, and its mask is not empty. A backdoor is a small pattern that *works*; a search that
    collapsed (empty mask, ASR near 0) has the smallest L1 of all and, ungated, would be named the
    target. Two statistics, both recorded under `statistics`: `log_mask_l1` (primary; its fields
    are also the block's top level) and `mask_l1` (raw). Why the log is primary: the clean masks
    spread multiplicatively, and on the raw L1 the few large masks inflate the MAD (docs/detection.md).
    """
    classes = list(class_indices) if class_indices is not None else list(range(len(mask_l1)))
    if len(asr) != len(mask_l1):
        raise ValueError(f"{len(mask_l1)} mask L1 values but {len(asr)} ASRs; accepted: one of each per class")
    scored = [a >= asr_gate and m > EMPTY_MASK_L1 for m, a in zip(mask_l1, asr, strict=True)]
    stats = {
        "log_mask_l1": detect([math.log(max(v, EMPTY_MASK_L1)) for v in mask_l1], "log_mask_l1", "small",
                              class_indices=classes, scored=scored),
        "mask_l1": detect(list(mask_l1), "mask_l1", "small", class_indices=classes, scored=scored),
    }
    return {**stats[PRIMARY], "primary": PRIMARY, "statistics": stats,
            "asr_gate": {"threshold": asr_gate, "pattern_ratio": gate_ratio, "asr": [float(a) for a in asr]}}
