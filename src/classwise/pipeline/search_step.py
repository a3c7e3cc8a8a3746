"""Search this rank's classes, gather on rank 0, then save, detect and report (the step both entry points run)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from classwise.data.datamodule import ClasswiseDataModule
from classwise.patterns.canvas import CanvasPool
from classwise.patterns.classwise import ClassPattern, SearchData, check_targets, classwise_patterns
from classwise.patterns.detectors import DetectionData, Detector, check_threat_model
from classwise.patterns.settings import SearchSettings
from classwise.pipeline.detection_step import (
    build_detectors,
    check_threat_model_data,
    resolve_canvas_source,
    run_detection,
)
from classwise.pipeline.outputs import SearchRun, save_outputs
from classwise.pipeline.settings import parse_settings
from classwise.ranks import Ranks
from classwise.reporting.results import read_results, update_results
from classwise.timing import PhaseTimer


@dataclass
class SearchJob:
    """One run's search step: the `search` group, the detectors and what they may read, and, on a
    backdoored run, the true trigger and target (drawn beside the target's pattern)."""

    settings: SearchSettings = field(default_factory=SearchSettings)
    detectors: list[Detector] = field(default_factory=list)
    threat_model: str = "clean_data"
    trigger: Any = None
    target_class: int | None = None
    progress: bool = True
    model_name: str | None = None  # the architecture's name (conf/model) and its training recipe
    recipe: dict[str, Any] | None = None  # (references.training_recipe): which clean reference a detector may use

    @classmethod
    def of(cls, search: SearchSettings | dict[str, Any] | DictConfig, detector: dict[str, Any] | None = None,
           threat_model: str = "clean_data", **truth: Any) -> SearchJob:
        """From the config groups as Hydra composed them (or dicts of their shape), validated."""
        return cls(parse_settings(search), build_detectors(detector), check_threat_model(threat_model), **truth)

    def check_references(self, dataset_cfg: dict[str, Any]) -> None:
        """Refuse, before training or the search, a clean reference named by hand that this run does not fit
        (`UniversalPatchDetector.reference_for`, from the dataset's shape alone)."""
        size, channels = int(dataset_cfg["image_size"]), int(dataset_cfg["channels"])
        images = (torch.zeros(1, channels, size, size), torch.zeros(1, dtype=torch.long))
        stub = DetectionData(clean=images, held_out=images, num_classes=int(dataset_cfg["num_classes"]),
                             dataset=dataset_cfg.get("name"), model=self.model_name, recipe=self.recipe)
        for det in self.detectors:
            if hasattr(det, "reference_for"):
                det.reference_for(stub)


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


def run_pattern_search(model: nn.Module, dm: ClasswiseDataModule, job: SearchJob, run_dir: str | Path,
                       ranks: Ranks | None = None) -> dict[str, Any] | None:
    """Search this rank's share of the classes; rank 0 gathers, writes outputs and returns the summary.

    `ranks`: the run's ranks (every rank calls this, also a rank without classes; None: one
    process); their results are gathered on rank 0, and a rank whose search raised makes every rank
    raise before the gather. Outputs: patterns/masks.safetensors, patterns/class_XXX.png,
    patterns/grid.png and the `search` and `classes` sections of results.json; every detector's
    verdict under `job.threat_model` in `detection` and `detectors`.
    """
    ranks = ranks or Ranks(1)
    canvas = replace(job.settings.canvas, source=resolve_canvas_source(job.settings.canvas.source, job.threat_model))
    settings = replace(job.settings, canvas=canvas)
    dm.setup()
    poisoned_canvases = canvas.source == "train" and getattr(dm, "poisoner", None) is not None
    check_threat_model_data(job.detectors, job.threat_model, canvas.source, poisoned_canvases)
    classes = settings.classes if settings.classes is not None else range(dm.num_classes)
    mine = check_targets(classes, dm.num_classes)[ranks.rank::ranks.world_size]
    # uint8 where the source stores uint8 (a quarter of float32's memory), converted per batch.
    search_set = dm.split_tensors("search", raw=True)
    eval_set = cap_per_class(*dm.split_tensors("eval", raw=True), settings.evaluation.max_per_class)
    progress = job.progress and ranks.rank == 0
    timer = PhaseTimer()
    start = time.perf_counter()
    data = DetectionData(clean=search_set, held_out=eval_set, num_classes=dm.num_classes, class_names=list(dm.classes),
                         dataset=getattr(dm, "dataset_cfg", {}).get("name"), model=job.model_name, recipe=job.recipe,
                         threat_model=job.threat_model, canvas_poisoned=poisoned_canvases, seed=settings.seed,
                         progress=progress, max_forward=settings.max_forward, eval_forward=settings.evaluation.forward)
    measured: dict[str, Any] = {}
    with ranks.together("pattern search"):
        patterns: list[ClassPattern] = []
        if settings.enabled:  # search.enabled=false (classwise-search): the detectors alone
            inputs = SearchData(dm.num_classes, canvas_pool(dm, canvas.source), search_set, eval_set)
            patterns = classwise_patterns(model, mine, inputs, settings, progress, timer)
        seconds = time.perf_counter() - start
        # Detectors that probe the model do so on every class (a verdict compares them all, whichever
        # classes were searched), sharded over the ranks like the search.
        for det in job.detectors:
            with timer(f"detector.{det.name}"):
                measured[det.name] = det.measure(model, list(range(dm.num_classes))[ranks.rank::ranks.world_size], data)
    if ranks.world_size > 1:
        gathered = ranks.gather((patterns, seconds, measured, timer.seconds))
        if ranks.rank != 0:
            return None
        patterns = [p for part, _, _, _ in gathered for p in part]
        seconds = max(s for _, s, _, _ in gathered)
        timer.merge_max(t for _, _, _, t in gathered)
        measured = {d.name: d.join([m[d.name] for _, _, m, _ in gathered]) if measured[d.name] is not None else None
                    for d in job.detectors}
    patterns.sort(key=lambda p: p.class_index)
    run_dir = Path(run_dir)
    with timer("outputs"):
        summary = save_outputs(model, dm, SearchRun(patterns, seconds, ranks.world_size, len(search_set[1]), eval_set),
                               settings, run_dir)
    summary.update(run_detection(job, measured, patterns, data, run_dir, timer))
    timer.add("search_step", time.perf_counter() - start)
    summary["timing"] = record_timing(run_dir, timer)
    return summary


def record_timing(run_dir: Path, timer: PhaseTimer) -> dict[str, Any]:
    """Merge the timer's phases into results.json's `timing` block (train.py adds train and test to it)."""
    block = {**(read_results(run_dir).get("timing") or {}), **timer.as_block()}
    update_results(run_dir, timing=block)
    return block
