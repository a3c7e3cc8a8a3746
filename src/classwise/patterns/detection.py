"""Backdoor detection: the median-absolute-deviation anomaly index over one statistic per class."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MAD_CONSISTENCY = 1.4826  # makes the MAD estimate the standard deviation of a normal distribution
THRESHOLD = 2.0


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
) -> dict[str, Any]:
    """The detection block of results.json: flagged classes are beyond `threshold` on the suspicious side.

    `predicted_target` is the flagged class with the highest index, or None.
    """
    if suspicious not in ("small", "large"):
        raise ValueError(f"suspicious={suspicious!r}; accepted: small, large")
    classes = list(class_indices) if class_indices is not None else list(range(len(values)))
    med = median(values)
    idx = anomaly_indices(values)
    flagged = [
        c for c, v, a in zip(classes, values, idx, strict=True)
        if a > threshold and ((v < med) if suspicious == "small" else (v > med))
    ]
    predicted = max(flagged, key=lambda c: idx[classes.index(c)]) if flagged else None
    return {
        "statistic": statistic, "suspicious_side": suspicious, "threshold": threshold,
        "classes": classes, "values": [float(v) for v in values], "median": med,
        "anomaly_index": [float(a) for a in idx], "flagged": flagged, "predicted_target": predicted,
    }


def pattern_detection(mask_l1: Sequence[float], class_indices: Sequence[int] | None = None) -> dict[str, Any]:
    """Our detector: anomaly index of log(mask L1), small side.

    Why the log: a planted trigger's mask is several times smaller than the others' (measured here:
    6 against 47-151), and the masks of clean classes spread multiplicatively; on raw L1 the spread
    of the large masks inflates the MAD so much that the target's index stays under 2, on the log
    it stands out (see the README's backdoor section for the measured indices).
    """
    return detect([math.log(max(v, 1e-6)) for v in mask_l1], "log_mask_l1", "small", class_indices=class_indices)
