"""What a search leaves behind: masks (safetensors), figures, the results.json sections and the printed table."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from classwise.intervals import mean_interval
from classwise.patterns.classwise import ClassPattern
from classwise.patterns.evaluate import predict
from classwise.patterns.search import as_float, paste
from classwise.patterns.settings import SearchSettings
from classwise.patterns.shape import add_shape_stats
from classwise.reporting.figures import pattern_rows
from classwise.reporting.results import update_results


@dataclass
class SearchRun:
    """What a search step found, before it is written: the patterns (sorted by class) and the facts of the run."""

    patterns: list[ClassPattern]
    seconds: float
    world_size: int
    pool_size: int
    eval_set: tuple[torch.Tensor, torch.Tensor]


def save_outputs(model, dm, run: SearchRun, settings: SearchSettings, run_dir: Path) -> dict[str, Any]:
    """Masks, figures, results.json's `search` and `classes` sections, and the printed ASR table."""
    out = run_dir / "patterns"
    out.mkdir(parents=True, exist_ok=True)
    patterns, ratios = run.patterns, settings.pattern_ratios
    save_file({f"class_{p.class_index}": p.mask.contiguous() for p in patterns}
              | {f"canvas_{p.class_index}": p.canvas.contiguous() for p in patterns}
              | {f"score_{p.class_index}": p.score.contiguous() for p in patterns if p.score is not None},
              str(out / "masks.safetensors"))
    splits_file = dm.save_splits(run_dir / "splits.safetensors")
    names = dm.classes
    show_ratio = 0.05 if 0.05 in ratios else ratios[0]
    eval_x, eval_y = run.eval_set
    # One pasted example per class: the first eval image of another class.
    examples, pixels, preds = [], [], []
    for p in patterns:
        other_img = as_float(eval_x[(eval_y != p.class_index).nonzero().flatten()[0]])
        pixels.append(p.pixels(show_ratio))
        examples.append(paste(other_img.unsqueeze(0), p.canvas, pixels[-1])[0])
    if examples:
        preds = predict(model, torch.stack(examples)).tolist()
    rows = []
    for p, pix, ex, pred in zip(patterns, pixels, examples, preds, strict=True):
        asr = next(b["asr"] for b in p.by_ratio if b["pattern_ratio"] == show_ratio)
        row = {"name": names[p.class_index], "canvas": p.canvas, "mask": p.mask, "pixels": pix,
               "example": ex, "asr": asr, "example_pred": names[pred]}
        rows.append(row)
        pattern_rows([row], out / f"class_{p.class_index:03d}.png")
    if rows:
        pattern_rows(rows, out / "grid.png", title=f"class-wise patterns at {show_ratio:.0%} of the pixels")
    classes = [
        {"class_index": p.class_index, "class_name": names[p.class_index], "canvas_split": p.canvas_split,
         "canvas_index": p.canvas_index, "mask_l1": p.mask_l1, "by_ratio": p.by_ratio,
         **({"candidates": p.candidates} if p.candidates else {})}
        for p in patterns
    ]
    add_shape_stats(classes, {p.class_index: p.mask for p in patterns},  # claim 4's "simpler", per run
                    {p.class_index: p.score for p in patterns if p.score is not None})
    search = search_block(settings, run, str(splits_file.relative_to(run_dir)))
    update_results(run_dir, search=search, classes=classes)
    print(format_table(classes, ratios))
    return {"search": search, "classes": classes}


def search_block(settings: SearchSettings, run: SearchRun, splits_file: str) -> dict[str, Any]:
    """results.json's `search` section (its field names are the report's; docs/results-json.md)."""
    methods = settings.baselines.methods
    return {
        "preset": settings.preset, "update": settings.update, "step_size": settings.step_size,
        "alpha": settings.alpha, "batch_size": settings.batch_size, "seed": settings.seed,
        "canvas": settings.canvas.strategy, "canvas_source": settings.canvas.source,
        "pattern_ratios": settings.pattern_ratios, "baselines": methods,
        **({"uap_eps": settings.baselines.uap.eps} if "uap" in methods else {}),
        **({"universal_patch": asdict(settings.baselines.universal_patch)} if "universal_patch" in methods else {}),
        "pool_size": run.pool_size, "eval_size": len(run.eval_set[1]), "seconds": round(run.seconds, 2),
        "world_size": run.world_size, "splits_file": splits_file, "masks_file": "patterns/masks.safetensors",
        "figure": "patterns/grid.png",
    }


def _baseline_order(name: str) -> int:
    order = ["random", "gradcam", "saliency", "uap_topk", "uap_dense", "universal_patch"]
    return order.index(name) if name in order else len(order)


def _ci(interval) -> str:
    return f"[{interval[0]:.3f},{interval[1]:.3f}]" if interval else "-"


def format_table(classes: list[dict], ratios: list[float]) -> str:
    """The per-class ASR table printed at the end of a search: each pattern's ASR with its 95%
    Wilson interval and the images it was measured on; the mean row's interval is that of the mean."""
    extra = sorted({k for c in classes for b in c["by_ratio"] for k in b["baselines"]}, key=_baseline_order)
    head = f"{'class':>5}  {'name':<14} {'canvas':>10} {'mask L1':>8}"
    for r in ratios:
        head += f"  {'ASR@' + format(r, '.0%'):>8} {'95% CI':>13} {'n':>5}" + "".join(f" {n[:9]:>9}" for n in extra)
    head += f"  {'base':>5}"
    lines = [head, "-" * len(head)]
    for c in classes:
        line = f"{c['class_index']:>5}  {c['class_name'][:14]:<14} {c['canvas_split'][:1] + str(c['canvas_index']):>10} {c['mask_l1']:>8.1f}"
        for b in c["by_ratio"]:
            line += f"  {b['asr']:>8.3f} {_ci(b.get('asr_ci')):>13} {b.get('asr_n', ''):>5}"
            line += "".join(f" {b['baselines'].get(n, float('nan')):>9.3f}" for n in extra)
        line += f"  {c['by_ratio'][0]['base_rate']:>5.3f}"
        lines.append(line)
    if classes:
        line = f"{'mean':>5}  {'':<14} {'':>10} {sum(c['mask_l1'] for c in classes) / len(classes):>8.1f}"
        for i in range(len(ratios)):
            entries = [c["by_ratio"][i] for c in classes]
            rates = [e["asr"] for e in entries]
            interval = mean_interval(rates, [e.get("asr_n") for e in entries])
            line += f"  {sum(rates) / len(rates):>8.3f} {_ci(interval):>13} {sum(e.get('asr_n') or 0 for e in entries):>5}"
            for n in extra:
                vals = [e["baselines"].get(n, float("nan")) for e in entries]
                line += f" {sum(vals) / len(vals):>9.3f}"
        lines.append(line)
    return "\n".join(lines)
