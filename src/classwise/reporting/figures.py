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


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write as PNG (creating the folder) and close."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    return save_figure(fig, path)


def load_run_patterns(run_dir: str | Path, ratio: float | None = None) -> tuple[dict, list[dict]]:
    """(results.json, rows for `pattern_rows`-like figures) of a run folder, at `ratio` (default: first)."""
    import json

    from safetensors.torch import load_file

    from classwise.patterns.search import mask_pixels

    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    tensors = load_file(str(run_dir / results["search"]["masks_file"]))
    ratio = ratio if ratio is not None else results["search"]["pattern_ratios"][0]
    rows = []
    for c in results["classes"]:
        i = c["class_index"]
        mask, canvas = tensors[f"class_{i}"], tensors[f"canvas_{i}"]
        entry = min(c["by_ratio"], key=lambda b: abs(b["pattern_ratio"] - ratio))
        rows.append({"class_index": i, "name": c["class_name"], "canvas": canvas, "mask": mask,
                     "pixels": mask_pixels(mask, entry["pattern_ratio"], tensors.get(f"score_{i}")), "asr": entry["asr"]})
    return results, rows


def compare_runs(run_dirs: Sequence[str | Path], labels: Sequence[str], path: str | Path, ratio: float = 0.05) -> Path:
    """Side by side, one row per class: each run's canvas, mask and pattern with its ASR (e.g. natural vs adversarial)."""
    loaded = [load_run_patterns(d, ratio)[1] for d in run_dirs]
    classes = sorted(set.intersection(*[{r["class_index"] for r in rows} for rows in loaded]))[:MAX_GRID_ROWS]
    by_run = [{r["class_index"]: r for r in rows} for rows in loaded]
    cols = 3 * len(run_dirs)
    fig, axes = plt.subplots(len(classes), cols, figsize=(1.7 * cols, 1.6 * len(classes) + 0.5), squeeze=False)
    for ax_row, c in zip(axes, classes, strict=True):
        for j, (rows, label) in enumerate(zip(by_run, labels, strict=True)):
            r = rows[c]
            _show(ax_row[3 * j], r["canvas"], f"{label}: {r['name']}")
            _show(ax_row[3 * j + 1], r["mask"], f"mask (L1 {float(r['mask'].sum()):.0f})", cmap="magma")
            _show(ax_row[3 * j + 2], pattern_on_gray(r["canvas"], r["pixels"]), f"ASR {r['asr']:.2f}")
    fig.suptitle(f"patterns at {ratio:.0%} of the pixels: " + " vs ".join(labels), fontsize=10)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    """`python -m classwise.reporting.figures compare OUT.png RUN_A:LABEL RUN_B:LABEL [--ratio R]`."""
    import argparse

    parser = argparse.ArgumentParser(description="figures from run folders")
    sub = parser.add_subparsers(dest="cmd", required=True)
    cmp = sub.add_parser("compare", help="patterns of several runs side by side")
    cmp.add_argument("out")
    cmp.add_argument("runs", nargs="+", help="RUN_DIR[:LABEL]")
    cmp.add_argument("--ratio", type=float, default=0.05)
    args = parser.parse_args(argv)
    dirs = [r.split(":")[0] for r in args.runs]
    labels = [r.split(":")[1] if ":" in r else Path(r).name for r in args.runs]
    print(compare_runs(dirs, labels, args.out, args.ratio))


if __name__ == "__main__":
    main()
