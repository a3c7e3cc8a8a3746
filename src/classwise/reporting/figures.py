"""Figures of patterns: one panel per class and a grid of all classes (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

MAX_GRID_ROWS = 100


def _show(ax, image: torch.Tensor, title: str = "", cmap: str | None = None) -> None:
    """Draw a [C, H, W] image in [0, 1] (or [1, H, W] with a colormap)."""
    img = image.detach().cpu().float()
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap=cmap or "gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def pattern_on_gray(canvas: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """The pattern's pixels on a mid-gray background, so what the pattern keeps is visible."""
    return torch.where(pixels, canvas, torch.full_like(canvas, 0.5))


def pattern_rows(
    rows: Sequence[dict], path: str | Path, title: str = ""
) -> Path:
    """A grid: one row per class (canvas, mask, pattern, pasted example); saves a PNG.

    Each row dict: name, canvas [C,H,W], mask [1,H,W], pixels [1,H,W] bool, example [C,H,W],
    asr (float), example_pred (str).
    """
    rows = list(rows)[:MAX_GRID_ROWS]
    fig, axes = plt.subplots(len(rows), 4, figsize=(6.4, 1.6 * len(rows) + 0.4), squeeze=False)
    for ax_row, row in zip(axes, rows, strict=True):
        _show(ax_row[0], row["canvas"], f"{row['name']}: canvas")
        _show(ax_row[1], row["mask"], f"mask (L1 {float(row['mask'].sum()):.0f})", cmap="magma")
        _show(ax_row[2], pattern_on_gray(row["canvas"], row["pixels"]), f"pattern, ASR {row['asr']:.2f}")
        _show(ax_row[3], row["example"], f"pasted: predicted {row['example_pred']}")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
