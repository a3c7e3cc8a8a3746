"""Transfer: another run's patterns applied to this model, on this eval split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from classwise.data.datamodule import ClasswiseDataModule
from classwise.patterns.evaluate import predict
from classwise.patterns.settings import SearchSettings
from classwise.pipeline.search_step import cap_per_class
from classwise.reporting.results import update_results


def run_transfer(model: nn.Module, dm: ClasswiseDataModule, source_run: str | Path, run_dir: str | Path,
                 settings: SearchSettings | None = None, progress: bool = True) -> dict[str, Any]:
    """Apply another run's patterns (its masks and canvases, at its ratios) to `model`, on this eval split.

    Writes the `transfer` section of results.json: the source run, and per class its ASR here next
    to the ASR the source run measured on its own model. `settings.evaluation` and `settings.seed`: sequential evaluation
    as in the search (the same seed gives the same image order, so a run transferred to itself
    reproduces its own numbers).
    """
    import json

    from safetensors.torch import load_file

    from classwise.errors import ConfigError
    from classwise.patterns.evaluate import (
        EVAL_ORDER_KEY,
        EvalOptions,
        attack_successes,
        base_rates,
    )
    from classwise.patterns.search import stream_seed, top_pixels

    source_run = Path(source_run)
    results_file = source_run / "results.json"
    if not results_file.is_file():
        raise ConfigError(f"patterns_from={source_run}: no results.json there; accepted: a run folder of classwise-train/-search")
    source = json.loads(results_file.read_text())
    if "classes" not in source:
        raise ConfigError(f"patterns_from={source_run}: its results.json has no patterns (was the search disabled?)")
    tensors = load_file(str(source_run / source["search"]["masks_file"]))
    ratios = source["search"]["pattern_ratios"]
    classes = [c for c in source["classes"] if c["class_index"] < dm.num_classes]
    masks = torch.stack([tensors[f"class_{c['class_index']}"] for c in classes])
    canvases = torch.stack([tensors[f"canvas_{c['class_index']}"] for c in classes])
    # The source run's tie-break scores choose the same pixels it evaluated (runs saved before them: mask only).
    has_scores = all(f"score_{c['class_index']}" in tensors for c in classes)
    scores = torch.stack([tensors[f"score_{c['class_index']}"] for c in classes]) if has_scores else None
    if canvases.shape[1:] != dm.split_tensors("search", max_items=1)[0].shape[1:]:
        raise ConfigError(f"patterns_from={source_run}: its images are {tuple(canvases.shape[1:])}, this dataset's are not")
    settings = settings or SearchSettings()
    eval_x, eval_y = cap_per_class(*dm.split_tensors("eval"), settings.evaluation.max_per_class)
    tgt = torch.tensor([c["class_index"] for c in classes])
    pix = torch.stack([top_pixels(masks, r, scores) for r in ratios], 1).flatten(0, 1)
    r_count = len(ratios)
    asr = attack_successes(model, canvases.repeat_interleave(r_count, 0), pix, tgt.repeat_interleave(r_count),
                           (eval_x, eval_y), EvalOptions(half_width=settings.evaluation.ci, order_seed=stream_seed(settings.seed, EVAL_ORDER_KEY),
                           progress=progress, description="transferred patterns")).view(len(classes), r_count)
    base = base_rates(predict(model, eval_x), eval_y, tgt)
    block = {
        "source_run": str(source_run.resolve()),
        "source_model": source.get("run", {}).get("model"), "source_setting": source.get("run", {}).get("setting"),
        "pattern_ratios": ratios,
        "classes": [
            {"class_index": c["class_index"], "class_name": c["class_name"], "by_ratio": [
                {"pattern_ratio": r, **asr.fields((k, i), "asr"), **base.fields(k, "base_rate"),
                 "source_asr": c["by_ratio"][i]["asr"] if i < len(c["by_ratio"]) else None}
                for i, r in enumerate(ratios)]}
            for k, c in enumerate(classes)
        ],
    }
    block["mean_asr"] = {str(r): float(asr.rate[:, i].mean()) for i, r in enumerate(ratios)}
    update_results(run_dir, transfer=block)
    print(f"transfer from {source_run}: mean ASR " + ", ".join(f"{r:.0%}: {v:.3f}" for r, v in
                                                                zip(ratios, block["mean_asr"].values(), strict=True)))
    return block
