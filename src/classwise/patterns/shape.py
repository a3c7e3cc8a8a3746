"""How simple a pattern is, as numbers (claim 4 of the paper: adversarially trained models' patterns are simpler).

`components`: connected components (8-neighbourhood) of the pattern's pixels at a ratio. A pattern
that is one or two strokes of an object's shape has few; salt-and-pepper pixels spread over the
canvas have many, so fewer components = simpler. It counts what the pattern pastes (the top-k
pixels), so it compares models at the same pixel budget, and it does not depend on the canvas.
`mask_tv`: anisotropic total variation of the continuous mask (sum of absolute differences of
neighbouring pixels), a budget-free companion: a smooth, blob-like mask has low TV.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from classwise.patterns.search import mask_pixels

EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=int)


def components(pixels: torch.Tensor) -> int:
    """Connected components of a boolean pixel map [1, H, W] (or [H, W]), 8-neighbourhood."""
    pix = pixels.reshape(pixels.shape[-2:]).cpu().numpy().astype(bool)
    return int(ndimage.label(pix, structure=EIGHT_NEIGHBOURS)[1])


def mask_tv(mask: torch.Tensor) -> float:
    """Total variation of a continuous mask [1, H, W]: sum |m[i+1,j]-m[i,j]| + |m[i,j+1]-m[i,j]|."""
    m = mask.reshape(mask.shape[-2:]).float()  # [H, W]
    return float((m[1:] - m[:-1]).abs().sum() + (m[:, 1:] - m[:, :-1]).abs().sum())


def add_shape_stats(classes: list[dict], masks: dict[int, torch.Tensor],
                    scores: dict[int, torch.Tensor] | None = None) -> None:
    """Per class `mask_tv`, per class and ratio `components` (in its by_ratio entries), in place.

    `masks` maps class_index -> mask [1, H, W]; `scores` (same keys) the search's tie-break scores, so
    the pixels counted are the pattern's own (`mask_pixels`); entries that already hold the numbers are kept."""
    scores = scores or {}
    for cls in classes:
        mask = masks.get(cls.get("class_index"))
        score = scores.get(cls.get("class_index"))
        if mask is None:
            continue
        cls.setdefault("mask_tv", round(mask_tv(mask), 3))
        for entry in cls.get("by_ratio") or []:
            if isinstance(entry, dict) and "components" not in entry and "pattern_ratio" in entry:
                entry["components"] = components(mask_pixels(mask, float(entry["pattern_ratio"]), score))
