"""What a search leaves behind: masks (safetensors), figures, the results.json sections and the printed table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from classwise.intervals import mean_interval
from classwise.patterns.evaluate import predict
from classwise.patterns.search import as_float, mask_pixels, paste
from classwise.patterns.shape import add_shape_stats
from classwise.reporting.figures import pattern_rows
from classwise.reporting.results import update_results


def save_outputs(model, dm, records, ratios, search_cfg, canvas_cfg, other, seconds, world_size, pool_size, eval_set,
          run_dir: Path, logger) -> dict[str, Any]:
    out = run_dir / "patterns"
    out.mkdir(parents=True, exist_ok=True)
    save_file({f"class_{r['class_index']}": r["mask"].contiguous() for r in records}
              | {f"canvas_{r['class_index']}": r["canvas"].contiguous() for r in records}
              | {f"score_{r['class_index']}": r["score"].contiguous() for r in records if r.get("score") is not None}, str(out / "masks.safetensors"))
    splits_file = dm.save_splits(run_dir / "splits.safetensors")
    names = dm.classes
    show_ratio = 0.05 if 0.05 in ratios else ratios[0]
    eval_x, eval_y = eval_set
    # One pasted example per class: the first eval image of another class.
    examples, pixels, preds = [], [], []
    for r in records:
        t = r["class_index"]
        other_img = as_float(eval_x[(eval_y != t).nonzero().flatten()[0]])
        pixels.append(mask_pixels(r["mask"], show_ratio, r.get("score")))
        examples.append(paste(other_img.unsqueeze(0), r["canvas"], pixels[-1])[0])
    if examples:
        preds = predict(model, torch.stack(examples)).tolist()
    rows = []
    for r, pix, ex, pred in zip(records, pixels, examples, preds, strict=True):
        asr = next(b["asr"] for b in r["by_ratio"] if b["pattern_ratio"] == show_ratio)
        row = {"name": names[r["class_index"]], "canvas": r["canvas"], "mask": r["mask"], "pixels": pix,
               "example": ex, "asr": asr, "example_pred": names[pred]}
        rows.append(row)
        pattern_rows([row], out / f"class_{r['class_index']:03d}.png")
    if rows:
        pattern_rows(rows, out / "grid.png", title=f"class-wise patterns at {show_ratio:.0%} of the pixels")
    classes = [
        {"class_index": r["class_index"], "class_name": names[r["class_index"]], "canvas_split": r["canvas_split"],
         "canvas_index": r["canvas_index"], "mask_l1": float(r["mask"].sum()), "by_ratio": r["by_ratio"],
         **({"candidates": r["candidates"]} if r["candidates"] else {})}
        for r in records
    ]
    add_shape_stats(classes, {r["class_index"]: r["mask"] for r in records},  # claim 4's "simpler", per run
                    {r["class_index"]: r["score"] for r in records if r.get("score") is not None})
    search = {
        "preset": other["preset"], "update": search_cfg.update, "step_size": search_cfg.step_size,
        "alpha": search_cfg.alpha, "batch_size": search_cfg.batch_size, "seed": search_cfg.seed,
        "canvas": canvas_cfg.strategy, "canvas_source": canvas_cfg.source, "pattern_ratios": ratios,
        "baselines": other["baselines"], **({"uap_eps": other["uap"].eps} if "uap" in other["baselines"] else {}),
        **({"universal_patch": vars(other["patch"])} if "universal_patch" in other["baselines"] else {}),
        "pool_size": pool_size, "eval_size": len(eval_y), "seconds": round(seconds, 2), "world_size": world_size,
        "splits_file": str(splits_file.relative_to(run_dir)), "masks_file": "patterns/masks.safetensors",
        "figure": "patterns/grid.png",
    }
    update_results(run_dir, search=search, classes=classes)
    print(format_table(classes, ratios))
    return {"search": search, "classes": classes}


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
