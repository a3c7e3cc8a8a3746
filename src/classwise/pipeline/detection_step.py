"""Backdoor detection after the search: build the `detector` group's detectors, check the threat model, decide, report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from classwise.errors import ConfigError, one_line
from classwise.patterns.detectors import DetectionData, Detector, check_threat_model
from classwise.reporting.results import update_results
from classwise.timing import PhaseTimer

if TYPE_CHECKING:
    from classwise.patterns.classwise import ClassPattern
    from classwise.pipeline.search_step import SearchJob


def build_detectors(detector_cfg: dict[str, Any] | None) -> list[Detector]:
    """The detectors of the `detector` config group, in config order (one `_target_` per block)."""
    from hydra.utils import instantiate

    out = []
    for key, block in (detector_cfg or {}).items():
        if isinstance(block, Detector):  # built already (Hydra instantiates a callback's nested blocks)
            out.append(block)
            continue
        if not isinstance(block, dict) or "_target_" not in block:
            raise ConfigError(f"detector.{key} has no _target_; accepted: detector blocks as in conf/detector "
                              "(universal_patch, patterns, neural_cleanse)")
        try:
            det = instantiate(block, _convert_="all")
        except ConfigError:
            raise
        except Exception as exc:  # Hydra wraps a bad key or type in its own multi-line error
            cause = exc.__cause__ if isinstance(exc.__cause__, ConfigError) else None
            if cause is not None:
                raise cause from None
            raise ConfigError(f"detector.{key}: {one_line(exc)}") from None
        if not isinstance(det, Detector):
            raise ConfigError(f"detector.{key}._target_={block['_target_']} is not a classwise Detector")
        out.append(det)
    return out


def resolve_canvas_source(source: str | None, threat_model: str) -> str:
    """`search.canvas.source`, null meaning: the clean search split under clean_data, the training set under training_data."""
    return source if source is not None else ("search" if check_threat_model(threat_model) == "clean_data" else "train")


def check_threat_model_data(detectors: list[Detector], threat_model: str, canvas_source: str, poisoned: bool) -> None:
    """Refuse, before any compute, a detector that would read data its threat model forbids."""
    check_threat_model(threat_model)
    readers = [d.name for d in detectors if d.reads_patterns]
    if threat_model == "clean_data" and canvas_source == "train" and poisoned and readers:
        raise ConfigError(
            f"search.canvas.source=train draws canvases from the poisoned training set, which threat_model=clean_data "
            f"forbids detector {readers[0]!r} to read; accepted: search.canvas.source=search, threat_model=training_data, "
            "or detector=universal_patch (training canvases for the figures only)")


def run_detection(job: SearchJob, measured: dict[str, Any], patterns: list[ClassPattern], data: DetectionData,
                  run_dir: Path, timer: PhaseTimer | None = None) -> dict[str, Any]:
    """Every detector's verdict over all searched classes: results.json `detectors.<name>`, and `detection` (the
    first detector's block, the run's verdict); the trigger figure on a backdoored run."""
    timer = timer or PhaseTimer()
    names = data.class_names or [str(c) for c in range(data.num_classes)]
    if not job.detectors:  # every results.json has a verdict: here, that none was asked for
        block = {"detector": None, "verdict": "abstained", "reason": "no detector ran (detector=none)", "score": None,
                 "probability": None, "predicted_target": None, "predicted_name": None, "threat_model": data.threat_model}
        update_results(run_dir, detection=block, detectors={})
        print(describe_verdict({**block, "detector": "none"}, names))
        return {"detection": block, "detectors": {}}
    blocks: dict[str, dict[str, Any]] = {}
    for det in job.detectors:
        with timer(f"detector.{det.name}"):
            block = det.decide(measured.get(det.name), patterns, data)
        block.setdefault("seconds", None)
        target = block.get("predicted_target")
        block["predicted_name"] = names[target] if target is not None else None
        blocks[det.name] = block
    target = next((p for p in patterns if p.class_index == job.target_class), None)
    if job.trigger is not None and target is not None:
        ratios = [b["pattern_ratio"] for b in target.by_ratio]
        overlap = {}
        for r in ratios:
            pix = target.pixels(r)
            overlap[str(r)] = float((pix & job.trigger.region).sum() / pix.sum())
        for block in blocks.values():
            block["true_target"] = job.target_class
        if "patterns" in blocks:
            blocks["patterns"]["target_pixels_on_trigger"] = overlap
        _trigger_figure(job.trigger, target, names[job.target_class], min(ratios), run_dir / "patterns" / "trigger_vs_pattern.png")
    sections = {"detection": blocks[job.detectors[0].name], "detectors": blocks}
    update_results(run_dir, **sections)
    for block in blocks.values():
        print(describe_verdict(block, names))
    return sections


def describe_verdict(block: dict[str, Any], names: list[str]) -> str:
    """One line: `detector universal_patch (clean_data): backdoored, target 3 (dress), score 7.2: <reason>`."""
    head = f"detector {block['detector']} ({block['threat_model']}): {block['verdict'].upper()}"
    if block.get("predicted_target") is not None:
        head += f", target {_named([block['predicted_target']], names)}"
    if block.get("score") is not None:
        head += f", score {block['score']:.2f}"
    if block.get("probability") is not None:
        head += f", P(backdoored) {block['probability']:.2f}"
    return f"{head}: {block['reason']}"


def _named(classes: list[int | None], names: list[str]) -> str:
    """Class indices with the dataset's names, e.g. `2 (frog)`; `none` for no class."""
    shown = [f"{c} ({names[c]})" for c in classes if c is not None]
    return ", ".join(shown) or "none"


def _trigger_figure(trigger, pattern: ClassPattern, name: str, ratio: float, path: Path) -> None:
    import matplotlib.pyplot as plt

    from classwise.reporting.figures import _show, pattern_on_gray, save_figure

    fig, axes = plt.subplots(1, 4, figsize=(7.2, 2.2))
    _show(axes[0], trigger.example(), f"true trigger ({trigger.name})")
    _show(axes[1], pattern.canvas, f"{name}: canvas")
    _show(axes[2], pattern.mask, "mask", cmap="magma")
    _show(axes[3], pattern_on_gray(pattern.canvas, pattern.pixels(ratio)), f"pattern at {ratio:.0%}")
    save_figure(fig, path)
