"""Backdoor detection after the search: build the `detector` group's detectors, check the threat model, decide, report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from classwise.errors import ConfigError
from classwise.patterns.detectors import DetectionData, Detector, check_threat_model
from classwise.patterns.search import mask_pixels
from classwise.reporting.results import update_results
from classwise.timing import PhaseTimer


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
            raise ConfigError(f"detector.{key}: {str(exc).splitlines()[0]}") from None
        if not isinstance(det, Detector):
            raise ConfigError(f"detector.{key}._target_={block['_target_']} is not a classwise Detector")
        out.append(det)
    return out


def resolve_canvas_source(source: str | None, threat_model: str) -> str:
    """`search.canvas_source`, null meaning: the clean search split under clean_data, the training set under training_data."""
    return source if source is not None else ("search" if check_threat_model(threat_model) == "clean_data" else "train")


def check_threat_model_data(detectors: list[Detector], threat_model: str, canvas_source: str, poisoned: bool) -> None:
    """Refuse, before any compute, a detector that would read data its threat model forbids."""
    check_threat_model(threat_model)
    readers = [d.name for d in detectors if d.reads_patterns]
    if threat_model == "clean_data" and canvas_source == "train" and poisoned and readers:
        raise ConfigError(
            f"search.canvas_source=train draws canvases from the poisoned training set, which threat_model=clean_data "
            f"forbids detector {readers[0]!r} to read; accepted: search.canvas_source=search, threat_model=training_data, "
            "or detector=universal_patch (training canvases for the figures only)")


def run_detection(detectors: list[Detector], measured: dict[str, Any], model, dm, records: list[dict[str, Any]],
                  data: DetectionData, run_dir: Path, trigger=None, target_class: int | None = None,
                  timer: PhaseTimer | None = None) -> dict[str, Any]:
    """Every detector's verdict over all searched classes: results.json `detectors.<name>`, and `detection` (the
    first detector's block, the run's verdict); the trigger figure on a backdoored run."""
    timer = timer or PhaseTimer()
    if not detectors:  # every results.json has a verdict: here, that none was asked for
        block = {"detector": None, "verdict": "abstained", "reason": "no detector ran (detector=none)", "score": None,
                 "probability": None, "predicted_target": None, "predicted_name": None, "threat_model": data.threat_model}
        update_results(run_dir, detection=block, detectors={})
        print(describe_verdict({**block, "detector": "none"}, dm.classes))
        return {"detection": block, "detectors": {}}
    blocks: dict[str, dict[str, Any]] = {}
    for det in detectors:
        with timer(f"detector.{det.name}"):
            block = det.decide(measured.get(det.name), records, data)
        block.setdefault("seconds", None)
        target = block.get("predicted_target")
        block["predicted_name"] = dm.classes[target] if target is not None else None
        blocks[det.name] = block
    ratios = [b["pattern_ratio"] for b in records[0]["by_ratio"]] if records else []
    classes = [r["class_index"] for r in records]
    if trigger is not None and target_class is not None and target_class in classes:
        rec = records[classes.index(target_class)]
        overlap = {}
        for r in ratios:
            pix = mask_pixels(rec["mask"], r, rec.get("score"))
            overlap[str(r)] = float((pix & trigger.region).sum() / pix.sum())
        for block in blocks.values():
            block["true_target"] = target_class
        if "patterns" in blocks:
            blocks["patterns"]["target_pixels_on_trigger"] = overlap
        _trigger_figure(trigger, rec, dm.classes[target_class], ratios, run_dir / "patterns" / "trigger_vs_pattern.png")
    sections = {"detection": blocks[detectors[0].name], "detectors": blocks}
    update_results(run_dir, **sections)
    for block in blocks.values():
        print(describe_verdict(block, dm.classes))
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


def _trigger_figure(trigger, record: dict, name: str, ratios: list[float], path: Path) -> None:
    import matplotlib.pyplot as plt

    from classwise.reporting.figures import _show, pattern_on_gray, save_figure

    ratio = min(ratios)
    fig, axes = plt.subplots(1, 4, figsize=(7.2, 2.2))
    _show(axes[0], trigger.example(), f"true trigger ({trigger.name})")
    _show(axes[1], record["canvas"], f"{name}: canvas")
    _show(axes[2], record["mask"], "mask", cmap="magma")
    _show(axes[3], pattern_on_gray(record["canvas"], mask_pixels(record["mask"], ratio, record.get("score"))), f"pattern at {ratio:.0%}")
    save_figure(fig, path)
