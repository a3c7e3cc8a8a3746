"""Search this rank's classes, gather on rank 0, then save, detect and report (the step both entry points run)."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from classwise.data.datamodule import ClasswiseDataModule
from classwise.patterns.canvas import CanvasPool
from classwise.patterns.classwise import ClassPattern, check_targets, classwise_patterns
from classwise.patterns.detectors import DetectionData
from classwise.pipeline.detection_step import (
    build_detectors,
    check_threat_model_data,
    resolve_canvas_source,
    run_detection,
)
from classwise.pipeline.outputs import save_outputs
from classwise.pipeline.settings import parse_settings
from classwise.ranks import Ranks
from classwise.reporting.results import read_results, update_results
from classwise.timing import PhaseTimer


def canvas_pool(dm: ClasswiseDataModule, source: str) -> CanvasPool:
    dm.setup()
    if source == "train":
        idx = dm.splits["train"]
        return CanvasPool("train", idx, dm.train_set.targets[idx], lambda i: dm.train_set.batch(i)[0])
    idx = dm.splits["search"]
    return CanvasPool("search", idx, dm.source.test.targets[idx], lambda i: dm.source.test.batch(i)[0])


def cap_per_class(images: torch.Tensor, labels: torch.Tensor, cap: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """At most `cap` images of each class (the first ones, in split order)."""
    if not cap:
        return images, labels
    keep = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique().tolist():
        keep[(labels == c).nonzero().flatten()[:cap]] = True
    return images[keep], labels[keep]


def _to_record(p: ClassPattern) -> dict[str, Any]:
    return {"class_index": p.class_index, "canvas_split": p.canvas_split, "canvas_index": p.canvas_index,
            "canvas": p.canvas, "mask": p.mask, "score": p.score, "by_ratio": p.by_ratio, "candidates": p.candidates}


def run_pattern_search(
    model: nn.Module,
    dm: ClasswiseDataModule,
    settings: dict[str, Any] | DictConfig,
    run_dir: str | Path,
    rank: int = 0,
    world_size: int = 1,
    ranks: Ranks | None = None,
    logger: Any = None,
    progress: bool = True,
    detector: dict[str, Any] | None = None,
    trigger: Any = None,
    target_class: int | None = None,
    threat_model: str = "clean_data",
) -> dict[str, Any] | None:
    """Search this rank's share of the classes; rank 0 gathers, writes outputs and returns the summary.

    `ranks`: the run's ranks (every rank calls this, also a rank without classes); their results
    are gathered on rank 0, and a rank whose search raised makes every rank raise before the gather.
    Outputs: patterns/masks.safetensors, patterns/class_XXX.png, patterns/grid.png and the `search`
    and `classes` sections of results.json; with `detector` (the config group's blocks), every
    detector's verdict under `threat_model` in `detection` and `detectors`.
    """
    from dataclasses import replace

    search_cfg, canvas_cfg, other = parse_settings(settings)
    ratios = other["pattern_ratios"]
    detectors = build_detectors(detector)
    canvas_cfg = replace(canvas_cfg, source=resolve_canvas_source(canvas_cfg.source, threat_model))
    dm.setup()
    poisoned_canvases = canvas_cfg.source == "train" and getattr(dm, "poisoner", None) is not None
    check_threat_model_data(detectors, threat_model, canvas_cfg.source, poisoned_canvases)
    all_targets = check_targets(other["classes"] if other["classes"] is not None else range(dm.num_classes), dm.num_classes)
    mine = all_targets[rank::world_size]
    pool = canvas_pool(dm, canvas_cfg.source)
    # uint8 where the source stores uint8 (a quarter of float32's memory), converted per batch.
    search_set = dm.split_tensors("search", raw=True)
    eval_x, eval_y = cap_per_class(*dm.split_tensors("eval", raw=True), other["eval_max_per_class"])
    timer = PhaseTimer()
    start = time.perf_counter()
    data = DetectionData(clean=search_set, held_out=(eval_x, eval_y), num_classes=dm.num_classes,
                         threat_model=threat_model, canvas_poisoned=poisoned_canvases, seed=search_cfg.seed,
                         progress=progress and rank == 0, max_forward=search_cfg.max_forward,
                         eval_forward=other["eval_forward"])
    measured: dict[str, Any] = {}
    with ranks.together("pattern search") if ranks is not None else nullcontext():
        # search.enabled=false (classwise-search): the detectors alone, no pattern searched.
        patterns = classwise_patterns(
            model, mine, dm.num_classes, pool, search_set, (eval_x, eval_y), ratios, search_cfg, canvas_cfg,
            progress=progress and rank == 0, baselines=other["baselines"], uap_cfg=other["uap"],
            patch_cfg=other["patch"], eval_forward=other["eval_forward"], eval_ci=other["eval_ci"], timer=timer,
        ) if other.get("enabled") is not False else []
        seconds = time.perf_counter() - start
        records = [_to_record(p) for p in patterns]
        # Detectors that probe the model do so on every class (a verdict compares them all, whichever
        # classes were searched), sharded over the ranks like the search.
        for det in detectors:
            with timer(f"detector.{det.name}"):
                measured[det.name] = det.measure(model, list(range(dm.num_classes))[rank::world_size], data)
    if ranks is not None and ranks.world_size > 1:
        gathered = ranks.gather((records, seconds, measured, timer.seconds))
        if rank != 0:
            return None
        records = [r for part, _, _, _ in gathered for r in part]
        seconds = max(s for _, s, _, _ in gathered)
        timer.merge_max(t for _, _, _, t in gathered)
        measured = {d.name: d.join([m[d.name] for _, _, m, _ in gathered]) if measured[d.name] is not None else None
                    for d in detectors}
    records.sort(key=lambda r: r["class_index"])
    run_dir = Path(run_dir)
    with timer("outputs"):
        summary = save_outputs(model, dm, records, ratios, search_cfg, canvas_cfg, other, seconds, world_size,
                               len(search_set[1]), (eval_x, eval_y), run_dir, logger)
    summary.update(run_detection(detectors, measured, model, dm, records, data, run_dir, trigger, target_class, timer))
    timer.add("search_step", time.perf_counter() - start)
    summary["timing"] = record_timing(run_dir, timer)
    return summary


def record_timing(run_dir: Path, timer: PhaseTimer) -> dict[str, Any]:
    """Merge the timer's phases into results.json's `timing` block (train.py adds train and test to it)."""
    block = {**(read_results(run_dir).get("timing") or {}), **timer.as_block()}
    update_results(run_dir, timing=block)
    return block
