"""Backdoor detection over the gathered patterns (ours, Neural Cleanse beside it) and the trigger figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from classwise.patterns.search import mask_pixels
from classwise.reporting.results import update_results
from classwise.timing import PhaseTimer


def run_detection(model, dm, records, search_set, search_cfg, ratios, run_dir: Path, detector: dict, trigger,
                  target_class, progress, asr_gate: float | None = None, gate_ratio: float | None = None,
                  nc_per_class: dict[str, Any] | None = None, timer: PhaseTimer | None = None) -> dict[str, Any]:
    """Our detection over the searched classes whose pattern works (3 or more searched), Neural Cleanse
    beside it if asked, trigger figure. The gate: held-out ASR at `gate_ratio` (default: the largest
    ratio) >= `asr_gate` (default `detection.ASR_GATE`)."""
    from classwise.patterns.detection import ASR_GATE, pattern_detection

    if len(records) < 3:
        return {}
    timer = timer or PhaseTimer()
    classes = [r["class_index"] for r in records]
    gate_ratio = max(ratios) if gate_ratio is None else gate_ratio
    gate_asr = [next(b["asr"] for b in r["by_ratio"] if b["pattern_ratio"] == gate_ratio) for r in records]
    with timer("detection"):
        block = pattern_detection([float(r["mask"].sum()) for r in records], gate_asr, classes,
                                  ASR_GATE if asr_gate is None else asr_gate, gate_ratio)
    # Our detector reads the masks the search already made: its own cost is this statistic alone.
    block["seconds"] = round(timer.seconds["detection"], 4)
    sections: dict[str, Any] = {"detection": block}
    if detector.get("name") == "neural_cleanse":
        from classwise.patterns.neural_cleanse import nc_config, nc_detection, neural_cleanse_masks

        nc_cfg = nc_config(detector, search_cfg.seed)
        with timer("neural_cleanse"):
            if nc_per_class is None:  # not run by the ranks beforehand: run it here on every searched class
                nc_per_class = neural_cleanse_masks(model, classes, *search_set, nc_cfg, progress, search_cfg.max_forward)
            sections["detection_baselines"] = {"neural_cleanse": nc_detection(nc_per_class, nc_cfg)}
    if trigger is not None and target_class is not None and target_class in classes:
        rec = records[classes.index(target_class)]
        region = trigger.region
        overlap = {}
        for r in ratios:
            pix = mask_pixels(rec["mask"], r, rec.get("score"))
            overlap[str(r)] = float((pix & region).sum() / pix.sum())
        block["true_target"] = target_class
        block["target_pixels_on_trigger"] = overlap
        _trigger_figure(trigger, rec, dm.classes[target_class], ratios, run_dir / "patterns" / "trigger_vs_pattern.png")
    update_results(run_dir, **sections)
    gate = block["asr_gate"]
    raw = block["statistics"]["mask_l1"]
    print(f"detection (log mask L1, MAD index > 2, classes with ASR >= {gate['threshold']} at {gate['pattern_ratio']:.0%}): "
          f"flagged {_named(block['flagged'], dm.classes)}; "
          f"predicted target {_named([block['predicted_target']], dm.classes)}; "
          f"not scored {_named(block['not_scored'], dm.classes)}; raw mask L1 flags {_named(raw['flagged'], dm.classes)}")
    if "detection_baselines" in sections:
        nc = sections["detection_baselines"]["neural_cleanse"]
        print(f"neural cleanse: flagged {_named(nc['flagged'], dm.classes)}; "
              f"predicted target {_named([nc['predicted_target']], dm.classes)} ({nc['seconds']} s)")
    return sections


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
